//! `palisade dkim ...`: DKIM keys of the local domains (stage F signs).
//!
//! - `keygen DOMAIN SELECTOR` writes a new private key and prints the TXT
//!   record to publish and the config lines that put the key in service.
//! - `rotate DOMAIN SELECTOR` (step 1) writes the next key beside the
//!   current one (same type unless `--algorithm`) and prints its record;
//!   nothing changes in service yet.
//! - `rotate DOMAIN SELECTOR --activate` (step 2; `--wait` polls) looks the
//!   record up through the configuration's resolver and, only if it
//!   publishes exactly the new key, rewrites the configuration in place
//!   (toml_edit: comments and layout kept): the new key signs, the old one
//!   gets `retire_after` = now + `--grace` (7 days); then every outgoing
//!   node is asked to reload (`POST /reload`, its SIGHUP) and signs the
//!   next message with the new selector, without a restart.
//! - `status [DOMAIN]` lists signing, retiring and generated-but-pending
//!   selectors, whether DNS publishes each, and when a retiring record may
//!   be removed.
//! - `record DOMAIN SELECTOR` prints the record of a configured key.
//! - `verify [--dns HOST:PORT]` reads a message on stdin and checks its
//!   DKIM signatures against DNS with mail-auth (exit 0 only on a pass).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Subcommand, ValueEnum};
use mail_auth::hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts,
};
use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator};
use palisade_config::{Config, DkimKey, Seconds, StageKind};
use palisade_outbound::dkim::{
    check_published, generate_key, txt_record_of, Algorithm, PrivateKey,
};
use palisade_outbound::resolve::DnsResolver;

use crate::ConfigArg;

#[derive(Clone, Copy, ValueEnum)]
pub enum KeyType {
    Rsa,
    Ed25519,
}

