//! The policy-state backend (issue 9): where the per-client state of the
//! defense mechanisms lives.
//!
//! - **Embedded** (default): each mechanism keeps its own state on this
//!   node (governor buckets, maps in memory, the greylist in LMDB).
//! - **Redis** (`[gateway.state] backend = "redis"`): the nodes of a pair
//!   (or a whole site) share it, so a pair acts as one: a triplet that
//!   passed greylisting on mx-1 passes on mx-2, a client's rate counts its
//!   connections to both.
//!
//! Every shared operation is one atomic server-side step (a Lua script or
//! `SET NX PX`), so two nodes never race on a key, and uses the Redis
//! server's clock (`TIME`), so the nodes' clocks need not agree.
//!
//! Each node builds its [`SharedState`] once and hands it to every policy
//! a reload builds: the Redis connection and this node's own counters
//! ([`SharedState::local`]) outlive a SIGHUP, so a client at its limit
//! stays at it.
//!
//! # Failure modes
//! Redis unreachable, slow (past `timeout`) or erroring: the operation
//! returns `None` and the mechanism decides from its local state (see the
//! degradation table in docs/mechanisms-state.md). Each such decision
//! counts `palisade_state_backend_degraded_total{mechanism}`; the switch
//! to local state and the way back are logged once each. After a failure
//! Redis is not asked again for `retry_after`, so a dead Redis costs one
//! `timeout` per `retry_after`, not one per command; the connection
//! manager reconnects by itself.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use palisade_config::{StateBackend, StateSettings};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use tracing::{info, warn};

/// Told when a mechanism decided from local state because the shared
/// backend did not answer (the stage counts a metric).
pub trait DegradedSink: Send + Sync {
    fn degraded(&self, mechanism: &'static str);
}

/// GCRA (generic cell rate algorithm, as `governor` runs it locally): a
/// bucket of `burst` cells refilled one per `emission` ms; the key holds
/// the theoretical arrival time. Returns 1 when the event is allowed.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local emission = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + emission
if new_tat - now > emission * burst then return 0 end
redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now)
return 1
";

/// Sliding-window event count in a sorted set scored by server time:
/// drops events older than the window, records one when ARGV[2] is 1,
/// returns the count.
const EVENTS: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if ARGV[2] == '1' then
  redis.call('ZADD', KEYS[1], now, t[1] .. '.' .. t[2] .. '.' .. ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
end
return redis.call('ZCARD', KEYS[1])
";

/// DM10 slot of one live session: a sorted set per client whose members
/// are session ids scored by the end of their lease. Expired leases (a
/// node killed with sessions open) are dropped here, in the same atomic
/// step that admits, so a dead node's slots free themselves. Returns 1
/// when admitted.
const ACQUIRE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + lease, ARGV[3])
redis.call('PEXPIRE', KEYS[1], lease)
return 1
";

/// The heartbeat of a node's live sessions: renews the lease of every
/// member in ARGV[3..]. Only members still there (XX): a session that
/// ended between the heartbeat's snapshot and this call stays released.
/// ARGV[2] = '1' after Redis was away: members it lost are added back.
const RENEW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
for i = 3, #ARGV do
  if ARGV[2] == '1' then
    redis.call('ZADD', KEYS[1], now + lease, ARGV[i])
  else
    redis.call('ZADD', KEYS[1], 'XX', now + lease, ARGV[i])
  end
end
redis.call('PEXPIRE', KEYS[1], lease)
return #ARGV - 2
";

/// The policy-state backend of one node: Redis shared by the pair, or
/// none (embedded), and this node's own state either way. Cheap to clone.
#[derive(Clone)]
pub struct SharedState {
    inner: Option<Arc<Redis>>,
    local: Arc<Local>,
}

/// This node's own state of the mechanisms, by name: the embedded backend,
/// and the fallback while Redis is away. It belongs to the node, not to a
/// policy, so it survives reloads.
#[derive(Default)]
pub struct Local {
    parts: Mutex<HashMap<String, Arc<dyn Any + Send + Sync>>>,
}

struct Redis {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    retry_after: Duration,
    /// Redis is not asked before this instant (after a failure).
    paused_until: Mutex<Option<Instant>>,
    degraded: AtomicBool,
    /// Redis failed since the last heartbeat: the next one adds back the
    /// sessions it may have lost (or that were admitted locally meanwhile).
    readd: AtomicBool,
    /// Makes sorted-set members unique between nodes and tasks.
    tag: String,
    seq: AtomicU64,
    gcra: Script,
    events: Script,
    acquire: Script,
    renew: Script,
    /// How long a DM10 slot lives without a heartbeat.
    lease: Duration,
    /// The DM10 slots this node's sessions hold: key -> members, renewed
    /// by the heartbeat.
    held: Mutex<HashMap<String, Vec<String>>>,
    sink: Arc<dyn DegradedSink>,
}

