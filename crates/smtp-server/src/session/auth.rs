//! SMTP AUTH (RFC 4954) with the PLAIN (RFC 4616) and LOGIN mechanisms,
//! offered only on the submission profile and only under TLS: credentials
//! never cross the network in clear (SPEC §5: 538 5.7.11 before TLS).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use palisade_smtp_proto::Reply;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Line, Session, Stop};
use crate::config::ListenerProfile;
use crate::hooks::Hooks;

/// The mechanisms we advertise, in the EHLO `AUTH` line.
pub(crate) const MECHANISMS: &str = "PLAIN LOGIN";

impl<S, H> Session<S, H>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: Hooks,
{
    /// Whether EHLO offers AUTH now.
    pub(super) fn auth_offered(&self) -> bool {
        matches!(self.config.profile, ListenerProfile::Submission)
            && self.info.tls.is_some()
            && self.info.auth_user.is_none()
    }

    pub(super) async fn proceed_auth(
        &mut self,
        mechanism: String,
        initial: Option<String>,
    ) -> Result<(), Stop> {
        if !matches!(self.config.profile, ListenerProfile::Submission) {
            return self.reply(&Reply::not_implemented("AUTH not available"));
        }
        if self.info.tls.is_none() {
            return self.reply(&Reply::enhanced(
                538,
                (5, 7, 11),
                "Encryption required for requested authentication mechanism",
            ));
        }
        if self.info.auth_user.is_some() {
            return self.reply(&Reply::bad_sequence("Already authenticated"));
        }
        let credentials = match mechanism.to_ascii_uppercase().as_str() {
            "PLAIN" => self.sasl_plain(initial).await?,
            "LOGIN" => self.sasl_login(initial).await?,
            _ => {
                return self.reply(&Reply::enhanced(
                    504,
                    (5, 5, 4),
                    "Unrecognized authentication type",
                ))
            }
        };
        let Some((user, password)) = credentials else {
            return Ok(()); // the exchange already answered (cancelled, malformed)
        };
        match self.hooks.on_auth(&self.info, &user, &password).await {
            Ok(identity) => {
                tracing::info!(peer = %self.info.peer, user = %identity, "authenticated");
                self.info.auth_user = Some(identity);
                self.reply(&Reply::enhanced(
                    235,
                    (2, 7, 0),
                    "Authentication successful",
                ))
            }
            Err(reply) => self.reply(&reply),
        }
    }

    /// PLAIN: `authzid NUL authcid NUL passwd`, base64, in the initial
    /// response or after an empty 334 challenge.
    async fn sasl_plain(
        &mut self,
        initial: Option<String>,
    ) -> Result<Option<(String, String)>, Stop> {
        let response = match initial {
            Some(r) => r,
            None => match self.sasl_response("").await? {
                Some(r) => r,
                None => return Ok(None),
            },
        };
        let Some(decoded) = self.decode(&response)? else {
            return Ok(None);
        };
        let mut parts = decoded.split(|&b| b == 0);
        let (Some(authzid), Some(authcid), Some(passwd), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            self.reply(&malformed())?;
            return Ok(None);
        };
        // Acting for another identity (proxy authorisation) is not offered.
        if !authzid.is_empty() && authzid != authcid {
            self.reply(&Reply::enhanced(
                535,
                (5, 7, 8),
                "Authentication credentials invalid",
            ))?;
            return Ok(None);
        }
        match (
            String::from_utf8(authcid.to_vec()),
            String::from_utf8(passwd.to_vec()),
        ) {
            (Ok(u), Ok(p)) => Ok(Some((u, p))),
            _ => {
                self.reply(&malformed())?;
                Ok(None)
            }
        }
    }

    /// LOGIN: the user name and the password, each after its own 334.
    async fn sasl_login(
        &mut self,
        initial: Option<String>,
    ) -> Result<Option<(String, String)>, Stop> {
        let user = match initial {
            Some(r) => r,
            None => match self.sasl_response("VXNlcm5hbWU6").await? {
                Some(r) => r,
                None => return Ok(None),
            },
        };
        let Some(user) = self.decode(&user)? else {
            return Ok(None);
        };
        let Some(password) = self.sasl_response("UGFzc3dvcmQ6").await? else {
            return Ok(None);
        };
        let Some(password) = self.decode(&password)? else {
            return Ok(None);
        };
        match (String::from_utf8(user), String::from_utf8(password)) {
            (Ok(u), Ok(p)) => Ok(Some((u, p))),
            _ => {
                self.reply(&malformed())?;
                Ok(None)
            }
        }
    }

    /// Sends a 334 challenge and reads the client's line. `None` when the
    /// client cancelled with `*` (answered 501) or sent an over-long line.
    async fn sasl_response(&mut self, challenge: &str) -> Result<Option<String>, Stop> {
        Reply::new(334, None, challenge).write_wire(&mut self.out, false);
        let line = match self.next_line().await? {
            Line::Command(range) => String::from_utf8_lossy(&self.inbuf[range])
                .trim_end_matches('\r')
                .to_string(),
            Line::TooLong => {
                self.reply(&malformed())?;
                return Ok(None);
            }
        };
        if line == "*" {
            self.reply(&Reply::enhanced(501, (5, 0, 0), "Authentication cancelled"))?;
            return Ok(None);
        }
        Ok(Some(line))
    }

    fn decode(&mut self, text: &str) -> Result<Option<Vec<u8>>, Stop> {
        if text == "=" {
            return Ok(Some(Vec::new()));
        }
        match B64.decode(text.trim()) {
            Ok(b) => Ok(Some(b)),
            Err(_) => {
                self.reply(&malformed())?;
                Ok(None)
            }
        }
    }
}

fn malformed() -> Reply {
    Reply::enhanced(501, (5, 5, 2), "Malformed authentication data")
}
