//! DM22 greylisting (Harris 2003): the first attempt of an unknown
//! (client network, sender, recipient) triplet is refused with `451 4.7.1`;
//! a retry after `delay` and within `retry_window` passes, and the triplet
//! then passes for `pass_lifetime`. Clients that passed
//! `auto_whitelist_after` triplets are real MTAs that retry: they are no
//! longer delayed. The client is its /24 or /64 since large senders retry
//! from another address of their pool. SPF-pass senders skip it (the
//! caller decides; see `Policy::on_rcpt`).
//!
//! State lives behind [`GreylistStore`]: LMDB per node, or Redis shared
//! by a pair ([`crate::state`]), where a triplet's first attempt is
//! recorded with `SET NX PX` (two nodes seeing it at once keep one
//! first-seen time) and entries expire by themselves. While Redis is away
//! the node's LMDB decides: a sender that passed on the other node may be
//! greylisted once more here (one more delay, never a loss).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lmdb::{Database, DatabaseFlags, Environment, EnvironmentFlags, Transaction, WriteFlags};
use palisade_config::Dm22Greylist;
use palisade_smtp_proto::Reply;

use crate::state::SharedState;

/// One remembered triplet or client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// Unix seconds of the first attempt.
    pub first_seen: u64,
    pub last_seen: u64,
    /// Passed retries (triplet), or passed triplets (client).
    pub passes: u32,
}

impl Entry {
    fn encode(&self) -> String {
        format!("{} {} {}", self.first_seen, self.last_seen, self.passes)
    }
    fn decode(b: &[u8]) -> Option<Entry> {
        let s = std::str::from_utf8(b).ok()?;
        let mut f = s.split(' ').map(|x| x.parse::<u64>().ok());
        Some(Entry {
            first_seen: f.next()??,
            last_seen: f.next()??,
            passes: f.next()?? as u32,
        })
    }
}

/// Where greylisting state is kept.
pub(crate) trait GreylistStore {
    async fn get(&self, key: &str) -> anyhow::Result<Option<Entry>>;
    /// Stores `entry` for `ttl`. `first`: this is a triplet's first
    /// attempt, and an entry another node just wrote wins over it.
    async fn put(&self, key: &str, entry: Entry, ttl: Duration, first: bool) -> anyhow::Result<()>;
}

/// The greylist in the shared backend.
struct SharedGreylistStore<'a>(&'a SharedState);

fn unavailable() -> anyhow::Error {
    anyhow::anyhow!("shared state unavailable")
}

impl GreylistStore for SharedGreylistStore<'_> {
    async fn get(&self, key: &str) -> anyhow::Result<Option<Entry>> {
        let v = self.0.get("DM22", key).await.ok_or_else(unavailable)?;
        Ok(v.and_then(|v| Entry::decode(v.as_bytes())))
    }

    async fn put(&self, key: &str, entry: Entry, ttl: Duration, first: bool) -> anyhow::Result<()> {
        self.0
            .set("DM22", key, &entry.encode(), ttl, first)
            .await
            .ok_or_else(unavailable)?;
        Ok(())
    }
}

/// One node's state in an LMDB file under its data directory.
pub struct LmdbGreylistStore {
    env: std::sync::Arc<Environment>,
    db: Database,
}

/// Environments open in this process, by directory.
type OpenEnvs = Vec<(std::path::PathBuf, std::sync::Weak<Environment>)>;
static OPEN: std::sync::Mutex<OpenEnvs> = std::sync::Mutex::new(Vec::new());

impl LmdbGreylistStore {
    /// Opens the store in `dir`. A reload builds a second policy while the
    /// first still serves open sessions; both share one environment,
    /// because LMDB must not open the same environment twice in a process
    /// (closing one copy would drop the other's locks).
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let key = dir.canonicalize()?;
        let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|(_, env)| env.strong_count() > 0);
        if let Some(env) = open
            .iter()
            .find(|(path, _)| *path == key)
            .and_then(|(_, env)| env.upgrade())
        {
            let db = env.open_db(None)?;
            return Ok(LmdbGreylistStore { env, db });
        }
        let env = std::sync::Arc::new(
            Environment::new()
                .set_flags(EnvironmentFlags::NO_TLS)
                .set_map_size(256 << 20)
                .open(dir)?,
        );
        let db = env.create_db(None, DatabaseFlags::empty())?;
        open.push((key, std::sync::Arc::downgrade(&env)));
        Ok(LmdbGreylistStore { env, db })
    }
}