impl SharedState {
    /// No shared backend: every mechanism keeps its state on this node.
    pub fn embedded() -> Self {
        SharedState {
            inner: None,
            local: Arc::default(),
        }
    }

    /// The backend `[gateway.state]` names. Redis is connected lazily (and
    /// again after it went away): a node starts while Redis is down.
    /// Must be called inside a tokio runtime.
    pub fn from_settings(
        s: &StateSettings,
        node: &str,
        sink: Arc<dyn DegradedSink>,
    ) -> anyhow::Result<Self> {
        Self::embedded().reconfigured(s, node, sink)
    }

    /// The backend `s` names, keeping this node's local state (a reload
    /// that changed `[gateway.state]`).
    pub fn reconfigured(
        &self,
        s: &StateSettings,
        node: &str,
        sink: Arc<dyn DegradedSink>,
    ) -> anyhow::Result<Self> {
        let local = self.local.clone();
        if s.backend == StateBackend::Embedded {
            return Ok(SharedState { inner: None, local });
        }
        let timeout = s.timeout.duration();
        let client = redis::Client::open(s.url.as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // One quick retry; past it we fall back and come back later.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        let redis = Arc::new(Redis {
            conn,
            prefix: s.key_prefix.clone(),
            timeout,
            retry_after: s.retry_after.duration(),
            paused_until: Mutex::new(None),
            degraded: AtomicBool::new(false),
            readd: AtomicBool::new(false),
            tag: format!("{node}.{}", std::process::id()),
            seq: AtomicU64::new(0),
            gcra: Script::new(GCRA),
            events: Script::new(EVENTS),
            acquire: Script::new(ACQUIRE),
            renew: Script::new(RENEW),
            lease: s.connection_lease.duration(),
            held: Mutex::default(),
            sink,
        });
        tokio::spawn(heartbeat(Arc::downgrade(&redis)));
        Ok(SharedState {
            inner: Some(redis),
            local,
        })
    }

    /// This node's part `name` (made by `make` the first time): state a
    /// mechanism keeps across reloads, e.g. its local buckets. A name whose
    /// part has another type (a reload changed the mechanism's limits and
    /// the name says so) gets a new one.
    pub fn local<T: Any + Send + Sync>(&self, name: &str, make: impl FnOnce() -> T) -> Arc<T> {
        let mut parts = self.local.parts.lock().unwrap();
        if let Some(part) = parts.get(name).and_then(|p| p.clone().downcast::<T>().ok()) {
            return part;
        }
        let part = Arc::new(make());
        parts.insert(name.to_string(), part.clone());
        part
    }

    /// Takes one of at most `limit` slots of `key` for `member` (a live
    /// session), held until [`release`](Self::release) or, should this
    /// node die, until its lease runs out. `None` = decide locally.
    pub async fn acquire(
        &self,
        mechanism: &'static str,
        key: &str,
        member: &str,
        limit: usize,
    ) -> Option<bool> {
        let r = self.inner.as_ref()?;
        let key = r.key(mechanism, key);
        let member = r.member(member);
        let lease = (r.lease.as_millis() as u64).max(1);
        let (k, m) = (key.clone(), member.clone());
        let admitted = r
            .run(mechanism, |mut c| async move {
                r.acquire
                    .key(k)
                    .arg(lease)
                    .arg(limit)
                    .arg(m)
                    .invoke_async::<i64>(&mut c)
                    .await
                    .map(|v| v == 1)
            })
            .await;
        // A session admitted locally while Redis is away is held too: the
        // heartbeat adds it to Redis once it answers again.
        if admitted != Some(false) {
            let mut held = r.held.lock().unwrap();
            held.entry(key).or_default().push(member);
        }
        admitted
    }

    /// Gives the slot of `member` back (in the background: the caller is
    /// a session that ended). A Redis that is away lets the lease run out.
    pub fn release(&self, mechanism: &'static str, key: &str, member: &str) {
        let Some(r) = self.inner.clone() else {
            return;
        };
        let key = r.key(mechanism, key);
        let member = r.member(member);
        {
            let mut held = r.held.lock().unwrap();
            if let Some(members) = held.get_mut(&key) {
                members.retain(|m| *m != member);
                if members.is_empty() {
                    held.remove(&key);
                }
            }
        }
        if r.paused() {
            return; // its lease runs out
        }
        tokio::spawn(async move {
            r.run(mechanism, |mut c| async move {
                redis::cmd("ZREM")
                    .arg(key)
                    .arg(member)
                    .query_async::<i64>(&mut c)
                    .await
            })
            .await;
        });
    }

    /// Whether a shared backend is configured (it may be down).
    pub fn is_shared(&self) -> bool {
        self.inner.is_some()
    }

    /// Token bucket `key`: `burst` events at once, then one per `period /
    /// burst`. `Some(true)` = allowed; `None` = decide locally.
    pub async fn rate(
        &self,
        mechanism: &'static str,
        key: &str,
        burst: u32,
        period: Duration,
    ) -> Option<bool> {
        let r = self.inner.as_ref()?;
        let burst = burst.max(1);
        let emission = (period.as_millis() as u64 / burst as u64).max(1);
        let key = r.key(mechanism, key);
        r.run(mechanism, |mut c| async move {
            r.gcra
                .key(key)
                .arg(emission)
                .arg(burst)
                .invoke_async::<i64>(&mut c)
                .await
                .map(|v| v == 1)
        })
        .await
    }

    /// Records one event of `key` and returns how many happened within
    /// `window` (this one included); `None` = decide locally.
    pub async fn record_event(
        &self,
        mechanism: &'static str,
        key: &str,
        window: Duration,
    ) -> Option<u32> {
        self.events(mechanism, key, window, true).await
    }

    /// Events of `key` within `window`; `None` = decide locally.
    pub async fn count_events(
        &self,
        mechanism: &'static str,
        key: &str,
        window: Duration,
    ) -> Option<u32> {
        self.events(mechanism, key, window, false).await
    }

    async fn events(
        &self,
        mechanism: &'static str,
        key: &str,
        window: Duration,
        record: bool,
    ) -> Option<u32> {
        let r = self.inner.as_ref()?;
        let key = r.key(mechanism, key);
        let member = format!("{}.{}", r.tag, r.seq.fetch_add(1, Ordering::Relaxed));
        let window = (window.as_millis() as u64).max(1);
        r.run(mechanism, |mut c| async move {
            r.events
                .key(key)
                .arg(window)
                .arg(if record { "1" } else { "0" })
                .arg(member)
                .invoke_async::<u32>(&mut c)
                .await
        })
        .await
    }

    /// Sets `key` to `value` for `ttl`; with `only_new`, only if it does not
    /// exist (`SET NX`: the first of two racing nodes wins). `Some(true)`
    /// when it was set.
    pub async fn set(
        &self,
        mechanism: &'static str,
        key: &str,
        value: &str,
        ttl: Duration,
        only_new: bool,
    ) -> Option<bool> {
        let r = self.inner.as_ref()?;
        let key = r.key(mechanism, key);
        let ttl = (ttl.as_millis() as u64).max(1);
        r.run(mechanism, |mut c| async move {
            let mut cmd = redis::cmd("SET");
            cmd.arg(key).arg(value).arg("PX").arg(ttl);
            if only_new {
                cmd.arg("NX");
            }
            cmd.query_async::<Option<String>>(&mut c)
                .await
                .map(|v| v.is_some())
        })
        .await
    }

    /// The value of `key`: `Some(None)` when absent, `None` = unknown
    /// (decide locally).
    pub async fn get(&self, mechanism: &'static str, key: &str) -> Option<Option<String>> {
        let r = self.inner.as_ref()?;
        let key = r.key(mechanism, key);
        r.run(mechanism, |mut c| async move {
            redis::cmd("GET")
                .arg(key)
                .query_async::<Option<String>>(&mut c)
                .await
        })
        .await
    }
}

