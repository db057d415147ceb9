//! Just enough IMAP4rev1 (RFC 3501, over implicit TLS) for the audit and
//! the delivery probe: find the probes' messages by the run's nonce (in the
//! subject for the audit, in a header for `palisade probe`), read their
//! header section and the quota, and delete what the probes delivered.
//! Built on the transcript client, so the IMAP side of a content probe is
//! evidence too; the password is never written to a transcript. Literals
//! are read by their byte count.

use crate::audit::Ctx;
use crate::client::{Conn, Dial, Stop};
use crate::model::Line;

/// Folders where a delivered probe may land: the inbox and the usual
/// names of the spam folder.
pub const FOLDERS: [&str; 3] = ["INBOX", "Junk", "Spam"];

pub struct Imap {
    conn: Conn,
    tag: u32,
    /// Whether the server has UIDPLUS (RFC 4315), asked when first needed.
    uidplus: Option<bool>,
}

/// The tagged status (`OK ...`) and the untagged lines of one command, with
/// any literals they carry inlined (`{n}` CRLF, then the n bytes).
pub struct Response {
    pub ok: bool,
    pub status: String,
    pub untagged: Vec<String>,
}

/// An IMAP quoted string.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The numbers of `* SEARCH` answers.
fn numbers(r: &Response) -> Vec<u32> {
    r.untagged
        .iter()
        .filter_map(|l| l.strip_prefix("* SEARCH"))
        .flat_map(|rest| rest.split_whitespace().filter_map(|n| n.parse().ok()))
        .collect()
}

