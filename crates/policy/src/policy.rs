//! The mechanisms one stage enabled, in the order the SMTP dialogue meets
//! them. Each hook returns `Err(Refusal)` with the reply to send (SPEC §5
//! codes) and the mechanism that decided; everything a mechanism does,
//! refusing or not, is reported to the [`ActionSink`].
//!
//! Cheap, local checks run before DNS ones, and refusals of a client come
//! before work for its message. Clients in `trusted_networks` (and DM18
//! whitelisted ones) skip the mechanisms aimed at unknown Internet hosts
//! but never gain relaying.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mail_auth::{SpfOutput, SpfResult};
use palisade_config::{Mechanisms, StageKind};
use palisade_smtp_proto::Reply;
use tracing::warn;

use crate::mechanisms::dm10_connections::Connections;
use crate::mechanisms::dm11_rates::ClientRates;
use crate::mechanisms::dm18_lists::{Listed, Lists};
use crate::mechanisms::dm20_dnsbl::Dnsbl;
use crate::mechanisms::dm22_greylist::{Greylist, LmdbGreylistStore, Verdict as Grey};
use crate::mechanisms::dm23_regex::{self, Field, Hit, Rules};
use crate::mechanisms::dm27_spamtraps::Spamtraps;
use crate::mechanisms::dm33_data_rate::{self, RateVerdict};
use crate::mechanisms::dm34_sender_rate::SenderRate;
use crate::mechanisms::dm36_bad_rcpt::{self, Throttle};
use crate::mechanisms::{dm17_rfc2505, dm19_mta_rules, dm30_dm31_auth, dm7_relay_access};
use crate::net::{client_network, Network};
use crate::resolver::Dns;
use crate::state::{Events, SharedState};

/// A refusal and the mechanism (`"DM22"`) that made it.
#[derive(Clone, Debug)]
pub struct Refusal {
    pub mechanism: &'static str,
    pub reply: Reply,
}

/// Something a mechanism did to a message that was accepted (tag, record,
/// slow): logged by the stage once the queue ID is known.
#[derive(Clone, Debug)]
pub struct Action {
    pub mechanism: &'static str,
    pub action: &'static str,
    pub detail: String,
}

/// Where actions are reported: the stage logs one line per action and
/// counts `palisade_defense_actions_total{node,mechanism,action}`.
pub trait ActionSink: Send + Sync {
    /// `who` is `session <id>` (or a queue ID when the stage has one).
    fn action(&self, who: &str, mechanism: &'static str, action: &'static str, detail: &str);
}

/// The client as the policy sees it in each hook.
#[derive(Clone, Copy, Debug)]
pub struct Client<'a> {
    pub session: u64,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub helo: Option<&'a str>,
    pub authenticated: bool,
}

impl Client<'_> {
    fn ip(&self) -> IpAddr {
        self.peer.ip()
    }
}

/// What the stage tells the policy about itself.
pub struct PolicyOptions {
    pub stage: StageKind,
    /// Our name (HELO checks, Authentication-Results authserv-id).
    pub hostname: String,
    pub local_domains: Vec<String>,
    /// `gateway.dns`; the system resolver when `None`.
    pub dns: Option<SocketAddr>,
    /// Where this node keeps its greylisting state.
    pub state_dir: PathBuf,
    /// Sessions are forgotten after this long (the engine's session cap).
    pub session_lifetime: Duration,
    /// Where per-client state lives: this node, or Redis shared by a pair.
    pub state: SharedState,
}

#[derive(Default)]
struct SessionState {
    started: Option<Instant>,
    /// Trusted network or DM18 whitelist: skips the checks of strangers.
    trusted: bool,
    spf: Option<SpfOutput>,
    bad_rcpts: u32,
    last_rcpt: Option<Instant>,
    /// DM10 admitted the session: its slot is released at the end.
    connection_slot: bool,
}

