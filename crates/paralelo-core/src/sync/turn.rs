//! A turn: one thread at a time runs a multi-step operation (a message sent in several
//! fragments must not interleave with another's). Unlike a mutex held across a wait, a
//! thread waiting for its turn sleeps in bounded slices and runs its poll between them
//! with nothing locked, and a thread that must not wait can ask without blocking.
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

use super::doorbell::SLICE;
use super::Poll;
use crate::{Error, Result};

#[derive(Default)]
pub struct Turn {
    /// Whether some thread has the turn. The mutex guards only this flag, for a moment.
    taken: Mutex<bool>,
    released: Condvar,
}

/// Holding this is having the turn; dropping it passes the turn on.
pub struct TurnGuard<'a> {
    turn: &'a Turn,
}

fn flag(m: &Mutex<bool>) -> MutexGuard<'_, bool> {
    // Only a bool is guarded: a panic cannot leave it half-written.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Turn {
    /// The turn if nobody has it, without waiting.
    pub fn try_take(&self) -> Option<TurnGuard<'_>> {
        let mut taken = flag(&self.taken);
        if *taken {
            return None;
        }
        *taken = true;
        Some(TurnGuard { turn: self })
    }

    /// Waits for the turn until `deadline` ([`Error::Timeout`]) or until `poll` says stop
    /// ([`Error::Interrupted`]); `poll` runs between slices with nothing locked.
    pub fn take(&self, deadline: Option<Instant>, poll: Poll<'_>) -> Result<TurnGuard<'_>> {
        loop {
            {
                let mut taken = flag(&self.taken);
                if !*taken {
                    *taken = true;
                    return Ok(TurnGuard { turn: self });
                }
                let slice = match deadline {
                    None => SLICE,
                    Some(d) => match d.checked_duration_since(Instant::now()) {
                        Some(left) if !left.is_zero() => left.min(SLICE),
                        _ => return Err(Error::Timeout),
                    },
                };
                let (mut taken, _) = self
                    .released
                    .wait_timeout(taken, slice)
                    .unwrap_or_else(|e| e.into_inner());
                if !*taken {
                    *taken = true;
                    return Ok(TurnGuard { turn: self });
                }
            }
            if !poll() {
                return Err(Error::Interrupted);
            }
        }
    }
}

impl Drop for TurnGuard<'_> {
    fn drop(&mut self) {
        *flag(&self.turn.taken) = false;
        self.turn.released.notify_one();
    }
}
