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

/// A report for the renderers' tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use crate::history::{Sample, Snapshot};
    use crate::model::{Fault, Finding, Line, Verdict};
    use crate::report::Report;

    /// A report with every kind of cell: local.toml's review, probes that
    /// worked, failed and were skipped, and a metrics history.
    pub(crate) fn sample_report(snapshots: usize) -> Report {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../config/local.toml"
        ))
        .unwrap();
        let config = palisade_config::parse(std::path::Path::new("local.toml"), &text).unwrap();
        let finding = |fault, mechanism, verdict, probe: &str, detail: &str| Finding {
            fault,
            mechanism,
            probe: probe.into(),
            title: format!("{probe} <tried>"),
            verdict,
            detail: detail.into(),
            transcript: vec![
                Line {
                    dir: '*',
                    text: "connect 127.0.0.1:2525".into(),
                },
                Line {
                    dir: 'S',
                    text: "220 mail.example.test ESMTP".into(),
                },
                Line {
                    dir: 'C',
                    text: "RCPT TO:<victim%elsewhere.test@example.test>".into(),
                },
                Line {
                    dir: 'S',
                    text: detail.into(),
                },
            ],
        };
        let findings = vec![
            finding(
                Fault::OpenRelay,
                Some(7),
                Verdict::Working,
                "open-relay-percent-hack",
                "550 5.7.1 relaying denied",
            ),
            finding(
                Fault::Spam,
                Some(22),
                Verdict::NotWorking,
                "greylisting",
                "250 2.1.5 ok",
            ),
            finding(
                Fault::Slammer,
                Some(32),
                Verdict::Absent,
                "early-talker",
                "250 accepted a client that talked first",
            ),
            finding(
                Fault::Virus,
                Some(28),
                Verdict::NotTested,
                "eicar",
                "no test account",
            ),
        ];
        let mut report = Report::from_findings("config/local.toml".into(), findings, Some(&config));
        report.history = (0..snapshots as u64)
            .map(|i| Snapshot {
                unix: 1_764_576_000 + i * 3600,
                samples: vec![
                    Sample {
                        node: "mx-1".into(),
                        mechanism: 22,
                        what: "tempfail".into(),
                        value: (i * i * 5) as f64,
                    },
                    Sample {
                        node: "mx-1".into(),
                        mechanism: 7,
                        what: "reject".into(),
                        value: (i * 3 + 1) as f64,
                    },
                    Sample {
                        node: "antivirus-1".into(),
                        mechanism: 28,
                        what: "clean".into(),
                        value: (i * 40 + 2) as f64,
                    },
                    Sample {
                        node: "antivirus-1".into(),
                        mechanism: 28,
                        what: "infected".into(),
                        value: i as f64,
                    },
                ],
                unreachable: Vec::new(),
            })
            .collect();
        report
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::sample_report;
    use crate::report::{render, Format, Report};

    #[test]
    fn json_round_trips() {
        let report = sample_report(3);
        let json = render(&report, Format::Json);
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(render(&back, Format::Json), json);
        assert_eq!(back.findings.len(), 4);
        assert_eq!(back.review.as_ref().unwrap().coverage.len(), 14);
        assert_eq!(back.history.len(), 3);
        // The fields scripts read, by name.
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["review"]["coverage"][2]["fault"], "open-relay");
        assert_eq!(v["review"]["coverage"][2]["protection"], "solved");
        assert_eq!(v["evaluation"][0]["fault"], "spam");
    }

    #[test]
    fn markdown_matrix_has_a_row_per_fault() {
        let md = render(&sample_report(1), Format::Markdown);
        let start = md.find("| fault | review | audit |").unwrap();
        let rows: Vec<&str> = md[start..]
            .lines()
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .collect();
        assert_eq!(rows.len(), 14);
        assert!(
            rows[2].starts_with("| open relay | solved | working |"),
            "{}",
            rows[2]
        );
        assert!(md.contains("```toml\n[stage.mx.mechanisms.dm22_greylist]"));
        // A pipe inside a cell does not break the table.
        assert!(!rows.iter().any(|r| r.matches(" | ").count() != 4));
    }
}
