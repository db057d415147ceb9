//! DM24's token database on LMDB: token -> (spam count, ham count).
//!
//! `palisade spam train` writes it; every antispam node of the machine
//! reads it. LMDB lets one writer and many reader processes share the file,
//! and each message is scored inside one read transaction, so a training
//! run in progress is never seen half-done.

use std::collections::HashSet;
use std::path::Path;

use lmdb::{Database, DatabaseFlags, Environment, RoTransaction, Transaction, WriteFlags};

use crate::bayes::{Counts, TokenCounts};
use crate::SpamError;

/// Key of the message totals; tokens never start with a NUL byte.
const TOTALS_KEY: &[u8] = b"\0totals";

pub struct BayesDb {
    env: Environment,
    tokens: Database,
}

impl BayesDb {
    /// Opens (creating if needed) the database in `dir`.
    pub fn open(dir: &Path) -> Result<BayesDb, SpamError> {
        std::fs::create_dir_all(dir)?;
        let env = Environment::new()
            .set_max_dbs(2)
            .set_map_size(1 << 30)
            .open(dir)?;
        let tokens = env.create_db(Some("tokens"), DatabaseFlags::empty())?;
        Ok(BayesDb { env, tokens })
    }

    /// Adds messages (token set, is spam) in one transaction.
    pub fn train(&self, messages: &[(HashSet<String>, bool)]) -> Result<(), SpamError> {
        let mut txn = self.env.begin_rw_txn()?;
        let mut totals = read_counts(&txn, self.tokens, TOTALS_KEY)?;
        for (tokens, is_spam) in messages {
            add(&mut totals, *is_spam);
            for t in tokens {
                let mut c = read_counts(&txn, self.tokens, t.as_bytes())?;
                add(&mut c, *is_spam);
                txn.put(self.tokens, &t.as_bytes(), &encode(c), WriteFlags::empty())?;
            }
        }
        txn.put(
            self.tokens,
            &TOTALS_KEY,
            &encode(totals),
            WriteFlags::empty(),
        )?;
        txn.commit()?;
        Ok(())
    }

    /// Drops every token (a fresh training run).
    pub fn clear(&self) -> Result<(), SpamError> {
        let mut txn = self.env.begin_rw_txn()?;
        txn.clear_db(self.tokens)?;
        txn.commit()?;
        Ok(())
    }

    /// A consistent view for scoring one message.
    pub fn reader(&self) -> Result<BayesReader<'_>, SpamError> {
        let txn = self.env.begin_ro_txn()?;
        let totals = read_counts(&txn, self.tokens, TOTALS_KEY)?;
        Ok(BayesReader {
            txn,
            tokens: self.tokens,
            totals,
        })
    }

    /// Number of distinct tokens stored.
    pub fn token_count(&self) -> Result<usize, SpamError> {
        let txn = self.env.begin_ro_txn()?;
        let n = txn.stat(self.tokens)?.entries();
        Ok(n.saturating_sub(1))
    }
}

pub struct BayesReader<'env> {
    txn: RoTransaction<'env>,
    tokens: Database,
    totals: Counts,
}

impl TokenCounts for BayesReader<'_> {
    fn totals(&self) -> Counts {
        self.totals
    }
    fn get(&self, token: &str) -> Counts {
        read_counts(&self.txn, self.tokens, token.as_bytes()).unwrap_or_default()
    }
}

fn add(c: &mut Counts, is_spam: bool) {
    if is_spam {
        c.spam = c.spam.saturating_add(1);
    } else {
        c.ham = c.ham.saturating_add(1);
    }
}

fn encode(c: Counts) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&c.spam.to_le_bytes());
    b[4..].copy_from_slice(&c.ham.to_le_bytes());
    b
}

fn read_counts(txn: &impl Transaction, db: Database, key: &[u8]) -> Result<Counts, SpamError> {
    if key.is_empty() || key.len() > 511 {
        return Ok(Counts::default());
    }
    match txn.get(db, &key) {
        Ok(v) if v.len() == 8 => Ok(Counts {
            spam: u32::from_le_bytes([v[0], v[1], v[2], v[3]]),
            ham: u32::from_le_bytes([v[4], v[5], v[6], v[7]]),
        }),
        Ok(_) => Err(SpamError::Corrupt(
            String::from_utf8_lossy(key).into_owned(),
        )),
        Err(lmdb::Error::NotFound) => Ok(Counts::default()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trained_counts_survive_reopen() {
        let dir = std::env::temp_dir().join(format!("palisade-bayes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let db = BayesDb::open(&dir).unwrap();
            let spam: HashSet<String> = ["cheap".to_string()].into();
            let ham: HashSet<String> = ["agenda".to_string(), "cheap".to_string()].into();
            db.train(&[(spam, true), (ham, false)]).unwrap();
        }
        let db = BayesDb::open(&dir).unwrap();
        let r = db.reader().unwrap();
        assert_eq!(r.totals(), Counts { spam: 1, ham: 1 });
        assert_eq!(r.get("cheap"), Counts { spam: 1, ham: 1 });
        assert_eq!(r.get("agenda"), Counts { spam: 0, ham: 1 });
        assert_eq!(r.get("nothing"), Counts::default());
        drop(r);
        assert_eq!(db.token_count().unwrap(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
