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
    let tls = palisade_stage::tls::server_config(&ctx.config)?;
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
        ctx.spawn_http(router);
    }
    let listener = smtp_listener;
    let cfg = ctx.server_config(ListenerProfile::Internal, None, false);
    info!("{} listening on {smtp} (intake)", ctx.node_name);
    tokio::spawn(async move {
        if let Err(e) = palisade_smtp_server::serve(listener, cfg, intake).await {
            error!("intake {smtp}: {e}");
        }
    });

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
