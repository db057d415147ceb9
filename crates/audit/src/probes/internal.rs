//! Any to any (DM3 internal/external MTA, DM1 perimeter): the internal
//! stages (antivirus, antispam, outgoing, store intake) must not take mail
//! from where the audit runs — only from their upstream stage. Reaching
//! one directly skips every defense in front of it.

use super::Probe;
use crate::audit::Ctx;
use crate::client::Conn;
use crate::model::{Fault, Finding};

pub const INTERNAL: Probe = Probe {
    id: "internal-reachable",
    fault: Fault::AnyToAny,
    mechanism: Some(3),
    title: "internal stage not reachable from outside",
};

pub const PROBES: &[Probe] = &[INTERNAL];

pub async fn run(ctx: &Ctx) -> Vec<Finding> {
    let p = INTERNAL;
    if ctx.opts.internal.is_empty() {
        return vec![p.not_tested("no --internal addresses given", Vec::new())];
    }
    // Our internal stages always keep to their upstream nodes.
    let claimed = ctx.opts.config.as_ref().map(|_| true);
    let mut out = Vec::new();
    for &addr in &ctx.opts.internal {
        let mut f = match Conn::connect(ctx.dial(addr), Vec::new()).await {
            Err(e) => p.working(
                format!("{addr} not reachable: {e}"),
                vec![crate::audit::note(format!("connect {addr}: {e}"))],
            ),
            Ok(mut conn) => match conn.banner().await {
                Ok(b) if b.code == 220 => {
                    let t = conn.quit().await;
                    p.failed(claimed, format!("{addr} accepts us: {}", b.summary()), t)
                }
                Ok(b) => p.working(
                    format!("{addr} refuses us: {}", b.summary()),
                    conn.into_transcript(),
                ),
                Err(e) => p.working(
                    format!("{addr} gave no banner: {e}"),
                    conn.into_transcript(),
                ),
            },
        };
        f.title = format!("{} ({addr})", p.title);
        out.push(f);
    }
    out
}
