//! Inline SVG charts of what each mechanism did (the paper's figures
//! 12–15): bars of the totals when the history has one snapshot, lines of
//! the count per interval when it has more. Plain SVG, no script, so the
//! page works offline and in a mail client.

use std::fmt::Write as _;

use crate::history::Chart;
use crate::render::{esc, mechanism_name, utc};

/// Series colours (colour-blind safe, Okabe–Ito).
const PALETTE: [&str; 8] = [
    "#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#f0e442", "#000000",
];

/// One snapshot: every (mechanism, what) total as a horizontal bar.
pub fn bars(charts: &[Chart]) -> String {
    let rows: Vec<(String, f64)> = charts
        .iter()
        .flat_map(|c| {
            c.series.iter().map(move |(what, points)| {
                (
                    format!("DM{} {}: {what}", c.mechanism, mechanism_name(c.mechanism)),
                    points.last().map(|p| p.1).unwrap_or(0.0),
                )
            })
        })
        .collect();
    let max = rows.iter().map(|r| r.1).fold(0.0, f64::max).max(1.0);
    let (label_w, bar_w, row_h) = (360.0, 420.0, 22.0);
    let height = rows.len() as f64 * row_h + 10.0;
    let mut svg = format!(
        "<svg class=\"chart bars\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" \
         viewBox=\"0 0 {} {height}\" role=\"img\" aria-label=\"defense actions so far\">",
        label_w + bar_w + 80.0,
        label_w + bar_w + 80.0
    );
    for (i, (label, v)) in rows.iter().enumerate() {
        let y = 5.0 + i as f64 * row_h;
        let w = (v / max * bar_w).max(1.0);
        let colour = PALETTE[i % PALETTE.len()];
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" class=\"label\">{}</text>\
             <rect x=\"{label_w}\" y=\"{y}\" width=\"{w:.1}\" height=\"{}\" fill=\"{colour}\"/>\
             <text x=\"{:.1}\" y=\"{}\" class=\"value\">{}</text>",
            label_w - 8.0,
            y + 15.0,
            esc(&label),
            row_h - 6.0,
            label_w + w + 6.0,
            y + 15.0,
            number(*v)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Many snapshots: one line per series, count per interval over time.
pub fn lines(chart: &Chart) -> String {
    let (w, h) = (520.0, 200.0);
    let (left, right, top, bottom) = (50.0, 10.0, 28.0, 34.0);
    let points = chart.series.iter().flat_map(|(_, p)| p.iter());
    let t0 = points.clone().map(|p| p.0).min().unwrap_or(0);
    let t1 = points.clone().map(|p| p.0).max().unwrap_or(0);
    let vmax = points.map(|p| p.1).fold(0.0, f64::max).max(1.0);
    let span = (t1.saturating_sub(t0)).max(1) as f64;
    let x = |t: u64| left + (t.saturating_sub(t0)) as f64 / span * (w - left - right);
    let y = |v: f64| top + (1.0 - v / vmax) * (h - top - bottom);
    let mut svg = format!(
        "<svg class=\"chart lines\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"DM{0} over time\">\
         <text x=\"{left}\" y=\"16\" class=\"title\">DM{0} {1}</text>\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{2}\" class=\"axis\"/>\
         <line x1=\"{left}\" y1=\"{2}\" x2=\"{3}\" y2=\"{2}\" class=\"axis\"/>\
         <text x=\"{4}\" y=\"{5}\" text-anchor=\"end\" class=\"tick\">{6}</text>\
         <text x=\"{4}\" y=\"{2}\" text-anchor=\"end\" class=\"tick\">0</text>\
         <text x=\"{left}\" y=\"{7}\" class=\"tick\">{8}</text>\
         <text x=\"{3}\" y=\"{7}\" text-anchor=\"end\" class=\"tick\">{9}</text>",
        chart.mechanism,
        esc(mechanism_name(chart.mechanism)),
        h - bottom,
        w - right,
        left - 4.0,
        top + 4.0,
        number(vmax),
        h - bottom + 16.0,
        utc(t0),
        utc(t1),
    );
    let mut legend_x = left + 4.0;
    for (i, (what, pts)) in chart.series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|&(t, v)| format!("{:.1},{:.1}", x(t), y(v)))
            .collect();
        let _ = write!(
            svg,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"/>",
            path.join(" ")
        );
        for &(t, v) in pts {
            let _ = write!(
                svg,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{colour}\"><title>{}: {} at {}</title></circle>",
                x(t),
                y(v),
                esc(what),
                number(v),
                utc(t)
            );
        }
        let _ = write!(
            svg,
            "<rect x=\"{legend_x}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{colour}\"/>\
             <text x=\"{}\" y=\"{}\" class=\"tick\">{}</text>",
            h - 12.0,
            legend_x + 14.0,
            h - 3.0,
            esc(what)
        );
        legend_x += 24.0 + 7.0 * what.chars().count() as f64;
    }
    svg.push_str("</svg>");
    svg
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(points: Vec<(u64, f64)>) -> Chart {
        Chart {
            mechanism: 22,
            series: vec![("tempfail".into(), points)],
        }
    }

    #[test]
    fn bars_and_lines_are_svg() {
        let b = bars(&[chart(vec![(100, 7.0)])]);
        assert!(b.starts_with("<svg") && b.ends_with("</svg>"));
        assert!(b.contains("DM22 Greylisting: tempfail"));
        assert!(b.contains(">7</text>"));
        let l = lines(&chart(vec![(200, 3.0), (300, 4.0), (400, 2.0)]));
        assert!(l.contains("<polyline"));
        assert_eq!(l.matches("<circle").count(), 3);
        // One interval still draws (a dot), no division by zero.
        let one = lines(&chart(vec![(200, 3.0)]));
        assert!(!one.contains("NaN"));
    }
}
