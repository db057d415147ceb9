//! The quarantine: messages the content stages kept out of the flow
//! (infected, over a MIME limit, spam above the quarantine threshold,
//! outbound spam held), with their envelope and the reason.
//!
//! One LMDB environment per machine (`data_dir/quarantine`), written by
//! the antivirus and antispam nodes and read by `palisade quarantine`.
//! An entry is committed (fsync) before the stage answers 250, so a
//! quarantined message is as durable as a queued one.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use lmdb::{Cursor, Database, DatabaseFlags, Environment, Transaction, WriteFlags};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    #[error("quarantine database: {0}")]
    Lmdb(#[from] lmdb::Error),
    #[error("quarantine record {0} is corrupt: {1}")]
    Corrupt(String, postcard::Error),
    #[error("no quarantined message {0}")]
    NotFound(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// One quarantined message.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct QuarantineEntry {
    /// Sortable by time: 12 hex digits of milliseconds, 6 random.
    pub id: String,
    /// Seconds since the Unix epoch.
    pub time: u64,
    /// The node that kept it (`antivirus-1`).
    pub node: String,
    /// `virus`, `mime-limit`, `spam`, `outbound-spam`.
    pub kind: String,
    /// The virus name, the limit passed, or the spam score.
    pub verdict: String,
    pub mail_from: String,
    pub rcpts: Vec<String>,
    /// The sender was an authenticated local user (flow 4).
    pub authenticated_sender: bool,
    pub origin: Option<String>,
    /// The message as it arrived at the stage.
    pub message: Vec<u8>,
}

impl QuarantineEntry {
    /// The Subject header, for listings.
    pub fn subject(&self) -> String {
        let head_end = self
            .message
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or(self.message.len().min(8192));
        let head = String::from_utf8_lossy(&self.message[..head_end]);
        head.lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case("subject")
                    .then(|| v.trim().to_string())
            })
            .unwrap_or_default()
    }
}

pub struct Quarantine {
    env: Environment,
    entries: Database,
}

impl Quarantine {
    pub fn open(dir: &Path) -> Result<Quarantine, QuarantineError> {
        std::fs::create_dir_all(dir)?;
        let env = Environment::new()
            .set_max_dbs(2)
            .set_map_size(4 << 30)
            .open(dir)?;
        let entries = env.create_db(Some("entries"), DatabaseFlags::empty())?;
        Ok(Quarantine { env, entries })
    }

    /// A fresh id for a new entry.
    pub fn new_id() -> String {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        format!(
            "{:012X}{:06X}",
            ms & 0xFFFF_FFFF_FFFF,
            rand::random::<u32>() & 0xFF_FFFF
        )
    }

    pub fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    /// Stores an entry durably (LMDB commit syncs to disk).
    pub fn put(&self, entry: &QuarantineEntry) -> Result<(), QuarantineError> {
        let bytes = postcard::to_stdvec(entry)
            .map_err(|e| QuarantineError::Corrupt(entry.id.clone(), e))?;
        let mut txn = self.env.begin_rw_txn()?;
        txn.put(
            self.entries,
            &entry.id.as_bytes(),
            &bytes,
            WriteFlags::empty(),
        )?;
        txn.commit()?;
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<QuarantineEntry, QuarantineError> {
        let txn = self.env.begin_ro_txn()?;
        match txn.get(self.entries, &id.as_bytes()) {
            Ok(b) => postcard::from_bytes(b).map_err(|e| QuarantineError::Corrupt(id.into(), e)),
            Err(lmdb::Error::NotFound) => Err(QuarantineError::NotFound(id.into())),
            Err(e) => Err(e.into()),
        }
    }

    /// Every entry, oldest first.
    pub fn list(&self) -> Result<Vec<QuarantineEntry>, QuarantineError> {
        let txn = self.env.begin_ro_txn()?;
        let mut cursor = txn.open_ro_cursor(self.entries)?;
        let mut out = Vec::new();
        for item in cursor.iter_start() {
            let (k, v) = item?;
            match postcard::from_bytes(v) {
                Ok(e) => out.push(e),
                Err(e) => {
                    return Err(QuarantineError::Corrupt(
                        String::from_utf8_lossy(k).into_owned(),
                        e,
                    ))
                }
            }
        }
        Ok(out)
    }

    pub fn delete(&self, id: &str) -> Result<(), QuarantineError> {
        let mut txn = self.env.begin_rw_txn()?;
        match txn.del(self.entries, &id.as_bytes(), None) {
            Ok(()) => {}
            Err(lmdb::Error::NotFound) => return Err(QuarantineError::NotFound(id.into())),
            Err(e) => return Err(e.into()),
        }
        txn.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_stored_listed_and_deleted() {
        let dir = std::env::temp_dir().join(format!("palisade-quarantine-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let q = Quarantine::open(&dir).unwrap();
        let e = QuarantineEntry {
            id: Quarantine::new_id(),
            time: Quarantine::now(),
            node: "antivirus-1".into(),
            kind: "virus".into(),
            verdict: "Eicar-Test-Signature".into(),
            mail_from: "a@b.example".into(),
            rcpts: vec!["u@example.test".into()],
            authenticated_sender: false,
            origin: Some("mx-1/ABC".into()),
            message: b"Subject: hi there\r\n\r\nbody\r\n".to_vec(),
        };
        q.put(&e).unwrap();
        assert_eq!(q.get(&e.id).unwrap(), e);
        assert_eq!(q.list().unwrap().len(), 1);
        assert_eq!(e.subject(), "hi there");
        q.delete(&e.id).unwrap();
        assert!(matches!(q.get(&e.id), Err(QuarantineError::NotFound(_))));
        assert!(matches!(q.delete(&e.id), Err(QuarantineError::NotFound(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
