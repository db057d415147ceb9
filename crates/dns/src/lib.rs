//! Destination resolution (RFC 5321 §5.1): MX records in preference order,
//! equal preferences shuffled (load spreading across equals), every A and
//! AAAA address of every MX; the implicit MX (the domain's own A/AAAA)
//! when there is no MX; null MX (RFC 7505) refused at once. A DNS
//! tempfail (SERVFAIL, timeout) is never confused with "does not exist":
//! it keeps the message queued.
//!
//! [`dnssec`]: lookups validated from trust anchors, for DANE (RFC 7672).

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{ResolverBuilder, TokioResolver};
use rand::seq::SliceRandom;

pub mod dnssec;

/// One mail exchanger and its addresses, in the order to try them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MxHost {
    pub name: String,
    pub preference: u16,
    pub addrs: Vec<IpAddr>,
}

/// Why a domain has no usable destination.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// Try again later: the DNS did not answer, or answered SERVFAIL.
    #[error("DNS temporary failure looking up {name}: {why}")]
    Temporary { name: String, why: String },
    /// The domain does not exist, or has neither MX nor address records.
    #[error("domain {0} does not exist or has no mail server (DNS)")]
    NoSuchDomain(String),
    /// RFC 7505: the domain publishes "MX 0 ." — it accepts no mail.
    #[error("domain {0} publishes a null MX (RFC 7505): it accepts no mail")]
    NullMx(String),
}

impl ResolveError {
    pub fn is_temporary(&self) -> bool {
        matches!(self, ResolveError::Temporary { .. })
    }
}

/// Answer of one DNS question, with "no such name" and "no records of
/// that type" told apart from failures.
enum Answer {
    Records(Vec<RData>),
    NxDomain,
    NoData,
}

#[derive(Clone)]
pub struct DnsResolver {
    inner: TokioResolver,
}

impl DnsResolver {
    /// A resolver asking `server` (the config's `gateway.dns`), or the
    /// system's resolvers when None.
    pub fn new(server: Option<SocketAddr>) -> anyhow::Result<DnsResolver> {
        Ok(DnsResolver {
            inner: resolver_builder(server)?.build()?,
        })
    }

    async fn ask(&self, name: &str, rtype: RecordType) -> Result<Answer, ResolveError> {
        let fqdn = fqdn(name);
        match self.inner.lookup(fqdn.as_str(), rtype).await {
            Ok(l) => Ok(Answer::Records(
                l.answers()
                    .iter()
                    .filter(|r| r.record_type() == rtype)
                    .map(|r| r.data.clone())
                    .collect(),
            )),
            Err(NetError::Dns(DnsError::NoRecordsFound(nr))) => match nr.response_code {
                ResponseCode::NXDomain => Ok(Answer::NxDomain),
                ResponseCode::NoError => Ok(Answer::NoData),
                other => Err(ResolveError::Temporary {
                    name: name.into(),
                    why: format!("{rtype} lookup answered {other}"),
                }),
            },
            Err(e) => Err(ResolveError::Temporary {
                name: name.into(),
                why: format!("{rtype} lookup: {e}"),
            }),
        }
    }

    /// Every A and AAAA address of `host` (A first). Empty when the name
    /// has neither; an error only when the DNS failed.
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, ResolveError> {
        let mut out = Vec::new();
        let mut temp = None;
        for rtype in [RecordType::A, RecordType::AAAA] {
            match self.ask(host, rtype).await {
                Ok(Answer::Records(rs)) => out.extend(rs.into_iter().filter_map(|r| match r {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                    _ => None,
                })),
                Ok(_) => {}
                Err(e) => temp = Some(e),
            }
        }
        match temp {
            // One family failing while the other answered is enough to
            // deliver; both failing keeps the message queued.
            Some(e) if out.is_empty() => Err(e),
            _ => Ok(out),
        }
    }

