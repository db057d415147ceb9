//! `palisade audit`: step 2 of the methodology — active, bounded fault
//! detection against a running deployment, ours (`--config`) or any SMTP
//! system (addresses). Exit status 1 when a tested fault is unprotected,
//! so it can run from cron or CI.

use std::collections::BTreeSet;
use std::io::BufRead;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use palisade_audit::audit::{self, Options};
use palisade_audit::model::Fault;
use palisade_audit::report::{render, Format, Report};
use palisade_config::Seconds;

#[derive(clap::Args)]
pub struct AuditArgs {
    /// Our own architecture: every address, the local domains, the limits
    /// and what each stage is configured to enforce ("not working" vs "absent").
    #[arg(long)]
    config: Option<PathBuf>,
    /// The MX (Internet-facing SMTP), HOST:PORT.
    #[arg(long)]
    mx: Option<SocketAddr>,
    /// Submission with STARTTLS (587), HOST:PORT.
    #[arg(long)]
    msa: Option<SocketAddr>,
    /// Submission with implicit TLS (465), HOST:PORT.
    #[arg(long)]
    msa_tls: Option<SocketAddr>,
    /// IMAPS of the test account's store, HOST:PORT.
    #[arg(long)]
    store_imap: Option<SocketAddr>,
    /// An internal stage address that must NOT be reachable from here (repeatable).
    #[arg(long)]
    internal: Vec<SocketAddr>,
    /// Test account (a local address); needed by the AUTH, content and quota probes.
    #[arg(long)]
    user: Option<String>,
    /// Read the test account's password from the first line of stdin.
    #[arg(long)]
    password_stdin: bool,
    /// Read the test account's password from the first line of this file.
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// A local domain of the target (default: the test account's, or the config's first).
    #[arg(long)]
    local_domain: Option<String>,
    /// External recipient of the relay probes (never delivered).
    #[arg(long, default_value = "audit-relay-test@relay-test.invalid")]
    external_rcpt: String,
    /// Envelope sender of the probes playing an Internet client; its
    /// domain must resolve where the target checks it.
    #[arg(long, default_value = "audit@audit-probe.invalid")]
    sender: String,
    /// EHLO name (default: "probe." and the sender's domain).
    #[arg(long)]
    helo: Option<String>,
    /// Local address to connect from: one the target does not trust.
    #[arg(long)]
    source: Option<IpAddr>,
    /// text, json, markdown or html.
    #[arg(long, default_value = "text")]
    format: Format,
    /// Only these faults (comma-separated ids: open-relay,data-size,...).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Bound of every connect and read (e.g. 10s).
    #[arg(long, default_value = "10s", value_parser = Seconds::parse)]
    timeout: Seconds,
    /// When the MX greylists the probes that need DATA, wait this long
    /// once and retry, as a real MTA would (0: those probes are not tested).
    #[arg(long, default_value = "0s", value_parser = Seconds::parse)]
    greylist_wait: Seconds,
    /// How long content probes wait for delivery to the mailbox.
    #[arg(long, default_value = "60s", value_parser = Seconds::parse)]
    delivery_wait: Seconds,
    /// Most connections of the flood and rate probes when the cap is unknown.
    #[arg(long, default_value_t = 60)]
    flood_max: usize,
    /// Largest body the oversize probe sends, in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    size_probe_max: u64,
    /// With --config: check that every message the nodes journaled in
    /// this window is accounted for on its next hop (silent loss).
    #[arg(long, default_value = "24h", value_parser = Seconds::parse)]
    conservation_window: Seconds,
    /// Also flood a non-loopback MX (connection limit and rate probes).
    #[arg(long)]
    allow_flood: bool,
}

pub fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let config = match &args.config {
        Some(path) => Some(palisade_config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?),
        None => None,
    };
    let password = if args.password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from stdin")?;
        Some(line.trim_end_matches(['\r', '\n']).to_string())
    } else if let Some(path) = &args.password_file {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Some(text.lines().next().unwrap_or("").to_string())
    } else {
        None
    };
    let mut only = BTreeSet::new();
    for id in &args.only {
        match Fault::from_id(id.trim()) {
            Some(f) => {
                only.insert(f);
            }
            None => bail!(
                "unknown fault {id:?}; one of: {}",
                Fault::ALL
                    .iter()
                    .map(|f| f.id())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    let sender_domain = args
        .sender
        .rsplit_once('@')
        .map(|(_, d)| d.to_string())
        .unwrap_or_default();
    let opts = Options {
        mx: args.mx,
        msa: args.msa,
        msa_tls: args.msa_tls,
        store_imap: args.store_imap,
        internal: args.internal,
        user: args.user,
        password,
        local_domain: args.local_domain,
        external_rcpt: args.external_rcpt,
        helo: args
            .helo
            .unwrap_or_else(|| format!("probe.{sender_domain}")),
        sender: args.sender,
        source: args.source,
        only,
        timeout: args.timeout.duration(),
        greylist_wait: args.greylist_wait.duration(),
        delivery_wait: args.delivery_wait.duration(),
        flood_max: args.flood_max,
        size_probe_max: args.size_probe_max,
        allow_flood: args.allow_flood,
        config: config.clone(),
    };
    let mut shown = opts.clone();
    shown.complete_from_config();
    if shown.mx.is_none()
        && shown.msa.is_none()
        && shown.msa_tls.is_none()
        && shown.internal.is_empty()
    {
        bail!(
            "nothing to audit: give --config, or --mx / --msa / --msa-tls / --internal addresses"
        );
    }
    let target = match &args.config {
        Some(path) => format!("{} ({})", path.display(), shown.target()),
        None => shown.target(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let conservation = config
        .as_ref()
        .filter(|_| args.only.is_empty() || only_has_conservation(&args.only));
    let mut findings = runtime.block_on(audit::run(opts));
    if let Some(config) = conservation {
        // Conservation accounting: the failure the paper says goes
        // unsignaled, read from every node's journal.
        let since = std::time::SystemTime::now()
            .checked_sub(args.conservation_window.duration())
            .unwrap_or(std::time::UNIX_EPOCH);
        findings.extend(runtime.block_on(palisade_audit::trace::conservation(config, since)));
    }
    let mut report = Report::from_findings(target, findings, config.as_ref());
    // Our own deployment: each run adds a snapshot of the nodes' defense
    // counters, so cron runs draw what each mechanism did over time.
    if let Some(config) = &config {
        match palisade_audit::history::record(config) {
            Ok(h) => report.history = h,
            Err(e) => eprintln!("palisade: metrics history: {e:#}"),
        }
    }
    print!("{}", render(&report, args.format));
    Ok(if report.has_failures() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `--only` names the fault the conservation check reports under.
fn only_has_conservation(only: &[String]) -> bool {
    let fault = palisade_audit::model::Fault::NoCongestionControl.id();
    only.iter().any(|f| f == fault)
}
