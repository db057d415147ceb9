//! The antivirus stage's filter (stage C, Table I DM28).
//!
//! For each message, before it is queued:
//! 1. MIME-bomb limits (nesting, parts, decoded size): over a limit, the
//!    message is quarantined unscanned (it would cost clamd dearly, or make
//!    it give up and call it clean);
//! 2. clamd scan (INSTREAM, failover between daemons);
//! 3. infected: quarantine with the virus name, a DSN to an authenticated
//!    local sender (flow 4), optionally a short notice to local
//!    recipients; an external sender never hears of it (SPEC §4:
//!    backscatter);
//! 4. no clamd answering: 451, the upstream queue keeps the message
//!    (or, only when configured, pass it tagged `X-Virus-Status: Unscanned`).
//!
//! Under cut-through (the upstream holds its client's reply, `XCUT`), 2
//! and 3 become a refusal instead: 550 5.7.1 naming the virus or the
//! limit, no quarantine copy and no notices, since the sender is told in
//! the SMTP session. A clean message is then handed on to the antispam
//! stage by the stage skeleton (crates/stage/src/cut_through.rs).
//!
//! # Failure modes
//! Scanner down and quarantine write errors are temporary (451): nothing
//! is accepted that was not scanned and stored.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use palisade_config::{Config, ScannerUnavailable, StageKind, VirusSettings};
use palisade_smtp_proto::Reply;
use palisade_stage::cut_through;
use palisade_stage::filter::{FilterContext, MessageFilter, Verdict, VerdictFuture};
use palisade_stage::NodeContext;
use palisade_virus::{
    entry_hop, reinject, ClamdAddress, MimeLimits, Quarantine, QuarantineEntry, ScanOutcome,
    Scanner,
};
use tracing::{info, warn};

pub mod notice;

pub struct AntivirusFilter {
    ctx: Arc<NodeContext>,
    /// clamd addresses, MIME limits and policy, replaced by a reload
    /// (SIGHUP); a message is inspected with the ones it started with.
    tuning: RwLock<Arc<Tuning>>,
    quarantine: Quarantine,
}

struct Tuning {
    scanner: Scanner,
    limits: MimeLimits,
    settings: VirusSettings,
}

impl Tuning {
    fn from_config(config: &Config, node: &str) -> Tuning {
        let settings = config.virus();
        let addresses = config
            .clamd_addresses()
            .iter()
            .map(|a| ClamdAddress::parse(a))
            .collect::<Vec<_>>();
        info!(
            "{node}: scanning with clamd at {}",
            addresses
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        Tuning {
            scanner: Scanner::new(addresses, settings.scan_timeout.duration()),
            limits: MimeLimits {
                max_depth: settings.max_mime_depth,
                max_parts: settings.max_mime_parts,
                max_decoded_size: settings.max_decoded_size,
            },
            settings,
        }
    }
}

impl AntivirusFilter {
    pub fn new(ctx: &Arc<NodeContext>) -> Result<AntivirusFilter> {
        let config = &ctx.config;
        let dir = config.quarantine_dir();
        let quarantine = Quarantine::open(&dir)
            .with_context(|| format!("opening quarantine {}", dir.display()))?;
        Ok(AntivirusFilter {
            ctx: ctx.clone(),
            tuning: RwLock::new(Arc::new(Tuning::from_config(config, &ctx.node_name))),
            quarantine,
        })
    }

    /// A reload: new clamd addresses, MIME limits and policy for the next
    /// messages.
    pub fn reload(&self, config: &Config) {
        *self.tuning.write().unwrap() = Arc::new(Tuning::from_config(config, &self.ctx.node_name));
    }

    fn tuning(&self) -> Arc<Tuning> {
        self.tuning.read().unwrap().clone()
    }

    fn count(&self, result: &str) {
        self.ctx.metrics.inc(
            "palisade_virus_scans_total",
            "Messages inspected by the antivirus stage, by result.",
            &[("result", result)],
        );
    }

