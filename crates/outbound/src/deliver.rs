//! The delivery loop of stage F: every due message is delivered to the
//! destinations of its pending recipients, all destination domains in
//! parallel; each recipient's result goes back to the durable queue
//! (`Queue::record`: per-recipient state, backoff with jitter, expiry),
//! and the authenticated sender gets a DSN for failures and long delays.
//!
//! Where a recipient goes, in order:
//! 1. a local domain (only DSNs we generate ourselves): back into the
//!    chain, to the pool the MSA forwards to (the antivirus pair), so the
//!    notice is scanned and filed like any other message;
//! 2. the static route of its domain (`[stage.outgoing.routes]`, or `*`);
//! 3. the stage's `relay` list (a smarthost for everything);
//! 4. the domain's MX hosts (crate::resolve), port `outbound.smtp_port`.
//!
//! Hosts are tried in order until one gives a transaction result; a host
//! that cannot be reached, fails TLS, or tempfails MAIL (421 or 4xx) is
//! skipped for the next one (secondary MX). Per-recipient replies then
//! decide: 2xx delivered, 4xx deferred, 5xx failed — as corrected by the
//! bounce classifier (a 5xx "greylisted" is retried).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use palisade_config::{static_route, NextHop, OutboundSettings, StageKind, StageSettings};
use palisade_queue::{
    ClientInfo, Envelope, NewMessage, NewRecipient, Outcome, Queue, QueueId, RcptStatus,
};
use palisade_smtp_client::{
    dane_tls_config, insecure_tls_config, ClientConfig, ClientError, Connection, TlsMode, Tlsa,
    Transaction, TxResult,
};
use palisade_stage::received::{received_header, with_header, Hop};
use palisade_stage::NodeContext;
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::bounce::{
    self, classify_client_error, classify_reply, classify_resolve_error, Classified,
};
use crate::dane::{tlsa_name, Dane, HostDane};
use crate::dkim::{from_domain, DkimSigners, REVERIFY_EVERY};
use crate::dsn::{self, DsnInput, DsnKind, DsnRecipient};
use crate::mta_sts::{Mode as StsMode, StsCache};
use crate::resolve::DnsResolver;
use crate::tls_policy::{
    tlsrpt_result, verified_tls, DaneFailure, TlsPolicies, TlsPolicy, DANE_LABEL,
};
use crate::tlsrpt::{PolicyKey, TlsReports};

/// Idle pooled connections older than this are closed rather than reused.
const IDLE_REUSE_LIMIT: Duration = Duration::from_secs(20);
/// Idle connections kept per remote address.
const MAX_IDLE_PER_HOST: usize = 8;

/// How one connection must be secured; part of the pool key, so a pooled
/// connection is only reused under the same (or the same strict) terms.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum HostTls {
    /// STARTTLS when offered, certificate not checked (RFC 7435).
    Opportunistic,
    /// STARTTLS required, certificate not checked.
    Required,
    /// STARTTLS required, certificate verified against this host name.
    Verified(String),
    /// STARTTLS required, certificate matched against the TLSA records of
    /// this MX host (DANE, RFC 7672); `names`: the TLSA base domain (the
    /// SNI name), then the MX host name if it differs.
    Dane { names: Vec<String>, tlsa: Vec<Tlsa> },
}

/// Idle connections by (remote address, TLS terms), with when each was parked.
type IdlePool = HashMap<(SocketAddr, HostTls), Vec<(Connection, Instant)>>;

/// Where one group of recipients of a message goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Route {
    /// Back into our own chain (DSNs to local senders).
    Chain(Vec<SocketAddr>),
    /// Fixed hosts: a static route or the relay list.
    Fixed {
        domain: String,
        hosts: Vec<SocketAddr>,
    },
    /// The domain's MX hosts.
    Mx { domain: String },
}

impl Route {
    /// The destination that concurrency and rate limits count against.
    fn destination(&self) -> &str {
        match self {
            Route::Chain(_) => "(chain)",
            Route::Fixed { domain, .. } | Route::Mx { domain } => domain,
        }
    }
}

/// A host to try, with the name it was found under (for logs and DSNs).
struct Candidate {
    name: String,
    addr: SocketAddr,
}

pub struct Deliverer {
    ctx: Arc<NodeContext>,
    queue: Queue,
    settings: StageSettings,
    dns: DnsResolver,
    tls: TlsPolicies,
    /// The signing keys, replaced whole by a reload (SIGHUP): each message
    /// is signed with the set in force when it is prepared.
    dkim: RwLock<Arc<DkimSigners>>,
    client: ClientConfig,
    /// Verified TLS: WebPKI roots plus `outbound.ca_file`.
    verified: Arc<rustls::ClientConfig>,
    idle: Mutex<IdlePool>,
    per_destination: Mutex<HashMap<String, Arc<Semaphore>>>,
    next_start: Mutex<HashMap<String, Instant>>,
    slots: Arc<Semaphore>,
    /// Messages whose sender already got a "delayed" notice (persisted:
    /// one line per id in `delay-notified`, so a restart does not repeat it).
    delay_notified: Mutex<HashSet<QueueId>>,
    delay_notified_file: PathBuf,
    /// TLSRPT counts (None when `outbound.tlsrpt_interval` is 0).
    reports: Option<Arc<TlsReports>>,
}

