//! The audit's own SMTP/IMAP line client: sends exactly the bytes a probe
//! asks for (bare LF, odd addresses, commands before the banner) and keeps
//! every line sent and received as the finding's evidence.
//!
//! The stage client (palisade-smtp-client) normalises what it sends, which
//! is right for relaying and wrong for probing, so probes use this one. Every
//! read and connect is bounded by the audit's `--timeout`.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

use crate::model::Line;

/// A reply: the code and every line's text after the code.
#[derive(Clone, Debug, Default)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
    /// The enhanced status code (`5.7.1`) of the first line, if any.
    pub fn enhanced(&self) -> &str {
        let first = self.lines.first().map(String::as_str).unwrap_or("");
        let word = first.split_whitespace().next().unwrap_or("");
        if word.split('.').count() == 3 && word.chars().all(|c| c.is_ascii_digit() || c == '.') {
            word
        } else {
            ""
        }
    }
    /// `554 5.7.1 text` for the detail of a finding.
    pub fn summary(&self) -> String {
        format!(
            "{} {}",
            self.code,
            self.lines.first().cloned().unwrap_or_default()
        )
    }
    /// EHLO keyword present (`STARTTLS`, `AUTH`, `SIZE`...).
    pub fn has_keyword(&self, keyword: &str) -> bool {
        self.keyword(keyword).is_some()
    }
    /// The parameters of an EHLO keyword (`SIZE 10240000` -> `10240000`).
    pub fn keyword(&self, keyword: &str) -> Option<String> {
        self.lines.iter().skip(1).find_map(|l| {
            let mut words = l.split_whitespace();
            let k = words.next()?;
            k.eq_ignore_ascii_case(keyword)
                .then(|| words.collect::<Vec<_>>().join(" "))
        })
    }
}

/// Why a conversation stopped early.
#[derive(Debug)]
pub enum Stop {
    Timeout,
    Closed,
    Io(std::io::Error),
    Tls(String),
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Timeout => f.write_str("timed out"),
            Stop::Closed => f.write_str("connection closed by the server"),
            Stop::Io(e) => write!(f, "{e}"),
            Stop::Tls(e) => write!(f, "TLS: {e}"),
        }
    }
}

impl std::error::Error for Stop {}

impl From<std::io::Error> for Stop {
    fn from(e: std::io::Error) -> Stop {
        Stop::Io(e)
    }
}

type Result<T> = std::result::Result<T, Stop>;

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Only while upgrading.
    None,
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
            Stream::None => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
            Stream::None => Poll::Ready(Err(std::io::ErrorKind::NotConnected.into())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
            Stream::None => Poll::Ready(Ok(())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
            Stream::None => Poll::Ready(Ok(())),
        }
    }
}

/// Longest line kept verbatim in a transcript; a 25 MiB body is noted, not copied.
const KEEP: usize = 300;

/// One connection and its transcript.
pub struct Conn {
    stream: Stream,
    buf: Vec<u8>,
    timeout: Duration,
    pub transcript: Vec<Line>,
}

/// Where and how to connect.
#[derive(Clone, Copy, Debug)]
pub struct Dial {
    pub addr: SocketAddr,
    /// Local source address (`--source`): audit from an address the target
    /// does not trust, e.g. 127.0.0.50 on a loopback deployment.
    pub source: Option<IpAddr>,
    pub timeout: Duration,
}

impl Conn {
    /// Connects; the banner is not read (see [`Conn::banner`]) so early-talker
    /// probes can speak first.
    pub async fn connect(dial: Dial, transcript: Vec<Line>) -> Result<Conn> {
        let mut conn = Conn {
            stream: Stream::None,
            buf: Vec::new(),
            timeout: dial.timeout,
            transcript,
        };
        conn.note(format!(
            "connect {}{}",
            dial.addr,
            match dial.source {
                Some(s) => format!(" from {s}"),
                None => String::new(),
            }
        ));
        let socket = if dial.addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(source) = dial.source {
            socket.bind(SocketAddr::new(source, 0))?;
        }
        match tokio::time::timeout(dial.timeout, socket.connect(dial.addr)).await {
            Ok(Ok(s)) => conn.stream = Stream::Plain(s),
            Ok(Err(e)) => {
                conn.note(format!("connect failed: {e}"));
                return Err(Stop::Io(e));
            }
            Err(_) => {
                conn.note("connect timed out");
                return Err(Stop::Timeout);
            }
        }
        Ok(conn)
    }

