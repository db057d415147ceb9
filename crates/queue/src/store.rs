//! On-disk layout: one LMDB environment per queue directory, and the typed
//! (postcard) records stored in it.
//!
//! | sub-database  | key                         | value                               |
//! |---------------|-----------------------------|-------------------------------------|
//! | `incoming`    | message id (u64 BE)         | [`EnvelopeRecord`], never attempted |
//! | `deferred`    | message id (u64 BE)         | [`EnvelopeRecord`], attempted ≥ 1   |
//! | `hold`        | message id (u64 BE)         | [`EnvelopeRecord`], held by admin   |
//! | `body`        | message id (u64 BE)         | raw message bytes (stored once)     |
//! | `origin`      | origin token (UTF-8)        | [`OriginRecord`]                    |
//! | `origin_time` | created µs BE ++ id BE      | origin key (for lazy pruning)       |
//! | `meta`        | `"state"`                   | [`MetaRecord`]                      |
//! | `corrupt`     | `"<db>/<ID>"`               | the raw bytes that failed to decode |
//! | `journal`, `journal_idx` | see `src/journal.rs` | what happened to each message   |
//!
//! "active" (handed out to a delivery worker) is an in-memory state only: after
//! a restart every message in `incoming`/`deferred` is due again.
//!
//! Bodies live in LMDB (overflow pages); the map size (`QueueOptions::map_size`)
//! is the one limit. LMDB's map is virtual address space, so it can be set far
//! above the expected queue size; a full map or a full disk both surface as
//! `QueueError::Full`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lmdb::{Cursor, Database, DatabaseFlags, Environment, EnvironmentFlags, Transaction};
use serde::{Deserialize, Serialize};

use crate::{ClientInfo, Envelope, QueueError, QueueId, RcptStatus, StoredRecipient};

/// Schema version of every record this build writes.
pub(crate) const SCHEMA: u16 = 1;

/// The sub-databases holding envelopes, in lookup order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    Incoming,
    Deferred,
    Hold,
}

impl Place {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Place::Incoming => "incoming",
            Place::Deferred => "deferred",
            Place::Hold => "hold",
        }
    }
    pub(crate) const ALL: [Place; 3] = [Place::Incoming, Place::Deferred, Place::Hold];
}

#[derive(Serialize, Deserialize)]
struct Head {
    schema: u16,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum RcptState {
    Pending,
    Delivered(String),
    Failed(String),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct RcptRecord {
    pub address: String,
    pub params: String,
    pub state: RcptState,
    pub last_reply: Option<String>,
}

/// One queued message's envelope and delivery state. The id is the key, the
/// held flag is the sub-database it lives in.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct EnvelopeRecord {
    pub schema: u16,
    pub origin: Option<String>,
    pub mail_from: String,
    pub mail_params: String,
    pub rcpts: Vec<RcptRecord>,
    pub client: ClientInfo,
    pub arrived_us: u64,
    pub attempts: u32,
    pub next_attempt_us: u64,
    pub size: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct OriginRecord {
    pub schema: u16,
    pub id: u64,
    pub created_us: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct MetaRecord {
    pub schema: u16,
    pub last_id: u64,
}

pub(crate) const META_KEY: &[u8] = b"state";

/// Encodes a record with postcard.
pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, QueueError> {
    postcard::to_stdvec(v).map_err(|e| QueueError::Corrupt(format!("encode: {e}")))
}

/// Decodes a versioned record: checks the schema first, then requires the
/// whole value to be consumed.
pub(crate) fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    let head: Head = postcard::from_bytes(bytes).map_err(|e| format!("header: {e}"))?;
    if head.schema != SCHEMA {
        return Err(format!("unknown schema version {}", head.schema));
    }
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((v, [])) => Ok(v),
        Ok((_, rest)) => Err(format!("{} trailing bytes", rest.len())),
        Err(e) => Err(e.to_string()),
    }
}

pub(crate) fn key(id: QueueId) -> [u8; 8] {
    id.0.to_be_bytes()
}

pub(crate) fn id_from_key(k: &[u8]) -> Option<QueueId> {
    let b: [u8; 8] = k.try_into().ok()?;
    Some(QueueId(u64::from_be_bytes(b)))
}

pub(crate) fn to_us(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros().min(u64::MAX as u128) as u64)
        .unwrap_or(0)
}

pub(crate) fn from_us(us: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us)
}

/// LMDB keys are limited to 511 bytes: long origin tokens are shortened and
/// made unique with a hash of the full token.
pub(crate) fn origin_key(origin: &str) -> Vec<u8> {
    const MAX: usize = 400;
    if origin.len() <= MAX {
        return origin.as_bytes().to_vec();
    }
    // FNV-1a, 64 bit: stable across builds (unlike std's DefaultHasher).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in origin.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut k = origin.as_bytes()[..MAX].to_vec();
    k.extend_from_slice(format!("#{h:016x}").as_bytes());
    k
}

