//! SMTP command lines (RFC 5321 §4.1) parsed into [`Command`] values.
//!
//! # Security
//! Every input here comes straight from the network. The parser never
//! panics, never allocates more than the line it is given, and refuses NUL
//! and other control octets before looking at the verb.
//!
//! # Standards
//! RFC 5321 (SMTP), RFC 1870 (SIZE), RFC 6152 (8BITMIME), RFC 3030
//! (CHUNKING, BINARYMIME), RFC 3461 (DSN), RFC 4954 (AUTH), RFC 6531
//! (SMTPUTF8), RFC 3207 (STARTTLS).

use crate::reply::Reply;

/// Longest path we accept between `<` and `>` (RFC 5321 §4.5.3.1.3: 256
/// octets including the brackets).
const MAX_PATH: usize = 254;
/// Longest local part (RFC 5321 §4.5.3.1.1).
const MAX_LOCAL_PART: usize = 64;
/// Longest ENVID / ORCPT / XORIGIN value we keep (RFC 3461 §4.4: ENVID 100).
const MAX_PARAM_VALUE: usize = 500;
/// Longest cut-through wait an upstream hop may announce (`XCUT=`): ten
/// minutes, RFC 5321 §4.5.3.2.6's limit for the reply to the end of data.
const MAX_CUT_THROUGH_MS: u64 = 600_000;

/// One parsed SMTP command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Helo(String),
    Ehlo(String),
    /// `MAIL FROM:<path> params`; `from` is empty for the null reverse-path.
    Mail {
        from: String,
        params: MailParams,
    },
    /// `RCPT TO:<path> params`; `to` is `postmaster` for `<postmaster>`.
    Rcpt {
        to: String,
        params: RcptParams,
    },
    Data,
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop,
    Quit,
    StartTls,
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
    Vrfy(String),
    Expn(String),
    Help,
    /// A verb we do not know; holds the verb as sent.
    Unknown(String),
}

impl Command {
    /// The verb, upper case, for logs and the command table.
    pub fn verb(&self) -> &str {
        match self {
            Command::Helo(_) => "HELO",
            Command::Ehlo(_) => "EHLO",
            Command::Mail { .. } => "MAIL",
            Command::Rcpt { .. } => "RCPT",
            Command::Data => "DATA",
            Command::Bdat { .. } => "BDAT",
            Command::Rset => "RSET",
            Command::Noop => "NOOP",
            Command::Quit => "QUIT",
            Command::StartTls => "STARTTLS",
            Command::Auth { .. } => "AUTH",
            Command::Vrfy(_) => "VRFY",
            Command::Expn(_) => "EXPN",
            Command::Help => "HELP",
            Command::Unknown(_) => "UNKNOWN",
        }
    }
}

/// `BODY=` values (RFC 6152, RFC 3030).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyType {
    SevenBit,
    EightBitMime,
    BinaryMime,
}

impl BodyType {
    pub fn as_str(self) -> &'static str {
        match self {
            BodyType::SevenBit => "7BIT",
            BodyType::EightBitMime => "8BITMIME",
            BodyType::BinaryMime => "BINARYMIME",
        }
    }
}

/// `RET=` values (RFC 3461 §4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ret {
    Full,
    Hdrs,
}

impl Ret {
    pub fn as_str(self) -> &'static str {
        match self {
            Ret::Full => "FULL",
            Ret::Hdrs => "HDRS",
        }
    }
}

/// Parameters of `MAIL FROM` (RFC 5321 §4.1.1.11 and the extensions above).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailParams {
    pub size: Option<u64>,
    pub body: Option<BodyType>,
    pub smtputf8: bool,
    pub ret: Option<Ret>,
    /// `ENVID=`, kept in its xtext form.
    pub envid: Option<String>,
    /// `AUTH=`, kept in its xtext form (`<>` when the submitter is unknown).
    pub auth: Option<String>,
    /// Private `XORIGIN=<token>`: the origin class an upstream palisade hop
    /// assigned. Only meaningful between palisade stages; the server accepts
    /// it only on listeners with `accept_origin_param`.
    pub origin: Option<String>,
    /// Private `XCUT=<milliseconds>`: the upstream palisade hop holds its
    /// client's reply to DATA for this long waiting for our verdict
    /// (cut-through). Per hop: never re-sent by [`MailParams::to_wire`].
    pub cut_through_ms: Option<u64>,
}

