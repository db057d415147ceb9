//! ENVELOPE, BODYSTRUCTURE and body sections (RFC 3501 §6.4.5, §7.4.2) from mail-parser's parse.
//!
//! Strings taken from the message are sent as they appear in the header (still RFC 2047
//! encoded), as RFC 3501 expects; only display names, which mail-parser hands back decoded,
//! are re-encoded. Sizes and line counts are those of the raw (transfer-encoded) octets.

use mail_parser::{Address, Message, MessageParser, MessagePart, MimeHeaders, PartType};

use crate::wire::{encode_word, nstring, string};

/// Parses a stored message (headers and MIME structure; bodies are decoded lazily by callers).
pub fn parse(raw: &[u8]) -> Option<Message<'_>> {
    MessageParser::default().parse(raw)
}

fn raw_header<'a>(msg: &'a Message<'a>, name: &str) -> Option<String> {
    msg.header_raw(name)
        .map(|v| v.replace("\r\n", "").replace('\n', "").trim().to_string())
}

fn address_list(out: &mut Vec<u8>, addr: Option<&Address<'_>>) {
    let Some(addr) = addr else {
        out.extend_from_slice(b"NIL");
        return;
    };
    let mut items = Vec::new();
    let push_addr = |items: &mut Vec<u8>, name: Option<&str>, email: Option<&str>| {
        items.push(b'(');
        nstring(items, name.map(encode_word).as_deref().map(str::as_bytes));
        items.extend_from_slice(b" NIL ");
        let email = email.unwrap_or("");
        let (local, host) = match email.rsplit_once('@') {
            Some((l, h)) => (l, Some(h)),
            None => (email, None),
        };
        nstring(items, Some(local.as_bytes()));
        items.push(b' ');
        nstring(items, host.map(str::as_bytes));
        items.push(b')');
    };
    match addr {
        Address::List(list) => {
            for a in list {
                push_addr(&mut items, a.name.as_deref(), a.address.as_deref());
            }
        }
        Address::Group(groups) => {
            for g in groups {
                // Group syntax (RFC 3501 §7.4.2): start marker with the group name, end marker.
                if let Some(name) = &g.name {
                    items.extend_from_slice(b"(NIL NIL ");
                    string(&mut items, encode_word(name).as_bytes());
                    items.extend_from_slice(b" NIL)");
                }
                for a in &g.addresses {
                    push_addr(&mut items, a.name.as_deref(), a.address.as_deref());
                }
                if g.name.is_some() {
                    items.extend_from_slice(b"(NIL NIL NIL NIL)");
                }
            }
        }
    }
    if items.is_empty() {
        out.extend_from_slice(b"NIL");
    } else {
        out.push(b'(');
        out.extend_from_slice(&items);
        out.push(b')');
    }
}

/// Appends the ENVELOPE structure of `msg`.
pub fn envelope(out: &mut Vec<u8>, msg: Option<&Message<'_>>) {
    let Some(msg) = msg else {
        out.extend_from_slice(b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)");
        return;
    };
    out.push(b'(');
    nstring(out, raw_header(msg, "Date").as_deref().map(str::as_bytes));
    out.push(b' ');
    nstring(
        out,
        raw_header(msg, "Subject").as_deref().map(str::as_bytes),
    );
    let from = msg.from();
    for (i, a) in [
        from,
        msg.sender().or(from),
        msg.reply_to().or(from),
        msg.to(),
        msg.cc(),
        msg.bcc(),
    ]
    .into_iter()
    .enumerate()
    {
        let _ = i;
        out.push(b' ');
        address_list(out, a);
    }
    out.push(b' ');
    nstring(
        out,
        raw_header(msg, "In-Reply-To").as_deref().map(str::as_bytes),
    );
    out.push(b' ');
    nstring(
        out,
        raw_header(msg, "Message-ID").as_deref().map(str::as_bytes),
    );
    out.push(b')');
}

