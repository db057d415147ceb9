//! Conservation accounting (issue 8): every message a node accepted is
//! accounted for as forwarded (with the next hop's id), delivered,
//! quarantined, failed, deleted or still queued. A message that one node
//! says it forwarded to X as Qn, while X has no record of Qn, vanished
//! between two hops: SILENT LOSS, the failure the paper says goes
//! unsignaled (docs/probe.md).
//!
//! Each node serves its journal at `GET /journal` on its HTTP (metrics)
//! address (crates/stage/src/journal.rs); [`trace`] asks every node of
//! every stage about one Message-ID and stitches the path, [`conservation`]
//! checks everything journaled since a time, for `palisade audit`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use palisade_config::Config;
use palisade_queue::JournalEvent;
use palisade_stage::journal::{JournalPage, ServedEntry, MAX_ENTRIES};
use serde::Serialize;

use crate::model::{Fault, Finding, Line, Verdict};

/// The finding's probe id in `palisade audit` output.
pub const PROBE_ID: &str = "silent-loss";

/// What the nodes said, and which ones could not be asked.
#[derive(Clone, Debug, Default)]
pub struct Journals {
    pub pages: Vec<JournalPage>,
    /// (node, why) for nodes whose journal could not be read.
    pub unreachable: Vec<(String, String)>,
}

/// Asks every node with an HTTP address for `path` (`/journal?...`).
pub async fn fetch(config: &Config, path: &str) -> Journals {
    let path = path.to_string();
    fetch_each(config, move |addr| {
        let path = path.clone();
        async move { ask(addr, &path).await }
    })
    .await
}

/// Every node's journal from `from_us` on, paged: a node's answer holds
/// at most [`MAX_ENTRIES`] entries, so a full page is followed by another
/// after its last entry until one comes back short. A busy node's journal
/// would otherwise be cut off and its later forwards look lost.
pub async fn fetch_since(config: &Config, from_us: u64, page_size: usize) -> Journals {
    // A node never answers more than MAX_ENTRIES: a larger page size would
    // take its full page for the last one.
    let page_size = page_size.clamp(1, MAX_ENTRIES);
    fetch_each(config, move |addr| async move {
        let first = format!(
            "/journal?after_us={}&limit={page_size}",
            from_us.saturating_sub(1)
        );
        let mut all = ask(addr, &first).await?;
        let mut last_len = all.entries.len();
        for _ in 1..MAX_PAGES {
            if last_len < page_size {
                return Ok(all);
            }
            let after = all.entries.last().map_or(from_us, |e| e.entry.time_us);
            let next = ask(
                addr,
                &format!("/journal?after_us={after}&limit={page_size}"),
            )
            .await?;
            last_len = next.entries.len();
            all.entries.extend(next.entries);
        }
        Err(format!(
            "more than {} journal entries since the start of the window; \
             check a shorter window",
            MAX_PAGES * page_size
        ))
    })
    .await
}

/// Pages one node's journal is read in at most (100 x 10,000 entries
/// is days of a busy node's mail).
const MAX_PAGES: usize = 100;

/// One `/journal` request to one node.
async fn ask(addr: SocketAddr, path: &str) -> Result<JournalPage, String> {
    match palisade_stage::http::request(addr, "GET", path).await {
        Ok((200, body)) => serde_json::from_slice::<JournalPage>(&body)
            .map_err(|e| format!("bad journal answer: {e}")),
        Ok((status, body)) => Err(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body).trim()
        )),
        Err(e) => Err(format!("{addr}: {e}")),
    }
}