/// A message's outcome when it may be queued.
#[derive(Default, Debug)]
pub struct MessagePlan {
    /// Header fields to add on top (Authentication-Results, tags).
    pub prepend: String,
    /// Actions to log with the queue ID.
    pub actions: Vec<Action>,
}

pub struct Policy {
    m: Mechanisms,
    opts: PolicyOptions,
    dns: Dns,
    trusted: Vec<Network>,
    lists: Option<Lists>,
    dnsbl: Option<Dnsbl>,
    greylist: Option<Greylist>,
    rules: Option<Rules>,
    traps: Option<Spamtraps>,
    rates: Option<ClientRates>,
    connections: Option<Connections>,
    sender_rate: Option<SenderRate>,
    /// DM36 unknown recipients per client (with `client_window`).
    bad_rcpts: Events,
    sessions: Mutex<HashMap<u64, SessionState>>,
    last_prune: Mutex<Instant>,
    sink: Arc<dyn ActionSink>,
}

fn on<T: HasEnabled>(m: &Option<T>) -> Option<&T> {
    m.as_ref().filter(|x| x.enabled())
}

trait HasEnabled {
    fn enabled(&self) -> bool;
}

macro_rules! has_enabled {
    ($($t:ty),*) => {$(impl HasEnabled for $t { fn enabled(&self) -> bool { self.enabled } })*};
}
has_enabled!(
    palisade_config::Dm7RelayAccess,
    palisade_config::Dm10Connections,
    palisade_config::Dm11Rates,
    palisade_config::Dm17Rfc2505,
    palisade_config::Dm18Lists,
    palisade_config::Dm19MtaRules,
    palisade_config::Dm20Dnsbl,
    palisade_config::Dm22Greylist,
    palisade_config::Dm23Regex,
    palisade_config::Dm27Spamtraps,
    palisade_config::Dm30Dm31Auth,
    palisade_config::Dm33DataRate,
    palisade_config::Dm34SenderRate,
    palisade_config::Dm36BadRcpt
);

impl Policy {
    /// Builds the enabled mechanisms; fails on what cannot work (a regular
    /// expression that does not compile, an unopenable greylist store, DM17
    /// without its recommendations).
    pub fn new(
        m: &Mechanisms,
        settings: &palisade_config::StageSettings,
        opts: PolicyOptions,
        sink: Arc<dyn ActionSink>,
    ) -> anyhow::Result<Policy> {
        if on(&m.dm17_rfc2505).is_some() {
            let unmet: Vec<String> = dm17_rfc2505::assess(settings)
                .into_iter()
                .filter(|f| !f.met)
                .map(|f| format!("RFC 2505 §{}: {}", f.section, f.recommendation))
                .collect();
            anyhow::ensure!(
                unmet.is_empty(),
                "DM17 enabled but not met: {}",
                unmet.join("; ")
            );
        }
        let greylist = match on(&m.dm22_greylist) {
            Some(g) => {
                let store = LmdbGreylistStore::open(&opts.state_dir.join("greylist"))?;
                Some(Greylist::new(g, Arc::new(store), opts.state.clone()))
            }
            None => None,
        };
        Ok(Policy {
            dns: Dns::new(opts.dns)?,
            trusted: m
                .trusted_networks
                .iter()
                .filter_map(|n| Network::parse(n).ok())
                .collect(),
            lists: on(&m.dm18_lists).map(Lists::new),
            dnsbl: on(&m.dm20_dnsbl).map(Dnsbl::new),
            greylist,
            rules: on(&m.dm23_regex).map(Rules::new).transpose()?,
            traps: on(&m.dm27_spamtraps).map(|t| Spamtraps::new(t, opts.state.clone())),
            rates: on(&m.dm11_rates).map(|r| ClientRates::new(r, opts.state.clone())),
            connections: on(&m.dm10_connections).map(|c| {
                Connections::new(c.per_client, c.total, opts.stage.name(), opts.state.clone())
            }),
            sender_rate: on(&m.dm34_sender_rate).map(|s| SenderRate::new(s, opts.state.clone())),
            bad_rcpts: Events::new("DM36", opts.state.clone()),
            sessions: Mutex::default(),
            last_prune: Mutex::new(Instant::now()),
            m: m.clone(),
            opts,
            sink,
        })
    }

