//! SMTP TLS Reporting (RFC 8460): what happened to our TLS sessions
//! towards each policy domain, told to the domain once per period.
//!
//! - The deliverer records, per recipient domain and policy, every session
//!   that got a transaction result under a policy that required TLS
//!   (success) and every TLS policy failure it already counts in
//!   `palisade_tls_failures_total` (with the result types of §4.3 and the
//!   MX host). Counts live in memory and are written to the node's
//!   `tlsrpt.json` (write then rename) every [`SAVE_EVERY`] and at each
//!   report, so a restart keeps the period's counts (a crash loses at
//!   most the last seconds).
//! - At the end of each period (`outbound.tlsrpt_interval`, one UTC day by
//!   default) each domain with counts that publishes `_smtp._tls` TXT
//!   (`v=TLSRPTv1; rua=mailto:...`) gets the aggregate JSON report of
//!   §4, gzipped, as `application/tlsrpt+gzip` in a `multipart/report;
//!   report-type="tlsrpt"` message (§5.3), queued in the node's own queue
//!   like a DSN (origin token: a crash re-creating it is a duplicate the
//!   queue drops). `https:` rua URIs are not used (mail only).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use base64::Engine;
use palisade_queue::{ClientInfo, NewMessage, NewRecipient, Queue};
use palisade_stage::metrics::Metrics;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::mta_sts::Policy;
use crate::resolve::DnsResolver;
use crate::tls_policy::TlsPolicy;

/// How often changed counts are written to disk.
pub const SAVE_EVERY: Duration = Duration::from_secs(5);

/// The counts of one (domain, policy) in one period.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counts {
    pub success: u64,
    /// (result type, receiving MX host or "") -> failed sessions.
    pub failures: BTreeMap<String, u64>,
}

/// What a report says about the policy (§4.4 `policy`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct PolicyKey {
    pub domain: String,
    /// "sts", "tlsa" or "no-policy-found" (require_tls is our rule, not theirs).
    pub policy_type: String,
    pub policy_string: Vec<String>,
    pub mx_host: Vec<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    /// Unix seconds: the start of the period being counted.
    period_start: u64,
    entries: Vec<(PolicyKey, Counts)>,
    #[serde(skip)]
    dirty: bool,
}

/// One finished period's counts, ready to be reported.
pub struct Period {
    pub start: u64,
    pub end: u64,
    pub entries: Vec<(PolicyKey, Counts)>,
}

pub struct TlsReports {
    file: PathBuf,
    interval: u64,
    state: Mutex<State>,
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl PolicyKey {
    pub fn of(domain: &str, policy: &TlsPolicy) -> PolicyKey {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        match policy {
            TlsPolicy::Sts(p) => PolicyKey {
                domain,
                policy_type: "sts".into(),
                policy_string: policy_lines(p),
                mx_host: p.mx.clone(),
            },
            TlsPolicy::Dane(d) => {
                let mut hosts: Vec<String> = d.hosts.keys().cloned().collect();
                hosts.sort();
                let records = hosts.iter().filter_map(|h| match &d.hosts[h] {
                    Ok(crate::dane::HostDane::Authenticate { tlsa, .. }) => Some(tlsa),
                    _ => None,
                });
                // §4.4: for "tlsa", the records in presentation format.
                let mut policy_string: Vec<String> = records
                    .flatten()
                    .map(|t| {
                        let hex: String = t.data.iter().map(|b| format!("{b:02x}")).collect();
                        format!("{} {} {} {hex}", t.usage, t.selector, t.matching)
                    })
                    .collect();
                policy_string.dedup();
                PolicyKey {
                    domain,
                    policy_type: "tlsa".into(),
                    policy_string,
                    mx_host: hosts,
                }
            }
            _ => PolicyKey {
                domain,
                policy_type: "no-policy-found".into(),
                policy_string: Vec::new(),
                mx_host: Vec::new(),
            },
        }
    }
}

/// The policy as the lines of its file (§4.4 `policy-string`).
fn policy_lines(p: &Policy) -> Vec<String> {
    let mode = match p.mode {
        crate::mta_sts::Mode::Enforce => "enforce",
        crate::mta_sts::Mode::Testing => "testing",
        crate::mta_sts::Mode::None => "none",
    };
    let mut lines = vec!["version: STSv1".to_string(), format!("mode: {mode}")];
    lines.extend(p.mx.iter().map(|m| format!("mx: {m}")));
    lines.push(format!("max_age: {}", p.max_age));
    lines
}

impl TlsReports {
    /// Loads the persisted counts (`file`); `interval` is the report period.
    pub fn new(file: PathBuf, interval: Duration) -> TlsReports {
        let interval = interval.as_secs().max(1);
        let mut state: State = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if state.period_start == 0 {
            state.period_start = unix_now() / interval * interval;
        }
        TlsReports {
            file,
            interval,
            state: Mutex::new(state),
        }
    }

