//! The MSA (stage B): submission only with AUTH (DM4 SMTP AUTH, anonymous
//! fault), AUTH only inside TLS (DM14: no password in the clear), and an
//! authenticated user may send only as an address they own (DM4 against
//! fraud and phishing: 553 5.7.1 at MAIL, and a From: header they own).
//!
//! The test account's password is sent only inside TLS; the probe of AUTH
//! before TLS sends made-up credentials.

use base64::Engine;
use palisade_config::StageKind;

use super::{none_tested, Probe};
use crate::audit::Ctx;
use crate::client::{Conn, Reply};
use crate::model::{Fault, Finding, Line};

pub const AUTH_CLEAR: Probe = Probe {
    id: "msa-auth-before-tls",
    fault: Fault::NoPrivacy,
    mechanism: Some(14),
    title: "AUTH neither offered nor accepted before STARTTLS",
};
pub const NO_AUTH: Probe = Probe {
    id: "submission-without-auth",
    fault: Fault::Anonymous,
    mechanism: Some(4),
    title: "submission without AUTH refused (530 5.7.0)",
};
pub const SEND_AS: Probe = Probe {
    id: "send-as-other-user",
    fault: Fault::Fraud,
    mechanism: Some(4),
    title: "authenticated user cannot use another user's address in MAIL FROM",
};
pub const HEADER_FROM: Probe = Probe {
    id: "header-from-other-user",
    fault: Fault::Phishing,
    mechanism: Some(4),
    title: "authenticated user cannot put another user's address in From:",
};

pub const PROBES: &[Probe] = &[AUTH_CLEAR, NO_AUTH, SEND_AS, HEADER_FROM];

pub fn auth_plain(user: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"))
}

/// A submission session inside TLS (STARTTLS on --msa, else implicit TLS
/// on --msa-tls), authenticated as the test account when `auth`.
pub async fn session(ctx: &Ctx, auth: bool) -> Result<Conn, (String, Vec<Line>)> {
    let mut conn = match (ctx.opts.msa, ctx.opts.msa_tls) {
        (Some(addr), _) => {
            let (mut conn, ehlo) = ctx.ehlo(addr).await?;
            if !ehlo.has_keyword("STARTTLS") {
                return Err((
                    "STARTTLS not offered on submission".into(),
                    conn.quit().await,
                ));
            }
            match conn.cmd("STARTTLS").await {
                Ok(r) if r.code == 220 => {}
                Ok(r) => return Err((format!("STARTTLS: {}", r.summary()), conn.quit().await)),
                Err(e) => return Err((e.to_string(), conn.into_transcript())),
            }
            if let Err(e) = conn.handshake().await {
                return Err((e.to_string(), conn.into_transcript()));
            }
            conn
        }
        (None, Some(addr)) => match ctx.smtp(addr, true).await {
            Ok((conn, b)) if b.code == 220 => conn,
            Ok((conn, b)) => return Err((format!("banner {}", b.summary()), conn.quit().await)),
            Err(t) => return Err(("no TLS session".into(), t)),
        },
        (None, None) => return Err(("no --msa or --msa-tls given".into(), Vec::new())),
    };
    match conn.cmd(&format!("EHLO {}", ctx.opts.helo)).await {
        Ok(r) if r.code == 250 => {}
        Ok(r) => return Err((format!("EHLO: {}", r.summary()), conn.quit().await)),
        Err(e) => return Err((e.to_string(), conn.into_transcript())),
    }
    if auth {
        let (Some(user), Some(password)) = (&ctx.opts.user, &ctx.opts.password) else {
            return Err(("needs --user and a password".into(), conn.into_transcript()));
        };
        let line = format!("AUTH PLAIN {}", auth_plain(user, password));
        if let Err(e) = conn
            .send_secret(&line, &format!("AUTH PLAIN <credentials of {user}>"))
            .await
        {
            return Err((e.to_string(), conn.into_transcript()));
        }
        match conn.reply().await {
            Ok(r) if r.code == 235 => {}
            Ok(r) => return Err((format!("AUTH failed: {}", r.summary()), conn.quit().await)),
            Err(e) => return Err((e.to_string(), conn.into_transcript())),
        }
    }
    Ok(conn)
}

