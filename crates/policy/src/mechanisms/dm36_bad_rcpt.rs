//! DM36 bad-RCPT throttle against directory harvesting: after
//! `tarpit_after` unknown recipients in a session every further RCPT waits
//! `tarpit_delay` (a harvester's cost grows, a typo costs nothing), and at
//! `disconnect_after` the session gets `421 4.7.0` and is closed.
//!
//! With `client_window` the count is the client's, across its sessions
//! (and across a pair's nodes with the Redis state backend, see
//! `Policy::on_unknown_recipient`): reconnecting does not start over.

use std::time::Duration;

use palisade_config::Dm36BadRcpt;
use palisade_smtp_proto::Reply;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Throttle {
    None,
    Delay(Duration),
    Disconnect(Reply),
}

/// What to do now that the session has had `bad` unknown recipients.
pub fn after_bad_rcpt(c: &Dm36BadRcpt, bad: u32) -> Throttle {
    if bad >= c.disconnect_after {
        Throttle::Disconnect(Reply::closing_policy(
            "Too many unknown recipients; closing connection",
        ))
    } else if bad > c.tarpit_after {
        Throttle::Delay(c.tarpit_delay.duration())
    } else {
        Throttle::None
    }
}

/// The delay before handling any RCPT of a session already over the
/// tarpit threshold.
pub fn before_rcpt(c: &Dm36BadRcpt, bad: u32) -> Option<Duration> {
    (bad >= c.tarpit_after && bad > 0).then(|| c.tarpit_delay.duration())
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_config::Seconds;

    #[test]
    fn throttle_then_disconnect() {
        let c = Dm36BadRcpt {
            enabled: true,
            tarpit_after: 2,
            tarpit_delay: Seconds(0.5),
            disconnect_after: 4,
            client_window: Seconds(0.0),
        };
        assert_eq!(after_bad_rcpt(&c, 1), Throttle::None);
        assert_eq!(
            after_bad_rcpt(&c, 3),
            Throttle::Delay(Duration::from_millis(500))
        );
        assert!(matches!(after_bad_rcpt(&c, 4), Throttle::Disconnect(r) if r.code == 421));
        assert!(before_rcpt(&c, 1).is_none());
        assert!(before_rcpt(&c, 2).is_some());
    }
}
