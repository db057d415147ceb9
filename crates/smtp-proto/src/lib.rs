//! Sans-IO SMTP vocabulary: commands, replies, and the DATA/line receivers.
//!
//! No tokio, no config, no logging: bytes in, values out. The async session
//! driver lives in `palisade-smtp-server`, the outbound side in
//! `palisade-smtp-client`; both speak in these types.

pub mod reply;

pub use reply::{EnhancedStatus, Reply};