pub async fn run(ctx: &Ctx) -> Vec<Finding> {
    let Some(domain) = ctx.local_domain() else {
        return none_tested(PROBES, "no local domain", Vec::new());
    };
    let other = match &ctx.opts.user {
        Some(u) if u.starts_with("postmaster@") => format!("audit-other-{}@{domain}", ctx.nonce),
        _ => format!("postmaster@{domain}"),
    };
    vec![
        auth_clear(ctx, &domain).await,
        no_auth(ctx).await,
        send_as(ctx, &other).await,
        header_from(ctx, &other).await,
    ]
}

async fn auth_clear(ctx: &Ctx, domain: &str) -> Finding {
    let p = AUTH_CLEAR;
    let Some(msa) = ctx.opts.msa else {
        return p.not_tested("no --msa (STARTTLS submission) given", Vec::new());
    };
    let (mut conn, ehlo) = match ctx.ehlo(msa).await {
        Ok(c) => c,
        Err((why, t)) => return p.not_tested(why, t),
    };
    let offered = ehlo.keyword("AUTH");
    // Made-up credentials: a real password never goes out in the clear.
    let fake = auth_plain(
        &format!("audit-nobody-{}@{domain}", ctx.nonce),
        "not-a-password",
    );
    let reply = conn.cmd(&format!("AUTH PLAIN {fake}")).await;
    let t = conn.quit().await;
    let claimed = ctx.opts.config.as_ref().map(|_| true);
    match (offered, reply) {
        (Some(mechs), _) => p.failed(claimed, format!("AUTH {mechs} offered before STARTTLS"), t),
        (None, Ok(r)) if r.code == 235 || r.code == 535 || r.code == 334 => p.failed(
            claimed,
            format!(
                "not offered, but credentials are checked in the clear: {}",
                r.summary()
            ),
            t,
        ),
        (None, Ok(r)) => p.working(
            format!(
                "AUTH not offered before TLS; attempt refused: {}",
                r.summary()
            ),
            t,
        ),
        (None, Err(e)) => p.working(
            format!("AUTH not offered before TLS; attempt ended the session: {e}"),
            t,
        ),
    }
}

/// MAIL (and RCPT) inside an open session; the verdict is whether MAIL
/// FROM was refused. RSET before DATA: nothing is sent.
async fn try_mail(
    conn: &mut Conn,
    sender: &str,
    rcpt: &str,
) -> Result<(Reply, Option<Reply>), String> {
    let mail = conn
        .cmd(&format!("MAIL FROM:<{sender}>"))
        .await
        .map_err(|e| e.to_string())?;
    if !mail.is_positive() {
        return Ok((mail, None));
    }
    let r = conn
        .cmd(&format!("RCPT TO:<{rcpt}>"))
        .await
        .map_err(|e| e.to_string())?;
    let _ = conn.cmd("RSET").await;
    Ok((mail, Some(r)))
}

async fn no_auth(ctx: &Ctx) -> Finding {
    let p = NO_AUTH;
    let Some(rcpt) = ctx.local_rcpt() else {
        return p.not_tested("needs a local recipient", Vec::new());
    };
    let mut conn = match session(ctx, false).await {
        Ok(c) => c,
        Err((why, t)) => return p.not_tested(why, t),
    };
    let result = try_mail(&mut conn, &rcpt, &rcpt).await;
    let t = conn.quit().await;
    let claimed = ctx.opts.config.as_ref().map(|_| true);
    match result {
        Err(e) => p.not_tested(e, t),
        Ok((mail, None)) if mail.code >= 500 => {
            p.working(format!("MAIL without AUTH refused: {}", mail.summary()), t)
        }
        Ok((mail, None)) => p.not_tested(format!("MAIL tempfailed: {}", mail.summary()), t),
        Ok((_, Some(r))) if r.code >= 500 => {
            p.working(format!("refused at RCPT: {}", r.summary()), t)
        }
        Ok((_, Some(r))) => p.failed(
            claimed,
            format!("submission without AUTH accepted: RCPT {}", r.summary()),
            t,
        ),
    }
}

