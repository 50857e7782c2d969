use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use super::*;

fn keep_going() -> bool {
    true
}

fn port(hub: &Hub, slot: usize) -> Port {
    // SAFETY: the hub keeps its fd open for the whole test.
    let fd = unsafe { BorrowedFd::borrow_raw(hub.raw_fd()) };
    Port::open(fd, slot).unwrap()
}

#[test]
fn tasks_reach_their_slot_and_results_come_back_tagged_with_it() {
    let hub = Hub::create(3, 4096).unwrap();
    let ports: Vec<Port> = (0..3).map(|i| port(&hub, i)).collect();
    for slot in 0..3 {
        let h = FrameHeader { tag: 1, job: 9, seq: slot as u64, aux: 0 };
        hub.post(slot, &h, &[slot as u8; 10], true).unwrap();
    }
    for (slot, p) in ports.iter().enumerate() {
        let mut got = Vec::new();
        p.drain_tasks(10, |h, a, b| got.push((h.seq, [a, b].concat()))).unwrap();
        assert_eq!(got, vec![(slot as u64, vec![slot as u8; 10])]);
        p.send(&FrameHeader { tag: 2, job: 9, seq: slot as u64, aux: 5 }, b"ok", None, &mut keep_going)
            .unwrap();
    }
    hub.wait_results(Some(Instant::now() + Duration::from_secs(5)), &mut keep_going).unwrap();
    let mut got = Vec::new();
    hub.drain_results(|slot, h, a, _| got.push((slot, h.seq, a.to_vec()))).unwrap();
    assert_eq!(got, vec![(0, 0, b"ok".to_vec()), (1, 1, b"ok".to_vec()), (2, 2, b"ok".to_vec())]);
}

#[test]
fn current_task_is_visible_and_reset_clears_a_slot() {
    let hub = Hub::create(1, 4096).unwrap();
    let p = port(&hub, 0);
    p.set_current(4, 2);
    assert_eq!(hub.current(0).unwrap(), (4, 2));
    hub.post(0, &FrameHeader::default(), b"pending", true).unwrap();
    hub.reset_slot(0).unwrap();
    assert_eq!(hub.current(0).unwrap(), (0, 0));
    let p = port(&hub, 0);
    assert_eq!(p.drain_tasks(10, |_, _, _| {}).unwrap(), 0, "a reset slot has no old tasks");
}

#[test]
fn wait_on_results_wakes_when_a_worker_thread_answers() {
    let hub = Hub::create(2, 4096).unwrap();
    let p = port(&hub, 1);
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(60));
            p.send(&FrameHeader { tag: 3, ..Default::default() }, b"late", None, &mut keep_going)
                .unwrap();
        });
        hub.wait_results(Some(Instant::now() + Duration::from_secs(5)), &mut keep_going).unwrap();
    });
    assert_eq!(hub.drain_results(|slot, _, _, _| assert_eq!(slot, 1)).unwrap(), 1);
}

#[test]
fn bad_slots_and_foreign_segments_are_refused() {
    let hub = Hub::create(2, 4096).unwrap();
    assert!(matches!(hub.post(2, &FrameHeader::default(), b"", true), Err(Error::Invalid(_))));
    // SAFETY: the hub keeps its fd open for the whole test.
    let fd = unsafe { BorrowedFd::borrow_raw(hub.raw_fd()) };
    assert!(matches!(Port::open(fd, 5), Err(Error::Invalid(_))));
    let other = Segment::create("not-a-hub", 8192).unwrap();
    // SAFETY: `other` outlives the borrow.
    let fd = unsafe { BorrowedFd::borrow_raw(other.raw_fd()) };
    assert!(matches!(Port::open(fd, 0), Err(Error::BadLayout { .. })));
}

#[test]
fn posting_never_blocks_and_the_outbox_drains_as_the_worker_reads() {
    let hub = Hub::create(1, 4096).unwrap();
    let p = port(&hub, 0);
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    for seq in 0..3 {
        hub.post(0, &FrameHeader { tag: 1, seq, ..Default::default() }, &big, true).unwrap();
    }
    assert!(hub.backlog(0).unwrap() > 0);
    let mut got = Vec::new();
    std::thread::scope(|s| {
        s.spawn(|| {
            while got.len() < 3 {
                p.wait_tasks(Some(Instant::now() + Duration::from_secs(10)), &mut keep_going)
                    .unwrap();
                p.drain_tasks(usize::MAX, |h, a, b| got.push((h.seq, [a, b].concat()))).unwrap();
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while hub.backlog(0).unwrap() > 0 {
            hub.wait_results(Some(deadline), &mut keep_going).unwrap();
            hub.flush().unwrap();
        }
    });
    assert_eq!(got, (0..3).map(|s| (s, big.clone())).collect::<Vec<_>>());
}

#[test]
fn a_garbage_frame_is_reported_not_read_past_the_ring() {
    let hub = Hub::create(1, 4096).unwrap();
    let p = port(&hub, 0);
    p.send(&FrameHeader { tag: 1, ..Default::default() }, b"fine", None, &mut keep_going).unwrap();
    // A misbehaving worker scribbles a huge length over the frame it published.
    let seg = Segment::open(
        // SAFETY: the hub keeps its fd open for the whole test.
        unsafe { BorrowedFd::borrow_raw(hub.raw_fd()) },
    )
    .unwrap();
    let data = HubLayout { slots: 1, capacity: 4096 }.results(0).data;
    let len = seg.at::<u32>(data).unwrap();
    // SAFETY: `len` points at the first frame's length word inside the mapping.
    unsafe { len.write_volatile(1 << 30) };
    let err = hub.drain_results(|_, _, _, _| panic!("nothing valid to deliver")).unwrap_err();
    assert!(matches!(err, Error::CorruptSlot { slot: 0, .. }), "{err}");
}
