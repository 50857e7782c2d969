//! Loom models of the doorbell protocol (`src/sync/README.md`), of the ring's wait for
//! data and for room (`src/ring/`), and of the shared lock (`src/sync/lock.rs`). Only
//! built with `--cfg loom`: run them with `.ci/loom`.
//!
//! Under loom the atomics of `crate::primitive` are loom's, the futex is a mutex and a
//! condition variable with no timeout (`src/sys/futex.rs`), and the ring's byte copies are
//! tracked per 8-byte cell (`src/ring/mem.rs`). So in every interleaving loom explores
//! (up to its preemption bound) and every value a weak load may return:
//!
//! * a lost wake-up leaves a thread asleep for ever, which loom reports as a deadlock;
//! * a consumer reading bytes the producer's `head` did not publish to it (or a producer
//!   overwriting bytes whose `tail` release it did not see) is a causality violation;
//! * what arrives is checked byte for byte and in order.
#![cfg(loom)]

use std::sync::Arc;

use loom::sync::atomic::{AtomicU32, Ordering};
use loom::thread;

use paralelo_core::ring::RingPlace;
use paralelo_core::{Consumer, Doorbell, FrameHeader, Producer, Segment};

/// The smallest ring the constructor accepts (`MIN_CAPACITY` rounded up to a power of two):
/// 64-byte fragments (32 of header, 32 of payload), four to a full ring.
const CAP: usize = 256;

/// A bounded model run: `LOOM_MAX_PREEMPTIONS` (default 3, as in `.ci/loom`) bounds the
/// context switches loom forces on a thread that could go on running. Says how many
/// executions it explored.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = runs.clone();
    let start = std::time::Instant::now();
    b.check(move || {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        f();
    });
    eprintln!(
        "{}: {} executions (preemption bound {}) in {:.1?}",
        std::thread::current().name().unwrap_or("model"),
        runs.load(std::sync::atomic::Ordering::Relaxed),
        b.preemption_bound.unwrap(),
        start.elapsed(),
    );
}

fn keep_waiting() -> bool {
    true
}

// ---------------------------------------------------------------------------------------
// The doorbell alone.

/// A waiter and a ringer that publishes then rings: the waiter always wakes.
#[test]
fn doorbell_wakes_its_waiter() {
    model(|| {
        let bell = Arc::new(Doorbell::default());
        let flag = Arc::new(AtomicU32::new(0));
        let waiter = {
            let (bell, flag) = (bell.clone(), flag.clone());
            thread::spawn(move || {
                bell.wait_until(
                    || flag.load(Ordering::Acquire) == 1,
                    None,
                    &mut keep_waiting,
                )
                .unwrap();
            })
        };
        flag.store(1, Ordering::Release);
        bell.ring();
        waiter.join().unwrap();
        assert_eq!(
            bell.sleepers(),
            0,
            "a waiter that returned is no longer registered"
        );
    });
}

/// Two rounds over the same bell: `seq` moves on, and a second wait still wakes (a waiter
/// that kept a stale `seq` would sleep through the second ring).
#[test]
fn doorbell_wakes_twice() {
    model(|| {
        let bell = Arc::new(Doorbell::default());
        let back = Arc::new(Doorbell::default());
        let step = Arc::new(AtomicU32::new(0));
        let waiter = {
            let (bell, back, step) = (bell.clone(), back.clone(), step.clone());
            thread::spawn(move || {
                for round in 1..=2 {
                    bell.wait_until(
                        || step.load(Ordering::Acquire) >= 2 * round - 1,
                        None,
                        &mut keep_waiting,
                    )
                    .unwrap();
                    step.store(2 * round, Ordering::Release);
                    back.ring();
                }
            })
        };
        for round in 1..=2 {
            step.store(2 * round - 1, Ordering::Release);
            bell.ring();
            back.wait_until(
                || step.load(Ordering::Acquire) >= 2 * round,
                None,
                &mut keep_waiting,
            )
            .unwrap();
        }
        waiter.join().unwrap();
    });
}

/// Two waiters on one bell (as on a hub's shared results bell), one ring: both wake.
#[test]
fn doorbell_wakes_every_waiter() {
    model(|| {
        let bell = Arc::new(Doorbell::default());
        let flag = Arc::new(AtomicU32::new(0));
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let (bell, flag) = (bell.clone(), flag.clone());
                thread::spawn(move || {
                    bell.wait_until(
                        || flag.load(Ordering::Acquire) == 1,
                        None,
                        &mut keep_waiting,
                    )
                    .unwrap();
                })
            })
            .collect();
        flag.store(1, Ordering::Release);
        bell.ring();
        for w in waiters {
            w.join().unwrap();
        }
    });
}

