//! POP3 server (RFC 1939) with CAPA and response codes (RFC 2449) and STLS (RFC 2595).
//!
//! * Implicit TLS (POP3S) when `implicit_tls`; otherwise plaintext with STLS, and `USER`/`PASS`
//!   are refused until TLS is active (`-ERR [AUTH] TLS required`): credentials never travel in
//!   clear. Data pipelined after `STLS` in the plaintext phase is discarded (no command
//!   injection across the TLS boundary).
//! * The login name is the full address (or an alias); the session works on the INBOX of the
//!   user the directory resolves it to. One session per mailbox at a time (`-ERR [IN-USE]`).
//! * Bad credentials: `-ERR [AUTH] invalid credentials` after a delay (1 s by default); the
//!   connection is closed after 3 failures.
//! * Deletions (`DELE`) are applied only in the UPDATE state, i.e. on `QUIT`; a dropped
//!   connection deletes nothing.
//! * `UIDL` ids are `<uidvalidity>.<uid>` of the INBOX, stable across sessions.
//! * 10 minute idle timeout (RFC 1939 §3 minimum).

use std::collections::HashSet;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_net::{start_tls_buffered, MaybeTls};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::{Directory, MailStore, User, INBOX};

const MAX_LINE: u64 = 1024;

/// Tunables of the POP3 server. [`Pop3Options::new`] gives the production defaults.
#[derive(Debug, Clone)]
pub struct Pop3Options {
    /// Name used in the greeting.
    pub hostname: String,
    /// POP3S (TLS from the first byte) instead of plaintext + STLS.
    pub implicit_tls: bool,
    /// Idle timeout per command (RFC 1939: at least 10 minutes).
    pub idle_timeout: Duration,
    /// Delay before answering a failed login.
    pub auth_failure_delay: Duration,
    /// Failed logins after which the connection is closed.
    pub max_auth_failures: u32,
    /// Concurrent sessions; further connections are refused with `-ERR [SYS/TEMP]`.
    pub max_connections: usize,
    /// When set, only users whose directory `store` is this node may log in here.
    pub store_node: Option<String>,
}

impl Pop3Options {
    pub fn new(hostname: impl Into<String>, implicit_tls: bool) -> Self {
        Pop3Options {
            hostname: hostname.into(),
            implicit_tls,
            idle_timeout: Duration::from_secs(600),
            auth_failure_delay: Duration::from_secs(1),
            max_auth_failures: 3,
            max_connections: 512,
            store_node: None,
        }
    }
}

/// Serves POP3 on `listener` until an unrecoverable accept error.
pub async fn serve_pop3(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    implicit_tls: bool,
    directory: Directory,
    store: MailStore,
    hostname: String,
) -> io::Result<()> {
    serve_pop3_with_options(
        listener,
        tls,
        directory,
        store,
        Pop3Options::new(hostname, implicit_tls),
    )
    .await
}

/// [`serve_pop3`] with explicit [`Pop3Options`].
pub async fn serve_pop3_with_options(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    directory: Directory,
    store: MailStore,
    options: Pop3Options,
) -> io::Result<()> {
    let shared = Arc::new(Shared {
        acceptor: TlsAcceptor::from(tls),
        directory,
        store,
        options,
        locks: Mutex::new(HashSet::new()),
    });
    // Over TLS a plaintext -ERR would be garbage to the client: just close.
    let busy: Option<&'static [u8]> =
        (!shared.options.implicit_tls).then_some(b"-ERR [SYS/TEMP] too many connections\r\n");
    let max_connections = shared.options.max_connections;
    palisade_net::serve_capped(listener, max_connections, "pop3", busy, |tcp| {
        let shared = shared.clone();
        async move { handle_connection(tcp, &shared).await }
    })
    .await
}

struct Shared {
    acceptor: TlsAcceptor,
    directory: Directory,
    store: MailStore,
    options: Pop3Options,
    /// Maildrops with an active TRANSACTION-state session (RFC 1939 exclusive lock).
    locks: Mutex<HashSet<String>>,
}

