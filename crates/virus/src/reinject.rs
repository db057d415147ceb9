//! Sending a message into the chain after a given stage: quarantine
//! release (`palisade quarantine release`), virus notices and DSNs.
//!
//! Recipients are routed exactly as a node of `after` would route them
//! (`Config::next_hop`), and each pool's nodes are tried in turn.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use palisade_config::{Config, NextHop, StageKind};
use palisade_smtp_client::{ClientConfig, Connection, TlsMode, Transaction};

/// Sends `message` from `mail_from` to `rcpts` as stage `after` would.
/// `Err` names every recipient that no next hop accepted.
pub async fn send_after_stage(
    config: &Config,
    after: StageKind,
    mail_from: &str,
    rcpts: &[String],
    message: &[u8],
) -> Result<(), String> {
    let mut pools: BTreeMap<String, (Vec<SocketAddr>, Vec<&str>)> = BTreeMap::new();
    let mut failures = Vec::new();
    for r in rcpts {
        match config.next_hop(after, r) {
            NextHop::Pool { name, addrs } => {
                pools.entry(name).or_insert((addrs, Vec::new())).1.push(r)
            }
            NextHop::LocalStore => failures.push(format!("<{r}>: {after} has no next hop")),
            NextHop::Unroutable(why) => failures.push(format!("<{r}>: {why}")),
        }
    }
    let mut client = ClientConfig::new(config.gateway.hostname.clone());
    client.tls_mode = TlsMode::None;
    client.connect_timeout = Duration::from_secs(10);
    client.command_timeout = Duration::from_secs(60);
    client.data_timeout = Duration::from_secs(120);
    for (pool, (addrs, rcpts)) in pools {
        let list: Vec<(&str, &str)> = rcpts.iter().map(|r| (*r, "")).collect();
        let tx = Transaction {
            mail_from,
            mail_params: "",
            origin: None,
            rcpts: &list,
            body: message,
        };
        let mut last = format!("no node in pool {pool}");
        let mut sent = false;
        for addr in addrs {
            match Connection::connect(addr, &client).await {
                Ok(mut conn) => match conn.send(&tx).await {
                    Ok(res) if res.accepted() == list.len() => {
                        conn.quit().await;
                        sent = true;
                        break;
                    }
                    Ok(res) => {
                        last = format!("{addr}: {}", res.rcpt_outcome(0));
                        conn.quit().await;
                    }
                    Err(e) => last = format!("{addr}: {e}"),
                },
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        if !sent {
            failures.push(format!("{} via {pool}: {last}", rcpts.join(", ")));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}
