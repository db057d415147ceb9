//! Content defenses, end to end: the EICAR test file (DM28 antivirus,
//! virus fault) and the GTUBE string (DM24 content filter, spam fault) are
//! sent to the test account together with a clean control message, then
//! looked for through IMAP. Working: the control arrives in INBOX and the
//! test message is refused, quarantined or (GTUBE) filed to Junk. The
//! verdict waits for the control, so a slow chain is not taken for a
//! working filter. Everything sent is deleted by the run's cleanup.
//!
//! Sent through the MSA as the test account when it is given (no
//! greylisting on that path), else through the MX. Without mailbox access
//! nothing is sent: the result could not be seen nor cleaned up.

use std::time::{Duration, Instant};

use palisade_config::StageKind;

use super::submission::{self, send_message};
use super::{none_tested, Probe};
use crate::audit::{note, Ctx};
use crate::client::Reply;
use crate::imap::Imap;
use crate::model::{Fault, Finding, Line};

pub const EICAR_PROBE: Probe = Probe {
    id: "eicar-delivery",
    fault: Fault::Virus,
    mechanism: Some(28),
    title: "EICAR test file kept out of the mailbox",
};
pub const GTUBE_PROBE: Probe = Probe {
    id: "gtube-delivery",
    fault: Fault::Spam,
    mechanism: Some(24),
    title: "GTUBE test message refused, quarantined or filed to Junk",
};

pub const PROBES: &[Probe] = &[EICAR_PROBE, GTUBE_PROBE];

pub const EICAR: &str = r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";
pub const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

struct Sent {
    reply: Result<Reply, String>,
    transcript: Vec<Line>,
}

pub async fn run(ctx: &Ctx) -> Vec<Finding> {
    if ctx.opts.store_imap.is_none() || !ctx.has_credentials() {
        let why = "needs --store-imap, --user and a password: without mailbox access the result can be neither seen nor cleaned up";
        return none_tested(PROBES, why, Vec::new());
    }
    let user = ctx.opts.user.clone().unwrap_or_default();
    let eicar = send(
        ctx,
        &user,
        "eicar",
        &format!("The antivirus test file:\r\n{EICAR}\r\n"),
    )
    .await;
    let gtube = send(
        ctx,
        &user,
        "gtube",
        &format!("The antispam test message:\r\n{GTUBE}\r\n"),
    )
    .await;
    let control = send(ctx, &user, "control", "A clean control message.\r\n").await;
    let mut seen = Vec::new();
    if !matches!(&control.reply, Ok(r) if r.is_positive()) {
        let why = format!(
            "the clean control message was not accepted: {}",
            describe(&control.reply)
        );
        return vec![
            EICAR_PROBE.not_tested(&why, control.transcript.clone()),
            GTUBE_PROBE.not_tested(&why, control.transcript),
        ];
    }
    let where_ = watch(ctx, &mut seen).await;
    let claims_av = ctx
        .opts
        .config
        .as_ref()
        .map(|c| c.nodes_of(StageKind::Antivirus).next().is_some());
    let claims_as = ctx
        .opts
        .config
        .as_ref()
        .map(|c| c.nodes_of(StageKind::Antispam).next().is_some());
    let (found, control_arrived) = match where_ {
        Ok(w) => w,
        Err(why) => {
            return vec![
                EICAR_PROBE.not_tested(&why, seen.clone()),
                GTUBE_PROBE.not_tested(why, seen),
            ];
        }
    };
    let verdict =
        |p: &Probe, sent: Sent, folder: Option<&str>, claimed: Option<bool>, junk_ok: bool| {
            let mut t = sent.transcript;
            t.extend(seen.iter().cloned());
            match (&sent.reply, folder) {
            (Ok(r), _) if r.code >= 500 => {
                p.working(format!("refused at SMTP: {}", r.summary()), t)
            }
            (Ok(r), _) if !r.is_positive() => {
                p.not_tested(format!("tempfailed: {}", r.summary()), t)
            }
            (Err(e), _) => p.not_tested(e.clone(), t),
            (Ok(_), Some(f)) if junk_ok && f != "INBOX" => {
                p.working(format!("accepted, filed to {f}"), t)
            }
            (Ok(_), Some(f)) => p.failed(claimed, format!("delivered to {f}"), t),
            (Ok(_), None) if control_arrived => p.working(
                "accepted, then kept out of the mailbox (quarantined); the control message arrived",
                t,
            ),
            (Ok(_), None) => p.not_tested(
                format!(
                    "the control message did not arrive within {:?}",
                    ctx.opts.delivery_wait
                ),
                t,
            ),
        }
        };
    vec![
        verdict(&EICAR_PROBE, eicar, found[0].as_deref(), claims_av, false),
        verdict(&GTUBE_PROBE, gtube, found[1].as_deref(), claims_as, true),
    ]
}

