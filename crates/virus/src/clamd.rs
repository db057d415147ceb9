//! DM28: scanning with clamd (INSTREAM), several daemons with failover.
//!
//! Daemons are tried in order starting with the one that last answered,
//! so a dead daemon costs one failed connection per switch, not one per
//! message. A daemon that answers `... ERROR` (size limit, internal error)
//! counts as failed for that message and the next one is tried.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clamav_client::tokio as clamav;

/// Where a clamd listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClamdAddress {
    Tcp(String),
    Unix(PathBuf),
}

impl ClamdAddress {
    /// `host:port` or `unix:/path`.
    pub fn parse(s: &str) -> ClamdAddress {
        match s.strip_prefix("unix:") {
            Some(p) => ClamdAddress::Unix(PathBuf::from(p)),
            None => ClamdAddress::Tcp(s.to_string()),
        }
    }
}

impl std::fmt::Display for ClamdAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClamdAddress::Tcp(a) => f.write_str(a),
            ClamdAddress::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanOutcome {
    Clean,
    /// The signature name clamd reported.
    Infected(String),
}

/// No daemon could scan the message: temporary by nature.
#[derive(Debug, thiserror::Error)]
#[error("no clamd could scan the message: {}", .0.join("; "))]
pub struct ScanError(pub Vec<String>);

pub struct Scanner {
    addresses: Vec<ClamdAddress>,
    timeout: Duration,
    /// Index of the daemon that answered last.
    preferred: AtomicUsize,
}

impl Scanner {
    pub fn new(addresses: Vec<ClamdAddress>, timeout: Duration) -> Scanner {
        Scanner {
            addresses,
            timeout,
            preferred: AtomicUsize::new(0),
        }
    }

    pub fn addresses(&self) -> &[ClamdAddress] {
        &self.addresses
    }

    /// Scans `data`, failing over between daemons.
    pub async fn scan(&self, data: &[u8]) -> Result<(ScanOutcome, &ClamdAddress), ScanError> {
        let n = self.addresses.len();
        let start = self.preferred.load(Ordering::Relaxed);
        let mut errors = Vec::new();
        for i in 0..n {
            let idx = (start + i) % n;
            let addr = &self.addresses[idx];
            match tokio::time::timeout(self.timeout, scan_one(addr, data)).await {
                Ok(Ok(outcome)) => {
                    if idx != start {
                        tracing::warn!("clamd {addr} takes over (failover)");
                    }
                    self.preferred.store(idx, Ordering::Relaxed);
                    return Ok((outcome, addr));
                }
                Ok(Err(e)) => errors.push(format!("{addr}: {e}")),
                Err(_) => errors.push(format!("{addr}: no answer within {:?}", self.timeout)),
            }
        }
        if errors.is_empty() {
            errors.push("no clamd address configured".into());
        }
        Err(ScanError(errors))
    }

    /// PING every daemon: which answer PONG.
    pub async fn ping_all(&self) -> Vec<(ClamdAddress, bool)> {
        let mut out = Vec::new();
        for a in &self.addresses {
            let ok = tokio::time::timeout(Duration::from_secs(2), ping(a))
                .await
                .map(|r| r.unwrap_or(false))
                .unwrap_or(false);
            out.push((a.clone(), ok));
        }
        out
    }
}

async fn ping(addr: &ClamdAddress) -> std::io::Result<bool> {
    let r = match addr {
        ClamdAddress::Tcp(a) => {
            clamav::ping(clamav::Tcp {
                host_address: a.as_str(),
            })
            .await?
        }
        ClamdAddress::Unix(p) => clamav::ping(clamav::Socket { socket_path: p }).await?,
    };
    Ok(r == clamav_client::PONG)
}

async fn scan_one(addr: &ClamdAddress, data: &[u8]) -> Result<ScanOutcome, String> {
    let response = match addr {
        ClamdAddress::Tcp(a) => {
            clamav::scan_buffer(
                data,
                clamav::Tcp {
                    host_address: a.as_str(),
                },
                None,
            )
            .await
        }
        ClamdAddress::Unix(p) => {
            clamav::scan_buffer(data, clamav::Socket { socket_path: p }, None).await
        }
    }
    .map_err(|e| e.to_string())?;
    parse_response(&response)
}

/// `stream: OK`, `stream: NAME FOUND`, or `... ERROR`.
pub fn parse_response(response: &[u8]) -> Result<ScanOutcome, String> {
    let text = String::from_utf8_lossy(response);
    let text = text.trim_end_matches(['\0', '\n', '\r']).trim();
    let body = text.strip_prefix("stream:").unwrap_or(text).trim();
    if body == "OK" {
        return Ok(ScanOutcome::Clean);
    }
    if let Some(name) = body.strip_suffix(" FOUND") {
        return Ok(ScanOutcome::Infected(name.trim().to_string()));
    }
    if body.is_empty() {
        return Err("empty answer (connection closed)".into());
    }
    Err(format!("clamd said: {body}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_understood() {
        assert_eq!(parse_response(b"stream: OK\0"), Ok(ScanOutcome::Clean));
        assert_eq!(
            parse_response(b"stream: Eicar-Test-Signature.UNOFFICIAL FOUND\0"),
            Ok(ScanOutcome::Infected(
                "Eicar-Test-Signature.UNOFFICIAL".into()
            ))
        );
        assert!(parse_response(b"INSTREAM size limit exceeded. ERROR\0").is_err());
        assert!(parse_response(b"").is_err());
    }

    #[tokio::test]
    async fn no_daemon_is_a_scan_error_naming_each_address() {
        // Port 1 on loopback: nothing listens there.
        let s = Scanner::new(
            vec![
                ClamdAddress::parse("127.0.0.1:1"),
                ClamdAddress::parse("unix:/nonexistent/clamd.sock"),
            ],
            Duration::from_secs(2),
        );
        let e = s.scan(b"hello").await.unwrap_err();
        assert_eq!(e.0.len(), 2);
        assert!(e.0[1].starts_with("unix:/nonexistent"));
    }
}