impl MailParams {
    /// The parameters as re-sent to the next hop, space separated, without
    /// `SIZE` (the client recomputes it from the message it actually sends).
    pub fn to_wire(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        if let Some(b) = self.body {
            parts.push(format!("BODY={}", b.as_str()));
        }
        if self.smtputf8 {
            parts.push("SMTPUTF8".into());
        }
        if let Some(r) = self.ret {
            parts.push(format!("RET={}", r.as_str()));
        }
        if let Some(e) = &self.envid {
            parts.push(format!("ENVID={e}"));
        }
        if let Some(a) = &self.auth {
            parts.push(format!("AUTH={a}"));
        }
        if let Some(o) = &self.origin {
            parts.push(format!("XORIGIN={o}"));
        }
        parts.join(" ")
    }
}

/// Parameters of `RCPT TO` (RFC 3461 §4.1, §4.2).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RcptParams {
    /// `NOTIFY=`, upper-cased: `NEVER` or a comma list of
    /// `SUCCESS`, `FAILURE`, `DELAY`.
    pub notify: Option<String>,
    /// `ORCPT=addr-type;xtext`, as sent.
    pub orcpt: Option<String>,
}

impl RcptParams {
    /// The parameters as re-sent to the next hop, space separated.
    pub fn to_wire(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        if let Some(n) = &self.notify {
            parts.push(format!("NOTIFY={n}"));
        }
        if let Some(o) = &self.orcpt {
            parts.push(format!("ORCPT={o}"));
        }
        parts.join(" ")
    }
}

/// Parses one command line, given without its CRLF (a trailing CRLF or LF is
/// tolerated and stripped).
///
/// Errors carry the reply to send: `500 5.5.2` for octets that make the line
/// unparseable, `501 5.5.4` for malformed arguments, `501 5.1.7` / `501
/// 5.1.3` for malformed sender / recipient paths, `555 5.5.4` for unknown
/// MAIL/RCPT parameters, `553 5.6.7` for a UTF-8 sender without SMTPUTF8.
/// An unknown verb is not an error here: it parses to [`Command::Unknown`].
pub fn parse_command(line: &[u8]) -> Result<Command, Reply> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    // SECURITY: NUL and control octets are refused before anything else reads
    // the line, so no later code has to think about them.
    if line.contains(&0) {
        return Err(Reply::syntax_error("NUL octet in command"));
    }
    if line.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(Reply::syntax_error("Control character in command"));
    }
    let line =
        std::str::from_utf8(line).map_err(|_| Reply::syntax_error("Command is not valid UTF-8"))?;
    let line = line.trim_end_matches([' ', '\t']);
    let (verb, rest) = match line.find([' ', '\t']) {
        Some(i) => (&line[..i], line[i + 1..].trim_start_matches([' ', '\t'])),
        None => (line, ""),
    };
    if verb.is_empty() {
        return Err(Reply::syntax_error("Empty command"));
    }
    let mut upper = [0u8; 8];
    if verb.len() > upper.len() {
        return Ok(Command::Unknown(verb.to_string()));
    }
    for (u, b) in upper.iter_mut().zip(verb.bytes()) {
        *u = b.to_ascii_uppercase();
    }
    match &upper[..verb.len()] {
        b"HELO" => Ok(Command::Helo(helo_arg(rest, "HELO")?)),
        b"EHLO" => Ok(Command::Ehlo(helo_arg(rest, "EHLO")?)),
        b"MAIL" => parse_mail(rest),
        b"RCPT" => parse_rcpt(rest),
        b"DATA" => no_args(rest, "DATA", Command::Data),
        b"BDAT" => parse_bdat(rest),
        b"RSET" => no_args(rest, "RSET", Command::Rset),
        // RFC 5321 §4.1.1.9: NOOP may carry a string, which is ignored.
        b"NOOP" => Ok(Command::Noop),
        b"QUIT" => no_args(rest, "QUIT", Command::Quit),
        b"STARTTLS" => no_args(rest, "STARTTLS", Command::StartTls),
        b"AUTH" => parse_auth(rest),
        b"VRFY" => required_arg(rest, "VRFY").map(Command::Vrfy),
        b"EXPN" => required_arg(rest, "EXPN").map(Command::Expn),
        b"HELP" => Ok(Command::Help),
        _ => Ok(Command::Unknown(verb.to_string())),
    }
}

