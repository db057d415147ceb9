//! `palisade audit`: step 2 of the methodology (fault detection). Runs the
//! probes of [`crate::probes`] against a deployment given by addresses —
//! ours or any other SMTP system — or by our own config file, which also
//! says what each stage is configured to enforce, so a failed probe can be
//! told apart as "configured but not working" from "absent".
//!
//! The order of the probes matters on a real gateway: the ones that make
//! the target refuse us for a while (connection flood, connection rate) run
//! last, and the greylisting wait (when allowed) is paid once.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use palisade_config::{Config, StageKind, StageSettings};
use tokio::sync::Mutex;

use crate::client::{Conn, Dial, Reply, Stop};
use crate::model::{Fault, Finding, Line};
use crate::probes;

/// What to audit and how (the command line, or derived from `--config`).
#[derive(Clone, Debug)]
pub struct Options {
    /// The MX (port 25): Internet-facing, no AUTH.
    pub mx: Option<SocketAddr>,
    /// Submission with STARTTLS (587).
    pub msa: Option<SocketAddr>,
    /// Submission with implicit TLS (465).
    pub msa_tls: Option<SocketAddr>,
    /// IMAP over implicit TLS of the test account's store.
    pub store_imap: Option<SocketAddr>,
    /// Internal stage addresses that must not be reachable from here.
    pub internal: Vec<SocketAddr>,
    /// Test account (a local address) and its password.
    pub user: Option<String>,
    pub password: Option<String>,
    /// A local domain of the target; default: the test account's.
    pub local_domain: Option<String>,
    /// External recipient of the relay probes (never delivered: RSET
    /// follows an accepted RCPT).
    pub external_rcpt: String,
    /// Envelope sender of the probes that play an Internet client. Its
    /// domain must resolve for targets that check it (DM19).
    pub sender: String,
    /// Name given in EHLO.
    pub helo: String,
    /// Local address to connect from (an address the target does not trust).
    pub source: Option<IpAddr>,
    /// Only these faults (`--only`); all when empty.
    pub only: BTreeSet<Fault>,
    /// Bound of every connect and read.
    pub timeout: Duration,
    /// How long to wait, once, when the MX greylists the probes that need
    /// DATA (0: do not wait; those probes are then not tested).
    pub greylist_wait: Duration,
    /// How long content probes wait for delivery to the mailbox.
    pub delivery_wait: Duration,
    /// Upper bound of connections of the flood and rate probes when the
    /// target's caps are unknown (no `--config`).
    pub flood_max: usize,
    /// Largest message the oversize probe sends.
    pub size_probe_max: u64,
    /// Run the flood and rate probes against a non-loopback MX too (they
    /// make the target refuse the audit host for a while).
    pub allow_flood: bool,
    /// Our own architecture, when audited by `--config`.
    pub config: Option<Config>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            mx: None,
            msa: None,
            msa_tls: None,
            store_imap: None,
            internal: Vec::new(),
            user: None,
            password: None,
            local_domain: None,
            external_rcpt: "audit-relay-test@relay-test.invalid".into(),
            sender: "audit@audit-probe.invalid".into(),
            helo: "audit-probe.invalid".into(),
            source: None,
            only: BTreeSet::new(),
            timeout: Duration::from_secs(10),
            greylist_wait: Duration::ZERO,
            delivery_wait: Duration::from_secs(60),
            flood_max: 60,
            size_probe_max: 64 << 20,
            allow_flood: false,
            config: None,
        }
    }
}

impl Options {
    /// Fills what `--config` knows and the command line did not say: every
    /// address, the local domain, the test account's store.
    pub fn complete_from_config(&mut self) {
        let Some(cfg) = self.config.clone() else {
            return;
        };
        let first = |stage: StageKind, pick: fn(&palisade_config::Node) -> Option<SocketAddr>| {
            cfg.nodes_of(stage).find_map(|(_, n)| pick(n))
        };
        self.mx = self.mx.or_else(|| first(StageKind::Mx, |n| n.smtp));
        self.msa = self.msa.or_else(|| first(StageKind::Msa, |n| n.submission));
        self.msa_tls = self
            .msa_tls
            .or_else(|| first(StageKind::Msa, |n| n.submissions));
        if self.store_imap.is_none() {
            let store = self
                .user
                .as_deref()
                .and_then(|u| cfg.local_domain(u))
                .and_then(|d| d.store.clone())
                .and_then(|s| cfg.node.get(&s).and_then(|n| n.imaps));
            self.store_imap = store.or_else(|| first(StageKind::Store, |n| n.imaps));
        }
        if self.internal.is_empty() {
            // Every intake behind the edge: the any-to-any fault is a
            // client reaching one of them directly.
            self.internal = cfg
                .node
                .values()
                .filter(|n| !n.stage.is_edge())
                .filter_map(|n| n.smtp)
                .collect();
        }
        if self.local_domain.is_none() {
            self.local_domain = cfg.domains.first().map(|d| d.name.clone());
        }
    }

