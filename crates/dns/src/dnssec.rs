//! DNSSEC-validated lookups (RFC 4033-4035) for DANE (RFC 7672).
//!
//! The validation is done here, by hickory's validating handle, from the
//! configured trust anchors (the IANA root KSKs, plus the admin's own
//! DNSKEYs): the AD bit of the upstream resolver is never trusted — on a
//! path we cannot authenticate it is one forged bit (RFC 6698 §4.1, RFC
//! 7672 §2.1). Every answer is classified the RFC 4035 §4.3 way:
//! secure (a chain of signatures from an anchor), insecure (provably
//! unsigned: no DS at a delegation on the way), or bogus / indeterminate,
//! which the caller must treat as a failure, never as "unsigned".

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::dnssec::{Proof, PublicKey, TrustAnchors};
use hickory_resolver::proto::op::ResponseCode;
pub use hickory_resolver::proto::rr::rdata::tlsa::{CertUsage, Matching, Selector, TLSA};
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use hickory_resolver::TokioResolver;

use crate::{fqdn, resolver_builder};

/// Whether an answer is authenticated (RFC 4035 §4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Security {
    /// Every record (and every CNAME on the way) chains to a trust anchor;
    /// for "no such record", the denial (NSEC/NSEC3) does.
    Secure,
    /// The name is provably in an unsigned zone.
    Insecure,
}

/// A validated answer: the records (empty for NXDOMAIN / NODATA) and how
/// far they can be trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validated<T> {
    pub security: Security,
    pub value: T,
}

impl<T> Validated<T> {
    pub fn is_secure(&self) -> bool {
        self.security == Security::Secure
    }
}

impl<T> Validated<Vec<T>> {
    /// The records `f` keeps, with the same security.
    fn filter_map<U>(self, f: impl FnMut(T) -> Option<U>) -> Validated<Vec<U>> {
        Validated {
            security: self.security,
            value: self.value.into_iter().filter_map(f).collect(),
        }
    }
}

/// CNAME hops followed to an MX host's addresses (a loop ends there).
const MAX_CNAME_HOPS: usize = 8;

/// Why a validated lookup has no answer to use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// Signatures are missing or do not verify where the chain of trust
    /// says they must (bogus), or the chain cannot be built
    /// (indeterminate). RFC 7672 §2.1: a temporary failure, never a
    /// reason to act as if the zone were unsigned.
    #[error("DNSSEC validation failed for {name} {rtype}: {why}")]
    Bogus {
        name: String,
        rtype: RecordType,
        why: String,
    },
    /// The DNS did not answer (timeout, SERVFAIL, REFUSED).
    #[error("DNS temporary failure looking up {name} {rtype}: {why}")]
    Temporary {
        name: String,
        rtype: RecordType,
        why: String,
    },
}

/// The trust anchors: the IANA root KSKs (hickory's built-in copy of
/// https://data.iana.org/root-anchors/, KSK-2017 and KSK-2024), plus the
/// DNSKEY records of `extra` (a zone file excerpt: `name [ttl] [IN]
/// DNSKEY flags 3 alg key`), e.g. to anchor a private or test zone.
pub fn trust_anchors(extra: Option<&Path>) -> anyhow::Result<TrustAnchors> {
    let root = TrustAnchors::default();
    let Some(path) = extra else {
        return Ok(root);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("trust anchor file {}: {e}", path.display()))?;
    // hickory's trust anchor parser knows DNSKEY records only; say so
    // rather than failing on a DS line with a parser message.
    if text
        .lines()
        .map(|l| l.split(';').next().unwrap_or_default())
        .any(|l| l.split_whitespace().any(|w| w.eq_ignore_ascii_case("DS")))
    {
        anyhow::bail!(
            "trust anchor file {}: DS records are not supported, give the zone's DNSKEY (KSK) records",
            path.display()
        );
    }
    let mut anchors: TrustAnchors = text
        .parse()
        .map_err(|e| anyhow::anyhow!("trust anchor file {}: {e}", path.display()))?;
    let mut i = 0;
    while let Some(key) = root.get(i) {
        anchors.insert(key as &dyn PublicKey);
        i += 1;
    }
    Ok(anchors)
}

