//! Bounce classification: every remote reply or connection failure is
//! mapped to one of the root-cause types of the bounce study
//! (shared/seeds/002: DNS failure of sender or receiver, SPF/DKIM/DMARC
//! violation, blocklisted, greylisted, rate limited, STARTTLS failure,
//! unknown user, mailbox full, too many recipients, too large, content
//! judged spam, timeout, connection interrupted...). The cause decides
//! retry vs permanent failure (with the SMTP class as the default), is
//! counted in metrics (`palisade_bounces_total{cause=...}`), and is told
//! to the sender in plain words in the DSN.

use palisade_smtp_client::ClientError;
use palisade_smtp_proto::Reply;

use crate::resolve::ResolveError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BounceCause {
    SenderDns,
    ReceiverDns,
    NullMx,
    SpfViolation,
    DkimViolation,
    DmarcViolation,
    Blocklisted,
    Greylisted,
    RateLimited,
    StartTlsFailure,
    TlsRequired,
    UnknownUser,
    MailboxFull,
    TooManyRecipients,
    TooLarge,
    ContentSpam,
    RelayDenied,
    Timeout,
    ConnectionInterrupted,
    ConnectionRefused,
    Other,
}

impl BounceCause {
    pub const ALL: [BounceCause; 21] = [
        BounceCause::SenderDns,
        BounceCause::ReceiverDns,
        BounceCause::NullMx,
        BounceCause::SpfViolation,
        BounceCause::DkimViolation,
        BounceCause::DmarcViolation,
        BounceCause::Blocklisted,
        BounceCause::Greylisted,
        BounceCause::RateLimited,
        BounceCause::StartTlsFailure,
        BounceCause::TlsRequired,
        BounceCause::UnknownUser,
        BounceCause::MailboxFull,
        BounceCause::TooManyRecipients,
        BounceCause::TooLarge,
        BounceCause::ContentSpam,
        BounceCause::RelayDenied,
        BounceCause::Timeout,
        BounceCause::ConnectionInterrupted,
        BounceCause::ConnectionRefused,
        BounceCause::Other,
    ];

    /// Metric label and the tag stored with the queue's reply text.
    pub fn label(self) -> &'static str {
        match self {
            BounceCause::SenderDns => "sender-dns",
            BounceCause::ReceiverDns => "receiver-dns",
            BounceCause::NullMx => "null-mx",
            BounceCause::SpfViolation => "spf",
            BounceCause::DkimViolation => "dkim",
            BounceCause::DmarcViolation => "dmarc",
            BounceCause::Blocklisted => "blocklisted",
            BounceCause::Greylisted => "greylisted",
            BounceCause::RateLimited => "rate-limited",
            BounceCause::StartTlsFailure => "starttls",
            BounceCause::TlsRequired => "tls-required",
            BounceCause::UnknownUser => "unknown-user",
            BounceCause::MailboxFull => "mailbox-full",
            BounceCause::TooManyRecipients => "too-many-recipients",
            BounceCause::TooLarge => "too-large",
            BounceCause::ContentSpam => "content-spam",
            BounceCause::RelayDenied => "relay-denied",
            BounceCause::Timeout => "timeout",
            BounceCause::ConnectionInterrupted => "connection-interrupted",
            BounceCause::ConnectionRefused => "connection-refused",
            BounceCause::Other => "other",
        }
    }

    pub fn from_label(label: &str) -> Option<BounceCause> {
        BounceCause::ALL.into_iter().find(|c| c.label() == label)
    }

    /// What happened, for the person who sent the message.
    pub fn plain_words(self) -> &'static str {
        match self {
            BounceCause::SenderDns => {
                "the receiving server could not verify your domain in the DNS"
            }
            BounceCause::ReceiverDns => {
                "the recipient's domain does not exist or has no mail server"
            }
            BounceCause::NullMx => "the recipient's domain declares that it accepts no e-mail",
            BounceCause::SpfViolation => {
                "the receiving server rejected the message because of our domain's SPF policy"
            }
            BounceCause::DkimViolation => {
                "the receiving server rejected the message's DKIM signature"
            }
            BounceCause::DmarcViolation => {
                "the receiving server rejected the message because of a DMARC policy"
            }
            BounceCause::Blocklisted => {
                "the receiving server refused our server because it is on a block list"
            }
            BounceCause::Greylisted => {
                "the receiving server asked us to try again later (greylisting)"
            }
            BounceCause::RateLimited => {
                "the receiving server is limiting how much mail it accepts from us"
            }
            BounceCause::StartTlsFailure => {
                "an encrypted connection to the receiving server could not be set up"
            }
            BounceCause::TlsRequired => {
                "the recipient's domain requires encryption, and its server did not offer it"
            }
            BounceCause::UnknownUser => "the recipient's address does not exist",
            BounceCause::MailboxFull => "the recipient's mailbox is full",
            BounceCause::TooManyRecipients => {
                "the message had too many recipients for the receiving server"
            }
            BounceCause::TooLarge => "the message is too large for the receiving server",
            BounceCause::ContentSpam => {
                "the receiving server judged the message's content to be spam"
            }
            BounceCause::RelayDenied => {
                "the receiving server does not accept mail for this recipient from us"
            }
            BounceCause::Timeout => "the receiving server did not answer in time",
            BounceCause::ConnectionInterrupted => {
                "the connection to the receiving server was interrupted"
            }
            BounceCause::ConnectionRefused => "the receiving server could not be reached",
            BounceCause::Other => "the receiving server refused the message",
        }
    }

    /// Causes that are never final on their own, whatever the reply class:
    /// retrying is exactly what a greylister or rate limiter asks for.
    fn always_temporary(self) -> bool {
        matches!(
            self,
            BounceCause::Greylisted
                | BounceCause::RateLimited
                | BounceCause::Timeout
                | BounceCause::ConnectionInterrupted
                | BounceCause::ConnectionRefused
                | BounceCause::StartTlsFailure
                | BounceCause::TlsRequired
        )
    }
}

