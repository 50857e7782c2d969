//! The hub: the parent's batch decoder `Hub::drain_results(&mut Received)` and every other
//! hub call that reads shared memory, with the workers' side played by the fuzz input
//! (real `Port`s sending real messages, plus foreign writes over any word of the segment:
//! ring indices, frame bytes, slot state words, doorbells, the hub header).
//!
//! Calls: `Hub::{drain_results, post, flush, notify, state, backlog, idle_waiters,
//! wait_results (deadline passed), wake, reset_slot}` and
//! `Port::{open, drain_tasks, try_send, send (deadline passed), notify, set_state,
//! wait_tasks (deadline passed)}`.
//!
//! Checked: no panic; errors are the documented kinds; every `Received` range lies in its
//! buffer, packed in order; slots and tags in range; a slot reported corrupt delivers
//! nothing more until reset; a state a worker set is the state the parent reads.
#![no_main]
use std::os::fd::BorrowedFd;
use std::time::Instant;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use paralelo_core::hub::MAX_ID;
use paralelo_core::{Error, FrameHeader, Hub, Port, Received, SlotEvent, SlotState, MAX_TAG};
use paralelo_fuzz::{capacity, ring_offsets, HubGeom, Index, Shadow};

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Region {
    HubHeader,
    SlotState,
    TaskHeader,
    TaskData,
    ResultHeader,
    ResultData,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Word {
    TaskHead,
    TaskTail,
    ResultHead,
    ResultTail,
    State,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum State {
    Idle,
    Running(u64),
    Unpacking(u64),
    LoadingFunction(u64),
    Initializing,
}

impl State {
    fn get(self) -> SlotState {
        match self {
            State::Idle => SlotState::Idle,
            State::Running(t) => SlotState::Running(t),
            State::Unpacking(t) => SlotState::Unpacking(t),
            State::LoadingFunction(j) => SlotState::LoadingFunction(j),
            State::Initializing => SlotState::Initializing,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    // The misbehaving worker.
    Patch {
        slot: u8,
        region: Region,
        at: u16,
        bytes: Vec<u8>,
    },
    SetWord {
        slot: u8,
        word: Word,
        value: Index,
    },
    /// A frame header of the fuzz's choosing, published at the result ring's head.
    ResultFrame {
        slot: u8,
        len: u32,
        tag: u32,
        fill: u8,
        publish: u16,
    },
    // The well-behaved worker.
    PortOpen {
        slot: u8,
    },
    PortDrain {
        slot: u8,
        max: u8,
    },
    PortTrySend {
        slot: u8,
        len: u16,
        tag: u32,
        notify: bool,
    },
    PortSend {
        slot: u8,
        len: u16,
    },
    PortSetState {
        slot: u8,
        state: State,
    },
    PortWait {
        slot: u8,
    },
    PortNotify {
        slot: u8,
    },
    // The parent.
    Drain {
        clear: bool,
    },
    Post {
        slot: u8,
        len: u16,
        tag: u32,
        notify: bool,
    },
    Flush,
    Notify,
    HubState {
        slot: u8,
    },
    Backlog {
        slot: u8,
    },
    IdleWaiters {
        slot: u8,
    },
    Wait,
    Wake,
    ResetSlot {
        slot: u8,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    slots: u8,
    cap: u8,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let slots = 1 + input.slots as usize % 3;
    let cap = capacity(input.cap % 3);
    let hub = Hub::create(slots, cap).expect("hub");
    let g = HubGeom::new(slots, cap);
    let sh = Shadow::of_fd(hub.raw_fd());
    g.check(&sh);
    let off = ring_offsets();
    // SAFETY: the hub owns the fd and outlives every use below.
    let fd = || unsafe { BorrowedFd::borrow_raw(hub.raw_fd()) };

    let mut ports: Vec<Option<Port>> = (0..slots).map(|_| None).collect();
    let mut received = Received::default();
    // Slots reported corrupt since their last reset.
    let mut dead = vec![false; slots];
    // Slots reset since the last drain.
    let mut fresh = vec![false; slots];
    let mut tasks_out = Vec::new();

    for op in input.ops.iter().take(48) {
        match op {
            Op::Patch {
                slot,
                region,
                at,
                bytes,
            } => {
                let s = *slot as usize % slots;
                let (base, len) = match region {
                    Region::HubHeader => (0, g.header),
                    Region::SlotState => (g.state(s), 8),
                    Region::TaskHeader => (g.task_header(s), g.ring_header + 128),
                    Region::TaskData => (g.task_data(s), cap),
                    Region::ResultHeader => (g.result_header(s), g.ring_header + 128),
                    Region::ResultData => (g.result_data(s), cap),
                };
                let at = *at as usize % len;
                let n = bytes.len().min(len - at);
                sh.write(base + at, &bytes[..n]);
            }
            Op::SetWord { slot, word, value } => {
                let s = *slot as usize % slots;
                let (at, v) = match word {
                    Word::TaskHead => (g.task_header(s) + off.head, value.value()),
                    Word::TaskTail => (g.task_header(s) + off.tail, value.value()),
                    Word::ResultHead => (g.result_header(s) + off.head, value.value()),
                    Word::ResultTail => (g.result_header(s) + off.tail, value.value()),
                    Word::State => (g.state(s), value.raw()),
                };
                sh.write_u64(at, v);
            }
            Op::ResultFrame {
                slot,
                len,
                tag,
                fill,
                publish,
            } => {
                let s = *slot as usize % slots;
                let head = sh.read_u64(g.result_header(s) + off.head);
                let mut f = Vec::new();
                f.extend_from_slice(&len.to_le_bytes());
                f.extend_from_slice(&tag.to_le_bytes());
                f.extend_from_slice(&[*fill; 24]);
                f.extend(std::iter::repeat_n(*fill, (*len as usize).min(cap - 32)));
                sh.write_ring(g.result_data(s), cap, head, &f);
                sh.write_u64(
                    g.result_header(s) + off.head,
                    head.wrapping_add(*publish as u64),
                );
            }
            Op::PortOpen { slot } => {
                let s = *slot as usize % slots;
                ports[s] = None;
                match Port::open(fd(), s) {
                    Ok(p) => ports[s] = Some(p),
                    Err(Error::BadLayout { .. } | Error::Invalid(_) | Error::Corrupt(_)) => {}
                    Err(e) => panic!("Port::open failed unexpectedly: {e:?}"),
                }
            }
            Op::PortDrain { slot, max } => {
                if let Some(p) = &ports[*slot as usize % slots] {
                    tasks_out.clear();
                    let mut ranges = Vec::new();
                    match p.drain_tasks(*max as usize, &mut tasks_out, |h, r| ranges.push((h, r))) {
                        Ok(n) => assert!(n == ranges.len() && n <= *max as usize),
                        Err(e) => {
                            assert!(matches!(e, Error::CorruptSlot { .. }), "{e:?}");
                        }
                    }
                    let mut end = 0;
                    for (h, r) in ranges {
                        assert!(r.start == end && r.end <= tasks_out.len() && h.tag <= MAX_TAG);
                        end = r.end;
                    }
                }
            }
            Op::PortTrySend {
                slot,
                len,
                tag,
                notify,
            } => {
                if let Some(p) = &ports[*slot as usize % slots] {
                    let h = FrameHeader {
                        tag: *tag % (MAX_TAG + 1),
                        job: *len as u64,
                        seq: 1,
                        aux: 2,
                    };
                    let payload = vec![0x77; *len as usize % (2 * cap)];
                    if let Err(e) = p.try_send(&h, &payload, *notify) {
                        assert!(matches!(e, Error::CorruptSlot { .. }), "{e:?}");
                    }
                }
            }
            Op::PortSend { slot, len } => {
                if let Some(p) = &ports[*slot as usize % slots] {
                    let payload = vec![0x66; *len as usize % (2 * cap)];
                    match p.send(
                        &FrameHeader::default(),
                        &payload,
                        Some(Instant::now()),
                        &mut || true,
                    ) {
                        Ok(()) | Err(Error::Timeout | Error::CorruptSlot { .. }) => {}
                        Err(e) => panic!("Port::send: {e:?}"),
                    }
                }
            }
            Op::PortSetState { slot, state } => {
                let s = *slot as usize % slots;
                if let Some(p) = &ports[s] {
                    let st = state.get();
                    match p.set_state(st) {
                        Ok(()) => {
                            assert_eq!(hub.state(s).unwrap(), st, "the parent reads another state")
                        }
                        Err(Error::Invalid(_)) => {
                            let id = match st {
                                SlotState::Running(t)
                                | SlotState::Unpacking(t)
                                | SlotState::LoadingFunction(t) => t,
                                _ => 0,
                            };
                            assert!(id > MAX_ID);
                        }
                        Err(e) => panic!("set_state: {e:?}"),
                    }
                }
            }
            Op::PortWait { slot } => {
                if let Some(p) = &ports[*slot as usize % slots] {
                    match p.wait_tasks(Some(Instant::now()), &mut || true) {
                        Ok(()) | Err(Error::Timeout) => {}
                        Err(e) => panic!("wait_tasks: {e:?}"),
                    }
                }
            }
            Op::PortNotify { slot } => {
                if let Some(p) = &ports[*slot as usize % slots] {
                    p.notify();
                }
            }
            Op::Drain { clear } => {
                if *clear {
                    received = Received::default();
                }
                let (m0, e0, b0) = (
                    received.messages.len(),
                    received.events.len(),
                    received.bytes.len(),
                );
                let n = hub
                    .drain_results(&mut received)
                    .expect("drain_results never fails for a corrupt ring");
                assert_eq!(n, received.messages.len() - m0 + received.events.len() - e0);
                let mut end = b0;
                for (s, h, r) in &received.messages[m0..] {
                    assert!(*s < slots && h.tag <= MAX_TAG);
                    assert!(r.start == end && r.end >= r.start && r.end <= received.bytes.len());
                    end = r.end;
                    assert!(
                        !dead[*s],
                        "slot {s} delivered a message after it was reported corrupt"
                    );
                }
                assert_eq!(end, received.bytes.len());
                let fresh_now = std::mem::replace(&mut fresh, vec![false; slots]);
                let fresh = &fresh_now;
                for e in &received.events[e0..] {
                    match e {
                        SlotEvent::Corrupt { slot, .. } => {
                            assert!(*slot < slots);
                            if !fresh[*slot] {
                                dead[*slot] = true;
                            }
                        }
                        SlotEvent::Exited { .. } => panic!("no process is watched"),
                    }
                }
            }
            Op::Post {
                slot,
                len,
                tag,
                notify,
            } => {
                let h = FrameHeader {
                    tag: *tag % (MAX_TAG + 1),
                    ..Default::default()
                };
                let payload = vec![0x11; *len as usize % (2 * cap)];
                hub.post(*slot as usize % slots, &h, &payload, *notify)
                    .expect("post never fails for a corrupt ring");
            }
            Op::Flush => {
                if let Err(e) = hub.flush() {
                    panic!("flush: {e:?}");
                }
            }
            Op::Notify => hub.notify(),
            Op::HubState { slot } => {
                let st = hub.state(*slot as usize % slots).unwrap();
                // Any word decodes to something that encodes (ids fit).
                if let SlotState::Running(t)
                | SlotState::Unpacking(t)
                | SlotState::LoadingFunction(t) = st
                {
                    assert!(t <= MAX_ID);
                }
            }
            Op::Backlog { slot } => {
                hub.backlog(*slot as usize % slots).unwrap();
            }
            Op::IdleWaiters { slot } => {
                hub.idle_waiters(*slot as usize % slots).unwrap();
            }
            Op::Wait => match hub.wait_results(Some(Instant::now()), &mut || true) {
                Ok(()) | Err(Error::Timeout) => {}
                Err(e) => panic!("wait_results: {e:?}"),
            },
            Op::Wake => hub.wake(),
            Op::ResetSlot { slot } => {
                let s = *slot as usize % slots;
                // A new worker comes: the old one's port is gone.
                ports[s] = None;
                hub.reset_slot(s).unwrap();
                dead[s] = false;
                // A corruption found by `post` before the reset is still in the mailbox
                // and comes with the next drain: not news about the new worker.
                fresh[s] = true;
            }
        }
    }
});
