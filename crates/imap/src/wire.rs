//! Serialisation of IMAP response data (RFC 3501 §4, §9): strings, flag lists, dates.
//!
//! Responses are written by hand rather than through imap-codec's response types: the server
//! builds ENVELOPE / BODYSTRUCTURE straight from mail-parser, and streams message bodies as
//! literals without copying them into an intermediate response tree. Every string goes through
//! [`string`], which picks a quoted string or a literal so no input can break the framing.

use std::time::{SystemTime, UNIX_EPOCH};

/// Longest value sent as a quoted string; anything longer becomes a literal.
const MAX_QUOTED: usize = 1024;

/// Appends an IMAP `string`: quoted when safe (7-bit, no CR/LF/NUL), otherwise a literal.
pub fn string(out: &mut Vec<u8>, value: &[u8]) {
    let quotable = value.len() <= MAX_QUOTED
        && value
            .iter()
            .all(|&b| (0x01..0x80).contains(&b) && b != b'\r' && b != b'\n');
    if quotable {
        out.push(b'"');
        for &b in value {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        literal(out, value);
    }
}

/// Appends a literal `{n}\r\n<bytes>`.
pub fn literal(out: &mut Vec<u8>, value: &[u8]) {
    out.extend_from_slice(format!("{{{}}}\r\n", value.len()).as_bytes());
    out.extend_from_slice(value);
}

/// Appends an `nstring`: NIL for `None`.
pub fn nstring(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        Some(v) => string(out, v),
        None => out.extend_from_slice(b"NIL"),
    }
}

/// Appends an `astring` for a mailbox name (an atom when possible, so `INBOX` stays bare).
pub fn mailbox(out: &mut Vec<u8>, name: &str) {
    let atom = !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_graphic() && !matches!(b, b'(' | b')' | b'{' | b'"' | b'\\' | b'%' | b'*')
        });
    if atom {
        out.extend_from_slice(name.as_bytes());
    } else {
        string(out, name.as_bytes());
    }
}

/// `(\Seen \Flagged ...)`, with `\Recent` appended when asked.
pub fn flag_list(out: &mut Vec<u8>, flags: &[String], recent: bool) {
    out.push(b'(');
    let mut first = true;
    for f in flags {
        if !first {
            out.push(b' ');
        }
        first = false;
        out.extend_from_slice(f.as_bytes());
    }
    if recent {
        if !first {
            out.push(b' ');
        }
        out.extend_from_slice(b"\\Recent");
    }
    out.push(b')');
}

/// `"17-Jul-1996 02:44:25 +0000"` (date-time of RFC 3501), in UTC.
pub fn internal_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let dt = chrono::DateTime::from_timestamp(secs, 0).unwrap_or_default();
    format!("\"{}\"", dt.format("%d-%b-%Y %H:%M:%S +0000"))
}

/// RFC 2047 encoded-word for a non-ASCII display name (ENVELOPE strings are 7-bit in IMAP4rev1).
pub fn encode_word(text: &str) -> String {
    if text.is_ascii() {
        return text.to_string();
    }
    format!("=?utf-8?b?{}?=", base64(text.as_bytes()))
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_quoted_or_literal() {
        let mut out = Vec::new();
        string(&mut out, b"a \"b\" \\c");
        assert_eq!(out, b"\"a \\\"b\\\" \\\\c\"");
        out.clear();
        string(&mut out, b"two\r\nlines");
        assert_eq!(out, b"{10}\r\ntwo\r\nlines");
        out.clear();
        string(&mut out, "é".as_bytes());
        assert_eq!(out, b"{2}\r\n\xc3\xa9");
    }

    #[test]
    fn base64_and_encoded_words() {
        assert_eq!(base64(b"Man"), "TWFu");
        assert_eq!(base64(b"Ma"), "TWE=");
        assert_eq!(base64(b"M"), "TQ==");
        assert_eq!(encode_word("Zoë"), "=?utf-8?b?Wm/Dqw==?=");
        assert_eq!(encode_word("plain"), "plain");
    }

    #[test]
    fn dates_and_mailboxes() {
        let t = UNIX_EPOCH + std::time::Duration::from_secs(837_571_465);
        assert_eq!(internal_date(t), "\"17-Jul-1996 02:44:25 +0000\"");
        let mut out = Vec::new();
        mailbox(&mut out, "INBOX");
        out.push(b' ');
        mailbox(&mut out, "My Folder");
        assert_eq!(out, b"INBOX \"My Folder\"");
    }
}
