//! The configuration schema. Field docs are the reference; every field has
//! a default so a small file describes a working architecture.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::Seconds;

/// The stages of the paper's architecture (Maraboli & Vallejos, figure 10).
/// The same word names the binary (`palisade-mx`), the config section
/// (`[stage.mx]`) and the queue directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StageKind {
    /// A: the only entry point for Internet mail to local users.
    Mx,
    /// B: authenticated submission from company users.
    Msa,
    /// C: virus scanning.
    Antivirus,
    /// D: spam scoring; routes each recipient to its store or to outgoing.
    Antispam,
    /// F: the only stage that talks SMTP to the Internet.
    Outgoing,
    /// G: message store.
    Store,
}

impl StageKind {
    pub const ALL: [StageKind; 6] = [
        StageKind::Mx,
        StageKind::Msa,
        StageKind::Antivirus,
        StageKind::Antispam,
        StageKind::Outgoing,
        StageKind::Store,
    ];

    pub fn name(self) -> &'static str {
        match self {
            StageKind::Mx => "mx",
            StageKind::Msa => "msa",
            StageKind::Antivirus => "antivirus",
            StageKind::Antispam => "antispam",
            StageKind::Outgoing => "outgoing",
            StageKind::Store => "store",
        }
    }

    /// The letter the paper gives the stage.
    pub fn letter(self) -> char {
        match self {
            StageKind::Mx => 'A',
            StageKind::Msa => 'B',
            StageKind::Antivirus => 'C',
            StageKind::Antispam => 'D',
            StageKind::Outgoing => 'F',
            StageKind::Store => 'G',
        }
    }

    /// Stages that accept mail from the Internet or from users; the others
    /// only accept connections from their configured upstream nodes.
    pub fn is_edge(self) -> bool {
        matches!(self, StageKind::Mx | StageKind::Msa)
    }

    /// The binary that runs this stage.
    pub fn binary(self) -> String {
        format!("palisade-{}", self.name())
    }
}

impl fmt::Display for StageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub gateway: Gateway,
    /// Local domains and the store node that holds each one's mailboxes.
    #[serde(default, rename = "domain")]
    pub domains: Vec<Domain>,
    /// Per-stage settings shared by every node of the stage.
    #[serde(default)]
    pub stage: BTreeMap<StageKind, StageSettings>,
    /// Every process of the architecture, by name.
    #[serde(default)]
    pub node: BTreeMap<String, Node>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Gateway {
    /// Name used in banners, EHLO and Received headers.
    pub hostname: String,
    /// Where nodes keep their queues, mailboxes and the directory.
    /// Relative paths are relative to the working directory.
    pub data_dir: PathBuf,
    /// PEM certificate chain and key for STARTTLS / implicit TLS. When
    /// absent, `palisade up` generates a self-signed pair under
    /// `data_dir/tls/`.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// The DNS resolver every node uses (`host:port`); the system's when
    /// absent. `palisade up --dns` sets it; tests point it at their own
    /// DNS server.
    pub dns: Option<SocketAddr>,
    /// MX and MSA nodes pull the user directory from the store nodes this
    /// often (and at once when `palisade user` tells them of a change).
    pub replica_pull_interval: Seconds,
    /// A replica not refreshed for this long tempfails (451) addresses it
    /// does not know instead of refusing them.
    pub replica_max_age: Seconds,
    /// Where the defense mechanisms keep per-client state (state.rs).
    pub state: crate::StateSettings,
    /// The unprivileged user every node runs as: a node started as root
    /// binds its ports, then switches to this user (and its group) before
    /// it reads any mail (docs/deploy.md). A node's own `user` overrides it.
    pub user: Option<String>,
    /// The group to run as; the user's primary group when absent.
    pub group: Option<String>,
    /// Development only: let a node started as root keep running as root
    /// when no `user` is configured (`palisade up` on loopback in a
    /// container or CI). Without it such a node refuses to start.
    pub allow_root: bool,
}

