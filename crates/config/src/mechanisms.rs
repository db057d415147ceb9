//! The `[stage.<name>.mechanisms]` schema: which defense mechanisms of the
//! paper's Table I a stage enforces, and how they are tuned.
//!
//! A mechanism is enabled by writing its table (`[stage.mx.mechanisms.
//! dm22_greylist]`); `enabled = false` inside keeps the settings but turns
//! it off. Every key is named after its Table I row so `palisade review`
//! and an admin read the same words. The code of each mechanism lives in
//! `palisade-policy` (one module per row); this file is only the schema and
//! the checks that refuse an impossible configuration at load time.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{Config, Seconds, StageKind};

/// Where each configurable mechanism may run (Table I's "Location" column,
/// restricted to the stages this code implements it at). The catalogue in
/// `palisade-policy` is checked against this table by a test.
pub const MECHANISM_STAGES: &[(&str, &[StageKind])] = &[
    ("dm7_relay_access", &[StageKind::Mx, StageKind::Msa]),
    ("dm10_connections", &[StageKind::Mx, StageKind::Msa]),
    ("dm11_rates", &[StageKind::Mx, StageKind::Msa]),
    ("dm17_rfc2505", &[StageKind::Mx, StageKind::Msa]),
    ("dm18_lists", &[StageKind::Mx]),
    ("dm19_mta_rules", &[StageKind::Mx, StageKind::Msa]),
    ("dm20_dnsbl", &[StageKind::Mx]),
    ("dm22_greylist", &[StageKind::Mx]),
    ("dm23_regex", &[StageKind::Mx, StageKind::Msa]),
    ("dm27_spamtraps", &[StageKind::Mx]),
    ("dm30_dm31_auth", &[StageKind::Mx]),
    ("dm33_data_rate", &[StageKind::Mx, StageKind::Msa]),
    ("dm34_sender_rate", &[StageKind::Mx, StageKind::Msa]),
    ("dm36_bad_rcpt", &[StageKind::Mx, StageKind::Msa]),
];

/// The defense mechanisms one stage enforces. Absent tables are off.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mechanisms {
    /// Clients (CIDR) that skip the checks aimed at unknown Internet hosts
    /// (greylisting, DNSBL, sender DNS, forgery, SPF/DMARC rejects) — the
    /// gateway host itself, like Postfix's `mynetworks`. They never gain
    /// relaying (DM7) and recipients are still verified (DM19).
    pub trusted_networks: Vec<String>,
    pub dm7_relay_access: Option<Dm7RelayAccess>,
    pub dm10_connections: Option<Dm10Connections>,
    pub dm11_rates: Option<Dm11Rates>,
    pub dm17_rfc2505: Option<Dm17Rfc2505>,
    pub dm18_lists: Option<Dm18Lists>,
    pub dm19_mta_rules: Option<Dm19MtaRules>,
    pub dm20_dnsbl: Option<Dm20Dnsbl>,
    pub dm22_greylist: Option<Dm22Greylist>,
    pub dm23_regex: Option<Dm23Regex>,
    pub dm27_spamtraps: Option<Dm27Spamtraps>,
    pub dm30_dm31_auth: Option<Dm30Dm31Auth>,
    pub dm33_data_rate: Option<Dm33DataRate>,
    pub dm34_sender_rate: Option<Dm34SenderRate>,
    pub dm36_bad_rcpt: Option<Dm36BadRcpt>,
}

fn yes() -> bool {
    true
}

/// DM7: only local domains from unauthenticated clients; the classic relay
/// tricks (percent hack, source routes, bang paths...) refused.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Dm7RelayAccess {
    #[serde(default = "yes")]
    pub enabled: bool,
}

/// DM10: simultaneous connections per client address and in total.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dm10Connections {
    pub enabled: bool,
    pub per_client: usize,
    pub total: usize,
}

impl Default for Dm10Connections {
    fn default() -> Self {
        Dm10Connections {
            enabled: true,
            per_client: 20,
            total: 400,
        }
    }
}

