//! The conservation journal: what this node did with every message it
//! accepted (issue 8; `palisade trace`, docs/probe.md).
//!
//! It lives in the queue's own LMDB environment and is written by the
//! queue's writer thread inside the same transaction as the queue
//! operation it describes (the enqueue, the recorded delivery result, the
//! admin delete), so it costs no extra fsync and can never disagree with
//! the queue after a crash: a message is in the journal as accepted
//! exactly when it was committed to the queue.
//!
//! | sub-database  | key                                   | value            |
//! |---------------|---------------------------------------|------------------|
//! | `journal`     | sequence (µs since epoch, unique, BE) | [`JournalEntry`] |
//! | `journal_idx` | `m` Message-ID `\0` seq, `q` id `\0` seq | empty         |
//!
//! Entries older than the retention (`QueueOptions::journal_ttl`, the
//! origin TTL by default) are pruned lazily, a bounded number per commit.

use lmdb::{Cursor, Database, RwTransaction, Transaction, WriteFlags};
use serde::{Deserialize, Serialize};

use crate::store::{decode, encode, lmdb_err, Store, SCHEMA};
use crate::QueueError;

/// What happened to a message at this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JournalEvent {
    /// Committed to this node (queue, or the store's mailboxes).
    Accepted,
    /// One recipient handed to the next hop, which answered 250; `detail`
    /// is `relay=<pool>[<addr>] <reply>` (the reply names its queue id).
    Forwarded,
    /// One recipient refused for good by the next hop, or expired in the
    /// queue (`detail` says which).
    Failed,
    /// Removed by an admin (`palisade queue delete`).
    Deleted,
    /// Kept out of the flow by a content filter (quarantine); `detail` is
    /// the filter's reason.
    Quarantined,
    /// Filed into a mailbox (store); `detail` is the folder.
    Delivered,
    /// A re-send of a message this node already had (origin dedup).
    Duplicate,
}

/// One journal line. Flat so it encodes the same in postcard (disk) and
/// JSON (the node's `/journal` endpoint).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub schema: u16,
    /// When it happened: microseconds since the Unix epoch; also the key.
    pub time_us: u64,
    /// This node's id for the message (queue id, store delivery id).
    pub id: String,
    pub event: JournalEvent,
    /// The message's Message-ID without angle brackets (accepted entries).
    pub message_id: Option<String>,
    /// The origin token (`mx-1/<ID>`) the message carries.
    pub origin: Option<String>,
    pub mail_from: Option<String>,
    /// Accepted: every recipient; per-recipient events: that one.
    pub rcpts: Vec<String>,
    /// The next hop's reply, the folder, the reason.
    pub detail: String,
}

impl JournalEntry {
    pub fn new(event: JournalEvent, id: impl Into<String>) -> JournalEntry {
        JournalEntry {
            schema: SCHEMA,
            time_us: 0,
            id: id.into(),
            event,
            message_id: None,
            origin: None,
            mail_from: None,
            rcpts: Vec::new(),
            detail: String::new(),
        }
    }
}

/// The Message-ID of a message: the first `Message-ID:` header of the
/// header section, without angle brackets and folding whitespace.
pub fn message_id_of(message: &[u8]) -> Option<String> {
    let mut lines = message.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return None; // end of the header section
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if !line[..colon].eq_ignore_ascii_case(b"message-id") {
            continue;
        }
        let mut value = String::from_utf8_lossy(&line[colon + 1..]).into_owned();
        while let Some(next) = lines.peek() {
            if next.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
                value.push_str(&String::from_utf8_lossy(next));
                lines.next();
            } else {
                break;
            }
        }
        return normalize_message_id(&value);
    }
    None
}

/// `<a@b>` and ` a@b ` both become `a@b`; None when nothing is left.
pub fn normalize_message_id(s: &str) -> Option<String> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    let s = s.trim_start_matches('<').trim_end_matches('>');
    (!s.is_empty()).then(|| s.to_string())
}

/// LMDB keys stop at 511 bytes: index keys carry at most this much text.
const MAX_INDEX_TEXT: usize = 400;

fn index_key(kind: u8, text: &str, seq: Option<u64>) -> Vec<u8> {
    let t = text.as_bytes();
    let mut k = Vec::with_capacity(t.len().min(MAX_INDEX_TEXT) + 10);
    k.push(kind);
    k.extend_from_slice(&t[..t.len().min(MAX_INDEX_TEXT)]);
    k.push(0);
    if let Some(seq) = seq {
        k.extend_from_slice(&seq.to_be_bytes());
    }
    k
}

/// The journal's two databases inside a queue environment.
#[derive(Clone, Copy)]
pub(crate) struct JournalDbs {
    pub entries: Database,
    pub index: Database,
}

/// Appends `entry` (its `time_us` set to a unique sequence after `*last`).
pub(crate) fn append(
    dbs: JournalDbs,
    txn: &mut RwTransaction<'_>,
    last: &mut u64,
    now_us: u64,
    mut entry: JournalEntry,
) -> Result<(), lmdb::Error> {
    let seq = now_us.max(*last + 1);
    *last = seq;
    entry.time_us = seq;
    let bytes = encode(&entry).map_err(|_| lmdb::Error::Invalid)?;
    txn.put(dbs.entries, &seq.to_be_bytes(), &bytes, WriteFlags::empty())?;
    txn.put(
        dbs.index,
        &index_key(b'q', &entry.id, Some(seq)),
        &[],
        WriteFlags::empty(),
    )?;
    if let Some(m) = &entry.message_id {
        txn.put(
            dbs.index,
            &index_key(b'm', m, Some(seq)),
            &[],
            WriteFlags::empty(),
        )?;
    }
    Ok(())
}

