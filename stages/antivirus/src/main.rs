//! palisade-antivirus: stage C, antivirus (shared/SPEC.md §2, Table I DM28).
//!
//! Every message, from outside (flow 1) or from users (flow 4), is scanned
//! by clamd before it is queued; infected ones go to the quarantine and
//! are never bounced to an unauthenticated sender (SPEC §4).

use std::sync::Arc;

fn main() -> anyhow::Result<()> {
    palisade_stage::runtime::run_filtering_stage(palisade_stage::StageKind::Antivirus, |ctx| {
        // clamd addresses, MIME limits and the quarantine from the config;
        // a reload (SIGHUP) replaces the addresses and limits.
        let filter = Arc::new(palisade_antivirus::AntivirusFilter::new(ctx)?);
        let f = filter.clone();
        ctx.on_reload("antivirus scanner and limits", move |c| {
            f.reload(c);
            Ok(())
        });
        Ok(filter)
    })
}