impl EnvelopeRecord {
    pub(crate) fn to_envelope(&self, id: QueueId, held: bool) -> Envelope {
        Envelope {
            id,
            origin: self.origin.clone(),
            mail_from: self.mail_from.clone(),
            mail_params: self.mail_params.clone(),
            rcpts: self
                .rcpts
                .iter()
                .map(|r| StoredRecipient {
                    address: r.address.clone(),
                    params: r.params.clone(),
                    status: match &r.state {
                        RcptState::Pending => RcptStatus::Pending,
                        RcptState::Delivered(reply) => RcptStatus::Delivered {
                            reply: reply.clone(),
                        },
                        RcptState::Failed(reply) => RcptStatus::Failed {
                            reply: reply.clone(),
                        },
                    },
                    last_reply: r.last_reply.clone(),
                })
                .collect(),
            client: self.client.clone(),
            arrived: from_us(self.arrived_us),
            attempts: self.attempts,
            next_attempt: from_us(self.next_attempt_us),
            held,
            size: self.size,
        }
    }
}

/// Directories open in this process. LMDB must not open the same environment
/// twice in one process (closing one handle drops the other's POSIX locks).
static OPEN_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

struct DirGuard(PathBuf);

impl DirGuard {
    fn acquire(dir: &Path) -> Result<DirGuard, QueueError> {
        let canon = dir.canonicalize()?;
        let mut open = OPEN_DIRS.lock().unwrap_or_else(|e| e.into_inner());
        if open.contains(&canon) {
            return Err(QueueError::Io(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("queue {} is already open in this process", canon.display()),
            )));
        }
        open.push(canon.clone());
        Ok(DirGuard(canon))
    }
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        let mut open = OPEN_DIRS.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|p| p != &self.0);
    }
}

/// The LMDB environment and its sub-databases.
pub(crate) struct Store {
    // Field order matters: the environment closes before the guard is released.
    pub env: Environment,
    pub incoming: Database,
    pub deferred: Database,
    pub hold: Database,
    pub body: Database,
    pub origin: Database,
    pub origin_time: Database,
    pub meta: Database,
    pub corrupt: Database,
    /// The conservation journal (src/journal.rs); None in a read-only
    /// open of a queue written before the journal existed.
    pub journal: Option<crate::journal::JournalDbs>,
    _guard: DirGuard,
}

const DB_NAMES: [&str; 8] = [
    "incoming",
    "deferred",
    "hold",
    "body",
    "origin",
    "origin_time",
    "meta",
    "corrupt",
];

impl Store {
    pub(crate) fn open(dir: &Path, map_size: usize, read_only: bool) -> Result<Store, QueueError> {
        if !read_only {
            std::fs::create_dir_all(dir)?;
        }
        let guard = DirGuard::acquire(dir)?;
        let mut flags = EnvironmentFlags::NO_TLS | EnvironmentFlags::NO_READAHEAD;
        let mut b = Environment::new();
        b.set_max_dbs(16).set_max_readers(1024);
        if read_only {
            flags |= EnvironmentFlags::READ_ONLY;
        } else {
            // Round up to 64 KiB so the size is a multiple of any page size.
            let map_size = map_size.max(1 << 20).div_ceil(1 << 16) << 16;
            b.set_map_size(map_size);
        }
        b.set_flags(flags);
        // Group read/write: an admin group may read the queue (LMDB readers
        // need write access to lock.mdb).
        let env = b.open_with_permissions(dir, 0o660).map_err(lmdb_err)?;
        let mut dbs = Vec::with_capacity(DB_NAMES.len());
        for name in DB_NAMES {
            let db = if read_only {
                env.open_db(Some(name))
            } else {
                env.create_db(Some(name), DatabaseFlags::empty())
            };
            dbs.push(db.map_err(|e| match e {
                lmdb::Error::NotFound => QueueError::NotFound,
                e => lmdb_err(e),
            })?);
        }
        let journal = match (
            open_or_create(&env, "journal", read_only),
            open_or_create(&env, "journal_idx", read_only),
        ) {
            (Ok(entries), Ok(index)) => Some(crate::journal::JournalDbs { entries, index }),
            (Err(lmdb::Error::NotFound), _) | (_, Err(lmdb::Error::NotFound)) => None,
            (Err(e), _) | (_, Err(e)) => return Err(lmdb_err(e)),
        };
        Ok(Store {
            env,
            journal,
            incoming: dbs[0],
            deferred: dbs[1],
            hold: dbs[2],
            body: dbs[3],
            origin: dbs[4],
            origin_time: dbs[5],
            meta: dbs[6],
            corrupt: dbs[7],
            _guard: guard,
        })
    }

