//! Message content receivers: [`DataReceiver`] for DATA (RFC 5321 §4.1.1.4)
//! and [`BdatReceiver`] for BDAT chunks (RFC 3030).
//!
//! # Security
//! This is the one place that decides where a message ends. Only
//! `CRLF . CRLF` ends DATA; every other spelling (`LF . LF`, `CR . CR`,
//! `LF . CRLF`, `CRLF . LF`, ...) is content, and a bare CR or LF anywhere in
//! the content makes the whole message refused with `550 5.5.2` (SMTP
//! smuggling, SPEC §5). The receiver keeps consuming until the real end, so
//! nothing after a fake terminator is ever read as a command.
//!
//! # Policy (documented choices)
//! | problem | reply |
//! |---|---|
//! | bare CR or bare LF | `550 5.5.2` |
//! | NUL octet | `550 5.6.0` (RFC 3463: other or undefined media error) |
//! | line over 1000 octets incl. CRLF | `500 5.5.2` (RFC 5321 §4.5.3.1.6 "500 Line too long") |
//! | content over the size limit | `552 5.3.4` (RFC 1870) |
//!
//! The first problem found decides the reply. After a problem the receiver
//! stops storing content (memory stays bounded) but keeps scanning for the
//! end so the session stays in sync.

use crate::reply::Reply;

/// Longest text line, without its CRLF (RFC 5321 §4.5.3.1.6: 1000 with it).
pub const MAX_LINE: usize = 998;

/// Why a message was refused at end of data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataError {
    /// A CR not followed by LF, or an LF not preceded by CR.
    BareLineEnding,
    /// A NUL octet in the content.
    Nul,
    /// A line longer than 1000 octets including CRLF.
    LineTooLong,
    /// More content than the configured maximum size.
    TooBig,
}

impl DataError {
    /// The final reply to DATA / BDAT for this problem (table in the module doc).
    pub fn reply(self) -> Reply {
        match self {
            DataError::BareLineEnding => Reply::bare_line_ending(),
            DataError::Nul => Reply::enhanced(
                550,
                (5, 6, 0),
                "Message refused: NUL octet in message content",
            ),
            DataError::LineTooLong => Reply::enhanced(500, (5, 5, 2), "Line too long"),
            DataError::TooBig => Reply::message_too_big(),
        }
    }

    /// Short kebab name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DataError::BareLineEnding => "bare-line-ending",
            DataError::Nul => "nul-octet",
            DataError::LineTooLong => "line-too-long",
            DataError::TooBig => "too-big",
        }
    }
}

/// Result of one [`DataReceiver::feed`] / [`BdatReceiver::feed`] call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// All input consumed; the message has not ended yet.
    NeedMore,
    /// The message ended; `Ok` means it may be delivered.
    Done(Result<(), DataError>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// After CRLF (or right after the DATA command).
    LineStart,
    /// `.` at the start of a line.
    Dot,
    /// `.` CR at the start of a line.
    DotCr,
    /// Inside a line.
    Text,
    /// A CR inside or at the end of a line.
    Cr,
}

/// Receives DATA content: dot-unstuffs, finds `CRLF.CRLF`, applies the
/// smuggling, NUL, line-length and size policy.
#[derive(Debug)]
pub struct DataReceiver {
    state: State,
    line_len: usize,
    size: u64,
    max_size: u64,
    error: Option<DataError>,
}

impl DataReceiver {
    /// A receiver for one message of at most `max_size` octets (content,
    /// after unstuffing, with its CRLFs).
    pub fn new(max_size: u64) -> Self {
        DataReceiver {
            state: State::LineStart,
            line_len: 0,
            size: 0,
            max_size,
            error: None,
        }
    }

