//! Frame encode + decode round trip: a real `Producer` and `Consumer` on one ring, driven
//! by the fuzz input through every sending call (`offer` in pieces, `try_send`, `send`
//! with an expired deadline, `abandon`, `reset`), with messages of any size (fragmented
//! when larger than a quarter of the ring). While nobody else writes the segment, every
//! message must come out whole, in order, once, with its header; an abandoned one never.
//! Then the input may scribble on the ring (`Corrupt*` ops): from there on only "no
//! panic, errors are `Corrupt`" is checked, on both ends.
#![no_main]
use std::collections::VecDeque;
use std::time::Instant;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use paralelo_core::{Consumer, Error, FrameHeader, Producer, MAX_TAG};
use paralelo_fuzz::{capacity, expect_corrupt, ring_offsets, Index, Shadow, StandaloneRing};

#[derive(Arbitrary, Debug)]
struct Msg {
    len: u16,
    tag: u32,
    job: u64,
    fill: u8,
}

impl Msg {
    fn build(&self, cap: usize) -> (FrameHeader, Vec<u8>) {
        // Up to three rings' worth, so that big messages take several fragments and laps.
        let len = self.len as usize % (3 * cap + 1);
        let h = FrameHeader {
            tag: self.tag % (MAX_TAG + 1),
            job: self.job,
            seq: len as u64,
            aux: !self.job,
        };
        let payload = (0..len).map(|i| self.fill.wrapping_add(i as u8)).collect();
        (h, payload)
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Starts a message (if none is under way) and offers what fits.
    Offer(Msg),
    /// Offers more of the message under way.
    Continue,
    Abandon,
    TrySend(Msg),
    /// `send` with a deadline already passed: sends what fits without sleeping.
    Send(Msg),
    /// A tag the ring reserves must be refused.
    ReservedTag(u32),
    Drain(u8),
    DrainAll,
    Notify,
    WantRoom(bool),
    Reset,
    CorruptByte {
        at: u16,
        byte: u8,
    },
    CorruptHead(Index),
    CorruptTail(Index),
}

#[derive(Arbitrary, Debug)]
struct Input {
    cap: u8,
    ops: Vec<Op>,
}

struct InFlight {
    h: FrameHeader,
    payload: Vec<u8>,
    sent: usize,
}

fuzz_target!(|input: Input| {
    let cap = capacity(input.cap);
    let ring = StandaloneRing::create(cap);
    let off = ring_offsets();
    let sh = Shadow::of_fd(ring.seg.raw_fd());
    let mut p = Producer::new(ring.seg.clone(), ring.place, true).unwrap();
    let mut c = Consumer::new(ring.seg.clone(), ring.place, false).unwrap();
    ring.paint(&sh);

    // Messages sent whole and not yet received, in order.
    let mut expected: VecDeque<(FrameHeader, Vec<u8>)> = VecDeque::new();
    let mut flight: Option<InFlight> = None;
    // Someone wrote the ring behind the protocol's back: only absence of panics counts.
    let mut corrupt = false;
    let mut out = Vec::new();

    for op in input.ops.iter().take(64) {
        match op {
            Op::Offer(_) | Op::Continue => {
                if flight.is_none() {
                    if let Op::Offer(m) = op {
                        let (h, payload) = m.build(cap);
                        flight = Some(InFlight {
                            h,
                            payload,
                            sent: 0,
                        });
                    }
                }
                if let Some(f) = flight.as_mut() {
                    let before = f.sent;
                    match p.offer(&f.h, &f.payload, &mut f.sent) {
                        Ok(true) => {
                            assert_eq!(f.sent, f.payload.len());
                            let f = flight.take().unwrap();
                            expected.push_back((f.h, f.payload));
                        }
                        Ok(false) => {
                            assert!(f.sent >= before && f.sent < f.payload.len().max(1));
                            if !corrupt {
                                let need = p.room_needed(&f.payload, f.sent);
                                assert!(
                                    !p.probe().has_room(need),
                                    "offer refused a fragment there was room for"
                                );
                            }
                        }
                        Err(e) => {
                            expect_corrupt(&e);
                            assert!(corrupt, "offer failed on a healthy ring: {e}");
                        }
                    }
                }
            }
            Op::Abandon => {
                if let Some(f) = flight.take() {
                    if f.sent > 0 {
                        p.abandon();
                    }
                }
            }
            Op::TrySend(m) | Op::Send(m) => {
                let (h, payload) = m.build(cap);
                if flight.is_some() {
                    // A caller finishes or abandons a message before the next one.
                    continue;
                }
                let r = match op {
                    Op::TrySend(_) => p.try_send(&h, &payload),
                    _ => p
                        .send(&h, &payload, Some(Instant::now()), &mut || true)
                        .map(|()| true),
                };
                match r {
                    Ok(true) => expected.push_back((h, payload)),
                    Ok(false) => assert!(
                        corrupt
                            || payload.len() > p.max_fragment()
                            || !p.probe().has_room(p.room_needed(&payload, 0)),
                        "try_send refused a message there was room for"
                    ),
                    // `send` abandoned what it sent of the message: it never arrives.
                    Err(Error::Timeout) => assert!(matches!(op, Op::Send(_))),
                    Err(e) => {
                        expect_corrupt(&e);
                        assert!(corrupt, "send failed on a healthy ring: {e}");
                    }
                }
            }
            Op::ReservedTag(t) => {
                let h = FrameHeader {
                    tag: MAX_TAG + 1 + t % (u32::MAX - MAX_TAG),
                    ..Default::default()
                };
                assert!(matches!(p.try_send(&h, b"x"), Err(Error::Invalid(_))));
                assert!(matches!(p.offer(&h, b"x", &mut 0), Err(Error::Invalid(_))));
            }
            Op::Drain(_) | Op::DrainAll => {
                let max = match op {
                    Op::Drain(n) => *n as usize,
                    _ => usize::MAX,
                };
                out.clear();
                let mut got = Vec::new();
                match c.drain(max, &mut out, |h, r| got.push((h, r))) {
                    Ok(n) => {
                        assert_eq!(n, got.len());
                        assert!(n <= max);
                    }
                    Err(e) => {
                        expect_corrupt(&e);
                        assert!(corrupt, "drain found a healthy ring corrupt: {e}");
                    }
                }
                for (h, r) in &got {
                    assert!(r.start <= r.end && r.end <= out.len());
                    assert!(h.tag <= MAX_TAG);
                    if !corrupt {
                        let (wh, wp) = expected.pop_front().expect("a message that was never sent");
                        assert_eq!(*h, wh, "header changed on the way");
                        assert!(out[r.clone()] == wp[..], "payload changed on the way");
                    }
                }
                if !corrupt && max == usize::MAX {
                    assert!(
                        expected.is_empty(),
                        "{} sent messages not delivered",
                        expected.len()
                    );
                }
            }
            Op::Notify => p.notify(),
            Op::WantRoom(on) => p.want_room(*on),
            Op::Reset => {
                // Both ends start over: what was in the ring is gone.
                p.reset();
                c.reset();
                expected.clear();
                flight = None;
                corrupt = false;
            }
            Op::CorruptByte { at, byte } => {
                // Into the ring header (indices, bells) or its data area.
                let at = *at as usize;
                let to = if at.is_multiple_of(2) {
                    at / 2 % paralelo_core::ring::RingPlace::HEADER_BYTES
                } else {
                    ring.data + at / 2 % cap
                };
                sh.write(to, &[*byte]);
                corrupt = true;
            }
            Op::CorruptHead(i) => {
                sh.write_u64(off.head, i.value());
                corrupt = true;
            }
            Op::CorruptTail(i) => {
                sh.write_u64(off.tail, i.value());
                corrupt = true;
            }
        }
        ring.check_canaries(&sh);
    }
});
