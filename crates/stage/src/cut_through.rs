//! Cut-through verdicts (issue 6): the client's reply to DATA waits for
//! the content stages' verdicts, within a deadline.
//!
//! With `[stage.mx.cut_through]` / `[stage.msa.cut_through]` enabled, the
//! entry node does not queue first and forward later: while its client
//! waits, it hands the message to the antivirus pair with the private MAIL
//! parameter `XCUT=<ms>` (offered only between Palisade stages, like
//! `XORIGIN`): "I hold my client's reply for this long". The antivirus
//! node scans and, the message clean, hands it on to the antispam pair the
//! same way with what is left of the wait minus [`HOP_MARGIN`]; the
//! antispam node scores it and queues it (with its tags), or refuses it.
//! Each hop answers its upstream with what it learnt:
//!
//! | what happened | the hop answers |
//! |---|---|
//! | virus or MIME bomb at C ([`virus_refusal`]) | 550 5.7.1 naming it: no quarantine copy, the sender is told |
//! | score at or above `cut_through_reject_threshold` at D ([`spam_refusal`]) | 550 5.7.1 |
//! | D queued it | 250, relayed as it came: C and the entry queue nothing |
//! | the next stage is down, tempfails, or gives no verdict in time | the hop queues the message itself (before its 250) and says so in the 250 (`cut-through: queued-…`) |
//!
//! # Invariants
//! - Never lost: a 250 goes upstream only when this node's queue or a
//!   later stage holds the message on disk; a hop that cannot get the next
//!   stage's verdict in time queues the message itself.
//! - Never twice: every fallback copy carries the same origin token
//!   (`XORIGIN`) as the hand-off. When a deadline passes after the next
//!   stage received the whole message, both copies reach the same queues
//!   and the store with that origin, whose dedup (queue Q8, store
//!   `(origin, recipient)`) drops the second.
//! - Byte-identical: the hand-off carries the ESMTP parameters the
//!   forwarder would (BODY, SMTPUTF8, RET/ENVID, NOTIFY/ORCPT), through
//!   the forwarder's own sending code ([`Forwarder::send_to_pool`]).
//! - Only Palisade content verdicts become 5xx to the client; any other
//!   refusal by the next stage (misconfiguration, limits) is queued and
//!   handled post-queue, so a local problem never bounces mail.
//!
//! Metrics: `palisade_cut_through_total{outcome}` on every node that
//! hands off (the entry nodes, the antivirus nodes), one log line per
//! message naming the outcome and the origin.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use palisade_config::{NextHop, StageKind};
use palisade_queue::ClientInfo;
use palisade_smtp_client::Transaction;
use palisade_smtp_proto::{MailParams, Reply};
use palisade_smtp_server::{Envelope, SessionInfo};
use tracing::{info, warn};

use crate::forward::Forwarder;
use crate::runtime::NodeContext;

/// What each hop keeps of its own wait for queueing the message itself
/// and answering, should the next stage not answer in time.
pub const HOP_MARGIN: Duration = Duration::from_secs(1);
/// Below this much wait left for the next stage, a hop does not try.
const MIN_NEXT_WAIT: Duration = Duration::from_millis(500);

const VIRUS: &str = "Rejected by virus scanner: ";
const SPAM: &str = "Rejected as spam: ";
const MARK: &str = "(cut-through: ";

/// The antivirus stage's refusal under cut-through (`what`: the virus
/// name or the MIME limit exceeded).
pub fn virus_refusal(what: &str) -> Reply {
    Reply::enhanced(550, (5, 7, 1), format!("{VIRUS}{what}"))
}

/// The antispam stage's refusal under cut-through.
pub fn spam_refusal(what: &str) -> Reply {
    Reply::enhanced(550, (5, 7, 1), format!("{SPAM}{what}"))
}

