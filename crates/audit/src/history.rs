//! What each mechanism did over time (the paper's figures 12–15), from the
//! nodes' `/metrics`.
//!
//! Counters are a point in time, so every `palisade review --config` and
//! `palisade audit --config` run appends one snapshot of every node's
//! defense counters to `<data_dir>/audit/metrics-history.jsonl`; run from
//! cron, the file becomes the series the HTML report charts. The nodes
//! keep no history themselves (nothing to lose on restart, nothing to
//! configure), and a counter that went down between two snapshots is read
//! as a node restart.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use palisade_config::Config;

/// The counters charted, and the Table I mechanism each one belongs to
/// (`None`: the `mechanism` label says).
pub const CHARTED: &[(&str, Option<u8>, &str)] = &[
    ("palisade_defense_actions_total", None, "action"),
    ("palisade_auth_total", Some(4), "result"),
    ("palisade_spam_verdicts_total", Some(24), "verdict"),
    ("palisade_virus_scans_total", Some(28), "result"),
];

/// Snapshots kept when the file is read (about a year of hourly runs).
pub const KEEP: usize = 9000;

/// One counter of one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub node: String,
    /// Table I number.
    pub mechanism: u8,
    /// What it did: the action, result or verdict label.
    pub what: String,
    pub value: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub unix: u64,
    pub samples: Vec<Sample>,
    /// Nodes whose `/metrics` could not be read, with the error.
    #[serde(default)]
    pub unreachable: Vec<String>,
}

/// The history file of a configuration.
pub fn path(config: &Config) -> PathBuf {
    config
        .gateway
        .data_dir
        .join("audit")
        .join("metrics-history.jsonl")
}

/// Reads every node's metrics, appends the snapshot to the history file
/// and returns the history (the last [`KEEP`] snapshots).
pub fn record(config: &Config) -> anyhow::Result<Vec<Snapshot>> {
    let snap = scrape(config);
    let file = path(config);
    // A run while the architecture is down adds nothing to the series.
    let with_metrics = config.node.values().filter(|n| n.metrics.is_some()).count();
    if snap.unreachable.len() < with_metrics {
        append(&file, &snap).with_context(|| format!("appending to {}", file.display()))?;
    }
    load(&file).with_context(|| format!("reading {}", file.display()))
}

/// One snapshot of every node that has a `metrics` address.
pub fn scrape(config: &Config) -> Snapshot {
    let mut snap = Snapshot {
        unix: now(),
        samples: Vec::new(),
        unreachable: Vec::new(),
    };
    for (name, node) in &config.node {
        let Some(addr) = node.metrics else { continue };
        match fetch_metrics(addr) {
            Ok(text) => snap.samples.extend(parse(name, &text)),
            Err(e) => snap.unreachable.push(format!("{name} {addr}: {e}")),
        }
    }
    snap
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `GET /metrics` over plain HTTP/1.0: the node endpoint is ours, on an
/// internal address, and answers in one response, so a client library
/// would add nothing but dependencies.
fn fetch_metrics(addr: SocketAddr) -> std::io::Result<String> {
    // A node listening on the wildcard address is reached on loopback.
    let addr = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    };
    let timeout = Duration::from_secs(3);
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut body = Vec::new();
    s.take(16 << 20).read_to_end(&mut body)?;
    let text = String::from_utf8_lossy(&body);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or_default();
    if !status.split_whitespace().nth(1).is_some_and(|c| c == "200") {
        return Err(std::io::Error::other(format!("answered {status:?}")));
    }
    Ok(body.to_string())
}

/// The charted counters of one node's Prometheus text.
pub fn parse(node: &str, text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, labels(l.trim_end_matches('}'))),
            None => (series, BTreeMap::new()),
        };
        let Some(&(_, number, what)) = CHARTED.iter().find(|(n, _, _)| *n == name) else {
            continue;
        };
        let mechanism = match number {
            Some(n) => n,
            // `mechanism="DM22"`
            None => match labels
                .get("mechanism")
                .and_then(|m| m.trim_start_matches("DM").parse().ok())
            {
                Some(n) => n,
                None => continue,
            },
        };
        out.push(Sample {
            node: labels
                .get("node")
                .cloned()
                .unwrap_or_else(|| node.to_string()),
            mechanism,
            what: labels.get(what).cloned().unwrap_or_default(),
            value,
        });
    }
    out
}

/// `a="x",b="y \"q\""` as a map.
fn labels(text: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, ch)) = chars.next() {
            match ch {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        map.insert(key.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    map
}

pub fn append(file: &Path, snap: &Snapshot) -> std::io::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut line = serde_json::to_string(snap)?;
    line.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)?;
    // One write per line: concurrent cron runs do not interleave lines.
    f.write_all(line.as_bytes())
}

