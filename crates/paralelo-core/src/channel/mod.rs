#![allow(unsafe_code)]
//! A channel: one ring in its own segment that any thread of any process holding the
//! segment sends into and receives from — the memory under multiprocessing's `Queue`,
//! `SimpleQueue`, `JoinableQueue` and `Pipe`. See `README.md` beside this file.
//!
//! The ring stays single-producer single-consumer; many senders (and many receivers) take
//! turns through a [`SharedLock`] per end, held for one message. A sender or receiver that
//! dies, or gives up, half-way through a message leaves a mark in the header, so the next
//! one drops that message's fragments and every other message arrives whole.
use std::os::fd::{BorrowedFd, RawFd};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crossbeam_utils::CachePadded;

use crate::primitive::{fence, AtomicU32, AtomicU64, Ordering};
use crate::ring::{
    Consumer, FrameHeader, Producer, RingHeader, RingPlace, MAX_CAPACITY, MIN_CAPACITY,
};
use crate::sync::{caller_ids, Doorbell, Poll, SharedLock};
pub use crate::sys::socket::{drain_pokes, hung_up, poke};
use crate::sys::thread;
use crate::{Error, Result, Segment};

const CHANNEL_MAGIC: u64 = 0x6e61_6863_6f6c_6170; // "palochan"
const CHANNEL_VERSION: u64 = 1;
const ALIGN: usize = 128;

/// `receiving`: no receiver is part-way through a message.
const WHOLE: u64 = 0;
/// `receiving`: a receiver released the first fragments of a message, not its end.
const MID: u64 = 1;
/// `receiving`: a receiver is about to release a message's end at stream position `p`
/// (positions are multiples of 8, so the mark's low bits tell it from the two above).
const fn ending_at(p: u64) -> u64 {
    p | 4
}

/// The channel's own words, before the ring. Written by any process that holds the
/// segment: atomics only, so a shared reference is sound whatever another process writes.
#[repr(C)]
struct ChannelHeader {
    magic: std::sync::atomic::AtomicU64,
    version: std::sync::atomic::AtomicU64,
    capacity: std::sync::atomic::AtomicU64,
    /// Held by the sender writing a message (a tid: a dead holder is taken over).
    send_lock: CachePadded<SharedLock>,
    /// 1 from before a sender publishes a message's first fragment of several until its
    /// last is out: if it is still 1 when the next sender comes, that one first tells the
    /// receiver to drop the fragments (`TAG_ABORT`).
    sending_mid: CachePadded<AtomicU32>,
    /// Held by the receiver reading a message.
    recv_lock: CachePadded<SharedLock>,
    /// `WHOLE`, `MID` or `ending_at(p)`: how far the last receiver got through a message
    /// of several fragments, so the next one knows whether the fragments at the tail
    /// start a message or finish one whose start is gone.
    receiving: CachePadded<AtomicU64>,
    /// Announces data to receivers (the ring's data bell).
    data_bell: CachePadded<Doorbell>,
    /// Threads waiting on a file descriptor rather than the data bell: senders then also
    /// write a byte to the receiver's descriptor (see the bindings' `Connection`).
    fd_watchers: CachePadded<AtomicU32>,
    /// Messages counted in (a queue's puts) and out (its gets, and puts that failed),
    /// wrapping: their difference is a queue's `qsize`, bounded by its `maxsize`. Two
    /// words on two lines, so that putters and getters do not write the same line.
    puts: CachePadded<AtomicU32>,
    gets: CachePadded<AtomicU32>,
    /// Rung when a message is counted out, for senders waiting below `maxsize`.
    count_bell: CachePadded<Doorbell>,
    /// Messages put and not yet marked done (a `JoinableQueue`'s `task_done`).
    unfinished: CachePadded<AtomicU32>,
    /// Rung when `unfinished` reaches 0.
    done_bell: CachePadded<Doorbell>,
}

/// Where the parts sit in a channel's segment.
#[derive(Clone, Copy)]
struct Layout {
    ring: RingPlace,
    total: usize,
}

