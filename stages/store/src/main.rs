//! palisade-store: stage G, the message store (shared/SPEC.md §2).
//!
//! Takes mail over SMTP from the antispam stage and files it into the
//! recipients' mailboxes; users read it over POP3S (and IMAPS). Unlike the
//! relaying stages it has no queue of its own: the mailbox write is the
//! durable step, committed before the 250, and a refusal (unknown user,
//! over quota) leaves the message in the upstream stage's queue.

mod intake;

use std::sync::Arc;

use anyhow::{Context, Result};
use palisade_imap::{serve_imap, ImapOptions};
use palisade_mailbox::{serve_pop3_with_options, Directory, MailStore, Pop3Options};
use palisade_smtp_server::ListenerProfile;
use palisade_stage::runtime::{bind, runtime, shutdown_signal};
use palisade_stage::{NodeContext, StageKind};
use tracing::{error, info};

fn main() -> Result<()> {
    let ctx = NodeContext::from_args(StageKind::Store);
    runtime().block_on(store_main(ctx))
}

async fn store_main(ctx: Arc<NodeContext>) -> Result<()> {
    // Bind every port while still privileged (993 and 995 are), then run
    // as the node's own user before opening any mailbox.
    let smtp = ctx.node.smtp.context("store node without smtp address")?;
    let smtp_listener = bind(smtp, "smtp").await?;
    let pop3s_listener = match ctx.node.pop3s {
        Some(a) => Some(bind(a, "pop3s").await?),
        None => None,
    };
    let imaps_listener = match ctx.node.imaps {
        Some(a) => Some(bind(a, "imaps").await?),
        None => None,
    };
    let node_tls = palisade_stage::tls::NodeTls::load(&ctx.config)?;
    let tls = node_tls.config.clone();
    ctx.on_reload("TLS certificate", move |config| node_tls.reload(config));
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("SIGHUP handler")?;
    ctx.drop_privileges()?;
    let directory =
        Directory::open(&ctx.config.directory_dir()).context("opening the user directory")?;
    let mailboxes_dir = ctx.config.node_dir(&ctx.node_name).join("mailboxes");
    let store = MailStore::open(&mailboxes_dir)
        .with_context(|| format!("opening mailboxes {}", mailboxes_dir.display()))?;
    let journal_dir = ctx.config.node_dir(&ctx.node_name).join("journal");
    let journal =
        palisade_queue::Queue::open(&journal_dir, palisade_queue::QueueOptions::default())
            .with_context(|| format!("opening journal {}", journal_dir.display()))?;
    let intake = Arc::new(intake::StoreIntake::new(
        ctx.clone(),
        directory.clone(),
        store.clone(),
        journal.clone(),
    ));
    {
        let (node, directory, store) = (ctx.node_name.clone(), directory.clone(), store.clone());
        let refusing = intake.refusing();
        let router = ctx.http_router().route("/directory", move |req| {
            let is_refusing = |a: &str| refusing.lock().unwrap().contains(a);
            palisade_stage::replica::serve_snapshot(&node, &directory, &store, &is_refusing, req)
        });
        let router = palisade_stage::journal::routes(
            router,
            ctx.config.clone(),
            &ctx.node_name,
            "store",
            &journal,
        );
        // `palisade drain store-1`: the SMTP/LMTP intake answers 421 4.3.2
        // (the mail waits in the antispam queue or goes to the peer store)
        // while IMAP and POP3 keep serving. The journal holds no messages,
        // so the node is drained once its intake sessions end.
        let router = palisade_stage::drain::routes(
            router,
            &ctx.node_name,
            &ctx.drain,
            &journal,
            &ctx.metrics,
        );
        ctx.spawn_http(router);
    }
    let listener = smtp_listener;
    let stage = ctx.stage;
    let service = move |config: &palisade_config::Config, intake: &Arc<intake::StoreIntake>| {
        palisade_smtp_server::Service {
            config: palisade_stage::runtime::server_config_for(
                config,
                stage,
                ListenerProfile::Internal,
                None,
                false,
            ),
            hooks: intake.clone(),
        }
    };
    let (services, rx) = tokio::sync::watch::channel(service(&ctx.config, &intake));
    info!("{} listening on {smtp} (intake)", ctx.node_name);
    let gate = ctx.drain.gate();
    tokio::spawn(async move {
        if let Err(e) = palisade_smtp_server::serve_with(listener, rx, gate).await {
            error!("intake {smtp}: {e}");
        }
    });
    // SIGHUP: new intake sessions get the new limits and upstream list,
    // every listener the renewed certificate. Quotas live in the user
    // directory and apply at once without a reload.
    {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            palisade_stage::reload::on_hangup(&ctx, hangup, |config| {
                intake.reload(config);
                services.send_replace(service(config, &intake));
                Ok(())
            })
            .await
        });
    }

    if let (Some(addr), Some(listener)) = (ctx.node.pop3s, pop3s_listener) {
        info!("{} listening on {addr} (POP3S)", ctx.node_name);
        let (tls, directory, store) = (tls.clone(), directory.clone(), store.clone());
        let mut options = Pop3Options::new(ctx.config.gateway.hostname.clone(), true);
        options.store_node = Some(ctx.node_name.clone());
        tokio::spawn(async move {
            if let Err(e) = serve_pop3_with_options(listener, tls, directory, store, options).await
            {
                error!("pop3s {addr}: {e}");
            }
        });
    }
    if let (Some(addr), Some(listener)) = (ctx.node.imaps, imaps_listener) {
        info!("{} listening on {addr} (IMAPS)", ctx.node_name);
        let (tls, directory, store) = (tls.clone(), directory.clone(), store.clone());
        let mut options = ImapOptions::new(ctx.config.gateway.hostname.clone(), true);
        options.store_node = Some(ctx.node_name.clone());
        tokio::spawn(async move {
            if let Err(e) = serve_imap(listener, tls, options, directory, store).await {
                error!("imaps {addr}: {e}");
            }
        });
    }
    shutdown_signal().await;
    info!("{} stopping", ctx.node_name);
    Ok(())
}