// ---------------------------------------------------------------------------------------
// The ring: a producer thread and a consumer thread, each sleeping on the other's bell.

/// A ring of `CAP` bytes with its own data bell, in a fresh segment (so fresh loom atomics:
/// `RingMem::new` writes them under loom).
fn ring() -> (Producer, Consumer) {
    let align = |n: usize| n.next_multiple_of(64);
    let header = 0;
    let data = align(RingPlace::HEADER_BYTES);
    let data_bell = data + CAP;
    let len = align(data_bell + std::mem::size_of::<Doorbell>());
    let seg = Arc::new(Segment::create("loom-ring", len).unwrap());
    let place = RingPlace {
        header,
        data,
        capacity: CAP,
        data_bell,
        room_bell: None,
    };
    let producer = Producer::new(seg.clone(), place, true).unwrap();
    let consumer = Consumer::new(seg, place, false).unwrap();
    (producer, consumer)
}

/// Message `i`: `len` bytes that name it, and a header that does too.
fn message(i: u64, len: usize) -> (FrameHeader, Vec<u8>) {
    let h = FrameHeader {
        tag: i as u32 + 1,
        job: 100 + i,
        seq: i,
        aux: !i,
    };
    let payload = (0..len)
        .map(|b| (i as u8).wrapping_mul(31).wrapping_add(b as u8))
        .collect();
    (h, payload)
}

/// Sends `prefill` (into the ring before the threads start) then `sent` from a producer
/// thread, while the consumer waits for data and drains until all arrived: each must
/// arrive whole, in order, and nobody may sleep for ever.
fn stream(prefill: &'static [usize], sent: &'static [usize]) {
    model(move || {
        let (mut producer, mut consumer) = ring();
        for (i, &len) in prefill.iter().enumerate() {
            let (h, p) = message(i as u64, len);
            assert!(producer.try_send(&h, &p).unwrap(), "the prefill fits");
        }
        let first = prefill.len() as u64;
        let tx = thread::spawn(move || {
            for (i, &len) in sent.iter().enumerate() {
                let (h, p) = message(first + i as u64, len);
                producer.send(&h, &p, None, &mut keep_waiting).unwrap();
            }
        });
        let total = prefill.len() + sent.len();
        let mut got = Vec::new();
        let mut out = Vec::new();
        while got.len() < total {
            consumer.wait(None, &mut keep_waiting).unwrap();
            consumer
                .drain(usize::MAX, &mut out, |h, r| got.push((h, r)))
                .unwrap();
        }
        tx.join().unwrap();
        assert!(!consumer.has_data(), "nothing but the messages was sent");
        let lens = prefill.iter().chain(sent);
        for (i, ((h, r), &len)) in got.iter().zip(lens).enumerate() {
            let (want_h, want_p) = message(i as u64, len);
            assert_eq!(*h, want_h, "message {i}: header");
            assert_eq!(&out[r.clone()], &want_p[..], "message {i}: payload");
        }
    });
}

/// Whole-frame messages through a full ring: three 64-byte frames are in before the
/// threads start, so the producer's second message finds the ring full unless the
/// consumer has drained, and must sleep on the room bell.
#[test]
fn ring_fills_and_drains() {
    stream(&[32, 32, 32], &[32, 32]);
}

/// A message larger than the ring (five 32-byte fragments: 320 ring bytes in 256) streams
/// through while the consumer reassembles it: the producer must wake the consumer before
/// it sleeps for room, or both sleep for ever.
#[test]
fn ring_streams_a_message_larger_than_itself() {
    stream(&[], &[160]);
}

/// A message of four fragments (32 + 32 + 32 + 4 bytes: 232 ring bytes, which with the
/// 40 of the message before it do not fit) after a whole one: the consumer delivers the
/// first and reassembles the second.
#[test]
fn ring_reassembles_after_a_whole_message() {
    stream(&[8], &[100]);
}

/// A producer past the ring's first quarter (two messages, 104 ring bytes, in before the
/// threads start) sends two more while the consumer drains: whether it finds the ring
/// empty (and rewinds, the skip published with the frame after it) or not depends on the
/// interleaving; every message must arrive whole and in order either way.
#[test]
fn ring_rewinds_when_its_consumer_has_caught_up() {
    stream(&[32, 8], &[8, 8]);
}