fn params(
    out: &mut Vec<u8>,
    attrs: Option<&[mail_parser::Attribute<'_>]>,
    default: &[(&str, &str)],
) {
    let mut pairs: Vec<(String, String)> = attrs
        .unwrap_or_default()
        .iter()
        .map(|a| (a.name.to_ascii_uppercase(), a.value.to_string()))
        .collect();
    if pairs.is_empty() {
        pairs = default
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }
    if pairs.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        string(out, k.as_bytes());
        out.push(b' ');
        string(out, encode_word(v).as_bytes());
    }
    out.push(b')');
}

fn disposition(out: &mut Vec<u8>, part: &MessagePart<'_>) {
    match part.content_disposition() {
        Some(d) => {
            out.push(b'(');
            string(out, d.ctype().to_ascii_uppercase().as_bytes());
            out.push(b' ');
            params(out, d.attributes(), &[]);
            out.push(b')');
        }
        None => out.extend_from_slice(b"NIL"),
    }
}

/// Lines of a body; a last line without a line break (before a MIME boundary) still counts.
fn count_lines(bytes: &[u8]) -> usize {
    let breaks = bytes.iter().filter(|&&b| b == b'\n').count();
    breaks + usize::from(!bytes.is_empty() && !bytes.ends_with(b"\n"))
}

/// Appends the BODYSTRUCTURE (`extended`) or BODY structure of a whole message.
pub fn body_structure(out: &mut Vec<u8>, msg: Option<&Message<'_>>, raw: &[u8], extended: bool) {
    match msg {
        Some(m) if !m.parts.is_empty() => part_structure(out, m, 0, extended, 0),
        _ => {
            out.extend_from_slice(
                format!(
                    "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" {} {})",
                    raw.len(),
                    count_lines(raw)
                )
                .as_bytes(),
            );
        }
    }
}

const MAX_DEPTH: usize = 32;

fn part_structure(out: &mut Vec<u8>, msg: &Message<'_>, id: usize, extended: bool, depth: usize) {
    let Some(part) = msg.parts.get(id) else {
        out.extend_from_slice(b"NIL");
        return;
    };
    let ct = part.content_type();
    if let (PartType::Multipart(children), true) = (&part.body, depth < MAX_DEPTH) {
        out.push(b'(');
        for &child in children {
            part_structure(out, msg, child as usize, extended, depth + 1);
        }
        if children.is_empty() {
            // RFC 3501 requires at least one body part; describe an empty text part.
            out.extend_from_slice(b"(\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 0 0)");
        }
        out.push(b' ');
        let subtype = ct.and_then(|c| c.subtype()).unwrap_or("mixed");
        string(out, subtype.to_ascii_uppercase().as_bytes());
        if extended {
            out.push(b' ');
            params(out, ct.and_then(|c| c.attributes()), &[]);
            out.push(b' ');
            disposition(out, part);
            out.extend_from_slice(b" NIL NIL");
        }
        out.push(b')');
        return;
    }
    let raw = msg.raw_message();
    let start = (part.offset_body as usize).min(raw.len());
    let end = (part.offset_end as usize).clamp(start, raw.len());
    let body = &raw[start..end];
    let (ctype, subtype) = match ct {
        Some(c) => (
            c.ctype().to_ascii_uppercase(),
            c.subtype().unwrap_or("").to_ascii_uppercase(),
        ),
        None => ("TEXT".to_string(), "PLAIN".to_string()),
    };
    let subtype = if subtype.is_empty() && ctype == "TEXT" {
        "PLAIN".to_string()
    } else {
        subtype
    };
    out.push(b'(');
    string(out, ctype.as_bytes());
    out.push(b' ');
    string(out, subtype.as_bytes());
    out.push(b' ');
    let default_charset: &[(&str, &str)] = if ctype == "TEXT" {
        &[("CHARSET", "US-ASCII")]
    } else {
        &[]
    };
    params(out, ct.and_then(|c| c.attributes()), default_charset);
    out.push(b' ');
    nstring(out, part.content_id().map(str::as_bytes));
    out.push(b' ');
    nstring(out, part.content_description().map(str::as_bytes));
    out.push(b' ');
    let cte = part
        .content_transfer_encoding()
        .unwrap_or("7BIT")
        .to_ascii_uppercase();
    string(out, cte.as_bytes());
    out.extend_from_slice(format!(" {}", body.len()).as_bytes());
    match &part.body {
        PartType::Message(inner) if ctype == "MESSAGE" && depth < MAX_DEPTH => {
            out.push(b' ');
            envelope(out, Some(inner));
            out.push(b' ');
            if inner.parts.is_empty() {
                body_structure(out, None, inner.raw_message(), extended);
            } else {
                part_structure(out, inner, 0, extended, depth + 1);
            }
            out.extend_from_slice(format!(" {}", count_lines(body)).as_bytes());
        }
        _ if ctype == "TEXT" => out.extend_from_slice(format!(" {}", count_lines(body)).as_bytes()),
        _ => {}
    }
    if extended {
        out.extend_from_slice(b" NIL ");
        disposition(out, part);
        out.extend_from_slice(b" NIL NIL");
    }
    out.push(b')');
}

