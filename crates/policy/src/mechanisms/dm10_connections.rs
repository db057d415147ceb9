//! DM10 client connection limit: simultaneous SMTP connections per client
//! address, and in total, on this node's listener.
//!
//! The SMTP engine tells hooks when a session starts but not when it ends,
//! so instead of keeping a count that could drift, the kernel's own table
//! of established TCP connections (`/proc/net/tcp{,6}`) is read when a
//! client connects: it is exact, whatever way sessions ended. It costs a
//! read of a small file per connection (a few hundred lines at most on a
//! busy MX) and only on Linux; elsewhere the check is skipped.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Established connections to `listener`: (from `client`, in total).
pub fn count_established(listener: SocketAddr, client: IpAddr) -> Option<(usize, usize)> {
    let mut found = false;
    let (mut from_client, mut total) = (0, 0);
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
            total += 1;
            if same_ip(r.ip(), client) {
                from_client += 1;
            }
        }
    }
    found.then_some((from_client, total))
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
}
