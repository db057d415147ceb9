//! SMTP replies (RFC 5321 §4.2) with RFC 3463 enhanced status codes.

use std::fmt;

/// An RFC 3463 enhanced status code: `class.subject.detail`, e.g. `5.1.1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EnhancedStatus {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl EnhancedStatus {
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        EnhancedStatus {
            class,
            subject,
            detail,
        }
    }

    /// Parses `X.Y.Z` at the start of `text`; returns the code and the rest
    /// of the text with the separating space removed.
    pub fn parse_prefix(text: &str) -> Option<(EnhancedStatus, &str)> {
        let end = text.find(' ').unwrap_or(text.len());
        let mut parts = text[..end].split('.');
        let class: u8 = parts.next()?.parse().ok()?;
        let subject: u16 = parts.next()?.parse().ok()?;
        let detail: u16 = parts.next()?.parse().ok()?;
        if parts.next().is_some() || !(2..=5).contains(&class) {
            return None;
        }
        let rest = text[end..].strip_prefix(' ').unwrap_or(&text[end..]);
        Some((EnhancedStatus::new(class, subject, detail), rest))
    }
}

impl fmt::Display for EnhancedStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One SMTP reply. `text` may hold several lines separated by `\n`; they are
/// sent as a multi-line reply (`250-...` / `250 ...`), each line carrying the
/// enhanced code when there is one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: Option<EnhancedStatus>,
    pub text: String,
}

impl Reply {
    pub fn new(code: u16, enhanced: Option<EnhancedStatus>, text: impl Into<String>) -> Self {
        Reply {
            code,
            enhanced,
            text: text.into(),
        }
    }

    /// Reply with an enhanced code given as `(class, subject, detail)`.
    pub fn enhanced(code: u16, status: (u8, u16, u16), text: impl Into<String>) -> Self {
        Reply::new(
            code,
            Some(EnhancedStatus::new(status.0, status.1, status.2)),
            text,
        )
    }

    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
    /// 4xx: try again later; the message stays queued.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }
    /// 5xx: permanent refusal.
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// `250 2.0.0 OK`, the generic success reply.
    pub fn ok() -> Self {
        Reply::enhanced(250, (2, 0, 0), "OK")
    }

    /// `500 5.5.2`: command unrecognised, line too long, or a forbidden
    /// octet in a command line (RFC 5321 §4.2.2, RFC 3463 §3.6).
    pub fn syntax_error(text: impl Into<String>) -> Self {
        Reply::enhanced(500, (5, 5, 2), text)
    }

    /// `501 5.5.4`: the verb is known but its arguments are malformed
    /// (RFC 5321 §4.2.2, RFC 3463 §3.6).
    pub fn bad_arguments(text: impl Into<String>) -> Self {
        Reply::enhanced(501, (5, 5, 4), text)
    }

    /// `502 5.5.1`: command not implemented (RFC 5321 §4.2.2).
    pub fn not_implemented(text: impl Into<String>) -> Self {
        Reply::enhanced(502, (5, 5, 1), text)
    }

    /// `503 5.5.1`: bad sequence of commands (RFC 5321 §4.2.2).
    pub fn bad_sequence(text: impl Into<String>) -> Self {
        Reply::enhanced(503, (5, 5, 1), text)
    }

    /// `555 5.5.4`: MAIL/RCPT parameter not recognised (RFC 5321 §4.2.2).
    pub fn unknown_parameter(text: impl Into<String>) -> Self {
        Reply::enhanced(555, (5, 5, 4), text)
    }

    /// `552 5.3.4`: message too big for system (RFC 1870, RFC 3463 §3.4).
    pub fn message_too_big() -> Self {
        Reply::enhanced(
            552,
            (5, 3, 4),
            "Message size exceeds fixed maximum message size",
        )
    }

    /// `452 4.5.3`: too many recipients (RFC 5321 §4.5.3.1.10).
    pub fn too_many_recipients() -> Self {
        Reply::enhanced(452, (4, 5, 3), "Too many recipients")
    }

    /// `550 5.5.2`: bare CR or LF in DATA, the SMTP smuggling defence
    /// (RFC 5321 §2.3.8, SPEC §5).
    pub fn bare_line_ending() -> Self {
        Reply::enhanced(
            550,
            (5, 5, 2),
            "Message refused: bare CR or LF in message content (see RFC 5321 section 2.3.8)",
        )
    }

    /// `421 4.7.0`: a policy reason to close the session (SPEC §5).
    pub fn closing_policy(text: impl Into<String>) -> Self {
        Reply::enhanced(421, (4, 7, 0), text)
    }

