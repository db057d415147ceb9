//! Early talker (DM32 greet pause, slammer): a client that speaks before
//! the banner is a bulk-mail engine or a worm, not an MTA. With a greet
//! pause the server refuses it (554 5.5.1, SPEC §5); without one the
//! banner comes at once and the EHLO is answered.

use palisade_config::StageKind;

use super::Probe;
use crate::audit::Ctx;
use crate::client::Conn;
use crate::model::{Fault, Finding};

pub const EARLY: Probe = Probe {
    id: "early-talker",
    fault: Fault::Slammer,
    mechanism: Some(32),
    title: "a client talking before the banner refused (greet pause)",
};

pub const PROBES: &[Probe] = &[EARLY];

pub async fn run(ctx: &Ctx) -> Vec<Finding> {
    let p = EARLY;
    let Some(mx) = ctx.opts.mx else {
        return vec![p.not_tested("no --mx given", Vec::new())];
    };
    let claimed = ctx.claims(StageKind::Mx, |s| s.limits.greet_pause.0 > 0.0);
    let mut conn = match Conn::connect(ctx.dial(mx), Vec::new()).await {
        Ok(c) => c,
        Err(e) => return vec![p.not_tested(format!("cannot connect: {e}"), Vec::new())],
    };
    if let Err(e) = conn.send_line(&format!("EHLO {}", ctx.opts.helo)).await {
        return vec![p.not_tested(e.to_string(), conn.into_transcript())];
    }
    let first = match conn.reply().await {
        Ok(r) => r,
        Err(e) => return vec![p.not_tested(format!("no reply: {e}"), conn.into_transcript())],
    };
    if first.code == 220 {
        let second = conn.reply().await;
        let t = conn.quit().await;
        return match second {
            Ok(r) if r.code == 250 => vec![p.failed(
                claimed,
                "banner sent at once and the early EHLO answered 250",
                t,
            )],
            Ok(r) if r.code >= 500 || r.code == 421 => vec![p.working(
                format!("early EHLO refused after the banner: {}", r.summary()),
                t,
            )],
            Ok(r) => vec![p.failed(
                claimed,
                format!("banner sent at once; early EHLO got {}", r.summary()),
                t,
            )],
            Err(e) => vec![p.not_tested(format!("after the banner: {e}"), t)],
        };
    }
    let closed = conn.closed_by_server().await;
    let t = conn.into_transcript();
    if first.code >= 400 {
        let how = if closed { ", connection closed" } else { "" };
        // Without a pause only bytes that beat the banner are caught.
        let note = match claimed {
            Some(false) => " (no greet pause configured: caught because the EHLO beat the banner)",
            _ => "",
        };
        vec![p.working(format!("refused: {}{how}{note}", first.summary()), t)]
    } else {
        vec![p.not_tested(format!("unexpected first reply {}", first.summary()), t)]
    }
}
