//! Sans-IO SMTP vocabulary: commands, replies, and the DATA/BDAT receivers.
//!
//! No tokio, no config, no logging: bytes in, values out. The async session
//! driver lives in `palisade-smtp-server`, the outbound side in
//! `palisade-smtp-client`; both speak in these types.
//!
//! # Security
//! [`parse_command`] and [`DataReceiver`] read untrusted network input; the
//! DATA receiver holds the SMTP smuggling policy (bare CR/LF) in one place.
//!
//! # Standards
//! RFC 5321, RFC 3463 (enhanced codes), RFC 1870 (SIZE), RFC 3030
//! (CHUNKING), RFC 3461 (DSN), RFC 6531 (SMTPUTF8).

pub mod command;
pub mod data;
pub mod reply;

pub use command::{parse_command, BodyType, Command, MailParams, RcptParams, Ret};
pub use data::{BdatReceiver, DataError, DataReceiver, Progress};
pub use reply::{EnhancedStatus, Reply};
