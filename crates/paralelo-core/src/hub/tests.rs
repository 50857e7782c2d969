#![allow(unsafe_code)] // tests play the misbehaving process
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use super::*;

fn keep_going() -> bool {
    true
}

/// A child process running `cmd args`, its pid and a pidfd on it.
fn spawn_watched(cmd: &str, args: &[&str]) -> (std::process::Child, u32, std::os::fd::OwnedFd) {
    let child = std::process::Command::new(cmd).args(args).spawn().unwrap();
    let pid = child.id();
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::PidfdFlags::empty(),
    )
    .unwrap();
    (child, pid, pidfd)
}

fn soon() -> Option<Instant> {
    Some(Instant::now() + Duration::from_secs(10))
}

fn port(hub: &Hub, slot: usize) -> Port {
    // SAFETY: the hub keeps its fd open for the whole test.
    let fd = unsafe { BorrowedFd::borrow_raw(hub.raw_fd()) };
    Port::open(fd, slot).unwrap()
}

fn tasks(p: &Port) -> Vec<(FrameHeader, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut got = Vec::new();
    p.drain_tasks(usize::MAX, &mut buf, |h, r| got.push((h, r)))
        .unwrap();
    got.into_iter().map(|(h, r)| (h, buf[r].to_vec())).collect()
}

type Messages = Vec<(usize, FrameHeader, Vec<u8>)>;

fn results(hub: &Hub) -> (Messages, Vec<SlotEvent>) {
    let mut got = Received::default();
    hub.drain_results(&mut got).unwrap();
    let msgs = got
        .messages
        .iter()
        .map(|(s, h, r)| (*s, *h, got.bytes[r.clone()].to_vec()))
        .collect();
    (msgs, got.events)
}

#[test]
fn tasks_reach_their_slot_and_results_come_back_tagged_with_it() {
    let hub = Hub::create(3, 4096).unwrap();
    let ports: Vec<Port> = (0..3).map(|i| port(&hub, i)).collect();
    for slot in 0..3 {
        let h = FrameHeader {
            tag: 1,
            job: 9,
            seq: slot as u64,
            aux: 0,
        };
        hub.post(slot, &h, &[slot as u8; 10], true).unwrap();
    }
    for (slot, p) in ports.iter().enumerate() {
        let got: Vec<_> = tasks(p).into_iter().map(|(h, b)| (h.seq, b)).collect();
        assert_eq!(got, vec![(slot as u64, vec![slot as u8; 10])]);
        p.send(
            &FrameHeader {
                tag: 2,
                job: 9,
                seq: slot as u64,
                aux: 5,
            },
            b"ok",
            None,
            &mut keep_going,
        )
        .unwrap();
    }
    hub.wait_results(soon(), &mut keep_going).unwrap();
    let got: Vec<_> = results(&hub)
        .0
        .into_iter()
        .map(|(s, h, b)| (s, h.seq, b))
        .collect();
    assert_eq!(
        got,
        vec![
            (0, 0, b"ok".to_vec()),
            (1, 1, b"ok".to_vec()),
            (2, 2, b"ok".to_vec())
        ]
    );
}

#[test]
fn the_slot_state_is_one_word_and_reset_clears_a_slot() {
    let hub = Hub::create(1, 4096).unwrap();
    let p = port(&hub, 0);
    for s in [
        SlotState::Running(42),
        SlotState::Unpacking(7),
        SlotState::LoadingFunction(3),
        SlotState::Initializing,
    ] {
        p.set_state(s).unwrap();
        assert_eq!(hub.state(0).unwrap(), s);
    }
    hub.post(0, &FrameHeader::default(), b"pending", true)
        .unwrap();
    hub.reset_slot(0).unwrap();
    assert_eq!(hub.state(0).unwrap(), SlotState::Idle);
    let p = port(&hub, 0);
    assert!(tasks(&p).is_empty(), "a reset slot has no old tasks");
}

