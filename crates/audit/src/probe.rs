//! `palisade probe`: the "email traceroute" (shared/seeds/000) turned
//! inward. Uniquely numbered probe messages go through flow 1 (an MX, to
//! the test user) and flow 4 (an MSA with AUTH, to the test user) at an
//! interval; the probe finds them in the user's mailbox over IMAPS,
//! deletes them, and reports loss (with bursts of consecutive lost
//! sequence numbers, since loss is bursty), end-to-end latency
//! percentiles and the time spent between every pair of consecutive hops,
//! read from the Received headers each of our hops writes (their
//! `(epoch S.US)` comment gives sub-second times; docs/probe.md).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use palisade_config::{Config, StageKind};
use palisade_smtp_client::{insecure_tls_config, ClientConfig, Connection, TlsMode, Transaction};
use serde::Serialize;

use crate::client::Dial;
use crate::imap::Imap;
use crate::trace::clock;

/// The header that carries run, flow, sequence number and send time.
pub const PROBE_HEADER: &str = "X-Palisade-Probe";

/// The mailbox folders probes may land in (Junk if antispam flags one).
const FOLDERS: [&str; 2] = ["INBOX", "Junk"];

#[derive(Clone, Debug)]
pub struct ProbeOptions {
    pub duration: Duration,
    pub interval: Duration,
    /// 1 (MX -> user) and/or 4 (MSA with AUTH -> user).
    pub flows: Vec<u8>,
    pub user: String,
    pub password: String,
    /// After the last send, how long to wait for stragglers.
    pub wait: Duration,
}

/// One probe message and what became of it.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeRecord {
    pub flow: u8,
    pub seq: u64,
    /// The node it was handed to.
    pub via: String,
    pub sent_us: u64,
    /// The send failed (refused, unreachable): counted, never "lost".
    pub send_error: Option<String>,
    pub received: bool,
    pub folder: Option<String>,
    /// Send to filing in the mailbox (the store's Received time), seconds.
    pub latency_s: Option<f64>,
    /// (hop pair, seconds), in path order: `client -> mx-1`, `mx-1 -> antivirus-2`...
    pub hops: Vec<(String, f64)>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Stats {
    pub n: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Stats {
    /// Nearest-rank percentiles.
    pub fn of(values: &[f64]) -> Stats {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Stats::default();
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Stats {
            n: v.len(),
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: v[v.len() - 1],
        }
    }
}

/// Consecutive lost sequence numbers of one flow.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Burst {
    pub flow: u8,
    pub first_seq: u64,
    pub last_seq: u64,
    pub count: usize,
    pub from_us: u64,
    pub to_us: u64,
}

/// A run of probes (by send time) whose latency stood out.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Spike {
    pub from_us: u64,
    pub to_us: u64,
    pub probes: usize,
    pub max_s: f64,
}

/// What became of a set of probes.
#[derive(Clone, Debug, Serialize)]
pub struct Counts {
    pub sent: usize,
    pub failed_sends: usize,
    pub received: usize,
    pub lost: usize,
    /// Lost, as a share of the probes the gateway accepted.
    pub loss_pct: f64,
    /// End to end.
    pub latency: Stats,
}

impl Counts {
    fn of(ps: &[&ProbeRecord]) -> Counts {
        let sent = ps.len();
        let failed_sends = ps.iter().filter(|p| p.send_error.is_some()).count();
        let received = ps.iter().filter(|p| p.received).count();
        let lost = sent - failed_sends - received;
        let accepted = sent - failed_sends;
        let loss_pct = if accepted == 0 {
            0.0
        } else {
            100.0 * lost as f64 / accepted as f64
        };
        let lat: Vec<f64> = ps.iter().filter_map(|p| p.latency_s).collect();
        Counts {
            sent,
            failed_sends,
            received,
            lost,
            loss_pct,
            latency: Stats::of(&lat),
        }
    }

