//! `_native.Arena`: the engine's arena as Python sees it. A process counts its own
//! references to each block here (many views of one block are one hold in the arena), and
//! a forked child takes the slot its parent reserved for it, holding what the parent held.
//! `_native.ArenaBuffer` is a view of part of a block, with the buffer protocol: numpy and
//! pickle's out-of-band buffers use it with no copy; the block lives while any view does.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::raw::c_int;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use paralelo_core::shm::{Arena, BlockRef};
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::to_py;
use crate::forklock::{ForkGuard, ForkLock};

/// A descriptor: index u32, generation u32, block offset u64, start in the block u64,
/// length u64 (little endian).
const DESCRIPTOR: usize = 32;

struct Local {
    /// The process these holds are for (0: none, after `leave`).
    pid: u32,
    slot: u32,
    /// Before a fork: the slot reserved for the child (see `before_fork`).
    child_slot: Option<u32>,
    /// Blocks this process holds, by offset.
    held: BTreeMap<u64, Held>,
}

/// A block this process holds.
struct Held {
    block: BlockRef,
    /// Views and holds alive here.
    count: usize,
    /// A SharedArray's: shared on purpose, never mapped privately.
    shared: bool,
    /// Made here to go out in a message (`put`), and not viewed here: never mapped
    /// privately either (no one here writes it after its fill, and a fork in another
    /// thread mid-fill would send the rest of the fill to private pages).
    outgoing: bool,
    /// Mapped privately here since a fork (see `Arena::remap`).
    private: bool,
}

/// What a reference to a block is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Use {
    /// A view of a received buffer: private after a fork, as all other memory is.
    View,
    /// A SharedArray's.
    Shared,
    /// A block made to send (see `Held::outgoing`).
    Outgoing,
}

impl Local {
    /// After a fork, on both sides: each keeps its own copy of what it held (copy on
    /// write, as fork does with all other memory), but a SharedArray's block stays shared.
    fn privatise(&mut self, arena: &Arena) {
        for h in self.held.values_mut() {
            if !h.shared && !h.outgoing && !h.private {
                h.private = arena.remap(&h.block, true).is_ok();
            }
        }
    }
}

struct Shared {
    arena: Arena,
    local: ForkLock<Local>,
}

impl Shared {
    /// The bookkeeping, waited for with the GIL released: a thread forking holds it while
    /// it runs the other at-fork hooks, which may need the GIL (and so may a second thread
    /// forking at the same time).
    fn lock_local(&self) -> ForkGuard<'_, Local> {
        Python::attach(|py| self.local.lock_with(|spin| py.detach(spin)))
    }

    fn local(&self) -> PyResult<ForkGuard<'_, Local>> {
        let mut l = self.lock_local();
        let pid = std::process::id();
        if l.pid != pid {
            match l.child_slot.take() {
                // A forked child: the slot its parent reserved holds what it inherited
                // (views in its copy of the parent's objects).
                Some(slot) if l.pid != 0 => {
                    self.arena.claim(slot, pid).map_err(to_py)?;
                    l.slot = slot;
                    l.privatise(&self.arena);
                }
                // A fork the hooks did not see (or a process that left): hold what is
                // still there, alongside whoever keeps it.
                _ => {
                    let slot = self.arena.join(pid).map_err(to_py)?;
                    l.slot = slot;
                    l.held
                        .retain(|_, h| self.arena.hold(slot, &h.block, false).is_ok());
                }
            }
            l.pid = pid;
        }
        Ok(l)
    }

    /// One more reference here to block `r`, which this process holds, for `what`.
    fn count(l: &mut Local, r: BlockRef, what: Use) {
        let h = l.held.entry(r.offset).or_insert(Held {
            block: r,
            count: 0,
            shared: false,
            outgoing: what == Use::Outgoing,
            private: false,
        });
        h.count += 1;
        h.shared |= what == Use::Shared;
        h.outgoing &= what == Use::Outgoing; // (viewed here now: as any view)
    }

    /// One reference here to block `r` less; the last lets go of it in the arena, or, with
    /// `hand_over`, gives it to a message. Nothing if `r` was not counted here.
    fn uncount(&self, r: &BlockRef, hand_over: bool) -> PyResult<()> {
        let mut l = self.local()?;
        let last = match l.held.get_mut(&r.offset) {
            Some(h) if h.block.index == r.index && h.block.gen == r.gen => {
                h.count -= 1;
                h.count == 0
            }
            _ => return Ok(()),
        };
        // Shared again before it goes: its next use here reads the arena.
        if last && l.held.remove(&r.offset).is_some_and(|h| h.private) {
            self.arena.remap(r, false).map_err(to_py)?;
        }
        let result = match (hand_over, last) {
            (true, true) => self.arena.hand_over(l.slot, r),
            (true, false) => self.arena.give(r),
            (false, true) => self.arena.release(l.slot, r),
            (false, false) => Ok(()),
        };
        result.map_err(to_py)
    }

    /// The block this process holds that contains `len` bytes at `addr`, and where they
    /// start in it.
    fn containing(&self, l: &Local, addr: usize, len: usize) -> Option<(BlockRef, u64)> {
        let base = self.arena.base() as usize;
        let off = (addr.checked_sub(base)? as u64, len as u64);
        let (_, h) = l.held.range(..=off.0).next_back()?;
        let start = off.0 - h.block.offset;
        (h.shared && start + off.1 <= h.block.len).then_some((h.block, start))
    }
}

