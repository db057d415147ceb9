//! SMTP intake of the store: recipient and quota checks at RCPT, durable
//! delivery into the mailboxes before the 250.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use palisade_mailbox::{Delivery, Directory, MailStore};
use palisade_queue::{JournalEntry, JournalEvent, Queue};
use palisade_smtp_proto::{MailParams, RcptParams, Reply};
use palisade_smtp_server::{Envelope, Hooks, SessionInfo};
use palisade_stage::intake::mailbox_full;
use palisade_stage::received::{received_header, with_header, Hop};
use palisade_stage::NodeContext;
use tracing::{info, warn};

pub struct StoreIntake {
    ctx: Arc<NodeContext>,
    directory: Directory,
    store: MailStore,
    /// The upstream stages allowed to deliver (refreshed on reload).
    allowed_clients: RwLock<Vec<std::net::IpAddr>>,
    /// Mailboxes whose last delivery was refused for quota: reported as
    /// over quota to the MX and MSA replicas until a delivery succeeds.
    refusing: Arc<Mutex<HashSet<String>>>,
    /// Delivery IDs for Received headers and logs: start time in
    /// microseconds plus a counter, so they do not repeat across restarts.
    next_id: AtomicU64,
    /// The conservation journal (a queue environment used only for its
    /// journal: the store keeps no messages there).
    journal: Queue,
}

impl StoreIntake {
    pub fn new(
        ctx: Arc<NodeContext>,
        directory: Directory,
        store: MailStore,
        journal: Queue,
    ) -> Self {
        let start = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros() as u64;
        StoreIntake {
            allowed_clients: RwLock::new(ctx.config.allowed_clients(ctx.stage)),
            ctx,
            directory,
            store,
            refusing: Arc::default(),
            next_id: AtomicU64::new(start),
            journal,
        }
    }

    /// A reload: the upstream list of the new configuration.
    pub fn reload(&self, config: &palisade_config::Config) {
        *self.allowed_clients.write().unwrap() = config.allowed_clients(self.ctx.stage);
    }

    /// Whether the store is refusing mail for `address` for quota.
    pub fn refusing(&self) -> Arc<Mutex<HashSet<String>>> {
        self.refusing.clone()
    }

    fn set_refusing(&self, address: &str, refusing: bool) {
        let mut set = self.refusing.lock().unwrap();
        if refusing {
            set.insert(address.to_string());
        } else {
            set.remove(address);
        }
    }

    /// The mailbox owner for a recipient, if it lives on this store node.
    fn owner(&self, rcpt: &str) -> Result<Option<palisade_mailbox::User>, Reply> {
        match self.directory.lookup(rcpt) {
            Ok(Some(u)) if u.store == self.ctx.node_name => Ok(Some(u)),
            Ok(_) => Ok(None),
            Err(e) => {
                warn!("directory lookup for {rcpt} failed: {e}");
                Err(Reply::enhanced(
                    451,
                    (4, 3, 0),
                    "Directory temporarily unavailable",
                ))
            }
        }
    }
}

/// Share of the quota at which the user is told, once, that the mailbox
/// is filling up (DM35: the mail bomb is noticed before mail is refused).
const QUOTA_WARNING: f64 = 0.9;

