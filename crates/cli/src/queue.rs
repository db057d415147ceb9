//! `palisade queue ...`: what a node holds, like Postfix's mailq.

use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use palisade_queue::{Queue, RcptStatus};

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
