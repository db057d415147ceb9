//! Accepting mail into a relaying stage's queue: the SMTP server's hooks.
//!
//! The checks here are the ones every hop needs before any defense module
//! runs: internal stages talk only to their upstream nodes, the MX accepts
//! only local domains (no open relay) and, with the user directory, only
//! existing recipients (the paper's backscatter fix, DM19). The 250 to DATA
//! is given only after the queue has committed the message to disk.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use palisade_config::StageKind;
use palisade_queue::{ClientInfo, NewMessage, NewRecipient, Queue, QueueError};
use palisade_smtp_proto::{MailParams, RcptParams, Reply};
use palisade_smtp_server::{Envelope, Hooks, SessionInfo};
use tracing::{info, warn};

use palisade_policy::state::DegradedSink;
use palisade_policy::{ActionSink, Client, Policy, PolicyOptions};

use crate::cut_through::{CutThrough, HandOff};
use crate::filter::{FilterContext, MessageFilter, Verdict};
use crate::replica::Replica;
use crate::runtime::NodeContext;

/// Above this many queued messages, intake slows down (Postfix's
/// `in_flow_delay`): accepting faster than the next hop takes mail only
/// grows the queue.
const BACKPRESSURE_QUEUE_LEN: usize = 20_000;

pub struct RelayIntake {
    pub ctx: Arc<NodeContext>,
    pub queue: Queue,
    /// Empty for edge stages (anyone may connect).
    pub allowed_clients: Vec<IpAddr>,
    /// This node's replica of the user directory, for recipient checks at
    /// the MX and MSA (DM19).
    pub directory: Option<Arc<Replica>>,
    /// Content inspection before queueing (antivirus, antispam stages).
    pub filter: Option<Arc<dyn MessageFilter>>,
    /// The Table I defense mechanisms of an edge stage (MX, MSA), as its
    /// `[stage.<name>.mechanisms]` enables them.
    pub policy: Option<Arc<Policy>>,
    /// Hands the message to the next content stage while the client
    /// waits for the verdicts (entry nodes with cut-through on; antivirus).
    pub cut_through: Option<Arc<CutThrough>>,
}

/// Logs one line per defense action and counts
/// `palisade_defense_actions_total{node,mechanism,action}`.
pub(crate) struct MetricsSink(pub(crate) crate::metrics::Metrics);

impl ActionSink for MetricsSink {
    fn action(&self, who: &str, mechanism: &'static str, action: &'static str, detail: &str) {
        info!("{who}: {mechanism} {action}: {detail}");
        self.0.inc(
            "palisade_defense_actions_total",
            "Actions taken by the Table I defense mechanisms.",
            &[("mechanism", mechanism), ("action", action)],
        );
    }
}

/// Counts `palisade_state_backend_degraded_total{mechanism}`: decisions
/// taken on this node's state because the shared backend did not answer.
impl DegradedSink for MetricsSink {
    fn degraded(&self, mechanism: &'static str) {
        self.0.inc(
            "palisade_state_backend_degraded_total",
            "Decisions taken on local state because the shared state backend did not answer.",
            &[("mechanism", mechanism)],
        );
    }
}

/// The policy of an edge stage, built from its mechanisms section; `None`
/// for internal stages (their upstream already applied it).
pub fn edge_policy(ctx: &Arc<NodeContext>) -> anyhow::Result<Option<Arc<Policy>>> {
    edge_policy_for(ctx, &ctx.config)
}

/// [`edge_policy`] from another configuration than the node's own (a
/// reload).
pub fn edge_policy_for(
    ctx: &Arc<NodeContext>,
    config: &palisade_config::Config,
) -> anyhow::Result<Option<Arc<Policy>>> {
    if !ctx.stage.is_edge() {
        return Ok(None);
    }
    let settings = config.settings(ctx.stage);
    let opts = PolicyOptions {
        stage: ctx.stage,
        hostname: config.gateway.hostname.clone(),
        local_domains: config.domains.iter().map(|d| d.name.clone()).collect(),
        dns: config.gateway.dns,
        state_dir: ctx.config.node_dir(&ctx.node_name).join("policy"),
        session_lifetime: settings.limits.session_timeout.duration(),
        state: ctx.state_backend(&config.gateway.state)?,
    };
    let sink = Arc::new(MetricsSink(ctx.metrics.clone()));
    let policy = Policy::new(&settings.mechanisms, &settings, opts, sink)?;
    info!(
        "{}: defense mechanisms on: {}",
        ctx.node_name,
        policy.enabled().join(", ")
    );
    Ok(Some(Arc::new(policy)))
}

/// DM35's answer for a recipient whose mailbox is over quota: 452, so the
/// sender keeps the message and retries (the MX from its directory replica,
/// the store from its own count).
pub fn mailbox_full(rcpt: &str) -> Reply {
    Reply::enhanced(
        452,
        (4, 2, 2),
        format!("<{rcpt}>: Mailbox full, try again later"),
    )
}

fn policy_client(s: &SessionInfo) -> Client<'_> {
    Client {
        session: s.id,
        peer: s.peer,
        local: s.local,
        helo: s.helo.as_deref(),
        authenticated: s.auth_user.is_some(),
    }
}

