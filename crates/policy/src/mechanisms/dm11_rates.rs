//! DM11 client rate limit: connections and messages per client address per
//! minute, as GCRA token buckets: a client may burst up to the per-minute
//! figure, then gets one more every 60/n seconds. Over the limit the client
//! gets `421 4.7.0` and the session closes (SPEC §5).
//!
//! With a shared state backend the buckets live in Redis, so a client's
//! connections to both nodes of a pair count against one limit; while
//! Redis is away each node falls back to its own buckets (`governor`).
//! Those are the node's (kept across reloads while the limit is the same).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use palisade_config::Dm11Rates;
use palisade_smtp_proto::Reply;

use crate::state::SharedState;

pub struct ClientRates {
    settings: Dm11Rates,
    connections: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    messages: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    state: SharedState,
}

const MINUTE: Duration = Duration::from_secs(60);

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n.max(1)).expect("max(1)"))
}

impl ClientRates {
    pub fn new(c: &Dm11Rates, state: SharedState) -> Self {
        let bucket = |kind: &str, n: u32| {
            state.local(&format!("DM11:{kind}:{n}"), || {
                RateLimiter::keyed(per_minute(n))
            })
        };
        ClientRates {
            settings: c.clone(),
            connections: bucket("conn", c.connections_per_minute),
            messages: bucket("msg", c.messages_per_minute),
            state,
        }
    }

    pub async fn connection(&self, ip: IpAddr) -> Option<Reply> {
        let n = self.settings.connections_per_minute;
        self.limit("conn", &self.connections, n, ip, "Connection")
            .await
    }

    pub async fn message(&self, ip: IpAddr) -> Option<Reply> {
        let n = self.settings.messages_per_minute;
        self.limit("msg", &self.messages, n, ip, "Message").await
    }

    /// The shared bucket `kind:ip` when the backend answers, else this
    /// node's.
    async fn limit(
        &self,
        kind: &str,
        local: &DefaultKeyedRateLimiter<IpAddr>,
        n: u32,
        ip: IpAddr,
        what: &str,
    ) -> Option<Reply> {
        let shared = self
            .state
            .rate("DM11", &format!("{kind}:{ip}"), n, MINUTE)
            .await;
        let allowed = shared.unwrap_or_else(|| local.check_key(&ip).is_ok());
        (!allowed).then(|| Reply::closing_policy(format!("{what} rate limit exceeded for {ip}")))
    }

    /// Forgets clients whose buckets are full again (bounded memory).
    pub fn prune(&self) {
        self.connections.retain_recent();
        self.messages.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::RedisServer;

    fn settings() -> Dm11Rates {
        Dm11Rates {
            enabled: true,
            connections_per_minute: 2,
            messages_per_minute: 5,
        }
    }

    #[tokio::test]
    async fn third_connection_in_a_minute_is_refused_with_421() {
        let r = ClientRates::new(&settings(), SharedState::embedded());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(r.connection(ip).await.is_none());
        assert!(r.connection(ip).await.is_none());
        assert_eq!(r.connection(ip).await.unwrap().code, 421);
        assert!(r.connection("192.0.2.2".parse().unwrap()).await.is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_nodes_sharing_redis_count_one_limit() {
        let server = RedisServer::start();
        let mx1 = ClientRates::new(&settings(), server.state());
        let mx2 = ClientRates::new(&settings(), server.state());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(mx1.connection(ip).await.is_none());
        assert!(mx2.connection(ip).await.is_none());
        assert_eq!(mx1.connection(ip).await.unwrap().code, 421);
        assert_eq!(mx2.connection(ip).await.unwrap().code, 421);
    }
}
