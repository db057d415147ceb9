//! No privacy (DM14 SMTP over TLS): STARTTLS offered and working on the
//! MX and the MSA, implicit TLS on 465, and the obsolete protocol versions
//! TLS 1.0 and 1.1 (RFC 8996) refused. rustls cannot speak those versions,
//! so the legacy probe drives `openssl s_client` with the security level
//! lowered on the client side only.

use std::net::SocketAddr;
use std::time::Duration;

use super::Probe;
use crate::audit::{note, Ctx};
use crate::model::{Fault, Finding, Line};

const fn probe(id: &'static str, title: &'static str) -> Probe {
    Probe {
        id,
        fault: Fault::NoPrivacy,
        mechanism: Some(14),
        title,
    }
}

pub const STARTTLS_MX: Probe = probe("starttls-mx", "STARTTLS offered and working on the MX");
pub const STARTTLS_MSA: Probe = probe(
    "starttls-msa",
    "STARTTLS offered and working on submission (587)",
);
pub const IMPLICIT_MSA: Probe = probe("implicit-tls-msa", "implicit TLS on submissions (465)");
pub const LEGACY_MX: Probe = probe(
    "tls-legacy-versions-mx",
    "TLS 1.0 and 1.1 refused on the MX",
);
pub const LEGACY_MSA: Probe = probe(
    "tls-legacy-versions-msa",
    "TLS 1.0 and 1.1 refused on submission",
);

pub const PROBES: &[Probe] = &[
    STARTTLS_MX,
    STARTTLS_MSA,
    IMPLICIT_MSA,
    LEGACY_MX,
    LEGACY_MSA,
];

pub async fn run(ctx: &Ctx) -> Vec<Finding> {
    // Our MX and MSA always offer STARTTLS (a certificate is generated when none is configured).
    let claimed = ctx.opts.config.as_ref().map(|_| true);
    let mut out = Vec::new();
    let mut offered = [false, false];
    for (i, (p, addr)) in [(STARTTLS_MX, ctx.opts.mx), (STARTTLS_MSA, ctx.opts.msa)]
        .into_iter()
        .enumerate()
    {
        let Some(addr) = addr else {
            out.push(p.not_tested("address not given", Vec::new()));
            continue;
        };
        let (f, ok) = starttls(ctx, &p, addr, claimed).await;
        offered[i] = ok;
        out.push(f);
    }
    out.push(match ctx.opts.msa_tls {
        None => IMPLICIT_MSA.not_tested("no --msa-tls given", Vec::new()),
        Some(addr) => match ctx.smtp(addr, true).await {
            Ok((conn, b)) if b.code == 220 => {
                IMPLICIT_MSA.working(format!("TLS then {}", b.summary()), conn.quit().await)
            }
            Ok((conn, b)) => {
                IMPLICIT_MSA.not_tested(format!("banner {}", b.summary()), conn.quit().await)
            }
            Err(t) => IMPLICIT_MSA.failed(claimed, "no TLS session on the implicit-TLS port", t),
        },
    });
    for (i, (p, addr)) in [(LEGACY_MX, ctx.opts.mx), (LEGACY_MSA, ctx.opts.msa)]
        .into_iter()
        .enumerate()
    {
        out.push(match addr {
            None => p.not_tested("address not given", Vec::new()),
            Some(_) if !offered[i] => {
                p.not_tested("no working STARTTLS to test versions on", Vec::new())
            }
            Some(addr) => legacy(ctx, &p, addr, claimed).await,
        });
    }
    out
}

/// Returns the finding and whether STARTTLS worked.
async fn starttls(
    ctx: &Ctx,
    p: &Probe,
    addr: SocketAddr,
    claimed: Option<bool>,
) -> (Finding, bool) {
    let (mut conn, ehlo) = match ctx.ehlo(addr).await {
        Ok(c) => c,
        Err((why, t)) => return (p.not_tested(why, t), false),
    };
    if !ehlo.has_keyword("STARTTLS") {
        return (
            p.failed(claimed, "STARTTLS not offered in EHLO", conn.quit().await),
            false,
        );
    }
    match conn.cmd("STARTTLS").await {
        Ok(r) if r.code == 220 => {}
        Ok(r) => {
            return (
                p.failed(
                    Some(true),
                    format!("STARTTLS offered but refused: {}", r.summary()),
                    conn.quit().await,
                ),
                false,
            )
        }
        Err(e) => return (p.not_tested(e.to_string(), conn.into_transcript()), false),
    }
    if let Err(e) = conn.handshake().await {
        return (
            p.failed(
                Some(true),
                format!("STARTTLS offered, handshake failed: {e}"),
                conn.into_transcript(),
            ),
            false,
        );
    }
    let version = conn
        .transcript
        .iter()
        .rev()
        .find_map(|l| l.text.strip_prefix("TLS established: ").map(str::to_string))
        .unwrap_or_default();
    match conn.cmd(&format!("EHLO {}", ctx.opts.helo)).await {
        Ok(r) if r.code == 250 => (
            p.working(format!("STARTTLS: {version}"), conn.quit().await),
            true,
        ),
        Ok(r) => (
            p.not_tested(
                format!("EHLO after TLS: {}", r.summary()),
                conn.quit().await,
            ),
            false,
        ),
        Err(e) => (p.not_tested(e.to_string(), conn.into_transcript()), false),
    }
}

async fn legacy(ctx: &Ctx, p: &Probe, addr: SocketAddr, claimed: Option<bool>) -> Finding {
    let mut t: Vec<Line> = Vec::new();
    let mut accepted = Vec::new();
    for (flag, name) in [("-tls1", "TLS 1.0"), ("-tls1_1", "TLS 1.1")] {
        let mut cmd = tokio::process::Command::new("openssl");
        cmd.args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-starttls",
            "smtp",
            flag,
        ])
        .args([
            "-cipher",
            "DEFAULT:@SECLEVEL=0",
            "-brief",
            "-name",
            &ctx.opts.helo,
        ])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
        if let Some(source) = ctx.opts.source {
            cmd.args(["-bind", &SocketAddr::new(source, 0).to_string()]);
        }
        t.push(note(format!("openssl s_client -connect {addr} -starttls smtp {flag} -cipher DEFAULT:@SECLEVEL=0 -brief")));
        let wait = ctx.opts.timeout + Duration::from_secs(5);
        let output = match tokio::time::timeout(wait, cmd.output()).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => return p.not_tested(format!("cannot run openssl: {e}"), t),
            Err(_) => return p.not_tested("openssl s_client timed out", t),
        };
        let text = String::from_utf8_lossy(&output.stderr).to_string()
            + &String::from_utf8_lossy(&output.stdout);
        let version = text
            .lines()
            .find_map(|l| l.strip_prefix("Protocol version: "))
            .map(str::trim)
            .map(str::to_string);
        for line in text.lines().filter(|l| !l.trim().is_empty()).take(6) {
            t.push(Line {
                dir: 'S',
                text: line.to_string(),
            });
        }
        match version {
            Some(v)
                if v.starts_with("TLSv1")
                    && !v.starts_with("TLSv1.2")
                    && !v.starts_with("TLSv1.3") =>
            {
                accepted.push(format!("{name} ({v})"))
            }
            _ => t.push(note(format!("{name}: no session"))),
        }
    }
    if accepted.is_empty() {
        p.working("TLS 1.0 and TLS 1.1 handshakes refused", t)
    } else {
        p.failed(claimed, format!("accepted {}", accepted.join(", ")), t)
    }
}
