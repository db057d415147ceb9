//! The single writer thread: group commit of all mutations.
//!
//! It blocks for the first request, drains whatever else is pending (up to
//! `max_batch`), applies everything in one `RwTransaction`, commits (fsync),
//! updates the in-memory schedule and only then answers each caller.
//!
//! If the shared transaction fails (map full, disk full, I/O error) it is
//! aborted and the batch is replayed one request per transaction, so one
//! oversized message cannot fail its neighbours.

use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use lmdb::{Cursor, RwTransaction, Transaction, WriteFlags};
use rand::Rng;
use tokio::sync::oneshot;

use crate::sched::{Effect, Sched};
use crate::store::{
    decode, encode, id_from_key, key, lmdb_err, origin_key, to_us, EnvelopeRecord, MetaRecord,
    OriginRecord, Place, RcptState, Store, META_KEY, SCHEMA,
};
use crate::{Enqueued, Outcome, QueueError, QueueId, QueueOptions, Recorded, StatsCounters};

/// A message encoded by the caller's task, ready to be written.
pub(crate) struct Prepared {
    /// The journal's `accepted` entry (id filled in by the writer).
    pub journal: Option<crate::JournalEntry>,
    pub origin: Option<String>,
    /// Encoded [`EnvelopeRecord`].
    pub record: Vec<u8>,
    pub body: Vec<u8>,
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, QueueError>>;

pub(crate) enum Request {
    Enqueue(Box<Prepared>, Reply<Enqueued>),
    Record(QueueId, Vec<(usize, Outcome)>, Reply<Recorded>),
    /// Mid-attempt: these recipients are delivered (index, reply).
    Settle(QueueId, Vec<(usize, String)>, Reply<usize>),
    Delete(QueueId, Reply<bool>),
    Hold(QueueId, Reply<bool>),
    Release(QueueId, Reply<bool>),
    /// A reader found an undecodable record: move it to `corrupt`.
    Quarantine(QueueId),
    /// Entries for the conservation journal.
    Journal(Vec<crate::JournalEntry>, Reply<()>),
}

/// Stop draining once a batch carries this many bytes of bodies, so one
/// transaction stays well below the map size even with large messages.
const MAX_BATCH_BYTES: usize = 64 << 20;

impl Request {
    fn size(&self) -> usize {
        match self {
            Request::Enqueue(p, _) => p.body.len() + p.record.len(),
            _ => 64,
        }
    }
}

/// The answer computed inside the transaction, sent after the commit.
enum Answer {
    Enqueued(Result<Enqueued, QueueError>),
    Recorded(Result<Recorded, QueueError>),
    Settled(Result<usize, QueueError>),
    Bool(Result<bool, QueueError>),
    Unit,
    None,
}

pub(crate) struct Writer {
    pub store: Arc<Store>,
    pub sched: Arc<Sched>,
    pub stats: Arc<StatsCounters>,
    pub opts: QueueOptions,
    pub last_id: u64,
    pub last_prune: Option<Instant>,
    /// The last prune deleted a full batch of journal entries: prune again
    /// with the next batch rather than in a second, so the journal keeps up
    /// with any message rate.
    pub journal_behind: bool,
    /// Sequence of the last journal entry written.
    pub journal_last: u64,
}

/// An LMDB failure inside the shared transaction: the transaction is dead.
struct TxnFailed(lmdb::Error);

impl From<lmdb::Error> for TxnFailed {
    fn from(e: lmdb::Error) -> Self {
        TxnFailed(e)
    }
}

fn get_opt<'t>(
    txn: &'t RwTransaction<'_>,
    db: lmdb::Database,
    k: &[u8],
) -> Result<Option<&'t [u8]>, lmdb::Error> {
    match txn.get(db, &k) {
        Ok(v) => Ok(Some(v)),
        Err(lmdb::Error::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

fn del_opt(txn: &mut RwTransaction<'_>, db: lmdb::Database, k: &[u8]) -> Result<bool, lmdb::Error> {
    match txn.del(db, &k, None) {
        Ok(()) => Ok(true),
        Err(lmdb::Error::NotFound) => Ok(false),
        Err(e) => Err(e),
    }
}

impl Writer {
    pub(crate) fn run(mut self, rx: Receiver<Request>) {
        let max = self.opts.max_batch.max(1);
        let mut batch = Vec::with_capacity(max);
        while let Ok(first) = rx.recv() {
            let mut bytes = first.size();
            batch.push(first);
            while batch.len() < max && bytes < MAX_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(r) => {
                        bytes += r.size();
                        batch.push(r);
                    }
                    Err(_) => break,
                }
            }
            self.process(&mut batch);
        }
        tracing::debug!("queue writer stopped");
    }

    fn process(&mut self, batch: &mut Vec<Request>) {
        let prune = self.journal_behind
            || self
                .last_prune
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        match self.transact(batch, prune) {
            Ok(answers) => {
                if prune {
                    self.last_prune = Some(Instant::now());
                }
                self.finish(batch.drain(..), answers);
            }
            Err(TxnFailed(e)) if batch.len() > 1 => {
                tracing::warn!(error = %e, n = batch.len(), "queue batch failed; retrying one by one");
                for req in batch.drain(..) {
                    let mut one = vec![req];
                    match self.transact(&one, false) {
                        Ok(answers) => self.finish(one.drain(..), answers),
                        Err(TxnFailed(e)) => fail(one.pop(), lmdb_err(e)),
                    }
                }
            }
            Err(TxnFailed(e)) => {
                tracing::warn!(error = %e, "queue write failed");
                fail(batch.pop(), lmdb_err(e));
                batch.clear();
            }
        }
    }

    /// Applies `batch` in one transaction and commits it.
    fn transact(
        &mut self,
        batch: &[Request],
        prune: bool,
    ) -> Result<Vec<(Answer, Effect)>, TxnFailed> {
        let store = Arc::clone(&self.store);
        let mut txn = store.env.begin_rw_txn()?;
        let id_before = self.last_id;
        let mut answers = Vec::with_capacity(batch.len());
        let now = SystemTime::now();
        for req in batch {
            answers.push(self.apply(&mut txn, req, now)?);
        }
        if self.last_id != id_before {
            let meta = MetaRecord {
                schema: SCHEMA,
                last_id: self.last_id,
            };
            let bytes = encode(&meta).unwrap_or_default();
            txn.put(store.meta, &META_KEY, &bytes, WriteFlags::empty())?;
        }
        if prune {
            self.prune_origins(&mut txn, now)?;
            if let (Some(dbs), Some(ttl)) = (store.journal, self.opts.journal_ttl) {
                let cutoff = to_us(now).saturating_sub(ttl.as_micros() as u64);
                self.journal_behind = crate::journal::prune(dbs, &mut txn, cutoff, 1000)?;
            }
        }
        txn.commit()?;
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        Ok(answers)
    }

    fn finish(&self, reqs: impl Iterator<Item = Request>, answers: Vec<(Answer, Effect)>) {
        let (answers, effects): (Vec<_>, Vec<_>) = answers.into_iter().unzip();
        // Schedule first, so a caller that got its answer sees the new state.
        self.sched.apply(effects);
        for (req, answer) in reqs.zip(answers) {
            match (req, answer) {
                (Request::Enqueue(_, tx), Answer::Enqueued(r)) => {
                    if matches!(
                        r,
                        Ok(Enqueued {
                            duplicate: false,
                            ..
                        })
                    ) {
                        self.stats.enqueued.fetch_add(1, Ordering::Relaxed);
                    } else if r.is_ok() {
                        self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = tx.send(r);
                }
                (Request::Record(_, _, tx), Answer::Recorded(r)) => {
                    let _ = tx.send(r);
                }
                (Request::Settle(_, _, tx), Answer::Settled(r)) => {
                    let _ = tx.send(r);
                }
                (Request::Delete(_, tx), Answer::Bool(r))
                | (Request::Hold(_, tx), Answer::Bool(r))
                | (Request::Release(_, tx), Answer::Bool(r)) => {
                    let _ = tx.send(r);
                }
                (Request::Journal(_, tx), Answer::Unit) => {
                    let _ = tx.send(Ok(()));
                }
                _ => {}
            }
        }
    }

    fn next_id(&mut self, now: SystemTime) -> QueueId {
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.last_id = (self.last_id + 1).max(secs << 16);
        QueueId(self.last_id)
    }

    fn apply(
        &mut self,
        txn: &mut RwTransaction<'_>,
        req: &Request,
        now: SystemTime,
    ) -> Result<(Answer, Effect), TxnFailed> {
        let store = Arc::clone(&self.store);
        Ok(match req {
            Request::Enqueue(p, _) => {
                let okey = p.origin.as_deref().map(origin_key);
                if let Some(okey) = &okey {
                    if let Some(v) = get_opt(txn, store.origin, okey)? {
                        match decode::<OriginRecord>(v) {
                            Ok(o) if self.origin_alive(o.created_us, now) => {
                                let dup = Enqueued {
                                    id: QueueId(o.id),
                                    duplicate: true,
                                };
                                if let Some(entry) = &p.journal {
                                    let entry = crate::JournalEntry {
                                        id: dup.id.to_string(),
                                        event: crate::JournalEvent::Duplicate,
                                        ..entry.clone()
                                    };
                                    self.journal(txn, now, entry)?;
                                }
                                return Ok((Answer::Enqueued(Ok(dup)), Effect::None));
                            }
                            Ok(_) => {}
                            Err(e) => {
                                let v = v.to_vec();
                                tracing::warn!(error = %e, "corrupt origin record");
                                let ck = corrupt_key("origin", &String::from_utf8_lossy(okey));
                                txn.put(store.corrupt, &ck, &v, WriteFlags::empty())?;
                            }
                        }
                    }
                }
                let id = self.next_id(now);
                let k = key(id);
                txn.put(store.incoming, &k, &p.record, WriteFlags::empty())?;
                txn.put(store.body, &k, &p.body, WriteFlags::empty())?;
                if let Some(okey) = okey {
                    let created_us = to_us(now);
                    let rec = OriginRecord {
                        schema: SCHEMA,
                        id: id.0,
                        created_us,
                    };
                    let bytes = encode(&rec).unwrap_or_default();
                    txn.put(store.origin, &okey, &bytes, WriteFlags::empty())?;
                    let mut tk = Vec::with_capacity(16);
                    tk.extend_from_slice(&created_us.to_be_bytes());
                    tk.extend_from_slice(&k);
                    txn.put(store.origin_time, &tk, &okey, WriteFlags::empty())?;
                }
                if let Some(entry) = &p.journal {
                    let entry = crate::JournalEntry {
                        id: id.to_string(),
                        ..entry.clone()
                    };
                    self.journal(txn, now, entry)?;
                }
                let ok = Enqueued {
                    id,
                    duplicate: false,
                };
                (Answer::Enqueued(Ok(ok)), Effect::Due(id))
            }
            Request::Record(id, results, _) => match self.record(txn, *id, results, now)? {
                Ok((rec, effect)) => (Answer::Recorded(Ok(rec)), effect),
                Err((e, effect)) => (Answer::Recorded(Err(e)), effect),
            },
            Request::Settle(id, delivered, _) => match self.settle(txn, *id, delivered)? {
                Ok(n) => (Answer::Settled(Ok(n)), Effect::None),
                Err((e, effect)) => (Answer::Settled(Err(e)), effect),
            },
            Request::Delete(id, _) => {
                let k = key(*id);
                let mut found = false;
                for place in Place::ALL {
                    found |= del_opt(txn, store.db(place), &k)?;
                }
                del_opt(txn, store.body, &k)?;
                if found {
                    let entry =
                        crate::JournalEntry::new(crate::JournalEvent::Deleted, id.to_string());
                    self.journal(txn, now, entry)?;
                    (Answer::Bool(Ok(true)), Effect::Remove(*id))
                } else {
                    (Answer::Bool(Ok(false)), Effect::None)
                }
            }
            Request::Hold(id, _) => match store.find(txn, *id)? {
                None => (Answer::Bool(Ok(false)), Effect::None),
                Some((Place::Hold, _)) => (Answer::Bool(Ok(true)), Effect::Hold(*id)),
                Some((place, v)) => {
                    let v = v.to_vec();
                    let k = key(*id);
                    txn.put(store.hold, &k, &v, WriteFlags::empty())?;
                    txn.del(store.db(place), &k, None)?;
                    (Answer::Bool(Ok(true)), Effect::Hold(*id))
                }
            },
            Request::Release(id, _) => match store.find(txn, *id)? {
                None => (Answer::Bool(Ok(false)), Effect::None),
                Some((Place::Hold, v)) => match decode::<EnvelopeRecord>(v) {
                    Ok(rec) => {
                        let v = v.to_vec();
                        let k = key(*id);
                        let to = if rec.attempts == 0 {
                            Place::Incoming
                        } else {
                            Place::Deferred
                        };
                        txn.put(store.db(to), &k, &v, WriteFlags::empty())?;
                        txn.del(store.hold, &k, None)?;
                        (Answer::Bool(Ok(true)), Effect::Due(*id))
                    }
                    Err(e) => {
                        let err = self.quarantine(txn, *id, Place::Hold, &e)?;
                        (Answer::Bool(Err(err)), Effect::Remove(*id))
                    }
                },
                Some(_) => (Answer::Bool(Ok(true)), Effect::None),
            },
            Request::Journal(entries, _) => {
                for e in entries {
                    self.journal(txn, now, e.clone())?;
                }
                (Answer::Unit, Effect::None)
            }
            Request::Quarantine(id) => match store.find(txn, *id)? {
                Some((place, v)) => match decode::<EnvelopeRecord>(v) {
                    Ok(_) => (Answer::None, Effect::None),
                    Err(e) => {
                        self.quarantine(txn, *id, place, &e)?;
                        (Answer::None, Effect::Remove(*id))
                    }
                },
                None => (Answer::None, Effect::None),
            },
        })
    }

    /// Appends one journal entry in this transaction (no-op when off).
    fn journal(
        &mut self,
        txn: &mut RwTransaction<'_>,
        now: SystemTime,
        entry: crate::JournalEntry,
    ) -> Result<(), lmdb::Error> {
        match (self.store.journal, self.opts.journal_ttl) {
            (Some(dbs), Some(_)) => {
                crate::journal::append(dbs, txn, &mut self.journal_last, to_us(now), entry)
            }
            _ => Ok(()),
        }
    }

    fn origin_alive(&self, created_us: u64, now: SystemTime) -> bool {
        let ttl = self.opts.origin_ttl.as_micros().min(u64::MAX as u128) as u64;
        created_us.saturating_add(ttl) > to_us(now)
    }

    /// Moves an undecodable envelope (and its body) to `corrupt`.
    fn quarantine(
        &self,
        txn: &mut RwTransaction<'_>,
        id: QueueId,
        place: Place,
        why: &str,
    ) -> Result<QueueError, lmdb::Error> {
        tracing::error!(%id, db = place.name(), error = why, "corrupt queue record moved to corrupt");
        quarantine(&self.store, txn, id, place)?;
        Ok(QueueError::Corrupt(format!("{}/{id}: {why}", place.name())))
    }

    /// The envelope of `id` and where it is; an undecodable one is
    /// quarantined (`Err(Corrupt)`), a missing one is `Err(NotFound)`.
    #[allow(clippy::type_complexity)]
    fn load_envelope(
        &self,
        txn: &mut RwTransaction<'_>,
        id: QueueId,
    ) -> Result<Result<(Place, EnvelopeRecord), QueueError>, TxnFailed> {
        let Some((place, v)) = self.store.find(txn, id)? else {
            return Ok(Err(QueueError::NotFound));
        };
        match decode::<EnvelopeRecord>(v) {
            Ok(r) => Ok(Ok((place, r))),
            Err(e) => Ok(Err(self.quarantine(txn, id, place, &e)?)),
        }
    }

    #[allow(clippy::type_complexity)]
    fn record(
        &mut self,
        txn: &mut RwTransaction<'_>,
        id: QueueId,
        results: &[(usize, Outcome)],
        now: SystemTime,
    ) -> Result<Result<(Recorded, Effect), (QueueError, Effect)>, TxnFailed> {
        let store = &Arc::clone(&self.store);
        let (place, mut rec) = match self.load_envelope(txn, id)? {
            Ok(found) => found,
            Err(e) => return Ok(Err((e, Effect::Remove(id)))),
        };
        let mut failed_now = Vec::new();
        let mut journal = Vec::new();
        rec.attempts = rec.attempts.saturating_add(1);
        for (idx, outcome) in results {
            let Some(r) = rec.rcpts.get_mut(*idx) else {
                tracing::warn!(%id, idx, "record: recipient index out of range");
                continue;
            };
            if !matches!(r.state, RcptState::Pending) {
                // Never downgrade a final state (no re-delivery).
                continue;
            }
            match outcome {
                Outcome::Delivered(reply) => {
                    r.state = RcptState::Delivered(reply.clone());
                    r.last_reply = Some(reply.clone());
                    journal.push((
                        crate::JournalEvent::Forwarded,
                        r.address.clone(),
                        reply.clone(),
                    ));
                }
                Outcome::Deferred(reply) => r.last_reply = Some(reply.clone()),
                Outcome::Failed(reply) => {
                    r.state = RcptState::Failed(reply.clone());
                    r.last_reply = Some(reply.clone());
                    failed_now.push((r.address.clone(), reply.clone()));
                }
            }
        }
        let max_age_us = self.opts.max_age.as_micros().min(u64::MAX as u128) as u64;
        let expired = rec.arrived_us.saturating_add(max_age_us) <= to_us(now);
        if expired {
            for r in rec.rcpts.iter_mut() {
                if matches!(r.state, RcptState::Pending) {
                    let reason = match &r.last_reply {
                        Some(last) => format!("message expired in queue; last reply: {last}"),
                        None => "message expired in queue".to_string(),
                    };
                    r.state = RcptState::Failed(reason.clone());
                    failed_now.push((r.address.clone(), reason));
                }
            }
        }
        for (rcpt, why) in &failed_now {
            journal.push((crate::JournalEvent::Failed, rcpt.clone(), why.clone()));
        }
        let origin = rec.origin.clone();
        for (event, rcpt, detail) in journal {
            let entry = crate::JournalEntry {
                origin: origin.clone(),
                rcpts: vec![rcpt],
                detail,
                ..crate::JournalEntry::new(event, id.to_string())
            };
            self.journal(txn, now, entry)?;
        }
        let k = key(id);
        let pending = rec
            .rcpts
            .iter()
            .any(|r| matches!(r.state, RcptState::Pending));
        if !pending {
            txn.del(store.db(place), &k, None)?;
            del_opt(txn, store.body, &k)?;
            let r = Recorded {
                finished: true,
                failed_now,
                next_attempt: None,
            };
            return Ok(Ok((r, Effect::Remove(id))));
        }
        let next = now + backoff(&self.opts, rec.attempts);
        rec.next_attempt_us = to_us(next);
        let bytes = encode(&rec).map_err(|_| TxnFailed(lmdb::Error::Invalid))?;
        let to = if place == Place::Hold {
            Place::Hold
        } else {
            Place::Deferred
        };
        txn.put(store.db(to), &k, &bytes, WriteFlags::empty())?;
        if to != place {
            txn.del(store.db(place), &k, None)?;
        }
        let r = Recorded {
            finished: false,
            failed_now,
            next_attempt: Some(next),
        };
        Ok(Ok((r, Effect::Reschedule(id, next))))
    }

    /// Marks recipients delivered in the middle of an attempt: attempts,
    /// schedule and the active mark are left to the attempt's `record`.
    #[allow(clippy::type_complexity)]
    fn settle(
        &self,
        txn: &mut RwTransaction<'_>,
        id: QueueId,
        delivered: &[(usize, String)],
    ) -> Result<Result<usize, (QueueError, Effect)>, TxnFailed> {
        let store = &self.store;
        let (place, mut rec) = match self.load_envelope(txn, id)? {
            Ok(found) => found,
            Err(e) => return Ok(Err((e, Effect::Remove(id)))),
        };
        let mut settled = 0;
        for (idx, reply) in delivered {
            match rec.rcpts.get_mut(*idx) {
                Some(r) if matches!(r.state, RcptState::Pending) => {
                    r.state = RcptState::Delivered(reply.clone());
                    r.last_reply = Some(reply.clone());
                    settled += 1;
                }
                Some(_) => {}
                None => tracing::warn!(%id, idx, "settle: recipient index out of range"),
            }
        }
        if settled > 0 {
            let bytes = encode(&rec).map_err(|_| TxnFailed(lmdb::Error::Invalid))?;
            txn.put(store.db(place), &key(id), &bytes, WriteFlags::empty())?;
        }
        Ok(Ok(settled))
    }

    /// Deletes expired origin records (bounded amount per call).
    fn prune_origins(
        &self,
        txn: &mut RwTransaction<'_>,
        now: SystemTime,
    ) -> Result<(), lmdb::Error> {
        const MAX_PRUNE: usize = 1000;
        let store = &self.store;
        let ttl = self.opts.origin_ttl.as_micros().min(u64::MAX as u128) as u64;
        let cutoff = to_us(now).saturating_sub(ttl);
        let mut expired = Vec::new();
        {
            let mut cur = txn.open_ro_cursor(store.origin_time)?;
            for item in cur.iter_start() {
                let (k, v) = item?;
                let created = k
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                if created >= cutoff || expired.len() >= MAX_PRUNE {
                    break;
                }
                expired.push((k.to_vec(), v.to_vec()));
            }
        }
        for (tk, okey) in expired {
            txn.del(store.origin_time, &tk, None)?;
            let id = tk.get(8..).and_then(id_from_key);
            // Only delete the origin if it still refers to this entry (it may
            // have been re-used after expiring).
            let same = match get_opt(txn, store.origin, &okey)? {
                Some(v) => match decode::<OriginRecord>(v) {
                    Ok(o) => Some(QueueId(o.id)) == id,
                    Err(_) => true,
                },
                None => false,
            };
            if same {
                txn.del(store.origin, &okey, None)?;
            }
        }
        Ok(())
    }
}

fn fail(req: Option<Request>, e: QueueError) {
    let Some(req) = req else { return };
    let again = || match &e {
        QueueError::Full => QueueError::Full,
        QueueError::Lmdb(e) => QueueError::Lmdb(*e),
        other => QueueError::Io(std::io::Error::other(other.to_string())),
    };
    match req {
        Request::Enqueue(_, tx) => {
            let _ = tx.send(Err(again()));
        }
        Request::Record(_, _, tx) => {
            let _ = tx.send(Err(again()));
        }
        Request::Settle(_, _, tx) => {
            let _ = tx.send(Err(again()));
        }
        Request::Delete(_, tx) | Request::Hold(_, tx) | Request::Release(_, tx) => {
            let _ = tx.send(Err(again()));
        }
        Request::Journal(_, tx) => {
            let _ = tx.send(Err(again()));
        }
        Request::Quarantine(_) => {}
    }
}

pub(crate) fn corrupt_key(db: &str, what: &str) -> Vec<u8> {
    let mut k = format!("{db}/{what}").into_bytes();
    k.truncate(500);
    k
}

/// Moves the envelope at `place` and the body of `id` to `corrupt`.
pub(crate) fn quarantine(
    store: &Store,
    txn: &mut RwTransaction<'_>,
    id: QueueId,
    place: Place,
) -> Result<(), lmdb::Error> {
    let k = key(id);
    if let Some(v) = get_opt(txn, store.db(place), &k)? {
        let v = v.to_vec();
        txn.put(
            store.corrupt,
            &corrupt_key(place.name(), &id.to_string()),
            &v,
            WriteFlags::empty(),
        )?;
        txn.del(store.db(place), &k, None)?;
    }
    if let Some(b) = get_opt(txn, store.body, &k)? {
        let b = b.to_vec();
        txn.put(
            store.corrupt,
            &corrupt_key("body", &id.to_string()),
            &b,
            WriteFlags::empty(),
        )?;
        txn.del(store.body, &k, None)?;
    }
    Ok(())
}

/// Delay before attempt number `attempts + 1`: `min_retry · 2^(attempts-1)`
/// with +0–25 % jitter, capped at `max_retry` (jittered down by up to 20 % at
/// the cap so capped messages don't retry in lock-step).
pub(crate) fn backoff(opts: &QueueOptions, attempts: u32) -> Duration {
    let min = opts.min_retry;
    let max = opts.max_retry.max(min);
    let exp = attempts.saturating_sub(1).min(32);
    let base = min.saturating_mul(1u32 << exp.min(31));
    let mut rng = rand::thread_rng();
    let d = base.mul_f64(rng.gen_range(1.0..1.25));
    if d > max || exp >= 31 {
        max.mul_f64(rng.gen_range(0.8..=1.0)).max(min)
    } else {
        d
    }
}