impl Layout {
    const HEADER: usize = std::mem::size_of::<ChannelHeader>().next_multiple_of(ALIGN);
    const RING_HEADER: usize = std::mem::size_of::<RingHeader>().next_multiple_of(ALIGN);

    fn new(capacity: usize) -> Result<Self> {
        if !(MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) || !capacity.is_power_of_two() {
            return Err(Error::Invalid(format!(
                "a channel's capacity must be a power of two from {MIN_CAPACITY} to {MAX_CAPACITY} bytes, not {capacity}"
            )));
        }
        Ok(Layout {
            ring: RingPlace {
                header: Self::HEADER,
                data: Self::HEADER + Self::RING_HEADER,
                capacity,
                data_bell: std::mem::offset_of!(ChannelHeader, data_bell),
                room_bell: None,
            },
            total: Self::HEADER + Self::RING_HEADER + capacity,
        })
    }
}

/// One process's handle on a channel. Its methods may be called from any thread; the
/// process-local ends are only touched under the matching shared lock.
pub struct Channel {
    seg: Arc<Segment>,
    hdr: NonNull<ChannelHeader>,
    producer: Mutex<Producer>,
    consumer: Mutex<Consumer>,
}

// SAFETY: `hdr` points into `seg`, kept alive by the Arc; it is shared memory by design,
// touched only through atomics. The ring ends are behind mutexes.
unsafe impl Send for Channel {}
// SAFETY: as above.
unsafe impl Sync for Channel {}

/// Releases a shared lock when dropped, so every exit path of a send or receive frees it.
struct Held<'a> {
    lock: &'a SharedLock,
    me: u32,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        // We took it (recursive, by tid), so the release cannot fail.
        let _ = self.lock.release(self.me, true);
    }
}

/// Locks a process-local end; a thread that panicked with it held left nothing half-done
/// that the shared indices (re-read on every use) do not correct.
fn end<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn past(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| d <= Instant::now())
}

/// Takes an end's lock by the caller's `deadline`; with no time left, one look (which
/// marks no waiter for the holder's release to pay for).
fn take(lock: &SharedLock, me: u32, deadline: Option<Instant>, poll: Poll<'_>) -> Result<()> {
    if past(deadline) {
        return lock
            .try_acquire_or_recover(me, true)
            .map(|_| ())
            .ok_or(Error::Timeout);
    }
    lock.acquire(me, true, deadline, poll).map(|_| ())
}

impl Channel {
    /// A new channel whose ring holds `capacity` bytes (a power of two).
    pub fn create(capacity: usize) -> Result<Self> {
        let layout = Layout::new(capacity)?;
        let seg = Arc::new(Segment::create("paralelo-channel", layout.total)?);
        let hdr = NonNull::new(seg.at::<ChannelHeader>(0)?).expect("mapping is non-null");
        // SAFETY: in bounds and aligned (`Segment::at`); all atomics.
        let h = unsafe { hdr.as_ref() };
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        // The fd is shared only after this (which orders these stores for the others).
        h.magic.store(CHANNEL_MAGIC, relaxed);
        h.version.store(CHANNEL_VERSION, relaxed);
        h.capacity.store(capacity as u64, relaxed);
        Self::with(seg, hdr, layout, true)
    }

    /// The channel in a segment another process created and passed to us.
    pub fn open(fd: BorrowedFd<'_>) -> Result<Self> {
        let seg = Arc::new(Segment::open(fd)?);
        let hdr = NonNull::new(seg.at::<ChannelHeader>(0)?).expect("mapping is non-null");
        // SAFETY: as in `create`.
        let h = unsafe { hdr.as_ref() };
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        if h.magic.load(relaxed) != CHANNEL_MAGIC || h.version.load(relaxed) != CHANNEL_VERSION {
            return Err(Error::BadLayout { what: "channel" });
        }
        let capacity = usize::try_from(h.capacity.load(relaxed)).unwrap_or(usize::MAX);
        let layout = Layout::new(capacity).map_err(|_| Error::BadLayout { what: "channel" })?;
        if seg.len() < layout.total {
            return Err(Error::BadLayout { what: "channel" });
        }
        Self::with(seg, hdr, layout, false)
    }