    pub(crate) fn db(&self, place: Place) -> Database {
        match place {
            Place::Incoming => self.incoming,
            Place::Deferred => self.deferred,
            Place::Hold => self.hold,
        }
    }

    /// Finds the envelope bytes of `id` in any envelope database.
    pub(crate) fn find<'t, T: Transaction>(
        &self,
        txn: &'t T,
        id: QueueId,
    ) -> Result<Option<(Place, &'t [u8])>, lmdb::Error> {
        let k = key(id);
        for place in Place::ALL {
            match txn.get(self.db(place), &k) {
                Ok(v) => return Ok(Some((place, v))),
                Err(lmdb::Error::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Reads and decodes one envelope. A decode failure is `Err(Corrupt)`.
    pub(crate) fn envelope(&self, id: QueueId) -> Result<Option<Envelope>, QueueError> {
        let txn = self.env.begin_ro_txn().map_err(lmdb_err)?;
        match self.find(&txn, id).map_err(lmdb_err)? {
            None => Ok(None),
            Some((place, bytes)) => match decode::<EnvelopeRecord>(bytes) {
                Ok(rec) => Ok(Some(rec.to_envelope(id, place == Place::Hold))),
                Err(e) => Err(QueueError::Corrupt(format!("{}/{id}: {e}", place.name()))),
            },
        }
    }

    /// Whether `id` has an envelope (in any state), without decoding it.
    pub(crate) fn contains(&self, id: QueueId) -> Result<bool, QueueError> {
        let txn = self.env.begin_ro_txn().map_err(lmdb_err)?;
        Ok(self.find(&txn, id).map_err(lmdb_err)?.is_some())
    }

    pub(crate) fn with_body<R>(
        &self,
        id: QueueId,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<R>, QueueError> {
        let txn = self.env.begin_ro_txn().map_err(lmdb_err)?;
        match txn.get(self.body, &key(id)) {
            Ok(b) => Ok(Some(f(b))),
            Err(lmdb::Error::NotFound) => Ok(None),
            Err(e) => Err(lmdb_err(e)),
        }
    }

    /// Every decodable envelope, sorted by id, plus the ids that failed to decode.
    pub(crate) fn list(&self) -> Result<(Vec<Envelope>, Vec<QueueId>), QueueError> {
        let txn = self.env.begin_ro_txn().map_err(lmdb_err)?;
        let mut out = Vec::new();
        let mut bad = Vec::new();
        for place in Place::ALL {
            let mut cur = txn.open_ro_cursor(self.db(place)).map_err(lmdb_err)?;
            for item in cur.iter_start() {
                let (k, v) = item.map_err(lmdb_err)?;
                let Some(id) = id_from_key(k) else { continue };
                match decode::<EnvelopeRecord>(v) {
                    Ok(rec) => out.push(rec.to_envelope(id, place == Place::Hold)),
                    Err(e) => {
                        tracing::warn!(%id, db = place.name(), error = %e, "corrupt queue record");
                        bad.push(id);
                    }
                }
            }
        }
        out.sort_by_key(|e| e.id);
        Ok((out, bad))
    }

    /// Number of envelopes in all envelope databases.
    pub(crate) fn count(&self) -> Result<usize, QueueError> {
        let txn = self.env.begin_ro_txn().map_err(lmdb_err)?;
        let mut n = 0;
        for place in Place::ALL {
            let mut cur = txn.open_ro_cursor(self.db(place)).map_err(lmdb_err)?;
            for item in cur.iter_start() {
                item.map_err(lmdb_err)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Raw contents of the `corrupt` database: (key, bytes).
    pub(crate) fn corrupt_records(&self) -> Result<Vec<(String, Vec<u8>)>, QueueError> {
        let txn = self.env.begin_ro_txn().map_err(lmdb_err)?;
        let mut cur = txn.open_ro_cursor(self.corrupt).map_err(lmdb_err)?;
        let mut out = Vec::new();
        for item in cur.iter_start() {
            let (k, v) = item.map_err(lmdb_err)?;
            out.push((String::from_utf8_lossy(k).into_owned(), v.to_vec()));
        }
        Ok(out)
    }
}

fn open_or_create(env: &Environment, name: &str, read_only: bool) -> Result<Database, lmdb::Error> {
    if read_only {
        env.open_db(Some(name))
    } else {
        env.create_db(Some(name), DatabaseFlags::empty())
    }
}

/// Maps LMDB errors; a full map or a full disk is `QueueError::Full`.
pub(crate) fn lmdb_err(e: lmdb::Error) -> QueueError {
    match e {
        lmdb::Error::MapFull => QueueError::Full,
        lmdb::Error::Other(code) if code == libc::ENOSPC || code == libc::EDQUOT => {
            QueueError::Full
        }
        e => QueueError::Lmdb(e),
    }
}
