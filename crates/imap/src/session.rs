//! One IMAP connection: the RFC 3501 state machine (not authenticated, authenticated,
//! selected, logout) and the command handlers.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use imap_codec::decode::Decoder;
use imap_codec::imap_types::auth::AuthMechanism;
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::flag::{Flag, StoreResponse, StoreType};
use imap_codec::imap_types::mailbox::{ListMailbox, Mailbox};
use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::SequenceSet;
use imap_codec::imap_types::status::StatusDataItemName;
use imap_codec::AuthenticateDataCodec;
use palisade_mailbox::{Delivery, FlagsOp, FolderInfo, MailboxError, MessageMeta, User, INBOX};
use palisade_net::{start_tls_buffered, MaybeTls};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::reader::{read_command, read_line, Incoming};
use crate::selected::{Entry, Selected};
use crate::{fetch, mime, search, wire, Conn, Shared};

/// How often a session re-reads its folder when nothing in this process signalled a change
/// (catches writes by other processes, e.g. the admin CLI).
const POLL: Duration = Duration::from_secs(1);
const MAX_AUTH_FAILURES: u32 = 3;
/// Bodies read per blocking store call during FETCH/SEARCH.
const BODY_CHUNK: usize = 64;
/// Output is flushed once this much is buffered (long FETCH responses stream out).
const FLUSH_AT: usize = 1 << 20;
const SYSTEM_FLAGS: &str = "\\Answered \\Flagged \\Deleted \\Seen \\Draft";

pub(crate) async fn handle_connection(tcp: TcpStream, shared: Arc<Shared>) -> io::Result<()> {
    let conn = MaybeTls::accept(&shared.acceptor, tcp, shared.options.implicit_tls).await?;
    let changes = shared.store.subscribe_changes();
    let mut s = Session {
        shared: &shared,
        stream: BufReader::new(conn),
        buf: Vec::new(),
        out: Vec::new(),
        user: None,
        sel: None,
        failures: 0,
        changes,
        last_sync: Instant::now(),
    };
    let res = s.run().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), s.stream.shutdown()).await;
    res
}

enum Flow {
    Continue,
    Close,
}

struct Session<'a> {
    shared: &'a Shared,
    stream: BufReader<Conn>,
    buf: Vec<u8>,
    out: Vec<u8>,
    user: Option<User>,
    sel: Option<Selected>,
    failures: u32,
    changes: watch::Receiver<u64>,
    last_sync: Instant,
}

async fn blocking<T, F>(f: F) -> Result<T, MailboxError>
where
    F: FnOnce() -> Result<T, MailboxError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(MailboxError::Io(io::Error::other(e))))
}

fn mailbox_name(m: &Mailbox<'_>) -> String {
    match m {
        Mailbox::Inbox => INBOX.to_string(),
        Mailbox::Other(o) => {
            let name = String::from_utf8_lossy(o.inner().as_ref()).into_owned();
            if name.eq_ignore_ascii_case(INBOX) {
                INBOX.to_string()
            } else {
                name.trim_end_matches('/').to_string()
            }
        }
    }
}

fn list_pattern(m: &ListMailbox<'_>) -> String {
    match m {
        ListMailbox::Token(t) => String::from_utf8_lossy(t.as_ref()).into_owned(),
        ListMailbox::String(s) => String::from_utf8_lossy(s.as_ref()).into_owned(),
    }
}

/// LIST wildcard match: `*` matches anything, `%` anything but the hierarchy delimiter.
fn wildcard(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|i| wildcard(rest, &name[i..])),
        Some((b'%', rest)) => (0..=name.len())
            .take_while(|&i| i == 0 || name[i - 1] != b'/')
            .any(|i| wildcard(rest, &name[i..])),
        Some((c, rest)) => name.first() == Some(c) && wildcard(rest, &name[1..]),
    }
}

fn list_matches(pattern: &str, name: &str) -> bool {
    if name == INBOX {
        // INBOX is case-insensitive.
        return wildcard(pattern.to_ascii_uppercase().as_bytes(), name.as_bytes())
            || wildcard(pattern.as_bytes(), name.as_bytes());
    }
    wildcard(pattern.as_bytes(), name.as_bytes())
}

fn special_use(name: &str) -> Option<&'static str> {
    match name {
        "Junk" => Some("\\Junk"),
        "Sent" => Some("\\Sent"),
        "Drafts" => Some("\\Drafts"),
        "Trash" => Some("\\Trash"),
        _ => None,
    }
}

fn flag_strings(flags: &[Flag<'_>]) -> Vec<String> {
    flags
        .iter()
        .map(|f| f.to_string())
        .filter(|f| !f.eq_ignore_ascii_case("\\Recent"))
        .collect()
}

fn error_text(e: &MailboxError) -> &'static str {
    if e.is_storage_full() {
        "NO [LIMIT] storage full, try again later"
    } else {
        match e {
            MailboxError::InvalidInput(_) => "NO [CANNOT] invalid mailbox name or argument",
            MailboxError::AlreadyExists(_) => "NO [ALREADYEXISTS] mailbox already exists",
            MailboxError::NotFound(_) => "NO [NONEXISTENT] no such mailbox",
            _ => "NO [SERVERBUG] internal error",
        }
    }
}