struct MaildropLock<'a> {
    shared: &'a Shared,
    user: String,
}

impl Drop for MaildropLock<'_> {
    fn drop(&mut self) {
        self.shared
            .locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.user);
    }
}

/// A client connection: plaintext until STLS, or TLS from the first byte.
type Conn = MaybeTls<TcpStream>;

struct Msg {
    uid: u32,
    size: u64,
    deleted: bool,
}

struct Maildrop<'a> {
    user: User,
    uidvalidity: u32,
    msgs: Vec<Msg>,
    _lock: MaildropLock<'a>,
}

impl Maildrop<'_> {
    /// Message by 1-based number, if it exists and is not marked deleted.
    fn get(&self, arg: Option<&str>) -> Result<(usize, &Msg), &'static str> {
        let arg = arg.ok_or("-ERR message number required")?;
        let n: usize = arg.parse().map_err(|_| "-ERR invalid message number")?;
        if n == 0 || n > self.msgs.len() {
            return Err("-ERR no such message");
        }
        let m = &self.msgs[n - 1];
        if m.deleted {
            return Err("-ERR message is deleted");
        }
        Ok((n, m))
    }

    fn stat(&self) -> (usize, u64) {
        self.msgs
            .iter()
            .filter(|m| !m.deleted)
            .fold((0, 0), |(n, s), m| (n + 1, s + m.size))
    }
}

type Stream = BufReader<Conn>;

async fn send(stream: &mut Stream, data: &[u8], idle: Duration) -> io::Result<()> {
    let w = async {
        stream.write_all(data).await?;
        stream.flush().await
    };
    tokio::time::timeout(idle, w)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write timeout"))?
}

async fn reply(stream: &mut Stream, line: &str, idle: Duration) -> io::Result<()> {
    let mut v = Vec::with_capacity(line.len() + 2);
    v.extend_from_slice(line.as_bytes());
    v.extend_from_slice(b"\r\n");
    send(stream, &v, idle).await
}

enum Line {
    Ok(String),
    TooLong,
    Eof,
}

async fn read_line(stream: &mut Stream, idle: Duration) -> io::Result<Line> {
    let mut buf = Vec::new();
    let n = tokio::time::timeout(
        idle,
        (&mut *stream).take(MAX_LINE).read_until(b'\n', &mut buf),
    )
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "idle timeout"))??;
    if n == 0 {
        return Ok(Line::Eof);
    }
    if buf.last() != Some(&b'\n') {
        return Ok(if n as u64 >= MAX_LINE {
            Line::TooLong
        } else {
            Line::Eof
        });
    }
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
        buf.pop();
    }
    Ok(Line::Ok(String::from_utf8_lossy(&buf).into_owned()))
}

async fn handle_connection(tcp: TcpStream, shared: &Shared) -> io::Result<()> {
    let conn = MaybeTls::accept(&shared.acceptor, tcp, shared.options.implicit_tls).await?;
    let mut stream = BufReader::new(conn);
    let res = session(&mut stream, shared).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.shutdown()).await;
    res
}

fn capa(tls: bool, stls_offered: bool) -> String {
    let mut s = String::from("+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\n");
    if tls {
        s.push_str("USER\r\n");
    } else if stls_offered {
        s.push_str("STLS\r\n");
    }
    s.push_str("EXPIRE NEVER\r\nIMPLEMENTATION Palisade\r\n.\r\n");
    s
}