fn no_args(rest: &str, verb: &str, cmd: Command) -> Result<Command, Reply> {
    if rest.is_empty() {
        Ok(cmd)
    } else {
        Err(Reply::bad_arguments(format!(
            "Syntax: {verb} (no parameters)"
        )))
    }
}

fn required_arg(rest: &str, verb: &str) -> Result<String, Reply> {
    if rest.is_empty() {
        Err(Reply::bad_arguments(format!("Syntax: {verb} <string>")))
    } else {
        Ok(rest.to_string())
    }
}

fn helo_arg(rest: &str, verb: &str) -> Result<String, Reply> {
    // COMPAT: some clients append junk after the name; keep the first word.
    match rest.split_ascii_whitespace().next() {
        Some(name) if name.len() <= 255 => Ok(name.to_string()),
        Some(_) => Err(Reply::bad_arguments(format!("{verb} name too long"))),
        None => Err(Reply::bad_arguments(format!("Syntax: {verb} hostname"))),
    }
}

fn strip_keyword<'a>(rest: &'a str, keyword: &str) -> Option<&'a str> {
    let head = rest.get(..keyword.len())?;
    if head.eq_ignore_ascii_case(keyword) {
        // COMPAT: `MAIL FROM: <a@b>` (space after the colon) is common.
        Some(rest[keyword.len()..].trim_start_matches(' '))
    } else {
        None
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PathKind {
    Sender,
    Recipient,
}

impl PathKind {
    fn error(self) -> Reply {
        match self {
            PathKind::Sender => Reply::enhanced(501, (5, 1, 7), "Bad sender address syntax"),
            PathKind::Recipient => Reply::enhanced(501, (5, 1, 3), "Bad recipient address syntax"),
        }
    }
}

/// Splits `<path> params` into the mailbox (route stripped, brackets
/// removed) and the parameter string.
fn parse_path(s: &str, kind: PathKind) -> Result<(String, &str), Reply> {
    let (inner, rest) = if let Some(body) = s.strip_prefix('<') {
        let mut in_quote = false;
        let mut escaped = false;
        let mut end = None;
        for (i, c) in body.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if in_quote => escaped = true,
                '"' => in_quote = !in_quote,
                '>' if !in_quote => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let end = end.ok_or_else(|| kind.error())?;
        let rest = &body[end + 1..];
        if !rest.is_empty() && !rest.starts_with(' ') {
            return Err(kind.error());
        }
        (&body[..end], rest.trim_start_matches(' '))
    } else {
        // COMPAT: bare address without angle brackets (old clients).
        let end = s.find(' ').unwrap_or(s.len());
        if end == 0 {
            return Err(kind.error());
        }
        (&s[..end], s[end..].trim_start_matches(' '))
    };
    // RFC 5321 §4.1.1.3 / App. C: accept and ignore a source route.
    let mailbox = match inner.strip_prefix('@') {
        Some(_) => {
            let colon = inner.find(':').ok_or_else(|| kind.error())?;
            let route = &inner[..colon];
            let route_ok = route
                .split(',')
                .all(|hop| hop.len() > 1 && hop.starts_with('@') && valid_domain(&hop[1..]));
            if !route_ok {
                return Err(kind.error());
            }
            &inner[colon + 1..]
        }
        None => inner,
    };
    if mailbox.is_empty() {
        return match kind {
            PathKind::Sender => Ok((String::new(), rest)),
            PathKind::Recipient => Err(kind.error()),
        };
    }
    if mailbox.eq_ignore_ascii_case("postmaster") {
        return match kind {
            // RFC 5321 §4.5.1: <postmaster> without domain is a valid recipient.
            PathKind::Recipient => Ok(("postmaster".to_string(), rest)),
            PathKind::Sender => Err(kind.error()),
        };
    }
    if mailbox.len() > MAX_PATH || !valid_mailbox(mailbox) {
        return Err(kind.error());
    }
    Ok((mailbox.to_string(), rest))
}

fn valid_mailbox(m: &str) -> bool {
    let Some(at) = m.rfind('@') else {
        return false;
    };
    let (local, domain) = (&m[..at], &m[at + 1..]);
    if local.is_empty() || local.len() > MAX_LOCAL_PART || !valid_domain(domain) {
        return false;
    }
    if let Some(q) = local.strip_prefix('"') {
        // Quoted string: any printable except unescaped quote/backslash.
        let Some(q) = q.strip_suffix('"') else {
            return false;
        };
        let mut escaped = false;
        for c in q.chars() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => return false,
                _ => {}
            }
        }
        return !escaped;
    }
    // Dot-string: atoms of atext (UTF-8 allowed, RFC 6531), no empty atom.
    local.split('.').all(|atom| {
        !atom.is_empty()
            && atom.chars().all(|c| {
                c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
            })
    })
}

