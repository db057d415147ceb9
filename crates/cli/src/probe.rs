//! `palisade probe`: delivery probes through flows 1 and 4, loss and
//! latency per hop (crates/audit/src/probe.rs, docs/probe.md).

use std::io::BufRead;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use palisade_audit::probe::{run, ProbeOptions};
use palisade_config::Seconds;

use crate::ConfigArg;

#[derive(Args)]
pub struct ProbeArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// How long to send probes (e.g. 30s, 5m).
    #[arg(long, default_value = "5m", value_parser = Seconds::parse)]
    pub duration: Seconds,
    /// Time between two probes of one flow.
    #[arg(long, default_value = "2s", value_parser = Seconds::parse)]
    pub interval: Seconds,
    /// After the last send, how long to wait for probes still on the way.
    #[arg(long, default_value = "2m", value_parser = Seconds::parse)]
    pub wait: Seconds,
    /// Flows to probe: 1 (MX -> user), 4 (MSA with AUTH -> user).
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    pub flow: Vec<u8>,
    /// The test user the probes are sent to (and, for flow 4, from).
    #[arg(long)]
    pub user: String,
    /// Read the test user's password from the first line of stdin.
    #[arg(long)]
    pub password_stdin: bool,
    /// text or json.
    #[arg(long, default_value = "text")]
    pub format: String,
}

pub fn run_probe(args: ProbeArgs) -> Result<ExitCode> {
    if !args.password_stdin {
        bail!("the test user's password is needed: pass --password-stdin");
    }
    let mut password = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut password)
        .context("reading the password from stdin")?;
    let password = password.trim_end_matches(['\r', '\n']).to_string();
    if !matches!(args.format.as_str(), "text" | "json") {
        bail!("--format {}: use text or json", args.format);
    }
    let config = Arc::new(crate::load_config(&args.config.config)?);
    let opts = ProbeOptions {
        duration: args.duration.duration(),
        interval: args
            .interval
            .duration()
            .max(std::time::Duration::from_millis(100)),
        flows: args.flow,
        user: args.user,
        password,
        wait: args.wait.duration(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = rt.block_on(run(config, opts))?;
    if args.format == "json" {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render_text());
    }
    Ok(if report.failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
