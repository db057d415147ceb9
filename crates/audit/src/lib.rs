//! The methodology of Maraboli & Vallejos (section II) as tools an admin
//! runs against a deployment — ours or any other SMTP system:
//!
//! | step | paper | here |
//! |---|---|---|
//! | 1 | review the deployed mechanisms | `palisade review`: Table I per stage and the fault coverage matrix (figure 5 / Table II), from the config alone |
//! | 2 | fault detection | `palisade audit`: active, bounded probes; one verdict per fault and mechanism with the transcript as evidence |
//! | 3 | failure evaluation | each unprotected fault with the dependability attributes it endangers (figure 4) |
//! | 4 | deployment plan | the mechanism, stage and config key that would cover it |
//!
//! `palisade probe` (end-to-end delivery probes, loss and latency per hop)
//! and `palisade trace` (conservation accounting across every node) detect
//! the failures the paper says go unsignaled.
//!
//! [`model`] holds the types every part shares: the 14 faults, verdicts,
//! findings and the report that the renderers print.

pub mod evaluation;
pub mod faults;
pub mod history;
pub mod model;
pub mod probe;
pub mod render;
pub mod report;
pub mod review;
pub mod trace;

// `palisade audit` (step 2): the runner, its probes and their transcript client.
pub mod audit;
pub mod client;
pub mod imap;
pub mod probes;
