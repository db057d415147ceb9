//! Forwarding queued mail to the next stage's pair.
//!
//! One task waits on the queue's scheduler and starts up to `concurrency`
//! delivery attempts at once. Each attempt groups the message's pending
//! recipients by next hop (a pool: the pair of nodes of the next stage, or
//! a relay list), and tries the pool's nodes in rotating order so load
//! spreads across equals; a node that refuses connections or tempfails the
//! whole transaction is skipped for a while and its peer takes the mail
//! (failover). Connections are kept open and reused between messages.
//!
//! The copy in our queue is removed only after the next hop answered 250
//! for every recipient (queue `record`). Every message carries its
//! *origin* (the entry node and queue ID) downstream in the private
//! `XORIGIN` MAIL parameter, so a re-send after a crash is recognised and
//! not delivered twice.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use palisade_config::{NextHop, NextHopTls};
use palisade_queue::{ClientInfo, Envelope, Outcome, Queue, QueueId};
use palisade_smtp_client::{
    insecure_tls_config, ClientConfig, ClientError, Connection, TlsMode, Transaction, TxResult,
};
use palisade_smtp_proto::Reply;
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::received::{received_header, with_header, Hop};
use crate::runtime::NodeContext;

/// How long a node that failed is skipped before it is tried again.
const NODE_DOWN_FOR: Duration = Duration::from_secs(5);
/// Idle pooled connections older than this are closed rather than reused.
const IDLE_REUSE_LIMIT: Duration = Duration::from_secs(20);

pub struct Forwarder {
    ctx: Arc<NodeContext>,
    queue: Queue,
    client: ClientConfig,
    idle: Mutex<HashMap<SocketAddr, Vec<(Connection, Instant)>>>,
    down_until: Mutex<HashMap<SocketAddr, Instant>>,
    rotation: AtomicUsize,
    slots: Arc<Semaphore>,
    max_idle_per_node: usize,
    /// MSA privacy: no client IP in our Received header.
    hide_client_ip: bool,
}

/// Why a whole attempt on one node failed, so the next node is tried.
enum NodeFailure {
    /// Could not talk to the node at all (connect, greeting, I/O).
    Unreachable(String),
    /// The node answered but tempfailed the whole transaction.
    Tempfail(TxResult),
}

impl Forwarder {
    pub fn new(ctx: Arc<NodeContext>, queue: Queue) -> Arc<Forwarder> {
        let settings = ctx.settings();
        let tls_mode = match settings.next_hop_tls {
            NextHopTls::None => TlsMode::None,
            NextHopTls::May => TlsMode::Opportunistic,
            NextHopTls::Require => TlsMode::Required,
        };
        let client = ClientConfig {
            helo_name: ctx.config.gateway.hostname.clone(),
            tls_mode,
            tls: Some(insecure_tls_config()),
            server_name: None,
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(60),
            data_timeout: Duration::from_secs(120),
        };
        let concurrency = settings.queue.concurrency.max(1);
        Arc::new(Forwarder {
            queue,
            client,
            idle: Mutex::default(),
            down_until: Mutex::default(),
            rotation: AtomicUsize::new(0),
            slots: Arc::new(Semaphore::new(concurrency)),
            max_idle_per_node: concurrency,
            hide_client_ip: ctx.stage == palisade_config::StageKind::Msa
                && settings.submission.hide_client_ip,
            ctx,
        })
    }

    /// Runs forever: every due message gets a delivery attempt.
    pub async fn run(self: Arc<Self>) {
        // `palisade drain --keep` holds deliveries (the queue stays).
        let (drain, queue, slots) = (
            self.ctx.drain.clone(),
            self.queue.clone(),
            self.slots.clone(),
        );
        drain
            .run_deliveries(&queue, slots, |id| {
                let me = self.clone();
                async move { me.attempt(id).await }
            })
            .await
    }

