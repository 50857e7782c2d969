use super::*;

const MB: u64 = 1 << 20;

fn arena(size: u64) -> Arena {
    Arena::create(size, 7).unwrap()
}

fn me() -> u32 {
    std::process::id()
}

/// The pid of a process that has exited and been reaped.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

fn write(a: &Arena, r: &BlockRef, byte: u8) {
    // SAFETY: the block lies inside the mapping (checked by `live`), and the test is its
    // only writer.
    unsafe { std::ptr::write_bytes(a.base().add(r.offset as usize), byte, r.len as usize) }
}

fn read(a: &Arena, r: &BlockRef) -> Vec<u8> {
    // SAFETY: as in `write`.
    unsafe { std::slice::from_raw_parts(a.base().add(r.offset as usize), r.len as usize).to_vec() }
}

#[test]
fn a_block_lives_while_held_and_its_reference_goes_stale_when_freed() {
    let a = arena(64 * MB);
    let s = a.join(me()).unwrap();
    let r = a.alloc(100_000, Some(s)).unwrap().unwrap();
    assert_eq!(r.len, 100_000);
    assert_eq!(r.offset % UNIT, 0);
    assert_eq!(a.usage().unwrap(), (2 * UNIT, 1));
    a.release(s, &r).unwrap();
    assert_eq!(a.usage().unwrap(), (0, 0));
    let err = a.hold(s, &r, false).unwrap_err().to_string();
    assert!(err.contains("no longer there"), "{err}");
    assert!(a.release(s, &r).is_err(), "a stale reference frees nothing");
}

#[test]
fn a_block_in_transit_is_taken_once_and_freed_by_its_last_holder() {
    let a = arena(64 * MB);
    let (s1, s2) = (a.join(me()).unwrap(), a.join(1).unwrap());
    assert_ne!(s1, s2);
    let r = a.alloc(MB, None).unwrap().unwrap();
    a.hold(s2, &r, true).unwrap();
    assert!(a
        .hold(s1, &r, true)
        .unwrap_err()
        .to_string()
        .contains("taken already"));
    a.hold(s1, &r, false).unwrap(); // lent alongside s2's hold
    a.release(s2, &r).unwrap();
    assert_eq!(a.usage().unwrap().1, 1, "s1 still holds it");
    a.give(&r).unwrap();
    a.release(s1, &r).unwrap();
    assert_eq!(a.usage().unwrap().1, 1, "a message still carries it");
    a.ungive(&r).unwrap();
    assert_eq!(a.usage().unwrap().1, 0);
}

#[test]
fn freed_memory_is_reused_lowest_first_and_a_full_arena_says_so() {
    let a = arena(8 * MB);
    let s = a.join(me()).unwrap();
    let room = a.size() - Arena::data_at();
    let x = a.alloc(MB, Some(s)).unwrap().unwrap();
    let y = a.alloc(MB, Some(s)).unwrap().unwrap();
    assert_eq!(y.offset, x.offset + MB);
    assert!(
        a.alloc(room, Some(s)).unwrap().is_none(),
        "no room: None, not an error"
    );
    a.release(s, &x).unwrap();
    let z = a.alloc(MB / 2, Some(s)).unwrap().unwrap();
    assert_eq!(
        z.offset, x.offset,
        "the lowest gap first: the most likely resident"
    );
    assert_ne!((z.index, z.gen), (x.index, x.gen), "a new generation");
    a.release(s, &y).unwrap();
    a.release(s, &z).unwrap();
    assert!(
        a.alloc(room, Some(s)).unwrap().is_some(),
        "all of it once everything is freed"
    );
}

#[test]
fn a_dead_participant_s_holds_are_swept_and_its_slot_reused() {
    let a = arena(64 * MB);
    let s = a.join(me()).unwrap();
    let ghost = a.join(dead_pid()).unwrap();
    let only_ghost = a.alloc(MB, Some(ghost)).unwrap().unwrap();
    let shared = a.alloc(MB, Some(ghost)).unwrap().unwrap();
    a.hold(s, &shared, false).unwrap();
    assert_eq!(a.reclaim_dead().unwrap(), 1);
    assert!(
        a.hold(s, &only_ghost, false).is_err(),
        "freed with its only holder"
    );
    assert_eq!(a.usage().unwrap().1, 1, "the block we hold stays");
    assert_eq!(
        a.join(dead_pid()).unwrap(),
        ghost,
        "the dead one's slot is reused"
    );
    a.release(s, &shared).unwrap();
    assert_eq!(a.usage().unwrap(), (0, 0));
}

