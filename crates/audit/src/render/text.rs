//! `--format text`: the terminal report, readable at 100 columns (long
//! cells wrap inside their column).

use crate::faults::Protection;
use crate::render::{attributes, coverage_icon, fault_verdict, utc, verdict_word};
use crate::report::Report;
use crate::review::CoverState;

/// The width the report is laid out for.
pub const WIDTH: usize = 100;

pub fn render(report: &Report) -> String {
    let mut out = format!(
        "Palisade report: {}\n{}\n",
        report.target,
        utc(report.generated_unix)
    );
    if let Some(r) = &report.review {
        out.push_str("\nStep 1: defense mechanisms per stage (Table I)\n");
        for s in &r.stages {
            let nodes = if s.nodes.is_empty() {
                "no nodes".to_string()
            } else {
                s.nodes.join(", ")
            };
            out.push_str(&format!(
                "\n{} {} ({nodes}){}\n",
                s.stage.letter(),
                s.stage.name(),
                if s.in_flow || s.nodes.is_empty() {
                    ""
                } else {
                    ": not in the mail flow"
                }
            ));
            let rows: Vec<Vec<String>> = s
                .mechanisms
                .iter()
                .map(|m| {
                    vec![
                        format!("DM{}", m.mechanism),
                        m.name.clone(),
                        m.presence.word().to_string(),
                        m.settings.clone(),
                    ]
                })
                .collect();
            out.push_str(&table(&rows, &[2, 5, 34, 10], WIDTH));
        }
        out.push_str("\nOutside the stages\n");
        let rows: Vec<Vec<String>> = r
            .outside
            .iter()
            .map(|m| {
                vec![
                    format!("DM{}", m.mechanism),
                    m.name.clone(),
                    m.settings.clone(),
                ]
            })
            .collect();
        out.push_str(&table(&rows, &[2, 5, 34], WIDTH));

        out.push_str("\nFault coverage (figure 5, Table II): ■ full  ◆ group  ● mitigation\n");
        let mut rows = vec![vec![
            "fault".to_string(),
            "review".into(),
            "audit".into(),
            "deployed".into(),
            "not deployed".into(),
        ]];
        for c in &r.coverage {
            let list = |deployed: bool| -> String {
                c.mechanisms
                    .iter()
                    .filter(|m| m.deployed_at.is_empty() != deployed)
                    .map(cover_label)
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            rows.push(vec![
                c.fault.name().to_string(),
                match c.protection {
                    Protection::Unprotected => "UNPROTECTED".to_string(),
                    p => p.word().to_string(),
                },
                fault_verdict(report, c.fault)
                    .map(|v| verdict_word(v).to_string())
                    .unwrap_or_else(|| "—".into()),
                list(true),
                list(false),
            ]);
        }
        out.push_str(&table(&rows, &[0, 23, 12, 12, 27], WIDTH));
    }

    if !report.findings.is_empty() {
        out.push_str(&format!(
            "\nStep 2: fault detection ({} probes)\n",
            report.findings.len()
        ));
        let rows: Vec<Vec<String>> = report
            .findings
            .iter()
            .map(|f| {
                let verdict = verdict_word(f.verdict);
                vec![
                    f.fault.id().to_string(),
                    f.mechanism.map(|n| format!("DM{n}")).unwrap_or_default(),
                    if f.verdict.is_failure() {
                        verdict.to_uppercase()
                    } else {
                        verdict.to_string()
                    },
                    format!("{}: {} ({})", f.probe, f.title, f.detail),
                ]
            })
            .collect();
        out.push_str(&table(&rows, &[0, 22, 5, 12], WIDTH));
    }

    out.push_str("\nSteps 3-4: failure evaluation and deployment plan\n");
    if report.evaluation.is_empty() {
        out.push_str("  no failing or unprotected fault\n");
    }
    for e in &report.evaluation {
        out.push_str(&format!(
            "\n{}: endangers {}{}\n",
            e.fault.name(),
            attributes(&e.attributes),
            if e.other_systems {
                "; other systems may be affected"
            } else {
                ""
            }
        ));
        for why in &e.reasons {
            out.push_str(&wrap_indented(&format!("why: {why}"), 2, WIDTH));
        }
        for s in &e.steps {
            let at = match s.stage {
                Some(st) => format!(" at {}", st.name()),
                None => String::new(),
            };
            let key = s
                .config_key
                .as_deref()
                .map(|k| format!(" ({k})"))
                .unwrap_or_default();
            out.push_str(&wrap_indented(
                &format!(
                    "{} DM{} {}{at}{key}",
                    coverage_icon(s.coverage),
                    s.mechanism,
                    s.name
                ),
                2,
                WIDTH,
            ));
            for line in s.example.lines() {
                out.push_str(&format!("      {line}\n"));
            }
        }
    }
    out.push_str(&summary(report));
    out
}

fn cover_label(c: &CoverState) -> String {
    format!("{}DM{}", coverage_icon(c.coverage), c.mechanism)
}

/// The last line: counts, and what the exit status will be.
pub fn summary(report: &Report) -> String {
    let mut parts = Vec::new();
    if let Some(r) = &report.review {
        let n = |p: Protection| r.coverage.iter().filter(|c| c.protection == p).count();
        parts.push(format!(
            "14 faults: {} solved, {} partial, {} unprotected",
            n(Protection::Solved),
            n(Protection::Partial),
            n(Protection::Unprotected)
        ));
    }
    if !report.findings.is_empty() {
        let failing = report
            .findings
            .iter()
            .filter(|f| f.verdict.is_failure())
            .count();
        parts.push(format!(
            "{} probes, {failing} failing",
            report.findings.len()
        ));
    }
    parts.push(if report.has_failures() {
        "status 1 (unprotected faults)".into()
    } else {
        "status 0".into()
    });
    format!("\n{}\n", parts.join("; "))
}

/// Rows as columns: `widths[0]` is the indent, the others the column
/// widths; the last column takes what is left of `width`. Cells wrap.
pub fn table(rows: &[Vec<String>], widths: &[usize], width: usize) -> String {
    let indent = widths[0];
    let fixed: usize = widths[1..].iter().map(|w| w + 1).sum();
    let last = width.saturating_sub(indent + fixed).max(20);
    let mut out = String::new();
    for row in rows {
        let cells: Vec<Vec<String>> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| wrap(cell, widths.get(i + 1).copied().unwrap_or(last)))
            .collect();
        let height = cells.iter().map(Vec::len).max().unwrap_or(1).max(1);
        for line in 0..height {
            let mut text = " ".repeat(indent);
            for (i, cell) in cells.iter().enumerate() {
                let part = cell.get(line).map(String::as_str).unwrap_or("");
                if i + 1 == cells.len() {
                    text.push_str(part);
                } else {
                    let w = widths.get(i + 1).copied().unwrap_or(last);
                    text.push_str(part);
                    text.push_str(&" ".repeat(w.saturating_sub(part.chars().count()) + 1));
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
    }
    out
}

/// Words into lines of at most `width` characters (longer words are cut).
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let mut word: Vec<char> = word.chars().collect();
        while word.len() > width {
            if !line.is_empty() {
                lines.push(std::mem::take(&mut line));
            }
            lines.push(word.drain(..width).collect());
        }
        let word: String = word.into_iter().collect();
        let len = line.chars().count();
        if len > 0 && len + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&word);
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    lines
}

fn wrap_indented(text: &str, indent: usize, width: usize) -> String {
    wrap(text, width - indent - 2)
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            let pad = if i == 0 { indent } else { indent + 2 };
            format!("{}{l}\n", " ".repeat(pad))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_inside_columns() {
        let rows = vec![vec![
            "a".to_string(),
            "one two three four five six".to_string(),
        ]];
        assert_eq!(
            table(&rows, &[2, 3], 26),
            "  a   one two three four\n      five six\n"
        );
        assert_eq!(wrap("abcdefgh", 3), vec!["abc", "def", "gh"]);
        assert_eq!(wrap("", 3), vec![""]);
    }

    #[test]
    fn review_fits_in_100_columns() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../config/local.toml"
        ))
        .unwrap();
        let config = palisade_config::parse(std::path::Path::new("local.toml"), &text).unwrap();
        let report = Report::from_findings("config/local.toml".into(), Vec::new(), Some(&config));
        let out = render(&report);
        for line in out.lines() {
            // Examples are printed as they are; everything else fits.
            if !line.starts_with("      ") {
                assert!(line.chars().count() <= WIDTH, "{line:?}");
            }
        }
        assert!(out.contains("open relay"));
        assert!(out.contains("status 0"));
    }
}