impl KeyType {
    fn algorithm(self) -> Algorithm {
        match self {
            KeyType::Rsa => Algorithm::Rsa,
            KeyType::Ed25519 => Algorithm::Ed25519,
        }
    }
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
    /// Rotate DOMAIN's key to SELECTOR: first the new key and its record to
    /// publish; then, with --activate (or --wait), the switch once DNS
    /// publishes it.
    Rotate(RotateArgs),
    /// Signing, retiring and pending selectors of every domain (or DOMAIN),
    /// their DNS records, and when a retiring record may be removed.
    Status {
        domain: Option<String>,
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

#[derive(clap::Args)]
pub struct RotateArgs {
    domain: String,
    selector: String,
    /// Type of the new key (default: the type of the current key).
    #[arg(long, value_enum)]
    algorithm: Option<KeyType>,
    /// Step 2: check that DNS publishes exactly the new key, then switch
    /// signing to it (refused while the record is missing or different).
    #[arg(long)]
    activate: bool,
    /// Like --activate, asking DNS again every 10 s until the record is
    /// there (or --timeout).
    #[arg(long, conflicts_with = "activate")]
    wait: bool,
    /// How long --wait waits (e.g. 30m, 2h).
    #[arg(long, default_value = "1h")]
    timeout: String,
    /// How long the old selector's record must stay published after the
    /// switch (mail in transit, receivers' retries, forwarded copies).
    #[arg(long, default_value = "7d")]
    grace: String,
    #[command(flatten)]
    config: ConfigArg,
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
            let record = write_new_key(&path, algorithm.algorithm())?;
            print_publish(&domain, &selector, &record);
            println!("\nThen sign with it: add to {}:\n", config.config.display());
            print!("{}", config_entry(&domain, &selector, &path));
            Ok(ExitCode::SUCCESS)
        }
        DkimCommand::Rotate(args) => rotate(args),
        DkimCommand::Status { domain, config } => status(domain, &config),
        DkimCommand::Record {
            domain,
            selector,
            config,
        } => {
            let cfg = crate::load_config(&config.config)?;
            let keys = cfg.settings(StageKind::Outgoing).outbound.dkim;
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
fn write_new_key(path: &std::path::Path, alg: Algorithm) -> Result<String> {
    use std::os::unix::fs::OpenOptionsExt;
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

/// Where the next key of `domain` goes: beside its current key.
fn next_key_path(current: &DkimKey, domain: &str, selector: &str) -> PathBuf {
    current
        .key
        .parent()
        .unwrap_or(Path::new("."))
        .join(format!("{}.{selector}.pem", domain.to_ascii_lowercase()))
}

fn read_key(path: &Path) -> Result<PrivateKey> {
    let pem = std::fs::read(path).with_context(|| format!("DKIM key {}", path.display()))?;
    PrivateKey::from_pem(&pem).with_context(|| format!("DKIM key {}", path.display()))
}

fn rotate(args: RotateArgs) -> Result<ExitCode> {
    let cfg = crate::load_config(&args.config.config)?;
    let (domain, selector) = (args.domain.to_ascii_lowercase(), args.selector.clone());
    let keys = cfg.settings(StageKind::Outgoing).outbound.dkim;
    let of_domain: Vec<&DkimKey> = keys
        .iter()
        .filter(|k| k.domain.eq_ignore_ascii_case(&domain))
        .collect();
    let signing: Vec<&DkimKey> = of_domain.iter().copied().filter(|k| k.signs()).collect();
    let Some(current) = signing.last().copied() else {
        bail!(
            "{domain} has no signing DKIM key in {}: start with `palisade dkim keygen {domain} SELECTOR`",
            args.config.config.display()
        );
    };
    if let Some(k) = of_domain.iter().find(|k| k.selector == selector) {
        if k.signs() && signing.len() == 1 {
            println!("{domain} already signs with {selector}: nothing to do.");
            return Ok(ExitCode::SUCCESS);
        }
        bail!("selector {selector} is already configured for {domain}: choose a new one");
    }
    let path = next_key_path(current, &domain, &selector);
    if !(args.activate || args.wait) {
        return rotate_prepare(&args, &domain, current, &path);
    }

    // Step 2: the switch, only once DNS publishes exactly the new key.
    let new = read_key(&path).map_err(|e| {
        anyhow!("{e:#}\nrun `palisade dkim rotate {domain} {selector}` first (step 1)")
    })?;
    let name = format!("{selector}._domainkey.{domain}");
    let dns = DnsResolver::new(cfg.gateway.dns)?;
    let timeout = Seconds::parse(&args.timeout).map_err(|e| anyhow!("--timeout: {e}"))?;
    let grace = Seconds::parse(&args.grace).map_err(|e| anyhow!("--grace: {e}"))?;
    let deadline = Instant::now() + timeout.duration();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    loop {
        let why = match rt.block_on(dns.txt(&name)) {
            Ok(txts) => match check_published(&txts, &new) {
                Ok(()) => break,
                Err(why) => why,
            },
            Err(e) => format!("DNS lookup failed: {e}"),
        };
        if !args.wait || Instant::now() >= deadline {
            eprintln!(
                "refused: {name}: {why}.\n\
                 Signing stays with {}. Publish the record printed by \
                 `palisade dkim rotate {domain} {selector}`, \
                 wait for it to be visible (resolvers cache answers for their TTL), and run this again.",
                current.selector
            );
            return Ok(ExitCode::from(1));
        }
        eprintln!("{name}: {why}; asking again in 10 s");
        std::thread::sleep(Duration::from_secs(10));
    }
    println!("{name} publishes the new key.");

    let retire_after = time::OffsetDateTime::now_utc() + grace.duration();
    let retiring: Vec<String> = signing.iter().map(|k| k.selector.clone()).collect();
    switch_config(
        &args.config.config,
        &domain,
        &selector,
        &path,
        &toml_datetime(retire_after),
    )?;
    println!(
        "{}: {domain} now signs with {selector}; {} retiring until {}.",
        args.config.config.display(),
        retiring.join(", "),
        human_time(retire_after)
    );
    reload_outgoing_nodes(&cfg, &selector);
    println!(
        "Keep {} published until then (`palisade dkim status` says when it may go).",
        retiring
            .iter()
            .map(|s| format!("{s}._domainkey.{domain}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

/// Step 1: the new key (kept if a previous step 1 made it) and its record.
fn rotate_prepare(
    args: &RotateArgs,
    domain: &str,
    current: &DkimKey,
    path: &Path,
) -> Result<ExitCode> {
    let selector = &args.selector;
    let wanted = args.algorithm.map(KeyType::algorithm);
    let record = if path.exists() {
        let existing = read_key(path)?;
        if wanted.is_some_and(|a| a != existing.algorithm) {
            bail!(
                "{} already holds a {} key for {selector}: remove it or keep its type",
                path.display(),
                existing.algorithm.dns_tag()
            );
        }
        eprintln!("using the key generated earlier: {}", path.display());
        existing.txt_record()?
    } else {
        let alg = match wanted {
            Some(a) => a,
            None => read_key(&current.key)?.algorithm,
        };
        write_new_key(path, alg)?
    };
    print_publish(domain, selector, &record);
    println!(
        "\n{} keeps signing until the switch. Once the record is visible in DNS:\n\n  \
         palisade dkim rotate {domain} {selector} --activate --config {}\n\n\
         (or --wait to poll DNS until it is). That checks the record, switches the \
         configuration to {selector}\nand has the outgoing nodes reload it.",
        current.selector,
        args.config.config.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Rewrites the configuration file in place (toml_edit keeps comments and
/// layout): every signing key of `domain` gets `retire_after`, and the new
/// key is added after them. The result is validated before it replaces
/// the file (written beside it, then renamed: never half a file).
fn switch_config(
    file: &Path,
    domain: &str,
    selector: &str,
    key: &Path,
    retire_after: &toml_edit::Datetime,
) -> Result<()> {
    let real = std::fs::canonicalize(file).with_context(|| file.display().to_string())?;
    let text = std::fs::read_to_string(&real).with_context(|| real.display().to_string())?;
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("parsing {}", real.display()))?;
    let dkim = doc
        .get_mut("stage")
        .and_then(|s| s.get_mut("outgoing"))
        .and_then(|s| s.get_mut("outbound"))
        .and_then(|s| s.get_mut("dkim"))
        .ok_or_else(|| anyhow!("{}: no [[stage.outgoing.outbound.dkim]]", real.display()))?;
    let is_signing_key_of_domain = |t: &dyn toml_edit::TableLike| {
        t.get("domain")
            .and_then(|d| d.as_str())
            .is_some_and(|d| d.eq_ignore_ascii_case(domain))
            && t.get("retire_after").is_none()
    };
    let mut entry = toml_edit::Table::new();
    entry["domain"] = toml_edit::value(domain);
    entry["selector"] = toml_edit::value(selector);
    entry["key"] = toml_edit::value(key.display().to_string());
    if let Some(tables) = dkim.as_array_of_tables_mut() {
        for t in tables.iter_mut() {
            if is_signing_key_of_domain(&*t) {
                t["retire_after"] = toml_edit::value(*retire_after);
            }
        }
        tables.push(entry);
    } else if let Some(array) = dkim.as_array_mut() {
        for v in array.iter_mut() {
            if let Some(t) = v.as_inline_table_mut() {
                if is_signing_key_of_domain(&*t) {
                    t.insert("retire_after", (*retire_after).into());
                }
            }
        }
        array.push(entry.into_inline_table());
    } else {
        bail!(
            "{}: stage.outgoing.outbound.dkim is not a list of keys",
            real.display()
        );
    }
    let new_text = doc.to_string();
    palisade_config::parse(&real, &new_text).map_err(|e| {
        anyhow!("the rewritten configuration would not load (file unchanged):\n{e}")
    })?;
    // The file keeps its mode (it may be readable by the run group only).
    let mode = std::fs::metadata(&real).ok().map(|m| {
        use std::os::unix::fs::PermissionsExt;
        m.permissions().mode() & 0o7777
    });
    palisade_queue::durable::replace_file(&real, new_text.as_bytes(), mode)
        .with_context(|| real.display().to_string())
}

/// Asks every outgoing node to reload (it sends itself SIGHUP); a node
/// that is not running signs with the new key when it starts.
fn reload_outgoing_nodes(cfg: &Config, selector: &str) {
    for (name, node) in &cfg.node {
        if node.stage != StageKind::Outgoing {
            continue;
        }
        match crate::queue::node_request(cfg, name, "POST", "/reload") {
            Ok(_) => println!("{name}: reloading; the next message it sends is signed with {selector}"),
            Err(e) => println!(
                "{name}: not reached ({e:#}); it signs with {selector} once it (re)starts or is sent SIGHUP"
            ),
        }
    }
}

fn status(domain: Option<String>, config: &ConfigArg) -> Result<ExitCode> {
    let cfg = crate::load_config(&config.config)?;
    let keys = cfg.settings(StageKind::Outgoing).outbound.dkim;
    let mut domains: Vec<String> = keys.iter().map(|k| k.domain.to_ascii_lowercase()).collect();
    domains.sort();
    domains.dedup();
    if let Some(d) = &domain {
        domains.retain(|x| x.eq_ignore_ascii_case(d));
        if domains.is_empty() {
            bail!("no DKIM key for {d} in {}", config.config.display());
        }
    }
    let dns = DnsResolver::new(cfg.gateway.dns)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let published = |name: &str, path: &Path| -> String {
        let Ok(key) = read_key(path) else {
            return format!("key file {} unreadable", path.display());
        };
        match rt.block_on(dns.txt(name)) {
            Ok(txts) => match check_published(&txts, &key) {
                Ok(()) => "published".into(),
                Err(why) => format!("NOT published: {why}"),
            },
            Err(e) => format!("DNS lookup failed: {e}"),
        }
    };
    let now = time::OffsetDateTime::now_utc();
    for d in &domains {
        println!("{d}");
        let mine: Vec<&DkimKey> = keys
            .iter()
            .filter(|k| k.domain.eq_ignore_ascii_case(d))
            .collect();
        for k in mine.iter().filter(|k| k.signs()) {
            let name = format!("{}._domainkey.{d}", k.selector);
            println!(
                "  signing   {:<16} {name}: {}",
                k.selector,
                published(&name, &k.key)
            );
        }
        for k in mine.iter().filter(|k| !k.signs()) {
            let name = format!("{}._domainkey.{d}", k.selector);
            let when = k.retire_after.as_ref().and_then(offset_datetime);
            let advice = match when {
                Some(t) if t > now => format!(
                    "keep {name} published until {} (in {})",
                    human_time(t),
                    human_span(t - now)
                ),
                Some(_) => format!(
                    "grace over: remove the {name} record, then this entry (and its key file {})",
                    k.key.display()
                ),
                None => "retire_after is not a full date and time".into(),
            };
            println!("  retiring  {:<16} {advice}", k.selector);
        }
        // Step 1 done, step 2 not yet: a key file beside the current key.
        if let Some(current) = mine.iter().rev().find(|k| k.signs()) {
            let dir = current.key.parent().unwrap_or(Path::new("."));
            let prefix = format!("{d}.");
            let mut pending: Vec<String> = std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| {
                    let f = e.file_name().to_string_lossy().into_owned();
                    let sel = f.strip_prefix(&prefix)?.strip_suffix(".pem")?.to_string();
                    (!sel.contains('.') && !mine.iter().any(|k| k.selector == sel)).then_some(sel)
                })
                .collect();
            pending.sort();
            for sel in pending {
                let name = format!("{sel}._domainkey.{d}");
                println!(
                    "  pending   {sel:<16} {name}: {}; then `palisade dkim rotate {d} {sel} --activate`",
                    published(&name, &dir.join(format!("{d}.{sel}.pem")))
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn toml_datetime(t: time::OffsetDateTime) -> toml_edit::Datetime {
    let t = t.to_offset(time::UtcOffset::UTC);
    toml_edit::Datetime {
        date: Some(toml_edit::Date {
            year: t.year() as u16,
            month: t.month() as u8,
            day: t.day(),
        }),
        time: Some(toml_edit::Time {
            hour: t.hour(),
            minute: t.minute(),
            second: t.second(),
            nanosecond: 0,
        }),
        offset: Some(toml_edit::Offset::Z),
    }
}

/// A configured `retire_after` as a point in time (validation made sure
/// it has a date, a time and an offset).
fn offset_datetime(t: &toml_edit::Datetime) -> Option<time::OffsetDateTime> {
    let (d, tm) = (t.date?, t.time?);
    let date =
        time::Date::from_calendar_date(d.year as i32, time::Month::try_from(d.month).ok()?, d.day)
            .ok()?;
    let clock = time::Time::from_hms(tm.hour, tm.minute, tm.second).ok()?;
    let offset = match t.offset? {
        toml_edit::Offset::Z => time::UtcOffset::UTC,
        toml_edit::Offset::Custom { minutes } => {
            time::UtcOffset::from_whole_seconds(i32::from(minutes) * 60).ok()?
        }
    };
    Some(time::PrimitiveDateTime::new(date, clock).assume_offset(offset))
}

fn human_time(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{}-{:02}-{:02} {:02}:{:02} UTC",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute()
    )
}

fn human_span(d: time::Duration) -> String {
    let hours = d.whole_hours();
    if hours >= 48 {
        format!("{} days", hours / 24)
    } else if hours >= 1 {
        format!("{hours} h")
    } else {
        format!("{} min", d.whole_minutes().max(1))
    }
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
