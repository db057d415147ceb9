//! Congestion control and slammer defenses at the MX, against the
//! configured caps: simultaneous connections from one client (DM10) and
//! connections per minute (DM11). Bounded: one more than the cap (or
//! `--flood-max` when the cap is unknown), within a minute, and run last
//! because a working limit makes the target refuse us for a while. Against
//! an MX that is not on loopback they run only with `--allow-flood`.

use std::time::{Duration, Instant};

use palisade_config::StageKind;

use super::{none_tested, Probe};
use crate::audit::{note, Ctx};
use crate::client::{elide, Conn};
use crate::model::{Fault, Finding, Line};

pub const CONNECTIONS: Probe = Probe {
    id: "connection-limit",
    fault: Fault::NoCongestionControl,
    mechanism: Some(10),
    title: "simultaneous connections from one client capped (421 4.7.0)",
};
pub const RATE: Probe = Probe {
    id: "connection-rate",
    fault: Fault::Slammer,
    mechanism: Some(11),
    title: "connections per minute from one client capped (421 4.7.0)",
};

pub const PROBES: &[Probe] = &[CONNECTIONS, RATE];

const WINDOW: Duration = Duration::from_secs(60);

pub async fn run(ctx: &Ctx) -> Vec<Finding> {
    let Some(mx) = ctx.opts.mx else {
        return none_tested(PROBES, "no --mx given", Vec::new());
    };
    if !mx.ip().is_loopback() && !ctx.opts.allow_flood {
        let why = "floods run against a loopback MX only, unless --allow-flood (a working limit locks the audit host out for a while)";
        return none_tested(PROBES, why, Vec::new());
    }
    if let Some(why) = ctx.trusted_source() {
        return none_tested(PROBES, &why, Vec::new());
    }
    let mech = ctx.settings(StageKind::Mx).map(|s| s.mechanisms);
    let per_client = mech.as_ref().map(|m| {
        m.dm10_connections
            .as_ref()
            .filter(|d| d.enabled)
            .map(|d| d.per_client)
    });
    let per_minute = mech.as_ref().map(|m| {
        m.dm11_rates
            .as_ref()
            .filter(|d| d.enabled)
            .map(|d| d.connections_per_minute as usize)
    });
    let mut out = Vec::new();
    if ctx.wants(CONNECTIONS.fault) {
        out.push(simultaneous(ctx, mx, per_client).await);
    }
    if ctx.wants(RATE.fault) {
        out.push(rate(ctx, mx, per_minute).await);
    }
    out
}

/// How many to try: above the configured cap, else the bound.
fn tries(cap: Option<Option<usize>>, slack: usize, max: usize) -> (usize, Option<bool>, String) {
    match cap {
        Some(Some(n)) => (n + slack, Some(true), format!("configured cap {n}")),
        Some(None) => (max, Some(false), "not configured".into()),
        None => (max, None, format!("cap unknown, tried up to {max}")),
    }
}

async fn simultaneous(ctx: &Ctx, mx: std::net::SocketAddr, cap: Option<Option<usize>>) -> Finding {
    let p = CONNECTIONS;
    let (n, claimed, cap_text) = tries(cap, 1, ctx.opts.flood_max);
    let mut open: Vec<Conn> = Vec::new();
    let mut t: Vec<Line> = vec![note(format!(
        "opening up to {n} simultaneous connections ({cap_text})"
    ))];
    let mut refused = None;
    for i in 0..n {
        let mut conn = match Conn::connect(ctx.dial(mx), Vec::new()).await {
            Ok(c) => c,
            Err(e) => {
                refused = Some(format!("connection {} not accepted: {e}", i + 1));
                break;
            }
        };
        match conn.banner().await {
            Ok(b) if b.code == 220 => open.push(conn),
            Ok(b) => {
                t.extend(conn.into_transcript());
                refused = Some(format!("connection {} refused: {}", i + 1, b.summary()));
                break;
            }
            Err(e) => {
                t.extend(conn.into_transcript());
                refused = Some(format!("connection {} got no banner: {e}", i + 1));
                break;
            }
        }
    }
    let held = open.len();
    if let Some(first) = open.first() {
        t.splice(1..1, first.transcript.iter().cloned());
    }
    drop(open);
    t.push(note(format!("{held} connections held open, then closed")));
    match refused {
        Some(why) => p.working(format!("{why} with {held} open ({cap_text})"), t),
        None => p.failed(
            claimed,
            format!("all {held} simultaneous connections accepted ({cap_text})"),
            t,
        ),
    }
}

async fn rate(ctx: &Ctx, mx: std::net::SocketAddr, cap: Option<Option<usize>>) -> Finding {
    let p = RATE;
    // Token buckets refill while we connect: a tenth more than the cap.
    let slack = cap.flatten().map_or(0, |n| n / 10 + 5);
    let (n, claimed, cap_text) = tries(cap, slack, 2 * ctx.opts.flood_max);
    let mut t: Vec<Line> = vec![note(format!(
        "up to {n} connections, one after another ({cap_text})"
    ))];
    let start = Instant::now();
    let keep = t.len();
    let mut refused = None;
    let mut accepted = 0;
    for i in 0..n {
        if start.elapsed() > WINDOW {
            break;
        }
        let mut conn = match Conn::connect(ctx.dial(mx), Vec::new()).await {
            Ok(c) => c,
            Err(e) => {
                refused = Some(format!("connection {} not accepted: {e}", i + 1));
                break;
            }
        };
        let banner = conn.banner().await;
        t.extend(std::mem::take(&mut conn.transcript));
        match banner {
            Ok(b) if b.code == 220 => accepted += 1,
            Ok(b) => {
                refused = Some(format!("connection {} refused: {}", i + 1, b.summary()));
                break;
            }
            Err(e) => {
                refused = Some(format!("connection {} got no banner: {e}", i + 1));
                break;
            }
        }
    }
    elide(&mut t, keep, 4, 4);
    let secs = start.elapsed().as_secs_f64();
    match refused {
        Some(why) => p.working(
            format!("{why} after {accepted} in {secs:.1} s ({cap_text})"),
            t,
        ),
        None => p.failed(
            claimed,
            format!("{accepted} connections in {secs:.1} s accepted ({cap_text})"),
            t,
        ),
    }
}
