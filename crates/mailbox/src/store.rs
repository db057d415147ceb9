//! The message store of one store node: per-user folders, messages (UID, flags, internal date,
//! size), UIDVALIDITY, quota accounting and delivery de-duplication.
//!
//! # Layout and why bodies live in LMDB
//!
//! One LMDB environment per store node with these databases:
//!
//! | db         | key                                   | value                                   |
//! |------------|---------------------------------------|-----------------------------------------|
//! | `folders`  | `user \0 folder`                      | postcard `FolderRecord` (uidvalidity, uidnext) |
//! | `messages` | `user \0 folder \0 uid(u32 BE)`       | postcard `MsgRecord` (size, flags, date, body id) |
//! | `bodies`   | body id (u64 BE)                      | the raw message                         |
//! | `usage`    | `user`                                | bytes used (u64 LE)                     |
//! | `dedup`    | dedup key                             | postcard `DedupRecord`                  |
//! | `meta`     | `next_body`, `last_uidvalidity`       | counters                                |
//!
//! Bodies are kept out of the hot index records (listing a folder walks only the small
//! `messages` B-tree, never a body page) but *inside* LMDB rather than in files (mox style):
//! a delivery is then one atomic transaction — index, body, quota and dedup record become
//! durable together with a single fsync at commit, there is no orphan-file or missing-file
//! state after a crash (kill -9 or power loss), no directory fsync dance, and group commit
//! ([`MailStore::deliver_async`]) makes many deliveries durable with one fsync. Files would win
//! for very large mailboxes with huge attachments (sendfile, no overflow-page churn); that is not
//! this gateway's profile.
//!
//! Durability: the environment is opened without `NOSYNC`/`NOMETASYNC`, so every commit is
//! fsync'd before `deliver` returns.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lmdb::{
    Cursor, Database, DatabaseFlags, Environment, EnvironmentFlags, RwTransaction, Transaction,
    WriteFlags,
};
use serde::{Deserialize, Serialize};

use crate::MailboxError;

/// Name of the inbox (IMAP: case-insensitive, always spelled `INBOX`).
pub const INBOX: &str = "INBOX";
/// Folders created for a user on first delivery (or [`MailStore::ensure_user`]).
pub const DEFAULT_FOLDERS: [&str; 5] = [INBOX, "Junk", "Sent", "Drafts", "Trash"];

/// Default virtual size of a store map (the file only grows as data is written).
pub const DEFAULT_STORE_MAP_SIZE: usize = 16 << 30;
const MAX_FOLDER_LEN: usize = 200;
const MAX_DEDUP_KEY_LEN: usize = 400;
/// Group commit: at most this many deliveries / bytes per write transaction.
const BATCH_MAX_ITEMS: usize = 256;
const BATCH_MAX_BYTES: usize = 64 << 20;

const NEXT_BODY_KEY: &[u8] = b"next_body";
const LAST_UIDVALIDITY_KEY: &[u8] = b"last_uidvalidity";

/// Result of a delivery attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Stored (durably) with this UID in the target folder.
    Stored { uid: u32 },
    /// The dedup key was already delivered; nothing stored.
    Duplicate,
    /// The user's quota would be exceeded; nothing stored (SMTP 452 4.2.2).
    OverQuota,
}

/// Metadata of one message (no body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageMeta {
    pub uid: u32,
    pub size: u64,
    /// IMAP-style flags (`\Seen`, `\Answered`, `\Flagged`, `\Deleted`, `\Draft`) and keywords.
    pub flags: Vec<String>,
    pub internal_date: SystemTime,
}

/// Status of one folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderInfo {
    pub name: String,
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub messages: usize,
    pub bytes: u64,
}

/// How [`MailStore::set_flags`] combines the given flags with the current ones
/// (IMAP `FLAGS`, `+FLAGS`, `-FLAGS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagsOp {
    Replace,
    Add,
    Remove,
}

#[derive(Serialize, Deserialize, Clone, Copy)]
struct FolderRecord {
    uidvalidity: u32,
    uidnext: u32,
}

#[derive(Serialize, Deserialize)]
struct MsgRecord {
    size: u64,
    flags: Vec<String>,
    internal_date_ms: u64,
    body: u64,
}

#[derive(Serialize, Deserialize)]
struct DedupRecord {
    user: String,
    folder: String,
    uid: u32,
    at_secs: u64,
}

#[derive(Clone, Copy)]
struct Dbs {
    folders: Database,
    messages: Database,
    bodies: Database,
    usage: Database,
    dedup: Database,
    meta: Database,
}

struct Core {
    env: Environment,
    dbs: Dbs,
    batches: AtomicU64,
    batched_deliveries: AtomicU64,
    /// Bumped after every committed change, so IMAP IDLE sessions in this process learn of a
    /// delivery at once instead of polling (other processes' writes are caught by their poll).
    changes: tokio::sync::watch::Sender<u64>,
}

