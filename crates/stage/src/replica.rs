//! The MX's and MSA's copy of the user directory (DM19, the paper's
//! backscatter fix: "copying a list of valid users from each MS server to
//! the MX servers each time there is a modification").
//!
//! Each store node serves the users it holds at `GET /directory` on its
//! HTTP endpoint, with a version string. Every MX and MSA node keeps a
//! replica (an LMDB directory under its own data directory) and pulls from
//! every store node every `replica_pull_interval` and at once when told of
//! a change (`POST /directory/changed`, sent by `palisade user ...`).
//! Because the replica is local and persistent, the MX keeps refusing
//! unknown recipients and accepting known ones while the stores are down.
//! A replica that has not heard from a store for `replica_max_age` is
//! stale: an address it does not know is then tempfailed (451), never
//! refused for good nor accepted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use palisade_config::StageKind;
use palisade_mailbox::{Directory, MailStore, MailboxError, User};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::http::{Request, Response};
use crate::runtime::NodeContext;

/// What a store node serves at `/directory`.
#[derive(Serialize, Deserialize)]
pub struct Snapshot {
    pub version: String,
    pub store: String,
    pub users: Vec<User>,
}

#[derive(Clone, Default, Serialize, Deserialize)]
struct SourceState {
    version: String,
    /// Unix seconds of the last successful pull (0: never).
    synced_at: u64,
}

pub struct Replica {
    directory: Directory,
    /// Store node name -> its HTTP endpoint.
    sources: Vec<(String, SocketAddr)>,
    /// Local domain -> store node, to know which source vouches for an
    /// address.
    domain_store: HashMap<String, String>,
    state: Mutex<HashMap<String, SourceState>>,
    state_file: PathBuf,
    changed: Notify,
    max_age: Duration,
    interval: Duration,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl Replica {
    /// Opens the replica under `data_dir/<node>/replica`.
    pub fn open(ctx: &NodeContext) -> Result<Arc<Replica>> {
        let dir = ctx.config.node_dir(&ctx.node_name).join("replica");
        let directory = Directory::open(&dir)
            .with_context(|| format!("opening the directory replica {}", dir.display()))?;
        let sources = ctx
            .config
            .nodes_of(StageKind::Store)
            .filter_map(|(name, n)| n.metrics.map(|a| (name.clone(), a)))
            .collect();
        let domain_store = ctx
            .config
            .domains
            .iter()
            .filter_map(|d| d.store.clone().map(|s| (d.name.to_ascii_lowercase(), s)))
            .collect();
        let state_file = dir.join("sync.json");
        let state = std::fs::read(&state_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Ok(Arc::new(Replica {
            directory,
            sources,
            domain_store,
            state: Mutex::new(state),
            state_file,
            changed: Notify::new(),
            max_age: ctx.config.gateway.replica_max_age.duration(),
            interval: ctx.config.gateway.replica_pull_interval.duration(),
        }))
    }

    /// Whether the store holding `address`'s domain was heard from within
    /// `replica_max_age`.
    pub fn is_fresh(&self, address: &str) -> bool {
        let domain = address
            .rsplit_once('@')
            .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase())
            .unwrap_or_default();
        let Some(store) = self.domain_store.get(&domain) else {
            return true; // no store vouches for it: nothing to wait for
        };
        let state = self.state.lock().unwrap();
        let synced = state.get(store).map(|s| s.synced_at).unwrap_or(0);
        synced > 0 && now().saturating_sub(synced) <= self.max_age.as_secs()
    }

    /// Whether every store has been heard from at least once (now or in an
    /// earlier run).
    pub fn is_warm(&self) -> bool {
        let state = self.state.lock().unwrap();
        self.sources
            .iter()
            .all(|(s, _)| state.get(s).is_some_and(|x| x.synced_at > 0))
    }

    /// A user or alias, as far as this replica knows. An unknown address
    /// while the replica is stale is an error (the caller tempfails).
    pub fn lookup(&self, address: &str) -> Result<Option<User>, MailboxError> {
        match self.directory.lookup(address)? {
            Some(u) => Ok(Some(u)),
            None if self.is_fresh(address) => Ok(None),
            None => Err(MailboxError::InvalidInput(
                "directory replica is stale: its store has not been reachable".into(),
            )),
        }
    }

    /// Checks a login against the replica (MSA).
    pub fn verify_password(
        &self,
        address: &str,
        password: &str,
    ) -> Result<Option<User>, MailboxError> {
        self.directory.verify_password(address, password)
    }

    /// Asks for an immediate pull (a push from `palisade user`).
    pub fn notify_changed(&self) {
        self.changed.notify_one();
    }

    /// Pulls from every store node now; returns how many answered.
    pub async fn pull_all(&self) -> usize {
        let mut ok = 0;
        for (store, addr) in &self.sources {
            let have = self
                .state
                .lock()
                .unwrap()
                .get(store)
                .map(|s| s.version.clone())
                .unwrap_or_default();
            match self.pull(store, *addr, &have).await {
                Ok(()) => ok += 1,
                Err(e) => {
                    let was_fresh = self
                        .state
                        .lock()
                        .unwrap()
                        .get(store)
                        .is_some_and(|s| s.synced_at > 0);
                    if was_fresh {
                        warn!("directory replica: {store} ({addr}) unreachable: {e:#}");
                    }
                }
            }
        }
        ok
    }

    async fn pull(&self, store: &str, addr: SocketAddr, have: &str) -> Result<()> {
        let (status, body) =
            crate::http::request(addr, "GET", &format!("/directory?have={have}")).await?;
        match status {
            304 => {}
            200 => {
                let snap: Snapshot = serde_json::from_slice(&body).context("bad snapshot")?;
                anyhow::ensure!(
                    snap.store == store,
                    "{addr} serves {} not {store}",
                    snap.store
                );
                let directory = self.directory.clone();
                let users = snap.users;
                let n = users.len();
                let name = store.to_string();
                tokio::task::spawn_blocking(move || directory.replace_store_users(&name, &users))
                    .await??;
                info!(
                    "directory replica: {n} users of {store} at version {}",
                    snap.version
                );
                self.state
                    .lock()
                    .unwrap()
                    .entry(store.to_string())
                    .or_default()
                    .version = snap.version;
            }
            other => anyhow::bail!("HTTP {other}"),
        }
        let snapshot = {
            let mut state = self.state.lock().unwrap();
            state.entry(store.to_string()).or_default().synced_at = now();
            serde_json::to_vec(&*state)?
        };
        // Persisted so a restarted node knows how old its copy is.
        palisade_queue::durable::replace_file(&self.state_file, &snapshot, None)?;
        Ok(())
    }

    /// Keeps the replica in step until the process ends.
    pub async fn run(self: Arc<Self>) {
        loop {
            self.pull_all().await;
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = self.changed.notified() => {}
            }
        }
    }
}