fn describe(r: &Result<Reply, String>) -> String {
    match r {
        Ok(r) => r.summary(),
        Err(e) => e.clone(),
    }
}

async fn send(ctx: &Ctx, user: &str, what: &str, body: &str) -> Sent {
    let message = format!(
        "From: <{user}>\r\nTo: <{user}>\r\nSubject: {}\r\nMessage-ID: <{}.{what}@audit.invalid>\r\n\r\n{body}",
        ctx.subject(what),
        ctx.nonce
    );
    if ctx.opts.msa.is_some() || ctx.opts.msa_tls.is_some() {
        let mut conn = match submission::session(ctx, true).await {
            Ok(c) => c,
            Err((why, t)) => {
                return Sent {
                    reply: Err(why),
                    transcript: t,
                }
            }
        };
        let reply = send_message(&mut conn, user, user, &message).await;
        return Sent {
            reply,
            transcript: conn.quit().await,
        };
    }
    let Some(mx) = ctx.opts.mx else {
        return Sent {
            reply: Err("no --msa or --mx given".into()),
            transcript: Vec::new(),
        };
    };
    match ctx.ehlo(mx).await {
        Err((why, t)) => Sent {
            reply: Err(why),
            transcript: t,
        },
        Ok((mut conn, _)) => {
            let reply = send_message(&mut conn, &ctx.opts.sender, user, &message).await;
            Sent {
                reply,
                transcript: conn.quit().await,
            }
        }
    }
}

/// Polls the mailbox until the control message is in INBOX (then looks
/// once more a little later). Returns where EICAR and GTUBE were found and
/// whether the control arrived.
async fn watch(ctx: &Ctx, seen: &mut Vec<Line>) -> Result<([Option<String>; 2], bool), String> {
    let deadline = Instant::now() + ctx.opts.delivery_wait;
    let mut imap = match Imap::login(ctx, Vec::new()).await {
        Ok(i) => i,
        Err((why, t)) => {
            *seen = t;
            return Err(why);
        }
    };
    let mut control_at = None;
    let mut polls = 0;
    let result = 'poll: loop {
        polls += 1;
        let mut found: [Option<String>; 2] = [None, None];
        let mut control = false;
        for folder in crate::imap::FOLDERS {
            for (i, what) in ["eicar", "gtube", "control"].into_iter().enumerate() {
                match imap.search(folder, &ctx.subject(what)).await {
                    Ok(Some(ids)) if !ids.is_empty() => {
                        if i == 2 {
                            control |= folder == "INBOX";
                        } else if found[i].is_none() {
                            found[i] = Some(folder.to_string());
                        }
                    }
                    Ok(_) => {}
                    Err(e) => break 'poll Err(format!("IMAP: {e}")),
                }
            }
        }
        let now = Instant::now();
        if control && control_at.is_none() {
            control_at = Some(now);
            imap.note("control message in INBOX; one more look in 3 s");
        }
        let settled = control_at.is_some_and(|t| now >= t + Duration::from_secs(3));
        if settled || now >= deadline {
            break Ok((found, control));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    imap.note(format!("{polls} looks at the mailbox"));
    let mut t = imap.logout().await;
    // Keep the first look and the last: the polls in between repeat.
    crate::client::elide(&mut t, 0, 24, 30);
    seen.push(note("mailbox (IMAP):"));
    seen.extend(t);
    result
}