fn valid_domain(d: &str) -> bool {
    if d.is_empty() || d.len() > 255 {
        return false;
    }
    if let Some(lit) = d.strip_prefix('[') {
        // Address literal: checked loosely, the policy layer parses it.
        return lit.strip_suffix(']').is_some_and(|l| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_graphic() && c != '[' && c != ']')
        });
    }
    d.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || !c.is_ascii())
    })
}

/// Iterates `KEY[=VALUE]` parameters.
fn params(s: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    s.split_ascii_whitespace().map(|p| match p.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (p, None),
    })
}

fn dup() -> Reply {
    Reply::bad_arguments("Duplicate parameter")
}

fn bad_value(key: &str) -> Reply {
    Reply::bad_arguments(format!("Bad value for {key} parameter"))
}

/// xtext (RFC 3461 §4): printable ASCII except `+`-escapes are `+HH`; we
/// only check the character range and length, the value is passed through.
fn xtext(key: &str, v: Option<&str>) -> Result<String, Reply> {
    match v {
        Some(v)
            if !v.is_empty()
                && v.len() <= MAX_PARAM_VALUE
                && v.bytes().all(|b| (b'!'..=b'~').contains(&b) && b != b'=') =>
        {
            Ok(v.to_string())
        }
        _ => Err(bad_value(key)),
    }
}

fn parse_mail(rest: &str) -> Result<Command, Reply> {
    let path = strip_keyword(rest, "FROM:")
        .ok_or_else(|| Reply::bad_arguments("Syntax: MAIL FROM:<address>"))?;
    let (from, rest) = parse_path(path, PathKind::Sender)?;
    let mut p = MailParams::default();
    for (key, value) in params(rest) {
        let upper = key.to_ascii_uppercase();
        match (upper.as_str(), value) {
            ("SIZE", Some(v)) => {
                let n = v
                    .parse::<u64>()
                    .ok()
                    .filter(|_| v.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| bad_value("SIZE"))?;
                if p.size.replace(n).is_some() {
                    return Err(dup());
                }
            }
            ("BODY", Some(v)) => {
                let b = match v.to_ascii_uppercase().as_str() {
                    "7BIT" => BodyType::SevenBit,
                    "8BITMIME" => BodyType::EightBitMime,
                    "BINARYMIME" => BodyType::BinaryMime,
                    _ => return Err(bad_value("BODY")),
                };
                if p.body.replace(b).is_some() {
                    return Err(dup());
                }
            }
            ("SMTPUTF8", None) => {
                if std::mem::replace(&mut p.smtputf8, true) {
                    return Err(dup());
                }
            }
            ("RET", Some(v)) => {
                let r = match v.to_ascii_uppercase().as_str() {
                    "FULL" => Ret::Full,
                    "HDRS" => Ret::Hdrs,
                    _ => return Err(bad_value("RET")),
                };
                if p.ret.replace(r).is_some() {
                    return Err(dup());
                }
            }
            ("ENVID", v) => {
                if p.envid.replace(xtext("ENVID", v)?).is_some() {
                    return Err(dup());
                }
            }
            ("AUTH", v) => {
                if p.auth.replace(xtext("AUTH", v)?).is_some() {
                    return Err(dup());
                }
            }
            ("XORIGIN", v) => {
                if p.origin.replace(xtext("XORIGIN", v)?).is_some() {
                    return Err(dup());
                }
            }
            ("XCUT", Some(v)) => {
                let ms = v
                    .parse::<u64>()
                    .ok()
                    .filter(|&ms| ms <= MAX_CUT_THROUGH_MS && v.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| bad_value("XCUT"))?;
                if p.cut_through_ms.replace(ms).is_some() {
                    return Err(dup());
                }
            }
            ("SIZE" | "BODY" | "RET" | "XCUT", None) | ("SMTPUTF8", Some(_)) => {
                return Err(bad_value(key));
            }
            _ => {
                return Err(Reply::unknown_parameter(format!(
                    "Unsupported parameter {key}"
                )))
            }
        }
    }
    if !p.smtputf8 && !from.is_ascii() {
        return Err(Reply::enhanced(
            553,
            (5, 6, 7),
            "Non-ASCII address requires SMTPUTF8",
        ));
    }
    Ok(Command::Mail { from, params: p })
}