impl StoreIntake {
    /// Files a notice into INBOX when this delivery took the mailbox across
    /// the warning level. Delivered outside the quota, so it always fits.
    async fn warn_when_nearly_full(&self, user: &palisade_mailbox::User, size: u64) {
        if user.quota_bytes == 0 {
            return;
        }
        let after = self.store.usage(&user.address).unwrap_or(0);
        let level = (user.quota_bytes as f64 * QUOTA_WARNING) as u64;
        if !(after >= level && after.saturating_sub(size) < level) {
            return;
        }
        let domain = user
            .address
            .rsplit_once('@')
            .map(|(_, d)| d)
            .unwrap_or("localhost");
        let notice = format!(
            "From: Mail system <postmaster@{domain}>\r\nTo: <{addr}>\r\n\
             Subject: Your mailbox is {pct}% full\r\nDate: {date}\r\n\
             Message-ID: <quota-{stamp}@{host}>\r\nAuto-Submitted: auto-generated\r\n\r\n\
             Your mailbox uses {after} of its {quota} bytes.\r\n\
             When it is full, new mail waits on the mail servers and is not\r\n\
             delivered until you delete or move messages.\r\n",
            addr = user.address,
            pct = after * 100 / user.quota_bytes,
            date = palisade_stage::received::rfc5322_date(SystemTime::now()),
            stamp = self.next_id.fetch_add(1, Ordering::Relaxed),
            host = self.ctx.config.gateway.hostname,
            quota = user.quota_bytes,
        );
        match self
            .store
            .deliver_async(&user.address, "INBOX", None, notice.into_bytes(), 0)
            .await
        {
            Ok(_) => info!(
                "to=<{}>: quota warning filed ({after} of {} bytes)",
                user.address, user.quota_bytes
            ),
            Err(e) => warn!("to=<{}>: quota warning not filed: {e}", user.address),
        }
    }
}

impl Hooks for StoreIntake {
    async fn on_connect(&self, s: &SessionInfo) -> Result<(), Reply> {
        let allowed = {
            let a = self.allowed_clients.read().unwrap();
            a.is_empty() || a.contains(&s.peer.ip())
        };
        if !allowed {
            info!(
                "session {} from {}: refused, not an upstream node",
                s.id, s.peer
            );
            return Err(Reply::enhanced(
                554,
                (5, 7, 1),
                format!(
                    "{} accepts mail only from its upstream stage",
                    self.ctx.node_name
                ),
            ));
        }
        Ok(())
    }

    async fn on_rcpt(
        &self,
        _s: &SessionInfo,
        env: &Envelope,
        to: &str,
        _p: &RcptParams,
    ) -> Result<(), Reply> {
        let Some(user) = self.owner(to)? else {
            return Err(Reply::enhanced(
                550,
                (5, 1, 1),
                format!("<{to}>: no such mailbox on {}", self.ctx.node_name),
            ));
        };
        // DM35: refuse now (452, stays queued upstream) when the declared
        // size would not fit; the exact check happens at delivery.
        if user.quota_bytes > 0 {
            let used = self.store.usage(&user.address).unwrap_or(0);
            let size = env_size(&env.mail_params);
            if used + size > user.quota_bytes {
                self.set_refusing(&user.address, true);
                return Err(mailbox_full(to));
            }
        }
        Ok(())
    }

