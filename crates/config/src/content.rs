//! Settings of the content stages: antivirus (C, `[stage.antivirus.virus]`)
//! and antispam (D, `[stage.antispam.spam]`).
//!
//! Both sections may appear under any stage's table but only the antivirus
//! and antispam nodes read them. Their defaults describe the local
//! architecture: clamd started by `palisade up`, the Bayes database and
//! the quarantine under `data_dir`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{Config, Seconds, StageKind};

/// `[stage.antivirus.virus]`: scanning with clamd.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct VirusSettings {
    /// clamd daemons, tried in order until one answers (failover):
    /// `host:port` for TCP or `unix:/path/clamd.sock`. Empty: `palisade up`
    /// starts a local clamd and the stage uses it (`data_dir/clamd`).
    pub clamd: Vec<String>,
    /// Time allowed for one scan, connection included.
    pub scan_timeout: Seconds,
    /// When no clamd answers: "tempfail" (the upstream queue keeps the
    /// message and retries; the default) or "accept-tagged" (pass it on
    /// unscanned with `X-Virus-Status: Unscanned`; only where an outage
    /// of the scanner must not delay mail).
    pub on_scanner_unavailable: ScannerUnavailable,
    /// MIME-bomb limits checked before scanning: a message over any of
    /// them is quarantined without costing clamd anything.
    pub max_mime_depth: usize,
    pub max_mime_parts: usize,
    /// Bytes of all decoded parts together.
    pub max_decoded_size: u64,
    /// Send local recipients of a quarantined message a short notice.
    pub notify_recipients: bool,
}

impl Default for VirusSettings {
    fn default() -> Self {
        VirusSettings {
            clamd: Vec::new(),
            scan_timeout: Seconds(30.0),
            on_scanner_unavailable: ScannerUnavailable::Tempfail,
            max_mime_depth: 20,
            max_mime_parts: 500,
            max_decoded_size: 100 * 1024 * 1024,
            notify_recipients: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScannerUnavailable {
    Tempfail,
    AcceptTagged,
}

/// `[stage.mx.cut_through]`, `[stage.msa.cut_through]`: the entry node
/// holds the client's reply to DATA until the content stages have given
/// their verdicts (antivirus, then antispam, each handing the message to
/// the next while its client waits), so a virus or a spam-reject score is
/// refused with a 5xx to the connected client instead of being
/// quarantined after a 250.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CutThroughSettings {
    pub enabled: bool,
    /// How long the client waits for the verdicts. Past it (or when a
    /// content stage is down or tempfails), the node that has the message
    /// queues it as usual and answers 250: nothing is lost, the scan
    /// happens later (post-queue: quarantine, tag).
    pub deadline: Seconds,
}

impl Default for CutThroughSettings {
    fn default() -> Self {
        CutThroughSettings {
            enabled: false,
            deadline: Seconds(20.0),
        }
    }
}

/// `[stage.antispam.spam]`: scoring and per-flow actions.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpamSettings {
    /// DM24 token database (LMDB), written by `palisade spam train`.
    /// Default: `data_dir/antispam/bayes`.
    pub bayes_db: Option<PathBuf>,
    /// Points of a certain-ham (p = 0) and certain-spam (p = 1) Bayes
    /// verdict, linear in between. The defaults put p = 0.5, the boundary
    /// cross-validation found, at the tag threshold.
    pub bayes_ham_points: f64,
    pub bayes_spam_points: f64,
    /// Flow 1 (mail to local users): at or above, the message is tagged
    /// `X-Spam-Flag: YES` and the store files it into Junk.
    pub tag_threshold: f64,
    /// Flow 1: at or above, the message is quarantined instead.
    pub quarantine_threshold: f64,
    /// Flow 4 (an authenticated local user sending): at or above, the
    /// message is held in the quarantine and counted; never sent on.
    /// Under cut-through it is refused (550 5.7.1) to the user instead.
    pub outbound_hold_threshold: f64,
    /// Flow 1 under cut-through (the sender still waits for the reply to
    /// DATA): at or above, the message is refused with 550 5.7.1 instead
    /// of being accepted. Default: `quarantine_threshold`, so what would
    /// be quarantined post-queue is refused while the sender listens.
    pub cut_through_reject_threshold: Option<f64>,
    /// Use the built-in DM23 rules in addition to `rule`.
    pub builtin_rules: bool,
    /// DM23 rules of this site.
    pub rule: Vec<SpamRule>,
}

impl Default for SpamSettings {
    fn default() -> Self {
        SpamSettings {
            bayes_db: None,
            bayes_ham_points: -5.0,
            bayes_spam_points: 15.0,
            tag_threshold: 5.0,
            quarantine_threshold: 20.0,
            outbound_hold_threshold: 5.0,
            cut_through_reject_threshold: None,
            builtin_rules: true,
            rule: Vec::new(),
        }
    }
}

impl SpamSettings {
    /// The flow-1 score refused under cut-through.
    pub fn cut_through_reject(&self) -> f64 {
        self.cut_through_reject_threshold
            .unwrap_or(self.quarantine_threshold)
    }
}

/// `[[stage.antispam.spam.rule]]`: a regular expression and its points.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SpamRule {
    pub name: String,
    /// `body`, `headers` or `header:NAME`.
    pub target: String,
    /// A `regex` crate pattern, matched case-insensitively.
    pub pattern: String,
    pub score: f64,
}

