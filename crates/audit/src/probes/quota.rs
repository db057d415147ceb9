//! Mail bombing (DM35 mailbox quota): the test account's mailbox has a
//! storage limit, read with IMAP GETQUOTAROOT (RFC 9208). Filling a real
//! mailbox to prove it would be a mail bomb of our own, so the probe reads
//! the limit the store enforces instead (the store answers 452 4.2.2 past
//! it, tested in tests/integration). A store that does not advertise
//! the QUOTA capability has no quotas to enforce: absent, not untested.

use super::Probe;
use crate::audit::Ctx;
use crate::imap::Imap;
use crate::model::{Fault, Finding};

pub const QUOTA: Probe = Probe {
    id: "mailbox-quota",
    fault: Fault::MailBombing,
    mechanism: Some(35),
    title: "the test account's mailbox has a storage quota",
};

pub const PROBES: &[Probe] = &[QUOTA];

pub async fn run(ctx: &Ctx) -> Vec<Finding> {
    let p = QUOTA;
    let mut imap = match Imap::login(ctx, Vec::new()).await {
        Ok(i) => i,
        Err((why, t)) => return vec![p.not_tested(why, t)],
    };
    // Asked after login: a server may advertise more once authenticated.
    let caps = imap.command("CAPABILITY", None).await;
    let has_quota = caps.as_ref().ok().map(|c| {
        c.untagged
            .iter()
            .filter_map(|l| l.strip_prefix("* CAPABILITY "))
            .flat_map(str::split_whitespace)
            .any(|w| w.eq_ignore_ascii_case("QUOTA"))
    });
    if has_quota == Some(false) {
        let t = imap.logout().await;
        return vec![p.failed(
            None,
            "the store has no quotas: no QUOTA capability (RFC 9208) after login",
            t,
        )];
    }
    let r = imap.command("GETQUOTAROOT INBOX", None).await;
    let t = imap.logout().await;
    let r = match (caps, r) {
        (Ok(_), Ok(r)) => r,
        (Err(e), _) | (_, Err(e)) => return vec![p.not_tested(e.to_string(), t)],
    };
    if !r.ok {
        return vec![p.not_tested(
            format!("the store reports no quotas (GETQUOTAROOT: {})", r.status),
            t,
        )];
    }
    // `* QUOTA "" (STORAGE used limit)`, in KiB.
    let storage = r.untagged.iter().find_map(|l| {
        let rest = l.strip_prefix("* QUOTA ")?;
        let inner = &rest[rest.find('(')? + 1..rest.rfind(')')?];
        let words: Vec<&str> = inner.split_whitespace().collect();
        let i = words
            .iter()
            .position(|w| w.eq_ignore_ascii_case("STORAGE"))?;
        let used: u64 = words.get(i + 1)?.parse().ok()?;
        let limit: u64 = words.get(i + 2)?.parse().ok()?;
        Some((used, limit))
    });
    match storage {
        Some((used, limit)) if limit > 0 => {
            vec![p.working(format!("STORAGE quota {limit} KiB ({used} KiB used)"), t)]
        }
        _ => vec![p.failed(None, "no storage limit on the test account's mailbox", t)],
    }
}