/// Group-commit counters of [`MailStore::deliver_async`] (for metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommitStats {
    /// Write transactions committed by the group-commit thread.
    pub batches: u64,
    /// Deliveries processed in those transactions.
    pub deliveries: u64,
}

struct DeliverRequest {
    user: String,
    folder: String,
    dedup_key: Option<String>,
    message: Vec<u8>,
    quota_bytes: u64,
    reply: tokio::sync::oneshot::Sender<Result<Delivery, MailboxError>>,
}

struct Batcher {
    tx: mpsc::Sender<DeliverRequest>,
    thread: JoinHandle<()>,
}

struct Inner {
    core: Arc<Core>,
    batcher: Mutex<Option<Batcher>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let batcher = self
            .batcher
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(b) = batcher {
            drop(b.tx);
            let _ = b.thread.join();
        }
    }
}

/// Handle on one store node's mailboxes. Cheap to clone; all clones (and all `open`s of the
/// same path in this process) share one LMDB environment.
#[derive(Clone)]
pub struct MailStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MailStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailStore").finish_non_exhaustive()
    }
}

fn normalize_user(user: &str) -> Result<String, MailboxError> {
    let u = user.trim().to_ascii_lowercase();
    if u.is_empty() || u.len() > 254 || u.chars().any(|c| c.is_control()) {
        return Err(MailboxError::InvalidInput(format!("invalid user {user:?}")));
    }
    Ok(u)
}

fn normalize_folder(folder: &str) -> Result<String, MailboxError> {
    if folder.eq_ignore_ascii_case(INBOX) {
        return Ok(INBOX.to_string());
    }
    if folder.is_empty() || folder.len() > MAX_FOLDER_LEN || folder.chars().any(|c| c.is_control())
    {
        return Err(MailboxError::InvalidInput(format!(
            "invalid folder name {folder:?}"
        )));
    }
    Ok(folder.to_string())
}

fn folder_key(user: &str, folder: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(user.len() + folder.len() + 1);
    k.extend_from_slice(user.as_bytes());
    k.push(0);
    k.extend_from_slice(folder.as_bytes());
    k
}

fn msg_prefix(user: &str, folder: &str) -> Vec<u8> {
    let mut k = folder_key(user, folder);
    k.push(0);
    k
}

