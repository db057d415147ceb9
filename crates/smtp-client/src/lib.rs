//! Outbound SMTP client: every stage forwards mail to its next hop with it.
//!
//! One [`Connection`] carries any number of transactions ([`Connection::send`]).
//! PIPELINING is used when offered (MAIL, all RCPTs and DATA in one write),
//! STARTTLS according to [`TlsMode`], and the body is dot-stuffed while it is
//! copied into the connection's own write buffer (one copy, one write for
//! small messages, terminator included).
//!
//! Replies from the server are bounded (line length, line count) and every
//! phase has a deadline. After any [`ClientError`] during a transaction, or a
//! 421 reply, the connection is marked unusable ([`Connection::is_usable`]):
//! later calls fail fast instead of talking to a desynchronised peer.

mod dot;
mod ext;
mod tls;

use std::fmt;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use palisade_smtp_proto::{EnhancedStatus, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

pub use ext::Extensions;
pub use tls::{dane_tls_config, insecure_tls_config, verifying_tls_config, Tlsa, DANE_NO_MATCH};

/// Longest reply line accepted, CRLF excluded.
const MAX_LINE: usize = 4096;
/// Most lines in one (multi-line) reply.
const MAX_LINES: usize = 100;
/// Read buffer bounds; a reply must fit the maximum.
const RBUF_INITIAL: usize = 8 * 1024;
const RBUF_MAX: usize = (MAX_LINE + 2) * MAX_LINES + RBUF_INITIAL;
/// The body is written in pieces of about this size.
const WRITE_CHUNK: usize = 64 * 1024;
/// Upper bound for waiting on the QUIT reply.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);

/// When to use STARTTLS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsMode {
    /// Never.
    None,
    /// When the server offers it; plaintext otherwise (also when the server
    /// refuses the STARTTLS command). A failed handshake is an error.
    #[default]
    Opportunistic,
    /// Always; [`ClientError::TlsRequired`] when not offered.
    Required,
}

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Our name in EHLO/HELO.
    pub helo_name: String,
    pub tls_mode: TlsMode,
    /// TLS parameters; [`insecure_tls_config`] when None.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// SNI and certificate name; the server's IP address when None.
    pub server_name: Option<String>,
    /// TCP connect.
    pub connect_timeout: Duration,
    /// Each reply to a command (greeting, EHLO, STARTTLS and TLS handshake,
    /// MAIL, RCPT, DATA, RSET, NOOP) and each command write.
    pub command_timeout: Duration,
    /// Each body write and the reply after the end of data.
    pub data_timeout: Duration,
}

impl ClientConfig {
    /// Opportunistic TLS, connect 30 s, commands 300 s, data 600 s
    /// (RFC 5321 §4.5.3.2 suggests at least 5 and 10 minutes).
    pub fn new(helo_name: impl Into<String>) -> Self {
        ClientConfig {
            helo_name: helo_name.into(),
            tls_mode: TlsMode::Opportunistic,
            tls: None,
            server_name: None,
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
        }
    }
}

/// One mail transaction.
#[derive(Clone, Copy, Debug)]
pub struct Transaction<'a> {
    /// Reverse path without angle brackets; "" is the null sender.
    pub mail_from: &'a str,
    /// Raw ESMTP MAIL parameters, each sent only when the server advertises
    /// the matching extension (RET/ENVID: DSN, BODY=8BITMIME: 8BITMIME,
    /// SMTPUTF8: SMTPUTF8, others: an EHLO keyword of the same name). SIZE is
    /// always computed by the client.
    pub mail_params: &'a str,
    /// Sent as ` XORIGIN=<token>` only when the server advertised XORIGIN.
    pub origin: Option<&'a str>,
    /// (address, raw RCPT parameters); NOTIFY/ORCPT only when DSN is offered.
    pub rcpts: &'a [(&'a str, &'a str)],
    /// CRLF lines, not dot-stuffed.
    pub body: &'a [u8],
}

/// Replies of one transaction. Locally generated refusals (SIZE, SMTPUTF8,
/// invalid addresses) look like server replies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxResult {
    pub mail: Reply,
    /// One per recipient of the transaction, in order.
    pub rcpts: Vec<Reply>,
    /// The reply after the end of data, or the refusal of DATA itself; None
    /// when MAIL failed or no recipient was accepted.
    pub data: Option<Reply>,
}