impl Default for Gateway {
    fn default() -> Self {
        Gateway {
            hostname: "localhost".into(),
            data_dir: PathBuf::from("data"),
            tls_cert: None,
            tls_key: None,
            dns: None,
            replica_pull_interval: Seconds(2.0),
            replica_max_age: Seconds(3600.0),
            state: crate::StateSettings::default(),
            user: None,
            group: None,
            allow_root: false,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Domain {
    pub name: String,
    /// The store node holding this domain's mailboxes (the paper's user
    /// profiles: one store per profile). A gateway that only relays (the
    /// benchmark) has none.
    pub store: Option<String>,
}

/// Settings of one stage.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StageSettings {
    /// The stage that receives this stage's mail (all recipients, or the
    /// non-local ones when `local_delivery` is set).
    pub next: Option<StageKind>,
    /// Explicit next hops (`host:port`) instead of a stage: a smarthost, or
    /// the benchmark sink. Tried in order of failure, load spread.
    pub relay: Vec<SocketAddr>,
    /// Deliver local recipients to their store node instead of `next`
    /// (the antispam stage's routing, SPEC §4).
    pub local_delivery: bool,
    /// Addresses allowed to connect to an internal stage, in addition to
    /// the nodes of the stages that forward to it.
    pub accept_from: Vec<IpAddr>,
    pub limits: Limits,
    pub queue: QueueSettings,
    /// TLS towards the next hop: "none", "may" (opportunistic) or "require".
    pub next_hop_tls: NextHopTls,
    /// DM19 backscatter defence: refuse unknown local recipients at RCPT
    /// from the user directory (MX and MSA). Off only for a relay-only
    /// gateway such as the benchmark's.
    pub verify_recipients: bool,
    /// Antivirus stage: clamd and MIME-bomb limits (content.rs).
    pub virus: crate::content::VirusSettings,
    /// Antispam stage: Bayes, rules, thresholds (content.rs).
    pub spam: crate::content::SpamSettings,
    /// MX: hold the reply to DATA for the antivirus verdict (content.rs).
    pub cut_through: crate::content::CutThroughSettings,
    /// Outgoing stage: static routes by recipient domain (outbound.rs).
    pub routes: crate::outbound::RouteTable,
    /// Outgoing stage: MX delivery, TLS policy, DKIM, DSN (outbound.rs).
    pub outbound: crate::outbound::OutboundSettings,
    /// MX/MSA: the Table I defense mechanisms this stage enforces (mechanisms.rs).
    pub mechanisms: crate::Mechanisms,
    /// MSA: SMTP AUTH and sender ownership (issue 5).
    pub submission: SubmissionSettings,
    /// MX/MSA behind a load balancer: connections from `trusted_proxies`
    /// must start with a PROXY protocol v1/v2 header, and the session uses
    /// the client address it carries (state.rs).
    pub proxy_protocol: bool,
    pub trusted_proxies: Vec<IpAddr>,
    /// How long a trusted proxy may take to send its header.
    pub proxy_header_timeout: Seconds,
}

/// The MSA's authenticated submission (Table I: DM2 submission, DM4 SMTP
/// AUTH, DM14 TLS).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubmissionSettings {
    /// Pause before answering a failed AUTH (slows password guessing).
    pub auth_failure_delay: Seconds,
    /// Failed AUTH attempts allowed per client IP, and per account, within
    /// `auth_failure_window`; past it the client gets 421 4.7.0 and its
    /// attempts are not even checked.
    pub auth_max_failures: u32,
    pub auth_failure_window: Seconds,
    /// Also require the From: header to be an address the user owns.
    pub check_header_from: bool,
    /// Leave the submitting client's IP out of the Received header (users
    /// submit from home; their address is nobody else's business).
    pub hide_client_ip: bool,
    /// Recipient domains one edit away from a well-known or recently used
    /// domain and without a mail server: "reject" (550 5.1.2 naming the
    /// likely domain), "warn" (log only) or "off".
    pub typo_guard: TypoGuardMode,
    /// Domains added to the guard's built-in list of well-known ones.
    pub known_domains: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TypoGuardMode {
    Off,
    Warn,
    Reject,
}

impl Default for SubmissionSettings {
    fn default() -> Self {
        SubmissionSettings {
            auth_failure_delay: Seconds(1.0),
            auth_max_failures: 10,
            auth_failure_window: Seconds(60.0),
            check_header_from: true,
            hide_client_ip: true,
            typo_guard: TypoGuardMode::Reject,
            known_domains: Vec::new(),
        }
    }
}

impl Default for StageSettings {
    fn default() -> Self {
        StageSettings {
            next: None,
            relay: Vec::new(),
            local_delivery: false,
            accept_from: Vec::new(),
            limits: Limits::default(),
            queue: QueueSettings::default(),
            next_hop_tls: NextHopTls::None,
            verify_recipients: true,
            virus: Default::default(),
            spam: Default::default(),
            cut_through: Default::default(),
            routes: Default::default(),
            outbound: Default::default(),
            mechanisms: Default::default(),
            submission: SubmissionSettings::default(),
            proxy_protocol: false,
            trusted_proxies: Vec::new(),
            proxy_header_timeout: Seconds(5.0),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NextHopTls {
    None,
    May,
    Require,
}

/// Session and message limits (Table I: DM8 size, DM9 recipients, DM12/13
/// processes and connections, DM32 greet pause).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// DM8: largest message accepted, in bytes (SIZE).
    pub max_message_size: u64,
    /// DM9: recipients per message.
    pub max_recipients: usize,
    /// DM12/DM13: simultaneous SMTP sessions per node.
    pub max_sessions: usize,
    /// Errors in one session before 421 and close.
    pub max_errors: u32,
    /// DM32: pause before the banner; clients that talk first are refused.
    pub greet_pause: Seconds,
    /// Idle time allowed between commands (RFC 5321 §4.5.3.2: 5 min).
    pub command_timeout: Seconds,
    /// Time allowed for each chunk of DATA (RFC 5321: 3 min).
    pub data_timeout: Seconds,
    /// Total length of one session.
    pub session_timeout: Seconds,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            max_sessions: 500,
            max_errors: 10,
            greet_pause: Seconds(0.0),
            command_timeout: Seconds(300.0),
            data_timeout: Seconds(180.0),
            session_timeout: Seconds(1800.0),
        }
    }
}

/// The durable queue of each node of the stage.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueSettings {
    /// First retry delay after a temporary failure; doubles up to `max_retry`.
    pub min_retry: Seconds,
    pub max_retry: Seconds,
    /// After this, a message still undeliverable fails for good.
    pub max_age: Seconds,
    /// Simultaneous deliveries to the next hop.
    pub concurrency: usize,
    /// LMDB map size in bytes (virtual; the disk holds what is used).
    pub map_size: u64,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            // Between our own stages a peer is usually back within
            // seconds (restart, failover); the outgoing stage sets
            // Internet-sized delays in its own section.
            min_retry: Seconds(10.0),
            max_retry: Seconds(600.0),
            max_age: Seconds(5.0 * 86400.0),
            concurrency: 20,
            map_size: 4 << 30,
        }
    }
}