/// The highest sequence written so far (0 for an empty journal).
pub(crate) fn last_seq(store: &Store) -> Result<u64, QueueError> {
    let Some(dbs) = store.journal else {
        return Ok(0);
    };
    let txn = store.env.begin_ro_txn().map_err(lmdb_err)?;
    let mut cur = txn.open_ro_cursor(dbs.entries).map_err(lmdb_err)?;
    let last = cur
        .iter_start()
        .last()
        .and_then(|r| r.ok())
        .and_then(|(k, _)| k.try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0);
    Ok(last)
}

/// Deletes entries older than `cutoff_us` (at most `max` of them);
/// true when `max` were deleted (more may be due).
pub(crate) fn prune(
    dbs: JournalDbs,
    txn: &mut RwTransaction<'_>,
    cutoff_us: u64,
    max: usize,
) -> Result<bool, lmdb::Error> {
    let mut old = Vec::new();
    {
        let mut cur = txn.open_ro_cursor(dbs.entries)?;
        for item in cur.iter_start() {
            let (k, v) = item?;
            let seq = k.try_into().map(u64::from_be_bytes).unwrap_or(0);
            if seq >= cutoff_us || old.len() >= max {
                break;
            }
            old.push((seq, decode::<JournalEntry>(v).ok()));
        }
    }
    let full = old.len() >= max;
    for (seq, entry) in old {
        txn.del(dbs.entries, &seq.to_be_bytes(), None)?;
        if let Some(e) = entry {
            del_quiet(txn, dbs.index, &index_key(b'q', &e.id, Some(seq)))?;
            if let Some(m) = &e.message_id {
                del_quiet(txn, dbs.index, &index_key(b'm', m, Some(seq)))?;
            }
        }
    }
    Ok(full)
}

fn del_quiet(txn: &mut RwTransaction<'_>, db: Database, k: &[u8]) -> Result<(), lmdb::Error> {
    match txn.del(db, &k, None) {
        Ok(()) | Err(lmdb::Error::NotFound) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Sequences of the entries indexed under `kind`/`text`.
fn seqs<T: Transaction>(txn: &T, dbs: JournalDbs, kind: u8, text: &str) -> Vec<u64> {
    let prefix = index_key(kind, text, None);
    let Ok(mut cur) = txn.open_ro_cursor(dbs.index) else {
        return Vec::new();
    };
    cur.iter_from(&prefix)
        .filter_map(|r| r.ok())
        .take_while(|(k, _)| k.starts_with(&prefix))
        .filter_map(|(k, _)| k[prefix.len()..].try_into().ok().map(u64::from_be_bytes))
        .collect()
}

fn entry_at<T: Transaction>(txn: &T, dbs: JournalDbs, seq: u64) -> Option<JournalEntry> {
    txn.get(dbs.entries, &seq.to_be_bytes())
        .ok()
        .and_then(|v| decode(v).ok())
}

impl Store {
    /// Every entry about the messages with this Message-ID: their accepted
    /// entries and everything else recorded under the same local ids.
    pub(crate) fn journal_for_message(
        &self,
        message_id: &str,
    ) -> Result<Vec<JournalEntry>, QueueError> {
        let Some(dbs) = self.journal else {
            return Ok(Vec::new());
        };
        let Some(mid) = normalize_message_id(message_id) else {
            return Ok(Vec::new());
        };
        let txn = self.env.begin_ro_txn().map_err(lmdb_err)?;
        let mut ids: Vec<String> = seqs(&txn, dbs, b'm', &mid)
            .into_iter()
            .filter_map(|s| entry_at(&txn, dbs, s))
            .filter(|e| e.message_id.as_deref() == Some(mid.as_str()))
            .map(|e| e.id)
            .collect();
        ids.dedup();
        let mut all: Vec<u64> = ids
            .iter()
            .flat_map(|id| seqs(&txn, dbs, b'q', id))
            .collect();
        all.sort_unstable();
        all.dedup();
        Ok(all
            .into_iter()
            .filter_map(|s| entry_at(&txn, dbs, s))
            .collect())
    }

    /// Entries from `since_us` on, oldest first, at most `limit`.
    pub(crate) fn journal_since(
        &self,
        since_us: u64,
        limit: usize,
    ) -> Result<Vec<JournalEntry>, QueueError> {
        let Some(dbs) = self.journal else {
            return Ok(Vec::new());
        };
        let txn = self.env.begin_ro_txn().map_err(lmdb_err)?;
        let mut cur = txn.open_ro_cursor(dbs.entries).map_err(lmdb_err)?;
        Ok(cur
            .iter_from(since_us.to_be_bytes())
            .filter_map(|r| r.ok())
            .filter_map(|(_, v)| decode(v).ok())
            .take(limit)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_id_from_headers_only() {
        assert_eq!(
            message_id_of(b"Subject: x\r\nMessage-ID: <a.1@b>\r\n\r\nbody").as_deref(),
            Some("a.1@b")
        );
        assert_eq!(
            message_id_of(b"message-id:\r\n <folded@x>\r\n\r\n").as_deref(),
            Some("folded@x")
        );
        assert_eq!(
            message_id_of(b"Subject: x\r\n\r\nMessage-ID: <no@x>\r\n"),
            None
        );
        assert_eq!(normalize_message_id("  <>  "), None);
    }
}