impl Session<'_> {
    fn is_tls(&self) -> bool {
        self.stream.get_ref().is_tls()
    }

    fn capabilities(&self) -> String {
        let mut caps = String::from("IMAP4rev1 LITERAL+ IDLE MOVE UNSELECT QUOTA SPECIAL-USE");
        if !self.is_tls() {
            caps.push_str(" STARTTLS LOGINDISABLED");
        } else if self.user.is_none() {
            caps.push_str(" AUTH=PLAIN SASL-IR");
        }
        caps
    }

    fn line(&mut self, s: &str) {
        self.out.extend_from_slice(s.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    fn tagged(&mut self, tag: &str, status: &str) {
        self.line(&format!("{tag} {status}"));
    }

    async fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let idle = self.shared.options.idle_timeout;
        let w = async {
            self.stream.write_all(&self.out).await?;
            self.stream.flush().await
        };
        tokio::time::timeout(idle, w)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write timeout"))??;
        self.out.clear();
        Ok(())
    }

    async fn run(&mut self) -> io::Result<()> {
        let caps = self.capabilities();
        let host = self.shared.options.hostname.clone();
        self.line(&format!("* OK [CAPABILITY {caps}] {host} IMAP4rev1 ready"));
        self.flush().await?;
        loop {
            let idle = self.shared.options.idle_timeout;
            let incoming = match read_command(&mut self.stream, &mut self.buf, idle).await {
                Ok(i) => i,
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    self.line("* BYE autologout: idle for too long");
                    self.flush().await?;
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            let flow = match incoming {
                Incoming::Eof => return Ok(()),
                Incoming::TooLong => {
                    self.line("* BYE command too long");
                    self.flush().await?;
                    return Ok(());
                }
                Incoming::Bad { tag, reason } => {
                    self.tagged(&tag, &format!("BAD {reason}"));
                    Flow::Continue
                }
                Incoming::Command(cmd) => self.dispatch(*cmd).await?,
            };
            self.flush().await?;
            if let Flow::Close = flow {
                return Ok(());
            }
        }
    }

    async fn dispatch(&mut self, cmd: Command<'static>) -> io::Result<Flow> {
        let tag = cmd.tag.inner().to_string();
        let t = tag.as_str();
        let authed = self.user.is_some();
        let selected = self.sel.is_some();
        match cmd.body {
            CommandBody::Capability => {
                let caps = self.capabilities();
                self.line(&format!("* CAPABILITY {caps}"));
                self.tagged(t, "OK CAPABILITY completed");
            }
            CommandBody::Noop | CommandBody::Check => {
                self.sync(true, true).await;
                self.tagged(t, "OK NOOP completed");
            }
            CommandBody::Logout => {
                self.line("* BYE logging out");
                self.tagged(t, "OK LOGOUT completed");
                return Ok(Flow::Close);
            }
            CommandBody::StartTLS => return self.starttls(t).await,
            CommandBody::Login { username, password } if !authed => {
                if !self.is_tls() {
                    self.tagged(t, "NO [PRIVACYREQUIRED] LOGIN is disabled until STARTTLS");
                } else {
                    let user = String::from_utf8_lossy(username.as_ref()).into_owned();
                    let pass = String::from_utf8_lossy(password.declassify().as_ref()).into_owned();
                    return self.login(t, user, pass).await;
                }
            }
            CommandBody::Authenticate {
                mechanism,
                initial_response,
            } if !authed => {
                if !self.is_tls() {
                    self.tagged(
                        t,
                        "NO [PRIVACYREQUIRED] AUTHENTICATE is disabled until STARTTLS",
                    );
                } else if mechanism != AuthMechanism::Plain {
                    self.tagged(t, "NO [CANNOT] only AUTHENTICATE PLAIN is supported");
                } else {
                    let data = initial_response.map(|r| r.declassify().to_vec());
                    return self.authenticate_plain(t, data).await;
                }
            }
            CommandBody::Login { .. } | CommandBody::Authenticate { .. } => {
                self.tagged(t, "BAD already authenticated");
            }
            _ if !authed => self.tagged(t, "BAD log in first"),
            CommandBody::Select { mailbox } => self.select(t, &mailbox_name(&mailbox), false).await,
            CommandBody::Examine { mailbox } => self.select(t, &mailbox_name(&mailbox), true).await,
            CommandBody::Create { mailbox } => self.create(t, mailbox_name(&mailbox)).await,
            CommandBody::Delete { mailbox } => self.delete(t, mailbox_name(&mailbox)).await,
            CommandBody::Rename { from, to } => {
                self.rename(t, mailbox_name(&from), mailbox_name(&to)).await
            }
            CommandBody::Subscribe { .. } | CommandBody::Unsubscribe { .. } => {
                // Every folder is subscribed; the subscription list is the folder list.
                self.tagged(t, "OK done");
            }
            CommandBody::List {
                reference,
                mailbox_wildcard,
            } => self.list(t, "LIST", &reference, &mailbox_wildcard).await,
            CommandBody::Lsub {
                reference,
                mailbox_wildcard,
            } => self.list(t, "LSUB", &reference, &mailbox_wildcard).await,
            CommandBody::Status {
                mailbox,
                item_names,
            } => self.status(t, mailbox_name(&mailbox), &item_names).await,
            CommandBody::Append {
                mailbox,
                flags,
                date,
                message,
            } => {
                let date = date.map(|d| {
                    let secs = d.as_ref().timestamp().max(0) as u64;
                    UNIX_EPOCH + Duration::from_secs(secs)
                });
                self.append(
                    t,
                    mailbox_name(&mailbox),
                    flag_strings(&flags),
                    date,
                    message.data().to_vec(),
                )
                .await
            }
            CommandBody::Idle => return self.idle(t).await,
            CommandBody::GetQuotaRoot { mailbox } => {
                self.quota_root(t, mailbox_name(&mailbox)).await
            }
            CommandBody::GetQuota { root } => {
                if root.as_ref().is_empty() {
                    self.quota(t).await
                } else {
                    self.tagged(t, "NO [NONEXISTENT] no such quota root");
                }
            }
            CommandBody::SetQuota { .. } => {
                self.tagged(t, "NO [NOPERM] quotas are set by the administrator")
            }
            _ if !selected => self.tagged(t, "BAD no mailbox selected"),
            CommandBody::Close | CommandBody::Unselect => {
                let close = matches!(cmd.body, CommandBody::Close);
                if close {
                    self.expunge_deleted(false).await;
                }
                self.sel = None;
                self.tagged(
                    t,
                    if close {
                        "OK CLOSE completed"
                    } else {
                        "OK UNSELECT completed"
                    },
                );
            }
            CommandBody::Expunge => {
                if self.sel.as_ref().is_some_and(|s| s.read_only) {
                    self.tagged(t, "NO [READ-ONLY] mailbox is read-only");
                } else {
                    self.sync(true, true).await;
                    self.expunge_deleted(true).await;
                    self.tagged(t, "OK EXPUNGE completed");
                }
            }
            CommandBody::Search {
                charset,
                criteria,
                uid,
            } => {
                let cs = charset.as_ref().map(|c| c.as_ref().to_ascii_uppercase());
                if cs
                    .as_deref()
                    .is_some_and(|c| c != "US-ASCII" && c != "UTF-8")
                {
                    self.tagged(t, "NO [BADCHARSET (US-ASCII UTF-8)] unsupported charset");
                } else {
                    self.search(t, &criteria, uid).await;
                }
            }
            CommandBody::Fetch {
                sequence_set,
                macro_or_item_names,
                uid,
            } => {
                let plan = fetch::plan(macro_or_item_names, uid);
                self.fetch(t, &sequence_set, plan, uid).await?;
            }
            CommandBody::Store {
                sequence_set,
                kind,
                response,
                flags,
                uid,
            } => {
                self.store(t, &sequence_set, kind, response, flag_strings(&flags), uid)
                    .await
            }
            CommandBody::Copy {
                sequence_set,
                mailbox,
                uid,
            } => {
                self.copy(t, &sequence_set, mailbox_name(&mailbox), uid, false)
                    .await
            }
            CommandBody::Move {
                sequence_set,
                mailbox,
                uid,
            } => {
                self.copy(t, &sequence_set, mailbox_name(&mailbox), uid, true)
                    .await
            }
            _ => self.tagged(t, "BAD command not supported"),
        }
        Ok(Flow::Continue)
    }

    async fn starttls(&mut self, t: &str) -> io::Result<Flow> {
        if self.is_tls() || self.shared.options.implicit_tls {
            self.tagged(t, "BAD TLS is already active");
            return Ok(Flow::Continue);
        }
        self.tagged(t, "OK begin TLS negotiation now");
        self.flush().await?;
        // Drops anything the client pipelined after STARTTLS in plaintext.
        start_tls_buffered(&mut self.stream, &self.shared.acceptor).await?;
        Ok(Flow::Continue)
    }

    async fn login(&mut self, t: &str, name: String, password: String) -> io::Result<Flow> {
        let dir = self.shared.directory.clone();
        let login = name.clone();
        let res = blocking(move || dir.verify_password(&login, &password)).await;
        let delay = self.shared.options.auth_failure_delay;
        match res {
            Ok(Some(user)) => {
                if let Some(node) = &self.shared.options.store_node {
                    if &user.store != node {
                        // Only reachable with the right password, so it reveals nothing.
                        tokio::time::sleep(delay).await;
                        self.tagged(t, "NO [UNAVAILABLE] this mailbox is on another server");
                        return Ok(Flow::Continue);
                    }
                }
                let store = self.shared.store.clone();
                let address = user.address.clone();
                if let Err(e) = blocking(move || store.ensure_user(&address)).await {
                    warn!(user = %user.address, error = %e, "imap: cannot create default folders");
                }
                info!(user = %user.address, "imap login");
                self.user = Some(user);
                let caps = self.capabilities();
                self.tagged(t, &format!("OK [CAPABILITY {caps}] logged in"));
            }
            Ok(None) => {
                self.failures += 1;
                info!(login = %name, "imap login failed");
                tokio::time::sleep(delay).await;
                self.tagged(t, "NO [AUTHENTICATIONFAILED] invalid credentials");
                if self.failures >= MAX_AUTH_FAILURES {
                    self.line("* BYE too many failed logins");
                    return Ok(Flow::Close);
                }
            }
            Err(e) => {
                warn!(login = %name, error = %e, "imap login error");
                self.tagged(t, "NO [UNAVAILABLE] temporary failure, try again later");
            }
        }
        Ok(Flow::Continue)
    }

    /// SASL PLAIN (RFC 4616): `authzid NUL authcid NUL password`, initial response optional.
    async fn authenticate_plain(&mut self, t: &str, initial: Option<Vec<u8>>) -> io::Result<Flow> {
        let data = match initial {
            Some(d) => d,
            None => {
                self.line("+ ");
                self.flush().await?;
                let mut line = Vec::new();
                let idle = self.shared.options.idle_timeout;
                if read_line(&mut self.stream, &mut line, idle).await? != Some(true) {
                    return Ok(Flow::Close);
                }
                if line.trim_ascii() == b"*" {
                    self.tagged(t, "BAD authentication cancelled");
                    return Ok(Flow::Continue);
                }
                match AuthenticateDataCodec::default().decode(&line) {
                    Ok((_, d)) => d.0.declassify().clone(),
                    Err(_) => {
                        self.tagged(t, "BAD invalid base64");
                        return Ok(Flow::Continue);
                    }
                }
            }
        };
        let mut parts = data.split(|&b| b == 0);
        let (Some(authz), Some(authc), Some(pass), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            self.tagged(t, "BAD malformed PLAIN response");
            return Ok(Flow::Continue);
        };
        if !authz.is_empty() && authz != authc {
            self.tagged(t, "NO [AUTHORIZATIONFAILED] cannot act as another user");
            return Ok(Flow::Continue);
        }
        let name = String::from_utf8_lossy(authc).into_owned();
        let pass = String::from_utf8_lossy(pass).into_owned();
        self.login(t, name, pass).await
    }

    fn user_address(&self) -> String {
        self.user
            .as_ref()
            .map(|u| u.address.clone())
            .unwrap_or_default()
    }

    /// Brings the selected view up to date and queues the untagged responses.
    async fn sync(&mut self, allow_expunge: bool, force: bool) {
        let Some(sel) = &self.sel else { return };
        let changed = self.changes.has_changed().unwrap_or(false);
        if !force && !changed && self.last_sync.elapsed() < POLL {
            return;
        }
        self.changes.borrow_and_update();
        self.last_sync = Instant::now();
        let (user, folder) = (self.user_address(), sel.folder.clone());
        let store = self.shared.store.clone();
        let (u, f) = (user.clone(), folder.clone());
        let res = blocking(move || Ok((store.list(&u, &f)?, store.folder_info(&u, &f)?))).await;
        let (list, info) = match res {
            Ok(x) => x,
            Err(e) => {
                warn!(%user, %folder, error = %e, "imap: cannot re-read folder");
                return;
            }
        };
        let Some(sel) = self.sel.as_mut() else { return };
        let Some(info) = info.filter(|i| i.uidvalidity == sel.uidvalidity) else {
            // Deleted or re-created under us: the old view is meaningless.
            self.out
                .extend_from_slice(b"* OK [CLOSED] mailbox no longer exists\r\n");
            self.sel = None;
            return;
        };
        let read_only = sel.read_only;
        let key = (user, folder);
        let shared = self.shared;
        sel.sync(
            list,
            info.uidnext,
            allow_expunge,
            |uid| claim_recent(shared, &key, uid, read_only),
            &mut self.out,
        );
    }

    /// A folder's info and index, read off the async runtime; `None` when it
    /// does not exist or cannot be read, after answering `t` so.
    async fn open_folder(
        &mut self,
        t: &str,
        user: &str,
        name: &str,
    ) -> Option<(FolderInfo, Vec<MessageMeta>)> {
        let store = self.shared.store.clone();
        let (u, f) = (user.to_string(), name.to_string());
        let res = blocking(move || Ok((store.folder_info(&u, &f)?, store.list(&u, &f)?))).await;
        match res {
            Ok((Some(info), list)) => Some((info, list)),
            Ok((None, _)) => {
                self.tagged(t, "NO [NONEXISTENT] no such mailbox");
                None
            }
            Err(e) => {
                self.tagged(t, error_text(&e));
                None
            }
        }
    }

    async fn select(&mut self, t: &str, name: &str, read_only: bool) {
        // A failed SELECT leaves no mailbox selected (RFC 3501 §6.3.1).
        self.sel = None;
        let user = self.user_address();
        self.changes.borrow_and_update();
        let Some((info, list)) = self.open_folder(t, &user, name).await else {
            return;
        };
        let key = (user, info.name.clone());
        let msgs: Vec<Entry> = {
            let mut map = self.shared.recent.lock().unwrap_or_else(|p| p.into_inner());
            let boundary = map.get(&key).copied();
            let max_uid = list.last().map_or(0, |m| m.uid);
            let msgs = list
                .into_iter()
                .map(|m| {
                    let recent = match boundary {
                        Some(b) => m.uid > b,
                        None => !m.flags.iter().any(|f| f.eq_ignore_ascii_case("\\Seen")),
                    };
                    Entry::from_meta(m, recent)
                })
                .collect();
            if !read_only {
                let b = map.entry(key).or_insert(0);
                *b = (*b).max(max_uid);
            }
            msgs
        };
        let sel = Selected {
            folder: info.name.clone(),
            read_only,
            uidvalidity: info.uidvalidity,
            uidnext: info.uidnext,
            msgs,
        };
        let recent = sel.msgs.iter().filter(|m| m.recent).count();
        let first_unseen = sel.msgs.iter().position(|m| !m.has_flag("\\Seen"));
        self.line(&format!("* FLAGS ({SYSTEM_FLAGS})"));
        if read_only {
            self.line("* OK [PERMANENTFLAGS ()] read-only");
        } else {
            self.line(&format!(
                "* OK [PERMANENTFLAGS ({SYSTEM_FLAGS} \\*)] flags permitted"
            ));
        }
        self.line(&format!("* {} EXISTS", sel.msgs.len()));
        self.line(&format!("* {recent} RECENT"));
        if let Some(i) = first_unseen {
            self.line(&format!("* OK [UNSEEN {}] first unseen", i + 1));
        }
        self.line(&format!(
            "* OK [UIDVALIDITY {}] UIDs valid",
            sel.uidvalidity
        ));
        self.line(&format!(
            "* OK [UIDNEXT {}] predicted next UID",
            sel.uidnext
        ));
        self.sel = Some(sel);
        self.last_sync = Instant::now();
        if read_only {
            self.tagged(t, "OK [READ-ONLY] EXAMINE completed");
        } else {
            self.tagged(t, "OK [READ-WRITE] SELECT completed");
        }
    }

    async fn create(&mut self, t: &str, name: String) {
        if name == INBOX || name.is_empty() {
            self.tagged(t, "NO [ALREADYEXISTS] cannot create INBOX");
            return;
        }
        let (store, user) = (self.shared.store.clone(), self.user_address());
        match blocking(move || store.create_folder(&user, &name)).await {
            Ok(true) => self.tagged(t, "OK CREATE completed"),
            Ok(false) => self.tagged(t, "NO [ALREADYEXISTS] mailbox already exists"),
            Err(e) => self.tagged(t, error_text(&e)),
        }
    }

    async fn delete(&mut self, t: &str, name: String) {
        if name == INBOX {
            self.tagged(t, "NO [CANNOT] INBOX cannot be deleted");
            return;
        }
        if self.sel.as_ref().is_some_and(|s| s.folder == name) {
            self.sel = None;
        }
        let (store, user) = (self.shared.store.clone(), self.user_address());
        match blocking(move || store.delete_folder(&user, &name)).await {
            Ok(true) => self.tagged(t, "OK DELETE completed"),
            Ok(false) => self.tagged(t, "NO [NONEXISTENT] no such mailbox"),
            Err(e) => self.tagged(t, error_text(&e)),
        }
    }

    async fn rename(&mut self, t: &str, from: String, to: String) {
        let (store, user) = (self.shared.store.clone(), self.user_address());
        match blocking(move || store.rename_folder(&user, &from, &to)).await {
            Ok(true) => self.tagged(t, "OK RENAME completed"),
            Ok(false) => self.tagged(t, "NO [NONEXISTENT] no such mailbox"),
            Err(e) => self.tagged(t, error_text(&e)),
        }
    }

    async fn list(
        &mut self,
        t: &str,
        kind: &str,
        reference: &Mailbox<'_>,
        pattern: &ListMailbox<'_>,
    ) {
        let reference = match reference {
            Mailbox::Inbox => INBOX.to_string(),
            Mailbox::Other(o) => String::from_utf8_lossy(o.inner().as_ref()).into_owned(),
        };
        let pattern = list_pattern(pattern);
        if pattern.is_empty() {
            // The hierarchy delimiter query (RFC 3501 §6.3.8).
            self.line(&format!("* {kind} (\\Noselect) \"/\" \"\""));
            self.tagged(t, &format!("OK {kind} completed"));
            return;
        }
        let full = format!("{reference}{pattern}");
        let (store, user) = (self.shared.store.clone(), self.user_address());
        let folders = match blocking(move || store.folders(&user)).await {
            Ok(f) => f,
            Err(e) => {
                self.tagged(t, error_text(&e));
                return;
            }
        };
        for name in &folders {
            if !list_matches(&full, name) {
                continue;
            }
            let children = folders.iter().any(|f| {
                f.len() > name.len() + 1
                    && f.starts_with(name.as_str())
                    && f.as_bytes()[name.len()] == b'/'
            });
            let mut attrs = String::from(if children {
                "\\HasChildren"
            } else {
                "\\HasNoChildren"
            });
            if let Some(su) = special_use(name) {
                attrs.push(' ');
                attrs.push_str(su);
            }
            let mut line = format!("* {kind} ({attrs}) \"/\" ").into_bytes();
            wire::mailbox(&mut line, name);
            line.extend_from_slice(b"\r\n");
            self.out.extend_from_slice(&line);
        }
        self.tagged(t, &format!("OK {kind} completed"));
    }

    async fn status(&mut self, t: &str, name: String, items: &[StatusDataItemName]) {
        let user = self.user_address();
        let Some((info, list)) = self.open_folder(t, &user, &name).await else {
            return;
        };
        let boundary = self
            .shared
            .recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(user, info.name.clone()))
            .copied();
        let seen = |m: &MessageMeta| m.flags.iter().any(|f| f.eq_ignore_ascii_case("\\Seen"));
        let mut parts = Vec::new();
        for item in items {
            match item {
                StatusDataItemName::Messages => parts.push(format!("MESSAGES {}", list.len())),
                StatusDataItemName::Recent => {
                    let n = list
                        .iter()
                        .filter(|m| boundary.map_or(!seen(m), |b| m.uid > b))
                        .count();
                    parts.push(format!("RECENT {n}"));
                }
                StatusDataItemName::UidNext => parts.push(format!("UIDNEXT {}", info.uidnext)),
                StatusDataItemName::UidValidity => {
                    parts.push(format!("UIDVALIDITY {}", info.uidvalidity))
                }
                StatusDataItemName::Unseen => parts.push(format!(
                    "UNSEEN {}",
                    list.iter().filter(|m| !seen(m)).count()
                )),
                StatusDataItemName::Deleted => parts.push(format!(
                    "DELETED {}",
                    list.iter()
                        .filter(|m| m.flags.iter().any(|f| f.eq_ignore_ascii_case("\\Deleted")))
                        .count()
                )),
                StatusDataItemName::DeletedStorage => {
                    parts.push(format!("DELETED-STORAGE {}", info.bytes))
                }
            }
        }
        let mut line = b"* STATUS ".to_vec();
        wire::mailbox(&mut line, &info.name);
        line.extend_from_slice(format!(" ({})\r\n", parts.join(" ")).as_bytes());
        self.out.extend_from_slice(&line);
        self.tagged(t, "OK STATUS completed");
    }

    async fn quota_limit(&self) -> Option<u64> {
        let dir = self.shared.directory.clone();
        let address = self.user_address();
        let quota = blocking(move || dir.lookup(&address)).await.ok().flatten();
        quota.map(|u| u.quota_bytes).filter(|&q| q > 0)
    }

    async fn append(
        &mut self,
        t: &str,
        name: String,
        flags: Vec<String>,
        date: Option<SystemTime>,
        message: Vec<u8>,
    ) {
        let quota = self.quota_limit().await.unwrap_or(0);
        let (store, user) = (self.shared.store.clone(), self.user_address());
        let res = blocking(move || {
            if store.folder_info(&user, &name)?.is_none() {
                return Ok(None);
            }
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            store
                .append(&user, &name, &message, &flags, date, quota)
                .map(Some)
        })
        .await;
        match res {
            Ok(None) => self.tagged(t, "NO [TRYCREATE] no such mailbox"),
            Ok(Some(Delivery::OverQuota)) => self.tagged(t, "NO [OVERQUOTA] mailbox is full"),
            Ok(Some(_)) => {
                self.sync(true, true).await;
                self.tagged(t, "OK APPEND completed");
            }
            Err(e) => self.tagged(t, error_text(&e)),
        }
    }

    async fn quota_root(&mut self, t: &str, name: String) {
        let mut line = b"* QUOTAROOT ".to_vec();
        wire::mailbox(&mut line, &name);
        // One quota root ("") covers all of a user's folders: the directory's byte quota.
        let limited = self.quota_limit().await.is_some();
        if limited {
            line.extend_from_slice(b" \"\"");
        }
        line.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(&line);
        if limited {
            self.quota_line().await;
        }
        self.tagged(t, "OK GETQUOTAROOT completed");
    }

    async fn quota(&mut self, t: &str) {
        if self.quota_limit().await.is_none() {
            self.tagged(t, "NO [NONEXISTENT] no quota set for this user");
            return;
        }
        self.quota_line().await;
        self.tagged(t, "OK GETQUOTA completed");
    }

    async fn quota_line(&mut self) {
        let limit = self.quota_limit().await.unwrap_or(0);
        let (store, user) = (self.shared.store.clone(), self.user_address());
        let used = blocking(move || store.usage(&user)).await.unwrap_or(0);
        // STORAGE is counted in units of 1024 octets (RFC 9208 §5.1).
        self.line(&format!(
            "* QUOTA \"\" (STORAGE {} {})",
            used.div_ceil(1024),
            limit / 1024
        ));
    }

    /// Removes \Deleted messages; with `report`, sends their EXPUNGE responses.
    async fn expunge_deleted(&mut self, report: bool) {
        let Some(sel) = &self.sel else { return };
        if sel.read_only {
            return;
        }
        let uids: Vec<u32> = sel
            .msgs
            .iter()
            .filter(|m| m.has_flag("\\Deleted"))
            .map(|m| m.uid)
            .collect();
        if uids.is_empty() {
            return;
        }
        let (store, user, folder) = (
            self.shared.store.clone(),
            self.user_address(),
            sel.folder.clone(),
        );
        let u = uids.clone();
        if let Err(e) = blocking(move || store.delete(&user, &folder, &u)).await {
            warn!(error = %e, "imap expunge failed");
            return;
        }
        let mut out = Vec::new();
        if let Some(sel) = self.sel.as_mut() {
            sel.expunge_uids(&uids, &mut out);
        }
        if report {
            self.out.extend_from_slice(&out);
        }
    }

    async fn search(&mut self, t: &str, key: &SearchKey<'static>, uid: bool) {
        self.sync(false, false).await;
        let Some(sel) = &self.sel else { return };
        let needs_body = search::needs_body(key);
        let (user, folder) = (self.user_address(), sel.folder.clone());
        let largest_seq = sel.msgs.len() as u32;
        let largest_uid = sel.largest_uid();
        let mut hits = Vec::new();
        let entries = sel.msgs.clone();
        for (chunk_no, chunk) in entries.chunks(BODY_CHUNK).enumerate() {
            let bodies = if needs_body {
                match self
                    .read_bodies(&user, &folder, chunk.iter().map(|e| e.uid).collect())
                    .await
                {
                    Ok(b) => b,
                    Err(e) => {
                        self.tagged(t, error_text(&e));
                        return;
                    }
                }
            } else {
                vec![None; chunk.len()]
            };
            for (i, (entry, raw)) in chunk.iter().zip(bodies.iter()).enumerate() {
                let parsed = raw.as_deref().and_then(mime::parse);
                let target = search::Target {
                    seq: (chunk_no * BODY_CHUNK + i + 1) as u32,
                    entry,
                    largest_seq,
                    largest_uid,
                    raw: raw.as_deref(),
                    parsed: parsed.as_ref(),
                };
                if search::matches(key, &target) {
                    hits.push(if uid { entry.uid } else { target.seq });
                }
            }
        }
        let mut line = String::from("* SEARCH");
        for h in hits {
            line.push(' ');
            line.push_str(&h.to_string());
        }
        self.line(&line);
        self.tagged(t, "OK SEARCH completed");
    }

    async fn read_bodies(
        &self,
        user: &str,
        folder: &str,
        uids: Vec<u32>,
    ) -> Result<Vec<Option<Vec<u8>>>, MailboxError> {
        let (store, user, folder) = (
            self.shared.store.clone(),
            user.to_string(),
            folder.to_string(),
        );
        blocking(move || {
            uids.iter()
                .map(|&u| store.fetch(&user, &folder, u))
                .collect()
        })
        .await
    }

    async fn fetch(
        &mut self,
        t: &str,
        set: &SequenceSet,
        plan: fetch::Plan,
        uid: bool,
    ) -> io::Result<()> {
        self.sync(false, false).await;
        let Some(sel) = &self.sel else { return Ok(()) };
        let idx = sel.resolve(set, uid);
        let (user, folder, read_only) = (self.user_address(), sel.folder.clone(), sel.read_only);
        // Non-PEEK body fetches set \Seen (in a read-write session), before the data is sent.
        let mut newly_seen = std::collections::HashSet::new();
        if plan.sets_seen && !read_only {
            let unseen: Vec<u32> = idx
                .iter()
                .map(|&i| &sel.msgs[i])
                .filter(|m| !m.has_flag("\\Seen"))
                .map(|m| m.uid)
                .collect();
            if !unseen.is_empty() {
                let (store, u, f, uids) = (
                    self.shared.store.clone(),
                    user.clone(),
                    folder.clone(),
                    unseen.clone(),
                );
                match blocking(move || store.set_flags(&u, &f, &uids, FlagsOp::Add, &["\\Seen"]))
                    .await
                {
                    Ok(_) => {
                        if let Some(sel) = self.sel.as_mut() {
                            for uid in &unseen {
                                if let Some(i) = sel.index_of_uid(*uid) {
                                    sel.msgs[i].flags.push("\\Seen".to_string());
                                }
                            }
                        }
                        newly_seen.extend(unseen);
                    }
                    Err(e) => warn!(error = %e, "imap: cannot set \\Seen"),
                }
            }
        }
        for chunk in idx.chunks(BODY_CHUNK) {
            let Some(sel) = &self.sel else { break };
            let entries: Vec<(usize, Entry)> = chunk
                .iter()
                .map(|&i| (i + 1, sel.msgs[i].clone()))
                .collect();
            let bodies = if plan.needs_body {
                match self
                    .read_bodies(&user, &folder, entries.iter().map(|(_, e)| e.uid).collect())
                    .await
                {
                    Ok(b) => b,
                    Err(e) => {
                        self.tagged(t, error_text(&e));
                        return Ok(());
                    }
                }
            } else {
                vec![None; entries.len()]
            };
            for ((seq, entry), raw) in entries.iter().zip(bodies.iter()) {
                let parsed = if plan.needs_parse {
                    raw.as_deref().and_then(mime::parse)
                } else {
                    None
                };
                fetch::render(
                    &mut self.out,
                    *seq,
                    entry,
                    &plan,
                    raw.as_deref(),
                    parsed.as_ref(),
                    newly_seen.contains(&entry.uid),
                );
            }
            if self.out.len() >= FLUSH_AT {
                self.flush().await?;
            }
        }
        self.tagged(t, "OK FETCH completed");
        Ok(())
    }

    async fn store(
        &mut self,
        t: &str,
        set: &SequenceSet,
        kind: StoreType,
        response: StoreResponse,
        flags: Vec<String>,
        uid: bool,
    ) {
        self.sync(false, false).await;
        let Some(sel) = &self.sel else { return };
        if sel.read_only {
            self.tagged(t, "NO [READ-ONLY] mailbox is read-only");
            return;
        }
        let idx = sel.resolve(set, uid);
        let uids: Vec<u32> = idx.iter().map(|&i| sel.msgs[i].uid).collect();
        let op = match kind {
            StoreType::Replace => FlagsOp::Replace,
            StoreType::Add => FlagsOp::Add,
            StoreType::Remove => FlagsOp::Remove,
        };
        let (store, user, folder) = (
            self.shared.store.clone(),
            self.user_address(),
            sel.folder.clone(),
        );
        let targets = uids.clone();
        let res = blocking(move || {
            let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
            store.set_flags(&user, &folder, &targets, op, &refs)?;
            store.list(&user, &folder)
        })
        .await;
        let fresh = match res {
            Ok(l) => l,
            Err(e) => {
                self.tagged(t, error_text(&e));
                return;
            }
        };
        let fresh: HashMap<u32, Vec<String>> =
            fresh.into_iter().map(|m| (m.uid, m.flags)).collect();
        let silent = matches!(response, StoreResponse::Silent);
        let mut out = Vec::new();
        if let Some(sel) = self.sel.as_mut() {
            for &i in &idx {
                let e = &mut sel.msgs[i];
                if let Some(f) = fresh.get(&e.uid) {
                    e.flags = f.clone();
                }
                if !silent {
                    out.extend_from_slice(format!("* {} FETCH (FLAGS ", i + 1).as_bytes());
                    wire::flag_list(&mut out, &e.flags, e.recent);
                    if uid {
                        out.extend_from_slice(format!(" UID {}", e.uid).as_bytes());
                    }
                    out.extend_from_slice(b")\r\n");
                }
            }
        }
        self.out.extend_from_slice(&out);
        self.tagged(t, "OK STORE completed");
    }

    async fn copy(&mut self, t: &str, set: &SequenceSet, dest: String, uid: bool, is_move: bool) {
        let Some(sel) = &self.sel else { return };
        if is_move && sel.read_only {
            self.tagged(t, "NO [READ-ONLY] mailbox is read-only");
            return;
        }
        let idx = sel.resolve(set, uid);
        let uids: Vec<u32> = idx.iter().map(|&i| sel.msgs[i].uid).collect();
        let (store, user, folder) = (
            self.shared.store.clone(),
            self.user_address(),
            sel.folder.clone(),
        );
        if folder == dest && is_move {
            self.tagged(t, "NO [CANNOT] source and destination are the same mailbox");
            return;
        }
        let quota = if is_move {
            0
        } else {
            self.quota_limit().await.unwrap_or(0)
        };
        let u = uids.clone();
        let res = blocking(move || {
            if store.folder_info(&user, &dest)?.is_none() {
                return Ok(Err("NO [TRYCREATE] no such mailbox"));
            }
            if is_move {
                store.move_messages(&user, &folder, &u, &dest)?;
                return Ok(Ok(()));
            }
            Ok(match store.copy(&user, &folder, &u, &dest, quota)? {
                Some(_) => Ok(()),
                None => Err("NO [OVERQUOTA] mailbox is full"),
            })
        })
        .await;
        match res {
            Ok(Ok(())) => {
                if is_move {
                    let mut out = Vec::new();
                    if let Some(sel) = self.sel.as_mut() {
                        sel.expunge_uids(&uids, &mut out);
                    }
                    self.out.extend_from_slice(&out);
                    self.tagged(t, "OK MOVE completed");
                } else {
                    self.tagged(t, "OK COPY completed");
                }
            }
            Ok(Err(status)) => self.tagged(t, status),
            Err(e) => self.tagged(t, error_text(&e)),
        }
    }

    /// IDLE (RFC 2177): report changes as they happen until the client sends DONE.
    async fn idle(&mut self, t: &str) -> io::Result<Flow> {
        self.line("+ idling");
        self.sync(true, true).await;
        self.flush().await?;
        let idle = self.shared.options.idle_timeout;
        let deadline = tokio::time::Instant::now() + idle;
        let mut line = Vec::new();
        enum Wake {
            Line(io::Result<Option<bool>>),
            Changed,
            Tick,
            Timeout,
        }
        loop {
            let wake = tokio::select! {
                r = read_line(&mut self.stream, &mut line, idle) => Wake::Line(r),
                r = self.changes.changed() => if r.is_ok() { Wake::Changed } else { Wake::Tick },
                _ = tokio::time::sleep(POLL) => Wake::Tick,
                _ = tokio::time::sleep_until(deadline) => Wake::Timeout,
            };
            match wake {
                Wake::Line(r) => {
                    match r? {
                        Some(true) if line.ends_with(b"\n") => {}
                        Some(true) => continue,
                        _ => return Ok(Flow::Close),
                    }
                    if line.trim_ascii().eq_ignore_ascii_case(b"DONE") {
                        self.tagged(t, "OK IDLE terminated");
                    } else {
                        self.tagged(t, "BAD expected DONE");
                    }
                    return Ok(Flow::Continue);
                }
                Wake::Changed => self.sync(true, true).await,
                Wake::Tick => self.sync(true, false).await,
                Wake::Timeout => {
                    self.line("* BYE autologout: idle for too long");
                    return Ok(Flow::Close);
                }
            }
            self.flush().await?;
        }
    }
}

/// Whether a newly arrived message is \Recent for this session: only for the first
/// read-write session that sees it.
fn claim_recent(shared: &Shared, key: &(String, String), uid: u32, read_only: bool) -> bool {
    let mut map = shared.recent.lock().unwrap_or_else(|p| p.into_inner());
    let b = map.entry(key.clone()).or_insert(0);
    if uid <= *b {
        return false;
    }
    if !read_only {
        *b = uid;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_wildcards() {
        assert!(list_matches("*", "Junk"));
        assert!(list_matches("*", "a/b"));
        assert!(list_matches("%", "Junk"));
        assert!(!list_matches("%", "a/b"));
        assert!(list_matches("a/%", "a/b"));
        assert!(list_matches("inbox", "INBOX"));
        assert!(list_matches("In*", "INBOX"));
        assert!(!list_matches("Sent", "Drafts"));
    }
}