fn msg_key(user: &str, folder: &str, uid: u32) -> Vec<u8> {
    let mut k = msg_prefix(user, folder);
    k.extend_from_slice(&uid.to_be_bytes());
    k
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn get_opt<'t, T: Transaction>(
    txn: &'t T,
    db: Database,
    key: &[u8],
) -> Result<Option<&'t [u8]>, MailboxError> {
    match txn.get(db, &key) {
        Ok(v) => Ok(Some(v)),
        Err(lmdb::Error::NotFound) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn get_u64<T: Transaction>(txn: &T, db: Database, key: &[u8]) -> Result<u64, MailboxError> {
    Ok(match get_opt(txn, db, key)? {
        Some(b) if b.len() == 8 => u64::from_le_bytes(b.try_into().expect("8 bytes")),
        _ => 0,
    })
}

fn del_opt(txn: &mut RwTransaction<'_>, db: Database, key: &[u8]) -> Result<bool, MailboxError> {
    match txn.del(db, &key, None) {
        Ok(()) => Ok(true),
        Err(lmdb::Error::NotFound) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Iterates `(key, value)` pairs of `db` whose key starts with `prefix`.
fn scan_prefix<T: Transaction>(
    txn: &T,
    db: Database,
    prefix: &[u8],
    mut f: impl FnMut(&[u8], &[u8]) -> Result<(), MailboxError>,
) -> Result<(), MailboxError> {
    let mut cursor = txn.open_ro_cursor(db)?;
    // LMDB rejects zero-length keys, so an empty prefix means "from the start".
    let iter = if prefix.is_empty() {
        cursor.iter_start()
    } else {
        cursor.iter_from(prefix)
    };
    for item in iter {
        let (k, v) = item?;
        if !k.starts_with(prefix) {
            break;
        }
        f(k, v)?;
    }
    Ok(())
}

fn copy_error(e: &MailboxError) -> MailboxError {
    match e {
        MailboxError::StorageFull => MailboxError::StorageFull,
        other => MailboxError::Io(std::io::Error::other(other.to_string())),
    }
}

impl Core {
    fn notify_change(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn get_folder<T: Transaction>(
        &self,
        txn: &T,
        user: &str,
        folder: &str,
    ) -> Result<Option<FolderRecord>, MailboxError> {
        match get_opt(txn, self.dbs.folders, &folder_key(user, folder))? {
            Some(b) => Ok(Some(postcard::from_bytes(b)?)),
            None => Ok(None),
        }
    }

    fn put_folder(
        &self,
        txn: &mut RwTransaction<'_>,
        user: &str,
        folder: &str,
        rec: FolderRecord,
    ) -> Result<(), MailboxError> {
        txn.put(
            self.dbs.folders,
            &folder_key(user, folder),
            &postcard::to_stdvec(&rec)?,
            WriteFlags::empty(),
        )?;
        Ok(())
    }

    fn new_uidvalidity(&self, txn: &mut RwTransaction<'_>) -> Result<u32, MailboxError> {
        let last = get_u64(txn, self.dbs.meta, LAST_UIDVALIDITY_KEY)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1);
        let mut v = now.max(last + 1) & 0xffff_ffff;
        if v == 0 {
            v = 1;
        }
        txn.put(
            self.dbs.meta,
            &LAST_UIDVALIDITY_KEY,
            &v.to_le_bytes(),
            WriteFlags::empty(),
        )?;
        Ok(v as u32)
    }

    /// Creates `folder` if missing; returns its record and whether it was created.
    fn ensure_folder(
        &self,
        txn: &mut RwTransaction<'_>,
        user: &str,
        folder: &str,
    ) -> Result<(FolderRecord, bool), MailboxError> {
        if let Some(rec) = self.get_folder(txn, user, folder)? {
            return Ok((rec, false));
        }
        let rec = FolderRecord {
            uidvalidity: self.new_uidvalidity(txn)?,
            uidnext: 1,
        };
        self.put_folder(txn, user, folder, rec)?;
        Ok((rec, true))
    }

    fn ensure_defaults(&self, txn: &mut RwTransaction<'_>, user: &str) -> Result<(), MailboxError> {
        if self.get_folder(txn, user, INBOX)?.is_some() {
            return Ok(());
        }
        for f in DEFAULT_FOLDERS {
            self.ensure_folder(txn, user, f)?;
        }
        Ok(())
    }

    fn add_usage(
        &self,
        txn: &mut RwTransaction<'_>,
        user: &str,
        delta: i64,
    ) -> Result<(), MailboxError> {
        let used = get_u64(txn, self.dbs.usage, user.as_bytes())?;
        let new = if delta >= 0 {
            used.saturating_add(delta as u64)
        } else {
            used.saturating_sub(delta.unsigned_abs())
        };
        txn.put(
            self.dbs.usage,
            &user,
            &new.to_le_bytes(),
            WriteFlags::empty(),
        )?;
        Ok(())
    }

    /// Appends a message to an existing-or-created folder (no quota or dedup checks).
    fn append(
        &self,
        txn: &mut RwTransaction<'_>,
        user: &str,
        folder: &str,
        message: &[u8],
        flags: Vec<String>,
        internal_date_ms: u64,
    ) -> Result<u32, MailboxError> {
        let (mut frec, _) = self.ensure_folder(txn, user, folder)?;
        let uid = frec.uidnext;
        frec.uidnext = frec
            .uidnext
            .checked_add(1)
            .ok_or_else(|| MailboxError::InvalidInput("UID space exhausted".into()))?;
        self.put_folder(txn, user, folder, frec)?;
        let body = get_u64(txn, self.dbs.meta, NEXT_BODY_KEY)?;
        txn.put(
            self.dbs.meta,
            &NEXT_BODY_KEY,
            &(body + 1).to_le_bytes(),
            WriteFlags::empty(),
        )?;
        txn.put(
            self.dbs.bodies,
            &body.to_be_bytes(),
            &message,
            WriteFlags::empty(),
        )?;
        let rec = MsgRecord {
            size: message.len() as u64,
            flags,
            internal_date_ms,
            body,
        };
        txn.put(
            self.dbs.messages,
            &msg_key(user, folder, uid),
            &postcard::to_stdvec(&rec)?,
            WriteFlags::NO_OVERWRITE,
        )?;
        self.add_usage(txn, user, message.len() as i64)?;
        Ok(uid)
    }

    fn deliver_in(
        &self,
        txn: &mut RwTransaction<'_>,
        user: &str,
        folder: &str,
        dedup_key: Option<&str>,
        message: &[u8],
        quota_bytes: u64,
    ) -> Result<Delivery, MailboxError> {
        if let Some(k) = dedup_key {
            if get_opt(txn, self.dbs.dedup, k.as_bytes())?.is_some() {
                return Ok(Delivery::Duplicate);
            }
        }
        let used = get_u64(txn, self.dbs.usage, user.as_bytes())?;
        if quota_bytes > 0 && used.saturating_add(message.len() as u64) > quota_bytes {
            return Ok(Delivery::OverQuota);
        }
        self.ensure_defaults(txn, user)?;
        let now = now_ms();
        let uid = self.append(txn, user, folder, message, Vec::new(), now)?;
        if let Some(k) = dedup_key {
            let rec = DedupRecord {
                user: user.to_string(),
                folder: folder.to_string(),
                uid,
                at_secs: now / 1000,
            };
            txn.put(
                self.dbs.dedup,
                &k,
                &postcard::to_stdvec(&rec)?,
                WriteFlags::empty(),
            )?;
        }
        Ok(Delivery::Stored { uid })
    }

    /// Appends copies of `uids` of `from` to `to`, keeping flags and internal
    /// date; `(source uid, new uid)` pairs (UIDs already gone are skipped).
    fn copy_in(
        &self,
        txn: &mut RwTransaction<'_>,
        user: &str,
        from: &str,
        uids: &[u32],
        to: &str,
    ) -> Result<Vec<(u32, u32)>, MailboxError> {
        let mut map = Vec::new();
        for &uid in uids {
            let rec: MsgRecord = match get_opt(txn, self.dbs.messages, &msg_key(user, from, uid))? {
                Some(b) => postcard::from_bytes(b)?,
                None => continue,
            };
            let Some(body) = get_opt(txn, self.dbs.bodies, &rec.body.to_be_bytes())? else {
                continue;
            };
            let body = body.to_vec();
            let new_uid = self.append(txn, user, to, &body, rec.flags, rec.internal_date_ms)?;
            map.push((uid, new_uid));
        }
        Ok(map)
    }

    /// Deletes messages by UID in an open transaction; returns (count, bytes freed).
    fn delete_in(
        &self,
        txn: &mut RwTransaction<'_>,
        user: &str,
        folder: &str,
        uids: &[u32],
    ) -> Result<(usize, u64), MailboxError> {
        let mut n = 0;
        let mut freed = 0u64;
        for &uid in uids {
            let key = msg_key(user, folder, uid);
            let rec: MsgRecord = match get_opt(txn, self.dbs.messages, &key)? {
                Some(b) => postcard::from_bytes(b)?,
                None => continue,
            };
            txn.del(self.dbs.messages, &key, None)?;
            del_opt(txn, self.dbs.bodies, &rec.body.to_be_bytes())?;
            n += 1;
            freed += rec.size;
        }
        if freed > 0 {
            self.add_usage(txn, user, -(freed as i64))?;
        }
        Ok((n, freed))
    }

    /// Group-commit loop: drains queued deliveries into one write transaction, each in its own
    /// nested transaction so one failing delivery does not undo the others.
    fn run_batcher(self: Arc<Core>, rx: mpsc::Receiver<DeliverRequest>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            let mut bytes = batch[0].message.len();
            while batch.len() < BATCH_MAX_ITEMS && bytes < BATCH_MAX_BYTES {
                match rx.try_recv() {
                    Ok(r) => {
                        bytes += r.message.len();
                        batch.push(r);
                    }
                    Err(_) => break,
                }
            }
            let mut results: Vec<Result<Delivery, MailboxError>> = Vec::with_capacity(batch.len());
            let outcome = (|| -> Result<(), MailboxError> {
                let mut txn = self.env.begin_rw_txn()?;
                for r in &batch {
                    let res = (|| {
                        let mut nested = txn.begin_nested_txn()?;
                        let d = self.deliver_in(
                            &mut nested,
                            &r.user,
                            &r.folder,
                            r.dedup_key.as_deref(),
                            &r.message,
                            r.quota_bytes,
                        )?;
                        nested.commit()?;
                        Ok(d)
                    })();
                    results.push(res);
                }
                txn.commit()?;
                self.notify_change();
                Ok(())
            })();
            self.batches.fetch_add(1, Ordering::Relaxed);
            self.batched_deliveries
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            match outcome {
                Ok(()) => {
                    for (r, res) in batch.into_iter().zip(results) {
                        let _ = r.reply.send(res);
                    }
                }
                Err(e) => {
                    for r in batch {
                        let _ = r.reply.send(Err(copy_error(&e)));
                    }
                }
            }
        }
    }
}

impl MailStore {
    /// Opens (creating if needed) the store in `dir` with the default map size.
    pub fn open(dir: &Path) -> Result<MailStore, MailboxError> {
        Self::open_with_map_size(dir, DEFAULT_STORE_MAP_SIZE)
    }

    /// Opens the store with an explicit LMDB map size (the maximum size of the data file).
    /// When another handle of this process already has `dir` open, that one is shared and
    /// `map_size` is ignored.
    pub fn open_with_map_size(dir: &Path, map_size: usize) -> Result<MailStore, MailboxError> {
        let inner = crate::env::shared(dir, |path| {
            let env = Environment::new()
                .set_flags(EnvironmentFlags::NO_TLS)
                .set_max_dbs(8)
                .set_max_readers(512)
                .set_map_size(map_size)
                .open(path)?;
            let mk = |name| env.create_db(Some(name), DatabaseFlags::empty());
            let dbs = Dbs {
                folders: mk("folders")?,
                messages: mk("messages")?,
                bodies: mk("bodies")?,
                usage: mk("usage")?,
                dedup: mk("dedup")?,
                meta: mk("meta")?,
            };
            Ok(Inner {
                core: Arc::new(Core {
                    env,
                    dbs,
                    batches: AtomicU64::new(0),
                    batched_deliveries: AtomicU64::new(0),
                    changes: tokio::sync::watch::Sender::new(0),
                }),
                batcher: Mutex::new(None),
            })
        })?;
        Ok(MailStore { inner })
    }

    fn core(&self) -> &Core {
        &self.inner.core
    }

    /// Delivers `message` to `user`'s `folder` (created if missing; the first delivery to a user
    /// creates INBOX, Junk, Sent, Drafts and Trash). Durable (committed and fsync'd) before `Ok`.
    /// With `dedup_key`, a key already delivered gives `Duplicate` and stores nothing;
    /// `quota_bytes` 0 = unlimited, and `used + size > quota` gives `OverQuota`, nothing stored.
    /// Blocking: use `spawn_blocking` or [`MailStore::deliver_async`] from async code.
    pub fn deliver(
        &self,
        user: &str,
        folder: &str,
        dedup_key: Option<&str>,
        message: &[u8],
        quota_bytes: u64,
    ) -> Result<Delivery, MailboxError> {
        let user = normalize_user(user)?;
        let folder = normalize_folder(folder)?;
        check_dedup_key(dedup_key)?;
        let core = self.core();
        let mut txn = core.env.begin_rw_txn()?;
        let d = core.deliver_in(&mut txn, &user, &folder, dedup_key, message, quota_bytes)?;
        match d {
            Delivery::Stored { .. } => {
                txn.commit()?;
                core.notify_change();
            }
            _ => txn.abort(),
        }
        Ok(d)
    }

    /// Like [`MailStore::deliver`], but concurrent calls are group-committed: a background
    /// thread puts every delivery queued while the previous commit was running into one write
    /// transaction (one fsync for the whole batch). Each delivery still gets its own result
    /// (quota and dedup are checked in order within the batch) and is durable when this returns.
    pub async fn deliver_async(
        &self,
        user: &str,
        folder: &str,
        dedup_key: Option<&str>,
        message: Vec<u8>,
        quota_bytes: u64,
    ) -> Result<Delivery, MailboxError> {
        let user = normalize_user(user)?;
        let folder = normalize_folder(folder)?;
        check_dedup_key(dedup_key)?;
        let (reply, rx) = tokio::sync::oneshot::channel();
        let req = DeliverRequest {
            user,
            folder,
            dedup_key: dedup_key.map(str::to_string),
            message,
            quota_bytes,
            reply,
        };
        {
            let mut guard = self.inner.batcher.lock().unwrap_or_else(|p| p.into_inner());
            // (Re)start the commit thread if needed (first use, or it died).
            if guard.as_ref().is_none_or(|b| b.thread.is_finished()) {
                let (tx, brx) = mpsc::channel();
                let core = self.inner.core.clone();
                let thread = std::thread::Builder::new()
                    .name("mailstore-commit".into())
                    .spawn(move || core.run_batcher(brx))?;
                *guard = Some(Batcher { tx, thread });
            }
            let batcher = guard.as_ref().expect("just started");
            batcher
                .tx
                .send(req)
                .map_err(|_| MailboxError::Io(std::io::Error::other("commit thread gone")))?;
        }
        rx.await
            .map_err(|_| MailboxError::Io(std::io::Error::other("commit thread gone")))?
    }

    /// Counters of the group-commit thread behind [`MailStore::deliver_async`].
    pub fn commit_stats(&self) -> CommitStats {
        let core = self.core();
        CommitStats {
            batches: core.batches.load(Ordering::Relaxed),
            deliveries: core.batched_deliveries.load(Ordering::Relaxed),
        }
    }

    /// Creates the default folders for `user` if it has no INBOX yet (e.g. on first IMAP login).
    pub fn ensure_user(&self, user: &str) -> Result<(), MailboxError> {
        let user = normalize_user(user)?;
        let core = self.core();
        if core
            .get_folder(&core.env.begin_ro_txn()?, &user, INBOX)?
            .is_some()
        {
            return Ok(());
        }
        let mut txn = core.env.begin_rw_txn()?;
        core.ensure_defaults(&mut txn, &user)?;
        txn.commit()?;
        Ok(())
    }

    /// Bytes used by all of `user`'s messages.
    pub fn usage(&self, user: &str) -> Result<u64, MailboxError> {
        let user = normalize_user(user)?;
        let core = self.core();
        let txn = core.env.begin_ro_txn()?;
        get_u64(&txn, core.dbs.usage, user.as_bytes())
    }

    /// Messages of a folder in UID order (empty if the folder does not exist).
    pub fn list(&self, user: &str, folder: &str) -> Result<Vec<MessageMeta>, MailboxError> {
        let user = normalize_user(user)?;
        let folder = normalize_folder(folder)?;
        let core = self.core();
        let txn = core.env.begin_ro_txn()?;
        let prefix = msg_prefix(&user, &folder);
        let mut out = Vec::new();
        scan_prefix(&txn, core.dbs.messages, &prefix, |k, v| {
            let uid_bytes: [u8; 4] = k[prefix.len()..]
                .try_into()
                .map_err(|_| MailboxError::InvalidInput("corrupt message key".into()))?;
            let rec: MsgRecord = postcard::from_bytes(v)?;
            out.push(MessageMeta {
                uid: u32::from_be_bytes(uid_bytes),
                size: rec.size,
                flags: rec.flags,
                internal_date: UNIX_EPOCH + Duration::from_millis(rec.internal_date_ms),
            });
            Ok(())
        })?;
        Ok(out)
    }

    /// The raw message, or `None` if there is no such UID.
    pub fn fetch(
        &self,
        user: &str,
        folder: &str,
        uid: u32,
    ) -> Result<Option<Vec<u8>>, MailboxError> {
        let user = normalize_user(user)?;
        let folder = normalize_folder(folder)?;
        let core = self.core();
        let txn = core.env.begin_ro_txn()?;
        let rec: MsgRecord = match get_opt(&txn, core.dbs.messages, &msg_key(&user, &folder, uid))?
        {
            Some(b) => postcard::from_bytes(b)?,
            None => return Ok(None),
        };
        Ok(get_opt(&txn, core.dbs.bodies, &rec.body.to_be_bytes())?.map(<[u8]>::to_vec))
    }

    /// Deletes messages (missing UIDs are ignored) and frees their quota; returns how many were
    /// deleted.
    pub fn delete(&self, user: &str, folder: &str, uids: &[u32]) -> Result<usize, MailboxError> {
        let user = normalize_user(user)?;
        let folder = normalize_folder(folder)?;
        let core = self.core();
        let mut txn = core.env.begin_rw_txn()?;
        let (n, _) = core.delete_in(&mut txn, &user, &folder, uids)?;
        if n > 0 {
            txn.commit()?;
            core.notify_change();
        }
        Ok(n)
    }

    /// Changes the flags of the given messages; returns how many messages exist and were
    /// updated. Flags are kept as given (e.g. `\Seen`), deduplicated case-insensitively.
    pub fn set_flags(
        &self,
        user: &str,
        folder: &str,
        uids: &[u32],
        op: FlagsOp,
        flags: &[&str],
    ) -> Result<usize, MailboxError> {
        let user = normalize_user(user)?;
        let folder = normalize_folder(folder)?;
        let core = self.core();
        let mut txn = core.env.begin_rw_txn()?;
        let mut n = 0;
        for &uid in uids {
            let key = msg_key(&user, &folder, uid);
            let mut rec: MsgRecord = match get_opt(&txn, core.dbs.messages, &key)? {
                Some(b) => postcard::from_bytes(b)?,
                None => continue,
            };
            let has = |set: &[String], f: &str| set.iter().any(|x| x.eq_ignore_ascii_case(f));
            match op {
                FlagsOp::Replace => {
                    rec.flags.clear();
                    for f in flags {
                        if !has(&rec.flags, f) {
                            rec.flags.push(f.to_string());
                        }
                    }
                }
                FlagsOp::Add => {
                    for f in flags {
                        if !has(&rec.flags, f) {
                            rec.flags.push(f.to_string());
                        }
                    }
                }
                FlagsOp::Remove => rec
                    .flags
                    .retain(|x| !flags.iter().any(|f| x.eq_ignore_ascii_case(f))),
            }
            txn.put(
                core.dbs.messages,
                &key,
                &postcard::to_stdvec(&rec)?,
                WriteFlags::empty(),
            )?;
            n += 1;
        }
        txn.commit()?;
        if n > 0 {
            core.notify_change();
        }
        Ok(n)
    }

    /// Appends a message with given flags and internal date (IMAP APPEND). Quota is enforced
    /// (`quota_bytes` 0 = unlimited); the folder is created if missing.
    pub fn append(
        &self,
        user: &str,
        folder: &str,
        message: &[u8],
        flags: &[&str],
        internal_date: Option<SystemTime>,
        quota_bytes: u64,
    ) -> Result<Delivery, MailboxError> {
        let user = normalize_user(user)?;
        let folder = normalize_folder(folder)?;
        let core = self.core();
        let mut txn = core.env.begin_rw_txn()?;
        let used = get_u64(&txn, core.dbs.usage, user.as_bytes())?;
        if quota_bytes > 0 && used.saturating_add(message.len() as u64) > quota_bytes {
            return Ok(Delivery::OverQuota);
        }
        core.ensure_defaults(&mut txn, &user)?;
        let date = internal_date
            .and_then(|d| d.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64)
            .unwrap_or_else(now_ms);
        let flags = flags.iter().map(|f| f.to_string()).collect();
        let uid = core.append(&mut txn, &user, &folder, message, flags, date)?;
        txn.commit()?;
        core.notify_change();
        Ok(Delivery::Stored { uid })
    }

    /// Copies messages to another folder (created if missing), keeping flags and internal date.
    /// Returns `(source uid, new uid)` pairs (IMAP COPYUID). `Ok(None)` if the copy would
    /// exceed the quota (nothing copied).
    pub fn copy(
        &self,
        user: &str,
        from: &str,
        uids: &[u32],
        to: &str,
        quota_bytes: u64,
    ) -> Result<Option<Vec<(u32, u32)>>, MailboxError> {
        let user = normalize_user(user)?;
        let from = normalize_folder(from)?;
        let to = normalize_folder(to)?;
        let core = self.core();
        let mut txn = core.env.begin_rw_txn()?;
        let map = core.copy_in(&mut txn, &user, &from, uids, &to)?;
        if quota_bytes > 0 && get_u64(&txn, core.dbs.usage, user.as_bytes())? > quota_bytes {
            txn.abort();
            return Ok(None);
        }
        txn.commit()?;
        core.notify_change();
        Ok(Some(map))
    }

    /// Folder names of `user`, sorted (INBOX first when present).
    pub fn folders(&self, user: &str) -> Result<Vec<String>, MailboxError> {
        let user = normalize_user(user)?;
        let core = self.core();
        let txn = core.env.begin_ro_txn()?;
        let mut prefix = user.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        scan_prefix(&txn, core.dbs.folders, &prefix, |k, _| {
            out.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
            Ok(())
        })?;
        out.sort_by(|a, b| (a != INBOX, a).cmp(&(b != INBOX, b)));
        Ok(out)
    }

    /// Creates a folder; `Ok(false)` if it already existed.
    pub fn create_folder(&self, user: &str, folder: &str) -> Result<bool, MailboxError> {
        let user = normalize_user(user)?;
        let folder = normalize_folder(folder)?;
        let core = self.core();
        let mut txn = core.env.begin_rw_txn()?;
        let (_, created) = core.ensure_folder(&mut txn, &user, &folder)?;
        if created {
            txn.commit()?;
        }
        Ok(created)
    }

    /// Deletes a folder and all its messages (freeing quota). INBOX cannot be deleted.
    /// `Ok(false)` if it did not exist.
    pub fn delete_folder(&self, user: &str, folder: &str) -> Result<bool, MailboxError> {
        let user = normalize_user(user)?;
        let folder = normalize_folder(folder)?;
        if folder == INBOX {
            return Err(MailboxError::InvalidInput("INBOX cannot be deleted".into()));
        }
        let uids: Vec<u32> = self.list(&user, &folder)?.iter().map(|m| m.uid).collect();
        let core = self.core();
        let mut txn = core.env.begin_rw_txn()?;
        if core.get_folder(&txn, &user, &folder)?.is_none() {
            return Ok(false);
        }
        core.delete_in(&mut txn, &user, &folder, &uids)?;
        // Messages delivered between list() and this transaction.
        let prefix = msg_prefix(&user, &folder);
        let mut late = Vec::new();
        scan_prefix(&txn, core.dbs.messages, &prefix, |k, _| {
            if let Ok(b) = <[u8; 4]>::try_from(&k[prefix.len()..]) {
                late.push(u32::from_be_bytes(b));
            }
            Ok(())
        })?;
        core.delete_in(&mut txn, &user, &folder, &late)?;
        txn.del(core.dbs.folders, &folder_key(&user, &folder), None)?;
        txn.commit()?;
        core.notify_change();
        Ok(true)
    }

    /// A receiver that changes after every committed write to this store by this process
    /// (deliveries, flags, copies, deletions). IMAP IDLE waits on it; writes made by *other*
    /// processes are not seen here, so waiters should also re-check on a timer.
    pub fn subscribe_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.core().changes.subscribe()
    }

    /// Moves messages to another folder (created if missing) in one transaction, keeping flags
    /// and internal date: a crash leaves either the old or the new state, never both or
    /// neither (IMAP MOVE, RFC 6851). Returns `(source uid, new uid)` pairs.
    pub fn move_messages(
        &self,
        user: &str,
        from: &str,
        uids: &[u32],
        to: &str,
    ) -> Result<Vec<(u32, u32)>, MailboxError> {
        let user = normalize_user(user)?;
        let from = normalize_folder(from)?;
        let to = normalize_folder(to)?;
        if from == to {
            return Err(MailboxError::InvalidInput(
                "source and target folder are the same".into(),
            ));
        }
        let core = self.core();
        let mut txn = core.env.begin_rw_txn()?;
        let map = core.copy_in(&mut txn, &user, &from, uids, &to)?;
        let moved: Vec<u32> = map.iter().map(|(old, _)| *old).collect();
        core.delete_in(&mut txn, &user, &from, &moved)?;
        txn.commit()?;
        if !map.is_empty() {
            core.notify_change();
        }
        Ok(map)
    }

    /// Renames a folder and its sub-folders (`from/...`, `/` being the hierarchy delimiter),
    /// keeping UIDs and UIDVALIDITY. Renaming INBOX moves its messages into the new folder
    /// (fresh UIDVALIDITY there) and leaves INBOX empty, as IMAP RENAME requires.
    /// `Ok(false)` if `from` does not exist; `AlreadyExists` if `to` does.
    pub fn rename_folder(&self, user: &str, from: &str, to: &str) -> Result<bool, MailboxError> {
        let user = normalize_user(user)?;
        let from = normalize_folder(from)?;
        let to = normalize_folder(to)?;
        if to == INBOX {
            return Err(MailboxError::InvalidInput("cannot rename to INBOX".into()));
        }
        let core = self.core();
        let mut txn = core.env.begin_rw_txn()?;
        if core.get_folder(&txn, &user, &to)?.is_some() {
            return Err(MailboxError::AlreadyExists(to));
        }
        if core.get_folder(&txn, &user, &from)?.is_none() {
            return Ok(false);
        }
        // (old name, new name) of the folder and, except for INBOX, its sub-folders.
        let mut renames = vec![(from.clone(), to.clone())];
        if from != INBOX {
            let prefix = folder_key(&user, &format!("{from}/"));
            let user_prefix_len = user.len() + 1;
            scan_prefix(&txn, core.dbs.folders, &prefix, |k, _| {
                let old = String::from_utf8_lossy(&k[user_prefix_len..]).into_owned();
                let new = format!("{to}{}", &old[from.len()..]);
                renames.push((old, new));
                Ok(())
            })?;
        }
        for (old, new) in &renames {
            let old_rec = core
                .get_folder(&txn, &user, old)?
                .ok_or_else(|| MailboxError::NotFound(old.clone()))?;
            let new_rec = if old == INBOX {
                FolderRecord {
                    uidvalidity: core.new_uidvalidity(&mut txn)?,
                    uidnext: old_rec.uidnext,
                }
            } else {
                old_rec
            };
            if core.get_folder(&txn, &user, new)?.is_some() {
                return Err(MailboxError::AlreadyExists(new.clone()));
            }
            core.put_folder(&mut txn, &user, new, new_rec)?;
            let old_prefix = msg_prefix(&user, old);
            let mut records = Vec::new();
            scan_prefix(&txn, core.dbs.messages, &old_prefix, |k, v| {
                records.push((k[old_prefix.len()..].to_vec(), v.to_vec()));
                Ok(())
            })?;
            let new_prefix = msg_prefix(&user, new);
            for (uid_bytes, value) in records {
                let mut old_key = old_prefix.clone();
                old_key.extend_from_slice(&uid_bytes);
                let mut new_key = new_prefix.clone();
                new_key.extend_from_slice(&uid_bytes);
                txn.del(core.dbs.messages, &old_key, None)?;
                txn.put(core.dbs.messages, &new_key, &value, WriteFlags::empty())?;
            }
            if old != INBOX {
                txn.del(core.dbs.folders, &folder_key(&user, old), None)?;
            }
        }
        txn.commit()?;
        core.notify_change();
        Ok(true)
    }

    /// UIDVALIDITY, UIDNEXT, message count and bytes of a folder; `None` if it does not exist.
    pub fn folder_info(
        &self,
        user: &str,
        folder: &str,
    ) -> Result<Option<FolderInfo>, MailboxError> {
        let user = normalize_user(user)?;
        let folder = normalize_folder(folder)?;
        let core = self.core();
        let txn = core.env.begin_ro_txn()?;
        let Some(rec) = core.get_folder(&txn, &user, &folder)? else {
            return Ok(None);
        };
        let mut messages = 0;
        let mut bytes = 0;
        scan_prefix(
            &txn,
            core.dbs.messages,
            &msg_prefix(&user, &folder),
            |_, v| {
                let m: MsgRecord = postcard::from_bytes(v)?;
                messages += 1;
                bytes += m.size;
                Ok(())
            },
        )?;
        Ok(Some(FolderInfo {
            name: folder,
            uidvalidity: rec.uidvalidity,
            uidnext: rec.uidnext,
            messages,
            bytes,
        }))
    }

    /// Forgets dedup keys recorded more than `older_than` ago; returns how many were removed.
    pub fn prune_dedup(&self, older_than: Duration) -> Result<usize, MailboxError> {
        let cutoff = now_ms().saturating_sub(older_than.as_millis() as u64) / 1000;
        let core = self.core();
        let mut txn = core.env.begin_rw_txn()?;
        let mut old = Vec::new();
        scan_prefix(&txn, core.dbs.dedup, b"", |k, v| {
            let r: DedupRecord = postcard::from_bytes(v)?;
            if r.at_secs < cutoff {
                old.push(k.to_vec());
            }
            Ok(())
        })?;
        for k in &old {
            txn.del(core.dbs.dedup, k, None)?;
        }
        txn.commit()?;
        Ok(old.len())
    }
}

fn check_dedup_key(k: Option<&str>) -> Result<(), MailboxError> {
    match k {
        Some(k) if k.is_empty() || k.len() > MAX_DEDUP_KEY_LEN => Err(MailboxError::InvalidInput(
            format!("dedup key must be 1..={MAX_DEDUP_KEY_LEN} bytes"),
        )),
        _ => Ok(()),
    }
}
