//! DM17 RFC 2505 (anti-spam recommendations for SMTP MTAs), the parts that
//! apply to a gateway, checked against a stage's settings: each finding is
//! one recommendation and whether this stage meets it. `palisade review`
//! prints them; the policy refuses to start a stage that enables DM17
//! without meeting them.
//!
//! - §2.6 no unauthorised relaying: DM7 enabled;
//! - §2.11 no address disclosure: VRFY answers 252 without looking the
//!   user up and EXPN 502 (the SMTP engine does this always);
//! - §2.3/2.4 logging: every refusal and defense action is logged with its
//!   session or queue id (the intake does this always);
//! - §2.12 limits: message size, recipients, sessions are bounded.

use palisade_config::StageSettings;

pub struct Finding {
    pub section: &'static str,
    pub recommendation: &'static str,
    pub met: bool,
}

pub fn assess(s: &StageSettings) -> Vec<Finding> {
    let m = &s.mechanisms;
    vec![
        Finding {
            section: "2.6",
            recommendation: "no unauthorised relaying (DM7)",
            met: m.dm7_relay_access.as_ref().is_some_and(|d| d.enabled),
        },
        Finding {
            section: "2.11",
            recommendation: "VRFY/EXPN disclose no addresses (252 / 502)",
            met: true,
        },
        Finding {
            section: "2.3",
            recommendation: "log every transaction and refusal",
            met: true,
        },
        Finding {
            section: "2.12",
            recommendation: "limit message size, recipients and sessions",
            met: s.limits.max_message_size > 0
                && s.limits.max_recipients > 0
                && s.limits.max_sessions > 0,
        },
    ]
}
