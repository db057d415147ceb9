//! DM10 client connection limit: simultaneous SMTP connections per client
//! address, and in total, on this node's listener.
//!
//! The SMTP engine tells hooks when a session starts but not when it ends,
//! so the count cannot simply go down at the end of a session. Instead a
//! registry remembers the sessions started since it was last checked: its
//! counts can only be too high (sessions that ended are still in it), so
//! while they are within the limits the client is admitted at no cost.
//! Only when a count goes over does the registry learn the truth from the
//! kernel's table of established TCP connections (`/proc/net/tcp{,6}`) and
//! forget the sessions that ended. That read costs milliseconds on a busy
//! host (thousands of TIME_WAIT lines), so it happens at most once per
//! `limit - live` new connections. Where there is no /proc (not Linux) the
//! check is skipped.

use std::collections::HashMap;
use std::sync::Mutex;

use palisade_smtp_proto::Reply;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The sessions started on one listener, checked against the limits.
pub struct Connections {
    per_client: usize,
    total: usize,
    /// Listener -> client address -> peers (address and port) of sessions
    /// that may still be open: a superset of the live ones. The limits
    /// hold per listener (the MSA's 587 and 465 count separately).
    started: Mutex<HashMap<SocketAddr, HashMap<IpAddr, Vec<SocketAddr>>>>,
}

impl Connections {
    pub fn new(per_client: usize, total: usize) -> Self {
        Connections {
            per_client,
            total,
            started: Mutex::default(),
        }
    }

    /// Admits the new session from `peer`, or refuses it with 421.
    pub fn admit(&self, listener: SocketAddr, peer: SocketAddr) -> Option<Reply> {
        let ip = peer.ip();
        let mut all = self.started.lock().unwrap();
        let started = all.entry(listener).or_default();
        started.entry(ip).or_default().push(peer);
        let within = |m: &HashMap<IpAddr, Vec<SocketAddr>>| {
            let mine = m.get(&ip).map_or(0, Vec::len);
            let all: usize = m.values().map(Vec::len).sum();
            (mine <= self.per_client, all <= self.total)
        };
        if within(started) == (true, true) {
            return None;
        }
        // Over on the upper bound: ask the kernel which sessions are live.
        let live = established_peers(listener)?;
        started.clear();
        for p in live {
            started.entry(normalize(p.ip())).or_default().push(p);
        }
        let (client_ok, total_ok) = within(started);
        if client_ok && total_ok {
            return None;
        }
        // This session is refused and closed: it no longer counts.
        if let Some(v) = started.get_mut(&ip) {
            v.retain(|p| *p != peer);
        }
        Some(Reply::closing_policy(if !client_ok {
            format!("Too many connections from {ip}")
        } else {
            "Too many connections".to_string()
        }))
    }
}

fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Peers of the established connections to `listener`.
pub fn established_peers(listener: SocketAddr) -> Option<Vec<SocketAddr>> {
    let mut found = false;
    let mut peers = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        found = true;
        for line in text.lines().skip(1) {
            let mut f = line.split_whitespace();
            let (Some(_), Some(local), Some(remote), Some(state)) =
                (f.next(), f.next(), f.next(), f.next())
            else {
                continue;
            };
            // 01 = ESTABLISHED; a session we are still serving.
            if state != "01" {
                continue;
            }
            let (Some(l), Some(r)) = (parse_proc_addr(local), parse_proc_addr(remote)) else {
                continue;
            };
            if l.port() != listener.port() || !same_ip(l.ip(), listener.ip()) {
                continue;
            }
            peers.push(SocketAddr::new(normalize(r.ip()), r.port()));
        }
    }
    found.then_some(peers)
}

/// Established connections to `listener`: (from `client`, in total).
pub fn count_established(listener: SocketAddr, client: IpAddr) -> Option<(usize, usize)> {
    let peers = established_peers(listener)?;
    let mine = peers.iter().filter(|p| same_ip(p.ip(), client)).count();
    Some((mine, peers.len()))
}

/// IPv4 and IPv4-mapped IPv6 are the same client; an unspecified listener
/// address matches every local address.
fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    let norm = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    let (a, b) = (norm(a), norm(b));
    a == b || a.is_unspecified() || b.is_unspecified()
}

/// `0100007F:09C5` (IPv4, host byte order per 32-bit word) or the 32-digit
/// IPv6 form.
fn parse_proc_addr(s: &str) -> Option<SocketAddr> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(addr, 16).ok()?.swap_bytes(),
        )),
        32 => {
            let mut octets = [0u8; 16];
            for w in 0..4 {
                let word = u32::from_str_radix(&addr[w * 8..w * 8 + 8], 16).ok()?;
                octets[w * 4..w * 4 + 4].copy_from_slice(&word.to_le_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_addresses() {
        assert_eq!(
            parse_proc_addr("0100007F:09C5").unwrap(),
            "127.0.0.1:2501".parse().unwrap()
        );
        assert_eq!(
            parse_proc_addr("00000000000000000000000001000000:0050").unwrap(),
            "[::1]:80".parse().unwrap()
        );
    }

    #[test]
    fn counts_our_own_connections() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let _c1 = std::net::TcpStream::connect(addr).unwrap();
        let _c2 = std::net::TcpStream::connect(addr).unwrap();
        let _a1 = l.accept().unwrap();
        let _a2 = l.accept().unwrap();
        let (client, total) = count_established(addr, "127.0.0.1".parse().unwrap()).unwrap();
        assert_eq!((client, total), (2, 2));
        let (other, _) = count_established(addr, "127.0.0.9".parse().unwrap()).unwrap();
        assert_eq!(other, 0);
    }

    #[test]
    fn registry_admits_within_limits_and_forgets_closed_sessions() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let limits = Connections::new(2, 100);
        let mut open = Vec::new();
        for _ in 0..2 {
            let c = std::net::TcpStream::connect(addr).unwrap();
            let peer = c.local_addr().unwrap();
            open.push((c, l.accept().unwrap()));
            assert!(limits.admit(addr, peer).is_none());
        }
        let c3 = std::net::TcpStream::connect(addr).unwrap();
        let a3 = l.accept().unwrap();
        let r = limits.admit(addr, c3.local_addr().unwrap()).unwrap();
        assert_eq!(r.code, 421);
        drop((c3, a3));
        // One session ends: the next one is admitted (after the kernel
        // check prunes the registry).
        drop(open.pop());
        std::thread::sleep(std::time::Duration::from_millis(50));
        let c4 = std::net::TcpStream::connect(addr).unwrap();
        let _a4 = l.accept().unwrap();
        assert!(limits.admit(addr, c4.local_addr().unwrap()).is_none());
    }
}
