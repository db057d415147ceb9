//! DM28, before the scanner: limits on a message's MIME structure.
//!
//! A MIME bomb (thousands of parts, parts nested hundreds deep, or more
//! decoded bytes than a scanner will look at) can tie up clamd or make it
//! give up and call the message clean. One bounded pass over the message
//! measures it; over any limit, the stage quarantines it unscanned.

/// The limits (from `[stage.antivirus.virus]`).
#[derive(Clone, Copy, Debug)]
pub struct MimeLimits {
    pub max_depth: usize,
    pub max_parts: usize,
    pub max_decoded_size: u64,
}

/// What the pass measured (stops counting once a limit is passed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MimeStats {
    pub depth: usize,
    pub parts: usize,
    /// Estimated decoded bytes of all leaf parts (base64 counts 3/4).
    pub decoded_size: u64,
}

impl MimeLimits {
    /// `Err(reason)` when the message is over a limit.
    pub fn check(&self, message: &[u8]) -> Result<MimeStats, String> {
        let mut stats = MimeStats::default();
        walk(message, 0, self, &mut stats);
        if stats.depth > self.max_depth {
            return Err(format!("MIME nesting deeper than {}", self.max_depth));
        }
        if stats.parts > self.max_parts {
            return Err(format!("more than {} MIME parts", self.max_parts));
        }
        if stats.decoded_size > self.max_decoded_size {
            return Err(format!(
                "decoded parts larger than {} bytes",
                self.max_decoded_size
            ));
        }
        Ok(stats)
    }
}

fn over(l: &MimeLimits, s: &MimeStats) -> bool {
    s.depth > l.max_depth || s.parts > l.max_parts || s.decoded_size > l.max_decoded_size
}

fn walk(entity: &[u8], depth: usize, l: &MimeLimits, s: &mut MimeStats) {
    s.parts += 1;
    s.depth = s.depth.max(depth);
    if over(l, s) {
        return;
    }
    let (head, body) = split_head_body(entity);
    let head = String::from_utf8_lossy(head).to_ascii_lowercase();
    let unfolded = head
        .replace("\r\n ", " ")
        .replace("\r\n\t", " ")
        .replace("\n ", " ")
        .replace("\n\t", " ");
    let ctype = header(&unfolded, "content-type").unwrap_or_default();
    let encoding = header(&unfolded, "content-transfer-encoding").unwrap_or_default();
    if ctype.starts_with("multipart/") {
        // The boundary's case matters; find it in the original header.
        let original = String::from_utf8_lossy(split_head_body(entity).0).into_owned();
        if let Some(b) = boundary(&original) {
            for part in split_multipart(body, b.as_bytes()) {
                walk(part, depth + 1, l, s);
                if over(l, s) {
                    return;
                }
            }
            return;
        }
    }
    if ctype.starts_with("message/rfc822") {
        walk(body, depth + 1, l, s);
        return;
    }
    let size = body.len() as u64;
    s.decoded_size += if encoding.trim() == "base64" {
        size * 3 / 4
    } else {
        size
    };
}

fn split_head_body(raw: &[u8]) -> (&[u8], &[u8]) {
    for (i, w) in raw.windows(2).enumerate() {
        if w == b"\n\n" {
            return (&raw[..i + 1], &raw[i + 2..]);
        }
        if w == b"\n\r" && raw.get(i + 2) == Some(&b'\n') {
            return (&raw[..i + 1], &raw[i + 3..]);
        }
    }
    (raw, &[])
}

/// The value of a header in an unfolded, lowercased header block.
fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        (n.trim() == name).then(|| v.trim().to_string())
    })
}

fn boundary(original_head: &str) -> Option<String> {
    let lower = original_head.to_ascii_lowercase();
    let at = lower.find("boundary=")? + "boundary=".len();
    let rest = &original_head[at..];
    let value = if let Some(q) = rest.strip_prefix('"') {
        q.split('"').next()?
    } else {
        rest.split([';', ' ', '\r', '\n', '\t']).next()?
    };
    (!value.is_empty()).then(|| value.to_string())
}

fn split_multipart<'a>(body: &'a [u8], boundary: &[u8]) -> Vec<&'a [u8]> {
    let mut delim = b"--".to_vec();
    delim.extend_from_slice(boundary);
    let mut parts = Vec::new();
    let mut start: Option<usize> = None;
    let mut i = 0;
    while i < body.len() {
        let end = body[i..]
            .iter()
            .position(|&c| c == b'\n')
            .map_or(body.len(), |o| i + o + 1);
        let line = &body[i..end];
        if line.starts_with(&delim) {
            if let Some(s) = start.take() {
                parts.push(&body[s..i]);
            }
            if line[delim.len()..].starts_with(b"--") {
                return parts;
            }
            start = Some(end);
        }
        i = end;
    }
    if let Some(s) = start {
        parts.push(&body[s..]);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: MimeLimits = MimeLimits {
        max_depth: 5,
        max_parts: 10,
        max_decoded_size: 10_000,
    };

    fn nested(depth: usize) -> String {
        let mut m = String::from("leaf\r\n");
        for d in 0..depth {
            m = format!(
                "Content-Type: multipart/mixed; boundary=\"b{d}\"\r\n\r\n--b{d}\r\n{m}\r\n--b{d}--\r\n"
            );
        }
        format!("Subject: x\r\n{}", m)
    }

    #[test]
    fn ordinary_message_passes() {
        let m = "Subject: x\r\nContent-Type: multipart/mixed; boundary=XY\r\n\r\n--XY\r\nContent-Type: text/plain\r\n\r\nhello\r\n--XY\r\nContent-Type: application/zip\r\nContent-Transfer-Encoding: base64\r\n\r\nUEsDBA==\r\n--XY--\r\n";
        let s = LIMITS.check(m.as_bytes()).unwrap();
        assert_eq!(s.parts, 3);
        assert_eq!(s.depth, 1);
    }

    #[test]
    fn deep_nesting_is_refused() {
        assert!(LIMITS.check(nested(4).as_bytes()).is_ok());
        let e = LIMITS.check(nested(50).as_bytes()).unwrap_err();
        assert!(e.contains("nesting"), "{e}");
    }

    #[test]
    fn too_many_parts_is_refused() {
        let mut m = String::from("Content-Type: multipart/mixed; boundary=B\r\n\r\n");
        for _ in 0..20 {
            m.push_str("--B\r\n\r\npart\r\n");
        }
        m.push_str("--B--\r\n");
        assert!(LIMITS.check(m.as_bytes()).unwrap_err().contains("parts"));
    }

    #[test]
    fn large_decoded_size_is_refused() {
        let m = format!("Subject: x\r\n\r\n{}", "a".repeat(20_000));
        assert!(LIMITS.check(m.as_bytes()).unwrap_err().contains("decoded"));
    }
}
