//! DM10 client connection limit: simultaneous SMTP connections per client
//! address, and in total, on a listener.
//!
//! Each admitted session holds a slot until the SMTP engine reports its
//! end (`on_close`). The per-client count is per stage (the MSA's 587 and
//! 465 together: one submission service), whichever the backend:
//!
//! - **embedded**: this node's sessions;
//! - **Redis**: the pair's sessions: a sorted set per client of session ids
//!   scored by the end of a lease (`connection_lease`), which the node's
//!   heartbeat renews while the session lives. Admission drops expired
//!   leases and adds the new session in one Lua step, so two nodes never
//!   both take the last slot, and a node killed with sessions open frees
//!   them after one lease. While Redis is away the node counts its own
//!   sessions (each node of a pair then admits up to `per_client`).
//!
//! The total stays per node and per listener in both: it protects this
//! node's own capacity on that port.
//!
//! The counts live in the node's state backend, not in the policy, so a
//! reload (a new policy) keeps counting the sessions already open.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use palisade_smtp_proto::Reply;

use crate::state::SharedState;

/// The sessions open on this node.
#[derive(Default)]
struct Open(Mutex<Sessions>);

#[derive(Default)]
struct Sessions {
    /// Client -> its sessions as (listener, peer), on every listener.
    by_client: HashMap<IpAddr, Vec<(SocketAddr, SocketAddr)>>,
    /// Listener -> how many sessions it has open.
    by_listener: HashMap<SocketAddr, usize>,
}

enum Over {
    Client,
    Total,
}

impl Open {
    /// Records the session of `peer` if it is within the limits.
    fn admit(
        &self,
        listener: SocketAddr,
        peer: SocketAddr,
        per_client: usize,
        total: usize,
    ) -> Result<(), Over> {
        let mut open = self.0.lock().unwrap();
        if open.by_listener.get(&listener).copied().unwrap_or(0) >= total {
            return Err(Over::Total);
        }
        let mine = open.by_client.entry(peer.ip()).or_default();
        if mine.len() >= per_client {
            return Err(Over::Client);
        }
        mine.push((listener, peer));
        *open.by_listener.entry(listener).or_default() += 1;
        Ok(())
    }

    fn forget(&self, listener: SocketAddr, peer: SocketAddr) {
        let mut open = self.0.lock().unwrap();
        let Some(mine) = open.by_client.get_mut(&peer.ip()) else {
            return;
        };
        let Some(at) = mine.iter().position(|s| *s == (listener, peer)) else {
            return;
        };
        mine.swap_remove(at);
        if mine.is_empty() {
            open.by_client.remove(&peer.ip());
        }
        if let Some(n) = open.by_listener.get_mut(&listener) {
            *n -= 1;
            if *n == 0 {
                open.by_listener.remove(&listener);
            }
        }
    }
}

/// The DM10 limits of one policy, over the node's (or pair's) counts.
pub struct Connections {
    per_client: usize,
    total: usize,
    /// The pair counts a client's sessions per stage (`mx`, `msa`).
    scope: String,
    open: Arc<Open>,
    state: SharedState,
}

impl Connections {
    pub fn new(per_client: usize, total: usize, scope: &str, state: SharedState) -> Self {
        Connections {
            per_client,
            total,
            scope: scope.to_string(),
            open: state.local("DM10", Open::default),
            state,
        }
    }

    fn key(&self, ip: IpAddr) -> String {
        format!("{}:{ip}", self.scope)
    }

    /// The session's id in the shared count: unique between nodes,
    /// listeners and sessions.
    fn member(listener: SocketAddr, session: u64) -> String {
        format!("{}.{session}", listener.port())
    }

    /// Admits session `session` from `peer`, or refuses it with 421. An
    /// admitted session must be [`release`](Self::release)d when it ends.
    pub async fn admit(
        &self,
        listener: SocketAddr,
        peer: SocketAddr,
        session: u64,
    ) -> Option<Reply> {
        let ip = peer.ip();
        let member = Self::member(listener, session);
        let shared = self
            .state
            .acquire("DM10", &self.key(ip), &member, self.per_client)
            .await;
        if shared == Some(false) {
            return Some(too_many(Over::Client, ip));
        }
        // Admitted by the pair: only this node's total is left to check.
        let per_client = match shared {
            Some(true) => usize::MAX,
            _ => self.per_client,
        };
        match self.open.admit(listener, peer, per_client, self.total) {
            Ok(()) => None,
            Err(over) => {
                // Give back what `acquire` took (or holds for the
                // heartbeat while Redis is away).
                self.state.release("DM10", &self.key(ip), &member);
                Some(too_many(over, ip))
            }
        }
    }

    /// The admitted session has ended: its slot is free.
    pub fn release(&self, listener: SocketAddr, peer: SocketAddr, session: u64) {
        self.open.forget(listener, peer);
        let member = Self::member(listener, session);
        self.state.release("DM10", &self.key(peer.ip()), &member);
    }
}

