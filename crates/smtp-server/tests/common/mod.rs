//! Shared helpers: a recording Hooks impl, a server on 127.0.0.1:0, a raw
//! line-oriented client, and a self-signed TLS setup.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_smtp_server::{
    serve, Envelope, Hooks, ListenerProfile, Reply, ServerConfig, SessionInfo,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
pub struct Recorder {
    pub messages: Mutex<Vec<(SessionInfo, Envelope, Vec<u8>)>>,
    pub reject_connect: bool,
}

impl Recorder {
    pub fn count(&self) -> usize {
        self.messages.lock().unwrap().len()
    }
    pub fn take(&self) -> Vec<(SessionInfo, Envelope, Vec<u8>)> {
        std::mem::take(&mut *self.messages.lock().unwrap())
    }
}

impl Hooks for Recorder {
    fn on_connect(&self, _s: &SessionInfo) -> impl Future<Output = Result<(), Reply>> + Send {
        let reject = self.reject_connect;
        async move {
            if reject {
                Err(Reply::enhanced(554, (5, 7, 1), "Listed on test.dnsbl"))
            } else {
                Ok(())
            }
        }
    }
    fn on_rcpt(
        &self,
        _s: &SessionInfo,
        _env: &Envelope,
        to: &str,
        _params: &palisade_smtp_server::RcptParams,
    ) -> impl Future<Output = Result<(), Reply>> + Send {
        let unknown = to.starts_with("unknown@");
        async move {
            if unknown {
                Err(Reply::enhanced(550, (5, 1, 1), "No such user"))
            } else {
                Ok(())
            }
        }
    }
    fn on_message(
        &self,
        s: &SessionInfo,
        env: Envelope,
        message: Vec<u8>,
    ) -> impl Future<Output = Reply> + Send {
        let mut all = self.messages.lock().unwrap();
        all.push((s.clone(), env, message));
        let n = all.len();
        async move { Reply::enhanced(250, (2, 0, 0), format!("Queued as T{n}")) }
    }
}

pub fn config() -> ServerConfig {
    let mut c = ServerConfig::new("mx.test", ListenerProfile::Mx);
    c.max_message_size = 10_000;
    c.timeouts.command = Duration::from_secs(10);
    c.timeouts.data_chunk = Duration::from_secs(10);
    c
}

pub async fn start_with(cfg: ServerConfig, hooks: Recorder) -> (SocketAddr, Arc<Recorder>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hooks = Arc::new(hooks);
    tokio::spawn(serve(listener, Arc::new(cfg), hooks.clone()));
    (addr, hooks)
}

pub async fn start(f: impl FnOnce(&mut ServerConfig)) -> (SocketAddr, Arc<Recorder>) {
    let mut cfg = config();
    f(&mut cfg);
    start_with(cfg, Recorder::default()).await
}

pub struct Client<S> {
    pub io: BufReader<S>,
}

impl Client<TcpStream> {
    pub async fn connect(addr: SocketAddr) -> Self {
        Client {
            io: BufReader::new(TcpStream::connect(addr).await.unwrap()),
        }
    }
    /// Connects and reads the banner.
    pub async fn greeted(addr: SocketAddr) -> Self {
        let mut c = Self::connect(addr).await;
        let banner = c.reply().await;
        assert_eq!(banner, "220 mx.test ESMTP Palisade\r\n");
        c
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub fn new(s: S) -> Self {
        Client {
            io: BufReader::new(s),
        }
    }
    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.io.get_mut().write_all(bytes.as_ref()).await.unwrap();
    }
    /// One complete (possibly multi-line) reply, raw; "" at EOF.
    pub async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(10), self.io.read_line(&mut line))
                .await
                .expect("timed out waiting for a reply")
                .unwrap_or(0);
            if n == 0 {
                return all;
            }
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }
    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n")).await;
        self.reply().await
    }
    /// Sends a command and checks the reply starts with `prefix`.
    pub async fn ok(&mut self, line: &str, prefix: &str) {
        let r = self.cmd(line).await;
        assert!(
            r.starts_with(prefix),
            "{line:?}: expected {prefix:?}, got {r:?}"
        );
    }
    pub async fn expect_eof(&mut self) {
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(10), self.io.read_to_end(&mut rest))
            .await
            .expect("timed out waiting for close")
            .unwrap_or(0);
        assert_eq!(
            n,
            0,
            "expected EOF, got {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
}

/// A self-signed server and a client that accepts it.
pub use palisade_testsupport::tls;
