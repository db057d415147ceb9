//! Prometheus text exposition on each node's `metrics` address.
//!
//! A small registry of counters and gauges keyed by name and labels; the
//! node label is added to every series. Hand-written because the format is
//! three lines of text and the crates that do it pull in a web framework.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

type Series = BTreeMap<String, f64>;
/// Metric name -> (kind, help text, series by label set).
type Registry = BTreeMap<&'static str, (Kind, &'static str, Series)>;

#[derive(Clone)]
pub struct Metrics {
    node: Arc<str>,
    inner: Arc<Mutex<Registry>>,
}

impl Metrics {
    pub fn new(node: &str) -> Self {
        Metrics {
            node: node.into(),
            inner: Arc::default(),
        }
    }

    fn labels(&self, labels: &[(&str, &str)]) -> String {
        let mut s = format!("node=\"{}\"", self.node);
        for (k, v) in labels {
            let v = v.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = write!(s, ",{k}=\"{v}\"");
        }
        s
    }

    /// Adds `n` to a counter.
    pub fn add(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)], n: f64) {
        let key = self.labels(labels);
        let mut m = self.inner.lock().unwrap();
        let entry = m
            .entry(name)
            .or_insert_with(|| (Kind::Counter, help, Series::new()));
        *entry.2.entry(key).or_default() += n;
    }

    pub fn inc(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)]) {
        self.add(name, help, labels, 1.0);
    }

    pub fn set(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)], v: f64) {
        let key = self.labels(labels);
        let mut m = self.inner.lock().unwrap();
        let entry = m
            .entry(name)
            .or_insert_with(|| (Kind::Gauge, help, Series::new()));
        entry.2.insert(key, v);
    }

    /// The current value of one series (tests and `palisade` tooling).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let key = self.labels(labels);
        let m = self.inner.lock().unwrap();
        m.get(name)
            .and_then(|(_, _, s)| s.get(&key).copied())
            .unwrap_or(0.0)
    }

    pub fn render(&self) -> String {
        let m = self.inner.lock().unwrap();
        let mut out = String::new();
        for (name, (kind, help, series)) in m.iter() {
            let kind = match kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in series {
                let _ = writeln!(out, "{name}{{{labels}}} {v}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_gauges_with_node_label() {
        let m = Metrics::new("mx-1");
        m.inc(
            "palisade_messages_total",
            "Messages.",
            &[("event", "accepted")],
        );
        m.inc(
            "palisade_messages_total",
            "Messages.",
            &[("event", "accepted")],
        );
        m.set("palisade_queue_messages", "Queued.", &[], 7.0);
        let text = m.render();
        assert!(text.contains("# TYPE palisade_messages_total counter"));
        assert!(text.contains("palisade_messages_total{node=\"mx-1\",event=\"accepted\"} 2"));
        assert!(text.contains("palisade_queue_messages{node=\"mx-1\"} 7"));
        assert_eq!(
            m.get("palisade_messages_total", &[("event", "accepted")]),
            2.0
        );
    }
}
