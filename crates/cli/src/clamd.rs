//! The local clamd `palisade up` runs for the antivirus stage (SPEC §2).
//!
//! When the configuration names no clamd (`[stage.antivirus.virus] clamd`
//! empty) and runs antivirus nodes, `up` starts Debian's clamd as one more
//! supervised child: its own config under `data_dir/clamd/`, listening only
//! on a Unix socket there (which is where the antivirus nodes look by
//! default), and a local signature database that knows the EICAR and
//! ClamAV test files, so nothing is downloaded. Production configs name
//! the site's clamd daemons, with their full databases, instead.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use palisade_config::{Config, StageKind};
use tokio::process::Command;
use tokio::sync::watch;

/// The EICAR test string (68 bytes).
const EICAR: &str = r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

/// A clamd to run: its binary and directory.
pub struct LocalClamd {
    pub binary: PathBuf,
    pub dir: PathBuf,
}

/// Decides whether `up` must run a clamd, and prepares its directory.
/// Fails (naming the install command) when one is needed but clamd is
/// not installed.
pub fn prepare(config: &Config) -> Result<Option<LocalClamd>> {
    if !config.virus().clamd.is_empty() || config.nodes_of(StageKind::Antivirus).next().is_none() {
        return Ok(None);
    }
    let Some(binary) = find_clamd() else {
        bail!(
            "the antivirus stage needs clamd, which is not installed.\n\
             Install it with:  sudo apt-get install clamav-daemon\n\
             (or name existing daemons in [stage.antivirus.virus] clamd = [\"host:port\"])"
        );
    };
    let dir = config.local_clamd_dir();
    write_files(&dir).with_context(|| format!("preparing {}", dir.display()))?;
    Ok(Some(LocalClamd { binary, dir }))
}

fn find_clamd() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("clamd"))
        .find(|p| p.is_file())
}

/// clamd.conf and the local signature database.
pub fn write_files(dir: &Path) -> std::io::Result<()> {
    let db = dir.join("db");
    std::fs::create_dir_all(&db)?;
    std::fs::create_dir_all(dir.join("tmp"))?;
    // .hdb: MD5:size:name of whole files (also applied to every file
    // clamd extracts from mail and archives): clam.exe from
    // clamav-testfiles and the 68-byte eicar.com.
    std::fs::write(
        db.join("local.hdb"),
        "aa15bcf478d165efd2065190eb473bcb:544:ClamAV-Test-File\n\
         44d88612fea8a8f36de82e1278abb02f:68:Eicar-Test-Signature\n",
    )?;
    // .ndb body signature: EICAR anywhere (with a newline after it, inside
    // a text body, after base64 decoding...).
    let hex: String = EICAR.bytes().map(|b| format!("{b:02x}")).collect();
    std::fs::write(
        db.join("local.ndb"),
        format!("Eicar-Test-Signature-Body:0:*:{hex}\n"),
    )?;
    let conf = format!(
        "Foreground yes\n\
         DatabaseDirectory {dir}/db\n\
         TemporaryDirectory {dir}/tmp\n\
         LocalSocket {dir}/clamd.sock\n\
         LocalSocketMode 600\n\
         FixStaleSocket yes\n\
         LogFile {dir}/clamd.log\n\
         LogTime yes\n\
         SelfCheck 0\n\
         MaxThreads 4\n\
         StreamMaxLength 30M\n\
         MaxFileSize 30M\n\
         MaxScanSize 100M\n\
         ScanMail yes\n\
         ScanArchive yes\n\
         Bytecode no\n",
        dir = dir.display()
    );
    std::fs::write(dir.join("clamd.conf"), conf)
}

/// Runs clamd until `stop`, restarting it when it dies.
pub async fn supervise(clamd: LocalClamd, mut stop: watch::Receiver<bool>) {
    let conf = clamd.dir.join("clamd.conf");
    let mut delay = Duration::from_secs(1);
    loop {
        let child = Command::new(&clamd.binary)
            .arg(format!("--config-file={}", conf.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                println!("up: clamd: cannot start {}: {e}", clamd.binary.display());
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => return,
                }
                delay = (delay * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        if let Some(pid) = child.id() {
            let _ = std::fs::write(clamd.dir.join("pid"), format!("{pid}\n"));
            println!(
                "up: clamd started (pid {pid}, socket {})",
                clamd.dir.join("clamd.sock").display()
            );
        }
        crate::up::prefix_output(&mut child, "clamd");
        tokio::select! {
            status = child.wait() => {
                println!("up: clamd exited ({}); restarting in {}s",
                    status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()), delay.as_secs());
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => return,
                }
                delay = (delay * 2).min(Duration::from_secs(30));
            }
            _ = stop.changed() => {
                if let Some(pid) = child.id() {
                    // SAFETY: kill(2) on our own child's pid.
                    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                }
                let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                let _ = child.kill().await;
                let _ = std::fs::remove_file(clamd.dir.join("pid"));
                return;
            }
        }
    }
}
