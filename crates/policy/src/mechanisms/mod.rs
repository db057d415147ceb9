//! One module per Table I defense mechanism, named with its number.
//! DM8, DM9, DM12/13 and DM32 are enforced by the SMTP engine's limits
//! (see the catalogue); the rest live here.

pub mod dm10_connections;
pub mod dm11_rates;
pub mod dm17_rfc2505;
pub mod dm18_lists;
pub mod dm19_mta_rules;
pub mod dm20_dnsbl;
pub mod dm22_greylist;
pub mod dm23_regex;
pub mod dm27_spamtraps;
pub mod dm30_dm31_auth;
pub mod dm33_data_rate;
pub mod dm34_sender_rate;
pub mod dm36_bad_rcpt;
pub mod dm7_relay_access;
