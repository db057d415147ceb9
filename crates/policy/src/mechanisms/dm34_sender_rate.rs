//! DM34 limit the amount of mail from one sender: at most `messages`
//! envelope senders' MAIL commands per `window` (a token bucket refilled
//! evenly over the window). Over it: `450 4.7.1`, a temporary refusal, so
//! a legitimate mailing resumes later instead of bouncing.

use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use palisade_config::Dm34SenderRate;
use palisade_smtp_proto::Reply;

pub struct SenderRate {
    limiter: DefaultKeyedRateLimiter<String>,
}

impl SenderRate {
    pub fn new(c: &Dm34SenderRate) -> Self {
        let n = NonZeroU32::new(c.messages.max(1)).expect("max(1)");
        let period = c.window.duration() / n.get();
        let quota = Quota::with_period(period.max(std::time::Duration::from_nanos(1)))
            .expect("non-zero period")
            .allow_burst(n);
        SenderRate {
            limiter: RateLimiter::keyed(quota),
        }
    }

    /// The null sender (bounces) is not limited per sender: it is one
    /// "sender" for the whole Internet.
    pub fn check(&self, sender: &str) -> Option<Reply> {
        if sender.is_empty() {
            return None;
        }
        self.limiter
            .check_key(&sender.to_ascii_lowercase())
            .err()
            .map(|_| {
                Reply::enhanced(
                    450,
                    (4, 7, 1),
                    format!("<{sender}>: Sender rate limit exceeded, try again later"),
                )
            })
    }

    pub fn prune(&self) {
        self.limiter.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_config::Seconds;

    #[test]
    fn sender_over_its_quota_is_tempfailed() {
        let s = SenderRate::new(&Dm34SenderRate {
            enabled: true,
            messages: 2,
            window: Seconds(3600.0),
        });
        assert!(s.check("a@x.test").is_none());
        assert!(s.check("A@X.test").is_none());
        assert_eq!(s.check("a@x.test").unwrap().code, 450);
        assert!(s.check("b@x.test").is_none());
        assert!(s.check("").is_none());
    }
}
