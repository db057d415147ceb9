//! Which flow a message is on, read from our own trace headers.
//!
//! Internal hops do not carry the SMTP AUTH identity, but every Palisade
//! stage prepends `Received: ... by <hostname> (Palisade <node>) with
//! <protocol>`. Reading from the top, headers written by our nodes form an
//! unbroken run down to the entry hop (MX or MSA); anything below it came
//! from outside and is not believed. The message is flow 4 (an
//! authenticated local user) when the entry hop is an MSA node and its
//! protocol is ESMTPA/ESMTPSA (RFC 3848).

use palisade_config::{Config, StageKind};

/// True when the entry hop of our trace headers is an authenticated
/// submission to one of our MSA nodes.
pub fn authenticated_submission(config: &Config, message: &[u8]) -> bool {
    let head_end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(message.len());
    let head = String::from_utf8_lossy(&message[..head_end]);
    let mut received = Vec::new();
    let mut current: Option<String> = None;
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(c) = current.as_mut() {
                c.push(' ');
                c.push_str(line.trim());
            }
            continue;
        }
        if let Some(c) = current.take() {
            received.push(c);
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("received") {
                current = Some(value.trim().to_string());
            }
        }
    }
    if let Some(c) = current {
        received.push(c);
    }
    let marker = format!("by {} (Palisade ", config.gateway.hostname);
    for r in received {
        let Some(at) = r.find(&marker) else {
            return false; // not ours: the run of our headers ended
        };
        let rest = &r[at + marker.len()..];
        let Some((node, rest)) = rest.split_once(')') else {
            return false;
        };
        let Some(n) = config.node.get(node.trim()) else {
            return false;
        };
        if !n.stage.is_edge() {
            continue;
        }
        let protocol = rest
            .trim_start()
            .strip_prefix("with ")
            .and_then(|p| p.split_whitespace().next())
            .unwrap_or("");
        return n.stage == StageKind::Msa && matches!(protocol, "ESMTPA" | "ESMTPSA");
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        toml::from_str(
            r#"
            [gateway]
            hostname = "mail.example.test"
            [node.msa-1]
            stage = "msa"
            [node.mx-1]
            stage = "mx"
            [node.antivirus-1]
            stage = "antivirus"
            "#,
        )
        .unwrap()
    }

    #[test]
    fn authenticated_msa_entry_is_flow_4() {
        let m = b"Received: from msa ([127.0.0.1])\r\n\tby mail.example.test (Palisade antivirus-1) with ESMTP id B; date\r\nReceived: from pc ([127.0.0.1])\r\n\tby mail.example.test (Palisade msa-1) with ESMTPSA id A; date\r\nSubject: x\r\n\r\nbody\r\n";
        assert!(authenticated_submission(&config(), m));
    }

    #[test]
    fn mx_entry_is_not_flow_4_even_with_forged_headers_below() {
        let m = b"Received: from x ([192.0.2.1])\r\n\tby mail.example.test (Palisade mx-1) with ESMTPS id A; date\r\nReceived: from pc\r\n\tby mail.example.test (Palisade msa-1) with ESMTPSA id F; date\r\nSubject: x\r\n\r\nbody\r\n";
        assert!(!authenticated_submission(&config(), m));
    }

    #[test]
    fn foreign_top_header_is_not_flow_4() {
        let m = b"Received: from pc\r\n\tby mail.example.test (Palisade msa-1) with ESMTPSA id F; date\r\n\r\nbody\r\n";
        assert!(authenticated_submission(&config(), m));
        let forged = b"Received: by evil.example\r\nReceived: from pc\r\n\tby mail.example.test (Palisade msa-1) with ESMTPSA id F; date\r\n\r\nbody\r\n";
        assert!(!authenticated_submission(&config(), forged));
    }
}
