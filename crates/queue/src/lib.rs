//! `palisade-queue`: the durable store-and-forward queue of one stage.
//!
//! One LMDB environment per queue directory; the sub-databases and record
//! layout are described in `src/store.rs`. All mutations go through one writer thread that batches
//! concurrent requests into one transaction (group commit): `enqueue` returns
//! only after the LMDB commit (fsync) that contains the message.
//!
//! # Invariants
//!
//! | # | invariant | enforced by | tested in |
//! |---|-----------|-------------|-----------|
//! | Q1 | `enqueue` returns `Ok` only after the commit holding envelope, body and origin | writer answers after `commit()` | `tests/crash.rs` |
//! | Q2 | envelope and body are written and deleted in the same transaction | writer | `tests/queue.rs` |
//! | Q3 | a recipient marked Delivered/Failed is never handed out again | `record` never downgrades | `tests/queue.rs` |
//! | Q4 | an id is handed out by `next_due` at most once until `record`/`release_active` | scheduler `active` flag | `tests/queue.rs` |
//! | Q5 | after a restart every non-held message is due immediately | `Queue::open` | `tests/queue.rs` |
//! | Q6 | a record that fails to decode is moved to `corrupt`, never dropped | writer / open | `tests/queue.rs` |
//! | Q7 | ids are unique and increasing, also across restarts | persisted `last_id` | `tests/queue.rs`, `tests/crash.rs` |
//! | Q8 | an origin seen within `origin_ttl` is not enqueued twice | `origin` db, same txn | `tests/queue.rs` |
//!
//! # Multiple processes
//!
//! Exactly one process may open a queue with [`Queue::open`] (it runs the
//! writer and the scheduler). Any number of other processes (e.g. the
//! `palisade queue list` admin command) may open it with
//! [`Queue::open_readonly`] / [`QueueReader::open`] while it runs; LMDB
//! readers need write access to `lock.mdb` (files are created mode 0660).
//! Within one process a directory can be opened only once.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use lmdb::{Cursor, Transaction};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

pub mod durable;
mod journal;
mod sched;
mod store;
mod writer;

pub use journal::{message_id_of, normalize_message_id, JournalEntry, JournalEvent};

pub use lmdb;

use sched::Sched;
use store::{
    decode, encode, lmdb_err, EnvelopeRecord, MetaRecord, Place, RcptRecord, RcptState, Store,
};
use writer::{Prepared, Request, Writer};

/// Tuning of one queue.
#[derive(Clone, Debug)]
pub struct QueueOptions {
    /// LMDB map size in bytes (virtual; the upper bound of the queue's size).
    pub map_size: usize,
    /// Delay before the first retry; doubles per attempt.
    pub min_retry: Duration,
    /// Upper bound of the retry delay.
    pub max_retry: Duration,
    /// After this age, recipients still deferred become failed.
    pub max_age: Duration,
    /// How long an origin token is remembered for deduplication.
    pub origin_ttl: Duration,
    /// Maximum number of requests in one write transaction.
    pub max_batch: usize,
    /// Retention of the conservation journal (src/journal.rs); `None`
    /// turns journaling off.
    pub journal_ttl: Option<Duration>,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            map_size: 4 << 30,
            min_retry: Duration::from_secs(60),
            max_retry: Duration::from_secs(3600),
            max_age: Duration::from_secs(5 * 86400),
            origin_ttl: Duration::from_secs(7 * 86400),
            max_batch: 256,
            journal_ttl: Some(Duration::from_secs(7 * 86400)),
        }
    }
}

/// A queue id. Displayed as 12 uppercase hex digits: the upper 32 bits are
/// the Unix time in seconds at enqueue, the lower 16 a sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(pub u64);

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:012X}", self.0)
    }
}

/// Error parsing a [`QueueId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid queue id {0:?}")]
pub struct ParseQueueIdError(pub String);

impl FromStr for QueueId {
    type Err = ParseQueueIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ParseQueueIdError(s.to_string()));
        }
        u64::from_str_radix(s, 16)
            .map(QueueId)
            .map_err(|_| ParseQueueIdError(s.to_string()))
    }
}

