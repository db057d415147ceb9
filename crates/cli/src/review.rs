//! `palisade review`: step 1 of the methodology from the configuration
//! alone — Table I per stage and the fault coverage matrix — with the
//! evaluation of unprotected faults (steps 3-4). Each run also appends a
//! snapshot of the nodes' defense counters to the metrics history, so the
//! HTML report of a cron job charts what each mechanism did over time.
//!
//! Exit status: 0; 1 when a fault is unprotected; 2 when the config does
//! not load (every error printed, as `check-config` does) or on a usage
//! error — so cron can tell "the gateway is exposed" from "the job is broken".

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use palisade_audit::history;
use palisade_audit::report::{render, Format, Report};

use crate::ConfigArg;

#[derive(clap::Args)]
pub struct ReviewArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// text (a terminal table), json, markdown or html (one self-contained page).
    #[arg(long, default_value = "text")]
    pub format: Format,
    /// Write the report to this file (replaced atomically, e.g. in a web
    /// directory) instead of standard output.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Do not read the nodes' /metrics (and add nothing to the history).
    #[arg(long)]
    pub no_metrics: bool,
}

pub fn run(args: ReviewArgs) -> anyhow::Result<ExitCode> {
    // Any failure to produce the report is status 2, not 1 (exposed).
    review(args).or_else(|e| {
        eprintln!("palisade: {e:#}");
        Ok(ExitCode::from(2))
    })
}

fn review(args: ReviewArgs) -> anyhow::Result<ExitCode> {
    let config = match palisade_config::load(&args.config.config) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::from(2));
        }
    };
    let mut report = Report::from_findings(
        args.config.config.display().to_string(),
        Vec::new(),
        Some(&config),
    );
    if !args.no_metrics {
        // The review stands without charts: a history problem is a warning.
        match history::record(&config) {
            Ok(h) => report.history = h,
            Err(e) => eprintln!("palisade: metrics history: {e:#}"),
        }
    }
    let text = render(&report, args.format);
    match &args.output {
        Some(path) => write_atomically(path, text.as_bytes())?,
        None => std::io::stdout().write_all(text.as_bytes())?,
    }
    Ok(if report.has_failures() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Writes beside the target and renames over it, so a web server never
/// serves half a report.
pub fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    palisade_queue::durable::replace_file(path, bytes, None)
        .with_context(|| format!("replacing {}", path.display()))
}