    /// One session to `key`'s domain: `Ok(())` a success, `Err((result
    /// type, MX host))` a failure.
    pub fn record(&self, key: PolicyKey, outcome: Result<(), (&str, &str)>) {
        let mut s = self.state.lock().unwrap();
        let i = match s.entries.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                s.entries.push((key, Counts::default()));
                s.entries.len() - 1
            }
        };
        let counts = &mut s.entries[i].1;
        match outcome {
            Ok(()) => counts.success += 1,
            Err((result, mx)) => {
                *counts.failures.entry(format!("{result}|{mx}")).or_default() += 1;
            }
        }
        s.dirty = true;
    }

    /// When the period being counted ends (unix seconds).
    pub fn period_end(&self) -> u64 {
        self.state.lock().unwrap().period_start + self.interval
    }

    /// If the period is over: its counts (and a new, empty period begins).
    pub fn take_finished(&self, now: u64) -> Option<Period> {
        let mut s = self.state.lock().unwrap();
        let end = s.period_start + self.interval;
        if now < end {
            return None;
        }
        let period = Period {
            start: s.period_start,
            end,
            entries: std::mem::take(&mut s.entries),
        };
        s.period_start = now / self.interval * self.interval;
        s.dirty = true;
        Some(period)
    }

    /// Writes the counts if they changed.
    pub fn save(&self) {
        let snapshot = {
            let mut s = self.state.lock().unwrap();
            if !s.dirty {
                return;
            }
            s.dirty = false;
            serde_json::to_vec(&*s).unwrap_or_default()
        };
        if let Err(e) = palisade_queue::durable::replace_file(&self.file, &snapshot, None) {
            warn!("cannot persist TLSRPT counts {}: {e}", self.file.display());
        }
    }
}

/// Who sends the reports and how: the node's own queue.
pub struct ReportSender {
    pub queue: Queue,
    pub dns: DnsResolver,
    pub metrics: Metrics,
    pub node: String,
    /// `gateway.hostname`: organization and submitter of the reports.
    pub submitter: String,
    /// `From:` (a local domain's postmaster, so stage F signs it).
    pub from: String,
}

impl TlsReports {
    /// Runs forever: saves changed counts, and at each period's end sends
    /// its reports.
    pub async fn run(self: Arc<Self>, out: ReportSender) {
        loop {
            let until_end = self.period_end().saturating_sub(unix_now());
            tokio::time::sleep(SAVE_EVERY.min(Duration::from_secs(until_end.max(1)))).await;
            if let Some(period) = self.take_finished(unix_now()) {
                out.send(&period).await;
            }
            // After the reports are queued: a crash before this re-sends the
            // period, which the queue drops as duplicates (same origins).
            self.save();
        }
    }
}