#[test]
fn wait_on_results_wakes_when_a_worker_thread_answers() {
    let hub = Hub::create(2, 4096).unwrap();
    let p = port(&hub, 1);
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(60));
            p.send(
                &FrameHeader {
                    tag: 3,
                    ..Default::default()
                },
                b"late",
                None,
                &mut keep_going,
            )
            .unwrap();
        });
        hub.wait_results(soon(), &mut keep_going).unwrap();
    });
    let (msgs, events) = results(&hub);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].0, 1);
    assert!(events.is_empty());
}

#[test]
fn bad_slots_and_foreign_segments_are_refused() {
    let hub = Hub::create(2, 4096).unwrap();
    assert!(matches!(
        hub.post(2, &FrameHeader::default(), b"", true),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(Hub::create(0, 4096), Err(Error::Invalid(_))));
    assert!(matches!(
        Hub::create(MAX_SLOTS + 1, 4096),
        Err(Error::Invalid(_))
    ));
    // SAFETY: the hub keeps its fd open for the whole test.
    let fd = unsafe { BorrowedFd::borrow_raw(hub.raw_fd()) };
    assert!(matches!(Port::open(fd, 5), Err(Error::Invalid(_))));
    let other = Segment::create("not-a-hub", 8192).unwrap();
    // SAFETY: `other` outlives the borrow.
    let fd = unsafe { BorrowedFd::borrow_raw(other.raw_fd()) };
    assert!(matches!(Port::open(fd, 0), Err(Error::BadLayout { .. })));
}

#[test]
fn a_header_with_absurd_sizes_is_refused_without_overflow() {
    let hub = Hub::create(1, 4096).unwrap();
    let seg = Segment::open(hub.words.seg.as_fd_for_test()).unwrap();
    for (slots, capacity) in [
        (u64::MAX, 4096),
        (1, u64::MAX),
        (1 << 40, 1 << 40),
        (0, 4096),
    ] {
        let p = seg.at::<layout::HubHeader>(0).unwrap();
        // SAFETY: in bounds and aligned; a test plays a foreign writer scribbling over the
        // header's words (atomics).
        let h = unsafe { &*p };
        h.slots.store(slots, std::sync::atomic::Ordering::Relaxed);
        h.capacity
            .store(capacity, std::sync::atomic::Ordering::Relaxed);
        let err = Port::open(hub.words.seg.as_fd_for_test(), 0)
            .err()
            .expect("refused");
        assert!(
            matches!(err, Error::BadLayout { .. } | Error::Invalid(_)),
            "{err}"
        );
    }
}

#[test]
fn posting_never_blocks_and_the_outbox_drains_as_the_worker_reads() {
    let hub = Hub::create(1, 4096).unwrap();
    let p = port(&hub, 0);
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    for seq in 0..3 {
        hub.post(
            0,
            &FrameHeader {
                tag: 1,
                seq,
                ..Default::default()
            },
            &big,
            true,
        )
        .unwrap();
    }
    assert!(hub.backlog(0).unwrap() > 0);
    let mut got = Vec::new();
    std::thread::scope(|s| {
        s.spawn(|| {
            while got.len() < 3 {
                p.wait_tasks(soon(), &mut keep_going).unwrap();
                got.extend(tasks(&p).into_iter().map(|(h, b)| (h.seq, b)));
            }
        });
        let deadline = soon();
        while hub.backlog(0).unwrap() > 0 {
            hub.wait_results(deadline, &mut keep_going).unwrap();
            hub.flush().unwrap();
        }
    });
    assert_eq!(got, (0..3).map(|s| (s, big.clone())).collect::<Vec<_>>());
}

#[test]
fn many_threads_post_to_one_hub_at_once() {
    const THREADS: u64 = 4;
    const EACH: u64 = 2_000;
    let hub = Hub::create(2, 4096).unwrap();
    let ports = [port(&hub, 0), port(&hub, 1)];
    let body = |t: u64, i: u64| vec![(t * 31 + i) as u8; ((t * 7 + i) % 700) as usize];
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let hub = &hub;
            s.spawn(move || {
                for i in 0..EACH {
                    let h = FrameHeader {
                        tag: 1,
                        job: t,
                        seq: i,
                        aux: 0,
                    };
                    hub.post((i % 2) as usize, &h, &body(t, i), i % 16 == 15)
                        .unwrap();
                }
                hub.notify();
            });
        }
        // The receiving thread flushes outboxes while the workers read.
        let done = &done;
        let hub = &hub;
        s.spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                let _ = hub.wait_results(
                    Some(Instant::now() + Duration::from_millis(5)),
                    &mut keep_going,
                );
                hub.flush().unwrap();
            }
        });
        let mut next = [[0u64; THREADS as usize]; 2];
        let deadline = soon();
        while next.iter().flatten().sum::<u64>() < THREADS * EACH {
            for (slot, p) in ports.iter().enumerate() {
                let _ = p.wait_tasks(
                    Some(Instant::now() + Duration::from_millis(5)),
                    &mut keep_going,
                );
                for (h, b) in tasks(p) {
                    let t = h.job as usize;
                    // Each thread's messages to a slot arrive in its order, intact.
                    assert_eq!(h.seq, next[slot][t] * 2 + slot as u64);
                    assert_eq!(b, body(h.job, h.seq));
                    next[slot][t] += 1;
                }
            }
            assert!(Instant::now() < deadline.unwrap(), "messages went missing");
        }
        done.store(true, std::sync::atomic::Ordering::Release);
        hub.wake();
    });
}