impl Config {
    /// The antivirus stage's settings.
    pub fn virus(&self) -> VirusSettings {
        self.settings(StageKind::Antivirus).virus
    }

    /// The antispam stage's settings.
    pub fn spam(&self) -> SpamSettings {
        self.settings(StageKind::Antispam).spam
    }

    /// Where the Bayes token database lives.
    pub fn bayes_db_dir(&self) -> PathBuf {
        self.spam()
            .bayes_db
            .unwrap_or_else(|| self.gateway.data_dir.join("antispam").join("bayes"))
    }

    /// The quarantine shared by the content stages of this machine.
    pub fn quarantine_dir(&self) -> PathBuf {
        self.gateway.data_dir.join("quarantine")
    }

    /// Where `palisade up` keeps the clamd it starts.
    pub fn local_clamd_dir(&self) -> PathBuf {
        self.gateway.data_dir.join("clamd")
    }

    /// The clamd daemons the antivirus nodes use: the configured ones, or
    /// the local one `palisade up` starts.
    pub fn clamd_addresses(&self) -> Vec<String> {
        let v = self.virus();
        if v.clamd.is_empty() {
            vec![format!(
                "unix:{}",
                self.local_clamd_dir().join("clamd.sock").display()
            )]
        } else {
            v.clamd
        }
    }
}

type Problem = (Vec<String>, String);

fn key(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|p| p.to_string()).collect()
}

pub(crate) fn validate(config: &Config, problems: &mut Vec<Problem>) {
    let v = config.virus();
    for (i, a) in v.clamd.iter().enumerate() {
        let ok = match a.strip_prefix("unix:") {
            Some(path) => !path.is_empty(),
            None => a.parse::<std::net::SocketAddr>().is_ok(),
        };
        if !ok {
            problems.push((
                key(&["stage", "antivirus", "virus", "clamd"]),
                format!("entry {}: `{a}` is neither host:port nor unix:/path", i + 1),
            ));
        }
    }
    for (name, value) in [
        ("max_mime_depth", v.max_mime_depth as u64),
        ("max_mime_parts", v.max_mime_parts as u64),
        ("max_decoded_size", v.max_decoded_size),
    ] {
        if value == 0 {
            problems.push((
                key(&["stage", "antivirus", "virus", name]),
                "must be at least 1".into(),
            ));
        }
    }
    let s = config.spam();
    if s.quarantine_threshold < s.tag_threshold {
        problems.push((
            key(&["stage", "antispam", "spam", "quarantine_threshold"]),
            format!(
                "{} is below tag_threshold {}: nothing would ever be only tagged",
                s.quarantine_threshold, s.tag_threshold
            ),
        ));
    }
    if let Some(reject) = s
        .cut_through_reject_threshold
        .filter(|&r| r < s.tag_threshold)
    {
        problems.push((
            key(&["stage", "antispam", "spam", "cut_through_reject_threshold"]),
            format!(
                "{reject} is below tag_threshold {}: mail not even tagged as spam would be refused",
                s.tag_threshold
            ),
        ));
    }
    if s.bayes_spam_points < s.bayes_ham_points {
        problems.push((
            key(&["stage", "antispam", "spam", "bayes_spam_points"]),
            "must not be below bayes_ham_points".into(),
        ));
    }
    for r in &s.rule {
        let target_ok = r.target == "body"
            || r.target == "headers"
            || r.target
                .strip_prefix("header:")
                .is_some_and(|h| !h.is_empty());
        if !target_ok {
            problems.push((
                key(&["stage", "antispam", "spam", "rule"]),
                format!(
                    "rule {}: target `{}` is not body, headers or header:NAME",
                    r.name, r.target
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    const BASE: &str = "[gateway]\nhostname = \"mx.example.test\"\n[node.mx-1]\nstage = \"mx\"\nsmtp = \"127.0.0.1:2525\"\n[stage.mx]\nrelay = [\"127.0.0.1:2626\"]\n";

    fn errors(extra: &str) -> Vec<String> {
        crate::test_errors(&format!("{BASE}{extra}"))
    }

    #[test]
    fn content_defaults_are_valid_and_point_at_the_data_dir() {
        assert!(errors("").is_empty());
        let c = crate::parse(Path::new("t.toml"), BASE).unwrap();
        assert!(c.clamd_addresses()[0].ends_with("data/clamd/clamd.sock"));
        assert!(c.bayes_db_dir().ends_with("antispam/bayes"));
        assert!(!c.settings(crate::StageKind::Mx).cut_through.enabled);
        assert_eq!(
            c.settings(crate::StageKind::Mx).cut_through.deadline.0,
            20.0
        );
        assert_eq!(c.spam().cut_through_reject(), c.spam().quarantine_threshold);
    }

    #[test]
    fn bad_clamd_address_and_inverted_thresholds_are_errors() {
        let e = errors("[stage.antivirus.virus]\nclamd = [\"nowhere\", \"unix:/run/clamd.sock\"]\n[stage.antispam.spam]\ntag_threshold = 8.0\nquarantine_threshold = 4.0\n");
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].contains("stage.antivirus.virus.clamd") && e[0].contains("`nowhere`"));
        assert!(e[1].contains("quarantine_threshold"));
        let e = errors("[stage.antispam.spam]\ncut_through_reject_threshold = 2.0\n");
        assert!(
            e.len() == 1 && e[0].contains("cut_through_reject_threshold"),
            "{e:?}"
        );
    }
}