    /// The mechanisms that are on, as Table I numbers (`DM22`...), for the
    /// start-up log line.
    pub fn enabled(&self) -> Vec<&'static str> {
        self.m
            .present()
            .into_iter()
            .filter(|(_, on)| *on)
            .map(|(k, _)| k)
            .collect()
    }

    /// The node's policy-state backend (the MSA's AUTH throttle uses it).
    pub fn state(&self) -> &SharedState {
        &self.opts.state
    }

    fn who(c: &Client) -> String {
        format!("session {}", c.session)
    }

    fn report(&self, c: &Client, mechanism: &'static str, action: &'static str, detail: &str) {
        self.sink.action(&Self::who(c), mechanism, action, detail);
    }

    /// Refuses with `reply` on behalf of `mechanism`, and reports it.
    fn refused(&self, c: &Client, mechanism: &'static str, reply: Reply) -> Result<(), Refusal> {
        let r = Refusal { mechanism, reply };
        let action = match r.reply.code {
            421 => "disconnect",
            400..=499 => "tempfail",
            _ => "reject",
        };
        self.report(c, r.mechanism, action, &r.reply.to_string());
        Err(r)
    }

    fn with_session<T>(&self, id: u64, f: impl FnOnce(&mut SessionState) -> T) -> T {
        let mut s = self.sessions.lock().unwrap();
        f(s.entry(id).or_default())
    }

    fn trusted(&self, c: &Client) -> bool {
        self.with_session(c.session, |s| s.trusted)
    }

    fn prune(&self) {
        let mut last = self.last_prune.lock().unwrap();
        if last.elapsed() < Duration::from_secs(60) {
            return;
        }
        *last = Instant::now();
        drop(last);
        let life = self.opts.session_lifetime + Duration::from_secs(60);
        self.sessions
            .lock()
            .unwrap()
            .retain(|_, s| s.started.is_some_and(|t| t.elapsed() < life));
        if let Some(r) = &self.rates {
            r.prune();
        }
        if let Some(r) = &self.sender_rate {
            r.prune();
        }
    }

    /// A new connection, before the banner.
    pub async fn on_connect(&self, c: &Client<'_>) -> Result<(), Refusal> {
        self.prune();
        let ip = c.ip();
        let mut trusted = self.trusted.iter().any(|n| n.contains(ip));
        if let Some(lists) = &self.lists {
            match lists.client(ip) {
                Listed::White => {
                    trusted = true;
                    self.report(c, "DM18", "whitelist", &format!("client {ip} whitelisted"));
                }
                Listed::Black => {
                    return self.refused(
                        c,
                        "DM18",
                        Reply::enhanced(
                            554,
                            (5, 7, 1),
                            format!("Client host [{ip}] blocked by local policy"),
                        ),
                    )
                }
                Listed::No => {}
            }
        }
        self.with_session(c.session, |s| {
            *s = SessionState {
                started: Some(Instant::now()),
                trusted,
                ..SessionState::default()
            }
        });
        if let Some(traps) = &self.traps {
            if let Some(reply) = traps.check_client(ip).await {
                return self.refused(c, "DM27", reply);
            }
        }
        if trusted {
            return Ok(());
        }
        // Postfix exempts mynetworks from its client limits
        // (smtpd_client_event_limit_exceptions); so do we, via `trusted`.
        if let Some(conns) = &self.connections {
            if let Some(reply) = conns.admit(c.local, c.peer, c.session).await {
                return self.refused(c, "DM10", reply);
            }
            self.with_session(c.session, |s| s.connection_slot = true);
        }
        if let Some(rates) = &self.rates {
            if let Some(reply) = rates.connection(ip).await {
                return self.refused(c, "DM11", reply);
            }
        }
        if let Some(dnsbl) = &self.dnsbl {
            if let Some(reply) = dnsbl.check(&self.dns, ip).await {
                return self.refused(c, "DM20", reply);
            }
        }
        Ok(())
    }

    /// The session has ended: its DM10 slot (if it held one) is free and
    /// its per-session state goes.
    pub fn on_close(&self, c: &Client<'_>) {
        let ended = self.sessions.lock().unwrap().remove(&c.session);
        if ended.is_some_and(|s| s.connection_slot) {
            if let Some(conns) = &self.connections {
                conns.release(c.local, c.peer, c.session);
            }
        }
    }

    pub async fn on_helo(&self, c: &Client<'_>, name: &str) -> Result<(), Refusal> {
        if self.trusted(c) || c.authenticated {
            return Ok(());
        }
        if on(&self.m.dm19_mta_rules).is_some_and(|r| r.helo_checks) {
            if let Some(reply) =
                dm19_mta_rules::check_helo(name, &self.opts.hostname, &self.opts.local_domains)
            {
                return self.refused(c, "DM19", reply);
            }
        }
        self.rules_on(c, Field::Helo, name)
    }

    fn rules_on(&self, c: &Client, field: Field, value: &str) -> Result<(), Refusal> {
        let Some(rules) = &self.rules else {
            return Ok(());
        };
        for hit in rules.check(field, value) {
            match hit {
                Hit::Refuse(reply) => return self.refused(c, "DM23", reply),
                Hit::Tag(t) => self.report(c, "DM23", "tag", &t),
            }
        }
        Ok(())
    }

    /// A MAIL command. `is_local_domain` tells whether the sender's domain
    /// is one of ours.
    pub async fn on_mail(
        &self,
        c: &Client<'_>,
        from: &str,
        sender_is_local: bool,
    ) -> Result<(), Refusal> {
        self.with_session(c.session, |s| {
            s.spf = None;
            s.last_rcpt = None;
        });
        let trusted = self.trusted(c);
        let ip = c.ip();
        if !trusted {
            if let Some(rates) = &self.rates {
                if let Some(reply) = rates.message(ip).await {
                    return self.refused(c, "DM11", reply);
                }
            }
            if let Some(sr) = &self.sender_rate {
                if let Some(reply) = sr.check(from).await {
                    return self.refused(c, "DM34", reply);
                }
            }
        }
        let mut sender_white = false;
        if let Some(lists) = &self.lists {
            match lists.sender(from) {
                Listed::Black => {
                    return self.refused(
                        c,
                        "DM18",
                        Reply::enhanced(
                            554,
                            (5, 7, 1),
                            format!("<{from}>: Sender address rejected: Access denied"),
                        ),
                    )
                }
                Listed::White => {
                    sender_white = true;
                    self.report(
                        c,
                        "DM18",
                        "whitelist",
                        &format!("sender <{from}> whitelisted"),
                    );
                }
                Listed::No => {}
            }
        }
        if trusted || c.authenticated {
            return Ok(());
        }
        if let Some(r) = on(&self.m.dm19_mta_rules) {
            if r.refuse_local_forgery {
                if let Some(reply) = dm19_mta_rules::check_forgery(from, sender_is_local, false) {
                    return self.refused(c, "DM19", reply);
                }
            }
            if r.sender_domain_must_resolve && !sender_white {
                if let Some(reply) = dm19_mta_rules::check_sender_domain(&self.dns, from).await {
                    return self.refused(c, "DM19", reply);
                }
            }
        }
        self.rules_on(c, Field::MailFrom, from)?;
        let need_spf = on(&self.m.dm30_dm31_auth).is_some()
            || on(&self.m.dm22_greylist).is_some_and(|g| g.spf_pass_bypass);
        if need_spf {
            let helo = c.helo.unwrap_or("");
            let spf = dm30_dm31_auth::spf(&self.dns, ip, helo, &self.opts.hostname, from).await;
            if let Some(a) = on(&self.m.dm30_dm31_auth) {
                if let Some(reply) = dm30_dm31_auth::spf_refusal(a, &spf, from) {
                    return self.refused(c, "DM30", reply);
                }
            }
            self.with_session(c.session, |s| s.spf = Some(spf));
        }
        if sender_white {
            // Whitelisted senders skip greylisting like trusted clients.
            self.with_session(c.session, |s| s.trusted = true);
        }
        Ok(())
    }

    /// A RCPT, before the stage looks the recipient up: relay tricks (DM7),
    /// spamtraps (DM27), and the bad-RCPT tarpit (DM36).
    pub async fn on_rcpt(
        &self,
        c: &Client<'_>,
        to: &str,
        is_local_domain: impl Fn(&str) -> bool,
    ) -> Result<(), Refusal> {
        if let Some(b) = on(&self.m.dm36_bad_rcpt) {
            let mut bad = self.with_session(c.session, |s| s.bad_rcpts);
            if b.client_window.0 > 0.0 {
                let ip = c.ip().to_string();
                let window = b.client_window.duration();
                bad = bad.max(self.bad_rcpts.count(&ip, window).await);
            }
            if let Some(d) = dm36_bad_rcpt::before_rcpt(b, bad) {
                self.report(
                    c,
                    "DM36",
                    "tarpit",
                    &format!("{} ms after {bad} unknown recipients", d.as_millis()),
                );
                tokio::time::sleep(d).await;
            }
        }
        if on(&self.m.dm7_relay_access).is_some() {
            if let Some(reply) =
                dm7_relay_access::check_recipient(to, &is_local_domain, c.authenticated)
            {
                return self.refused(c, "DM7", reply);
            }
        }
        if let Some(traps) = &self.traps {
            if let Some(reply) = traps.check_rcpt(c.ip(), to).await {
                return self.refused(c, "DM27", reply);
            }
        }
        Ok(())
    }

    /// The stage found the recipient unknown (and refuses it with 550
    /// 5.1.1): DM36 may close the session instead.
    pub async fn on_unknown_recipient(&self, c: &Client<'_>) -> Result<(), Refusal> {
        let Some(b) = on(&self.m.dm36_bad_rcpt) else {
            return Ok(());
        };
        let mut bad = self.with_session(c.session, |s| {
            s.bad_rcpts += 1;
            s.bad_rcpts
        });
        if b.client_window.0 > 0.0 {
            let ip = c.ip().to_string();
            let window = b.client_window.duration();
            bad = bad.max(self.bad_rcpts.record(&ip, window).await);
        }
        match dm36_bad_rcpt::after_bad_rcpt(b, bad) {
            Throttle::Disconnect(reply) => self.refused(c, "DM36", reply),
            Throttle::Delay(_) | Throttle::None => Ok(()),
        }
    }

    /// A RCPT the stage accepts (known local recipient): greylisting and
    /// recipient rules.
    pub async fn on_known_recipient(
        &self,
        c: &Client<'_>,
        from: &str,
        to: &str,
    ) -> Result<(), Refusal> {
        self.rules_on(c, Field::RcptTo, to)?;
        let (trusted, spf_pass) = self.with_session(c.session, |s| {
            (
                s.trusted,
                s.spf
                    .as_ref()
                    .is_some_and(|o| o.result() == SpfResult::Pass),
            )
        });
        if let (Some(g), false, false) = (&self.greylist, trusted, c.authenticated) {
            let bypass = on(&self.m.dm22_greylist).is_some_and(|s| s.spf_pass_bypass) && spf_pass;
            if bypass {
                self.report(
                    c,
                    "DM22",
                    "bypass",
                    &format!("<{from}> SPF pass: not greylisted"),
                );
            } else {
                let net = client_network(c.ip());
                match g.check(&net, from, to).await {
                    Ok(Grey::Pass) => {}
                    Ok(Grey::PassedRetry) => self.report(
                        c,
                        "DM22",
                        "pass",
                        &format!("({net}, <{from}>, <{to}>) retried after the delay"),
                    ),
                    Ok(Grey::Greylisted(reply)) => return self.refused(c, "DM22", reply),
                    Err(e) => warn!("DM22: greylist store failed, letting mail through: {e}"),
                }
            }
        }
        self.with_session(c.session, |s| s.last_rcpt = Some(Instant::now()));
        Ok(())
    }

    /// The whole message, before it is queued: data rate (DM33), header
    /// rules (DM23), SPF/DKIM/DMARC/ARC (DM30/31) with the
    /// Authentication-Results header.
    pub async fn on_message(
        &self,
        c: &Client<'_>,
        from: &str,
        message: &[u8],
    ) -> Result<MessagePlan, Refusal> {
        let mut plan = MessagePlan::default();
        let (trusted, spf, last_rcpt) =
            self.with_session(c.session, |s| (s.trusted, s.spf.take(), s.last_rcpt.take()));
        if let (Some(d), Some(since)) = (on(&self.m.dm33_data_rate), last_rcpt) {
            match dm33_data_rate::check(d, message.len(), since.elapsed()) {
                RateVerdict::Within => {}
                RateVerdict::Slow(wait) => {
                    plan.actions.push(Action {
                        mechanism: "DM33",
                        action: "slow",
                        detail: format!(
                            "{} bytes above {} B/s: held {} ms",
                            message.len(),
                            d.bytes_per_second,
                            wait.as_millis()
                        ),
                    });
                    tokio::time::sleep(wait).await;
                }
                RateVerdict::Cut(reply) => {
                    self.refused(c, "DM33", reply.clone())?;
                }
            }
        }
        if let Some(rules) = self.rules.as_ref().filter(|r| r.has_header_rules()) {
            for (name, value) in dm23_regex::headers(message) {
                for hit in rules.check(Field::Header(&name), &value) {
                    match hit {
                        Hit::Refuse(reply) => self.refused(c, "DM23", reply)?,
                        Hit::Tag(t) => {
                            plan.prepend.push_str(&format!("X-Palisade-Rule: {t}\r\n"));
                            plan.actions.push(Action {
                                mechanism: "DM23",
                                action: "tag",
                                detail: format!("{name}: {t}"),
                            });
                        }
                    }
                }
            }
        }
        if let (Some(a), false, false) = (on(&self.m.dm30_dm31_auth), trusted, c.authenticated) {
            let helo = c.helo.unwrap_or("");
            let spf = match spf {
                Some(s) => s,
                None => {
                    dm30_dm31_auth::spf(&self.dns, c.ip(), helo, &self.opts.hostname, from).await
                }
            };
            let origin = dm30_dm31_auth::Origin {
                ip: c.ip(),
                helo,
                mail_from: from,
            };
            let v = dm30_dm31_auth::verify_message(
                &self.dns,
                a,
                &self.opts.hostname,
                &origin,
                &spf,
                message,
            )
            .await;
            if let Some(reply) = v.refusal {
                self.refused(c, "DM31", reply)?;
            }
            plan.actions.push(Action {
                mechanism: "DM31",
                action: "record",
                detail: v.summary,
            });
            // Authentication-Results goes on top, above any tag, like a
            // trace header of this hop (RFC 8601 §5).
            plan.prepend = v.header + &plan.prepend;
        }
        Ok(plan)
    }

    pub fn stage(&self) -> StageKind {
        self.opts.stage
    }
}