    fn render(&self) -> String {
        format!(
            "sent {}, failed sends {}, received {}, lost {} ({:.2} %)\n",
            self.sent, self.failed_sends, self.received, self.lost, self.loss_pct
        )
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct FlowReport {
    pub flow: u8,
    #[serde(flatten)]
    pub counts: Counts,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProbeReport {
    pub run: String,
    pub user: String,
    pub duration_s: f64,
    pub interval_s: f64,
    pub flows: Vec<FlowReport>,
    #[serde(flatten)]
    pub total: Counts,
    pub hops: Vec<(String, Stats)>,
    pub bursts: Vec<Burst>,
    pub spikes: Vec<Spike>,
    pub probes: Vec<ProbeRecord>,
}

impl ProbeReport {
    /// Loss or failed sends: exit status 1.
    pub fn failed(&self) -> bool {
        self.total.lost > 0 || self.total.failed_sends > 0
    }

    fn from_records(run: String, opts: &ProbeOptions, mut probes: Vec<ProbeRecord>) -> Self {
        probes.sort_by_key(|p| (p.flow, p.seq));
        let flows = opts
            .flows
            .iter()
            .map(|f| {
                let ps: Vec<&ProbeRecord> = probes.iter().filter(|p| p.flow == *f).collect();
                FlowReport {
                    flow: *f,
                    counts: Counts::of(&ps),
                }
            })
            .collect();
        let all: Vec<&ProbeRecord> = probes.iter().collect();
        let total = Counts::of(&all);
        let mut by_hop: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let mut order: Vec<String> = Vec::new();
        for p in &probes {
            for (pair, s) in &p.hops {
                if !by_hop.contains_key(pair) {
                    order.push(pair.clone());
                }
                by_hop.entry(pair.clone()).or_default().push(*s);
            }
        }
        let hops = order
            .into_iter()
            .map(|pair| {
                let s = Stats::of(&by_hop[&pair]);
                (pair, s)
            })
            .collect();
        ProbeReport {
            run,
            user: opts.user.clone(),
            duration_s: opts.duration.as_secs_f64(),
            interval_s: opts.interval.as_secs_f64(),
            bursts: bursts(&probes),
            spikes: spikes(&probes, total.latency.p50),
            flows,
            total,
            hops,
            probes,
        }
    }

    pub fn render_text(&self) -> String {
        let mut out = format!(
            "palisade probe: run {}, {:.0} s at {:.1} s intervals, to {}\n",
            self.run, self.duration_s, self.interval_s, self.user
        );
        for f in &self.flows {
            out.push_str(&format!("flow {}: {}", f.flow, f.counts.render()));
        }
        out.push_str(&format!("total:  {}", self.total.render()));
        let line = |name: &str, s: &Stats| {
            format!(
                "  {name:<34} n={:<5} p50 {:>8.3} s  p90 {:>8.3} s  p99 {:>8.3} s  max {:>8.3} s\n",
                s.n, s.p50, s.p90, s.p99, s.max
            )
        };
        out.push_str("latency, end to end:\n");
        for f in &self.flows {
            out.push_str(&line(&format!("flow {}", f.flow), &f.counts.latency));
        }
        out.push_str(&line("all", &self.total.latency));
        out.push_str("latency per hop (Received headers):\n");
        for (pair, s) in &self.hops {
            out.push_str(&line(pair, s));
        }
        if self.bursts.is_empty() {
            out.push_str("bursts of loss: none\n");
        }
        for b in &self.bursts {
            out.push_str(&format!(
                "LOSS BURST: flow {} seq {}..{} ({} probes) sent {} - {}\n",
                b.flow,
                b.first_seq,
                b.last_seq,
                b.count,
                clock(b.from_us),
                clock(b.to_us)
            ));
        }
        for s in &self.spikes {
            out.push_str(&format!(
                "LATENCY SPIKE: probes sent {} - {}: {} probes, max {:.3} s (median {:.3} s)\n",
                clock(s.from_us),
                clock(s.to_us),
                s.probes,
                s.max_s,
                self.total.latency.p50
            ));
        }
        for p in self.probes.iter().filter(|p| p.send_error.is_some()) {
            out.push_str(&format!(
                "failed send: flow {} seq {} via {} at {}: {}\n",
                p.flow,
                p.seq,
                p.via,
                clock(p.sent_us),
                p.send_error.as_deref().unwrap_or("")
            ));
        }
        out
    }
}

/// Runs of consecutive lost sequence numbers per flow (failed sends are
/// not loss; they interrupt nothing).
pub fn bursts(probes: &[ProbeRecord]) -> Vec<Burst> {
    let mut out: Vec<Burst> = Vec::new();
    let mut sorted: Vec<&ProbeRecord> = probes.iter().collect();
    sorted.sort_by_key(|p| (p.flow, p.seq));
    let mut open: Option<Burst> = None;
    for p in sorted {
        let lost = p.send_error.is_none() && !p.received;
        match (&mut open, lost) {
            (Some(b), true) if b.flow == p.flow => {
                b.last_seq = p.seq;
                b.count += 1;
                b.to_us = p.sent_us;
            }
            (_, true) => {
                out.extend(open.take());
                open = Some(Burst {
                    flow: p.flow,
                    first_seq: p.seq,
                    last_seq: p.seq,
                    count: 1,
                    from_us: p.sent_us,
                    to_us: p.sent_us,
                });
            }
            (_, false) if p.send_error.is_none() => out.extend(open.take()),
            _ => {}
        }
    }
    out.extend(open);
    out
}

/// Probes far slower than the median (over 3× and 1 s above it), grouped
/// into spans by send time.
pub fn spikes(probes: &[ProbeRecord], median: f64) -> Vec<Spike> {
    let threshold = (3.0 * median).max(median + 1.0);
    let mut sorted: Vec<&ProbeRecord> = probes.iter().filter(|p| p.received).collect();
    sorted.sort_by_key(|p| p.sent_us);
    let mut out: Vec<Spike> = Vec::new();
    let mut open: Option<Spike> = None;
    for p in sorted {
        let l = p.latency_s.unwrap_or(0.0);
        if l > threshold {
            let s = open.get_or_insert(Spike {
                from_us: p.sent_us,
                to_us: p.sent_us,
                probes: 0,
                max_s: 0.0,
            });
            s.to_us = p.sent_us;
            s.probes += 1;
            s.max_s = s.max_s.max(l);
        } else if open
            .as_ref()
            .is_some_and(|s| p.sent_us > s.to_us + SPIKE_GAP_US)
        {
            out.extend(open.take());
        }
    }
    out.extend(open);
    out
}

/// Slow probes less than this apart (by send time) are one spike: the
/// probes in between went through the other node of a pair.
const SPIKE_GAP_US: u64 = 10_000_000;

/// Our hops in a message, oldest first: (node, time in seconds since the
/// epoch) from each `Received: ... (Palisade <node>) ... (epoch S.US)`.
pub fn our_hops(header: &[u8]) -> Vec<(String, f64)> {
    let text = String::from_utf8_lossy(header);
    let mut fields: Vec<String> = Vec::new();
    for line in text.split("\r\n").flat_map(|l| l.split('\n')) {
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some(last) = fields.last_mut() {
                last.push(' ');
                last.push_str(line.trim());
            }
        } else {
            fields.push(line.to_string());
        }
    }
    let node_re = regex::Regex::new(r"\(Palisade ([^\s)]+)\)").expect("regex");
    let time_re = regex::Regex::new(r"\(epoch (\d+(?:\.\d+)?)\)").expect("regex");
    let mut hops: Vec<(String, f64)> = fields
        .iter()
        .filter(|f| f.len() > 9 && f[..9].eq_ignore_ascii_case("received:"))
        .filter_map(|f| {
            let node = node_re.captures(f)?.get(1)?.as_str().to_string();
            let t: f64 = time_re.captures(f)?.get(1)?.as_str().parse().ok()?;
            Some((node, t))
        })
        .collect();
    hops.reverse();
    hops
}

/// The value of a header field in a header section.
fn header_value(header: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(header);
    text.lines()
        .find(|l| {
            l.len() > name.len()
                && l[..name.len()].eq_ignore_ascii_case(name)
                && l.as_bytes()[name.len()] == b':'
        })
        .map(|l| l[name.len() + 1..].trim().to_string())
}

/// Hop pairs with their durations: the client's send to the first hop,
/// then every consecutive pair.
pub fn hop_times(sent_s: f64, hops: &[(String, f64)]) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let mut prev = ("client".to_string(), sent_s);
    for (node, t) in hops {
        out.push((format!("{} -> {node}", prev.0), (t - prev.1).max(0.0)));
        prev = (node.clone(), *t);
    }
    out
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

/// Where probes enter: (node, address) for a flow.
fn entry_nodes(config: &Config, flow: u8) -> Vec<(String, SocketAddr)> {
    config
        .node
        .iter()
        .filter_map(|(name, n)| match flow {
            1 if n.stage == StageKind::Mx => n.smtp.map(|a| (name.clone(), a)),
            4 if n.stage == StageKind::Msa => n.submission.map(|a| (name.clone(), a)),
            _ => None,
        })
        .collect()
}

/// The IMAPS address of the store that holds `user`'s mailbox.
fn imap_addr(config: &Config, user: &str) -> Result<SocketAddr> {
    let domain = config
        .local_domain(user)
        .with_context(|| format!("{user} is not in a local domain"))?;
    let name = domain
        .store
        .as_deref()
        .with_context(|| format!("domain {} has no store node", domain.name))?;
    let store = config
        .node
        .get(name)
        .with_context(|| format!("store node {name} not in the config"))?;
    store
        .imaps
        .with_context(|| format!("store node {name} has no imaps address"))
}

struct Sent {
    flow: u8,
    seq: u64,
    via: String,
    sent_us: u64,
    error: Option<String>,
}

async fn send_one(
    config: &Config,
    run: &str,
    flow: u8,
    seq: u64,
    (via, addr): (String, SocketAddr),
    opts: &ProbeOptions,
) -> Sent {
    let sent_us = now_us();
    let host = &config.gateway.hostname;
    let from = if flow == 4 {
        opts.user.clone()
    } else {
        format!("palisade-probe@{host}")
    };
    let message = format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: palisade probe {run} flow {flow} #{seq}\r\n\
         Message-ID: <probe-{run}-f{flow}-{seq}@{host}>\r\nDate: {date}\r\n\
         {PROBE_HEADER}: {run} flow={flow} seq={seq} sent={secs}.{micros:06}\r\n\r\n\
         Delivery probe (palisade probe). It is deleted when found.\r\n",
        to = opts.user,
        date = palisade_stage::received::rfc5322_date(SystemTime::now()),
        secs = sent_us / 1_000_000,
        micros = sent_us % 1_000_000,
    );
    let client = ClientConfig {
        tls_mode: if flow == 4 {
            TlsMode::Required
        } else {
            TlsMode::Opportunistic
        },
        tls: Some(insecure_tls_config()),
        connect_timeout: Duration::from_secs(10),
        command_timeout: Duration::from_secs(60),
        data_timeout: Duration::from_secs(60),
        ..ClientConfig::new(format!("probe.{host}"))
    };
    let result: Result<()> = async {
        let mut conn = Connection::connect(addr, &client).await?;
        if flow == 4 {
            let r = conn.auth_plain(&opts.user, &opts.password).await?;
            if !r.is_positive() {
                bail!("AUTH: {r}");
            }
        }
        let rcpts = [(opts.user.as_str(), "")];
        let tx = Transaction {
            mail_from: &from,
            mail_params: "",
            origin: None,
            rcpts: &rcpts,
            body: message.as_bytes(),
        };
        let r = conn.send(&tx).await?;
        conn.quit().await;
        let decisive = r.rcpt_outcome(0);
        if !decisive.is_positive() {
            bail!("{decisive}");
        }
        Ok(())
    }
    .await;
    Sent {
        flow,
        seq,
        via,
        sent_us,
        error: result.err().map(|e| format!("{e:#}")),
    }
}

/// A probe found in the mailbox.
struct Found {
    folder: String,
    header: Vec<u8>,
}

/// How long one IMAP step (connect, handshake, read) may take.
const IMAP_TIMEOUT: Duration = Duration::from_secs(30);

/// Logs in to the probe account's mailbox over IMAPS.
async fn imap_login(addr: SocketAddr, opts: &ProbeOptions) -> Result<Imap> {
    let dial = Dial {
        addr,
        source: None,
        timeout: IMAP_TIMEOUT,
    };
    Imap::connect(dial, &opts.user, &opts.password, Vec::new())
        .await
        .map_err(|(why, _)| anyhow::anyhow!(why))
}

/// Looks for this run's probes in every folder, deletes what it found.
async fn poll(imap: &mut Imap, run: &str, found: &mut HashMap<String, Found>) -> Result<()> {
    // Nothing of a poll is evidence: keep the transcript from growing.
    imap.forget_transcript();
    for folder in FOLDERS {
        if !imap.select(folder).await? {
            continue;
        }
        let uids = imap.search_header(PROBE_HEADER, run).await?;
        let mut done = Vec::new();
        for uid in uids {
            let header = imap.header(uid).await?;
            if let Some(v) = header_value(&header, PROBE_HEADER) {
                let key = v.split(" sent=").next().unwrap_or(&v).to_string();
                found.entry(key).or_insert(Found {
                    folder: folder.to_string(),
                    header,
                });
            }
            done.push(uid);
        }
        imap.delete_uids(&done).await?;
    }
    Ok(())
}

fn probe_key(run: &str, flow: u8, seq: u64) -> String {
    format!("{run} flow={flow} seq={seq}")
}

/// Runs the probes and waits for them; see the module comment.
pub async fn run(config: Arc<Config>, opts: ProbeOptions) -> Result<ProbeReport> {
    let run = format!("{:x}", now_us());
    let imap_at = imap_addr(&config, &opts.user)?;
    let mut entries: HashMap<u8, Vec<(String, SocketAddr)>> = HashMap::new();
    for f in &opts.flows {
        if !matches!(f, 1 | 4) {
            bail!("--flow {f}: only flows 1 and 4 are probed");
        }
        let e = entry_nodes(&config, *f);
        if e.is_empty() {
            bail!("flow {f}: no entry node in the configuration");
        }
        entries.insert(*f, e);
    }
    // Log in first: wrong credentials fail the run before anything is sent.
    let mut imap = imap_login(imap_at, &opts).await?;

    let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let opts_arc = Arc::new(opts.clone());
    let sender = {
        let (config, sent, opts, run) =
            (config.clone(), sent.clone(), opts_arc.clone(), run.clone());
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            let mut tick = tokio::time::interval(opts.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut seq = 0u64;
            let mut tasks = Vec::new();
            while start.elapsed() < opts.duration {
                tick.tick().await;
                if start.elapsed() >= opts.duration {
                    break;
                }
                seq += 1;
                for f in &opts.flows {
                    let nodes = &entries[f];
                    let target = nodes[(seq as usize - 1) % nodes.len()].clone();
                    let (config, sent, opts, run, f) =
                        (config.clone(), sent.clone(), opts.clone(), run.clone(), *f);
                    tasks.push(tokio::spawn(async move {
                        let s = send_one(&config, &run, f, seq, target, &opts).await;
                        sent.lock().unwrap().push(s);
                    }));
                }
            }
            for t in tasks {
                let _ = t.await;
            }
        })
    };

