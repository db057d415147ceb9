//! DM27 honey pots (spamtraps): addresses no person uses, published where
//! only harvesters find them. A client that writes to one is a spammer: the
//! RCPT is refused and the client's address is blacklisted for
//! `blacklist_for` (every later command of it gets `554 5.7.1`).
//!
//! With a shared state backend the blacklisting is pair-wide (a Redis key
//! per caught client, expiring with `blacklist_for`): a spammer caught by
//! mx-1 is refused by mx-2 too. Hits are also kept on this node, which
//! decides alone while Redis is away.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use palisade_config::Dm27Spamtraps;
use palisade_smtp_proto::Reply;

use crate::state::SharedState;

pub struct Spamtraps {
    addresses: Vec<String>,
    blacklist_for: Duration,
    /// This node's catches (kept across reloads).
    caught: Arc<Mutex<HashMap<IpAddr, Instant>>>,
    state: SharedState,
}

impl Spamtraps {
    pub fn new(c: &Dm27Spamtraps, state: SharedState) -> Self {
        Spamtraps {
            addresses: c.addresses.iter().map(|a| a.to_ascii_lowercase()).collect(),
            blacklist_for: c.blacklist_for.duration(),
            caught: state.local("DM27", Mutex::default),
            state,
        }
    }

    /// `Some` when `rcpt` is a trap: the client is now blacklisted.
    pub async fn check_rcpt(&self, ip: IpAddr, rcpt: &str) -> Option<Reply> {
        let r = rcpt.trim_end_matches('.').to_ascii_lowercase();
        if !self.addresses.contains(&r) {
            return None;
        }
        let until = Instant::now() + self.blacklist_for;
        {
            let mut caught = self.caught.lock().unwrap();
            caught.retain(|_, t| *t > Instant::now());
            caught.insert(ip, until);
        }
        self.state
            .set("DM27", &ip.to_string(), rcpt, self.blacklist_for, false)
            .await;
        Some(Reply::enhanced(
            554,
            (5, 7, 1),
            format!("<{rcpt}>: Recipient address rejected: Access denied"),
        ))
    }

    /// `Some` while the client is blacklisted by a trap hit.
    pub async fn check_client(&self, ip: IpAddr) -> Option<Reply> {
        let here = self
            .caught
            .lock()
            .unwrap()
            .get(&ip)
            .is_some_and(|t| *t > Instant::now());
        let caught = here || {
            let v = self.state.get("DM27", &ip.to_string()).await;
            matches!(v, Some(Some(_)))
        };
        caught.then(|| {
            Reply::enhanced(
                554,
                (5, 7, 1),
                format!("Client host [{ip}] blocked: spamtrap hit"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_config::Seconds;

    fn traps(state: SharedState) -> Spamtraps {
        Spamtraps::new(
            &Dm27Spamtraps {
                enabled: true,
                addresses: vec!["Trap@example.test".into()],
                blacklist_for: Seconds(0.2),
            },
            state,
        )
    }

    #[tokio::test]
    async fn trap_hit_blacklists_the_client_for_a_while() {
        let t = traps(SharedState::embedded());
        let ip: IpAddr = "192.0.2.5".parse().unwrap();
        assert!(t.check_client(ip).await.is_none());
        assert!(t.check_rcpt(ip, "alice@example.test").await.is_none());
        assert_eq!(
            t.check_rcpt(ip, "trap@EXAMPLE.test").await.unwrap().code,
            554
        );
        assert_eq!(t.check_client(ip).await.unwrap().code, 554);
        assert!(t.check_client("192.0.2.6".parse().unwrap()).await.is_none());
        std::thread::sleep(Duration::from_millis(250));
        assert!(t.check_client(ip).await.is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_caught_on_one_node_is_refused_by_the_other() {
        let server = crate::state::tests::RedisServer::start();
        let (mx1, mx2) = (traps(server.state()), traps(server.state()));
        let ip: IpAddr = "192.0.2.5".parse().unwrap();
        assert!(mx1.check_rcpt(ip, "trap@example.test").await.is_some());
        assert_eq!(mx2.check_client(ip).await.unwrap().code, 554);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            mx2.check_client(ip).await.is_none(),
            "expires with blacklist_for"
        );
    }
}
