//! MTA-STS (RFC 8461): a domain says "my MX hosts are these, they speak
//! STARTTLS with a WebPKI-valid certificate" through a DNS TXT record
//! (`_mta-sts.<domain>`: `v=STSv1; id=...`) and a policy file fetched over
//! verified HTTPS (`https://mta-sts.<domain>/.well-known/mta-sts.txt`).
//!
//! This module discovers, fetches, parses and caches policies; deliver.rs
//! applies them (enforce: only matching MX hosts, STARTTLS required, the
//! certificate verified against the MX name, failure = temporary;
//! testing: deliver anyway, count the failure, TLSRPT-style).
//!
//! - The fetch is one fixed GET over tokio-rustls (no HTTP client crate):
//!   verified TLS (`roots`), no redirects (RFC 8461 §3.3: 3xx is a
//!   failure), at most [`MAX_POLICY_BYTES`], [`FETCH_TIMEOUT`] in all.
//! - Policies are cached per domain until `max_age` and persisted in the
//!   node's data dir (`mta-sts.json`) so a restart keeps them (§5.1: a
//!   cached policy protects against an attacker who blocks the fetch).
//!   The TXT id is looked up again at most every `outbound.mta_sts_recheck`
//!   (5 min); a new id means a refetch (§3.3, §5.1), a failed refetch
//!   keeps the cached policy (and is tried again at the next recheck).
//! - Without a TXT record and without a cached policy: no policy (§3.2).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use crate::resolve::DnsResolver;

/// Largest policy file accepted (RFC 8461 §3.2 suggests 64 KiB).
pub const MAX_POLICY_BYTES: usize = 64 * 1024;
/// Whole fetch: connect, handshake, request and response (§3.3: "a short
/// timeout", e.g. a minute; ours is shorter since delivery waits for it).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Domains whose last TXT lookup time is remembered (then forgotten at once).
const MAX_DOMAINS_TRACKED: usize = 100_000;
/// max_age ceiling (§3.2: up to 31557600 s, one year).
const MAX_AGE_CAP: u64 = 31_557_600;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Enforce,
    Testing,
    None,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub mode: Mode,
    /// MX patterns: `mx.example.com` or `*.example.com` (one label).
    pub mx: Vec<String>,
    pub max_age: u64,
}

impl Policy {
    /// RFC 8461 §4.1: the MX host name matches one of the patterns; a
    /// wildcard matches exactly one leftmost label.
    pub fn allows_mx(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx.iter().any(|p| {
            let p = p.trim_end_matches('.').to_ascii_lowercase();
            match p.strip_prefix("*.") {
                Some(suffix) => host
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
                None => host == p,
            }
        })
    }
}

/// Parses a policy file (RFC 8461 §3.2): `key: value` lines, CRLF or LF;
/// `version: STSv1`, `mode`, `max_age` required, `mx` required unless
/// mode is none; unknown keys ignored.
pub fn parse_policy(text: &str) -> Result<Policy, String> {
    let (mut version, mut mode, mut max_age, mut mx) = (None, None, None, Vec::new());
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let Some((k, v)) = line.split_once(':') else {
            return Err(format!("not a key: value line: {line:?}"));
        };
        let v = v.trim();
        match k.trim() {
            "version" => version = Some(v.to_string()),
            "mode" => {
                mode = Some(match v {
                    "enforce" => Mode::Enforce,
                    "testing" => Mode::Testing,
                    "none" => Mode::None,
                    other => return Err(format!("unknown mode {other:?}")),
                })
            }
            "max_age" => {
                let n: u64 = v
                    .parse()
                    .ok()
                    .filter(|_| v.len() <= 10 && v.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| format!("bad max_age {v:?}"))?;
                max_age = Some(n.min(MAX_AGE_CAP));
            }
            "mx" => mx.push(v.to_ascii_lowercase()),
            _ => {}
        }
    }
    if version.as_deref() != Some("STSv1") {
        return Err("version is not STSv1".into());
    }
    let mode = mode.ok_or("no mode")?;
    let max_age = max_age.ok_or("no max_age")?;
    if mx.is_empty() && mode != Mode::None {
        return Err("no mx pattern".into());
    }
    Ok(Policy { mode, mx, max_age })
}