    /// `mx=... msa=...` for the report header.
    pub fn target(&self) -> String {
        let mut parts = Vec::new();
        let mut add = |k: &str, v: Option<SocketAddr>| {
            if let Some(v) = v {
                parts.push(format!("{k}={v}"));
            }
        };
        add("mx", self.mx);
        add("msa", self.msa);
        add("msa-tls", self.msa_tls);
        add("store-imap", self.store_imap);
        if !self.internal.is_empty() {
            parts.push(format!("internal={}", self.internal.len()));
        }
        if let Some(u) = &self.user {
            parts.push(format!("user={u}"));
        }
        parts.join(" ")
    }
}

/// What every probe shares: the options, this run's nonce (in every
/// subject and generated address, so cleanup finds exactly our messages)
/// and the triplets already waited for past greylisting.
pub struct Ctx {
    pub opts: Options,
    pub nonce: String,
    greylist_waited: Mutex<BTreeSet<(String, String)>>,
}

/// Greylisting waits per run, at most: one per (sender, recipient) the
/// probes use, bounded in case the target greylists everything.
const MAX_GREYLIST_WAITS: usize = 3;

/// The result of EHLO + MAIL + RCPT.
pub struct Envelope {
    pub conn: Conn,
    pub ehlo: Reply,
    pub mail: Reply,
    /// None when MAIL was refused.
    pub rcpt: Option<Reply>,
}

impl Envelope {
    pub fn accepted(&self) -> bool {
        self.mail.is_positive() && self.rcpt.as_ref().is_some_and(|r| r.is_positive())
    }
}

impl Ctx {
    pub fn new(opts: Options) -> Ctx {
        let nonce = format!(
            "{:x}{:04x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            std::process::id() & 0xffff
        );
        Ctx {
            opts,
            nonce,
            greylist_waited: Mutex::new(BTreeSet::new()),
        }
    }

    pub fn wants(&self, fault: Fault) -> bool {
        self.opts.only.is_empty() || self.opts.only.contains(&fault)
    }

    pub fn dial(&self, addr: SocketAddr) -> Dial {
        Dial {
            addr,
            source: self.opts.source,
            timeout: self.opts.timeout,
        }
    }

    /// A stage's settings, when auditing our own config.
    pub fn settings(&self, stage: StageKind) -> Option<StageSettings> {
        self.opts.config.as_ref().map(|c| c.settings(stage))
    }

    /// What the config says about a defense of `stage` (None without config).
    pub fn claims(&self, stage: StageKind, on: impl Fn(&StageSettings) -> bool) -> Option<bool> {
        self.settings(stage).map(|s| on(&s))
    }

    pub fn local_domain(&self) -> Option<String> {
        self.opts.local_domain.clone().or_else(|| {
            self.opts
                .user
                .as_deref()
                .and_then(|u| u.rsplit_once('@'))
                .map(|(_, d)| d.to_string())
        })
    }

    /// A local recipient that exists: the test account, else postmaster
    /// (RFC 5321 §4.5.1 requires it).
    pub fn local_rcpt(&self) -> Option<String> {
        self.opts
            .user
            .clone()
            .or_else(|| self.local_domain().map(|d| format!("postmaster@{d}")))
    }

    pub fn has_credentials(&self) -> bool {
        self.opts.user.is_some() && self.opts.password.is_some()
    }

    /// A subject every message of this run carries.
    pub fn subject(&self, what: &str) -> String {
        format!("palisade-audit {} {what}", self.nonce)
    }

    /// Whether the target will treat us as its own host (config
    /// `trusted_networks` containing our source address): the checks aimed
    /// at Internet clients are skipped for such clients by design.
    pub fn trusted_source(&self) -> Option<String> {
        let cfg = self.opts.config.as_ref()?;
        let mx = self.opts.mx?;
        let source = self
            .opts
            .source
            .or_else(|| mx.ip().is_loopback().then_some(mx.ip()))?;
        let mech = cfg.settings(StageKind::Mx).mechanisms;
        mech.trusted_networks
            .iter()
            .find(|n| palisade_policy::net::Network::parse(n).is_ok_and(|n| n.contains(source)))
            .map(|n| format!("the audit connects from {source}, inside the MX's trusted_networks {n}: checks aimed at Internet clients do not apply to it (use --source)"))
    }

    /// Connects and reads the banner.
    pub async fn smtp(&self, addr: SocketAddr, tls: bool) -> Result<(Conn, Reply), Vec<Line>> {
        let mut conn = if tls {
            Conn::connect_tls(self.dial(addr), Vec::new()).await
        } else {
            Conn::connect(self.dial(addr), Vec::new()).await
        }
        .map_err(|e| vec![note(format!("cannot connect to {addr}: {e}"))])?;
        match conn.banner().await {
            Ok(b) => Ok((conn, b)),
            Err(_) => Err(conn.into_transcript()),
        }
    }