impl RelayIntake {
    fn refuse(&self, s: &SessionInfo, what: &str, reply: Reply) -> Reply {
        info!("session {} from {}: {what} refused: {reply}", s.id, s.peer);
        self.ctx.metrics.inc(
            "palisade_refusals_total",
            "SMTP commands refused by intake checks.",
            &[("code", &reply.code.to_string())],
        );
        reply
    }
}

impl Hooks for RelayIntake {
    async fn on_connect(&self, s: &SessionInfo) -> Result<(), Reply> {
        if !self.allowed_clients.is_empty() && !self.allowed_clients.contains(&s.peer.ip()) {
            return Err(self.refuse(
                s,
                "connection",
                Reply::enhanced(
                    554,
                    (5, 7, 1),
                    format!(
                        "{} accepts mail only from its upstream stage",
                        self.ctx.node_name
                    ),
                ),
            ));
        }
        if let Some(p) = &self.policy {
            p.on_connect(&policy_client(s)).await.map_err(|r| r.reply)?;
        }
        Ok(())
    }

    fn on_close(&self, s: &SessionInfo) {
        if let Some(p) = &self.policy {
            p.on_close(&policy_client(s));
        }
    }

    async fn on_helo(&self, s: &SessionInfo, name: &str) -> Result<(), Reply> {
        if let Some(p) = &self.policy {
            p.on_helo(&policy_client(s), name)
                .await
                .map_err(|r| r.reply)?;
        }
        Ok(())
    }

    async fn on_mail(&self, s: &SessionInfo, from: &str, _p: &MailParams) -> Result<(), Reply> {
        if self.ctx.stage == StageKind::Msa && s.auth_user.is_none() {
            return Err(self.refuse(
                s,
                "MAIL",
                Reply::enhanced(530, (5, 7, 0), "Authentication required"),
            ));
        }
        if let Some(p) = &self.policy {
            let local = self.ctx.config.local_domain(from).is_some();
            p.on_mail(&policy_client(s), from, local)
                .await
                .map_err(|r| r.reply)?;
        }
        Ok(())
    }

    async fn on_rcpt(
        &self,
        s: &SessionInfo,
        env: &Envelope,
        to: &str,
        _p: &RcptParams,
    ) -> Result<(), Reply> {
        if !self.ctx.stage.is_edge() {
            return Ok(());
        }
        // DM7 relay tricks, DM27 spamtraps, DM36 tarpit: before any lookup.
        if let Some(p) = &self.policy {
            let config = &self.ctx.config;
            let is_local = |d: &str| config.local_domain(&format!("x@{d}")).is_some();
            p.on_rcpt(&policy_client(s), to, is_local)
                .await
                .map_err(|r| r.reply)?;
        }
        let local = self.ctx.config.local_domain(to).is_some();
        // DM7: only local domains from unauthenticated clients.
        if !local && s.auth_user.is_none() {
            return Err(self.refuse(
                s,
                "RCPT",
                Reply::enhanced(554, (5, 7, 1), format!("<{to}>: Relay access denied")),
            ));
        }
        // DM19: unknown local recipients are refused now, never bounced later.
        if local && self.ctx.settings().verify_recipients {
            let known = match &self.directory {
                Some(d) => d.lookup(to),
                None => Ok(None),
            };
            match known {
                // DM35 seen from the MX: the store said this mailbox is
                // full, so the sender keeps the message for now.
                Ok(Some(user)) if user.over_quota => {
                    return Err(self.refuse(s, "RCPT", mailbox_full(to)))
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    // DM36: a harvester is cut off instead of answered.
                    if let Some(p) = &self.policy {
                        p.on_unknown_recipient(&policy_client(s))
                            .await
                            .map_err(|r| r.reply)?;
                    }
                    return Err(self.refuse(
                        s,
                        "RCPT",
                        Reply::enhanced(
                            550,
                            (5, 1, 1),
                            format!("<{to}>: Recipient address rejected: User unknown"),
                        ),
                    ));
                }
                Err(e) => {
                    warn!("directory lookup for {to} failed: {e}");
                    return Err(Reply::enhanced(
                        451,
                        (4, 3, 0),
                        "Recipient check temporarily unavailable",
                    ));
                }
            }
        }
        // DM22 greylisting and DM23 recipient rules, for recipients we
        // would otherwise accept.
        if let Some(p) = &self.policy {
            p.on_known_recipient(&policy_client(s), &env.mail_from, to)
                .await
                .map_err(|r| r.reply)?;
        }
        Ok(())
    }

