//! TLS policy towards a destination domain: opportunistic STARTTLS by
//! default; STARTTLS *required* (never a plaintext fallback) when the
//! config lists the domain in `require_tls`, or when the domain publishes
//! an MTA-STS record (RFC 8461 §3.1: TXT `_mta-sts.<domain>` = `v=STSv1;
//! id=...`).
//!
//! Not done (docs/outgoing.md): fetching the HTTPS policy file, so the
//! policy's `mode` and `mx` patterns are not read and certificates are
//! not verified against the WebPKI; DANE (RFC 7672) needs a validating
//! resolver and TLSA checks.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use palisade_config::OutboundSettings;

use crate::resolve::DnsResolver;

/// How long a domain's MTA-STS discovery result is kept.
const STS_CACHE_FOR: Duration = Duration::from_secs(3600);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsPolicy {
    /// STARTTLS when offered, plaintext otherwise.
    Opportunistic,
    /// STARTTLS or nothing; the string says which rule demands it.
    Required(String),
}

#[derive(Default)]
pub struct TlsPolicies {
    sts: Mutex<HashMap<String, (bool, Instant)>>,
}

impl TlsPolicies {
    pub async fn policy_for(
        &self,
        domain: &str,
        settings: &OutboundSettings,
        dns: &DnsResolver,
    ) -> TlsPolicy {
        if settings.requires_tls(domain) {
            return TlsPolicy::Required("require_tls in the configuration".into());
        }
        if settings.mta_sts && self.publishes_sts(domain, dns).await {
            return TlsPolicy::Required("the domain publishes MTA-STS (RFC 8461)".into());
        }
        TlsPolicy::Opportunistic
    }

    async fn publishes_sts(&self, domain: &str, dns: &DnsResolver) -> bool {
        let key = domain.to_ascii_lowercase();
        if let Some((v, at)) = self.sts.lock().unwrap().get(&key) {
            if at.elapsed() < STS_CACHE_FOR {
                return *v;
            }
        }
        match dns.txt(&format!("_mta-sts.{key}")).await {
            Ok(txts) => {
                let v = txts.iter().any(|t| is_sts_record(t));
                self.sts.lock().unwrap().insert(key, (v, Instant::now()));
                v
            }
            // Discovery failed: keep what we knew (RFC 8461 §5.1 uses the
            // cached policy), else no policy.
            Err(_) => self
                .sts
                .lock()
                .unwrap()
                .get(&key)
                .map(|(v, _)| *v)
                .unwrap_or(false),
        }
    }
}

/// RFC 8461 §3.1: the record starts with `v=STSv1` and carries an `id`.
pub fn is_sts_record(txt: &str) -> bool {
    let mut tags = txt.split(';').map(str::trim);
    tags.next() == Some("v=STSv1") && tags.any(|t| t.starts_with("id="))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sts_record_syntax() {
        assert!(is_sts_record("v=STSv1; id=20260101T000000;"));
        assert!(!is_sts_record("v=spf1 -all"));
        assert!(!is_sts_record("v=STSv1;"));
    }
}