fn parse_rcpt(rest: &str) -> Result<Command, Reply> {
    let path = strip_keyword(rest, "TO:")
        .ok_or_else(|| Reply::bad_arguments("Syntax: RCPT TO:<address>"))?;
    let (to, rest) = parse_path(path, PathKind::Recipient)?;
    let mut p = RcptParams::default();
    for (key, value) in params(rest) {
        match (key.to_ascii_uppercase().as_str(), value) {
            ("NOTIFY", Some(v)) => {
                let v = v.to_ascii_uppercase();
                let ok = v == "NEVER"
                    || v.split(',')
                        .all(|n| matches!(n, "SUCCESS" | "FAILURE" | "DELAY"));
                if !ok {
                    return Err(bad_value("NOTIFY"));
                }
                if p.notify.replace(v).is_some() {
                    return Err(dup());
                }
            }
            ("ORCPT", Some(v)) => {
                let ok = v.split_once(';').is_some_and(|(t, a)| {
                    !t.is_empty()
                        && !a.is_empty()
                        && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
                if !ok || v.len() > MAX_PARAM_VALUE || !v.is_ascii() {
                    return Err(bad_value("ORCPT"));
                }
                if p.orcpt.replace(v.to_string()).is_some() {
                    return Err(dup());
                }
            }
            ("NOTIFY" | "ORCPT", None) => return Err(bad_value(key)),
            _ => {
                return Err(Reply::unknown_parameter(format!(
                    "Unsupported parameter {key}"
                )))
            }
        }
    }
    Ok(Command::Rcpt { to, params: p })
}

fn parse_bdat(rest: &str) -> Result<Command, Reply> {
    let mut words = rest.split_ascii_whitespace();
    let size = words
        .next()
        .filter(|w| w.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|w| w.parse::<u64>().ok());
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(Reply::bad_arguments("Syntax: BDAT size [LAST]")),
    };
    match (size, words.next()) {
        (Some(size), None) => Ok(Command::Bdat { size, last }),
        _ => Err(Reply::bad_arguments("Syntax: BDAT size [LAST]")),
    }
}

fn parse_auth(rest: &str) -> Result<Command, Reply> {
    let mut words = rest.split_ascii_whitespace();
    let mechanism = words
        .next()
        .ok_or_else(|| Reply::bad_arguments("Syntax: AUTH mechanism [initial-response]"))?
        .to_ascii_uppercase();
    let initial = words.next().map(str::to_string);
    if words.next().is_some() {
        return Err(Reply::bad_arguments(
            "Syntax: AUTH mechanism [initial-response]",
        ));
    }
    Ok(Command::Auth { mechanism, initial })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_parse_case_insensitively() {
        let cases: &[(&str, Command)] = &[
            ("HELO a.example", Command::Helo("a.example".into())),
            ("ehlo a.example", Command::Ehlo("a.example".into())),
            ("EhLo [127.0.0.1] junk", Command::Ehlo("[127.0.0.1]".into())),
            ("data", Command::Data),
            ("RSET", Command::Rset),
            ("noop hello", Command::Noop),
            ("Quit", Command::Quit),
            ("starttls", Command::StartTls),
            ("HELP", Command::Help),
            ("HELP mail", Command::Help),
            ("VRFY bob", Command::Vrfy("bob".into())),
            ("EXPN staff", Command::Expn("staff".into())),
            (
                "BDAT 100",
                Command::Bdat {
                    size: 100,
                    last: false,
                },
            ),
            (
                "bdat 0 last",
                Command::Bdat {
                    size: 0,
                    last: true,
                },
            ),
            (
                "AUTH plain AGJvYgBwdw==",
                Command::Auth {
                    mechanism: "PLAIN".into(),
                    initial: Some("AGJvYgBwdw==".into()),
                },
            ),
            (
                "AUTH LOGIN",
                Command::Auth {
                    mechanism: "LOGIN".into(),
                    initial: None,
                },
            ),
            ("XYZZY", Command::Unknown("XYZZY".into())),
            ("TOOLONGVERB x", Command::Unknown("TOOLONGVERB".into())),
            ("QUIT\r\n", Command::Quit),
        ];
        for (line, want) in cases {
            assert_eq!(parse_command(line.as_bytes()).as_ref(), Ok(want), "{line}");
        }
    }

    #[test]
    fn mail_and_rcpt_paths() {
        let mail = |l: &str| match parse_command(l.as_bytes()) {
            Ok(Command::Mail { from, .. }) => Ok(from),
            Ok(Command::Rcpt { to, .. }) => Ok(to),
            Ok(other) => panic!("{other:?}"),
            Err(r) => Err((r.code, r.enhanced.unwrap().to_string())),
        };
        type Case<'a> = (&'a str, Result<&'a str, (u16, &'a str)>);
        let cases: &[Case] = &[
            ("MAIL FROM:<a@b.example>", Ok("a@b.example")),
            ("mail from:<a@b.example>", Ok("a@b.example")),
            ("MAIL FROM: <a@b.example>", Ok("a@b.example")),
            ("MAIL FROM:a@b.example", Ok("a@b.example")),
            ("MAIL FROM:<>", Ok("")),
            (
                "MAIL FROM:<@r1.example,@r2.example:a@b.example>",
                Ok("a@b.example"),
            ),
            (
                "MAIL FROM:<\"john doe\"@b.example>",
                Ok("\"john doe\"@b.example"),
            ),
            ("MAIL FROM:<a@[192.0.2.1]>", Ok("a@[192.0.2.1]")),
            ("MAIL FROM:<postmaster>", Err((501, "5.1.7"))),
            ("MAIL FROM:<a@b.example", Err((501, "5.1.7"))),
            ("MAIL FROM:<a@b.example>x", Err((501, "5.1.7"))),
            ("MAIL FROM:<ab.example>", Err((501, "5.1.7"))),
            ("MAIL FROM:<a..b@b.example>", Err((501, "5.1.7"))),
            ("MAIL FROM:<a@b..example>", Err((501, "5.1.7"))),
            ("MAIL FROM:<@r1.example a@b.example>", Err((501, "5.1.7"))),
            ("MAIL FROM:", Err((501, "5.1.7"))),
            ("MAIL TO:<a@b.example>", Err((501, "5.5.4"))),
            ("MAIL", Err((501, "5.5.4"))),
            ("MAIL FROM:<jörg@b.example>", Err((553, "5.6.7"))),
            ("MAIL FROM:<jörg@b.example> SMTPUTF8", Ok("jörg@b.example")),
            ("RCPT TO:<c@d.example>", Ok("c@d.example")),
            ("RCPT TO:<Postmaster>", Ok("postmaster")),
            ("RCPT TO:<>", Err((501, "5.1.3"))),
            ("RCPT TO:<@x.example:c@d.example>", Ok("c@d.example")),
            ("RCPT FROM:<c@d.example>", Err((501, "5.5.4"))),
            ("RCPT TO:<c@d.example> FOO=bar", Err((555, "5.5.4"))),
        ];
        for (line, want) in cases {
            let got = mail(line);
            let want = want
                .map(str::to_string)
                .map_err(|(c, e)| (c, e.to_string()));
            assert_eq!(got, want, "{line}");
        }
    }

    #[test]
    fn mail_params_parse_and_round_trip() {
        let Ok(Command::Mail { params, .. }) = parse_command(
            b"MAIL FROM:<a@b.example> size=1000 BODY=8bitmime SMTPUTF8 RET=HDRS ENVID=QQ314159 AUTH=<> XORIGIN=mx-1 XCUT=19000",
        ) else {
            panic!("parse failed");
        };
        assert_eq!(params.cut_through_ms, Some(19000));
        assert_eq!(params.size, Some(1000));
        assert_eq!(params.body, Some(BodyType::EightBitMime));
        assert!(params.smtputf8);
        assert_eq!(params.ret, Some(Ret::Hdrs));
        assert_eq!(params.envid.as_deref(), Some("QQ314159"));
        assert_eq!(params.auth.as_deref(), Some("<>"));
        assert_eq!(params.origin.as_deref(), Some("mx-1"));
        assert_eq!(
            params.to_wire(),
            "BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ314159 AUTH=<> XORIGIN=mx-1"
        );
        let Ok(Command::Mail { params: back, .. }) =
            parse_command(format!("MAIL FROM:<a@b.example> {}", params.to_wire()).as_bytes())
        else {
            panic!("reparse failed");
        };
        assert_eq!(
            back,
            MailParams {
                size: None,
                cut_through_ms: None,
                ..params
            }
        );
    }

    #[test]
    fn cut_through_param_is_bounded_digits() {
        for bad in ["XCUT", "XCUT=", "XCUT=-1", "XCUT=1e3", "XCUT=600001", "XCUT=1 XCUT=2"] {
            let line = format!("MAIL FROM:<a@b.example> {bad}");
            assert!(parse_command(line.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn rcpt_params_parse_and_round_trip() {
        let Ok(Command::Rcpt { params, .. }) =
            parse_command(b"RCPT TO:<c@d.example> NOTIFY=success,failure ORCPT=rfc822;c@d.example")
        else {
            panic!("parse failed");
        };
        assert_eq!(params.notify.as_deref(), Some("SUCCESS,FAILURE"));
        assert_eq!(params.orcpt.as_deref(), Some("rfc822;c@d.example"));
        assert_eq!(
            params.to_wire(),
            "NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;c@d.example"
        );
    }

    #[test]
    fn syntax_errors_have_the_right_codes() {
        let cases: &[(&[u8], u16, &str)] = &[
            (b"NOOP\0", 500, "5.5.2"),
            (b"MAIL FROM:<a\0@b>", 500, "5.5.2"),
            (b"NOOP\rMAIL FROM:<a@b>", 500, "5.5.2"),
            (b"\xff\xfe", 500, "5.5.2"),
            (b"", 500, "5.5.2"),
            (b"   ", 500, "5.5.2"),
            (b"HELO", 501, "5.5.4"),
            (b"EHLO ", 501, "5.5.4"),
            (b"DATA x", 501, "5.5.4"),
            (b"RSET x", 501, "5.5.4"),
            (b"QUIT now", 501, "5.5.4"),
            (b"STARTTLS x", 501, "5.5.4"),
            (b"VRFY", 501, "5.5.4"),
            (b"BDAT", 501, "5.5.4"),
            (b"BDAT x", 501, "5.5.4"),
            (b"BDAT -1", 501, "5.5.4"),
            (b"BDAT 10 FIRST", 501, "5.5.4"),
            (b"BDAT 10 LAST x", 501, "5.5.4"),
            (b"AUTH", 501, "5.5.4"),
            (b"MAIL FROM:<a@b.example> SIZE=abc", 501, "5.5.4"),
            (b"MAIL FROM:<a@b.example> SIZE=+5", 501, "5.5.4"),
            (b"MAIL FROM:<a@b.example> SIZE", 501, "5.5.4"),
            (b"MAIL FROM:<a@b.example> SIZE=1 SIZE=2", 501, "5.5.4"),
            (b"MAIL FROM:<a@b.example> BODY=9BIT", 501, "5.5.4"),
            (b"MAIL FROM:<a@b.example> SMTPUTF8=yes", 501, "5.5.4"),
            (b"MAIL FROM:<a@b.example> RET=ALL", 501, "5.5.4"),
            (b"MAIL FROM:<a@b.example> ENVID=", 501, "5.5.4"),
            (b"MAIL FROM:<a@b.example> FOO=BAR", 555, "5.5.4"),
            (b"MAIL FROM:<a@b.example> X-UNKNOWN", 555, "5.5.4"),
            (b"RCPT TO:<c@d.example> NOTIFY=SOMETIMES", 501, "5.5.4"),
            (b"RCPT TO:<c@d.example> ORCPT=nosemicolon", 501, "5.5.4"),
        ];
        for (line, c, e) in cases {
            let shown = String::from_utf8_lossy(line);
            let r = parse_command(line).expect_err(&shown);
            assert_eq!(
                (r.code, r.enhanced.unwrap().to_string()),
                (*c, e.to_string()),
                "{shown}"
            );
        }
    }
}
