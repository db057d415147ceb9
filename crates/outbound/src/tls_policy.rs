//! TLS policy towards a destination domain, strictest rule first:
//!
//! 0. DANE (RFC 7672, crate::dane), when the domain's MX RRset is
//!    DNSSEC-secure and at least one of its MX hosts has a secure TLSA
//!    RRset: it takes precedence over MTA-STS (RFC 8461 §2) and over the
//!    configuration. Hosts with usable TLSA records get STARTTLS with the
//!    certificate matched against them, hosts with only unusable records
//!    STARTTLS unchecked; a host without TLSA gets what the domain would
//!    get without DANE from `require_tls`, else opportunistic STARTTLS
//!    (RFC 7672 §2.2, as Postfix's `dane` level).
//! 1. `require_tls` in the config: STARTTLS or nothing (never a plaintext
//!    fallback); with `verify = true` the certificate must also verify
//!    against the MX host name.
//! 2. MTA-STS (RFC 8461, crate::mta_sts): `enforce` = only MX hosts that
//!    match the policy, STARTTLS with a verified certificate, failure is
//!    temporary; `testing` = deliver anyway, count the failure.
//! 3. Otherwise opportunistic STARTTLS, unverified (RFC 7435: there is no
//!    name to verify against that an attacker could not have forged).
//!
//! Verified TLS trusts the WebPKI roots (webpki-root-certs) plus the
//! optional `outbound.ca_file`.

use std::collections::HashMap;
use std::sync::Arc;

use palisade_config::OutboundSettings;
use palisade_smtp_client::{verifying_tls_config, ClientError, DANE_NO_MATCH};

use crate::dane::{Dane, DomainDane, HostDane};
use crate::mta_sts::{FetchFailure, Mode, Policy, StsCache};
use crate::resolve::dnssec::ValidationError;
use crate::resolve::DnsResolver;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsPolicy {
    /// STARTTLS when offered, plaintext otherwise.
    Opportunistic,
    /// STARTTLS or nothing; `why` names the rule, `verify` asks for a
    /// certificate valid for the MX host name.
    Required { why: String, verify: bool },
    /// The domain's MTA-STS policy in `enforce` or `testing` mode.
    Sts(Policy),
    /// DANE governs the domain (RFC 7672).
    Dane(DanePolicy),
}

/// The DANE verdict for each authenticated MX host of a domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DanePolicy {
    /// By MX host name (lower case): its TLSA policy, or why its DNSSEC
    /// lookups failed (the host is then not used, RFC 7672 §2.2).
    pub hosts: HashMap<String, Result<HostDane, String>>,
    /// `require_tls` for the domain (Some(verify)): what hosts without
    /// usable TLSA records get instead of opportunistic STARTTLS.
    pub require_tls: Option<bool>,
}

impl DanePolicy {
    /// The verdict for `host`; None when it is not an MX host of the
    /// secure MX RRset (RFC 7672 §2.2.1: such a host is never used).
    pub fn host(&self, host: &str) -> Option<&Result<HostDane, String>> {
        self.hosts
            .get(host.trim_end_matches('.').to_ascii_lowercase().as_str())
    }
}

/// A DANE lookup that failed for the whole domain: its MX RRset is bogus
/// or could not be fetched (RFC 7672 §2.1: the message stays queued).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaneFailure(pub ValidationError);

impl TlsPolicy {
    /// The metrics label of the rule (TLSRPT-style failure counters).
    pub fn label(&self) -> &'static str {
        match self {
            TlsPolicy::Opportunistic => "opportunistic",
            TlsPolicy::Required { .. } => "require-tls",
            TlsPolicy::Sts(p) if p.mode == Mode::Enforce => "mta-sts-enforce",
            TlsPolicy::Sts(_) => "mta-sts-testing",
            TlsPolicy::Dane(_) => DANE_LABEL,
        }
    }
}

/// The metrics label of DANE failures, also before a policy exists.
pub const DANE_LABEL: &str = "dane";

pub struct TlsPolicies {
    sts: Option<StsCache>,
    dane: Option<Dane>,
}

impl TlsPolicies {
    /// `sts`: the MTA-STS cache, None when `outbound.mta_sts = false`;
    /// `dane`: None when `outbound.dane.enabled = false`.
    pub fn new(sts: Option<StsCache>, dane: Option<Dane>) -> TlsPolicies {
        TlsPolicies { sts, dane }
    }

    pub fn dane(&self) -> Option<&Dane> {
        self.dane.as_ref()
    }

