//! Greylisting (DM22): a first attempt from a new (client, sender,
//! recipient) triplet is tempfailed 451 4.7.1; real MTAs retry, most spam
//! software does not. The sender carries the run's nonce so the triplet is
//! new on every run. RSET follows an accepted RCPT: nothing is sent.

use palisade_config::StageKind;

use super::Probe;
use crate::audit::{is_greylisted, Ctx};
use crate::model::{Fault, Finding};

pub const GREYLIST: Probe = Probe {
    id: "greylisting",
    fault: Fault::Spam,
    mechanism: Some(22),
    title: "first attempt of a new triplet tempfailed (451 4.7.1)",
};

pub const PROBES: &[Probe] = &[GREYLIST];

pub async fn run(ctx: &Ctx) -> Vec<Finding> {
    let p = GREYLIST;
    let Some(mx) = ctx.opts.mx else {
        return vec![p.not_tested("no --mx given", Vec::new())];
    };
    let Some(rcpt) = ctx.local_rcpt() else {
        return vec![p.not_tested("needs a local recipient", Vec::new())];
    };
    if let Some(why) = ctx.trusted_source() {
        return vec![p.not_tested(why, Vec::new())];
    }
    let claimed = ctx.claims(StageKind::Mx, |s| {
        s.mechanisms
            .dm22_greylist
            .as_ref()
            .is_some_and(|m| m.enabled)
    });
    let sender = match ctx.opts.sender.rsplit_once('@') {
        Some((user, domain)) => format!("{user}+grey-{}@{domain}", ctx.nonce),
        None => ctx.opts.sender.clone(),
    };
    // Not through Ctx::envelope: its greylisting wait is for the probes
    // that need DATA, this one wants the first answer.
    let (mut conn, _) = match ctx.ehlo(mx).await {
        Ok(c) => c,
        Err((why, t)) => return vec![p.not_tested(why, t)],
    };
    let mail = match conn.cmd(&format!("MAIL FROM:<{sender}>")).await {
        Ok(r) => r,
        Err(e) => return vec![p.not_tested(e.to_string(), conn.into_transcript())],
    };
    if !mail.is_positive() {
        return vec![p.not_tested(
            format!(
                "MAIL refused: {}; give a --sender the target accepts",
                mail.summary()
            ),
            conn.quit().await,
        )];
    }
    let r = match conn.cmd(&format!("RCPT TO:<{rcpt}>")).await {
        Ok(r) => r,
        Err(e) => return vec![p.not_tested(e.to_string(), conn.into_transcript())],
    };
    let _ = conn.cmd("RSET").await;
    let t = conn.quit().await;
    if is_greylisted(&r) {
        vec![p.working(format!("first attempt tempfailed: {}", r.summary()), t)]
    } else if r.is_positive() {
        vec![p.failed(
            claimed,
            format!("first attempt accepted at once: {}", r.summary()),
            t,
        )]
    } else {
        vec![p.not_tested(
            format!("recipient refused for another reason: {}", r.summary()),
            t,
        )]
    }
}
