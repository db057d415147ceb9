//! Recipients at the MX: an unknown local recipient must be refused at
//! RCPT (DM19: accepting it means bouncing it later to a forged sender —
//! backscatter, the paper's figure 12), and the number of recipients of
//! one message is capped (DM9: traffic amplification).

use palisade_config::StageKind;

use super::Probe;
use crate::audit::{is_greylisted, Ctx};
use crate::client::elide;
use crate::model::{Fault, Finding};

pub const UNKNOWN: Probe = Probe {
    id: "unknown-recipient",
    fault: Fault::Spam,
    mechanism: Some(19),
    title: "unknown local recipient refused at RCPT (backscatter)",
};

pub const LIMIT: Probe = Probe {
    id: "recipient-limit",
    fault: Fault::TrafficAmplification,
    mechanism: Some(9),
    title: "recipients per message capped",
};

pub const PROBES: &[Probe] = &[UNKNOWN, LIMIT];

/// Recipients tried when the limit is unknown: RFC 5321 §4.5.3.1.8 asks
/// servers to take at least 100; Postfix's default cap is 1000.
const UNKNOWN_LIMIT_TRIES: usize = 1001;

pub async fn run(ctx: &Ctx) -> Vec<Finding> {
    vec![unknown(ctx).await, limit(ctx).await]
}

async fn unknown(ctx: &Ctx) -> Finding {
    let p = UNKNOWN;
    let (Some(mx), Some(domain)) = (ctx.opts.mx, ctx.local_domain()) else {
        return p.not_tested("needs --mx and a local domain", Vec::new());
    };
    let nobody = format!("audit-nobody-{}@{domain}", ctx.nonce);
    let claimed = ctx.claims(StageKind::Mx, |s| s.verify_recipients);
    let env = match ctx.envelope(mx, &ctx.opts.sender, "", &nobody).await {
        Ok(env) => env,
        Err((why, t)) => return p.not_tested(why, t),
    };
    let mut conn = env.conn;
    let Some(r) = env.rcpt else {
        return p.not_tested(
            format!(
                "MAIL refused: {}; give a --sender the target accepts",
                env.mail.summary()
            ),
            conn.quit().await,
        );
    };
    if r.code >= 500 {
        p.working(
            format!("refused at RCPT: {}", r.summary()),
            conn.quit().await,
        )
    } else if r.is_positive() {
        let _ = conn.cmd("RSET").await;
        p.failed(
            claimed,
            format!(
                "RCPT TO:<{nobody}> accepted ({}): the target would bounce it later",
                r.summary()
            ),
            conn.quit().await,
        )
    } else if is_greylisted(&r) {
        p.not_tested(
            format!("greylisted before the recipient check: {}", r.summary()),
            conn.quit().await,
        )
    } else {
        p.not_tested(format!("tempfailed: {}", r.summary()), conn.quit().await)
    }
}

async fn limit(ctx: &Ctx) -> Finding {
    let p = LIMIT;
    let (Some(mx), Some(rcpt)) = (ctx.opts.mx, ctx.local_rcpt()) else {
        return p.not_tested("needs --mx and a local recipient", Vec::new());
    };
    let configured = ctx.settings(StageKind::Mx).map(|s| s.limits.max_recipients);
    let tries = configured.map_or(UNKNOWN_LIMIT_TRIES, |n| n + 1);
    let mut conn = match ctx.open_transaction(mx, &rcpt, false).await {
        Ok(c) => c,
        Err((why, t)) => return p.not_tested(why, t),
    };
    // The same valid recipient again: every RCPT counts against the cap,
    // and no unknown-recipient throttle (DM36) is triggered.
    let mut accepted = 1;
    let mut refusal = None;
    let keep = conn.transcript.len();
    for i in 1..tries {
        match conn.cmd(&format!("RCPT TO:<{rcpt}>")).await {
            Ok(r) if r.is_positive() => accepted += 1,
            Ok(r) => {
                refusal = Some(r);
                break;
            }
            Err(e) => {
                let mut t = conn.into_transcript();
                elide(&mut t, keep, 6, 4);
                return p.not_tested(format!("after {i} recipients: {e}"), t);
            }
        }
    }
    elide(&mut conn.transcript, keep, 6, 4);
    let _ = conn.cmd("RSET").await;
    let t = conn.quit().await;
    match (refusal, configured) {
        (Some(r), Some(n)) if accepted <= n => p.working(
            format!(
                "recipient {} refused: {} (configured cap {n})",
                accepted + 1,
                r.summary()
            ),
            t,
        ),
        (Some(r), Some(n)) => p.failed(
            Some(true),
            format!(
                "{accepted} accepted before {} (configured cap {n})",
                r.summary()
            ),
            t,
        ),
        (Some(r), None) => p.working(
            format!("recipient {} refused: {}", accepted + 1, r.summary()),
            t,
        ),
        (None, Some(n)) => p.failed(
            Some(true),
            format!("all {accepted} recipients accepted (configured cap {n})"),
            t,
        ),
        (None, None) => p.failed(
            None,
            format!("all {accepted} recipients accepted: no cap up to {tries}"),
            t,
        ),
    }
}
