//! SMTP smuggling (forging, CVE-2023-51764/51765/51766): a message whose
//! body holds an end-of-data sequence other than CRLF.CRLF, followed by a
//! second, smuggled transaction. A sound server refuses the message (550
//! 5.5.2, SPEC §5) or keeps it all as data: one reply. A vulnerable one
//! ends the message early and runs the smuggled MAIL/RCPT/DATA: more
//! replies. Both parts go only to the local test recipient.
//!
//! No Table I number: this is RFC 5321 §4.1.1.4 conformance of the SMTP
//! engine, which the paper predates.

use std::time::Duration;

use super::{none_tested, Probe};
use crate::audit::Ctx;
use crate::model::{Fault, Finding};

const fn probe(id: &'static str, title: &'static str) -> Probe {
    Probe {
        id,
        fault: Fault::Forging,
        mechanism: None,
        title,
    }
}

pub const PROBES: &[Probe] = &[
    probe(
        "smuggling-lf-dot-lf",
        "bare LF end of data <LF>.<LF> does not end the message",
    ),
    probe(
        "smuggling-crlf-dot-cr",
        "<CR><LF>.<CR> does not end the message",
    ),
    probe(
        "smuggling-lf-dot-crlf",
        "<LF>.<CR><LF> does not end the message",
    ),
];

const PAYLOADS: [(&[u8], &str); 3] = [
    (b"\n.\n", "<LF>.<LF>"),
    (b"\r\n.\r", "<CR><LF>.<CR>"),
    (b"\n.\r\n", "<LF>.<CR><LF>"),
];

pub async fn run(ctx: &Ctx) -> Vec<Finding> {
    let (Some(mx), Some(rcpt)) = (ctx.opts.mx, ctx.local_rcpt()) else {
        return none_tested(PROBES, "needs --mx and a local recipient", Vec::new());
    };
    let claimed = ctx.opts.config.as_ref().map(|_| true);
    let mut out = Vec::new();
    for (i, (p, (payload, shown))) in PROBES.iter().zip(PAYLOADS).enumerate() {
        out.push(one(ctx, p, mx, &rcpt, i, payload, shown, claimed).await);
    }
    out
}

#[allow(clippy::too_many_arguments)]
async fn one(
    ctx: &Ctx,
    p: &Probe,
    mx: std::net::SocketAddr,
    rcpt: &str,
    i: usize,
    payload: &[u8],
    shown: &str,
    claimed: Option<bool>,
) -> Finding {
    let mut conn = match ctx.open_transaction(mx, rcpt, true).await {
        Ok(c) => c,
        Err((why, t)) => return p.not_tested(why, t),
    };
    let sender = &ctx.opts.sender;
    let head = format!(
        "From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: {}\r\n\r\nfirst part",
        ctx.subject(&format!("smuggling-{i}"))
    );
    let smuggled = format!(
        "MAIL FROM:<{sender}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\nSubject: {}\r\n\r\nsmuggled\r\n.\r\n",
        ctx.subject(&format!("smuggled-{i}"))
    );
    let mut bytes = head.clone().into_bytes();
    bytes.extend_from_slice(payload);
    bytes.extend_from_slice(smuggled.as_bytes());
    let text = format!("{head}{shown}\n{smuggled}");
    if let Err(e) = conn.send_raw(&bytes, &text).await {
        return p.not_tested(e.to_string(), conn.into_transcript());
    }
    let first = match conn.reply().await {
        Ok(r) => r,
        Err(e) => {
            return p.not_tested(
                format!("no reply to the message: {e}"),
                conn.into_transcript(),
            )
        }
    };
    if !first.is_positive() {
        let verdict = format!("message refused: {}", first.summary());
        return p.working(verdict, conn.quit().await);
    }
    // One reply: it was all data. More: the server ended the message at
    // the payload and ran the smuggled commands.
    let wait = Duration::from_secs(2).min(ctx.opts.timeout);
    let extra = tokio::time::timeout(wait, conn.reply()).await;
    let t = conn.quit().await;
    match extra {
        Ok(Ok(r)) => p.failed(
            claimed,
            format!(
                "{shown} ended the message ({}); the smuggled MAIL got {}",
                first.summary(),
                r.summary()
            ),
            t,
        ),
        _ => p.working(format!("kept as data: one message, {}", first.summary()), t),
    }
}
