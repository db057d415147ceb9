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

use std::sync::atomic::{AtomicUsize, Ordering};

use palisade_queue::Queue;
use palisade_smtp_server::Gate;
use serde::Serialize;
use tokio::sync::watch;

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

    /// The forwarder waits here before each delivery: only a `keep` drain
    /// holds it.
    pub async fn deliveries_allowed(&self) {
        let mut rx = self.mode.subscribe();
        let _ = rx.wait_for(|m| *m != Some(Mode::Keep)).await;
    }

    /// The next message a delivery engine (the forwarder, the outgoing
    /// stage's deliverer) may start: waits while a `keep` drain holds
    /// deliveries, and puts a message that became due as such a drain
    /// began back in the queue.
    pub async fn next_delivery(&self, queue: &Queue) -> palisade_queue::QueueId {
        loop {
            self.deliveries_allowed().await;
            let id = queue.next_due().await;
            if self.mode() != Some(Mode::Keep) {
                return id;
            }
            queue.release_active(id);
        }
    }

    /// Counts one delivery attempt until the guard is dropped.
    pub fn delivery(&self) -> DeliveryGuard<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        DeliveryGuard(self)
    }

    pub fn status(&self, node: &str, queued: usize) -> Status {
        let mode = self.mode();
        let sessions = self.gate.open_sessions();
        let in_flight = self.in_flight.load(Ordering::Relaxed);
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

pub struct DeliveryGuard<'a>(&'a Drain);

impl Drop for DeliveryGuard<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the drain routes act on.
struct Control {
    node: String,
    drain: std::sync::Arc<Drain>,
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
    drain: &std::sync::Arc<Drain>,
    queue: &Queue,
    metrics: &Metrics,
) -> Router {
    let control = std::sync::Arc::new(Control {
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
