//! SEARCH (RFC 3501 §6.4.4): evaluation of search keys against one message.
//!
//! Keys on flags, sizes, dates and sequence sets use only the index (no body read); the body
//! is loaded and parsed only when a key needs it ([`needs_body`]).

use imap_codec::imap_types::search::SearchKey;
use mail_parser::{Address, Message};

use crate::mime;
use crate::selected::{bounds, set_contains, Entry};

/// True when evaluating `key` requires the message text.
pub fn needs_body(key: &SearchKey<'_>) -> bool {
    use SearchKey::*;
    match key {
        And(keys) => keys.as_ref().iter().any(needs_body),
        Not(k) => needs_body(k),
        Or(a, b) => needs_body(a) || needs_body(b),
        Bcc(_) | Body(_) | Cc(_) | From(_) | Header(..) | SentBefore(_) | SentOn(_)
        | SentSince(_) | Subject(_) | Text(_) | To(_) => true,
        _ => false,
    }
}

/// What a key is evaluated against.
pub struct Target<'a, 'x> {
    pub seq: u32,
    pub entry: &'a Entry,
    pub largest_seq: u32,
    pub largest_uid: u32,
    pub raw: Option<&'a [u8]>,
    pub parsed: Option<&'a Message<'x>>,
}

fn contains_ci(haystack: &str, needle: &str) -> bool {
    needle.is_empty() || haystack.to_lowercase().contains(&needle.to_lowercase())
}

fn bytes_contains_ci(haystack: &[u8], needle: &str) -> bool {
    contains_ci(&String::from_utf8_lossy(haystack), needle)
}

fn address_text(a: Option<&Address<'_>>) -> String {
    let mut s = String::new();
    if let Some(a) = a {
        for addr in a.iter() {
            if let Some(n) = &addr.name {
                s.push_str(n);
                s.push(' ');
            }
            if let Some(e) = &addr.address {
                s.push_str(e);
                s.push(' ');
            }
        }
    }
    s
}

/// Raw and decoded forms of a header, so both `=?utf-8?...` users and plain text match.
fn header_matches(t: &Target<'_, '_>, name: &str, needle: &str) -> bool {
    let Some(raw) = t.raw else { return false };
    let header = &raw[..mime::header_end(raw)];
    let fields = mime::header_fields(header, &[name.as_bytes().to_vec()], false);
    if fields.len() <= 2 {
        // Not present: SEARCH HEADER name "" matches only messages that have the field.
        return false;
    }
    if bytes_contains_ci(&fields, needle) {
        return true;
    }
    let Some(m) = t.parsed else { return false };
    let decoded = match name.to_ascii_lowercase().as_str() {
        "from" => address_text(m.from()),
        "to" => address_text(m.to()),
        "cc" => address_text(m.cc()),
        "bcc" => address_text(m.bcc()),
        "subject" => m.subject().unwrap_or_default().to_string(),
        _ => return false,
    };
    contains_ci(&decoded, needle)
}

fn body_matches(t: &Target<'_, '_>, needle: &str) -> bool {
    let Some(raw) = t.raw else { return false };
    if bytes_contains_ci(&raw[mime::header_end(raw)..], needle) {
        return true;
    }
    // Decoded text parts (quoted-printable / base64 bodies).
    t.parsed.is_some_and(|m| {
        (0..m.text_body_count()).any(|i| m.body_text(i).is_some_and(|b| contains_ci(&b, needle)))
    })
}

fn sent_date(t: &Target<'_, '_>) -> Option<chrono::NaiveDate> {
    let d = t.parsed?.date()?;
    chrono::NaiveDate::from_ymd_opt(i32::from(d.year), u32::from(d.month), u32::from(d.day))
}

fn internal_date(e: &Entry) -> chrono::NaiveDate {
    let secs = e
        .date
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    chrono::DateTime::from_timestamp(secs, 0)
        .unwrap_or_default()
        .date_naive()
}

fn astr(a: &impl AsRef<[u8]>) -> String {
    String::from_utf8_lossy(a.as_ref()).into_owned()
}

