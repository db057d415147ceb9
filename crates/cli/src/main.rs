//! `palisade`: the admin command (shared/SPEC.md §2).

mod audit;
mod clamd;
mod dkim;
mod drain;
mod probe;
mod quarantine;
mod queue;
mod review;
mod spam;
mod trace;
mod up;
mod user;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The configuration `palisade up` runs when none is given and
/// config/local.toml is not in the working directory.
pub const EMBEDDED_LOCAL_CONFIG: &str = include_str!("../../../config/local.toml");

#[derive(Parser)]
#[command(
    name = "palisade",
    version,
    about = "Palisade mail gateway: admin command"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
pub struct ConfigArg {
    /// The architecture's configuration file.
    #[arg(long, default_value = "config/local.toml")]
    pub config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Start every node of the configuration as its own supervised process.
    Up(up::UpArgs),
    /// Validate the configuration; print every error with file, line and key.
    CheckConfig(ConfigArg),
    /// Mailbox users: add, del, passwd, list, alias.
    #[command(subcommand)]
    User(user::UserCommand),
    /// Inspect a node's queue.
    #[command(subcommand)]
    Queue(queue::QueueCommand),
    /// DKIM keys: keygen, rotate (no restart), status, record, verify.
    #[command(subcommand)]
    Dkim(dkim::DkimCommand),
    /// Antispam Bayes database: train, eval.
    #[command(subcommand)]
    Spam(spam::SpamCommand),
    /// Take nodes out of their pair for maintenance (stop accepting, finish
    /// sessions, flush or keep the queue); --status reports progress.
    Drain(drain::DrainArgs),
    /// Put drained nodes back in service.
    Undrain(drain::UndrainArgs),
    /// Messages the content stages kept out of the flow: list, show, release, delete.
    #[command(subcommand)]
    Quarantine(quarantine::QuarantineCommand),
    /// Delivery probes through flows 1 and 4: loss, bursts, latency per hop.
    Probe(probe::ProbeArgs),
    /// A message's path through every node, from their journals; names silent loss.
    Trace(trace::TraceArgs),
    /// Step 1 of the methodology: Table I per stage, the fault coverage
    /// matrix and the plan for unprotected faults (exit 1 if any).
    Review(review::ReviewArgs),
    /// Step 2 of the methodology: active fault-detection probes against a running deployment.
    Audit(Box<audit::AuditArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up(args) => up::run(args),
        Command::CheckConfig(c) => return check_config(&c),
        Command::User(cmd) => user::run(cmd),
        Command::Queue(cmd) => queue::run(cmd),
        Command::Spam(cmd) => spam::run(cmd),
        Command::Quarantine(cmd) => quarantine::run(cmd),
        Command::Dkim(cmd) => dkim::run(cmd),
        Command::Probe(args) => probe::run_probe(args),
        Command::Trace(args) => trace::run_trace(args),
        Command::Review(args) => review::run(args),
        Command::Audit(args) => audit::run(*args),
        Command::Drain(args) => drain::run(args),
        Command::Undrain(args) => drain::undrain(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("palisade: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn check_config(c: &ConfigArg) -> ExitCode {
    match palisade_config::load(&c.config) {
        Ok(config) => {
            println!(
                "{}: ok ({} nodes, {} local domains)",
                c.config.display(),
                config.node.len(),
                config.domains.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{} error(s)", errors.0.len());
            ExitCode::from(2)
        }
    }
}

/// Loads the configuration or fails with every error listed.
pub fn load_config(path: &std::path::Path) -> anyhow::Result<palisade_config::Config> {
    palisade_config::load(path).map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))
}
