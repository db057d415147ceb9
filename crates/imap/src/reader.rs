//! Reading client commands with imap-codec, including synchronising literals (RFC 3501 §7.5)
//! and LITERAL+ (RFC 7888).
//!
//! The codec reports `LiteralFound` when a line ends in `{n}`; we answer the continuation
//! request (for a synchronising literal), read exactly `n` octets and the rest of the command,
//! and decode again. Sizes are bounded so a client cannot make us buffer without limit.

use std::io;
use std::time::Duration;

use imap_codec::decode::{CommandDecodeError, Decoder};
use imap_codec::imap_types::command::Command;
use imap_codec::imap_types::core::LiteralMode;
use imap_codec::CommandCodec;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::Conn;

/// Longest command line (without literals).
pub const MAX_LINE: u64 = 64 * 1024;
/// Largest whole command including literals (bounds APPEND).
pub const MAX_COMMAND: usize = 64 << 20;

pub enum Incoming {
    Command(Box<Command<'static>>),
    /// Unparseable or refused command: answer `tag BAD reason` and carry on.
    Bad {
        tag: String,
        reason: &'static str,
    },
    /// Line or literal beyond the limits with no way to resynchronise: answer BYE and close.
    TooLong,
    Eof,
}

/// Appends one line (through LF) to `buf`; `false` on end of stream.
pub async fn read_line(
    stream: &mut BufReader<Conn>,
    buf: &mut Vec<u8>,
    idle: Duration,
) -> io::Result<Option<bool>> {
    let before = buf.len();
    let n = tokio::time::timeout(idle, (&mut *stream).take(MAX_LINE).read_until(b'\n', buf))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "idle timeout"))??;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        // Either the line limit was hit or the peer closed mid-line.
        return Ok(Some(buf.len() - before < MAX_LINE as usize));
    }
    Ok(Some(true))
}

fn tag_of(buf: &[u8]) -> String {
    let tag: String = buf
        .iter()
        .take_while(|b| {
            b.is_ascii_graphic()
                && !matches!(b, b'{' | b'(' | b')' | b'%' | b'*' | b'"' | b'\\' | b'+')
        })
        .map(|&b| b as char)
        .collect();
    if tag.is_empty() {
        "*".to_string()
    } else {
        tag
    }
}

/// Reads and decodes the next command.
pub async fn read_command(
    stream: &mut BufReader<Conn>,
    buf: &mut Vec<u8>,
    idle: Duration,
) -> io::Result<Incoming> {
    buf.clear();
    loop {
        match read_line(stream, buf, idle).await? {
            None => return Ok(Incoming::Eof),
            Some(false) => return Ok(Incoming::TooLong),
            Some(true) if buf.last() != Some(&b'\n') => return Ok(Incoming::Eof),
            Some(true) => {}
        }
        if buf.len() > MAX_COMMAND {
            return Ok(Incoming::TooLong);
        }
        match CommandCodec::default().decode_static(buf) {
            Ok((_, cmd)) => return Ok(Incoming::Command(Box::new(cmd))),
            Err(CommandDecodeError::Incomplete) => continue,
            Err(CommandDecodeError::LiteralFound { tag, length, mode }) => {
                let length = length as usize;
                if buf.len() + length > MAX_COMMAND {
                    if mode == LiteralMode::Sync {
                        // The client waits for our go-ahead, so refusing keeps us in sync.
                        return Ok(Incoming::Bad {
                            tag: tag.inner().to_string(),
                            reason: "literal too large",
                        });
                    }
                    return Ok(Incoming::TooLong);
                }
                if mode == LiteralMode::Sync {
                    stream.write_all(b"+ Ready for literal data\r\n").await?;
                    stream.flush().await?;
                }
                let start = buf.len();
                buf.resize(start + length, 0);
                tokio::time::timeout(idle, stream.read_exact(&mut buf[start..]))
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "idle timeout"))??;
            }
            Err(CommandDecodeError::Failed) => {
                return Ok(Incoming::Bad {
                    tag: tag_of(buf),
                    reason: "unknown command or invalid arguments",
                })
            }
        }
    }
}
