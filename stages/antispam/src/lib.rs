//! The antispam stage's filter (stage D).
//!
//! Each message is scored by palisade-spam (Bayes DM24, rules DM23, header
//! heuristics, the MX's Authentication-Results, GTUBE), then the action
//! depends on the flow:
//!
//! | flow | score | action |
//! |---|---|---|
//! | 1 (to local users) | < tag | headers `X-Spam-Flag: NO`, score, report |
//! | 1 | >= tag | `X-Spam-Flag: YES`: the store files it into Junk |
//! | 1 | >= quarantine | quarantined (never bounced, SPEC §4) |
//! | 4 (authenticated local sender) | >= outbound hold | held in the quarantine and counted; not sent on |
//!
//! Under cut-through (the upstream holds its client's reply, `XCUT`):
//! flow 1 at or above `cut_through_reject_threshold` (default: the
//! quarantine threshold) and flow 4 at or above the outbound hold are
//! refused with 550 5.7.1 instead (`rejected`, `outbound-rejected`): the
//! sender is told, nothing is kept. Everything else is queued as usual.
//!
//! The score's parts are in `X-Spam-Report` and in the metrics
//! (`palisade_spam_hits_total{source=...}`).
//!
//! # Failure modes
//! The Bayes database unreadable: the message is scored without Bayes
//! (rules still run) and the problem logged; a quarantine write error is
//! temporary (451, the upstream queue keeps the message).

use std::sync::{Arc, RwLock};

use anyhow::{Context, Result};
use palisade_config::SpamSettings;
use palisade_spam::{Analysis, BayesDb, MemoryCounts, Scorer, ScorerSettings};
use palisade_stage::cut_through;
use palisade_stage::filter::{FilterContext, MessageFilter, Verdict, VerdictFuture};
use palisade_stage::NodeContext;
use palisade_virus::{entry_hop, Quarantine, QuarantineEntry};
use tracing::{info, warn};

pub struct AntispamFilter {
    ctx: Arc<NodeContext>,
    /// Rules and thresholds, replaced by a reload (SIGHUP); a message is
    /// scored with the ones it started with.
    tuning: RwLock<Arc<Tuning>>,
    bayes: Option<BayesDb>,
    quarantine: Quarantine,
}

struct Tuning {
    scorer: Scorer,
    settings: SpamSettings,
}

impl Tuning {
    fn from_config(config: &palisade_config::Config) -> Result<Tuning> {
        Ok(Tuning {
            scorer: Scorer::new(ScorerSettings::from_config(config)).context("antispam rules")?,
            settings: config.spam(),
        })
    }
}

impl AntispamFilter {
    pub fn new(ctx: &Arc<NodeContext>) -> Result<AntispamFilter> {
        let config = &ctx.config;
        let tuning = Tuning::from_config(config)?;
        let dir = config.bayes_db_dir();
        let bayes = match BayesDb::open(&dir) {
            Ok(db) => {
                let trained = db.reader().map(|r| palisade_spam::TokenCounts::totals(&r));
                match trained {
                    Ok(t) if t.spam > 0 && t.ham > 0 => info!(
                        "{}: Bayes database {} ({} spam, {} ham trained)",
                        ctx.node_name,
                        dir.display(),
                        t.spam,
                        t.ham
                    ),
                    _ => warn!(
                        "{}: Bayes database {} is not trained yet (palisade spam train); scoring with rules only",
                        ctx.node_name,
                        dir.display()
                    ),
                }
                Some(db)
            }
            Err(e) => {
                warn!(
                    "Bayes database {}: {e}; scoring with rules only",
                    dir.display()
                );
                None
            }
        };
        let qdir = config.quarantine_dir();
        let quarantine = Quarantine::open(&qdir)
            .with_context(|| format!("opening quarantine {}", qdir.display()))?;
        Ok(AntispamFilter {
            ctx: ctx.clone(),
            tuning: RwLock::new(Arc::new(tuning)),
            bayes,
            quarantine,
        })
    }

    /// A reload: new rules and thresholds for the next messages; rules
    /// that do not build keep the running ones (the error says why).
    pub fn reload(&self, config: &palisade_config::Config) -> Result<()> {
        let tuning = Tuning::from_config(config)?;
        *self.tuning.write().unwrap() = Arc::new(tuning);
        Ok(())
    }

    fn tuning(&self) -> Arc<Tuning> {
        self.tuning.read().unwrap().clone()
    }