#[test]
fn reset_and_post_do_not_wait_for_a_thread_waiting_on_results() {
    let hub = Hub::create(1, 4096).unwrap();
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            hub.wait_results(
                Some(Instant::now() + Duration::from_secs(5)),
                &mut keep_going,
            )
        });
        std::thread::sleep(Duration::from_millis(50)); // the waiter is asleep by now
        let t = Instant::now();
        hub.reset_slot(0).unwrap();
        hub.post(0, &FrameHeader::default(), b"x", true).unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "a waiter held a lock the others need"
        );
        hub.wake();
        waiter.join().unwrap().unwrap();
    });
}

#[test]
fn notify_does_not_wait_for_a_sender_blocked_on_a_full_ring() {
    let hub = Hub::create(1, 4096).unwrap();
    let p = port(&hub, 0);
    std::thread::scope(|s| {
        let sender = s.spawn(|| {
            // 100 KB through a 4 KB ring that nobody drains yet: it waits for room.
            p.send(
                &FrameHeader {
                    tag: 1,
                    ..Default::default()
                },
                &vec![7u8; 100_000],
                soon(),
                &mut keep_going,
            )
        });
        std::thread::sleep(Duration::from_millis(50));
        let t = Instant::now();
        p.notify();
        assert!(
            !p.try_send(&FrameHeader::default(), b"y", true).unwrap(),
            "mid-message: not now"
        );
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "the waiting sender held a lock notify needs"
        );
        let mut got = Vec::new();
        while got.is_empty() {
            hub.wait_results(soon(), &mut keep_going).unwrap();
            got = results(&hub).0;
        }
        assert_eq!(got[0].2, vec![7u8; 100_000]);
        sender.join().unwrap().unwrap();
    });
}

