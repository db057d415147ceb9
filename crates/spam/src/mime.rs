//! Just enough MIME to read what a message says: unfolded headers, the
//! decoded text of its text parts, and what its other parts are.
//!
//! This is not a validating parser. It never fails: a broken message gives
//! whatever text could be found, which is what a content filter wants
//! (spam is often broken on purpose). Depth and part count are bounded so a
//! crafted message costs little.

use base64::Engine;

/// Parts deeper than this are not opened (their text is ignored).
const MAX_DEPTH: usize = 8;
/// Parts after this many are not read.
const MAX_PARTS: usize = 64;
/// Decoded text kept per message; the rest adds nothing to a score.
const MAX_TEXT: usize = 256 * 1024;

/// A message reduced to what the scorers look at.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Top-level headers, names lowercased, values unfolded.
    pub headers: Vec<(String, String)>,
    /// Decoded text of each text part, and whether it was HTML.
    pub texts: Vec<Text>,
    /// `type/subtype` of the parts that are not text (attachments, images).
    pub other_parts: Vec<String>,
    /// File names of attachments.
    pub filenames: Vec<String>,
    /// A text/plain part exists (HTML-only mail is a spam sign).
    pub has_plain: bool,
}

#[derive(Debug)]
pub struct Text {
    pub body: String,
    pub html: bool,
}

impl Parsed {
    /// The first header of that (lowercase) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

pub fn parse(raw: &[u8]) -> Parsed {
    let raw = skip_mbox_from_line(raw);
    let (head, body) = split_head_body(raw);
    let headers = parse_headers(head);
    let mut parsed = Parsed {
        headers: headers.clone(),
        ..Parsed::default()
    };
    let mut budget = Budget { parts: 0, text: 0 };
    walk(&headers, body, 0, &mut parsed, &mut budget);
    parsed
}

struct Budget {
    parts: usize,
    text: usize,
}

fn skip_mbox_from_line(raw: &[u8]) -> &[u8] {
    if raw.starts_with(b"From ") {
        if let Some(i) = memchr(b'\n', raw) {
            return &raw[i + 1..];
        }
    }
    raw
}

fn memchr(c: u8, s: &[u8]) -> Option<usize> {
    s.iter().position(|&b| b == c)
}

/// Splits at the first empty line (CRLF or LF).
pub fn split_head_body(raw: &[u8]) -> (&[u8], &[u8]) {
    let mut i = 0;
    // An empty first line means no headers at all.
    if raw.starts_with(b"\r\n") {
        return (&[], &raw[2..]);
    }
    if raw.starts_with(b"\n") {
        return (&[], &raw[1..]);
    }
    while let Some(off) = memchr(b'\n', &raw[i..]) {
        let nl = i + off;
        let rest = &raw[nl + 1..];
        if rest.starts_with(b"\r\n") {
            return (&raw[..nl + 1], &rest[2..]);
        }
        if rest.starts_with(b"\n") {
            return (&raw[..nl + 1], &rest[1..]);
        }
        i = nl + 1;
    }
    (raw, &[])
}

/// Unfolds header lines; names are lowercased.
pub fn parse_headers(head: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(head);
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = out.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            if !name.is_empty() && !name.contains(' ') {
                out.push((name.to_ascii_lowercase(), value.trim().to_string()));
            }
        }
    }
    out
}

/// `type/subtype` (lowercase) and the parameters of a Content-Type value.
pub fn content_type(value: Option<&str>) -> (String, Vec<(String, String)>) {
    let Some(value) = value else {
        return ("text/plain".into(), Vec::new());
    };
    let mut parts = value.split(';');
    let ty = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let params = parts
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            Some((
                k.trim().to_ascii_lowercase(),
                v.trim().trim_matches('"').to_string(),
            ))
        })
        .collect();
    let ty = if ty.contains('/') {
        ty
    } else {
        "text/plain".into()
    };
    (ty, params)
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn walk(
    headers: &[(String, String)],
    body: &[u8],
    depth: usize,
    out: &mut Parsed,
    budget: &mut Budget,
) {
    budget.parts += 1;
    if depth > MAX_DEPTH || budget.parts > MAX_PARTS {
        return;
    }
    let (ty, params) = content_type(header(headers, "content-type"));
    let encoding = header(headers, "content-transfer-encoding")
        .unwrap_or("7bit")
        .trim()
        .to_ascii_lowercase();
    if let Some(name) = param(&params, "name").or_else(|| {
        header(headers, "content-disposition")
            .and_then(|d| {
                d.split(';')
                    .find_map(|p| p.trim().strip_prefix("filename="))
            })
            .map(|f| f.trim_matches('"'))
    }) {
        out.filenames.push(name.to_string());
    }
    if ty.starts_with("multipart/") {
        if let Some(boundary) = param(&params, "boundary") {
            for part in split_multipart(body, boundary.as_bytes()) {
                let (h, b) = split_head_body(part);
                let h = parse_headers(h);
                walk(&h, b, depth + 1, out, budget);
            }
        }
        return;
    }
    if ty == "message/rfc822" {
        let (h, b) = split_head_body(body);
        let h = parse_headers(h);
        walk(&h, b, depth + 1, out, budget);
        return;
    }
    if !ty.starts_with("text/") {
        out.other_parts.push(ty);
        return;
    }
    if budget.text >= MAX_TEXT {
        return;
    }
    let decoded = decode_transfer(body, &encoding);
    let html = ty == "text/html";
    if ty == "text/plain" {
        out.has_plain = true;
    }
    let mut text = bytes_to_text(&decoded);
    let room = MAX_TEXT - budget.text;
    if text.len() > room {
        let mut cut = room;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    budget.text += text.len();
    out.texts.push(Text { body: text, html });
}

/// UTF-8 when valid, else Latin-1 (the usual charset of old 8-bit mail):
/// either way every byte yields a character and words stay whole.
pub fn bytes_to_text(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_string(),
        Err(_) => b.iter().map(|&c| c as char).collect(),
    }
}

