//! Two real processes through one hub: this test binary re-executes itself as the worker
//! (the child runs only `child_worker`, selected by an environment variable).
use std::fs::OpenOptions;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use paralelo_core::{FrameHeader, Hub, Port, Received};

const CHILD_ENV: &str = "PARALELO_TEST_HUB";
const MESSAGES: u64 = 3_000;
const CAPACITY: usize = 16 * 1024;

/// Message `i`'s payload: sizes sweep 0..=70 KB (many larger than a fragment, CAPACITY / 4),
/// contents depend on index and position so any misplaced byte shows.
fn payload(i: u64) -> Vec<u8> {
    let len = if i.is_multiple_of(97) {
        70_000
    } else {
        ((i * 7919) % 1500) as usize
    };
    (0..len)
        .map(|j| (j as u64).wrapping_mul(31).wrapping_add(i) as u8)
        .collect()
}

fn keep_going() -> bool {
    true
}

/// In a re-executed child: slot 0 of the hub whose memfd path is in `env` (None when this
/// process is not that child).
fn attach(env: &str) -> Option<Port> {
    let path = std::env::var(env).ok()?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open hub memfd");
    Some(Port::open(file.as_fd(), 0).expect("attach to slot 0"))
}

#[test]
fn child_worker() {
    let Some(port) = attach(CHILD_ENV) else {
        return;
    };
    let deadline = Some(Instant::now() + Duration::from_secs(60));
    let mut next = 0;
    while next < MESSAGES {
        port.wait_tasks(deadline, &mut keep_going)
            .expect("tasks arrive");
        let mut buf = Vec::new();
        let mut got = Vec::new();
        port.drain_tasks(usize::MAX, &mut buf, |h, r| got.push((h, r)))
            .expect("intact ring");
        for (h, r) in got {
            let body = &buf[r];
            assert_eq!(h.seq, next, "messages arrive in order");
            assert_eq!(
                body,
                payload(next).as_slice(),
                "message {next} arrives intact"
            );
            // Echo it back reversed: the parent checks every byte of the way back too.
            let back: Vec<u8> = body.iter().rev().copied().collect();
            let reply = FrameHeader {
                tag: 2,
                job: h.job,
                seq: h.seq,
                aux: body.len() as u64,
            };
            port.send(&reply, &back, deadline, &mut keep_going)
                .expect("reply");
            next += 1;
        }
    }
}

/// Re-executes this test binary running only the test `test`, with the hub's memfd path
/// in the environment variable `env`.
fn spawn_child(hub: &Hub, test: &str, env: &str) -> std::process::Child {
    let path = format!("/proc/{}/fd/{}", std::process::id(), hub.raw_fd());
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env(env, path)
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn every_byte_crosses_two_processes_both_ways() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let hub = Hub::create(1, CAPACITY).unwrap();
    let mut child = spawn_child(&hub, "child_worker", CHILD_ENV);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut sent = 0;
    let mut received = 0;
    while received < MESSAGES {
        // Keep a bounded number in flight; the outbox absorbs what the ring cannot take.
        while sent < MESSAGES && sent < received + 64 {
            let h = FrameHeader {
                tag: 1,
                job: 5,
                seq: sent,
                aux: 0,
            };
            // Post quietly and wake the worker once per batch, as the engine does.
            hub.post(0, &h, &payload(sent), false).unwrap();
            sent += 1;
        }
        hub.notify();
        hub.wait_results(Some(deadline), &mut keep_going)
            .expect("results within a minute");
        let mut got = Received::default();
        hub.drain_results(&mut got).expect("intact ring");
        assert!(got.events.is_empty(), "no corruption: {:?}", got.events);
        for (slot, h, r) in got.messages {
            assert_eq!((slot, h.seq), (0, received));
            let mut want = payload(received);
            want.reverse();
            assert_eq!(h.aux as usize, want.len());
            assert_eq!(&got.bytes[r], want.as_slice(), "reply {received} intact");
            received += 1;
        }
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "worker process failed: {status}");
        }
    }
    assert!(child.wait().unwrap().success());
}

const SLEEPER_ENV: &str = "PARALELO_TEST_SLEEPER";

#[test]
fn child_sleeper() {
    let Some(port) = attach(SLEEPER_ENV) else {
        return;
    };
    // Sleeps for tasks until killed.
    let _ = port.wait_tasks(
        Some(Instant::now() + Duration::from_secs(60)),
        &mut keep_going,
    );
}

#[test]
fn a_worker_killed_asleep_is_forgotten_when_its_slot_is_reset() {
    if std::env::var(SLEEPER_ENV).is_ok() {
        return;
    }
    let hub = Hub::create(1, CAPACITY).unwrap();
    let mut child = spawn_child(&hub, "child_sleeper", SLEEPER_ENV);
    let deadline = Instant::now() + Duration::from_secs(30);
    while hub.idle_waiters(0).unwrap() == 0 {
        assert!(Instant::now() < deadline, "the child never went to sleep");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        hub.idle_waiters(0).unwrap(),
        1,
        "a dead sleeper stays registered..."
    );
    hub.reset_slot(0).unwrap();
    assert_eq!(
        hub.idle_waiters(0).unwrap(),
        0,
        "...until its slot is reset"
    );
}
