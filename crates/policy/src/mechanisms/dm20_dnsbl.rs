//! DM20 DNS blocklists (RFC 5782): the client's address is looked up in
//! each configured zone; an answer among the zone's listed codes refuses the
//! client with `554 5.7.1` naming the list (SPEC §5). A DNS error or an
//! answer outside the codes never refuses: a broken list must not stop mail.

use std::net::{IpAddr, Ipv4Addr};

use palisade_config::{Dm20Dnsbl, DnsblZone};
use palisade_smtp_proto::Reply;
use tracing::warn;

use crate::net::Network;
use crate::resolver::{dnsbl_name, Dns, Found};

pub struct Dnsbl {
    zones: Vec<(DnsblZone, Vec<Network>)>,
}

impl Dnsbl {
    pub fn new(c: &Dm20Dnsbl) -> Self {
        Dnsbl {
            zones: c
                .zones
                .iter()
                .map(|z| {
                    let codes = z
                        .answers
                        .iter()
                        .filter_map(|a| Network::parse(a).ok())
                        .collect();
                    (z.clone(), codes)
                })
                .collect(),
        }
    }

    fn listed(codes: &[Network], answer: Ipv4Addr) -> bool {
        // RFC 5782 §2.1: answers are in 127.0.0.0/8; anything else is a
        // misconfigured or hijacked list.
        if answer.octets()[0] != 127 {
            return false;
        }
        codes.is_empty() || codes.iter().any(|n| n.contains(IpAddr::V4(answer)))
    }

    /// The first list that has the client, as the refusal.
    pub async fn check(&self, dns: &Dns, ip: IpAddr) -> Option<Reply> {
        for (zone, codes) in &self.zones {
            let name = dnsbl_name(ip, &zone.zone);
            match dns.a_records(&name).await {
                Ok(Found::Records(answers)) => {
                    if let Some(a) = answers.iter().find(|a| Self::listed(codes, **a)) {
                        return Some(Reply::enhanced(
                            554,
                            (5, 7, 1),
                            format!(
                                "Service unavailable; client host [{ip}] blocked using {} ({a})",
                                zone.zone
                            ),
                        ));
                    }
                }
                Ok(Found::Nothing) => {}
                Err(e) => warn!("DM20: {} lookup failed, not blocking: {e}", zone.zone),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_codes_select_listings() {
        let codes = vec![Network::parse("127.0.0.2").unwrap()];
        assert!(Dnsbl::listed(&codes, "127.0.0.2".parse().unwrap()));
        assert!(!Dnsbl::listed(&codes, "127.0.0.4".parse().unwrap()));
        assert!(Dnsbl::listed(&[], "127.0.0.10".parse().unwrap()));
        assert!(!Dnsbl::listed(&[], "10.0.0.2".parse().unwrap()));
    }
}