/// The `id` of a `_mta-sts` TXT record (RFC 8461 §3.1), if it is one.
pub fn record_id(txt: &str) -> Option<String> {
    let mut tags = txt.split(';').map(str::trim);
    if tags.next() != Some("v=STSv1") {
        return None;
    }
    tags.find_map(|t| t.strip_prefix("id="))
        .map(str::trim)
        .filter(|id| {
            !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric())
        })
        .map(str::to_string)
}

/// One domain's cached policy, as persisted.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Cached {
    id: String,
    policy: Policy,
    /// Unix seconds when the policy expires (fetch time + max_age).
    expires: u64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Why a policy could not be had (TLSRPT result types, RFC 8460 §4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchFailure {
    FetchError,
    Invalid,
}

impl FetchFailure {
    pub fn label(self) -> &'static str {
        match self {
            FetchFailure::FetchError => "sts-policy-fetch-error",
            FetchFailure::Invalid => "sts-policy-invalid",
        }
    }
}

pub struct StsCache {
    file: PathBuf,
    policies: Mutex<HashMap<String, Cached>>,
    /// Held while the cache file is written (see `store`).
    writing: Mutex<()>,
    /// When each domain's TXT record was last looked up.
    checked: Mutex<HashMap<String, Instant>>,
    /// Per-domain turn for discovery and fetch.
    in_flight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    roots: Arc<rustls::ClientConfig>,
    /// HTTPS port of `mta-sts.<domain>` (443; tests and labs: any).
    port: u16,
    /// How often a domain's TXT id is looked up again.
    recheck: Duration,
}

impl StsCache {
    /// Loads the persisted cache (`file`); a missing or unreadable file is
    /// an empty cache.
    pub fn new(
        file: PathBuf,
        tls: Arc<rustls::ClientConfig>,
        port: u16,
        recheck: Duration,
    ) -> StsCache {
        let policies = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        StsCache {
            file,
            policies: Mutex::new(policies),
            writing: Mutex::default(),
            checked: Mutex::default(),
            in_flight: Mutex::default(),
            roots: tls,
            port,
            recheck,
        }
    }

    /// The policy in force for `domain`, with the failure to count when a
    /// refetch failed (the cached policy, if any, still applies).
    pub async fn policy(
        &self,
        domain: &str,
        dns: &DnsResolver,
    ) -> (Option<Policy>, Option<FetchFailure>) {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        // One discovery per domain at a time: messages arriving while the
        // policy is fetched wait for it instead of going out unprotected.
        let gate = self
            .in_flight
            .lock()
            .unwrap()
            .entry(domain.clone())
            .or_default()
            .clone();
        let _turn = gate.lock().await;
        let now = unix_now();
        let cached = self
            .policies
            .lock()
            .unwrap()
            .get(&domain)
            .filter(|c| c.expires > now)
            .cloned();
        let recheck = self
            .checked
            .lock()
            .unwrap()
            .get(&domain)
            .is_none_or(|t| t.elapsed() >= self.recheck);
        if !recheck {
            return (cached.map(|c| c.policy), None);
        }
        {
            let mut checked = self.checked.lock().unwrap();
            if checked.len() >= MAX_DOMAINS_TRACKED {
                // Bounded memory: forgetting only means an earlier TXT lookup.
                checked.clear();
                self.in_flight.lock().unwrap().clear();
            }
            checked.insert(domain.clone(), Instant::now());
        }
        let id = match dns.txt(&format!("_mta-sts.{domain}")).await {
            Ok(txts) => txts.iter().find_map(|t| record_id(t)),
            // DNS trouble: what we knew stays in force (§5.1).
            Err(_) => return (cached.map(|c| c.policy), None),
        };
        let Some(id) = id else {
            // No record: a cached policy stays until it expires.
            return (cached.map(|c| c.policy), None);
        };
        if let Some(c) = &cached {
            if c.id == id {
                return (Some(c.policy.clone()), None);
            }
        }
        match self.fetch(&domain, dns).await {
            Ok(policy) => {
                info!(
                    "MTA-STS {domain}: policy id {id} mode {:?}, mx {:?}, max_age {}",
                    policy.mode, policy.mx, policy.max_age
                );
                let entry = Cached {
                    id,
                    expires: now + policy.max_age,
                    policy: policy.clone(),
                };
                self.store(&domain, entry);
                (Some(policy), None)
            }
            Err((failure, why)) => {
                warn!("MTA-STS {domain}: policy fetch failed: {why}");
                // Retry the fetch at the next recheck, not at every message.
                (cached.map(|c| c.policy), Some(failure))
            }
        }
    }

