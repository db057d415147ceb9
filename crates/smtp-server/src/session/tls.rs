//! STARTTLS (RFC 3207) and the TLS handshake shared with implicit TLS.

use std::sync::Arc;

use palisade_smtp_proto::Reply;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use super::{Session, Stop};
use crate::hooks::{Hooks, TlsInfo};
use crate::state::SessionState;
use palisade_net::{tls_handshake, MaybeTls};

impl<S, H> Session<S, H>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: Hooks,
{
    pub(super) async fn proceed_starttls(&mut self) -> Result<(), Stop> {
        let Some(tls) = self.config.tls.clone() else {
            return self.reply(&Reply::not_implemented("STARTTLS not available"));
        };
        if self.info.tls.is_some() {
            return self.reply(&Reply::bad_sequence("TLS already active"));
        }
        self.reply(&Reply::enhanced(220, (2, 0, 0), "Ready to start TLS"))?;
        self.flush().await?;
        // SECURITY: CVE-2011-0411. Plaintext pipelined after STARTTLS must
        // not be executed inside the TLS session.
        let injected = self.inbuf.len() - self.start;
        if injected > 0 {
            warn!(peer = %self.info.peer, bytes = injected, "discarded plaintext pipelined after STARTTLS");
        }
        self.inbuf.clear();
        self.start = 0;
        self.handshake(tls).await?;
        // RFC 3207 §4.2: forget everything learned before TLS.
        self.info.helo = None;
        self.enter(SessionState::Connected);
        Ok(())
    }

    /// Replaces the plain stream by a TLS stream; on failure the connection
    /// is gone (nothing can be written in clear any more).
    pub(super) async fn handshake(
        &mut self,
        config: Arc<rustls::ServerConfig>,
    ) -> Result<(), Stop> {
        let MaybeTls::Plain(plain) = std::mem::replace(&mut self.stream, MaybeTls::Gone) else {
            return Err(Stop::Io(std::io::Error::other("TLS already active")));
        };
        let acceptor = TlsAcceptor::from(config);
        let tls = match tls_handshake(&acceptor, plain, self.config.timeouts.command).await {
            Ok(tls) => tls,
            Err(e) => {
                debug!(peer = %self.info.peer, error = %e, "TLS handshake failed");
                return Err(Stop::Io(e));
            }
        };
        let (_, conn) = tls.get_ref();
        let info = TlsInfo {
            version: conn
                .protocol_version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_default(),
            cipher: conn
                .negotiated_cipher_suite()
                .map(|c| format!("{:?}", c.suite()))
                .unwrap_or_default(),
        };
        debug!(version = %info.version, cipher = %info.cipher, "TLS established");
        self.info.tls = Some(info);
        self.stream = MaybeTls::Tls(Box::new(tls));
        Ok(())
    }
}