/// Where a section's part path leads: the message that holds the part and the part's index.
pub struct Located<'m, 'x> {
    pub msg: &'m Message<'x>,
    pub part: usize,
}

/// Follows a part path (`1.2.3`) through multiparts and attached messages.
pub fn locate<'m, 'x>(msg: &'m Message<'x>, path: &[u32]) -> Option<Located<'m, 'x>> {
    let mut cur = Located { msg, part: 0 };
    for (i, &n) in path.iter().enumerate() {
        if i > 0 {
            // Below a message/rfc822 part, numbers address the attached message's parts.
            if let PartType::Message(inner) = &cur.msg.parts.get(cur.part)?.body {
                cur = Located {
                    msg: inner,
                    part: 0,
                };
            }
        }
        let part = cur.msg.parts.get(cur.part)?;
        match &part.body {
            PartType::Multipart(children) => {
                let child = *children.get((n as usize).checked_sub(1)?)?;
                cur.part = child as usize;
            }
            _ if n == 1 => {}
            _ => return None,
        }
    }
    Some(cur)
}

/// Body of the located part (its content, transfer-encoded, without its MIME header).
pub fn part_body<'a>(loc: &Located<'a, '_>) -> &'a [u8] {
    let raw = loc.msg.raw_message();
    let Some(part) = loc.msg.parts.get(loc.part) else {
        return b"";
    };
    let start = (part.offset_body as usize).min(raw.len());
    &raw[start..(part.offset_end as usize).clamp(start, raw.len())]
}

/// MIME header of the located part.
pub fn part_mime<'a>(loc: &Located<'a, '_>) -> &'a [u8] {
    let raw = loc.msg.raw_message();
    let Some(part) = loc.msg.parts.get(loc.part) else {
        return b"";
    };
    let start = (part.offset_header as usize).min(raw.len());
    &raw[start..(part.offset_body as usize).clamp(start, raw.len())]
}

/// The attached message of a message/rfc822 part (for `1.HEADER`, `1.TEXT`).
pub fn attached<'m, 'x>(loc: &Located<'m, 'x>) -> Option<&'m Message<'x>> {
    match &loc.msg.parts.get(loc.part)?.body {
        PartType::Message(inner) => Some(inner),
        _ => None,
    }
}

/// Offset of the first body octet of `raw` (just after the blank line ending the header).
pub fn header_end(raw: &[u8]) -> usize {
    let mut i = 0;
    while i < raw.len() {
        // An empty line: the header is everything up to and including it.
        if raw[i..].starts_with(b"\r\n") {
            return i + 2;
        }
        if raw[i] == b'\n' {
            return i + 1;
        }
        match raw[i..].iter().position(|&b| b == b'\n') {
            Some(p) => i += p + 1,
            None => return raw.len(),
        }
    }
    raw.len()
}

