//! palisade-virus: what stage C (antivirus, Table I DM28) needs.
//!
//! * [`clamd`]: scanning through clamd's INSTREAM command, with several
//!   daemons tried in turn (failover);
//! * [`mime_limits`]: limits on MIME nesting, part count and decoded size,
//!   checked before scanning so a MIME bomb costs clamd nothing;
//! * [`quarantine`]: the LMDB store of messages kept out of the flow (by
//!   the antivirus and the antispam stage), with envelope and reason, for
//!   `palisade quarantine list|show|release|delete`.
//!
//! # Security
//! Message bytes are untrusted: the limit check is a single bounded pass;
//! decoding MIME and archives is clamd's job (it runs as its own process).
//!
//! # Failure modes
//! No clamd answering is temporary ([`clamd::ScanError`]): the stage
//! tempfails and the upstream queue keeps the message.

pub mod clamd;
pub mod entry_hop;
pub mod mime_limits;
pub mod quarantine;
pub mod reinject;

pub use clamd::{ClamdAddress, ScanError, ScanOutcome, Scanner};
pub use mime_limits::{MimeLimits, MimeStats};
pub use quarantine::{Quarantine, QuarantineEntry, QuarantineError};