    fn with(
        seg: Arc<Segment>,
        hdr: NonNull<ChannelHeader>,
        layout: Layout,
        init: bool,
    ) -> Result<Self> {
        Ok(Channel {
            producer: Mutex::new(Producer::new(seg.clone(), layout.ring, init)?),
            consumer: Mutex::new(Consumer::new(seg.clone(), layout.ring, init)?),
            seg,
            hdr,
        })
    }

    fn header(&self) -> &ChannelHeader {
        // SAFETY: in bounds and aligned (checked by `Segment::at`), alive as long as `seg`;
        // every field is an atomic, so a shared reference is sound whatever others write.
        unsafe { self.hdr.as_ref() }
    }

    /// The segment's descriptor, to pass the channel to another process.
    pub fn raw_fd(&self) -> RawFd {
        self.seg.raw_fd()
    }

    /// The ring's size in bytes.
    pub fn capacity(&self) -> usize {
        self.header()
            .capacity
            .load(std::sync::atomic::Ordering::Relaxed) as usize
    }

    /// The largest message that goes as one frame; longer ones stream in fragments.
    pub fn max_whole(&self) -> usize {
        end(&self.producer).max_fragment()
    }

    /// Sends `payload` whole if the send lock is free and the ring has room now; `false`
    /// (nothing sent) otherwise, or if it needs several fragments. Never waits.
    pub fn try_send(&self, payload: &[u8]) -> Result<bool> {
        let h = self.header();
        let (_, me) = caller_ids();
        if h.send_lock.try_acquire_or_recover(me, true).is_none() {
            return Ok(false);
        }
        let _held = Held {
            lock: &h.send_lock,
            me,
        };
        let mut p = end(&self.producer);
        p.resync(h.sending_mid.load(Ordering::Acquire) != 0)?;
        let sent = p.try_send(&FrameHeader::default(), payload)?;
        if sent {
            self.sent_whole(&p);
        }
        Ok(sent)
    }

    /// Sends `payload` (any size), waiting for the send lock and for room. `deadline`
    /// bounds the wait until the message starts going out; once its first fragment is
    /// out, the rest follows however long the receivers take (only `poll` stops it, and
    /// the next sender then tells the receiver to drop the fragments).
    pub fn send(&self, payload: &[u8], deadline: Option<Instant>, poll: Poll<'_>) -> Result<()> {
        let h = self.header();
        let (_, me) = caller_ids();
        take(&h.send_lock, me, deadline, poll)?;
        let _held = Held {
            lock: &h.send_lock,
            me,
        };
        let mut p = end(&self.producer);
        p.resync(h.sending_mid.load(Ordering::Acquire) != 0)?;
        if payload.len() > p.max_fragment() {
            // Before the first fragment is out: a sender that dies after it leaves the mark.
            h.sending_mid.store(1, Ordering::SeqCst);
        }
        let mut sent = 0;
        while !p.offer(&FrameHeader::default(), payload, &mut sent)? {
            p.notify(); // the receiver must drain what is in before more fits
            let need = p.room_needed(payload, sent);
            let until = if sent == 0 { deadline } else { None };
            p.probe().wait_room_after(p.head(), need, until, poll)?;
        }
        self.sent_whole(&p);
        Ok(())
    }

    /// After a whole message is published: clears a half-sent mark (ours, or one an
    /// earlier sender left that our abort frame answered) and wakes the receivers.
    fn sent_whole(&self, p: &Producer) {
        let h = self.header();
        if h.sending_mid.load(Ordering::Relaxed) != 0 {
            // Release: a receiver that reads 0 sees the last fragment published.
            h.sending_mid.store(0, Ordering::Release);
        }
        p.notify();
    }

