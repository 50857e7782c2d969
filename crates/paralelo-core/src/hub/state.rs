//! What a worker is doing, as one word in its slot header: written by the worker with a
//! single store, read by the parent even after the worker died, so a death is blamed on
//! exactly what was running. The engine owns the encoding; callers use [`SlotState`].
//!
//! Word layout: bits 63–62 are the kind (0 idle, 1 running a unit, 2 unpacking a batch,
//! 3 outside any unit); the low 61 bits are the unit's ticket or the job; for kind 3,
//! bit 61 says which (0 loading a job's function, 1 running the pool's initializer).

use crate::{Error, Result};

/// The largest ticket or job id a slot state can carry.
pub const MAX_ID: u64 = (1 << 61) - 1;

const KIND_SHIFT: u32 = 62;
const INITIALIZING_BIT: u64 = 1 << 61;

/// What a worker is doing, as the parent sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    /// Between units, or not started.
    Idle,
    /// Executing the unit with this ticket.
    Running(u64),
    /// Unpickling a batch of units whose first ticket is this (which one is not known yet).
    Unpacking(u64),
    /// Loading the function of this job.
    LoadingFunction(u64),
    /// Running the pool's initializer.
    Initializing,
}

impl SlotState {
    pub(crate) fn encode(self) -> Result<u64> {
        let (kind, id) = match self {
            SlotState::Idle => return Ok(0),
            SlotState::Running(t) => (1, t),
            SlotState::Unpacking(t) => (2, t),
            SlotState::LoadingFunction(job) => (3, job),
            SlotState::Initializing => return Ok((3 << KIND_SHIFT) | INITIALIZING_BIT),
        };
        if id > MAX_ID {
            return Err(Error::Invalid(format!(
                "a slot state carries ids up to {MAX_ID}, not {id}"
            )));
        }
        Ok((kind << KIND_SHIFT) | id)
    }

    /// Any word decodes: it was written by another process, and a garbage word names a
    /// ticket the parent does not hold, which blames nothing.
    pub(crate) fn decode(word: u64) -> SlotState {
        let id = word & MAX_ID;
        match word >> KIND_SHIFT {
            0 => SlotState::Idle,
            1 => SlotState::Running(id),
            2 => SlotState::Unpacking(id),
            _ if word & INITIALIZING_BIT != 0 => SlotState::Initializing,
            _ => SlotState::LoadingFunction(id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_round_trips_through_one_word() {
        for s in [
            SlotState::Idle,
            SlotState::Running(0),
            SlotState::Running(MAX_ID),
            SlotState::Unpacking(17),
            SlotState::LoadingFunction(MAX_ID),
            SlotState::LoadingFunction(0),
            SlotState::Initializing,
        ] {
            assert_eq!(SlotState::decode(s.encode().unwrap()), s);
        }
        assert!(SlotState::Running(MAX_ID + 1).encode().is_err());
        for w in [u64::MAX, 1 << 63, 0x1234_5678_9abc_def0] {
            let _ = SlotState::decode(w); // any word decodes
        }
    }
}