    /// Connects with implicit TLS (port 465, IMAPS).
    pub async fn connect_tls(dial: Dial, transcript: Vec<Line>) -> Result<Conn> {
        let mut conn = Conn::connect(dial, transcript).await?;
        conn.handshake().await?;
        Ok(conn)
    }

    pub fn note(&mut self, text: impl Into<String>) {
        self.transcript.push(Line {
            dir: '*',
            text: text.into(),
        });
    }

    fn record(&mut self, dir: char, text: &str) {
        let text = if text.len() > KEEP {
            let mut cut = KEEP;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            format!("{}... ({} bytes)", &text[..cut], text.len())
        } else {
            text.to_string()
        };
        self.transcript.push(Line { dir, text });
    }

    pub fn into_transcript(self) -> Vec<Line> {
        self.transcript
    }

    /// Upgrades to TLS (after `220` to STARTTLS, or at once for implicit TLS).
    pub async fn handshake(&mut self) -> Result<()> {
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::None) else {
            return Err(Stop::Tls("already TLS".into()));
        };
        let ip = tcp.peer_addr()?.ip();
        let connector =
            tokio_rustls::TlsConnector::from(palisade_smtp_client::insecure_tls_config());
        let name = rustls::pki_types::ServerName::IpAddress(ip.into());
        match tokio::time::timeout(self.timeout, connector.connect(name, tcp)).await {
            Ok(Ok(tls)) => {
                let (_, session) = tls.get_ref();
                let version = session
                    .protocol_version()
                    .map(|v| format!("{v:?}"))
                    .unwrap_or_default();
                let suite = session
                    .negotiated_cipher_suite()
                    .map(|s| format!("{:?}", s.suite()))
                    .unwrap_or_default();
                self.note(format!("TLS established: {version} {suite}"));
                self.stream = Stream::Tls(Box::new(tls));
                self.buf.clear();
                Ok(())
            }
            Ok(Err(e)) => {
                self.note(format!("TLS handshake failed: {e}"));
                Err(Stop::Tls(e.to_string()))
            }
            Err(_) => {
                self.note("TLS handshake timed out");
                Err(Stop::Timeout)
            }
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// Sends raw bytes; `shown` is what the transcript says (one entry per line).
    pub async fn send_raw(&mut self, bytes: &[u8], shown: &str) -> Result<()> {
        for line in shown.lines() {
            self.record('C', line);
        }
        match tokio::time::timeout(self.timeout, self.stream.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.note(format!("write failed: {e}"));
                Err(Stop::Io(e))
            }
            Err(_) => {
                self.note("write timed out");
                Err(Stop::Timeout)
            }
        }
    }

    /// Sends one command line (CRLF added).
    pub async fn send_line(&mut self, line: &str) -> Result<()> {
        self.send_raw(format!("{line}\r\n").as_bytes(), line).await
    }

    /// Sends a command whose argument is a secret: the transcript shows `shown`.
    pub async fn send_secret(&mut self, line: &str, shown: &str) -> Result<()> {
        self.send_raw(format!("{line}\r\n").as_bytes(), shown).await
    }

