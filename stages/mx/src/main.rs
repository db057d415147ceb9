//! palisade-mx: stage A, the MX (shared/SPEC.md §2).

use std::sync::Arc;

fn main() -> anyhow::Result<()> {
    // Cut-through ([stage.mx.cut_through]) is the MX's only filter; it
    // passes everything through when disabled.
    palisade_stage::runtime::run_filtering_stage(palisade_stage::StageKind::Mx, |ctx| {
        Ok(Arc::new(palisade_stage::cut_through::CutThrough::new(ctx)))
    })
}