    /// Receives one message into `out` (cleared first) if one is complete in the ring and
    /// the receive lock is free; `false` otherwise. Never waits, never reads part of a
    /// message.
    pub fn try_recv(&self, out: &mut Vec<u8>) -> Result<bool> {
        let h = self.header();
        let (_, me) = caller_ids();
        if h.recv_lock.try_acquire(me, true).is_none() {
            return Ok(false);
        }
        let _held = Held {
            lock: &h.recv_lock,
            me,
        };
        let mut c = end(&self.consumer);
        self.resync_receiver(&mut c)?;
        if c.in_partial() {
            return Ok(false); // (the rest of a message another receiver left: for `recv`)
        }
        out.clear();
        self.take_one(&mut c, out, true)
    }

    /// Receives one message into `out` (cleared first), waiting until `deadline`
    /// ([`Error::Timeout`]) for one to start; a message that started arriving is read
    /// whole, as multiprocessing's receive reads it.
    pub fn recv(&self, out: &mut Vec<u8>, deadline: Option<Instant>, poll: Poll<'_>) -> Result<()> {
        let h = self.header();
        let (_, me) = caller_ids();
        take(&h.recv_lock, me, deadline, poll)?;
        let _held = Held {
            lock: &h.recv_lock,
            me,
        };
        let mut c = end(&self.consumer);
        self.resync_receiver(&mut c)?;
        out.clear();
        loop {
            if self.take_one(&mut c, out, false)? {
                return Ok(());
            }
            if c.in_partial() {
                if self.take_rest(&mut c, out, poll)? {
                    return Ok(());
                }
                continue;
            }
            if past(deadline) {
                return Err(Error::Timeout); // (not even the wait's spin)
            }
            c.wait(deadline, poll)?;
        }
    }

    /// Re-reads the shared tail, and whether the last receiver left part-way through a
    /// message (its rest is then dropped).
    fn resync_receiver(&self, c: &mut Consumer) -> Result<()> {
        let h = self.header();
        let mark = h.receiving.load(Ordering::Acquire);
        c.resync(false)?;
        let mid = match mark {
            WHOLE => false,
            MID => true,
            // Its end was about to be released: if the tail is not there, it was not.
            at => at & !7 != c.tail(),
        };
        if mid {
            c.resync(true)?;
            h.receiving.store(MID, Ordering::Release);
        } else if mark != WHOLE {
            h.receiving.store(WHOLE, Ordering::Release);
        }
        Ok(())
    }

    /// Reads at most one message, and publishes how far it read, marking the header
    /// first so that a receiver dying at any point leaves a true account (see
    /// `receiving`). Whether a message was delivered.
    fn take_one(&self, c: &mut Consumer, out: &mut Vec<u8>, whole_only: bool) -> Result<bool> {
        let h = self.header();
        let before = c.tail();
        let was_mid = c.in_partial();
        let got = c.drain_held(1, out, |_, _| {}, whole_only);
        let moved = c.tail() != before;
        if moved && c.in_partial() {
            h.receiving.store(MID, Ordering::SeqCst);
        } else if moved && was_mid {
            h.receiving.store(ending_at(c.tail()), Ordering::SeqCst);
        }
        c.release();
        if moved && was_mid && !c.in_partial() {
            h.receiving.store(WHOLE, Ordering::Release);
        }
        Ok(got? == 1)
    }