/// How a cut-through hand-off ended, as counted and logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The next stages took it with their verdicts: nothing queued here.
    Accepted,
    RejectedVirus,
    RejectedSpam,
    /// No verdict within the deadline: queued (here or further down).
    QueuedTimeout,
    /// The next stage was down, tempfailed or refused for another reason.
    QueuedUnavailable,
    /// The recipients go to different next hops: queued here.
    QueuedMixedRoutes,
    /// The next stage took only some recipients; the others queued here.
    QueuedPartial,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Accepted,
        Outcome::RejectedVirus,
        Outcome::RejectedSpam,
        Outcome::QueuedTimeout,
        Outcome::QueuedUnavailable,
        Outcome::QueuedMixedRoutes,
        Outcome::QueuedPartial,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::RejectedVirus => "rejected-virus",
            Outcome::RejectedSpam => "rejected-spam",
            Outcome::QueuedTimeout => "queued-timeout",
            Outcome::QueuedUnavailable => "queued-unavailable",
            Outcome::QueuedMixedRoutes => "queued-mixed-routes",
            Outcome::QueuedPartial => "queued-partial",
        }
    }

    /// What a reply from the next stage says: a content refusal, a 250
    /// after which that stage (or one after it) had to queue, or a 250
    /// with the verdicts in.
    fn of_reply(reply: &Reply) -> Option<Outcome> {
        if reply.is_permanent() {
            return if reply.text.starts_with(VIRUS) {
                Some(Outcome::RejectedVirus)
            } else if reply.text.starts_with(SPAM) {
                Some(Outcome::RejectedSpam)
            } else {
                None
            };
        }
        if !reply.is_positive() {
            return None;
        }
        let Some((_, rest)) = reply.text.split_once(MARK) else {
            return Some(Outcome::Accepted);
        };
        let label = rest.split([' ', ')']).next().unwrap_or("");
        Some(
            Outcome::ALL
                .into_iter()
                .find(|o| o.label() == label)
                .unwrap_or(Outcome::Accepted),
        )
    }
}

/// What the intake does with the message after the hand-off.
pub enum HandOff {
    /// Answer the client this and queue nothing.
    Answered(Reply),
    /// Queue it as usual, with this.
    Queue(Fallback),
}

/// The copy a hop queues itself when the next stage gave no verdict.
pub struct Fallback {
    /// The origin the copy must carry: the hand-off's, so a second copy is
    /// recognised downstream.
    pub origin: String,
    /// Indexes into the envelope's recipients to queue.
    pub rcpts: Vec<usize>,
    /// Appended to the 250 (` (cut-through: queued-timeout at NODE)`): the
    /// upstream hop counts what really happened.
    pub note: String,
}

pub struct CutThrough {
    ctx: Arc<NodeContext>,
    forwarder: Arc<Forwarder>,
    /// The next stage's pool name (`antivirus`, `antispam`).
    pool: String,
    /// Entry nodes: the configured wait. Content stages: None, the
    /// upstream's `XCUT` decides.
    entry_wait: Option<Duration>,
    last_id: AtomicU64,
}

impl CutThrough {
    /// `None` when this node never hands off: an entry node with
    /// cut-through off, or a stage whose next stage gives no content
    /// verdict (the antispam stage queues; its next is store or outgoing).
    pub fn new(ctx: &Arc<NodeContext>, forwarder: &Arc<Forwarder>) -> Option<Arc<CutThrough>> {
        let settings = ctx.settings();
        let next = settings.next?;
        if !matches!(next, StageKind::Antivirus | StageKind::Antispam) || !settings.relay.is_empty()
        {
            return None;
        }
        let entry_wait = if ctx.stage.is_edge() {
            if !settings.cut_through.enabled {
                return None;
            }
            Some(settings.cut_through.deadline.duration())
        } else {
            None
        };
        info!(
            "{}: cut-through to {next}{}",
            ctx.node_name,
            entry_wait
                .map(|w| format!(", clients wait up to {w:?}"))
                .unwrap_or_else(|| " when the upstream waits".into())
        );
        Some(Arc::new(CutThrough {
            ctx: ctx.clone(),
            forwarder: forwarder.clone(),
            pool: next.name().to_string(),
            entry_wait,
            last_id: AtomicU64::new(0),
        }))
    }

