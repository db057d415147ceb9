//! The few IMAP4rev1 commands (RFC 3501) the delivery probe needs: log
//! in over implicit TLS, find its probe messages by header, read their
//! header section, delete them. Literals are read by their byte count.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const TIMEOUT: Duration = Duration::from_secs(30);

pub struct Imap {
    stream: BufReader<TlsStream<TcpStream>>,
    tag: u32,
    uidplus: bool,
}

/// One tagged command's answer: the untagged lines (literals inlined)
/// and the tagged status line.
pub struct Answer {
    pub data: Vec<Vec<u8>>,
    pub status: String,
}

impl Imap {
    pub async fn connect(addr: SocketAddr, user: &str, password: &str) -> Result<Imap> {
        let tcp = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
            .await
            .context("IMAP connect timed out")??;
        let tls = tokio_rustls::TlsConnector::from(palisade_smtp_client::insecure_tls_config());
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let stream = tokio::time::timeout(TIMEOUT, tls.connect(name, tcp))
            .await
            .context("IMAP TLS handshake timed out")??;
        let mut imap = Imap {
            stream: BufReader::new(stream),
            tag: 0,
            uidplus: false,
        };
        let greeting = imap.line().await?;
        if !greeting.starts_with(b"* OK") {
            bail!(
                "IMAP greeting: {}",
                String::from_utf8_lossy(&greeting).trim()
            );
        }
        let a = imap
            .command(&format!("LOGIN {} {}", quoted(user), quoted(password)))
            .await?;
        if !a.status.starts_with("OK") {
            bail!("IMAP LOGIN as {user}: {}", a.status);
        }
        let caps = imap.command("CAPABILITY").await?;
        imap.uidplus = caps.data.iter().any(|l| {
            String::from_utf8_lossy(l)
                .to_ascii_uppercase()
                .contains("UIDPLUS")
        });
        Ok(imap)
    }

    async fn line(&mut self) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        let n = tokio::time::timeout(TIMEOUT, self.stream.read_until(b'\n', &mut buf))
            .await
            .context("IMAP read timed out")??;
        if n == 0 {
            bail!("IMAP server closed the connection");
        }
        Ok(buf)
    }

    /// A response line with any literals (`{n}\r\n` + n bytes) inlined.
    async fn response_line(&mut self) -> Result<Vec<u8>> {
        let mut out = self.line().await?;
        while let Some(n) = literal_len(&out) {
            let mut lit = vec![0u8; n];
            tokio::time::timeout(TIMEOUT, self.stream.read_exact(&mut lit))
                .await
                .context("IMAP literal timed out")??;
            out.extend_from_slice(&lit);
            let rest = self.line().await?;
            out.extend_from_slice(&rest);
        }
        Ok(out)
    }

    pub async fn command(&mut self, cmd: &str) -> Result<Answer> {
        self.tag += 1;
        let tag = format!("p{}", self.tag);
        let line = format!("{tag} {cmd}\r\n");
        tokio::time::timeout(TIMEOUT, self.stream.get_mut().write_all(line.as_bytes()))
            .await
            .context("IMAP write timed out")??;
        let mut data = Vec::new();
        loop {
            let l = self.response_line().await?;
            if let Some(rest) = l.strip_prefix(format!("{tag} ").as_bytes()) {
                let status = String::from_utf8_lossy(rest).trim().to_string();
                return Ok(Answer { data, status });
            }
            data.push(l);
        }
    }

    /// Selects `folder`; false when it does not exist.
    pub async fn select(&mut self, folder: &str) -> Result<bool> {
        Ok(self
            .command(&format!("SELECT {}", quoted(folder)))
            .await?
            .status
            .starts_with("OK"))
    }

    /// UIDs of messages whose `header` contains `value`.
    pub async fn search_header(&mut self, header: &str, value: &str) -> Result<Vec<u32>> {
        let a = self
            .command(&format!(
                "UID SEARCH HEADER {} {}",
                quoted(header),
                quoted(value)
            ))
            .await?;
        if !a.status.starts_with("OK") {
            bail!("IMAP SEARCH: {}", a.status);
        }
        Ok(a.data
            .iter()
            .filter_map(|l| l.strip_prefix(b"* SEARCH"))
            .flat_map(|rest| {
                String::from_utf8_lossy(rest)
                    .split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect())
    }

    /// The header section of one message.
    pub async fn header(&mut self, uid: u32) -> Result<Vec<u8>> {
        let a = self
            .command(&format!("UID FETCH {uid} (BODY.PEEK[HEADER])"))
            .await?;
        for l in &a.data {
            if let Some(start) = l.windows(3).position(|w| w == b"}\r\n") {
                return Ok(l[start + 3..].to_vec());
            }
        }
        bail!("IMAP FETCH {uid}: no header literal ({})", a.status)
    }

    /// Deletes the messages (UID EXPUNGE when the server has UIDPLUS, so
    /// other messages marked deleted are left alone).
    pub async fn delete(&mut self, uids: &[u32]) -> Result<()> {
        if uids.is_empty() {
            return Ok(());
        }
        let set = uids
            .iter()
            .map(|u| u.to_string())
            .collect::<Vec<_>>()
            .join(",");
        self.command(&format!("UID STORE {set} +FLAGS.SILENT (\\Deleted)"))
            .await?;
        if self.uidplus {
            self.command(&format!("UID EXPUNGE {set}")).await?;
        } else {
            self.command("EXPUNGE").await?;
        }
        Ok(())
    }

    pub async fn logout(mut self) {
        let _ = self.command("LOGOUT").await;
    }
}

fn literal_len(line: &[u8]) -> Option<usize> {
    let l = line.strip_suffix(b"\r\n").unwrap_or(line);
    let l = l.strip_suffix(b"}")?;
    let open = l.iter().rposition(|&b| b == b'{')?;
    std::str::from_utf8(&l[open + 1..]).ok()?.parse().ok()
}

/// An IMAP quoted string.
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_lengths_and_quoting() {
        assert_eq!(
            literal_len(b"* 1 FETCH (UID 4 BODY[HEADER] {123}\r\n"),
            Some(123)
        );
        assert_eq!(literal_len(b"* SEARCH 1 2\r\n"), None);
        assert_eq!(quoted("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }
}
