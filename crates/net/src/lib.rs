//! Connection plumbing every Palisade server shares (SMTP, IMAP, POP3):
//!
//! * [`MaybeTls`]: a stream that is plain TCP until STARTTLS/STLS, or TLS
//!   from the first byte (implicit TLS, RFC 8314);
//! * [`tls_handshake`] and [`MaybeTls::accept`]: the server handshake, with
//!   a deadline so a client that stalls in it cannot hold a session slot;
//! * [`start_tls_buffered`]: the upgrade that drops what the client
//!   pipelined in clear (no command injection across the TLS boundary,
//!   RFC 3207 §4.2 / RFC 2595 §3.1);
//! * [`serve_capped`]: the accept loop with a connection cap, backing off on
//!   EMFILE and friends instead of spinning.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

/// How long the IMAP and POP3 servers give a client to finish a TLS
/// handshake, at connect (implicit TLS) or after STARTTLS/STLS.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection that is plain until STARTTLS (or TLS from the start).
pub enum MaybeTls<S> {
    Plain(S),
    Tls(Box<TlsStream<S>>),
    /// Between taking the plain stream for the handshake and getting the
    /// TLS stream back; also after a failed handshake.
    Gone,
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "connection lost during TLS handshake",
    )
}

/// The server side of a TLS handshake on `plain`, given up after `deadline`.
pub async fn tls_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    acceptor: &TlsAcceptor,
    plain: S,
    deadline: Duration,
) -> io::Result<TlsStream<S>> {
    tokio::time::timeout(deadline, acceptor.accept(plain))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timeout"))?
}

impl<S: AsyncRead + AsyncWrite + Unpin> MaybeTls<S> {
    /// A freshly accepted connection: TLS at once when `implicit_tls`
    /// (IMAPS, POP3S), within [`TLS_HANDSHAKE_TIMEOUT`]; else plain until
    /// the client asks.
    pub async fn accept(acceptor: &TlsAcceptor, stream: S, implicit_tls: bool) -> io::Result<Self> {
        Ok(if implicit_tls {
            let tls = tls_handshake(acceptor, stream, TLS_HANDSHAKE_TIMEOUT).await?;
            MaybeTls::Tls(Box::new(tls))
        } else {
            MaybeTls::Plain(stream)
        })
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, MaybeTls::Tls(_))
    }

    /// Replaces the plain stream by a TLS stream; on failure the connection
    /// is [`MaybeTls::Gone`] (nothing can be written in clear any more).
    pub async fn start_tls(
        &mut self,
        acceptor: &TlsAcceptor,
        deadline: Duration,
    ) -> io::Result<()> {
        let MaybeTls::Plain(plain) = std::mem::replace(self, MaybeTls::Gone) else {
            return Err(io::Error::other("TLS already active"));
        };
        *self = MaybeTls::Tls(Box::new(tls_handshake(acceptor, plain, deadline).await?));
        Ok(())
    }
}

/// [`MaybeTls::start_tls`] under a read buffer, within
/// [`TLS_HANDSHAKE_TIMEOUT`]. The buffer is dropped with whatever the client
/// pipelined after its STARTTLS/STLS in plaintext, so no command can be
/// injected across the TLS boundary (RFC 2595 §3.1).
pub async fn start_tls_buffered<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut BufReader<MaybeTls<S>>,
    acceptor: &TlsAcceptor,
) -> io::Result<()> {
    let mut conn = std::mem::replace(stream, BufReader::new(MaybeTls::Gone)).into_inner();
    let upgraded = conn.start_tls(acceptor, TLS_HANDSHAKE_TIMEOUT).await;
    *stream = BufReader::new(conn);
    upgraded
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for MaybeTls<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            MaybeTls::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MaybeTls<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            MaybeTls::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            MaybeTls::Gone => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            MaybeTls::Gone => Poll::Ready(Ok(())),
        }
    }
}

/// Accepts on `listener` until an unrecoverable accept error, running
/// `session` in its own task for each connection, at most `max_connections`
/// at a time. A connection over the cap gets `busy` (when given: over
/// implicit TLS a plaintext line would be garbage to the client, so pass
/// `None` there) and is closed. `protocol` names the server in log lines.
pub async fn serve_capped<F, Fut>(
    listener: TcpListener,
    max_connections: usize,
    protocol: &'static str,
    busy: Option<&'static [u8]>,
    session: F,
) -> io::Result<()>
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = io::Result<()>> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(max_connections.max(1)));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) if is_transient_accept_error(&e) => {
                warn!(error = %e, "{protocol} accept failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let _ = tcp.set_nodelay(true);
        match limit.clone().try_acquire_owned() {
            Ok(permit) => {
                let run = session(tcp);
                tokio::spawn(async move {
                    let _permit = permit;
                    debug!(%peer, "{protocol} connection");
                    if let Err(e) = run.await {
                        debug!(%peer, error = %e, "{protocol} session ended with error");
                    }
                });
            }
            Err(_) => {
                if let Some(line) = busy {
                    tokio::spawn(async move {
                        let mut tcp = tcp;
                        let _ =
                            tokio::time::timeout(Duration::from_secs(5), tcp.write_all(line)).await;
                    });
                }
            }
        }
    }
}

/// Errors after which accepting can go on: the client gave up, or the
/// process is short of descriptors or memory for a moment.
pub fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    ) || matches!(e.raw_os_error(), Some(23 | 24 | 12 | 105)) // ENFILE, EMFILE, ENOMEM, ENOBUFS
}
