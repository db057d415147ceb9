//! One SMTP session: the buffered I/O, the dispatcher and the replies.
//! Command handlers live in the sibling files, one topic each.

mod auth;
mod data;
mod helo;
mod mail;
mod tls;

use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use palisade_smtp_proto::{parse_command, BdatReceiver, Command, Progress, Reply};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout, Instant};
use tracing::{debug, info, trace, warn};

use crate::config::ServerConfig;
use crate::gate::Gate;
use crate::hooks::{Hooks, SessionInfo};
use crate::state::{self, SessionState};
use palisade_net::MaybeTls;

/// RFC 5321 §4.5.3.1.4: a command line is at most 512 octets with CRLF.
const MAX_COMMAND_LINE: usize = 512;
/// How much we ask the socket for at once.
const READ_CHUNK: usize = 16 * 1024;

/// Why the session loop stops.
#[derive(Debug)]
pub(crate) enum Stop {
    /// A final reply (421, 554) is queued; flush it and close.
    Close,
    /// QUIT answered with 221; flush and close.
    Quit,
    /// The client closed the connection.
    Eof,
    /// The connection broke (or TLS failed); nothing more can be written.
    Io(io::Error),
}

impl From<io::Error> for Stop {
    fn from(e: io::Error) -> Self {
        Stop::Io(e)
    }
}

/// A complete line from the input buffer.
enum Line {
    Command(Range<usize>),
    TooLong,
}

#[derive(Default, Debug)]
struct Counters {
    commands: u64,
    messages: u64,
    refused: u64,
}

pub(crate) struct Session<S, H> {
    stream: MaybeTls<S>,
    config: Arc<ServerConfig>,
    hooks: Arc<H>,
    info: SessionInfo,
    state: SessionState,
    /// Input buffer we own: bytes `start..` are unread. Owning it lets
    /// STARTTLS discard pipelined plaintext and DATA leave the bytes after
    /// its end for the command reader.
    inbuf: Vec<u8>,
    start: usize,
    /// Replies not yet written; flushed only when we need more input
    /// (RFC 2920 §3.2) or before closing.
    out: Vec<u8>,
    /// Inside an over-long command line: drop input until its LF.
    discarding: bool,
    errors: u32,
    deadline: Instant,
    counters: Counters,
    /// The node's drain switch (a session from `handle_connection` has a
    /// private one that never drains).
    gate: Gate,
}

impl<S, H> Session<S, H>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: Hooks,
{
    pub(crate) fn new(
        stream: S,
        id: u64,
        peer: SocketAddr,
        local: SocketAddr,
        config: Arc<ServerConfig>,
        hooks: Arc<H>,
    ) -> Self {
        let deadline = Instant::now() + config.timeouts.session;
        Session {
            stream: MaybeTls::Plain(stream),
            config,
            hooks,
            info: SessionInfo {
                id,
                peer,
                local,
                proxy: None,
                helo: None,
                esmtp: false,
                tls: None,
                auth_user: None,
            },
            state: SessionState::Connected,
            inbuf: Vec::with_capacity(READ_CHUNK),
            start: 0,
            out: Vec::with_capacity(1024),
            discarding: false,
            errors: 0,
            deadline,
            counters: Counters::default(),
            gate: Gate::default(),
        }
    }

    /// The session came through trusted load balancer `proxy`; `peer` is
    /// the client its PROXY header named.
    pub(crate) fn behind_proxy(mut self, proxy: SocketAddr) -> Self {
        self.info.proxy = Some(proxy);
        self
    }

    pub(crate) fn with_gate(mut self, gate: Gate) -> Self {
        self.gate = gate;
        self
    }

    /// Draining and between transactions: this session should end now.
    fn drain_due(&self) -> bool {
        matches!(self.state, SessionState::Connected | SessionState::Greeted)
            && self.gate.is_draining()
    }

