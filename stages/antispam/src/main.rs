//! palisade-antispam: stage D, antispam (shared/SPEC.md §2; Table I DM23,
//! DM24). Scores every message, tags it, quarantines it or holds outbound
//! spam; the forwarder then routes each recipient to its store node or to
//! the outgoing stage.

use std::sync::Arc;

fn main() -> anyhow::Result<()> {
    palisade_stage::runtime::run_filtering_stage(palisade_stage::StageKind::Antispam, |ctx| {
        // Bayes database, rules and thresholds from the config; a reload
        // (SIGHUP) replaces the rules and thresholds.
        let filter = Arc::new(palisade_antispam::AntispamFilter::new(ctx)?);
        let f = filter.clone();
        ctx.on_reload("antispam rules and thresholds", move |c| f.reload(c));
        Ok(filter)
    })
}
