//! Process start-up and the run loop of a relaying stage.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use palisade_config::{Config, Node, StageKind, StageSettings, StateSettings};
use palisade_policy::state::SharedState;
use palisade_queue::{Queue, QueueOptions};
use palisade_smtp_server::{Hooks, ListenerProfile, ServerConfig, Service, Timeouts};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info};

use crate::drain::Drain;
use crate::privilege::RunAs;

use crate::filter::MessageFilter;
use crate::forward::Forwarder;
use crate::http::{Response, Router};
use crate::intake::RelayIntake;
use crate::metrics::Metrics;
use crate::replica::Replica;
use crate::submission::SubmissionIntake;
use crate::typo::TypoGuard;

/// Every stage binary takes the same two arguments (SPEC §2).
#[derive(Parser, Debug)]
pub struct StageArgs {
    /// The architecture's configuration file.
    #[arg(long, default_value = "config/local.toml")]
    pub config: PathBuf,
    /// Which node of the configuration this process is.
    #[arg(long)]
    pub node: String,
}

/// What every part of a node needs to know about itself.
pub struct NodeContext {
    /// The configuration the node started with. A reload (SIGHUP) builds
    /// new listener settings and hooks from the new file; the parts that
    /// read this one (addresses, routes, data directories) need a restart.
    pub config: Arc<Config>,
    /// Where the configuration was read from, for reloads.
    pub config_path: PathBuf,
    pub node_name: String,
    pub node: Node,
    pub stage: StageKind,
    pub metrics: Metrics,
    /// The unprivileged user a node started as root becomes.
    pub run_as: Option<RunAs>,
    /// Taking the node out of its pair (`palisade drain`).
    pub drain: Arc<Drain>,
    /// This stage's settings, as of the last (re)load.
    settings: RwLock<Arc<StageSettings>>,
    /// The policy-state backend, built once and handed to every policy
    /// (rebuilt only when a reload changes `[gateway.state]`).
    state: Mutex<Option<(StateSettings, SharedState)>>,
    /// What a SIGHUP refreshes besides sessions' settings and hooks.
    pub(crate) reloaders: Mutex<Vec<(&'static str, crate::reload::Reloader)>>,
}

impl NodeContext {
    /// Parses the arguments, loads the configuration and checks that the
    /// node exists and belongs to `stage`. Configuration errors are printed
    /// (all of them) and the process exits with status 2.
    pub fn from_args(stage: StageKind) -> Arc<NodeContext> {
        let args = StageArgs::parse();
        init_logging();
        let config = match palisade_config::load(&args.config) {
            Ok(c) => c,
            Err(errors) => {
                eprintln!("{errors}");
                std::process::exit(2);
            }
        };
        let Some(node) = config.node.get(&args.node).cloned() else {
            eprintln!("{}: no node named `{}`", args.config.display(), args.node);
            std::process::exit(2);
        };
        if node.stage != stage {
            eprintln!(
                "node `{}` is a {} node; run it with palisade-{}",
                args.node, node.stage, node.stage
            );
            std::process::exit(2);
        }
        let run_as = match crate::privilege::plan(&config, &args.node) {
            Ok(r) => r,
            Err(why) => {
                eprintln!("{}: {why}", args.config.display());
                std::process::exit(2);
            }
        };
        // SIGHUP means "reload" to the relaying stages; until their handler
        // is installed (and in stages without one) it must not kill.
        // SAFETY: setting a signal's disposition to SIG_IGN.
        unsafe {
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
        }
        Arc::new(NodeContext {
            settings: RwLock::new(Arc::new(config.settings(stage))),
            state: Mutex::default(),
            reloaders: Mutex::default(),
            config: Arc::new(config),
            config_path: args.config,
            metrics: Metrics::new(&args.node),
            node_name: args.node,
            node,
            stage,
            run_as,
            drain: Arc::default(),
        })
    }

    /// This stage's settings as of the last (re)load (cheap: shared).
    pub fn settings(&self) -> Arc<StageSettings> {
        self.settings.read().unwrap().clone()
    }

    pub(crate) fn set_settings(&self, config: &Config) {
        *self.settings.write().unwrap() = Arc::new(config.settings(self.stage));
    }

