//! DM19 MTA rules ("check domain, etc."): the envelope must make sense
//! before anything is accepted. Unknown local recipients are refused at RCPT
//! by the stage's directory check (`verify_recipients`); this module adds:
//! - HELO/EHLO sanity: a fully qualified domain name or an address
//!   literal, and not our own name or domains (a classic forgery tell);
//! - the sender's domain must resolve (MX or A/AAAA) so a bounce could be
//!   delivered: NXDOMAIN is a permanent `550 5.1.8`, a DNS failure only a
//!   temporary `450 4.1.8` (DNS errors never turn into rejects);
//! - a local-domain MAIL FROM from outside without AUTH is forgery:
//!   `550 5.7.1` (SPEC §5). Local users submit through the MSA.

use palisade_smtp_proto::Reply;

use crate::resolver::{Dns, DnsTempError};

/// Why a HELO name is refused (`550 5.7.1`), or `None`.
pub fn check_helo(name: &str, our_hostname: &str, local_domains: &[String]) -> Option<Reply> {
    let refuse = |why: &str| {
        Some(Reply::enhanced(
            550,
            (5, 7, 1),
            format!("<{name}>: Helo command rejected: {why}"),
        ))
    };
    if name.starts_with('[') && name.ends_with(']') {
        return None;
    }
    let n = name.trim_end_matches('.').to_ascii_lowercase();
    if !n.contains('.') {
        return refuse("need fully-qualified hostname");
    }
    if !n
        .split('.')
        .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
    {
        return refuse("invalid hostname");
    }
    if n.eq_ignore_ascii_case(our_hostname)
        || local_domains.iter().any(|d| d.eq_ignore_ascii_case(&n))
    {
        return refuse("you are not me");
    }
    None
}

/// The sender's domain must exist in the DNS.
pub async fn check_sender_domain(dns: &Dns, sender: &str) -> Option<Reply> {
    let (_, domain) = sender.rsplit_once('@')?;
    match dns.domain_resolves(domain).await {
        Ok(true) => None,
        Ok(false) => Some(Reply::enhanced(
            550,
            (5, 1, 8),
            format!("<{sender}>: Sender address rejected: Domain not found"),
        )),
        Err(DnsTempError(e)) => Some(Reply::enhanced(
            450,
            (4, 1, 8),
            format!("<{sender}>: Sender address rejected: Domain lookup failed ({e})"),
        )),
    }
}

/// A local sender address from an unauthenticated outside client.
pub fn check_forgery(sender: &str, is_local: bool, authenticated: bool) -> Option<Reply> {
    (is_local && !authenticated).then(|| {
        Reply::enhanced(
            550,
            (5, 7, 1),
            format!("<{sender}>: Sender address rejected: local domain sender from outside needs authentication"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helo_rules() {
        let ours = vec!["example.test".to_string()];
        assert!(check_helo("mail.sender.test", "mail.example.test", &ours).is_none());
        assert!(check_helo("[192.0.2.1]", "mail.example.test", &ours).is_none());
        assert_eq!(
            check_helo("localhost", "mail.example.test", &ours)
                .unwrap()
                .code,
            550
        );
        assert!(check_helo("bad_name.test", "mail.example.test", &ours).is_some());
        assert!(check_helo("MAIL.EXAMPLE.TEST", "mail.example.test", &ours).is_some());
        assert!(check_helo("example.test", "mail.example.test", &ours).is_some());
    }

    #[test]
    fn forgery_only_without_auth() {
        assert_eq!(
            check_forgery("ceo@example.test", true, false).unwrap().code,
            550
        );
        assert!(check_forgery("ceo@example.test", true, true).is_none());
        assert!(check_forgery("x@outside.test", false, false).is_none());
    }
}
