//! palisade-outbound: the delivery engine of the outgoing stage (F), the
//! only door to the Internet (shared/SPEC.md §2, docs/outgoing.md).
//!
//! | module | job |
//! |---|---|
//! | [`resolve`] | MX / implicit MX / null MX resolution with hickory-resolver |
//! | [`tls_policy`] | opportunistic STARTTLS, per-domain require-TLS (optionally verified), MTA-STS, DANE |
//! | [`dane`] | RFC 7672: DNSSEC-validated MX and TLSA lookups for DANE |
//! | [`mta_sts`] | RFC 8461: TXT discovery, verified HTTPS policy fetch, parsing, persisted cache |
//! | [`dkim`] | DKIM signing, key generation, rotation by DNS verification |
//! | [`bounce`] | classification of replies into the bounce study's root causes |
//! | [`dsn`] | RFC 3464 delivery status notifications |
//! | [`tlsrpt`] | RFC 8460: per-domain TLS session counts, daily gzipped JSON reports by mail |
//! | [`deliver`] | the delivery loop on the durable queue |

pub mod bounce;
pub mod dane;
pub mod deliver;
pub mod dkim;
pub mod dsn;
pub mod mta_sts;
/// Resolution lives in `palisade-dns`, shared with the other stages.
pub use palisade_dns as resolve;
pub mod tls_policy;
pub mod tlsrpt;

pub use deliver::Deliverer;
