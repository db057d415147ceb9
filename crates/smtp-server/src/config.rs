//! Listener configuration as the stages hand it to [`crate::serve`].

use std::sync::Arc;
use std::time::Duration;

/// What kind of listener this is; decides which commands make sense.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerProfile {
    /// Port 25 style, mail from the Internet (stage A).
    Mx,
    /// Message submission (stage B, RFC 6409). AUTH is a later issue: the
    /// session answers AUTH with `538 5.7.11` before TLS and `502 5.5.1`
    /// after; requiring AUTH before MAIL (`530 5.7.0`) is the stage's
    /// `on_mail` hook's job until then.
    Submission,
    /// Palisade-internal hop (stages C, D, F, G intake).
    Internal,
}

/// Read timeouts; each expiry ends the session with `421 4.4.2`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Idle time allowed while waiting for a command line (RFC 5321
    /// §4.5.3.2.7 suggests 5 minutes).
    pub command: Duration,
    /// Idle time allowed between two reads of DATA/BDAT content.
    pub data_chunk: Duration,
    /// Hard cap on the whole session's reads, whatever the client does.
    pub session: Duration,
}

/// Everything one listener needs.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Our name in the banner, EHLO and replies.
    pub hostname: String,
    pub profile: ListenerProfile,
    /// STARTTLS is offered when set (and TLS is not active yet).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// 465 style: the TLS handshake comes first; requires `tls`.
    pub implicit_tls: bool,
    /// Advertised in `SIZE`; larger messages get `552 5.3.4`.
    pub max_message_size: u64,
    /// More recipients get `452 4.5.3`.
    pub max_recipients: usize,
    /// Error replies allowed per session; the one that reaches the limit is
    /// followed by `421 4.7.0 Too many errors` and the close. 0 = no limit.
    pub max_errors: u32,
    /// Concurrent sessions per listener; more get `421 4.7.0`.
    pub max_sessions: usize,
    /// DM32 greet pause: wait this long before the banner; a client that
    /// talks first gets `554 5.5.1` and is disconnected.
    pub greet_pause: Duration,
    pub timeouts: Timeouts,
    /// Advertise the private `XORIGIN` and `XCUT` EHLO keywords and accept
    /// `MAIL ... XORIGIN=<token> XCUT=<ms>`; only for internal palisade hops.
    pub accept_origin_param: bool,
}

impl ServerConfig {
    /// A configuration with conservative defaults, for tests and examples.
    pub fn new(hostname: impl Into<String>, profile: ListenerProfile) -> Self {
        ServerConfig {
            hostname: hostname.into(),
            profile,
            tls: None,
            implicit_tls: false,
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            max_errors: 20,
            max_sessions: 500,
            greet_pause: Duration::ZERO,
            timeouts: Timeouts {
                command: Duration::from_secs(300),
                data_chunk: Duration::from_secs(180),
                session: Duration::from_secs(1800),
            },
            accept_origin_param: false,
        }
    }
}