    fn store(&self, domain: &str, entry: Cached) {
        // One writer at a time, snapshot and file together: a later
        // snapshot is never overwritten by an earlier one.
        let _writing = self.writing.lock().unwrap();
        let snapshot = {
            let mut p = self.policies.lock().unwrap();
            p.insert(domain.to_string(), entry);
            let now = unix_now();
            p.retain(|_, c| c.expires > now);
            serde_json::to_vec_pretty(&*p).unwrap_or_default()
        };
        if let Err(e) = palisade_queue::durable::replace_file(&self.file, &snapshot, None) {
            warn!("cannot persist MTA-STS cache {}: {e}", self.file.display());
        }
    }

    async fn fetch(
        &self,
        domain: &str,
        dns: &DnsResolver,
    ) -> Result<Policy, (FetchFailure, String)> {
        let host = format!("mta-sts.{domain}");
        let body = tokio::time::timeout(FETCH_TIMEOUT, self.get(&host, dns))
            .await
            .map_err(|_| {
                (
                    FetchFailure::FetchError,
                    format!("timeout after {FETCH_TIMEOUT:?}"),
                )
            })?
            .map_err(|e| (FetchFailure::FetchError, e))?;
        let text = String::from_utf8(body)
            .map_err(|_| (FetchFailure::Invalid, "policy is not UTF-8".to_string()))?;
        parse_policy(&text).map_err(|e| (FetchFailure::Invalid, e))
    }

    /// `GET /.well-known/mta-sts.txt` on `host`, certificate verified
    /// against `host`; the body of a 200 text/plain answer.
    async fn get(&self, host: &str, dns: &DnsResolver) -> Result<Vec<u8>, String> {
        let addrs = dns.addresses(host).await.map_err(|e| e.to_string())?;
        let name =
            rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
        let mut last = format!("{host}: no address");
        for ip in addrs {
            let addr = SocketAddr::new(ip, self.port);
            let tcp = match tokio::net::TcpStream::connect(addr).await {
                Ok(t) => t,
                Err(e) => {
                    last = format!("{host}[{addr}]: {e}");
                    continue;
                }
            };
            let connector = tokio_rustls::TlsConnector::from(self.roots.clone());
            let mut tls = connector
                .connect(name.clone(), tcp)
                .await
                .map_err(|e| format!("{host}[{addr}]: TLS: {e}"))?;
            let req = format!(
                "GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: {host}\r\n\
                 User-Agent: palisade\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
            );
            tls.write_all(req.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut raw = Vec::new();
            let mut buf = [0u8; 8192];
            loop {
                let n = match tls.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => n,
                    // Servers that close without close_notify: keep what came.
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e.to_string()),
                };
                raw.extend_from_slice(&buf[..n]);
                if raw.len() > MAX_POLICY_BYTES + 16 * 1024 {
                    return Err(format!("answer larger than {MAX_POLICY_BYTES} bytes"));
                }
            }
            return http_body(&raw);
        }
        Err(last)
    }
}