/// `GET /directory?have=V` on a store node: the users it holds, with
/// their over-quota state, or 304 when the replica already has version V.
/// A mailbox counts as over quota when it is full or when the store has
/// just refused a message for it (`refusing`): either way the MX should
/// let the sender keep new mail for now.
pub fn serve_snapshot(
    node: &str,
    directory: &Directory,
    store: &MailStore,
    refusing: &dyn Fn(&str) -> bool,
    req: &Request,
) -> Response {
    let users: Result<Vec<User>, MailboxError> = directory.list().map(|all| {
        all.into_iter()
            .filter(|u| u.store == node)
            .map(|mut u| {
                u.over_quota = u.quota_bytes > 0
                    && (refusing(&u.address)
                        || store.usage(&u.address).unwrap_or(0) >= u.quota_bytes);
                u
            })
            .collect()
    });
    let users = match users {
        Ok(u) => u,
        Err(e) => return Response::text(500, format!("directory: {e}\n")),
    };
    // The directory version, plus which mailboxes are full (a delivery
    // changes that without a directory change).
    let full: Vec<&str> = users
        .iter()
        .filter(|u| u.over_quota)
        .map(|u| u.address.as_str())
        .collect();
    let version = format!(
        "{}-{:016x}",
        directory.version().unwrap_or(0),
        fnv1a(full.join(",").as_bytes())
    );
    if req.query.get("have").map(String::as_str) == Some(version.as_str()) {
        return Response::text(304, "");
    }
    let snap = Snapshot {
        version,
        store: node.to_string(),
        users,
    };
    match serde_json::to_vec(&snap) {
        Ok(b) => Response::json(b),
        Err(e) => Response::text(500, format!("{e}\n")),
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// Tells every MX and MSA node that the directory changed (best effort:
/// they also pull on their own every few seconds).
pub async fn push_change(config: &palisade_config::Config) {
    for (_, node) in config.node.iter().filter(|(_, n)| n.stage.is_edge()) {
        if let Some(addr) = node.metrics {
            let _ = crate::http::request(addr, "POST", "/directory/changed").await;
        }
    }
}
