//! `palisade up`: a whole architecture on this machine.
//!
//! Every node of the configuration runs as its own stage process (as it
//! would on its own server), supervised: a node that dies is restarted
//! with a growing delay, its output is prefixed with its name, and Ctrl-C
//! or SIGTERM stops them all. Each node's PID is written to
//! `data_dir/<node>/pid` so operators and tests can find it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use palisade_config::Config;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

#[derive(clap::Args)]
pub struct UpArgs {
    /// Configuration to run (default: config/local.toml, or the embedded
    /// copy of it when that file is not here).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where nodes keep queues, mailboxes, the directory and TLS files.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// DNS server every node resolves through (HOST:PORT).
    #[arg(long)]
    dns: Option<SocketAddr>,
    /// Directory holding the palisade-* stage binaries (default: next to
    /// this program).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

/// Restart delays grow from 1 s to this; a node that ran this long
/// starts again from 1 s.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);

pub fn run(args: UpArgs) -> Result<ExitCode> {
    let (config, effective, source) = effective_config(&args)?;
    if config.gateway.tls_cert.is_none() {
        let (cert, key) = palisade_stage::tls::cert_paths(&config);
        if palisade_stage::tls::ensure_self_signed(&cert, &key, &config.gateway.hostname)? {
            println!("up: generated a self-signed certificate {}", cert.display());
        }
    }

    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(Path::to_path_buf)
            .context("cannot locate the stage binaries")?,
    };
    for node in config.node.values() {
        let bin = bin_dir.join(node.stage.binary());
        if !bin.exists() {
            bail!(
                "{} not found; build the stages first (cargo build --release)",
                bin.display()
            );
        }
    }

    let clamd = crate::clamd::prepare(&config)?;
    print_plan(&config, &source);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(supervise(&args, config, effective, bin_dir, clamd))?;
    Ok(ExitCode::SUCCESS)
}

/// The configuration the nodes run, the file they read it from, and the
/// name of its source. The flags patch the file's text (comments and all):
/// the nodes read exactly what the admin wrote, plus these two keys, in a
/// copy under the data directory (rewritten on every SIGHUP).
fn effective_config(args: &UpArgs) -> Result<(Config, PathBuf, String)> {
    let (source, path, text) = read_config(args)?;
    let mut doc: toml_edit::DocumentMut =
        text.parse().with_context(|| format!("parsing {source}"))?;
    if let Some(d) = &args.data_dir {
        doc["gateway"]["data_dir"] = toml_edit::value(d.display().to_string());
    }
    if let Some(dns) = args.dns {
        doc["gateway"]["dns"] = toml_edit::value(dns.to_string());
    }
    let patched = args.data_dir.is_some() || args.dns.is_some() || path.is_none();
    let text = doc.to_string();
    let config = palisade_config::parse(Path::new(&source), &text)
        .map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
    let data_dir = config.gateway.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let effective = match path {
        Some(p) if !patched => p,
        _ => {
            let effective = data_dir.join("palisade-up.toml");
            std::fs::write(
                &effective,
                format!("# Written by `palisade up` from {source} and its flags.\n{text}"),
            )?;
            effective
        }
    };
    Ok((config, effective, source))
}

/// The configuration's name (for messages), its path when it is a file,
/// and its text.
fn read_config(args: &UpArgs) -> Result<(String, Option<PathBuf>, String)> {
    let default = Path::new("config/local.toml");
    let path = match &args.config {
        Some(p) => Some(p.clone()),
        None if default.exists() => Some(default.to_path_buf()),
        None => None,
    };
    match path {
        Some(p) => {
            let text =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            Ok((p.display().to_string(), Some(p), text))
        }
        None => Ok((
            "the embedded config/local.toml".to_string(),
            None,
            crate::EMBEDDED_LOCAL_CONFIG.to_string(),
        )),
    }
}

fn print_plan(config: &Config, source: &str) {
    println!("up: {} nodes from {source}", config.node.len());
    for (name, node) in &config.node {
        let addrs: Vec<String> = node
            .listeners()
            .iter()
            .map(|(k, a)| format!("{k} {a}"))
            .collect();
        println!(
            "up:   {name:<16} {} ({})  {}",
            node.stage,
            node.stage.letter(),
            addrs.join(", ")
        );
    }
}

