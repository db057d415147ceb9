//! Recipient typo guard at the MSA. In the bounce study
//! (shared/seeds/002_6c052ad567bcd498.txt) mistyped recipient domains are
//! the main cause of hard bounces: `gmial.com` sends the user a bounce
//! minutes later, or worse, mail to a squatter. Caught at RCPT, the user
//! sees the mistake while still composing.
//!
//! A recipient domain is a likely typo when it is one edit (insertion,
//! deletion, substitution or transposition) away from a well-known or
//! recently used domain *and* has no mail server in DNS. A DNS error is
//! never a typo.

use std::collections::VecDeque;
use std::sync::Mutex;

use palisade_dns::{DnsResolver, ResolveError};

/// Mail domains that users mistype most (large free-mail providers).
const WELL_KNOWN: &[&str] = &[
    "gmail.com",
    "googlemail.com",
    "yahoo.com",
    "hotmail.com",
    "outlook.com",
    "live.com",
    "msn.com",
    "icloud.com",
    "me.com",
    "aol.com",
    "gmx.de",
    "gmx.net",
    "web.de",
    "protonmail.com",
    "proton.me",
    "yandex.ru",
    "mail.ru",
    "qq.com",
    "163.com",
    "comcast.net",
];

/// How many recently used recipient domains are remembered.
const RECENT: usize = 1000;

pub struct TypoGuard {
    resolver: DnsResolver,
    known: Vec<String>,
    recent: Mutex<VecDeque<String>>,
}

impl TypoGuard {
    pub fn new(resolver: DnsResolver, extra_known: &[String]) -> TypoGuard {
        let mut known: Vec<String> = WELL_KNOWN.iter().map(|d| d.to_string()).collect();
        known.extend(extra_known.iter().map(|d| d.to_ascii_lowercase()));
        TypoGuard {
            resolver,
            known,
            recent: Mutex::default(),
        }
    }

    /// Remembers a domain mail was accepted for.
    pub fn used(&self, domain: &str) {
        let d = domain.to_ascii_lowercase();
        let mut recent = self.recent.lock().unwrap();
        if !recent.contains(&d) {
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(d);
        }
    }

    /// The domain the user probably meant, when `domain` looks like a typo
    /// of it and has no mail server.
    pub async fn suggestion(&self, domain: &str) -> Option<String> {
        let d = domain.trim_end_matches('.').to_ascii_lowercase();
        let candidate = {
            let recent = self.recent.lock().unwrap();
            if self.known.contains(&d) || recent.contains(&d) {
                return None;
            }
            self.known
                .iter()
                .chain(recent.iter())
                .find(|k| one_edit_apart(&d, k))
                .cloned()
        }?;
        match self.resolver.mail_exchangers(&d).await {
            Err(ResolveError::NoSuchDomain(_)) | Err(ResolveError::NullMx(_)) => Some(candidate),
            Ok(_) | Err(ResolveError::Temporary { .. }) => None,
        }
    }
}

/// Damerau–Levenshtein distance exactly 1 (one insertion, deletion,
/// substitution or adjacent transposition).
pub fn one_edit_apart(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if a == b {
        return false;
    }
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let (ra, rb) = (&a[prefix..], &b[prefix..]);
    match ra.len() as isize - rb.len() as isize {
        0 => {
            ra[1..] == rb[1..]
                || (ra.len() >= 2 && ra[0] == rb[1] && ra[1] == rb[0] && ra[2..] == rb[2..])
        }
        1 => ra[1..] == *rb,
        -1 => *ra == rb[1..],
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::one_edit_apart;

    #[test]
    fn edits() {
        assert!(one_edit_apart("gmial.com", "gmail.com")); // transposition
        assert!(one_edit_apart("gmai.com", "gmail.com")); // deletion
        assert!(one_edit_apart("gmaill.com", "gmail.com")); // insertion
        assert!(one_edit_apart("hotmial.com", "hotmail.com"));
        assert!(one_edit_apart("yahoo.con", "yahoo.com")); // substitution
        assert!(!one_edit_apart("gmail.com", "gmail.com"));
        assert!(!one_edit_apart("example.test", "gmail.com"));
        assert!(!one_edit_apart("gmal.co", "gmail.com")); // two edits
    }
}