    /// One line from the server without its CRLF.
    pub async fn read_line(&mut self) -> Result<String> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let raw: Vec<u8> = self.buf.drain(..=i).collect();
                let text = String::from_utf8_lossy(&raw);
                let text = text.trim_end_matches(['\r', '\n']).to_string();
                self.record('S', &text);
                return Ok(text);
            }
            self.fill().await?;
        }
    }

    /// Reads what the server sent next into the buffer.
    async fn fill(&mut self) -> Result<()> {
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout(self.timeout, self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) => {
                self.note("connection closed by the server");
                Err(Stop::Closed)
            }
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Ok(Err(e)) => {
                self.note(format!("read failed: {e}"));
                Err(Stop::Io(e))
            }
            Err(_) => {
                self.note(format!("no answer within {:?}", self.timeout));
                Err(Stop::Timeout)
            }
        }
    }

    /// Exactly `n` bytes from the server (an IMAP literal), recorded like a line.
    pub async fn read_bytes(&mut self, n: usize) -> Result<Vec<u8>> {
        while self.buf.len() < n {
            self.fill().await?;
        }
        let bytes: Vec<u8> = self.buf.drain(..n).collect();
        self.record('S', &String::from_utf8_lossy(&bytes));
        Ok(bytes)
    }

    /// A whole (multi-line) SMTP reply.
    pub async fn reply(&mut self) -> Result<Reply> {
        let mut reply = Reply::default();
        loop {
            let line = self.read_line().await?;
            let code = line
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .unwrap_or(0);
            reply.code = code;
            reply.lines.push(line.get(4..).unwrap_or("").to_string());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(reply);
            }
        }
    }

    pub async fn banner(&mut self) -> Result<Reply> {
        self.reply().await
    }

    /// Sends a command and reads its reply.
    pub async fn cmd(&mut self, line: &str) -> Result<Reply> {
        self.send_line(line).await?;
        self.reply().await
    }

    /// Waits a little for the server to close the connection (after 421/554).
    pub async fn closed_by_server(&mut self) -> bool {
        let mut byte = [0u8; 1];
        let wait = self.timeout.min(Duration::from_secs(3));
        match tokio::time::timeout(wait, self.stream.read(&mut byte)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                self.note("connection closed by the server");
                true
            }
            _ => false,
        }
    }

    /// QUIT, without caring about the answer; the transcript notes it.
    pub async fn quit(mut self) -> Vec<Line> {
        if self.send_line("QUIT").await.is_ok() {
            let _ = self.reply().await;
        }
        self.transcript
    }
}

/// Shortens a long run of similar lines (1000 RCPTs, 60 connections) in a
/// transcript: from `start`, keeps `head` lines, a note of how many were
/// left out, and the last `tail` lines.
pub fn elide(transcript: &mut Vec<Line>, start: usize, head: usize, tail: usize) {
    let len = transcript.len();
    if len <= start + head + tail + 1 {
        return;
    }
    let cut = (start + head)..(len - tail);
    let n = cut.len();
    transcript.splice(
        cut,
        [Line {
            dir: '*',
            text: format!("... {n} lines left out"),
        }],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, lines: &[&str]) -> Reply {
        Reply {
            code,
            lines: lines.iter().map(|l| l.to_string()).collect(),
        }
    }

    #[test]
    fn enhanced_code_and_ehlo_keywords() {
        let r = reply(554, &["5.7.1 <x@y>: Relay access denied"]);
        assert_eq!(r.enhanced(), "5.7.1");
        assert_eq!(reply(250, &["Ok"]).enhanced(), "");
        let ehlo = reply(
            250,
            &["mail.test", "SIZE 10240000", "STARTTLS", "AUTH PLAIN LOGIN"],
        );
        assert_eq!(ehlo.keyword("size").as_deref(), Some("10240000"));
        assert!(ehlo.has_keyword("STARTTLS"));
        assert_eq!(ehlo.keyword("AUTH").as_deref(), Some("PLAIN LOGIN"));
        // The greeting line is not a keyword.
        assert!(!ehlo.has_keyword("mail.test"));
    }

    #[test]
    fn elide_keeps_head_and_tail_and_counts_the_rest() {
        let mut t: Vec<Line> = (0..100)
            .map(|i| Line {
                dir: 'C',
                text: format!("RCPT {i}"),
            })
            .collect();
        elide(&mut t, 2, 3, 2);
        assert_eq!(t.len(), 2 + 3 + 1 + 2);
        assert_eq!(t[4].text, "RCPT 4");
        assert_eq!(t[5].text, "... 93 lines left out");
        assert_eq!(t[7].text, "RCPT 99");
    }

    #[tokio::test]
    async fn transcript_records_both_sides_and_bounds_reads() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"220-first\r\n220 ready\r\n").await.unwrap();
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"EHLO probe.test\r\n");
            // Then silence: the client must give up after its timeout.
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let dial = Dial {
            addr,
            source: None,
            timeout: Duration::from_millis(300),
        };
        let mut c = Conn::connect(dial, Vec::new()).await.unwrap();
        let banner = c.banner().await.unwrap();
        assert_eq!((banner.code, banner.lines.len()), (220, 2));
        assert!(matches!(c.cmd("EHLO probe.test").await, Err(Stop::Timeout)));
        let dirs: String = c.transcript.iter().map(|l| l.dir).collect();
        assert_eq!(dirs, "*SSC*");
    }
}
