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
    // SAFETY: as the caller promised.
    unsafe { gather_with(at, stride, into, |x: T| x) }
}

/// Reads `into.len()` elements of `S` from `at`, `stride` bytes apart (any alignment),
/// each through `f`.
///
/// # Safety
/// Each element is a valid `S` inside a live allocation.
pub unsafe fn gather_with<S: Copy, T>(at: Addr, stride: isize, into: &mut [T], f: impl Fn(S) -> T) {
    for (i, slot) in into.iter_mut().enumerate() {
        // SAFETY: element `i` is in bounds, as the caller promised; unaligned reads are
        // allowed by `read_unaligned`.
        *slot =
            f(unsafe { std::ptr::read_unaligned(at.offset(stride * i as isize).0 as *const S) });
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
