//! Privilege separation: a node started as root binds its ports (25, 465,
//! 587, 993, 995 are privileged), then becomes an unprivileged user before
//! it reads any mail (qmail and Postfix: one job, one Unix user).
//!
//! # Security
//! Refuses to run as root unless a user is configured (`gateway.user`,
//! or the node's own `user`) or `gateway.allow_root` says this is a
//! development setup. The switch is setgroups, setgid, setuid in that
//! order (after setuid the process could no longer change its groups),
//! and is checked: a process that could become root again is an error.
//! Under systemd (docs/deploy.md) the unit starts the node as its user
//! with CAP_NET_BIND_SERVICE and there is nothing to drop.

use std::path::Path;

use anyhow::{bail, Context, Result};
use nix::unistd::{Gid, Group, Uid, User};
use palisade_config::Config;
use tracing::{info, warn};

/// Whom a node started as root becomes.
#[derive(Clone, Debug)]
pub struct RunAs {
    pub user: String,
    pub uid: Uid,
    pub gid: Gid,
}

/// Decides at start-up, before anything is bound or opened: the user to
/// switch to, or why this node may not start (exit status 2).
pub fn plan(config: &Config, node: &str) -> Result<Option<RunAs>, String> {
    let root = Uid::effective().is_root();
    let Some((user, group)) = config.run_as(node) else {
        if root && !config.gateway.allow_root {
            return Err(format!(
                "{node}: refusing to run as root without a user to switch to: set \
                 [gateway] user = \"palisade\" (or the node's `user`), or \
                 allow_root = true for a development setup"
            ));
        }
        return Ok(None);
    };
    let entry = User::from_name(&user)
        .map_err(|e| format!("{node}: looking up user {user}: {e}"))?
        .ok_or_else(|| format!("{node}: no such user: {user} (gateway.user)"))?;
    let gid = match &group {
        Some(g) => {
            Group::from_name(g)
                .map_err(|e| format!("{node}: looking up group {g}: {e}"))?
                .ok_or_else(|| format!("{node}: no such group: {g} (gateway.group)"))?
                .gid
        }
        None => entry.gid,
    };
    if entry.uid.is_root() {
        return Err(format!(
            "{node}: gateway.user = \"{user}\" is root; name an unprivileged user"
        ));
    }
    Ok(Some(RunAs {
        user,
        uid: entry.uid,
        gid,
    }))
}

/// Becomes `run_as` if the process is root; `node_dir` (the node's own
/// data directory) is created and handed to that user first, so the queue
/// and state it opens next are its own.
pub fn drop_to(run_as: Option<&RunAs>, node_dir: &Path) -> Result<()> {
    let Some(to) = run_as else {
        if Uid::effective().is_root() {
            warn!("running as root (gateway.allow_root = true): development only");
        }
        return Ok(());
    };
    if !Uid::effective().is_root() {
        if Uid::effective() != to.uid {
            warn!(
                "not started as root: running as uid {}, not as {} (uid {})",
                Uid::effective(),
                to.user,
                to.uid
            );
        }
        return Ok(());
    }
    std::fs::create_dir_all(node_dir)
        .with_context(|| format!("creating {}", node_dir.display()))?;
    give_root_owned(node_dir, to)?;
    nix::unistd::setgroups(&[to.gid]).context("setgroups")?;
    nix::unistd::setgid(to.gid).context("setgid")?;
    nix::unistd::setuid(to.uid).context("setuid")?;
    // INVARIANT: no way back. setuid(0) must now fail.
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok() || Uid::effective().is_root() {
        bail!("still able to become root after switching to {}", to.user);
    }
    info!(
        "running as user {} (uid {}, gid {})",
        to.user, to.uid, to.gid
    );
    Ok(())
}

/// Hands what root created in the node's directory (an earlier run as
/// root, an admin's copy) to the node's user; files of other users are
/// left alone.
fn give_root_owned(path: &Path, to: &RunAs) -> Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(()); // SECURITY: never follow a link out of the node's dir
    }
    if std::os::unix::fs::MetadataExt::uid(&meta) == 0 {
        nix::unistd::chown(path, Some(to.uid), Some(to.gid))
            .with_context(|| format!("chown {} to {}", path.display(), to.user))?;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            give_root_owned(&entry?.path(), to)?;
        }
    }
    Ok(())
}
