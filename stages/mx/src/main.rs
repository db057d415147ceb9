//! palisade-mx: stage A, the MX (shared/SPEC.md §2).

fn main() -> anyhow::Result<()> {
    palisade_stage::run_relay_stage(palisade_stage::StageKind::Mx)
}