/// `HEADER.FIELDS` / `HEADER.FIELDS.NOT`: the matching (or non-matching) fields of `header`,
/// followed by the blank line.
pub fn header_fields(header: &[u8], names: &[Vec<u8>], not: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < header.len() {
        let line_end = header[i..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(header.len(), |p| i + p + 1);
        if header[i..line_end]
            .iter()
            .all(|b| *b == b'\r' || *b == b'\n')
        {
            break;
        }
        // A field runs until the next line that does not start with white space.
        let mut end = line_end;
        while end < header.len() && matches!(header[end], b' ' | b'\t') {
            end = header[end..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(header.len(), |p| end + p + 1);
        }
        let field = &header[i..end];
        let name = field.split(|&b| b == b':').next().unwrap_or(b"");
        let name = name.trim_ascii();
        let listed = names.iter().any(|n| n.eq_ignore_ascii_case(name));
        if listed != not {
            out.extend_from_slice(field);
        }
        i = end;
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MULTI: &[u8] = b"From: \"Zo\xc3\xab\" <zoe@example.test>\r\nTo: a@example.test, B <b@example.test>\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\nMessage-ID: <m1@example.test>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\npreamble\r\n--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello\r\nworld\r\n--XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=a.bin\r\n\r\nAAEC\r\n--XX--\r\n";

    #[test]
    fn envelope_of_a_message() {
        let m = parse(MULTI).unwrap();
        let mut out = Vec::new();
        envelope(&mut out, Some(&m));
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("(NIL \"=?utf-8?q?caf=C3=A9?=\" ((\"=?utf-8?b?Wm/Dqw==?=\" NIL \"zoe\" \"example.test\"))"), "{s}");
        assert!(
            s.contains("((NIL NIL \"a\" \"example.test\")(\"B\" NIL \"b\" \"example.test\"))"),
            "{s}"
        );
        assert!(s.ends_with("NIL NIL NIL \"<m1@example.test>\")"), "{s}");
    }

    #[test]
    fn bodystructure_of_multipart() {
        let m = parse(MULTI).unwrap();
        let mut out = Vec::new();
        body_structure(&mut out, Some(&m), MULTI, true);
        let s = String::from_utf8(out).unwrap();
        assert!(
            s.starts_with("((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"utf-8\") NIL NIL \"7BIT\" 12 2"),
            "{s}"
        );
        assert!(s.contains("(\"APPLICATION\" \"OCTET-STREAM\" NIL NIL NIL \"BASE64\" 4 NIL (\"ATTACHMENT\" (\"FILENAME\" \"a.bin\")) NIL NIL)"), "{s}");
        assert!(s.contains(" \"MIXED\" (\"BOUNDARY\" \"XX\")"), "{s}");
    }

    #[test]
    fn sections_by_part_number() {
        let m = parse(MULTI).unwrap();
        let p1 = locate(&m, &[1]).unwrap();
        assert_eq!(part_body(&p1), b"hello\r\nworld");
        assert_eq!(
            part_mime(&p1),
            b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
        );
        assert_eq!(part_body(&locate(&m, &[2]).unwrap()), b"AAEC");
        assert!(locate(&m, &[3]).is_none());
    }

    #[test]
    fn header_field_selection() {
        let h = b"From: a\r\nSubject: one\r\n two\r\nTo: b\r\n\r\n";
        assert_eq!(header_end(h), h.len());
        let got = header_fields(h, &[b"subject".to_vec()], false);
        assert_eq!(got, b"Subject: one\r\n two\r\n\r\n");
        let got = header_fields(h, &[b"subject".to_vec()], true);
        assert_eq!(got, b"From: a\r\nTo: b\r\n\r\n");
    }
}
