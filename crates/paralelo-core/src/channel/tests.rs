use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::*;

const SMALL: usize = 4096; // fragments of 992 bytes

fn keep_going() -> bool {
    true
}

fn soon() -> Option<Instant> {
    Some(Instant::now() + Duration::from_secs(30))
}

/// Message `i` of sender `s`: its ids first, then bytes that depend on both; every 13th
/// is several fragments long.
fn message(s: u32, i: u32) -> Vec<u8> {
    let len = if i.is_multiple_of(13) {
        3000 + (i as usize % 7) * 500
    } else {
        8 + (i as usize % 40)
    };
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&s.to_le_bytes());
    m.extend_from_slice(&i.to_le_bytes());
    m.extend((8..len).map(|j| (j as u32).wrapping_mul(31).wrapping_add(i ^ s) as u8));
    m
}

/// With nobody receiving, a 10 KB message stalls after its first fragments; its sender
/// is then interrupted (as Ctrl-C would) and leaves it half-sent.
fn leave_half_sent(ch: &Arc<Channel>) {
    let stop = Arc::new(AtomicBool::new(false));
    let t = std::thread::spawn({
        let (ch, stop) = (ch.clone(), stop.clone());
        move || {
            ch.send(
                &vec![1u8; 10_000],
                None,
                &mut || !stop.load(std::sync::atomic::Ordering::Relaxed),
                None,
            )
        }
    });
    std::thread::sleep(Duration::from_millis(20));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(matches!(t.join().unwrap(), Err(Error::Interrupted)));
}

#[test]
fn many_senders_and_receivers_get_every_message_once_and_in_each_senders_order() {
    const SENDERS: u32 = 3;
    const EACH: u32 = 2000;
    let ch = Arc::new(Channel::create(SMALL, Counting::None).unwrap());
    let got: Vec<_> = (0..3)
        .map(|_| {
            let ch = ch.clone();
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                let mut out = Vec::new();
                loop {
                    match ch.recv(
                        &mut out,
                        Some(Instant::now() + Duration::from_millis(500)),
                        &mut keep_going,
                    ) {
                        Ok(()) => seen.push(out.clone()),
                        Err(Error::Timeout) => return seen,
                        Err(e) => panic!("{e}"),
                    }
                }
            })
        })
        .collect();
    let sent: Vec<_> = (0..SENDERS)
        .map(|s| {
            let ch = ch.clone();
            std::thread::spawn(move || {
                for i in 0..EACH {
                    let m = message(s, i);
                    if i % 2 == 0 || !ch.try_send(&m).unwrap() {
                        ch.send(&m, soon(), &mut keep_going, None).unwrap();
                    }
                }
            })
        })
        .collect();
    for t in sent {
        t.join().unwrap();
    }
    let mut last: HashMap<(usize, u32), u32> = HashMap::new();
    let mut total = 0;
    for (r, t) in got.into_iter().enumerate() {
        for m in t.join().unwrap() {
            let s = u32::from_le_bytes(m[0..4].try_into().unwrap());
            let i = u32::from_le_bytes(m[4..8].try_into().unwrap());
            assert_eq!(m, message(s, i), "message {i} of sender {s} arrives whole");
            if let Some(prev) = last.insert((r, s), i) {
                assert!(prev < i, "a receiver sees each sender's messages in order");
            }
            total += 1;
        }
    }
    assert_eq!(total, SENDERS * EACH);
}

#[test]
fn a_channel_opened_from_its_fd_shares_the_messages() {
    let a = Channel::create(SMALL, Counting::None).unwrap();
    let b = Channel::open(a.seg.as_fd_for_test()).unwrap();
    a.send(b"hello", soon(), &mut keep_going, None).unwrap();
    let big = vec![7u8; 10_000];
    let t = std::thread::spawn({
        let big = big.clone();
        move || a.send(&big, soon(), &mut keep_going, None).unwrap()
    });
    let mut out = Vec::new();
    b.recv(&mut out, soon(), &mut keep_going).unwrap();
    assert_eq!(out, b"hello");
    b.recv(&mut out, soon(), &mut keep_going).unwrap();
    assert_eq!(out, big);
    t.join().unwrap();
}

#[test]
fn the_last_handle_to_let_go_gets_the_unread_messages() {
    let a = Channel::create(SMALL, Counting::None).unwrap();
    let passed = a.hold_for_passing().unwrap();
    let b = Channel::open(passed.as_fd()).unwrap();
    a.send(b"one", soon(), &mut keep_going, None).unwrap();
    a.send(&[9u8; 3000], soon(), &mut keep_going, None).unwrap(); // several fragments
    assert!(a.let_go().is_empty(), "b and the passed descriptor hold it");
    assert!(a.let_go().is_empty(), "a second let-go is nothing");
    drop(passed);
    let left = b.let_go();
    assert_eq!(left, vec![b"one".to_vec(), vec![9u8; 3000]]);
}