async fn supervise(
    args: &UpArgs,
    config: Config,
    effective: PathBuf,
    bin_dir: PathBuf,
    clamd: Option<crate::clamd::LocalClamd>,
) -> Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    if let Some(c) = clamd {
        tasks.push(tokio::spawn(crate::clamd::supervise(c, stop_rx.clone())));
    }
    for (name, node) in &config.node {
        let bin = bin_dir.join(node.stage.binary());
        let pid_file = config.node_dir(name).join("pid");
        tasks.push(tokio::spawn(keep_running(
            name.clone(),
            bin,
            effective.clone(),
            pid_file,
            stop_rx.clone(),
        )));
    }
    // SIGHUP: every node reloads the configuration (systemd's reload).
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    // Listening once, before the loop: a SIGTERM that arrives while a
    // SIGHUP is handled must not go unseen.
    let stop = palisade_stage::runtime::shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = hangup.recv() => {
                // A source that no longer parses leaves the copy as it
                // was; the nodes then reload what they run.
                if let Err(e) = effective_config(args) {
                    println!("up: SIGHUP: {e:#}");
                }
                println!("up: SIGHUP: nodes reload {}", effective.display());
                for name in config.node.keys() {
                    let pid = std::fs::read_to_string(config.node_dir(name).join("pid"));
                    if let Some(pid) = pid.ok().and_then(|p| p.trim().parse::<libc::pid_t>().ok()) {
                        // SAFETY: plain kill(2) on our own child's PID.
                        unsafe {
                            libc::kill(pid, libc::SIGHUP);
                        }
                    }
                }
            }
        }
    }
    println!("up: stopping {} nodes", tasks.len());
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    println!("up: all nodes stopped");
    Ok(())
}

/// Runs one node until asked to stop, restarting it when it dies.
async fn keep_running(
    name: String,
    bin: PathBuf,
    config: PathBuf,
    pid_file: PathBuf,
    mut stop: watch::Receiver<bool>,
) {
    let mut delay = Duration::from_secs(1);
    loop {
        let started = Instant::now();
        let mut child = match start(&name, &bin, &config) {
            Ok(c) => c,
            Err(e) => {
                println!("up: {name}: cannot start {}: {e}", bin.display());
                if wait_or_stop(&mut stop, delay).await {
                    return;
                }
                delay = (delay * 2).min(MAX_RESTART_DELAY);
                continue;
            }
        };
        if let Some(pid) = child.id() {
            if let Some(dir) = pid_file.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let _ = std::fs::write(&pid_file, format!("{pid}\n"));
        }
        tokio::select! {
            status = child.wait() => {
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                if started.elapsed() > MAX_RESTART_DELAY {
                    delay = Duration::from_secs(1);
                }
                println!("up: {name} exited ({status}); restarting in {}s", delay.as_secs());
                if wait_or_stop(&mut stop, delay).await {
                    return;
                }
                delay = (delay * 2).min(MAX_RESTART_DELAY);
            }
            _ = stop.changed() => {
                terminate(&name, &mut child).await;
                let _ = std::fs::remove_file(&pid_file);
                return;
            }
        }
    }
}

/// Sleeps for `d` unless a stop arrives first (then returns true).
async fn wait_or_stop(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

fn start(name: &str, bin: &Path, config: &Path) -> std::io::Result<Child> {
    let mut child = Command::new(bin)
        .arg("--config")
        .arg(config)
        .arg("--node")
        .arg(name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    prefix_output(&mut child, name);
    Ok(child)
}

/// Copies the child's stdout and stderr to ours, each line prefixed by
/// `name` (`      mx-1 | ...`), so one terminal shows every node.
pub(crate) fn prefix_output(child: &mut Child, name: &str) {
    for out in [
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        child
            .stderr
            .take()
            .map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let name = name.to_string();
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                println!("{name:>15} | {line}");
            }
        });
    }
}

/// SIGTERM, then SIGKILL if the node has not exited within 5 s.
async fn terminate(name: &str, child: &mut Child) {
    if let Some(pid) = child.id() {
        // SAFETY: plain kill(2) on our own child's PID.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        println!("up: {name} did not stop within 5s; killing it");
        let _ = child.kill().await;
    }
}
