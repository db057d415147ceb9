//! palisade-policy: the defense mechanisms of Table I (Maraboli &
//! Vallejos) that the MX and MSA apply while a client talks to them.
//!
//! - [`catalogue`]: all 36 rows of Table I as data (stages, code, config
//!   key); `docs/mechanisms.md` is generated from it.
//! - [`mechanisms`]: one module per mechanism (`dm22_greylist`...), each
//!   a small, separately tested decision.
//! - [`Policy`]: the mechanisms a stage enabled in its
//!   `[stage.<name>.mechanisms]`, called from the SMTP engine's hooks; every
//!   action is reported to an [`ActionSink`] (the stage logs it with the
//!   session or queue id and counts `palisade_defense_actions_total`).
//! - [`state`]: where per-client state lives: this node (embedded) or
//!   Redis shared by a pair, with the fallback when Redis is away.
//! - [`resolver`]: the node's DNS resolver (`gateway.dns`), shared by SPF,
//!   DKIM, DMARC, DNSBL and the sender-domain check.
//!
//! # Failure modes
//! DNS failures never turn into permanent refusals (tempfail or pass); a
//! broken greylist store lets mail through and logs it (fail open: the
//! other mechanisms still apply).

pub mod auth_results;
pub mod catalogue;
pub mod mechanisms;
pub mod net;
mod policy;
pub mod resolver;
pub mod state;

pub use policy::{Action, ActionSink, Client, MessagePlan, Policy, PolicyOptions, Refusal};
