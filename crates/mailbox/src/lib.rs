//! Palisade stage G (message store): the user directory, the mailbox store and the POP3 server.
//!
//! * [`Directory`] — users (argon2id password hashes, quotas, store node, aliases) in an LMDB
//!   environment shared between the admin CLI (writer) and the stage processes (readers).
//! * [`MailStore`] — folders, messages, flags, quotas and delivery de-duplication in an LMDB
//!   environment (one per store node).
//! * [`serve_pop3`] — RFC 1939 POP3 (+ RFC 2449 CAPA, RFC 2595 STLS) over TLS.

mod env;
mod error;

pub mod directory;
pub mod pop3;
pub mod store;

pub use directory::{hash_password, normalize_address, Directory, User};
pub use error::MailboxError;
pub use pop3::{serve_pop3, serve_pop3_with_options, Pop3Options};
pub use store::{
    CommitStats, Delivery, FlagsOp, FolderInfo, MailStore, MessageMeta, DEFAULT_FOLDERS, INBOX,
};