    /// Connects, reads a 220 banner and says EHLO. Errors carry the transcript.
    pub async fn ehlo(&self, addr: SocketAddr) -> Result<(Conn, Reply), (String, Vec<Line>)> {
        let (mut conn, banner) = self
            .smtp(addr, false)
            .await
            .map_err(|t| ("no banner".to_string(), t))?;
        if banner.code != 220 {
            let why = format!("refused at connect: {}", banner.summary());
            return Err((why, conn.into_transcript()));
        }
        match conn.cmd(&format!("EHLO {}", self.opts.helo)).await {
            Ok(r) if r.code == 250 => Ok((conn, r)),
            Ok(r) => Err((format!("EHLO refused: {}", r.summary()), conn.quit().await)),
            Err(e) => Err((format!("EHLO: {e}"), conn.into_transcript())),
        }
    }

    /// EHLO, MAIL FROM, RCPT TO against the MX. When RCPT is greylisted and
    /// `--greylist-wait` allows it, waits once per triplet (as a real MTA
    /// would retry) and tries again in the same session; the lock makes
    /// later probes of the same triplet find it passed.
    pub async fn envelope(
        &self,
        addr: SocketAddr,
        sender: &str,
        mail_params: &str,
        rcpt: &str,
    ) -> Result<Envelope, (String, Vec<Line>)> {
        let (mut conn, ehlo) = self.ehlo(addr).await?;
        let mail_line = format!("MAIL FROM:<{sender}>{mail_params}");
        let mut mail = conn.cmd(&mail_line).await.map_err(|e| stop(e, &conn))?;
        if !mail.is_positive() {
            return Ok(Envelope {
                conn,
                ehlo,
                mail,
                rcpt: None,
            });
        }
        let rcpt_line = format!("RCPT TO:<{rcpt}>");
        let mut reply = conn.cmd(&rcpt_line).await.map_err(|e| stop(e, &conn))?;
        if is_greylisted(&reply) && !self.opts.greylist_wait.is_zero() {
            let mut waited = self.greylist_waited.lock().await;
            let triplet = (sender.to_string(), rcpt.to_string());
            if waited.len() < MAX_GREYLIST_WAITS && waited.insert(triplet) {
                conn.note(format!(
                    "greylisted: waiting {:?} (--greylist-wait) as a real MTA would retry",
                    self.opts.greylist_wait
                ));
                let _ = conn.cmd("RSET").await;
                tokio::time::sleep(self.opts.greylist_wait).await;
                mail = conn.cmd(&mail_line).await.map_err(|e| stop(e, &conn))?;
                if mail.is_positive() {
                    reply = conn.cmd(&rcpt_line).await.map_err(|e| stop(e, &conn))?;
                }
            }
        }
        Ok(Envelope {
            conn,
            ehlo,
            mail,
            rcpt: Some(reply),
        })
    }
}

impl Ctx {
    /// An open transaction from `--sender` to `rcpt` at the MX, RCPT
    /// accepted; with `data`, DATA answered 354 too. Else why not, and the
    /// transcript (the probe is then not tested).
    pub async fn open_transaction(
        &self,
        addr: SocketAddr,
        rcpt: &str,
        data: bool,
    ) -> Result<Conn, (String, Vec<Line>)> {
        let env = self.envelope(addr, &self.opts.sender, "", rcpt).await?;
        let mut conn = env.conn;
        match &env.rcpt {
            Some(r) if r.is_positive() => {}
            Some(r) => {
                return Err((
                    format!("recipient not accepted: {}", r.summary()),
                    conn.quit().await,
                ))
            }
            None => {
                return Err((
                    format!("MAIL refused: {}", env.mail.summary()),
                    conn.quit().await,
                ))
            }
        }
        if data {
            match conn.cmd("DATA").await {
                Ok(r) if r.code == 354 => {}
                Ok(r) => return Err((format!("DATA refused: {}", r.summary()), conn.quit().await)),
                Err(e) => return Err((e.to_string(), conn.into_transcript())),
            }
        }
        Ok(conn)
    }
}

pub fn is_greylisted(r: &Reply) -> bool {
    r.code == 451 && r.enhanced() == "4.7.1"
}

pub fn note(text: impl Into<String>) -> Line {
    Line {
        dir: '*',
        text: text.into(),
    }
}

fn stop(e: Stop, conn: &Conn) -> (String, Vec<Line>) {
    (e.to_string(), conn.transcript.clone())
}

/// Runs every probe the options allow, in a safe order, then removes what
/// the probes delivered to the test account.
pub async fn run(mut opts: Options) -> Vec<Finding> {
    opts.complete_from_config();
    let ctx = Ctx::new(opts);
    if let Some(why) = ctx.trusted_source() {
        eprintln!("palisade audit: warning: {why}");
    }
    let mut findings = probes::run_all(&ctx).await;
    findings.retain(|f| ctx.wants(f.fault));
    if let Some(summary) = crate::imap::clean_up(&ctx).await {
        eprintln!("palisade audit: {summary}");
    }
    findings
}
