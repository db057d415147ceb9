//! DANE for SMTP (RFC 7672): a destination whose MX hosts publish TLSA
//! records in DNSSEC-signed zones gets STARTTLS or nothing, with the
//! server's certificate checked against those records — an active
//! attacker can neither strip STARTTLS nor present another certificate.
//!
//! The DNS side lives here, the certificate side in
//! `palisade_smtp_client::dane_tls_config`; crate::tls_policy decides how
//! DANE ranks against MTA-STS and the configuration.
//!
//! - §2.1: only answers that validate from our trust anchors count
//!   (crate::resolve::dnssec validates itself, never trusting the AD bit).
//!   Insecure (provably unsigned) = no DANE; bogus or indeterminate = a
//!   temporary failure: the message stays queued.
//! - §2.2.1: DANE applies only when the MX RRset is secure (or, with no MX,
//!   its secure denial makes the domain its own MX host); only host names
//!   from that RRset are used.
//! - §2.2.2: the TLSA RRset of a host is looked up only when the host's
//!   address records are secure; at `_<port>._tcp.<base>` (RFC 6698 §3:
//!   `_25._tcp` on the Internet), CNAMEs followed only when secure (§2.2.3,
//!   done by the validating lookup: every CNAME on the way must be secure).
//!   The TLSA base domain is the host's fully CNAME-expanded name when the
//!   host is an alias and TLSA records are found there, the MX host name
//!   otherwise; the certificate name check (DANE-TA) accepts either.
//! - §2.2: a TLSA RRset with no usable record still means TLS is required
//!   ("encrypt", unauthenticated); a failed TLSA lookup means the host is
//!   not used.
//! - §3.1.3: PKIX-TA(0) / PKIX-EE(1) records are unusable for SMTP.

use std::net::SocketAddr;

use palisade_config::DaneSettings;
use palisade_smtp_client::Tlsa;

use crate::resolve::dnssec::{trust_anchors, ValidatingResolver, ValidationError, TLSA};

/// What DANE says about a destination domain (RFC 7672 §2.2.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainDane {
    /// The MX RRset is provably unsigned: DANE does not apply.
    Insecure,
    /// The MX RRset (or its denial) is secure: these host names (lower
    /// case, no trailing dot) are the authenticated MX hosts.
    Secure(Vec<String>),
}

/// What DANE says about one MX host (RFC 7672 §2.2, §2.2.2).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostDane {
    /// No TLSA RRset (securely denied), or the host's addresses or TLSA
    /// records are unsigned: nothing to authenticate the host with.
    NoTlsa,
    /// A TLSA RRset where no record is usable: TLS is still mandatory, the
    /// certificate is not checked ("encrypt", §2.2).
    Encrypt,
    /// The usable records: TLS mandatory, certificate matched against them.
    /// `names`: the TLSA base domain first (the SNI name), then the MX
    /// host name when it differs — the names DANE-TA accepts (§3.2.2).
    Authenticate { tlsa: Vec<Tlsa>, names: Vec<String> },
}

/// The DNSSEC-validating side of DANE.
#[derive(Clone)]
pub struct Dane {
    dns: ValidatingResolver,
}

impl Dane {
    /// None when DANE is disabled in the configuration.
    pub fn new(
        server: Option<SocketAddr>,
        settings: &DaneSettings,
    ) -> anyhow::Result<Option<Dane>> {
        if !settings.enabled {
            return Ok(None);
        }
        let anchors = trust_anchors(settings.trust_anchor_file.as_deref())?;
        Ok(Some(Dane {
            dns: ValidatingResolver::new(server, anchors)?,
        }))
    }

    /// Whether the root zone's DNSKEY RRset validates through the
    /// configured resolver: if not (a resolver that strips DNSSEC records,
    /// or a lab DNS without a root), every lookup outside the zones of
    /// `trust_anchor_file` will be bogus and mail to them deferred.
    pub async fn check_root(&self) -> Result<(), ValidationError> {
        let v = self
            .dns
            .lookup(".", hickory_resolver::proto::rr::RecordType::DNSKEY)
            .await?;
        if v.is_secure() && !v.value.is_empty() {
            Ok(())
        } else {
            Err(ValidationError::Bogus {
                name: ".".into(),
                rtype: hickory_resolver::proto::rr::RecordType::DNSKEY,
                why: "the root DNSKEY RRset is not secure".into(),
            })
        }
    }

    /// §2.2.1: the security of the MX RRset of `domain`.
    pub async fn domain(&self, domain: &str) -> Result<DomainDane, ValidationError> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let mx = self.dns.mx(&domain).await?;
        if !mx.is_secure() {
            return Ok(DomainDane::Insecure);
        }
        let hosts: Vec<String> = mx.value.into_iter().map(|(_, host)| host).collect();
        Ok(DomainDane::Secure(if hosts.is_empty() {
            // A secure "no MX": the domain is its own (implicit) MX host.
            vec![domain]
        } else {
            hosts
        }))
    }

    /// §2.2.2, §2.2: the TLSA policy of MX host `host` reached on `port`.
    /// An error means the host must not be used (temporary failure).
    pub async fn host(&self, host: &str, port: u16) -> Result<HostDane, ValidationError> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let (addresses, expanded) = self.dns.addresses_expanded(&host).await?;
        if !addresses.is_secure() {
            // §2.2.2: unsigned addresses: the TLSA lookup is skipped.
            return Ok(HostDane::NoTlsa);
        }
        // §2.2.2: an alias's TLSA records are looked for at its expanded
        // name first; found nowhere there (or unsigned), at the MX name.
        let mut bases = vec![expanded];
        if bases[0] != host {
            bases.push(host.clone());
        }
        for (i, base) in bases.iter().enumerate() {
            let tlsa = self.dns.tlsa(&tlsa_name(base, port)).await?;
            if !tlsa.is_secure() || tlsa.value.is_empty() {
                continue;
            }
            let usable: Vec<Tlsa> = tlsa
                .value
                .iter()
                .map(from_dns)
                .filter(Tlsa::is_usable)
                .collect();
            if usable.is_empty() {
                return Ok(HostDane::Encrypt);
            }
            let mut names = vec![base.clone()];
            if i == 0 && bases.len() > 1 {
                names.push(host.clone());
            }
            return Ok(HostDane::Authenticate {
                tlsa: usable,
                names,
            });
        }
        Ok(HostDane::NoTlsa)
    }
}

/// The TLSA owner name of a TCP service (RFC 6698 §3).
pub fn tlsa_name(host: &str, port: u16) -> String {
    format!("_{port}._tcp.{}", host.trim_end_matches('.'))
}

fn from_dns(t: &TLSA) -> Tlsa {
    Tlsa {
        usage: t.cert_usage.into(),
        selector: t.selector.into(),
        matching: t.matching.into(),
        data: t.cert_data.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tlsa_names_and_dns_records() {
        assert_eq!(tlsa_name("mx.example.org.", 25), "_25._tcp.mx.example.org");
        let r = from_dns(&TLSA::new(3.into(), 1.into(), 1.into(), vec![7; 32]));
        assert_eq!((r.usage, r.selector, r.matching), (3, 1, 1));
        assert!(r.is_usable());
        let pkix = from_dns(&TLSA::new(1.into(), 1.into(), 1.into(), vec![7; 32]));
        assert!(
            !pkix.is_usable(),
            "PKIX-EE is unusable for SMTP (RFC 7672 §3.1.3)"
        );
    }
}
