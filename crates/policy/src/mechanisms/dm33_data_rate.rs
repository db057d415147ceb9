//! DM33 data rate limit of each SMTP flow. The engine hands the message
//! over whole, so the rate is measured per message: bytes over the time
//! since the transaction's last RCPT (DATA follows it at once, pipelined or
//! not). A flow above `bytes_per_second` is slowed: its final reply is held
//! until the flow's average is back at the limit, so a bulk sender cannot
//! push mail faster than the rate however it sends. With `action = cut`
//! the message is refused with `421 4.7.0` and the session closed.

use std::time::Duration;

use palisade_config::{DataRateAction, Dm33DataRate};
use palisade_smtp_proto::Reply;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RateVerdict {
    Within,
    Slow(Duration),
    Cut(Reply),
}

pub fn check(c: &Dm33DataRate, bytes: usize, elapsed: Duration) -> RateVerdict {
    let allowed = Duration::from_secs_f64(bytes as f64 / c.bytes_per_second.max(1) as f64);
    if elapsed >= allowed {
        return RateVerdict::Within;
    }
    match c.action {
        DataRateAction::Slow => RateVerdict::Slow(allowed - elapsed),
        DataRateAction::Cut => RateVerdict::Cut(Reply::closing_policy(format!(
            "Data rate limit exceeded ({} bytes/s)",
            c.bytes_per_second
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_flows_are_slowed_or_cut() {
        let mut c = Dm33DataRate {
            enabled: true,
            bytes_per_second: 1000,
            action: DataRateAction::Slow,
        };
        assert_eq!(check(&c, 500, Duration::from_secs(1)), RateVerdict::Within);
        assert_eq!(
            check(&c, 3000, Duration::from_secs(1)),
            RateVerdict::Slow(Duration::from_secs(2))
        );
        c.action = DataRateAction::Cut;
        assert!(
            matches!(check(&c, 3000, Duration::from_secs(1)), RateVerdict::Cut(r) if r.code == 421)
        );
    }
}
