//! The frame: a 32-byte header before every payload (or fragment of one) in a ring.
use crate::{Corruption, Error, Result};

/// Bytes of a frame header: len u32, tag u32, job u64, seq u64, aux u64 (little endian).
pub const FRAME_HEADER: usize = 32;
/// Set on every fragment of a message but the last.
pub(crate) const FRAG_MORE: u32 = 1 << 31;
/// Tells the consumer to drop a half-received message (its producer gave up mid-way).
pub(crate) const TAG_ABORT: u32 = FRAG_MORE - 1;
/// Tells the consumer that the rest of the data area holds nothing: the next frame starts
/// at its beginning (an empty ring's producer rewinds, see `Producer::rewind_if_empty`).
pub(crate) const TAG_SKIP: u32 = FRAG_MORE - 2;
/// The largest tag a caller may use.
pub const MAX_TAG: u32 = TAG_SKIP - 1;
/// The largest message a consumer reassembles from fragments. Beyond this the producer is
/// not following the protocol, and its stream is reported corrupt rather than buffered.
pub const MAX_MESSAGE: usize = 1 << 40;

/// What travels with every message besides its payload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameHeader {
    pub tag: u32,
    pub job: u64,
    pub seq: u64,
    pub aux: u64,
}

impl FrameHeader {
    /// The wire form of this header with `tag` (the caller's, or a fragment or abort tag)
    /// before a payload of `len` bytes.
    pub(crate) fn encode(&self, tag: u32, len: u32) -> [u8; FRAME_HEADER] {
        let mut b = [0u8; FRAME_HEADER];
        b[0..4].copy_from_slice(&len.to_le_bytes());
        b[4..8].copy_from_slice(&tag.to_le_bytes());
        b[8..16].copy_from_slice(&self.job.to_le_bytes());
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.aux.to_le_bytes());
        b
    }

    /// `(payload length, header)` from wire bytes. Any bytes decode: the caller checks the
    /// length against what the ring can hold.
    pub(crate) fn decode(b: &[u8; FRAME_HEADER]) -> (u32, FrameHeader) {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(w)
        };
        (
            u32_at(0),
            FrameHeader {
                tag: u32_at(4),
                job: u64_at(8),
                seq: u64_at(16),
                aux: u64_at(24),
            },
        )
    }
}

/// Refuses the tags the ring reserves for itself. The one check every sender goes through.
pub(crate) fn check_tag(tag: u32) -> Result<()> {
    if tag > MAX_TAG {
        return Err(Error::Invalid(format!(
            "message tag {tag} is reserved (max {MAX_TAG})"
        )));
    }
    Ok(())
}

/// Bytes a payload of `len` takes in the ring: frames stay 8-byte aligned.
pub(crate) fn padded(len: usize) -> u64 {
    (len as u64).next_multiple_of(8)
}

/// Checks a frame read from the ring: its payload must be a fragment at most `max` bytes
/// long and lie within the `published` bytes.
pub(crate) fn check_frame(len: u32, max: usize, published: u64) -> Result<(), Corruption> {
    if len as usize > max {
        return Err(Corruption::FrameTooLong {
            len: len as u64,
            max: max as u64,
        });
    }
    if published < FRAME_HEADER as u64 + padded(len as usize) {
        return Err(Corruption::FrameOverrun {
            len: len as u64,
            published,
        });
    }
    Ok(())
}
