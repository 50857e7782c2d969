//! A counting semaphore in shared memory that threads of any process take and release:
//! a count, an optional bound, a doorbell to sleep on, and a table of which processes
//! hold how many units, so units held by a process that died are found and given back
//! instead of being waited for for ever.
use std::time::Instant;

use crate::primitive::{AtomicU32, Ordering};
use crate::sync::doorbell::{Doorbell, Poll};
use crate::sys::thread;
use crate::{Error, Result};

/// A waiter that has waited this long looks for dead holders (system calls: not for
/// every contended acquire).
const LOOK_AFTER: std::time::Duration = std::time::Duration::from_millis(10);

/// An entry being reclaimed: neither free nor any process's.
const RECLAIMING: u32 = u32::MAX;

/// Processes whose holds are tracked at once (a holder past them holds untracked units:
/// its death is not noticed).
pub const HOLDERS: usize = 16;

/// A cache line each: two processes taking units at once write their own entries, and
/// entries sharing a line (or the count's) would pass it back and forth at every take.
#[repr(C, align(64))]
#[derive(Default)]
struct Holder {
    /// 0: the entry is free.
    pid: AtomicU32,
    /// Units it took and has not given back itself.
    units: AtomicU32,
}

/// Plain data: lives in shared memory; zero-initialised, then [`init`](Self::init)ed.
#[repr(C)]
#[derive(Default)]
pub struct SharedSemaphore {
    /// Units free to take.
    value: AtomicU32,
    /// The starting count: units below it are held (a unit released beyond it was never
    /// taken: a signal, not a hold, and no death gives it back).
    initial: AtomicU32,
    /// 1: bounded (the count never exceeds `initial`).
    bounded: AtomicU32,
    _pad: u32,
    bell: Doorbell,
    holders: [Holder; HOLDERS],
}

/// One unit off a holder's count, if it has any: whether it had.
fn drop_unit(h: &Holder) -> bool {
    let mut u = h.units.load(Ordering::Relaxed);
    while u > 0 {
        match h
            .units
            .compare_exchange_weak(u, u - 1, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => return true,
            Err(now) => u = now,
        }
    }
    false
}

/// Takes one unit from a count (`word` - 1 if it is positive): whether it did. Acquire:
/// pairs with the Release of whoever added the unit (what they wrote before is seen).
pub(super) fn take_unit(word: &AtomicU32) -> bool {
    let mut v = word.load(Ordering::Relaxed);
    while v > 0 {
        match word.compare_exchange_weak(v, v - 1, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => return true,
            Err(now) => v = now,
        }
    }
    false
}

impl SharedSemaphore {
    /// Bytes a semaphore takes in shared memory.
    pub const SIZE: usize = std::mem::size_of::<SharedSemaphore>();

    /// Sets the starting count, and the bound (`bounded`: the count may never exceed
    /// `value`). Call once, on fresh (zeroed) memory, before it is shared.
    pub fn init(&self, value: u32, bounded: bool) {
        self.value.store(value, Ordering::Relaxed);
        self.initial.store(value, Ordering::Relaxed);
        self.bounded.store(u32::from(bounded), Ordering::Relaxed);
    }

    /// Units free to take now.
    pub fn value(&self) -> u32 {
        self.value.load(Ordering::Relaxed)
    }

    /// The bound, or None for an unbounded semaphore.
    pub fn bound(&self) -> Option<u32> {
        (self.bounded.load(Ordering::Relaxed) == 1).then(|| self.initial.load(Ordering::Relaxed))
    }

    fn take_one(&self) -> bool {
        take_unit(&self.value)
    }