/// Recent events per key on this node only (sliding window): the embedded
/// backend of [`Events`], and its fallback when Redis is away. Memory is
/// bounded: past `MAX_KEYS` keys, those without recent events go.
#[derive(Default)]
pub struct LocalEvents {
    all: Mutex<HashMap<String, VecDeque<Instant>>>,
}

const MAX_KEYS: usize = 100_000;

impl LocalEvents {
    /// Events of `key` within `window` (pruning older ones).
    pub fn count(&self, key: &str, window: Duration) -> u32 {
        let mut all = self.all.lock().unwrap();
        let Some(list) = all.get_mut(key) else {
            return 0;
        };
        while list.front().is_some_and(|t| t.elapsed() > window) {
            list.pop_front();
        }
        list.len() as u32
    }

    pub fn record(&self, key: &str, window: Duration) -> u32 {
        {
            let mut all = self.all.lock().unwrap();
            if all.len() > MAX_KEYS {
                // A distributed attack: forget the clients gone quiet.
                all.retain(|_, l| l.back().is_some_and(|t| t.elapsed() <= window));
            }
            all.entry(key.to_string())
                .or_default()
                .push_back(Instant::now());
        }
        self.count(key, window)
    }
}

/// Counted events of one mechanism (bad recipients, failed AUTH), shared
/// when the backend is Redis. Every event is also recorded on this node,
/// so when Redis goes away the local count starts from this node's own
/// history instead of from zero.
pub struct Events {
    mechanism: &'static str,
    state: SharedState,
    local: Arc<LocalEvents>,
}

