//! EHLO keywords (RFC 5321 §4.1.1.1) and the parameter filter that decides
//! which caller-supplied ESMTP parameters the server may see.

use palisade_smtp_proto::Reply;

/// What the server advertised in its EHLO reply. All false / None after a
/// HELO fallback.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extensions {
    pub pipelining: bool,
    /// `Some(limit)` when SIZE is advertised; `Some(0)` means SIZE without a
    /// fixed limit (RFC 1870). The client sends `SIZE=` whenever it is Some.
    pub size: Option<u64>,
    pub eightbitmime: bool,
    pub smtputf8: bool,
    pub dsn: bool,
    pub chunking: bool,
    pub starttls: bool,
    pub xorigin: bool,
    /// ENHANCEDSTATUSCODES.
    pub enhanced: bool,
    /// Every advertised keyword, upper-cased, without its arguments.
    pub keywords: Vec<String>,
}

impl Extensions {
    /// Parses an EHLO reply; the first line (the server's domain) is skipped.
    pub fn parse(ehlo: &Reply) -> Extensions {
        let mut ext = Extensions::default();
        for line in ehlo.text.split('\n').skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(kw) = words.next() else { continue };
            let kw = kw.to_ascii_uppercase();
            match kw.as_str() {
                "PIPELINING" => ext.pipelining = true,
                "SIZE" => {
                    ext.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0));
                }
                "8BITMIME" => ext.eightbitmime = true,
                "SMTPUTF8" => ext.smtputf8 = true,
                "DSN" => ext.dsn = true,
                "CHUNKING" => ext.chunking = true,
                "STARTTLS" => ext.starttls = true,
                "XORIGIN" => ext.xorigin = true,
                "ENHANCEDSTATUSCODES" => ext.enhanced = true,
                _ => {}
            }
            ext.keywords.push(kw);
        }
        ext
    }

    /// Whether `keyword` was advertised (case-insensitive).
    pub fn has(&self, keyword: &str) -> bool {
        self.keywords
            .iter()
            .any(|k| k.eq_ignore_ascii_case(keyword))
    }

    /// Whether a MAIL/RCPT parameter may be sent to this server. SIZE and
    /// XORIGIN are always false: the client generates those itself.
    pub(crate) fn allows_param(&self, key: &str, value: Option<&str>) -> bool {
        let is = |k: &str| key.eq_ignore_ascii_case(k);
        if is("RET") || is("ENVID") || is("NOTIFY") || is("ORCPT") {
            self.dsn
        } else if is("BODY") {
            match value {
                Some(v) if v.eq_ignore_ascii_case("7BIT") => true,
                Some(v) if v.eq_ignore_ascii_case("8BITMIME") => self.eightbitmime,
                // BINARYMIME needs BDAT, which this client does not send.
                _ => false,
            }
        } else if is("SMTPUTF8") {
            self.smtputf8
        } else if is("SIZE") || is("XORIGIN") {
            false
        } else {
            self.has(key)
        }
    }
}

/// Appends ` key[=value]` for every parameter of `params` the server allows.
/// Returns whether an SMTPUTF8 parameter was written.
pub(crate) fn push_params(out: &mut Vec<u8>, params: &str, ext: &Extensions) -> bool {
    let mut utf8 = false;
    for p in params.split_ascii_whitespace() {
        let (key, value) = match p.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (p, None),
        };
        if ext.allows_param(key, value) {
            out.push(b' ');
            out.extend_from_slice(p.as_bytes());
            utf8 |= key.eq_ignore_ascii_case("SMTPUTF8");
        }
    }
    utf8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(lines: &[&str]) -> Extensions {
        Extensions::parse(&Reply::parse_lines(lines).unwrap())
    }

    #[test]
    fn parses_keywords() {
        let e = ext(&[
            "250-mx.example greets you",
            "250-PIPELINING",
            "250-SIZE 1000",
            "250-8bitmime",
            "250-DSN",
            "250-AUTH PLAIN",
            "250 XORIGIN",
        ]);
        assert!(e.pipelining && e.eightbitmime && e.dsn && e.xorigin);
        assert!(!e.smtputf8 && !e.starttls && !e.chunking);
        assert_eq!(e.size, Some(1000));
        assert!(e.has("auth"));
        assert!(!e.has("mx.example"));
    }

    #[test]
    fn size_without_limit() {
        assert_eq!(ext(&["250-x", "250 SIZE"]).size, Some(0));
        assert_eq!(ext(&["250 x"]).size, None);
    }

    #[test]
    fn filters_params() {
        let none = Extensions::default();
        let mut out = Vec::new();
        push_params(
            &mut out,
            "RET=HDRS ENVID=x BODY=8BITMIME SMTPUTF8 SIZE=5 BODY=7BIT",
            &none,
        );
        assert_eq!(out, b" BODY=7BIT");

        let all = ext(&[
            "250-x",
            "250-DSN",
            "250-8BITMIME",
            "250-SMTPUTF8",
            "250 MT-PRIORITY",
        ]);
        out.clear();
        let utf8 = push_params(
            &mut out,
            "RET=HDRS  ENVID=x BODY=8BITMIME SMTPUTF8 MT-PRIORITY=3 AUTH=<>",
            &all,
        );
        assert!(utf8);
        assert_eq!(
            out,
            b" RET=HDRS ENVID=x BODY=8BITMIME SMTPUTF8 MT-PRIORITY=3"
        );
    }
}