/// DM11: connections and messages per client per minute (token buckets).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dm11Rates {
    pub enabled: bool,
    pub connections_per_minute: u32,
    pub messages_per_minute: u32,
}

impl Default for Dm11Rates {
    fn default() -> Self {
        Dm11Rates {
            enabled: true,
            connections_per_minute: 120,
            messages_per_minute: 600,
        }
    }
}

/// DM17: the RFC 2505 recommendations that apply to an MTA (no relaying,
/// no address disclosure through VRFY/EXPN, logging, limits). Enabling it
/// makes the policy refuse to start without DM7 and logs every action.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Dm17Rfc2505 {
    #[serde(default = "yes")]
    pub enabled: bool,
}

/// DM18: local blacklists and whitelists of client networks (CIDR) and
/// sender domains/addresses. Inline entries plus files (one entry a line,
/// `#` comments) re-read when their modification time changes.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dm18Lists {
    pub enabled: bool,
    pub client_blacklist: Vec<String>,
    pub client_whitelist: Vec<String>,
    pub sender_blacklist: Vec<String>,
    pub sender_whitelist: Vec<String>,
    pub client_blacklist_file: Option<PathBuf>,
    pub client_whitelist_file: Option<PathBuf>,
    pub sender_blacklist_file: Option<PathBuf>,
    pub sender_whitelist_file: Option<PathBuf>,
}

impl Default for Dm18Lists {
    fn default() -> Self {
        Dm18Lists {
            enabled: true,
            client_blacklist: Vec::new(),
            client_whitelist: Vec::new(),
            sender_blacklist: Vec::new(),
            sender_whitelist: Vec::new(),
            client_blacklist_file: None,
            client_whitelist_file: None,
            sender_blacklist_file: None,
            sender_whitelist_file: None,
        }
    }
}

/// DM19: MTA rules. Unknown recipients are refused with the stage's
/// `verify_recipients`; these are the other checks.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dm19MtaRules {
    pub enabled: bool,
    /// HELO/EHLO must be a fully qualified name or an address literal, and
    /// not claim to be us.
    pub helo_checks: bool,
    /// The sender's domain must have an MX or an address (NXDOMAIN: 550,
    /// DNS failure: 450).
    pub sender_domain_must_resolve: bool,
    /// MAIL FROM a local domain from outside without AUTH: 550 5.7.1.
    pub refuse_local_forgery: bool,
}

impl Default for Dm19MtaRules {
    fn default() -> Self {
        Dm19MtaRules {
            enabled: true,
            helo_checks: true,
            sender_domain_must_resolve: true,
            refuse_local_forgery: true,
        }
    }
}

/// DM20: DNS blocklists of client addresses.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dm20Dnsbl {
    pub enabled: bool,
    pub zones: Vec<DnsblZone>,
}

