//! The one place that touches the caller's arrays through their addresses: contiguous
//! blocks seen in place, strided ones gathered into a register and scattered back.
//! Everything here is `unsafe`; `exec` calls it within the bounds `evaluate`'s caller
//! promised.

/// An element address, sendable to other threads (`exec::evaluate`'s caller keeps the
/// arrays alive and unshared for the call).
#[derive(Clone, Copy, Debug)]
pub struct Addr(pub usize);

impl Addr {
    pub fn offset(self, bytes: isize) -> Addr {
        Addr(self.0.wrapping_add_signed(bytes))
    }
}

/// Whether `n` elements of `T` from `at`, `stride` bytes apart, can be seen as a slice.
pub fn is_slice<T>(at: Addr, stride: isize) -> bool {
    stride == std::mem::size_of::<T>() as isize && at.0.is_multiple_of(std::mem::align_of::<T>())
}

/// `n` elements at `at`, in place.
///
/// # Safety
/// `is_slice::<T>(at, stride)` holds, the `n` elements are valid `T`s inside one live
/// allocation, and nobody writes them while the slice lives.
pub unsafe fn slice<'a, T>(at: Addr, n: usize) -> &'a [T] {
    // SAFETY: aligned, in bounds and unwritten, as the caller promised.
    unsafe { std::slice::from_raw_parts(at.0 as *const T, n) }
}

/// `n` elements at `at`, in place, to be written.
///
/// # Safety
/// As `slice`, and nothing else reads or writes them while the slice lives.
pub unsafe fn slice_mut<'a, T>(at: Addr, n: usize) -> &'a mut [T] {
    // SAFETY: aligned, in bounds and exclusive, as the caller promised.
    unsafe { std::slice::from_raw_parts_mut(at.0 as *mut T, n) }
}

/// Reads `into.len()` elements from `at`, `stride` bytes apart (any alignment).
///
/// # Safety
/// Each element is a valid `T` inside a live allocation.
pub unsafe fn gather<T: Copy>(at: Addr, stride: isize, into: &mut [T]) {
    for (i, slot) in into.iter_mut().enumerate() {
        // SAFETY: element `i` is in bounds, as the caller promised; unaligned reads are
        // allowed by `read_unaligned`.
        *slot = unsafe { std::ptr::read_unaligned(at.offset(stride * i as isize).0 as *const T) };
    }
}

/// Writes `from` to `at`, `stride` bytes apart (any alignment).
///
/// # Safety
/// Each element is inside a live allocation nobody else reads or writes meanwhile.
pub unsafe fn scatter<T: Copy>(from: &[T], at: Addr, stride: isize) {
    for (i, v) in from.iter().enumerate() {
        // SAFETY: element `i` is in bounds and exclusively ours, as the caller promised.
        unsafe { std::ptr::write_unaligned(at.offset(stride * i as isize).0 as *mut T, *v) };
    }
}

/// One element at `at`.
///
/// # Safety
/// It is a valid `T` inside a live allocation.
pub unsafe fn read<T: Copy>(at: Addr) -> T {
    // SAFETY: in bounds, as the caller promised.
    unsafe { std::ptr::read_unaligned(at.0 as *const T) }
}

/// Writes one element at `at`.
///
/// # Safety
/// It is inside a live allocation nobody else reads or writes meanwhile.
pub unsafe fn write<T: Copy>(at: Addr, v: T) {
    // SAFETY: in bounds and exclusively ours, as the caller promised.
    unsafe { std::ptr::write_unaligned(at.0 as *mut T, v) }
}

/// Writes `from` to `at` (contiguous) with stores that bypass the caches where the
/// hardware has them (x86-64's non-temporal stores): a large output is not read into the
/// cache before it is overwritten, which saves a third of an elementwise program's
/// memory traffic. `fence` must follow before another thread reads what was written.
///
/// # Safety
/// The `from.len()` elements at `at` are inside a live allocation nobody else reads or
/// writes meanwhile.
pub unsafe fn stream<T: Copy>(from: &[T], at: Addr) {
    let bytes = std::mem::size_of_val(from);
    let src = from.as_ptr() as *const u8;
    let dst = at.0 as *mut u8;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
        // Plain stores up to the first 16-byte boundary, streamed ones for every whole 16
        // bytes after it, plain ones for the rest.
        let head = ((16 - at.0 % 16) % 16).min(bytes);
        let body = (bytes - head) / 16;
        // SAFETY: every byte written is one of the `bytes` at `dst`, as the caller
        // promised; `dst + head` is 16-byte aligned, as `_mm_stream_si128` wants; the
        // loads are unaligned ones, from `from` itself.
        unsafe {
            std::ptr::copy_nonoverlapping(src, dst, head);
            for i in 0..body {
                let v = _mm_loadu_si128(src.add(head + 16 * i) as *const __m128i);
                _mm_stream_si128(dst.add(head + 16 * i) as *mut __m128i, v);
            }
            let done = head + 16 * body;
            std::ptr::copy_nonoverlapping(src.add(done), dst.add(done), bytes - done);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: as the caller promised.
    unsafe {
        std::ptr::copy_nonoverlapping(src, dst, bytes)
    }
}

/// Orders every `stream` store before what follows (their data is visible to the thread
/// that next synchronises with this one).
pub fn fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `sfence` has no operands and no requirement but SSE, which x86-64 has.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    }
}
