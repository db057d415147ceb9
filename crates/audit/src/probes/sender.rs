//! Forging: a local-domain sender from outside, without AUTH. Only the MSA
//! (with AUTH) may send as a local user; the MX refuses it (DM19 MTA
//! rules, SPEC §5: 550 5.7.1). Nothing is sent: RSET before DATA.

use palisade_config::StageKind;

use super::Probe;
use crate::audit::Ctx;
use crate::model::{Fault, Finding};

pub const FORGED: Probe = Probe {
    id: "forged-local-sender",
    fault: Fault::Forging,
    mechanism: Some(19),
    title: "local-domain sender from outside without AUTH",
};

pub const PROBES: &[Probe] = &[FORGED];

pub async fn run(ctx: &Ctx) -> Vec<Finding> {
    vec![forged(ctx).await]
}

async fn forged(ctx: &Ctx) -> Finding {
    let p = FORGED;
    let (Some(mx), Some(victim)) = (ctx.opts.mx, ctx.local_rcpt()) else {
        return p.not_tested("needs --mx and a local domain", Vec::new());
    };
    // The gateway's own host may send as local users (cron, monitoring).
    if let Some(why) = ctx.trusted_source() {
        return p.not_tested(why, Vec::new());
    }
    let claimed = ctx.claims(StageKind::Mx, |s| {
        s.mechanisms
            .dm19_mta_rules
            .as_ref()
            .is_some_and(|m| m.enabled && m.refuse_local_forgery)
    });
    let env = match ctx.envelope(mx, &victim, "", &victim).await {
        Ok(env) => env,
        Err((why, t)) => return p.not_tested(why, t),
    };
    let mut conn = env.conn;
    match env.rcpt {
        None if env.mail.code >= 500 => p.working(
            format!("MAIL FROM:<{victim}> refused: {}", env.mail.summary()),
            conn.quit().await,
        ),
        None => p.not_tested(
            format!("MAIL tempfailed: {}", env.mail.summary()),
            conn.quit().await,
        ),
        Some(r) if r.code >= 500 => p.working(
            format!("refused at RCPT: {}", r.summary()),
            conn.quit().await,
        ),
        Some(r) => {
            let _ = conn.cmd("RSET").await;
            let detail = format!(
                "MAIL FROM:<{victim}> accepted from outside without AUTH; RCPT: {}",
                r.summary()
            );
            p.failed(claimed, detail, conn.quit().await)
        }
    }
}
