//! Data size set by the sender (DM8): a declared SIZE= over the limit is
//! refused at MAIL, and a body that actually grows past the limit is
//! refused at the end of DATA (552 5.3.4). The oversize body stops a
//! little after the limit: the probe never sends more than it must.

use palisade_config::StageKind;

use super::{none_tested, Probe};
use crate::audit::Ctx;
use crate::client::Reply;
use crate::model::{Fault, Finding};

pub const DECLARED: Probe = Probe {
    id: "size-declared",
    fault: Fault::DataSize,
    mechanism: Some(8),
    title: "MAIL FROM with SIZE= over the limit refused",
};

pub const ACTUAL: Probe = Probe {
    id: "size-actual",
    fault: Fault::DataSize,
    mechanism: Some(8),
    title: "a body that grows past the limit refused at end of DATA",
};

pub const PROBES: &[Probe] = &[DECLARED, ACTUAL];

/// What is declared when the target names no limit at all.
const UNLIMITED_PROBE: u64 = 1 << 30;

fn ehlo_limit(ehlo: &Reply) -> Option<u64> {
    ehlo.keyword("SIZE")?.parse().ok().filter(|&n| n > 0)
}

pub async fn run(ctx: &Ctx) -> Vec<Finding> {
    let (Some(mx), Some(rcpt)) = (ctx.opts.mx, ctx.local_rcpt()) else {
        return none_tested(PROBES, "needs --mx and a local recipient", Vec::new());
    };
    let configured = ctx
        .settings(StageKind::Mx)
        .map(|s| s.limits.max_message_size);
    // The declared probe learns the advertised limit from EHLO.
    let (mut conn, ehlo) = match ctx.ehlo(mx).await {
        Ok(c) => c,
        Err((why, t)) => return none_tested(PROBES, &why, t.clone()),
    };
    let advertised = ehlo_limit(&ehlo);
    let limit = configured.or(advertised);
    let declared = limit.map_or(UNLIMITED_PROBE, |l| l + 1);
    let claimed = Some(limit.is_some());
    let first = match conn
        .cmd(&format!("MAIL FROM:<{}> SIZE={declared}", ctx.opts.sender))
        .await
    {
        Ok(r) => {
            let _ = conn.cmd("RSET").await;
            let t = conn.quit().await;
            let limit_text = match (configured, advertised) {
                (Some(c), _) => format!("configured limit {c}"),
                (None, Some(a)) => format!("EHLO SIZE {a}"),
                (None, None) => "no SIZE in EHLO".to_string(),
            };
            if r.code == 552 || r.enhanced() == "5.3.4" {
                DECLARED.working(
                    format!("SIZE={declared} refused: {} ({limit_text})", r.summary()),
                    t,
                )
            } else if r.is_positive() {
                DECLARED.failed(
                    claimed,
                    format!("SIZE={declared} accepted ({limit_text})"),
                    t,
                )
            } else {
                DECLARED.not_tested(
                    format!("MAIL refused for another reason: {}", r.summary()),
                    t,
                )
            }
        }
        Err(e) => DECLARED.not_tested(e.to_string(), conn.into_transcript()),
    };
    let second = match limit {
        None => ACTUAL.not_tested(
            "the target names no size limit (no SIZE in EHLO); an unbounded body is not sent",
            Vec::new(),
        ),
        Some(l) if l + 65536 > ctx.opts.size_probe_max => ACTUAL.not_tested(
            format!(
                "limit {l} is above --size-probe-max {}",
                ctx.opts.size_probe_max
            ),
            Vec::new(),
        ),
        Some(l) => actual(ctx, mx, &rcpt, l, claimed).await,
    };
    vec![first, second]
}

async fn actual(
    ctx: &Ctx,
    mx: std::net::SocketAddr,
    rcpt: &str,
    limit: u64,
    claimed: Option<bool>,
) -> Finding {
    let p = ACTUAL;
    let mut conn = match ctx.open_transaction(mx, rcpt, true).await {
        Ok(c) => c,
        Err((why, t)) => return p.not_tested(why, t),
    };
    let header = format!(
        "From: <{}>\r\nTo: <{rcpt}>\r\nSubject: {}\r\n\r\n",
        ctx.opts.sender,
        ctx.subject("oversize")
    );
    let target = limit + 1024;
    let line = [b'x'; 76];
    let mut chunk = Vec::with_capacity(1 << 16);
    while chunk.len() < (1 << 16) - 78 {
        chunk.extend_from_slice(&line);
        chunk.extend_from_slice(b"\r\n");
    }
    let _ = conn.send_raw(header.as_bytes(), header.trim_end()).await;
    conn.note(format!(
        "... body of {target} bytes in 64 KiB chunks (limit {limit})"
    ));
    let mut sent = header.len() as u64;
    let mut write_failed = None;
    while sent < target {
        if let Err(e) = conn.send_raw(&chunk, "").await {
            write_failed = Some(e.to_string());
            break;
        }
        sent += chunk.len() as u64;
    }
    if write_failed.is_none() {
        let _ = conn.send_raw(b".\r\n", ".").await;
    }
    match conn.reply().await {
        Ok(r) if r.code == 552 || r.enhanced() == "5.3.4" => p.working(
            format!("refused after {sent} bytes: {}", r.summary()),
            conn.quit().await,
        ),
        Ok(r) if r.is_positive() => p.failed(
            claimed,
            format!(
                "{sent} bytes accepted over the limit of {limit}: {}",
                r.summary()
            ),
            conn.quit().await,
        ),
        Ok(r) if r.code >= 500 => p.working(
            format!("refused after {sent} bytes: {}", r.summary()),
            conn.quit().await,
        ),
        Ok(r) => p.not_tested(format!("tempfailed: {}", r.summary()), conn.quit().await),
        Err(e) => {
            let why = write_failed.unwrap_or_else(|| e.to_string());
            p.not_tested(
                format!("connection lost after {sent} bytes without a reply: {why}"),
                conn.into_transcript(),
            )
        }
    }
}
