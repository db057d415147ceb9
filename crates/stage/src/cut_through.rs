//! Cut-through at the MX (`[stage.mx.cut_through]`): the client's reply to
//! DATA waits for the next stage's verdict, within a deadline.
//!
//! Instead of queueing first and forwarding later, the MX hands the
//! message to the antivirus pair while the client waits:
//!
//! | next stage says | the MX |
//! |---|---|
//! | 250, message queued | answers 250 and queues nothing: the next stage holds the durable copy |
//! | 250, message quarantined (infected, MIME bomb) | answers 550 5.7.1: the sender learns at once, nothing reaches a mailbox, and no bounce is ever needed |
//! | 4xx, 5xx, no answer, past the deadline | queues the message as usual and answers 250: the forwarder delivers it when the next stage is back |
//!
//! Nothing accepted is lost: the 250 goes out only once the next stage or
//! our own queue has the message on disk. The one cost is a possible
//! duplicate when the deadline passes after the next stage received the
//! whole message but before its reply arrived (at-least-once delivery,
//! never less).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use palisade_config::{CutThroughSettings, NextHop};
use palisade_smtp_client::{ClientConfig, Connection, TlsMode, Transaction};
use palisade_smtp_proto::Reply;
use tracing::{info, warn};

use crate::filter::{FilterContext, MessageFilter, Verdict, VerdictFuture};
use crate::received::{received_header, Hop};
use crate::runtime::NodeContext;

pub struct CutThrough {
    ctx: Arc<NodeContext>,
    settings: CutThroughSettings,
}

impl CutThrough {
    pub fn new(ctx: &Arc<NodeContext>) -> CutThrough {
        CutThrough {
            ctx: ctx.clone(),
            settings: ctx.settings().cut_through,
        }
    }

    /// Hands the message to the next pool; `None` when it could not
    /// (the caller then queues it).
    async fn hand_over(&self, fctx: &FilterContext<'_>, message: &[u8]) -> Option<(Reply, String)> {
        let config = &self.ctx.config;
        // All recipients must go to the same pool in one transaction;
        // otherwise queue as usual.
        let mut pool: Option<(String, Vec<std::net::SocketAddr>)> = None;
        for r in &fctx.rcpts {
            match config.next_hop(self.ctx.stage, r) {
                NextHop::Pool { name, addrs } => match &pool {
                    Some((n, _)) if *n != name => return None,
                    Some(_) => {}
                    None => pool = Some((name, addrs)),
                },
                _ => return None,
            }
        }
        let (_, addrs) = pool?;
        let id = format!("CT{:010X}", rand::random::<u64>() & 0xFF_FFFF_FFFF);
        let header = received_header(&Hop {
            helo: &fctx.client.helo,
            peer: &fctx.client.peer,
            hostname: &config.gateway.hostname,
            node: &self.ctx.node_name,
            tls: fctx.client.tls.is_some(),
            authenticated: fctx.client.auth_user.is_some(),
            queue_id: &id,
            single_recipient: match fctx.rcpts.as_slice() {
                [only] => Some(only),
                _ => None,
            },
            when: SystemTime::now(),
        });
        let mut body = Vec::with_capacity(header.len() + message.len());
        body.extend_from_slice(header.as_bytes());
        body.extend_from_slice(message);
        let origin = format!("{}/{id}", self.ctx.node_name);
        let rcpts: Vec<(&str, &str)> = fctx.rcpts.iter().map(|r| (*r, "")).collect();
        let tx = Transaction {
            mail_from: fctx.mail_from,
            mail_params: "",
            origin: Some(&origin),
            rcpts: &rcpts,
            body: &body,
        };
        let mut client = ClientConfig::new(config.gateway.hostname.clone());
        client.tls_mode = TlsMode::None;
        client.connect_timeout = Duration::from_secs(2);
        for addr in addrs {
            let Ok(mut conn) = Connection::connect(addr, &client).await else {
                continue;
            };
            match conn.send(&tx).await {
                Ok(res) if res.accepted() == rcpts.len() => {
                    let reply = res.rcpt_outcome(0).clone();
                    conn.quit().await;
                    return Some((reply, addr.to_string()));
                }
                Ok(res) => {
                    let reply = res.rcpt_outcome(0).clone();
                    conn.quit().await;
                    if res.accepted() > 0 {
                        // Partly taken: queueing the rest separately is not
                        // possible from here; queue all (duplicates for
                        // the accepted ones are possible, loss is not).
                        warn!("cut-through: {addr} took only some recipients ({reply}); queueing");
                        return None;
                    }
                }
                Err(e) => info!("cut-through: {addr}: {e}"),
            }
        }
        None
    }
}

impl MessageFilter for CutThrough {
    fn inspect<'a>(&'a self, ctx: &'a FilterContext<'a>, message: &'a [u8]) -> VerdictFuture<'a> {
        Box::pin(async move {
            if !self.settings.enabled {
                return Verdict::Accept {
                    prepend: String::new(),
                };
            }
            let deadline = self.settings.deadline.duration();
            match tokio::time::timeout(deadline, self.hand_over(ctx, message)).await {
                Ok(Some((reply, by))) if reply.text.contains("quarantined") => {
                    // The antivirus stage kept it (its 250 says so): the
                    // client is told now, in the SMTP session.
                    info!("cut-through: {by} quarantined the message: {reply}");
                    let what = reply
                        .text
                        .split_once('(')
                        .map(|(_, w)| w.trim_end_matches(')'))
                        .unwrap_or("content rejected");
                    Verdict::Reject(Reply::enhanced(
                        550,
                        (5, 7, 1),
                        format!("Message refused by content filter: {what}"),
                    ))
                }
                Ok(Some((reply, by))) => Verdict::Kept {
                    reason: format!("passed on to {by} by cut-through: {reply}"),
                },
                Ok(None) => Verdict::Accept {
                    prepend: String::new(),
                },
                Err(_) => {
                    warn!("cut-through: no verdict within {deadline:?}; queueing");
                    Verdict::Accept {
                        prepend: String::new(),
                    }
                }
            }
        })
    }
}
