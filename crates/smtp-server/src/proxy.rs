//! PROXY protocol v1 (text) and v2 (binary), as haproxy and the cloud load
//! balancers send it (haproxy's proxy-protocol.txt), so MX and MSA nodes
//! behind a load balancer see the real client address for every per-client
//! defense (DNSBL, rate and connection limits, greylisting, relay lists,
//! Received).
//!
//! # Security
//! The header is believed only from `trusted` addresses; from anyone else
//! it would let a client pick the address our defenses judge. So:
//! - a connection from a trusted proxy must start with a valid header
//!   within `header_timeout`, else it is logged and closed without a word
//!   (the proxy is broken or someone else has its address);
//! - a header from any other address is refused with `554 5.7.0` and the
//!   session closes ([`looks_like_header`], checked by the session before
//!   the banner and on the first command line).
//!
//! The header is read exactly (never past its end), so the SMTP bytes
//! behind it stay in the socket for the session.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ppp::v1;
use ppp::v2;
use tokio::io::{AsyncRead, AsyncReadExt};

/// A listener's PROXY protocol settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Load balancers allowed to send the header (and required to).
    pub trusted: Vec<IpAddr>,
    pub header_timeout: Duration,
}

impl ProxyConfig {
    pub fn trusts(&self, peer: IpAddr) -> bool {
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(peer),
            v4 => v4,
        };
        self.trusted.contains(&peer)
    }
}

/// v1: "PROXY" + at most 107 bytes with CRLF in all.
const V1_MAX: usize = 107;
/// v2 addresses and TLVs; haproxy's are a few hundred bytes at most.
const V2_MAX_PAYLOAD: usize = 4096;

/// The addresses a header carries: `None` for v2 LOCAL and v1 UNKNOWN
/// (the proxy's own health check: the connection is the proxy's).
pub type Proxied = Option<(SocketAddr, SocketAddr)>;

/// Reads one header from `stream`, within `timeout`.
pub async fn read_header<S>(stream: &mut S, timeout: Duration) -> Result<Proxied, String>
where
    S: AsyncRead + Unpin,
{
    match tokio::time::timeout(timeout, read_exact_header(stream)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no PROXY header within {timeout:?}")),
    }
}

async fn read_exact_header<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Proxied, String> {
    let io = |e: std::io::Error| format!("reading the PROXY header: {e}");
    // 12 bytes: the v2 signature, and less than the shortest v1 header.
    let mut buf = vec![0u8; v2::PROTOCOL_PREFIX.len()];
    stream.read_exact(&mut buf).await.map_err(io)?;
    if buf == v2::PROTOCOL_PREFIX {
        let mut fixed = [0u8; 4];
        stream.read_exact(&mut fixed).await.map_err(io)?;
        buf.extend_from_slice(&fixed);
        let len = u16::from_be_bytes([fixed[2], fixed[3]]) as usize;
        if len > V2_MAX_PAYLOAD {
            return Err(format!("PROXY v2 header of {len} bytes is too long"));
        }
        let start = buf.len();
        buf.resize(start + len, 0);
        stream.read_exact(&mut buf[start..]).await.map_err(io)?;
        let h = v2::Header::try_from(buf.as_slice()).map_err(|e| format!("bad PROXY v2: {e}"))?;
        return match (h.command, h.addresses) {
            (v2::Command::Local, _) => Ok(None),
            (v2::Command::Proxy, v2::Addresses::IPv4(a)) => Ok(Some((
                SocketAddr::new(a.source_address.into(), a.source_port),
                SocketAddr::new(a.destination_address.into(), a.destination_port),
            ))),
            (v2::Command::Proxy, v2::Addresses::IPv6(a)) => Ok(Some((
                SocketAddr::new(a.source_address.into(), a.source_port),
                SocketAddr::new(a.destination_address.into(), a.destination_port),
            ))),
            (v2::Command::Proxy, other) => Err(format!(
                "PROXY v2 with {:?} addresses: not a TCP client",
                other.address_family()
            )),
        };
    }
    if !buf.starts_with(b"PROXY ") {
        return Err("connection does not start with a PROXY header".into());
    }
    // v1 ends at CRLF: read byte by byte so nothing after it is consumed.
    while !buf.ends_with(b"\r\n") {
        if buf.len() >= V1_MAX {
            return Err("PROXY v1 line too long".into());
        }
        let mut b = [0u8; 1];
        stream.read_exact(&mut b).await.map_err(io)?;
        buf.push(b[0]);
    }
    let h = v1::Header::try_from(buf.as_slice()).map_err(|e| format!("bad PROXY v1: {e}"))?;
    match h.addresses {
        v1::Addresses::Unknown => Ok(None),
        v1::Addresses::Tcp4(a) => Ok(Some((
            SocketAddr::new(a.source_address.into(), a.source_port),
            SocketAddr::new(a.destination_address.into(), a.destination_port),
        ))),
        v1::Addresses::Tcp6(a) => Ok(Some((
            SocketAddr::new(a.source_address.into(), a.source_port),
            SocketAddr::new(a.destination_address.into(), a.destination_port),
        ))),
    }
}

