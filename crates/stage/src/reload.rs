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

use anyhow::{bail, Result};
use palisade_config::Config;
use tracing::warn;

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