impl Events {
    pub fn new(mechanism: &'static str, state: SharedState) -> Self {
        Events {
            mechanism,
            local: state.local(mechanism, LocalEvents::default),
            state,
        }
    }

    /// Records one event of `key`; returns the events within `window`.
    pub async fn record(&self, key: &str, window: Duration) -> u32 {
        let local = self.local.record(key, window);
        match self.state.record_event(self.mechanism, key, window).await {
            Some(shared) => shared.max(local),
            None => local,
        }
    }

    pub async fn count(&self, key: &str, window: Duration) -> u32 {
        let local = self.local.count(key, window);
        match self.state.count_events(self.mechanism, key, window).await {
            Some(shared) => shared.max(local),
            None => local,
        }
    }
}

/// Renews the leases of the node's live DM10 sessions every third of the
/// lease, until the backend is dropped.
async fn heartbeat(redis: Weak<Redis>) {
    let period = match redis.upgrade() {
        Some(r) => (r.lease / 3).max(Duration::from_millis(100)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(r) = redis.upgrade() else {
            return;
        };
        if r.paused() {
            // Away: no decision was taken, so nothing to count; the next
            // beat after `retry_after` renews (or re-adds) every slot.
            continue;
        }
        let held: Vec<(String, Vec<String>)> = r
            .held
            .lock()
            .unwrap()
            .iter()
            .map(|(k, m)| (k.clone(), m.clone()))
            .collect();
        let lease = (r.lease.as_millis() as u64).max(1);
        let readd = if r.readd.swap(false, Ordering::Relaxed) {
            "1"
        } else {
            "0"
        };
        for (key, members) in held {
            let renew = &r.renew;
            let done = r
                .run("DM10", |mut c| async move {
                    let mut call = renew.key(key);
                    call.arg(lease).arg(readd);
                    for m in &members {
                        call.arg(m);
                    }
                    call.invoke_async::<i64>(&mut c).await
                })
                .await;
            if done.is_none() {
                // Away: the others wait for the next beat.
                break;
            }
        }
    }
}

impl Redis {
    fn key(&self, mechanism: &str, key: &str) -> String {
        format!("{}{}:{key}", self.prefix, mechanism.to_ascii_lowercase())
    }

    /// Not to be asked (a failure less than `retry_after` ago).
    fn paused(&self) -> bool {
        self.paused_until
            .lock()
            .unwrap()
            .is_some_and(|t| Instant::now() < t)
    }

    /// `member` made unique between the nodes sharing this Redis.
    fn member(&self, member: &str) -> String {
        format!("{}.{member}", self.tag)
    }

    /// Runs one command unless Redis is paused after a failure; any error
    /// or a reply slower than `timeout` pauses it and returns `None`.
    async fn run<T, F, Fut>(&self, mechanism: &'static str, op: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if self.paused() {
            self.sink.degraded(mechanism);
            return None;
        }
        let outcome = tokio::time::timeout(self.timeout, op(self.conn.clone())).await;
        match outcome {
            Ok(Ok(v)) => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    info!("state backend: Redis answers again; shared state resumed");
                }
                Some(v)
            }
            Ok(Err(e)) => {
                self.failed(mechanism, &e.to_string());
                None
            }
            Err(_) => {
                self.failed(mechanism, &format!("no reply within {:?}", self.timeout));
                None
            }
        }
    }

    fn failed(&self, mechanism: &'static str, why: &str) {
        *self.paused_until.lock().unwrap() = Some(Instant::now() + self.retry_after);
        self.readd.store(true, Ordering::Relaxed);
        if !self.degraded.swap(true, Ordering::Relaxed) {
            warn!(
                "state backend: Redis unreachable ({why}); {mechanism} and the other \
                 mechanisms use this node's local state until it is back"
            );
        }
        self.sink.degraded(mechanism);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! Against a real redis-server (the Debian package) on a loopback port.

    use super::*;
    use std::process::{Child, Command, Stdio};

    pub struct RedisServer {
        child: Child,
        pub port: u16,
        dir: std::path::PathBuf,
    }

    impl RedisServer {
        pub fn start() -> RedisServer {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let dir = std::env::temp_dir().join(format!("palisade-redis-{port}"));
            std::fs::create_dir_all(&dir).unwrap();
            let child = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&dir)
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server (Debian package redis-server) must be installed");
            for _ in 0..100 {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            RedisServer { child, port, dir }
        }

        pub fn state(&self) -> SharedState {
            let s = StateSettings {
                backend: StateBackend::Redis,
                url: format!("redis://127.0.0.1:{}/0", self.port),
                timeout: palisade_config::Seconds(0.5),
                ..StateSettings::default()
            };
            SharedState::from_settings(&s, "test", Arc::new(Counted::default())).unwrap()
        }
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[derive(Default)]
    pub struct Counted(pub AtomicU64);

    impl DegradedSink for Counted {
        fn degraded(&self, _mechanism: &'static str) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn gcra_two_racing_tasks_never_exceed_the_burst() {
        let server = RedisServer::start();
        // Two nodes: two connection managers on one key.
        let (a, b) = (server.state(), server.state());
        let race = |s: SharedState| {
            tokio::spawn(async move {
                let mut allowed = 0;
                for _ in 0..40 {
                    if s.rate("DM11", "race", 25, Duration::from_secs(3600))
                        .await
                        .unwrap()
                    {
                        allowed += 1;
                    }
                }
                allowed
            })
        };
        let (x, y) = (race(a), race(b));
        let total = x.await.unwrap() + y.await.unwrap();
        assert_eq!(total, 25, "exactly the burst passes, whoever asks");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_from_racing_tasks_are_all_counted() {
        let server = RedisServer::start();
        let (a, b) = (server.state(), server.state());
        let race = |s: SharedState| {
            tokio::spawn(async move {
                for _ in 0..100 {
                    s.record_event("DM36", "ip", Duration::from_secs(60))
                        .await
                        .unwrap();
                }
            })
        };
        let (x, y) = (race(a.clone()), race(b));
        x.await.unwrap();
        y.await.unwrap();
        let n = a
            .count_events("DM36", "ip", Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(n, 200);
        // Another key is another client.
        assert_eq!(
            a.count_events("DM36", "other", Duration::from_secs(60))
                .await
                .unwrap(),
            0
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn set_nx_has_one_winner_among_racing_tasks() {
        let server = RedisServer::start();
        let mut tasks = Vec::new();
        for i in 0..8 {
            let s = server.state();
            tasks.push(tokio::spawn(async move {
                s.set("DM22", "t", &i.to_string(), Duration::from_secs(60), true)
                    .await
                    .unwrap()
            }));
        }
        let mut winners = 0;
        for t in tasks {
            winners += t.await.unwrap() as u32;
        }
        assert_eq!(winners, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frozen_redis_costs_one_timeout_then_nothing_and_comes_back() {
        let server = RedisServer::start();
        let sink = Arc::new(Counted::default());
        let s = StateSettings {
            backend: StateBackend::Redis,
            url: format!("redis://127.0.0.1:{}/0", server.port),
            timeout: palisade_config::Seconds(0.05),
            retry_after: palisade_config::Seconds(0.3),
            ..StateSettings::default()
        };
        let state = SharedState::from_settings(&s, "t", sink.clone()).unwrap();
        assert_eq!(
            state
                .set("DM27", "k", "1", Duration::from_secs(60), false)
                .await,
            Some(true)
        );
        // Frozen (SIGSTOP): like a dead host, the port answers nothing.
        // (Keeping the port held avoids another test taking it meanwhile.)
        let pid = server.child.id().to_string();
        let signal = |sig: &str| {
            let ok = Command::new("kill").args([sig, &pid]).status().unwrap();
            assert!(ok.success());
        };
        signal("-STOP");
        let started = Instant::now();
        for _ in 0..50 {
            assert!(state.get("DM27", "k").await.is_none());
        }
        // 50 commands each waiting the 50 ms timeout would take 2.5 s.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "50 decisions with Redis frozen took {:?}",
            started.elapsed()
        );
        assert_eq!(sink.0.load(Ordering::Relaxed), 50, "every fallback counted");
        signal("-CONT");
        let mut back = false;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if state.get("DM27", "k").await.is_some() {
                back = true;
                break;
            }
        }
        assert!(back, "state backend did not come back");
    }
}
