//! Shared pieces of the fuzz targets: a second mapping of a segment (the misbehaving
//! process's view of it), and where a ring's and a hub's words sit in a segment.
//!
//! Only paralelo-core's public API is used. Offsets the API does not expose (where `head`
//! and `tail` sit inside a ring header) are found once by watching a real ring work, and
//! the hub layout is recomputed from `HubLayout::total_bytes` and checked against the
//! magic words it must find; if the engine's layout changes, the harness panics with
//! "harness out of date" instead of fuzzing the wrong bytes.
use std::os::fd::RawFd;
use std::sync::{Arc, OnceLock};

use memmap2::{MmapOptions, MmapRaw};
use paralelo_core::ring::{RingPlace, MAX_CAPACITY, MIN_CAPACITY};
use paralelo_core::{
    Consumer, Corruption, Doorbell, Error, FrameHeader, HubLayout, Producer, Segment,
};

/// Bytes of a frame header on the wire.
pub const FRAME: usize = 32;
/// Set on every fragment of a message but the last (the wire protocol).
pub const FRAG_MORE: u32 = 1 << 31;
/// The consumer drops a half-received message on this tag.
pub const TAG_ABORT: u32 = FRAG_MORE - 1;
/// The consumer skips to the end of the data area on this tag (an empty ring's rewind).
pub const TAG_SKIP: u32 = FRAG_MORE - 2;
/// A consumer reports a longer fragmented message as corrupt.
pub const MAX_MESSAGE: usize = 1 << 40;

const RING_MAGIC: &[u8; 8] = b"paloring";
const HUB_MAGIC: &[u8; 8] = b"apalohub";
const ALIGN: usize = 128;

/// The foreign process's mapping of a segment: any byte, any time, no protocol.
pub struct Shadow {
    map: MmapRaw,
}

impl Shadow {
    /// Maps the memfd behind `fd` a second time (the whole file).
    pub fn of_fd(fd: RawFd) -> Shadow {
        let map = MmapOptions::new()
            .map_raw(fd)
            .expect("harness: second mapping of the segment");
        Shadow { map }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// Writes `bytes` at `off`, cut at the end of the segment.
    pub fn write(&self, off: usize, bytes: &[u8]) {
        if off >= self.len() {
            return;
        }
        let n = bytes.len().min(self.len() - off);
        // SAFETY: [off, off + n) lies inside the mapping; the engine never holds a Rust
        // reference to non-atomic bytes another process may write, so writing them from
        // here is what the other process does anyway.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.map.as_mut_ptr().add(off), n) }
    }

    /// Reads `len` bytes at `off`, cut at the end of the segment.
    pub fn read(&self, off: usize, len: usize) -> Vec<u8> {
        if off >= self.len() {
            return Vec::new();
        }
        let n = len.min(self.len() - off);
        let mut v = vec![0u8; n];
        // SAFETY: as in `write`.
        unsafe { std::ptr::copy_nonoverlapping(self.map.as_ptr().add(off), v.as_mut_ptr(), n) }
        v
    }

    pub fn fill(&self, off: usize, len: usize, byte: u8) {
        self.write(off, &vec![byte; len]);
    }

    pub fn write_u64(&self, off: usize, v: u64) {
        self.write(off, &v.to_le_bytes());
    }

    pub fn read_u64(&self, off: usize) -> u64 {
        let b = self.read(off, 8);
        let mut w = [0u8; 8];
        w[..b.len()].copy_from_slice(&b);
        u64::from_le_bytes(w)
    }

    /// Writes `bytes` into the ring data area at `data` of `cap` bytes, at stream
    /// position `pos`, wrapping like the ring does.
    pub fn write_ring(&self, data: usize, cap: usize, pos: u64, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            let off = (pos.wrapping_add(i as u64) % cap as u64) as usize;
            self.write(data + off, std::slice::from_ref(b));
        }
    }

