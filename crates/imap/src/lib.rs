//! IMAP4rev1 server (RFC 3501) of the message store (stage G), over the mailboxes of
//! [`palisade_mailbox::MailStore`] and the users of [`palisade_mailbox::Directory`].
//!
//! * Commands are parsed with `imap-codec` (literals, LITERAL+, every RFC 3501 command plus
//!   IDLE, MOVE, UNSELECT, QUOTA); responses are written by [`wire`], [`fetch`] and [`mime`].
//! * Implicit TLS (IMAPS, port 993 style) or plaintext with STARTTLS, in which LOGIN and
//!   AUTHENTICATE are refused until TLS is active (`LOGINDISABLED`): credentials never travel
//!   in clear. Data pipelined after STARTTLS is discarded (RFC 2595 §3.1).
//! * Bad credentials: `NO [AUTHENTICATIONFAILED]` after a fixed delay whether or not the
//!   account exists (the directory does a dummy hash for unknown users); 3 failures close the
//!   connection.
//! * Extensions: IDLE (RFC 2177, woken at once by in-process deliveries), MOVE (RFC 6851,
//!   atomic in the store), UNSELECT (RFC 3691), QUOTA (RFC 9208, the directory's byte quota),
//!   SPECIAL-USE attributes (RFC 6154) on Junk, Sent, Drafts and Trash, LITERAL+ (RFC 7888).
//! * Large mailboxes: a session keeps the folder index (UID, flags, size, date) in memory;
//!   FETCH of index items and most SEARCH keys never read a message body.

mod fetch;
mod mime;
mod reader;
mod search;
mod selected;
mod session;
mod wire;

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_mailbox::{Directory, MailStore};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Tunables of the IMAP server. [`ImapOptions::new`] gives the production defaults.
#[derive(Debug, Clone)]
pub struct ImapOptions {
    /// Name used in the greeting.
    pub hostname: String,
    /// IMAPS (TLS from the first byte) instead of plaintext + STARTTLS.
    pub implicit_tls: bool,
    /// When set, only users whose directory `store` is this node may log in here.
    pub store_node: Option<String>,
    /// Inactivity autologout timer (RFC 3501 §5.4: at least 30 minutes).
    pub idle_timeout: Duration,
    /// Delay before answering a failed login.
    pub auth_failure_delay: Duration,
    /// Concurrent sessions; further connections get `* BYE` and are closed.
    pub max_connections: usize,
}

impl ImapOptions {
    pub fn new(hostname: impl Into<String>, implicit_tls: bool) -> Self {
        ImapOptions {
            hostname: hostname.into(),
            implicit_tls,
            store_node: None,
            idle_timeout: Duration::from_secs(30 * 60),
            auth_failure_delay: Duration::from_secs(1),
            max_connections: 512,
        }
    }
}

/// A client connection: plaintext until STARTTLS, or TLS from the first byte.
pub(crate) type Conn = palisade_net::MaybeTls<tokio::net::TcpStream>;

pub(crate) struct Shared {
    pub acceptor: TlsAcceptor,
    pub directory: Directory,
    pub store: MailStore,
    pub options: ImapOptions,
    /// Highest UID per (user, folder) already announced as \Recent to a read-write session
    /// (RFC 3501 §2.3.2: only one session sees a message as recent). Kept in memory: after a
    /// restart the first session sees the unseen messages as recent.
    pub recent: Mutex<HashMap<(String, String), u32>>,
}

/// Serves IMAP on `listener` until an unrecoverable accept error.
pub async fn serve_imap(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    options: ImapOptions,
    directory: Directory,
    store: MailStore,
) -> io::Result<()> {
    let max_connections = options.max_connections;
    // Over TLS a plaintext BYE would be garbage to the client: just close.
    let busy: Option<&'static [u8]> =
        (!options.implicit_tls).then_some(b"* BYE [UNAVAILABLE] too many connections\r\n");
    let shared = Arc::new(Shared {
        acceptor: TlsAcceptor::from(tls),
        directory,
        store,
        options,
        recent: Mutex::new(HashMap::new()),
    });
    palisade_net::serve_capped(listener, max_connections, "imap", busy, |tcp| {
        session::handle_connection(tcp, shared.clone())
    })
    .await
}