/// The body of an HTTP/1.x response that must be `200` with a
/// `text/plain` content type (no redirects, RFC 8461 §3.3); Content-Length,
/// chunked, or read-to-close bodies.
pub fn http_body(raw: &[u8]) -> Result<Vec<u8>, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no complete HTTP header")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "HTTP header is not text")?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let code = status.split_whitespace().nth(1).unwrap_or_default();
    if !status.starts_with("HTTP/1.") || code != "200" {
        return Err(format!(
            "HTTP answer {status:?} (redirects are not followed)"
        ));
    }
    let mut length = None;
    let mut chunked = false;
    let mut plain = false;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim().to_ascii_lowercase();
        match k.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = v.parse::<usize>().ok(),
            "transfer-encoding" => chunked = v.contains("chunked"),
            "content-type" => plain = v.split(';').next().map(str::trim) == Some("text/plain"),
            _ => {}
        }
    }
    if !plain {
        return Err("policy is not served as text/plain".into());
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        rest.get(..n)
            .ok_or("body shorter than Content-Length")?
            .to_vec()
    } else {
        rest.to_vec()
    };
    if body.len() > MAX_POLICY_BYTES {
        return Err(format!("policy larger than {MAX_POLICY_BYTES} bytes"));
    }
    Ok(body)
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk")?;
        let size = std::str::from_utf8(&rest[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .ok_or("bad chunk size")?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(rest.get(..size).ok_or("truncated chunk")?);
        if body.len() > MAX_POLICY_BYTES {
            return Err(format!("policy larger than {MAX_POLICY_BYTES} bytes"));
        }
        rest = rest.get(size + 2..).ok_or("truncated chunk")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_policy() {
        let p = parse_policy(
            "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 604800\r\n",
        )
        .unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.max_age, 604800);
        assert!(p.allows_mx("mail.example.com."));
        assert!(p.allows_mx("MX1.example.net"));
        assert!(!p.allows_mx("a.b.example.net"), "a wildcard is one label");
        assert!(!p.allows_mx("example.net"));
        assert!(!p.allows_mx("evil.com"));
        assert_eq!(
            parse_policy("version: STSv1\nmode: testing\nmx: a.test\nmax_age: 99999999999")
                .map(|p| p.mode),
            Err("bad max_age \"99999999999\"".into())
        );
        assert!(parse_policy("version: STSv2\nmode: enforce\nmx: a\nmax_age: 1").is_err());
        assert!(parse_policy("version: STSv1\nmode: enforce\nmax_age: 1").is_err());
        assert!(parse_policy("version: STSv1\nmode: strict\nmx: a\nmax_age: 1").is_err());
        assert_eq!(
            parse_policy("version: STSv1\nmode: none\nmax_age: 86400")
                .unwrap()
                .mode,
            Mode::None
        );
    }

    #[test]
    fn record_ids() {
        assert_eq!(
            record_id("v=STSv1; id=20260101T000000;").as_deref(),
            Some("20260101T000000")
        );
        assert_eq!(record_id("v=STSv1;"), None);
        assert_eq!(record_id("v=spf1 -all"), None);
        assert_eq!(record_id("v=STSv1; id=bad id"), None);
    }

    #[test]
    fn http_answers() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 5\r\n\r\nhelloEXTRA";
        assert_eq!(http_body(ok).unwrap(), b"hello");
        let chunked = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(http_body(chunked).unwrap(), b"abcde");
        let redirect =
            b"HTTP/1.1 301 Moved\r\nLocation: https://evil/\r\nContent-Type: text/plain\r\n\r\n";
        assert!(http_body(redirect).unwrap_err().contains("redirects"));
        let html = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\nx";
        assert!(http_body(html).is_err());
    }
}