async fn session(stream: &mut Stream, shared: &Shared) -> io::Result<()> {
    let idle = shared.options.idle_timeout;
    let host = &shared.options.hostname;
    reply(stream, &format!("+OK {host} POP3 server ready"), idle).await?;
    let mut pending_user: Option<String> = None;
    let mut failures = 0u32;
    let mut drop_: Option<Maildrop<'_>> = None;
    loop {
        let line = match read_line(stream, idle).await? {
            Line::Ok(l) => l,
            Line::TooLong => {
                reply(stream, "-ERR line too long", idle).await?;
                return Ok(());
            }
            Line::Eof => return Ok(()),
        };
        let (cmd, rest) = match line.split_once(' ') {
            Some((c, r)) => (c.to_ascii_uppercase(), r),
            None => (line.to_ascii_uppercase(), ""),
        };
        let mut args = rest.split_ascii_whitespace();
        let tls = stream.get_ref().is_tls();
        match (cmd.as_str(), drop_.as_mut()) {
            ("CAPA", _) => {
                let offered = !tls && drop_.is_none();
                send(stream, capa(tls, offered).as_bytes(), idle).await?;
            }
            ("NOOP", Some(_)) => reply(stream, "+OK", idle).await?,
            ("QUIT", None) => {
                reply(stream, &format!("+OK {host} POP3 server signing off"), idle).await?;
                return Ok(());
            }
            ("QUIT", Some(md)) => {
                let uids: Vec<u32> = md
                    .msgs
                    .iter()
                    .filter(|m| m.deleted)
                    .map(|m| m.uid)
                    .collect();
                let user = md.user.address.clone();
                let remaining = md.msgs.len() - uids.len();
                let res = if uids.is_empty() {
                    Ok(0)
                } else {
                    let store = shared.store.clone();
                    tokio::task::spawn_blocking(move || store.delete(&user, INBOX, &uids))
                        .await
                        .map_err(io::Error::other)?
                };
                match res {
                    Ok(_) => {
                        reply(
                            stream,
                            &format!(
                                "+OK {host} POP3 server signing off ({remaining} messages left)"
                            ),
                            idle,
                        )
                        .await?
                    }
                    Err(e) => {
                        warn!(user = %md.user.address, error = %e, "pop3 update failed");
                        reply(
                            stream,
                            "-ERR [SYS/TEMP] some deleted messages not removed",
                            idle,
                        )
                        .await?
                    }
                }
                return Ok(());
            }
            ("STLS", None) if !tls && !shared.options.implicit_tls => {
                reply(stream, "+OK Begin TLS negotiation", idle).await?;
                // Drops any pipelined plaintext (RFC 2595 §4).
                start_tls_buffered(stream, &shared.acceptor).await?;
                pending_user = None;
            }
            ("STLS", _) => reply(stream, "-ERR STLS not permitted now", idle).await?,
            ("USER", None) | ("PASS", None) if !tls => {
                reply(stream, "-ERR [AUTH] TLS required", idle).await?;
            }
            ("USER", None) => {
                let name = rest.trim();
                if name.is_empty() {
                    reply(stream, "-ERR user name required", idle).await?;
                } else {
                    pending_user = Some(name.to_string());
                    reply(stream, "+OK send PASS", idle).await?;
                }
            }
            ("PASS", None) => {
                let Some(name) = pending_user.take() else {
                    reply(stream, "-ERR USER first", idle).await?;
                    continue;
                };
                // RFC 1939 allows spaces in the password: it is the rest of the line.
                let password = rest.to_string();
                match login(shared, &name, &password).await {
                    Ok(md) => {
                        let (n, size) = md.stat();
                        info!(user = %md.user.address, "pop3 login");
                        drop_ = Some(md);
                        reply(
                            stream,
                            &format!("+OK maildrop has {n} messages ({size} octets)"),
                            idle,
                        )
                        .await?;
                    }
                    Err(LoginError::Invalid) => {
                        failures += 1;
                        info!(login = %name, "pop3 login failed");
                        tokio::time::sleep(shared.options.auth_failure_delay).await;
                        reply(stream, "-ERR [AUTH] invalid credentials", idle).await?;
                        if failures >= shared.options.max_auth_failures {
                            return Ok(());
                        }
                    }
                    Err(LoginError::InUse) => {
                        reply(stream, "-ERR [IN-USE] maildrop already locked", idle).await?;
                    }
                    Err(LoginError::WrongNode) => {
                        tokio::time::sleep(shared.options.auth_failure_delay).await;
                        reply(stream, "-ERR [AUTH] mailbox is not on this server", idle).await?;
                    }
                    Err(LoginError::Temp(e)) => {
                        warn!(login = %name, error = %e, "pop3 login error");
                        reply(
                            stream,
                            "-ERR [SYS/TEMP] temporary failure, try again later",
                            idle,
                        )
                        .await?;
                    }
                }
            }
            ("STAT", Some(md)) => {
                let (n, size) = md.stat();
                reply(stream, &format!("+OK {n} {size}"), idle).await?;
            }
            ("LIST", Some(md)) | ("UIDL", Some(md)) => {
                let uidl = cmd == "UIDL";
                let item = |m: &Msg| {
                    if uidl {
                        format!("{}.{}", md.uidvalidity, m.uid)
                    } else {
                        m.size.to_string()
                    }
                };
                if let Some(arg) = args.next() {
                    match md.get(Some(arg)) {
                        Ok((n, m)) => reply(stream, &format!("+OK {n} {}", item(m)), idle).await?,
                        Err(e) => reply(stream, e, idle).await?,
                    }
                } else {
                    let (n, size) = md.stat();
                    let mut out = if uidl {
                        String::from("+OK unique-id listing follows\r\n")
                    } else {
                        format!("+OK {n} messages ({size} octets)\r\n")
                    };
                    for (i, m) in md.msgs.iter().enumerate().filter(|(_, m)| !m.deleted) {
                        out.push_str(&format!("{} {}\r\n", i + 1, item(m)));
                    }
                    out.push_str(".\r\n");
                    send(stream, out.as_bytes(), idle).await?;
                }
            }
            ("RETR", Some(md)) | ("TOP", Some(md)) => {
                let top = cmd == "TOP";
                let (n, uid) = match md.get(args.next()) {
                    Ok((n, m)) => (n, m.uid),
                    Err(e) => {
                        reply(stream, e, idle).await?;
                        continue;
                    }
                };
                let lines = if top {
                    match args.next().map(str::parse::<usize>) {
                        Some(Ok(k)) => Some(k),
                        _ => {
                            reply(
                                stream,
                                "-ERR TOP needs a message number and a line count",
                                idle,
                            )
                            .await?;
                            continue;
                        }
                    }
                } else {
                    None
                };
                let user = md.user.address.clone();
                let store = shared.store.clone();
                let fetched = tokio::task::spawn_blocking(move || store.fetch(&user, INBOX, uid))
                    .await
                    .map_err(io::Error::other)?;
                match fetched {
                    Ok(Some(body)) => {
                        let body = match lines {
                            Some(k) => top_of(&body, k),
                            None => &body[..],
                        };
                        let mut out = Vec::with_capacity(body.len() + body.len() / 50 + 64);
                        if top {
                            out.extend_from_slice(b"+OK top of message follows\r\n");
                        } else {
                            out.extend_from_slice(
                                format!("+OK {} octets\r\n", md.msgs[n - 1].size).as_bytes(),
                            );
                        }
                        dot_stuff(body, &mut out);
                        send(stream, &out, idle).await?;
                    }
                    Ok(None) => {
                        reply(stream, "-ERR message was removed by another session", idle).await?
                    }
                    Err(e) => {
                        warn!(error = %e, "pop3 fetch failed");
                        reply(stream, "-ERR [SYS/TEMP] cannot read message", idle).await?
                    }
                }
            }
            ("DELE", Some(md)) => {
                let arg = args.next();
                match md.get(arg) {
                    Ok((n, _)) => {
                        md.msgs[n - 1].deleted = true;
                        reply(stream, &format!("+OK message {n} deleted"), idle).await?;
                    }
                    Err(e) => reply(stream, e, idle).await?,
                }
            }
            ("RSET", Some(md)) => {
                for m in &mut md.msgs {
                    m.deleted = false;
                }
                let (n, size) = md.stat();
                reply(
                    stream,
                    &format!("+OK maildrop has {n} messages ({size} octets)"),
                    idle,
                )
                .await?;
            }
            ("STAT" | "LIST" | "UIDL" | "RETR" | "TOP" | "DELE" | "RSET" | "NOOP", None) => {
                reply(stream, "-ERR not authenticated", idle).await?
            }
            ("USER" | "PASS" | "APOP", Some(_)) => {
                reply(stream, "-ERR already authenticated", idle).await?
            }
            _ => reply(stream, "-ERR unknown command", idle).await?,
        }
    }
}