    /// Runs the session to its end, logging one line at start and at end.
    pub(crate) async fn run(mut self) {
        match self.info.proxy {
            Some(proxy) => info!(
                peer = %self.info.peer, local = %self.info.local, %proxy,
                "session start"
            ),
            None => info!(peer = %self.info.peer, local = %self.info.local, "session start"),
        }
        let stop = match self.greet().await {
            Ok(()) => self.command_loop().await,
            Err(stop) => stop,
        };
        let how = match &stop {
            Stop::Close => "closed by server",
            Stop::Quit => "quit",
            Stop::Eof => "closed by client",
            Stop::Io(_) => "connection error",
        };
        if let Stop::Io(e) = &stop {
            debug!(error = %e, "session i/o");
        } else {
            self.close_gracefully(matches!(stop, Stop::Close)).await;
        }
        self.hooks.on_close(&self.info);
        info!(
            peer = %self.info.peer,
            helo = self.info.helo.as_deref().unwrap_or(""),
            tls = self.info.tls.is_some(),
            commands = self.counters.commands,
            messages = self.counters.messages,
            refused = self.counters.refused,
            errors = self.errors,
            end = how,
            "session end"
        );
    }

    /// Implicit TLS, `on_connect`, the greet pause and the banner.
    async fn greet(&mut self) -> Result<(), Stop> {
        if self.config.implicit_tls {
            let Some(tls) = self.config.tls.clone() else {
                warn!("implicit_tls set without a TLS configuration; closing");
                return Err(Stop::Io(io::Error::other("no TLS configuration")));
            };
            self.handshake(tls).await?;
        }
        if let Err(reply) = self.hooks.on_connect(&self.info).await {
            self.refused(&reply);
            // COMPAT: connection-level refusals carry the enhanced code even
            // before EHLO (as Postfix does); SPEC §5 names them by it.
            reply.write_wire(&mut self.out, true);
            return Err(Stop::Close);
        }
        // DM32 greet pause. SECURITY: any byte before the banner means the
        // client does not wait for replies (spam engines, smuggling
        // probes). A zero pause still catches bytes that already arrived.
        let pause = self.config.greet_pause;
        self.inbuf.reserve(READ_CHUNK);
        match timeout(pause, self.stream.read_buf(&mut self.inbuf)).await {
            Err(_elapsed) => {}
            Ok(Ok(0)) => return Err(Stop::Eof),
            Ok(Ok(_)) if crate::proxy::looks_like_header(&self.inbuf) => {
                return Err(self.untrusted_proxy_header());
            }
            Ok(Ok(_)) => {
                let reply = Reply::early_talker();
                self.refused(&reply);
                reply.write_wire(&mut self.out, true);
                return Err(Stop::Close);
            }
            Ok(Err(e)) => return Err(Stop::Io(e)),
        }
        let banner = Reply::new(
            220,
            None,
            format!("{} ESMTP Palisade", self.config.hostname),
        );
        banner.write_wire(&mut self.out, false);
        Ok(())
    }

    async fn command_loop(&mut self) -> Stop {
        loop {
            let line = match self.next_line().await {
                Ok(line) => line,
                Err(stop) => return stop,
            };
            if self.counters.commands == 0 {
                if let Line::Command(r) = &line {
                    if crate::proxy::looks_like_header(&self.inbuf[r.start..]) {
                        return self.untrusted_proxy_header();
                    }
                }
            }
            let result = match line {
                Line::TooLong => self.reply(&Reply::syntax_error("Line too long")),
                Line::Command(range) => match parse_command(&self.inbuf[range]) {
                    Ok(cmd) => self.dispatch(cmd).await,
                    Err(reply) => self.reply(&reply),
                },
            };
            if let Err(stop) = result {
                return stop;
            }
        }
    }

