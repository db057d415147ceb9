//! Process-wide registry of open LMDB environments.
//!
//! LMDB must not have the same environment open twice in one process (its lock-file protocol
//! relies on per-process POSIX locks: a second `mdb_env_open` would believe it is the only user
//! and re-initialise the reader table under the first). `Directory::open` / `MailStore::open`
//! may be called several times in one process (the stage, tests, the CLI inside tests), so every
//! open goes through this registry, which hands back the already-open environment for a path.
//! Different *processes* opening the same path is fine and is exactly what LMDB is made for.

use std::any::Any;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use crate::MailboxError;

type Registry = Mutex<HashMap<PathBuf, Weak<dyn Any + Send + Sync>>>;

fn registry() -> &'static Registry {
    static REG: OnceLock<Registry> = OnceLock::new();
    REG.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Returns the shared `T` for `dir` (canonicalised), creating it with `create` if no live
/// instance exists. `dir` is created if missing.
pub(crate) fn shared<T, F>(dir: &Path, create: F) -> Result<Arc<T>, MailboxError>
where
    T: Any + Send + Sync,
    F: FnOnce(&Path) -> Result<T, MailboxError>,
{
    std::fs::create_dir_all(dir)?;
    let key = dir.canonicalize()?;
    let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
    reg.retain(|_, w| w.strong_count() > 0);
    if let Some(existing) = reg.get(&key).and_then(Weak::upgrade) {
        return existing.downcast::<T>().map_err(|_| {
            MailboxError::InvalidInput(format!(
                "{} is already open as a different kind of database",
                key.display()
            ))
        });
    }
    let value = Arc::new(create(&key)?);
    let as_any: Arc<dyn Any + Send + Sync> = value.clone();
    reg.insert(key, Arc::downgrade(&as_any));
    Ok(value)
}
