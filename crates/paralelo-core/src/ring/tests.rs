#![allow(unsafe_code)] // tests play the misbehaving process
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::frame::padded;
use super::mem::RingMem;
use super::*;
use crate::{Corruption, Error, Result, Segment};

const CAP: usize = 1024;

fn ring(cap: usize) -> (Producer, Consumer) {
    let (p, c, _) = scribbler(cap);
    (p, c)
}

fn h(tag: u32, seq: u64) -> FrameHeader {
    FrameHeader {
        tag,
        job: 7,
        seq,
        aux: seq * 3,
    }
}

fn recv_all(c: &mut Consumer) -> Vec<(FrameHeader, Vec<u8>)> {
    try_recv_all(c).unwrap()
}

fn try_recv_all(c: &mut Consumer) -> Result<Vec<(FrameHeader, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut got = Vec::new();
    c.drain(usize::MAX, &mut buf, |h, r| got.push((h, r)))?;
    Ok(got.into_iter().map(|(h, r)| (h, buf[r].to_vec())).collect())
}

fn keep_going() -> bool {
    true
}

#[test]
fn empty_ring_has_nothing() {
    let (_p, mut c) = ring(CAP);
    assert!(!c.has_data());
    assert!(recv_all(&mut c).is_empty());
}

#[test]
fn messages_keep_order_headers_and_bytes() {
    let (mut p, mut c) = ring(CAP);
    for i in 0..5u64 {
        assert!(p
            .try_send(&h(1, i), &vec![i as u8; i as usize * 3])
            .unwrap());
    }
    let got = recv_all(&mut c);
    assert_eq!(got.len(), 5);
    for (i, (hh, body)) in got.iter().enumerate() {
        assert_eq!(*hh, h(1, i as u64));
        assert_eq!(*body, vec![i as u8; i * 3]);
    }
}

#[test]
fn full_ring_refuses_then_accepts_after_drain() {
    let (mut p, mut c) = ring(CAP);
    let body = [9u8; 100];
    let mut sent = 0;
    while p.try_send(&h(2, sent), &body).unwrap() {
        sent += 1;
    }
    // 100 bytes pad to 104, plus a 32-byte header: 136 per frame; 1024 / 136 = 7.
    assert_eq!(sent, 7);
    assert_eq!(recv_all(&mut c).len(), 7);
    assert!(p.try_send(&h(2, 0), &body).unwrap());
}

#[test]
fn wrap_around_splits_payload_but_not_content() {
    let (mut p, mut c) = ring(CAP);
    // Walk the write position round the ring many times with odd sizes, one message
    // always left in it (an empty ring rewinds instead of wrapping).
    let body = |round: u64| -> Vec<u8> {
        let len = (round as usize * 37) % 200;
        (0..len).map(|i| (i as u64 + round) as u8).collect()
    };
    assert!(p.try_send(&h(3, 0), &body(0)).unwrap());
    let mut buf = Vec::new();
    let mut wrapped = 0;
    for round in 1..500u64 {
        let before = p.head() % CAP as u64;
        assert!(p.try_send(&h(3, round), &body(round)).unwrap());
        if p.head() % (CAP as u64) < before {
            wrapped += 1;
        }
        buf.clear();
        let mut got = Vec::new();
        c.drain(1, &mut buf, |hh, r| got.push((hh, r))).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].0, buf[got[0].1.clone()].to_vec()),
            (h(3, round - 1), body(round - 1))
        );
    }
    assert!(wrapped > 10, "the position went round {wrapped} times");
}

#[test]
fn an_empty_ring_rewinds_to_its_start_when_the_message_fits_there() {
    let (mut p, mut c) = ring(CAP);
    let mut rewinds = 0;
    for round in 0..300u64 {
        let len = (round as usize * 53) % 200;
        let body: Vec<u8> = (0..len).map(|i| (i as u64 * 7 + round) as u8).collect();
        let before = p.head() % CAP as u64;
        assert!(p.try_send(&h(4, round), &body).unwrap());
        let after = p.head() % CAP as u64;
        let frame = FRAME_HEADER as u64 + padded(len);
        if after == frame % CAP as u64 && before != 0 {
            rewinds += 1;
        }
        assert_eq!(recv_all(&mut c), vec![(h(4, round), body)]);
        // The bytes in use never leave the first part of the ring: past its first quarter,
        // a message goes back to the start (when it fits before the position).
        assert!(
            after <= CAP as u64 / 4 + 2 * (FRAME_HEADER as u64 + 200),
            "at {after}"
        );
    }
    assert!(rewinds > 50, "rewound {rewinds} times");
    assert!(!c.has_data());
}