    /// Octets of content seen so far (including refused/discarded ones).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Consumes bytes from `input` (any chunking), appending unstuffed
    /// content to `out`. Returns how many bytes were consumed: all of them
    /// unless the end of data was found, in which case the bytes after the
    /// terminator are left for the command reader.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, Progress) {
        let mut i = 0;
        while i < input.len() {
            if self.state == State::Text {
                // Fast path: copy a run of ordinary octets in one go.
                let rest = &input[i..];
                let n = rest
                    .iter()
                    .position(|&b| b == b'\r' || b == b'\n' || b == 0)
                    .unwrap_or(rest.len());
                if n > 0 {
                    self.emit(out, &rest[..n]);
                    i += n;
                    continue;
                }
            }
            let b = input[i];
            i += 1;
            if self.step(b, out) {
                return (i, Progress::Done(self.error.map_or(Ok(()), Err)));
            }
        }
        (i, Progress::NeedMore)
    }

    /// One octet through the state machine; true at the end of data.
    fn step(&mut self, b: u8, out: &mut Vec<u8>) -> bool {
        match self.state {
            State::LineStart if b == b'.' => self.state = State::Dot,
            State::LineStart => self.text(b, out),
            State::Dot if b == b'\r' => self.state = State::DotCr,
            // RFC 5321 §4.5.2: the leading dot of a stuffed line is removed.
            State::Dot => self.text(b, out),
            State::DotCr if b == b'\n' => return true,
            State::DotCr => {
                // SECURITY: `.CR` without LF is not an end marker.
                self.fail(DataError::BareLineEnding);
                self.emit(out, b"\r");
                self.text(b, out);
            }
            State::Text => self.text(b, out),
            State::Cr if b == b'\n' => {
                self.size += 2;
                self.store(out, b"\r\n");
                self.line_len = 0;
                self.state = State::LineStart;
            }
            State::Cr => {
                // SECURITY: bare CR (smuggling, RFC 5321 §2.3.8).
                self.fail(DataError::BareLineEnding);
                self.emit(out, b"\r");
                self.text(b, out);
            }
        }
        false
    }

    fn text(&mut self, b: u8, out: &mut Vec<u8>) {
        self.state = State::Text;
        match b {
            b'\r' => self.state = State::Cr,
            b'\n' => {
                // SECURITY: bare LF never ends a line, so `LF.LF` and
                // `LF.CRLF` can never end the data.
                self.fail(DataError::BareLineEnding);
                self.emit(out, b"\n");
            }
            0 => {
                self.fail(DataError::Nul);
                self.emit(out, b"\0");
            }
            _ => self.emit(out, &[b]),
        }
    }

    fn emit(&mut self, out: &mut Vec<u8>, bytes: &[u8]) {
        self.line_len += bytes.len();
        self.size += bytes.len() as u64;
        if self.line_len > MAX_LINE {
            self.fail(DataError::LineTooLong);
        }
        self.store(out, bytes);
    }

    fn store(&mut self, out: &mut Vec<u8>, bytes: &[u8]) {
        if self.size > self.max_size {
            self.fail(DataError::TooBig);
        }
        if self.error.is_none() {
            out.extend_from_slice(bytes);
        }
    }

    fn fail(&mut self, e: DataError) {
        self.error.get_or_insert(e);
    }
}

/// Receives one BDAT chunk of an exact size (RFC 3030): no dot-stuffing, no
/// end marker, only the size limit over the whole message.
#[derive(Debug)]
pub struct BdatReceiver {
    remaining: u64,
    total: u64,
    max_size: u64,
}

impl BdatReceiver {
    /// A receiver for a chunk of `chunk_size` octets, when the message
    /// already holds `already` octets and may hold at most `max_size`.
    pub fn new(chunk_size: u64, already: u64, max_size: u64) -> Self {
        BdatReceiver {
            remaining: chunk_size,
            total: already.saturating_add(chunk_size),
            max_size,
        }
    }

    /// True when the chunk will push the message over the limit; its bytes
    /// are then consumed but not stored.
    pub fn over_limit(&self) -> bool {
        self.total > self.max_size
    }

