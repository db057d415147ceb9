//! The one DNS resolver of a node: mail-auth's `MessageAuthenticator`
//! (SPF, DKIM, DMARC, ARC) built on hickory, pointed at `gateway.dns` when
//! set (tests run a real DNS server there), the system's otherwise.
//!
//! The lookups the mechanisms need besides authentication (sender domain,
//! DNSBL) go through the same resolver and its cache. They separate "the
//! name does not exist" from "DNS did not answer": only the first may ever
//! turn into a permanent refusal.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::hickory_resolver::net::NetError;
use mail_auth::MessageAuthenticator;

/// What a lookup found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found<T> {
    Records(T),
    /// NXDOMAIN, or the name exists without records of the type.
    Nothing,
}

/// DNS did not give an answer (timeout, SERVFAIL, refused...).
#[derive(Clone, Debug, thiserror::Error)]
#[error("DNS error: {0}")]
pub struct DnsTempError(pub String);

pub struct Dns {
    pub auth: MessageAuthenticator,
}

impl Dns {
    /// A resolver asking `server` (UDP, then TCP for long answers), or the
    /// system's configuration when `None`.
    pub fn new(server: Option<SocketAddr>) -> anyhow::Result<Dns> {
        let mut opts = ResolverOpts::default();
        // An MX session waits for these answers: fail fast and tempfail
        // rather than hold the client for the default 5 s x 2.
        opts.timeout = Duration::from_secs(3);
        opts.attempts = 1;
        // Tests change their zone between runs; real TTLs still apply.
        opts.cache_size = 1024;
        let auth = match server {
            Some(addr) => {
                let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                for c in &mut ns.connections {
                    c.port = addr.port();
                }
                MessageAuthenticator::new(ResolverConfig::from_name_servers(vec![ns]), opts)?
            }
            None => match MessageAuthenticator::new_system_conf() {
                Ok(a) => a,
                // No resolv.conf (containers): an empty configuration makes
                // every lookup a temporary error, which tempfails, never
                // rejects.
                Err(_) => {
                    MessageAuthenticator::new(ResolverConfig::from_name_servers(vec![]), opts)?
                }
            },
        };
        Ok(Dns { auth })
    }

    fn classify<T>(r: Result<T, NetError>) -> Result<Found<T>, DnsTempError> {
        match r {
            Ok(v) => Ok(Found::Records(v)),
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok(Found::Nothing),
            Err(e) => Err(DnsTempError(e.to_string())),
        }
    }

    /// DM19: can mail be returned to this domain? True when it has an MX,
    /// or an A/AAAA record (RFC 5321 §5.1 implicit MX).
    pub async fn domain_resolves(&self, domain: &str) -> Result<bool, DnsTempError> {
        let fqdn = format!("{}.", domain.trim_end_matches('.'));
        let r = self.auth.0.mx_lookup(fqdn.as_str()).await;
        if let Found::Records(mx) = Self::classify(r)? {
            if !mx.answers().is_empty() {
                return Ok(true);
            }
        }
        let r = self.auth.0.lookup_ip(fqdn.as_str()).await;
        match Self::classify(r)? {
            Found::Records(ips) => Ok(ips.iter().next().is_some()),
            Found::Nothing => Ok(false),
        }
    }

    /// The A records of `name` (DNSBL queries).
    pub async fn a_records(&self, name: &str) -> Result<Found<Vec<Ipv4Addr>>, DnsTempError> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        let r = self.auth.0.ipv4_lookup(fqdn.as_str()).await;
        Ok(match Self::classify(r)? {
            Found::Records(l) => {
                let ips: Vec<Ipv4Addr> = l
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        mail_auth::hickory_resolver::proto::rr::RData::A(a) => Some(a.0),
                        _ => None,
                    })
                    .collect();
                if ips.is_empty() {
                    Found::Nothing
                } else {
                    Found::Records(ips)
                }
            }
            Found::Nothing => Found::Nothing,
        })
    }
}

/// The DNSBL query name of an address: reversed octets (IPv4) or nibbles
/// (IPv6, RFC 5782 §2.4) under the zone.
pub fn dnsbl_name(ip: IpAddr, zone: &str) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.{zone}", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::new();
            for b in v6.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
            }
            s + zone
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dnsbl_names_reverse_the_address() {
        assert_eq!(
            dnsbl_name("192.0.2.99".parse().unwrap(), "bl.test"),
            "99.2.0.192.bl.test"
        );
        let v6 = dnsbl_name("2001:db8::1".parse().unwrap(), "bl.test");
        assert!(v6.starts_with("1.0.0.0.0.0.0.0"));
        assert!(v6.ends_with("8.b.d.0.1.0.0.2.bl.test"));
    }
}