static NO_OUTCOME: Reply = Reply {
    code: 451,
    enhanced: Some(EnhancedStatus::new(4, 3, 0)),
    text: String::new(),
};

impl TxResult {
    /// The reply that decides recipient `i`: its RCPT reply if negative,
    /// else the MAIL reply if negative, else the DATA reply. When MAIL failed
    /// every RCPT reply is a copy of the MAIL reply (a pipelining server's
    /// "503 need MAIL" answers are dropped). Panics when `i` is out of range.
    pub fn rcpt_outcome(&self, i: usize) -> &Reply {
        let rcpt = &self.rcpts[i];
        if !rcpt.is_positive() {
            rcpt
        } else if !self.mail.is_positive() {
            &self.mail
        } else {
            self.data.as_ref().unwrap_or(&NO_OUTCOME)
        }
    }

    /// Number of recipients whose outcome is positive.
    pub fn accepted(&self) -> usize {
        (0..self.rcpts.len())
            .filter(|&i| self.rcpt_outcome(i).is_positive())
            .count()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect failed: {0}")]
    Connect(io::Error),
    #[error("timeout during {0}")]
    Timeout(&'static str),
    #[error("I/O error: {0}")]
    Io(io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("greeting refused: {0}")]
    Greeting(Reply),
    #[error("EHLO/HELO refused: {0}")]
    Ehlo(Reply),
    #[error("TLS required but STARTTLS not offered")]
    TlsRequired,
}

impl ClientError {
    /// False only when the server answered with a 5xx.
    pub fn is_temporary(&self) -> bool {
        match self {
            ClientError::Greeting(r) | ClientError::Ehlo(r) => !r.is_permanent(),
            _ => true,
        }
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Closed,
}

impl Stream {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
            Stream::Closed => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(data).await,
            Stream::Tls(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
            Stream::Closed => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    async fn shutdown(&mut self) {
        let _ = match self {
            Stream::Plain(s) => s.shutdown().await,
            Stream::Tls(s) => s.shutdown().await,
            Stream::Closed => Ok(()),
        };
    }
}

/// An SMTP session with one server, ready for transactions.
pub struct Connection {
    stream: Stream,
    /// Received bytes not yet consumed live in `rbuf[rstart..rend]`.
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    /// Progress of the reply being scanned, relative to `rstart`.
    scan_pos: usize,
    scan_lines: usize,
    wbuf: Vec<u8>,
    /// Holds the commands while `wbuf` carries the body (lock-step mode).
    spare: Vec<u8>,
    ext: Extensions,
    greeting: Reply,
    remote: SocketAddr,
    is_tls: bool,
    usable: bool,
    command_timeout: Duration,
    data_timeout: Duration,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("remote", &self.remote)
            .field("tls", &self.is_tls)
            .field("usable", &self.usable)
            .field("extensions", &self.ext)
            .finish()
    }
}

async fn timed<T>(
    phase: &'static str,
    deadline: Instant,
    fut: impl std::future::Future<Output = io::Result<T>>,
) -> Result<T, ClientError> {
    match tokio::time::timeout_at(deadline, fut).await {
        Ok(r) => r.map_err(ClientError::Io),
        Err(_) => Err(ClientError::Timeout(phase)),
    }
}

fn local(code: u16, status: (u8, u16, u16), text: &str) -> Reply {
    Reply::enhanced(code, status, text)
}

/// Addresses and the origin token go into command lines verbatim: refuse
/// anything that could break the line or the angle brackets.
fn bad_envelope_chars(s: &str) -> bool {
    s.bytes()
        .any(|b| b < 0x20 || b == 0x7f || b == b'<' || b == b'>')
}

fn strip_brackets(addr: &str) -> &str {
    addr.strip_prefix('<')
        .and_then(|a| a.strip_suffix('>'))
        .unwrap_or(addr)
}

impl Connection {
    /// Connects, reads the greeting, sends EHLO (HELO when EHLO gets a 5xx),
    /// then STARTTLS per `config.tls_mode` and EHLO again.
    pub async fn connect(
        addr: SocketAddr,
        config: &ClientConfig,
    ) -> Result<Connection, ClientError> {
        let deadline = Instant::now() + config.connect_timeout;
        let tcp = match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(ClientError::Connect(e)),
            Err(_) => return Err(ClientError::Timeout("connect")),
        };
        let _ = tcp.set_nodelay(true);
        let mut conn = Connection {
            stream: Stream::Plain(tcp),
            rbuf: vec![0; RBUF_INITIAL],
            rstart: 0,
            rend: 0,
            scan_pos: 0,
            scan_lines: 0,
            wbuf: Vec::with_capacity(4096),
            spare: Vec::new(),
            ext: Extensions::default(),
            greeting: Reply::new(220, None, ""),
            remote: addr,
            is_tls: false,
            usable: true,
            command_timeout: config.command_timeout,
            data_timeout: config.data_timeout,
        };
        let greeting = conn.read_reply("greeting", config.command_timeout).await?;
        if !greeting.is_positive() {
            conn.quit().await;
            return Err(ClientError::Greeting(greeting));
        }
        conn.greeting = greeting;
        conn.hello(config, true).await?;
        if config.tls_mode == TlsMode::None {
            return Ok(conn);
        }
        if !conn.ext.starttls {
            if config.tls_mode == TlsMode::Required {
                conn.quit().await;
                return Err(ClientError::TlsRequired);
            }
            return Ok(conn);
        }
        let reply = conn.command("STARTTLS", b"STARTTLS\r\n").await?;
        if reply.code != 220 {
            if config.tls_mode == TlsMode::Required || reply.code == 421 {
                conn.quit().await;
                return Err(ClientError::Tls(format!("STARTTLS refused: {reply}")));
            }
            tracing::debug!(remote = %addr, %reply, "STARTTLS refused, continuing in plaintext");
            return Ok(conn);
        }
        conn.start_tls(config).await?;
        conn.hello(config, false).await?;
        Ok(conn)
    }

    async fn hello(&mut self, config: &ClientConfig, allow_helo: bool) -> Result<(), ClientError> {
        self.wbuf.clear();
        self.wbuf.extend_from_slice(b"EHLO ");
        self.wbuf.extend_from_slice(config.helo_name.as_bytes());
        self.wbuf.extend_from_slice(b"\r\n");
        self.flush_wbuf("EHLO", self.command_timeout).await?;
        let reply = self.read_reply("EHLO", self.command_timeout).await?;
        if reply.is_positive() {
            self.ext = Extensions::parse(&reply);
            return Ok(());
        }
        if !(allow_helo && reply.is_permanent()) {
            return Err(ClientError::Ehlo(reply));
        }
        self.wbuf.extend_from_slice(b"HELO ");
        self.wbuf.extend_from_slice(config.helo_name.as_bytes());
        self.wbuf.extend_from_slice(b"\r\n");
        self.flush_wbuf("HELO", self.command_timeout).await?;
        let reply = self.read_reply("HELO", self.command_timeout).await?;
        if !reply.is_positive() {
            return Err(ClientError::Ehlo(reply));
        }
        self.ext = Extensions::default();
        Ok(())
    }

    async fn start_tls(&mut self, config: &ClientConfig) -> Result<(), ClientError> {
        if self.rstart != self.rend {
            // Plaintext injected after the 220 would otherwise be read as
            // if it came over TLS (CVE-2011-0411 class).
            return Err(ClientError::Protocol(
                "server sent data after its STARTTLS reply".into(),
            ));
        }
        let name = match &config.server_name {
            Some(n) => rustls::pki_types::ServerName::try_from(n.clone())
                .map_err(|e| ClientError::Tls(format!("invalid server name {n:?}: {e}")))?,
            None => rustls::pki_types::ServerName::IpAddress(self.remote.ip().into()),
        };
        let tls_config = config.tls.clone().unwrap_or_else(insecure_tls_config);
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Closed) else {
            return Err(ClientError::Protocol("STARTTLS on a TLS connection".into()));
        };
        let connector = tokio_rustls::TlsConnector::from(tls_config);
        let deadline = Instant::now() + self.command_timeout;
        let tls = match tokio::time::timeout_at(deadline, connector.connect(name, tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(ClientError::Tls(e.to_string())),
            Err(_) => return Err(ClientError::Timeout("TLS handshake")),
        };
        self.stream = Stream::Tls(Box::new(tls));
        self.is_tls = true;
        self.ext = Extensions::default();
        Ok(())
    }

    /// What the server advertised in its (last) EHLO reply.
    pub fn extensions(&self) -> &Extensions {
        &self.ext
    }

    /// The server's greeting (220) reply.
    pub fn greeting(&self) -> &Reply {
        &self.greeting
    }

    pub fn is_tls(&self) -> bool {
        self.is_tls
    }

    pub fn remote(&self) -> SocketAddr {
        self.remote
    }

    /// False after an error or a 421: the connection must be dropped.
    pub fn is_usable(&self) -> bool {
        self.usable
    }

    fn check_usable(&self) -> Result<(), ClientError> {
        if self.usable {
            Ok(())
        } else {
            Err(ClientError::Protocol(
                "connection unusable after an earlier error".into(),
            ))
        }
    }

    /// One mail transaction; may be called repeatedly on one connection.
    pub async fn send(&mut self, tx: &Transaction<'_>) -> Result<TxResult, ClientError> {
        self.check_usable()?;
        let r = match self.check_idle_input().await {
            Ok(()) => self.send_inner(tx).await,
            Err(e) => Err(e),
        };
        if r.is_err() {
            self.usable = false;
        }
        r
    }

    /// RSET; an error when the reply is not positive.
    pub async fn rset(&mut self) -> Result<(), ClientError> {
        self.simple("RSET", b"RSET\r\n").await
    }

    /// NOOP, to check a pooled idle connection is alive.
    pub async fn noop(&mut self) -> Result<(), ClientError> {
        self.simple("NOOP", b"NOOP\r\n").await
    }

    /// AUTH PLAIN (RFC 4954) as `user`: the server's reply (235 on
    /// success). For submission probes (`palisade probe`, flow 4); only
    /// sensible on a TLS connection.
    pub async fn auth_plain(&mut self, user: &str, password: &str) -> Result<Reply, ClientError> {
        use base64::Engine as _;
        self.check_usable()?;
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        let reply = self
            .command("AUTH", format!("AUTH PLAIN {token}\r\n").as_bytes())
            .await;
        if reply.is_err() {
            self.usable = false;
        }
        reply
    }

    /// QUIT (waiting at most 5 s for the reply) and close.
    pub async fn quit(mut self) {
        if self.usable {
            self.wbuf.clear();
            self.wbuf.extend_from_slice(b"QUIT\r\n");
            let t = self.command_timeout.min(QUIT_TIMEOUT);
            if self.flush_wbuf("QUIT", t).await.is_ok() {
                let _ = self.read_reply("QUIT", t).await;
            }
        }
        let _ = tokio::time::timeout(QUIT_TIMEOUT, self.stream.shutdown()).await;
    }

    /// Before a transaction on a connection that may have sat idle in a
    /// pool: a server that closed it or sent something unasked (typically
    /// `421 idle timeout`) makes this an I/O error, so the caller reconnects
    /// instead of reading that 421 as the MAIL reply. One non-blocking read.
    async fn check_idle_input(&mut self) -> Result<(), ClientError> {
        if self.rstart == self.rend {
            self.rstart = 0;
            self.rend = 0;
            self.scan_pos = 0;
            self.scan_lines = 0;
            let pending =
                tokio::time::timeout(Duration::ZERO, self.stream.read(&mut self.rbuf[..])).await;
            match pending {
                Err(_) => return Ok(()),
                Ok(Ok(0)) => {
                    return Err(ClientError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed by server while idle",
                    )))
                }
                Ok(Ok(n)) => self.rend = n,
                Ok(Err(e)) => return Err(ClientError::Io(e)),
            }
        }
        let pending = &self.rbuf[self.rstart..self.rend];
        let first = pending.split(|&b| b == b'\n').next().unwrap_or_default();
        let first = String::from_utf8_lossy(&first[..first.len().min(200)]);
        Err(ClientError::Io(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            format!("server sent data while idle: {}", first.trim_end()),
        )))
    }

    async fn simple(&mut self, phase: &'static str, line: &[u8]) -> Result<(), ClientError> {
        self.check_usable()?;
        let r = match self.command(phase, line).await {
            Ok(reply) if reply.is_positive() => Ok(()),
            Ok(reply) => Err(ClientError::Protocol(format!("{phase} refused: {reply}"))),
            Err(e) => Err(e),
        };
        if r.is_err() {
            self.usable = false;
        }
        r
    }

    async fn command(&mut self, phase: &'static str, line: &[u8]) -> Result<Reply, ClientError> {
        self.wbuf.clear();
        self.wbuf.extend_from_slice(line);
        self.flush_wbuf(phase, self.command_timeout).await?;
        self.read_reply(phase, self.command_timeout).await
    }

    async fn send_inner(&mut self, tx: &Transaction<'_>) -> Result<TxResult, ClientError> {
        let n = tx.rcpts.len();
        let refuse_all = |reply: Reply| TxResult {
            rcpts: vec![reply.clone(); n],
            mail: reply,
            data: None,
        };
        if n == 0 {
            return Ok(refuse_all(local(
                554,
                (5, 5, 1),
                "no recipients in transaction",
            )));
        }
        if let Some(limit) = self.ext.size {
            if limit > 0 && tx.body.len() as u64 > limit {
                return Ok(refuse_all(local(
                    552,
                    (5, 3, 4),
                    &format!(
                        "message size {} exceeds server limit {limit}",
                        tx.body.len()
                    ),
                )));
            }
        }
        let mail_from = strip_brackets(tx.mail_from);
        if bad_envelope_chars(mail_from) {
            return Ok(refuse_all(local(553, (5, 1, 7), "invalid sender address")));
        }
        if tx.mail_params.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Ok(refuse_all(local(501, (5, 5, 4), "invalid MAIL parameters")));
        }
        let sender_utf8 = !mail_from.is_ascii();
        if sender_utf8 && !self.ext.smtputf8 {
            return Ok(refuse_all(local(
                553,
                (5, 6, 7),
                "non-ASCII sender address and SMTPUTF8 not supported by server",
            )));
        }

        // Recipients refused before anything is sent.
        let mut rcpts: Vec<Option<Reply>> = Vec::with_capacity(n);
        let mut any_utf8 = sender_utf8;
        for (addr, params) in tx.rcpts {
            let addr = strip_brackets(addr);
            let refusal = if addr.is_empty() || bad_envelope_chars(addr) {
                Some(local(553, (5, 1, 3), "invalid recipient address"))
            } else if params.bytes().any(|b| b < 0x20 || b == 0x7f) {
                Some(local(501, (5, 5, 4), "invalid RCPT parameters"))
            } else if !addr.is_ascii() && !self.ext.smtputf8 {
                Some(local(
                    553,
                    (5, 6, 7),
                    "non-ASCII recipient address and SMTPUTF8 not supported by server",
                ))
            } else {
                any_utf8 |= !addr.is_ascii();
                None
            };
            rcpts.push(refusal);
        }
        let sendable = rcpts.iter().filter(|r| r.is_none()).count();
        if sendable == 0 {
            return Ok(TxResult {
                mail: local(554, (5, 5, 1), "no valid recipients"),
                rcpts: rcpts
                    .into_iter()
                    .map(|r| r.unwrap_or_else(|| unreachable!()))
                    .collect(),
                data: None,
            });
        }

        // Build MAIL and RCPT commands.
        self.wbuf.clear();
        self.wbuf.extend_from_slice(b"MAIL FROM:<");
        self.wbuf.extend_from_slice(mail_from.as_bytes());
        self.wbuf.push(b'>');
        if self.ext.size.is_some() {
            let _ = write!(self.wbuf, " SIZE={}", tx.body.len());
        }
        let utf8_sent = ext::push_params(&mut self.wbuf, tx.mail_params, &self.ext);
        if any_utf8 && !utf8_sent {
            self.wbuf.extend_from_slice(b" SMTPUTF8");
        }
        if let (true, Some(origin)) = (self.ext.xorigin, tx.origin) {
            if origin.is_empty() || origin.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
                tracing::warn!(origin, "origin token not sent: not printable ASCII");
            } else {
                self.wbuf.extend_from_slice(b" XORIGIN=");
                self.wbuf.extend_from_slice(origin.as_bytes());
            }
        }
        self.wbuf.extend_from_slice(b"\r\n");
        let pipelining = self.ext.pipelining;
        let mail_end = self.wbuf.len();
        for ((addr, params), refusal) in tx.rcpts.iter().zip(&rcpts) {
            if refusal.is_none() {
                self.wbuf.extend_from_slice(b"RCPT TO:<");
                self.wbuf.extend_from_slice(strip_brackets(addr).as_bytes());
                self.wbuf.push(b'>');
                ext::push_params(&mut self.wbuf, params, &self.ext);
                self.wbuf.extend_from_slice(b"\r\n");
            }
        }
        if pipelining {
            self.wbuf.extend_from_slice(b"DATA\r\n");
            self.pipelined(rcpts, tx.body).await
        } else {
            self.lockstep(mail_end, rcpts, tx.body).await
        }
    }

    /// `wbuf` holds MAIL, RCPTs and DATA.
    async fn pipelined(
        &mut self,
        rcpts: Vec<Option<Reply>>,
        body: &[u8],
    ) -> Result<TxResult, ClientError> {
        let t = self.command_timeout;
        self.flush_wbuf("MAIL", t).await?;
        let mail = self.read_reply("MAIL", t).await?;
        if mail.code == 421 {
            return Ok(closing(mail, rcpts.len()));
        }
        let n = rcpts.len();
        let mut replies = Vec::with_capacity(n);
        let mut sent = Vec::with_capacity(n);
        let mut accepted = 0;
        for refusal in rcpts {
            sent.push(refusal.is_none());
            match refusal {
                Some(r) => replies.push(r),
                None => {
                    let r = self.read_reply("RCPT", t).await?;
                    if r.code == 421 {
                        return Ok(closing(r, n));
                    }
                    accepted += usize::from(r.is_positive());
                    replies.push(r);
                }
            }
        }
        let data = self.read_reply("DATA", t).await?;
        if data.code == 421 {
            return Ok(closing(data, n));
        }
        if !mail.is_positive() || accepted == 0 {
            if data.code == 354 {
                // Server accepted DATA with nothing to deliver: end it empty.
                self.wbuf.extend_from_slice(b".\r\n");
                self.flush_wbuf("end of data", self.data_timeout).await?;
                self.read_reply("end of data", self.data_timeout).await?;
            }
            if mail.is_positive() {
                self.reset_transaction().await?;
            } else {
                // Answers to RCPTs sent after a refused MAIL ("503 need
                // MAIL") say nothing; local refusals keep their reason.
                for (r, sent) in replies.iter_mut().zip(sent) {
                    if sent {
                        *r = mail.clone();
                    }
                }
            }
            return Ok(TxResult {
                mail,
                rcpts: replies,
                data: None,
            });
        }
        self.after_data(mail, replies, data, body).await
    }

    /// `wbuf` holds MAIL (up to `mail_end`) and then the RCPTs, one line each.
    async fn lockstep(
        &mut self,
        mail_end: usize,
        rcpts: Vec<Option<Reply>>,
        body: &[u8],
    ) -> Result<TxResult, ClientError> {
        let t = self.command_timeout;
        // The commands move to the spare buffer; `wbuf` (the previous spare)
        // keeps its capacity for the body. No allocation in steady state.
        std::mem::swap(&mut self.wbuf, &mut self.spare);
        self.wbuf.clear();
        let commands = std::mem::take(&mut self.spare);
        let r = self
            .lockstep_inner(&commands, mail_end, rcpts, body, t)
            .await;
        self.spare = commands;
        self.spare.clear();
        r
    }

    async fn lockstep_inner(
        &mut self,
        commands: &[u8],
        mail_end: usize,
        rcpts: Vec<Option<Reply>>,
        body: &[u8],
        t: Duration,
    ) -> Result<TxResult, ClientError> {
        self.write_raw("MAIL", &commands[..mail_end], t).await?;
        let mail = self.read_reply("MAIL", t).await?;
        if !mail.is_positive() {
            let rcpts = rcpts
                .into_iter()
                .map(|r| r.unwrap_or_else(|| mail.clone()))
                .collect();
            return Ok(TxResult {
                mail,
                rcpts,
                data: None,
            });
        }
        let n = rcpts.len();
        let mut lines = commands[mail_end..].split_inclusive(|&b| b == b'\n');
        let mut replies = Vec::with_capacity(n);
        let mut accepted = 0;
        for refusal in rcpts {
            match refusal {
                Some(r) => replies.push(r),
                None => {
                    let line = lines.next().unwrap_or_default();
                    self.write_raw("RCPT", line, t).await?;
                    let r = self.read_reply("RCPT", t).await?;
                    if r.code == 421 {
                        return Ok(closing(r, n));
                    }
                    accepted += usize::from(r.is_positive());
                    replies.push(r);
                }
            }
        }
        if accepted == 0 {
            self.reset_transaction().await?;
            return Ok(TxResult {
                mail,
                rcpts: replies,
                data: None,
            });
        }
        self.write_raw("DATA", b"DATA\r\n", t).await?;
        let data = self.read_reply("DATA", t).await?;
        self.after_data(mail, replies, data, body).await
    }

    /// After the DATA reply: the body when the server said 354; otherwise
    /// the transaction is reset (unless the server is closing, 421) and the
    /// refusal is the answer.
    async fn after_data(
        &mut self,
        mail: Reply,
        replies: Vec<Reply>,
        data: Reply,
        body: &[u8],
    ) -> Result<TxResult, ClientError> {
        let data = if data.code == 354 {
            self.write_body(body).await?
        } else {
            if data.code != 421 {
                self.reset_transaction().await?;
            }
            data
        };
        Ok(TxResult {
            mail,
            rcpts: replies,
            data: Some(data),
        })
    }

    /// Sends the dot-stuffed body and the terminator; returns the final reply.
    async fn write_body(&mut self, body: &[u8]) -> Result<Reply, ClientError> {
        let mut stuffer = dot::DotStuffer::new(body);
        self.wbuf.clear();
        loop {
            stuffer.fill(&mut self.wbuf, WRITE_CHUNK);
            if stuffer.is_done() {
                stuffer.finish(&mut self.wbuf);
                self.flush_wbuf("data", self.data_timeout).await?;
                break;
            }
            self.flush_wbuf("data", self.data_timeout).await?;
        }
        self.read_reply("end of data", self.data_timeout).await
    }

    /// RSET after an unfinished transaction; a refusal makes the connection
    /// unusable but keeps the transaction's result.
    async fn reset_transaction(&mut self) -> Result<(), ClientError> {
        let reply = self.command("RSET", b"RSET\r\n").await?;
        if !reply.is_positive() {
            tracing::debug!(remote = %self.remote, %reply, "RSET refused");
            self.usable = false;
        }
        Ok(())
    }

    async fn write_raw(
        &mut self,
        phase: &'static str,
        data: &[u8],
        t: Duration,
    ) -> Result<(), ClientError> {
        timed(phase, Instant::now() + t, self.stream.write_all(data)).await
    }

    /// Writes and clears the write buffer.
    async fn flush_wbuf(&mut self, phase: &'static str, t: Duration) -> Result<(), ClientError> {
        let r = timed(phase, Instant::now() + t, self.stream.write_all(&self.wbuf)).await;
        self.wbuf.clear();
        r
    }

    /// Reads one complete reply, within `t` for the whole reply. A reply
    /// already buffered (pipelining) costs no system call and no timer.
    async fn read_reply(&mut self, phase: &'static str, t: Duration) -> Result<Reply, ClientError> {
        let mut deadline = None;
        loop {
            if let Some(reply) = self.parse_buffered()? {
                if reply.code == 421 {
                    self.usable = false;
                }
                return Ok(reply);
            }
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + t);
            if self.rstart == self.rend {
                self.rstart = 0;
                self.rend = 0;
            }
            if self.rend == self.rbuf.len() {
                if self.rstart > 0 {
                    self.rbuf.copy_within(self.rstart..self.rend, 0);
                    self.rend -= self.rstart;
                    self.rstart = 0;
                } else if self.rbuf.len() < RBUF_MAX {
                    let len = (self.rbuf.len() * 2).min(RBUF_MAX);
                    self.rbuf.resize(len, 0);
                } else {
                    return Err(ClientError::Protocol("reply too long".into()));
                }
            }
            let n = timed(
                phase,
                deadline,
                self.stream.read(&mut self.rbuf[self.rend..]),
            )
            .await?;
            if n == 0 {
                return Err(ClientError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed by server during {phase}"),
                )));
            }
            self.rend += n;
        }
    }

    /// Takes one complete reply out of the read buffer, if there is one.
    fn parse_buffered(&mut self) -> Result<Option<Reply>, ClientError> {
        let data = &self.rbuf[self.rstart..self.rend];
        loop {
            let rest = &data[self.scan_pos..];
            let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                if rest.len() > MAX_LINE + 1 {
                    return Err(ClientError::Protocol("reply line too long".into()));
                }
                return Ok(None);
            };
            if nl > MAX_LINE + 1 {
                return Err(ClientError::Protocol("reply line too long".into()));
            }
            self.scan_lines += 1;
            if self.scan_lines > MAX_LINES {
                return Err(ClientError::Protocol("reply has too many lines".into()));
            }
            let line = &rest[..nl];
            self.scan_pos += nl + 1;
            if line.len() < 4 || line[3] != b'-' {
                let reply = parse_reply(&data[..self.scan_pos], self.scan_lines);
                self.rstart += self.scan_pos;
                self.scan_pos = 0;
                self.scan_lines = 0;
                return reply.map(Some);
            }
        }
    }
}

