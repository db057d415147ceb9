//! `palisade dkim ...`: DKIM keys of the local domains (stage F signs).
//!
//! - `keygen DOMAIN SELECTOR` writes a new private key and prints the TXT
//!   record to publish and the config lines that put the key in service.
//! - `rotate DOMAIN SELECTOR` does the same and appends the key to the
//!   configuration after the current one. The outgoing nodes (after a
//!   restart) keep signing with the old selector until the new record is
//!   visible in DNS, then switch by themselves; keep the old record
//!   published for a grace period (a week: mail in flight, retries), then
//!   remove the old key's entry and record.
//! - `record DOMAIN SELECTOR` prints the record of a configured key.
//! - `verify [--dns HOST:PORT]` reads a message on stdin and checks its
//!   DKIM signatures against DNS with mail-auth (exit 0 only on a pass).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Subcommand, ValueEnum};
use mail_auth::hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts,
};
use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator};
use palisade_outbound::dkim::{generate_key, txt_record_of, Algorithm, PrivateKey};

use crate::ConfigArg;

#[derive(Clone, Copy, ValueEnum)]
pub enum KeyType {
    Rsa,
    Ed25519,
}

#[derive(Subcommand)]
pub enum DkimCommand {
    /// Generate a key for DOMAIN/SELECTOR and print the DNS record to publish.
    Keygen {
        domain: String,
        selector: String,
        /// rsa (2048 bits, understood everywhere) or ed25519 (RFC 8463).
        #[arg(long, value_enum, default_value = "rsa")]
        algorithm: KeyType,
        /// Where to write the private key (default: <data_dir>/dkim/DOMAIN.SELECTOR.pem).
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Start a rotation: new key, appended to the configuration after the
    /// current one; signing switches once its record is in DNS.
    Rotate {
        domain: String,
        selector: String,
        #[arg(long, value_enum, default_value = "rsa")]
        algorithm: KeyType,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print the DNS record of a configured key.
    Record {
        domain: String,
        selector: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Verify the DKIM signatures of the message on standard input.
    Verify {
        /// DNS server to ask (default: the system's).
        #[arg(long)]
        dns: Option<SocketAddr>,
    },
}

pub fn run(cmd: DkimCommand) -> Result<ExitCode> {
    match cmd {
        DkimCommand::Keygen {
            domain,
            selector,
            algorithm,
            out,
            config,
        } => {
            let cfg = crate::load_config(&config.config)?;
            let path = out.unwrap_or_else(|| default_key_path(&cfg, &domain, &selector));
            let record = write_new_key(&path, algorithm)?;
            print_publish(&domain, &selector, &record);
            println!("\nThen sign with it: add to {}:\n", config.config.display());
            print!("{}", config_entry(&domain, &selector, &path));
            Ok(ExitCode::SUCCESS)
        }
        DkimCommand::Rotate {
            domain,
            selector,
            algorithm,
            config,
        } => {
            let cfg = crate::load_config(&config.config)?;
            let keys = &cfg
                .settings(palisade_config::StageKind::Outgoing)
                .outbound
                .dkim;
            let current: Vec<_> = keys
                .iter()
                .filter(|k| k.domain.eq_ignore_ascii_case(&domain))
                .collect();
            if current.iter().any(|k| k.selector == selector) {
                bail!("selector {selector} is already configured for {domain}");
            }
            let path = default_key_path(&cfg, &domain, &selector);
            let record = write_new_key(&path, algorithm)?;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&config.config)
                .with_context(|| config.config.display().to_string())?;
            write!(
                f,
                "\n# DKIM rotation for {domain} started by `palisade dkim rotate`.\n{}",
                config_entry(&domain, &selector, &path)
            )?;
            // The result must still load: check before telling the admin.
            crate::load_config(&config.config)?;
            print_publish(&domain, &selector, &record);
            println!(
                "\nAdded to {}. Restart the outgoing nodes: they keep signing with {} until\n\
                 {selector}._domainkey.{domain} is visible in DNS, then switch to it. Keep the old\n\
                 record published for a week (messages in flight), then remove the old key's entry.",
                config.config.display(),
                current
                    .last()
                    .map(|k| k.selector.as_str())
                    .unwrap_or("(no previous key)")
            );
            Ok(ExitCode::SUCCESS)
        }
        DkimCommand::Record {
            domain,
            selector,
            config,
        } => {
            let cfg = crate::load_config(&config.config)?;
            let keys = cfg
                .settings(palisade_config::StageKind::Outgoing)
                .outbound
                .dkim;
            let key = keys
                .iter()
                .find(|k| k.domain.eq_ignore_ascii_case(&domain) && k.selector == selector)
                .ok_or_else(|| {
                    anyhow!("no DKIM key {selector} for {domain} in the configuration")
                })?;
            print_publish(&domain, &selector, &txt_record_of(&key.key)?);
            Ok(ExitCode::SUCCESS)
        }
        DkimCommand::Verify { dns } => verify(dns),
    }
}

fn default_key_path(cfg: &palisade_config::Config, domain: &str, selector: &str) -> PathBuf {
    cfg.gateway
        .data_dir
        .join("dkim")
        .join(format!("{}.{selector}.pem", domain.to_ascii_lowercase()))
}

/// Writes a new key (mode 0600, never over an existing file); returns
/// its TXT record.
fn write_new_key(path: &std::path::Path, algorithm: KeyType) -> Result<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let alg = match algorithm {
        KeyType::Rsa => Algorithm::Rsa,
        KeyType::Ed25519 => Algorithm::Ed25519,
    };
    let pem = generate_key(alg)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(pem.as_bytes())?;
    f.sync_all()?;
    eprintln!("private key written to {}", path.display());
    PrivateKey::from_pem(pem.as_bytes())?.txt_record()
}

fn print_publish(domain: &str, selector: &str, record: &str) {
    println!("Publish this DNS record:\n");
    // Zone files take long TXT data as several quoted strings of <= 255.
    let chunks: Vec<String> = record
        .as_bytes()
        .chunks(250)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    println!(
        "{selector}._domainkey.{domain}. IN TXT ( {} )",
        chunks.join(" ")
    );
}

fn config_entry(domain: &str, selector: &str, path: &std::path::Path) -> String {
    format!(
        "[[stage.outgoing.outbound.dkim]]\ndomain = \"{domain}\"\nselector = \"{selector}\"\nkey = \"{}\"\n",
        path.display()
    )
}

fn verify(dns: Option<SocketAddr>) -> Result<ExitCode> {
    let mut raw = Vec::new();
    std::io::stdin().read_to_end(&mut raw)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let auth = match dns {
            Some(addr) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                MessageAuthenticator::new(
                    ResolverConfig::from_parts(
                        None,
                        vec![],
                        vec![NameServerConfig::new(addr.ip(), true, vec![udp, tcp])],
                    ),
                    ResolverOpts::default(),
                )
            }
            None => MessageAuthenticator::new_system_conf(),
        }
        .map_err(|e| anyhow!("resolver: {e}"))?;
        let msg = AuthenticatedMessage::parse(&raw).ok_or_else(|| anyhow!("not a message"))?;
        let results = auth.verify_dkim(&msg).await;
        let mut pass = false;
        if results.is_empty() {
            println!("none: the message has no DKIM-Signature");
        }
        for r in &results {
            let (d, s) = r
                .signature()
                .map(|s| (s.d.clone(), s.s.clone()))
                .unwrap_or_default();
            match r.result() {
                DkimResult::Pass => {
                    pass = true;
                    println!("pass d={d} s={s}");
                }
                other => println!("{other:?} d={d} s={s}"),
            }
        }
        Ok(if pass {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    })
}