fn too_many(over: Over, ip: IpAddr) -> Reply {
    Reply::closing_policy(match over {
        Over::Client => format!("Too many connections from {ip}"),
        Over::Total => "Too many connections".to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::RedisServer;
    use std::time::Duration;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn embedded_limits_per_client_and_total_and_frees_on_release() {
        let limits = Connections::new(2, 3, "mx", SharedState::embedded());
        let l = addr("127.0.0.1:25");
        let (a1, a2, a3) = (
            addr("192.0.2.1:1"),
            addr("192.0.2.1:2"),
            addr("192.0.2.1:3"),
        );
        assert!(limits.admit(l, a1, 1).await.is_none());
        assert!(limits.admit(l, a2, 2).await.is_none());
        let r = limits.admit(l, a3, 3).await.unwrap();
        assert_eq!(r.code, 421);
        assert!(r.to_string().contains("from 192.0.2.1"), "{r}");
        // Another client: within its own limit, then the total is reached.
        assert!(limits.admit(l, addr("192.0.2.2:1"), 4).await.is_none());
        let r = limits.admit(l, addr("192.0.2.3:1"), 5).await.unwrap();
        assert!(!r.to_string().contains("from"), "{r}");
        // Another listener of the stage: its own total, the same client
        // count (as with Redis: the MSA's 587 and 465 are one service).
        let other = addr("127.0.0.1:465");
        assert_eq!(limits.admit(other, a3, 1).await.unwrap().code, 421);
        assert!(limits.admit(other, addr("192.0.2.3:1"), 2).await.is_none());
        limits.release(l, a1, 1);
        assert!(limits.admit(other, a3, 3).await.is_none());
        assert_eq!(
            limits.admit(l, addr("192.0.2.1:4"), 7).await.unwrap().code,
            421
        );
        // Releasing a session that was never admitted changes nothing.
        limits.release(l, addr("192.0.2.9:9"), 99);
        limits.release(l, a2, 2);
        assert!(limits.admit(l, addr("192.0.2.1:5"), 8).await.is_none());
    }

    #[tokio::test]
    async fn a_new_policy_on_the_same_state_keeps_the_open_sessions() {
        let state = SharedState::embedded();
        let l = addr("127.0.0.1:25");
        let old = Connections::new(1, 10, "mx", state.clone());
        assert!(old.admit(l, addr("192.0.2.1:1"), 1).await.is_none());
        let reloaded = Connections::new(1, 10, "mx", state);
        assert_eq!(
            reloaded
                .admit(l, addr("192.0.2.1:2"), 2)
                .await
                .unwrap()
                .code,
            421
        );
        // The old policy's session ends: the new one sees it.
        old.release(l, addr("192.0.2.1:1"), 1);
        assert!(reloaded.admit(l, addr("192.0.2.1:3"), 3).await.is_none());
    }

    #[tokio::test]
    async fn redis_away_the_node_counts_its_own_sessions_and_says_so() {
        use crate::state::tests::Counted;
        use palisade_config::{Seconds, StateBackend, StateSettings};
        // Nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let settings = StateSettings {
            backend: StateBackend::Redis,
            url: format!("redis://127.0.0.1:{port}/0"),
            timeout: Seconds(0.05),
            ..StateSettings::default()
        };
        let sink = Arc::new(Counted::default());
        let state = SharedState::from_settings(&settings, "t", sink.clone()).unwrap();
        let limits = Connections::new(1, 10, "mx", state);
        let l = addr("127.0.0.1:25");
        assert!(limits.admit(l, addr("192.0.2.1:1"), 1).await.is_none());
        assert_eq!(
            limits.admit(l, addr("192.0.2.1:2"), 2).await.unwrap().code,
            421
        );
        assert!(
            sink.0.load(std::sync::atomic::Ordering::Relaxed) >= 2,
            "each local decision is counted"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_nodes_on_redis_share_the_per_client_limit() {
        let server = RedisServer::start();
        let mx1 = Connections::new(2, 100, "mx", server.state());
        let mx2 = Connections::new(2, 100, "mx", server.state());
        // (Both "nodes" are this process: their listeners differ.)
        let (l1, l2) = (addr("127.0.0.1:25"), addr("127.0.0.2:26"));
        let c = |p: u16| SocketAddr::new("192.0.2.1".parse().unwrap(), p);
        assert!(mx1.admit(l1, c(1), 1).await.is_none());
        assert!(mx2.admit(l2, c(2), 1).await.is_none());
        assert_eq!(mx1.admit(l1, c(3), 2).await.unwrap().code, 421);
        assert_eq!(mx2.admit(l2, c(4), 2).await.unwrap().code, 421);
        mx2.release(l2, c(2), 1);
        // The release is sent in the background.
        let mut admitted = false;
        for i in 0..50 {
            if mx1.admit(l1, c(5), 10 + i).await.is_none() {
                admitted = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(admitted, "a released slot is free on the other node");
    }
}
