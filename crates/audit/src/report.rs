//! The report every command of the methodology prints: findings (step 2),
//! and — filled in by the review and evaluation work — the review (step 1),
//! the evaluation of failures (step 3) and the deployment plan (step 4).
//!
//! `--format text|json|markdown|html`; JSON is the serialised [`Report`].

use serde::{Deserialize, Serialize};

use crate::evaluation::{evaluate, Evaluation};
use crate::history::Snapshot;
use crate::model::Finding;
use crate::review::{review, Review};

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
    /// Step 1, when the run had our config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<Review>,
    /// Steps 3-4: every failing or unprotected fault, what it endangers
    /// and what to deploy.
    #[serde(default)]
    pub evaluation: Vec<Evaluation>,
    /// Metrics snapshots for the charts (`history::record`), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Snapshot>,
}

impl Report {
    /// Builds the report of a run; `config` (our own deployment) lets the
    /// review and the deployment plan name config keys.
    pub fn from_findings(
        target: String,
        findings: Vec<Finding>,
        config: Option<&palisade_config::Config>,
    ) -> Report {
        let review = config.map(review);
        let evaluation = evaluate(&findings, review.as_ref());
        Report {
            target,
            generated_unix: crate::history::now(),
            findings,
            review,
            evaluation,
            history: Vec::new(),
        }
    }

    /// Exit status 1 (for cron and CI) when any tested fault is
    /// unprotected: a probe got through, or the review found no mechanism
    /// deployed against it.
    pub fn has_failures(&self) -> bool {
        self.findings.iter().any(|f| f.verdict.is_failure())
            || self
                .review
                .as_ref()
                .is_some_and(|r| r.unprotected().next().is_some())
    }
}

pub fn render(report: &Report, format: Format) -> String {
    match format {
        Format::Json => serde_json::to_string_pretty(report).unwrap_or_default(),
        Format::Text => crate::render::text::render(report),
        Format::Markdown => crate::render::markdown::render(report),
        Format::Html => crate::render::html::render(report),
    }
}