fn encode(r: &BlockRef, start: u64, len: u64) -> [u8; DESCRIPTOR] {
    let mut d = [0u8; DESCRIPTOR];
    d[0..4].copy_from_slice(&r.index.to_le_bytes());
    d[4..8].copy_from_slice(&r.gen.to_le_bytes());
    d[8..16].copy_from_slice(&r.offset.to_le_bytes());
    d[16..24].copy_from_slice(&start.to_le_bytes());
    d[24..32].copy_from_slice(&len.to_le_bytes());
    d
}

fn decode(d: &[u8]) -> PyResult<(BlockRef, u64, u64)> {
    let d: &[u8; DESCRIPTOR] = d
        .try_into()
        .map_err(|_| PyValueError::new_err("an arena descriptor is 32 bytes"))?;
    let u32_at = |i: usize| u32::from_le_bytes(d[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(d[i..i + 8].try_into().expect("8 bytes"));
    let (start, len) = (u64_at(16), u64_at(24));
    let end = start
        .checked_add(len)
        .ok_or_else(|| PyValueError::new_err("a corrupt arena descriptor"))?;
    // The block's own length is checked by the arena; `end` is what the view needs.
    let r = BlockRef {
        index: u32_at(0),
        gen: u32_at(4),
        offset: u64_at(8),
        len: end,
    };
    Ok((r, start, len))
}

/// Below this, one thread copies: a thread costs more than it saves.
const PARALLEL_MIN: usize = 8 << 20;
/// At most this many threads share a copy (memory bandwidth, not cores, is the limit).
const MOST_THREADS: usize = 4;

/// Runs `f(offset, len)` over `len` bytes in page-aligned pieces, on several threads when
/// the range is big (as Ray's object store does for large objects).
fn in_pieces(len: usize, f: impl Fn(usize, usize) + Sync) {
    let threads = if len < PARALLEL_MIN {
        1
    } else {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MOST_THREADS)
    };
    if threads <= 1 {
        return f(0, len);
    }
    let piece = len.div_ceil(threads).next_multiple_of(4096);
    std::thread::scope(|s| {
        let f = &f;
        for at in (piece..len).step_by(piece) {
            s.spawn(move || f(at, piece.min(len - at)));
        }
        f(0, piece.min(len));
    });
}

/// The arena of this program's processes.
#[pyclass(name = "Arena", module = "paralelo._native", frozen)]
pub(crate) struct PyArena {
    shared: Arc<Shared>,
}

impl PyArena {
    fn wrap(py: Python<'_>, arena: Arena) -> PyResult<Self> {
        let pid = std::process::id();
        let slot = py.detach(|| arena.join(pid)).map_err(to_py)?;
        let local = ForkLock::new(Local {
            pid,
            slot,
            child_slot: None,
            held: BTreeMap::new(),
        });
        Ok(PyArena {
            shared: Arc::new(Shared { arena, local }),
        })
    }

    /// A view of `len` bytes at `start` in block `r`, which this process holds (counted).
    fn view(&self, r: BlockRef, start: u64, len: u64) -> PyArenaBuffer {
        PyArenaBuffer {
            shared: self.shared.clone(),
            block: r,
            start,
            len,
            counted: AtomicBool::new(true),
        }
    }

    /// A new block of `len` bytes held by this process for `what` (a SharedArray's, or
    /// one to send), filled by `fill(destination)` with the GIL released; None if the
    /// arena has no room.
    fn new_block(
        &self,
        py: Python<'_>,
        len: usize,
        what: Use,
        fill: impl Fn(usize) + Send + Sync,
    ) -> PyResult<Option<BlockRef>> {
        let arena = &self.shared.arena;
        let r = {
            // Counted under the same hold as the allocation: a fork in between would give
            // the child a block its bookkeeping does not know.
            let mut l = self.shared.local()?;
            let slot = l.slot;
            let Some(r) = py
                .detach(|| arena.alloc(len as u64, Some(slot)))
                .map_err(to_py)?
            else {
                return Ok(None);
            };
            Shared::count(&mut l, r, what);
            r
        };
        let dst = arena.base() as usize + r.offset as usize;
        py.detach(|| fill(dst)); // (no one sees the block before this returns)
        Ok(Some(r))
    }

    /// The whole block a descriptor's reference lies in (`r.len` is the end it needs).
    fn block_of(&self, r: BlockRef) -> PyResult<BlockRef> {
        // The arena checks the generation, offset and that the block covers `r.len`.
        self.shared.arena.lookup(&r).map_err(to_py)
    }
}

#[pymethods]
impl PyArena {
    /// A new arena of `size` bytes of address space, named `id`.
    #[new]
    fn new(py: Python<'_>, size: u64, id: u64) -> PyResult<Self> {
        let arena = py.detach(|| Arena::create(size, id)).map_err(to_py)?;
        Self::wrap(py, arena)
    }

    /// Maps the arena in memfd `fd` (another process's).
    #[staticmethod]
    fn open(py: Python<'_>, fd: i32) -> PyResult<Self> {
        if fd < 0 {
            return Err(PyValueError::new_err("bad file descriptor"));
        }
        // SAFETY: the caller passes an open fd; `open` duplicates it before returning.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let arena = Arena::open(fd).map_err(to_py)?;
        Self::wrap(py, arena)
    }

    #[getter]
    fn fd(&self) -> i32 {
        self.shared.arena.fd().as_raw_fd()
    }

    #[getter]
    fn id(&self) -> u64 {
        self.shared.arena.id()
    }

    /// Copies `data` (a C-contiguous buffer) into a new block held by this process:
    /// (descriptor, hold), the hold being a view whose life keeps the block. A message
    /// either lends it (the sender keeps the hold until the receiver is done) or is
    /// handed it (`hand_over`, as the message goes out). None if the arena has no room.
    fn put(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
    ) -> PyResult<Option<(Py<PyBytes>, PyArenaBuffer)>> {
        let buf = contiguous(data)?;
        let len = buf.len_bytes();
        let src = buf.buf_ptr() as usize;
        // `src` is `len` readable bytes (held by `buf` while we copy, the GIL released);
        // the destination is a fresh block of at least `len` bytes no one else sees yet.
        let Some(r) = self.new_block(py, len, Use::Outgoing, |dst| {
            in_pieces(len, |at, n| {
                // SAFETY: as above; pieces are disjoint and inside both ranges.
                unsafe {
                    std::ptr::copy_nonoverlapping((src + at) as *const u8, (dst + at) as *mut u8, n)
                }
            })
        })?
        else {
            return Ok(None);
        };
        let d = encode(&r, 0, len as u64);
        Ok(Some((
            PyBytes::new(py, &d).unbind(),
            self.view(r, 0, len as u64),
        )))
    }

    /// A new zero-filled block of `nbytes`, held by this process while the returned view
    /// (or any view of the block) lives; None if the arena has no room.
    fn alloc(&self, py: Python<'_>, nbytes: usize) -> PyResult<Option<PyArenaBuffer>> {
        // Reused memory holds old data: a SharedArray starts zeroed.
        let Some(r) = self.new_block(py, nbytes, Use::Shared, |dst| {
            in_pieces(nbytes, |at, n| {
                // SAFETY: a fresh block of at least `nbytes`, referenced by no one else
                // yet; pieces are disjoint and inside it.
                unsafe { std::ptr::write_bytes((dst + at) as *mut u8, 0, n) }
            })
        })?
        else {
            return Ok(None);
        };
        Ok(Some(self.view(r, 0, nbytes as u64)))
    }

    /// Hands the block `hold` keeps (a `put`'s) to a message that is going out: the
    /// receiver's `take(given=True)` holds it from then on. `hold` keeps nothing after.
    fn hand_over(&self, hold: &PyArenaBuffer) -> PyResult<()> {
        if !hold.counted.swap(false, Ordering::AcqRel) {
            return Err(PyValueError::new_err(
                "this arena buffer was handed over already",
            ));
        }
        self.shared.uncount(&hold.block, true)
    }

    /// Gives a message the `nbytes` at address `addr` if they lie in a block this process
    /// holds (a view of a SharedArray): its descriptor; None (nothing given) otherwise.
    /// Never copies.
    fn give_span(
        &self,
        py: Python<'_>,
        addr: usize,
        nbytes: usize,
    ) -> PyResult<Option<Py<PyBytes>>> {
        let found = {
            let l = self.shared.local()?;
            self.shared.containing(&l, addr, nbytes)
        };
        let Some((r, start)) = found else {
            return Ok(None);
        };
        self.shared.arena.give(&r).map_err(to_py)?;
        Ok(Some(
            PyBytes::new(py, &encode(&r, start, nbytes as u64)).unbind(),
        ))
    }

    /// A view of the `nbytes` at address `addr` if they lie in a SharedArray's block this
    /// process holds (counted: a frame lends it, or hands it over, like a `put`'s hold, but
    /// nothing is copied); None otherwise.
    fn share_span(&self, addr: usize, nbytes: usize) -> PyResult<Option<PyArenaBuffer>> {
        let mut l = self.shared.local()?;
        let Some((r, start)) = self.shared.containing(&l, addr, nbytes) else {
            return Ok(None);
        };
        Shared::count(&mut l, r, Use::Shared);
        drop(l);
        Ok(Some(self.view(r, start, nbytes as u64)))
    }

    /// Marks the block `view` lies in as a SharedArray's: a fork leaves it shared (and
    /// one a fork made private since it was taken is mapped shared again).
    fn mark_shared(&self, view: &PyArenaBuffer) -> PyResult<()> {
        let mut l = self.shared.local()?;
        if let Some(h) = l.held.get_mut(&view.block.offset) {
            h.shared = true;
            if h.private {
                self.shared.arena.remap(&h.block, false).map_err(to_py)?;
                h.private = false;
            }
        }
        Ok(())
    }

    /// Undoes a hand-over (or `give_span`) whose message never went out or was never
    /// taken.
    fn ungive(&self, descriptor: &[u8]) -> PyResult<()> {
        let (r, _, _) = decode(descriptor)?;
        let r = self.block_of(r)?;
        self.shared.arena.ungive(&r).map_err(to_py)
    }

    /// The buffer a descriptor names, held by this process while the view lives: taken
    /// from its message (`given`: handed over) or alongside the sender's hold (lent).
    /// `shared`: a SharedArray's, shared on purpose (a fork leaves it shared).
    #[pyo3(signature = (descriptor, given, shared = false))]
    fn take(&self, descriptor: &[u8], given: bool, shared: bool) -> PyResult<PyArenaBuffer> {
        let (r, start, len) = decode(descriptor)?;
        let mut l = self.shared.local()?;
        let block = self.block_of(r)?;
        let first = l
            .held
            .get(&block.offset)
            .is_none_or(|h| h.block.index != block.index || h.block.gen != block.gen);
        if given {
            // Always from transit: the message's reference becomes ours (our bit, set
            // already if we held the block, now also stands for it).
            self.shared
                .arena
                .hold(l.slot, &block, true)
                .map_err(to_py)?;
        } else if first {
            self.shared
                .arena
                .hold(l.slot, &block, false)
                .map_err(to_py)?;
        }
        Shared::count(&mut l, block, if shared { Use::Shared } else { Use::View });
        drop(l);
        Ok(self.view(block, start, len))
    }

    /// Before a fork: reserves the child-to-be a slot that holds every block this process
    /// holds (the child claims it at once, in `after_fork_in_child`), so the parent letting
    /// go meanwhile frees nothing the child's copies of its objects still view; and keeps
    /// this process's bookkeeping locked across the fork (released by
    /// `after_fork_in_parent` and `_in_child`), so the child never inherits it locked by
    /// another thread.
    fn before_fork(&self) {
        // (Taken whatever happens, for the hooks after the fork release it.)
        let mut l = self.shared.lock_local();
        l.child_slot = if l.pid == std::process::id() && !l.held.is_empty() {
            // No slot to spare: the child holds what it inherited as a fork the hooks
            // did not see does (`local`).
            self.shared.arena.reserve_for_child(l.slot).ok()
        } else {
            None
        };
        ForkLock::hold_for_fork(l);
    }

    /// In the parent after a fork (see `before_fork`). If the fork failed, the slot it
    /// reserved stays named after this process, and goes with it.
    fn after_fork_in_parent(&self) {
        self.shared.local.release_after_fork();
        let mut l = self.shared.lock_local();
        l.child_slot = None;
        l.privatise(&self.shared.arena);
    }

    /// In a forked child: takes the slot the parent reserved (see `before_fork`).
    fn after_fork_in_child(&self) -> PyResult<()> {
        self.shared.local.release_after_fork();
        self.shared.local().map(drop)
    }

    /// This process ends: lets go of every block it holds, and of its slot.
    fn leave(&self) -> PyResult<()> {
        let mut l = self.shared.local()?;
        l.held.clear();
        l.pid = 0; // (any later use joins afresh)
        self.shared.arena.leave(l.slot).map_err(to_py)
    }

    /// How many blocks this process holds.
    fn holds(&self) -> PyResult<usize> {
        Ok(self.shared.local()?.held.len())
    }

    /// Sweeps holds of participants that died; how many were swept.
    fn reclaim_dead(&self, py: Python<'_>) -> PyResult<usize> {
        let arena = &self.shared.arena;
        py.detach(|| arena.reclaim_dead()).map_err(to_py)
    }

    /// (bytes in blocks in use, how many blocks): for tests and diagnostics.
    fn usage(&self) -> PyResult<(u64, usize)> {
        self.shared.arena.usage().map_err(to_py)
    }
}

fn contiguous(data: &Bound<'_, PyAny>) -> PyResult<PyBuffer<u8>> {
    let buf = PyBuffer::<u8>::get(data)?;
    if !buf.is_c_contiguous() {
        return Err(PyValueError::new_err(
            "only a C-contiguous buffer goes in the arena",
        ));
    }
    Ok(buf)
}

/// Part of an arena block, exported with the buffer protocol (writable bytes).
#[pyclass(name = "ArenaBuffer", module = "paralelo._native", frozen)]
pub(crate) struct PyArenaBuffer {
    shared: Arc<Shared>,
    block: BlockRef,
    start: u64,
    len: u64,
    /// Whether this view still counts toward the block (not handed over).
    counted: AtomicBool,
}

impl Drop for PyArenaBuffer {
    fn drop(&mut self) {
        if self.counted.swap(false, Ordering::AcqRel) {
            let _ = self.shared.uncount(&self.block, false);
        }
    }
}

#[pymethods]
impl PyArenaBuffer {
    fn __len__(&self) -> usize {
        self.len as usize
    }

    /// The view's descriptor, as a frame carries it.
    #[getter]
    fn descriptor<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &encode(&self.block, self.start, self.len))
    }

    /// Where the view starts in this process's memory (the address `share_span` and
    /// `give_span` take).
    #[getter]
    fn address(&self) -> usize {
        self.shared.arena.base() as usize + (self.block.offset + self.start) as usize
    }

    /// Where the view starts, from the arena's start: for tests.
    #[getter]
    fn offset(&self) -> u64 {
        self.block.offset + self.start
    }

    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let me = slf.get();
        if !me.counted.load(Ordering::Acquire) {
            return Err(PyValueError::new_err("this arena buffer was handed over"));
        }
        let ptr = me.shared.arena.base() as usize + (me.block.offset + me.start) as usize;
        let len = isize::try_from(me.len).map_err(|_| PyValueError::new_err("view too large"))?;
        // SAFETY: `ptr..ptr+len` lies in the block (checked when it was taken), which
        // stays allocated while this object counts toward it; PyBuffer_FillInfo keeps a
        // reference to this object in the view until the view is released.
        let rc = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                ptr as *mut std::ffi::c_void,
                len,
                0,
                flags,
            )
        };
        if rc != 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }
}