#[test]
fn a_corrupt_slot_is_reported_healthy_slots_keep_their_results() {
    let hub = Hub::create(2, 4096).unwrap();
    let (bad, good) = (port(&hub, 0), port(&hub, 1));
    bad.send(
        &FrameHeader {
            tag: 1,
            ..Default::default()
        },
        b"fine",
        None,
        &mut keep_going,
    )
    .unwrap();
    good.send(
        &FrameHeader {
            tag: 1,
            seq: 1,
            ..Default::default()
        },
        b"healthy",
        None,
        &mut keep_going,
    )
    .unwrap();
    // The worker in slot 0 scribbles a huge length over the frame it published.
    let seg = Segment::open(hub.words.seg.as_fd_for_test()).unwrap();
    let data = HubLayout::new(2, 4096).unwrap().results(0).data;
    let len = seg.at::<u32>(data).unwrap();
    // SAFETY: `len` points at the first frame's length word inside the mapping.
    unsafe { len.write_volatile(1 << 30) };
    let (msgs, events) = results(&hub);
    assert_eq!(msgs.len(), 1);
    assert_eq!((msgs[0].0, msgs[0].2.as_slice()), (1, &b"healthy"[..]));
    assert!(
        matches!(
            events[..],
            [SlotEvent::Corrupt {
                slot: 0,
                pid: 0,
                source: Corruption::FrameTooLong { .. }
            }]
        ),
        "{events:?}"
    );
    // Not reported again, and not waited on: the waiter sleeps until its deadline.
    let t = Instant::now();
    let err = hub
        .wait_results(Some(t + Duration::from_millis(30)), &mut keep_going)
        .unwrap_err();
    assert!(matches!(err, Error::Timeout));
    assert_eq!(results(&hub), (vec![], vec![]));
    hub.reset_slot(0).unwrap();
    let bad = port(&hub, 0);
    bad.send(
        &FrameHeader {
            tag: 1,
            ..Default::default()
        },
        b"again",
        None,
        &mut keep_going,
    )
    .unwrap();
    assert_eq!(results(&hub).0.len(), 1, "a reset slot is read again");
}

#[test]
fn a_watched_process_exit_wakes_the_receiver_and_is_reported_once() {
    let hub = Hub::create(2, 4096).unwrap();
    let (child, pid, pidfd) = spawn_watched("sleep", &["0.05"]);
    hub.watch(1, pid, pidfd.as_fd()).unwrap();
    let t = Instant::now();
    hub.wait_results(soon(), &mut keep_going).unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(results(&hub).1, vec![SlotEvent::Exited { slot: 1, pid }]);
    assert_eq!(results(&hub).1, vec![], "reported once");
    let mut child = child;
    child.wait().unwrap();
}

