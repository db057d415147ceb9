//! palisade-spam: the scoring of stage D (antispam).
//!
//! A message's score is the sum of points from several sources, each
//! reported separately so that an operator (and the `X-Spam-Report`
//! header) can see why a message scored what it did:
//!
//! * DM24 Bayes ([`bayes`], tokens from [`tokenize`], counts in LMDB:
//!   [`bayes_db`]): the probability p maps linearly onto points, from
//!   `bayes_ham_points` at p = 0 to `bayes_spam_points` at p = 1 (by
//!   default -5 and +15, so that p = 0.5, where cross-validation puts the
//!   spam/ham boundary, is worth exactly the tag threshold of 5);
//! * DM23 regular-expression rules on headers and body ([`rules`]);
//! * header heuristics ([`heuristics`]);
//! * the MX's SPF / DKIM / DMARC verdicts ([`authres`]);
//! * GTUBE ([`gtube`]).
//!
//! The crate decides nothing: the stage compares the score with its
//! thresholds (tag, quarantine) per flow.
//!
//! # Security
//! Reads untrusted message bytes. Parsing never fails and is bounded
//! (parts, depth, decoded text size); rule regexes are size-limited and
//! run in linear time (the `regex` crate has no backtracking).

pub mod authres;
pub mod bayes;
pub mod bayes_db;
pub mod corpus;
pub mod eval;
pub mod gtube;
pub mod heuristics;
pub mod mime;
pub mod rules;
pub mod tokenize;

use std::fmt::Write as _;

pub use bayes::{BayesParams, BayesResult, MemoryCounts, TokenCounts};
pub use bayes_db::BayesDb;
pub use rules::RuleSpec;

#[derive(Debug, thiserror::Error)]
pub enum SpamError {
    #[error("token database: {0}")]
    Lmdb(#[from] lmdb::Error),
    #[error("token database record for `{0}` is corrupt")]
    Corrupt(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Rule(String),
}

/// How the scorer is set up (from `[stage.antispam.spam]`).
#[derive(Clone, Debug)]
pub struct ScorerSettings {
    pub bayes: BayesParams,
    /// Points at Bayes p = 0 and p = 1 (linear in between).
    pub bayes_ham_points: f64,
    pub bayes_spam_points: f64,
    /// Rules in addition to (or, with `builtin_rules` off, instead of) the
    /// built-in set.
    pub rules: Vec<RuleSpec>,
    pub builtin_rules: bool,
    /// Our host name: only Authentication-Results naming it are believed.
    pub hostname: String,
}

impl ScorerSettings {
    /// The settings of `[stage.antispam.spam]` (and the gateway hostname).
    pub fn from_config(config: &palisade_config::Config) -> ScorerSettings {
        let s = config.spam();
        ScorerSettings {
            bayes_ham_points: s.bayes_ham_points,
            bayes_spam_points: s.bayes_spam_points,
            builtin_rules: s.builtin_rules,
            rules: s
                .rule
                .iter()
                .map(|r| RuleSpec {
                    name: r.name.clone(),
                    target: r.target.clone(),
                    pattern: r.pattern.clone(),
                    score: r.score,
                })
                .collect(),
            hostname: config.gateway.hostname.clone(),
            ..ScorerSettings::default()
        }
    }
}

impl Default for ScorerSettings {
    fn default() -> Self {
        ScorerSettings {
            bayes: BayesParams::default(),
            bayes_ham_points: -5.0,
            bayes_spam_points: 15.0,
            rules: Vec::new(),
            builtin_rules: true,
            hostname: "localhost".into(),
        }
    }
}

/// One source's contribution to a score.
#[derive(Clone, Debug, PartialEq)]
pub struct Hit {
    /// `BAYES`, `GTUBE`, a rule or heuristic name, `SPF_FAIL`...
    pub name: String,
    pub points: f64,
    /// A short note for the report (the Bayes probability...).
    pub detail: String,
    pub source: Source,
}

/// Which kind of check a hit came from (a metrics label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Bayes,
    Rule,
    Heuristic,
    AuthResults,
    Gtube,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Bayes => "bayes",
            Source::Rule => "rule",
            Source::Heuristic => "heuristic",
            Source::AuthResults => "auth-results",
            Source::Gtube => "gtube",
        }
    }
}

/// The outcome of scoring one message.
#[derive(Clone, Debug)]
pub struct Analysis {
    pub score: f64,
    pub hits: Vec<Hit>,
    pub bayes: BayesResult,
}

