//! Two real processes through one hub: this test binary re-executes itself as the worker
//! (the child runs only `child_worker`, selected by an environment variable).
use std::fs::OpenOptions;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use paralelo_core::{FrameHeader, Hub, Port};

const CHILD_ENV: &str = "PARALELO_TEST_HUB";
const MESSAGES: u64 = 3_000;
const CAPACITY: usize = 16 * 1024;

/// Message `i`'s payload: sizes sweep 0..=70 KB (many larger than a fragment, CAPACITY / 4),
/// contents depend on index and position so any misplaced byte shows.
fn payload(i: u64) -> Vec<u8> {
    let len = if i.is_multiple_of(97) { 70_000 } else { ((i * 7919) % 1500) as usize };
    (0..len).map(|j| (j as u64).wrapping_mul(31).wrapping_add(i) as u8).collect()
}

fn keep_going() -> bool {
    true
}

#[test]
fn child_worker() {
    let Ok(path) = std::env::var(CHILD_ENV) else { return };
    let file = OpenOptions::new().read(true).write(true).open(path).expect("open hub memfd");
    let port = Port::open(file.as_fd(), 0).expect("attach to slot 0");
    let deadline = Some(Instant::now() + Duration::from_secs(60));
    let mut next = 0;
    while next < MESSAGES {
        port.wait_tasks(deadline, &mut keep_going).expect("tasks arrive");
        let mut got = Vec::new();
        port.drain_tasks(usize::MAX, |h, a, b| got.push((*h, [a, b].concat()))).expect("intact ring");
        for (h, body) in got {
            assert_eq!(h.seq, next, "messages arrive in order");
            assert_eq!(body, payload(next), "message {next} arrives intact");
            // Echo it back reversed: the parent checks every byte of the way back too.
            let back: Vec<u8> = body.iter().rev().copied().collect();
            let reply = FrameHeader { tag: 2, job: h.job, seq: h.seq, aux: body.len() as u64 };
            port.send(&reply, &back, deadline, &mut keep_going).expect("reply");
            next += 1;
        }
    }
}

#[test]
fn every_byte_crosses_two_processes_both_ways() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let hub = Hub::create(1, CAPACITY).unwrap();
    let path = format!("/proc/{}/fd/{}", std::process::id(), hub.raw_fd());
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_worker", "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, path)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut sent = 0;
    let mut received = 0;
    while received < MESSAGES {
        // Keep a bounded number in flight; the outbox absorbs what the ring cannot take.
        while sent < MESSAGES && sent < received + 64 {
            let h = FrameHeader { tag: 1, job: 5, seq: sent, aux: 0 };
            // Post quietly and wake the worker once per batch, as the engine does.
            hub.post(0, &h, &payload(sent), false).unwrap();
            sent += 1;
        }
        hub.notify();
        hub.wait_results(Some(deadline), &mut keep_going).expect("results within a minute");
        hub.flush().unwrap();
        hub.drain_results(|slot, h, a, b| {
            assert_eq!((slot, h.seq), (0, received));
            let mut want = payload(received);
            want.reverse();
            assert_eq!(h.aux as usize, want.len());
            assert_eq!([a, b].concat(), want, "reply {received} intact");
            received += 1;
        })
        .expect("intact ring");
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "worker process failed: {status}");
        }
    }
    assert!(child.wait().unwrap().success());
}