    /// The node's policy-state backend for `s`: the one already built
    /// when `s` has not changed, so reloads keep the Redis connection and
    /// this node's own counters; a changed `[gateway.state]` gets a new
    /// backend over the same local counters.
    pub fn state_backend(&self, s: &StateSettings) -> Result<SharedState> {
        let mut current = self.state.lock().unwrap();
        if let Some((was, state)) = &*current {
            if was == s {
                return Ok(state.clone());
            }
        }
        let sink = Arc::new(crate::intake::MetricsSink(self.metrics.clone()));
        let state = match &*current {
            Some((_, old)) => {
                info!(
                    "{}: [gateway.state] changed: new sessions use the {:?} backend",
                    self.node_name, s.backend
                );
                old.reconfigured(s, &self.node_name, sink)?
            }
            None => SharedState::from_settings(s, &self.node_name, sink)?,
        };
        *current = Some((s.clone(), state.clone()));
        Ok(state)
    }

    /// Registers `what` to be refreshed from the new configuration at each
    /// reload (SIGHUP), after the new file has been validated. An error
    /// keeps that part as it runs and is logged; the other parts reload.
    pub fn on_reload(
        &self,
        what: &'static str,
        refresh: impl Fn(&Config) -> Result<()> + Send + Sync + 'static,
    ) {
        self.reloaders
            .lock()
            .unwrap()
            .push((what, Box::new(refresh)));
    }

    /// Becomes the configured unprivileged user (when started as root):
    /// call once every port is bound and before any mail is read.
    pub fn drop_privileges(&self) -> Result<()> {
        crate::privilege::drop_to(self.run_as.as_ref(), &self.config.node_dir(&self.node_name))
    }

    /// The SMTP server settings for one of this node's listeners.
    pub fn server_config(
        &self,
        profile: ListenerProfile,
        tls: Option<Arc<rustls::ServerConfig>>,
        implicit_tls: bool,
    ) -> Arc<ServerConfig> {
        server_config_for(&self.config, self.stage, profile, tls, implicit_tls)
    }

    /// Opens this node's durable queue under `data_dir/<node>/queue`.
    pub fn open_queue(&self) -> Result<Queue> {
        let q = self.settings().queue.clone();
        let dir = self.config.node_dir(&self.node_name).join("queue");
        let opts = QueueOptions {
            map_size: q.map_size as usize,
            min_retry: q.min_retry.duration(),
            max_retry: q.max_retry.duration(),
            max_age: q.max_age.duration(),
            ..QueueOptions::default()
        };
        Queue::open(&dir, opts).with_context(|| format!("opening queue {}", dir.display()))
    }

    /// The node's HTTP routes every stage has: `/metrics`.
    pub fn http_router(&self) -> Router {
        let m = self.metrics.clone();
        Router::default().route("/metrics", move |_| Response {
            status: 200,
            content_type: "text/plain; version=0.0.4",
            body: m.render().into_bytes(),
        })
    }