    async fn attempt(&self, id: QueueId) {
        // None: deleted by an admin while it was due, or unreadable.
        let Some((envelope, body)) = self.queue.load_due(id) else {
            return;
        };
        let message = self.with_trace_header(&envelope, &body);
        let origin = envelope.origin_or_here(&self.ctx.node_name);
        let groups = envelope.pending_by(|rcpt| self.ctx.config.next_hop(self.ctx.stage, rcpt));

        let started = Instant::now();
        let mut results = Vec::new();
        for (hop, rcpts) in groups {
            match hop {
                NextHop::Pool { name, addrs } => {
                    let outcomes = self
                        .deliver_to_pool(id, &name, &addrs, &envelope, &rcpts, &origin, &message)
                        .await;
                    results.extend(outcomes);
                }
                NextHop::LocalStore | NextHop::Unroutable(_) => {
                    let why = match hop {
                        NextHop::Unroutable(why) => why,
                        _ => "this stage does not store mail".into(),
                    };
                    for i in rcpts {
                        results.push((i, Outcome::Deferred(format!("no route: {why}"))));
                    }
                }
            }
        }
        let delay = SystemTime::now()
            .duration_since(envelope.arrived)
            .unwrap_or_default()
            .as_secs_f64();
        for (i, outcome) in &results {
            let rcpt = &envelope.rcpts[*i].address;
            let (status, text) = match outcome {
                Outcome::Delivered(t) => ("sent", t),
                Outcome::Deferred(t) => ("deferred", t),
                Outcome::Failed(t) => ("bounced", t),
            };
            info!(
                "{id}: to=<{rcpt}>, delay={delay:.3}, attempt={:.3}, status={status} ({text})",
                started.elapsed().as_secs_f64()
            );
            self.ctx.metrics.inc(
                "palisade_deliveries_total",
                "Recipient delivery attempts by result.",
                &[("status", status)],
            );
        }
        match self.queue.record(id, results).await {
            Ok(rec) => {
                for (rcpt, why) in &rec.failed_now {
                    // Backscatter policy (SPEC §4): no bounce to an
                    // unauthenticated sender; DSNs to authenticated local
                    // senders are the outgoing stage's job.
                    warn!("{id}: to=<{rcpt}>, status=expired ({why}); no bounce sent");
                }
                if rec.finished {
                    info!("{id}: removed");
                }
            }
            Err(e) => warn!("{id}: cannot record delivery results: {e}"),
        }
    }

    /// The message as the next hop sees it: our Received line on top.
    fn with_trace_header(&self, envelope: &Envelope, body: &[u8]) -> Vec<u8> {
        let id = envelope.id.to_string();
        let hop = Hop::of_queued(
            envelope,
            &self.ctx.config.gateway.hostname,
            &self.ctx.node_name,
            &id,
        );
        with_header(&self.received(hop), body)
    }

    /// Our Received line for a message from `client`, known here as `id`
    /// (also for cut-through, which sends without queueing).
    pub fn trace_header(
        &self,
        client: &ClientInfo,
        id: &str,
        single_recipient: Option<&str>,
        when: SystemTime,
    ) -> String {
        self.received(Hop::from_client(
            client,
            &self.ctx.config.gateway.hostname,
            &self.ctx.node_name,
            id,
            single_recipient,
            when,
        ))
    }

    fn received(&self, hop: Hop<'_>) -> String {
        if self.hide_client_ip {
            received_header(&hop.hiding_client_ip())
        } else {
            received_header(&hop)
        }
    }

    /// The pool's nodes in the order to try them: rotated for load
    /// spreading, nodes recently found down moved to the end.
    fn node_order(&self, addrs: &[SocketAddr]) -> Vec<SocketAddr> {
        let n = addrs.len().max(1);
        let start = self.rotation.fetch_add(1, Ordering::Relaxed) % n;
        let mut order: Vec<SocketAddr> = addrs[start..]
            .iter()
            .chain(&addrs[..start])
            .copied()
            .collect();
        let now = Instant::now();
        let down = self.down_until.lock().unwrap();
        order.sort_by_key(|a| down.get(a).is_some_and(|t| *t > now));
        order
    }

    fn mark_down(&self, addr: SocketAddr) {
        self.down_until
            .lock()
            .unwrap()
            .insert(addr, Instant::now() + NODE_DOWN_FOR);
    }

    #[allow(clippy::too_many_arguments)]
    async fn deliver_to_pool(
        &self,
        id: QueueId,
        pool: &str,
        addrs: &[SocketAddr],
        envelope: &Envelope,
        rcpts: &[usize],
        origin: &str,
        message: &[u8],
    ) -> Vec<(usize, Outcome)> {
        let rcpt_list: Vec<(&str, &str)> = rcpts
            .iter()
            .map(|&i| {
                let r = &envelope.rcpts[i];
                (r.address.as_str(), r.params.as_str())
            })
            .collect();
        let tx = Transaction {
            mail_from: &envelope.mail_from,
            mail_params: &envelope.mail_params,
            origin: Some(origin),
            rcpts: &rcpt_list,
            body: message,
        };
        match self.send_to_pool(&id, pool, addrs, &tx).await {
            Ok((addr, result)) => rcpts
                .iter()
                .enumerate()
                .map(|(k, &i)| (i, outcome_of(pool, addr, result.rcpt_outcome(k))))
                .collect(),
            Err(last_failure) => rcpts
                .iter()
                .map(|&i| (i, Outcome::Deferred(last_failure.clone())))
                .collect(),
        }
    }