async fn send_as(ctx: &Ctx, other: &str) -> Finding {
    let p = SEND_AS;
    let Some(user) = ctx.opts.user.clone().filter(|_| ctx.has_credentials()) else {
        return p.not_tested("needs --user and a password", Vec::new());
    };
    let mut conn = match session(ctx, true).await {
        Ok(c) => c,
        Err((why, t)) => return p.not_tested(why, t),
    };
    let result = try_mail(&mut conn, other, &user).await;
    let t = conn.quit().await;
    let claimed = ctx.opts.config.as_ref().map(|_| true);
    match result {
        Err(e) => p.not_tested(e, t),
        Ok((mail, None)) if mail.code >= 500 => p.working(
            format!("MAIL FROM:<{other}> refused: {}", mail.summary()),
            t,
        ),
        Ok((mail, None)) => p.not_tested(format!("MAIL tempfailed: {}", mail.summary()), t),
        Ok((_, Some(r))) => p.failed(
            claimed,
            format!("{user} may send as <{other}>: RCPT {}", r.summary()),
            t,
        ),
    }
}

async fn header_from(ctx: &Ctx, other: &str) -> Finding {
    let p = HEADER_FROM;
    let Some(user) = ctx.opts.user.clone().filter(|_| ctx.has_credentials()) else {
        return p.not_tested("needs --user and a password", Vec::new());
    };
    let claimed = ctx.claims(StageKind::Msa, |s| s.submission.check_header_from);
    let mut conn = match session(ctx, true).await {
        Ok(c) => c,
        Err((why, t)) => return p.not_tested(why, t),
    };
    let message = format!(
        "From: <{other}>\r\nTo: <{user}>\r\nSubject: {}\r\nMessage-ID: <{}.from@audit.invalid>\r\n\r\nA From: header the sender does not own.\r\n",
        ctx.subject("header-from"),
        ctx.nonce
    );
    let reply = send_message(&mut conn, &user, &user, &message).await;
    let t = conn.quit().await;
    match reply {
        Err(e) => p.not_tested(e, t),
        Ok(r) if r.code >= 500 => p.working(format!("refused: {}", r.summary()), t),
        Ok(r) if r.is_positive() => p.failed(
            claimed,
            format!("From: <{other}> accepted from {user}: {}", r.summary()),
            t,
        ),
        Ok(r) => p.not_tested(format!("tempfailed: {}", r.summary()), t),
    }
}

/// MAIL, RCPT, DATA of a small message (dot-stuffed); the reply that
/// decided it (MAIL's, RCPT's or the final one).
pub async fn send_message(
    conn: &mut Conn,
    sender: &str,
    rcpt: &str,
    message: &str,
) -> Result<Reply, String> {
    let e = |e: crate::client::Stop| e.to_string();
    let mail = conn
        .cmd(&format!("MAIL FROM:<{sender}>"))
        .await
        .map_err(e)?;
    if !mail.is_positive() {
        return Ok(mail);
    }
    let r = conn.cmd(&format!("RCPT TO:<{rcpt}>")).await.map_err(e)?;
    if !r.is_positive() {
        let _ = conn.cmd("RSET").await;
        return Ok(r);
    }
    let d = conn.cmd("DATA").await.map_err(e)?;
    if d.code != 354 {
        return Ok(d);
    }
    let mut body = String::new();
    for line in message.split_inclusive("\r\n") {
        if line.starts_with('.') {
            body.push('.');
        }
        body.push_str(line);
    }
    if !body.ends_with("\r\n") {
        body.push_str("\r\n");
    }
    body.push_str(".\r\n");
    conn.send_raw(body.as_bytes(), body.trim_end())
        .await
        .map_err(e)?;
    conn.reply().await.map_err(e)
}