/// Parses the wire bytes of one complete reply (`lines` lines, each ending
/// in LF).
fn parse_reply(bytes: &[u8], lines: usize) -> Result<Reply, ClientError> {
    let text = String::from_utf8_lossy(bytes);
    let trim = |l: &'_ str| -> usize { l.strip_suffix('\r').map_or(l.len(), str::len) };
    let body = &text[..text.len() - 1];
    let reply = if lines == 1 {
        Reply::parse_lines(&[&body[..trim(body)]])
    } else {
        let v: Vec<&str> = body.split('\n').map(|l| &l[..trim(l)]).collect();
        Reply::parse_lines(&v)
    };
    reply.ok_or_else(|| {
        let mut shown: String = body.chars().take(200).collect();
        shown = shown.escape_debug().to_string();
        ClientError::Protocol(format!("malformed reply: \"{shown}\""))
    })
}

/// The server is closing the connection: `reply` (a 421) decides everything.
fn closing(reply: Reply, n: usize) -> TxResult {
    TxResult {
        rcpts: vec![reply.clone(); n],
        mail: reply,
        data: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reply_variants() {
        let r = parse_reply(b"250-a\r\n250-b\r\n250 2.0.0 c\r\n", 3).unwrap();
        assert_eq!(r.code, 250);
        assert_eq!(r.text, "a\nb\nc");
        let r = parse_reply(b"550 5.1.1 no\n", 1).unwrap();
        assert_eq!(r.enhanced, Some(EnhancedStatus::new(5, 1, 1)));
        assert!(parse_reply(b"hello\r\n", 1).is_err());
        let r = parse_reply(b"250 caf\xc3\xa9 \xff\r\n", 1).unwrap();
        assert_eq!(r.text, "caf\u{e9} \u{fffd}");
    }

    #[test]
    fn outcome_order() {
        let ok = Reply::new(250, None, "ok");
        let no = Reply::enhanced(550, (5, 1, 1), "no");
        let tx = TxResult {
            mail: ok.clone(),
            rcpts: vec![ok.clone(), no.clone()],
            data: Some(Reply::new(451, None, "later")),
        };
        assert_eq!(tx.rcpt_outcome(0).code, 451);
        assert_eq!(tx.rcpt_outcome(1), &no);
        assert_eq!(tx.accepted(), 0);
        let tx = TxResult {
            mail: ok.clone(),
            rcpts: vec![ok.clone()],
            data: None,
        };
        assert!(tx.rcpt_outcome(0).is_transient());
    }

    #[test]
    fn temporary_errors() {
        assert!(ClientError::TlsRequired.is_temporary());
        assert!(ClientError::Timeout("MAIL").is_temporary());
        assert!(!ClientError::Greeting(Reply::new(554, None, "go away")).is_temporary());
        assert!(ClientError::Ehlo(Reply::new(421, None, "busy")).is_temporary());
    }
}
