//! `palisade drain` / `palisade undrain`: taking a node out of its pair
//! for maintenance and putting it back (see palisade_stage::drain).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use palisade_config::Config;
use serde::Deserialize;

use crate::ConfigArg;

#[derive(clap::Args)]
pub struct DrainArgs {
    /// The nodes to drain (with --status: to report on; all relaying
    /// nodes when none is named).
    nodes: Vec<String>,
    /// Deliver everything the node holds before reporting drained
    /// (the default).
    #[arg(long, conflicts_with = "keep")]
    flush: bool,
    /// Stop delivering and keep the queue on disk for the restart.
    #[arg(long)]
    keep: bool,
    /// Only report: serving, draining or drained, with open sessions and
    /// queued messages.
    #[arg(long, conflicts_with_all = ["flush", "keep"])]
    status: bool,
    /// Wait until every named node is drained (exit 1 on timeout).
    #[arg(long)]
    wait: bool,
    /// How long --wait waits, in seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    #[command(flatten)]
    config: ConfigArg,
}

#[derive(clap::Args)]
pub struct UndrainArgs {
    /// The nodes to put back in service.
    #[arg(required = true)]
    nodes: Vec<String>,
    #[command(flatten)]
    config: ConfigArg,
}

/// `GET /drain` as the node serves it.
#[derive(Deserialize)]
struct Status {
    node: String,
    state: String,
    mode: Option<String>,
    sessions: usize,
    queued: usize,
    deliveries_in_flight: usize,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}{}, {} open session(s), {} message(s) queued, {} delivery(ies) in flight",
            self.node,
            self.state,
            self.mode
                .as_deref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default(),
            self.sessions,
            self.queued,
            self.deliveries_in_flight
        )
    }
}

pub fn run(args: DrainArgs) -> Result<ExitCode> {
    let cfg = crate::load_config(&args.config.config)?;
    let nodes = if args.nodes.is_empty() {
        if !args.status {
            bail!("name the node(s) to drain");
        }
        crate::queue::relaying_nodes(&cfg)
    } else {
        checked(&cfg, args.nodes)?
    };
    if !args.status {
        let mode = if args.keep { "keep" } else { "flush" };
        for n in &nodes {
            let s = status_of(&cfg, n, "POST", &format!("/drain?mode={mode}"))?;
            println!("{s}");
        }
    }
    if args.wait {
        let deadline = Instant::now() + Duration::from_secs(args.timeout);
        let mut left = nodes.clone();
        while !left.is_empty() {
            let mut still = Vec::new();
            for n in left {
                let s = status_of(&cfg, &n, "GET", "/drain")?;
                if s.state == "drained" {
                    println!("{s}");
                } else {
                    still.push(n);
                }
            }
            left = still;
            if !left.is_empty() {
                if Instant::now() > deadline {
                    eprintln!("still draining: {}", left.join(", "));
                    return Ok(ExitCode::from(1));
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.status {
        let mut failed = false;
        for n in &nodes {
            match status_of(&cfg, n, "GET", "/drain") {
                Ok(s) => println!("{s}"),
                Err(e) => {
                    eprintln!("{n}: {e:#}");
                    failed = true;
                }
            }
        }
        return Ok(if failed {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        });
    }
    Ok(ExitCode::SUCCESS)
}

pub fn undrain(args: UndrainArgs) -> Result<ExitCode> {
    let cfg = crate::load_config(&args.config.config)?;
    for n in checked(&cfg, args.nodes)? {
        println!("{}", status_of(&cfg, &n, "POST", "/undrain")?);
    }
    Ok(ExitCode::SUCCESS)
}

/// The named nodes, if they exist. A store node drains its SMTP/LMTP
/// intake only (its mail waits upstream); IMAP and POP3 keep serving.
fn checked(cfg: &Config, nodes: Vec<String>) -> Result<Vec<String>> {
    for n in &nodes {
        if !cfg.node.contains_key(n) {
            bail!("no node named {n}");
        }
    }
    Ok(nodes)
}

fn status_of(cfg: &Config, node: &str, method: &str, path: &str) -> Result<Status> {
    let body = crate::queue::node_request(cfg, node, method, path)?;
    serde_json::from_str(&body)
        .map_err(|e| anyhow::anyhow!("{node}: unexpected answer to {path}: {e}: {body}"))
}