impl Analysis {
    /// `X-Spam-Report`: every source with its points, folded for RFC 5322's
    /// line length. CRLF-terminated.
    pub fn report_header(&self) -> String {
        let mut h = format!("X-Spam-Report: score={:.2}", self.score);
        for hit in &self.hits {
            let _ = write!(h, ";\r\n\t{}={:+.2}", hit.name, hit.points);
            if !hit.detail.is_empty() {
                let _ = write!(h, " ({})", hit.detail);
            }
        }
        h.push_str("\r\n");
        h
    }
}

pub struct Scorer {
    settings: ScorerSettings,
    rules: Vec<rules::Rule>,
}

impl Scorer {
    pub fn new(settings: ScorerSettings) -> Result<Scorer, SpamError> {
        let mut specs = if settings.builtin_rules {
            rules::builtin()
        } else {
            Vec::new()
        };
        specs.extend(settings.rules.iter().cloned());
        let rules = specs
            .iter()
            .map(rules::Rule::compile)
            .collect::<Result<Vec<_>, _>>()
            .map_err(SpamError::Rule)?;
        Ok(Scorer { settings, rules })
    }

    /// Scores a message against the token counts in `db`.
    pub fn analyze(&self, raw: &[u8], db: &dyn TokenCounts) -> Analysis {
        let parsed = mime::parse(raw);
        let mut hits = Vec::new();
        if gtube::contains_gtube(raw) {
            hits.push(Hit {
                name: "GTUBE".into(),
                points: gtube::GTUBE_SCORE,
                detail: String::new(),
                source: Source::Gtube,
            });
        }
        let tokens = tokenize::tokens(&parsed);
        let bayes = bayes::classify(&tokens, db, &self.settings.bayes);
        if bayes.used_tokens > 0 {
            let mut detail = format!(
                "p={:.4} chi2={:.4} tokens={}",
                bayes.probability, bayes.chi_square, bayes.used_tokens
            );
            if let Some((t, _)) = bayes.top_spam.first() {
                let _ = write!(detail, " top-spam={}", sanitize(t));
            }
            if let Some((t, _)) = bayes.top_ham.first() {
                let _ = write!(detail, " top-ham={}", sanitize(t));
            }
            hits.push(Hit {
                name: "BAYES".into(),
                points: self.settings.bayes_ham_points
                    + bayes.probability
                        * (self.settings.bayes_spam_points - self.settings.bayes_ham_points),
                detail,
                source: Source::Bayes,
            });
        }
        for rule in &self.rules {
            if rule.matches(&parsed) {
                hits.push(Hit {
                    name: rule.name.clone(),
                    points: rule.score,
                    detail: String::new(),
                    source: Source::Rule,
                });
            }
        }
        for h in heuristics::check(&parsed) {
            hits.push(Hit {
                name: h.name.into(),
                points: h.points,
                detail: String::new(),
                source: Source::Heuristic,
            });
        }
        for f in authres::findings(&parsed, &self.settings.hostname) {
            hits.push(Hit {
                name: format!("{}_{}", f.method, f.result).to_ascii_uppercase(),
                points: f.points,
                detail: String::new(),
                source: Source::AuthResults,
            });
        }
        let score = hits.iter().map(|h| h.points).sum();
        Analysis { score, hits, bayes }
    }
}

/// Tokens go into a header: keep them printable and short.
fn sanitize(t: &str) -> String {
    t.chars()
        .filter(|c| c.is_ascii_graphic() && *c != ';' && *c != '(' && *c != ')')
        .take(40)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gtube_scores_above_the_tag_threshold_and_is_reported() {
        let scorer = Scorer::new(ScorerSettings::default()).unwrap();
        let mut m = b"Subject: test\r\n\r\n".to_vec();
        m.extend_from_slice(gtube::GTUBE);
        let a = scorer.analyze(&m, &MemoryCounts::default());
        assert!(a.score >= 10.0);
        let h = a.report_header();
        assert!(h.starts_with("X-Spam-Report: score=1"));
        assert!(h.contains("GTUBE=+10.00"));
        assert!(h.ends_with("\r\n"));
    }

    #[test]
    fn auth_results_for_our_host_add_points() {
        let settings = ScorerSettings {
            hostname: "mx.example.test".into(),
            ..ScorerSettings::default()
        };
        let scorer = Scorer::new(settings).unwrap();
        let m = b"Authentication-Results: mx.example.test; dmarc=fail header.from=x\r\nDate: x\r\nMessage-ID: <a@b>\r\nTo: a@b\r\nSubject: hi\r\n\r\nhello\r\n";
        let a = scorer.analyze(m, &MemoryCounts::default());
        assert_eq!(a.score, 3.0);
        assert!(a.report_header().contains("DMARC_FAIL=+3.00"));
    }
}