#[test]
fn a_fragmented_message_and_an_abort_after_a_rewind_arrive_as_before() {
    let (mut p, mut c) = ring(CAP);
    // Past the first quarter, then empty: the next message, fragmented, rewinds first.
    assert!(p.try_send(&h(1, 0), &[1u8; 200]).unwrap());
    assert!(p.try_send(&h(1, 1), &[2u8; 100]).unwrap());
    assert_eq!(recv_all(&mut c).len(), 2);
    let big: Vec<u8> = (0..700u32).map(|i| (i * 13) as u8).collect();
    let mut sent = 0;
    let mut got = Vec::new();
    while !p.offer(&h(5, 2), &big, &mut sent).unwrap() {
        got.extend(recv_all(&mut c)); // room for the next fragments
    }
    got.extend(recv_all(&mut c));
    assert_eq!(got, vec![(h(5, 2), big.clone())]);
    // A fragmented send abandoned half-way, then a rewind: the consumer drops the half.
    for i in 0..3u64 {
        assert!(p.try_send(&h(1, 10 + i), &[3u8; 100]).unwrap());
        recv_all(&mut c);
    }
    let huge = vec![4u8; 3000]; // more than the ring holds: only some fragments go
    let mut sent = 0;
    assert!(!p.offer(&h(6, 3), &huge, &mut sent).unwrap());
    assert!(sent > 0);
    p.abandon();
    recv_all(&mut c); // the fragments so far, held back as a partial message
    assert!(p.try_send(&h(7, 4), b"after").unwrap());
    assert_eq!(recv_all(&mut c), vec![(h(7, 4), b"after".to_vec())]);
}

#[test]
fn a_skip_that_does_not_end_at_the_ring_s_end_is_corrupt() {
    let (mut p, mut c, mem) = scribbler(CAP);
    assert!(p.try_send(&h(1, 0), &[1u8; 150]).unwrap());
    assert!(p.try_send(&h(1, 0), &[1u8; 150]).unwrap());
    assert_eq!(recv_all(&mut c).len(), 2);
    // Past the first quarter and empty: the next message goes after a skip at byte 368.
    assert!(p.try_send(&h(1, 1), b"rewound").unwrap());
    assert_eq!(p.head(), CAP as u64 + 40);
    // The skip now claims 8 bytes too few.
    let short = (CAP as u32 - 368 - FRAME_HEADER as u32 - 8).to_le_bytes();
    // SAFETY: the misbehaving producer's write, as above.
    unsafe { mem.write_at(368, &short) };
    let err = try_recv_all(&mut c).unwrap_err();
    assert!(
        matches!(err, Error::Corrupt(Corruption::SkipMisplaced { .. })),
        "{err}"
    );
}

#[test]
fn oversized_message_streams_through_a_small_ring() {
    let (mut p, mut c) = ring(CAP);
    let big: Vec<u8> = (0..50_000u32).map(|i| (i * 7) as u8).collect();
    assert!(
        !p.try_send(&h(4, 1), &big).unwrap(),
        "try_send never fragments"
    );
    let mut got = Vec::new();
    std::thread::scope(|s| {
        s.spawn(|| {
            let deadline = Some(Instant::now() + Duration::from_secs(10));
            while got.is_empty() {
                c.wait(deadline, &mut keep_going).unwrap();
                got.extend(recv_all(&mut c));
            }
        });
        p.send(
            &h(4, 1),
            &big,
            Some(Instant::now() + Duration::from_secs(10)),
            &mut keep_going,
        )
        .unwrap();
    });
    assert_eq!(got, vec![(h(4, 1), big)]);
}

#[test]
fn abandoned_fragmented_send_is_dropped_by_the_consumer() {
    let (mut p, mut c) = ring(CAP);
    let big = vec![1u8; 5000];
    // Nobody drains: the send times out after some fragments went out.
    let err = p.send(
        &h(5, 1),
        &big,
        Some(Instant::now() + Duration::from_millis(20)),
        &mut keep_going,
    );
    assert!(matches!(err, Err(Error::Timeout)));
    assert!(recv_all(&mut c).is_empty(), "no half message is delivered");
    p.send(&h(5, 2), b"next", None, &mut keep_going).unwrap();
    assert_eq!(recv_all(&mut c), vec![(h(5, 2), b"next".to_vec())]);
}

#[test]
fn poll_can_stop_a_wait() {
    let (_p, c) = ring(CAP);
    let mut calls = 0;
    let mut stop_second = || {
        calls += 1;
        calls < 2
    };
    let err = c.wait(None, &mut stop_second);
    assert!(matches!(err, Err(Error::Interrupted)));
}

#[test]
fn wait_times_out_on_an_empty_ring() {
    let (_p, c) = ring(CAP);
    let t = Instant::now();
    let err = c.wait(Some(t + Duration::from_millis(30)), &mut keep_going);
    assert!(matches!(err, Err(Error::Timeout)));
}

#[test]
fn reserved_tags_and_bad_capacities_are_refused() {
    let (mut p, _c) = ring(CAP);
    assert!(matches!(
        p.try_send(&h(MAX_TAG + 1, 0), b""),
        Err(Error::Invalid(_))
    ));
    let seg = Arc::new(Segment::create("ring-test", 4096).unwrap());
    let place = RingPlace {
        header: 0,
        data: 1024,
        capacity: 1000,
        data_bell: 512,
        room_bell: None,
    };
    assert!(matches!(
        Producer::new(seg, place, true),
        Err(Error::Invalid(_))
    ));
}

