#![allow(unsafe_code)]
//! Where everything sits in a hub segment, and the plain-data words that are not rings.
//!
//! Layout (offsets from the segment start, every block 128-byte aligned):
//! `HubHeader | per slot: SlotHeader, task RingHeader, task data, result RingHeader, result data`.
use std::ptr::NonNull;
use std::sync::Arc;

use crossbeam_utils::CachePadded;

use crate::primitive::{AtomicU64, Ordering};
use crate::ring::{RingHeader, RingPlace, MAX_CAPACITY};
use crate::sync::Doorbell;
use crate::{Error, Result, Segment};

use super::state::SlotState;

pub(crate) const HUB_MAGIC: u64 = 0x6275_686f_6c61_7061; // "apalohub"
pub(crate) const HUB_VERSION: u64 = 2;
const ALIGN: usize = 128;
/// More slots than any machine has cores: a header claiming more is not ours.
pub const MAX_SLOTS: usize = 1 << 16;

/// Its plain words are written once by the creator, but another process could write them
/// too: atomics, read Relaxed, so a shared reference to the header is sound regardless.
#[repr(C)]
pub(crate) struct HubHeader {
    pub(crate) magic: std::sync::atomic::AtomicU64,
    pub(crate) version: std::sync::atomic::AtomicU64,
    pub(crate) slots: std::sync::atomic::AtomicU64,
    pub(crate) capacity: std::sync::atomic::AtomicU64,
    pub(crate) results_bell: CachePadded<Doorbell>,
}

/// A slot's header: the worker's [`SlotState`], one word.
#[repr(C)]
struct SlotHeader {
    state: AtomicU64,
}

/// Where everything sits in a hub segment.
#[derive(Clone, Copy, Debug)]
pub struct HubLayout {
    pub slots: usize,
    pub capacity: usize,
}

impl HubLayout {
    const RING_HEADER: usize = std::mem::size_of::<RingHeader>().next_multiple_of(ALIGN);
    // The task ring's data doorbell sits in the padding after its header.
    const BELL: usize = std::mem::size_of::<RingHeader>();
    const HEADER: usize = std::mem::size_of::<HubHeader>().next_multiple_of(ALIGN);

    /// A layout whose every offset fits in memory: checked, since a worker builds it
    /// from sizes it reads out of shared memory.
    pub fn new(slots: usize, capacity: usize) -> Result<Self> {
        if slots == 0 || slots > MAX_SLOTS {
            return Err(Error::Invalid(format!(
                "a hub has 1 to {MAX_SLOTS} slots, not {slots}"
            )));
        }
        if capacity > MAX_CAPACITY {
            return Err(Error::Invalid(format!(
                "ring capacity {capacity} exceeds {MAX_CAPACITY}"
            )));
        }
        let layout = HubLayout { slots, capacity };
        // Computed wide: it must fit in this process's address space, on any target.
        let slot_bytes =
            ALIGN as u128 + 2 * (Self::RING_HEADER as u128 + ALIGN as u128 + capacity as u128);
        let total = Self::HEADER as u128 + slots as u128 * slot_bytes;
        if total > isize::MAX as u128 {
            return Err(Error::Invalid(format!(
                "a hub of {slots} slots of {capacity} bytes is too large"
            )));
        }
        Ok(layout)
    }

    fn slot_bytes(&self) -> usize {
        ALIGN + 2 * (Self::RING_HEADER + ALIGN + self.capacity)
    }
    pub fn total_bytes(&self) -> usize {
        Self::HEADER + self.slots * self.slot_bytes()
    }
    fn slot_offset(&self, slot: usize) -> usize {
        Self::HEADER + slot * self.slot_bytes()
    }
    pub(crate) fn tasks(&self, slot: usize) -> RingPlace {
        let header = self.slot_offset(slot) + ALIGN;
        let data = header + Self::RING_HEADER + ALIGN;
        let room_bell = Some(std::mem::offset_of!(HubHeader, results_bell));
        RingPlace {
            header,
            data,
            capacity: self.capacity,
            data_bell: header + Self::BELL,
            room_bell,
        }
    }
    pub(crate) fn results(&self, slot: usize) -> RingPlace {
        let header = self.tasks(slot).data + self.capacity;
        let data = header + Self::RING_HEADER + ALIGN;
        let data_bell = std::mem::offset_of!(HubHeader, results_bell);
        RingPlace {
            header,
            data,
            capacity: self.capacity,
            data_bell,
            room_bell: None,
        }
    }
}

