//! Process start-up and the run loop of a relaying stage.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use palisade_config::{Config, Node, StageKind, StageSettings};
use palisade_queue::{Queue, QueueOptions};
use palisade_smtp_server::{ListenerProfile, ServerConfig, Timeouts};
use tokio::net::TcpListener;
use tracing::{error, info};

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
    pub config: Arc<Config>,
    pub node_name: String,
    pub node: Node,
    pub stage: StageKind,
    pub metrics: Metrics,
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
        Arc::new(NodeContext {
            config: Arc::new(config),
            metrics: Metrics::new(&args.node),
            node_name: args.node,
            node,
            stage,
        })
    }

    pub fn settings(&self) -> StageSettings {
        self.config.settings(self.stage)
    }

    /// The SMTP server settings for one of this node's listeners.
    pub fn server_config(
        &self,
        profile: ListenerProfile,
        tls: Option<Arc<rustls::ServerConfig>>,
        implicit_tls: bool,
    ) -> Arc<ServerConfig> {
        let settings = self.settings();
        let l = &settings.limits;
        // Issue 9: behind a load balancer, only on the client-facing stages.
        let trusted = palisade_config::trusted_proxies(&settings);
        let proxy =
            (!trusted.is_empty() && !matches!(profile, ListenerProfile::Internal)).then(|| {
                palisade_smtp_server::ProxyConfig {
                    trusted,
                    header_timeout: settings.proxy_header_timeout.duration(),
                }
            });
        Arc::new(ServerConfig {
            hostname: self.config.gateway.hostname.clone(),
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

    /// Opens this node's durable queue under `data_dir/<node>/queue`.
    pub fn open_queue(&self) -> Result<Queue> {
        let q = self.settings().queue;
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

/// Like [`run_relay_stage`], with a content filter that sees every message
/// before it is queued. `make_filter` runs once the node's context is
/// known (it may open databases under the node's directory).
pub fn run_filtering_stage<F>(stage: StageKind, make_filter: F) -> Result<()>
where
    F: FnOnce(&Arc<NodeContext>) -> Result<Arc<dyn MessageFilter>>,
{
    let ctx = NodeContext::from_args(stage);
    let filter = make_filter(&ctx)?;
    runtime().block_on(relay_main(ctx, Some(filter)))
}

async fn relay_main(ctx: Arc<NodeContext>, filter: Option<Arc<dyn MessageFilter>>) -> Result<()> {
    let queue = ctx.open_queue()?;
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
    let replica = directory.clone();
    let deliverer = DELIVERER.lock().unwrap().take();
    let forwarder = deliverer
        .is_none()
        .then(|| Forwarder::new(ctx.clone(), queue.clone()));
    let intake = Arc::new(RelayIntake {
        cut_through: forwarder
            .as_ref()
            .and_then(|f| crate::cut_through::CutThrough::new(&ctx, f)),
        ctx: ctx.clone(),
        queue: queue.clone(),
        allowed_clients: ctx.config.allowed_clients(ctx.stage),
        directory,
        filter,
        policy: crate::intake::edge_policy(&ctx)?,
    });
    let tls = if ctx.stage.is_edge() {
        Some(crate::tls::server_config(&ctx.config)?)
    } else {
        None
    };

    let mut listeners = Vec::new();
    match ctx.stage {
        StageKind::Msa => {
            if let Some(a) = ctx.node.submission {
                let cfg = ctx.server_config(ListenerProfile::Submission, tls.clone(), false);
                listeners.push((bind(a, "submission").await?, cfg, a));
            }
            if let Some(a) = ctx.node.submissions {
                let cfg = ctx.server_config(ListenerProfile::Submission, tls.clone(), true);
                listeners.push((bind(a, "submissions").await?, cfg, a));
            }
        }
        StageKind::Mx => {
            let a = ctx.node.smtp.context("mx node without smtp address")?;
            let cfg = ctx.server_config(ListenerProfile::Mx, tls.clone(), false);
            listeners.push((bind(a, "smtp").await?, cfg, a));
        }
        _ => {
            let a = ctx.node.smtp.context("node without smtp address")?;
            let cfg = ctx.server_config(ListenerProfile::Internal, None, false);
            listeners.push((bind(a, "smtp").await?, cfg, a));
        }
    }
    if listeners.is_empty() {
        bail!("{} has nothing to listen on", ctx.node_name);
    }

    let router = queue_admin_routes(router, &queue);
    let stage_name = ctx.stage.to_string();
    let router = crate::journal::routes(
        router,
        ctx.config.clone(),
        &ctx.node_name,
        &stage_name,
        &queue,
    );
    ctx.spawn_http(router);
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
    match (ctx.stage, replica) {
        (StageKind::Msa, Some(replica)) => {
            let settings = ctx.settings().submission;
            let typo = match settings.typo_guard {
                palisade_config::TypoGuardMode::Off => None,
                _ => Some(TypoGuard::new(
                    palisade_dns::DnsResolver::new(ctx.config.gateway.dns)?,
                    &settings.known_domains,
                )),
            };
            let submission = SubmissionIntake::new(intake, replica, settings, typo);
            spawn_listeners(&ctx.node_name, listeners, Arc::new(submission));
        }
        _ => spawn_listeners(&ctx.node_name, listeners, intake),
    }
    shutdown_signal().await;
    info!("{} stopping", ctx.node_name);
    Ok(())
}

fn spawn_listeners<H: palisade_smtp_server::Hooks>(
    node: &str,
    listeners: Vec<(TcpListener, Arc<ServerConfig>, std::net::SocketAddr)>,
    hooks: Arc<H>,
) {
    for (listener, cfg, addr) in listeners {
        info!("{node} listening on {addr}");
        let hooks = hooks.clone();
        tokio::spawn(async move {
            if let Err(e) = palisade_smtp_server::serve(listener, cfg, hooks).await {
                error!("listener {addr}: {e}");
            }
        });
    }
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