#[test]
fn threads_stress_every_byte_arrives() {
    let (mut p, mut c) = ring(4096);
    const N: u64 = 20_000;
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut next = 0u64;
            while next < N {
                c.wait(None, &mut keep_going).unwrap();
                for (hh, body) in recv_all(&mut c) {
                    assert_eq!(hh.seq, next);
                    assert_eq!(body.len(), (next % 300) as usize);
                    assert!(body.iter().all(|&x| x == next as u8));
                    next += 1;
                }
            }
        });
        for i in 0..N {
            let body = vec![i as u8; (i % 300) as usize];
            p.send(&h(6, i), &body, None, &mut keep_going).unwrap();
        }
    });
}

/// A second view of the ring's memory, to write what a misbehaving process would.
fn scribbler(cap: usize) -> (Producer, Consumer, RingMem) {
    let place = RingPlace {
        header: 0,
        data: 1024,
        capacity: cap,
        data_bell: 512,
        room_bell: None,
    };
    let seg = Arc::new(Segment::create("ring-test", 1024 + cap).unwrap());
    let p = Producer::new(seg.clone(), place, true).unwrap();
    let c = Consumer::new(seg.clone(), place, false).unwrap();
    (p, c, RingMem::new(seg, place, false).unwrap())
}

#[test]
fn a_frame_longer_than_a_fragment_is_corrupt_and_poisons_until_reset() {
    let (mut p, mut c, mem) = scribbler(CAP);
    assert!(p.try_send(&h(1, 0), b"good").unwrap());
    assert!(p.try_send(&h(1, 1), b"victim").unwrap());
    // The second frame's length word now claims far more than a fragment.
    // SAFETY: a test owns both ends; this is the misbehaving producer's write.
    unsafe { mem.write_at(40, &(1u32 << 20).to_le_bytes()) };
    let mut buf = Vec::new();
    let mut got = Vec::new();
    let err = c
        .drain(usize::MAX, &mut buf, |hh, r| got.push((hh, r)))
        .unwrap_err();
    assert!(
        matches!(err, Error::Corrupt(Corruption::FrameTooLong { .. })),
        "{err}"
    );
    assert_eq!(got.len(), 1, "the good frame before it is still delivered");
    assert_eq!(&buf[got[0].1.clone()], b"good");
    assert!(c.is_poisoned());
    assert!(
        try_recv_all(&mut c).is_err(),
        "nothing more is read from a corrupt ring"
    );
    c.reset();
    p.reset();
    assert!(p.try_send(&h(1, 2), b"again").unwrap());
    assert_eq!(recv_all(&mut c), vec![(h(1, 2), b"again".to_vec())]);
}

#[test]
fn indices_out_of_order_are_corrupt_on_both_ends() {
    let (mut p, mut c, mem) = scribbler(CAP);
    // A consumer that claims to have read more than was ever written.
    mem.header()
        .tail
        .store(10_000, std::sync::atomic::Ordering::Release);
    let mut sent = 0;
    let filler = vec![0u8; 200];
    let err = loop {
        match p.offer(&h(1, 0), &filler, &mut sent) {
            Ok(_) => sent = 0,
            Err(e) => break e,
        }
    };
    assert!(
        matches!(err, Error::Corrupt(Corruption::Indices { .. })),
        "{err}"
    );
    // A producer whose head runs more than a capacity ahead of the tail.
    mem.header()
        .tail
        .store(0, std::sync::atomic::Ordering::Release);
    mem.header()
        .head
        .store(CAP as u64 * 5, std::sync::atomic::Ordering::Release);
    let err = try_recv_all(&mut c).unwrap_err();
    assert!(
        matches!(err, Error::Corrupt(Corruption::Indices { .. })),
        "{err}"
    );
    assert!(
        c.probe().has_data(),
        "a waiter wakes to find the corruption"
    );
}

#[test]
fn a_frame_past_the_published_bytes_is_corrupt() {
    let (mut p, mut c, mem) = scribbler(CAP);
    assert!(p.try_send(&h(1, 0), b"12345678").unwrap());
    // Claim 64 bytes while 8 were published (64 is still a legal fragment length).
    // SAFETY: the misbehaving producer's write, as above.
    unsafe { mem.write_at(0, &64u32.to_le_bytes()) };
    let err = try_recv_all(&mut c).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Corrupt(Corruption::FrameOverrun {
                len: 64,
                published: 40
            })
        ),
        "{err}"
    );
}

#[test]
fn probes_wait_without_holding_an_end() {
    let (mut p, c) = ring(CAP);
    let probe = c.probe();
    let c = std::sync::Mutex::new(c);
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(30));
            // The consumer end is free to take while the other thread waits on the probe.
            drop(c.lock().unwrap());
            assert!(p.try_send(&h(1, 0), b"x").unwrap());
            p.notify();
        });
        probe
            .wait_data(
                Some(Instant::now() + Duration::from_secs(5)),
                &mut keep_going,
            )
            .unwrap();
    });
    assert!(probe.has_data());
}
