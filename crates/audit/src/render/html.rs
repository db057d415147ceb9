//! `--format html`: one self-contained page — inline CSS and SVG, no
//! script, no external resource — that an admin can publish from cron to
//! a web directory or mail to someone: the figure-5 matrix coloured by
//! verdict, the review, every probe with its transcript, the evaluation
//! and the charts of what each mechanism did.

use std::fmt::Write as _;

use crate::faults::{self, Protection};
use crate::history;
use crate::model::Coverage;
use crate::render::{
    attributes, cell_state, coverage_icon, coverage_word, esc, fault_verdict, mechanism_name, svg,
    utc, verdict_word, CellState,
};
use crate::report::Report;

const STYLE: &str = "
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1d2329;margin:0;background:#f6f7f9}
main{max-width:1360px;margin:0 auto;padding:18px 24px 40px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 10px;border-bottom:2px solid #d8dde3;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}
.meta{color:#59636e;margin:0}.summary{font-size:15px;margin:10px 0 0}
section{background:#fff;border:1px solid #dde2e8;border-radius:6px;padding:4px 18px 16px;margin-top:18px}
table{border-collapse:collapse}td,th{padding:3px 6px;text-align:left;vertical-align:top}
table.list{width:100%;table-layout:fixed}table.list td:nth-child(1){width:48px}table.list td:nth-child(2){width:330px}table.list td:nth-child(3){width:96px}table.list tr:nth-child(even){background:#f3f5f7}table.list td.settings{color:#3b4650;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
table.matrix th.dm{height:190px;vertical-align:bottom;padding:2px 0;width:27px}
table.matrix th.dm span{writing-mode:vertical-rl;transform:rotate(180deg);white-space:nowrap;font-weight:500;font-size:12px}
table.matrix td.cell{width:25px;height:25px;padding:0;text-align:center;font-size:15px;border:1px solid #fff}
table.matrix tbody tr{border-top:1px solid #e5e8ec}table.matrix tbody th{white-space:nowrap;font-weight:600}
.working{background:#c8e6c9;color:#1b5e20}.not-working{background:#ffcdd2;color:#b71c1c}
.absent{background:#ffe0b2;color:#e65100}.not-tested{background:#dfe6ec;color:#37474f}
.not-deployed{background:#fafafa;color:#b0b7bf}
.badge{display:inline-block;border-radius:3px;padding:0 6px;font-size:12px;font-weight:600;white-space:nowrap}
.solved{background:#2e7d32;color:#fff}.partial{background:#f9a825;color:#222}.unprotected{background:#c62828;color:#fff}
.v-working{background:#2e7d32;color:#fff}.v-not-working{background:#c62828;color:#fff}.v-absent{background:#ef6c00;color:#fff}.v-not-tested{background:#78909c;color:#fff}
.legend span.key{display:inline-block;width:18px;height:18px;line-height:18px;text-align:center;margin:0 4px 0 12px;border:1px solid #ccd}
details{border:1px solid #e1e5ea;border-radius:4px;margin:6px 0;background:#fbfcfd}
summary{cursor:pointer;padding:5px 8px}details[open] summary{border-bottom:1px solid #e1e5ea}
pre{margin:0;padding:8px 10px;overflow-x:auto;font:12px/1.4 ui-monospace,Menlo,Consolas,monospace;white-space:pre-wrap}
pre .c{color:#0d47a1}pre .s{color:#1b5e20}pre .n{color:#6d4c41;font-style:italic}
.eval{border-left:4px solid #c62828;padding:2px 12px;margin:12px 0;background:#fff8f8}
.eval pre{background:#f3f5f7;border-radius:3px;margin:4px 0 10px}
.charts{display:flex;flex-wrap:wrap;gap:14px}
svg.chart{background:#fff;border:1px solid #e1e5ea;border-radius:4px}
svg .label,svg .value,svg .tick{font:11px system-ui,sans-serif;fill:#37474f}svg .title{font:600 13px system-ui,sans-serif;fill:#1d2329}
svg .axis{stroke:#90a4ae;stroke-width:1}
.muted{color:#6b7580}
";

pub fn render(report: &Report) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>Palisade report: {}</title><style>{STYLE}</style></head><body><main>\
         <h1>Palisade report</h1><p class=\"meta\">{} · generated {}</p>",
        esc(&report.target),
        esc(&report.target),
        utc(report.generated_unix)
    );
    let _ = write!(
        h,
        "<p class=\"summary\">{}</p>",
        esc(crate::render::text::summary(report).trim())
    );
    matrix(&mut h, report);
    evaluation(&mut h, report);
    charts(&mut h, report);
    findings(&mut h, report);
    review(&mut h, report);
    h.push_str(
        "<p class=\"muted\">Methodology: Maraboli &amp; Vallejos, steps 1–4 (review, fault \
         detection, failure evaluation, deployment). See docs/audit.md.</p></main></body></html>\n",
    );
    h
}

fn protection_badge(p: Protection) -> String {
    format!("<span class=\"badge {0}\">{0}</span>", p.word())
}

fn verdict_badge(v: crate::model::Verdict) -> String {
    let word = verdict_word(v);
    format!(
        "<span class=\"badge v-{}\">{word}</span>",
        word.replace(' ', "-")
    )
}

/// Figure 5: faults × mechanisms, each cell coloured by what is known.
fn matrix(h: &mut String, report: &Report) {
    let columns = faults::matrix_mechanisms();
    h.push_str(
        "<section id=\"matrix\"><h2>Fault coverage (figure 5)</h2><p class=\"legend\">\
         ■ full solution · ◆ full as a group · ● mitigation",
    );
    for s in CellState::ALL {
        let _ = write!(h, "<span class=\"key {}\">■</span>{}", s.class(), s.word());
    }
    h.push_str(
        "</p><table class=\"matrix\"><thead><tr><th>fault</th><th>review</th><th>audit</th>",
    );
    for n in &columns {
        let name = mechanism_name(*n);
        let short = shorten(name, 30);
        let _ = write!(
            h,
            "<th class=\"dm\" title=\"DM{n} {}\"><span>DM{n} {}</span></th>",
            esc(name),
            esc(&short)
        );
    }
    h.push_str("</tr></thead><tbody>");
    for model in &faults::FAULTS {
        let fault = model.fault;
        let review = report
            .review
            .as_ref()
            .and_then(|r| r.coverage_of(fault))
            .map(|c| protection_badge(c.protection))
            .unwrap_or_else(|| "<span class=\"muted\">—</span>".into());
        let audit = fault_verdict(report, fault)
            .map(verdict_badge)
            .unwrap_or_else(|| "<span class=\"muted\">—</span>".into());
        let _ = write!(
            h,
            "<tr data-fault=\"{}\"><th title=\"{}\">{}</th><td>{review}</td><td>{audit}</td>",
            fault.id(),
            esc(model.description),
            esc(fault.name())
        );
        for n in &columns {
            match cell_state(report, fault, *n) {
                Some((coverage, state)) => {
                    let _ = write!(
                        h,
                        "<td class=\"cell {}\" title=\"{} × DM{n} {}: {}, {}\">{}</td>",
                        state.class(),
                        esc(fault.name()),
                        esc(mechanism_name(*n)),
                        coverage_word(coverage),
                        state.word(),
                        coverage_icon(coverage)
                    );
                }
                None => h.push_str("<td class=\"cell\"></td>"),
            }
        }
        h.push_str("</tr>");
    }
    h.push_str("</tbody></table></section>");
}

/// At most `max` characters, cut at a word, with an ellipsis.
fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out = String::new();
    for word in text.split_whitespace() {
        if out.chars().count() + word.chars().count() + 1 > max - 1 {
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out.push('…');
    out
}

/// Steps 3-4.
fn evaluation(h: &mut String, report: &Report) {
    h.push_str(
        "<section id=\"evaluation\"><h2>Failure evaluation and deployment plan (steps 3–4)</h2>",
    );
    if report.evaluation.is_empty() {
        h.push_str("<p>No failing or unprotected fault.</p>");
    }
    for e in &report.evaluation {
        let _ =
            write!(
            h,
            "<div class=\"eval\" data-fault=\"{}\"><h3>{}</h3><p>Endangers <b>{}</b>{}.</p><ul>",
            e.fault.id(),
            esc(e.fault.name()),
            esc(&attributes(&e.attributes)),
            if e.other_systems { "; other systems may be affected" } else { "" }
        );
        for why in &e.reasons {
            let _ = write!(h, "<li>{}</li>", esc(why));
        }
        h.push_str("</ul>");
        // The failing mechanism's fix and the solutions first; the other
        // mitigations folded, so a partial fault's page stays short.
        let first = e
            .steps
            .iter()
            .take_while(|s| s.coverage != Coverage::Mitigation)
            .count()
            .max(1);
        for (i, s) in e.steps.iter().enumerate() {
            if i == first {
                let _ = write!(
                    h,
                    "<details><summary>{} more way(s) to mitigate it</summary>",
                    e.steps.len() - first
                );
            }
            let _ = write!(
                h,
                "<p>{} <b>DM{} {}</b>{}{}</p><pre>{}</pre>",
                coverage_icon(s.coverage),
                s.mechanism,
                esc(&s.name),
                s.stage
                    .map(|st| format!(" at stage {}", st.name()))
                    .unwrap_or_default(),
                s.config_key
                    .as_deref()
                    .map(|k| format!(" — <code>{}</code>", esc(k)))
                    .unwrap_or_default(),
                esc(&s.example)
            );
        }
        if e.steps.len() > first {
            h.push_str("</details>");
        }
        h.push_str("</div>");
    }
    h.push_str("</section>");
}

/// Step 2: every probe, its transcript folded.
fn findings(h: &mut String, report: &Report) {
    if report.findings.is_empty() {
        return;
    }
    let _ = write!(
        h,
        "<section id=\"findings\"><h2>Fault detection (step 2): {} probes</h2>",
        report.findings.len()
    );
    for f in &report.findings {
        let _ = write!(
            h,
            "<details data-probe=\"{}\"><summary>{} <b>{}</b>{} — {}: {}</summary><pre>",
            esc(&f.probe),
            verdict_badge(f.verdict),
            esc(f.fault.name()),
            f.mechanism.map(|n| format!(" (DM{n})")).unwrap_or_default(),
            esc(&f.title),
            esc(&f.detail)
        );
        for l in &f.transcript {
            let class = match l.dir {
                'C' => "c",
                'S' => "s",
                _ => "n",
            };
            let _ = writeln!(
                h,
                "<span class=\"{class}\">{} {}</span>",
                l.dir,
                esc(&l.text)
            );
        }
        if f.transcript.is_empty() {
            h.push_str("<span class=\"n\">(no transcript)</span>");
        }
        h.push_str("</pre></details>");
    }
    h.push_str("</section>");
}

/// Step 1: the itemised list per stage.
fn review(h: &mut String, report: &Report) {
    let Some(r) = &report.review else { return };
    h.push_str("<section id=\"review\"><h2>Defense mechanisms per stage (step 1, Table I)</h2>");
    for s in &r.stages {
        let _ = write!(
            h,
            "<h3>{} {} <span class=\"muted\">({})</span></h3><table class=\"list\">",
            s.stage.letter(),
            s.stage.name(),
            if s.nodes.is_empty() {
                "no nodes".to_string()
            } else {
                esc(&s.nodes.join(", "))
            }
        );
        for m in &s.mechanisms {
            let class = match m.presence {
                crate::review::Presence::Deployed => "working",
                crate::review::Presence::Disabled => "absent",
                _ => "not-deployed",
            };
            let _ = write!(
                h,
                "<tr><td>DM{}</td><td>{}</td><td><span class=\"badge {class}\">{}</span></td>\
                 <td class=\"settings\">{}</td></tr>",
                m.mechanism,
                esc(&m.name),
                m.presence.word(),
                esc(&m.settings)
            );
        }
        h.push_str("</table>");
    }
    h.push_str("<h3>Outside the stages</h3><table class=\"list\">");
    for m in &r.outside {
        let _ = write!(
            h,
            "<tr><td>DM{}</td><td>{}</td><td class=\"settings\">{}</td></tr>",
            m.mechanism,
            esc(&m.name),
            esc(&m.settings)
        );
    }
    h.push_str("</table>");
    h.push_str("</section>");
}

/// Figures 12–15: what each mechanism did, from the metrics history.
fn charts(h: &mut String, report: &Report) {
    h.push_str("<section id=\"charts\"><h2>What each mechanism did</h2>");
    let charts = history::charts(&report.history);
    if report.history.is_empty() {
        h.push_str(
            "<p class=\"muted\">No metrics history: run with <code>--config</code> so the \
             nodes' /metrics are recorded (each run adds a snapshot).</p>",
        );
    } else if charts.is_empty() {
        let _ = write!(
            h,
            "<p class=\"muted\">{} snapshot(s): no mechanism has acted yet.</p>",
            report.history.len()
        );
    } else if report.history.len() == 1 {
        let _ = write!(
            h,
            "<p>Totals since the nodes started ({}); the next runs add the series.</p>{}",
            utc(report.history[0].unix),
            svg::bars(&charts)
        );
    } else {
        let _ = write!(
            h,
            "<p>Actions per interval between the {} snapshots, {} to {}.</p><div class=\"charts\">",
            report.history.len(),
            utc(report.history[0].unix),
            utc(report.history[report.history.len() - 1].unix)
        );
        for c in &charts {
            h.push_str(&svg::lines(c));
        }
        h.push_str("</div>");
    }
    if let Some(last) = report.history.last() {
        if !last.unreachable.is_empty() {
            // Node names in the text, the errors on hover.
            let names: Vec<&str> = last
                .unreachable
                .iter()
                .map(|u| u.split(' ').next().unwrap_or(u))
                .collect();
            let _ = write!(
                h,
                "<p class=\"muted\" title=\"{}\">No metrics at the last snapshot from: {}</p>",
                esc(&last.unreachable.join("\n")),
                esc(&names.join(", "))
            );
        }
    }
    h.push_str("</section>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::fixtures::sample_report;

    #[test]
    fn page_is_self_contained_and_has_the_matrix() {
        for n in [1, 12] {
            let page = render(&sample_report(n));
            if let Some(dir) = std::env::var_os("PALISADE_HTML_OUT") {
                std::fs::write(
                    std::path::Path::new(&dir).join(format!("report-{n}.html")),
                    &page,
                )
                .unwrap();
            }
            assert!(page.starts_with("<!DOCTYPE html>"));
            for banned in ["<script", "<link", " src=", "@import", "url("] {
                assert!(!page.contains(banned), "{banned}");
            }
            // The only URL is SVG's namespace name, which is never fetched.
            assert_eq!(
                page.matches("http").count(),
                page.matches("http://www.w3.org/2000/svg").count()
            );
            assert_eq!(page.matches("<tr data-fault=").count(), 14);
            assert!(page.contains("class=\"cell working\""));
            assert!(page.contains("class=\"cell not-working\""));
            assert!(page.contains("class=\"cell absent\""));
            assert!(page.contains("class=\"cell not-deployed\""));
            assert!(page.contains("class=\"cell not-tested\""));
            // Probe text is escaped, transcripts fold.
            assert!(page.contains("&lt;tried&gt;") && !page.contains("<tried>"));
            // 4 transcripts, and the other mitigations of spam and slammer.
            assert_eq!(page.matches("<details").count(), 6);
            if n == 1 {
                assert!(page.contains("class=\"chart bars\""));
            } else {
                assert!(page.contains("class=\"chart lines\""));
            }
        }
    }
}