/// A resolver that validates every answer itself.
#[derive(Clone)]
pub struct ValidatingResolver {
    inner: TokioResolver,
}

impl ValidatingResolver {
    /// Asks `server` (or the system's resolvers), validating from `anchors`.
    pub fn new(
        server: Option<SocketAddr>,
        anchors: TrustAnchors,
    ) -> anyhow::Result<ValidatingResolver> {
        let mut builder = resolver_builder(server)?.with_trust_anchor(Arc::new(anchors));
        let opts = builder.options_mut();
        opts.validate = true;
        // DNSKEY / RRSIG answers are large: truncated UDP must go to TCP.
        opts.try_tcp_on_error = true;
        Ok(ValidatingResolver {
            inner: builder.build()?,
        })
    }

    /// The records of type `rtype` at `name` (CNAMEs followed), with their
    /// security. NXDOMAIN and NODATA are an empty list, secure when the
    /// denial of existence validated.
    pub async fn lookup(
        &self,
        name: &str,
        rtype: RecordType,
    ) -> Result<Validated<Vec<RData>>, ValidationError> {
        let fqdn = fqdn(name);
        let bogus = |why: String| ValidationError::Bogus {
            name: name.to_string(),
            rtype,
            why,
        };
        match self.inner.lookup(fqdn.as_str(), rtype).await {
            Ok(l) => {
                let answers = l.answers();
                // The CNAMEs on the way count as much as the records
                // (RFC 7672 §2.2.3: only a secure chain may be followed).
                let security = security_of(answers.iter()).map_err(bogus)?;
                Ok(Validated {
                    security,
                    value: answers
                        .iter()
                        .filter(|r| r.record_type() == rtype)
                        .map(|r| r.data.clone())
                        .collect(),
                })
            }
            Err(NetError::Dns(DnsError::NoRecordsFound(nr))) => match nr.response_code {
                ResponseCode::NXDomain | ResponseCode::NoError => {
                    // The denial is as good as the NSEC/NSEC3 and SOA
                    // records that come with it.
                    let authorities = nr.authorities.as_deref().unwrap_or_default();
                    let security = if authorities.is_empty() {
                        Err("denial of existence without any proof".to_string())
                    } else {
                        security_of(authorities.iter())
                    }
                    .map_err(bogus)?;
                    Ok(Validated {
                        security,
                        value: Vec::new(),
                    })
                }
                other => Err(ValidationError::Temporary {
                    name: name.into(),
                    rtype,
                    why: format!("answered {other}"),
                }),
            },
            Err(NetError::Dns(DnsError::DnssecBogus)) => Err(bogus(
                "signatures do not verify from the trust anchors".into(),
            )),
            Err(NetError::Dns(DnsError::Nsec { proof, .. })) => {
                Err(bogus(format!("denial of existence is {proof}")))
            }
            Err(e) => Err(ValidationError::Temporary {
                name: name.into(),
                rtype,
                why: e.to_string(),
            }),
        }
    }

    /// The MX RRset of `domain` as (preference, exchange) pairs.
    pub async fn mx(&self, domain: &str) -> Result<Validated<Vec<(u16, String)>>, ValidationError> {
        let v = self.lookup(domain, RecordType::MX).await?;
        Ok(v.filter_map(|r| match r {
            RData::MX(mx) => Some((
                mx.preference,
                mx.exchange
                    .to_ascii()
                    .trim_end_matches('.')
                    .to_ascii_lowercase(),
            )),
            _ => None,
        }))
    }

    /// The A and AAAA records of `host`: secure only when both are.
    pub async fn addresses(&self, host: &str) -> Result<Validated<Vec<IpAddr>>, ValidationError> {
        Ok(self.addresses_expanded(host).await?.0)
    }

