//! Certificates for STARTTLS, implicit TLS, POP3S and IMAPS.
//!
//! Production configs name a PEM chain and key. Without them the gateway
//! uses a self-signed pair under `data_dir/tls/`, generated once (by
//! `palisade up`, or by the first node that needs it) and then reused, so
//! clients that pinned it keep working across restarts.

use std::fs;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{anyhow, bail, Context, Result};
use palisade_config::Config;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Paths of the certificate chain and key this config uses.
pub fn cert_paths(config: &Config) -> (PathBuf, PathBuf) {
    match (&config.gateway.tls_cert, &config.gateway.tls_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => {
            let dir = config.gateway.data_dir.join("tls");
            (dir.join("cert.pem"), dir.join("key.pem"))
        }
    }
}

/// Creates a self-signed certificate for `hostname` unless one exists.
/// Returns true when it generated one.
pub fn ensure_self_signed(cert: &Path, key: &Path, hostname: &str) -> Result<bool> {
    let ready = || cert.exists() && key.exists();
    if ready() {
        return Ok(false);
    }
    let dir = cert.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Several nodes may start at once: one generates, the others wait for
    // its pair (two generators would leave a key that does not match the
    // certificate). A lock left by a crashed generator expires.
    let lock = dir.join(".generating");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
        {
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if ready() && !lock.exists() {
                    return Ok(false);
                }
                let stale = fs::metadata(&lock)
                    .and_then(|m| m.modified())
                    .map(|t| t.elapsed().unwrap_or_default().as_secs() > 20)
                    .unwrap_or(false);
                if stale || std::time::Instant::now() > deadline {
                    let _ = fs::remove_file(&lock);
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => return Err(e).with_context(|| format!("creating {}", lock.display())),
        }
    }
    let result = (|| -> Result<bool> {
        if ready() {
            return Ok(false); // another node finished while we waited
        }
        let names = vec![hostname.to_string(), "localhost".to_string()];
        let ck = rcgen::generate_simple_self_signed(names).context("generating a certificate")?;
        // Replaced whole: a reader never sees half a file. The key first:
        // a certificate is only ever there with its key.
        let replace = palisade_queue::durable::replace_file;
        replace(key, ck.key_pair.serialize_pem().as_bytes(), Some(0o600))?;
        replace(cert, ck.cert.pem().as_bytes(), Some(0o644))?;
        Ok(true)
    })();
    let _ = fs::remove_file(&lock);
    result
}

/// The node's certificate and key, read from the files `config` names.
fn certified_key(config: &Config) -> Result<Arc<CertifiedKey>> {
    let (cert, key) = cert_paths(config);
    if config.gateway.tls_cert.is_none() {
        ensure_self_signed(&cert, &key, &config.gateway.hostname)?;
    }
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut BufReader::new(
        fs::File::open(&cert).with_context(|| format!("opening {}", cert.display()))?,
    ))
    .collect::<Result<_, _>>()
    .with_context(|| format!("reading {}", cert.display()))?;
    if certs.is_empty() {
        bail!("no certificate in {}", cert.display());
    }
    let key_der: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut BufReader::new(
        fs::File::open(&key).with_context(|| format!("opening {}", key.display()))?,
    ))?
    .ok_or_else(|| anyhow!("no private key in {}", key.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(certs, key_der, &provider)
        .with_context(|| format!("{} and {} do not match", cert.display(), key.display()))?;
    Ok(Arc::new(certified))
}

/// The certificate every TLS listener of a node presents, swapped by a
/// reload: a handshake picks the current one, so new sessions get the
/// renewed certificate and open ones keep theirs.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap().clone())
    }
}

/// A node's server-side TLS: one rustls configuration for SMTP (STARTTLS
/// and implicit), POP3S and IMAPS, with a certificate [`reload`] can
/// replace (certbot renews, then `systemctl reload`).
///
/// [`reload`]: NodeTls::reload
#[derive(Clone)]
pub struct NodeTls {
    pub config: Arc<rustls::ServerConfig>,
    current: Arc<Current>,
}

impl NodeTls {
    /// Reads the certificate and key (call while still privileged: the
    /// key may be readable by root only).
    pub fn load(config: &Config) -> Result<NodeTls> {
        let current = Arc::new(Current(RwLock::new(certified_key(config)?)));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        Ok(NodeTls {
            config: Arc::new(cfg),
            current,
        })
    }

    /// Reads the files `config` names again; an unreadable or mismatched
    /// pair leaves the running certificate in place (the error says why).
    pub fn reload(&self, config: &Config) -> Result<()> {
        let fresh = certified_key(config)?;
        *self.current.0.write().unwrap() = fresh;
        Ok(())
    }
}

/// The server-side TLS configuration for this architecture.
pub fn server_config(config: &Config) -> Result<Arc<rustls::ServerConfig>> {
    Ok(NodeTls::load(config)?.config)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many nodes starting at once end up with one matching pair.
    #[test]
    fn concurrent_generation_yields_one_matching_pair() {
        let dir = std::env::temp_dir().join(format!("palisade-tls-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let generated: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| ensure_self_signed(&cert, &key, "h.test").unwrap()))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap() as usize)
                .sum()
        });
        assert_eq!(generated, 1);
        let certs: Vec<CertificateDer<'static>> =
            rustls_pemfile::certs(&mut BufReader::new(fs::File::open(&cert).unwrap()))
                .collect::<Result<_, _>>()
                .unwrap();
        let k = rustls_pemfile::private_key(&mut BufReader::new(fs::File::open(&key).unwrap()))
            .unwrap()
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, k)
            .expect("key matches certificate");
        let _ = fs::remove_dir_all(&dir);
    }
}
