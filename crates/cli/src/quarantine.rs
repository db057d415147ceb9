//! `palisade quarantine list|show|release|delete`: messages the antivirus
//! and antispam stages kept out of the flow.
//!
//! `release` sends the message on from where it was stopped: a message
//! the antivirus kept re-enters the chain after C (the antispam pair scores
//! it as usual), one the antispam kept goes where D would have routed it
//! (store or outgoing). The entry is deleted only once the next hop
//! accepted every recipient.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use palisade_config::{Config, StageKind};
use palisade_virus::{reinject, Quarantine, QuarantineEntry};

use crate::ConfigArg;

#[derive(Subcommand)]
pub enum QuarantineCommand {
    /// One line per quarantined message, oldest first.
    List(ConfigArg),
    /// Envelope, reason and the message itself.
    Show {
        id: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Send the message on (after the stage that kept it) and forget it.
    Release {
        id: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Forget the message.
    Delete {
        id: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

fn open(c: &ConfigArg) -> Result<(Config, Quarantine)> {
    let config = crate::load_config(&c.config)?;
    let dir = config.quarantine_dir();
    let q = Quarantine::open(&dir).with_context(|| format!("opening {}", dir.display()))?;
    Ok((config, q))
}

pub fn run(cmd: QuarantineCommand) -> Result<ExitCode> {
    match cmd {
        QuarantineCommand::List(c) => {
            let (_, q) = open(&c)?;
            let entries = q.list()?;
            for e in &entries {
                println!(
                    "{}  {}  {:<13} {:<40} from=<{}> to={} subject={:?}",
                    e.id,
                    palisade_stage::received::rfc5322_date(
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(e.time)
                    ),
                    e.kind,
                    e.verdict,
                    e.mail_from,
                    e.rcpts.join(","),
                    e.subject()
                );
            }
            println!("{} message(s) in quarantine", entries.len());
        }
        QuarantineCommand::Show { id, config } => {
            let (_, q) = open(&config)?;
            let e = q.get(&id)?;
            print_entry(&e);
        }
        QuarantineCommand::Release { id, config } => {
            let (config, q) = open(&config)?;
            let e = q.get(&id)?;
            let after = stage_of(&config, &e);
            let mut message = format!(
                "X-Palisade-Quarantine: released {} ({}: {})\r\n",
                e.id, e.kind, e.verdict
            )
            .into_bytes();
            message.extend_from_slice(strip_report(&e));
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(reinject::send_after_stage(
                &config,
                after,
                &e.mail_from,
                &e.rcpts,
                &message,
            ))
            .map_err(|why| anyhow::anyhow!("release of {id} failed (still quarantined): {why}"))?;
            q.delete(&id)?;
            println!("{id}: released to the stage after {after}");
        }
        QuarantineCommand::Delete { id, config } => {
            let (_, q) = open(&config)?;
            q.delete(&id)?;
            println!("{id}: deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The stage of the node that kept the message (antivirus when unknown:
/// the released message then gets the antispam check too).
fn stage_of(config: &Config, e: &QuarantineEntry) -> StageKind {
    config
        .node
        .get(&e.node)
        .map(|n| n.stage)
        .filter(|s| matches!(s, StageKind::Antivirus | StageKind::Antispam))
        .unwrap_or(StageKind::Antivirus)
}

/// The antispam stage stores its X-Spam-Report on top of the message for
/// `show`; a released message goes on without it.
fn strip_report(e: &QuarantineEntry) -> &[u8] {
    let m = &e.message[..];
    if !m.starts_with(b"X-Spam-Report:") {
        return m;
    }
    let mut i = 0;
    while let Some(off) = m[i..].windows(2).position(|w| w == b"\r\n") {
        i += off + 2;
        if !matches!(m.get(i), Some(b' ') | Some(b'\t')) {
            return &m[i..];
        }
    }
    m
}

fn print_entry(e: &QuarantineEntry) {
    println!("Id: {}", e.id);
    println!("Node: {}", e.node);
    println!("Kind: {}", e.kind);
    println!("Verdict: {}", e.verdict);
    println!("Mail-From: <{}>", e.mail_from);
    println!("Recipients: {}", e.rcpts.join(", "));
    println!("Authenticated-Sender: {}", e.authenticated_sender);
    println!("Origin: {}", e.origin.as_deref().unwrap_or("-"));
    println!();
    print!("{}", String::from_utf8_lossy(&e.message));
}
