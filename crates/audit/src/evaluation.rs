//! Steps 3 and 4 of the methodology: every fault that a probe got through
//! (a failing verdict) or that the review found unprotected, with the
//! dependability attributes its failures endanger (figure 4) and the
//! concrete steps that would remove or mitigate it (figure 5, Table I:
//! mechanism, stage, config key, an example).

use serde::{Deserialize, Serialize};

use crate::faults::{self, DeploymentStep};
use crate::model::{Attribute, Fault, Finding};
use crate::review::{missing_steps, Review};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub fault: Fault,
    /// Why it is here: each failing probe, or the review's verdict.
    pub reasons: Vec<String>,
    /// Step 3: what a failure it causes endangers.
    pub attributes: Vec<Attribute>,
    /// Step 3: another system (other sites, the victims of a relay or of
    /// backscatter) may suffer too.
    pub other_systems: bool,
    /// Step 4: what to deploy, solutions first.
    pub steps: Vec<DeploymentStep>,
}

/// The evaluation of a run: faults in [`Fault::ALL`] order.
pub fn evaluate(findings: &[Finding], review: Option<&Review>) -> Vec<Evaluation> {
    Fault::ALL
        .into_iter()
        .filter_map(|fault| {
            let failing: Vec<&Finding> = findings
                .iter()
                .filter(|f| f.fault == fault && f.verdict.is_failure())
                .collect();
            let mut reasons: Vec<String> = failing
                .iter()
                .map(|f| format!("{} ({}): {}", f.probe, verdict_word(f), f.detail))
                .collect();
            if let Some(c) = review.and_then(|r| r.coverage_of(fault)) {
                if c.protection == faults::Protection::Unprotected {
                    reasons.push("review: no mechanism that covers it is deployed".into());
                }
            }
            if reasons.is_empty() {
                return None;
            }
            let model = faults::model(fault);
            // A mechanism that is configured but failed its probe comes
            // first: fix it before adding others.
            let mut steps: Vec<DeploymentStep> = Vec::new();
            for f in &failing {
                let Some(n) = f.mechanism else { continue };
                if steps.iter().any(|s| s.mechanism == n) {
                    continue;
                }
                let coverage = model
                    .covers
                    .iter()
                    .find(|c| c.mechanism == n)
                    .map(|c| c.coverage)
                    .unwrap_or(crate::model::Coverage::Mitigation);
                steps.extend(faults::deployment_steps(n, coverage, &[]));
            }
            for s in missing_steps(review, fault) {
                if !steps
                    .iter()
                    .any(|t| t.mechanism == s.mechanism && t.stage == s.stage)
                {
                    steps.push(s);
                }
            }
            Some(Evaluation {
                fault,
                reasons,
                attributes: model.attributes.to_vec(),
                other_systems: model.other_systems,
                steps,
            })
        })
        .collect()
}

fn verdict_word(f: &Finding) -> &'static str {
    match f.verdict {
        crate::model::Verdict::Working => "working",
        crate::model::Verdict::NotWorking => "not working",
        crate::model::Verdict::Absent => "absent",
        crate::model::Verdict::NotTested => "not tested",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Verdict;

    fn finding(fault: Fault, mechanism: Option<u8>, verdict: Verdict) -> Finding {
        Finding {
            fault,
            mechanism,
            probe: format!("{}-probe", fault.id()),
            title: "a probe".into(),
            verdict,
            detail: "250 2.1.5 ok".into(),
            transcript: Vec::new(),
        }
    }

    #[test]
    fn only_failures_are_evaluated() {
        let findings = vec![
            finding(Fault::OpenRelay, Some(7), Verdict::NotWorking),
            finding(Fault::Virus, Some(28), Verdict::Working),
            finding(Fault::Spam, Some(22), Verdict::NotTested),
            finding(Fault::MailBombing, None, Verdict::Absent),
        ];
        let e = evaluate(&findings, None);
        assert_eq!(
            e.iter().map(|e| e.fault).collect::<Vec<_>>(),
            vec![Fault::OpenRelay, Fault::MailBombing]
        );
        let relay = &e[0];
        assert!(relay.attributes.contains(&Attribute::Availability));
        assert!(relay.other_systems);
        assert_eq!(relay.steps[0].mechanism, 7);
        assert_eq!(
            relay.steps[0].config_key.as_deref(),
            Some("dm7_relay_access")
        );
        assert!(relay.reasons[0].contains("not working"));
        // No mechanism named: the plan is the fault's whole row, from
        // mitigations at A/B to the quota at G.
        let bomb = &e[1];
        assert!(bomb.steps.iter().any(|s| s.mechanism == 35));
    }
}