#[test]
fn a_full_arena_sweeps_the_dead_before_it_gives_up() {
    let a = arena(4 * MB);
    let s = a.join(me()).unwrap();
    let ghost = a.join(dead_pid()).unwrap();
    let room = a.size() - Arena::data_at();
    a.alloc(room, Some(ghost)).unwrap().unwrap();
    assert!(
        a.alloc(MB, Some(s)).unwrap().is_some(),
        "the dead one's block was swept"
    );
}

#[test]
fn past_the_kept_amount_freed_memory_goes_back_to_the_kernel() {
    let a = arena(64 * MB);
    a.set_keep(2 * MB);
    let s = a.join(me()).unwrap();
    let low = a.alloc(MB, Some(s)).unwrap().unwrap();
    let mid = a.alloc(4 * MB, Some(s)).unwrap().unwrap();
    let high = a.alloc(4 * MB, Some(s)).unwrap().unwrap();
    for r in [&low, &mid, &high] {
        write(&a, r, 0xAB);
    }
    assert_eq!(a.resident(), 9 * MB);
    a.release(s, &high).unwrap(); // 4 MB free and resident: past 2 MB kept, given back
    assert_eq!(a.resident(), 5 * MB);
    a.release(s, &mid).unwrap();
    assert_eq!(a.resident(), MB);
    let again = a.alloc(8 * MB, Some(s)).unwrap().unwrap();
    assert_eq!(again.offset, mid.offset);
    assert!(
        read(&a, &again).iter().all(|&b| b == 0),
        "given back: reads as zeros"
    );
    assert!(read(&a, &low).iter().all(|&b| b == 0xAB), "kept: untouched");
    // Under the kept amount, a freed block stays as it was, for the next one to reuse.
    a.set_keep(64 * MB);
    write(&a, &again, 0xCD);
    a.release(s, &again).unwrap();
    assert_eq!(a.resident(), 9 * MB, "kept resident");
    let reused = a.alloc(MB, Some(s)).unwrap().unwrap();
    assert!(read(&a, &reused).iter().all(|&b| b == 0xCD));
    assert_eq!(a.resident(), 9 * MB, "reused, not faulted afresh");
}

#[test]
fn a_resident_gap_is_taken_before_a_lower_one_given_back() {
    let a = arena(64 * MB);
    a.set_keep(0);
    let s = a.join(me()).unwrap();
    let low = a.alloc(2 * MB, Some(s)).unwrap().unwrap();
    let pin = a.alloc(MB, Some(s)).unwrap().unwrap();
    a.release(s, &low).unwrap(); // given back (nothing is kept)
    a.set_keep(64 * MB);
    let high = a.alloc(2 * MB, Some(s)).unwrap().unwrap();
    write(&a, &high, 1);
    a.release(s, &high).unwrap(); // kept
    let next = a.alloc(2 * MB, Some(s)).unwrap().unwrap();
    assert_eq!(
        next.offset, high.offset,
        "the resident gap, not the lower cold one"
    );
    a.release(s, &pin).unwrap();
}

#[test]
fn a_child_s_reserved_slot_holds_what_its_parent_held_until_it_ends() {
    let a = arena(64 * MB);
    let parent = a.join(me()).unwrap();
    let r = a.alloc(MB, Some(parent)).unwrap().unwrap();
    let child = a.reserve_for_child(parent).unwrap();
    assert_ne!(child, parent);
    a.release(parent, &r).unwrap();
    assert_eq!(
        a.reclaim_dead().unwrap(),
        0,
        "unclaimed, it is named as the parent: alive"
    );
    assert_eq!(a.usage().unwrap().1, 1, "the child's hold keeps it");
    a.claim(child, dead_pid()).unwrap();
    assert_eq!(a.reclaim_dead().unwrap(), 1);
    assert_eq!(
        a.usage().unwrap(),
        (0, 0),
        "the child ended: its holds went with it"
    );
}

