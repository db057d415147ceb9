//! Header heuristics: shapes of a message that mailers used by people
//! rarely produce. Each is weak alone; they are worth little points.

use crate::mime::Parsed;

/// A heuristic that fired, with its points.
#[derive(Clone, Debug, PartialEq)]
pub struct Heuristic {
    pub name: &'static str,
    pub points: f64,
}

pub fn check(msg: &Parsed) -> Vec<Heuristic> {
    let mut out = Vec::new();
    let mut hit = |name, points| out.push(Heuristic { name, points });
    if msg.header("date").is_none() {
        hit("MISSING_DATE", 0.5);
    }
    if msg.header("message-id").is_none() {
        hit("MISSING_MESSAGE_ID", 0.5);
    }
    if msg.header("to").is_none() && msg.header("cc").is_none() {
        hit("NO_VISIBLE_RECIPIENT", 0.3);
    }
    if !msg.has_plain && msg.texts.iter().any(|t| t.html) {
        hit("HTML_ONLY", 0.3);
    }
    if let Some(subject) = msg.header("subject") {
        let letters: Vec<char> = subject.chars().filter(|c| c.is_alphabetic()).collect();
        if letters.len() >= 10 && letters.iter().all(|c| c.is_uppercase()) {
            hit("SUBJECT_ALL_CAPS", 0.5);
        }
    }
    if let Some(from) = msg.header("from") {
        // `"paypal@bank.example" <x@elsewhere.example>`: a display name
        // that is itself an address, and not the real one.
        if let Some((display, addr)) = from.rsplit_once('<') {
            let display = display.trim().trim_matches('"').to_ascii_lowercase();
            let addr = addr.trim_end_matches('>').to_ascii_lowercase();
            if display.contains('@') && !display.contains(&addr) {
                hit("FROM_DISPLAY_ADDRESS_MISMATCH", 1.0);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mime::parse;

    fn names(m: &[u8]) -> Vec<&'static str> {
        check(&parse(m)).into_iter().map(|h| h.name).collect()
    }

    #[test]
    fn a_normal_message_fires_nothing() {
        assert!(names(b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <a@b>\r\nTo: x@y\r\nFrom: A <a@b>\r\nSubject: Lunch\r\n\r\nhi\r\n").is_empty());
    }

    #[test]
    fn spammy_shapes_fire() {
        let n = names(b"From: \"service@bank.example\" <x@evil.example>\r\nSubject: WINNER WINNER CHICKEN\r\nContent-Type: text/html\r\n\r\n<b>hi</b>\r\n");
        for want in [
            "MISSING_DATE",
            "MISSING_MESSAGE_ID",
            "NO_VISIBLE_RECIPIENT",
            "HTML_ONLY",
            "SUBJECT_ALL_CAPS",
            "FROM_DISPLAY_ADDRESS_MISMATCH",
        ] {
            assert!(n.contains(&want), "{want} not in {n:?}");
        }
    }
}
