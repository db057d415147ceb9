//! The interface between the session and the stage's policy.

use std::future::Future;
use std::net::SocketAddr;

use palisade_smtp_proto::{MailParams, RcptParams, Reply};

/// The negotiated TLS parameters of a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsInfo {
    /// e.g. `TLSv1_3`.
    pub version: String,
    /// e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
}

/// What the session knows about its client; handed to every hook.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    /// Unique in the process (every listener), for logs and per-session
    /// state.
    pub id: u64,
    /// The client: the TCP peer, or behind a trusted PROXY-protocol load
    /// balancer the client address its header carries.
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// The trusted load balancer the session came through, if any.
    pub proxy: Option<SocketAddr>,
    /// The HELO/EHLO name, once given (cleared by STARTTLS).
    pub helo: Option<String>,
    /// True after EHLO: enhanced status codes are sent.
    pub esmtp: bool,
    pub tls: Option<TlsInfo>,
    pub auth_user: Option<String>,
}

/// One transaction's envelope: the reverse-path and the accepted recipients.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Envelope {
    /// Empty for the null reverse-path `<>`.
    pub mail_from: String,
    pub mail_params: MailParams,
    pub rcpts: Vec<(String, RcptParams)>,
}

/// Stage policy called by the session at each phase. A hook returning `Err`
/// makes the session send that reply instead of proceeding; a `421` reply
/// also closes the session (RFC 5321 §3.8). Hooks must not block the thread;
/// they may take long (DNS, cut-through), the session waits.
pub trait Hooks: Send + Sync + 'static {
    /// After accept (and the implicit-TLS handshake), before the greet pause
    /// and banner. `Err` => that reply is sent and the session closes.
    fn on_connect(&self, _s: &SessionInfo) -> impl Future<Output = Result<(), Reply>> + Send {
        async { Ok(()) }
    }
    /// The session has ended (whatever the reason, refused at connect
    /// included) and its socket is closed: per-session state can go, e.g.
    /// the DM10 connection slot it held. Must not block.
    fn on_close(&self, _s: &SessionInfo) {}
    /// A syntactically valid HELO/EHLO; `s.helo` still holds the old name.
    fn on_helo(
        &self,
        _s: &SessionInfo,
        _name: &str,
    ) -> impl Future<Output = Result<(), Reply>> + Send {
        async { Ok(()) }
    }
    /// SMTP AUTH (submission profile, under TLS only): check the
    /// credentials. `Ok(identity)` authenticates the session as that
    /// identity (235); `Err` is sent as is (535 5.7.8, or 421 to throttle).
    fn on_auth(
        &self,
        _s: &SessionInfo,
        _user: &str,
        _password: &str,
    ) -> impl Future<Output = Result<String, Reply>> + Send {
        async {
            Err(Reply::enhanced(
                535,
                (5, 7, 8),
                "Authentication credentials invalid",
            ))
        }
    }
    /// A valid MAIL in sequence, after the SIZE and XORIGIN checks.
    fn on_mail(
        &self,
        _s: &SessionInfo,
        _from: &str,
        _params: &MailParams,
    ) -> impl Future<Output = Result<(), Reply>> + Send {
        async { Ok(()) }
    }
    /// A valid RCPT in sequence, after the recipient-count check; `env` holds
    /// the recipients accepted so far.
    fn on_rcpt(
        &self,
        _s: &SessionInfo,
        _env: &Envelope,
        _to: &str,
        _params: &RcptParams,
    ) -> impl Future<Output = Result<(), Reply>> + Send {
        async { Ok(()) }
    }
    /// The whole message has arrived (dot-unstuffed, CRLF lines). The
    /// returned reply is the final answer to DATA/BDAT LAST; the stage
    /// returns 250 only after the message is durably queued. May take long
    /// (cut-through).
    fn on_message(
        &self,
        s: &SessionInfo,
        env: Envelope,
        message: Vec<u8>,
    ) -> impl Future<Output = Reply> + Send;
}
