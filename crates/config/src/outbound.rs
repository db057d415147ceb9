//! Settings of the outgoing stage (F): how mail leaves for the Internet.
//!
//! ```toml
//! [stage.outgoing.routes]            # static routes: smarthosts, labs, tests
//! "partner.example" = ["192.0.2.10:25"]
//!
//! [stage.outgoing.outbound]
//! smtp_port = 25                     # port of remote MX hosts (labs/tests: any)
//! require_tls = ["bank.example",     # never deliver these in plaintext
//!   { domain = "pay.example", verify = true }]  # ... and verify the MX certificate
//! mta_sts = true                     # fetch and apply MTA-STS policies (RFC 8461)
//! mta_sts_recheck = "5m"             # look the _mta-sts TXT id up again (new id = refetch)
//! tlsrpt_interval = "1d"             # TLSRPT (RFC 8460) report period, 0 = no reports
//! ca_file = "/etc/palisade/extra-ca.pem"  # trusted besides the WebPKI roots
//! dsn_delay_after = "4h"             # "delayed" notice to the sender
//!
//! [stage.outgoing.outbound.dane]     # DANE (RFC 7672), DNSSEC validated here
//! enabled = true
//! trust_anchor_file = "/etc/palisade/lab-anchor.key"  # DNSKEYs trusted besides the root KSKs
//!
//! [[stage.outgoing.outbound.dkim]]
//! domain = "example.test"
//! selector = "s2026"
//! key = "/etc/palisade/dkim/example.test.s2026.pem"
//!
//! [[stage.outgoing.outbound.dkim]]   # the previous key, after a rotation:
//! domain = "example.test"            # no longer signs; its DNS record stays
//! selector = "s2025"                 # published until retire_after
//! key = "/etc/palisade/dkim/example.test.s2025.pem"
//! retire_after = 2026-12-08T10:00:00Z
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{Config, Seconds, StageKind};

/// Static routes: recipient domain (lower case, or `*` for every domain
/// without its own route) -> the hosts to deliver to, in order.
pub type RouteTable = BTreeMap<String, Vec<SocketAddr>>;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundSettings {
    /// TCP port of remote MX hosts. 25 on the Internet; a test or lab
    /// setting otherwise (loopback test zones point many MX names at
    /// 127.x.y.z addresses that cannot all own port 25).
    pub smtp_port: u16,
    /// Domains that must never receive mail in plaintext: STARTTLS is
    /// required, and a host that does not offer it is skipped (the
    /// message stays queued). `{ domain = "...", verify = true }` also
    /// requires the host's certificate to verify against its name.
    pub require_tls: Vec<RequireTls>,
    /// Honour MTA-STS (RFC 8461): fetch the policy of a domain that
    /// publishes `_mta-sts.<domain>` TXT (`v=STSv1; id=...`) and apply it.
    pub mta_sts: bool,
    /// HTTPS port of `mta-sts.<domain>`: 443 on the Internet; a test or
    /// lab setting otherwise (like `smtp_port`).
    pub mta_sts_port: u16,
    /// How often the `_mta-sts` TXT id of a domain is looked up again (a
    /// new id means a policy refetch, RFC 8461 §5.1). 5 min; tests: less.
    pub mta_sts_recheck: Seconds,
    /// PEM CA certificates trusted for verified TLS (MTA-STS, `verify`)
    /// in addition to the WebPKI roots: a private CA, or a test CA.
    pub ca_file: Option<PathBuf>,
    /// DKIM keys of the local domains. Keys with `retire_after` never
    /// sign (the previous key of a rotation, kept for its grace period);
    /// of the others, the last one whose public key is published in DNS
    /// signs (one key per domain after `palisade dkim rotate --activate`).
    pub dkim: Vec<DkimKey>,
    /// TLSRPT (RFC 8460): the period of the aggregate reports sent to the
    /// domains that publish `_smtp._tls` (one UTC day; 0 = no reports).
    pub tlsrpt_interval: Seconds,
    /// Send the authenticated sender a "delayed" DSN once a recipient has
    /// been deferred for this long (0 = never).
    pub dsn_delay_after: Seconds,
    /// Simultaneous deliveries to one destination domain.
    pub per_domain_concurrency: usize,
    /// New transactions per second to one destination domain (0 = no limit).
    pub per_domain_rate: f64,
    /// TCP connect and greeting timeout towards remote hosts.
    pub connect_timeout: Seconds,
    /// Timeout of each command reply (RFC 5321 §4.5.3.2 suggests 5 min).
    pub command_timeout: Seconds,
    /// DANE for SMTP (RFC 7672): TLSA records of MX hosts, authenticated by
    /// DNSSEC validation done by this node.
    pub dane: DaneSettings,
}

impl Default for OutboundSettings {
    fn default() -> Self {
        OutboundSettings {
            smtp_port: 25,
            require_tls: Vec::new(),
            mta_sts: true,
            mta_sts_port: 443,
            mta_sts_recheck: Seconds(300.0),
            ca_file: None,
            dkim: Vec::new(),
            dsn_delay_after: Seconds(4.0 * 3600.0),
            tlsrpt_interval: Seconds(86400.0),
            per_domain_concurrency: 10,
            per_domain_rate: 0.0,
            connect_timeout: Seconds(30.0),
            command_timeout: Seconds(300.0),
            dane: DaneSettings::default(),
        }
    }
}

