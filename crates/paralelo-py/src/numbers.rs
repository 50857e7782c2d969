//! Lists of plain numbers as machine arrays: a map's items and results that are all ints
//! (or all floats) cross between processes as 8-byte values, checked and converted in one
//! pass, instead of pickled one object at a time. The layout is a type code (`b'q'`: i64,
//! `b'd'`: f64, as `array.array` names them) then the values in native byte order.
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

const INTS: u8 = b'q';
const FLOATS: u8 = b'd';

/// `items[start:stop]` (of a list or tuple) as a machine array, or None when it is empty
/// or not made only of ints that fit in 64 bits, or only of floats (bools, int subclasses
/// and mixed lists keep their types only through pickle). The first item decides, so a
/// list of other things costs one look. A chunk of a map is packed straight from its
/// input, never sliced first.
#[pyfunction]
#[pyo3(signature = (items, start = 0, stop = None))]
pub(crate) fn pack_numbers<'py>(
    py: Python<'py>,
    items: &Bound<'py, PyAny>,
    start: usize,
    stop: Option<usize>,
) -> Option<Bound<'py, PyBytes>> {
    let get: Getter = if items.is_exact_instance_of::<PyList>() {
        ffi::PyList_GetItem
    } else if items.is_exact_instance_of::<PyTuple>() {
        ffi::PyTuple_GetItem
    } else {
        return None;
    };
    let len = items.len().ok()?;
    let stop = stop.map_or(len, |s| s.min(len));
    let span = start..stop;
    if span.is_empty() {
        return None;
    }
    let seq = items.as_ptr();
    // SAFETY: `items` is an exact list or tuple, alive, and `span.start < len`.
    let first = unsafe { ffi::Py_TYPE(get(seq, span.start as ffi::Py_ssize_t)) };
    if first != std::ptr::addr_of_mut!(ffi::PyLong_Type)
        && first != std::ptr::addr_of_mut!(ffi::PyFloat_Type)
    {
        return None; // the common case of other things: one look, nothing allocated
    }
    // Written in place; a non-number found part-way discards the bytes object. Not
    // PyBytes::new_with, which zero-fills first: a second pass over every page.
    let n = 1 + 8 * span.len();
    // SAFETY: with a NULL source, the call returns a new bytes object of `n` bytes whose
    // contents are ours to fill before anyone sees it, or NULL with an error set.
    let bytes = unsafe { ffi::PyBytes_FromStringAndSize(std::ptr::null(), n as ffi::Py_ssize_t) };
    // SAFETY: a new reference, or NULL with the error set (taken by from_owned_ptr_or_err).
    let bytes = unsafe { Bound::from_owned_ptr_or_err(py, bytes) }.ok()?;
    // SAFETY: `bytes` is a new bytes object of `n` bytes, not yet shared: its buffer is
    // ours for the write, which `pack` keeps within `n` bytes.
    let buf = unsafe { ffi::PyBytes_AsString(bytes.as_ptr()) }.cast::<u8>();
    if buf.is_null() || !pack(seq, span, get, buf) {
        return None;
    }
    bytes.cast_into::<PyBytes>().ok()
}

/// `PyList_GetItem` or `PyTuple_GetItem`: a borrowed reference, no reference counting.
type Getter = unsafe extern "C" fn(*mut ffi::PyObject, ffi::Py_ssize_t) -> *mut ffi::PyObject;

