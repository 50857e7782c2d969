//! Slot states between Python and the engine: `(kind, id)` with a kind that names it.
use paralelo_core::SlotState;

pub(crate) fn state_tuple(s: SlotState) -> (&'static str, u64) {
    match s {
        SlotState::Idle => ("idle", 0),
        SlotState::Running(t) => ("running", t),
        SlotState::Unpacking(t) => ("unpacking", t),
        SlotState::LoadingFunction(job) => ("loading", job),
        SlotState::Initializing => ("initializing", 0),
    }
}