/// A message to enqueue.
#[derive(Clone, Debug, Default)]
pub struct NewMessage {
    /// Token identifying the message at its entry point into the gateway
    /// (e.g. "mx-1/0A1B2C3D"); used for deduplication.
    pub origin: Option<String>,
    /// "" for the null reverse-path.
    pub mail_from: String,
    /// Raw ESMTP MAIL parameters to carry downstream (RET=, ENVID=, BODY=, SMTPUTF8).
    pub mail_params: String,
    pub rcpts: Vec<NewRecipient>,
    pub client: ClientInfo,
    /// Complete message incl. headers, CRLF lines, not dot-stuffed.
    pub body: Vec<u8>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewRecipient {
    pub address: String,
    /// Raw NOTIFY=/ORCPT= parameters.
    pub params: String,
}

/// Facts about the SMTP session, for later stages and logs.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClientInfo {
    pub peer: String,
    pub helo: String,
    pub tls: Option<String>,
    pub auth_user: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enqueued {
    pub id: QueueId,
    /// The origin was already known: nothing new was stored, `id` is the
    /// earlier message's id (which may since have been delivered).
    pub duplicate: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RcptStatus {
    Pending,
    Delivered { reply: String },
    Failed { reply: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecipient {
    pub address: String,
    pub params: String,
    pub status: RcptStatus,
    pub last_reply: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub id: QueueId,
    pub origin: Option<String>,
    pub mail_from: String,
    pub mail_params: String,
    pub rcpts: Vec<StoredRecipient>,
    pub client: ClientInfo,
    pub arrived: SystemTime,
    pub attempts: u32,
    /// As stored. After a restart the message is due now regardless.
    pub next_attempt: SystemTime,
    pub held: bool,
    /// Body size in bytes.
    pub size: u64,
}

impl Envelope {
    /// The pending recipients' indexes grouped by where `route` sends
    /// each address, in first-seen order: one delivery per group.
    pub fn pending_by<R: PartialEq>(&self, route: impl Fn(&str) -> R) -> Vec<(R, Vec<usize>)> {
        let mut groups: Vec<(R, Vec<usize>)> = Vec::new();
        for (i, r) in self.rcpts.iter().enumerate() {
            if !matches!(r.status, RcptStatus::Pending) {
                continue;
            }
            let to = route(&r.address);
            match groups.iter_mut().find(|(g, _)| *g == to) {
                Some((_, v)) => v.push(i),
                None => groups.push((to, vec![i])),
            }
        }
        groups
    }

    /// The origin token the message carries downstream: the one it came
    /// with, or `<node>/<id>` where it entered the gateway.
    pub fn origin_or_here(&self, node: &str) -> String {
        self.origin
            .clone()
            .unwrap_or_else(|| format!("{node}/{}", self.id))
    }
}

/// Result of one delivery attempt for one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered(String),
    Deferred(String),
    Failed(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// The message was removed: every recipient is delivered or failed.
    pub finished: bool,
    /// Every recipient that became Failed in this call: those reported as
    /// `Outcome::Failed` and those still deferred past `max_age`
    /// (reason "message expired in queue; last reply: ...").
    pub failed_now: Vec<(String, String)>,
    /// When the message is due again (None when finished).
    pub next_attempt: Option<SystemTime>,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// LMDB map or disk full (SMTP: 452 4.3.1).
    #[error("queue full (LMDB map size or disk space exhausted)")]
    Full,
    #[error("queue I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("LMDB error: {0}")]
    Lmdb(lmdb::Error),
    #[error("message not found in queue")]
    NotFound,
    /// A stored record failed to decode; it was moved to the `corrupt` db.
    #[error("corrupt queue record: {0}")]
    Corrupt(String),
    #[error("queue closed (writer thread gone)")]
    Closed,
}

impl QueueError {
    /// True if retrying later may succeed (SMTP 4xx rather than 5xx).
    pub fn is_temporary(&self) -> bool {
        match self {
            QueueError::Full | QueueError::Io(_) | QueueError::Lmdb(_) | QueueError::Closed => true,
            QueueError::NotFound | QueueError::Corrupt(_) => false,
        }
    }
}

/// Counters of one open queue (since `open`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// LMDB write transactions committed.
    pub commits: u64,
    /// Messages stored by `enqueue` (duplicates not counted).
    pub enqueued: u64,
    /// `enqueue` calls answered as duplicates.
    pub duplicates: u64,
}

#[derive(Default)]
pub(crate) struct StatsCounters {
    commits: AtomicU64,
    enqueued: AtomicU64,
    duplicates: AtomicU64,
}

struct Inner {
    store: Arc<Store>,
    sched: Arc<Sched>,
    stats: Arc<StatsCounters>,
    opts: QueueOptions,
    tx: Option<mpsc::Sender<Request>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel stops the writer after its current batch; wait
        // for it so the environment is closed when the last `Queue` is gone
        // (a reopen in the same process must not overlap).
        self.tx.take();
        let handle = self
            .writer
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

/// A durable queue. Cheap to clone; all clones share one writer thread.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue").field("len", &self.len()).finish()
    }
}

impl Queue {
    /// Opens (creating if needed) the queue in `dir`, moves undecodable
    /// records to `corrupt`, and makes every non-held message due now.
    pub fn open(dir: &Path, opts: QueueOptions) -> Result<Queue, QueueError> {
        let store = Arc::new(Store::open(dir, opts.map_size, false)?);
        let sched = Arc::new(Sched::new());
        let last_id = load(&store, &sched)?;
        let stats = Arc::new(StatsCounters::default());
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            store: Arc::clone(&store),
            sched: Arc::clone(&sched),
            stats: Arc::clone(&stats),
            opts: opts.clone(),
            last_id,
            last_prune: None,
            journal_behind: false,
            journal_last: journal::last_seq(&store)?,
        };
        let handle = std::thread::Builder::new()
            .name("queue-writer".into())
            .spawn(move || writer.run(rx))?;
        Ok(Queue {
            inner: Arc::new(Inner {
                store,
                sched,
                stats,
                opts,
                tx: Some(tx),
                writer: Mutex::new(Some(handle)),
            }),
        })
    }

    /// Opens a queue that another process runs, for listing only.
    pub fn open_readonly(dir: &Path) -> Result<QueueReader, QueueError> {
        QueueReader::open(dir)
    }

    fn send(&self, req: Request) -> Result<(), QueueError> {
        match &self.inner.tx {
            Some(tx) => tx.send(req).map_err(|_| QueueError::Closed),
            None => Err(QueueError::Closed),
        }
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(writer::Reply<T>) -> Request,
    ) -> Result<T, QueueError> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx))?;
        rx.await.map_err(|_| QueueError::Closed)?
    }

    /// Stores the message durably. On `Ok` the message is committed to disk
    /// and due for delivery.
    pub async fn enqueue(&self, msg: NewMessage) -> Result<Enqueued, QueueError> {
        let now = store::to_us(SystemTime::now());
        let rec = EnvelopeRecord {
            schema: store::SCHEMA,
            origin: msg.origin.clone(),
            mail_from: msg.mail_from,
            mail_params: msg.mail_params,
            rcpts: msg
                .rcpts
                .into_iter()
                .map(|r| RcptRecord {
                    address: r.address,
                    params: r.params,
                    state: RcptState::Pending,
                    last_reply: None,
                })
                .collect(),
            client: msg.client,
            arrived_us: now,
            attempts: 0,
            next_attempt_us: now,
            size: msg.body.len() as u64,
        };
        let journal = self.inner.opts.journal_ttl.map(|_| JournalEntry {
            message_id: message_id_of(&msg.body),
            origin: msg.origin.clone(),
            mail_from: Some(rec.mail_from.clone()),
            rcpts: rec.rcpts.iter().map(|r| r.address.clone()).collect(),
            ..JournalEntry::new(JournalEvent::Accepted, "")
        });
        let prepared = Prepared {
            journal,
            origin: msg.origin,
            record: encode(&rec)?,
            body: msg.body,
        };
        self.call(|tx| Request::Enqueue(Box::new(prepared), tx))
            .await
    }

    /// Waits for a due message and marks it active: it is not handed out
    /// again until [`record`](Self::record) or
    /// [`release_active`](Self::release_active). Cancel-safe.
    pub async fn next_due(&self) -> QueueId {
        let sched = &self.inner.sched;
        loop {
            let notified = sched.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match sched.take_due() {
                Ok(id) => return id,
                Err(Some(deadline)) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(deadline.into()) => {}
                    }
                }
                Err(None) => notified.await,
            }
        }
    }

    /// Like [`next_due`](Self::next_due) without waiting.
    pub fn try_next_due(&self) -> Option<QueueId> {
        self.inner.sched.take_due().ok()
    }

    /// The envelope and body of a message a delivery engine took from
    /// [`next_due`](Self::next_due); `None`, with the message released,
    /// when an admin deleted it meanwhile or it cannot be read (logged).
    pub fn load_due(&self, id: QueueId) -> Option<(Envelope, Vec<u8>)> {
        let loaded = match (self.envelope(id), self.body(id)) {
            (Ok(Some(e)), Ok(Some(b))) => Some((e, b)),
            (Ok(None), _) => None,
            (Err(e), _) => {
                tracing::warn!("{id}: cannot read envelope: {e}");
                None
            }
            (_, body) => {
                tracing::warn!("{id}: cannot read message body: {:?}", body.err());
                None
            }
        };
        if loaded.is_none() {
            self.release_active(id);
        }
        loaded
    }

    /// The stored envelope. A record that fails to decode yields
    /// `Err(Corrupt)` and is moved to the `corrupt` database.
    pub fn envelope(&self, id: QueueId) -> Result<Option<Envelope>, QueueError> {
        let r = self.inner.store.envelope(id);
        if let Err(QueueError::Corrupt(_)) = &r {
            let _ = self.send(Request::Quarantine(id));
        }
        r
    }

    /// A copy of the body.
    pub fn body(&self, id: QueueId) -> Result<Option<Vec<u8>>, QueueError> {
        self.inner.store.with_body(id, |b| b.to_vec())
    }

    /// Zero-copy access to the body inside a read transaction. Keep `f`
    /// short: a long-lived reader keeps LMDB from reusing freed pages.
    pub fn with_body<R>(
        &self,
        id: QueueId,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<R>, QueueError> {
        self.inner.store.with_body(id, f)
    }

    /// Records the results of one delivery attempt (indexes into
    /// `Envelope::rcpts`; recipients not listed are untouched, final states
    /// are never changed). Deletes the message when no recipient is pending;
    /// otherwise schedules the next attempt with backoff and fails recipients
    /// still deferred past `max_age`. Releases the active mark.
    ///
    /// On `Err(NotFound | Corrupt)` the message is gone from the schedule; on
    /// other errors it stays active: retry `record` or call `release_active`.
    pub async fn record(
        &self,
        id: QueueId,
        results: Vec<(usize, Outcome)>,
    ) -> Result<Recorded, QueueError> {
        self.call(|tx| Request::Record(id, results, tx)).await
    }

    /// Durably marks recipients delivered (index into `Envelope::rcpts`,
    /// the remote reply) while the attempt goes on: a message to several
    /// destinations settles each one as soon as its transaction ends, so a
    /// crash before the attempt's `record` never re-sends to a destination
    /// that already answered 250 (invariant Q3). Attempts, schedule and the
    /// active mark are untouched; `record` still ends the attempt (it skips
    /// recipients already delivered). Returns how many were newly settled.
    /// Batched by the group commit like every other write.
    pub async fn settle(
        &self,
        id: QueueId,
        delivered: Vec<(usize, String)>,
    ) -> Result<usize, QueueError> {
        self.call(|tx| Request::Settle(id, delivered, tx)).await
    }

    /// Attempt abandoned without result: due again after `min_retry`.
    pub fn release_active(&self, id: QueueId) {
        self.inner
            .sched
            .release_active(id, self.inner.opts.min_retry);
    }

    /// Deletes the message (envelope and body). `Ok(false)` if unknown.
    pub async fn delete(&self, id: QueueId) -> Result<bool, QueueError> {
        self.call(|tx| Request::Delete(id, tx)).await
    }

    /// Puts the message on hold (not scheduled until released). `Ok(false)` if unknown.
    pub async fn hold(&self, id: QueueId) -> Result<bool, QueueError> {
        self.call(|tx| Request::Hold(id, tx)).await
    }

    /// Releases a held message; it is due now. `Ok(false)` if unknown.
    pub async fn release(&self, id: QueueId) -> Result<bool, QueueError> {
        self.call(|tx| Request::Release(id, tx)).await
    }

    /// Makes every deferred message due now.
    pub fn flush(&self) {
        self.inner.sched.flush();
    }

    /// Every envelope (held ones included), sorted by id. Undecodable records
    /// are skipped (and moved to `corrupt`).
    pub fn list(&self) -> Result<Vec<Envelope>, QueueError> {
        let (list, bad) = self.inner.store.list()?;
        for id in bad {
            let _ = self.send(Request::Quarantine(id));
        }
        Ok(list)
    }

    /// Messages in the queue (held and active ones included).
    pub fn len(&self) -> usize {
        self.inner.sched.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn stats(&self) -> QueueStats {
        let s = &self.inner.stats;
        QueueStats {
            commits: s.commits.load(Ordering::Relaxed),
            enqueued: s.enqueued.load(Ordering::Relaxed),
            duplicates: s.duplicates.load(Ordering::Relaxed),
        }
    }

    /// Raw contents of the `corrupt` database as (key, bytes); keys are
    /// `"<db>/<ID>"`.
    pub fn corrupt_records(&self) -> Result<Vec<(String, Vec<u8>)>, QueueError> {
        self.inner.store.corrupt_records()
    }

    pub fn options(&self) -> &QueueOptions {
        &self.inner.opts
    }

    /// Appends entries to the conservation journal in the next group
    /// commit; returns after that commit. For events that are not a queue
    /// operation (a filter kept the message, the store filed it).
    pub async fn journal(&self, entries: Vec<JournalEntry>) -> Result<(), QueueError> {
        if self.inner.opts.journal_ttl.is_none() || entries.is_empty() {
            return Ok(());
        }
        self.call(|tx| Request::Journal(entries, tx)).await
    }

    /// Every journal entry about messages with this Message-ID.
    pub fn journal_for_message(&self, message_id: &str) -> Result<Vec<JournalEntry>, QueueError> {
        self.inner.store.journal_for_message(message_id)
    }

    /// Journal entries from `since` on, oldest first, at most `limit`.
    pub fn journal_since(
        &self,
        since: SystemTime,
        limit: usize,
    ) -> Result<Vec<JournalEntry>, QueueError> {
        self.inner.store.journal_since(store::to_us(since), limit)
    }

    /// Whether the message is still in the queue (any state).
    pub fn contains(&self, id: QueueId) -> bool {
        // No decoding: `/journal` asks this for every accepted entry.
        matches!(self.inner.store.contains(id), Ok(true))
    }
}

/// Read-only access to a queue another process runs (`palisade queue list`).
pub struct QueueReader {
    store: Store,
}

impl QueueReader {
    /// Opens an existing queue read-only. Fails with `NotFound` if `dir`
    /// holds no queue.
    pub fn open(dir: &Path) -> Result<QueueReader, QueueError> {
        if !dir.join("data.mdb").exists() {
            return Err(QueueError::NotFound);
        }
        Ok(QueueReader {
            store: Store::open(dir, 0, true)?,
        })
    }

    pub fn envelope(&self, id: QueueId) -> Result<Option<Envelope>, QueueError> {
        self.store.envelope(id)
    }

    pub fn body(&self, id: QueueId) -> Result<Option<Vec<u8>>, QueueError> {
        self.store.with_body(id, |b| b.to_vec())
    }

    pub fn with_body<R>(
        &self,
        id: QueueId,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<R>, QueueError> {
        self.store.with_body(id, f)
    }

    /// Every decodable envelope, sorted by id (undecodable ones are skipped
    /// with a warning; the running queue moves them to `corrupt`).
    pub fn list(&self) -> Result<Vec<Envelope>, QueueError> {
        Ok(self.store.list()?.0)
    }

    /// Number of messages (counts the envelope databases).
    pub fn len(&self) -> Result<usize, QueueError> {
        self.store.count()
    }

    pub fn is_empty(&self) -> Result<bool, QueueError> {
        Ok(self.len()? == 0)
    }

    pub fn corrupt_records(&self) -> Result<Vec<(String, Vec<u8>)>, QueueError> {
        self.store.corrupt_records()
    }
}

/// Open-time scan: quarantines undecodable envelopes, loads the schedule and
/// returns the highest id ever issued.
fn load(store: &Store, sched: &Sched) -> Result<u64, QueueError> {
    let mut last_id = 0u64;
    let mut bad = Vec::new();
    {
        let txn = store.env.begin_ro_txn().map_err(lmdb_err)?;
        match txn.get(store.meta, &store::META_KEY) {
            Ok(v) => match decode::<MetaRecord>(v) {
                Ok(m) => last_id = m.last_id,
                Err(e) => {
                    tracing::error!(error = %e, "corrupt queue meta record; recomputing last id")
                }
            },
            Err(lmdb::Error::NotFound) => {}
            Err(e) => return Err(lmdb_err(e)),
        }
        for place in Place::ALL {
            let mut cur = txn.open_ro_cursor(store.db(place)).map_err(lmdb_err)?;
            for item in cur.iter_start() {
                let (k, v) = item.map_err(lmdb_err)?;
                let Some(id) = store::id_from_key(k) else {
                    continue;
                };
                last_id = last_id.max(id.0);
                match decode::<EnvelopeRecord>(v) {
                    Ok(_) => sched.load(id, place == Place::Hold),
                    Err(e) => {
                        tracing::error!(%id, db = place.name(), error = %e, "corrupt queue record moved to corrupt");
                        bad.push((id, place));
                    }
                }
            }
        }
        // Bodies whose envelope is corrupt still carry their id.
        let mut cur = txn.open_ro_cursor(store.body).map_err(lmdb_err)?;
        if let Some(Ok((k, _))) = cur.iter_start().last() {
            if let Some(id) = store::id_from_key(k) {
                last_id = last_id.max(id.0);
            }
        }
    }
    if !bad.is_empty() {
        let mut txn = store.env.begin_rw_txn().map_err(lmdb_err)?;
        for (id, place) in bad {
            writer::quarantine(store, &mut txn, id, place).map_err(lmdb_err)?;
        }
        txn.commit().map_err(lmdb_err)?;
    }
    Ok(last_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_display_roundtrip() {
        let id = QueueId(0x6920_ABCD_0001);
        assert_eq!(id.to_string(), "6920ABCD0001");
        assert_eq!("6920ABCD0001".parse::<QueueId>().unwrap(), id);
        assert_eq!("6920abcd0001".parse::<QueueId>().unwrap(), id);
        assert!("".parse::<QueueId>().is_err());
        assert!("XYZ".parse::<QueueId>().is_err());
        assert!("+1".parse::<QueueId>().is_err());
        assert_eq!(QueueId(1).to_string(), "000000000001");
    }

    #[test]
    fn backoff_grows_and_caps() {
        let opts = QueueOptions {
            min_retry: Duration::from_secs(60),
            max_retry: Duration::from_secs(3600),
            ..Default::default()
        };
        for _ in 0..100 {
            let d: Vec<Duration> = (1..=12).map(|a| writer::backoff(&opts, a)).collect();
            assert!(d[0] >= Duration::from_secs(60) && d[0] < Duration::from_secs(75));
            for w in d[..6].windows(2) {
                assert!(w[1] > w[0], "{d:?}");
            }
            for x in &d {
                assert!(*x <= Duration::from_secs(3600) && *x >= Duration::from_secs(60));
            }
            assert!(d[11] >= Duration::from_secs(2880));
        }
        // Huge attempt counts don't overflow.
        assert!(writer::backoff(&opts, u32::MAX) <= Duration::from_secs(3600));
    }

    #[test]
    fn sched_hands_out_once() {
        let s = Sched::new();
        s.load(QueueId(1), false);
        s.load(QueueId(2), true);
        assert_eq!(s.take_due(), Ok(QueueId(1)));
        assert!(s.is_active(QueueId(1)));
        assert_eq!(s.take_due(), Err(None));
        s.release_active(QueueId(1), Duration::ZERO);
        assert_eq!(s.take_due(), Ok(QueueId(1)));
        s.apply([sched::Effect::Due(QueueId(2))]);
        // Active message made due again is still not handed out twice.
        s.apply([sched::Effect::Due(QueueId(1))]);
        assert_eq!(s.take_due(), Ok(QueueId(2)));
        assert_eq!(s.take_due(), Err(None));
    }
}
