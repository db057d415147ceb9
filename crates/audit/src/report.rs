//! The report every command of the methodology prints: findings (step 2),
//! and — filled in by the review and evaluation work — the review (step 1),
//! the evaluation of failures (step 3) and the deployment plan (step 4).
//!
//! `--format text|json|markdown|html`; JSON is the serialised [`Report`].

use serde::{Deserialize, Serialize};

use crate::model::{Finding, Verdict};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    Text,
    Json,
    Markdown,
    Html,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "text" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            "markdown" | "md" => Ok(Format::Markdown),
            "html" => Ok(Format::Html),
            other => Err(format!(
                "unknown format {other:?} (text, json, markdown, html)"
            )),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// What was audited, for people: `mx=127.0.0.1:2525 msa=...` or the config path.
    pub target: String,
    /// Seconds since the Unix epoch when the run started.
    pub generated_unix: u64,
    pub findings: Vec<Finding>,
}

impl Report {
    /// Builds the report of a run; `config` (our own deployment) lets the
    /// review and the deployment plan name config keys.
    pub fn from_findings(
        target: String,
        findings: Vec<Finding>,
        _config: Option<&palisade_config::Config>,
    ) -> Report {
        let generated_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Report {
            target,
            generated_unix,
            findings,
        }
    }

    /// Exit status 1 (for cron and CI) when any tested fault is unprotected.
    pub fn has_failures(&self) -> bool {
        self.findings.iter().any(|f| f.verdict.is_failure())
    }
}

pub fn render(report: &Report, format: Format) -> String {
    match format {
        Format::Json => serde_json::to_string_pretty(report).unwrap_or_default(),
        // Markdown and HTML renderers come with the review work; until
        // then they print the plain table.
        Format::Text | Format::Markdown | Format::Html => text(report),
    }
}

fn text(report: &Report) -> String {
    let mut out = format!("audit of {}\n", report.target);
    for f in &report.findings {
        let verdict = match f.verdict {
            Verdict::Working => "working",
            Verdict::NotWorking => "NOT WORKING",
            Verdict::Absent => "ABSENT",
            Verdict::NotTested => "not tested",
        };
        let dm = f.mechanism.map(|n| format!("DM{n}")).unwrap_or_default();
        out.push_str(&format!(
            "{:<24} {:<6} {:<12} {} — {}\n",
            f.fault.id(),
            dm,
            verdict,
            f.title,
            f.detail
        ));
    }
    out
}