/// The bodies between `--boundary` lines (preamble and epilogue dropped).
pub fn split_multipart<'a>(body: &'a [u8], boundary: &[u8]) -> Vec<&'a [u8]> {
    let mut delim = Vec::with_capacity(boundary.len() + 2);
    delim.extend_from_slice(b"--");
    delim.extend_from_slice(boundary);
    let mut parts = Vec::new();
    let mut start: Option<usize> = None;
    let mut i = 0;
    while i < body.len() {
        let line_end = memchr(b'\n', &body[i..])
            .map(|o| i + o + 1)
            .unwrap_or(body.len());
        let line = &body[i..line_end];
        if line.starts_with(&delim) {
            let after = &line[delim.len()..];
            let closing = after.starts_with(b"--");
            if let Some(s) = start.take() {
                parts.push(&body[s..i]);
            }
            if closing {
                return parts;
            }
            start = Some(line_end);
        }
        i = line_end;
    }
    if let Some(s) = start {
        parts.push(&body[s..]);
    }
    parts
}

pub fn decode_transfer(body: &[u8], encoding: &str) -> Vec<u8> {
    match encoding {
        "base64" => decode_base64_lenient(body),
        "quoted-printable" => decode_qp(body),
        _ => body.to_vec(),
    }
}

/// Base64 ignoring whitespace and junk characters, as mail readers do.
pub fn decode_base64_lenient(body: &[u8]) -> Vec<u8> {
    let clean: Vec<u8> = body
        .iter()
        .copied()
        .filter(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
        .collect();
    let usable = clean.len() - clean.len() % 4;
    let engine = base64::engine::general_purpose::STANDARD_NO_PAD;
    let mut out = engine.decode(&clean[..usable]).unwrap_or_default();
    if usable < clean.len() {
        if let Ok(tail) = engine.decode(&clean[usable..]) {
            out.extend(tail);
        }
    }
    out
}

pub fn decode_qp(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let c = body[i];
        if c == b'=' {
            if body.get(i + 1) == Some(&b'\n') {
                i += 2;
                continue;
            }
            if body.get(i + 1) == Some(&b'\r') && body.get(i + 2) == Some(&b'\n') {
                i += 3;
                continue;
            }
            if let (Some(h), Some(l)) = (
                body.get(i + 1).and_then(|b| hex(*b)),
                body.get(i + 2).and_then(|b| hex(*b)),
            ) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Decodes RFC 2047 encoded words (`=?charset?B|Q?...?=`) in a header value.
pub fn decode_encoded_words(value: &str) -> String {
    if !value.contains("=?") {
        return value.to_string();
    }
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("=?") {
        out.push_str(&rest[..start]);
        let word = &rest[start + 2..];
        let decoded = (|| {
            let (_charset, r) = word.split_once('?')?;
            let (enc, r) = r.split_once('?')?;
            let end = r.find("?=")?;
            let text = &r[..end];
            let bytes = match enc {
                "B" | "b" => decode_base64_lenient(text.as_bytes()),
                "Q" | "q" => decode_qp(text.replace('_', " ").as_bytes()),
                _ => return None,
            };
            Some((
                bytes_to_text(&bytes),
                start + 2 + word.len() - r.len() + end + 2,
            ))
        })();
        match decoded {
            Some((text, consumed)) => {
                out.push_str(&text);
                rest = &rest[consumed..];
            }
            None => {
                out.push_str("=?");
                rest = &rest[start + 2..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_base64_text_is_decoded() {
        let m = b"From: a@b\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\npreamble\r\n--XX\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8gd29ybGQ=\r\n--XX\r\nContent-Type: application/zip; name=\"a.zip\"\r\n\r\nPK..\r\n--XX--\r\n";
        let p = parse(m);
        assert_eq!(p.texts.len(), 1);
        assert_eq!(p.texts[0].body, "hello world");
        assert_eq!(p.other_parts, vec!["application/zip".to_string()]);
        assert_eq!(p.filenames, vec!["a.zip".to_string()]);
    }

    #[test]
    fn folded_headers_are_unfolded() {
        let h = parse_headers(b"Subject: one\r\n two\r\nFrom: x\r\n");
        assert_eq!(h[0], ("subject".into(), "one two".into()));
    }

    #[test]
    fn encoded_words_are_decoded() {
        assert_eq!(
            decode_encoded_words("=?utf-8?B?aGVsbG8=?= you"),
            "hello you"
        );
        assert_eq!(
            decode_encoded_words("=?iso-8859-1?Q?caf=E9_au?="),
            "café au"
        );
    }

    #[test]
    fn qp_soft_breaks_join_lines() {
        assert_eq!(decode_qp(b"ab=\r\ncd=3D"), b"abcd=");
    }
}
