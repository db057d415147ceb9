//! The one configuration file that describes a whole Palisade architecture.
//!
//! Every stage process loads the whole file and picks its own node with
//! `--node NAME`; `palisade review` and `palisade audit` read the same file.
//! Loading collects *every* error (not just the first), each with the file,
//! line and key it concerns, so `palisade check-config` can print them all.

mod content;
mod duration;
mod mechanisms;
mod model;
mod outbound;
mod state;
mod validate;

// Issue 9: shared policy state and PROXY protocol settings.
pub use state::{trusted_proxies, StateBackend, StateSettings};

pub use content::{CutThroughSettings, ScannerUnavailable, SpamRule, SpamSettings, VirusSettings};
pub use duration::Seconds;
pub use mechanisms::*;
pub use model::*;
pub use outbound::{static_route, DaneSettings, DkimKey, OutboundSettings, RequireTls, RouteTable};

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem found in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line, when the problem can be placed in the file.
    pub line: Option<usize>,
    /// Dotted key path, e.g. `node.mx-1.smtp`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: ", self.file.display(), line)?,
            None => write!(f, "{}: ", self.file.display())?,
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// All the errors of one load, printable one per line.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads, parses and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: None,
            key: String::new(),
            message: format!("cannot read: {e}"),
        }])
    })?;
    parse(path, &text)
}

/// Parses and validates configuration text; `path` is only used in errors.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
    let located = Locator::new(text);
    let config: Config = match toml::from_str(text) {
        Ok(c) => c,
        Err(e) => {
            let line = e.span().map(|s| located.line_of(s.start));
            return Err(ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line,
                key: String::new(),
                message: e.message().trim().to_string(),
            }]));
        }
    };
    let problems = validate::validate(&config);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(
            problems
                .into_iter()
                .map(|(key, message)| ConfigError {
                    file: path.to_path_buf(),
                    line: located.line_of_key(&key),
                    key: key.join("."),
                    message,
                })
                .collect(),
        ))
    }
}

/// Maps byte offsets and key paths back to line numbers.
struct Locator<'a> {
    text: &'a str,
    doc: Option<toml_edit::ImDocument<&'a str>>,
}

impl<'a> Locator<'a> {
    fn new(text: &'a str) -> Self {
        Locator {
            text,
            doc: toml_edit::ImDocument::parse(text).ok(),
        }
    }

    fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .bytes()
            .filter(|&b| b == b'\n')
            .count()
            + 1
    }

    /// The line of the deepest part of `key` present in the document, so a
    /// missing key is reported at the table that should hold it.
    fn line_of_key(&self, key: &[String]) -> Option<usize> {
        let doc = self.doc.as_ref()?;
        deepest_span(doc.as_item(), key, None).map(|o| self.line_of(o))
    }
}

fn deepest_span(item: &toml_edit::Item, key: &[String], best: Option<usize>) -> Option<usize> {
    use toml_edit::{Item, Value};
    let Some((part, rest)) = key.split_first() else {
        return best;
    };
    match item {
        Item::Table(t) => match t.get_key_value(part) {
            Some((k, v)) => {
                let here = v.span().or_else(|| k.span()).map(|s| s.start).or(best);
                deepest_span(v, rest, here)
            }
            None => best,
        },
        Item::ArrayOfTables(a) => match part.parse::<usize>().ok().and_then(|i| a.get(i)) {
            Some(t) => {
                let here = t.span().map(|s| s.start).or(best);
                // Tables inside an array are not Items; take one step by hand.
                match rest.split_first() {
                    None => here,
                    Some((p, r)) => match t.get_key_value(p) {
                        Some((k, v)) => {
                            let here = v.span().or_else(|| k.span()).map(|s| s.start).or(here);
                            deepest_span(v, r, here)
                        }
                        None => here,
                    },
                }
            }
            None => best,
        },
        Item::Value(Value::InlineTable(t)) => match t.get_key_value(part) {
            Some((k, v)) => {
                let here = v.span().or_else(|| k.span()).map(|s| s.start).or(best);
                deepest_span(v, rest, here)
            }
            None => best,
        },
        _ => best,
    }
}

/// The problems `parse` finds in `text`, as `key: message` (tests).
#[cfg(test)]
pub(crate) fn test_errors(text: &str) -> Vec<String> {
    match parse(Path::new("t.toml"), text) {
        Ok(_) => Vec::new(),
        Err(e) => {
            e.0.iter()
                .map(|e| format!("{}: {}", e.key, e.message))
                .collect()
        }
    }
}
