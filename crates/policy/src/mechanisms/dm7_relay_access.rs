//! DM7 RELAY access lists: unauthenticated clients may only write to local
//! domains, and the addresses that old MTAs routed onwards are refused
//! outright instead of being "local" by accident (RFC 2505 §2.6.4, the
//! relay tests of `palisade audit`): the percent hack `user%other@local`,
//! source routes `@a:user@b`, bang paths `a!user@local`, quoted local parts
//! hiding an `@`, IP literals `user@[192.0.2.1]`. A trailing dot or a case
//! change in the domain is normalised before the local-domain comparison,
//! so `USER@EXAMPLE.TEST.` is local and `user@example.test.evil` is not.

use palisade_smtp_proto::Reply;

/// Why a recipient is refused, or `None`: it may be accepted by DM7.
pub fn check_recipient(
    to: &str,
    is_local_domain: impl Fn(&str) -> bool,
    authenticated: bool,
) -> Option<Reply> {
    let deny = |why: &str| {
        Some(Reply::enhanced(
            554,
            (5, 7, 1),
            format!("<{to}>: Relay access denied ({why})"),
        ))
    };
    // Authenticated users (MSA) may write anywhere; the tricks are still
    // refused since no legitimate client produces them.
    if to.starts_with('@') {
        return deny("source route");
    }
    let Some((local, domain)) = to.rsplit_once('@') else {
        // RFC 5321 §4.5.1 `postmaster` without domain: local by definition.
        return if to.eq_ignore_ascii_case("postmaster") {
            None
        } else {
            deny("no domain")
        };
    };
    if local.starts_with('"') {
        let inner = local.trim_matches('"');
        if inner.contains(['@', '%', '!']) {
            return deny("quoted routing characters");
        }
    } else {
        if local.contains('%') {
            return deny("percent hack");
        }
        if local.contains('!') {
            return deny("bang path");
        }
    }
    if domain.starts_with('[') {
        return deny("address literal");
    }
    if domain.ends_with("..") || domain.is_empty() {
        return deny("bad domain");
    }
    if !authenticated && !is_local_domain(domain) {
        return Some(Reply::enhanced(
            554,
            (5, 7, 1),
            format!("<{to}>: Relay access denied"),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(d: &str) -> bool {
        d.trim_end_matches('.').eq_ignore_ascii_case("example.test")
    }

    #[test]
    fn local_mail_passes_with_case_and_trailing_dot() {
        assert!(check_recipient("alice@example.test", local, false).is_none());
        assert!(check_recipient("Alice@EXAMPLE.Test.", local, false).is_none());
        assert!(check_recipient("postmaster", local, false).is_none());
    }

    #[test]
    fn relay_tricks_are_refused_with_554() {
        for trick in [
            "victim@elsewhere.test",
            "victim%elsewhere.test@example.test",
            "@example.test:victim@elsewhere.test",
            "elsewhere.test!victim@example.test",
            "\"victim@elsewhere.test\"@example.test",
            "victim@[192.0.2.1]",
            "victim@example.test.elsewhere.test",
        ] {
            let r = check_recipient(trick, local, false).unwrap_or_else(|| panic!("{trick}"));
            assert_eq!(r.code, 554, "{trick}");
        }
    }

    #[test]
    fn authenticated_users_may_relay_but_not_route() {
        assert!(check_recipient("friend@elsewhere.test", local, true).is_none());
        assert!(check_recipient("a%b@example.test", local, true).is_some());
    }
}