    /// Takes a unit if one is free, for process `pid` (`hint`: where its entry was last
    /// found, updated). No waiting.
    pub fn try_acquire(&self, pid: u32, hint: &mut usize) -> bool {
        if !self.take_one() {
            return false;
        }
        if let Some(h) = self.entry(pid, hint, true) {
            h.units.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// Takes a unit for process `pid`, waiting until `deadline` ([`Error::Timeout`]) in
    /// slices between which `poll` runs ([`Error::Interrupted`]). A process that died
    /// holding units is found while waiting: its units are given back and the wait ends
    /// with [`Error::Abandoned`] naming it (the next acquire may take them).
    pub fn acquire(
        &self,
        pid: u32,
        hint: &mut usize,
        deadline: Option<Instant>,
        poll: Poll<'_>,
    ) -> Result<()> {
        loop {
            if self.try_acquire(pid, hint) {
                return Ok(());
            }
            let (mut dead, started) = (None, Instant::now());
            let mut look = || {
                // (A look costs system calls: only for a wait that has lasted. Never
                // under loom: a model replays the same steps each time, and a slow
                // machine made one look where the run before had not, which loom
                // refused as a nondeterministic model.)
                if !cfg!(loom) && started.elapsed() >= LOOK_AFTER {
                    dead = self.reclaim_dead(pid, false);
                }
                dead.is_none() && poll()
            };
            let waited = self
                .bell
                .wait_until(|| self.value() > 0, deadline, &mut look);
            if waited.is_err() && self.value() > 0 {
                // Leaving without a unit while one is free (it came as this waiter gave
                // up). A release wakes one waiter, and the futex only wakes one asleep,
                // which re-checks, so this should never be needed: a ring costs nothing
                // here, and makes that argument not the only thing between a unit and
                // a sleeper.
                self.bell.ring_one();
            }
            match waited {
                Ok(()) => {}
                Err(Error::Interrupted) if dead.is_some() => {
                    return Err(Error::Abandoned {
                        holder: dead.unwrap_or(0),
                    })
                }
                // Out of time: unless a holder died (then its units are there to take).
                Err(Error::Timeout) => {
                    return match self.reclaim_dead(pid, false) {
                        Some(holder) => Err(Error::Abandoned { holder }),
                        None => Err(Error::Timeout),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Gives a unit back (by any thread of any process, as multiprocessing's). A bounded
    /// semaphore already at its bound refuses ([`Error::NotHeld`]).
    pub fn release(&self, pid: u32, hint: &mut usize) -> Result<()> {
        match self.bound() {
            None => {
                // Release: pairs with the Acquire in `take_one`.
                self.value.fetch_add(1, Ordering::Release);
            }
            Some(bound) => {
                let mut v = self.value.load(Ordering::Relaxed);
                loop {
                    if v >= bound {
                        return Err(Error::NotHeld);
                    }
                    match self.value.compare_exchange_weak(
                        v,
                        v + 1,
                        Ordering::Release,
                        Ordering::Relaxed,
                    ) {
                        Ok(_) => break,
                        Err(now) => v = now,
                    }
                }
            }
        }
        // The unit comes off its taker's count: the releaser's own if it holds any, else
        // another's (a consumer releasing what a producer took: a slot freed, a mutex
        // handed over). Whose it was cannot be known, but the counts then still add up
        // to what is taken, so a taker that dies later gives back only what it still
        // holds, never a unit released already.
        let own = self.entry(pid, hint, false).is_some_and(drop_unit);
        if !own {
            let _ = self.holders.iter().any(|h| {
                let p = h.pid.load(Ordering::Relaxed);
                p != 0 && p != RECLAIMING && drop_unit(h)
            });
        }
        self.bell.ring_one(); // one unit: one waiter can take it
        Ok(())
    }

    /// Process `pid` is ending normally: what it holds is no longer its (a unit it took
    /// and never gave back was used up, as a consumer's is), so its death is not an
    /// abandonment.
    pub fn disown(&self, pid: u32) {
        let mut hint = 0;
        if let Some(h) = self.entry(pid, &mut hint, false) {
            h.units.store(0, Ordering::Relaxed);
            let _ = h
                .pid
                .compare_exchange(pid, 0, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Units process `pid` holds, as the table says (for tests and diagnostics).
    pub fn held_by(&self, pid: u32) -> u32 {
        let mut hint = 0;
        self.entry(pid, &mut hint, false)
            .map_or(0, |h| h.units.load(Ordering::Relaxed))
    }

    /// `pid`'s entry (made, if `make`, in a free one: when none is, entries of dead
    /// processes are swept first), looked for at `hint` first.
    fn entry(&self, pid: u32, hint: &mut usize, make: bool) -> Option<&Holder> {
        if let Some(h) = self.holders.get(*hint) {
            if h.pid.load(Ordering::Relaxed) == pid {
                return Some(h);
            }
        }
        if let Some(i) = self
            .holders
            .iter()
            .position(|h| h.pid.load(Ordering::Relaxed) == pid)
        {
            *hint = i;
            return Some(&self.holders[i]);
        }
        if !make {
            return None;
        }
        for sweep in [false, true] {
            if sweep {
                self.reclaim_dead(pid, true);
            }
            for (i, h) in self.holders.iter().enumerate() {
                if h.pid.load(Ordering::Relaxed) == 0
                    && h.pid
                        .compare_exchange(0, pid, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    h.units.store(0, Ordering::Relaxed);
                    *hint = i;
                    return Some(h);
                }
            }
        }
        None
    }

    /// Looks for holders that died (not `me`): their units below the starting count
    /// come back (a unit they took beyond it was a signal they consumed, not a hold), and
    /// their entries are freed. The first that had units to give back (its pid), if
    /// any; with `all`, every dead entry is freed before returning.
    pub fn reclaim_dead(&self, me: u32, all: bool) -> Option<u32> {
        let mut found = None;
        for h in &self.holders {
            let pid = h.pid.load(Ordering::Relaxed);
            if pid == 0 || pid == me || pid == RECLAIMING || thread::exists(pid) {
                continue;
            }
            // One reclaimer per dead entry, and no one takes the entry meanwhile: it
            // reads as neither free nor anyone's until its units are counted.
            if h.pid
                .compare_exchange(pid, RECLAIMING, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            let units = h.units.swap(0, Ordering::Relaxed);
            h.pid.store(0, Ordering::Release);
            let initial = self.initial.load(Ordering::Relaxed);
            // What the living are counted as holding is theirs: only the rest of what is
            // taken can have been the dead one's.
            let others: u32 = self
                .holders
                .iter()
                .filter(|o| !matches!(o.pid.load(Ordering::Relaxed), 0 | RECLAIMING))
                .map(|o| o.units.load(Ordering::Relaxed))
                .fold(0, u32::saturating_add);
            let mut v = self.value.load(Ordering::Relaxed);
            let back = loop {
                let back = units.min(initial.saturating_sub(v).saturating_sub(others));
                if back == 0 {
                    break 0;
                }
                match self.value.compare_exchange_weak(
                    v,
                    v + back,
                    Ordering::Release,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break back,
                    Err(now) => v = now,
                }
            };
            if back > 0 {
                self.bell.ring();
                found = found.or(Some(pid));
                if !all {
                    return found;
                }
            }
        }
        found
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn go_on() -> bool {
        true
    }

    #[test]
    fn units_are_counted_and_a_bounded_one_refuses_past_its_bound() {
        let me = std::process::id();
        let mut hint = 0;
        let s = SharedSemaphore::default();
        s.init(2, true);
        assert!(s.try_acquire(me, &mut hint));
        assert!(s.try_acquire(me, &mut hint));
        assert!(!s.try_acquire(me, &mut hint));
        assert_eq!(s.held_by(me), 2);
        s.release(me, &mut hint).unwrap();
        s.release(me, &mut hint).unwrap();
        assert!(matches!(s.release(me, &mut hint), Err(Error::NotHeld)));
        assert_eq!((s.value(), s.held_by(me)), (2, 0));
        let u = SharedSemaphore::default();
        u.init(0, false);
        u.release(me, &mut hint).unwrap();
        u.release(me, &mut hint).unwrap();
        assert_eq!(u.value(), 2);
        let zero = SharedSemaphore::default();
        zero.init(0, true);
        assert!(matches!(zero.release(me, &mut hint), Err(Error::NotHeld)));
    }

    #[test]
    fn a_wait_times_out_and_a_release_wakes_it() {
        let me = std::process::id();
        let s = Arc::new(SharedSemaphore::default());
        s.init(0, false);
        let mut poll = go_on;
        let soon = Some(Instant::now() + Duration::from_millis(20));
        assert!(matches!(
            s.acquire(me, &mut 0, soon, &mut poll),
            Err(Error::Timeout)
        ));
        let s2 = s.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(60));
            s2.release(me, &mut 0).unwrap();
        });
        let mut poll = go_on;
        s.acquire(me, &mut 0, None, &mut poll).unwrap();
        t.join().unwrap();
        assert_eq!(s.value(), 0);
    }

    #[test]
    fn a_dead_holders_units_come_back_and_its_death_is_reported_once() {
        let dead = (1 << 22) + 9; // no process has it: pid_max is at most 2^22
        let me = std::process::id();
        let s = SharedSemaphore::default();
        s.init(1, true);
        assert!(s.try_acquire(dead, &mut 0));
        let mut poll = go_on;
        let got = s.acquire(me, &mut 0, None, &mut poll);
        assert!(matches!(got, Err(Error::Abandoned { holder }) if holder == dead));
        assert_eq!(s.value(), 1, "its unit is back");
        assert_eq!(s.held_by(dead), 0);
        s.acquire(me, &mut 0, None, &mut poll).unwrap();
    }

    #[test]
    fn units_a_dead_consumer_took_beyond_the_start_are_not_given_back() {
        // A Semaphore(0) as a signal: another process released, the dead one consumed.
        let dead = (1 << 22) + 19;
        let me = std::process::id();
        let s = SharedSemaphore::default();
        s.init(0, false);
        for _ in 0..5 {
            s.release(me, &mut 0).unwrap();
        }
        for _ in 0..5 {
            assert!(s.try_acquire(dead, &mut 0));
        }
        assert_eq!(
            s.reclaim_dead(me, true),
            None,
            "nothing held: no abandonment"
        );
        assert_eq!((s.value(), s.held_by(dead)), (0, 0));
    }

    #[test]
    fn a_unit_another_process_released_is_not_given_back_at_its_takers_death() {
        // A producer takes a slot and dies after the consumer freed it: nothing of it is
        // given back (the bound would be passed), and a mutex handed over stays held.
        let (me, dead) = (std::process::id(), (1 << 22) + 17);
        let (mut hint, mut theirs) = (0, 0);
        let s = SharedSemaphore::default();
        s.init(2, true);
        assert!(s.try_acquire(dead, &mut theirs));
        s.release(me, &mut hint).unwrap(); // the consumer frees it
        assert!(s.try_acquire(me, &mut hint) && s.try_acquire(me, &mut hint));
        assert_eq!(s.reclaim_dead(me, false), None);
        assert_eq!(s.value(), 0);
        // Counted nowhere (a holder past the table): the living's counts still bound it.
        let m = SharedSemaphore::default();
        m.init(1, false);
        assert!(m.try_acquire(dead, &mut theirs));
        m.holders[0].units.store(1, Ordering::Relaxed);
        m.value.store(0, Ordering::Relaxed);
        let live = &m.holders[1];
        live.pid.store(me, Ordering::Relaxed);
        live.units.store(1, Ordering::Relaxed);
        assert_eq!(
            m.reclaim_dead(me, false),
            None,
            "the one unit taken is the living's"
        );
        assert_eq!(m.value(), 0);
        // And the unit released for a live taker is off its count: a holder that dies
        // with a unit of its own gets it back, not held back by the taker's stale count.
        let (producer, holder) = (me, (1 << 22) + 19);
        let b = SharedSemaphore::default();
        b.init(2, true);
        assert!(b.try_acquire(producer, &mut hint)); // the producer takes a slot
        b.release(holder, &mut theirs).unwrap(); // a consumer frees it
        assert_eq!(b.held_by(producer), 0);
        assert!(b.try_acquire(holder, &mut theirs)); // then dies holding one
        assert_eq!(b.reclaim_dead(me, false), Some(holder));
        assert_eq!(b.value(), 2);
    }

    #[test]
    fn dead_entries_are_swept_when_the_table_is_full() {
        let me = std::process::id();
        let s = SharedSemaphore::default();
        s.init(1, false);
        for k in 0..HOLDERS as u32 {
            let dead = (1 << 22) + 100 + k;
            assert!(s.try_acquire(dead, &mut 0));
            s.release(dead, &mut 0).unwrap();
        }
        assert!(s.try_acquire(me, &mut 0));
        assert_eq!(s.held_by(me), 1, "an entry was found for the living");
    }

    #[test]
    fn a_holder_that_disowns_is_not_an_abandonment() {
        let gone = (1 << 22) + 11;
        let me = std::process::id();
        let s = SharedSemaphore::default();
        s.init(1, false);
        assert!(s.try_acquire(gone, &mut 0));
        s.disown(gone);
        let mut poll = go_on;
        let soon = Some(Instant::now() + Duration::from_millis(80));
        assert!(matches!(
            s.acquire(me, &mut 0, soon, &mut poll),
            Err(Error::Timeout)
        ));
    }

    #[test]
    fn threads_take_no_more_units_than_there_are() {
        let s = Arc::new(SharedSemaphore::default());
        s.init(3, true);
        let inside = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let (s, inside) = (s.clone(), inside.clone());
                std::thread::spawn(move || {
                    let me = std::process::id();
                    let mut hint = 0;
                    let mut poll = go_on;
                    for _ in 0..5_000 {
                        s.acquire(me, &mut hint, None, &mut poll).unwrap();
                        assert!(inside.fetch_add(1, Ordering::SeqCst) < 3);
                        inside.fetch_sub(1, Ordering::SeqCst);
                        s.release(me, &mut hint).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!((s.value(), s.held_by(std::process::id())), (3, 0));
    }
}
