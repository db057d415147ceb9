//! Drain: the paper's maintenance procedure, taking one server out of its
//! pair without losing or delaying mail.
//!
//! `palisade drain NODE` (`POST /drain?mode=flush|keep` on the node's HTTP
//! endpoint) closes the node's door: new connections get `421 4.3.2` so
//! the upstream forwarders (and haproxy's health check) send everything
//! to the peer; open sessions finish their transaction and are closed.
//! Then, with `flush` (the default), the node keeps delivering and retries
//! its deferred mail at once until its queue is empty: it can be stopped
//! with nothing on it. With `keep`, it stops starting deliveries and keeps
//! its queue on disk for when it comes back. `GET /drain` reports the
//! progress; `POST /undrain` (or a restart) puts the node back in service.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use palisade_queue::{Queue, QueueId};
use palisade_smtp_server::Gate;
use serde::Serialize;
use tokio::sync::{watch, Semaphore};

use crate::http::{Response, Router};
use crate::metrics::Metrics;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Deliver everything queued, then report drained.
    Flush,
    /// Stop delivering; the queue stays for the restart.
    Keep,
}

/// One node's drain state, shared by its listeners and its forwarder.
pub struct Drain {
    gate: Gate,
    mode: watch::Sender<Option<Mode>>,
    in_flight: AtomicUsize,
}

/// What `GET /drain` answers (and `palisade drain --status` prints).
#[derive(Debug, Serialize)]
pub struct Status {
    pub node: String,
    /// `serving`, `draining` or `drained`.
    pub state: &'static str,
    pub mode: Option<Mode>,
    pub sessions: usize,
    pub queued: usize,
    pub deliveries_in_flight: usize,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            gate: Gate::default(),
            mode: watch::Sender::new(None),
            in_flight: AtomicUsize::new(0),
        }
    }
}

impl Drain {
    /// The switch the node's SMTP listeners admit sessions through.
    pub fn gate(&self) -> Gate {
        self.gate.clone()
    }

    pub fn start(&self, mode: Mode) {
        self.gate.drain();
        self.mode.send_replace(Some(mode));
    }

    pub fn stop(&self) {
        self.mode.send_replace(None);
        self.gate.undrain();
    }

    pub fn mode(&self) -> Option<Mode> {
        *self.mode.borrow()
    }

    /// Waits while a `keep` drain holds deliveries.
    async fn deliveries_allowed(&self) {
        let mut rx = self.mode.subscribe();
        let _ = rx.wait_for(|m| *m != Some(Mode::Keep)).await;
    }

    /// The delivery loop of the forwarder and of the outgoing stage's
    /// deliverer: takes one of `slots`, then the next due message a `keep`
    /// drain does not hold, and runs `attempt` on it in its own task,
    /// counted as in flight until it ends.
    ///
    /// The slot comes first so that no message is in hand while waiting
    /// for one (a drain begun meanwhile would not hold it), and the
    /// message is counted before the drain mode is read, so `GET /drain`
    /// never reports `drained` while a delivery is starting.
    pub async fn run_deliveries<F, Fut>(
        self: Arc<Self>,
        queue: &Queue,
        slots: Arc<Semaphore>,
        attempt: F,
    ) -> !
    where
        F: Fn(QueueId) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        loop {
            let slot = slots.clone().acquire_owned().await.expect("never closed");
            let (id, counted) = self.next_delivery(queue).await;
            let attempt = attempt(id);
            tokio::spawn(async move {
                attempt.await;
                drop(counted);
                drop(slot);
            });
        }
    }

    /// The next due message a `keep` drain does not hold, counted in
    /// flight; one that became due as such a drain began goes back.
    async fn next_delivery(self: &Arc<Self>, queue: &Queue) -> (QueueId, DeliveryGuard) {
        loop {
            self.deliveries_allowed().await;
            let id = queue.next_due().await;
            let counted = DeliveryGuard::new(self);
            if self.mode() != Some(Mode::Keep) {
                return (id, counted);
            }
            drop(counted);
            queue.release_active(id);
        }
    }

    pub fn status(&self, node: &str, queued: usize) -> Status {
        let mode = self.mode();
        let sessions = self.gate.open_sessions();
        let in_flight = self.in_flight.load(Ordering::SeqCst);
        let done = match mode {
            None => false,
            Some(Mode::Flush) => sessions == 0 && queued == 0,
            Some(Mode::Keep) => sessions == 0 && in_flight == 0,
        };
        Status {
            node: node.to_string(),
            state: match (mode, done) {
                (None, _) => "serving",
                (Some(_), false) => "draining",
                (Some(_), true) => "drained",
            },
            mode,
            sessions,
            queued,
            deliveries_in_flight: in_flight,
        }
    }
}

/// One delivery attempt in flight, until dropped.
struct DeliveryGuard(Arc<Drain>);

