//! Open relay (DM7 relay access lists): the classic tricks that make a
//! badly written relay check see a local recipient where the mail would
//! leave for another domain. An accepted RCPT is already the verdict, so
//! the session is reset before DATA: nothing is ever relayed.

use palisade_config::StageKind;

use super::{none_tested, Probe};
use crate::audit::{is_greylisted, Ctx};
use crate::model::{Fault, Finding};

const fn probe(id: &'static str, title: &'static str) -> Probe {
    Probe {
        id,
        fault: Fault::OpenRelay,
        mechanism: Some(7),
        title,
    }
}

pub const PROBES: &[Probe] = &[
    probe(
        "open-relay-plain",
        "relay to an external recipient without AUTH",
    ),
    probe(
        "open-relay-percent-hack",
        "relay with the percent hack user%ext@local",
    ),
    probe(
        "open-relay-quoted-local",
        "relay with a quoted local part \"user@ext\"@local",
    ),
    probe(
        "open-relay-source-route",
        "relay with an RFC 821 source route @local:user@ext",
    ),
    probe(
        "open-relay-double-at",
        "relay with two @ signs user@ext@local",
    ),
    probe(
        "open-relay-bang-path",
        "relay with a UUCP bang path ext!user@local",
    ),
];

/// The recipient each probe tries, built from the external recipient and a local domain.
pub fn tricks(external: &str, local: &str) -> [String; 6] {
    let (user, ext) = external
        .rsplit_once('@')
        .unwrap_or((external, "relay-test.invalid"));
    [
        external.to_string(),
        format!("{user}%{ext}@{local}"),
        format!("\"{user}@{ext}\"@{local}"),
        format!("@{local}:{user}@{ext}"),
        format!("{user}@{ext}@{local}"),
        format!("{ext}!{user}@{local}"),
    ]
}

pub async fn run(ctx: &Ctx) -> Vec<Finding> {
    let Some(mx) = ctx.opts.mx else {
        return none_tested(PROBES, "no --mx given", Vec::new());
    };
    let Some(local) = ctx.local_domain() else {
        return none_tested(
            PROBES,
            "no local domain (--local-domain or --user)",
            Vec::new(),
        );
    };
    let claimed = ctx.claims(StageKind::Mx, |s| {
        s.mechanisms
            .dm7_relay_access
            .as_ref()
            .is_some_and(|m| m.enabled)
    });
    let mut out = Vec::new();
    for (p, rcpt) in PROBES.iter().zip(tricks(&ctx.opts.external_rcpt, &local)) {
        let env = match ctx.envelope(mx, &ctx.opts.sender, "", &rcpt).await {
            Ok(env) => env,
            Err((why, t)) => {
                out.push(p.not_tested(why, t));
                continue;
            }
        };
        let Some(reply) = env.rcpt.clone() else {
            let why = format!(
                "MAIL FROM refused ({}); give a --sender the target accepts",
                env.mail.summary()
            );
            out.push(p.not_tested(why, env.conn.quit().await));
            continue;
        };
        let mut conn = env.conn;
        if reply.is_positive() {
            // The verdict is in; make sure nothing is sent.
            let _ = conn.cmd("RSET").await;
            let t = conn.quit().await;
            out.push(p.failed(
                claimed,
                format!("RCPT TO:<{rcpt}> accepted: {}", reply.summary()),
                t,
            ));
        } else if is_greylisted(&reply) {
            out.push(p.not_tested(
                format!("greylisted before the relay decision: {}", reply.summary()),
                conn.quit().await,
            ));
        } else {
            out.push(p.working(format!("refused: {}", reply.summary()), conn.quit().await));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_classic_tricks() {
        let t = super::tricks("victim@elsewhere.invalid", "example.test");
        assert_eq!(
            t,
            [
                "victim@elsewhere.invalid",
                "victim%elsewhere.invalid@example.test",
                "\"victim@elsewhere.invalid\"@example.test",
                "@example.test:victim@elsewhere.invalid",
                "victim@elsewhere.invalid@example.test",
                "elsewhere.invalid!victim@example.test",
            ]
        );
        assert_eq!(super::PROBES.len(), t.len());
    }
}