    /// When the verdicts for a message with these parameters are due, if
    /// it is handed off at all. Counted from the end of its DATA.
    pub fn deadline(&self, params: &MailParams) -> Option<Instant> {
        let wait = match self.entry_wait {
            Some(w) => w,
            None => Duration::from_millis(params.cut_through_ms?),
        };
        Some(Instant::now() + wait)
    }

    /// An id for the Received line of a message sent on without queueing:
    /// like a queue id (seconds << 16, increasing), unique on this node.
    fn new_id(&self) -> String {
        let secs = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let prev = self
            .last_id
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| {
                Some((l + 1).max(secs << 16))
            })
            .unwrap_or(0);
        format!("{:012X}", (prev + 1).max(secs << 16))
    }

    fn count(&self, outcome: Outcome) {
        self.ctx.metrics.inc(
            "palisade_cut_through_total",
            "Messages handed to the next content stage while the client waited, by outcome.",
            &[("outcome", outcome.label())],
        );
    }

    /// The next stage answered for the whole message: count and log it.
    fn verdict(
        &self,
        s: &SessionInfo,
        outcome: Outcome,
        origin: &str,
        addr: impl std::fmt::Display,
        reply: &Reply,
    ) {
        self.count(outcome);
        info!(
            "session {} from {}: cut-through {}: origin={origin}, {}[{addr}] said: {reply}",
            s.id,
            s.peer,
            outcome.label(),
            self.pool
        );
    }

    /// Hands the message to the next stage while the client waits, until
    /// `deadline`.
    pub async fn hand_off(
        &self,
        s: &SessionInfo,
        env: &Envelope,
        client: &ClientInfo,
        message: &[u8],
        deadline: Instant,
    ) -> HandOff {
        let id = self.new_id();
        // Entry nodes name the message (a namespace of their own: queue
        // origins are `node/QUEUEID`); later hops keep the entry's name.
        let origin = env
            .mail_params
            .origin
            .clone()
            .unwrap_or_else(|| format!("{}/ct-{id}", self.ctx.node_name));
        let all: Vec<usize> = (0..env.rcpts.len()).collect();
        let fallback = |outcome: Outcome, why: &str, rcpts: Vec<usize>| {
            self.count(outcome);
            let label = outcome.label();
            info!(
                "session {} from {}: cut-through {label}: origin={origin}, {why}; queueing",
                s.id, s.peer
            );
            HandOff::Queue(Fallback {
                origin: origin.clone(),
                rcpts,
                note: format!(" {MARK}{label} at {})", self.ctx.node_name),
            })
        };

        let mut addrs = None;
        for (r, _) in &env.rcpts {
            match self.ctx.config.next_hop(self.ctx.stage, r) {
                NextHop::Pool { name, addrs: a } if name == self.pool => {
                    addrs.get_or_insert(a);
                }
                _ => {
                    let why = format!("<{r}> does not go to {}", self.pool);
                    return fallback(Outcome::QueuedMixedRoutes, &why, all);
                }
            }
        }
        let Some(addrs) = addrs else {
            return fallback(Outcome::QueuedMixedRoutes, "no recipient", all);
        };
        let budget = deadline.saturating_duration_since(Instant::now());
        let next_wait = budget.saturating_sub(HOP_MARGIN);
        if next_wait < MIN_NEXT_WAIT {
            let why = format!("only {budget:?} left");
            return fallback(Outcome::QueuedTimeout, &why, all);
        }

        let single = match env.rcpts.as_slice() {
            [(only, _)] => Some(only.as_str()),
            _ => None,
        };
        let header = self
            .forwarder
            .trace_header(client, &id, single, SystemTime::now());
        let body = crate::received::with_header(&header, message);
        // The queue runner's parameters (mail_params.to_wire(), each
        // recipient's to_wire()) plus the wait left for the next stage.
        let wire = env.mail_params.to_wire();
        let mail_params = format!("{wire} XCUT={}", next_wait.as_millis());
        let rcpt_params: Vec<String> = env.rcpts.iter().map(|(_, p)| p.to_wire()).collect();
        let rcpts: Vec<(&str, &str)> = env
            .rcpts
            .iter()
            .zip(&rcpt_params)
            .map(|((a, _), p)| (a.as_str(), p.as_str()))
            .collect();
        let tx = Transaction {
            mail_from: &env.mail_from,
            mail_params: mail_params.trim_start(),
            origin: Some(&origin),
            rcpts: &rcpts,
            body: &body,
        };
        let sent = self.forwarder.send_to_pool(&id, &self.pool, &addrs, &tx);
        let (addr, result) = match tokio::time::timeout(budget, sent).await {
            Err(_) => {
                let why = format!("no verdict from {} within {budget:?}", self.pool);
                return fallback(Outcome::QueuedTimeout, &why, all);
            }
            Ok(Err(why)) => return fallback(Outcome::QueuedUnavailable, &why, all),
            Ok(Ok(sent)) => sent,
        };
        let accepted: Vec<bool> = (0..rcpts.len())
            .map(|k| result.rcpt_outcome(k).is_positive())
            .collect();
        let reply = result.rcpt_outcome(0);
        if accepted.iter().all(|&a| a) {
            let outcome = Outcome::of_reply(reply).unwrap_or(Outcome::Accepted);
            self.verdict(s, outcome, &origin, addr, reply);
            return HandOff::Answered(reply.clone());
        }
        if accepted.iter().any(|&a| a) {
            // The others were refused at RCPT (limits): they are queued
            // here under an origin of their own, so the next stage's dedup
            // does not take them for the copy it already has.
            let rest = (0..rcpts.len()).filter(|&k| !accepted[k]).collect();
            warn!(
                "cut-through: {}[{addr}] took only some recipients",
                self.pool
            );
            let origin = format!("{origin}+rest");
            let fb = fallback(Outcome::QueuedPartial, "only some recipients taken", rest);
            return match fb {
                HandOff::Queue(f) => HandOff::Queue(Fallback { origin, ..f }),
                answered => answered,
            };
        }
        match Outcome::of_reply(reply) {
            Some(outcome @ (Outcome::RejectedVirus | Outcome::RejectedSpam)) => {
                self.verdict(s, outcome, &origin, addr, reply);
                HandOff::Answered(reply.clone())
            }
            _ => {
                let why = format!("{}[{addr}] said: {reply}", self.pool);
                fallback(Outcome::QueuedUnavailable, &why, all)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_tell_the_outcome() {
        let of = |r: Reply| Outcome::of_reply(&r);
        assert_eq!(of(virus_refusal("Eicar")), Some(Outcome::RejectedVirus));
        assert_eq!(of(spam_refusal("score 25")), Some(Outcome::RejectedSpam));
        let other = Reply::enhanced(554, (5, 7, 1), "accepts mail only from upstream");
        assert_eq!(of(other), None);
        assert_eq!(of(Reply::enhanced(451, (4, 3, 0), "x")), None);
        let ok = Reply::enhanced(250, (2, 0, 0), "Ok: queued as 0006A1B2C3D4");
        assert_eq!(of(ok), Some(Outcome::Accepted));
        let queued = Reply::enhanced(
            250,
            (2, 0, 0),
            "Ok: queued as 0006A1B2C3D4 (cut-through: queued-timeout at antivirus-1)",
        );
        assert_eq!(of(queued), Some(Outcome::QueuedTimeout));
    }
}