#[test]
fn a_segment_that_is_not_a_channel_is_refused() {
    let seg = Segment::create("not-a-channel", 1 << 16).unwrap();
    assert!(matches!(
        Channel::open(seg.as_fd_for_test()),
        Err(Error::BadLayout { what: "channel" })
    ));
    assert!(matches!(
        Channel::create(1000, Counting::None),
        Err(Error::Invalid(_))
    ));
}

#[test]
fn receiving_times_out_when_nothing_comes_and_a_past_deadline_takes_one_look() {
    let ch = Channel::create(SMALL, Counting::None).unwrap();
    let mut out = Vec::new();
    let start = Instant::now();
    let r = ch.recv(
        &mut out,
        Some(start + Duration::from_millis(30)),
        &mut keep_going,
    );
    assert!(matches!(r, Err(Error::Timeout)));
    assert!(start.elapsed() >= Duration::from_millis(30));
    assert!(matches!(
        ch.recv(&mut out, Some(Instant::now()), &mut keep_going),
        Err(Error::Timeout)
    ));
    ch.send(b"x", None, &mut keep_going, None).unwrap();
    ch.recv(&mut out, Some(Instant::now()), &mut keep_going)
        .unwrap();
    assert_eq!(out, b"x");
}

/// A receive that waits 200 ms and gets no message (the half-sent one is dropped); its
/// buffer, for the receives that follow.
fn finds_nothing(ch: &Channel) -> Vec<u8> {
    let mut out = Vec::new();
    let r = ch.recv(
        &mut out,
        Some(Instant::now() + Duration::from_millis(200)),
        &mut keep_going,
    );
    assert!(matches!(r, Err(Error::Timeout)), "{r:?}");
    out
}

#[test]
fn a_sender_that_gives_up_half_way_costs_only_its_own_message() {
    let ch = Arc::new(Channel::create(SMALL, Counting::None).unwrap());
    leave_half_sent(&ch);
    // The receiver takes the fragments, finds the sender gone, drops them.
    let mut out = finds_nothing(&ch);
    ch.send(b"next", soon(), &mut keep_going, None).unwrap();
    ch.recv(&mut out, soon(), &mut keep_going).unwrap();
    assert_eq!(out, b"next");
}

#[test]
fn a_sender_that_left_is_answered_by_the_next_senders_abort() {
    let ch = Arc::new(Channel::create(SMALL, Counting::None).unwrap());
    leave_half_sent(&ch);
    // The next sender comes before any receiver: it aborts the half-sent message first.
    let big = message(9, 13);
    let t = std::thread::spawn({
        let (ch, big) = (ch.clone(), big.clone());
        move || ch.send(&big, soon(), &mut keep_going, None).unwrap()
    });
    let mut out = Vec::new();
    ch.recv(&mut out, soon(), &mut keep_going).unwrap();
    assert_eq!(out, big);
    t.join().unwrap();
}

