//! The producer against a consumer that writes anything: the ring's `tail` word (and the
//! indices the producer attaches to) come from the fuzz input. `Producer::new`,
//! `offer`, `try_send`, `room_needed`, `abandon`, `reset`, `want_room`, `notify` and
//! `Probe::has_room` / `has_data` run on it.
//!
//! Checked: no panic; errors are `Corrupt(Indices)`; the producer never writes outside
//! the ring (canaries around the data area); while the consumer's tail only moves
//! forward within the protocol, the producer never overwrites bytes the consumer has
//! not released yet, and never publishes more than a ring's worth ahead of the tail.
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use paralelo_core::{Corruption, Error, FrameHeader, Producer, MAX_TAG};
use paralelo_fuzz::{capacity, ring_offsets, Index, Shadow, StandaloneRing};

#[derive(Arbitrary, Debug)]
enum Op {
    Offer {
        len: u16,
        tag: u32,
        pieces: u8,
    },
    TrySend {
        len: u16,
    },
    Abandon,
    /// The consumer reads `n` bytes (tail moves forward, never past head).
    Consume(u16),
    /// A foreign write over the tail word.
    SetTail(Index),
    /// Tail = head - n (wrapping): behind, equal, or ahead of the head.
    TailBehindHead(i32),
    WantRoom(bool),
    Notify,
    Probe(u16),
    Reset,
}

#[derive(Arbitrary, Debug)]
struct Input {
    cap: u8,
    tail: Index,
    /// The initial head: the tail plus this.
    used: u16,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let cap = capacity(input.cap);
    let cap64 = cap as u64;
    let ring = StandaloneRing::create(cap);
    let off = ring_offsets();
    let sh = Shadow::of_fd(ring.seg.raw_fd());
    drop(paralelo_core::Consumer::new(ring.seg.clone(), ring.place, true).unwrap());
    let tail0 = input.tail.value();
    let head0 = tail0.wrapping_add(input.used as u64);
    sh.write_u64(off.tail, tail0);
    sh.write_u64(off.head, head0);
    ring.paint(&sh);

    let mut p = match Producer::new(ring.seg.clone(), ring.place, false) {
        Ok(p) => p,
        Err(e) => {
            assert!(
                matches!(e, Error::Corrupt(Corruption::Indices { .. })),
                "{e:?}"
            );
            assert!(head0.wrapping_sub(tail0) > cap64);
            return;
        }
    };
    let probe = p.probe();
    // The tail has only moved forward, within the protocol, since attach or reset: the
    // producer then owes the consumer every byte between tail and head.
    let mut honest = true;
    let mut max_tail = tail0;

    for op in input.ops.iter().take(64) {
        let head = sh.read_u64(off.head);
        let tail = sh.read_u64(off.tail);
        let window = (honest && head.wrapping_sub(tail) <= cap64)
            .then(|| sh.read_ring(ring.data, cap, tail, head.wrapping_sub(tail) as usize));
        let mut wrote = false;
        match op {
            Op::Offer { len, tag, pieces } => {
                let payload = vec![0x5A; *len as usize % (2 * cap + 1)];
                let h = FrameHeader {
                    tag: *tag % (MAX_TAG + 1),
                    ..Default::default()
                };
                let mut sent = 0;
                for _ in 0..=(*pieces % 4) {
                    match p.offer(&h, &payload, &mut sent) {
                        Ok(true) => break,
                        Ok(false) => {}
                        Err(e) => {
                            assert!(
                                matches!(e, Error::Corrupt(Corruption::Indices { .. })),
                                "{e:?}"
                            );
                            break;
                        }
                    }
                }
                assert!(sent <= payload.len());
                wrote = true;
            }
            Op::TrySend { len } => {
                let payload = vec![0xC3; *len as usize % (cap / 2)];
                let r = p.try_send(&FrameHeader::default(), &payload);
                if let Err(e) = r {
                    assert!(
                        matches!(e, Error::Corrupt(Corruption::Indices { .. })),
                        "{e:?}"
                    );
                }
                wrote = true;
            }
            Op::Abandon => p.abandon(),
            Op::Consume(n) => {
                if head.wrapping_sub(tail) <= cap64 {
                    let n = (*n as u64).min(head.wrapping_sub(tail)) / 8 * 8;
                    sh.write_u64(off.tail, tail.wrapping_add(n));
                } else {
                    honest = false;
                }
            }
            Op::SetTail(i) => {
                sh.write_u64(off.tail, i.value());
                honest = false;
            }
            Op::TailBehindHead(d) => {
                sh.write_u64(off.tail, head.wrapping_sub(*d as i64 as u64));
                honest = false;
            }
            Op::WantRoom(on) => p.want_room(*on),
            Op::Notify => p.notify(),
            Op::Probe(need) => {
                let indices = Some(head.wrapping_sub(tail)).filter(|&u| u <= cap64);
                assert_eq!(probe.has_data(), indices.is_none_or(|u| u != 0));
                assert_eq!(
                    probe.has_room(*need as u64),
                    indices.is_none_or(|u| cap64 - u >= *need as u64)
                );
                let _ = p.room_needed(&[0; 100], 3);
            }
            Op::Reset => {
                p.reset();
                assert_eq!((sh.read_u64(off.head), sh.read_u64(off.tail)), (0, 0));
                honest = true;
                max_tail = 0;
            }
        }
        let t = sh.read_u64(off.tail);
        if t < max_tail {
            honest = false;
        }
        max_tail = max_tail.max(t);
        if wrote {
            if let Some(w) = window {
                // The consumer's unread bytes are intact, and the head stays within a
                // ring of the tail.
                assert_eq!(
                    sh.read_ring(ring.data, cap, tail, w.len()),
                    w,
                    "producer overwrote unread bytes"
                );
                let new_head = sh.read_u64(off.head);
                assert!(
                    new_head.wrapping_sub(tail) <= cap64,
                    "producer ran more than a ring ahead"
                );
                assert!(
                    new_head.wrapping_sub(head) <= cap64,
                    "producer's head went back"
                );
            }
        }
        ring.check_canaries(&sh);
    }
});