/// Runs `read` for every node with an HTTP address, concurrently.
async fn fetch_each<F, Fut>(config: &Config, read: F) -> Journals
where
    F: Fn(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Result<JournalPage, String>> + Send + 'static,
{
    let asks = config.node.iter().filter_map(|(name, node)| {
        let (name, got) = (name.clone(), read(node.metrics?));
        Some(async move { (name, got.await) })
    });
    let mut out = Journals::default();
    for (name, page) in futures_join(asks.collect()).await {
        match page {
            Ok(p) => out.pages.push(p),
            Err(why) => out.unreachable.push((name, why)),
        }
    }
    out
}

/// Runs the requests concurrently (a dozen nodes; each bounded by the
/// HTTP client's own 5 s timeout).
async fn futures_join<F: std::future::Future + Send + 'static>(futs: Vec<F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

/// One copy of the message at one node: its id there and its entries.
#[derive(Clone, Debug, Serialize)]
pub struct Copy {
    pub node: String,
    pub id: String,
    pub accepted_us: Option<u64>,
    pub entries: Vec<ServedEntry>,
}

/// Where a copy's mail went next.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Link {
    pub from: (String, String),
    pub to: (String, String),
    pub rcpt: String,
    pub time_us: u64,
}

/// A forward the next hop has no record of.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Loss {
    pub from_node: String,
    pub from_id: String,
    pub to_node: String,
    pub to_id: String,
    pub rcpt: String,
    pub time_us: u64,
}

impl Loss {
    /// `antivirus-2 Q2 forwarded <rcpt> to antispam-1 as Q3 at T; antispam-1 has no record of Q3`
    pub fn describe(&self) -> String {
        format!(
            "{} {} forwarded <{}> to {} as {} at {}; {} has no record of {}",
            self.from_node,
            self.from_id,
            self.rcpt,
            self.to_node,
            self.to_id,
            clock(self.time_us),
            self.to_node,
            self.to_id
        )
    }
}

/// The stitched result.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stitched {
    pub copies: Vec<Copy>,
    pub links: Vec<Link>,
    pub losses: Vec<Loss>,
    /// Copies accepted with no outcome recorded and no longer queued.
    pub vanished: Vec<(String, String)>,
    /// Forwards to nodes whose journal could not be read.
    pub unverified: Vec<Link>,
}

/// Groups the entries by (node, id) and checks every forward against the
/// next node's records. `only_after_us`: forwards before it are not
/// checked (their next hop's record may predate the journal window).
pub fn stitch(j: &Journals, only_after_us: u64) -> Stitched {
    let mut copies: BTreeMap<(String, String), Copy> = BTreeMap::new();
    for page in &j.pages {
        for e in &page.entries {
            let key = (page.node.clone(), e.entry.id.clone());
            let c = copies.entry(key).or_insert_with(|| Copy {
                node: page.node.clone(),
                id: e.entry.id.clone(),
                accepted_us: None,
                entries: Vec::new(),
            });
            if matches!(
                e.entry.event,
                JournalEvent::Accepted | JournalEvent::Quarantined
            ) {
                c.accepted_us.get_or_insert(e.entry.time_us);
            }
            c.entries.push(e.clone());
        }
    }
    let answered: BTreeSet<&str> = j.pages.iter().map(|p| p.node.as_str()).collect();
    let mut out = Stitched::default();
    for c in copies.values() {
        let mut outcome = false;
        for e in &c.entries {
            match e.entry.event {
                JournalEvent::Forwarded => {
                    outcome = true;
                    let (Some(to_node), Some(to_id)) = (&e.next_node, &e.next_id) else {
                        continue; // left the gateway (an Internet MX, a relay)
                    };
                    let link = Link {
                        from: (c.node.clone(), c.id.clone()),
                        to: (to_node.clone(), to_id.clone()),
                        rcpt: e.entry.rcpts.first().cloned().unwrap_or_default(),
                        time_us: e.entry.time_us,
                    };
                    if !answered.contains(to_node.as_str()) {
                        out.unverified.push(link);
                    } else if copies.contains_key(&link.to) {
                        out.links.push(link);
                    } else if e.entry.time_us >= only_after_us {
                        out.losses.push(Loss {
                            from_node: c.node.clone(),
                            from_id: c.id.clone(),
                            to_node: to_node.clone(),
                            to_id: to_id.clone(),
                            rcpt: link.rcpt,
                            time_us: e.entry.time_us,
                        });
                    }
                }
                // A duplicate is journaled under the original's id: it is
                // not what became of the original.
                JournalEvent::Accepted | JournalEvent::Duplicate => {}
                _ => outcome = true,
            }
        }
        let accepted = c
            .entries
            .iter()
            .find(|e| e.entry.event == JournalEvent::Accepted);
        if let Some(a) = accepted {
            if !outcome && a.queued == Some(false) && a.entry.time_us >= only_after_us {
                out.vanished.push((c.node.clone(), c.id.clone()));
            }
        }
    }
    out.copies = copies.into_values().collect();
    out
}

