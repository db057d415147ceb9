//! The `Authentication-Results:` header (RFC 8601) the MX adds before a
//! message is queued, so the antispam stage and MUAs read one verdict
//! instead of redoing SPF, DKIM and DMARC. mail-auth formats the method
//! results; this adds what it leaves to the caller: the folding and CRLF,
//! and the header of a message that could not be parsed at all.

use std::net::IpAddr;

use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimError;
use mail_auth::{
    ArcOutput, AuthenticationResults, DkimOutput, DkimResult, DmarcOutput, Error, SpfOutput,
};

/// Everything verified for one message.
pub struct Verified<'a> {
    pub spf: &'a SpfOutput,
    pub dkim: &'a [DkimOutput<'a>],
    pub arc: Option<&'a ArcOutput<'a>>,
    pub dmarc: Option<&'a DmarcOutput>,
    pub header_from: &'a str,
}

/// The whole header field, ending in CRLF.
pub fn render(hostname: &str, client: IpAddr, helo: &str, mail_from: &str, v: &Verified) -> String {
    let dkim: Vec<DkimOutput> = v.dkim.iter().map(body_hash_mismatch_is_fail).collect();
    let mut ar = AuthenticationResults::new(hostname)
        .with_spf_mailfrom_result(v.spf, client, mail_from, helo)
        .with_dkim_results(&dkim, v.header_from);
    if let Some(arc) = v.arc {
        ar = ar.with_arc_result(arc, client);
    }
    if let Some(dmarc) = v.dmarc {
        ar = ar.with_dmarc_result(dmarc);
    }
    ar.to_header()
}

/// For a message mail-auth cannot parse: methods not applied.
pub fn render_unparsed(hostname: &str) -> String {
    format!("Authentication-Results: {hostname}; none (message not parseable)\r\n")
}

/// mail-auth reports a body that no longer matches its signature's body
/// hash as `neutral`; RFC 6376 §6.3 makes it a PERMFAIL, which RFC 8601
/// §2.7.1 records as `dkim=fail` (the message was modified in transit).
pub fn body_hash_mismatch_is_fail<'a>(d: &'a DkimOutput<'a>) -> DkimOutput<'a> {
    match d.result() {
        DkimResult::Neutral(e @ Error::Dkim(DkimError::FailedBodyHashMatch)) => {
            let out = DkimOutput::fail(e.clone());
            match d.signature() {
                Some(sig) => out.with_signature(sig),
                None => out,
            }
        }
        _ => d.clone(),
    }
}