    let mut found: HashMap<String, Found> = HashMap::new();
    let mut found_at: HashMap<String, u64> = HashMap::new();
    let poll_every = Duration::from_secs(1).min(opts.interval);
    let mut sending_done_at: Option<Instant> = None;
    loop {
        tokio::time::sleep(poll_every).await;
        if let Err(e) = poll(&mut imap, &run, &mut found).await {
            // The store may be restarting: reconnect and go on.
            tracing::warn!("probe: IMAP: {e:#}; reconnecting");
            match imap_login(imap_at, &opts).await {
                Ok(i) => imap = i,
                Err(e) => tracing::warn!("probe: IMAP reconnect: {e:#}"),
            }
        }
        let t = now_us();
        for k in found.keys() {
            found_at.entry(k.clone()).or_insert(t);
        }
        if sender.is_finished() {
            let done = *sending_done_at.get_or_insert_with(Instant::now);
            let all_found = {
                let s = sent.lock().unwrap();
                s.iter()
                    .filter(|p| p.error.is_none())
                    .all(|p| found.contains_key(&probe_key(&run, p.flow, p.seq)))
            };
            if all_found || done.elapsed() >= opts.wait {
                break;
            }
        }
    }
    imap.logout().await;

    let records = sent
        .lock()
        .unwrap()
        .drain(..)
        .map(|s| {
            let key = probe_key(&run, s.flow, s.seq);
            let f = found.get(&key);
            let sent_s = s.sent_us as f64 / 1e6;
            let hops = f.map(|f| our_hops(&f.header)).unwrap_or_default();
            let latency_s = f.map(|_| match hops.last() {
                Some((_, t)) => (t - sent_s).max(0.0),
                None => (found_at[&key] as f64 / 1e6 - sent_s).max(0.0),
            });
            ProbeRecord {
                flow: s.flow,
                seq: s.seq,
                via: s.via,
                sent_us: s.sent_us,
                send_error: s.error,
                received: f.is_some(),
                folder: f.map(|f| f.folder.clone()),
                latency_s,
                hops: hop_times(sent_s, &hops),
            }
        })
        .collect();
    Ok(ProbeReport::from_records(run, &opts, records))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(flow: u8, seq: u64, received: bool, error: bool, latency: f64) -> ProbeRecord {
        ProbeRecord {
            flow,
            seq,
            via: "mx-1".into(),
            sent_us: seq * 2_000_000,
            send_error: error.then(|| "refused".to_string()),
            received,
            folder: None,
            latency_s: received.then_some(latency),
            hops: vec![],
        }
    }

