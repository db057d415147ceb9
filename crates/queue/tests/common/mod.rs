#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use palisade_queue::{ClientInfo, NewMessage, NewRecipient};

/// A fresh, empty directory under cargo's target tmp dir (a real disk, so
/// fsync costs what it costs in production).
pub fn tempdir(name: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("palisade-queue")
        .join(format!("{name}-{}-{nanos}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Deterministic body of `len` bytes derived from `seed`.
pub fn body(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = format!("Subject: test {seed}\r\n\r\n").into_bytes();
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(b'a' + (x % 26) as u8);
        if out.len() % 78 == 76 {
            out.extend_from_slice(b"\r\n");
        }
    }
    out.truncate(len);
    out
}

pub fn msg(seed: u64, rcpts: &[&str], body_len: usize) -> NewMessage {
    NewMessage {
        origin: None,
        mail_from: "sender@example.org".into(),
        mail_params: "BODY=8BITMIME RET=HDRS".into(),
        rcpts: rcpts
            .iter()
            .map(|a| NewRecipient {
                address: a.to_string(),
                params: "NOTIFY=FAILURE".into(),
            })
            .collect(),
        client: ClientInfo {
            peer: "192.0.2.1:4711".into(),
            helo: "client.example.org".into(),
            tls: Some("TLSv1.3".into()),
            auth_user: None,
        },
        body: body(seed, body_len),
    }
}
