//! Trace headers (RFC 5321 §4.4): every stage adds one `Received:` line so a
//! message's path through the architecture, with each hop's queue ID and
//! time, can be read from the message itself (and by `palisade probe`).

use std::time::SystemTime;

use palisade_queue::{ClientInfo, Envelope};
use time::OffsetDateTime;

/// What one hop knows about how it received a message.
pub struct Hop<'a> {
    /// Name the client gave in HELO/EHLO.
    pub helo: &'a str,
    /// Client address as `ip:port`; empty to leave it out (the MSA's
    /// privacy setting for users submitting from home).
    pub peer: &'a str,
    /// This host's name and the node that received the message.
    pub hostname: &'a str,
    pub node: &'a str,
    pub tls: bool,
    pub authenticated: bool,
    pub queue_id: &'a str,
    /// Named in the header only when the message has one recipient, as
    /// Postfix does, so a multi-recipient message does not disclose its
    /// other recipients.
    pub single_recipient: Option<&'a str>,
    pub when: SystemTime,
}

impl<'a> Hop<'a> {
    /// The hop from a client session as the queue records it, received by
    /// `node` on `hostname` at `when` and known here as `queue_id`.
    pub fn from_client(
        client: &'a ClientInfo,
        hostname: &'a str,
        node: &'a str,
        queue_id: &'a str,
        single_recipient: Option<&'a str>,
        when: SystemTime,
    ) -> Self {
        Hop {
            helo: &client.helo,
            peer: &client.peer,
            hostname,
            node,
            tls: client.tls.is_some(),
            authenticated: client.auth_user.is_some(),
            queue_id,
            single_recipient,
            when,
        }
    }

    /// The hop a queued message took into this node: its client, its
    /// arrival time and, when it has only one, its recipient.
    pub fn of_queued(
        envelope: &'a Envelope,
        hostname: &'a str,
        node: &'a str,
        queue_id: &'a str,
    ) -> Self {
        let single_recipient = match envelope.rcpts.as_slice() {
            [only] => Some(only.address.as_str()),
            _ => None,
        };
        Self::from_client(
            &envelope.client,
            hostname,
            node,
            queue_id,
            single_recipient,
            envelope.arrived,
        )
    }

    /// The MSA's privacy setting: neither the client's IP nor an
    /// address-literal HELO (`[192.0.2.1]`, which would reveal it too).
    pub fn hiding_client_ip(self) -> Self {
        Hop {
            helo: if self.helo.starts_with('[') {
                "unknown"
            } else {
                self.helo
            },
            peer: "",
            ..self
        }
    }
}

/// The message as the next hop sees it: `header` (ours, on top), then
/// `message`.
pub fn with_header(header: &str, message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(header.len() + message.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(message);
    out
}

/// The RFC 3848 protocol keyword for the session.
fn protocol(tls: bool, authenticated: bool) -> &'static str {
    match (tls, authenticated) {
        (false, false) => "ESMTP",
        (true, false) => "ESMTPS",
        (false, true) => "ESMTPA",
        (true, true) => "ESMTPSA",
    }
}

/// The header, folded, CRLF-terminated.
pub fn received_header(hop: &Hop<'_>) -> String {
    let ip = hop
        .peer
        .rsplit_once(':')
        .map(|(ip, _)| ip)
        .unwrap_or(hop.peer)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let helo = if hop.helo.is_empty() {
        "unknown"
    } else {
        hop.helo
    };
    let from = if ip.is_empty() {
        helo.to_string()
    } else {
        format!("{helo} ([{ip}])")
    };
    let mut h = format!(
        "Received: from {from}\r\n\tby {} (Palisade {}) with {} id {}",
        hop.hostname,
        hop.node,
        protocol(hop.tls, hop.authenticated),
        hop.queue_id
    );
    if let Some(rcpt) = hop.single_recipient {
        h.push_str(&format!("\r\n\tfor <{rcpt}>"));
    }
    // The date has whole seconds (RFC 5322 §3.3); the comment after it
    // (CFWS is allowed there) gives the same instant to the microsecond,
    // so `palisade probe` can measure sub-second time per hop.
    let precise = hop
        .when
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.push_str(&format!(
        "; {} (epoch {}.{:06})\r\n",
        rfc5322_date(hop.when),
        precise.as_secs(),
        precise.subsec_micros()
    ));
    h
}

/// `Tue, 24 Nov 2026 10:53:10 +0000` (RFC 5322 §3.3), in UTC.
pub fn rfc5322_date(when: SystemTime) -> String {
    let t = OffsetDateTime::from(when);
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[t.weekday().number_days_from_monday() as usize],
        t.day(),
        MONTHS[t.month() as usize - 1],
        t.year(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn header_names_hop_queue_id_and_time() {
        let when = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        let h = received_header(&Hop {
            helo: "client.example",
            peer: "127.0.0.1:40000",
            hostname: "mail.example.test",
            node: "mx-1",
            tls: true,
            authenticated: false,
            queue_id: "00000000ABCD",
            single_recipient: Some("bob@example.test"),
            when,
        });
        assert_eq!(
            h,
            "Received: from client.example ([127.0.0.1])\r\n\tby mail.example.test (Palisade mx-1) \
             with ESMTPS id 00000000ABCD\r\n\tfor <bob@example.test>; Wed, 18 Nov 2026 11:06:40 +0000 (epoch 1795000000.000000)\r\n"
        );
    }

    #[test]
    fn ipv6_peer_and_no_helo() {
        let h = received_header(&Hop {
            helo: "",
            peer: "[::1]:25",
            hostname: "h",
            node: "n",
            tls: false,
            authenticated: true,
            queue_id: "Q",
            single_recipient: None,
            when: UNIX_EPOCH,
        });
        assert!(h.starts_with("Received: from unknown ([::1])"), "{h}");
        assert!(h.contains("with ESMTPA id Q;"), "{h}");
        assert!(
            h.ends_with("Thu, 1 Jan 1970 00:00:00 +0000 (epoch 0.000000)\r\n"),
            "{h}"
        );
    }

    #[test]
    fn hiding_client_ip_drops_peer_and_address_literal_helo() {
        let client = ClientInfo {
            peer: "192.0.2.7:5000".into(),
            helo: "[192.0.2.7]".into(),
            tls: Some("TLSv1.3".into()),
            auth_user: Some("alice".into()),
        };
        let hop = Hop::from_client(&client, "h", "msa-1", "Q", None, UNIX_EPOCH);
        let open = received_header(&hop);
        assert!(
            open.starts_with("Received: from [192.0.2.7] ([192.0.2.7])"),
            "{open}"
        );
        let hidden = received_header(&hop.hiding_client_ip());
        assert!(hidden.starts_with("Received: from unknown\r\n"), "{hidden}");
        assert!(!hidden.contains("192.0.2.7"), "{hidden}");
        assert!(hidden.contains("with ESMTPSA id Q;"), "{hidden}");
    }
}