/// Expiry is by the timestamps in the entries (the decision ignores stale
/// ones and overwrites them); `first` changes nothing on one node.
impl GreylistStore for LmdbGreylistStore {
    async fn get(&self, key: &str) -> anyhow::Result<Option<Entry>> {
        let txn = self.env.begin_ro_txn()?;
        match txn.get(self.db, &key) {
            Ok(v) => Ok(Entry::decode(v)),
            Err(lmdb::Error::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn put(&self, key: &str, entry: Entry, _: Duration, _: bool) -> anyhow::Result<()> {
        let mut txn = self.env.begin_rw_txn()?;
        txn.put(self.db, &key, &entry.encode(), WriteFlags::empty())?;
        // Losing the last second of greylisting state in a crash only
        // makes a sender retry once more: no fsync wait per RCPT.
        txn.commit()?;
        Ok(())
    }
}

/// What greylisting decided for one RCPT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Known good client or triplet.
    Pass,
    /// This retry passed the delay (the log says "retried correctly").
    PassedRetry,
    Greylisted(Reply),
}

pub struct Greylist {
    settings: Dm22Greylist,
    local: Arc<LmdbGreylistStore>,
    shared: SharedState,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Greylist {
    pub fn new(
        settings: &Dm22Greylist,
        local: Arc<LmdbGreylistStore>,
        shared: SharedState,
    ) -> Self {
        Greylist {
            settings: settings.clone(),
            local,
            shared,
        }
    }

    pub async fn check(&self, network: &str, sender: &str, rcpt: &str) -> anyhow::Result<Verdict> {
        self.check_at(now(), network, sender, rcpt).await
    }

    /// Decides in the shared store when there is one and it answers, else
    /// in this node's.
    pub async fn check_at(
        &self,
        now: u64,
        network: &str,
        sender: &str,
        rcpt: &str,
    ) -> anyhow::Result<Verdict> {
        if self.shared.is_shared() {
            let store = SharedGreylistStore(&self.shared);
            if let Ok(v) = self.decide(&store, now, network, sender, rcpt).await {
                return Ok(v);
            }
        }
        self.decide(self.local.as_ref(), now, network, sender, rcpt)
            .await
    }

    async fn decide(
        &self,
        store: &impl GreylistStore,
        now: u64,
        network: &str,
        sender: &str,
        rcpt: &str,
    ) -> anyhow::Result<Verdict> {
        let s = &self.settings;
        let lifetime = s.pass_lifetime.0 as u64;
        let keep = s.pass_lifetime.duration();
        let pending = s.retry_window.duration();
        let client_key = format!("c\0{network}");
        if let Some(c) = store.get(&client_key).await? {
            if c.passes >= s.auto_whitelist_after && now.saturating_sub(c.last_seen) < lifetime {
                return Ok(Verdict::Pass);
            }
        }
        let key = format!(
            "t\0{network}\0{}\0{}",
            sender.to_ascii_lowercase(),
            rcpt.to_ascii_lowercase()
        );
        let delay = s.delay.0.ceil() as u64;
        let window = s.retry_window.0 as u64;
        let greylisted = |first: u64| {
            let wait = (first + delay).saturating_sub(now).max(1);
            Verdict::Greylisted(Reply::enhanced(
                451,
                (4, 7, 1),
                format!("<{rcpt}>: Recipient address rejected: Greylisted, try again in {wait} s"),
            ))
        };
        match store.get(&key).await? {
            Some(e) if e.passes > 0 && now.saturating_sub(e.last_seen) < lifetime => {
                let e = Entry {
                    last_seen: now,
                    passes: e.passes + 1,
                    ..e
                };
                store.put(&key, e, keep, false).await?;
                Ok(Verdict::Pass)
            }
            Some(e) if e.passes == 0 && now.saturating_sub(e.first_seen) <= window => {
                if now < e.first_seen + delay {
                    // Too early: the first-seen time stays, so hammering
                    // does not restart the clock, nor shorten it.
                    return Ok(greylisted(e.first_seen));
                }
                let e = Entry {
                    last_seen: now,
                    passes: 1,
                    ..e
                };
                store.put(&key, e, keep, false).await?;
                let c = store.get(&client_key).await?.unwrap_or(Entry {
                    first_seen: now,
                    ..Entry::default()
                });
                let c = Entry {
                    last_seen: now,
                    passes: c.passes + 1,
                    ..c
                };
                store.put(&client_key, c, keep, false).await?;
                Ok(Verdict::PassedRetry)
            }
            // Unknown, expired, or retried too late: start over.
            _ => {
                let e = Entry {
                    first_seen: now,
                    last_seen: now,
                    passes: 0,
                };
                store.put(&key, e, pending, true).await?;
                Ok(greylisted(now))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_config::Seconds;

    fn greylist(auto: u32) -> (Greylist, std::path::PathBuf) {
        greylist_with(auto, SharedState::embedded())
    }

    fn greylist_with(auto: u32, shared: SharedState) -> (Greylist, std::path::PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("dm22-{}-{}", std::process::id(), rand_suffix()));
        let store = Arc::new(LmdbGreylistStore::open(&dir).unwrap());
        let s = Dm22Greylist {
            delay: Seconds(60.0),
            retry_window: Seconds(3600.0),
            pass_lifetime: Seconds(86400.0),
            auto_whitelist_after: auto,
            ..Dm22Greylist::default()
        };
        (Greylist::new(&s, store, shared), dir)
    }

    fn rand_suffix() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    }

    #[tokio::test]
    async fn a_second_open_of_one_directory_shares_the_environment() {
        let dir = std::env::temp_dir().join(format!("dm22-twice-{}", rand_suffix()));
        let first = LmdbGreylistStore::open(&dir).unwrap();
        let second = LmdbGreylistStore::open(&dir).unwrap();
        assert!(Arc::ptr_eq(&first.env, &second.env));
        let e = Entry {
            first_seen: 1,
            last_seen: 2,
            passes: 3,
        };
        first
            .put("k", e, Duration::from_secs(60), true)
            .await
            .unwrap();
        drop(first);
        assert_eq!(second.get("k").await.unwrap().map(|e| e.passes), Some(3));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn first_attempt_451_early_retry_451_later_retry_passes() {
        let (g, dir) = greylist(10);
        let t = 1_000_000;
        let v = g
            .check_at(t, "192.0.2.0/24", "a@x.test", "u@example.test")
            .await
            .unwrap();
        assert!(matches!(v, Verdict::Greylisted(r) if r.code == 451));
        assert!(matches!(
            g.check_at(t + 30, "192.0.2.0/24", "a@x.test", "u@example.test")
                .await
                .unwrap(),
            Verdict::Greylisted(_)
        ));
        assert_eq!(
            g.check_at(t + 61, "192.0.2.0/24", "a@x.test", "u@example.test")
                .await
                .unwrap(),
            Verdict::PassedRetry
        );
        assert_eq!(
            g.check_at(t + 7200, "192.0.2.0/24", "A@x.test", "u@example.test")
                .await
                .unwrap(),
            Verdict::Pass
        );
        // Another sender is a new triplet.
        assert!(matches!(
            g.check_at(t + 7200, "192.0.2.0/24", "b@x.test", "u@example.test")
                .await
                .unwrap(),
            Verdict::Greylisted(_)
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn retry_after_the_window_starts_over() {
        let (g, dir) = greylist(10);
        let t = 1_000_000;
        g.check_at(t, "n", "a@x.test", "u@e.test").await.unwrap();
        assert!(matches!(
            g.check_at(t + 4000, "n", "a@x.test", "u@e.test")
                .await
                .unwrap(),
            Verdict::Greylisted(_)
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn clients_that_retried_are_auto_whitelisted() {
        let (g, dir) = greylist(1);
        let t = 1_000_000;
        g.check_at(t, "n", "a@x.test", "u@e.test").await.unwrap();
        assert_eq!(
            g.check_at(t + 61, "n", "a@x.test", "u@e.test")
                .await
                .unwrap(),
            Verdict::PassedRetry
        );
        assert_eq!(
            g.check_at(t + 62, "n", "new@y.test", "v@e.test")
                .await
                .unwrap(),
            Verdict::Pass
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_triplet_delayed_on_one_node_passes_on_the_other() {
        let server = crate::state::tests::RedisServer::start();
        let (mx1, d1) = greylist_with(10, server.state());
        let (mx2, d2) = greylist_with(10, server.state());
        let t = 1_000_000;
        let first = mx1.check_at(t, "n", "a@x.test", "u@e.test").await.unwrap();
        assert!(matches!(first, Verdict::Greylisted(_)));
        // The early retry on the other node is still too early...
        let early = mx2
            .check_at(t + 30, "n", "a@x.test", "u@e.test")
            .await
            .unwrap();
        assert!(matches!(early, Verdict::Greylisted(_)));
        // ... and once the delay is served it passes there at once.
        assert_eq!(
            mx2.check_at(t + 61, "n", "a@x.test", "u@e.test")
                .await
                .unwrap(),
            Verdict::PassedRetry
        );
        assert_eq!(
            mx1.check_at(t + 62, "n", "a@x.test", "u@e.test")
                .await
                .unwrap(),
            Verdict::Pass
        );
        std::fs::remove_dir_all(d1).unwrap();
        std::fs::remove_dir_all(d2).unwrap();
    }
}