#[test]
fn a_receiver_that_gives_up_half_way_costs_only_the_message_it_held() {
    let ch = Arc::new(Channel::create(SMALL, Counting::None).unwrap());
    // The sender stalls half-way through a big message (nobody drains), the receiver
    // reads its first fragments and is interrupted.
    let big = vec![2u8; 20_000];
    let sender = std::thread::spawn({
        let (ch, big) = (ch.clone(), big.clone());
        move || {
            ch.send(&big, soon(), &mut keep_going, None).unwrap();
            ch.send(b"after", soon(), &mut keep_going, None).unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(20));
    let mut out = Vec::new();
    let mut polls = 0;
    let r = ch.recv(&mut out, soon(), &mut || {
        polls += 1;
        polls < 2
    });
    // It may also have read the whole message before the poll ran.
    match r {
        Err(Error::Interrupted) => {
            ch.recv(&mut out, soon(), &mut keep_going).unwrap();
            assert_eq!(
                out, b"after",
                "the rest of the message is dropped, the next arrives"
            );
        }
        Ok(()) => {
            assert_eq!(out, big);
            ch.recv(&mut out, soon(), &mut keep_going).unwrap();
            assert_eq!(out, b"after");
        }
        Err(e) => panic!("{e}"),
    }
    sender.join().unwrap();
}

#[test]
fn the_receiving_mark_tells_a_finished_message_from_one_cut_off() {
    let ch = Channel::create(SMALL, Counting::None).unwrap();
    let h = ch.header();
    let mut held = Held::take(&h.recv_lock, &ch.consumer, None, &mut keep_going).unwrap();
    let c = held.get();
    // A receiver about to release a message's end at the tail we see did release it.
    h.receiving.store(ending_at(c.tail()), Ordering::Relaxed);
    ch.resync_receiver(c).unwrap();
    assert!(!c.in_partial());
    assert_eq!(h.receiving.load(Ordering::Relaxed), WHOLE);
    // One that was to release it elsewhere died first: the tail is mid-message.
    h.receiving
        .store(ending_at(c.tail() + 64), Ordering::Relaxed);
    ch.resync_receiver(c).unwrap();
    assert!(c.in_partial());
    assert_eq!(h.receiving.load(Ordering::Relaxed), MID);
}

#[test]
fn counting_bounds_puts_and_task_done_counts_down_to_join() {
    let ch = Arc::new(Channel::create(SMALL, Counting::Joinable).unwrap());
    ch.reserve(2, soon(), &mut keep_going).unwrap();
    ch.reserve(2, soon(), &mut keep_going).unwrap();
    assert_eq!(ch.count(), 2);
    let r = ch.reserve(
        2,
        Some(Instant::now() + Duration::from_millis(20)),
        &mut keep_going,
    );
    assert!(matches!(r, Err(Error::Timeout)));
    let t = std::thread::spawn({
        let ch = ch.clone();
        move || ch.reserve(2, soon(), &mut keep_going)
    });
    std::thread::sleep(Duration::from_millis(10));
    ch.unreserve();
    t.join().unwrap().unwrap();
    assert_eq!(ch.count(), 2);

    // Three reserved, one undone: a joinable channel counts them unfinished too.
    assert_eq!(ch.unfinished(), 2);
    for _ in 0..2 {
        ch.task_done().unwrap();
    }
    assert!(matches!(ch.task_done(), Err(Error::Invalid(_))));
    ch.reserve(0, soon(), &mut keep_going).unwrap();
    ch.reserve(0, soon(), &mut keep_going).unwrap();
    let t = std::thread::spawn({
        let ch = ch.clone();
        move || ch.wait_finished(soon(), &mut keep_going)
    });
    ch.task_done().unwrap();
    assert_eq!(ch.unfinished(), 1);
    ch.task_done().unwrap();
    t.join().unwrap().unwrap();
    assert!(ch
        .wait_finished(Some(Instant::now()), &mut keep_going)
        .is_ok());
}

#[test]
fn a_watcher_is_seen_by_senders_until_it_leaves() {
    let ch = Channel::create(SMALL, Counting::None).unwrap();
    assert!(!ch.fd_watched());
    ch.watch(true);
    assert!(ch.fd_watched());
    ch.watch(false);
    ch.watch(false); // never below zero
    assert!(!ch.fd_watched());
}

#[test]
fn a_message_dropped_half_sent_is_counted_out_and_marked_done() {
    let ch = Arc::new(Channel::create(SMALL, Counting::Joinable).unwrap());
    ch.reserve(0, soon(), &mut keep_going).unwrap();
    leave_half_sent(&ch);
    assert_eq!((ch.count(), ch.unfinished()), (1, 1));
    let mut out = finds_nothing(&ch);
    assert_eq!(
        (ch.count(), ch.unfinished()),
        (0, 0),
        "the receiver that dropped it counted it out"
    );
    // A delivered message is counted out by its receive (and stays unfinished).
    ch.reserve(0, soon(), &mut keep_going).unwrap();
    ch.send(b"x", soon(), &mut keep_going, None).unwrap();
    ch.recv(&mut out, soon(), &mut keep_going).unwrap();
    assert_eq!((ch.count(), ch.unfinished()), (0, 1));
}

#[test]
fn a_thread_already_using_an_end_is_refused_not_deadlocked() {
    let ch = Channel::create(SMALL, Counting::None).unwrap();
    let h = ch.header();
    let _held = Held::take(&h.send_lock, &ch.producer, None, &mut keep_going).unwrap();
    // (As a signal handler would, while this thread waits for room.)
    assert!(matches!(
        ch.send(b"x", soon(), &mut keep_going, None),
        Err(Error::Reentrant)
    ));
    assert!(matches!(ch.try_send(b"x"), Err(Error::Reentrant)));
    // The other end is free.
    assert!(!ch.has_data());
}

#[test]
fn a_sender_whose_view_of_the_tail_is_old_never_overwrites_unread_messages() {
    // Two handles, as two processes hold: each its own producer and view of the tail.
    let a = Channel::create(SMALL, Counting::None).unwrap();
    let b = Channel::open(a.seg.as_fd_for_test()).unwrap();
    let mut out = Vec::new();
    let msg = [7u8; 200];
    for _ in 0..100 {
        // Many rings' worth through `a`: `b`'s last look at the tail is far behind.
        a.send(&msg, soon(), &mut keep_going, None).unwrap();
        a.recv(&mut out, soon(), &mut keep_going).unwrap();
    }
    while a.try_send(&msg).unwrap() {}
    assert!(
        !b.try_send(&msg).unwrap(),
        "the ring is full: b must see it"
    );
    b.recv(&mut out, soon(), &mut keep_going).unwrap();
    assert!(b.try_send(&msg).unwrap());
    let mut n = 0;
    while a
        .recv(&mut out, Some(Instant::now()), &mut keep_going)
        .is_ok()
    {
        assert_eq!(out, msg);
        n += 1;
    }
    assert!(n >= 2, "{n}"); // (a rewind's skip may hold most of the ring)
}
