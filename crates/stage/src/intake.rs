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
use palisade_mailbox::Directory;
use palisade_queue::{ClientInfo, NewMessage, NewRecipient, Queue, QueueError};
use palisade_smtp_proto::{MailParams, RcptParams, Reply};
use palisade_smtp_server::{Envelope, Hooks, SessionInfo};
use tracing::{info, warn};

use crate::filter::{FilterContext, MessageFilter, Verdict};
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
    /// User directory for recipient checks at the MX and MSA.
    pub directory: Option<Directory>,
    /// Content inspection before queueing (antivirus, antispam stages).
    pub filter: Option<Arc<dyn MessageFilter>>,
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
        Ok(())
    }

    async fn on_mail(&self, s: &SessionInfo, _from: &str, _p: &MailParams) -> Result<(), Reply> {
        if self.ctx.stage == StageKind::Msa && s.auth_user.is_none() {
            return Err(self.refuse(
                s,
                "MAIL",
                Reply::enhanced(530, (5, 7, 0), "Authentication required"),
            ));
        }
        Ok(())
    }

    async fn on_rcpt(
        &self,
        s: &SessionInfo,
        _env: &Envelope,
        to: &str,
        _p: &RcptParams,
    ) -> Result<(), Reply> {
        if !self.ctx.stage.is_edge() {
            return Ok(());
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
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(self.refuse(
                        s,
                        "RCPT",
                        Reply::enhanced(
                            550,
                            (5, 1, 1),
                            format!("<{to}>: Recipient address rejected: User unknown"),
                        ),
                    ))
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
        Ok(())
    }

    async fn on_message(&self, s: &SessionInfo, env: Envelope, message: Vec<u8>) -> Reply {
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
        if let Some(filter) = &self.filter {
            let fctx = FilterContext {
                node: &self.ctx.node_name,
                mail_from: &env.mail_from,
                rcpts: env.rcpts.iter().map(|(a, _)| a.as_str()).collect(),
                client: &client,
                origin: env.mail_params.origin.as_deref(),
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
        let size = message.len();
        let new = NewMessage {
            origin: env.mail_params.origin.clone(),
            mail_from: env.mail_from.clone(),
            mail_params: env.mail_params.to_wire(),
            rcpts: env
                .rcpts
                .iter()
                .map(|(a, p)| NewRecipient {
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
        match self.queue.enqueue(new).await {
            Ok(q) => {
                let what = if q.duplicate {
                    "duplicate of"
                } else {
                    "queued as"
                };
                info!(
                    "{}: client={}, from=<{}>, nrcpt={}, size={size}{}",
                    q.id,
                    s.peer,
                    env.mail_from,
                    env.rcpts.len(),
                    env.mail_params
                        .origin
                        .as_deref()
                        .map(|o| format!(", origin={o}"))
                        .unwrap_or_default()
                );
                self.ctx.metrics.inc(
                    "palisade_messages_accepted_total",
                    "Messages accepted into this node's queue.",
                    &[],
                );
                Reply::enhanced(250, (2, 0, 0), format!("Ok: {what} {}", q.id))
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