/// One process of the architecture.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub stage: StageKind,
    /// SMTP listener: the MX's port 25, or an internal stage's intake.
    pub smtp: Option<SocketAddr>,
    /// MSA: submission with STARTTLS (587).
    pub submission: Option<SocketAddr>,
    /// MSA: submission with implicit TLS (465).
    pub submissions: Option<SocketAddr>,
    /// Store: IMAP over implicit TLS.
    pub imaps: Option<SocketAddr>,
    /// Store: POP3 over implicit TLS.
    pub pop3s: Option<SocketAddr>,
    /// Prometheus text exposition on `/metrics`.
    pub metrics: Option<SocketAddr>,
    /// Store: the user profile this store serves (staff, students...).
    pub profile: Option<String>,
    /// Run this node as another user than `gateway.user` (one Unix user
    /// per stage, as qmail and Postfix do).
    #[serde(default)]
    pub user: Option<String>,
}

impl Node {
    /// Every address this node listens on, with the name of its key.
    pub fn listeners(&self) -> Vec<(&'static str, SocketAddr)> {
        [
            ("smtp", self.smtp),
            ("submission", self.submission),
            ("submissions", self.submissions),
            ("imaps", self.imaps),
            ("pop3s", self.pop3s),
            ("metrics", self.metrics),
        ]
        .into_iter()
        .filter_map(|(k, a)| a.map(|a| (k, a)))
        .collect()
    }
}

