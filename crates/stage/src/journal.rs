//! The conservation journal on the node's HTTP endpoint (issue 8,
//! docs/probe.md): what this node did with each message it accepted,
//! for `palisade trace` and the audit's conservation check.
//!
//! The journal itself is written by the queue (crates/queue/src/journal.rs)
//! in the same transaction as the queue operation; this module serves it:
//!
//! - `GET /journal?message-id=<id>`: every entry about that message;
//! - `GET /journal?since=<unix seconds>[&limit=N]`: entries from then on;
//! - `GET /journal?after_us=<µs>[&limit=N]`: entries strictly after that
//!   entry time (the journal key), for paging exactly: a caller that got a
//!   full page asks again after the last entry's `time_us`.
//!
//! Each entry is resolved here, where the configuration is known: a
//! `forwarded` entry names the next node (`next_node`, from the address in
//! the `relay=` text) and the id the next hop gave it (`next_id`, from its
//! 250 reply); an `accepted` entry says whether the message is still in
//! this node's queue (`queued`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use palisade_config::Config;
use palisade_queue::{JournalEntry, JournalEvent, Queue, QueueId};
use serde::{Deserialize, Serialize};

use crate::http::{Request, Response, Router};

/// Most entries one `since`/`after_us` request returns (the caller pages
/// with `after_us`).
pub const MAX_ENTRIES: usize = 10_000;

/// One entry as served: the stored entry plus what this node can resolve.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServedEntry {
    #[serde(flatten)]
    pub entry: JournalEntry,
    /// Forwarded: the node of the configuration the message went to.
    pub next_node: Option<String>,
    /// Forwarded: the id the next hop gave it (its 250 reply).
    pub next_id: Option<String>,
    /// Accepted: still in this node's queue.
    pub queued: Option<bool>,
}

/// The answer of `/journal`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JournalPage {
    pub node: String,
    pub stage: String,
    pub entries: Vec<ServedEntry>,
}

/// The id a 250 reply names: `queued as <ID>`, `duplicate of <ID>`,
/// `delivered as <ID>`, `quarantined as <ID>`.
pub fn reply_id(reply: &str) -> Option<&str> {
    for marker in [
        "queued as ",
        "duplicate of ",
        "delivered as ",
        "quarantined as ",
    ] {
        if let Some(i) = reply.find(marker) {
            let rest = &reply[i + marker.len()..];
            let id = rest
                .split(|c: char| !c.is_ascii_alphanumeric())
                .next()
                .unwrap_or("");
            if !id.is_empty() {
                return Some(id);
            }
        }
    }
    None
}

/// The address in a forwarder result `relay=<pool>[<addr>] <reply>`.
fn relay_addr(detail: &str) -> Option<SocketAddr> {
    let rest = detail.strip_prefix("relay=")?;
    let open = rest.find('[')?;
    let close = rest[open..].find("] ")? + open;
    rest[open + 1..close].parse().ok()
}

/// The node of `config` whose SMTP intake is `addr`.
fn node_at(config: &Config, addr: SocketAddr) -> Option<String> {
    config
        .node
        .iter()
        .find(|(_, n)| n.smtp == Some(addr))
        .map(|(name, _)| name.clone())
}

fn resolve(config: &Config, queue: &Queue, entry: JournalEntry) -> ServedEntry {
    let mut served = ServedEntry {
        next_node: None,
        next_id: None,
        queued: None,
        entry,
    };
    match served.entry.event {
        JournalEvent::Forwarded => {
            served.next_node = relay_addr(&served.entry.detail).and_then(|a| node_at(config, a));
            served.next_id = reply_id(&served.entry.detail).map(str::to_string);
        }
        JournalEvent::Accepted => {
            served.queued = served
                .entry
                .id
                .parse::<QueueId>()
                .ok()
                .map(|id| queue.contains(id));
        }
        _ => {}
    }
    served
}

/// `GET /journal` for this node's queue (the store passes its
/// journal-only queue).
pub fn routes(
    router: Router,
    config: std::sync::Arc<Config>,
    node: &str,
    stage: &str,
    queue: &Queue,
) -> Router {
    let (node, stage, queue) = (node.to_string(), stage.to_string(), queue.clone());
    router.route("/journal", move |req: &Request| {
        let entries = if let Some(mid) = req.query.get("message-id") {
            let mid = percent_encoding::percent_decode_str(mid).decode_utf8_lossy();
            queue.journal_for_message(&mid)
        } else if let Some(from) = page_start(&req.query) {
            let Ok(from) = from else {
                return Response::text(400, "since: Unix seconds; after_us: microseconds\n");
            };
            let limit = req
                .query
                .get("limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(MAX_ENTRIES)
                .min(MAX_ENTRIES);
            queue.journal_since(from, limit)
        } else {
            return Response::text(
                400,
                "use ?message-id=ID, ?since=UNIX_SECONDS or ?after_us=MICROSECONDS\n",
            );
        };
        match entries {
            Ok(entries) => {
                let page = JournalPage {
                    node: node.clone(),
                    stage: stage.clone(),
                    entries: entries
                        .into_iter()
                        .map(|e| resolve(&config, &queue, e))
                        .collect(),
                };
                Response::json(serde_json::to_vec(&page).unwrap_or_default())
            }
            Err(e) => Response::text(500, format!("journal: {e}\n")),
        }
    })
}

/// Where a `since=` or `after_us=` page starts; `None` without either,
/// `Some(Err)` when the number does not parse.
fn page_start(query: &HashMap<String, String>) -> Option<Result<SystemTime, ()>> {
    let offset = if let Some(after) = query.get("after_us") {
        // Entry times are the keys, one per microsecond: strictly after.
        after
            .parse::<u64>()
            .map(|us| Duration::from_micros(us.saturating_add(1)))
            .map_err(drop)
    } else {
        // `try_`: "inf" parses as an f64 and would panic from_secs_f64.
        let secs = query.get("since")?.parse::<f64>().map_err(drop);
        secs.and_then(|s| Duration::try_from_secs_f64(s.max(0.0)).map_err(drop))
    };
    Some(offset.and_then(|d| UNIX_EPOCH.checked_add(d).ok_or(())))
}

/// A journal entry for a message a content filter kept out of the flow
/// (its id is the quarantine id the reason names).
pub fn quarantined_entry(
    message: &[u8],
    origin: Option<&str>,
    mail_from: &str,
    rcpts: Vec<String>,
    reason: &str,
) -> JournalEntry {
    JournalEntry {
        message_id: palisade_queue::message_id_of(message),
        origin: origin.map(str::to_string),
        mail_from: Some(mail_from.to_string()),
        rcpts,
        detail: reason.to_string(),
        ..JournalEntry::new(JournalEvent::Quarantined, reply_id(reason).unwrap_or("-"))
    }
}

/// Seconds since the epoch, for `since=` in requests.
pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_hop_id_and_address_from_forwarder_text() {
        let d = "relay=antivirus[127.0.0.1:10124] 250 2.0.0 Ok: queued as 0692F3A50003";
        assert_eq!(reply_id(d), Some("0692F3A50003"));
        assert_eq!(relay_addr(d), Some("127.0.0.1:10124".parse().unwrap()));
        assert_eq!(
            reply_id("250 2.0.0 Ok: delivered as 0000ABCDEF12 (1 mailbox(es))"),
            Some("0000ABCDEF12")
        );
        assert_eq!(reply_id("250 2.0.0 Ok: duplicate of 1A"), Some("1A"));
        assert_eq!(reply_id("250 2.0.0 Ok"), None);
        assert_eq!(relay_addr("relay=x 250 ok"), None);
    }
}
