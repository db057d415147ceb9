//! `palisade trace MESSAGE-ID`: the message's path through every node,
//! from their conservation journals; silent loss is named
//! (crates/audit/src/trace.rs, docs/probe.md).

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;

use crate::ConfigArg;

#[derive(Args)]
pub struct TraceArgs {
    /// The Message-ID, with or without angle brackets.
    pub message_id: String,
    #[command(flatten)]
    pub config: ConfigArg,
    /// text or json.
    #[arg(long, default_value = "text")]
    pub format: String,
}

/// Exit status: 0 accounted for, 1 silent loss, 2 no node knows it.
pub fn run_trace(args: TraceArgs) -> Result<ExitCode> {
    if !matches!(args.format.as_str(), "text" | "json") {
        bail!("--format {}: use text or json", args.format);
    }
    let config = crate::load_config(&args.config.config)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let t = rt.block_on(palisade_audit::trace::trace(&config, &args.message_id));
    if args.format == "json" {
        println!("{}", serde_json::to_string_pretty(&t)?);
    } else {
        print!("{}", t.render_text());
    }
    Ok(if t.silent_loss() {
        ExitCode::from(1)
    } else if t.stitched.copies.is_empty() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}