/// Whether a client's first bytes are a PROXY header (v1 `PROXY ` or the
/// start of the v2 signature): never SMTP, refused from untrusted peers.
pub fn looks_like_header(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PROXY ") || bytes.starts_with(&v2::PROTOCOL_PREFIX[..5])
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn parse(bytes: &[u8]) -> (Result<Proxied, String>, Vec<u8>) {
        let (mut a, mut b) = tokio::io::duplex(8192);
        a.write_all(bytes).await.unwrap();
        drop(a);
        let r = read_header(&mut b, Duration::from_secs(1)).await;
        let mut rest = Vec::new();
        let _ = b.read_to_end(&mut rest).await;
        (r, rest)
    }

    #[tokio::test]
    async fn v1_gives_the_client_and_leaves_the_smtp_bytes() {
        let (r, rest) = parse(b"PROXY TCP4 127.0.0.9 127.0.0.1 40000 25\r\nEHLO x\r\n").await;
        let (peer, local) = r.unwrap().unwrap();
        assert_eq!(peer, "127.0.0.9:40000".parse().unwrap());
        assert_eq!(local, "127.0.0.1:25".parse().unwrap());
        assert_eq!(rest, b"EHLO x\r\n");
        let (r, _) = parse(b"PROXY TCP6 ::9 ::1 40000 25\r\n").await;
        assert_eq!(r.unwrap().unwrap().0, "[::9]:40000".parse().unwrap());
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").await.0.unwrap(), None);
    }

    #[tokio::test]
    async fn v2_gives_the_client_and_leaves_the_smtp_bytes() {
        let header = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (
                "127.0.0.9:40000".parse::<SocketAddr>().unwrap(),
                "127.0.0.1:25".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        let mut bytes = header.clone();
        bytes.extend_from_slice(b"QUIT\r\n");
        let (r, rest) = parse(&bytes).await;
        assert_eq!(r.unwrap().unwrap().0, "127.0.0.9:40000".parse().unwrap());
        assert_eq!(rest, b"QUIT\r\n");
        assert!(looks_like_header(&header));
    }

    #[tokio::test]
    async fn garbage_or_silence_is_refused() {
        assert!(parse(b"EHLO client.example\r\n").await.0.is_err());
        assert!(parse(b"PROXY TCP4 999.0.0.1 127.0.0.1 1 25\r\n")
            .await
            .0
            .is_err());
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(200));
        assert!(parse(long.as_bytes()).await.0.is_err());
        let (_a, mut b) = tokio::io::duplex(64);
        let r = read_header(&mut b, Duration::from_millis(50)).await;
        assert!(r.unwrap_err().contains("no PROXY header"));
        assert!(!looks_like_header(b"EHLO x\r\n"));
        assert!(looks_like_header(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"));
    }
}