/// A classified failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Classified {
    pub cause: BounceCause,
    pub permanent: bool,
    /// RFC 3463 status to report in a DSN.
    pub status: (u8, u16, u16),
}

fn has(text: &str, words: &[&str]) -> bool {
    words.iter().any(|w| text.contains(w))
}

/// Classifies a negative SMTP reply by its enhanced status code first and
/// its text second.
pub fn classify_reply(reply: &Reply) -> Classified {
    let text = reply.text.to_ascii_lowercase();
    let es = reply.enhanced.map(|e| (e.class, e.subject, e.detail));
    let sub = es.map(|(_, s, d)| (s, d));
    use BounceCause::*;
    let cause = if has(
        &text,
        &["greylist", "graylist", "grey-list", "try again later"],
    ) || sub == Some((7, 26)) && reply.is_transient()
    {
        Greylisted
    } else if sub == Some((7, 23)) || sub == Some((7, 24)) || has(&text, &["spf"]) {
        SpfViolation
    } else if has(&text, &["dmarc"]) {
        DmarcViolation
    } else if matches!(sub, Some((7, 20..=22))) || has(&text, &["dkim"]) {
        DkimViolation
    } else if has(
        &text,
        &[
            "blocklist",
            "blacklist",
            "block list",
            "spamhaus",
            "dnsbl",
            "rbl",
            "listed at",
            "listed on",
            "listed in",
        ],
    ) {
        Blocklisted
    } else if matches!(sub, Some((1, 1)) | Some((1, 0)) | Some((1, 6)))
        || has(
            &text,
            &[
                "user unknown",
                "unknown user",
                "no such user",
                "does not exist",
                "mailbox unavailable",
                "recipient not found",
                "invalid recipient",
            ],
        )
    {
        UnknownUser
    } else if matches!(sub, Some((1, 8)))
        || has(&text, &["sender domain", "sender address rejected: domain"])
    {
        SenderDns
    } else if matches!(sub, Some((1, 2))) || has(&text, &["host not found", "domain not found"]) {
        ReceiverDns
    } else if matches!(sub, Some((2, 2)))
        || has(
            &text,
            &[
                "mailbox full",
                "quota",
                "over quota",
                "insufficient storage",
            ],
        )
    {
        MailboxFull
    } else if matches!(sub, Some((5, 3))) || has(&text, &["too many recipients"]) {
        TooManyRecipients
    } else if matches!(sub, Some((3, 4)) | Some((2, 3)))
        || has(&text, &["too large", "too big", "size limit", "exceeds"])
    {
        TooLarge
    } else if has(
        &text,
        &[
            "rate",
            "too many messages",
            "too many connections",
            "throttl",
            "slow down",
        ],
    ) || sub == Some((7, 28))
    {
        RateLimited
    } else if has(&text, &["tls", "encrypt"]) || matches!(sub, Some((7, 10)) | Some((7, 5))) {
        StartTlsFailure
    } else if has(&text, &["spam", "content", "virus", "malware"]) || sub == Some((6, 0)) {
        ContentSpam
    } else if has(&text, &["relay"]) {
        RelayDenied
    } else {
        Other
    };
    let permanent = reply.is_permanent() && !cause.always_temporary();
    let status = match es {
        Some((c, s, d)) if (c == 5) == permanent && matches!(c, 4 | 5) => (c, s, d),
        Some((_, s, d)) => (if permanent { 5 } else { 4 }, s, d),
        None => (if permanent { 5 } else { 4 }, 0, 0),
    };
    Classified {
        cause,
        permanent,
        status,
    }
}

/// A connection that failed before any transaction reply.
pub fn classify_client_error(e: &ClientError) -> Classified {
    let (cause, status) = match e {
        ClientError::Greeting(r) | ClientError::Ehlo(r) => return classify_reply(r),
        ClientError::Connect(_) => (BounceCause::ConnectionRefused, (4, 4, 1)),
        ClientError::Timeout(_) => (BounceCause::Timeout, (4, 4, 2)),
        ClientError::Io(_) | ClientError::Protocol(_) => {
            (BounceCause::ConnectionInterrupted, (4, 4, 2))
        }
        ClientError::Tls(_) => (BounceCause::StartTlsFailure, (4, 7, 5)),
        ClientError::TlsRequired => (BounceCause::TlsRequired, (4, 7, 10)),
    };
    Classified {
        cause,
        permanent: false,
        status,
    }
}