    #[test]
    fn hops_from_received_headers_oldest_first() {
        let h = b"Received: from a ([127.0.0.1])\r\n\tby h (Palisade store-staff) with ESMTP id S\r\n\tfor <u@x>; Tue, 1 Dec 2026 08:00:01 +0000 (epoch 100.750000)\r\n\
Received: from b ([127.0.0.1])\r\n\tby h (Palisade antivirus-2) with ESMTP id B; Tue, 1 Dec 2026 08:00:00 +0000 (epoch 100.250000)\r\n\
Received: from c\r\n\tby h (Palisade mx-1) with ESMTP id A; Tue, 1 Dec 2026 08:00:00 +0000 (epoch 100.000000)\r\n\
Received: by other.example; Tue, 1 Dec 2026 07:00:00 +0000\r\nSubject: x\r\n";
        let hops = our_hops(h);
        assert_eq!(
            hops,
            vec![
                ("mx-1".to_string(), 100.0),
                ("antivirus-2".to_string(), 100.25),
                ("store-staff".to_string(), 100.75)
            ]
        );
        let t = hop_times(99.5, &hops);
        assert_eq!(t[0], ("client -> mx-1".to_string(), 0.5));
        assert_eq!(t[1], ("mx-1 -> antivirus-2".to_string(), 0.25));
        assert_eq!(t[2], ("antivirus-2 -> store-staff".to_string(), 0.5));
    }

