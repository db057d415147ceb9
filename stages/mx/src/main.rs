//! palisade-mx: stage A, the MX (shared/SPEC.md §2).
//!
//! Cut-through (`[stage.mx.cut_through]`, crates/stage/src/cut_through.rs)
//! is part of the relay intake, as at the MSA.

fn main() -> anyhow::Result<()> {
    palisade_stage::run_relay_stage(palisade_stage::StageKind::Mx)
}
