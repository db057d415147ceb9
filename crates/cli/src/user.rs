//! `palisade user ...`: provisioning mailbox users in the directory that
//! the MX, MSA and store nodes consult.

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use palisade_mailbox::Directory;

use crate::ConfigArg;

#[derive(Subcommand)]
pub enum UserCommand {
    /// Add a user; the password is read from stdin (or prompted for).
    Add {
        address: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        /// Mailbox quota, e.g. 100K, 50M, 2G (0 = unlimited).
        #[arg(long, default_value = "0")]
        quota: String,
        /// Store node holding the mailbox (default: the domain's store).
        #[arg(long)]
        store: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Remove a user.
    Del {
        address: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Change a user's password.
    Passwd {
        address: String,
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Change a user's quota.
    Quota {
        address: String,
        quota: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Make ALIAS deliver to (and be usable as a sender by) ADDRESS.
    Alias {
        alias: String,
        address: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List users.
    List {
        #[command(flatten)]
        config: ConfigArg,
    },
}

pub fn run(cmd: UserCommand) -> Result<ExitCode> {
    let config = match &cmd {
        UserCommand::Add { config, .. }
        | UserCommand::Del { config, .. }
        | UserCommand::Passwd { config, .. }
        | UserCommand::Quota { config, .. }
        | UserCommand::Alias { config, .. } => Some(config.config.clone()),
        UserCommand::List { .. } => None,
    };
    let code = change(cmd)?;
    // Push the change to the MX and MSA replicas; they would also pick it
    // up on their next pull, within seconds.
    if let Some(path) = config {
        let cfg = crate::load_config(&path)?;
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(palisade_stage::replica::push_change(&cfg));
    }
    Ok(code)
}

fn change(cmd: UserCommand) -> Result<ExitCode> {
    match cmd {
        UserCommand::Add {
            address,
            password_stdin,
            quota,
            store,
            config,
        } => {
            let cfg = crate::load_config(&config.config)?;
            let address = address.to_ascii_lowercase();
            let Some(domain) = cfg.local_domain(&address) else {
                bail!(
                    "{address} is not in a local domain of {}",
                    config.config.display()
                );
            };
            let store = match store.or_else(|| domain.store.clone()) {
                Some(s) => s,
                None => bail!("domain {} has no store node; give --store", domain.name),
            };
            if cfg.node.get(&store).map(|n| n.stage) != Some(palisade_config::StageKind::Store) {
                bail!("{store} is not a store node of {}", config.config.display());
            }
            let quota = parse_bytes(&quota)?;
            let password = read_password(password_stdin)?;
            directory(&cfg)?.add_user(&address, &password, quota, &store)?;
            println!(
                "added {address} (store {store}, quota {})",
                show_bytes(quota)
            );
        }
        UserCommand::Del { address, config } => {
            let cfg = crate::load_config(&config.config)?;
            if !directory(&cfg)?.delete_user(&address)? {
                bail!("no user {address}");
            }
            println!("deleted {address}");
        }
        UserCommand::Passwd {
            address,
            password_stdin,
            config,
        } => {
            let cfg = crate::load_config(&config.config)?;
            let password = read_password(password_stdin)?;
            if !directory(&cfg)?.set_password(&address, &password)? {
                bail!("no user {address}");
            }
            println!("password changed for {address}");
        }
        UserCommand::Quota {
            address,
            quota,
            config,
        } => {
            let cfg = crate::load_config(&config.config)?;
            let q = parse_bytes(&quota)?;
            if !directory(&cfg)?.set_quota(&address, q)? {
                bail!("no user {address}");
            }
            println!("quota of {address} is now {}", show_bytes(q));
        }
        UserCommand::Alias {
            alias,
            address,
            config,
        } => {
            let cfg = crate::load_config(&config.config)?;
            if cfg.local_domain(&alias).is_none() {
                bail!(
                    "{alias} is not in a local domain of {}",
                    config.config.display()
                );
            }
            directory(&cfg)?.add_alias(&alias, &address)?;
            println!("{alias} now delivers to {address}");
        }
        UserCommand::List { config } => {
            let cfg = crate::load_config(&config.config)?;
            for u in directory(&cfg)?.list()? {
                println!(
                    "{:<40} {:<16} quota {:<10} {}",
                    u.address,
                    u.store,
                    show_bytes(u.quota_bytes),
                    u.aliases.join(",")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn directory(cfg: &palisade_config::Config) -> Result<Directory> {
    let dir = cfg.directory_dir();
    Directory::open(&dir).with_context(|| format!("opening the directory {}", dir.display()))
}

fn read_password(from_stdin: bool) -> Result<String> {
    let password = if from_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_string()
    } else {
        let p = rpassword::prompt_password("Password: ")?;
        if rpassword::prompt_password("Again: ")? != p {
            bail!("the passwords differ");
        }
        p
    };
    if password.len() < 8 {
        bail!("a password needs at least 8 characters");
    }
    Ok(password)
}

/// `100K`, `50M`, `2G`, or plain bytes.
pub fn parse_bytes(text: &str) -> Result<u64> {
    let t = text.trim();
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1024),
        Some('M' | 'm') => (&t[..t.len() - 1], 1024 * 1024),
        Some('G' | 'g') => (&t[..t.len() - 1], 1024 * 1024 * 1024),
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("`{text}` is not a size (e.g. 100K, 50M, 2G)"))?;
    Ok(n * mult)
}

fn show_bytes(n: u64) -> String {
    if n == 0 {
        "unlimited".into()
    } else {
        format!("{n}B")
    }
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("100K").unwrap(), 102_400);
        assert_eq!(parse_bytes("2g").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("512").unwrap(), 512);
        assert!(parse_bytes("lots").is_err());
    }
}
