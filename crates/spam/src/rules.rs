//! DM23: regular-expression rules on headers and body.
//!
//! A rule names where it looks (one header, every header, or the decoded
//! body text) and what a match is worth. The built-in set is small and
//! worth little on purpose: the Bayes filter carries the verdict, rules
//! add evidence that words alone miss. Sites add their own rules in the
//! configuration (`[[stage.antispam.spam.rule]]`).

use regex::{Regex, RegexBuilder};

use crate::mime::Parsed;

/// Where a rule looks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleTarget {
    /// The value of one header (name case-insensitive), every occurrence.
    Header(String),
    /// Every header line, as `name: value`.
    AnyHeader,
    /// The decoded text of every text part.
    Body,
}

impl RuleTarget {
    /// `header:Subject`, `headers` or `body`.
    pub fn parse(s: &str) -> Option<RuleTarget> {
        match s {
            "body" => Some(RuleTarget::Body),
            "headers" => Some(RuleTarget::AnyHeader),
            _ => s
                .strip_prefix("header:")
                .filter(|h| !h.is_empty())
                .map(|h| RuleTarget::Header(h.to_ascii_lowercase())),
        }
    }
}

/// A rule as written in the configuration.
#[derive(Clone, Debug)]
pub struct RuleSpec {
    pub name: String,
    pub target: String,
    pub pattern: String,
    pub score: f64,
}

pub struct Rule {
    pub name: String,
    target: RuleTarget,
    regex: Regex,
    pub score: f64,
}

impl Rule {
    pub fn compile(spec: &RuleSpec) -> Result<Rule, String> {
        let target = RuleTarget::parse(&spec.target).ok_or_else(|| {
            format!(
                "rule {}: target `{}` is not `body`, `headers` or `header:NAME`",
                spec.name, spec.target
            )
        })?;
        let regex = RegexBuilder::new(&spec.pattern)
            .case_insensitive(true)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| format!("rule {}: {e}", spec.name))?;
        Ok(Rule {
            name: spec.name.clone(),
            target,
            regex,
            score: spec.score,
        })
    }

    pub fn matches(&self, msg: &Parsed) -> bool {
        match &self.target {
            RuleTarget::Header(h) => msg.headers_named(h).any(|v| self.regex.is_match(v)),
            RuleTarget::AnyHeader => msg
                .headers
                .iter()
                .any(|(n, v)| self.regex.is_match(&format!("{n}: {v}"))),
            RuleTarget::Body => msg.texts.iter().any(|t| self.regex.is_match(&t.body)),
        }
    }
}

/// The rules every deployment starts with.
pub fn builtin() -> Vec<RuleSpec> {
    let r = |name: &str, target: &str, pattern: &str, score: f64| RuleSpec {
        name: name.into(),
        target: target.into(),
        pattern: pattern.into(),
        score,
    };
    vec![
        r(
            "SUBJ_MONEY",
            "header:subject",
            r"\$\$\$|\b(?:cash|money|income|profit)s?\b.*!",
            0.8,
        ),
        r(
            "SUBJ_FREE_SHOUT",
            "header:subject",
            r"\bFREE\b.*!|!.*\bFREE\b",
            0.8,
        ),
        r(
            "BODY_CLICK_HERE",
            "body",
            r"\bclick\s+(?:here|below)\b",
            0.5,
        ),
        r(
            "BODY_REMOVE_LIST",
            "body",
            r"(?:to\s+be\s+removed|remove\s+me|unsubscribe\s+from\s+this\s+(?:list|mailing))",
            0.5,
        ),
        r(
            "BODY_GUARANTEE",
            "body",
            r"\b100%\s+(?:free|guaranteed|satisfaction)\b",
            1.0,
        ),
        r(
            "BODY_NOT_SPAM_CLAIM",
            "body",
            r"this\s+(?:is\s+not|isn't)\s+(?:a\s+)?spam",
            1.5,
        ),
        r(
            "BODY_PHARMA",
            "body",
            r"\b(?:viagra|cialis|phentermine|xanax|valium)\b",
            1.5,
        ),
        r(
            "BODY_ACT_NOW",
            "body",
            r"\b(?:act\s+now|limited\s+time\s+offer|order\s+(?:now|today))\b",
            0.5,
        ),
        r("FROM_NUMERIC_LOCAL", "header:from", r"\b[a-z]*\d{5,}@", 0.5),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mime::parse;

    #[test]
    fn rules_look_where_they_are_told() {
        let spec = RuleSpec {
            name: "T".into(),
            target: "header:subject".into(),
            pattern: "free".into(),
            score: 1.0,
        };
        let rule = Rule::compile(&spec).unwrap();
        assert!(rule.matches(&parse(b"Subject: FREE stuff\r\n\r\nhello\r\n")));
        assert!(!rule.matches(&parse(b"Subject: hello\r\n\r\nfree\r\n")));
    }

    #[test]
    fn bad_target_and_bad_regex_are_errors() {
        let mut spec = RuleSpec {
            name: "T".into(),
            target: "nowhere".into(),
            pattern: "x".into(),
            score: 1.0,
        };
        assert!(Rule::compile(&spec).is_err());
        spec.target = "body".into();
        spec.pattern = "(".into();
        assert!(Rule::compile(&spec).is_err());
    }

    #[test]
    fn builtin_rules_compile() {
        for spec in builtin() {
            Rule::compile(&spec).unwrap();
        }
    }
}
