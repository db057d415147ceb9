//! Turning a message into the set of tokens the Bayes filter counts.
//!
//! Choices follow what worked for SpamBayes and bogofilter: each token is
//! counted once per message; header words carry their header's name
//! (`subject:free` is not `free` in the body); URLs give their host and its
//! parent domains; words keep their case (as in bogofilter: `FREE` and
//! `free` are different evidence, and cross-validation agreed) and are
//! kept between 3 and 30 characters; longer runs only say how long they
//! were. Our own and other
//! filters' verdict headers are never tokenized, or the filter would learn
//! from itself.

use std::collections::HashSet;

use crate::mime::{decode_encoded_words, Parsed};

const MIN_WORD: usize = 3;
const MAX_WORD: usize = 30;

/// Headers whose words are tokenized with the header name as prefix.
const PREFIXED_HEADERS: &[&str] = &[
    "subject",
    "from",
    "to",
    "cc",
    "reply-to",
    "return-path",
    "sender",
    "x-mailer",
    "user-agent",
    "content-type",
    "list-id",
    "list-unsubscribe",
    "precedence",
    "x-priority",
    "x-msmail-priority",
    "organization",
    "message-id",
    "received",
    "mime-version",
    "content-transfer-encoding",
    "errors-to",
    "x-originating-ip",
    "importance",
    "x-mimeole",
];

/// Verdict headers of filters (ours included) must not feed the filter.
fn is_verdict_header(name: &str) -> bool {
    name.starts_with("x-spam")
        || name.starts_with("x-virus")
        || name.starts_with("x-palisade")
        || name == "authentication-results"
        || name.starts_with("x-bogosity")
}

/// The distinct tokens of a parsed message.
pub fn tokens(msg: &Parsed) -> HashSet<String> {
    let mut out = HashSet::with_capacity(512);
    for (name, value) in &msg.headers {
        if is_verdict_header(name) {
            continue;
        }
        // Which headers are present, and how they are spelled, differs
        // between mailers (spamware omits some, adds odd ones).
        out.insert(format!("hdr:{name}"));
        if !PREFIXED_HEADERS.contains(&name.as_str()) {
            continue;
        }
        let value = if name == "subject" || name == "from" || name == "to" {
            decode_encoded_words(value)
        } else {
            value.clone()
        };
        if name == "subject" {
            subject_shape(&value, &mut out);
        }
        let prefix = match name.as_str() {
            "received" => "rcvd",
            "message-id" => "msgid",
            other => other,
        };
        words(&value, Some(prefix), &mut out);
    }
    for ty in &msg.other_parts {
        out.insert(format!("part:{ty}"));
    }
    for f in &msg.filenames {
        if let Some((_, ext)) = f.rsplit_once('.') {
            out.insert(format!("fileext:{}", ext.to_ascii_lowercase()));
        }
    }
    if !msg.has_plain && msg.texts.iter().any(|t| t.html) {
        out.insert("shape:html-only".into());
    }
    for text in &msg.texts {
        if text.html {
            html_tokens(&text.body, &mut out);
        } else {
            body_tokens(&text.body, &mut out);
        }
    }
    out
}

fn subject_shape(subject: &str, out: &mut HashSet<String>) {
    let letters: Vec<char> = subject.chars().filter(|c| c.is_alphabetic()).collect();
    if letters.len() >= 6 && letters.iter().all(|c| c.is_uppercase()) {
        out.insert("subject-shape:all-caps".into());
    }
    if subject.contains("!!") {
        out.insert("subject-shape:bangs".into());
    }
    if subject.trim().is_empty() {
        out.insert("subject-shape:empty".into());
    }
}

fn body_tokens(text: &str, out: &mut HashSet<String>) {
    urls(text, out);
    words(text, None, out);
}

/// HTML: the visible words, the URLs, and which tags are used (spam likes
/// fonts, tables and images; people's mail clients less so).
fn html_tokens(html: &str, out: &mut HashSet<String>) {
    urls(html, out);
    let mut visible = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(lt) = rest.find('<') {
        visible.push_str(&rest[..lt]);
        visible.push(' ');
        let tag_and_more = &rest[lt + 1..];
        let end = tag_and_more.find('>').unwrap_or(tag_and_more.len());
        let tag = &tag_and_more[..end];
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        if !name.is_empty() && name.len() <= 10 {
            out.insert(format!("tag:{name}"));
        }
        rest = tag_and_more.get(end + 1..).unwrap_or("");
    }
    visible.push_str(rest);
    let visible = decode_entities(&visible);
    words(&visible, None, out);
}

fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    s.replace("&nbsp;", " ")
        .replace("&amp;", "&")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
}

