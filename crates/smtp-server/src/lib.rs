//! The inbound SMTP server every stage listens with: a tokio session
//! driver around the sans-IO `palisade-smtp-proto`.
//!
//! A stage builds a [`ServerConfig`], implements [`Hooks`] (its policy and
//! its queue), and calls [`serve`]. The session handles the protocol:
//! sequencing ([`state`]), pipelining (RFC 2920), STARTTLS (RFC 3207),
//! DATA and BDAT, limits, timeouts and the greet pause; the PROXY
//! protocol header of a trusted load balancer ([`proxy`]).
//!
//! # Security
//! Reads untrusted network input. Defences implemented here:
//! SMTP smuggling (bare CR/LF refused, only `CRLF.CRLF` ends DATA),
//! STARTTLS command injection (CVE-2011-0411: pipelined plaintext after
//! STARTTLS is discarded), early talkers (DM32 greet pause), command-line
//! and message size limits, error and session limits, timeouts.
//!
//! # Standards
//! RFC 5321, RFC 2920 (PIPELINING), RFC 1870 (SIZE), RFC 6152 (8BITMIME),
//! RFC 2034/3463 (enhanced codes), RFC 6531 (SMTPUTF8), RFC 3461 (DSN),
//! RFC 3030 (CHUNKING, BINARYMIME), RFC 3207 (STARTTLS).
//!
//! # Failure modes
//! Limits and timeouts answer `421` (temporary) and close; content problems
//! answer `5xx` for the message and the session continues.

pub mod config;
pub mod gate;
pub mod hooks;
pub mod proxy;
mod session;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tracing::{info, info_span, warn, Instrument};

pub use config::{ListenerProfile, ServerConfig, Timeouts};
pub use gate::Gate;
pub use hooks::{Envelope, Hooks, SessionInfo, TlsInfo};
pub use palisade_smtp_proto::{MailParams, RcptParams, Reply};
pub use proxy::ProxyConfig;

/// What a listener serves new sessions with: its settings and the
/// stage's hooks. A reload replaces both at once; a session keeps the pair
/// it started with to its end (as a Postfix smtpd process keeps its
/// configuration), so an open session never sees half of a new policy.
pub struct Service<H> {
    pub config: Arc<ServerConfig>,
    pub hooks: Arc<H>,
}

impl<H> Clone for Service<H> {
    fn clone(&self) -> Self {
        Service {
            config: self.config.clone(),
            hooks: self.hooks.clone(),
        }
    }
}

/// Accepts connections forever, one task per session, at most
/// `config.max_sessions` at a time; connections over the cap get
/// `421 4.7.0 Too many connections`. Returns only if the listener fails
/// permanently (it does not today: accept errors are logged and retried).
pub async fn serve<H: Hooks>(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    hooks: Arc<H>,
) -> std::io::Result<()> {
    let (_keep, service) = watch::channel(Service { config, hooks });
    serve_with(listener, service, Gate::default()).await
}

static NEXT_SESSION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Like [`serve`], taking each new session's settings and hooks from
/// `service` (a reload sends a new pair) and admitting sessions through
/// `gate` (drain: new connections get `421 4.3.2`).
pub async fn serve_with<H: Hooks>(
    listener: TcpListener,
    mut service: watch::Receiver<Service<H>>,
    gate: Gate,
) -> std::io::Result<()> {
    let mut cap = service.borrow().config.max_sessions;
    let sessions = Arc::new(Semaphore::new(cap));
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let local = match socket.local_addr() {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "local_addr failed");
                continue;
            }
        };
        // Replies are batched by the session; Nagle would only add delay.
        let _ = socket.set_nodelay(true);
        // Unique in the process, not just the listener: the MSA's 587 and
        // 465 sessions share one policy that keys its state by session.
        let id = NEXT_SESSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let Service { config, hooks } = service.borrow_and_update().clone();
        // A reload may change the session cap; sessions already open keep
        // their permits.
        if config.max_sessions > cap {
            sessions.add_permits(config.max_sessions - cap);
            cap = config.max_sessions;
        } else if config.max_sessions < cap {
            // Only free permits can be taken back: the rest as sessions end.
            cap -= sessions.forget_permits(cap - config.max_sessions);
        }
        let refusal = if gate.is_draining() {
            Err(Gate::reply(&config.hostname))
        } else {
            sessions.clone().try_acquire_owned().map_err(|_| {
                Reply::closing_policy(format!("{} Too many connections", config.hostname))
            })
        };
        match refusal {
            Ok(permit) => {
                let counted = gate.session();
                let gate = gate.clone();
                tokio::spawn(async move {
                    let mut socket = socket;
                    let trusted = config.proxy.as_ref().filter(|p| p.trusts(peer.ip()));
                    let proxy = match trusted {
                        None => None,
                        Some(p) => match proxy::read_header(&mut socket, p.header_timeout).await {
                            // The client as the load balancer saw it.
                            Ok(Some(client)) => Some(client),
                            // Its health check (v2 LOCAL, v1 UNKNOWN).
                            Ok(None) => Some((peer, local)),
                            Err(e) => {
                                warn!(%peer, session = id, "trusted proxy connection refused: {e}");
                                return;
                            }
                        },
                    };
                    // `local` stays our listener: the proxy's own
                    // destination is the load balancer's address.
                    let session = match proxy {
                        Some((client, _)) => {
                            session::Session::new(socket, id, client, local, config, hooks)
                                .behind_proxy(peer)
                        }
                        None => session::Session::new(socket, id, peer, local, config, hooks),
                    };
                    session
                        .with_gate(gate)
                        .run()
                        .instrument(info_span!("smtp", session = id))
                        .await;
                    drop(counted);
                    drop(permit);
                });
            }
            Err(reply) => {
                tokio::spawn(
                    async move {
                        info!(%peer, reply = %reply, "refused");
                        let mut socket = socket;
                        let _ = tokio::time::timeout(Duration::from_secs(5), async {
                            socket.write_all(&reply.to_wire(true)).await?;
                            socket.shutdown().await
                        })
                        .await;
                    }
                    .instrument(info_span!("smtp", session = id)),
                );
            }
        }
    }
}

/// Runs one SMTP session on an accepted stream until it ends. [`serve`]
/// calls this; tests and special listeners may call it directly (for
/// example over `tokio::io::duplex`).
pub async fn handle_connection<H, S>(
    stream: S,
    id: u64,
    peer: SocketAddr,
    local: SocketAddr,
    config: Arc<ServerConfig>,
    hooks: Arc<H>,
) where
    H: Hooks,
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    session::Session::new(stream, id, peer, local, config, hooks)
        .run()
        .instrument(info_span!("smtp", session = id))
        .await
}
