//! What the crates' tests share (a dev-dependency only, never shipped):
//! a scratch directory removed on drop, and TLS for servers under test —
//! a self-signed certificate and a client that accepts it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// `tag` names the test in the directory's name, to find leftovers.
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let p = std::env::temp_dir().join(format!(
            "palisade-test-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub mod tls {
    use std::sync::Arc;

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

    /// A server configuration with a fresh self-signed certificate for
    /// `name`, and that certificate (for tests that verify it).
    pub fn self_signed(name: &str) -> (Arc<rustls::ServerConfig>, CertificateDer<'static>) {
        let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        let cert = ck.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
        (Arc::new(cfg), cert)
    }

    /// [`self_signed`] for `localhost`, without the certificate.
    pub fn server_config() -> Arc<rustls::ServerConfig> {
        self_signed("localhost").0
    }

    /// A client that accepts any server certificate: the one the stages
    /// use between themselves (`palisade_smtp_client::insecure_tls_config`).
    pub fn connector() -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(palisade_smtp_client::insecure_tls_config())
    }

    pub fn localhost() -> ServerName<'static> {
        ServerName::try_from("localhost").unwrap()
    }
}
