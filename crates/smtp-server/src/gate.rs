//! Admission control shared by a node's listeners: the drain switch and
//! the count of open sessions.
//!
//! Draining is the paper's maintenance procedure (take a server out of its
//! pair): new connections are answered `421 4.3.2` and closed, so the
//! upstream forwarders and load balancers fail over to the peer at once;
//! a session inside a transaction finishes it, and a session between
//! transactions is closed with the same `421` at its next command (or at
//! once when it is idle). RFC 5321 §3.8: a server that must shut down
//! answers 421 to every command.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use palisade_smtp_proto::Reply;
use tokio::sync::watch;

/// One per node, cloned into every listener and session.
#[derive(Clone)]
pub struct Gate {
    inner: Arc<Inner>,
}

struct Inner {
    draining: watch::Sender<bool>,
    sessions: AtomicUsize,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            inner: Arc::new(Inner {
                draining: watch::Sender::new(false),
                sessions: AtomicUsize::new(0),
            }),
        }
    }
}

impl Gate {
    /// Stop taking mail: new connections and new transactions get 421.
    pub fn drain(&self) {
        self.inner.draining.send_replace(true);
    }

    /// Take mail again.
    pub fn undrain(&self) {
        self.inner.draining.send_replace(false);
    }

    pub fn is_draining(&self) -> bool {
        *self.inner.draining.borrow()
    }

    /// Sessions open on every listener of the node (refused connections
    /// are not counted).
    pub fn open_sessions(&self) -> usize {
        self.inner.sessions.load(Ordering::Relaxed)
    }

    /// Resolves once the node is draining (at once if it already is).
    pub async fn draining(&self) {
        let mut rx = self.inner.draining.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Counts a session until the returned guard is dropped.
    pub(crate) fn session(&self) -> SessionGuard {
        self.inner.sessions.fetch_add(1, Ordering::Relaxed);
        SessionGuard(self.clone())
    }

    /// The reply to a client while draining.
    pub fn reply(hostname: &str) -> Reply {
        Reply::enhanced(
            421,
            (4, 3, 2),
            format!("{hostname} Service not available, closing transmission channel"),
        )
    }
}

pub(crate) struct SessionGuard(Gate);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.inner.sessions.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_wakes_waiters_and_counts_sessions() {
        let gate = Gate::default();
        let g = gate.clone();
        let waiter = tokio::spawn(async move { g.draining().await });
        let s1 = gate.session();
        let s2 = gate.session();
        assert_eq!(gate.open_sessions(), 2);
        drop(s1);
        assert_eq!(gate.open_sessions(), 1);
        assert!(!gate.is_draining());
        gate.drain();
        waiter.await.unwrap();
        assert!(gate.is_draining());
        drop(s2);
        assert_eq!(gate.open_sessions(), 0);
        gate.undrain();
        assert!(!gate.is_draining());
    }
}