/// Two threads (ids 1 and 2; under loom every holder lives) take and release one
/// `SharedLock` twice each, incrementing a plain (race-checked) counter inside: loom
/// reports an overlap as a causality violation and a release that fails to wake a sleeper
/// as a deadlock.
#[test]
fn shared_lock_excludes_and_wakes_its_waiter() {
    use loom::cell::UnsafeCell;
    use paralelo_core::SharedLock;

    model(|| {
        let shared = Arc::new((SharedLock::default(), UnsafeCell::new(0u32)));
        let other = shared.clone();
        let t = thread::spawn(move || {
            let (lock, count) = &*other;
            for _ in 0..2 {
                lock.acquire(2, false, None, &mut keep_waiting).unwrap();
                // SAFETY: only the lock's holder touches the counter.
                count.with_mut(|c| unsafe { *c += 1 });
                lock.release(2, false).unwrap();
            }
        });
        let (lock, count) = &*shared;
        for _ in 0..2 {
            lock.acquire(1, false, None, &mut keep_waiting).unwrap();
            // SAFETY: as above.
            count.with_mut(|c| unsafe { *c += 1 });
            lock.release(1, false).unwrap();
        }
        t.join().unwrap();
        // SAFETY: both threads are done.
        assert_eq!(count.with(|c| unsafe { *c }), 4);
    });
}

/// Three threads take and release one `SharedLock` once each, one of them giving up on
/// its first wake-up (its poll says stop, as Ctrl-C would): the wake-up it took must be
/// handed on, or a sleeper waits for ever (a loom deadlock; `wake_one` wakes one here).
#[test]
fn shared_lock_hands_on_a_wake_up_its_interrupted_waiter_took() {
    use paralelo_core::SharedLock;

    model(|| {
        let lock = Arc::new(SharedLock::default());
        let spawn = |id: u32, give_up: bool| {
            let lock = lock.clone();
            thread::spawn(move || {
                let mut polls = 0;
                let mut poll = || {
                    polls += 1;
                    !(give_up && polls == 1)
                };
                if lock.acquire(id, false, None, &mut poll).is_ok() {
                    lock.release(id, false).unwrap();
                }
            })
        };
        let (a, b) = (spawn(2, true), spawn(3, false));
        lock.acquire(1, false, None, &mut keep_waiting).unwrap();
        lock.release(1, false).unwrap();
        a.join().unwrap();
        b.join().unwrap();
        assert_eq!(lock.holder(), None);
    });
}

// ---------------------------------------------------------------------------------------
// The semaphore: a release wakes one waiter (`Doorbell::ring_one`).

/// Two waiters on an empty semaphore, two units released one at a time: each release
/// wakes one waiter, and both get their unit (a release whose wake-up went nowhere would
/// leave one asleep: a loom deadlock).
#[test]
fn semaphore_releases_wake_a_waiter_each() {
    use paralelo_core::sync::SharedSemaphore;

    model(|| {
        let sem = Arc::new(SharedSemaphore::default());
        sem.init(0, false);
        let waiters: Vec<_> = (2..4)
            .map(|pid| {
                let sem = sem.clone();
                thread::spawn(move || {
                    sem.acquire(pid, &mut 0, None, &mut keep_waiting).unwrap();
                })
            })
            .collect();
        for _ in 0..2 {
            sem.release(1, &mut 0).unwrap();
        }
        for w in waiters {
            w.join().unwrap();
        }
        assert_eq!(sem.value(), 0);
    });
}

/// Of two waiters for one unit, one gives up (its poll says stop, as Ctrl-C would): the
/// other still gets the unit. (Under loom a waiter polls before it first sleeps, so the
/// one that gives up never holds a wake-up here; the ring-on in `acquire` is not what this
/// checks: see the comment there.)
#[test]
fn semaphore_hands_on_a_wake_up_its_interrupted_waiter_took() {
    use paralelo_core::sync::SharedSemaphore;

    model(|| {
        let sem = Arc::new(SharedSemaphore::default());
        sem.init(0, false);
        let spawn = |pid: u32, give_up: bool| {
            let sem = sem.clone();
            thread::spawn(move || {
                let mut polls = 0;
                let mut poll = || {
                    polls += 1;
                    !(give_up && polls == 1)
                };
                sem.acquire(pid, &mut 0, None, &mut poll).is_ok()
            })
        };
        let (a, b) = (spawn(2, true), spawn(3, false));
        sem.release(1, &mut 0).unwrap();
        let a_took = a.join().unwrap();
        if a_took {
            sem.release(1, &mut 0).unwrap(); // (so the other can finish)
        }
        assert!(b.join().unwrap());
    });
}
