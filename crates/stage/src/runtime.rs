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
use crate::intake::RelayIntake;
use crate::metrics::Metrics;

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
        let l = self.settings().limits;
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

    /// Serves this node's metrics, if it has a metrics address.
    pub fn spawn_metrics(&self) {
        if let Some(addr) = self.node.metrics {
            let m = self.metrics.clone();
            tokio::spawn(async move {
                if let Err(e) = m.serve(addr).await {
                    error!("metrics listener {addr}: {e}");
                }
            });
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
    let directory = if ctx.stage.is_edge() {
        Some(
            palisade_mailbox::Directory::open(&ctx.config.directory_dir())
                .context("opening the user directory")?,
        )
    } else {
        None
    };
    let intake = Arc::new(RelayIntake {
        ctx: ctx.clone(),
        queue: queue.clone(),
        allowed_clients: ctx.config.allowed_clients(ctx.stage),
        directory,
        filter,
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

    ctx.spawn_metrics();
    tokio::spawn(Forwarder::new(ctx.clone(), queue.clone()).run());
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
    for (listener, cfg, addr) in listeners {
        info!("{} listening on {addr}", ctx.node_name);
        let intake = intake.clone();
        tokio::spawn(async move {
            if let Err(e) = palisade_smtp_server::serve(listener, cfg, intake).await {
                error!("listener {addr}: {e}");
            }
        });
    }
    shutdown_signal().await;
    info!("{} stopping", ctx.node_name);
    Ok(())
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
