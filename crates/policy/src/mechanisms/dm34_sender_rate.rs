//! DM34 limit the amount of mail from one sender: at most `messages`
//! envelope senders' MAIL commands per `window` (a token bucket refilled
//! evenly over the window). Over it: `450 4.7.1`, a temporary refusal, so
//! a legitimate mailing resumes later instead of bouncing.
//!
//! Shared like DM11: one bucket per sender in Redis for the whole pair,
//! this node's `governor` bucket while Redis is away (kept across reloads
//! while the quota is the same).

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use palisade_config::Dm34SenderRate;
use palisade_smtp_proto::Reply;

use crate::state::SharedState;

pub struct SenderRate {
    settings: Dm34SenderRate,
    limiter: Arc<DefaultKeyedRateLimiter<String>>,
    state: SharedState,
}

impl SenderRate {
    pub fn new(c: &Dm34SenderRate, state: SharedState) -> Self {
        let n = NonZeroU32::new(c.messages.max(1)).expect("max(1)");
        let period = c.window.duration() / n.get();
        let quota = Quota::with_period(period.max(std::time::Duration::from_nanos(1)))
            .expect("non-zero period")
            .allow_burst(n);
        let name = format!("DM34:{}:{}", n, c.window.0);
        SenderRate {
            settings: c.clone(),
            limiter: state.local(&name, || RateLimiter::keyed(quota)),
            state,
        }
    }

    /// The null sender (bounces) is not limited per sender: it is one
    /// "sender" for the whole Internet.
    pub async fn check(&self, sender: &str) -> Option<Reply> {
        if sender.is_empty() {
            return None;
        }
        let key = sender.to_ascii_lowercase();
        let (n, window) = (self.settings.messages, self.settings.window.duration());
        let allowed = match self.state.rate("DM34", &key, n, window).await {
            Some(shared) => shared,
            None => self.limiter.check_key(&key).is_ok(),
        };
        (!allowed).then(|| {
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

    #[tokio::test]
    async fn sender_over_its_quota_is_tempfailed() {
        let s = SenderRate::new(
            &Dm34SenderRate {
                enabled: true,
                messages: 2,
                window: Seconds(3600.0),
            },
            SharedState::embedded(),
        );
        assert!(s.check("a@x.test").await.is_none());
        assert!(s.check("A@X.test").await.is_none());
        assert_eq!(s.check("a@x.test").await.unwrap().code, 450);
        assert!(s.check("b@x.test").await.is_none());
        assert!(s.check("").await.is_none());
    }
}