/// `[stage.outgoing.outbound.dane]` (docs/outgoing.md, DANE).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DaneSettings {
    /// Look up and enforce TLSA records of MX hosts in DNSSEC-signed zones.
    /// Needs a `gateway.dns` resolver that passes DNSSEC records (DO bit:
    /// RRSIG, DNSKEY, DS); answers are validated here, never taken on the
    /// resolver's word (AD bit).
    pub enabled: bool,
    /// DNSKEY records (zone file syntax) trusted as anchors in addition to
    /// the IANA root KSKs: a private signed zone, a lab or a test zone.
    pub trust_anchor_file: Option<PathBuf>,
}

impl Default for DaneSettings {
    fn default() -> Self {
        DaneSettings {
            enabled: true,
            trust_anchor_file: None,
        }
    }
}

/// One DKIM signing key.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DkimKey {
    /// The signing domain (d=); signs mail whose From: is in this domain.
    pub domain: String,
    /// The selector (s=): the key's TXT record is `<selector>._domainkey.<domain>`.
    pub selector: String,
    /// PEM private key: RSA (PKCS#1 or PKCS#8) or Ed25519 (PKCS#8), as
    /// written by `palisade dkim keygen`.
    pub key: PathBuf,
    /// Set on the previous key by `palisade dkim rotate --activate`: the
    /// key no longer signs, and its DNS record must stay published until
    /// this time (mail signed with it may still be in transit or retried
    /// by receivers); `palisade dkim status` says when it may go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_after: Option<toml::value::Datetime>,
}

impl DkimKey {
    /// May this key sign? (Not once it is being retired.)
    pub fn signs(&self) -> bool {
        self.retire_after.is_none()
    }
}

/// One `require_tls` entry: a domain name, or a table with `verify`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum RequireTls {
    Domain(String),
    Rule {
        domain: String,
        #[serde(default)]
        verify: bool,
    },
}

impl RequireTls {
    fn parts(&self) -> (&str, bool) {
        match self {
            RequireTls::Domain(d) => (d, false),
            RequireTls::Rule { domain, verify } => (domain, *verify),
        }
    }
}

impl OutboundSettings {
    /// `Some(verify)` when the configuration demands TLS for `domain`.
    pub fn requires_tls(&self, domain: &str) -> Option<bool> {
        self.require_tls
            .iter()
            .map(RequireTls::parts)
            .find(|(d, _)| d.trim_end_matches('.').eq_ignore_ascii_case(domain))
            .map(|(_, verify)| verify)
    }
}

/// The static route for `domain`, if any: its own entry, else `*`.
pub fn static_route<'a>(routes: &'a RouteTable, domain: &str) -> Option<&'a [SocketAddr]> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    routes
        .iter()
        .find(|(d, _)| d.trim_end_matches('.').eq_ignore_ascii_case(&domain))
        .or_else(|| routes.get_key_value("*"))
        .map(|(_, v)| v.as_slice())
}

type Problem = (Vec<String>, String);

pub(crate) fn validate(config: &Config, problems: &mut Vec<Problem>) {
    let key = |parts: &[&str]| parts.iter().map(|p| p.to_string()).collect::<Vec<_>>();
    for (&stage, st) in &config.stage {
        let name = stage.name();
        if stage != StageKind::Outgoing {
            if !st.routes.is_empty() {
                problems.push((
                    key(&["stage", name, "routes"]),
                    "only the outgoing stage has a route table".into(),
                ));
            }
            continue;
        }
        for (domain, hosts) in &st.routes {
            if hosts.is_empty() {
                problems.push((
                    key(&["stage", name, "routes", domain]),
                    "a route needs at least one host:port".into(),
                ));
            }
            if domain.contains('@') || domain.is_empty() {
                problems.push((
                    key(&["stage", name, "routes", domain]),
                    format!("`{domain}` is not a domain (or `*`)"),
                ));
            }
        }
        let o = &st.outbound;
        if o.smtp_port == 0 {
            problems.push((
                key(&["stage", name, "outbound", "smtp_port"]),
                "must be a TCP port (1-65535)".into(),
            ));
        }
        if o.per_domain_concurrency == 0 {
            problems.push((
                key(&["stage", name, "outbound", "per_domain_concurrency"]),
                "must be at least 1".into(),
            ));
        }
        if o.per_domain_rate < 0.0 {
            problems.push((
                key(&["stage", name, "outbound", "per_domain_rate"]),
                "must be 0 (no limit) or positive".into(),
            ));
        }
        if o.mta_sts_recheck.0 <= 0.0 {
            problems.push((
                key(&["stage", name, "outbound", "mta_sts_recheck"]),
                "must be a positive duration".into(),
            ));
        }
        for (i, k) in o.dkim.iter().enumerate() {
            let idx = i.to_string();
            if let Some(t) = &k.retire_after {
                if t.date.is_none() || t.time.is_none() || t.offset.is_none() {
                    problems.push((
                        key(&["stage", name, "outbound", "dkim", &idx, "retire_after"]),
                        format!(
                            "`{t}` needs a date, a time and an offset (e.g. 2026-12-08T10:00:00Z)"
                        ),
                    ));
                }
            }
            if config.local_domain(&format!("x@{}", k.domain)).is_none() {
                problems.push((
                    key(&["stage", name, "outbound", "dkim", &idx, "domain"]),
                    format!("`{}` is not one of the [[domain]]s", k.domain),
                ));
            }
            if k.selector.is_empty()
                || !k
                    .selector
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            {
                problems.push((
                    key(&["stage", name, "outbound", "dkim", &idx, "selector"]),
                    format!(
                        "`{}` is not a selector (letters, digits, -, _, .)",
                        k.selector
                    ),
                ));
            }
        }
    }
}
