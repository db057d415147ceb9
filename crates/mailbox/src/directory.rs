//! The user directory: who may log in, their quota, which store node holds their mailbox and
//! their aliases.
//!
//! Storage: one LMDB environment (`data.mdb`/`lock.mdb` in the given dir) with three databases:
//! `users` (address -> postcard `UserRecord`), `aliases` (alias -> canonical address) and `meta`
//! (`version` -> u64 LE, the directory-wide change counter used later for replication).
//! The admin CLI writes while stage processes read: every lookup uses a fresh read transaction,
//! so a reader always sees the latest committed state of any process.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use lmdb::{
    Cursor, Database, DatabaseFlags, Environment, EnvironmentFlags, Transaction, WriteFlags,
};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::MailboxError;

/// Virtual size of the directory map. Users are small; 1 GiB is millions of them.
const DIRECTORY_MAP_SIZE: usize = 1 << 30;
const VERSION_KEY: &[u8] = b"version";

/// OWASP's argon2id recommendation: m = 19 MiB, t = 2, p = 1.
const ARGON2_M_KIB: u32 = 19 * 1024;
const ARGON2_T: u32 = 2;
const ARGON2_P: u32 = 1;

/// A user of the gateway as returned by [`Directory::lookup`] / [`Directory::list`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Canonical address, lowercased (`local@domain`).
    pub address: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// 0 = unlimited.
    pub quota_bytes: u64,
    /// Store node name holding the mailbox (e.g. `store-staff`).
    pub store: String,
    /// Aliases delivering to this user (lowercased).
    pub aliases: Vec<String>,
    /// Directory version at this user's last change.
    pub version: u64,
    /// The mailbox is full (DM35). Set by the store in the snapshots it
    /// serves, so the MX and MSA replicas can answer 452 4.2.2 at RCPT;
    /// always false in the authoritative directory.
    #[serde(default)]
    pub over_quota: bool,
}

#[derive(Serialize, Deserialize)]
struct UserRecord {
    password_hash: String,
    quota_bytes: u64,
    store: String,
    aliases: Vec<String>,
    version: u64,
    over_quota: bool,
}

impl UserRecord {
    fn into_user(self, address: String) -> User {
        User {
            address,
            password_hash: self.password_hash,
            quota_bytes: self.quota_bytes,
            store: self.store,
            aliases: self.aliases,
            version: self.version,
            over_quota: self.over_quota,
        }
    }
}

struct Inner {
    env: Environment,
    users: Database,
    aliases: Database,
    meta: Database,
}

/// Handle on the user directory. Cheap to clone; all clones (and all `open`s of the same path in
/// this process) share one LMDB environment.
#[derive(Clone)]
pub struct Directory {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory").finish_non_exhaustive()
    }
}

/// Lowercases and validates an address (`local@domain`, no spaces or control characters,
/// at most 254 octets). Returns `InvalidInput` when malformed.
pub fn normalize_address(address: &str) -> Result<String, MailboxError> {
    let a = address.trim().to_ascii_lowercase();
    let bad = || MailboxError::InvalidInput(format!("invalid address {address:?}"));
    if a.is_empty() || a.len() > 254 {
        return Err(bad());
    }
    let (local, domain) = a.rsplit_once('@').ok_or_else(bad)?;
    if local.is_empty()
        || domain.is_empty()
        || domain.contains('@')
        || domain.starts_with('.')
        || domain.ends_with('.')
        || a.chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
    {
        return Err(bad());
    }
    Ok(a)
}

fn argon2() -> Argon2<'static> {
    let params = Params::new(ARGON2_M_KIB, ARGON2_T, ARGON2_P, None).expect("valid argon2 params");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes `password` as an argon2id PHC string with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, MailboxError> {
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| MailboxError::Hash(e.to_string()))?;
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| MailboxError::Hash(e.to_string()))
}

fn password_matches(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        // Verification uses the parameters recorded in the PHC string.
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A hash of a random password with the same parameters, verified against for unknown users so
/// that the response time does not reveal whether an address exists.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let mut pw = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut pw);
        let pw: String = pw.iter().map(|b| format!("{b:02x}")).collect();
        hash_password(&pw).expect("argon2 hashing with valid params")
    })
}