/// The last [`KEEP`] snapshots of the file; lines that do not parse (a
/// run killed mid-write) are skipped.
pub fn load(file: &Path) -> std::io::Result<Vec<Snapshot>> {
    let f = match std::fs::File::open(file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut all: Vec<Snapshot> = std::io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect();
    if all.len() > KEEP {
        all.drain(..all.len() - KEEP);
    }
    Ok(all)
}

/// One chart: what mechanism `mechanism` did, one series per `what`.
#[derive(Clone, Debug, PartialEq)]
pub struct Chart {
    pub mechanism: u8,
    /// `(what, points)`: with one snapshot, one point per series, the
    /// total so far; with more, one point per interval (at its end time),
    /// the count during it.
    pub series: Vec<(String, Vec<(u64, f64)>)>,
}

/// The charts of a history, in Table I order; mechanisms that never did
/// anything are left out.
pub fn charts(history: &[Snapshot]) -> Vec<Chart> {
    // (mechanism, what) -> totals summed over nodes, per snapshot.
    let mut keys: Vec<(u8, String)> = history
        .iter()
        .flat_map(|s| s.samples.iter().map(|x| (x.mechanism, x.what.clone())))
        .collect();
    keys.sort();
    keys.dedup();
    let mut charts: Vec<Chart> = Vec::new();
    for (mechanism, what) in keys {
        // Per node, so that one node's restart is one node's reset.
        let per_node = |snap: &Snapshot| -> BTreeMap<String, f64> {
            snap.samples
                .iter()
                .filter(|x| x.mechanism == mechanism && x.what == what)
                .map(|x| (x.node.clone(), x.value))
                .collect()
        };
        let points: Vec<(u64, f64)> = if history.len() == 1 {
            vec![(history[0].unix, per_node(&history[0]).values().sum())]
        } else {
            // Each node against the last snapshot that had it, so a node
            // that was down for one run is not counted twice.
            let mut last: BTreeMap<String, f64> = per_node(&history[0]);
            history[1..]
                .iter()
                .map(|snap| {
                    let now = per_node(snap);
                    let delta = now
                        .iter()
                        .map(|(node, &v)| match last.get(node) {
                            Some(&b) if v >= b => v - b,
                            // New node, or a restart that reset the counter.
                            _ => v,
                        })
                        .sum();
                    last.extend(now);
                    (snap.unix, delta)
                })
                .collect()
        };
        if points.iter().all(|(_, v)| *v == 0.0) {
            continue;
        }
        match charts.iter_mut().find(|c| c.mechanism == mechanism) {
            Some(c) => c.series.push((what, points)),
            None => charts.push(Chart {
                mechanism,
                series: vec![(what, points)],
            }),
        }
    }
    charts
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP palisade_defense_actions_total Actions.\n\
        # TYPE palisade_defense_actions_total counter\n\
        palisade_defense_actions_total{node=\"mx-1\",mechanism=\"DM22\",action=\"tempfail\"} 7\n\
        palisade_defense_actions_total{node=\"mx-1\",mechanism=\"DM7\",action=\"reject\"} 2\n\
        palisade_virus_scans_total{node=\"mx-1\",result=\"clean\"} 40\n\
        palisade_queue_messages{node=\"mx-1\"} 3\n";

    #[test]
    fn parses_the_charted_counters() {
        let s = parse("mx-1", TEXT);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].mechanism, 22);
        assert_eq!(s[0].what, "tempfail");
        assert_eq!(s[0].value, 7.0);
        assert_eq!(s[2].mechanism, 28);
        assert_eq!(s[2].what, "clean");
    }

    #[test]
    fn label_values_unescape() {
        let l = labels("node=\"a\",detail=\"say \\\"hi\\\", ok\",x=\"1\"");
        assert_eq!(l["detail"], "say \"hi\", ok");
        assert_eq!(l["x"], "1");
    }

    fn snap(unix: u64, grey: f64) -> Snapshot {
        Snapshot {
            unix,
            samples: vec![Sample {
                node: "mx-1".into(),
                mechanism: 22,
                what: "tempfail".into(),
                value: grey,
            }],
            unreachable: Vec::new(),
        }
    }

    #[test]
    fn one_snapshot_gives_totals_many_give_intervals() {
        let one = charts(&[snap(100, 7.0)]);
        assert_eq!(one[0].series[0].1, vec![(100, 7.0)]);
        // 7 -> 10 -> (restart) 4 -> 6
        let many = charts(&[
            snap(100, 7.0),
            snap(200, 10.0),
            snap(300, 4.0),
            snap(400, 6.0),
        ]);
        assert_eq!(
            many[0].series[0].1,
            vec![(200, 3.0), (300, 4.0), (400, 2.0)]
        );
        assert!(charts(&[snap(1, 0.0)]).is_empty());
        // mx-1 missing from the middle snapshot (down): 7 -> gap -> 9 is 2.
        let gap = Snapshot {
            samples: Vec::new(),
            ..snap(200, 0.0)
        };
        let c = charts(&[snap(100, 7.0), gap, snap(300, 9.0)]);
        assert_eq!(c[0].series[0].1, vec![(200, 0.0), (300, 2.0)]);
    }

    #[test]
    fn history_file_round_trips_and_skips_torn_lines() {
        let dir = std::env::temp_dir().join(format!("audit-history-{}", std::process::id()));
        let file = dir.join("h.jsonl");
        let _ = std::fs::remove_dir_all(&dir);
        append(&file, &snap(1, 1.0)).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap()
            .write_all(b"{\"unix\":2,\"sam")
            .unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap()
            .write_all(b"\n")
            .unwrap();
        append(&file, &snap(3, 2.0)).unwrap();
        let h = load(&file).unwrap();
        assert_eq!(h.iter().map(|s| s.unix).collect::<Vec<_>>(), vec![1, 3]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A real listener serving the node endpoint's answer.
    #[test]
    fn scrapes_a_node_over_http() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut req = [0u8; 512];
            let n = c.read(&mut req).unwrap();
            assert!(String::from_utf8_lossy(&req[..n]).starts_with("GET /metrics "));
            c.write_all(
                format!("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n{TEXT}").as_bytes(),
            )
            .unwrap();
        });
        let text = fetch_metrics(addr).unwrap();
        server.join().unwrap();
        assert_eq!(parse("mx-1", &text).len(), 3);
        // Nothing listens there any more.
        assert!(fetch_metrics(addr).is_err());
    }
}