    /// Consumes up to the rest of the chunk from `input`, appending it to
    /// `out` unless the chunk is over the limit.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, Progress) {
        let n = usize::try_from(self.remaining).map_or(input.len(), |r| r.min(input.len()));
        if !self.over_limit() {
            out.extend_from_slice(&input[..n]);
        }
        self.remaining -= n as u64;
        if self.remaining > 0 {
            return (n, Progress::NeedMore);
        }
        let result = if self.over_limit() {
            Err(DataError::TooBig)
        } else {
            Ok(())
        };
        (n, Progress::Done(result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in chunks of `chunk` bytes; returns (consumed, result, content).
    fn run(
        input: &[u8],
        chunk: usize,
        max: u64,
    ) -> (usize, Option<Result<(), DataError>>, Vec<u8>) {
        let mut rx = DataReceiver::new(max);
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < input.len() {
            let end = pos.saturating_add(chunk).min(input.len());
            let (n, p) = rx.feed(&input[pos..end], &mut out);
            pos += n;
            if let Progress::Done(r) = p {
                return (pos, Some(r), out);
            }
            assert_eq!(pos, end, "NeedMore must consume everything");
        }
        (pos, None, out)
    }

    const CHUNKS: &[usize] = &[1, 2, 3, 5, 7, 64, usize::MAX];

    #[test]
    fn clean_messages_unstuff_and_end_at_crlf_dot_crlf() {
        let cases: &[(&[u8], &[u8])] = &[
            (b".\r\n", b""),
            (b"a\r\n.\r\n", b"a\r\n"),
            (
                b"Subject: x\r\n\r\nbody\r\n.\r\n",
                b"Subject: x\r\n\r\nbody\r\n",
            ),
            (b"..leading dot\r\n.\r\n", b".leading dot\r\n"),
            (b"...\r\n.\r\n", b"..\r\n"),
            (b".x\r\n.\r\n", b"x\r\n"),
            (b"a.\r\n.b\r\n.\r\n", b"a.\r\nb\r\n"),
            (b"\r\n\r\n.\r\n", b"\r\n\r\n"),
            (b"tab\there\r\n.\r\n", b"tab\there\r\n"),
            (b"\xc3\xa9t\xc3\xa9\r\n.\r\n", b"\xc3\xa9t\xc3\xa9\r\n"),
        ];
        for (input, want) in cases {
            let mut wire = input.to_vec();
            wire.extend_from_slice(b"QUIT\r\n");
            for &c in CHUNKS {
                let (n, r, out) = run(&wire, c, 1 << 20);
                assert_eq!(
                    r,
                    Some(Ok(())),
                    "{:?} chunk {c}",
                    String::from_utf8_lossy(input)
                );
                assert_eq!(
                    n,
                    input.len(),
                    "{:?} chunk {c}",
                    String::from_utf8_lossy(input)
                );
                assert_eq!(&out, want, "{:?} chunk {c}", String::from_utf8_lossy(input));
            }
        }
    }

    /// SMTP smuggling payloads (after Stalwart's receiver tests and the
    /// SEC Consult 2023 write-up). Each contains a fake end marker followed
    /// by a smuggled transaction, then the real end. The receiver must
    /// consume up to the real end and refuse the message.
    #[test]
    fn smuggling_payloads_never_end_early_and_are_refused() {
        let fakes: &[&[u8]] = &[
            b"\n.\n",
            b"\r.\r",
            b"\n.\r\n",
            b"\r\n.\n",
            b"\r.\r\n",
            b"\r\n.\r",
            b"\n.\r",
            b"\r.\n",
            b"\n..\n",
            b"\r\n.\r\r\n",
            b"\r\n.\n\r\n",
            b"\r\n\r.\r\n",
            b"\r\n\n.\r\n",
            b"\r\n.\r\x00\n",
        ];
        for fake in fakes {
            let mut payload = b"Subject: hi\r\n\r\nbody".to_vec();
            payload.extend_from_slice(fake);
            payload.extend_from_slice(
                b"MAIL FROM:<evil@x.example>\r\nRCPT TO:<v@y.example>\r\nDATA\r\nsmuggled\r\n",
            );
            let real_end = payload.len() + 5;
            payload.extend_from_slice(b"\r\n.\r\n");
            payload.extend_from_slice(b"QUIT\r\n");
            for &c in CHUNKS {
                let shown = String::from_utf8_lossy(fake);
                let (n, r, _) = run(&payload, c, 1 << 20);
                assert_eq!(n, real_end, "{shown:?} chunk {c}: consumed");
                let err = r
                    .unwrap_or_else(|| panic!("{shown:?}: no end"))
                    .unwrap_err();
                assert!(
                    matches!(err, DataError::BareLineEnding | DataError::Nul),
                    "{shown:?}: {err:?}"
                );
            }
        }
    }

    #[test]
    fn bare_line_endings_and_nul_get_their_replies() {
        let cases: &[(&[u8], DataError, u16, &str)] = &[
            (b"a\nb\r\n.\r\n", DataError::BareLineEnding, 550, "5.5.2"),
            (b"a\rb\r\n.\r\n", DataError::BareLineEnding, 550, "5.5.2"),
            (b"a\r\r\n.\r\n", DataError::BareLineEnding, 550, "5.5.2"),
            (b"\n.\r\n.\r\n", DataError::BareLineEnding, 550, "5.5.2"),
            (b"a\0b\r\n.\r\n", DataError::Nul, 550, "5.6.0"),
        ];
        for (input, err, code, enh) in cases {
            for &c in CHUNKS {
                let (n, r, _) = run(input, c, 1 << 20);
                assert_eq!(n, input.len());
                assert_eq!(r, Some(Err(*err)));
                let reply = err.reply();
                assert_eq!(
                    (reply.code, reply.enhanced.unwrap().to_string()),
                    (*code, enh.to_string())
                );
            }
        }
    }

    #[test]
    fn long_lines_are_refused_but_consumed() {
        for (len, ok) in [(998, true), (999, false), (5000, false)] {
            let mut input = vec![b'x'; len];
            input.extend_from_slice(b"\r\n.\r\nNOOP\r\n");
            let (n, r, _) = run(&input, 100, 1 << 20);
            assert_eq!(n, len + 5);
            assert_eq!(
                r,
                Some(if ok {
                    Ok(())
                } else {
                    Err(DataError::LineTooLong)
                }),
                "{len}"
            );
        }
        // A stuffed 998-octet line is 999 on the wire and still fine.
        let mut input = vec![b'.'; 999];
        input.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(run(&input, 7, 1 << 20).1, Some(Ok(())));
    }

    #[test]
    fn size_limit_keeps_consuming_and_stops_storing() {
        let mut input = Vec::new();
        for _ in 0..100 {
            input.extend_from_slice(b"0123456789012345678\r\n");
        }
        input.extend_from_slice(b".\r\nQUIT\r\n");
        let (n, r, out) = run(&input, 33, 2100);
        assert_eq!((n, r), (input.len() - 6, Some(Ok(()))));
        assert_eq!(out.len(), 2100);
        let (n, r, out) = run(&input, 33, 2099);
        assert_eq!((n, r), (input.len() - 6, Some(Err(DataError::TooBig))));
        assert!(out.len() <= 2099);
        assert_eq!(DataError::TooBig.reply().code, 552);
    }

    #[test]
    fn bdat_takes_exact_counts_across_chunks() {
        let input = b"hello worldBDAT 0 LAST\r\n";
        for &c in CHUNKS {
            let mut rx = BdatReceiver::new(11, 0, 100);
            let mut out = Vec::new();
            let mut pos: usize = 0;
            let result = loop {
                let end = pos.saturating_add(c).min(input.len());
                let (n, p) = rx.feed(&input[pos..end], &mut out);
                pos += n;
                if let Progress::Done(r) = p {
                    break r;
                }
            };
            assert_eq!((pos, result), (11, Ok(())));
            assert_eq!(out, b"hello world");
        }
        let mut rx = BdatReceiver::new(11, 95, 100);
        let mut out = Vec::new();
        assert_eq!(
            rx.feed(input, &mut out),
            (11, Progress::Done(Err(DataError::TooBig)))
        );
        assert!(out.is_empty());
        let mut rx = BdatReceiver::new(0, 0, 100);
        assert_eq!(rx.feed(b"", &mut out), (0, Progress::Done(Ok(()))));
    }
}
