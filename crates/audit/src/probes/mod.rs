//! The probes of `palisade audit`, one module per defense they exercise.
//! Each probe has a stable id, the fault it tests (Table II) and the
//! Table I mechanism that should stop it; docs/audit-probes.md lists them.
//!
//! Probes are safe: bounded in count and time, they send only to local
//! recipients (the relay probes' external recipients are followed by RSET,
//! never DATA), and what they deliver carries the run's nonce in its
//! subject so the cleanup deletes it.

pub mod content;
pub mod disclosure;
pub mod flood;
pub mod greet;
pub mod greylist;
pub mod internal;
pub mod quota;
pub mod recipients;
pub mod relay;
pub mod sender;
pub mod size;
pub mod smuggling;
pub mod submission;
pub mod tls;

use crate::audit::Ctx;
use crate::model::{Fault, Finding, Line, Verdict};

/// One probe's identity.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    pub id: &'static str,
    pub fault: Fault,
    pub mechanism: Option<u8>,
    pub title: &'static str,
}

impl Probe {
    pub fn finding(
        &self,
        verdict: Verdict,
        detail: impl Into<String>,
        transcript: Vec<Line>,
    ) -> Finding {
        Finding {
            fault: self.fault,
            mechanism: self.mechanism,
            probe: self.id.to_string(),
            title: self.title.to_string(),
            verdict,
            detail: detail.into(),
            transcript,
        }
    }

    pub fn working(&self, detail: impl Into<String>, transcript: Vec<Line>) -> Finding {
        self.finding(Verdict::Working, detail, transcript)
    }

    pub fn not_tested(&self, detail: impl Into<String>, transcript: Vec<Line>) -> Finding {
        self.finding(Verdict::NotTested, detail, transcript)
    }

    /// The fault got through: "not working" when the config (or the target
    /// itself, e.g. an advertised SIZE) claims the defense, else "absent".
    pub fn failed(
        &self,
        claimed: Option<bool>,
        detail: impl Into<String>,
        transcript: Vec<Line>,
    ) -> Finding {
        let verdict = if claimed == Some(true) {
            Verdict::NotWorking
        } else {
            Verdict::Absent
        };
        self.finding(verdict, detail, transcript)
    }
}

/// The same "not tested" for every probe of a module (no address, no account).
pub fn none_tested(probes: &[Probe], why: &str, transcript: Vec<Line>) -> Vec<Finding> {
    probes
        .iter()
        .map(|p| p.not_tested(why, transcript.clone()))
        .collect()
}

/// Every probe, in the order they run.
pub fn all() -> Vec<Probe> {
    [
        internal::PROBES,
        tls::PROBES,
        greet::PROBES,
        relay::PROBES,
        sender::PROBES,
        recipients::PROBES,
        disclosure::PROBES,
        greylist::PROBES,
        size::PROBES,
        smuggling::PROBES,
        submission::PROBES,
        content::PROBES,
        quota::PROBES,
        flood::PROBES,
    ]
    .concat()
}

fn wanted(ctx: &Ctx, probes: &[Probe]) -> bool {
    probes.iter().any(|p| ctx.wants(p.fault))
}

/// Runs the probes `--only` selects. The flood and rate probes run last:
/// a target that works makes us wait a while before it talks to us again.
pub async fn run_all(ctx: &Ctx) -> Vec<Finding> {
    let mut out = Vec::new();
    macro_rules! step {
        ($($m:ident),*) => {$(
            if wanted(ctx, $m::PROBES) {
                out.extend($m::run(ctx).await);
            }
        )*};
    }
    step!(
        internal, tls, greet, relay, sender, recipients, disclosure, greylist, size, smuggling,
        submission, content, quota, flood
    );
    out
}

#[cfg(test)]
mod tests {
    /// docs/audit-probes.md has one row per probe, by id: admins read it
    /// to know what each verdict means.
    #[test]
    fn ids_are_unique_and_documented() {
        let doc = include_str!("../../../../docs/audit-probes.md");
        let mut seen = std::collections::BTreeSet::new();
        for p in super::all() {
            assert!(seen.insert(p.id), "duplicate probe id {}", p.id);
            let row = format!("| `{}` |", p.id);
            assert!(doc.contains(&row), "docs/audit-probes.md lacks {row}");
            let fault = format!("| {} |", p.fault.id());
            let line = doc.lines().find(|l| l.starts_with(&row)).unwrap();
            assert!(
                line.contains(&fault),
                "{}: fault {} not in its row",
                p.id,
                p.fault.id()
            );
            let mech = p.mechanism.map_or("—".to_string(), |m| format!("DM{m}"));
            assert!(
                line.contains(&format!("| {mech} |")),
                "{}: {mech} not in its row",
                p.id
            );
        }
    }
}
