//! DM27 honey pots (spamtraps): addresses no person uses, published where
//! only harvesters find them. A client that writes to one is a spammer: the
//! RCPT is refused and the client's address is blacklisted for
//! `blacklist_for` (every later command of it gets `554 5.7.1`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use palisade_config::Dm27Spamtraps;
use palisade_smtp_proto::Reply;

pub struct Spamtraps {
    addresses: Vec<String>,
    blacklist_for: Duration,
    caught: Mutex<HashMap<IpAddr, Instant>>,
}

impl Spamtraps {
    pub fn new(c: &Dm27Spamtraps) -> Self {
        Spamtraps {
            addresses: c.addresses.iter().map(|a| a.to_ascii_lowercase()).collect(),
            blacklist_for: c.blacklist_for.duration(),
            caught: Mutex::default(),
        }
    }

    /// `Some` when `rcpt` is a trap: the client is now blacklisted.
    pub fn check_rcpt(&self, ip: IpAddr, rcpt: &str) -> Option<Reply> {
        let r = rcpt.trim_end_matches('.').to_ascii_lowercase();
        if !self.addresses.contains(&r) {
            return None;
        }
        let until = Instant::now() + self.blacklist_for;
        let mut caught = self.caught.lock().unwrap();
        caught.retain(|_, t| *t > Instant::now());
        caught.insert(ip, until);
        Some(Reply::enhanced(
            554,
            (5, 7, 1),
            format!("<{rcpt}>: Recipient address rejected: Access denied"),
        ))
    }

    /// `Some` while the client is blacklisted by a trap hit.
    pub fn check_client(&self, ip: IpAddr) -> Option<Reply> {
        let caught = self.caught.lock().unwrap();
        caught.get(&ip).filter(|t| **t > Instant::now()).map(|_| {
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

    #[test]
    fn trap_hit_blacklists_the_client_for_a_while() {
        let t = Spamtraps::new(&Dm27Spamtraps {
            enabled: true,
            addresses: vec!["Trap@example.test".into()],
            blacklist_for: Seconds(0.2),
        });
        let ip: IpAddr = "192.0.2.5".parse().unwrap();
        assert!(t.check_client(ip).is_none());
        assert!(t.check_rcpt(ip, "alice@example.test").is_none());
        assert_eq!(t.check_rcpt(ip, "trap@EXAMPLE.test").unwrap().code, 554);
        assert_eq!(t.check_client(ip).unwrap().code, 554);
        assert!(t.check_client("192.0.2.6".parse().unwrap()).is_none());
        std::thread::sleep(Duration::from_millis(250));
        assert!(t.check_client(ip).is_none());
    }
}
