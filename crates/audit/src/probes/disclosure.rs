//! Address disclosure (DM17, RFC 2505 §2.11): VRFY and EXPN must not tell
//! a harvester which local addresses exist. The probe asks about an
//! address that exists and one that cannot; different answers (252 or 250
//! against 550) disclose the directory, so does a successful EXPN.

use palisade_config::StageKind;

use super::Probe;
use crate::audit::Ctx;
use crate::model::{Fault, Finding};

pub const VRFY: Probe = Probe {
    id: "vrfy-expn-disclosure",
    fault: Fault::Spam,
    mechanism: Some(17),
    title: "VRFY/EXPN do not disclose which addresses exist",
};

pub const PROBES: &[Probe] = &[VRFY];

pub async fn run(ctx: &Ctx) -> Vec<Finding> {
    let p = VRFY;
    let (Some(mx), Some(known), Some(domain)) = (ctx.opts.mx, ctx.local_rcpt(), ctx.local_domain())
    else {
        return vec![p.not_tested("needs --mx and a local domain", Vec::new())];
    };
    let claimed = ctx.claims(StageKind::Mx, |s| {
        s.mechanisms
            .dm17_rfc2505
            .as_ref()
            .is_some_and(|m| m.enabled)
    });
    let (mut conn, _) = match ctx.ehlo(mx).await {
        Ok(c) => c,
        Err((why, t)) => return vec![p.not_tested(why, t)],
    };
    let unknown = format!("audit-nobody-{}@{domain}", ctx.nonce);
    let replies = async {
        let a = conn.cmd(&format!("VRFY {known}")).await?;
        let b = conn.cmd(&format!("VRFY {unknown}")).await?;
        let c = conn.cmd("EXPN postmaster").await?;
        Ok::<_, crate::client::Stop>((a, b, c))
    }
    .await;
    let (known_r, unknown_r, expn) = match replies {
        Ok(r) => r,
        Err(e) => return vec![p.not_tested(e.to_string(), conn.into_transcript())],
    };
    let t = conn.quit().await;
    let tells = |a: u16, b: u16| (a < 300) != (b < 300);
    if expn.code == 250 {
        vec![p.failed(claimed, format!("EXPN answered: {}", expn.summary()), t)]
    } else if tells(known_r.code, unknown_r.code) {
        vec![p.failed(
            claimed,
            format!(
                "VRFY tells them apart: existing {} / unknown {}",
                known_r.code, unknown_r.code
            ),
            t,
        )]
    } else {
        vec![p.working(
            format!("VRFY {} for both, EXPN {}", known_r.code, expn.code),
            t,
        )]
    }
}