impl ReportSender {
    async fn send(&self, period: &Period) {
        let mut domains: Vec<&str> = period
            .entries
            .iter()
            .map(|(k, _)| k.domain.as_str())
            .collect();
        domains.sort();
        domains.dedup();
        for domain in domains {
            let rua: Vec<String> = match self.dns.txt(&format!("_smtp._tls.{domain}")).await {
                Ok(txts) => txts.iter().flat_map(|t| rua_mailto(t)).collect(),
                Err(e) => {
                    warn!("TLSRPT {domain}: cannot look up _smtp._tls: {e}; no report for this period");
                    continue;
                }
            };
            if rua.is_empty() {
                debug!("TLSRPT {domain}: no _smtp._tls mailto: rua, no report");
                continue;
            }
            let report_id = format!("{}-{domain}-{}", period.start, self.node);
            let json = report_json(&self.submitter, &self.from, &report_id, period, domain);
            for (i, to) in rua.iter().enumerate() {
                let body = match report_message(
                    &self.submitter,
                    &self.from,
                    to,
                    domain,
                    &report_id,
                    period,
                    &json,
                ) {
                    Ok(b) => b,
                    Err(e) => {
                        warn!("TLSRPT {domain}: cannot build the report: {e}");
                        continue;
                    }
                };
                let msg = NewMessage {
                    origin: Some(format!("{}/tlsrpt-{report_id}-{i}", self.node)),
                    // Null sender: a report that cannot be delivered must
                    // not bounce back and forth.
                    mail_from: String::new(),
                    mail_params: String::new(),
                    rcpts: vec![NewRecipient {
                        address: to.clone(),
                        params: String::new(),
                    }],
                    client: ClientInfo {
                        peer: "local".into(),
                        helo: self.submitter.clone(),
                        tls: None,
                        auth_user: None,
                    },
                    body,
                };
                match self.queue.enqueue(msg).await {
                    Ok(e) => {
                        info!(
                            "TLSRPT {domain}: report {report_id} queued as {} for <{to}>",
                            e.id
                        );
                        self.metrics.inc(
                            "palisade_tlsrpt_reports_total",
                            "TLSRPT aggregate reports queued for policy domains.",
                            &[],
                        );
                    }
                    Err(e) => warn!("TLSRPT {domain}: cannot queue the report for <{to}>: {e}"),
                }
            }
        }
    }
}

/// The `mailto:` addresses of a `_smtp._tls` TXT record (§3), if it is one.
pub fn rua_mailto(txt: &str) -> Vec<String> {
    let mut tags = txt.split(';').map(str::trim);
    if tags.next().map(|t| t.replace(' ', "")) != Some("v=TLSRPTv1".into()) {
        return Vec::new();
    }
    tags.filter_map(|t| t.strip_prefix("rua="))
        .flat_map(|v| v.split(','))
        .filter_map(|u| u.trim().strip_prefix("mailto:"))
        .map(|a| {
            // `%xx` escapes of a mailto URI (RFC 6068), e.g. `%21`.
            percent_encoding::percent_decode_str(a.split('?').next().unwrap_or(a))
                .decode_utf8_lossy()
                .trim()
                .to_string()
        })
        .filter(|a| a.contains('@'))
        .collect()
}

