//! SIGHUP: reading the configuration file again.
//!
//! The new file is validated as a whole (as at start-up); it is refused,
//! with every error logged, if it is invalid, if this node is gone or
//! changed stage. What a reload changes is decided in one place,
//! `runtime::serve_until_stopped`: new sessions get new listener limits
//! (DM8 size, DM9 recipients, sessions, timeouts, greet pause) and a new
//! policy (DM18 lists, DM23 rules, DM10/11/34 limits and every other
//! mechanism's settings), built before anything is swapped, so a policy
//! that cannot be built (a bad regular expression) leaves the old one
//! running. Addresses, routes and data directories need a restart.
//!
//! Once the new file is valid, [`apply`] refreshes the node's cached stage
//! settings and every part registered with `NodeContext::on_reload` (the
//! TLS certificate of the listeners, a content filter's settings, DKIM
//! keys...), each on its own: a part that fails to reload (a renewed
//! certificate that does not match its key) keeps running as it was and
//! says why in the log. The policy-state backend is not rebuilt (see
//! `NodeContext::state_backend`): limits hold across a reload.

use anyhow::{bail, Result};
use palisade_config::Config;
use tracing::{error, info, warn};

use crate::runtime::NodeContext;

/// The configuration file as it is now, if this node can run with it.
pub fn load(ctx: &NodeContext) -> Result<Config> {
    let config = match palisade_config::load(&ctx.config_path) {
        Ok(c) => c,
        Err(errors) => bail!("{} error(s):\n{errors}", errors.0.len()),
    };
    let Some(node) = config.node.get(&ctx.node_name) else {
        bail!("the new file has no node `{}`", ctx.node_name);
    };
    if node.stage != ctx.stage {
        bail!("node `{}` is now a {} node", ctx.node_name, node.stage);
    }
    if node.listeners() != ctx.node.listeners() {
        warn!(
            "{}: new listener addresses take effect at the next restart",
            ctx.node_name
        );
    }
    if config.gateway.data_dir != ctx.config.gateway.data_dir {
        warn!(
            "{}: a new data_dir takes effect at the next restart",
            ctx.node_name
        );
    }
    Ok(config)
}

/// A part of a node that a reload refreshes from the new configuration.
pub type Reloader = Box<dyn Fn(&Config) -> Result<()> + Send + Sync>;

/// Applies a valid new configuration to the node's cached settings and
/// registered parts.
pub fn apply(ctx: &NodeContext, config: &Config) {
    ctx.set_settings(config);
    for (what, refresh) in ctx.reloaders.lock().unwrap().iter() {
        match refresh(config) {
            Ok(()) => info!("{}: reloaded the {what}", ctx.node_name),
            Err(e) => error!(
                "{}: could not reload the {what}, keeping the running one: {e:#}",
                ctx.node_name
            ),
        }
    }
}

/// Loads and applies the configuration at each SIGHUP, for nodes whose
/// sessions take their settings from the node (the store): `also` builds
/// what else the node swaps from the new file.
pub async fn on_hangup(
    ctx: &NodeContext,
    mut hangup: tokio::signal::unix::Signal,
    also: impl Fn(&Config) -> Result<()>,
) {
    while hangup.recv().await.is_some() {
        match load(ctx).and_then(|config| also(&config).map(|()| config)) {
            Ok(config) => {
                apply(ctx, &config);
                info!("{}: reloaded {}", ctx.node_name, ctx.config_path.display());
            }
            Err(e) => error!(
                "{}: reload failed, keeping the running configuration: {e:#}",
                ctx.node_name
            ),
        }
    }
}
