//! The messages the antivirus stage writes about a quarantined message:
//! a DSN (RFC 3464) to an authenticated local sender, and a short notice
//! to local recipients. Neither quotes the infected content.

use palisade_config::Config;
use palisade_virus::QuarantineEntry;

fn date() -> String {
    palisade_stage::received::rfc5322_date(std::time::SystemTime::now())
}

/// RFC 3464 delivery status notification: the message was not delivered.
pub fn dsn(config: &Config, e: &QuarantineEntry) -> Vec<u8> {
    let host = &config.gateway.hostname;
    let boundary = format!("dsn-{}", e.id);
    let mut per_rcpt = String::new();
    for r in &e.rcpts {
        per_rcpt.push_str(&format!(
            "Final-Recipient: rfc822; {r}\r\nAction: failed\r\nStatus: 5.7.0\r\nDiagnostic-Code: smtp; 554 5.7.0 message quarantined: {} {}\r\n\r\n",
            e.kind, e.verdict
        ));
    }
    format!(
        "From: Mail Delivery System <MAILER-DAEMON@{host}>\r\n\
To: <{from}>\r\n\
Subject: Undelivered Mail: virus found ({verdict})\r\n\
Date: {date}\r\n\
Message-ID: <{id}.dsn@{host}>\r\n\
Auto-Submitted: auto-replied\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status; boundary=\"{boundary}\"\r\n\
\r\n\
--{boundary}\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
Your message to {rcpts} was not delivered: the antivirus found\r\n\
{verdict} in it. It is held in quarantine as {id}.\r\n\
Clean your computer and send the message again without the infected\r\n\
content; ask the postmaster if you think this is a mistake.\r\n\
\r\n\
--{boundary}\r\n\
Content-Type: message/delivery-status\r\n\
\r\n\
Reporting-MTA: dns; {host}\r\n\
X-Palisade-Quarantine-Id: {id}\r\n\
\r\n\
{per_rcpt}\
--{boundary}--\r\n",
        from = e.mail_from,
        verdict = e.verdict,
        date = date(),
        id = e.id,
        rcpts = e.rcpts.join(", "),
    )
    .into_bytes()
}

/// A short notice for local recipients: something addressed to you was
/// quarantined (no content, no attachment).
pub fn recipient_notice(config: &Config, e: &QuarantineEntry) -> Vec<u8> {
    let host = &config.gateway.hostname;
    format!(
        "From: Postmaster <postmaster@{host}>\r\n\
To: {rcpts}\r\n\
Subject: A message to you was quarantined ({verdict})\r\n\
Date: {date}\r\n\
Message-ID: <{id}.notice@{host}>\r\n\
Auto-Submitted: auto-generated\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
A message from <{from}> addressed to you contained {verdict}\r\n\
and was not delivered. It is held in quarantine as {id}; ask the\r\n\
postmaster if you need it.\r\n",
        rcpts = e.rcpts.join(", "),
        from = e.mail_from,
        verdict = e.verdict,
        date = date(),
        id = e.id,
    )
    .into_bytes()
}