pub fn classify_resolve_error(e: &ResolveError) -> Classified {
    match e {
        ResolveError::Temporary { .. } => Classified {
            cause: BounceCause::ReceiverDns,
            permanent: false,
            status: (4, 4, 3),
        },
        ResolveError::NoSuchDomain(_) => Classified {
            cause: BounceCause::ReceiverDns,
            permanent: true,
            status: (5, 1, 2),
        },
        ResolveError::NullMx(_) => Classified {
            cause: BounceCause::NullMx,
            permanent: true,
            status: (5, 1, 10),
        },
    }
}

/// The text stored in the queue for a recipient: `cause=<label>
/// status=<x.y.z> <details>`, so the DSN written after the last attempt
/// (possibly after a restart) can say why.
pub fn tag(c: &Classified, details: &str) -> String {
    format!(
        "cause={} status={}.{}.{} {details}",
        c.cause.label(),
        c.status.0,
        c.status.1,
        c.status.2
    )
}

/// Reads back what [`tag`] wrote (anywhere in the text, e.g. after the
/// queue's "message expired in queue; last reply: ").
pub fn untag(text: &str) -> Option<(BounceCause, (u8, u16, u16), String)> {
    let at = text.find("cause=")?;
    let rest = &text[at + 6..];
    let (label, rest) = rest.split_once(' ')?;
    let rest = rest.strip_prefix("status=")?;
    let (status, details) = rest.split_once(' ').unwrap_or((rest, ""));
    let mut parts = status.split('.').map(|p| p.parse::<u16>().ok());
    let s = (parts.next()?? as u8, parts.next()??, parts.next()??);
    Some((BounceCause::from_label(label)?, s, details.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_smtp_proto::EnhancedStatus;

    fn r(code: u16, es: Option<(u8, u16, u16)>, text: &str) -> Reply {
        Reply::new(code, es.map(|(a, b, c)| EnhancedStatus::new(a, b, c)), text)
    }

    #[test]
    fn study_root_causes() {
        let cases = [
            (
                r(550, Some((5, 1, 1)), "no such user here"),
                BounceCause::UnknownUser,
                true,
            ),
            (
                r(451, Some((4, 7, 1)), "Greylisted, please try again later"),
                BounceCause::Greylisted,
                false,
            ),
            (
                r(550, Some((5, 7, 1)), "Greylisted for too long"),
                BounceCause::Greylisted,
                false,
            ),
            (
                r(552, Some((5, 2, 2)), "mailbox full"),
                BounceCause::MailboxFull,
                true,
            ),
            (
                r(452, Some((4, 2, 2)), "over quota"),
                BounceCause::MailboxFull,
                false,
            ),
            (
                r(552, Some((5, 3, 4)), "message too large"),
                BounceCause::TooLarge,
                true,
            ),
            (
                r(452, Some((4, 5, 3)), "too many recipients"),
                BounceCause::TooManyRecipients,
                false,
            ),
            (
                r(550, Some((5, 7, 23)), "SPF validation failed"),
                BounceCause::SpfViolation,
                true,
            ),
            (
                r(550, Some((5, 7, 1)), "rejected by DMARC policy"),
                BounceCause::DmarcViolation,
                true,
            ),
            (
                r(550, Some((5, 7, 20)), "no valid signature"),
                BounceCause::DkimViolation,
                true,
            ),
            (
                r(
                    554,
                    Some((5, 7, 1)),
                    "client host blocked using zen.spamhaus.org",
                ),
                BounceCause::Blocklisted,
                true,
            ),
            (
                r(421, Some((4, 7, 0)), "rate limit exceeded"),
                BounceCause::RateLimited,
                false,
            ),
            (
                r(554, Some((5, 7, 1)), "message content rejected as spam"),
                BounceCause::ContentSpam,
                true,
            ),
            (
                r(553, Some((5, 1, 8)), "sender domain not found"),
                BounceCause::SenderDns,
                true,
            ),
            (r(550, None, "frobnicated"), BounceCause::Other, true),
        ];
        for (reply, cause, permanent) in cases {
            let c = classify_reply(&reply);
            assert_eq!((c.cause, c.permanent), (cause, permanent), "{reply}");
            assert_eq!(c.status.0, if permanent { 5 } else { 4 });
        }
    }

    #[test]
    fn tags_survive_the_queue() {
        let c = classify_reply(&r(550, Some((5, 1, 1)), "no such user"));
        let t = tag(&c, "host mx[127.0.0.2] said: 550 5.1.1 no such user");
        let stored = format!("message expired in queue; last reply: {t}");
        let (cause, status, details) = untag(&stored).unwrap();
        assert_eq!(cause, BounceCause::UnknownUser);
        assert_eq!(status, (5, 1, 1));
        assert!(details.contains("no such user"));
    }
}