    async fn on_message(&self, s: &SessionInfo, env: Envelope, message: Vec<u8>) -> Reply {
        let id = format!(
            "{:012X}",
            self.next_id.fetch_add(1, Ordering::Relaxed) & 0xFFFF_FFFF_FFFF
        );
        let origin = env.mail_params.origin.clone();
        let mut delivered = 0;
        // Conservation journal: accepted, then one entry per mailbox.
        let mut journal = vec![JournalEntry {
            message_id: palisade_queue::message_id_of(&message),
            origin: origin.clone(),
            mail_from: Some(env.mail_from.clone()),
            rcpts: env.rcpts.iter().map(|(a, _)| a.clone()).collect(),
            ..JournalEntry::new(JournalEvent::Accepted, id.clone())
        }];
        let filed = |event, rcpt: &str, detail: &str| JournalEntry {
            origin: origin.clone(),
            rcpts: vec![rcpt.to_string()],
            detail: detail.to_string(),
            ..JournalEntry::new(event, id.clone())
        };
        for (rcpt, _) in &env.rcpts {
            let user = match self.owner(rcpt) {
                Ok(Some(u)) => u,
                Ok(None) => continue, // refused at RCPT; cannot happen here
                Err(reply) => return reply,
            };
            let header = received_header(&Hop {
                helo: s.helo.as_deref().unwrap_or(""),
                peer: &s.peer.to_string(),
                hostname: &self.ctx.config.gateway.hostname,
                node: &self.ctx.node_name,
                tls: s.tls.is_some(),
                authenticated: false,
                queue_id: &id,
                single_recipient: Some(rcpt),
                when: SystemTime::now(),
            });
            let copy = with_header(&header, &message);
            // The origin names the message at its entry point; with the
            // recipient it makes re-sends after a crash upstream harmless.
            let dedup = origin.as_ref().map(|o| format!("{o}\0{}", user.address));
            let folder = folder_for(&message);
            let size = copy.len() as u64;
            let result = self
                .store
                .deliver_async(
                    &user.address,
                    folder,
                    dedup.as_deref(),
                    copy,
                    user.quota_bytes,
                )
                .await;
            match result {
                Ok(Delivery::Stored { uid }) => {
                    delivered += 1;
                    journal.push(filed(JournalEvent::Delivered, rcpt, folder));
                    info!("{id}: to=<{rcpt}>, folder={folder}, uid={uid}, status=stored");
                    self.ctx.metrics.inc(
                        "palisade_store_deliveries_total",
                        "Messages filed into mailboxes.",
                        &[("result", "stored")],
                    );
                    self.set_refusing(&user.address, false);
                    self.warn_when_nearly_full(&user, size).await;
                }
                Ok(Delivery::Duplicate) => {
                    journal.push(filed(JournalEvent::Duplicate, rcpt, folder));
                    info!(
                        "{id}: to=<{rcpt}>, status=duplicate (origin {origin:?} already delivered)"
                    );
                    self.ctx.metrics.inc(
                        "palisade_store_deliveries_total",
                        "Messages filed into mailboxes.",
                        &[("result", "duplicate")],
                    );
                }
                Ok(Delivery::OverQuota) => {
                    // Recipients filed before this one are recognised by
                    // their dedup key when the upstream stage retries.
                    info!("{id}: to=<{rcpt}>, status=over-quota");
                    self.set_refusing(&user.address, true);
                    return mailbox_full(rcpt);
                }
                Err(e) if e.is_storage_full() => {
                    warn!("{id}: to=<{rcpt}>: mailbox storage full: {e}");
                    return Reply::enhanced(452, (4, 3, 1), "Insufficient system storage");
                }
                Err(e) => {
                    warn!("{id}: to=<{rcpt}>: mailbox write failed: {e}");
                    return Reply::enhanced(451, (4, 3, 0), "Local error in processing");
                }
            }
        }
        // After the mailbox commit, before the 250: a crash in between
        // leaves the message filed but unjournaled, and the upstream
        // re-send is then journaled as a duplicate under a new id.
        if let Err(e) = self.journal.journal(journal).await {
            warn!("{id}: journal write failed: {e}");
        }
        Reply::enhanced(
            250,
            (2, 0, 0),
            format!("Ok: delivered as {id} ({delivered} mailbox(es))"),
        )
    }
}

fn env_size(p: &MailParams) -> u64 {
    p.size.unwrap_or(0)
}

/// Junk for messages the antispam stage flagged (`X-Spam-Flag: YES` in the
/// header section), INBOX otherwise.
fn folder_for(message: &[u8]) -> &'static str {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(message.len());
    let headers = &message[..end];
    let flagged = headers.split(|&b| b == b'\n').any(|line| {
        let line = String::from_utf8_lossy(line);
        let mut parts = line.splitn(2, ':');
        let name = parts.next().unwrap_or("");
        let value = parts.next().unwrap_or("");
        name.eq_ignore_ascii_case("X-Spam-Flag") && value.trim().eq_ignore_ascii_case("yes")
    });
    if flagged {
        "Junk"
    } else {
        "INBOX"
    }
}

#[cfg(test)]
mod tests {
    use super::folder_for;

    #[test]
    fn spam_flag_files_to_junk_only_in_the_header() {
        assert_eq!(
            folder_for(b"Subject: x\r\nX-Spam-Flag: YES\r\n\r\nbody"),
            "Junk"
        );
        assert_eq!(
            folder_for(b"Subject: x\r\nx-spam-flag:yes\r\n\r\nbody"),
            "Junk"
        );
        assert_eq!(
            folder_for(b"Subject: x\r\n\r\nX-Spam-Flag: YES\r\n"),
            "INBOX"
        );
        assert_eq!(
            folder_for(b"Subject: x\r\nX-Spam-Flag: NO\r\n\r\n"),
            "INBOX"
        );
    }
}