    /// Waits for the rest of a message whose first fragments were read, however long it
    /// takes (only `poll` stops it): `true` once delivered; `false` if it was dropped, its
    /// sender having left half-way (died, or was interrupted), or aborted it.
    fn take_rest(&self, c: &mut Consumer, out: &mut Vec<u8>, poll: Poll<'_>) -> Result<bool> {
        while c.in_partial() {
            let mut abandoned = false;
            let mut check = || {
                if self.sender_left() {
                    abandoned = true;
                    return false;
                }
                poll()
            };
            match c.wait(None, &mut check) {
                Ok(()) => {}
                Err(Error::Interrupted) if abandoned => {
                    if !c.has_data() {
                        c.drop_message();
                        self.header().receiving.store(WHOLE, Ordering::Release);
                        return Ok(false);
                    }
                }
                Err(e) => return Err(e),
            }
            if self.take_one(c, out, false)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether a message is half-sent with nobody sending it: its sender died holding the
    /// send lock, or gave up and released it.
    fn sender_left(&self) -> bool {
        let h = self.header();
        if h.send_lock.holder().is_some_and(thread::exists) {
            return false;
        }
        // With the lock's word read free (or its holder dead): whatever its last holder
        // published before releasing it (its last fragment, then the cleared mark) is seen.
        fence(Ordering::Acquire);
        h.sending_mid.load(Ordering::Acquire) != 0
    }

    /// Whether a message (or the start of one) is waiting.
    pub fn has_data(&self) -> bool {
        end(&self.consumer).probe().has_data()
    }

    /// Waits until data is published, taking nothing (see [`crate::Doorbell::wait_until`]).
    pub fn wait_data(&self, deadline: Option<Instant>, poll: Poll<'_>) -> Result<()> {
        let probe = end(&self.consumer).probe();
        probe.wait_data(deadline, poll)
    }

    /// Counts one more thread waiting on a descriptor for this channel's data (`on`), or
    /// one fewer: while any does, [`Self::fd_watched`] tells senders to write a byte to it.
    /// A watcher checks for data after registering, so no message slips between.
    pub fn watch(&self, on: bool) {
        let w = &self.header().fd_watchers;
        if on {
            w.fetch_add(1, Ordering::SeqCst);
        } else {
            let _ = w.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        }
        // Pairs with the fence in `fd_watched`: a sender either sees us or we see its data.
        fence(Ordering::SeqCst);
    }

    /// After a send: whether a receiver waits on a descriptor and must be woken there.
    pub fn fd_watched(&self) -> bool {
        fence(Ordering::SeqCst);
        self.header().fd_watchers.load(Ordering::Relaxed) > 0
    }

    /// Counts a message in (a queue's put): waits while `max` (0: no bound) are in.
    pub fn reserve(&self, max: u32, deadline: Option<Instant>, poll: Poll<'_>) -> Result<()> {
        let h = self.header();
        if max == 0 {
            h.puts.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        loop {
            let puts = h.puts.load(Ordering::Relaxed);
            if puts.wrapping_sub(h.gets.load(Ordering::Relaxed)) < max {
                if h.puts
                    .compare_exchange(
                        puts,
                        puts.wrapping_add(1),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    )
                    .is_ok()
                {
                    return Ok(());
                }
                continue;
            }
            if past(deadline) {
                return Err(Error::Timeout); // (not even the wait's spin)
            }
            h.count_bell
                .wait_until(|| self.count() < max, deadline, poll)?;
        }
    }

    /// Counts a message out (a queue's get, or a put that failed after `reserve`).
    pub fn unreserve(&self) {
        let h = self.header();
        h.gets.fetch_add(1, Ordering::Relaxed);
        h.count_bell.ring();
    }

    /// Messages counted in and not yet out.
    pub fn count(&self) -> u32 {
        let h = self.header();
        // Gets first: a get counted after its put was read would show one too few, never
        // a wrapped-around "minus one".
        let gets = h.gets.load(Ordering::Relaxed);
        let puts = h.puts.load(Ordering::Relaxed);
        match puts.wrapping_sub(gets) {
            n if n > u32::MAX / 2 => 0,
            n => n,
        }
    }

    /// One more message to be marked done (a `JoinableQueue`'s put).
    pub fn add_unfinished(&self) {
        self.header().unfinished.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks one message done; [`Error::Invalid`] if none is pending.
    pub fn task_done(&self) -> Result<()> {
        let h = self.header();
        let left = h
            .unfinished
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| n.checked_sub(1))
            .map_err(|_| Error::Invalid("task_done() called too many times".into()))?;
        if left == 1 {
            h.done_bell.ring();
        }
        Ok(())
    }

    /// Messages not yet marked done.
    pub fn unfinished(&self) -> u32 {
        self.header().unfinished.load(Ordering::Acquire)
    }

    /// Waits until every message put was marked done.
    pub fn wait_finished(&self, deadline: Option<Instant>, poll: Poll<'_>) -> Result<()> {
        let h = self.header();
        h.done_bell
            .wait_until(|| h.unfinished.load(Ordering::Acquire) == 0, deadline, poll)
    }
}

#[cfg(test)]
mod tests;
