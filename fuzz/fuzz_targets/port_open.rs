//! A worker attaching to a hub segment whose header it cannot trust: `Port::open(fd, slot)`
//! reads the hub header (magic, version, slot count, ring capacity), builds the layout
//! from them, checks it against the segment's real length, and attaches to two rings whose
//! headers and indices it reads too. The segment's length and every header word come from
//! the fuzz input: either a bare segment of any length with fuzz header words, or a real
//! hub's segment with fuzz bytes written over it. When the open succeeds, the port is
//! used (`drain_tasks`, `try_send`, `set_state`, `wait_tasks`), which must not panic.
#![no_main]
use std::os::fd::BorrowedFd;
use std::time::Instant;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use paralelo_core::{Error, FrameHeader, Hub, Port, Segment, SlotState};
use paralelo_fuzz::{capacity, ring_offsets, HubGeom, Index, Shadow};

#[derive(Arbitrary, Debug)]
enum Size {
    /// slots and capacity that make sense, maybe not for this segment.
    Plausible {
        slots: u8,
        cap_log: u8,
    },
    Any {
        slots: u64,
        capacity: u64,
    },
}

#[derive(Arbitrary, Debug)]
enum Setup {
    /// A bare segment of `len` bytes whose header says `size`.
    Bare {
        len: u16,
        good_magic: bool,
        good_version: bool,
        size: Size,
        rest: Vec<u8>,
    },
    /// A real hub, then the patches below.
    Real { slots: u8, cap: u8 },
}

#[derive(Arbitrary, Debug)]
enum Patch {
    Bytes {
        at: u32,
        bytes: Vec<u8>,
    },
    Header {
        word: u8,
        value: u64,
    },
    /// A ring index word of slot 0's or 1's rings.
    Index {
        slot: bool,
        result: bool,
        tail: bool,
        value: Index,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    setup: Setup,
    patches: Vec<Patch>,
    slot: u8,
    drains: u8,
}

const HUB_MAGIC: u64 = u64::from_le_bytes(*b"apalohub");
const HUB_VERSION: u64 = 2;

fuzz_target!(|input: Input| {
    let off = ring_offsets();
    // Keeps whatever owns the fd alive.
    let (fd, _hub, _seg, geom) = match &input.setup {
        Setup::Bare {
            len,
            good_magic,
            good_version,
            size,
            rest,
        } => {
            let len = 1 + *len as usize;
            let seg = Segment::create("paralelo-fuzz", len).unwrap();
            let sh = Shadow::of_fd(seg.raw_fd());
            let (slots, capacity) = match *size {
                Size::Plausible { slots, cap_log } => (slots as u64 % 4, 1u64 << (cap_log % 40)),
                Size::Any { slots, capacity } => (slots, capacity),
            };
            sh.write_u64(
                0,
                if *good_magic {
                    HUB_MAGIC
                } else {
                    HUB_MAGIC ^ 1
                },
            );
            sh.write_u64(
                8,
                if *good_version {
                    HUB_VERSION
                } else {
                    HUB_VERSION + 1
                },
            );
            sh.write_u64(16, slots);
            sh.write_u64(24, capacity);
            sh.write(32, rest);
            (seg.raw_fd(), None, Some(seg), None)
        }
        Setup::Real { slots, cap } => {
            let slots = 1 + *slots as usize % 2;
            let cap = capacity(*cap % 2);
            let hub = Hub::create(slots, cap).unwrap();
            (
                hub.raw_fd(),
                Some(hub),
                None,
                Some(HubGeom::new(slots, cap)),
            )
        }
    };
    let sh = Shadow::of_fd(fd);
    if let Some(g) = &geom {
        g.check(&sh);
    }
    for p in input.patches.iter().take(16) {
        match p {
            Patch::Bytes { at, bytes } => {
                if !sh.is_empty() {
                    sh.write(*at as usize % sh.len(), bytes);
                }
            }
            Patch::Header { word, value } => sh.write_u64(8 * (*word as usize % 4), *value),
            Patch::Index {
                slot,
                result,
                tail,
                value,
            } => {
                if let Some(g) = &geom {
                    let s = (*slot as usize).min(g.slots - 1);
                    let h = if *result {
                        g.result_header(s)
                    } else {
                        g.task_header(s)
                    };
                    sh.write_u64(h + if *tail { off.tail } else { off.head }, value.value());
                }
            }
        }
    }

    // SAFETY: the segment or hub owning `fd` lives until the end of this function.
    let port = match Port::open(
        unsafe { BorrowedFd::borrow_raw(fd) },
        input.slot as usize % 4,
    ) {
        Ok(p) => p,
        Err(Error::BadLayout { .. } | Error::Invalid(_) | Error::Corrupt(_)) => return,
        Err(e) => panic!("Port::open: {e:?}"),
    };
    let mut out = Vec::new();
    for i in 0..=(input.drains % 4) {
        let mut ranges = Vec::new();
        match port.drain_tasks(usize::MAX, &mut out, |_, r| ranges.push(r)) {
            Ok(_) | Err(Error::CorruptSlot { .. }) => {}
            Err(e) => panic!("drain_tasks: {e:?}"),
        }
        assert!(ranges
            .iter()
            .all(|r| r.start <= r.end && r.end <= out.len()));
        match port.try_send(&FrameHeader::default(), &[i; 40], true) {
            Ok(_) | Err(Error::CorruptSlot { .. }) => {}
            Err(e) => panic!("try_send: {e:?}"),
        }
    }
    port.set_state(SlotState::Running(7)).unwrap();
    match port.wait_tasks(Some(Instant::now()), &mut || true) {
        Ok(()) | Err(Error::Timeout) => {}
        Err(e) => panic!("wait_tasks: {e:?}"),
    }
});