/// `HH:MM:SS.mmm` UTC.
pub fn clock(us: u64) -> String {
    let t = time::OffsetDateTime::from(SystemTime::UNIX_EPOCH + Duration::from_micros(us));
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// How one copy ended, in words.
fn ending(c: &Copy, s: &Stitched) -> String {
    let lost = |e: &ServedEntry| {
        s.losses.iter().any(|l| {
            l.from_node == c.node && l.from_id == c.id && Some(&l.to_id) == e.next_id.as_ref()
        })
    };
    let mut parts = Vec::new();
    for e in &c.entries {
        let rcpt = e.entry.rcpts.first().map(String::as_str).unwrap_or("");
        let detail = &e.entry.detail;
        let what = match e.entry.event {
            JournalEvent::Delivered => format!("delivered to {detail} for <{rcpt}>"),
            JournalEvent::Duplicate => format!("duplicate of an earlier copy (for <{rcpt}>)"),
            JournalEvent::Quarantined => format!("quarantined ({detail})"),
            JournalEvent::Failed => format!("failed for <{rcpt}>: {detail}"),
            JournalEvent::Deleted => "deleted by an admin".to_string(),
            JournalEvent::Forwarded if e.next_node.is_none() => {
                format!("sent out for <{rcpt}>: {detail}")
            }
            JournalEvent::Forwarded if lost(e) => format!(
                "SILENT LOSS: forwarded for <{rcpt}> to {} as {}, which has no record of it,",
                e.next_node.as_deref().unwrap_or("?"),
                e.next_id.as_deref().unwrap_or("?"),
            ),
            JournalEvent::Forwarded => continue,
            JournalEvent::Accepted => {
                if e.queued == Some(true) {
                    parts.push("still queued".to_string());
                }
                continue;
            }
        };
        parts.push(format!("{what} at {}", clock(e.entry.time_us)));
    }
    if s.vanished.contains(&(c.node.clone(), c.id.clone())) {
        parts.push("SILENT LOSS: accepted, no outcome recorded, not in the queue".into());
    }
    parts.join("; ")
}

/// The paths, one line per chain from an entry node to where the mail
/// ended, `mx-1 Q1 (t) -> antivirus-2 Q2 (t) -> store-staff Q4 (t): delivered to INBOX`.
pub fn paths(s: &Stitched) -> Vec<String> {
    let key = |c: &Copy| (c.node.clone(), c.id.clone());
    let targets: BTreeSet<(String, String)> = s.links.iter().map(|l| l.to.clone()).collect();
    let roots: Vec<&Copy> = s
        .copies
        .iter()
        .filter(|c| !targets.contains(&key(c)))
        .collect();
    let mut out = Vec::new();
    for r in roots {
        walk(s, r, String::new(), &mut out, 0);
    }
    out
}

fn walk(s: &Stitched, c: &Copy, prefix: String, out: &mut Vec<String>, depth: usize) {
    let here = format!(
        "{}{} {}{}",
        prefix,
        c.node,
        c.id,
        c.accepted_us
            .map(|t| format!(" ({})", clock(t)))
            .unwrap_or_default()
    );
    let mut next: Vec<&Copy> = s
        .links
        .iter()
        .filter(|l| l.from == (c.node.clone(), c.id.clone()))
        .filter_map(|l| {
            s.copies
                .iter()
                .find(|x| (x.node.clone(), x.id.clone()) == l.to)
        })
        .collect();
    next.dedup_by(|a, b| a.node == b.node && a.id == b.id);
    let end = ending(c, s);
    if !end.is_empty() || next.is_empty() || depth > 16 {
        let end = if end.is_empty() {
            "no outcome recorded yet".to_string()
        } else {
            end
        };
        out.push(format!("{here}: {end}"));
    }
    if depth > 16 {
        return;
    }
    for n in next {
        walk(s, n, format!("{here} -> "), out, depth + 1);
    }
}

/// `palisade trace`: the stitched journals about one Message-ID.
#[derive(Clone, Debug, Serialize)]
pub struct Trace {
    pub message_id: String,
    pub paths: Vec<String>,
    pub stitched: Stitched,
    pub unreachable: Vec<(String, String)>,
}

impl Trace {
    pub fn silent_loss(&self) -> bool {
        !self.stitched.losses.is_empty() || !self.stitched.vanished.is_empty()
    }

    pub fn render_text(&self) -> String {
        let mut out = format!("Message-ID <{}>\n", self.message_id);
        if self.stitched.copies.is_empty() {
            out.push_str("  no node has a record of it\n");
        }
        for p in &self.paths {
            out.push_str(&format!("  {p}\n"));
        }
        for l in &self.stitched.losses {
            out.push_str(&format!("SILENT LOSS: {}\n", l.describe()));
        }
        for (node, id) in &self.stitched.vanished {
            out.push_str(&format!(
                "SILENT LOSS: {node} {id} accepted it, recorded no outcome and no longer queues it\n"
            ));
        }
        for l in &self.stitched.unverified {
            out.push_str(&format!(
                "unverified: {} {} forwarded to {} as {}, whose journal could not be read\n",
                l.from.0, l.from.1, l.to.0, l.to.1
            ));
        }
        for (node, why) in &self.unreachable {
            out.push_str(&format!("  ({node}: journal not readable: {why})\n"));
        }
        out
    }
}

/// Asks every node about `message_id` and stitches the path.
pub async fn trace(config: &Config, message_id: &str) -> Trace {
    let mid = palisade_queue::normalize_message_id(message_id).unwrap_or_default();
    let encoded =
        percent_encoding::utf8_percent_encode(&mid, percent_encoding::NON_ALPHANUMERIC).to_string();
    let j = fetch(config, &format!("/journal?message-id={encoded}")).await;
    let stitched = stitch(&j, 0);
    Trace {
        message_id: mid,
        paths: paths(&stitched),
        stitched,
        unreachable: j.unreachable,
    }
}

/// Journal window fetched before `since`, so a forward just after `since`
/// finds its next hop's record even if the next hop accepted it earlier.
const LOOKBACK: Duration = Duration::from_secs(300);

/// For `palisade audit`: every forward journaled since `since` checked
/// against the next hop's records. Fault: the paper's 14 faults have no
/// "message lost" entry; silent loss is a failure of *availability* of
/// delivery, closest to `no congestion control` (a stage that drops mail
/// when a peer fails or overloads) — see docs/probe.md.
pub async fn conservation(config: &Config, since: SystemTime) -> Vec<Finding> {
    let from = since
        .checked_sub(LOOKBACK)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let from_us = palisade_stage::journal::unix_seconds(from) * 1e6;
    let j = fetch_since(config, from_us as u64, MAX_ENTRIES).await;
    let since_us = palisade_stage::journal::unix_seconds(since) * 1e6;
    findings(&j, &stitch(&j, since_us as u64))
}

fn findings(j: &Journals, s: &Stitched) -> Vec<Finding> {
    let mut out = Vec::new();
    let finding = |title: String, verdict, detail: String, transcript| Finding {
        fault: Fault::NoCongestionControl,
        mechanism: None,
        probe: PROBE_ID.to_string(),
        title,
        verdict,
        detail,
        transcript,
    };
    for l in &s.losses {
        out.push(finding(
            format!(
                "{} -> {}: message lost between hops",
                l.from_node, l.to_node
            ),
            Verdict::NotWorking,
            l.describe(),
            Vec::new(),
        ));
    }
    for (node, id) in &s.vanished {
        out.push(finding(
            format!("{node}: message vanished from the queue"),
            Verdict::NotWorking,
            format!("{node} accepted {id}, recorded no outcome and no longer queues it"),
            Vec::new(),
        ));
    }
    let transcript = j
        .unreachable
        .iter()
        .map(|(n, why)| Line {
            dir: '*',
            text: format!("{n}: journal not readable: {why}"),
        })
        .collect::<Vec<_>>();
    if out.is_empty() {
        let checked = s.links.len() + s.losses.len();
        let verdict = if j.pages.is_empty() {
            Verdict::NotTested
        } else {
            Verdict::Working
        };
        out.push(finding(
            "every message accepted is accounted for on the next hop".into(),
            verdict,
            format!(
                "{checked} forward(s) checked on {} node(s); {} unverified (node not readable)",
                j.pages.len(),
                s.unverified.len()
            ),
            transcript,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_queue::JournalEntry;

    fn entry(
        event: JournalEvent,
        id: &str,
        t: u64,
        next: Option<(&str, &str)>,
        queued: Option<bool>,
    ) -> ServedEntry {
        ServedEntry {
            entry: JournalEntry {
                time_us: t,
                rcpts: vec!["alice@example.test".into()],
                detail: if event == JournalEvent::Delivered {
                    "INBOX".into()
                } else {
                    String::new()
                },
                message_id: Some("m@x".into()),
                ..JournalEntry::new(event, id)
            },
            next_node: next.map(|n| n.0.to_string()),
            next_id: next.map(|n| n.1.to_string()),
            queued,
        }
    }

    fn page(node: &str, entries: Vec<ServedEntry>) -> JournalPage {
        JournalPage {
            node: node.into(),
            stage: String::new(),
            entries,
        }
    }

    fn flow1(with_antispam: bool) -> Journals {
        use JournalEvent::*;
        let mut pages = vec![
            page(
                "mx-1",
                vec![
                    entry(Accepted, "Q1", 1_000_000, None, Some(false)),
                    entry(
                        Forwarded,
                        "Q1",
                        1_100_000,
                        Some(("antivirus-2", "Q2")),
                        None,
                    ),
                ],
            ),
            page(
                "antivirus-2",
                vec![
                    entry(Accepted, "Q2", 1_050_000, None, Some(false)),
                    entry(Forwarded, "Q2", 1_200_000, Some(("antispam-1", "Q3")), None),
                ],
            ),
            page(
                "store-staff",
                vec![
                    entry(Accepted, "S4", 1_250_000, None, None),
                    entry(Delivered, "S4", 1_250_001, None, None),
                ],
            ),
        ];
        let antispam = vec![
            entry(Accepted, "Q3", 1_150_000, None, Some(false)),
            entry(
                Forwarded,
                "Q3",
                1_300_000,
                Some(("store-staff", "S4")),
                None,
            ),
        ];
        pages.push(page(
            "antispam-1",
            if with_antispam { antispam } else { vec![] },
        ));
        Journals {
            pages,
            unreachable: vec![],
        }
    }

    #[test]
    fn stitches_every_hop_to_the_store() {
        let s = stitch(&flow1(true), 0);
        assert!(s.losses.is_empty() && s.vanished.is_empty(), "{s:?}");
        assert_eq!(s.links.len(), 3);
        let p = paths(&s);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("mx-1 Q1 ("), "{}", p[0]);
        assert!(
            p[0].contains(" -> antivirus-2 Q2 (") && p[0].contains(" -> antispam-1 Q3 ("),
            "{}",
            p[0]
        );
        assert!(
            p[0].contains(" -> store-staff S4 (")
                && p[0].ends_with("delivered to INBOX for <alice@example.test> at 00:00:01.250"),
            "{}",
            p[0]
        );
    }

    #[test]
    fn forward_without_record_at_next_hop_is_silent_loss() {
        let j = flow1(false);
        let s = stitch(&j, 0);
        assert_eq!(
            s.losses,
            vec![Loss {
                from_node: "antivirus-2".into(),
                from_id: "Q2".into(),
                to_node: "antispam-1".into(),
                to_id: "Q3".into(),
                rcpt: "alice@example.test".into(),
                time_us: 1_200_000,
            }]
        );
        let f = findings(&j, &s);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].verdict, Verdict::NotWorking);
        assert_eq!(f[0].probe, PROBE_ID);
        // Outside the checked window it is not reported.
        assert!(stitch(&j, 2_000_000).losses.is_empty());
    }

    #[test]
    fn unreadable_next_hop_is_unverified_not_lost() {
        let mut j = flow1(false);
        j.pages.retain(|p| p.node != "antispam-1");
        j.unreachable.push(("antispam-1".into(), "refused".into()));
        let s = stitch(&j, 0);
        assert!(s.losses.is_empty());
        assert_eq!(s.unverified.len(), 1);
    }

    #[test]
    fn accepted_not_queued_without_outcome_is_vanished() {
        use JournalEvent::*;
        let j = Journals {
            pages: vec![page(
                "mx-1",
                vec![entry(Accepted, "Q1", 1, None, Some(false))],
            )],
            unreachable: vec![],
        };
        assert_eq!(stitch(&j, 0).vanished, vec![("mx-1".into(), "Q1".into())]);
        let queued = Journals {
            pages: vec![page(
                "mx-1",
                vec![entry(Accepted, "Q1", 1, None, Some(true))],
            )],
            unreachable: vec![],
        };
        let s = stitch(&queued, 0);
        assert!(s.vanished.is_empty());
        assert!(paths(&s)[0].ends_with("still queued"), "{:?}", paths(&s));
    }

    /// A node whose journal is longer than one page is read to its end:
    /// a real queue's journal on a real HTTP endpoint, pages of 7.
    #[tokio::test]
    async fn a_long_journal_is_read_page_by_page() {
        use palisade_queue::{Queue, QueueOptions};
        let dir = palisade_testsupport::TempDir::new("journal-pages");
        let queue = Queue::open(
            dir.path(),
            QueueOptions {
                journal_ttl: Some(Duration::from_secs(3600)),
                ..QueueOptions::default()
            },
        )
        .unwrap();
        let start = SystemTime::now();
        for i in 0..30 {
            let e = JournalEntry {
                detail: format!("n{i}"),
                ..JournalEntry::new(JournalEvent::Delivered, format!("S{i}"))
            };
            queue.journal(vec![e]).await.unwrap();
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/local.toml");
        let mut config = palisade_config::load(&repo).unwrap();
        let mut node = config.node.values().next().unwrap().clone();
        node.metrics = Some(addr);
        config.node = [("store-staff".to_string(), node)].into_iter().collect();
        let router = palisade_stage::journal::routes(
            palisade_stage::http::Router::default(),
            std::sync::Arc::new(config.clone()),
            "store-staff",
            "store",
            &queue,
        );
        palisade_stage::http::serve(listener, addr, router);

        let from_us = (palisade_stage::journal::unix_seconds(start) * 1e6) as u64;
        for page_size in [7, 10, 30, 1000, MAX_ENTRIES + 5] {
            let j = fetch_since(&config, from_us, page_size).await;
            assert!(j.unreachable.is_empty(), "{:?}", j.unreachable);
            let details: Vec<_> = j.pages[0]
                .entries
                .iter()
                .map(|e| e.entry.detail.clone())
                .collect();
            let want: Vec<_> = (0..30).map(|i| format!("n{i}")).collect();
            assert_eq!(details, want, "page size {page_size}");
        }
        // One request is cut at its limit: what the paging is for.
        let one = fetch(&config, "/journal?since=0&limit=7").await;
        assert_eq!(one.pages[0].entries.len(), 7);
    }
}
