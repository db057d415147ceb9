//! Step 1 of the methodology, `palisade review`: from the configuration
//! alone, every Table I mechanism at every stage (deployed with its
//! settings, disabled, or absent) and the fault coverage matrix (figure 5
//! read against what is deployed, Table II's solved / partial).
//!
//! Nothing here connects anywhere: what the config says is what is
//! reviewed. Step 2 (`palisade audit`) checks that it also works.

use serde::{Deserialize, Serialize};

use palisade_config::{Config, StageKind, StageSettings};
use palisade_policy::catalogue::{self, Mechanism, TABLE_I};

use crate::faults::{self, Protection, FAULTS};
use crate::model::{Coverage, Fault};

/// What the config says about one mechanism at one stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Presence {
    /// On, with the settings shown.
    Deployed,
    /// Its table is there with `enabled = false`.
    Disabled,
    /// Not configured (or the stage has no nodes in the flow).
    Absent,
    /// Lives outside the stages (perimeter, end to end, MUA): the config
    /// cannot tell; check it by hand.
    Outside,
}

impl Presence {
    pub fn word(self) -> &'static str {
        match self {
            Presence::Deployed => "deployed",
            Presence::Disabled => "disabled",
            Presence::Absent => "absent",
            Presence::Outside => "outside",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MechanismState {
    pub mechanism: u8,
    pub name: String,
    pub presence: Presence,
    /// The settings in config words (`delay = "300s", auto_whitelist_after = 5`),
    /// or why it is absent.
    pub settings: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageReview {
    pub stage: StageKind,
    pub nodes: Vec<String>,
    /// The stage has nodes and mail reaches it (an entry stage, or some
    /// stage forwards to it).
    pub in_flow: bool,
    /// Every Table I mechanism Palisade can run at this stage.
    pub mechanisms: Vec<MechanismState>,
}

/// One cell of the coverage matrix.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CoverState {
    pub mechanism: u8,
    pub coverage: Coverage,
    /// Stages where it is deployed; empty: not deployed.
    pub deployed_at: Vec<StageKind>,
    /// Outside the stages: not visible in the config.
    pub outside: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultCoverage {
    pub fault: Fault,
    pub protection: Protection,
    pub mechanisms: Vec<CoverState>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Review {
    pub stages: Vec<StageReview>,
    /// Mechanisms that no stage runs (perimeter, end to end, MUA, not implemented).
    pub outside: Vec<MechanismState>,
    /// Figure 5 / Table II: one row per fault, in [`Fault::ALL`] order.
    pub coverage: Vec<FaultCoverage>,
}

impl Review {
    pub fn coverage_of(&self, fault: Fault) -> Option<&FaultCoverage> {
        self.coverage.iter().find(|c| c.fault == fault)
    }

    /// Stages where mechanism `number` is deployed.
    pub fn deployed_at(&self, number: u8) -> Vec<StageKind> {
        self.stages
            .iter()
            .filter(|s| {
                s.mechanisms
                    .iter()
                    .any(|m| m.mechanism == number && m.presence == Presence::Deployed)
            })
            .map(|s| s.stage)
            .collect()
    }

    pub fn unprotected(&self) -> impl Iterator<Item = &FaultCoverage> {
        self.coverage
            .iter()
            .filter(|c| c.protection == Protection::Unprotected)
    }
}

/// Reviews a configuration.
pub fn review(config: &Config) -> Review {
    let stages: Vec<StageReview> = StageKind::ALL
        .into_iter()
        .map(|stage| review_stage(config, stage))
        .collect();
    let outside = TABLE_I
        .iter()
        .filter(|m| m.stages.is_empty())
        .map(|m| MechanismState {
            mechanism: m.number,
            name: m.name.to_string(),
            presence: Presence::Outside,
            settings: format!("{}: not visible in the config", m.module),
        })
        .collect();
    let mut review = Review {
        stages,
        outside,
        coverage: Vec::new(),
    };
    review.coverage = FAULTS
        .iter()
        .map(|model| {
            let mechanisms: Vec<CoverState> = model
                .covers
                .iter()
                .map(|c| CoverState {
                    mechanism: c.mechanism,
                    coverage: c.coverage,
                    deployed_at: review.deployed_at(c.mechanism),
                    outside: catalogue::mechanism(c.mechanism).is_some_and(|m| m.stages.is_empty()),
                })
                .collect();
            let protection = model.protection(|n| {
                mechanisms
                    .iter()
                    .any(|c| c.mechanism == n && !c.deployed_at.is_empty())
            });
            FaultCoverage {
                fault: model.fault,
                protection,
                mechanisms,
            }
        })
        .collect();
    review
}

fn review_stage(config: &Config, stage: StageKind) -> StageReview {
    let nodes: Vec<String> = config.nodes_of(stage).map(|(n, _)| n.clone()).collect();
    let in_flow =
        !nodes.is_empty() && (stage.is_edge() || !config.upstream_stages(stage).is_empty());
    let settings = config.settings(stage);
    let mechanisms = TABLE_I
        .iter()
        .filter(|m| m.stages.contains(&stage))
        .map(|m| {
            let (presence, text) = if nodes.is_empty() {
                (Presence::Absent, format!("no {stage} nodes"))
            } else if !in_flow {
                (Presence::Absent, format!("no stage forwards to {stage}"))
            } else {
                presence(config, stage, &settings, m)
            };
            MechanismState {
                mechanism: m.number,
                name: m.name.to_string(),
                presence,
                settings: text,
            }
        })
        .collect();
    StageReview {
        stage,
        nodes,
        in_flow,
        mechanisms,
    }
}

/// Whether a configurable key may be set at this stage (otherwise the
/// mechanism is built into the stage, e.g. DM23 rules at the antispam).
fn configurable_at(key: &str, stage: StageKind) -> bool {
    key.starts_with("limits.")
        || palisade_config::MECHANISM_STAGES
            .iter()
            .any(|(k, s)| *k == key && s.contains(&stage))
}

fn presence(
    config: &Config,
    stage: StageKind,
    settings: &StageSettings,
    m: &Mechanism,
) -> (Presence, String) {
    let value = toml::Value::try_from(settings).ok();
    let table = |path: &str| -> Option<toml::Value> {
        path.split('.')
            .try_fold(value.as_ref()?, |v, part| v.get(part))
            .cloned()
    };
    let (presence, text) = match m.config_key {
        Some(key) if key.starts_with("limits.") => {
            let field = &key["limits.".len()..];
            match table(key) {
                Some(v) if is_zero(&v) => (Presence::Absent, format!("{field} = {v} (off)")),
                Some(v) => (
                    Presence::Deployed,
                    format!("{field} = {}", crate::faults::human_duration(&v)),
                ),
                None => (Presence::Absent, format!("{field} not set")),
            }
        }
        Some(key) if configurable_at(key, stage) => match table(&format!("mechanisms.{key}")) {
            None => (
                Presence::Absent,
                format!("no [stage.{stage}.mechanisms.{key}]"),
            ),
            Some(toml::Value::Table(mut t)) => {
                let on = t
                    .remove("enabled")
                    .and_then(|v| v.as_bool())
                    .unwrap_or(true);
                let text = inline(&t);
                if on {
                    (Presence::Deployed, text)
                } else {
                    (Presence::Disabled, "enabled = false".to_string())
                }
            }
            Some(other) => (Presence::Deployed, other.to_string()),
        },
        _ => builtin(config, stage, settings, m.number),
    };
    // DM19's recipient check is the stage's `verify_recipients`, outside
    // the mechanism table (it needs the directory replica, not the policy).
    if m.number == 19 && stage.is_edge() {
        let verify = settings.verify_recipients;
        return match (presence, verify) {
            (Presence::Deployed, true) => (
                Presence::Deployed,
                join(&["verify_recipients = true", &text]),
            ),
            (_, true) => (
                Presence::Deployed,
                format!("verify_recipients = true; {text}"),
            ),
            (p, false) => (p, format!("verify_recipients = false; {text}")),
        };
    }
    (presence, text)
}

fn join(parts: &[&str]) -> String {
    parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_zero(v: &toml::Value) -> bool {
    match v {
        toml::Value::Integer(0) => true,
        toml::Value::Float(f) => *f == 0.0,
        toml::Value::String(s) => s.trim_end_matches('s').parse::<f64>() == Ok(0.0),
        _ => false,
    }
}

/// A TOML table on one line, in config words.
fn inline(t: &toml::map::Map<String, toml::Value>) -> String {
    t.iter()
        .map(|(k, v)| format!("{k} = {}", crate::faults::human_duration(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Mechanisms the stage runs without a config key: what decides them.
fn builtin(
    config: &Config,
    stage: StageKind,
    settings: &StageSettings,
    number: u8,
) -> (Presence, String) {
    use Presence::{Absent, Deployed};
    let has_nodes = |s: StageKind| config.nodes_of(s).next().is_some();
    let listeners = |s: StageKind, keys: &[&str]| -> Vec<String> {
        config
            .nodes_of(s)
            .flat_map(|(name, n)| {
                n.listeners()
                    .into_iter()
                    .filter(|(k, _)| keys.contains(k))
                    .map(move |(k, a)| format!("{name} {k} {a}"))
            })
            .collect()
    };
    let certificate = match (&config.gateway.tls_cert, &config.gateway.tls_key) {
        (Some(c), Some(_)) => Some(format!("certificate {}", c.display())),
        _ => None,
    };
    match number {
        2 => {
            let l = listeners(stage, &["submission", "submissions"]);
            if l.is_empty() {
                (Absent, "no submission listener".into())
            } else {
                (Deployed, l.join(", "))
            }
        }
        3 => match (has_nodes(StageKind::Mx), has_nodes(StageKind::Msa)) {
            (true, true) => (
                Deployed,
                format!(
                    "mx: {} nodes, msa: {} nodes",
                    config.nodes_of(StageKind::Mx).count(),
                    config.nodes_of(StageKind::Msa).count()
                ),
            ),
            _ => (Absent, "Internet mail and users' mail share a stage".into()),
        },
        4 => {
            let s = &settings.submission;
            (
                Deployed,
                format!(
                    "AUTH required before MAIL (530 5.7.0); auth_max_failures = {} per {}, \
                     auth_failure_delay = {}",
                    s.auth_max_failures, s.auth_failure_window, s.auth_failure_delay
                ),
            )
        }
        5 => match certificate {
            Some(c) => (Deployed, c),
            None => (
                Absent,
                "no gateway.tls_cert: `palisade up` generates a self-signed certificate, \
                 which clients cannot verify"
                    .into(),
            ),
        },
        14 => {
            let cert = certificate.unwrap_or_else(|| "self-signed certificate".into());
            let next = format!("{:?}", settings.next_hop_tls).to_lowercase();
            (
                Deployed,
                format!("STARTTLS offered ({cert}); next_hop_tls = \"{next}\""),
            )
        }
        15 => {
            let l = listeners(stage, &["imaps", "pop3s"]);
            if l.is_empty() {
                (Absent, "no imaps or pop3s listener".into())
            } else {
                (Deployed, l.join(", "))
            }
        }
        23 => {
            let spam = config.spam();
            if spam.builtin_rules || !spam.rule.is_empty() {
                (
                    Deployed,
                    format!(
                        "builtin_rules = {}, {} own rules",
                        spam.builtin_rules,
                        spam.rule.len()
                    ),
                )
            } else {
                (Absent, "builtin_rules = false and no rules".into())
            }
        }
        24 => {
            let spam = config.spam();
            (
                Deployed,
                format!(
                    "Bayes database {}; tag_threshold = {}, quarantine_threshold = {}",
                    config.bayes_db_dir().display(),
                    spam.tag_threshold,
                    spam.quarantine_threshold
                ),
            )
        }
        28 => {
            let v = config.virus();
            let clamd = config.clamd_addresses();
            (
                Deployed,
                format!(
                    "clamd {}; on_scanner_unavailable = \"{}\", max_mime_depth = {}",
                    if v.clamd.is_empty() {
                        "started by palisade up".to_string()
                    } else {
                        clamd.join(", ")
                    },
                    serde_json::to_value(v.on_scanner_unavailable)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    v.max_mime_depth
                ),
            )
        }
        29 => {
            if cfg!(target_os = "linux") {
                (Deployed, "Linux (deploy/ targets Debian)".into())
            } else {
                (Absent, "not Linux".into())
            }
        }
        31 => {
            let keys: Vec<String> = settings
                .outbound
                .dkim
                .iter()
                .map(|k| format!("d={} s={}", k.domain, k.selector))
                .collect();
            if keys.is_empty() {
                (
                    Absent,
                    "no [[stage.outgoing.outbound.dkim]] signing key".into(),
                )
            } else {
                (Deployed, format!("signs {}", keys.join(", ")))
            }
        }
        35 => (
            Deployed,
            "per-user quota set with `palisade user add --quota` (0 = unlimited)".into(),
        ),
        _ => (Absent, "not implemented at this stage".into()),
    }
}

/// The review's step-4 plan for one fault: the steps that deploy each of
/// its mechanisms where it is missing, solutions first.
pub fn missing_steps(review: Option<&Review>, fault: Fault) -> Vec<faults::DeploymentStep> {
    let model = faults::model(fault);
    let mut covers = model.covers.to_vec();
    covers.sort_by_key(|c| match c.coverage {
        Coverage::Full => 0,
        Coverage::Group => 1,
        Coverage::Mitigation => 2,
    });
    let mut steps = Vec::new();
    for c in covers {
        let deployed = review
            .map(|r| r.deployed_at(c.mechanism))
            .unwrap_or_default();
        let stages: Vec<StageKind> = faults::deployable_stages(c.mechanism)
            .into_iter()
            .filter(|s| !deployed.contains(s))
            .collect();
        if !deployed.is_empty() && stages.is_empty() {
            continue;
        }
        steps.extend(faults::deployment_steps(c.mechanism, c.coverage, &stages));
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn local() -> String {
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../config/local.toml"
        ))
        .unwrap()
    }

    fn load(text: &str) -> Config {
        palisade_config::parse(Path::new("local.toml"), text).unwrap()
    }

    fn protection(r: &Review, f: Fault) -> Protection {
        r.coverage_of(f).unwrap().protection
    }

    /// config/local.toml deploys what the paper's "EA in 2006" did, and
    /// more: the same 7 solved, 7 partial (Table II), none unprotected.
    #[test]
    fn local_toml_coverage() {
        let r = review(&load(&local()));
        use Fault::*;
        // DM1 (perimeter), DM5 (a verifiable certificate) and DM16
        // (end-to-end encryption) are not in local.toml; the other five
        // have mitigations only (figure 5).
        for f in [
            AnyToAny,
            Anonymous,
            DataSize,
            NoCongestionControl,
            NoPrivacy,
            Spam,
            Slammer,
            MailBombing,
        ] {
            assert_eq!(protection(&r, f), Protection::Partial, "{}", f.id());
        }
        for f in [
            Forging,
            OpenRelay,
            TrafficAmplification,
            Virus,
            Fraud,
            Phishing,
        ] {
            assert_eq!(protection(&r, f), Protection::Solved, "{}", f.id());
        }
        assert_eq!(r.unprotected().count(), 0);
        assert_eq!(r.coverage.len(), 14);
    }

    #[test]
    fn local_toml_stage_items() {
        let r = review(&load(&local()));
        let at = |stage: StageKind, n: u8| {
            r.stages
                .iter()
                .find(|s| s.stage == stage)
                .unwrap()
                .mechanisms
                .iter()
                .find(|m| m.mechanism == n)
                .cloned()
                .unwrap_or_else(|| panic!("DM{n} not listed at {stage}"))
        };
        let grey = at(StageKind::Mx, 22);
        assert_eq!(grey.presence, Presence::Deployed);
        assert!(
            grey.settings.contains("delay = \"5m\""),
            "{}",
            grey.settings
        );
        assert_eq!(at(StageKind::Msa, 17).presence, Presence::Absent);
        assert_eq!(
            at(StageKind::Mx, 32).presence,
            Presence::Absent,
            "greet_pause is 0"
        );
        assert_eq!(at(StageKind::Mx, 8).settings, "max_message_size = 26214400");
        assert_eq!(at(StageKind::Msa, 9).settings, "max_recipients = 50");
        assert_eq!(at(StageKind::Antivirus, 28).presence, Presence::Deployed);
        assert_eq!(at(StageKind::Store, 15).presence, Presence::Deployed);
        assert!(at(StageKind::Msa, 19)
            .settings
            .starts_with("verify_recipients = true"));
        assert_eq!(r.deployed_at(7), vec![StageKind::Mx, StageKind::Msa]);
        // Every stage lists every mechanism the catalogue places there.
        for s in &r.stages {
            let want = TABLE_I
                .iter()
                .filter(|m| m.stages.contains(&s.stage))
                .count();
            assert_eq!(s.mechanisms.len(), want, "{}", s.stage);
        }
        assert!(r.outside.iter().any(|m| m.mechanism == 1));
    }

    /// Removing DM7 from the MX and the MSA leaves open relay unprotected
    /// (DM17 alone refuses to load without DM7, so it goes too).
    #[test]
    fn without_relay_access_open_relay_is_unprotected() {
        let text = local()
            .replace("[stage.mx.mechanisms.dm7_relay_access]", "")
            .replace("[stage.msa.mechanisms.dm7_relay_access]", "")
            .replace("[stage.mx.mechanisms.dm17_rfc2505]", "");
        let r = review(&load(&text));
        assert_eq!(protection(&r, Fault::OpenRelay), Protection::Unprotected);
        assert_eq!(
            r.unprotected().map(|c| c.fault).collect::<Vec<_>>(),
            vec![Fault::OpenRelay]
        );
        let steps = missing_steps(Some(&r), Fault::OpenRelay);
        assert_eq!(steps[0].mechanism, 7);
        assert_eq!(steps[0].example, "[stage.mx.mechanisms.dm7_relay_access]");
    }

    /// `enabled = false` is reported as disabled, and does not count.
    #[test]
    fn disabled_table_does_not_count() {
        let text = local().replace(
            "[stage.mx.mechanisms.dm22_greylist]",
            "[stage.mx.mechanisms.dm22_greylist]\nenabled = false",
        );
        let r = review(&load(&text));
        let mx = r.stages.iter().find(|s| s.stage == StageKind::Mx).unwrap();
        let grey = mx.mechanisms.iter().find(|m| m.mechanism == 22).unwrap();
        assert_eq!(grey.presence, Presence::Disabled);
        assert!(r.deployed_at(22).is_empty());
    }

    /// Without the antivirus stage in the flow, virus is only mitigated.
    #[test]
    fn antivirus_out_of_the_flow() {
        let text = local()
            .replace(
                "[stage.mx]\nnext = \"antivirus\"",
                "[stage.mx]\nnext = \"antispam\"",
            )
            .replace(
                "[stage.msa]\nnext = \"antivirus\"",
                "[stage.msa]\nnext = \"antispam\"",
            );
        let r = review(&load(&text));
        let av = r
            .stages
            .iter()
            .find(|s| s.stage == StageKind::Antivirus)
            .unwrap();
        assert!(!av.in_flow);
        assert_eq!(protection(&r, Fault::Virus), Protection::Partial);
    }
}