    /// Reads `len` ring bytes at stream position `pos`, wrapping.
    pub fn read_ring(&self, data: usize, cap: usize, pos: u64, len: usize) -> Vec<u8> {
        let all = self.read(data, cap);
        (0..len)
            .map(|i| all[(pos.wrapping_add(i as u64) % cap as u64) as usize])
            .collect()
    }
}

/// Offsets inside a ring header of the two indices.
#[derive(Clone, Copy, Debug)]
pub struct RingOffsets {
    pub head: usize,
    pub tail: usize,
}

/// Finds where `head` and `tail` sit in a ring header by sending and receiving one
/// message on a real ring and looking which words changed.
pub fn ring_offsets() -> RingOffsets {
    static OFFSETS: OnceLock<RingOffsets> = OnceLock::new();
    *OFFSETS.get_or_init(|| {
        let ring = StandaloneRing::create(256);
        let mut p = Producer::new(ring.seg.clone(), ring.place, true).expect("harness: producer");
        let mut c = Consumer::new(ring.seg.clone(), ring.place, false).expect("harness: consumer");
        let words = |sh: &Shadow| -> Vec<u64> {
            (0..RingPlace::HEADER_BYTES / 8)
                .map(|i| sh.read_u64(i * 8))
                .collect()
        };
        let sh = Shadow::of_fd(ring.seg.raw_fd());
        let before = words(&sh);
        assert!(p.try_send(&FrameHeader::default(), &[7; 8]).unwrap());
        let sent = words(&sh);
        let changed = |a: &[u64], b: &[u64]| -> Vec<usize> {
            (0..a.len())
                .filter(|&i| a[i] != b[i])
                .map(|i| i * 8)
                .collect()
        };
        let head = changed(&before, &sent);
        c.drain(usize::MAX, &mut Vec::new(), |_, _| {}).unwrap();
        let tail = changed(&sent, &words(&sh));
        assert!(
            head.len() == 1
                && tail.len() == 1
                && sh.read_u64(head[0]) == 40
                && sh.read_u64(tail[0]) == 40,
            "harness out of date: cannot find a ring's head and tail words ({head:?}, {tail:?})"
        );
        RingOffsets {
            head: head[0],
            tail: tail[0],
        }
    })
}

/// One ring alone in a segment, with canary bytes around its data area so a target can
/// check that the engine writes nowhere else.
///
/// `header | data bell | canary | data (cap bytes) | canary`
pub struct StandaloneRing {
    pub seg: Arc<Segment>,
    pub place: RingPlace,
    pub cap: usize,
    pub data: usize,
    /// Ranges (start, len) that the engine must never write.
    pub canaries: Vec<(usize, usize)>,
}

pub const CANARY: u8 = 0xA5;

impl StandaloneRing {
    pub fn create(cap: usize) -> StandaloneRing {
        let bell = RingPlace::HEADER_BYTES.next_multiple_of(8);
        let gap = bell + std::mem::size_of::<Doorbell>();
        let data = (gap + 64).next_multiple_of(ALIGN);
        let total = data + cap + ALIGN;
        let seg = Arc::new(Segment::create("paralelo-fuzz", total).expect("harness: segment"));
        let place = RingPlace {
            header: 0,
            data,
            capacity: cap,
            data_bell: bell,
            room_bell: None,
        };
        StandaloneRing {
            seg,
            place,
            cap,
            data,
            canaries: vec![(gap, data - gap), (data + cap, ALIGN)],
        }
    }

    /// Paints the canaries (call after the ring ends are created).
    pub fn paint(&self, sh: &Shadow) {
        for &(s, n) in &self.canaries {
            sh.fill(s, n, CANARY);
        }
    }

    /// Panics if the engine wrote outside the ring header, its bell and its data.
    pub fn check_canaries(&self, sh: &Shadow) {
        for &(s, n) in &self.canaries {
            let b = sh.read(s, n);
            if let Some(i) = b.iter().position(|&x| x != CANARY) {
                panic!(
                    "engine wrote outside the ring: byte {:#x} at segment offset {}",
                    b[i],
                    s + i
                );
            }
        }
    }
}