impl DeliveryGuard {
    fn new(drain: &Arc<Drain>) -> DeliveryGuard {
        // SeqCst, and before the mode is read: see run_deliveries.
        drain.in_flight.fetch_add(1, Ordering::SeqCst);
        DeliveryGuard(drain.clone())
    }
}

impl Drop for DeliveryGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the drain routes act on.
struct Control {
    node: String,
    drain: Arc<Drain>,
    queue: Queue,
    metrics: Metrics,
}

impl Control {
    fn status(&self) -> Response {
        let s = self.drain.status(&self.node, self.queue.len());
        Response::json(serde_json::to_vec(&s).unwrap_or_default())
    }

    /// Drains in `mode`, or (`None`) puts the node back in service.
    fn switch(&self, mode: Option<Mode>) -> Response {
        match mode {
            Some(mode) => {
                self.drain.start(mode);
                tracing::info!(
                    "{}: draining ({mode:?}): new connections get 421 4.3.2",
                    self.node
                );
            }
            None => {
                self.drain.stop();
                tracing::info!("{}: back in service", self.node);
            }
        }
        // Flush: deferred mail is retried now rather than at its next
        // scheduled attempt. Undrain: what a `keep` drain held goes out.
        if mode != Some(Mode::Keep) {
            self.queue.flush();
        }
        self.metrics.set(
            "palisade_draining",
            "1 while the node is drained out of its pair.",
            &[],
            if mode.is_some() { 1.0 } else { 0.0 },
        );
        self.status()
    }
}

/// `POST /drain?mode=flush|keep`, `POST /undrain`, `GET /drain`.
pub fn routes(
    router: Router,
    node: &str,
    drain: &Arc<Drain>,
    queue: &Queue,
    metrics: &Metrics,
) -> Router {
    let control = Arc::new(Control {
        node: node.to_string(),
        drain: drain.clone(),
        queue: queue.clone(),
        metrics: metrics.clone(),
    });
    let c = control.clone();
    router
        .route("/drain", move |req| {
            if req.method != "POST" {
                return c.status();
            }
            match req.query.get("mode").map(String::as_str) {
                None | Some("flush") => c.switch(Some(Mode::Flush)),
                Some("keep") => c.switch(Some(Mode::Keep)),
                Some(other) => Response::text(400, format!("unknown mode {other}\n")),
            }
        })
        .route("/undrain", move |req| {
            if req.method != "POST" {
                return Response::text(405, "use POST\n");
            }
            control.switch(None)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_queue::{ClientInfo, NewMessage, NewRecipient, QueueOptions};
    use std::sync::Mutex;
    use std::time::Duration;

    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        for _ in 0..200 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    /// One slot, two due messages: the second waits for the slot while the
    /// first is delivered. A `keep` drain begun then holds the second (it
    /// was not in hand yet), reports `drained` once the first is done, and
    /// the second goes out after undrain.
    #[tokio::test]
    async fn keep_holds_a_message_waiting_for_a_slot() {
        let dir = palisade_testsupport::TempDir::new("drain-keep");
        let queue = Queue::open(dir.path(), QueueOptions::default()).unwrap();
        for i in 0..2 {
            let msg = NewMessage {
                origin: None,
                mail_from: "a@example.test".into(),
                mail_params: String::new(),
                rcpts: vec![NewRecipient {
                    address: format!("r{i}@example.test"),
                    params: String::new(),
                }],
                client: ClientInfo::default(),
                body: b"Subject: t\r\n\r\nx\r\n".to_vec(),
            };
            queue.enqueue(msg).await.unwrap();
        }
        let drain = Arc::new(Drain::default());
        let started = Arc::new(Mutex::new(Vec::new()));
        let finish = Arc::new(tokio::sync::Notify::new());
        let (d, q, s, f) = (
            drain.clone(),
            queue.clone(),
            started.clone(),
            finish.clone(),
        );
        let engine = tokio::spawn(async move {
            d.run_deliveries(&q, Arc::new(Semaphore::new(1)), move |id| {
                s.lock().unwrap().push(id);
                let f = f.clone();
                async move { f.notified().await }
            })
            .await
        });
        let count = || started.lock().unwrap().len();
        until("the first delivery", || count() == 1).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(count(), 1, "one slot, one delivery");

        drain.start(Mode::Keep);
        let state = || drain.status("n", queue.len()).state;
        assert_eq!(state(), "draining", "a delivery is in flight");
        finish.notify_one();
        until("drained", || state() == "drained").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            count(),
            1,
            "keep started the message that waited for the slot"
        );
        assert_eq!(drain.status("n", 0).deliveries_in_flight, 0);

        drain.stop();
        until("the held delivery after undrain", || count() == 2).await;
        engine.abort();
    }
}
