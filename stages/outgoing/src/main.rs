//! palisade-outgoing: stage F, outgoing (shared/SPEC.md §2): the relay
//! intake of every stage, with the MX delivery engine of
//! `palisade-outbound` in place of the forwarder.

use palisade_stage::StageKind;

fn main() -> anyhow::Result<()> {
    palisade_stage::run_stage_with_deliverer(
        StageKind::Outgoing,
        Box::new(|ctx, queue| {
            let deliverer = palisade_outbound::Deliverer::new(ctx, queue)?;
            Ok(Box::pin(deliverer.run()))
        }),
    )
}