fn rfc3339(unix: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The JSON report (§4) of one domain's entries in `period`.
pub fn report_json(
    organization: &str,
    contact: &str,
    report_id: &str,
    period: &Period,
    domain: &str,
) -> serde_json::Value {
    let policies: Vec<serde_json::Value> = period
        .entries
        .iter()
        .filter(|(k, _)| k.domain == domain)
        .map(|(k, c)| {
            let failed: u64 = c.failures.values().sum();
            let details: Vec<serde_json::Value> = c
                .failures
                .iter()
                .map(|(key, n)| {
                    let (result, mx) = key.split_once('|').unwrap_or((key, ""));
                    let mut d = serde_json::json!({
                        "result-type": result,
                        "failed-session-count": n,
                    });
                    if !mx.is_empty() {
                        d["receiving-mx-hostname"] = mx.into();
                    }
                    d
                })
                .collect();
            let mut policy = serde_json::json!({
                "policy-type": k.policy_type,
                "policy-domain": k.domain,
            });
            if !k.policy_string.is_empty() {
                policy["policy-string"] = k.policy_string.clone().into();
                policy["mx-host"] = k.mx_host.clone().into();
            }
            serde_json::json!({
                "policy": policy,
                "summary": {
                    "total-successful-session-count": c.success,
                    "total-failure-session-count": failed,
                },
                "failure-details": details,
            })
        })
        .collect();
    serde_json::json!({
        "organization-name": organization,
        "date-range": {
            "start-datetime": rfc3339(period.start),
            "end-datetime": rfc3339(period.end.saturating_sub(1)),
        },
        "contact-info": contact,
        "report-id": report_id,
        "policies": policies,
    })
}

/// The report message (§5.3): headers, a human part and the gzipped JSON.
pub fn report_message(
    submitter: &str,
    from: &str,
    to: &str,
    domain: &str,
    report_id: &str,
    period: &Period,
    json: &serde_json::Value,
) -> anyhow::Result<Vec<u8>> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(serde_json::to_string(json)?.as_bytes())?;
    let gz = gz.finish()?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(gz);
    let boundary = format!("tlsrpt-{report_id}");
    let date = palisade_stage::received::rfc5322_date(SystemTime::now());
    let mut m = format!(
        "From: TLS reports <{from}>\r\n\
         To: <{to}>\r\n\
         Subject: Report Domain: {domain} Submitter: {submitter} Report-ID: <{report_id}>\r\n\
         Date: {date}\r\n\
         Message-ID: <{report_id}@{submitter}>\r\n\
         TLS-Report-Domain: {domain}\r\n\
         TLS-Report-Submitter: {submitter}\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=\"tlsrpt\";\r\n\tboundary=\"{boundary}\"\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n\
         This is an aggregate TLS report (RFC 8460) from {submitter} for {domain}.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: application/tlsrpt+gzip\r\n\
         Content-Transfer-Encoding: base64\r\n\
         Content-Disposition: attachment;\r\n\tfilename=\"{submitter}!{domain}!{}!{}!{report_id}.json.gz\"\r\n\
         \r\n",
        period.start, period.end
    );
    for line in b64.as_bytes().chunks(76) {
        m.push_str(std::str::from_utf8(line).expect("base64 is ascii"));
        m.push_str("\r\n");
    }
    m.push_str(&format!("--{boundary}--\r\n"));
    Ok(m.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rua_mailto_reads_the_record() {
        assert_eq!(
            rua_mailto("v=TLSRPTv1; rua=mailto:tls@rep.example,https://r.example/x"),
            vec!["tls@rep.example".to_string()]
        );
        assert_eq!(
            rua_mailto("v=TLSRPTv1;rua=mailto:a%21b@x.example"),
            vec!["a!b@x.example"]
        );
        assert!(rua_mailto("v=spf1 -all").is_empty());
        // A `%` before a multibyte character is no escape (and no panic:
        // the record comes from any remote domain).
        assert_eq!(
            rua_mailto("v=TLSRPTv1;rua=mailto:a%aé@x.example"),
            vec!["a%aé@x.example"]
        );
    }

    #[test]
    fn counts_roll_into_a_period_report() {
        let dir = std::env::temp_dir().join(format!("tlsrpt-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let r = TlsReports::new(dir.join("tlsrpt.json"), Duration::from_secs(86400));
        let key = PolicyKey::of("Dest.Example", &TlsPolicy::Opportunistic);
        r.record(key.clone(), Ok(()));
        r.record(key.clone(), Ok(()));
        r.record(key, Err(("starttls-not-supported", "mx.dest.example")));
        r.save();
        // A restart keeps the counts.
        let again = TlsReports::new(dir.join("tlsrpt.json"), Duration::from_secs(86400));
        assert!(again.take_finished(unix_now()).is_none());
        let p = again.take_finished(again.period_end()).unwrap();
        assert_eq!(p.start % 86400, 0, "periods are UTC days");
        let json = report_json("org", "postmaster@org", "id1", &p, "dest.example");
        let pol = &json["policies"][0];
        assert_eq!(pol["policy"]["policy-type"], "no-policy-found");
        assert_eq!(pol["summary"]["total-successful-session-count"], 2);
        assert_eq!(pol["summary"]["total-failure-session-count"], 1);
        assert_eq!(
            pol["failure-details"][0]["receiving-mx-hostname"],
            "mx.dest.example"
        );
        assert!(json["date-range"]["end-datetime"]
            .as_str()
            .unwrap()
            .ends_with("T23:59:59Z"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