    /// [`addresses`](Self::addresses), and the name they were found at
    /// when `host` is an alias (the fully CNAME-expanded name, RFC 7672
    /// §2.2.2); `host` itself (no trailing dot) otherwise.
    ///
    /// The CNAME chain is walked here, one CNAME query per hop, and the
    /// addresses asked at its end: hickory judges the denial of an AAAA
    /// record behind a CNAME against the alias instead of the target and
    /// finds it bogus. Each hop counts for the security of the answer.
    pub async fn addresses_expanded(
        &self,
        host: &str,
    ) -> Result<(Validated<Vec<IpAddr>>, String), ValidationError> {
        let mut name = host.trim_end_matches('.').to_ascii_lowercase();
        let mut security = Security::Secure;
        for _ in 0..MAX_CNAME_HOPS {
            let v = self.lookup(&name, RecordType::CNAME).await?;
            let Some(RData::CNAME(target)) = v.value.first() else {
                break;
            };
            if !v.is_secure() {
                security = Security::Insecure;
            }
            name = target
                .0
                .to_ascii()
                .trim_end_matches('.')
                .to_ascii_lowercase();
        }
        let mut out = Vec::new();
        for rtype in [RecordType::A, RecordType::AAAA] {
            let v = self.lookup(&name, rtype).await?;
            if !v.is_secure() {
                security = Security::Insecure;
            }
            out.extend(v.value.into_iter().filter_map(|r| match r {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            }));
        }
        let found = Validated {
            security,
            value: out,
        };
        Ok((found, name))
    }

    /// The TLSA RRset at `name` (e.g. `_25._tcp.mx.example.org`).
    pub async fn tlsa(&self, name: &str) -> Result<Validated<Vec<TLSA>>, ValidationError> {
        let v = self.lookup(name, RecordType::TLSA).await?;
        Ok(v.filter_map(|r| match r {
            RData::TLSA(t) => Some(t),
            _ => None,
        }))
    }
}

/// Secure when every record is; insecure when one is provably unsigned
/// (e.g. a secure CNAME into an unsigned zone, RFC 7672 §2.2.3: the chain
/// is only as good as its weakest link; hickory marks a record missing its
/// signature in a signed zone bogus, never insecure); an error (bogus,
/// indeterminate) otherwise, with what was wrong.
fn security_of<'a>(records: impl Iterator<Item = &'a Record>) -> Result<Security, String> {
    let mut seen = false;
    let mut security = Security::Secure;
    for r in records {
        seen = true;
        match r.proof {
            Proof::Secure => {}
            Proof::Insecure => security = Security::Insecure,
            other => return Err(format!("{} {} is {other}", r.name, r.record_type())),
        }
    }
    if seen {
        Ok(security)
    } else {
        Err("an answer without records".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anchor_file(name: &str, text: &str) -> std::path::PathBuf {
        let path =
            std::env::temp_dir().join(format!("palisade-anchor-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn trust_anchor_file_adds_dnskeys_to_the_root_ksks() {
        let root = TrustAnchors::default();
        assert_eq!(trust_anchors(None).unwrap().len(), root.len());
        let path = anchor_file(
            "dnskey",
            "; the lab zone's KSK\ntest.\tIN\tDNSKEY\t257 3 13 kc87cGOEZ0uXZuRNLhW5ItJyLB9d/hjZlDGZ6OqetNyKsbbRSzV/VpdnBNzED+0UrHkNHQxGMB7M3SncooZuAA== ;{id = 39100 (ksk)}\n",
        );
        let anchors = trust_anchors(Some(&path)).unwrap();
        // The root KSKs are still there, besides the lab key.
        assert_eq!(anchors.len(), root.len());
        assert!(anchors.contains(root.get(0).unwrap()));
        let ds = anchor_file(
            "ds",
            "test.\tIN\tDS\t39100 13 2 d9ba421680ef2b80b147adadca05170931f2780fc23ce41f70ef09dd54c8d54c\n",
        );
        let err = trust_anchors(Some(&ds)).err().unwrap().to_string();
        assert!(err.contains("DS records are not supported"), "{err}");
        let missing = std::env::temp_dir().join("palisade-anchor-does-not-exist");
        assert!(trust_anchors(Some(&missing)).is_err());
        for p in [path, ds] {
            let _ = std::fs::remove_file(p);
        }
    }
}
