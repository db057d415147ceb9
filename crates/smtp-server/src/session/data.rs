//! DATA (RFC 5321 §4.1.1.4) and BDAT (RFC 3030).

use palisade_smtp_proto::{BdatReceiver, BodyType, DataError, DataReceiver, Progress, Reply};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::info;

use super::{Session, Stop};
use crate::hooks::{Envelope, Hooks};
use crate::state::SessionState;

/// Initial message buffer when the client gave no SIZE (grows as needed).
const DEFAULT_MESSAGE_CAPACITY: u64 = 64 * 1024;
/// Never pre-allocate more than this on the client's word (SIZE=).
const MAX_PREALLOC: u64 = 4 * 1024 * 1024;

impl<S, H> Session<S, H>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: Hooks,
{
    pub(super) async fn proceed_data(&mut self) -> Result<(), Stop> {
        if let SessionState::InTransaction { env } = &self.state {
            if env.mail_params.body == Some(BodyType::BinaryMime) {
                // RFC 3030 §3: BINARYMIME content can only travel in BDAT.
                return self.reply(&Reply::bad_sequence("BODY=BINARYMIME requires BDAT"));
            }
        }
        let SessionState::InTransaction { env } = self.enter(SessionState::ReceivingData) else {
            // INVARIANT: state::next admitted DATA only in a transaction.
            self.reset_transaction();
            return self.reply(&Reply::bad_sequence("Send MAIL first"));
        };
        self.reply(&Reply::new(
            354,
            None,
            "Start mail input; end with <CRLF>.<CRLF>",
        ))?;
        let max = self.config.max_message_size;
        let capacity = env
            .mail_params
            .size
            .unwrap_or(DEFAULT_MESSAGE_CAPACITY)
            .min(MAX_PREALLOC);
        let mut message = Vec::with_capacity(capacity as usize);
        let mut rx = DataReceiver::new(max);
        let result = self
            .receive(&mut message, |input, out| rx.feed(input, out))
            .await?;
        self.reset_transaction();
        self.finish_message(env, message, result).await
    }

    pub(super) async fn proceed_bdat(&mut self, size: u64, last: bool) -> Result<(), Stop> {
        let (env, mut message) = match self.enter(SessionState::ReceivingData) {
            SessionState::InTransaction { env } => {
                let capacity = env.mail_params.size.unwrap_or(size).min(MAX_PREALLOC);
                (env, Vec::with_capacity(capacity as usize))
            }
            SessionState::ReceivingBdat { env, message } => (env, message),
            _ => {
                // INVARIANT: state::next admitted BDAT only in a transaction.
                self.reset_transaction();
                self.skip_chunk(size).await?;
                return self.reply(&Reply::bad_sequence("Send MAIL first"));
            }
        };
        let mut rx = BdatReceiver::new(size, message.len() as u64, self.config.max_message_size);
        let result = self
            .receive(&mut message, |input, out| rx.feed(input, out))
            .await?;
        if result.is_ok() && !last {
            self.enter(SessionState::ReceivingBdat { env, message });
            return self.reply(&Reply::enhanced(
                250,
                (2, 0, 0),
                format!("{size} octets received"),
            ));
        }
        // A refused chunk ends the transaction (RFC 3030 §4.2: the client
        // must start over after an error).
        self.reset_transaction();
        self.finish_message(env, message, result).await
    }

    /// Feeds buffered and newly read input to `feed` (a DATA or BDAT
    /// receiver) until the message or chunk is complete.
    async fn receive(
        &mut self,
        message: &mut Vec<u8>,
        mut feed: impl FnMut(&[u8], &mut Vec<u8>) -> (usize, Progress),
    ) -> Result<Result<(), DataError>, Stop> {
        loop {
            let (n, progress) = feed(&self.inbuf[self.start..], message);
            self.start += n;
            if let Progress::Done(result) = progress {
                return Ok(result);
            }
            let idle = self.config.timeouts.data_chunk;
            self.fill(idle).await?;
        }
    }

    /// Hands a complete message to the stage, or refuses it.
    async fn finish_message(
        &mut self,
        env: Envelope,
        message: Vec<u8>,
        result: Result<(), DataError>,
    ) -> Result<(), Stop> {
        if let Err(e) = result {
            info!(peer = %self.info.peer, reason = e.as_str(), from = %env.mail_from, "message refused");
            return self.reply(&e.reply());
        }
        let reply = self.hooks.on_message(&self.info, env, message).await;
        if reply.is_positive() {
            self.counters.messages += 1;
        }
        self.reply(&reply)
    }
}
