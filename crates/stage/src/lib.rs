//! The stage skeleton shared by every Palisade binary.
//!
//! A stage binary is thin wiring (Postfix's `single_server_main`): parse
//! `--config FILE --node NAME`, load and validate the whole architecture,
//! open this node's durable queue, listen, and forward what was accepted to
//! the next stage's pair. What differs between stages (which checks run at
//! RCPT, what happens to a message on arrival) is passed in by the binary.

pub mod cut_through;
pub mod drain;
pub mod filter;
pub mod forward;
pub mod http;
pub mod intake;
pub mod journal;
pub mod metrics;
pub mod privilege;
pub mod received;
pub mod reload;
pub mod replica;
pub mod runtime;
pub mod submission;
pub mod tls;
pub mod typo;

pub use palisade_config::StageKind;
pub use runtime::{run_relay_stage, run_stage_with_deliverer, NodeContext, StageArgs};