fn bump_version(txn: &mut lmdb::RwTransaction<'_>, meta: Database) -> Result<u64, MailboxError> {
    let current = read_version(txn, meta)?;
    let next = current + 1;
    txn.put(meta, &VERSION_KEY, &next.to_le_bytes(), WriteFlags::empty())?;
    Ok(next)
}

fn read_version<T: Transaction>(txn: &T, meta: Database) -> Result<u64, MailboxError> {
    match txn.get(meta, &VERSION_KEY) {
        Ok(b) => {
            let arr: [u8; 8] = b
                .try_into()
                .map_err(|_| MailboxError::InvalidInput("corrupt directory version".into()))?;
            Ok(u64::from_le_bytes(arr))
        }
        Err(lmdb::Error::NotFound) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

fn get_user<T: Transaction>(
    txn: &T,
    users: Database,
    address: &str,
) -> Result<Option<UserRecord>, MailboxError> {
    match txn.get(users, &address) {
        Ok(b) => Ok(Some(postcard::from_bytes(b)?)),
        Err(lmdb::Error::NotFound) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn get_alias<T: Transaction>(
    txn: &T,
    aliases: Database,
    alias: &str,
) -> Result<Option<String>, MailboxError> {
    match txn.get(aliases, &alias) {
        Ok(b) => Ok(Some(String::from_utf8_lossy(b).into_owned())),
        Err(lmdb::Error::NotFound) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn put_user(
    txn: &mut lmdb::RwTransaction<'_>,
    users: Database,
    address: &str,
    rec: &UserRecord,
) -> Result<(), MailboxError> {
    txn.put(
        users,
        &address,
        &postcard::to_stdvec(rec)?,
        WriteFlags::empty(),
    )?;
    Ok(())
}

/// Removes an alias entry; one already gone is not an error.
fn del_alias(
    txn: &mut lmdb::RwTransaction<'_>,
    aliases: Database,
    alias: &str,
) -> Result<(), MailboxError> {
    match txn.del(aliases, &alias, None) {
        Ok(()) | Err(lmdb::Error::NotFound) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

impl Directory {
    /// Opens (creating if needed) the directory in `dir`. Safe to open from several processes at
    /// once (the CLI writes while stage processes read).
    pub fn open(dir: &Path) -> Result<Directory, MailboxError> {
        let inner = crate::env::shared(dir, |path| {
            let env = Environment::new()
                .set_flags(EnvironmentFlags::NO_TLS)
                .set_max_dbs(4)
                .set_max_readers(256)
                .set_map_size(DIRECTORY_MAP_SIZE)
                .open(path)?;
            let users = env.create_db(Some("users"), DatabaseFlags::empty())?;
            let aliases = env.create_db(Some("aliases"), DatabaseFlags::empty())?;
            let meta = env.create_db(Some("meta"), DatabaseFlags::empty())?;
            Ok(Inner {
                env,
                users,
                aliases,
                meta,
            })
        })?;
        Ok(Directory { inner })
    }

    /// Adds a user. `AlreadyExists` if the address is a user or an alias.
    pub fn add_user(
        &self,
        address: &str,
        password: &str,
        quota_bytes: u64,
        store: &str,
    ) -> Result<(), MailboxError> {
        let address = normalize_address(address)?;
        if store.is_empty() {
            return Err(MailboxError::InvalidInput("empty store node name".into()));
        }
        // Hash outside the write transaction: argon2 is slow and the writer lock is global.
        let password_hash = hash_password(password)?;
        let i = &self.inner;
        let mut txn = i.env.begin_rw_txn()?;
        if get_user(&txn, i.users, &address)?.is_some()
            || get_alias(&txn, i.aliases, &address)?.is_some()
        {
            return Err(MailboxError::AlreadyExists(address));
        }
        let version = bump_version(&mut txn, i.meta)?;
        let rec = UserRecord {
            password_hash,
            quota_bytes,
            store: store.to_string(),
            aliases: Vec::new(),
            version,
            over_quota: false,
        };
        put_user(&mut txn, i.users, &address, &rec)?;
        txn.commit()?;
        Ok(())
    }

    /// Deletes a user and its aliases. `Ok(false)` if there was no such user.
    pub fn delete_user(&self, address: &str) -> Result<bool, MailboxError> {
        let address = normalize_address(address)?;
        let i = &self.inner;
        let mut txn = i.env.begin_rw_txn()?;
        let Some(rec) = get_user(&txn, i.users, &address)? else {
            return Ok(false);
        };
        for alias in &rec.aliases {
            del_alias(&mut txn, i.aliases, alias)?;
        }
        txn.del(i.users, &address, None)?;
        bump_version(&mut txn, i.meta)?;
        txn.commit()?;
        Ok(true)
    }

    fn update_user(
        &self,
        address: &str,
        f: impl FnOnce(&mut UserRecord),
    ) -> Result<bool, MailboxError> {
        let address = normalize_address(address)?;
        let i = &self.inner;
        let mut txn = i.env.begin_rw_txn()?;
        let Some(mut rec) = get_user(&txn, i.users, &address)? else {
            return Ok(false);
        };
        f(&mut rec);
        rec.version = bump_version(&mut txn, i.meta)?;
        put_user(&mut txn, i.users, &address, &rec)?;
        txn.commit()?;
        Ok(true)
    }

    /// Sets a new password. `Ok(false)` if there is no such user (aliases are not followed).
    pub fn set_password(&self, address: &str, password: &str) -> Result<bool, MailboxError> {
        let hash = hash_password(password)?;
        self.update_user(address, |r| r.password_hash = hash)
    }

    /// Sets the quota (0 = unlimited). `Ok(false)` if there is no such user.
    pub fn set_quota(&self, address: &str, quota_bytes: u64) -> Result<bool, MailboxError> {
        self.update_user(address, |r| r.quota_bytes = quota_bytes)
    }

    /// Sets the store node of a user. `Ok(false)` if there is no such user.
    pub fn set_store(&self, address: &str, store: &str) -> Result<bool, MailboxError> {
        if store.is_empty() {
            return Err(MailboxError::InvalidInput("empty store node name".into()));
        }
        self.update_user(address, |r| r.store = store.to_string())
    }

    /// Makes `alias` deliver to `address` (which may itself be an alias: it is resolved to its
    /// user). `NotFound` if the target does not exist, `AlreadyExists` if `alias` is taken.
    pub fn add_alias(&self, alias: &str, address: &str) -> Result<(), MailboxError> {
        let alias = normalize_address(alias)?;
        let target = normalize_address(address)?;
        let i = &self.inner;
        let mut txn = i.env.begin_rw_txn()?;
        if get_user(&txn, i.users, &alias)?.is_some()
            || get_alias(&txn, i.aliases, &alias)?.is_some()
        {
            return Err(MailboxError::AlreadyExists(alias));
        }
        let (target, mut rec) = match get_user(&txn, i.users, &target)? {
            Some(rec) => (target, rec),
            None => {
                let resolved = get_alias(&txn, i.aliases, &target)?
                    .ok_or_else(|| MailboxError::NotFound(target.clone()))?;
                let rec = get_user(&txn, i.users, &resolved)?
                    .ok_or_else(|| MailboxError::NotFound(resolved.clone()))?;
                (resolved, rec)
            }
        };
        rec.aliases.push(alias.clone());
        rec.version = bump_version(&mut txn, i.meta)?;
        txn.put(i.aliases, &alias, &target, WriteFlags::empty())?;
        put_user(&mut txn, i.users, &target, &rec)?;
        txn.commit()?;
        Ok(())
    }

    /// Removes an alias. `Ok(false)` if it did not exist.
    pub fn remove_alias(&self, alias: &str) -> Result<bool, MailboxError> {
        let alias = normalize_address(alias)?;
        let i = &self.inner;
        let mut txn = i.env.begin_rw_txn()?;
        let Some(target) = get_alias(&txn, i.aliases, &alias)? else {
            return Ok(false);
        };
        txn.del(i.aliases, &alias, None)?;
        if let Some(mut rec) = get_user(&txn, i.users, &target)? {
            rec.aliases.retain(|a| a != &alias);
            rec.version = bump_version(&mut txn, i.meta)?;
            put_user(&mut txn, i.users, &target, &rec)?;
        } else {
            bump_version(&mut txn, i.meta)?;
        }
        txn.commit()?;
        Ok(true)
    }

    /// All users, sorted by address.
    pub fn list(&self) -> Result<Vec<User>, MailboxError> {
        let i = &self.inner;
        let txn = i.env.begin_ro_txn()?;
        let mut out = Vec::new();
        {
            let mut cursor = txn.open_ro_cursor(i.users)?;
            for item in cursor.iter_start() {
                let (k, v) = item?;
                let rec: UserRecord = postcard::from_bytes(v)?;
                out.push(rec.into_user(String::from_utf8_lossy(k).into_owned()));
            }
        }
        Ok(out)
    }

    /// Looks up a user by address or alias, case-insensitively. Malformed addresses are simply
    /// not found.
    pub fn lookup(&self, address: &str) -> Result<Option<User>, MailboxError> {
        let Ok(address) = normalize_address(address) else {
            return Ok(None);
        };
        let i = &self.inner;
        let txn = i.env.begin_ro_txn()?;
        if let Some(rec) = get_user(&txn, i.users, &address)? {
            return Ok(Some(rec.into_user(address)));
        }
        if let Some(target) = get_alias(&txn, i.aliases, &address)? {
            if let Some(rec) = get_user(&txn, i.users, &target)? {
                return Ok(Some(rec.into_user(target)));
            }
        }
        Ok(None)
    }

    /// Checks a login. `None` for an unknown user or a wrong password; for unknown users a dummy
    /// argon2 verification is done so timing does not reveal which addresses exist.
    /// CPU-heavy (tens of ms): call it from `spawn_blocking` in async code.
    pub fn verify_password(
        &self,
        address: &str,
        password: &str,
    ) -> Result<Option<User>, MailboxError> {
        match self.lookup(address)? {
            Some(user) => {
                if password_matches(password, &user.password_hash) {
                    Ok(Some(user))
                } else {
                    Ok(None)
                }
            }
            None => {
                let _ = password_matches(password, dummy_hash());
                Ok(None)
            }
        }
    }

    /// Replaces every user held by `store` (and their aliases) with `users`,
    /// in one transaction: how an MX or MSA replica takes in the snapshot a
    /// store node serves. Password hashes and flags are copied as they are.
    pub fn replace_store_users(&self, store: &str, users: &[User]) -> Result<(), MailboxError> {
        let i = &self.inner;
        let mut txn = i.env.begin_rw_txn()?;
        let mut old = Vec::new();
        {
            let mut cursor = txn.open_ro_cursor(i.users)?;
            for item in cursor.iter_start() {
                let (k, v) = item?;
                let rec: UserRecord = postcard::from_bytes(v)?;
                if rec.store == store {
                    old.push((k.to_vec(), rec.aliases));
                }
            }
        }
        for (key, aliases) in old {
            for alias in aliases {
                del_alias(&mut txn, i.aliases, &alias)?;
            }
            txn.del(i.users, &key, None)?;
        }
        for u in users {
            let address = normalize_address(&u.address)?;
            let rec = UserRecord {
                password_hash: u.password_hash.clone(),
                quota_bytes: u.quota_bytes,
                store: store.to_string(),
                aliases: u.aliases.clone(),
                version: u.version,
                over_quota: u.over_quota,
            };
            put_user(&mut txn, i.users, &address, &rec)?;
            for alias in &u.aliases {
                txn.put(i.aliases, alias, &address, WriteFlags::empty())?;
            }
        }
        bump_version(&mut txn, i.meta)?;
        txn.commit()?;
        Ok(())
    }

    /// The directory-wide change counter (bumped by every successful change).
    pub fn version(&self) -> Result<u64, MailboxError> {
        let i = &self.inner;
        let txn = i.env.begin_ro_txn()?;
        read_version(&txn, i.meta)
    }
}