/// Host names of http(s) URLs, with each parent domain: `url:www.x.com`,
/// `url:x.com`, `url:com`.
fn urls(text: &str, out: &mut HashSet<String>) {
    let lower_needed = text.contains("HTTP");
    let owned;
    let text = if lower_needed {
        owned = text.to_ascii_lowercase();
        owned.as_str()
    } else {
        text
    };
    let mut rest = text;
    while let Some(i) = rest.find("http") {
        let after = &rest[i + 4..];
        let after = after.strip_prefix('s').unwrap_or(after);
        rest = after;
        let Some(after) = after.strip_prefix("://") else {
            continue;
        };
        let host: String = after
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '-')
            .collect::<String>()
            .to_ascii_lowercase();
        if host.is_empty() {
            continue;
        }
        if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            out.insert("url:ip-address".into());
            continue;
        }
        let mut h = host.as_str();
        loop {
            out.insert(format!("url:{h}"));
            match h.split_once('.') {
                Some((_, parent)) if !parent.is_empty() => h = parent,
                _ => break,
            }
        }
        let path = &after[host.len().min(after.len())..];
        if path.starts_with(':') {
            out.insert("url:has-port".into());
        }
    }
}

/// Splits on anything that is not a letter, digit or one of `'$!-.`
/// inside a word; trims punctuation at the ends.
fn words(text: &str, prefix: Option<&str>, out: &mut HashSet<String>) {
    for raw in text.split(|c: char| {
        !(c.is_alphanumeric() || matches!(c, '\'' | '$' | '!' | '-' | '.' | '@' | '_'))
    }) {
        let w = raw.trim_matches(|c: char| matches!(c, '.' | '-' | '\'' | '!' | '_'));
        let n = w.chars().count();
        if n < MIN_WORD {
            // Short tokens carry little except money and exclamation.
            if w.starts_with('$') && n >= 2 {
                out.insert(token(prefix, w));
            }
            continue;
        }
        if n > MAX_WORD {
            // SpamBayes "skip" tokens: long runs are base64 junk,
            // hashes, or URLs; their length class is what matters.
            let first = w.chars().next().unwrap_or('x');
            let class = if first.is_ascii_digit() { '9' } else { 'a' };
            out.insert(token(prefix, &format!("skip:{class}{}", n / 10 * 10)));
            continue;
        }
        if w.bytes().all(|b| b.is_ascii_digit()) && prefix.is_none() {
            // Bare numbers in bodies are mostly noise (dates, sizes);
            // their length is kept.
            out.insert(format!("num:{n}"));
            continue;
        }
        let word = w.to_string();
        if let Some((_, domain)) = word.split_once('@') {
            if !domain.is_empty() {
                out.insert(token(prefix, &format!("email:{domain}")));
            }
        }
        out.insert(token(prefix, &word));
        if prefix.is_none()
            && n >= 4
            && w.chars().all(|c| !c.is_lowercase())
            && w.chars().any(|c| c.is_alphabetic())
        {
            // Shouting is also evidence of its own.
            out.insert(format!("caps:{word}"));
        }
    }
}

fn token(prefix: Option<&str>, w: &str) -> String {
    match prefix {
        Some(p) => {
            let mut s = String::with_capacity(p.len() + 1 + w.len());
            s.push_str(p);
            s.push(':');
            s.push_str(w);
            s
        }
        None => w.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mime::parse;

    #[test]
    fn header_words_carry_their_header_name() {
        let t = tokens(&parse(
            b"Subject: FREE money now\r\n\r\nhello there friend\r\n",
        ));
        assert!(t.contains("subject:FREE"));
        assert!(t.contains("subject:money"));
        assert!(t.contains("hello"));
        assert!(!t.contains("FREE"));
    }

    #[test]
    fn verdict_headers_are_not_learned() {
        let t = tokens(&parse(
            b"X-Spam-Flag: YES\r\nX-Spam-Score: 9\r\n\r\nbody text\r\n",
        ));
        assert!(!t.iter().any(|w| w.contains("x-spam")));
    }

    #[test]
    fn urls_give_host_and_parents() {
        let t = tokens(&parse(
            b"\r\nsee http://www.cheap-pills.example.com/buy now\r\n",
        ));
        assert!(t.contains("url:www.cheap-pills.example.com"));
        assert!(t.contains("url:example.com"));
        assert!(t.contains("url:com"));
    }

    #[test]
    fn html_tags_are_tokens_and_text_is_visible_words() {
        let t = tokens(&parse(
            b"Content-Type: text/html\r\n\r\n<html><font color=red>Buy <b>viagra</b></font></html>\r\n",
        ));
        assert!(t.contains("tag:font"));
        assert!(t.contains("viagra"));
        assert!(t.contains("shape:html-only"));
        assert!(!t.contains("color=red"));
    }
}