// Raw calls, not PyO3's iterators: under the limited API those cost a size check and a
// reference count round trip per item, more than the conversion itself (this runs on
// every chunk of a map of numbers, in the parent and in the workers).
/// Writes `seq[span]` at `out` (`1 + 8 * span.len()` writable bytes, maybe not
/// initialised); false if it is not all plain ints that fit, or all floats.
fn pack(seq: *mut ffi::PyObject, span: std::ops::Range<usize>, get: Getter, out: *mut u8) -> bool {
    // SAFETY: (here and in the blocks below) `seq` is an exact list or tuple, alive and
    // held by the caller with the GIL; nothing here runs Python code (exact ints and
    // floats convert without calling back), so it cannot change, indices in `span` (within
    // its length) stay in bounds, and the borrowed items stay alive.
    let item = |i: usize| unsafe { get(seq, i as ffi::Py_ssize_t) };
    // SAFETY: the `k`-th value of the span goes at `1 + 8k`, within the `1 + 8 * len`
    // bytes the caller gave; unaligned, as a bytes object's data may be.
    let put = |k: usize, word: [u8; 8]| unsafe {
        out.add(1 + 8 * k).cast::<[u8; 8]>().write_unaligned(word)
    };
    let int_type = std::ptr::addr_of_mut!(ffi::PyLong_Type);
    let float_type = std::ptr::addr_of_mut!(ffi::PyFloat_Type);
    // SAFETY: as above; the span's first item is a live object.
    let kind = unsafe { ffi::Py_TYPE(item(span.start)) };
    let first = span.start;
    if kind == int_type {
        // SAFETY: the code byte is the first of the caller's bytes.
        unsafe { out.write(INTS) };
        for i in span {
            let obj = item(i);
            // SAFETY: as above.
            if unsafe { ffi::Py_TYPE(obj) } != int_type {
                return false;
            }
            let mut overflow = 0;
            // SAFETY: as above; an exact int, so the call cannot fail but by overflow.
            let value = unsafe { ffi::PyLong_AsLongLongAndOverflow(obj, &mut overflow) };
            if overflow != 0 {
                return false;
            }
            put(i - first, value.to_ne_bytes());
        }
    } else if kind == float_type {
        // SAFETY: as for ints.
        unsafe { out.write(FLOATS) };
        for i in span {
            let obj = item(i);
            // SAFETY: as above.
            if unsafe { ffi::Py_TYPE(obj) } != float_type {
                return false;
            }
            // SAFETY: as above; an exact float, so the call cannot fail.
            let value = unsafe { ffi::PyFloat_AsDouble(obj) };
            put(i - first, value.to_ne_bytes());
        }
    } else {
        return false;
    }
    true
}

/// The list that `pack_numbers` packed into `data`; or, given `into` (a list), its items
/// `start` onwards replaced by those numbers in place (a map's results go straight to
/// their places in its output list, with no list in between), returning how many.
#[pyfunction]
#[pyo3(signature = (data, into = None, start = 0))]
pub(crate) fn unpack_numbers<'py>(
    py: Python<'py>,
    data: &[u8],
    into: Option<&Bound<'py, PyList>>,
    start: usize,
) -> PyResult<Bound<'py, PyAny>> {
    let bad = || pyo3::exceptions::PyValueError::new_err("not a packed array of numbers");
    let (&code, body) = data.split_first().ok_or_else(bad)?;
    if body.len() % 8 != 0 || (code != INTS && code != FLOATS) {
        return Err(bad());
    }
    let n = body.len() / 8;
    let out = match into {
        Some(list) => {
            if !list.is_exact_instance_of::<PyList>() {
                return Err(pyo3::exceptions::PyTypeError::new_err(
                    "numbers are unpacked into a list, not a subclass of one",
                ));
            }
            if start.checked_add(n).is_none_or(|end| end > list.len()) {
                return Err(pyo3::exceptions::PyValueError::new_err(format!(
                    "{n} numbers do not fit in a list of {} from index {start}",
                    list.len()
                )));
            }
            list.clone()
        }
        None => {
            // SAFETY: a new list of `n` empty (NULL) places, each filled below before anyone
            // else can see the list: nothing in the loop runs Python code or the collector
            // on a new list's places (replacing NULL releases nothing); if the loop fails,
            // the list is dropped, and a list's deallocation skips NULL places.
            let ptr = unsafe { ffi::PyList_New(n as ffi::Py_ssize_t) };
            // SAFETY: a new reference, or NULL with the error set (taken by from_owned_ptr_or_err).
            unsafe { Bound::from_owned_ptr_or_err(py, ptr)? }.cast_into::<PyList>()?
        }
    };
    for (i, w) in body.chunks_exact(8).enumerate() {
        let w = <[u8; 8]>::try_from(w).expect("chunks of 8");
        // SAFETY: the conversions return a new reference or NULL with an error set.
        let obj = unsafe {
            if code == INTS {
                ffi::PyLong_FromLongLong(i64::from_ne_bytes(w))
            } else {
                ffi::PyFloat_FromDouble(f64::from_ne_bytes(w))
            }
        };
        if obj.is_null() {
            return Err(PyErr::fetch(py));
        }
        // SAFETY: `out` is an exact list, alive (we hold a reference), and `obj` a new
        // reference, which SetItem takes. SetItem checks the index itself: releasing the
        // item it replaces may run Python code (a `__del__`) that shrinks the list, and then
        // it fails with IndexError (releasing `obj`), which we return.
        if unsafe { ffi::PyList_SetItem(out.as_ptr(), (start + i) as ffi::Py_ssize_t, obj) } != 0 {
            return Err(PyErr::fetch(py));
        }
    }
    Ok(if into.is_some() {
        n.into_pyobject(py)?.into_any()
    } else {
        out.into_any()
    })
}