    /// Quarantines the message; `Kept` on success, 451 when it cannot be
    /// stored (the upstream queue keeps it). Under cut-through: refuses it.
    fn keep(&self, ctx: &FilterContext<'_>, message: &[u8], kind: &str, verdict: &str) -> Verdict {
        if ctx.cut_through {
            warn!(
                "refused under cut-through: {kind} {verdict}, from=<{}>, to={:?}, origin={}",
                ctx.mail_from,
                ctx.rcpts,
                ctx.origin.unwrap_or("-")
            );
            return Verdict::Reject(cut_through::virus_refusal(verdict));
        }
        let flow4 = ctx.client.auth_user.is_some()
            || entry_hop::authenticated_submission(&self.ctx.config, message);
        let entry = QuarantineEntry {
            id: Quarantine::new_id(),
            time: Quarantine::now(),
            node: self.ctx.node_name.clone(),
            kind: kind.into(),
            verdict: verdict.into(),
            mail_from: ctx.mail_from.into(),
            rcpts: ctx.rcpts.iter().map(|r| r.to_string()).collect(),
            authenticated_sender: flow4,
            origin: ctx.origin.map(str::to_string),
            message: message.to_vec(),
        };
        if let Err(e) = self.quarantine.put(&entry) {
            return Verdict::could_not_keep(format!("quarantine write failed: {e}"));
        }
        warn!(
            "quarantined {}: {kind} {verdict}, from=<{}>, to={:?}, origin={}",
            entry.id,
            ctx.mail_from,
            ctx.rcpts,
            ctx.origin.unwrap_or("-")
        );
        self.send_notices(&entry);
        Verdict::Kept {
            reason: format!("quarantined as {} ({kind}: {verdict})", entry.id),
        }
    }

    /// DSN to an authenticated local sender; notice to local recipients
    /// when configured. Never anything to an external sender (SPEC §4).
    fn send_notices(&self, entry: &QuarantineEntry) {
        let config: Arc<Config> = self.ctx.config.clone();
        let mut jobs: Vec<(Vec<String>, Vec<u8>)> = Vec::new();
        if entry.authenticated_sender && !entry.mail_from.is_empty() {
            jobs.push((vec![entry.mail_from.clone()], notice::dsn(&config, entry)));
        }
        if self.tuning().settings.notify_recipients {
            let local: Vec<String> = entry
                .rcpts
                .iter()
                .filter(|r| config.local_domain(r).is_some())
                .cloned()
                .collect();
            if !local.is_empty() {
                jobs.push((local, notice::recipient_notice(&config, entry)));
            }
        }
        for (rcpts, message) in jobs {
            let config = config.clone();
            let id = entry.id.clone();
            tokio::spawn(async move {
                // Null sender: a notice must never cause a bounce itself.
                let send =
                    reinject::send_after_stage(&config, StageKind::Antivirus, "", &rcpts, &message);
                match tokio::time::timeout(NOTICE_TIMEOUT, send).await {
                    Ok(Ok(())) => info!("quarantine {id}: notice sent to {rcpts:?}"),
                    Ok(Err(e)) => warn!("quarantine {id}: notice to {rcpts:?} not sent: {e}"),
                    Err(_) => warn!("quarantine {id}: notice to {rcpts:?} timed out"),
                }
            });
        }
    }
}

impl MessageFilter for AntivirusFilter {
    fn inspect<'a>(&'a self, ctx: &'a FilterContext<'a>, message: &'a [u8]) -> VerdictFuture<'a> {
        Box::pin(async move {
            let tuning = self.tuning();
            if let Err(limit) = tuning.limits.check(message) {
                self.count("mime-limit");
                return self.keep(ctx, message, "mime-limit", &limit);
            }
            match tuning.scanner.scan(message).await {
                Ok((ScanOutcome::Clean, by)) => {
                    self.count("clean");
                    Verdict::Accept {
                        prepend: format!(
                            "X-Virus-Scanned: clamd {by} at {} ({})\r\n",
                            self.ctx.config.gateway.hostname, self.ctx.node_name
                        ),
                    }
                }
                Ok((ScanOutcome::Infected(name), _)) => {
                    self.count("infected");
                    self.keep(ctx, message, "virus", &name)
                }
                Err(e) => {
                    self.count("scanner-unavailable");
                    match tuning.settings.on_scanner_unavailable {
                        ScannerUnavailable::Tempfail => {
                            warn!("{e}; message tempfailed (stays queued upstream)");
                            Verdict::Tempfail(Reply::enhanced(
                                451,
                                (4, 3, 0),
                                "Virus scanner unavailable, try again later",
                            ))
                        }
                        ScannerUnavailable::AcceptTagged => {
                            warn!("{e}; passing the message UNSCANNED (accept-tagged)");
                            Verdict::Accept {
                                prepend: format!(
                                    "X-Virus-Status: Unscanned (no clamd answered at {})\r\n",
                                    self.ctx.node_name
                                ),
                            }
                        }
                    }
                }
            }
        })
    }
}

/// How long sending a notice may take. Notices are best effort: the
/// quarantined message itself is safe either way.
pub const NOTICE_TIMEOUT: Duration = Duration::from_secs(60);
