//! DM23 regular-expression rules on the HELO name, the envelope and the
//! headers: each rule rejects (`550 5.7.1`), tempfails (`451 4.7.1`) or
//! tags (adds `X-Palisade-Rule:` for the antispam stage and MUA filters).
//! Patterns are case-insensitive and compiled once at start-up; a bad one
//! stops the node with the rule's index.

use palisade_config::{Dm23Regex, RegexAction};
use palisade_smtp_proto::Reply;
use regex::{Regex, RegexBuilder};

/// What a field the rules look at is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field<'a> {
    Helo,
    MailFrom,
    RcptTo,
    /// A header by name (compared case-insensitively).
    Header(&'a str),
}

struct Rule {
    on: String,
    re: Regex,
    action: RegexAction,
    message: Option<String>,
}

/// What matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hit {
    Refuse(Reply),
    Tag(String),
}

pub struct Rules {
    rules: Vec<Rule>,
}

impl Rules {
    pub fn new(c: &Dm23Regex) -> anyhow::Result<Self> {
        let mut rules = Vec::new();
        for (i, r) in c.rules.iter().enumerate() {
            let re = RegexBuilder::new(&r.pattern)
                .case_insensitive(true)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| anyhow::anyhow!("dm23_regex.rules.{i}.pattern: {e}"))?;
            rules.push(Rule {
                on: r.on.to_ascii_lowercase(),
                re,
                action: r.action,
                message: r.message.clone(),
            });
        }
        Ok(Rules { rules })
    }

    fn applies(rule: &str, field: Field) -> bool {
        match field {
            Field::Helo => rule == "helo",
            Field::MailFrom => rule == "mail_from",
            Field::RcptTo => rule == "rcpt_to",
            Field::Header(name) => rule
                .strip_prefix("header:")
                .is_some_and(|h| h == "*" || h.eq_ignore_ascii_case(name)),
        }
    }

    /// Every rule hit on `value`; a refusal ends the search.
    pub fn check(&self, field: Field, value: &str) -> Vec<Hit> {
        let mut hits = Vec::new();
        for r in &self.rules {
            if !Self::applies(&r.on, field) || !r.re.is_match(value) {
                continue;
            }
            let text = r
                .message
                .clone()
                .unwrap_or_else(|| format!("Message content rejected ({})", r.re.as_str()));
            match r.action {
                RegexAction::Reject => {
                    hits.push(Hit::Refuse(Reply::enhanced(550, (5, 7, 1), text)));
                    break;
                }
                RegexAction::Tempfail => {
                    hits.push(Hit::Refuse(Reply::enhanced(451, (4, 7, 1), text)));
                    break;
                }
                RegexAction::Tag => hits.push(Hit::Tag(text)),
            }
        }
        hits
    }

    pub fn has_header_rules(&self) -> bool {
        self.rules.iter().any(|r| r.on.starts_with("header:"))
    }
}

/// The message's header fields, unfolded, as (name, value).
pub fn headers(message: &[u8]) -> Vec<(String, String)> {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .unwrap_or(message.len());
    let text = String::from_utf8_lossy(&message[..end]);
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((n, v)) = line.split_once(':') {
            out.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_config::RegexRule;

    fn rule(on: &str, pattern: &str, action: RegexAction) -> RegexRule {
        RegexRule {
            on: on.into(),
            pattern: pattern.into(),
            action,
            message: None,
        }
    }

    #[test]
    fn rules_reject_tempfail_and_tag() {
        let r = Rules::new(&Dm23Regex {
            enabled: true,
            rules: vec![
                rule("header:Subject", "viagra", RegexAction::Reject),
                rule("helo", r"^\d+-\d+-\d+", RegexAction::Tempfail),
                rule("header:*", "lottery", RegexAction::Tag),
            ],
        })
        .unwrap();
        let hits = r.check(Field::Header("subject"), "Cheap VIAGRA");
        assert!(matches!(&hits[0], Hit::Refuse(r) if r.code == 550));
        let hits = r.check(Field::Helo, "1-2-3.dsl.test");
        assert!(matches!(&hits[0], Hit::Refuse(r) if r.code == 451));
        assert!(matches!(
            &r.check(Field::Header("X-Foo"), "lottery win")[0],
            Hit::Tag(_)
        ));
        assert!(r.check(Field::Header("Subject"), "hello").is_empty());
        let h = headers(b"Subject: a\r\n b\r\nFrom: x\r\n\r\nbody: no\r\n");
        assert_eq!(
            h,
            vec![
                ("Subject".into(), "a b".into()),
                ("From".into(), "x".into())
            ]
        );
    }
}