#[test]
fn reset_drops_events_about_the_slot_s_old_worker() {
    let hub = Hub::create(2, 4096).unwrap();
    let mut children = Vec::new();
    for slot in 0..2 {
        let (child, pid, pidfd) = spawn_watched("true", &[]);
        hub.watch(slot, pid, pidfd.as_fd()).unwrap();
        children.push((child, pid));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while lock(&hub.mailbox.events).len() < 2 {
        assert!(Instant::now() < deadline, "the watch never fired");
        std::thread::sleep(Duration::from_millis(5));
    }
    hub.reset_slot(0).unwrap(); // slot 0 has a new worker now: its old death is no news
    assert_eq!(
        results(&hub).1,
        vec![SlotEvent::Exited {
            slot: 1,
            pid: children[1].1
        }]
    );
    for (mut c, _) in children {
        c.wait().unwrap();
    }
}

/// The task ring's header of `slot`, as a misbehaving worker would write it.
fn task_ring_header(hub: &Hub, slot: usize) -> &crate::ring::RingHeader {
    let place = hub.layout.tasks(slot);
    // SAFETY: in bounds and aligned (`Segment::at`), alive as long as the hub; every field
    // of a ring header is an atomic.
    unsafe {
        &*hub
            .words
            .seg
            .at::<crate::ring::RingHeader>(place.header)
            .unwrap()
    }
}

fn scribble_outbox(hub: &Hub) {
    // A backlog: the worker never reads, so the outbox waits for room.
    for seq in 0..3 {
        hub.post(
            0,
            &FrameHeader {
                tag: 1,
                seq,
                ..Default::default()
            },
            &[1u8; 3000],
            true,
        )
        .unwrap();
    }
    assert!(hub.backlog(0).unwrap() > 0);
}

#[test]
fn a_task_ring_poisoned_by_a_post_is_reported_once_and_not_waited_on() {
    let hub = Hub::create(1, 4096).unwrap();
    scribble_outbox(&hub);
    // The worker claims to have read past everything ever written.
    task_ring_header(&hub, 0)
        .tail
        .store(1 << 40, std::sync::atomic::Ordering::Release);
    hub.post(0, &FrameHeader::default(), b"x", true).unwrap(); // finds it: poisons, no error
    hub.flush().unwrap();
    let events = results(&hub).1;
    assert!(
        matches!(
            events[..],
            [SlotEvent::Corrupt {
                slot: 0,
                source: Corruption::Indices { .. },
                ..
            }]
        ),
        "{events:?}"
    );
    let t = Instant::now();
    let err = hub
        .wait_results(Some(t + Duration::from_millis(30)), &mut keep_going)
        .unwrap_err();
    assert!(
        matches!(err, Error::Timeout),
        "the receiver must sleep, not spin"
    );
    assert_eq!(results(&hub), (vec![], vec![]), "reported once");
}

#[test]
fn a_scribbled_head_cannot_fake_room_or_data() {
    let hub = Hub::create(1, 4096).unwrap();
    scribble_outbox(&hub);
    // The worker overwrites the head the parent owns: the shared copy now claims the ring
    // is empty (room), and the result ring's tail claims unread data.
    let tasks = task_ring_header(&hub, 0);
    tasks.head.store(
        tasks.tail.load(std::sync::atomic::Ordering::Acquire),
        std::sync::atomic::Ordering::Release,
    );
    let results_place = hub.layout.results(0);
    // SAFETY: as in `task_ring_header`.
    let res = unsafe {
        &*hub
            .words
            .seg
            .at::<crate::ring::RingHeader>(results_place.header)
            .unwrap()
    };
    res.tail.store(12_345, std::sync::atomic::Ordering::Release);
    let t = Instant::now();
    let err = hub
        .wait_results(Some(t + Duration::from_millis(30)), &mut keep_going)
        .unwrap_err();
    assert!(
        matches!(err, Error::Timeout),
        "nothing real happened: the receiver sleeps"
    );
}

#[test]
fn the_death_watch_thread_exits_when_nothing_is_watched() {
    let (child, _, pidfd) = spawn_watched("sleep", &["30"]);
    let w = crate::proc::watch(pidfd.as_fd(), || {}).unwrap();
    assert!(crate::proc::serving());
    assert!(crate::proc::unwatch(w), "cancelled before it fired");
    let deadline = Instant::now() + Duration::from_secs(10);
    // Other tests may watch meanwhile: wait until the thread had nothing to do, and the
    // watcher (its epoll fd and eventfd) was let go.
    while crate::proc::serving() || crate::proc::holds_watcher() {
        assert!(Instant::now() < deadline, "the watch thread never stopped");
        crate::proc::release_if_idle();
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut child = child;
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_process_that_left_its_slot_is_reported_when_it_exits_even_after_a_reset() {
    let hub = Hub::create(1, 4096).unwrap();
    let (child, pid, pidfd) = spawn_watched("sleep", &["0.05"]);
    hub.watch(0, pid, pidfd.as_fd()).unwrap();
    hub.watch_left(pid, pidfd.as_fd()).unwrap();
    // Its slot gets a successor: the slot's own watch of it is cancelled, not the other.
    let (successor, spid, sfd) = spawn_watched("sleep", &["5"]);
    hub.reset_slot(0).unwrap();
    hub.watch(0, spid, sfd.as_fd()).unwrap();
    drop(pidfd);
    hub.wait_results(soon(), &mut keep_going).unwrap();
    assert_eq!(results(&hub).1, vec![SlotEvent::Left { pid }]);
    let mut child = child;
    child.wait().unwrap();
    let mut successor = successor;
    successor.kill().unwrap();
    successor.wait().unwrap();
}