enum LoginError {
    Invalid,
    InUse,
    WrongNode,
    Temp(String),
}

async fn login<'a>(
    shared: &'a Shared,
    name: &str,
    password: &str,
) -> Result<Maildrop<'a>, LoginError> {
    let dir = shared.directory.clone();
    let (n, p) = (name.to_string(), password.to_string());
    let user = tokio::task::spawn_blocking(move || dir.verify_password(&n, &p))
        .await
        .map_err(|e| LoginError::Temp(e.to_string()))?
        .map_err(|e| LoginError::Temp(e.to_string()))?
        .ok_or(LoginError::Invalid)?;
    if let Some(node) = &shared.options.store_node {
        if &user.store != node {
            return Err(LoginError::WrongNode);
        }
    }
    {
        let mut locks = shared.locks.lock().unwrap_or_else(|p| p.into_inner());
        if !locks.insert(user.address.clone()) {
            return Err(LoginError::InUse);
        }
    }
    let lock = MaildropLock {
        shared,
        user: user.address.clone(),
    };
    let store = shared.store.clone();
    let address = user.address.clone();
    let (info, list) = tokio::task::spawn_blocking(move || {
        store.ensure_user(&address)?;
        Ok::<_, crate::MailboxError>((
            store.folder_info(&address, INBOX)?,
            store.list(&address, INBOX)?,
        ))
    })
    .await
    .map_err(|e| LoginError::Temp(e.to_string()))?
    .map_err(|e| LoginError::Temp(e.to_string()))?;
    Ok(Maildrop {
        uidvalidity: info.map(|i| i.uidvalidity).unwrap_or(0),
        msgs: list
            .into_iter()
            .map(|m| Msg {
                uid: m.uid,
                size: m.size,
                deleted: false,
            })
            .collect(),
        user,
        _lock: lock,
    })
}

