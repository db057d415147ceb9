//! Each node's small HTTP endpoint (its `metrics` address): Prometheus
//! metrics, and the directory replication routes (a store serves
//! `/directory`; MX and MSA nodes take `POST /directory/changed` pushes).
//!
//! Loopback/internal only, one request per connection, no keep-alive:
//! the callers are Prometheus, our own nodes and the admin command.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::error;

pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into().into_bytes(),
        }
    }
    pub fn json(body: Vec<u8>) -> Response {
        Response {
            status: 200,
            content_type: "application/json",
            body,
        }
    }
}

/// A request's method, path and query string (`a=1&b=2` split).
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: HashMap<String, String>,
}

pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// Routes by exact path.
#[derive(Default, Clone)]
pub struct Router {
    routes: HashMap<&'static str, Handler>,
}

impl Router {
    pub fn route(
        mut self,
        path: &'static str,
        h: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> Self {
        self.routes.insert(path, Arc::new(h));
        self
    }

    fn handle(&self, req: &Request) -> Response {
        match self.routes.get(req.path.as_str()) {
            Some(h) => h(req),
            None => Response::text(404, "not found\n"),
        }
    }
}

pub fn spawn(addr: SocketAddr, router: Router) {
    tokio::spawn(async move {
        match TcpListener::bind(addr).await {
            Ok(listener) => serve(listener, addr, router),
            Err(e) => error!("http endpoint {addr}: {e}"),
        }
    });
}

/// Serves `router` on a listener bound earlier (before the node dropped
/// its privileges).
pub fn serve(listener: TcpListener, addr: SocketAddr, router: Router) {
    tokio::spawn(async move {
        let router = Arc::new(router);
        loop {
            let sock = match listener.accept().await {
                Ok((sock, _)) => sock,
                Err(e) => {
                    error!("http endpoint {addr}: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let router = router.clone();
            tokio::spawn(async move {
                let _ =
                    tokio::time::timeout(Duration::from_secs(10), serve_one(sock, &router)).await;
            });
        }
    });
}

async fn serve_one(mut sock: TcpStream, router: &Router) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    loop {
        if n == buf.len() {
            return Ok(()); // request head too large: drop it
        }
        let k = sock.read(&mut buf[n..]).await?;
        if k == 0 {
            return Ok(());
        }
        n += k;
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let mut first = head.lines().next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let target = first.next().unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let req = Request {
        method,
        path: path.to_string(),
        query,
    };
    let resp = router.handle(&req);
    let reason = match resp.status {
        200 => "OK",
        304 => "Not Modified",
        404 => "Not Found",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        resp.status,
        resp.content_type,
        resp.body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(&resp.body).await?;
    Ok(())
}

/// A minimal client for our own endpoints: status and body.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> std::io::Result<(u16, Vec<u8>)> {
    let fut = async {
        let mut sock = TcpStream::connect(addr).await?;
        let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        sock.write_all(req.as_bytes()).await?;
        let mut out = Vec::new();
        sock.read_to_end(&mut out).await?;
        let end = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| std::io::Error::other("malformed HTTP response"))?;
        let status: u16 = String::from_utf8_lossy(&out[..end])
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other("malformed HTTP status"))?;
        Ok((status, out[end + 4..].to_vec()))
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .map_err(|_| std::io::Error::other("timed out"))?
}
