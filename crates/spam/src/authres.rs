//! The MX's authentication verdicts (SPF, DKIM, DMARC) as spam evidence.
//!
//! The MX writes `Authentication-Results: <our hostname>; spf=...; dkim=...;
//! dmarc=...` (RFC 8601). Only headers naming our own host are believed: a
//! sender can write any Authentication-Results it likes, and RFC 8601 §5
//! asks receivers to ignore those from other authserv-ids.

use crate::mime::Parsed;

/// One method's result, e.g. `dmarc=fail`.
#[derive(Clone, Debug, PartialEq)]
pub struct AuthFinding {
    pub method: String,
    pub result: String,
    pub points: f64,
}

/// Points per (method, result); results not listed are worth nothing.
fn points(method: &str, result: &str) -> f64 {
    match (method, result) {
        ("spf", "fail") => 2.0,
        ("spf", "softfail") => 1.0,
        ("spf", "permerror") => 0.5,
        ("dkim", "fail") => 1.0,
        ("dkim", "pass") => -0.5,
        ("dmarc", "fail") => 3.0,
        ("dmarc", "pass") => -1.0,
        _ => 0.0,
    }
}

/// Findings from every Authentication-Results header naming `hostname`.
pub fn findings(msg: &Parsed, hostname: &str) -> Vec<AuthFinding> {
    let mut out = Vec::new();
    for value in msg.headers_named("authentication-results") {
        let mut parts = value.split(';');
        let authserv = parts
            .next()
            .unwrap_or("")
            .split_whitespace()
            .next()
            .unwrap_or("");
        if !authserv.eq_ignore_ascii_case(hostname) {
            continue;
        }
        for part in parts {
            let Some(first) = part.split_whitespace().next() else {
                continue;
            };
            let Some((method, result)) = first.split_once('=') else {
                continue;
            };
            let method = method.to_ascii_lowercase();
            let result = result.trim_end_matches(')').to_ascii_lowercase();
            if !matches!(method.as_str(), "spf" | "dkim" | "dmarc") {
                continue;
            }
            let p = points(&method, &result);
            out.push(AuthFinding {
                method,
                result,
                points: p,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mime::parse;

    #[test]
    fn results_from_our_host_count() {
        let m = parse(b"Authentication-Results: mx.example.test; spf=fail smtp.mailfrom=a@b.example;\r\n dkim=pass header.d=b.example; dmarc=fail (p=none) header.from=b.example\r\n\r\nhi\r\n");
        let f = findings(&m, "MX.example.test");
        let got: Vec<(&str, &str)> = f
            .iter()
            .map(|f| (f.method.as_str(), f.result.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![("spf", "fail"), ("dkim", "pass"), ("dmarc", "fail")]
        );
        assert_eq!(f.iter().map(|f| f.points).sum::<f64>(), 4.5);
    }

    #[test]
    fn results_from_other_hosts_are_ignored() {
        let m = parse(b"Authentication-Results: evil.example; dmarc=pass\r\n\r\nhi\r\n");
        assert!(findings(&m, "mx.example.test").is_empty());
    }
}