const _: () =
    assert!(HubLayout::BELL + std::mem::size_of::<Doorbell>() <= HubLayout::RING_HEADER + ALIGN);
const _: () = assert!(std::mem::size_of::<SlotHeader>() <= ALIGN);

/// Shared-memory words of one hub segment that are not rings: its header and slot headers.
#[derive(Clone)]
pub(crate) struct Words {
    pub(crate) seg: Arc<Segment>,
    header: NonNull<HubHeader>,
    slots: Arc<[NonNull<SlotHeader>]>,
}

// SAFETY: the pointers point into `seg`, kept alive by the Arc; every field written after
// initialisation is an atomic.
unsafe impl Send for Words {}
// SAFETY: as above.
unsafe impl Sync for Words {}

impl Words {
    pub(crate) fn new(seg: Arc<Segment>, layout: &HubLayout) -> Result<Self> {
        if layout.total_bytes() > seg.len() {
            return Err(Error::BadLayout {
                what: "hub (segment shorter than its layout)",
            });
        }
        let header = NonNull::new(seg.at::<HubHeader>(0)?).expect("mapping is non-null");
        let slots = (0..layout.slots)
            .map(|i| {
                Ok(NonNull::new(seg.at::<SlotHeader>(layout.slot_offset(i))?).expect("non-null"))
            })
            .collect::<Result<_>>()?;
        Ok(Words { seg, header, slots })
    }

    pub(crate) fn header(&self) -> &HubHeader {
        // SAFETY: in bounds and aligned (checked by `Segment::at`), alive as long as `seg`;
        // every field is an atomic.
        unsafe { self.header.as_ref() }
    }

    fn slot(&self, slot: usize) -> &SlotHeader {
        // SAFETY: as for `header`; a slot header holds only atomics.
        unsafe { self.slots[slot].as_ref() }
    }

    pub(crate) fn state(&self, slot: usize) -> SlotState {
        // Acquire: pairs with the Release store in `set_state`.
        SlotState::decode(self.slot(slot).state.load(Ordering::Acquire))
    }

    pub(crate) fn set_state(&self, slot: usize, state: SlotState) -> Result<()> {
        let word = state.encode()?;
        // Release: pairs with the Acquire load in `state`. One store: a death at any moment
        // leaves either the old state or the new one, never half of each.
        self.slot(slot).state.store(word, Ordering::Release);
        Ok(())
    }

    /// Reads the creator's plain header words of the segment `seg` and checks them.
    pub(crate) fn read_layout(seg: &Segment) -> Result<HubLayout> {
        let h = Self::header_of(seg)?;
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        let (magic, version) = (h.magic.load(relaxed), h.version.load(relaxed));
        if magic != HUB_MAGIC || version != HUB_VERSION {
            return Err(Error::BadLayout { what: "hub" });
        }
        let (slots, capacity) = (h.slots.load(relaxed), h.capacity.load(relaxed));
        let (Ok(slots), Ok(capacity)) = (usize::try_from(slots), usize::try_from(capacity)) else {
            return Err(Error::BadLayout {
                what: "hub (sizes out of range)",
            });
        };
        HubLayout::new(slots, capacity).map_err(|_| Error::BadLayout {
            what: "hub (sizes out of range)",
        })
    }

    /// Writes the header of a fresh segment, before it is shared.
    pub(crate) fn init(seg: &Segment, layout: &HubLayout) -> Result<()> {
        let h = Self::header_of(seg)?;
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        // The fd is shared only after this (which orders these stores for the others).
        h.magic.store(HUB_MAGIC, relaxed);
        h.version.store(HUB_VERSION, relaxed);
        h.slots.store(layout.slots as u64, relaxed);
        h.capacity.store(layout.capacity as u64, relaxed);
        Ok(())
    }

    fn header_of(seg: &Segment) -> Result<&HubHeader> {
        let p = seg.at::<HubHeader>(0)?;
        // SAFETY: in bounds and aligned (`Segment::at`), alive as long as `seg`; every
        // field is an atomic, so any bytes there are a valid header to read.
        Ok(unsafe { &*p })
    }
}