    /// Check -> policy -> proceed, grouped by phase.
    async fn dispatch(&mut self, cmd: Command) -> Result<(), Stop> {
        self.counters.commands += 1;
        trace!(verb = cmd.verb(), "command");
        if let Err(reply) = state::next(&self.state, &cmd) {
            if let Command::Bdat { size, .. } = cmd {
                // RFC 3030 §2: the chunk follows regardless; swallow it so
                // its bytes are never read as commands.
                self.skip_chunk(size).await?;
            }
            return self.reply(&reply);
        }
        // Drain: a transaction in progress finishes; nothing new starts.
        if self.drain_due() && !matches!(cmd, Command::Quit) {
            return self.reply(&Gate::reply(&self.config.hostname));
        }
        match cmd {
            // INIT
            Command::Helo(name) => self.proceed_helo(name, false).await,
            Command::Ehlo(name) => self.proceed_helo(name, true).await,
            Command::StartTls => self.proceed_starttls().await,
            Command::Auth { mechanism, initial } => self.proceed_auth(mechanism, initial).await,
            // TRANSACTION
            Command::Mail { from, params } => self.proceed_mail(from, params).await,
            Command::Rcpt { to, params } => self.proceed_rcpt(to, params).await,
            Command::Data => self.proceed_data().await,
            Command::Bdat { size, last } => self.proceed_bdat(size, last).await,
            // ANY
            Command::Rset => {
                self.reset_transaction();
                self.reply(&Reply::ok())
            }
            Command::Noop => self.reply(&Reply::ok()),
            Command::Help => self.reply(&Reply::enhanced(
                214,
                (2, 0, 0),
                "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT STARTTLS VRFY HELP",
            )),
            // No address enumeration (RFC 5321 §3.5.3).
            Command::Vrfy(_) => self.reply(&Reply::enhanced(
                252,
                (2, 1, 5),
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            Command::Expn(_) => self.reply(&Reply::not_implemented("EXPN not available")),
            Command::Quit => {
                self.enter(SessionState::Closing);
                let bye = Reply::enhanced(221, (2, 0, 0), format!("{} Bye", self.config.hostname));
                bye.write_wire(&mut self.out, self.info.esmtp);
                Err(Stop::Quit)
            }
            Command::Unknown(verb) => {
                debug!(verb, "unknown command");
                self.reply(&Reply::syntax_error("Command unrecognized"))
            }
        }
    }

    /// Back to `Greeted` (or `Connected` before HELO), dropping the transaction.
    fn reset_transaction(&mut self) {
        let next = if self.info.helo.is_some() {
            SessionState::Greeted
        } else {
            SessionState::Connected
        };
        self.enter(next);
    }

    /// Every state change goes through here. Returns the old state.
    fn enter(&mut self, next: SessionState) -> SessionState {
        let old = std::mem::replace(&mut self.state, next);
        trace!(from = old.name(), to = self.state.name(), "state");
        old
    }

    /// Queues a reply. Error replies count toward `max_errors`; a 421 or
    /// reaching the limit ends the session.
    fn reply(&mut self, reply: &Reply) -> Result<(), Stop> {
        // COMPAT: a closing 421 carries its enhanced code even before EHLO.
        reply.write_wire(&mut self.out, self.info.esmtp || reply.code == 421);
        if reply.code < 400 {
            return Ok(());
        }
        self.refused(reply);
        if reply.code == 421 {
            self.enter(SessionState::Closing);
            return Err(Stop::Close);
        }
        self.errors += 1;
        if self.config.max_errors > 0 && self.errors >= self.config.max_errors {
            let bye = Reply::closing_policy("Too many errors");
            self.refused(&bye);
            bye.write_wire(&mut self.out, true);
            self.enter(SessionState::Closing);
            return Err(Stop::Close);
        }
        Ok(())
    }

    /// SECURITY: a PROXY header the listener did not ask for (the peer is
    /// not a trusted proxy) would let a client choose its address.
    fn untrusted_proxy_header(&mut self) -> Stop {
        warn!(peer = %self.info.peer, "PROXY header from an untrusted address refused");
        let reply = Reply::enhanced(
            554,
            (5, 7, 0),
            "PROXY protocol header from an untrusted address",
        );
        self.refused(&reply);
        reply.write_wire(&mut self.out, true);
        Stop::Close
    }

    fn refused(&mut self, reply: &Reply) {
        self.counters.refused += 1;
        info!(peer = %self.info.peer, reply = %reply, "refused");
    }

    /// The next complete command line. Over-long lines are consumed up to
    /// their LF and reported once, so the session never desynchronises.
    async fn next_line(&mut self) -> Result<Line, Stop> {
        loop {
            let avail = &self.inbuf[self.start..];
            if let Some(lf) = avail.iter().position(|&b| b == b'\n') {
                let begin = self.start;
                self.start += lf + 1;
                if std::mem::take(&mut self.discarding) || lf + 1 > MAX_COMMAND_LINE {
                    return Ok(Line::TooLong);
                }
                // COMPAT: a bare LF ends a command line too (not DATA lines).
                return Ok(Line::Command(begin..begin + lf));
            }
            if avail.len() > MAX_COMMAND_LINE {
                self.discarding = true;
                self.inbuf.clear();
                self.start = 0;
            }
            let idle = self.config.timeouts.command;
            if matches!(self.state, SessionState::Connected | SessionState::Greeted) {
                // An idle session between transactions ends as soon as
                // the node drains, not when its client next speaks. The
                // replies go out first: only the (cancel-safe) read races.
                self.flush().await?;
                let gate = self.gate.clone();
                let drained = tokio::select! {
                    r = self.fill(idle) => { r?; false }
                    _ = gate.draining() => true,
                };
                if drained {
                    self.reply(&Gate::reply(&self.config.hostname))?;
                }
            } else {
                self.fill(idle).await?;
            }
        }
    }

    /// Flushes pending replies, then reads more input (waiting at most
    /// `idle`, and never past the session deadline).
    async fn fill(&mut self, idle: Duration) -> Result<(), Stop> {
        self.flush().await?;
        if self.start == self.inbuf.len() {
            self.inbuf.clear();
            self.start = 0;
        } else if self.start > 0 && self.inbuf.capacity() - self.inbuf.len() < READ_CHUNK / 4 {
            self.inbuf.drain(..self.start);
            self.start = 0;
        }
        self.inbuf.reserve(READ_CHUNK);
        let now = Instant::now();
        let session_left = self.deadline.saturating_duration_since(now);
        let wait = idle.min(session_left);
        match timeout(wait, self.stream.read_buf(&mut self.inbuf)).await {
            Ok(Ok(0)) => Err(Stop::Eof),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(Stop::Io(e)),
            Err(_elapsed) => {
                let text = if wait < idle {
                    "Session time limit exceeded, closing connection"
                } else {
                    "Idle timeout, closing connection"
                };
                self.reply(&Reply::timeout(text))?;
                Err(Stop::Close)
            }
        }
    }

    async fn flush(&mut self) -> Result<(), Stop> {
        if self.out.is_empty() {
            return Ok(());
        }
        let write = async {
            self.stream.write_all(&self.out).await?;
            self.stream.flush().await
        };
        match timeout(self.config.timeouts.command, write).await {
            Ok(result) => result?,
            Err(_) => return Err(Stop::Io(io::ErrorKind::TimedOut.into())),
        }
        self.out.clear();
        Ok(())
    }

    /// Writes the last replies, then half-closes and drains briefly so the
    /// kernel does not turn unread input into a RST that eats our reply.
    async fn close_gracefully(&mut self, drain: bool) {
        if self.flush().await.is_err() {
            return;
        }
        let _ = timeout(Duration::from_secs(5), self.stream.shutdown()).await;
        if drain {
            let mut sink = [0u8; 4096];
            let _ = timeout(Duration::from_millis(500), async {
                while let Ok(n) = self.stream.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
        }
    }

    /// Consumes a BDAT chunk we will not keep.
    async fn skip_chunk(&mut self, size: u64) -> Result<(), Stop> {
        let mut rx = BdatReceiver::new(size, 0, 0);
        let mut sink = Vec::new();
        loop {
            let (n, progress) = rx.feed(&self.inbuf[self.start..], &mut sink);
            self.start += n;
            if let Progress::Done(_) = progress {
                return Ok(());
            }
            let idle = self.config.timeouts.data_chunk;
            self.fill(idle).await?;
        }
    }
}
