//! Just enough IMAP4rev1 (over implicit TLS) for the audit: find the
//! probes' messages by the run's nonce in the subject, read the quota, and
//! delete what the probes delivered. Built on the transcript client, so
//! the IMAP side of a content probe is evidence too; the password is never
//! written to a transcript.

use crate::audit::Ctx;
use crate::client::{Conn, Stop};
use crate::model::Line;

/// Folders where a delivered probe may land: the inbox and the usual
/// names of the spam folder.
pub const FOLDERS: [&str; 3] = ["INBOX", "Junk", "Spam"];

pub struct Imap {
    conn: Conn,
    tag: u32,
}

/// The tagged status (`OK ...`) and the untagged lines of one command.
pub struct Response {
    pub ok: bool,
    pub status: String,
    pub untagged: Vec<String>,
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
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
        let conn = Conn::connect_tls(ctx.dial(addr), transcript).await;
        let mut imap = match conn {
            Ok(conn) => Imap { conn, tag: 0 },
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
            let l = self.conn.read_line().await?;
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

    /// Messages of `folder` whose subject contains `needle` (None: no such folder).
    pub async fn search(&mut self, folder: &str, needle: &str) -> Result<Option<Vec<u32>>, Stop> {
        if !self
            .command(&format!("SELECT {}", quote(folder)), None)
            .await?
            .ok
        {
            return Ok(None);
        }
        let r = self
            .command(&format!("SEARCH SUBJECT {}", quote(needle)), None)
            .await?;
        Ok(Some(
            r.untagged
                .iter()
                .filter_map(|l| l.strip_prefix("* SEARCH"))
                .flat_map(|rest| rest.split_whitespace().filter_map(|n| n.parse().ok()))
                .collect(),
        ))
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
            let set = ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
            self.command(&format!("STORE {set} +FLAGS.SILENT (\\Deleted)"), None)
                .await?;
            self.command("EXPUNGE", None).await?;
            n += ids.len();
        }
        Ok(n)
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
