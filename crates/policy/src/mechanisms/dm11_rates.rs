//! DM11 client rate limit: connections and messages per client address per
//! minute, as GCRA token buckets (`governor`): a client may burst up to the
//! per-minute figure, then gets one more every 60/n seconds. Over the limit
//! the client gets `421 4.7.0` and the session closes (SPEC §5).

use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use palisade_config::Dm11Rates;
use palisade_smtp_proto::Reply;

pub struct ClientRates {
    connections: DefaultKeyedRateLimiter<IpAddr>,
    messages: DefaultKeyedRateLimiter<IpAddr>,
}

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n.max(1)).expect("max(1)"))
}

impl ClientRates {
    pub fn new(c: &Dm11Rates) -> Self {
        ClientRates {
            connections: RateLimiter::keyed(per_minute(c.connections_per_minute)),
            messages: RateLimiter::keyed(per_minute(c.messages_per_minute)),
        }
    }

    pub fn connection(&self, ip: IpAddr) -> Option<Reply> {
        self.connections
            .check_key(&ip)
            .err()
            .map(|_| Reply::closing_policy(format!("Connection rate limit exceeded for {ip}")))
    }

    pub fn message(&self, ip: IpAddr) -> Option<Reply> {
        self.messages
            .check_key(&ip)
            .err()
            .map(|_| Reply::closing_policy(format!("Message rate limit exceeded for {ip}")))
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

    #[test]
    fn third_connection_in_a_minute_is_refused_with_421() {
        let r = ClientRates::new(&Dm11Rates {
            enabled: true,
            connections_per_minute: 2,
            messages_per_minute: 5,
        });
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(r.connection(ip).is_none());
        assert!(r.connection(ip).is_none());
        assert_eq!(r.connection(ip).unwrap().code, 421);
        assert!(r.connection("192.0.2.2".parse().unwrap()).is_none());
    }
}