    #[test]
    fn loss_is_reported_in_bursts_and_failed_sends_apart() {
        let probes = vec![
            rec(1, 1, true, false, 0.1),
            rec(1, 2, false, false, 0.0),
            rec(1, 3, false, false, 0.0),
            rec(1, 4, false, true, 0.0),
            rec(1, 5, false, false, 0.0),
            rec(1, 6, true, false, 0.1),
            rec(1, 7, false, false, 0.0),
            rec(4, 1, false, false, 0.0),
        ];
        let b = bursts(&probes);
        assert_eq!(b.len(), 3, "{b:?}");
        // A failed send inside a run does not split it.
        assert_eq!((b[0].first_seq, b[0].last_seq, b[0].count), (2, 5, 3));
        assert_eq!((b[1].first_seq, b[1].count), (7, 1));
        assert_eq!((b[2].flow, b[2].first_seq), (4, 1));
        let opts = ProbeOptions {
            duration: Duration::from_secs(10),
            interval: Duration::from_secs(2),
            flows: vec![1, 4],
            user: "u@x".into(),
            password: String::new(),
            wait: Duration::ZERO,
        };
        let r = ProbeReport::from_records("r".into(), &opts, probes);
        let t = &r.total;
        assert_eq!((t.sent, t.failed_sends, t.received, t.lost), (8, 1, 2, 5));
        assert!((r.flows[0].counts.loss_pct - 100.0 * 4.0 / 6.0).abs() < 1e-9);
        assert!(r.failed());
        assert!(r
            .render_text()
            .contains("LOSS BURST: flow 1 seq 2..5 (3 probes)"));
    }

    #[test]
    fn percentiles_and_spikes() {
        let s = Stats::of(&[1.0, 2.0, 3.0, 4.0, 100.0]);
        assert_eq!((s.n, s.p50, s.p90, s.max), (5, 3.0, 100.0, 100.0));
        let mut probes: Vec<ProbeRecord> = (1..=20).map(|i| rec(1, i, true, false, 0.2)).collect();
        probes[9].latency_s = Some(30.0);
        probes[11].latency_s = Some(45.0);
        probes[19].latency_s = Some(9.0);
        let sp = spikes(&probes, 0.2);
        assert_eq!(sp.len(), 2, "{sp:?}");
        // One fast probe in between (the peer node) does not split a spike.
        assert_eq!((sp[0].probes, sp[0].max_s), (2, 45.0));
        assert_eq!(
            (sp[0].from_us, sp[0].to_us),
            (10 * 2_000_000, 12 * 2_000_000)
        );
        assert_eq!((sp[1].probes, sp[1].from_us), (1, 20 * 2_000_000));
    }
}
