//! DM30 Sender Policy Framework and DM31 DomainKeys (DKIM, with DMARC and
//! ARC): verified with mail-auth through the node's resolver.
//!
//! SPF runs at MAIL (its result also lets DM22 skip greylisting); a `fail`
//! is refused with `550 5.7.23` when `spf_fail = "reject"`. DKIM, ARC and
//! DMARC run on the whole message at the end of DATA; a DMARC `fail` for a
//! domain publishing `p=reject` is refused with `550 5.7.1` when
//! `dmarc_reject = "reject"`. Every verified message gets an
//! Authentication-Results header. Temporary DNS errors are recorded as
//! `temperror`, never refused here.

use std::net::IpAddr;

use mail_auth::dmarc::Policy;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{AuthenticatedMessage, DmarcResult, SpfOutput, SpfResult};
use palisade_config::{AuthAction, Dm30Dm31Auth};
use palisade_smtp_proto::Reply;

use crate::auth_results::{self, Verified};
use crate::resolver::Dns;

/// SPF for the MAIL FROM identity (the HELO identity for `<>`).
pub async fn spf(dns: &Dns, ip: IpAddr, helo: &str, hostname: &str, sender: &str) -> SpfOutput {
    let params = if sender.is_empty() {
        SpfParameters::verify_ehlo(ip, helo, hostname)
    } else {
        SpfParameters::verify_mail_from(ip, helo, hostname, sender)
    };
    dns.auth.verify_spf(params).await
}

/// The refusal an SPF result calls for under `c`.
pub fn spf_refusal(c: &Dm30Dm31Auth, spf: &SpfOutput, sender: &str) -> Option<Reply> {
    (spf.result() == SpfResult::Fail && c.spf_fail == AuthAction::Reject).then(|| {
        Reply::enhanced(
            550,
            (5, 7, 23),
            format!(
                "<{sender}>: SPF check failed: {} does not designate this host as permitted sender",
                spf.domain()
            ),
        )
    })
}

/// What message verification found.
pub struct MessageVerdict {
    /// The Authentication-Results header to prepend.
    pub header: String,
    pub refusal: Option<Reply>,
    /// Short `method=result` summary for the log line.
    pub summary: String,
}

/// Who sent the message, as SMTP told us.
pub struct Origin<'a> {
    pub ip: IpAddr,
    pub helo: &'a str,
    pub mail_from: &'a str,
}

pub async fn verify_message(
    dns: &Dns,
    c: &Dm30Dm31Auth,
    hostname: &str,
    origin: &Origin<'_>,
    spf: &SpfOutput,
    message: &[u8],
) -> MessageVerdict {
    let Origin {
        ip,
        helo,
        mail_from,
    } = *origin;
    let Some(msg) = AuthenticatedMessage::parse(message) else {
        return MessageVerdict {
            header: auth_results::render_unparsed(hostname),
            refusal: None,
            summary: "unparseable".into(),
        };
    };
    let dkim = dns.auth.verify_dkim(&msg).await;
    let arc = if c.arc {
        Some(dns.auth.verify_arc(&msg).await)
    } else {
        None
    };
    let mail_from_domain = mail_from
        .rsplit_once('@')
        .map(|(_, d)| d)
        .unwrap_or(helo)
        .to_string();
    let dmarc = dns
        .auth
        .verify_dmarc(mail_auth::dmarc::verify::DmarcParameters::new(
            &msg,
            &dkim,
            &mail_from_domain,
            spf,
        ))
        .await;
    let header = auth_results::render(
        hostname,
        ip,
        helo,
        mail_from,
        &Verified {
            spf,
            dkim: &dkim,
            arc: arc.as_ref(),
            dmarc: Some(&dmarc),
            header_from: msg.from(),
        },
    );
    let dmarc_failed = matches!(
        dmarc.dkim_result(),
        DmarcResult::Fail(_) | DmarcResult::None
    ) && matches!(dmarc.spf_result(), DmarcResult::Fail(_) | DmarcResult::None)
        && dmarc.policy() == Policy::Reject;
    let refusal = (dmarc_failed && c.dmarc_reject == AuthAction::Reject).then(|| {
        Reply::enhanced(
            550,
            (5, 7, 1),
            format!(
                "Message rejected: DMARC policy of {} (p=reject) not met",
                dmarc.domain()
            ),
        )
    });
    let dkim_word = dkim
        .first()
        .map(|d| format!("{:?}", auth_results::body_hash_mismatch_is_fail(d).result()))
        .unwrap_or_else(|| "None".into());
    MessageVerdict {
        summary: format!(
            "spf={:?} dkim={} dmarc={:?}/{:?}",
            spf.result(),
            dkim_word.split('(').next().unwrap_or(""),
            dmarc.policy(),
            dmarc.dkim_result() == &DmarcResult::Pass || dmarc.spf_result() == &DmarcResult::Pass
        ),
        header,
        refusal,
    }
}
