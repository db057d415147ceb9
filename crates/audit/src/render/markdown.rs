//! `--format markdown`: the report for a wiki page or a ticket.

use crate::render::{
    attributes, coverage_icon, fault_verdict, stages_list, text::summary, utc, verdict_word,
};
use crate::report::Report;

/// A table cell: no pipes or line breaks inside.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\r', '\n'], " ")
}

pub fn render(report: &Report) -> String {
    let mut out = format!(
        "# Palisade report: {}\n\n{}\n",
        cell(&report.target),
        utc(report.generated_unix)
    );
    if let Some(r) = &report.review {
        out.push_str(
            "\n## Fault coverage (figure 5, Table II)\n\n\
             ■ full solution, ◆ full as a group, ● mitigation.\n\n\
             | fault | review | audit | deployed | not deployed |\n\
             |---|---|---|---|---|\n",
        );
        for c in &r.coverage {
            let list = |deployed: bool| -> String {
                c.mechanisms
                    .iter()
                    .filter(|m| m.deployed_at.is_empty() != deployed)
                    .map(|m| {
                        let at = if deployed {
                            format!(" ({})", stages_list(&m.deployed_at))
                        } else {
                            String::new()
                        };
                        format!("{} DM{}{at}", coverage_icon(m.coverage), m.mechanism)
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                c.fault.name(),
                c.protection.word(),
                fault_verdict(report, c.fault)
                    .map(verdict_word)
                    .unwrap_or("—"),
                list(true),
                list(false)
            ));
        }
        out.push_str("\n## Step 1: defense mechanisms per stage (Table I)\n");
        for s in &r.stages {
            out.push_str(&format!(
                "\n### {} {} ({})\n\n| DM | mechanism | state | settings |\n|---|---|---|---|\n",
                s.stage.letter(),
                s.stage.name(),
                if s.nodes.is_empty() {
                    "no nodes".to_string()
                } else {
                    s.nodes.join(", ")
                }
            ));
            for m in &s.mechanisms {
                out.push_str(&format!(
                    "| DM{} | {} | {} | {} |\n",
                    m.mechanism,
                    cell(&m.name),
                    m.presence.word(),
                    cell(&m.settings)
                ));
            }
        }
        out.push_str("\n### Outside the stages\n\n| DM | mechanism | where |\n|---|---|---|\n");
        for m in &r.outside {
            out.push_str(&format!(
                "| DM{} | {} | {} |\n",
                m.mechanism,
                cell(&m.name),
                cell(&m.settings)
            ));
        }
    }
    if !report.findings.is_empty() {
        out.push_str(
            "\n## Step 2: fault detection\n\n| fault | DM | verdict | probe | detail |\n\
             |---|---|---|---|---|\n",
        );
        for f in &report.findings {
            out.push_str(&format!(
                "| {} | {} | {} | {}: {} | {} |\n",
                f.fault.name(),
                f.mechanism.map(|n| format!("DM{n}")).unwrap_or_default(),
                verdict_word(f.verdict),
                cell(&f.probe),
                cell(&f.title),
                cell(&f.detail)
            ));
        }
        for f in report.findings.iter().filter(|f| !f.transcript.is_empty()) {
            out.push_str(&format!(
                "\n<details><summary>{} ({})</summary>\n\n```\n",
                cell(&f.probe),
                verdict_word(f.verdict)
            ));
            for l in &f.transcript {
                out.push_str(&format!("{} {}\n", l.dir, l.text.replace("```", "'''")));
            }
            out.push_str("```\n\n</details>\n");
        }
    }
    out.push_str("\n## Steps 3-4: failure evaluation and deployment plan\n");
    if report.evaluation.is_empty() {
        out.push_str("\nNo failing or unprotected fault.\n");
    }
    for e in &report.evaluation {
        out.push_str(&format!(
            "\n### {}\n\nEndangers: {}.{}\n\n",
            e.fault.name(),
            attributes(&e.attributes),
            if e.other_systems {
                " Other systems may be affected."
            } else {
                ""
            }
        ));
        for why in &e.reasons {
            out.push_str(&format!("- {}\n", cell(why)));
        }
        for s in &e.steps {
            out.push_str(&format!(
                "\n{} **DM{} {}**{}{}\n\n```toml\n{}\n```\n",
                coverage_icon(s.coverage),
                s.mechanism,
                s.name,
                s.stage
                    .map(|st| format!(" at {}", st.name()))
                    .unwrap_or_default(),
                s.config_key
                    .as_deref()
                    .map(|k| format!(" (`{k}`)"))
                    .unwrap_or_default(),
                s.example
            ));
        }
    }
    out.push_str(&summary(report));
    out
}