/// The header, the empty separator line and the first `k` body lines of a message.
fn top_of(msg: &[u8], k: usize) -> &[u8] {
    // End of header: first empty line.
    let mut pos = 0;
    let mut header_end = msg.len();
    while pos < msg.len() {
        let end = msg[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| pos + i + 1)
            .unwrap_or(msg.len());
        let line = &msg[pos..end];
        pos = end;
        if line == b"\r\n" || line == b"\n" {
            header_end = pos;
            break;
        }
    }
    let mut end = header_end;
    for _ in 0..k {
        if end >= msg.len() {
            break;
        }
        end = msg[end..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| end + i + 1)
            .unwrap_or(msg.len());
    }
    &msg[..end]
}

/// Appends `body` as a POP3 multi-line response: CRLF line endings, lines starting with '.'
/// byte-stuffed, terminated by `.CRLF`.
fn dot_stuff(body: &[u8], out: &mut Vec<u8>) {
    let mut at_line_start = true;
    let mut prev = 0u8;
    for &b in body {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        at_line_start = b == b'\n';
        prev = b;
    }
    if !body.is_empty() && !at_line_start {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuffing() {
        let mut out = Vec::new();
        dot_stuff(b"a\r\n.b\r\n..\r\n.\r\nend", &mut out);
        assert_eq!(out, b"a\r\n..b\r\n...\r\n..\r\nend\r\n.\r\n");
        let mut out = Vec::new();
        dot_stuff(b"x\n.y\n", &mut out);
        assert_eq!(out, b"x\r\n..y\r\n.\r\n");
    }

    #[test]
    fn top() {
        let m = b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\nl3\r\n";
        assert_eq!(top_of(m, 0), b"A: 1\r\nB: 2\r\n\r\n");
        assert_eq!(top_of(m, 2), b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\n");
        assert_eq!(top_of(m, 10), &m[..]);
        assert_eq!(top_of(b"A: 1\r\n", 3), b"A: 1\r\n");
    }
}
