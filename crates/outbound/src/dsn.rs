//! Delivery status notifications (RFC 3464 multipart/report, RFC 3463
//! status codes) for authenticated local senders only (flow 4): a
//! "delayed" notice once a recipient has waited `dsn_delay_after`, and a
//! "failed" notice after the last attempt. Never to an unauthenticated or
//! external sender (backscatter, SPEC §4), never for a null sender (a DSN
//! about a DSN would loop).

use std::time::SystemTime;

use palisade_stage::received::rfc5322_date;

use crate::bounce::BounceCause;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DsnKind {
    Failure,
    Delay,
}

#[derive(Clone, Debug)]
pub struct DsnRecipient {
    pub address: String,
    pub cause: BounceCause,
    pub status: (u8, u16, u16),
    /// The remote reply or local error, verbatim.
    pub diagnostic: String,
}

pub struct DsnInput<'a> {
    /// Our host name (Reporting-MTA, From: MAILER-DAEMON@...).
    pub reporting_mta: &'a str,
    pub kind: DsnKind,
    /// The original envelope sender: the DSN's recipient.
    pub sender: &'a str,
    pub queue_id: &'a str,
    pub arrived: SystemTime,
    pub recipients: &'a [DsnRecipient],
    /// The original message (only its header is returned).
    pub original: &'a [u8],
    pub now: SystemTime,
}

fn header_of(message: &[u8]) -> &[u8] {
    match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => &message[..i + 2],
        None => message,
    }
}

fn original_subject(message: &[u8]) -> String {
    let head = String::from_utf8_lossy(header_of(message));
    head.split("\r\n")
        .find(|l| l.len() > 8 && l[..8].eq_ignore_ascii_case("subject:"))
        .map(|l| l[8..].trim().chars().take(120).collect())
        .unwrap_or_default()
}

/// Keeps header values on one line and free of CR/LF.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The complete DSN message (CRLF lines), ready to enqueue with the null
/// reverse path to `input.sender`.
pub fn build(input: &DsnInput<'_>) -> Vec<u8> {
    let boundary = format!(
        "=_palisade_dsn_{}_{}",
        input.queue_id,
        input
            .now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    );
    let subject = original_subject(input.original);
    let (title, verb) = match input.kind {
        DsnKind::Failure => (
            "Undelivered Mail Returned to Sender",
            "could not be delivered",
        ),
        DsnKind::Delay => (
            "Delayed Mail (still being retried)",
            "has not been delivered yet",
        ),
    };
    let mut m = String::new();
    m += &format!(
        "From: Mail Delivery System <MAILER-DAEMON@{}>\r\n",
        input.reporting_mta
    );
    m += &format!("To: <{}>\r\n", input.sender);
    m += &format!("Subject: {title}\r\n");
    m += &format!("Date: {}\r\n", rfc5322_date(input.now));
    m += &format!(
        "Message-ID: <dsn.{}.{}@{}>\r\n",
        input.queue_id,
        match input.kind {
            DsnKind::Failure => "failed",
            DsnKind::Delay => "delayed",
        },
        input.reporting_mta
    );
    m += "Auto-Submitted: auto-replied\r\n";
    m += "MIME-Version: 1.0\r\n";
    m += &format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n boundary=\"{boundary}\"\r\n\r\n"
    );
    m += "This is a MIME-encapsulated message.\r\n\r\n";

    // Part 1: for people.
    m += &format!("--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n");
    m += &format!(
        "This is the mail system at {}.\r\n\r\nYour message \"{}\" {verb} to the following recipient(s):\r\n\r\n",
        input.reporting_mta,
        one_line(&subject)
    );
    for r in input.recipients {
        m += &format!(
            "  <{}>\r\n    Reason: {}.\r\n",
            r.address,
            r.cause.plain_words()
        );
        m += &format!("    Details: {}\r\n\r\n", one_line(&r.diagnostic));
    }
    match input.kind {
        DsnKind::Delay => {
            m += "No action is needed: delivery will be retried automatically, and you will\r\n";
            m += "be told if it finally fails.\r\n\r\n";
        }
        DsnKind::Failure => {
            m += "The message will not be retried. The headers of your message are attached.\r\n\r\n";
        }
    }

    // Part 2: for programs (RFC 3464 §2.2, §2.3).
    m += &format!("--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n");
    m += &format!("Reporting-MTA: dns; {}\r\n", input.reporting_mta);
    m += &format!("X-Palisade-Queue-ID: {}\r\n", input.queue_id);
    m += &format!("Arrival-Date: {}\r\n", rfc5322_date(input.arrived));
    for r in input.recipients {
        m += "\r\n";
        m += &format!("Final-Recipient: rfc822; {}\r\n", r.address);
        m += &format!(
            "Action: {}\r\n",
            match input.kind {
                DsnKind::Failure => "failed",
                DsnKind::Delay => "delayed",
            }
        );
        m += &format!("Status: {}.{}.{}\r\n", r.status.0, r.status.1, r.status.2);
        m += &format!("X-Palisade-Cause: {}\r\n", r.cause.label());
        m += &format!("Diagnostic-Code: smtp; {}\r\n", one_line(&r.diagnostic));
    }
    m += "\r\n";

    // Part 3: the original header.
    m += &format!("--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n");
    let mut out = m.into_bytes();
    out.extend_from_slice(header_of(input.original));
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_report_names_recipient_status_and_reason() {
        let rcpts = [DsnRecipient {
            address: "nobody@remote.test".into(),
            cause: BounceCause::UnknownUser,
            status: (5, 1, 1),
            diagnostic: "host mx.remote.test said: 550 5.1.1 no such user".into(),
        }];
        let original = b"From: a@example.test\r\nSubject: Hello there\r\n\r\nsecret body\r\n";
        let dsn = build(&DsnInput {
            reporting_mta: "mail.example.test",
            kind: DsnKind::Failure,
            sender: "a@example.test",
            queue_id: "0000AAAA0001",
            arrived: SystemTime::UNIX_EPOCH,
            recipients: &rcpts,
            original,
            now: SystemTime::now(),
        });
        let text = String::from_utf8(dsn).unwrap();
        assert!(text.contains("report-type=delivery-status"));
        assert!(text.contains(
            "Final-Recipient: rfc822; nobody@remote.test\r\nAction: failed\r\nStatus: 5.1.1"
        ));
        assert!(text.contains("the recipient's address does not exist"));
        assert!(text.contains("Subject: Hello there"));
        assert!(!text.contains("secret body"), "only the header is returned");
    }
}