    /// One transaction on the pool's nodes in turn until one of them
    /// answers it (a node unreachable or tempfailing the whole transaction
    /// is skipped for a while, its peer tries). `Err` names the last
    /// failure. Shared by the queue runner and cut-through.
    pub async fn send_to_pool(
        &self,
        id: &(dyn std::fmt::Display + Sync),
        pool: &str,
        addrs: &[SocketAddr],
        tx: &Transaction<'_>,
    ) -> Result<(SocketAddr, TxResult), String> {
        let mut last_failure = format!("{pool}: no node configured");
        for addr in self.node_order(addrs) {
            match self.try_node(addr, tx).await {
                Ok(result) => return Ok((addr, result)),
                Err(NodeFailure::Unreachable(why)) => {
                    warn!("{id}: {pool}[{addr}] unreachable ({why}); trying its peer");
                    self.mark_down(addr);
                    last_failure = format!("{pool}[{addr}]: {why}");
                }
                Err(NodeFailure::Tempfail(result)) => {
                    let reply = tempfail_reply(&result);
                    warn!("{id}: {pool}[{addr}] tempfailed ({reply}); trying its peer");
                    self.mark_down(addr);
                    last_failure = format!("{pool}[{addr}] said: {reply}");
                }
            }
        }
        Err(last_failure)
    }

    /// One transaction on one node, on a pooled connection when there is
    /// one (a stale pooled connection is replaced once).
    async fn try_node(
        &self,
        addr: SocketAddr,
        tx: &Transaction<'_>,
    ) -> Result<TxResult, NodeFailure> {
        let pooled = self.take_idle(addr);
        let fresh = pooled.is_none();
        let mut conn = match pooled {
            Some(c) => c,
            None => Connection::connect(addr, &self.client)
                .await
                .map_err(|e| NodeFailure::Unreachable(e.to_string()))?,
        };
        let result = match conn.send(tx).await {
            Ok(r) => r,
            Err(e) if !fresh && is_connection_lost(&e) => {
                conn = Connection::connect(addr, &self.client)
                    .await
                    .map_err(|e| NodeFailure::Unreachable(e.to_string()))?;
                conn.send(tx)
                    .await
                    .map_err(|e| NodeFailure::Unreachable(e.to_string()))?
            }
            Err(e) => return Err(NodeFailure::Unreachable(e.to_string())),
        };
        let whole_tempfail = result.mail.is_transient()
            || result.data.as_ref().is_some_and(|d| d.is_transient())
            || result.rcpts.iter().any(|r| r.code == 421);
        if whole_tempfail {
            return Err(NodeFailure::Tempfail(result));
        }
        if conn.is_usable() {
            self.put_idle(addr, conn);
        }
        Ok(result)
    }

    fn take_idle(&self, addr: SocketAddr) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap();
        let list = idle.get_mut(&addr)?;
        while let Some((conn, since)) = list.pop() {
            if since.elapsed() < IDLE_REUSE_LIMIT {
                return Some(conn);
            }
        }
        None
    }

    fn put_idle(&self, addr: SocketAddr, conn: Connection) {
        let mut idle = self.idle.lock().unwrap();
        let list = idle.entry(addr).or_default();
        if list.len() < self.max_idle_per_node {
            list.push((conn, Instant::now()));
        }
    }
}

fn is_connection_lost(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Io(_) | ClientError::Timeout(_) | ClientError::Protocol(_)
    )
}

/// The reply that made a whole transaction fail temporarily.
fn tempfail_reply(r: &TxResult) -> &Reply {
    if r.mail.is_transient() {
        &r.mail
    } else if let Some(d) = r.data.as_ref().filter(|d| d.is_transient()) {
        d
    } else {
        r.rcpts.iter().find(|x| x.code == 421).unwrap_or(&r.mail)
    }
}

fn outcome_of(pool: &str, addr: SocketAddr, reply: &Reply) -> Outcome {
    let text = format!("relay={pool}[{addr}] {reply}");
    if reply.is_positive() {
        Outcome::Delivered(text)
    } else if reply.is_transient() {
        Outcome::Deferred(text)
    } else {
        Outcome::Failed(text)
    }
}
