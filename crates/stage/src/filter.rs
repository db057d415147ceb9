//! Content inspection at a stage's intake (antivirus, antispam).
//!
//! A filter sees each message after the SMTP transaction and before it is
//! queued. Its verdict decides what the client is told: accept (possibly
//! with headers added, e.g. X-Spam-Score or Authentication-Results), keep
//! it out of the flow after accepting it (quarantine: never bounced, SPEC
//! §4), tempfail (the upstream queue keeps it, e.g. clamd down) or refuse
//! (under cut-through, when the sender is still waiting for the reply).

use std::future::Future;
use std::pin::Pin;

use palisade_queue::ClientInfo;
use palisade_smtp_proto::Reply;

/// What a filter knows about the message besides its bytes.
pub struct FilterContext<'a> {
    pub node: &'a str,
    pub mail_from: &'a str,
    pub rcpts: Vec<&'a str>,
    pub client: &'a ClientInfo,
    /// Origin of the message at its entry node (`mx-1/ID`), when known.
    pub origin: Option<&'a str>,
    /// The upstream hop holds its client's reply for our verdict
    /// (cut-through, `XCUT`): refuse ([`crate::cut_through::virus_refusal`],
    /// [`crate::cut_through::spam_refusal`]) rather than quarantine, the
    /// sender is told.
    pub cut_through: bool,
}

pub enum Verdict {
    /// Queue it; `prepend` (complete, CRLF-terminated header lines) goes on
    /// top of the message.
    Accept { prepend: String },
    /// The filter kept the message itself (quarantine); answer 250 and
    /// queue nothing. `reason` is logged.
    Kept { reason: String },
    /// Answer this 4xx: the previous stage keeps the message and retries.
    Tempfail(Reply),
    /// Answer this 5xx.
    Reject(Reply),
}

impl Verdict {
    /// The filter could not keep a message it means to keep (quarantine
    /// write failed): 451, so the upstream queue keeps it and retries.
    pub fn could_not_keep(why: impl std::fmt::Display) -> Verdict {
        tracing::warn!("{why}; message tempfailed");
        Verdict::Tempfail(Reply::enhanced(
            451,
            (4, 3, 0),
            "Local error in processing; try again later",
        ))
    }
}

pub type VerdictFuture<'a> = Pin<Box<dyn Future<Output = Verdict> + Send + 'a>>;

pub trait MessageFilter: Send + Sync + 'static {
    fn inspect<'a>(&'a self, ctx: &'a FilterContext<'a>, message: &'a [u8]) -> VerdictFuture<'a>;
}