#[test]
fn a_hold_handed_to_a_message_outlives_its_sender_and_leaving_lets_go() {
    let a = arena(64 * MB);
    let (sender, receiver) = (a.join(me()).unwrap(), a.join(1).unwrap());
    let r = a.alloc(MB, Some(sender)).unwrap().unwrap();
    let kept = a.alloc(MB, Some(sender)).unwrap().unwrap();
    a.hand_over(sender, &r).unwrap();
    a.leave(sender).unwrap(); // the sender ends: what it handed over stays, the rest goes
    assert!(a.hold(receiver, &kept, false).is_err());
    a.hold(receiver, &r, true).unwrap();
    a.release(receiver, &r).unwrap();
    assert_eq!(a.usage().unwrap(), (0, 0));
}

#[test]
fn another_mapping_sees_the_same_blocks_and_a_foreign_segment_is_refused() {
    let a = arena(16 * MB);
    let b = Arena::open(a.fd()).unwrap();
    assert_eq!(b.id(), 7);
    let s = a.join(me()).unwrap();
    let r = a.alloc(MB, None).unwrap().unwrap();
    write(&a, &r, 0x5A);
    b.hold(s, &r, true).unwrap();
    assert!(read(&b, &r).iter().all(|&x| x == 0x5A));
    b.release(s, &r).unwrap();
    assert_eq!(a.usage().unwrap(), (0, 0));
    let other = Segment::create("not-an-arena", 4 * MB as usize).unwrap();
    assert!(Arena::open(other.fd()).is_err());
}

#[test]
fn references_from_untrusted_memory_are_checked() {
    let a = arena(16 * MB);
    let s = a.join(me()).unwrap();
    let r = a.alloc(MB, Some(s)).unwrap().unwrap();
    for bad in [
        BlockRef {
            index: MAX_BLOCKS as u32,
            ..r
        },
        BlockRef {
            gen: r.gen + 1,
            ..r
        },
        BlockRef {
            offset: r.offset + UNIT,
            ..r
        },
        BlockRef {
            len: r.len + UNIT,
            ..r
        },
    ] {
        assert!(a.hold(s, &bad, false).is_err(), "{bad:?}");
    }
    assert!(a.hold(MAX_PARTICIPANTS as u32, &r, false).is_err());
    assert!(a.alloc(0, Some(s)).is_err());
    assert!(a.alloc(u64::MAX, Some(s)).unwrap().is_none());
}

#[test]
fn a_block_mapped_privately_keeps_this_process_s_writes_to_itself() {
    let a = arena(16 * MB);
    let other = Arena::open(a.fd()).unwrap(); // another process's mapping, as it were
    let s = a.join(me()).unwrap();
    let r = a.alloc(MB, Some(s)).unwrap().unwrap();
    write(&a, &r, 1);
    a.remap(&r, true).unwrap();
    assert!(read(&a, &r).iter().all(|&b| b == 1), "the same bytes");
    write(&a, &r, 2);
    assert!(
        read(&other, &r).iter().all(|&b| b == 1),
        "our writes stay ours"
    );
    a.remap(&r, false).unwrap();
    assert!(
        read(&a, &r).iter().all(|&b| b == 1),
        "shared again: the arena's bytes"
    );
    write(&a, &r, 3);
    assert!(read(&other, &r).iter().all(|&b| b == 3));
    assert!(
        a.remap(&BlockRef { offset: 0, ..r }, true).is_err(),
        "never outside the data"
    );
}

/// The kernel flags (smaps' `VmFlags`) of this process's mapping that holds `addr`.
fn vm_flags(addr: usize) -> Vec<String> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut lines = smaps.lines();
    let holds = |l: &str| {
        let range = l.split_whitespace().next().unwrap_or("");
        let Some((lo, hi)) = range.split_once('-') else {
            return false;
        };
        let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        else {
            return false;
        };
        (lo..hi).contains(&addr)
    };
    lines
        .by_ref()
        .find(|l| holds(l))
        .expect("the mapping is listed");
    let flags = lines
        .find_map(|l| l.strip_prefix("VmFlags:"))
        .expect("its VmFlags line");
    flags.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn every_mapping_of_the_arena_asks_for_huge_pages() {
    let a = arena(64 * MB);
    assert!(
        vm_flags(a.base() as usize).contains(&"hg".into()),
        "created"
    );
    let b = Arena::open(a.fd()).unwrap();
    assert!(vm_flags(b.base() as usize).contains(&"hg".into()), "opened");
    let s = a.join(me()).unwrap();
    let r = a.alloc(3 * UNIT, Some(s)).unwrap().unwrap();
    a.remap(&r, false).unwrap();
    let at = a.base() as usize + r.offset as usize;
    assert!(vm_flags(at).contains(&"hg".into()), "a block mapped again");
}