    fn analyze(&self, scorer: &Scorer, message: &[u8]) -> Analysis {
        if let Some(db) = &self.bayes {
            match db.reader() {
                Ok(reader) => return scorer.analyze(message, &reader),
                Err(e) => warn!("Bayes database unreadable ({e}); scoring without it"),
            }
        }
        scorer.analyze(message, &MemoryCounts::default())
    }

    fn count(&self, verdict: &str, a: &Analysis) {
        let m = &self.ctx.metrics;
        m.inc(
            "palisade_spam_verdicts_total",
            "Messages scored by the antispam stage, by action taken.",
            &[("verdict", verdict)],
        );
        for h in &a.hits {
            m.inc(
                "palisade_spam_hits_total",
                "Score sources that contributed to a message's score.",
                &[("source", h.source.name())],
            );
        }
    }

    fn keep(
        &self,
        ctx: &FilterContext<'_>,
        message: &[u8],
        kind: &str,
        flow4: bool,
        a: &Analysis,
    ) -> Verdict {
        let mut stored = a.report_header().into_bytes();
        stored.extend_from_slice(message);
        let entry = QuarantineEntry {
            id: Quarantine::new_id(),
            time: Quarantine::now(),
            node: self.ctx.node_name.clone(),
            kind: kind.into(),
            verdict: format!("score {:.2}", a.score),
            mail_from: ctx.mail_from.into(),
            rcpts: ctx.rcpts.iter().map(|r| r.to_string()).collect(),
            authenticated_sender: flow4,
            origin: ctx.origin.map(str::to_string),
            message: stored,
        };
        if let Err(e) = self.quarantine.put(&entry) {
            return Verdict::could_not_keep(format!("quarantine write failed: {e}"));
        }
        warn!(
            "quarantined {}: {kind} score {:.2}, from=<{}>, to={:?}",
            entry.id, a.score, ctx.mail_from, ctx.rcpts
        );
        Verdict::Kept {
            reason: format!("quarantined as {} ({kind}, score {:.2})", entry.id, a.score),
        }
    }
}

impl MessageFilter for AntispamFilter {
    fn inspect<'a>(&'a self, ctx: &'a FilterContext<'a>, message: &'a [u8]) -> VerdictFuture<'a> {
        Box::pin(async move {
            // Scoring is CPU work with no I/O but LMDB reads (memory-mapped).
            let tuning = self.tuning();
            let a = self.analyze(&tuning.scorer, message);
            let flow4 = ctx.client.auth_user.is_some()
                || entry_hop::authenticated_submission(&self.ctx.config, message);
            let s = &tuning.settings;
            let refuse = if flow4 {
                a.score >= s.outbound_hold_threshold
            } else {
                a.score >= s.cut_through_reject()
            };
            if ctx.cut_through && refuse {
                let verdict = if flow4 {
                    "outbound-rejected"
                } else {
                    "rejected"
                };
                self.count(verdict, &a);
                warn!(
                    "refused under cut-through: spam score {:.2}, from=<{}>, to={:?}, origin={}",
                    a.score,
                    ctx.mail_from,
                    ctx.rcpts,
                    ctx.origin.unwrap_or("-")
                );
                return Verdict::Reject(cut_through::spam_refusal(&format!(
                    "score {:.2}",
                    a.score
                )));
            }
            if flow4 && a.score >= s.outbound_hold_threshold {
                self.count("outbound-held", &a);
                return self.keep(ctx, message, "outbound-spam", true, &a);
            }
            if !flow4 && a.score >= s.quarantine_threshold {
                self.count("quarantined", &a);
                return self.keep(ctx, message, "spam", false, &a);
            }
            let spam = a.score >= s.tag_threshold;
            self.count(if spam { "tagged" } else { "ham" }, &a);
            info!(
                "from=<{}> score={:.2} {}",
                ctx.mail_from,
                a.score,
                if spam { "tagged spam" } else { "ham" }
            );
            let mut prepend = format!(
                "X-Spam-Flag: {}\r\nX-Spam-Score: {:.2}\r\nX-Spam-Status: {}, score={:.2} required={:.2}\r\n",
                if spam { "YES" } else { "NO" },
                a.score,
                if spam { "Yes" } else { "No" },
                a.score,
                s.tag_threshold
            );
            prepend.push_str(&a.report_header());
            Verdict::Accept { prepend }
        })
    }
}