    /// Serves `router` on the node's `metrics` address, if it has one.
    pub fn spawn_http(&self, router: Router) {
        if let Some(addr) = self.node.metrics {
            crate::http::spawn(addr, router);
        }
    }
}

/// Logs to stderr, one line per event; `RUST_LOG` filters.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// A multi-threaded runtime sized for the machine.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Binds a listener, naming the address in the error.
pub async fn bind(addr: std::net::SocketAddr, what: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({what})"))
}

/// Runs a store-and-forward stage: mx, msa, antivirus, antispam, outgoing.
pub fn run_relay_stage(stage: StageKind) -> Result<()> {
    let ctx = NodeContext::from_args(stage);
    runtime().block_on(relay_main(ctx, None))
}

/// Builds a content filter once the node runs as its own user.
type MakeFilter = Box<dyn FnOnce(&Arc<NodeContext>) -> Result<Arc<dyn MessageFilter>>>;

/// Like [`run_relay_stage`], with a content filter that sees every message
/// before it is queued. `make_filter` runs once the node's context is
/// known and its privileges are dropped (it may open databases under the
/// node's directory).
pub fn run_filtering_stage<F>(stage: StageKind, make_filter: F) -> Result<()>
where
    F: FnOnce(&Arc<NodeContext>) -> Result<Arc<dyn MessageFilter>> + 'static,
{
    let ctx = NodeContext::from_args(stage);
    runtime().block_on(relay_main(ctx, Some(Box::new(make_filter))))
}

/// One SMTP listener of a node, bound: its socket and what kind it is.
struct Listener {
    socket: TcpListener,
    addr: std::net::SocketAddr,
    profile: ListenerProfile,
    implicit_tls: bool,
}

/// Binds the node's SMTP listeners (while still privileged).
async fn bind_smtp(ctx: &NodeContext) -> Result<Vec<Listener>> {
    let mut wanted = Vec::new();
    match ctx.stage {
        StageKind::Msa => {
            wanted.extend(ctx.node.submission.map(|a| (a, "submission", false)));
            wanted.extend(ctx.node.submissions.map(|a| (a, "submissions", true)));
        }
        _ => {
            let a = ctx.node.smtp.context("node without smtp address")?;
            wanted.push((a, "smtp", false));
        }
    }
    let profile = match ctx.stage {
        StageKind::Msa => ListenerProfile::Submission,
        StageKind::Mx => ListenerProfile::Mx,
        _ => ListenerProfile::Internal,
    };
    let mut out = Vec::new();
    for (addr, what, implicit_tls) in wanted {
        out.push(Listener {
            socket: bind(addr, what).await?,
            addr,
            profile,
            implicit_tls,
        });
    }
    if out.is_empty() {
        bail!("{} has nothing to listen on", ctx.node_name);
    }
    Ok(out)
}

async fn relay_main(ctx: Arc<NodeContext>, make_filter: Option<MakeFilter>) -> Result<()> {
    // While still privileged: the TLS key (it may be readable by root
    // only) and every port (25, 465 and 587 are privileged).
    let tls = if ctx.stage.is_edge() {
        let tls = crate::tls::NodeTls::load(&ctx.config)?;
        let t = tls.clone();
        ctx.on_reload("TLS certificate", move |config| t.reload(config));
        Some(tls.config)
    } else {
        None
    };
    let listeners = bind_smtp(&ctx).await?;
    let http = match ctx.node.metrics {
        Some(a) => Some((bind(a, "metrics").await?, a)),
        None => None,
    };
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("SIGHUP handler")?;
    // From here on the node runs as its own user and reads mail.
    ctx.drop_privileges()?;

    let queue = ctx.open_queue()?;
    let filter = make_filter.map(|f| f(&ctx)).transpose()?;
    info!(
        "{} ({} stage {}) starting: {} message(s) in queue",
        ctx.node_name,
        ctx.stage,
        ctx.stage.letter(),
        queue.len()
    );
    let mut router = ctx.http_router();
    let directory = if ctx.stage.is_edge() {
        let replica = Replica::open(&ctx)?;
        // A first copy before taking mail; the stores may be starting at
        // the same time, so give them a few seconds unless this replica
        // already holds a copy from an earlier run.
        for _ in 0..25 {
            replica.pull_all().await;
            if replica.is_warm() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::spawn(replica.clone().run());
        let r = replica.clone();
        router = router.route("/directory/changed", move |_| {
            r.notify_changed();
            Response::text(200, "ok\n")
        });
        Some(replica)
    } else {
        None
    };

    // The forwarder exists before the intake: cut-through hands messages
    // to the next stage through it while the client waits.
    let deliverer = DELIVERER.lock().unwrap().take();
    let forwarder = deliverer
        .is_none()
        .then(|| Forwarder::new(ctx.clone(), queue.clone()));
    let cut_through = forwarder
        .as_ref()
        .and_then(|f| crate::cut_through::CutThrough::new(&ctx, f));

    let router = queue_admin_routes(router, &queue);
    let router = reload_route(router);
    let router = crate::drain::routes(router, &ctx.node_name, &ctx.drain, &queue, &ctx.metrics);
    let stage_name = ctx.stage.to_string();
    let router = crate::journal::routes(
        router,
        ctx.config.clone(),
        &ctx.node_name,
        &stage_name,
        &queue,
    );
    if let Some((socket, addr)) = http {
        crate::http::serve(socket, addr, router);
    }
    if let Some(make) = deliverer {
        tokio::spawn(make(ctx.clone(), queue.clone())?);
    }
    if let Some(forwarder) = forwarder {
        tokio::spawn(forwarder.run());
    }
    {
        let (ctx, queue) = (ctx.clone(), queue.clone());
        tokio::spawn(async move {
            loop {
                ctx.metrics.set(
                    "palisade_queue_messages",
                    "Messages in this node's queue.",
                    &[],
                    queue.len() as f64,
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    // The hooks of every new session, from a configuration: the one the
    // node started with, then each one a SIGHUP loads.
    let replica = directory.clone();
    let relay_hooks = {
        let (ctx, queue) = (ctx.clone(), queue.clone());
        move |config: &Config| -> Result<RelayIntake> {
            Ok(RelayIntake {
                ctx: ctx.clone(),
                queue: queue.clone(),
                allowed_clients: config.allowed_clients(ctx.stage),
                directory: directory.clone(),
                filter: filter.clone(),
                policy: crate::intake::edge_policy_for(&ctx, config)?,
                cut_through: cut_through.clone(),
            })
        }
    };
    match ctx.stage {
        StageKind::Msa => {
            let replica = replica.context("the MSA needs the user directory")?;
            let hooks = move |config: &Config| -> Result<Arc<SubmissionIntake>> {
                let relay = Arc::new(relay_hooks(config)?);
                let settings = config.settings(StageKind::Msa).submission;
                let typo = match settings.typo_guard {
                    palisade_config::TypoGuardMode::Off => None,
                    _ => Some(TypoGuard::new(
                        palisade_dns::DnsResolver::new(config.gateway.dns)?,
                        &settings.known_domains,
                    )),
                };
                Ok(Arc::new(SubmissionIntake::new(
                    relay,
                    replica.clone(),
                    settings,
                    typo,
                )))
            };
            serve_until_stopped(&ctx, listeners, tls, hooks, &mut hangup).await?
        }
        _ => {
            let hooks = move |config: &Config| relay_hooks(config).map(Arc::new);
            serve_until_stopped(&ctx, listeners, tls, hooks, &mut hangup).await?
        }
    }
    info!("{} stopping", ctx.node_name);
    Ok(())
}

/// Serves every listener with hooks built by `make_hooks` until SIGINT or
/// SIGTERM; each SIGHUP reloads the configuration file: a valid one gives
/// new sessions new limits and a new policy (open sessions finish with
/// theirs), an invalid one is logged and the running one stays.
async fn serve_until_stopped<H: Hooks>(
    ctx: &Arc<NodeContext>,
    listeners: Vec<Listener>,
    tls: Option<Arc<rustls::ServerConfig>>,
    make_hooks: impl Fn(&Config) -> Result<Arc<H>>,
    hangup: &mut tokio::signal::unix::Signal,
) -> Result<()> {
    let service = |config: &Config, hooks: &Arc<H>, profile, implicit_tls| Service {
        config: server_config_for(config, ctx.stage, profile, tls.clone(), implicit_tls),
        hooks: hooks.clone(),
    };
    let hooks = make_hooks(&ctx.config)?;
    let senders: Vec<_> = listeners
        .iter()
        .map(|l| watch::channel(service(&ctx.config, &hooks, l.profile, l.implicit_tls)))
        .collect();
    let mut kinds = Vec::new();
    for (l, (_, rx)) in listeners.into_iter().zip(&senders) {
        let (addr, rx, gate) = (l.addr, rx.clone(), ctx.drain.gate());
        info!("{} listening on {addr}", ctx.node_name);
        tokio::spawn(async move {
            if let Err(e) = palisade_smtp_server::serve_with(l.socket, rx, gate).await {
                error!("listener {addr}: {e}");
            }
        });
        kinds.push((l.profile, l.implicit_tls));
    }
    loop {
        tokio::select! {
            _ = shutdown_signal() => return Ok(()),
            _ = hangup.recv() => {}
        }
        let reloaded = crate::reload::load(ctx).and_then(|config| {
            let hooks = make_hooks(&config)?;
            Ok((config, hooks))
        });
        match reloaded {
            Ok((config, hooks)) => {
                crate::reload::apply(ctx, &config);
                for ((tx, _), (profile, implicit_tls)) in senders.iter().zip(&kinds) {
                    tx.send_replace(service(&config, &hooks, *profile, *implicit_tls));
                }
                info!(
                    "{}: reloaded {}: new sessions use the new limits and policy",
                    ctx.node_name,
                    ctx.config_path.display()
                );
            }
            Err(e) => error!(
                "{}: reload failed, keeping the running configuration: {e:#}",
                ctx.node_name
            ),
        }
    }
}

/// The SMTP server settings of a listener of a `stage` node, from `config`.
pub fn server_config_for(
    config: &Config,
    stage: StageKind,
    profile: ListenerProfile,
    tls: Option<Arc<rustls::ServerConfig>>,
    implicit_tls: bool,
) -> Arc<ServerConfig> {
    let settings = config.settings(stage);
    let l = &settings.limits;
    // Issue 9: behind a load balancer, only on the client-facing stages.
    let trusted = palisade_config::trusted_proxies(&settings);
    let proxy = (!trusted.is_empty() && !matches!(profile, ListenerProfile::Internal)).then(|| {
        palisade_smtp_server::ProxyConfig {
            trusted,
            header_timeout: settings.proxy_header_timeout.duration(),
        }
    });
    Arc::new(ServerConfig {
        hostname: config.gateway.hostname.clone(),
        accept_origin_param: matches!(profile, ListenerProfile::Internal),
        profile,
        tls,
        implicit_tls,
        max_message_size: l.max_message_size,
        max_recipients: l.max_recipients,
        max_errors: l.max_errors,
        max_sessions: l.max_sessions,
        greet_pause: l.greet_pause.duration(),
        timeouts: Timeouts {
            command: l.command_timeout.duration(),
            data_chunk: l.data_timeout.duration(),
            session: l.session_timeout.duration(),
        },
        proxy,
    })
}

/// Resolves on SIGINT or SIGTERM. Nothing needs flushing: every accepted
/// message is already on disk.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// A delivery engine that replaces the [`Forwarder`] (the outgoing
/// stage's MX delivery, crates/outbound): given the node and its open
/// queue, it returns the loop to run.
pub type MakeDeliverer = Box<
    dyn FnOnce(
            Arc<NodeContext>,
            Queue,
        ) -> Result<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>
        + Send,
>;

static DELIVERER: std::sync::Mutex<Option<MakeDeliverer>> = std::sync::Mutex::new(None);

/// Like [`run_relay_stage`] (same intake, listeners, metrics and queue
/// admin), with `make` delivering the queue instead of the Forwarder.
pub fn run_stage_with_deliverer(stage: StageKind, make: MakeDeliverer) -> Result<()> {
    *DELIVERER.lock().unwrap() = Some(make);
    run_relay_stage(stage)
}

/// `POST /reload`: the node sends itself SIGHUP, so the CLI
/// (`palisade dkim rotate --activate`) reloads a node it finds by its HTTP
/// address like `palisade queue`, without its PID or its user's rights;
/// the reload itself is the SIGHUP one.
fn reload_route(router: Router) -> Router {
    router.route("/reload", |req| {
        if req.method != "POST" {
            return Response::text(405, "use POST\n");
        }
        // SAFETY: kill(2) on our own PID with a signal we handle.
        match unsafe { libc::kill(libc::getpid(), libc::SIGHUP) } {
            0 => Response::text(200, "reloading\n"),
            _ => Response::text(500, "cannot signal myself\n"),
        }
    })
}

/// Queue administration on the node's HTTP endpoint, for `palisade queue`
/// (the running node owns the queue's writer, so mutations go through it):
/// `POST /queue/flush`, `POST /queue/{delete,hold,release}?id=ID`.
pub fn queue_admin_routes(router: Router, queue: &Queue) -> Router {
    let q = queue.clone();
    let router = router.route("/queue/flush", move |req| {
        if req.method != "POST" {
            return Response::text(405, "use POST\n");
        }
        q.flush();
        Response::text(200, "flushed\n")
    });
    let op = |name: &'static str| {
        let q = queue.clone();
        move |req: &crate::http::Request| {
            if req.method != "POST" {
                return Response::text(405, "use POST\n");
            }
            let Some(id) = req
                .query
                .get("id")
                .and_then(|i| i.parse::<palisade_queue::QueueId>().ok())
            else {
                return Response::text(400, "missing or bad id\n");
            };
            // The handler is synchronous; the queue's writer is another
            // thread, so waiting for its answer here is short.
            let q = q.clone();
            let done = tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(async move {
                    match name {
                        "delete" => q.delete(id).await,
                        "hold" => q.hold(id).await,
                        _ => q.release(id).await,
                    }
                })
            });
            match done {
                Ok(true) => Response::text(200, format!("{id}: {name} done\n")),
                Ok(false) => Response::text(404, format!("{id}: no such message\n")),
                Err(e) => Response::text(500, format!("{id}: {e}\n")),
            }
        }
    };
    router
        .route("/queue/delete", op("delete"))
        .route("/queue/hold", op("hold"))
        .route("/queue/release", op("release"))
}