    /// RFC 7672: the DANE policy of `domain` whose MX hosts (from the
    /// ordinary lookup) are `mx_hosts`, reached on `port`. Ok(None): DANE
    /// does not apply (DANE disabled, unsigned MX RRset, or no MX host
    /// with TLSA records).
    pub async fn dane_policy(
        &self,
        domain: &str,
        settings: &OutboundSettings,
        mx_hosts: &[&str],
        port: u16,
    ) -> Result<Option<DanePolicy>, DaneFailure> {
        let Some(dane) = &self.dane else {
            return Ok(None);
        };
        let secure_hosts = match dane.domain(domain).await.map_err(DaneFailure)? {
            DomainDane::Insecure => return Ok(None),
            DomainDane::Secure(hosts) => hosts,
        };
        let mut hosts = HashMap::new();
        for name in mx_hosts {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if hosts.contains_key(&name) || !secure_hosts.contains(&name) {
                continue;
            }
            let verdict = dane.host(&name, port).await.map_err(|e| e.to_string());
            hosts.insert(name, verdict);
        }
        // DANE governs the domain once one MX host has a TLSA RRset (or
        // could have one: a failed lookup is not "no TLSA").
        let has_tlsa = hosts.values().any(|v| !matches!(v, Ok(HostDane::NoTlsa)));
        Ok(has_tlsa.then(|| DanePolicy {
            hosts,
            require_tls: settings.requires_tls(domain),
        }))
    }

    /// The policy for `domain`; `mx_route` is false for static routes and
    /// relays (the admin chose those hosts: MTA-STS MX patterns do not
    /// apply). The failure, if any, is a policy fetch that failed.
    pub async fn policy_for(
        &self,
        domain: &str,
        settings: &OutboundSettings,
        dns: &DnsResolver,
        mx_route: bool,
    ) -> (TlsPolicy, Option<FetchFailure>) {
        if let Some(verify) = settings.requires_tls(domain) {
            let why = "require_tls in the configuration".into();
            return (TlsPolicy::Required { why, verify }, None);
        }
        let Some(sts) = self.sts.as_ref().filter(|_| mx_route) else {
            return (TlsPolicy::Opportunistic, None);
        };
        match sts.policy(domain, dns).await {
            (Some(p), failure) if p.mode != Mode::None => (TlsPolicy::Sts(p), failure),
            (_, failure) => (TlsPolicy::Opportunistic, failure),
        }
    }
}

/// The rustls configuration for verified TLS: WebPKI roots plus the PEM
/// certificates of `ca_file`.
pub fn verified_tls(
    ca_file: Option<&std::path::Path>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned());
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("outbound.ca_file {}: {e}", path.display()))?;
        let mut n = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots
                .add(cert.map_err(|e| anyhow::anyhow!("outbound.ca_file {}: {e}", path.display()))?)
                .map_err(|e| anyhow::anyhow!("outbound.ca_file {}: {e}", path.display()))?;
            n += 1;
        }
        anyhow::ensure!(n > 0, "outbound.ca_file {}: no certificate", path.display());
    }
    Ok(verifying_tls_config(roots))
}

/// The TLSRPT result type (RFC 8460 §4.3) of a failed verified connection.
pub fn tlsrpt_result(e: &ClientError) -> &'static str {
    // rustls only hands us its message (Display, or Debug for some kinds).
    let why = match e {
        ClientError::TlsRequired => return "starttls-not-supported",
        ClientError::Tls(why) => why.to_ascii_lowercase(),
        _ => return "validation-failure",
    };
    let has = |words: &[&str]| words.iter().any(|w| why.contains(w));
    if why.contains(&DANE_NO_MATCH.to_ascii_lowercase()) {
        // RFC 8460 §4.3.2: none of the TLSA records matched.
        "tlsa-invalid"
    } else if has(&["not valid for name", "notvalidforname"]) {
        "certificate-host-mismatch"
    } else if has(&["expired"]) {
        "certificate-expired"
    } else if has(&["unknownissuer", "unknown issuer"]) {
        "certificate-not-trusted"
    } else {
        "validation-failure"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tlsrpt_result_types() {
        let tls = |s: &str| ClientError::Tls(s.into());
        assert_eq!(
            tlsrpt_result(&tls(
                "invalid peer certificate: certificate not valid for name \"mx.a\"; ..."
            )),
            "certificate-host-mismatch"
        );
        assert_eq!(
            tlsrpt_result(&tls("invalid peer certificate: UnknownIssuer")),
            "certificate-not-trusted"
        );
        assert_eq!(
            tlsrpt_result(&tls("invalid peer certificate: certificate expired: ...")),
            "certificate-expired"
        );
        assert_eq!(
            tlsrpt_result(&tls(&format!("unexpected error: {DANE_NO_MATCH}"))),
            "tlsa-invalid"
        );
        assert_eq!(
            tlsrpt_result(&ClientError::TlsRequired),
            "starttls-not-supported"
        );
        assert_eq!(
            tlsrpt_result(&ClientError::Timeout("TLS handshake")),
            "validation-failure"
        );
    }
}
