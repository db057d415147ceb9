//! HELO / EHLO (RFC 5321 §4.1.1.1) and the EHLO keyword list.

use palisade_smtp_proto::Reply;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Session, Stop};
use crate::hooks::Hooks;
use crate::state::SessionState;

impl<S, H> Session<S, H>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: Hooks,
{
    pub(super) async fn proceed_helo(&mut self, name: String, esmtp: bool) -> Result<(), Stop> {
        if let Err(reply) = self.hooks.on_helo(&self.info, &name).await {
            return self.reply(&reply);
        }
        self.enter(SessionState::Greeted);
        self.info.esmtp = esmtp;
        let reply = if esmtp {
            Reply::new(250, None, self.ehlo_text(&name))
        } else {
            Reply::new(250, None, format!("{} Hello {name}", self.config.hostname))
        };
        self.info.helo = Some(name);
        self.reply(&reply)
    }

    /// The EHLO reply lines: greeting, then one extension per line.
    fn ehlo_text(&self, name: &str) -> String {
        let c = &self.config;
        let mut text = format!(
            "{} Hello {name}\nPIPELINING\nSIZE {}\n8BITMIME\nENHANCEDSTATUSCODES\nSMTPUTF8\nDSN\nCHUNKING\nBINARYMIME",
            c.hostname, c.max_message_size
        );
        if c.tls.is_some() && self.info.tls.is_none() {
            text.push_str("\nSTARTTLS");
        }
        if self.auth_offered() {
            text.push_str("\nAUTH ");
            text.push_str(super::auth::MECHANISMS);
        }
        if c.accept_origin_param {
            text.push_str("\nXCUT\nXORIGIN");
        }
        text
    }
}
