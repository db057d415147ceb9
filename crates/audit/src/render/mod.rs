//! The renderers of [`Report`](crate::report::Report): a terminal table,
//! Markdown and one self-contained HTML page (JSON is serde's). What they
//! share — words, the state of each figure-5 cell, times — is here so the
//! three say the same thing.

pub mod html;
pub mod markdown;
pub mod svg;
pub mod text;

use crate::faults;
use crate::model::{Attribute, Coverage, Fault, Finding, Verdict};
use crate::report::Report;

pub fn verdict_word(v: Verdict) -> &'static str {
    match v {
        Verdict::Working => "working",
        Verdict::NotWorking => "not working",
        Verdict::Absent => "absent",
        Verdict::NotTested => "not tested",
    }
}

pub fn attribute_word(a: Attribute) -> &'static str {
    match a {
        Attribute::Availability => "availability",
        Attribute::Reliability => "reliability",
        Attribute::Integrity => "integrity",
        Attribute::Confidentiality => "confidentiality",
        Attribute::Authenticity => "authenticity",
        Attribute::Accountability => "accountability",
        Attribute::NonRepudiation => "non-repudiation",
    }
}

pub fn attributes(list: &[Attribute]) -> String {
    list.iter()
        .map(|a| attribute_word(*a))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Figure 5's icons: square (full), rhomboid (group), circle (mitigation).
pub fn coverage_icon(c: Coverage) -> &'static str {
    match c {
        Coverage::Full => "■",
        Coverage::Group => "◆",
        Coverage::Mitigation => "●",
    }
}

pub fn coverage_word(c: Coverage) -> &'static str {
    match c {
        Coverage::Full => "full",
        Coverage::Group => "group",
        Coverage::Mitigation => "mitigation",
    }
}

/// The worse of two verdicts, for people: a probe that got through beats
/// one that was stopped, and anything tested beats "not tested".
fn severity(v: Verdict) -> u8 {
    match v {
        Verdict::NotTested => 0,
        Verdict::Working => 1,
        Verdict::Absent => 2,
        Verdict::NotWorking => 3,
    }
}

pub fn worst<'a>(findings: impl Iterator<Item = &'a Finding>) -> Option<Verdict> {
    findings.map(|f| f.verdict).max_by_key(|v| severity(*v))
}

/// The audit's verdict on a whole fault (every probe of it).
pub fn fault_verdict(report: &Report, fault: Fault) -> Option<Verdict> {
    worst(report.findings.iter().filter(|f| f.fault == fault))
}

/// One cell of the figure-5 matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CellState {
    /// A probe of this mechanism was stopped.
    Working,
    /// Deployed (or claimed) and a probe got through.
    NotWorking,
    /// A probe found no defense.
    Absent,
    /// Deployed (or unknown: no config), but no probe exercised it.
    NotTested,
    /// The review found it not deployed, and no probe says otherwise.
    NotDeployed,
}

impl CellState {
    pub fn class(self) -> &'static str {
        match self {
            CellState::Working => "working",
            CellState::NotWorking => "not-working",
            CellState::Absent => "absent",
            CellState::NotTested => "not-tested",
            CellState::NotDeployed => "not-deployed",
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            CellState::Working => "working",
            CellState::NotWorking => "not working",
            CellState::Absent => "absent",
            CellState::NotTested => "not tested",
            CellState::NotDeployed => "not deployed",
        }
    }

    pub const ALL: [CellState; 5] = [
        CellState::Working,
        CellState::NotWorking,
        CellState::Absent,
        CellState::NotTested,
        CellState::NotDeployed,
    ];
}

/// The state of (fault, mechanism), `None` when the mechanism does not
/// cover the fault. Findings decide; without one, the review does.
pub fn cell_state(report: &Report, fault: Fault, mechanism: u8) -> Option<(Coverage, CellState)> {
    let cover = faults::model(fault)
        .covers
        .iter()
        .find(|c| c.mechanism == mechanism)?;
    let tested = worst(
        report
            .findings
            .iter()
            .filter(|f| f.fault == fault && f.mechanism == Some(mechanism)),
    );
    let state = match tested {
        Some(Verdict::Working) => CellState::Working,
        Some(Verdict::NotWorking) => CellState::NotWorking,
        Some(Verdict::Absent) => CellState::Absent,
        Some(Verdict::NotTested) | None => match &report.review {
            Some(r) if r.deployed_at(mechanism).is_empty() => CellState::NotDeployed,
            _ => CellState::NotTested,
        },
    };
    Some((cover.coverage, state))
}

/// `2026-12-01 08:04 UTC`.
pub fn utc(unix: u64) -> String {
    chrono::DateTime::from_timestamp(unix as i64, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| unix.to_string())
}

/// The mechanism's Table I name.
pub fn mechanism_name(number: u8) -> &'static str {
    palisade_policy::catalogue::mechanism(number)
        .map(|m| m.name)
        .unwrap_or("?")
}

pub fn stages_list(stages: &[palisade_config::StageKind]) -> String {
    stages
        .iter()
        .map(|s| s.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Text for HTML and SVG.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