impl Deliverer {
    pub fn new(ctx: Arc<NodeContext>, queue: Queue) -> anyhow::Result<Arc<Deliverer>> {
        let settings = StageSettings::clone(&ctx.settings());
        let o = &settings.outbound;
        let dns = DnsResolver::new(ctx.config.gateway.dns)?;
        let dkim = RwLock::new(Arc::new(DkimSigners::load(&o.dkim)?));
        let client = ClientConfig {
            helo_name: ctx.config.gateway.hostname.clone(),
            tls_mode: TlsMode::Opportunistic,
            // Opportunistic TLS cannot authenticate the server (RFC 7435);
            // verified TLS (MTA-STS, require_tls verify) uses `verified`.
            tls: Some(insecure_tls_config()),
            server_name: None,
            connect_timeout: o.connect_timeout.duration(),
            command_timeout: o.command_timeout.duration(),
            data_timeout: o.command_timeout.duration() * 2,
        };
        let node_dir = ctx.config.node_dir(&ctx.node_name);
        let verified = verified_tls(o.ca_file.as_deref())?;
        let sts = o.mta_sts.then(|| {
            StsCache::new(
                node_dir.join("mta-sts.json"),
                verified.clone(),
                o.mta_sts_port,
                o.mta_sts_recheck.duration(),
            )
        });
        let dane = Dane::new(ctx.config.gateway.dns, &o.dane)?;
        let reports = (o.tlsrpt_interval.0 > 0.0).then(|| {
            Arc::new(TlsReports::new(
                node_dir.join("tlsrpt.json"),
                o.tlsrpt_interval.duration(),
            ))
        });
        let delay_notified_file = node_dir.join("delay-notified");
        let delay_notified = std::fs::read_to_string(&delay_notified_file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        let deliverer = Arc::new(Deliverer {
            slots: Arc::new(Semaphore::new(settings.queue.concurrency.max(1))),
            ctx,
            queue,
            settings,
            dns,
            tls: TlsPolicies::new(sts, dane),
            dkim,
            client,
            verified,
            idle: Mutex::default(),
            per_destination: Mutex::default(),
            next_start: Mutex::default(),
            delay_notified: Mutex::new(delay_notified),
            delay_notified_file,
            reports,
        });
        let me = Arc::downgrade(&deliverer);
        deliverer
            .ctx
            .on_reload("DKIM keys", move |config| match me.upgrade() {
                Some(me) => me.reload_dkim(config),
                None => Ok(()),
            });
        Ok(deliverer)
    }

    fn dkim(&self) -> Arc<DkimSigners> {
        self.dkim.read().unwrap().clone()
    }

    /// A reload: the keys of the new configuration sign the next message
    /// (key rotation without a restart). A key that cannot be read keeps
    /// the whole running set: better the old selector than no signature.
    fn reload_dkim(self: &Arc<Self>, config: &palisade_config::Config) -> anyhow::Result<()> {
        let keys = &config.settings(StageKind::Outgoing).outbound.dkim;
        let new = Arc::new(DkimSigners::load(keys)?);
        *self.dkim.write().unwrap() = new.clone();
        info!("DKIM keys reloaded: signing with {}", new.describe());
        // A domain with several signing keys picks by DNS again.
        let me = self.clone();
        tokio::spawn(async move { new.verify_published(&me.dns).await });
        Ok(())
    }

    fn outbound(&self) -> &OutboundSettings {
        &self.settings.outbound
    }

    /// Runs forever: every due message gets a delivery attempt.
    pub async fn run(self: Arc<Self>) {
        if let Some(dane) = self.tls.dane().cloned() {
            tokio::spawn(async move {
                if let Err(e) = dane.check_root().await {
                    warn!(
                        "DANE: {e}: the DNS server (gateway.dns) does not give validatable DNSSEC \
                         answers; mail to MX domains outside the zones of dane.trust_anchor_file \
                         will be deferred (set [stage.outgoing.outbound.dane] enabled = false \
                         to deliver without DANE)"
                    );
                }
            });
        }
        {
            let me = self.clone();
            tokio::spawn(async move {
                loop {
                    let dkim = me.dkim();
                    if !dkim.is_empty() {
                        dkim.verify_published(&me.dns).await;
                    }
                    tokio::time::sleep(REVERIFY_EVERY).await;
                }
            });
        }
        if let Some(reports) = &self.reports {
            let config = &self.ctx.config;
            // From: a local domain's postmaster, so the report is DKIM-signed.
            let from_domain = (self.outbound().dkim.iter().find(|k| k.signs()))
                .map(|k| k.domain.clone())
                .or_else(|| config.domains.first().map(|d| d.name.clone()))
                .unwrap_or_else(|| config.gateway.hostname.clone());
            tokio::spawn(reports.clone().run(crate::tlsrpt::ReportSender {
                queue: self.queue.clone(),
                dns: self.dns.clone(),
                metrics: self.ctx.metrics.clone(),
                node: self.ctx.node_name.clone(),
                submitter: config.gateway.hostname.clone(),
                from: format!("postmaster@{from_domain}"),
            }));
        }
        // `palisade drain --keep` holds deliveries (the queue stays for
        // the restart); `--flush` keeps delivering.
        let (drain, queue, slots) = (
            self.ctx.drain.clone(),
            self.queue.clone(),
            self.slots.clone(),
        );
        drain
            .run_deliveries(&queue, slots, |id| self.clone().attempt(id))
            .await
    }

    async fn attempt(self: Arc<Self>, id: QueueId) {
        let Some((envelope, body)) = self.queue.load_due(id) else {
            return;
        };
        let message = Arc::new(self.prepare_message(&envelope, &body));
        let origin = Arc::new(envelope.origin_or_here(&self.ctx.node_name));
        let groups = envelope.pending_by(|rcpt| self.route_of(rcpt));
        let envelope = Arc::new(envelope);

        // One message to many domains: every destination in parallel. Each
        // destination that finishes while others are still sending settles
        // its delivered recipients durably at once, so a crash (kill -9)
        // during a slow destination never re-sends to one that already
        // answered 250. The last one to finish leaves it to `record` below
        // (one commit instead of two for the common one-domain message).
        let started = Instant::now();
        let still_sending = Arc::new(AtomicUsize::new(groups.len()));
        let mut tasks = tokio::task::JoinSet::new();
        for (route, rcpts) in groups {
            let me = self.clone();
            let (envelope, message, origin) = (envelope.clone(), message.clone(), origin.clone());
            let still_sending = still_sending.clone();
            tasks.spawn(async move {
                let results = me
                    .deliver_group(id, &route, &envelope, &rcpts, &origin, &message)
                    .await;
                if still_sending.fetch_sub(1, Ordering::AcqRel) > 1 {
                    me.settle_delivered(id, &results).await;
                }
                me.log_results(id, &envelope, &results, started);
                results
            });
        }
        let mut results = Vec::new();
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok(v) => results.extend(v),
                Err(e) => warn!("{id}: delivery task failed: {e}"),
            }
        }
        let any_deferred = results
            .iter()
            .any(|(_, o)| matches!(o, Outcome::Deferred(_)));
        match self.queue.record(id, results).await {
            Ok(rec) => {
                if !rec.failed_now.is_empty() {
                    self.notify(&envelope, &body, DsnKind::Failure, &rec.failed_now)
                        .await;
                }
                if rec.finished {
                    info!("{id}: removed");
                    self.forget_delay_notice(id);
                } else if any_deferred {
                    self.maybe_notify_delay(id).await;
                }
            }
            Err(e) => warn!("{id}: cannot record delivery results: {e}"),
        }
    }

    /// Stores the delivered recipients of one finished destination now
    /// (Queue::settle). Failures and deferrals wait for the attempt's
    /// `record`: repeating those after a crash delivers nothing twice, and
    /// the failure notice stays tied to the one record that fails them.
    async fn settle_delivered(&self, id: QueueId, results: &[(usize, Outcome)]) {
        let delivered: Vec<(usize, String)> = results
            .iter()
            .filter_map(|(i, o)| match o {
                Outcome::Delivered(reply) => Some((*i, reply.clone())),
                _ => None,
            })
            .collect();
        if delivered.is_empty() {
            return;
        }
        if let Err(e) = self.queue.settle(id, delivered).await {
            // `record` at the end of the attempt stores them anyway.
            warn!("{id}: cannot store deliveries before the attempt ends: {e}");
        }
    }

    /// Our Received line, then the DKIM signature when the From: domain is
    /// one of ours and we hold its key.
    fn prepare_message(&self, envelope: &Envelope, body: &[u8]) -> Vec<u8> {
        let qid = envelope.id.to_string();
        let header = received_header(&Hop::of_queued(
            envelope,
            &self.ctx.config.gateway.hostname,
            &self.ctx.node_name,
            &qid,
        ));
        let message = with_header(&header, body);
        if let Some(domain) = from_domain(body) {
            match self.dkim().sign(&domain, &message) {
                Some(Ok(sig)) => {
                    let mut signed = sig.into_bytes();
                    signed.extend_from_slice(&message);
                    self.ctx.metrics.inc(
                        "palisade_dkim_signed_total",
                        "Messages DKIM-signed by this node.",
                        &[],
                    );
                    return signed;
                }
                Some(Err(e)) => warn!("{}: {e}; sending unsigned", envelope.id),
                None => {}
            }
        }
        message
    }

    fn route_of(&self, rcpt: &str) -> Route {
        let domain = rcpt
            .rsplit_once('@')
            .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase())
            .unwrap_or_default();
        if self.ctx.config.local_domain(rcpt).is_some() {
            if let NextHop::Pool { addrs, .. } = self.ctx.config.next_hop(StageKind::Msa, rcpt) {
                return Route::Chain(addrs);
            }
        }
        if let Some(hosts) = static_route(&self.settings.routes, &domain) {
            return Route::Fixed {
                domain,
                hosts: hosts.to_vec(),
            };
        }
        if !self.settings.relay.is_empty() {
            return Route::Fixed {
                domain,
                hosts: self.settings.relay.clone(),
            };
        }
        Route::Mx { domain }
    }

    fn destination_slot(&self, dest: &str) -> Arc<Semaphore> {
        let n = self.outbound().per_domain_concurrency.max(1);
        self.per_destination
            .lock()
            .unwrap()
            .entry(dest.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(n)))
            .clone()
    }

    /// Waits for this destination's next start time (per_domain_rate).
    async fn pace(&self, dest: &str) {
        let rate = self.outbound().per_domain_rate;
        if rate <= 0.0 {
            return;
        }
        let interval = Duration::from_secs_f64(1.0 / rate);
        let start = {
            let mut next = self.next_start.lock().unwrap();
            let now = Instant::now();
            let slot = next.get(dest).copied().filter(|t| *t > now).unwrap_or(now);
            next.insert(dest.to_string(), slot + interval);
            slot
        };
        tokio::time::sleep_until(start.into()).await;
    }

    async fn deliver_group(
        &self,
        id: QueueId,
        route: &Route,
        envelope: &Envelope,
        rcpts: &[usize],
        origin: &str,
        message: &[u8],
    ) -> Vec<(usize, Outcome)> {
        let dest = route.destination().to_string();
        let slot = self.destination_slot(&dest);
        let _permit = slot.acquire_owned().await.expect("never closed");
        self.pace(&dest).await;

        let all = |o: Outcome| rcpts.iter().map(|&i| (i, o.clone())).collect::<Vec<_>>();
        let (candidates, policy) = match route {
            Route::Chain(addrs) => (
                addrs
                    .iter()
                    .map(|a| Candidate {
                        name: "chain".into(),
                        addr: *a,
                    })
                    .collect::<Vec<_>>(),
                TlsPolicy::Opportunistic,
            ),
            Route::Fixed { domain, hosts } => (
                hosts
                    .iter()
                    .map(|a| Candidate {
                        name: domain.clone(),
                        addr: *a,
                    })
                    .collect(),
                self.tls_policy(route, domain, false).await,
            ),
            Route::Mx { domain } => match self.dns.mail_exchangers(domain).await {
                Ok(hosts) => {
                    let port = self.outbound().smtp_port;
                    let policy = match self.mx_tls_policy(id, route, domain, &hosts, port).await {
                        Ok(p) => p,
                        Err(deferred) => return all(deferred),
                    };
                    (
                        hosts
                            .iter()
                            .flat_map(|h| {
                                h.addrs.iter().map(move |ip| Candidate {
                                    name: h.name.clone(),
                                    addr: SocketAddr::new(*ip, port),
                                })
                            })
                            .collect(),
                        policy,
                    )
                }
                Err(e) => {
                    let c = classify_resolve_error(&e);
                    self.count_bounce(&c);
                    let text = bounce::tag(&c, &e.to_string());
                    return all(if c.permanent {
                        Outcome::Failed(text)
                    } else {
                        Outcome::Deferred(text)
                    });
                }
            },
        };

        let rcpt_list: Vec<(&str, &str)> = rcpts
            .iter()
            .map(|&i| {
                let r = &envelope.rcpts[i];
                (r.address.as_str(), r.params.as_str())
            })
            .collect();
        let tx = Transaction {
            mail_from: &envelope.mail_from,
            mail_params: &envelope.mail_params,
            origin: Some(origin),
            rcpts: &rcpt_list,
            body: message,
        };
        let mut last: Option<(Classified, String)> = None;
        for c in &candidates {
            // A TLS policy failure on this host (a TLSRPT failure, not a success).
            let mut tls_failed = false;
            let tls = match &policy {
                TlsPolicy::Opportunistic => HostTls::Opportunistic,
                TlsPolicy::Required { verify: false, .. } => HostTls::Required,
                TlsPolicy::Required { verify: true, .. } => HostTls::Verified(c.name.clone()),
                TlsPolicy::Dane(d) => match d.host(&c.name) {
                    // RFC 7672 §2.2.1: not a host of the secure MX RRset.
                    None => {
                        let why = format!(
                            "host {}[{}] is not in the domain's DNSSEC-signed MX records (DANE)",
                            c.name, c.addr
                        );
                        warn!("{id}: {why}; not used");
                        last = Some((classify_client_error(&ClientError::TlsRequired), why));
                        continue;
                    }
                    // §2.2: a failed TLSA (or address) lookup: not this host.
                    Some(Err(e)) => {
                        self.count_tls_failure(route, &policy, "dnssec-invalid", &c.name);
                        let why = format!("host {}[{}]: {e} (DANE)", c.name, c.addr);
                        warn!("{id}: {why}; not used");
                        last = Some((dnssec_failure(&dest, e), why));
                        continue;
                    }
                    Some(Ok(HostDane::Authenticate { tlsa, names })) => HostTls::Dane {
                        names: names.clone(),
                        tlsa: tlsa.clone(),
                    },
                    // A TLSA RRset with no usable record: TLS mandatory,
                    // the certificate not checked ("encrypt", §2.2).
                    Some(Ok(HostDane::Encrypt)) if d.require_tls != Some(true) => HostTls::Required,
                    // No TLSA for this host: pre-DANE TLS for it (§2.2).
                    Some(Ok(HostDane::NoTlsa)) if d.require_tls.is_none() => HostTls::Opportunistic,
                    Some(Ok(HostDane::NoTlsa)) if d.require_tls == Some(false) => HostTls::Required,
                    Some(Ok(_)) => HostTls::Verified(c.name.clone()),
                },
                TlsPolicy::Sts(p) => {
                    if !p.allows_mx(&c.name) {
                        // RFC 8461 §4.1: enforce = never this host;
                        // testing = use it, but report.
                        self.count_tls_failure(route, &policy, "validation-failure", &c.name);
                        let why = format!(
                            "host {}[{}] is not an MX of the domain's MTA-STS policy",
                            c.name, c.addr
                        );
                        if p.mode == StsMode::Enforce {
                            warn!("{id}: {why}; not used");
                            last = Some((classify_client_error(&ClientError::TlsRequired), why));
                            continue;
                        }
                        info!("{id}: {why} (mode testing: used anyway)");
                        tls_failed = true;
                    }
                    HostTls::Verified(c.name.clone())
                }
            };
            let mut outcome = self.try_host(c.addr, &tls, &tx).await;
            let checked = matches!(tls, HostTls::Verified(_) | HostTls::Dane { .. })
                || matches!((&policy, &tls), (TlsPolicy::Dane(_), HostTls::Required));
            if let (Err(e @ (ClientError::Tls(_) | ClientError::TlsRequired)), true) =
                (&outcome, checked)
            {
                self.count_tls_failure(route, &policy, tlsrpt_result(e), &c.name);
                tls_failed = true;
                if matches!(&policy, TlsPolicy::Sts(p) if p.mode == StsMode::Testing) {
                    // Testing mode: deliver anyway, as without a policy.
                    info!(
                        "{id}: {}[{}]: {e} (MTA-STS mode testing: delivering without verification)",
                        c.name, c.addr
                    );
                    outcome = self.try_host(c.addr, &HostTls::Opportunistic, &tx).await;
                }
            }
            match outcome {
                Ok(result) => {
                    if let Some(reply) = whole_tempfail(&result) {
                        let cl = classify_reply(reply);
                        warn!(
                            "{id}: {}[{}] tempfailed ({reply}); trying the next host",
                            c.name, c.addr
                        );
                        last = Some((cl, format!("host {}[{}] said: {reply}", c.name, c.addr)));
                        continue;
                    }
                    // TLSRPT success: a session whose TLS the policy required.
                    if tls != HostTls::Opportunistic && !tls_failed {
                        self.record_tls(route, &policy, Ok(()));
                    }
                    return rcpts
                        .iter()
                        .enumerate()
                        .map(|(k, &i)| (i, self.outcome_of(c, result.rcpt_outcome(k))))
                        .collect();
                }
                Err(e) => {
                    let cl = classify_client_error(&e);
                    // The TLSA records' owner: at the TLSA base domain.
                    let tlsa_at = match &tls {
                        HostTls::Dane { names, .. } => tlsa_name(&names[0], c.addr.port()),
                        _ => tlsa_name(&c.name, c.addr.port()),
                    };
                    let why = match (&e, &policy) {
                        (ClientError::TlsRequired, TlsPolicy::Required { why: rule, .. }) => {
                            format!(
                                "host {}[{}] does not offer STARTTLS, required by {rule}",
                                c.name, c.addr
                            )
                        }
                        (ClientError::TlsRequired, TlsPolicy::Sts(_)) => format!(
                            "host {}[{}] does not offer STARTTLS, required by the domain's MTA-STS policy",
                            c.name, c.addr
                        ),
                        (ClientError::Tls(_), TlsPolicy::Sts(_)) => format!(
                            "host {}[{}]: {e} (certificate required by the domain's MTA-STS policy)",
                            c.name, c.addr
                        ),
                        (ClientError::TlsRequired, TlsPolicy::Dane(_)) => format!(
                            "host {}[{}] does not offer STARTTLS, required by DANE (TLSA at {tlsa_at})",
                            c.name, c.addr,
                        ),
                        (ClientError::Tls(_), TlsPolicy::Dane(_)) => format!(
                            "host {}[{}]: {e} (DANE: TLSA at {tlsa_at})",
                            c.name, c.addr,
                        ),
                        _ => format!("host {}[{}]: {e}", c.name, c.addr),
                    };
                    warn!("{id}: {why}; trying the next host");
                    last = Some((cl, why));
                }
            }
        }
        let (cl, why) = last.unwrap_or_else(|| {
            (
                classify_resolve_error(&crate::resolve::ResolveError::Temporary {
                    name: dest.clone(),
                    why: "no host".into(),
                }),
                format!("no host to deliver to for {dest}"),
            )
        });
        self.count_bounce(&cl);
        all(Outcome::Deferred(bounce::tag(&cl, &why)))
    }

    fn outcome_of(&self, c: &Candidate, reply: &palisade_smtp_proto::Reply) -> Outcome {
        let text = format!("host {}[{}] said: {reply}", c.name, c.addr);
        if reply.is_positive() {
            return Outcome::Delivered(text);
        }
        let cl = classify_reply(reply);
        self.count_bounce(&cl);
        let tagged = bounce::tag(&cl, &text);
        if cl.permanent {
            Outcome::Failed(tagged)
        } else {
            Outcome::Deferred(tagged)
        }
    }

    /// The domain's TLS policy; a failed MTA-STS policy fetch is counted.
    async fn tls_policy(&self, route: &Route, domain: &str, mx_route: bool) -> TlsPolicy {
        let (policy, failure) = self
            .tls
            .policy_for(domain, self.outbound(), &self.dns, mx_route)
            .await;
        if let Some(f) = failure {
            self.count_tls_failure(route, &policy, f.label(), "");
        }
        policy
    }

    /// The TLS policy of an MX-routed domain: DANE when it applies
    /// (RFC 7672; before MTA-STS, RFC 8461 §2), else the configuration's
    /// and MTA-STS's. Err: the domain's DNSSEC lookups failed, every
    /// recipient is deferred with this outcome (RFC 7672 §2.1).
    async fn mx_tls_policy(
        &self,
        id: QueueId,
        route: &Route,
        domain: &str,
        hosts: &[crate::resolve::MxHost],
        port: u16,
    ) -> Result<TlsPolicy, Outcome> {
        let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        match self
            .tls
            .dane_policy(domain, self.outbound(), &names, port)
            .await
        {
            Ok(Some(dane)) => Ok(TlsPolicy::Dane(dane)),
            Ok(None) => Ok(self.tls_policy(route, domain, true).await),
            Err(DaneFailure(e)) => {
                self.count_tls_result(DANE_LABEL, "dnssec-invalid");
                let why = format!("{e} (DANE: MX records of {domain})");
                warn!("{id}: {why}; kept queued");
                let cl = dnssec_failure(domain, &e.to_string());
                self.count_bounce(&cl);
                Err(Outcome::Deferred(bounce::tag(&cl, &why)))
            }
        }
    }

    /// TLSRPT failure counter (RFC 8460 result types) by policy, and the
    /// session in the domain's next TLSRPT report.
    fn count_tls_failure(&self, route: &Route, policy: &TlsPolicy, result: &str, mx: &str) {
        self.count_tls_result(policy.label(), result);
        self.record_tls(route, policy, Err((result, mx)));
    }

    fn count_tls_result(&self, policy: &str, result: &str) {
        self.ctx.metrics.inc(
            "palisade_tls_failures_total",
            "Failed TLS policy checks towards remote MX hosts (TLSRPT result types).",
            &[("policy", policy), ("result", result)],
        );
    }

    fn record_tls(&self, route: &Route, policy: &TlsPolicy, outcome: Result<(), (&str, &str)>) {
        if let (Some(reports), Route::Fixed { domain, .. } | Route::Mx { domain }) =
            (&self.reports, route)
        {
            reports.record(PolicyKey::of(domain, policy), outcome);
        }
    }

    fn count_bounce(&self, c: &Classified) {
        self.ctx.metrics.inc(
            "palisade_bounces_total",
            "Delivery failures by root cause (bounce study) and kind.",
            &[
                ("cause", c.cause.label()),
                (
                    "kind",
                    if c.permanent {
                        "permanent"
                    } else {
                        "temporary"
                    },
                ),
            ],
        );
    }

    /// One transaction on one host, on a pooled connection when there is
    /// one (a stale pooled connection is replaced once).
    async fn try_host(
        &self,
        addr: SocketAddr,
        tls: &HostTls,
        tx: &Transaction<'_>,
    ) -> Result<TxResult, ClientError> {
        let mut cfg = self.client.clone();
        match tls {
            HostTls::Opportunistic => {}
            HostTls::Required => cfg.tls_mode = TlsMode::Required,
            HostTls::Verified(name) => {
                cfg.tls_mode = TlsMode::Required;
                cfg.tls = Some(self.verified.clone());
                cfg.server_name = Some(name.trim_end_matches('.').to_string());
            }
            HostTls::Dane { names, tlsa } => {
                cfg.tls_mode = TlsMode::Required;
                cfg.tls = Some(dane_tls_config(tlsa.clone(), names.clone()));
                // RFC 7672 §8.1: SNI with the TLSA base domain.
                cfg.server_name = Some(names[0].clone());
            }
        }
        let tls_required = *tls != HostTls::Opportunistic;
        let pooled = self.take_idle(addr, tls);
        let fresh = pooled.is_none();
        let mut conn = match pooled {
            Some(c) => c,
            None => Connection::connect(addr, &cfg).await?,
        };
        if tls_required && !conn.is_tls() {
            // Belt and braces: never send a required-TLS message in clear.
            return Err(ClientError::TlsRequired);
        }
        let result = match conn.send(tx).await {
            Ok(r) => r,
            Err(ClientError::Io(_) | ClientError::Timeout(_) | ClientError::Protocol(_))
                if !fresh =>
            {
                conn = Connection::connect(addr, &cfg).await?;
                conn.send(tx).await?
            }
            Err(e) => return Err(e),
        };
        if conn.is_usable() {
            self.put_idle(addr, tls.clone(), conn);
        }
        Ok(result)
    }

    fn take_idle(&self, addr: SocketAddr, tls: &HostTls) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap();
        let list = idle.get_mut(&(addr, tls.clone()))?;
        while let Some((conn, since)) = list.pop() {
            if since.elapsed() < IDLE_REUSE_LIMIT {
                return Some(conn);
            }
        }
        None
    }

    fn put_idle(&self, addr: SocketAddr, tls: HostTls, conn: Connection) {
        let mut idle = self.idle.lock().unwrap();
        let list = idle.entry((addr, tls)).or_default();
        if list.len() < MAX_IDLE_PER_HOST {
            list.push((conn, Instant::now()));
        }
    }

    fn log_results(
        &self,
        id: QueueId,
        envelope: &Envelope,
        results: &[(usize, Outcome)],
        started: Instant,
    ) {
        let delay = SystemTime::now()
            .duration_since(envelope.arrived)
            .unwrap_or_default()
            .as_secs_f64();
        for (i, outcome) in results {
            let rcpt = &envelope.rcpts[*i].address;
            let (status, text) = match outcome {
                Outcome::Delivered(t) => ("sent", t),
                Outcome::Deferred(t) => ("deferred", t),
                Outcome::Failed(t) => ("bounced", t),
            };
            info!(
                "{id}: to=<{rcpt}>, delay={delay:.3}, attempt={:.3}, status={status} ({text})",
                started.elapsed().as_secs_f64()
            );
            self.ctx.metrics.inc(
                "palisade_deliveries_total",
                "Recipient delivery attempts by result.",
                &[("status", status)],
            );
        }
    }

    /// A DSN goes only to a local sender who authenticated (flow 4): the
    /// session that queued the message was authenticated, or the message
    /// entered the gateway at an MSA node (which takes mail only after
    /// AUTH; internal stages carry that entry point in the origin token).
    fn may_notify(&self, envelope: &Envelope) -> bool {
        if envelope.mail_from.is_empty()
            || self.ctx.config.local_domain(&envelope.mail_from).is_none()
        {
            return false;
        }
        if envelope.client.auth_user.is_some() {
            return true;
        }
        let entry_node = envelope
            .origin
            .as_deref()
            .and_then(|o| o.split_once('/'))
            .map(|(n, _)| n);
        entry_node
            .and_then(|n| self.ctx.config.node.get(n))
            .is_some_and(|n| n.stage == StageKind::Msa)
    }

    async fn notify(
        &self,
        envelope: &Envelope,
        body: &[u8],
        kind: DsnKind,
        rcpts: &[(String, String)],
    ) {
        let id = envelope.id;
        if !self.may_notify(envelope) {
            for (rcpt, why) in rcpts {
                info!("{id}: to=<{rcpt}>: {why}; no DSN (sender not an authenticated local user)");
            }
            return;
        }
        let recipients: Vec<DsnRecipient> = rcpts
            .iter()
            .map(|(address, why)| {
                let (cause, status, diagnostic) = bounce::untag(why).unwrap_or((
                    bounce::BounceCause::Other,
                    (5, 0, 0),
                    why.clone(),
                ));
                let status = match kind {
                    DsnKind::Failure => (5, status.1, status.2),
                    DsnKind::Delay => (4, status.1, status.2),
                };
                DsnRecipient {
                    address: address.clone(),
                    cause,
                    status,
                    diagnostic: if why.starts_with("message expired") {
                        format!(
                            "gave up after the maximum time in queue; last attempt: {diagnostic}"
                        )
                    } else {
                        diagnostic
                    },
                }
            })
            .collect();
        let qid = id.to_string();
        let report = dsn::build(&DsnInput {
            reporting_mta: &self.ctx.config.gateway.hostname,
            kind,
            sender: &envelope.mail_from,
            queue_id: &qid,
            arrived: envelope.arrived,
            recipients: &recipients,
            original: body,
            now: SystemTime::now(),
        });
        let kind_word = match kind {
            DsnKind::Failure => "failed",
            DsnKind::Delay => "delayed",
        };
        // The origin token makes the notice idempotent: re-created after a
        // crash, it is recognised as a duplicate by our own queue.
        let msg = NewMessage {
            origin: Some(format!("{}/dsn-{kind_word}-{qid}", self.ctx.node_name)),
            mail_from: String::new(),
            mail_params: String::new(),
            rcpts: vec![NewRecipient {
                address: envelope.mail_from.clone(),
                params: String::new(),
            }],
            client: ClientInfo {
                peer: "local".into(),
                helo: self.ctx.config.gateway.hostname.clone(),
                tls: None,
                auth_user: None,
            },
            body: report,
        };
        match self.queue.enqueue(msg).await {
            Ok(e) => {
                info!(
                    "{id}: sender notification ({kind_word}) queued as {} for <{}>",
                    e.id, envelope.mail_from
                );
                self.ctx.metrics.inc(
                    "palisade_dsn_total",
                    "Delivery status notifications queued for senders.",
                    &[("action", kind_word)],
                );
            }
            Err(e) => warn!("{id}: cannot queue the {kind_word} notification: {e}"),
        }
    }

    async fn maybe_notify_delay(&self, id: QueueId) {
        let after = self.outbound().dsn_delay_after.duration();
        if after.is_zero() || self.delay_notified.lock().unwrap().contains(&id) {
            return;
        }
        let Ok(Some(envelope)) = self.queue.envelope(id) else {
            return;
        };
        let waited = SystemTime::now()
            .duration_since(envelope.arrived)
            .unwrap_or_default();
        if waited < after || !self.may_notify(&envelope) {
            return;
        }
        let Ok(Some(body)) = self.queue.body(id) else {
            return;
        };
        let pending: Vec<(String, String)> = envelope
            .rcpts
            .iter()
            .filter(|r| matches!(r.status, RcptStatus::Pending))
            .map(|r| (r.address.clone(), r.last_reply.clone().unwrap_or_default()))
            .collect();
        self.notify(&envelope, &body, DsnKind::Delay, &pending)
            .await;
        self.delay_notified.lock().unwrap().insert(id);
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.delay_notified_file)
            .and_then(|mut f| writeln!(f, "{id}"));
        if let Err(e) = appended {
            warn!("{id}: cannot remember the delay notice: {e}");
        }
    }

    fn forget_delay_notice(&self, id: QueueId) {
        // The file is only appended to; stale ids are harmless (ids are
        // never reused) and the set is rebuilt at each start.
        self.delay_notified.lock().unwrap().remove(&id);
    }
}

/// A DNSSEC failure (bogus, indeterminate, or no answer) as a temporary
/// DNS failure of the receiver: the message stays queued.
fn dnssec_failure(name: &str, why: &str) -> Classified {
    classify_resolve_error(&crate::resolve::ResolveError::Temporary {
        name: name.into(),
        why: why.into(),
    })
}

/// The reply that makes a whole transaction worth retrying on the next
/// host: MAIL tempfailed, the server closes (421), or DATA tempfailed.
fn whole_tempfail(r: &TxResult) -> Option<&palisade_smtp_proto::Reply> {
    if r.mail.is_transient() {
        return Some(&r.mail);
    }
    if let Some(x) = r.rcpts.iter().find(|x| x.code == 421) {
        return Some(x);
    }
    r.data.as_ref().filter(|d| d.code == 421)
}