    /// The TXT strings at `name` (each record's strings joined). Empty
    /// when the name or the records do not exist.
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, ResolveError> {
        match self.ask(name, RecordType::TXT).await? {
            Answer::Records(rs) => Ok(rs
                .into_iter()
                .filter_map(|r| match r {
                    RData::TXT(t) => Some(
                        t.txt_data
                            .iter()
                            .map(|s| String::from_utf8_lossy(s).into_owned())
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .collect()),
            Answer::NxDomain | Answer::NoData => Ok(Vec::new()),
        }
    }

    /// The mail exchangers of `domain` in the order to try them.
    pub async fn mail_exchangers(&self, domain: &str) -> Result<Vec<MxHost>, ResolveError> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let mut mxs: Vec<(u16, String)> = match self.ask(&domain, RecordType::MX).await? {
            Answer::NxDomain => return Err(ResolveError::NoSuchDomain(domain)),
            Answer::NoData => Vec::new(),
            Answer::Records(rs) => rs
                .into_iter()
                .filter_map(|r| match r {
                    RData::MX(mx) => Some((
                        mx.preference,
                        mx.exchange.to_ascii().trim_end_matches('.').to_string(),
                    )),
                    _ => None,
                })
                .collect(),
        };
        if mxs.len() == 1 && mxs[0].1.is_empty() {
            return Err(ResolveError::NullMx(domain));
        }
        // A null MX mixed with real ones is a misconfiguration; ignore it.
        mxs.retain(|(_, name)| !name.is_empty());
        if mxs.is_empty() {
            // Implicit MX (RFC 5321 §5.1): the domain itself.
            let addrs = self.addresses(&domain).await?;
            if addrs.is_empty() {
                return Err(ResolveError::NoSuchDomain(domain));
            }
            return Ok(vec![MxHost {
                name: domain,
                preference: 0,
                addrs,
            }]);
        }
        order_by_preference(&mut mxs);
        let mut hosts = Vec::new();
        let mut last_temp = None;
        for (preference, name) in mxs {
            match self.addresses(&name).await {
                Ok(addrs) if !addrs.is_empty() => hosts.push(MxHost {
                    name,
                    preference,
                    addrs,
                }),
                Ok(_) => {}
                Err(e) => last_temp = Some(e),
            }
        }
        match (hosts.is_empty(), last_temp) {
            (true, Some(e)) => Err(e),
            (true, None) => Err(ResolveError::NoSuchDomain(domain)),
            _ => Ok(hosts),
        }
    }
}

/// The resolver both [`DnsResolver`] and [`dnssec::ValidatingResolver`]
/// start from: `server` (the config's `gateway.dns`) over UDP and TCP, or
/// the system's resolvers; absolute names only.
pub(crate) fn resolver_builder(
    server: Option<SocketAddr>,
) -> anyhow::Result<ResolverBuilder<TokioRuntimeProvider>> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = match server {
        Some(addr) => {
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            let ns = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], vec![ns]),
                provider,
            )
        }
        None => TokioResolver::builder(provider)?,
    };
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.timeout = std::time::Duration::from_secs(5);
    opts.attempts = 2;
    // Names are always absolute here: never try search domains.
    opts.ndots = 0;
    Ok(builder)
}

/// `name` with its trailing dot.
pub(crate) fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

/// Sorts by preference, shuffling each group of equal preference so equal
/// MX hosts share the load (RFC 5321 §5.1).
pub fn order_by_preference(mxs: &mut [(u16, String)]) {
    let mut rng = rand::thread_rng();
    mxs.shuffle(&mut rng);
    mxs.sort_by_key(|(p, _)| *p);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preference_order_is_kept_and_equals_are_shuffled() {
        let mut seen_first = std::collections::HashSet::new();
        for _ in 0..200 {
            let mut v = vec![
                (20, "c".to_string()),
                (10, "a".to_string()),
                (10, "b".to_string()),
                (30, "d".to_string()),
            ];
            order_by_preference(&mut v);
            assert_eq!(v[2].1, "c");
            assert_eq!(v[3].1, "d");
            seen_first.insert(v[0].1.clone());
        }
        assert_eq!(seen_first.len(), 2, "equal preferences must be shuffled");
    }
}