    /// `421 4.4.2`: the client was idle too long (RFC 5321 §4.5.3.2).
    pub fn timeout(text: impl Into<String>) -> Self {
        Reply::enhanced(421, (4, 4, 2), text)
    }

    /// `554 5.5.1`: the client talked before the greeting (SPEC §5).
    pub fn early_talker() -> Self {
        Reply::enhanced(554, (5, 5, 1), "Protocol error: talked before greeting")
    }

    /// Wire form, CRLF-terminated. `with_enhanced` is false when the client
    /// has not been offered ENHANCEDSTATUSCODES (HELO sessions, banner).
    pub fn to_wire(&self, with_enhanced: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.text.len() + 16);
        self.write_wire(&mut out, with_enhanced);
        out
    }

    /// Appends the wire form to `out` without intermediate allocations; the
    /// session driver uses this to batch pipelined replies in one buffer.
    pub fn write_wire(&self, out: &mut Vec<u8>, with_enhanced: bool) {
        let code = [
            b'0' + (self.code / 100 % 10) as u8,
            b'0' + (self.code / 10 % 10) as u8,
            b'0' + (self.code % 10) as u8,
        ];
        let mut lines = self.text.split('\n').peekable();
        while let Some(line) = lines.next() {
            out.extend_from_slice(&code);
            out.push(if lines.peek().is_some() { b'-' } else { b' ' });
            if let (true, Some(e)) = (with_enhanced, self.enhanced) {
                use std::io::Write as _;
                // Writing into a Vec cannot fail.
                let _ = write!(out, "{e} ");
            }
            out.extend_from_slice(line.trim_end_matches('\r').as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Parses a complete (possibly multi-line) reply from its wire lines
    /// without their CRLF. Returns None when the lines are not one
    /// well-formed reply. Enhanced codes are recognised on the first line.
    pub fn parse_lines(lines: &[&str]) -> Option<Reply> {
        let mut code = None;
        let mut texts = Vec::with_capacity(lines.len());
        let mut enhanced = None;
        for (i, line) in lines.iter().enumerate() {
            if line.len() < 3 || !line.is_char_boundary(3) {
                return None;
            }
            let c: u16 = line[..3].parse().ok()?;
            if !(200..600).contains(&c) || *code.get_or_insert(c) != c {
                return None;
            }
            let last = i + 1 == lines.len();
            let sep = line.as_bytes().get(3).copied();
            match (sep, last) {
                (Some(b'-'), false) | (Some(b' '), true) | (None, true) => {}
                _ => return None,
            }
            let mut text = line.get(4..).unwrap_or("");
            if let Some((e, rest)) = EnhancedStatus::parse_prefix(text) {
                if e.class as u16 == c / 100 {
                    if i == 0 {
                        enhanced = Some(e);
                    }
                    text = rest;
                }
            }
            texts.push(text);
        }
        Some(Reply {
            code: code?,
            enhanced,
            text: texts.join("\n"),
        })
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.enhanced {
            Some(e) => write!(f, "{} {} {}", self.code, e, self.text.replace('\n', " / ")),
            None => write!(f, "{} {}", self.code, self.text.replace('\n', " / ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiline_round_trip() {
        let r = Reply::enhanced(250, (2, 0, 0), "first\nsecond");
        let wire = String::from_utf8(r.to_wire(true)).unwrap();
        assert_eq!(wire, "250-2.0.0 first\r\n250 2.0.0 second\r\n");
        let lines: Vec<&str> = wire.split("\r\n").filter(|l| !l.is_empty()).collect();
        assert_eq!(Reply::parse_lines(&lines), Some(r));
    }

    #[test]
    fn enhanced_omitted_when_not_negotiated() {
        let r = Reply::enhanced(550, (5, 1, 1), "no such user");
        assert_eq!(r.to_wire(false), b"550 no such user\r\n");
    }

    #[test]
    fn rejects_mixed_codes_and_bad_separators() {
        assert_eq!(Reply::parse_lines(&["250-a", "251 b"]), None);
        assert_eq!(Reply::parse_lines(&["250 a", "250 b"]), None);
        assert_eq!(Reply::parse_lines(&["25"]), None);
        assert_eq!(Reply::parse_lines(&["250"]).unwrap().code, 250);
    }

    #[test]
    fn enhanced_class_must_match_code() {
        let r = Reply::parse_lines(&["250 5.1.1 odd"]).unwrap();
        assert_eq!(r.enhanced, None);
        assert_eq!(r.text, "5.1.1 odd");
    }
}
