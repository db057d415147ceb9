//! MAIL (RFC 5321 §4.1.1.2) and RCPT (§4.1.1.3).

use palisade_smtp_proto::{MailParams, RcptParams, Reply};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Session, Stop};
use crate::hooks::{Envelope, Hooks};
use crate::state::SessionState;

impl<S, H> Session<S, H>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: Hooks,
{
    pub(super) async fn proceed_mail(
        &mut self,
        from: String,
        params: MailParams,
    ) -> Result<(), Stop> {
        // check
        if params
            .size
            .is_some_and(|s| s > self.config.max_message_size)
        {
            return self.reply(&Reply::message_too_big());
        }
        if params.origin.is_some() && !self.config.accept_origin_param {
            return self.reply(&Reply::unknown_parameter("Unsupported parameter XORIGIN"));
        }
        if params.cut_through_ms.is_some() && !self.config.accept_origin_param {
            return self.reply(&Reply::unknown_parameter("Unsupported parameter XCUT"));
        }
        // policy
        if let Err(reply) = self.hooks.on_mail(&self.info, &from, &params).await {
            return self.reply(&reply);
        }
        // proceed
        self.enter(SessionState::InTransaction {
            env: Envelope {
                mail_from: from,
                mail_params: params,
                rcpts: Vec::new(),
            },
        });
        self.reply(&Reply::enhanced(250, (2, 1, 0), "OK"))
    }

    pub(super) async fn proceed_rcpt(
        &mut self,
        to: String,
        params: RcptParams,
    ) -> Result<(), Stop> {
        let SessionState::InTransaction { env } = &self.state else {
            return self.reply(&Reply::bad_sequence("Send MAIL first"));
        };
        // check
        if env.rcpts.len() >= self.config.max_recipients {
            return self.reply(&Reply::too_many_recipients());
        }
        if !env.mail_params.smtputf8 && !to.is_ascii() {
            return self.reply(&Reply::enhanced(
                553,
                (5, 6, 7),
                "Non-ASCII address requires SMTPUTF8",
            ));
        }
        // policy
        if let Err(reply) = self.hooks.on_rcpt(&self.info, env, &to, &params).await {
            return self.reply(&reply);
        }
        // proceed
        if let SessionState::InTransaction { env } = &mut self.state {
            env.rcpts.push((to, params));
        }
        self.reply(&Reply::enhanced(250, (2, 1, 5), "OK"))
    }
}