/// A message set: `1,4,9`.
fn set(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

/// A command the server answered NO or BAD to, as an error.
fn refused(what: &str, r: &Response) -> Stop {
    Stop::Io(std::io::Error::other(format!("IMAP {what}: {}", r.status)))
}

/// The byte count of a literal that ends `line` (`... {123}`).
fn literal_len(line: &str) -> Option<usize> {
    let l = line.strip_suffix('}')?;
    let open = l.rfind('{')?;
    l[open + 1..].parse().ok()
}

impl Imap {
    /// Logs in as the test account at --store-imap.
    pub async fn login(ctx: &Ctx, transcript: Vec<Line>) -> Result<Imap, (String, Vec<Line>)> {
        let (Some(addr), Some(user), Some(password)) =
            (ctx.opts.store_imap, &ctx.opts.user, &ctx.opts.password)
        else {
            return Err((
                "needs --store-imap, --user and a password".into(),
                transcript,
            ));
        };
        Imap::connect(ctx.dial(addr), user, password, transcript).await
    }

    /// Connects with implicit TLS and logs in as `user`; on failure, why,
    /// and the transcript so far.
    pub async fn connect(
        dial: Dial,
        user: &str,
        password: &str,
        transcript: Vec<Line>,
    ) -> Result<Imap, (String, Vec<Line>)> {
        let addr = dial.addr;
        let conn = Conn::connect_tls(dial, transcript).await;
        let mut imap = match conn {
            Ok(conn) => Imap {
                conn,
                tag: 0,
                uidplus: None,
            },
            Err(e) => return Err((format!("IMAP {addr}: {e}"), Vec::new())),
        };
        match imap.conn.read_line().await {
            Ok(l) if l.starts_with("* OK") => {}
            Ok(l) => return Err((format!("IMAP greeting: {l}"), imap.conn.into_transcript())),
            Err(e) => return Err((e.to_string(), imap.conn.into_transcript())),
        }
        let login = format!("LOGIN {} {}", quote(user), quote(password));
        let shown = format!("LOGIN {} <password>", quote(user));
        match imap.command(&login, Some(&shown)).await {
            Ok(r) if r.ok => Ok(imap),
            Ok(r) => Err((
                format!("IMAP login refused: {}", r.status),
                imap.conn.into_transcript(),
            )),
            Err(e) => Err((e.to_string(), imap.conn.into_transcript())),
        }
    }

    pub async fn command(&mut self, text: &str, shown: Option<&str>) -> Result<Response, Stop> {
        self.tag += 1;
        let tag = format!("a{}", self.tag);
        let line = format!("{tag} {text}");
        match shown {
            Some(s) => self.conn.send_secret(&line, &format!("{tag} {s}")).await?,
            None => self.conn.send_line(&line).await?,
        }
        let mut untagged = Vec::new();
        loop {
            let l = self.response_line().await?;
            if let Some(rest) = l.strip_prefix(&format!("{tag} ")) {
                return Ok(Response {
                    ok: rest.starts_with("OK"),
                    status: rest.to_string(),
                    untagged,
                });
            }
            untagged.push(l);
        }
    }

    /// A response line with any literals (`{n}` CRLF, then n bytes) inlined.
    async fn response_line(&mut self) -> Result<String, Stop> {
        let mut out = self.conn.read_line().await?;
        while let Some(n) = literal_len(&out) {
            let literal = self.conn.read_bytes(n).await?;
            out.push_str("\r\n");
            out.push_str(&String::from_utf8_lossy(&literal));
            let rest = self.conn.read_line().await?;
            out.push_str(&rest);
        }
        Ok(out)
    }

    /// Selects `folder`; false when it does not exist.
    pub async fn select(&mut self, folder: &str) -> Result<bool, Stop> {
        Ok(self
            .command(&format!("SELECT {}", quote(folder)), None)
            .await?
            .ok)
    }

    /// Messages of `folder` whose subject contains `needle` (None: no such folder).
    pub async fn search(&mut self, folder: &str, needle: &str) -> Result<Option<Vec<u32>>, Stop> {
        if !self.select(folder).await? {
            return Ok(None);
        }
        let r = self
            .command(&format!("SEARCH SUBJECT {}", quote(needle)), None)
            .await?;
        Ok(Some(numbers(&r)))
    }

    /// UIDs of the selected folder's messages whose `header` contains `value`.
    pub async fn search_header(&mut self, header: &str, value: &str) -> Result<Vec<u32>, Stop> {
        let r = self
            .command(
                &format!("UID SEARCH HEADER {} {}", quote(header), quote(value)),
                None,
            )
            .await?;
        if !r.ok {
            return Err(refused("SEARCH", &r));
        }
        Ok(numbers(&r))
    }

    /// The header section of one message of the selected folder.
    pub async fn header(&mut self, uid: u32) -> Result<Vec<u8>, Stop> {
        let r = self
            .command(&format!("UID FETCH {uid} (BODY.PEEK[HEADER])"), None)
            .await?;
        for l in &r.untagged {
            if let Some(start) = l.find("}\r\n") {
                return Ok(l.as_bytes()[start + 3..].to_vec());
            }
        }
        Err(refused(&format!("FETCH {uid}: no header literal"), &r))
    }

    /// Deletes the messages of every folder whose subject contains `needle`; how many.
    pub async fn delete(&mut self, needle: &str) -> Result<usize, Stop> {
        let mut n = 0;
        for folder in FOLDERS {
            let Some(ids) = self.search(folder, needle).await? else {
                continue;
            };
            if ids.is_empty() {
                continue;
            }
            self.command(
                &format!("STORE {} +FLAGS.SILENT (\\Deleted)", set(&ids)),
                None,
            )
            .await?;
            self.command("EXPUNGE", None).await?;
            n += ids.len();
        }
        Ok(n)
    }

    /// Deletes messages of the selected folder by UID (UID EXPUNGE when the
    /// server has UIDPLUS, so other messages marked deleted are left alone).
    pub async fn delete_uids(&mut self, uids: &[u32]) -> Result<(), Stop> {
        if uids.is_empty() {
            return Ok(());
        }
        let set = set(uids);
        self.command(&format!("UID STORE {set} +FLAGS.SILENT (\\Deleted)"), None)
            .await?;
        if self.has_uidplus().await? {
            self.command(&format!("UID EXPUNGE {set}"), None).await?;
        } else {
            self.command("EXPUNGE", None).await?;
        }
        Ok(())
    }

    async fn has_uidplus(&mut self) -> Result<bool, Stop> {
        if let Some(known) = self.uidplus {
            return Ok(known);
        }
        let caps = self.command("CAPABILITY", None).await?;
        let known = caps
            .untagged
            .iter()
            .any(|l| l.to_ascii_uppercase().contains("UIDPLUS"));
        self.uidplus = Some(known);
        Ok(known)
    }

    /// Forgets the lines so far: for a long poll (`palisade probe`) that
    /// keeps no evidence.
    pub fn forget_transcript(&mut self) {
        self.conn.transcript.clear();
    }

    pub fn note(&mut self, text: impl Into<String>) {
        self.conn.note(text);
    }

    pub async fn logout(mut self) -> Vec<Line> {
        let _ = self.command("LOGOUT", None).await;
        self.conn.into_transcript()
    }
}

/// Deletes every message of this run from the test account; a line for
/// the operator, or None when there is no mailbox access.
pub async fn clean_up(ctx: &Ctx) -> Option<String> {
    if ctx.opts.store_imap.is_none() || !ctx.has_credentials() {
        return None;
    }
    let needle = ctx.subject("");
    let mut imap = match Imap::login(ctx, Vec::new()).await {
        Ok(i) => i,
        Err((why, _)) => return Some(format!("cleanup: {why}")),
    };
    let result = imap.delete(needle.trim_end()).await;
    imap.logout().await;
    Some(match result {
        Ok(n) => format!("cleanup: deleted {n} probe message(s) from the test account"),
        Err(e) => format!("cleanup failed: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_lengths_and_quoting() {
        assert_eq!(
            literal_len("* 1 FETCH (UID 4 BODY[HEADER] {123}"),
            Some(123)
        );
        assert_eq!(literal_len("* SEARCH 1 2"), None);
        assert_eq!(quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }
}