/// A ring capacity from a fuzz byte: a power of two from the smallest the engine takes
/// (256 on this build) to 4 KiB; small rings wrap often.
pub fn capacity(sel: u8) -> usize {
    let min = MIN_CAPACITY.next_power_of_two();
    let c = min << (sel % 5);
    assert!(c <= MAX_CAPACITY);
    c
}

/// Bytes a payload takes in a ring (frames stay 8-byte aligned).
pub fn padded(len: u64) -> u64 {
    len.next_multiple_of(8)
}

/// Where everything sits in a hub segment (recomputed from the documented layout and
/// checked against the magic words it must find).
#[derive(Clone, Copy, Debug)]
pub struct HubGeom {
    pub slots: usize,
    pub cap: usize,
    pub header: usize,
    pub ring_header: usize,
    pub slot_bytes: usize,
    pub total: usize,
}

impl HubGeom {
    pub fn new(slots: usize, cap: usize) -> HubGeom {
        let layout = HubLayout::new(slots, cap).expect("harness: layout");
        let ring_header = RingPlace::HEADER_BYTES.next_multiple_of(ALIGN);
        let slot_bytes = ALIGN + 2 * (ring_header + ALIGN + cap);
        let total = layout.total_bytes();
        let header = total - slots * slot_bytes;
        HubGeom {
            slots,
            cap,
            header,
            ring_header,
            slot_bytes,
            total,
        }
    }

    pub fn slot(&self, s: usize) -> usize {
        self.header + s * self.slot_bytes
    }
    /// The slot's state word.
    pub fn state(&self, s: usize) -> usize {
        self.slot(s)
    }
    pub fn task_header(&self, s: usize) -> usize {
        self.slot(s) + ALIGN
    }
    pub fn task_data(&self, s: usize) -> usize {
        self.task_header(s) + self.ring_header + ALIGN
    }
    pub fn result_header(&self, s: usize) -> usize {
        self.task_data(s) + self.cap
    }
    pub fn result_data(&self, s: usize) -> usize {
        self.result_header(s) + self.ring_header + ALIGN
    }
    /// The first bytes after the hub header's plain words (its shared results bell).
    pub fn results_bell(&self) -> usize {
        32
    }

    /// Panics unless the magic words sit where this geometry says.
    pub fn check(&self, sh: &Shadow) {
        let ok = sh.read(0, 8) == HUB_MAGIC
            && (0..self.slots).all(|s| {
                sh.read(self.task_header(s), 8) == RING_MAGIC
                    && sh.read(self.result_header(s), 8) == RING_MAGIC
                    && sh.read_u64(self.task_header(s) + 8) == self.cap as u64
                    && sh.read_u64(self.result_header(s) + 8) == self.cap as u64
            });
        assert!(
            ok,
            "harness out of date: the hub layout is not where HubGeom computes it"
        );
    }
}

/// A drain's error must be a ring corruption (nothing else can come out of reading).
pub fn expect_corrupt(e: &Error) -> Corruption {
    match e {
        Error::Corrupt(c) => c.clone(),
        Error::CorruptSlot { source, .. } => source.clone(),
        other => panic!("a drain failed with something other than corruption: {other:?}"),
    }
}

/// A ring index word as the fuzz input wrote it (any u64: streams may wrap).
pub fn index_word(v: u64) -> u64 {
    v
}

/// A ring index the fuzz input chooses.
#[derive(arbitrary::Arbitrary, Debug, Clone, Copy)]
pub enum Index {
    Zero,
    Small(u16),
    /// Near the top of u64: streams that wrap.
    High(u16),
    Any(u64),
}

impl Index {
    /// As an index word (see [`index_word`]).
    pub fn value(&self) -> u64 {
        index_word(self.raw())
    }

    /// As a plain word, whatever the features.
    pub fn raw(&self) -> u64 {
        match *self {
            Index::Zero => 0,
            Index::Small(n) => n as u64,
            Index::High(n) => u64::MAX - n as u64,
            Index::Any(v) => v,
        }
    }
}