impl Default for Dm20Dnsbl {
    fn default() -> Self {
        Dm20Dnsbl {
            enabled: true,
            zones: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DnsblZone {
    /// e.g. `zen.spamhaus.org`.
    pub zone: String,
    /// Answers that count as listed: addresses (`127.0.0.2`) or networks
    /// (`127.0.0.0/24`) inside 127.0.0.0/8. Empty: any 127.0.0.0/8 answer.
    #[serde(default)]
    pub answers: Vec<String>,
}

/// DM22: greylisting of (client network, sender, recipient) triplets.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dm22Greylist {
    pub enabled: bool,
    /// A retry is accepted only after this long.
    pub delay: Seconds,
    /// A triplet not retried within this long is forgotten.
    pub retry_window: Seconds,
    /// How long a passed triplet (and an auto-whitelisted client) is kept.
    pub pass_lifetime: Seconds,
    /// Clients that passed this many triplets are no longer greylisted.
    pub auto_whitelist_after: u32,
    /// Senders whose SPF check passes are not greylisted.
    pub spf_pass_bypass: bool,
}

impl Default for Dm22Greylist {
    fn default() -> Self {
        Dm22Greylist {
            enabled: true,
            delay: Seconds(300.0),
            retry_window: Seconds(2.0 * 86400.0),
            pass_lifetime: Seconds(36.0 * 86400.0),
            auto_whitelist_after: 5,
            spf_pass_bypass: true,
        }
    }
}

/// DM23: regular-expression rules.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dm23Regex {
    pub enabled: bool,
    pub rules: Vec<RegexRule>,
}

impl Default for Dm23Regex {
    fn default() -> Self {
        Dm23Regex {
            enabled: true,
            rules: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegexRule {
    /// `helo`, `mail_from`, `rcpt_to`, or `header:<Name>` (any header when
    /// the name is `*`).
    pub on: String,
    /// Case-insensitive regular expression (Rust `regex` syntax).
    pub pattern: String,
    pub action: RegexAction,
    /// Reply text (reject, tempfail) or tag header value (tag).
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RegexAction {
    /// 550 5.7.1.
    Reject,
    /// 451 4.7.1.
    Tempfail,
    /// Accept, adding `X-Palisade-Rule:` for the antispam stage and MUAs.
    Tag,
}

/// DM27: spamtrap addresses; a client that writes to one is refused and
/// blacklisted for `blacklist_for`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dm27Spamtraps {
    pub enabled: bool,
    pub addresses: Vec<String>,
    pub blacklist_for: Seconds,
}

impl Default for Dm27Spamtraps {
    fn default() -> Self {
        Dm27Spamtraps {
            enabled: true,
            addresses: Vec::new(),
            blacklist_for: Seconds(3600.0),
        }
    }
}

/// DM30 SPF and DM31 DKIM (with DMARC and ARC) verification.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dm30Dm31Auth {
    pub enabled: bool,
    /// SPF `fail` (`-all`): record it, or refuse with 550 5.7.23.
    pub spf_fail: AuthAction,
    /// DMARC `fail` of a domain publishing `p=reject`: refuse (550 5.7.1)
    /// or only record.
    pub dmarc_reject: AuthAction,
    /// Also verify ARC sets and record `arc=` in Authentication-Results.
    pub arc: bool,
}

impl Default for Dm30Dm31Auth {
    fn default() -> Self {
        Dm30Dm31Auth {
            enabled: true,
            spf_fail: AuthAction::Record,
            dmarc_reject: AuthAction::Reject,
            arc: true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthAction {
    Record,
    Reject,
}

/// DM33: data rate per SMTP flow, bytes per second.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dm33DataRate {
    pub enabled: bool,
    pub bytes_per_second: u64,
    /// `slow`: hold the final reply until the flow is back under the rate;
    /// `cut`: answer 421 and close.
    pub action: DataRateAction,
}

impl Default for Dm33DataRate {
    fn default() -> Self {
        Dm33DataRate {
            enabled: true,
            bytes_per_second: 10 << 20,
            action: DataRateAction::Slow,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataRateAction {
    Slow,
    Cut,
}

/// DM34: messages per envelope sender per window.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dm34SenderRate {
    pub enabled: bool,
    pub messages: u32,
    pub window: Seconds,
}

impl Default for Dm34SenderRate {
    fn default() -> Self {
        Dm34SenderRate {
            enabled: true,
            messages: 1000,
            window: Seconds(3600.0),
        }
    }
}

/// DM36: bad-RCPT throttle (directory harvest defence).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dm36BadRcpt {
    pub enabled: bool,
    /// Unknown recipients allowed before each further RCPT is delayed.
    pub tarpit_after: u32,
    pub tarpit_delay: Seconds,
    /// Unknown recipients after which the session gets 421 and is closed.
    pub disconnect_after: u32,
    /// When above 0, a client's unknown recipients are also counted across
    /// its sessions (and, with `[gateway.state] backend = "redis"`, across
    /// the nodes of a pair) within this window: a harvester that
    /// reconnects to the other node starts where it left off.
    pub client_window: Seconds,
}

impl Default for Dm36BadRcpt {
    fn default() -> Self {
        Dm36BadRcpt {
            enabled: true,
            tarpit_after: 3,
            tarpit_delay: Seconds(1.0),
            disconnect_after: 10,
            client_window: Seconds(0.0),
        }
    }
}

/// Parses `a.b.c.d/len`, `x::/len` or a bare address (a host network).
pub fn parse_cidr(text: &str) -> Result<(IpAddr, u8), String> {
    let t = text.trim();
    let (addr, len) = match t.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (t, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("`{text}` is not an address or a network (e.g. 192.0.2.0/24)"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => l
            .parse::<u8>()
            .ok()
            .filter(|&l| l <= max)
            .ok_or_else(|| format!("`{text}`: prefix length must be 0..={max}"))?,
    };
    Ok((ip, len))
}

type Problem = (Vec<String>, String);

fn key(stage: StageKind, parts: &[&str]) -> Vec<String> {
    let mut k = vec![
        "stage".to_string(),
        stage.name().to_string(),
        "mechanisms".into(),
    ];
    k.extend(parts.iter().map(|p| p.to_string()));
    k
}

impl Mechanisms {
    /// Names (config keys) of the mechanism tables present, enabled or not.
    pub fn present(&self) -> Vec<(&'static str, bool)> {
        let mut v = Vec::new();
        macro_rules! p {
            ($($f:ident),*) => {$(
                if let Some(m) = &self.$f { v.push((stringify!($f), m.enabled)); }
            )*};
        }
        p!(
            dm7_relay_access,
            dm10_connections,
            dm11_rates,
            dm17_rfc2505,
            dm18_lists,
            dm19_mta_rules,
            dm20_dnsbl,
            dm22_greylist,
            dm23_regex,
            dm27_spamtraps,
            dm30_dm31_auth,
            dm33_data_rate,
            dm34_sender_rate,
            dm36_bad_rcpt
        );
        v
    }
}

/// Checks every stage's mechanisms: each on a stage where it can act, and
/// each value usable.
pub(crate) fn check(config: &Config, problems: &mut Vec<Problem>) {
    for (&stage, st) in &config.stage {
        let m = &st.mechanisms;
        for (name, _) in m.present() {
            let allowed = MECHANISM_STAGES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, s)| *s)
                .unwrap_or(&[]);
            if !allowed.contains(&stage) {
                let names: Vec<&str> = allowed.iter().map(|s| s.name()).collect();
                problems.push((
                    key(stage, &[name]),
                    format!(
                        "{name} cannot run on the {stage} stage: it acts where mail enters from \
                         clients ({})",
                        names.join(", ")
                    ),
                ));
            }
        }
        for (i, net) in m.trusted_networks.iter().enumerate() {
            if let Err(e) = parse_cidr(net) {
                problems.push((key(stage, &["trusted_networks", &i.to_string()]), e));
            }
        }
        if let Some(l) = &m.dm18_lists {
            for (field, list) in [
                ("client_blacklist", &l.client_blacklist),
                ("client_whitelist", &l.client_whitelist),
            ] {
                for net in list {
                    if let Err(e) = parse_cidr(net) {
                        problems.push((key(stage, &["dm18_lists", field]), e));
                    }
                }
            }
        }
        if let Some(d) = &m.dm20_dnsbl {
            for (i, z) in d.zones.iter().enumerate() {
                let idx = i.to_string();
                if z.zone.is_empty() || z.zone.contains(['@', ' ', '/']) || z.zone.starts_with('.')
                {
                    problems.push((
                        key(stage, &["dm20_dnsbl", "zones", &idx, "zone"]),
                        format!("`{}` is not a DNS zone", z.zone),
                    ));
                }
                for a in &z.answers {
                    match parse_cidr(a) {
                        Ok((IpAddr::V4(v4), _)) if v4.octets()[0] == 127 => {}
                        Ok(_) => problems.push((
                            key(stage, &["dm20_dnsbl", "zones", &idx, "answers"]),
                            format!("answer `{a}` is outside 127.0.0.0/8, where DNSBLs answer"),
                        )),
                        Err(_) => problems.push((
                            key(stage, &["dm20_dnsbl", "zones", &idx, "answers"]),
                            format!(
                                "unknown DNSBL answer format `{a}`: write an address \
                                 (127.0.0.2) or a network (127.0.0.0/24)"
                            ),
                        )),
                    }
                }
            }
        }
        if let Some(g) = &m.dm22_greylist {
            if g.retry_window <= g.delay {
                problems.push((
                    key(stage, &["dm22_greylist", "retry_window"]),
                    format!(
                        "retry_window {} must be longer than delay {}: no retry could pass",
                        g.retry_window, g.delay
                    ),
                ));
            }
        }
        if let Some(r) = &m.dm23_regex {
            for (i, rule) in r.rules.iter().enumerate() {
                let idx = i.to_string();
                let on_ok = matches!(rule.on.as_str(), "helo" | "mail_from" | "rcpt_to")
                    || rule
                        .on
                        .strip_prefix("header:")
                        .is_some_and(|h| !h.is_empty());
                if !on_ok {
                    problems.push((
                        key(stage, &["dm23_regex", "rules", &idx, "on"]),
                        format!(
                            "`{}`: use helo, mail_from, rcpt_to or header:<Name>",
                            rule.on
                        ),
                    ));
                }
                if let Err(e) = regex_syntax_ok(&rule.pattern) {
                    problems.push((key(stage, &["dm23_regex", "rules", &idx, "pattern"]), e));
                }
            }
        }
        if let Some(t) = &m.dm27_spamtraps {
            for a in &t.addresses {
                if !a.contains('@') {
                    problems.push((
                        key(stage, &["dm27_spamtraps", "addresses"]),
                        format!("`{a}` is not an address"),
                    ));
                }
            }
        }
        if let Some(c) = &m.dm10_connections {
            if c.per_client == 0 || c.total == 0 {
                problems.push((
                    key(stage, &["dm10_connections"]),
                    "per_client and total must be at least 1".into(),
                ));
            }
        }
        if let Some(r) = &m.dm11_rates {
            if r.connections_per_minute == 0 || r.messages_per_minute == 0 {
                problems.push((
                    key(stage, &["dm11_rates"]),
                    "rates must be at least 1 per minute".into(),
                ));
            }
        }
        if let Some(d) = &m.dm33_data_rate {
            if d.bytes_per_second == 0 {
                problems.push((
                    key(stage, &["dm33_data_rate", "bytes_per_second"]),
                    "must be at least 1".into(),
                ));
            }
        }
        if let Some(s) = &m.dm34_sender_rate {
            if s.messages == 0 || s.window.0 <= 0.0 {
                problems.push((
                    key(stage, &["dm34_sender_rate"]),
                    "messages and window must be positive".into(),
                ));
            }
        }
        if let Some(b) = &m.dm36_bad_rcpt {
            if b.disconnect_after == 0 || b.disconnect_after < b.tarpit_after {
                problems.push((
                    key(stage, &["dm36_bad_rcpt", "disconnect_after"]),
                    "must be at least 1 and not below tarpit_after".into(),
                ));
            }
        }
        if m.dm17_rfc2505.as_ref().is_some_and(|d| d.enabled)
            && !m.dm7_relay_access.as_ref().is_some_and(|d| d.enabled)
        {
            problems.push((
                key(stage, &["dm17_rfc2505"]),
                "RFC 2505 forbids relaying: enable dm7_relay_access with it".into(),
            ));
        }
    }
}

/// A light syntax check that needs no regex engine here: balanced
/// brackets and parentheses. The policy compiles the patterns for real at
/// start-up and refuses to start on an error.
fn regex_syntax_ok(p: &str) -> Result<(), String> {
    let (mut paren, mut bracket, mut esc) = (0i32, false, false);
    for c in p.chars() {
        if esc {
            esc = false;
            continue;
        }
        match c {
            '\\' => esc = true,
            '[' if !bracket => bracket = true,
            ']' if bracket => bracket = false,
            '(' if !bracket => paren += 1,
            ')' if !bracket => paren -= 1,
            _ => {}
        }
        if paren < 0 {
            break;
        }
    }
    if p.is_empty() || paren != 0 || bracket || esc {
        Err(format!("`{p}` is not a valid regular expression"))
    } else {
        Ok(())
    }
}