    async fn on_message(&self, s: &SessionInfo, env: Envelope, message: Vec<u8>) -> Reply {
        let cut_through = self
            .cut_through
            .as_ref()
            .and_then(|c| Some((c, c.deadline(&env.mail_params)?)));
        if self.queue.len() > BACKPRESSURE_QUEUE_LEN {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let client = ClientInfo {
            peer: s.peer.to_string(),
            helo: s.helo.clone().unwrap_or_default(),
            tls: s
                .tls
                .as_ref()
                .map(|t| format!("{} {}", t.version, t.cipher)),
            auth_user: s.auth_user.clone(),
        };
        let mut message = message;
        // DM33, DM23 header rules, DM30/31 with Authentication-Results.
        let mut policy_actions = Vec::new();
        if let Some(p) = &self.policy {
            match p
                .on_message(&policy_client(s), &env.mail_from, &message)
                .await
            {
                Ok(plan) => {
                    if !plan.prepend.is_empty() {
                        let mut m = Vec::with_capacity(plan.prepend.len() + message.len());
                        m.extend_from_slice(plan.prepend.as_bytes());
                        m.extend_from_slice(&message);
                        message = m;
                    }
                    policy_actions = plan.actions;
                }
                Err(r) => return r.reply,
            }
        }
        if let Some(filter) = &self.filter {
            let fctx = FilterContext {
                node: &self.ctx.node_name,
                mail_from: &env.mail_from,
                rcpts: env.rcpts.iter().map(|(a, _)| a.as_str()).collect(),
                client: &client,
                origin: env.mail_params.origin.as_deref(),
                cut_through: env.mail_params.cut_through_ms.is_some(),
            };
            match filter.inspect(&fctx, &message).await {
                Verdict::Accept { prepend } => {
                    if !prepend.is_empty() {
                        let mut m = Vec::with_capacity(prepend.len() + message.len());
                        m.extend_from_slice(prepend.as_bytes());
                        m.extend_from_slice(&message);
                        message = m;
                    }
                }
                Verdict::Kept { reason } => {
                    let rcpts = fctx.rcpts.iter().map(|r| r.to_string()).collect();
                    let entry = crate::journal::quarantined_entry(
                        &message,
                        fctx.origin,
                        &env.mail_from,
                        rcpts,
                        &reason,
                    );
                    if let Err(e) = self.queue.journal(vec![entry]).await {
                        warn!("journal: cannot record quarantined message: {e}");
                    }
                    info!(
                        "session {} from {}: from=<{}> kept out of the flow: {reason}",
                        s.id, s.peer, env.mail_from
                    );
                    return Reply::enhanced(250, (2, 0, 0), format!("Ok: {reason}"));
                }
                Verdict::Tempfail(reply) | Verdict::Reject(reply) => {
                    return self.refuse(s, "DATA", reply)
                }
            }
        }
        // Cut-through: the next content stage's verdict while the client
        // waits; without one in time, the copy queued here carries the
        // hand-off's origin.
        let fallback = match cut_through {
            Some((ct, deadline)) => match ct.hand_off(s, &env, &client, &message, deadline).await {
                HandOff::Answered(reply) => return reply,
                HandOff::Queue(f) => Some(f),
            },
            None => None,
        };
        let size = message.len();
        let origin = match &fallback {
            Some(f) => Some(f.origin.clone()),
            None => env.mail_params.origin.clone(),
        };
        let new = NewMessage {
            origin: origin.clone(),
            mail_from: env.mail_from.clone(),
            mail_params: env.mail_params.to_wire(),
            rcpts: env
                .rcpts
                .iter()
                .enumerate()
                .filter(|(i, _)| fallback.as_ref().is_none_or(|f| f.rcpts.contains(i)))
                .map(|(_, (a, p))| NewRecipient {
                    address: a.clone(),
                    params: p.to_wire(),
                })
                .collect(),
            client: ClientInfo {
                peer: s.peer.to_string(),
                helo: s.helo.clone().unwrap_or_default(),
                tls: s
                    .tls
                    .as_ref()
                    .map(|t| format!("{} {}", t.version, t.cipher)),
                auth_user: s.auth_user.clone(),
            },
            body: message,
        };
        let nrcpt = new.rcpts.len();
        match self.queue.enqueue(new).await {
            Ok(q) => {
                let what = if q.duplicate {
                    "duplicate of"
                } else {
                    "queued as"
                };
                info!(
                    "{}: client={}, from=<{}>, nrcpt={}, size={size}{}{}",
                    q.id,
                    s.peer,
                    env.mail_from,
                    nrcpt,
                    origin
                        .as_deref()
                        .map(|o| format!(", origin={o}"))
                        .unwrap_or_default(),
                    if q.duplicate { ", duplicate" } else { "" }
                );
                let sink = MetricsSink(self.ctx.metrics.clone());
                for a in &policy_actions {
                    sink.action(&q.id.to_string(), a.mechanism, a.action, &a.detail);
                }
                self.ctx.metrics.inc(
                    "palisade_messages_accepted_total",
                    "Messages accepted into this node's queue.",
                    &[],
                );
                let note = fallback.as_ref().map(|f| f.note.as_str()).unwrap_or("");
                Reply::enhanced(250, (2, 0, 0), format!("Ok: {what} {}{note}", q.id))
            }
            Err(QueueError::Full) => {
                warn!("queue full: message from {} refused", s.peer);
                Reply::enhanced(452, (4, 3, 1), "Insufficient system storage")
            }
            Err(e) => {
                warn!("queue error: {e}; message from {} refused", s.peer);
                Reply::enhanced(451, (4, 3, 0), "Local error in processing; try again")
            }
        }
    }
}
