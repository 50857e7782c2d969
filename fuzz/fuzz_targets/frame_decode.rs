//! The consumer's frame decoder against a producer that writes anything: ring indices,
//! frame headers and payload bytes all come from the fuzz input, written through a
//! second mapping of the segment. `Consumer::drain` (frame header decode, length checks,
//! fragment reassembly, abort frames, poisoning), `Consumer::has_data`, `Consumer::reset`
//! and `Probe::has_data` / `Probe::has_room` run on it.
//!
//! Besides "no panic, no out-of-bounds access", every result is compared with a small
//! reference model of the protocol (below): the messages delivered, their headers and
//! bytes, the error and its `Corruption`, and the tail published afterwards.
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use paralelo_core::{Consumer, Corruption, FrameHeader, MAX_TAG};
use paralelo_fuzz::{
    capacity, expect_corrupt, padded, ring_offsets, Index, Shadow, StandaloneRing, FRAG_MORE,
    FRAME, MAX_MESSAGE, TAG_ABORT, TAG_SKIP,
};

#[derive(Arbitrary, Debug)]
enum Tag {
    Plain(u32),
    More(u32),
    Abort,
    Skip,
    Raw(u32),
}

impl Tag {
    fn wire(&self) -> u32 {
        match *self {
            Tag::Plain(t) => t % (MAX_TAG + 1),
            Tag::More(t) => (t % (MAX_TAG + 1)) | FRAG_MORE,
            Tag::Abort => TAG_ABORT,
            Tag::Skip => TAG_SKIP,
            Tag::Raw(t) => t,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Raw bytes into the data area at stream position `tail + at`.
    Bytes {
        at: u16,
        bytes: Vec<u8>,
    },
    /// A frame header (and `fill` payload bytes) at stream position `tail + at`.
    Frame {
        at: u16,
        len: u32,
        tag: Tag,
        job: u64,
        seq: u64,
        aux: u64,
        fill: u8,
    },
    /// A frame that the checks accept: length within a fragment, published with it.
    GoodFrame {
        tag: Tag,
        len: u16,
        fill: u8,
    },
    /// head = consumer's tail + n.
    Publish(u16),
    SetHead(Index),
    /// A foreign write over the consumer's own published tail word.
    SetTail(Index),
    Drain(u8),
    DrainAll,
    Reset,
    Probe(u16),
}

#[derive(Arbitrary, Debug)]
struct Input {
    cap: u8,
    tail: Index,
    /// The initial head is the tail plus this (wrapping), or any word.
    head: Option<Index>,
    ops: Vec<Op>,
}

/// The consumer as the protocol describes it.
struct Model {
    cap: u64,
    tail: u64,
    partial: Vec<u8>,
    in_partial: bool,
    poisoned: Option<Corruption>,
}

type Msg = (FrameHeader, Vec<u8>);

impl Model {
    fn drain(
        &mut self,
        sh: &Shadow,
        data: usize,
        head: u64,
        max: usize,
    ) -> (Result<usize, Corruption>, Vec<Msg>, bool) {
        if let Some(c) = &self.poisoned {
            return (Err(c.clone()), Vec::new(), false);
        }
        let cap = self.cap;
        let mut msgs = Vec::new();
        let r = (|| {
            if head.wrapping_sub(self.tail) > cap {
                return Err(Corruption::Indices {
                    head,
                    tail: self.tail,
                    capacity: cap,
                });
            }
            let max_fragment = cap / 4 - FRAME as u64;
            while self.tail != head && msgs.len() < max {
                let published = head.wrapping_sub(self.tail);
                if published < FRAME as u64 {
                    return Err(Corruption::FrameOverrun { len: 0, published });
                }
                let raw = sh.read_ring(data, cap as usize, self.tail, FRAME);
                let u32_at = |i: usize| u32::from_le_bytes(raw[i..i + 4].try_into().unwrap());
                let u64_at = |i: usize| u64::from_le_bytes(raw[i..i + 8].try_into().unwrap());
                let len = u32_at(0) as u64;
                let fh = FrameHeader {
                    tag: u32_at(4),
                    job: u64_at(8),
                    seq: u64_at(16),
                    aux: u64_at(24),
                };
                if fh.tag == TAG_SKIP {
                    // Nothing until the end of the data area, where it must end exactly.
                    let to_end = cap - self.tail % cap;
                    if len + FRAME as u64 != to_end || published < to_end {
                        return Err(Corruption::SkipMisplaced { len, to_end });
                    }
                    self.tail = self.tail.wrapping_add(to_end);
                    continue;
                }
                if len > max_fragment {
                    return Err(Corruption::FrameTooLong {
                        len,
                        max: max_fragment,
                    });
                }
                if published < FRAME as u64 + padded(len) {
                    return Err(Corruption::FrameOverrun { len, published });
                }
                let body = self.tail.wrapping_add(FRAME as u64);
                let bytes = sh.read_ring(data, cap as usize, body, len as usize);
                if fh.tag == TAG_ABORT {
                    self.partial.clear();
                    self.in_partial = false;
                } else if fh.tag & FRAG_MORE != 0 || self.in_partial {
                    if self.partial.len() + len as usize > MAX_MESSAGE {
                        return Err(Corruption::MessageTooLong {
                            max: MAX_MESSAGE as u64,
                        });
                    }
                    self.partial.extend_from_slice(&bytes);
                    self.in_partial = fh.tag & FRAG_MORE != 0;
                    if !self.in_partial {
                        msgs.push((fh, std::mem::take(&mut self.partial)));
                    }
                } else {
                    msgs.push((fh, bytes));
                }
                self.tail = body.wrapping_add(padded(len));
            }
            Ok(msgs.len())
        })();
        if let Err(c) = &r {
            self.poisoned = Some(c.clone());
        }
        (r, msgs, true)
    }

    fn reset(&mut self) {
        self.tail = 0;
        self.partial.clear();
        self.in_partial = false;
        self.poisoned = None;
    }
}

fuzz_target!(|input: Input| {
    let cap = capacity(input.cap);
    let ring = StandaloneRing::create(cap);
    let off = ring_offsets();
    let sh = Shadow::of_fd(ring.seg.raw_fd());
    // The producer side's creator initialises the header; the fuzz input then plays a
    // producer that already wrote the indices when the consumer attaches.
    drop(paralelo_core::Producer::new(ring.seg.clone(), ring.place, true).unwrap());
    let tail0 = input.tail.value();
    let head0 = match &input.head {
        None => tail0,
        Some(Index::Small(n)) => tail0.wrapping_add(*n as u64),
        Some(i) => i.value(),
    };
    sh.write_u64(off.tail, tail0);
    sh.write_u64(off.head, head0);
    ring.paint(&sh);

    let mut c = match Consumer::new(ring.seg.clone(), ring.place, false) {
        Ok(c) => c,
        Err(e) => {
            let c = expect_corrupt(&e);
            assert!(
                head0.wrapping_sub(tail0) > cap as u64,
                "Consumer::new refused valid indices {head0} {tail0}: {c}"
            );
            return;
        }
    };
    assert!(
        head0.wrapping_sub(tail0) <= cap as u64,
        "Consumer::new took bad indices"
    );
    let mut m = Model {
        cap: cap as u64,
        tail: tail0,
        partial: Vec::new(),
        in_partial: false,
        poisoned: None,
    };
    let probe = c.probe();

    for op in input.ops.iter().take(64) {
        match op {
            Op::Bytes { at, bytes } => {
                sh.write_ring(
                    ring.data,
                    cap,
                    m.tail.wrapping_add(*at as u64),
                    &bytes[..bytes.len().min(cap)],
                );
            }
            Op::Frame {
                at,
                len,
                tag,
                job,
                seq,
                aux,
                fill,
            } => {
                let pos = m.tail.wrapping_add(*at as u64);
                let mut h = Vec::with_capacity(FRAME);
                h.extend_from_slice(&len.to_le_bytes());
                h.extend_from_slice(&tag.wire().to_le_bytes());
                h.extend_from_slice(&job.to_le_bytes());
                h.extend_from_slice(&seq.to_le_bytes());
                h.extend_from_slice(&aux.to_le_bytes());
                sh.write_ring(ring.data, cap, pos, &h);
                let body = (*len as usize).min(cap - FRAME);
                sh.write_ring(
                    ring.data,
                    cap,
                    pos.wrapping_add(FRAME as u64),
                    &vec![*fill; body],
                );
            }
            Op::GoodFrame { tag, len, fill } => {
                // Appended after the bytes already published, if it fits.
                let head = sh.read_u64(off.head);
                let used = head.wrapping_sub(m.tail);
                let len = *len as u64 % (cap as u64 / 4 - FRAME as u64 + 1);
                let need = FRAME as u64 + padded(len);
                if used <= cap as u64 && cap as u64 - used >= need {
                    let mut h = Vec::with_capacity(FRAME);
                    h.extend_from_slice(&(len as u32).to_le_bytes());
                    h.extend_from_slice(&tag.wire().to_le_bytes());
                    h.extend_from_slice(&[*fill; 24]);
                    h.extend(std::iter::repeat_n(*fill, len as usize));
                    sh.write_ring(ring.data, cap, head, &h);
                    sh.write_u64(off.head, head.wrapping_add(need));
                }
            }
            Op::Publish(n) => sh.write_u64(off.head, m.tail.wrapping_add(*n as u64)),
            Op::SetHead(i) => sh.write_u64(off.head, i.value()),
            Op::SetTail(i) => sh.write_u64(off.tail, i.value()),
            Op::Drain(_) | Op::DrainAll => {
                let max = match op {
                    Op::Drain(n) => *n as usize,
                    _ => usize::MAX,
                };
                let head = sh.read_u64(off.head);
                let (want, want_msgs, released) = m.drain(&sh, ring.data, head, max);
                let prefix = 3;
                let mut out = vec![0xEE; prefix];
                let mut got = Vec::new();
                let r = c.drain(max, &mut out, |h, range| got.push((h, range)));
                let r = r.map_err(|e| expect_corrupt(&e));
                assert_eq!(r, want, "drain result differs from the model");
                assert!(
                    out[..prefix].iter().all(|&b| b == 0xEE),
                    "drain overwrote the caller's bytes"
                );
                assert_eq!(
                    got.len(),
                    want_msgs.len(),
                    "drain delivered another number of messages"
                );
                let mut end = prefix;
                for ((h, range), (wh, wbytes)) in got.iter().zip(&want_msgs) {
                    assert_eq!(range.start, end, "messages are not packed in order");
                    assert!(range.end <= out.len(), "range past the buffer");
                    end = range.end;
                    assert_eq!(h, wh, "header differs from the model");
                    assert!(
                        h.tag <= MAX_TAG,
                        "a reserved tag was delivered: {:#x}",
                        h.tag
                    );
                    assert_eq!(
                        &out[range.clone()],
                        &wbytes[..],
                        "payload differs from the model"
                    );
                }
                assert_eq!(end, out.len(), "bytes appended beyond the messages");
                if let Ok(n) = r {
                    assert!(n <= max);
                }
                if released {
                    assert_eq!(
                        sh.read_u64(off.tail),
                        m.tail,
                        "published tail differs from the model"
                    );
                }
                assert_eq!(c.is_poisoned(), m.poisoned.is_some());
            }
            Op::Reset => {
                c.reset();
                m.reset();
                assert_eq!(sh.read_u64(off.head), 0);
                assert_eq!(sh.read_u64(off.tail), 0);
            }
            Op::Probe(need) => {
                let head = sh.read_u64(off.head);
                let tail = sh.read_u64(off.tail);
                assert_eq!(c.has_data(), head != m.tail);
                let indices = Some(head.wrapping_sub(tail)).filter(|&u| u <= cap as u64);
                assert_eq!(probe.has_data(), indices.is_none_or(|u| u != 0));
                assert_eq!(
                    probe.has_room(*need as u64),
                    indices.is_none_or(|u| cap as u64 - u >= *need as u64)
                );
            }
        }
        ring.check_canaries(&sh);
    }
});