/// Evaluates `key` for one message.
pub fn matches(key: &SearchKey<'_>, t: &Target<'_, '_>) -> bool {
    use SearchKey::*;
    let e = t.entry;
    match key {
        And(keys) => keys.as_ref().iter().all(|k| matches(k, t)),
        Not(k) => !matches(k, t),
        Or(a, b) => matches(a, t) || matches(b, t),
        All => true,
        SequenceSet(set) => set_contains(&bounds(set, t.largest_seq), t.seq),
        Uid(set) => set_contains(&bounds(set, t.largest_uid), e.uid),
        Answered => e.has_flag("\\Answered"),
        Unanswered => !e.has_flag("\\Answered"),
        Deleted => e.has_flag("\\Deleted"),
        Undeleted => !e.has_flag("\\Deleted"),
        Draft => e.has_flag("\\Draft"),
        Undraft => !e.has_flag("\\Draft"),
        Flagged => e.has_flag("\\Flagged"),
        Unflagged => !e.has_flag("\\Flagged"),
        Seen => e.has_flag("\\Seen"),
        Unseen => !e.has_flag("\\Seen"),
        Keyword(k) => e.has_flag(k.inner()),
        Unkeyword(k) => !e.has_flag(k.inner()),
        Recent => e.recent,
        New => e.recent && !e.has_flag("\\Seen"),
        Old => !e.recent,
        Larger(n) => e.size > u64::from(*n),
        Smaller(n) => e.size < u64::from(*n),
        Before(d) => internal_date(e) < *d.as_ref(),
        On(d) => internal_date(e) == *d.as_ref(),
        Since(d) => internal_date(e) >= *d.as_ref(),
        SentBefore(d) => sent_date(t).is_some_and(|s| s < *d.as_ref()),
        SentOn(d) => sent_date(t).is_some_and(|s| s == *d.as_ref()),
        SentSince(d) => sent_date(t).is_some_and(|s| s >= *d.as_ref()),
        From(s) => header_matches(t, "From", &astr(s)),
        To(s) => header_matches(t, "To", &astr(s)),
        Cc(s) => header_matches(t, "Cc", &astr(s)),
        Bcc(s) => header_matches(t, "Bcc", &astr(s)),
        Subject(s) => header_matches(t, "Subject", &astr(s)),
        Header(name, value) => header_matches(t, &astr(name), &astr(value)),
        Body(s) => body_matches(t, &astr(s)),
        Text(s) => {
            let needle = astr(s);
            t.raw
                .is_some_and(|raw| bytes_contains_ci(&raw[..mime::header_end(raw)], &needle))
                || body_matches(t, &needle)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn keys_on_index_and_text() {
        let raw = b"From: Alice <alice@example.test>\r\nSubject: =?utf-8?q?Caf=C3=A9?= plans\r\nDate: Tue, 2 Jan 2024 10:00:00 +0100\r\n\r\nSee you at noon.\r\n";
        let parsed = mime::parse(raw);
        let entry = Entry {
            uid: 7,
            flags: vec!["\\Seen".into()],
            size: raw.len() as u64,
            date: UNIX_EPOCH + Duration::from_secs(1_704_186_000),
            recent: false,
        };
        let t = Target {
            seq: 2,
            entry: &entry,
            largest_seq: 3,
            largest_uid: 9,
            raw: Some(raw),
            parsed: parsed.as_ref(),
        };
        let key = |s: &str| -> SearchKey<'static> {
            use imap_codec::decode::Decoder;
            let line = format!("a SEARCH {s}\r\n");
            let (_, cmd) = imap_codec::CommandCodec::default()
                .decode_static(line.as_bytes())
                .unwrap();
            match cmd.body {
                imap_codec::imap_types::command::CommandBody::Search { criteria, .. } => criteria,
                _ => unreachable!(),
            }
        };
        assert!(matches(&key("SEEN"), &t));
        assert!(!matches(&key("UNSEEN"), &t));
        assert!(matches(&key("FROM alice"), &t));
        assert!(matches(&key("SUBJECT {5}\r\ncafé"), &t), "decoded subject");
        assert!(matches(&key("SUBJECT plans"), &t));
        assert!(!matches(&key("SUBJECT nothing"), &t));
        assert!(matches(&key("BODY noon"), &t));
        assert!(matches(&key("TEXT alice"), &t));
        assert!(matches(&key("UID 5:*"), &t));
        assert!(matches(&key("2"), &t));
        assert!(matches(&key("NOT 1"), &t));
        assert!(!matches(&key("OR 1 3"), &t));
        assert!(matches(&key("OR FLAGGED SEEN"), &t));
        assert!(matches(&key("LARGER 10 SMALLER 1000"), &t));
        assert!(matches(&key("SINCE 1-Jan-2024 BEFORE 3-Jan-2024"), &t));
        assert!(matches(&key("SENTON 2-Jan-2024"), &t));
        assert!(!matches(&key("SENTSINCE 3-Jan-2024"), &t));
        assert!(needs_body(&key("OR SEEN BODY x")));
        assert!(!needs_body(&key("NOT SEEN UID 1:4")));
    }
}
