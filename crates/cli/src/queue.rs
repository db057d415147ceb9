//! `palisade queue ...`: what a node holds, like Postfix's mailq.

use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use palisade_queue::{Queue, QueueId, RcptStatus};

use crate::ConfigArg;

#[derive(Subcommand)]
pub enum QueueCommand {
    /// List the messages queued on a node (all relaying nodes without --node).
    List {
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Show one message: envelope, per-recipient state, headers.
    Show {
        id: String,
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Retry every deferred message now (all relaying nodes without --node).
    Flush {
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Delete a message (no bounce is sent).
    Delete {
        id: String,
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Put a message on hold: kept, not delivered until released.
    Hold {
        id: String,
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Release a held message: it is delivered at once.
    Release {
        id: String,
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print how many messages a node holds (benchmarks wait for 0).
    Count {
        #[arg(long)]
        node: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

pub fn run(cmd: QueueCommand) -> Result<ExitCode> {
    match cmd {
        QueueCommand::Show { id, node, config } => show(&id, node, &config),
        QueueCommand::Flush { node, config } => {
            let cfg = crate::load_config(&config.config)?;
            let nodes = match node {
                Some(n) => vec![n],
                None => relaying_nodes(&cfg),
            };
            let mut failed = false;
            for n in nodes {
                match admin(&cfg, &n, "/queue/flush") {
                    Ok(text) => print!("{n}: {text}"),
                    Err(e) => {
                        eprintln!("{n}: {e:#}");
                        failed = true;
                    }
                }
            }
            Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        QueueCommand::Delete { id, node, config } => mutate("delete", &id, node, &config),
        QueueCommand::Hold { id, node, config } => mutate("hold", &id, node, &config),
        QueueCommand::Release { id, node, config } => mutate("release", &id, node, &config),
        QueueCommand::Count { node, config } => {
            let cfg = crate::load_config(&config.config)?;
            let dir = cfg.node_dir(&node).join("queue");
            let n = if dir.exists() {
                Queue::open_readonly(&dir)
                    .with_context(|| format!("opening {}", dir.display()))?
                    .len()?
            } else {
                0
            };
            println!("{n}");
            Ok(ExitCode::SUCCESS)
        }
        QueueCommand::List { node, config } => {
            let cfg = crate::load_config(&config.config)?;
            let nodes: Vec<String> = match node {
                Some(n) => {
                    if !cfg.node.contains_key(&n) {
                        bail!("no node named {n}");
                    }
                    vec![n]
                }
                None => cfg
                    .node
                    .iter()
                    .filter(|(_, n)| n.stage != palisade_config::StageKind::Store)
                    .map(|(k, _)| k.clone())
                    .collect(),
            };
            let mut total = 0;
            for name in nodes {
                let dir = cfg.node_dir(&name).join("queue");
                if !dir.exists() {
                    continue;
                }
                let q = Queue::open_readonly(&dir)
                    .with_context(|| format!("opening {}", dir.display()))?;
                for e in q.list()? {
                    total += 1;
                    let age = SystemTime::now()
                        .duration_since(e.arrived)
                        .unwrap_or_default()
                        .as_secs();
                    println!(
                        "{name:<16} {}{} {:>8} {:>6}s  <{}>",
                        e.id,
                        if e.held { "!" } else { " " },
                        e.size,
                        age,
                        e.mail_from
                    );
                    for r in &e.rcpts {
                        let state = match &r.status {
                            RcptStatus::Pending => r.last_reply.clone().unwrap_or_default(),
                            RcptStatus::Delivered { .. } => "delivered".into(),
                            RcptStatus::Failed { reply } => format!("failed: {reply}"),
                        };
                        println!("{:>40} <{}> {state}", "", r.address);
                    }
                }
            }
            println!("-- {total} message(s)");
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub(crate) fn relaying_nodes(cfg: &palisade_config::Config) -> Vec<String> {
    cfg.node
        .iter()
        .filter(|(_, n)| n.stage != palisade_config::StageKind::Store)
        .map(|(k, _)| k.clone())
        .collect()
}

/// The node whose queue holds `id` (read-only look at every queue).
fn find_node(cfg: &palisade_config::Config, id: QueueId, node: Option<String>) -> Result<String> {
    if let Some(n) = node {
        if !cfg.node.contains_key(&n) {
            bail!("no node named {n}");
        }
        return Ok(n);
    }
    for name in relaying_nodes(cfg) {
        let dir = cfg.node_dir(&name).join("queue");
        if !dir.exists() {
            continue;
        }
        if Queue::open_readonly(&dir)?.envelope(id)?.is_some() {
            return Ok(name);
        }
    }
    bail!("no queue holds {id}")
}

/// Mutations go to the running node, which owns the queue's writer: a
/// POST to its HTTP endpoint (the `metrics` address), see
/// `palisade_stage::runtime::queue_admin_routes`.
fn admin(cfg: &palisade_config::Config, node: &str, path: &str) -> Result<String> {
    node_request(cfg, node, "POST", path)
}

/// One request to a running node's HTTP endpoint; the body of a 200.
pub(crate) fn node_request(
    cfg: &palisade_config::Config,
    node: &str,
    method: &str,
    path: &str,
) -> Result<String> {
    let addr = cfg
        .node
        .get(node)
        .ok_or_else(|| anyhow::anyhow!("no node named {node}"))?
        .metrics
        .ok_or_else(|| {
            anyhow::anyhow!("node {node} has no metrics address to send the command to")
        })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, body) = rt
        .block_on(palisade_stage::http::request(addr, method, path))
        .with_context(|| format!("node {node} at {addr} (is it running?)"))?;
    let text = String::from_utf8_lossy(&body).into_owned();
    if status != 200 {
        bail!("{}", text.trim());
    }
    Ok(text)
}

fn mutate(op: &str, id: &str, node: Option<String>, config: &ConfigArg) -> Result<ExitCode> {
    let cfg = crate::load_config(&config.config)?;
    let qid: QueueId = id.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let node = find_node(&cfg, qid, node)?;
    let text = admin(&cfg, &node, &format!("/queue/{op}?id={qid}"))?;
    print!("{node}: {text}");
    Ok(ExitCode::SUCCESS)
}

fn show(id: &str, node: Option<String>, config: &ConfigArg) -> Result<ExitCode> {
    let cfg = crate::load_config(&config.config)?;
    let qid: QueueId = id.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let node = find_node(&cfg, qid, node)?;
    let q = Queue::open_readonly(&cfg.node_dir(&node).join("queue"))?;
    let Some(e) = q.envelope(qid)? else {
        bail!("{node} holds no message {qid}");
    };
    println!("node:     {node}");
    println!("id:       {}{}", e.id, if e.held { " (held)" } else { "" });
    println!("origin:   {}", e.origin.as_deref().unwrap_or("-"));
    println!("from:     <{}> {}", e.mail_from, e.mail_params);
    println!(
        "client:   {} ({}) auth={}",
        e.client.peer,
        e.client.helo,
        e.client.auth_user.as_deref().unwrap_or("-")
    );
    println!("size:     {}", e.size);
    println!("attempts: {}", e.attempts);
    let age = SystemTime::now()
        .duration_since(e.arrived)
        .unwrap_or_default()
        .as_secs();
    println!("age:      {age}s");
    for r in &e.rcpts {
        let state = match &r.status {
            RcptStatus::Pending => format!(
                "pending: {}",
                r.last_reply.as_deref().unwrap_or("not tried yet")
            ),
            RcptStatus::Delivered { reply } => format!("delivered: {reply}"),
            RcptStatus::Failed { reply } => format!("failed: {reply}"),
        };
        println!("to:       <{}> {state}", r.address);
    }
    if let Some(body) = q.body(qid)? {
        let end = body
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or(body.len());
        println!("--");
        println!("{}", String::from_utf8_lossy(&body[..end]));
    }
    Ok(ExitCode::SUCCESS)
}