/// Where a stage sends a recipient.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NextHop {
    /// An SMTP pool: a pair of nodes (or a smarthost list); failover and
    /// load spreading happen inside the pool.
    Pool {
        name: String,
        addrs: Vec<SocketAddr>,
    },
    /// This node stores the message itself (store stage).
    LocalStore,
    /// No route is configured for this recipient.
    Unroutable(String),
}

impl Config {
    pub fn settings(&self, stage: StageKind) -> StageSettings {
        self.stage.get(&stage).cloned().unwrap_or_default()
    }

    pub fn nodes_of(&self, stage: StageKind) -> impl Iterator<Item = (&String, &Node)> {
        self.node.iter().filter(move |(_, n)| n.stage == stage)
    }

    /// The local domain an address belongs to, if any (case-insensitive).
    pub fn local_domain(&self, address: &str) -> Option<&Domain> {
        let domain = address.rsplit_once('@')?.1;
        let domain = domain.trim_end_matches('.');
        self.domains
            .iter()
            .find(|d| d.name.eq_ignore_ascii_case(domain))
    }

    /// Where a node of `stage` sends mail for `recipient`.
    pub fn next_hop(&self, stage: StageKind, recipient: &str) -> NextHop {
        let settings = self.settings(stage);
        if stage == StageKind::Store {
            return NextHop::LocalStore;
        }
        if settings.local_delivery {
            if let Some(domain) = self.local_domain(recipient) {
                let Some(store) = &domain.store else {
                    return NextHop::Unroutable(format!("domain {} has no store", domain.name));
                };
                return match self.node.get(store).and_then(|n| n.smtp) {
                    Some(addr) => NextHop::Pool {
                        name: store.clone(),
                        addrs: vec![addr],
                    },
                    None => NextHop::Unroutable(format!("store {store} has no smtp")),
                };
            }
        }
        if !settings.relay.is_empty() {
            return NextHop::Pool {
                name: "relay".into(),
                addrs: settings.relay.clone(),
            };
        }
        match settings.next {
            Some(next) => NextHop::Pool {
                name: next.name().to_string(),
                addrs: self.nodes_of(next).filter_map(|(_, n)| n.smtp).collect(),
            },
            None => NextHop::Unroutable(format!("stage {stage} has no next hop")),
        }
    }

    /// Stages whose mail flows into `stage`.
    pub fn upstream_stages(&self, stage: StageKind) -> Vec<StageKind> {
        StageKind::ALL
            .into_iter()
            .filter(|&s| {
                let st = self.settings(s);
                st.next == Some(stage) || (stage == StageKind::Store && st.local_delivery)
            })
            .collect()
    }

    /// Client addresses an internal stage accepts: its upstream nodes'
    /// addresses plus `accept_from`. Empty for edge stages (anyone).
    pub fn allowed_clients(&self, stage: StageKind) -> Vec<IpAddr> {
        if stage.is_edge() {
            return Vec::new();
        }
        let mut ips: Vec<IpAddr> = self
            .upstream_stages(stage)
            .into_iter()
            .flat_map(|s| self.nodes_of(s).flat_map(|(_, n)| n.listeners()))
            .map(|(_, a)| a.ip())
            .collect();
        ips.extend(self.settings(stage).accept_from);
        ips.sort();
        ips.dedup();
        ips
    }

    /// The node's data directory: `data_dir/<node>`.
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.gateway.data_dir.join(node)
    }

    /// The user and group a node runs as (`node.user`, else
    /// `gateway.user`); `None` when none is configured.
    pub fn run_as(&self, node: &str) -> Option<(String, Option<String>)> {
        let user = self
            .node
            .get(node)
            .and_then(|n| n.user.clone())
            .or_else(|| self.gateway.user.clone())?;
        Some((user, self.gateway.group.clone()))
    }

    /// The user directory shared by the nodes of this machine.
    pub fn directory_dir(&self) -> PathBuf {
        self.gateway.data_dir.join("directory")
    }
}
