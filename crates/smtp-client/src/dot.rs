//! Streaming DATA encoder: dot-stuffing (RFC 5321 §4.5.2) and line-ending
//! normalisation in a single pass, appending into the caller's write buffer.
//!
//! Bare CR and bare LF are written as CRLF: RFC 5321 forbids them on the wire
//! and a lax next hop could otherwise read `\n.\n` or `\r.\r` inside the body
//! as the end of the message (SMTP smuggling).

/// Encodes one body in pieces of bounded size.
pub(crate) struct DotStuffer<'a> {
    body: &'a [u8],
    pos: usize,
    at_line_start: bool,
}

impl<'a> DotStuffer<'a> {
    pub(crate) fn new(body: &'a [u8]) -> Self {
        DotStuffer {
            body,
            pos: 0,
            at_line_start: true,
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        self.pos >= self.body.len()
    }

    /// Appends encoded bytes to `out` until it holds at least `limit` bytes
    /// or the body is exhausted. Each body byte is copied exactly once.
    pub(crate) fn fill(&mut self, out: &mut Vec<u8>, limit: usize) {
        let body = self.body;
        while self.pos < body.len() && out.len() < limit {
            if self.at_line_start {
                self.at_line_start = false;
                if body[self.pos] == b'.' {
                    out.push(b'.');
                }
            }
            let rest = &body[self.pos..];
            // Bound the scan so a huge line without EOL stays linear overall.
            let room = limit.saturating_sub(out.len()).max(1).min(rest.len());
            match rest[..room].iter().position(|&b| b == b'\r' || b == b'\n') {
                Some(0) => {
                    let used = if rest[0] == b'\r' && rest.get(1) == Some(&b'\n') {
                        2
                    } else {
                        1
                    };
                    out.extend_from_slice(b"\r\n");
                    self.pos += used;
                    self.at_line_start = true;
                }
                Some(n) => {
                    out.extend_from_slice(&rest[..n]);
                    self.pos += n;
                }
                None => {
                    out.extend_from_slice(&rest[..room]);
                    self.pos += room;
                }
            }
        }
    }

    /// Appends the end-of-data indicator, preceded by CRLF when the body did
    /// not end with a line break.
    pub(crate) fn finish(&self, out: &mut Vec<u8>) {
        if !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(body: &[u8], limit: usize) -> Vec<u8> {
        let mut st = DotStuffer::new(body);
        let mut wire = Vec::new();
        let mut chunk = Vec::new();
        loop {
            st.fill(&mut chunk, limit);
            if st.is_done() {
                st.finish(&mut chunk);
                wire.extend_from_slice(&chunk);
                return wire;
            }
            assert!(chunk.len() <= limit + 2, "chunk overshoots limit");
            wire.extend_from_slice(&chunk);
            chunk.clear();
        }
    }

    #[test]
    fn stuffs_leading_dots() {
        let body = b".hidden\r\nok\r\n..two\r\n.\r\nend\r\n";
        let want = b"..hidden\r\nok\r\n...two\r\n..\r\nend\r\n.\r\n";
        for limit in [1, 2, 3, 5, 7, 64 * 1024] {
            assert_eq!(encode(body, limit), want, "limit {limit}");
        }
    }

    #[test]
    fn terminator_and_missing_final_crlf() {
        assert_eq!(encode(b"", 100), b".\r\n");
        assert_eq!(encode(b"a\r\n", 100), b"a\r\n.\r\n");
        assert_eq!(encode(b"a", 100), b"a\r\n.\r\n");
        assert_eq!(encode(b".", 100), b"..\r\n.\r\n");
    }

    #[test]
    fn normalises_bare_cr_and_lf() {
        assert_eq!(encode(b"a\n.\nb\rc", 100), b"a\r\n..\r\nb\r\nc\r\n.\r\n");
        assert_eq!(encode(b"x\r\r\n.", 100), b"x\r\n\r\n..\r\n.\r\n");
        for limit in [1, 2, 3] {
            assert_eq!(encode(b"a\r\n.b\r", limit), b"a\r\n..b\r\n.\r\n");
        }
    }

    #[test]
    fn long_line_is_chunked() {
        let body = vec![b'x'; 300_000];
        let wire = encode(&body, 64 * 1024);
        assert_eq!(wire.len(), 300_000 + 5);
        assert!(wire.ends_with(b"x\r\n.\r\n"));
    }
}
