//! `fold(op, code, out, a, b)`: a collective's element-wise reduction over byte buffers,
//! run in Rust with the GIL released (`paralelo_core::comm::fold`).
#![allow(unsafe_code)]
use paralelo_core::comm::{self, Element, Op};
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors::to_py;

/// A byte buffer as `len` elements of `T`: None if it is not C-contiguous, its length
/// not a whole number of elements, or its address not aligned for `T` (numpy then does
/// the work).
fn typed<T>(buf: &PyBuffer<u8>) -> Option<(usize, usize)> {
    let (addr, bytes) = (buf.buf_ptr() as usize, buf.len_bytes());
    let size = std::mem::size_of::<T>();
    (buf.is_c_contiguous() && bytes % size == 0 && addr % std::mem::align_of::<T>() == 0)
        .then_some((addr, bytes / size))
}

/// Reads `(addr, len)` spans as slices and folds them; false if one is not usable as `T`.
fn run<T: Element>(
    py: Python<'_>,
    op: Op,
    out: &PyBuffer<u8>,
    a: Option<&PyBuffer<u8>>,
    b: &PyBuffer<u8>,
) -> PyResult<bool> {
    let (Some(o), Some(y)) = (typed::<T>(out), typed::<T>(b)) else {
        return Ok(false);
    };
    let x = match a {
        Some(a) => match typed::<T>(a) {
            Some(x) => Some(x),
            None => return Ok(false),
        },
        None => None,
    };
    for (addr, len) in x.iter().chain([&y]) {
        // An input overlapping `out` would alias a &mut slice: refused (to fold in place,
        // the caller passes no `a`).
        let (start, end) = (*addr, addr + len * std::mem::size_of::<T>());
        let (o_start, o_end) = (o.0, o.0 + o.1 * std::mem::size_of::<T>());
        if start < o_end && o_start < end {
            return Err(PyValueError::new_err(
                "a reduction's output overlaps one of its inputs",
            ));
        }
    }
    py.detach(|| {
        // SAFETY: each span is a C-contiguous buffer, aligned for T and a whole number of
        // Ts, kept exported (so alive and unmoved) by its PyBuffer for this whole call;
        // `out` is writable (checked by the caller) and overlaps neither input (checked
        // above). Python threads that write these arrays meanwhile race as they would
        // with numpy's own loops, which also release the GIL.
        let out = unsafe { std::slice::from_raw_parts_mut(o.0 as *mut T, o.1) };
        // SAFETY: as `out` (an input: read only).
        let b = unsafe { std::slice::from_raw_parts(y.0 as *const T, y.1) };
        match x {
            Some((addr, len)) => {
                // SAFETY: as `b`.
                let a = unsafe { std::slice::from_raw_parts(addr as *const T, len) };
                comm::fold_into(op, out, a, b)
            }
            None => comm::fold(op, out, b),
        }
    })
    .map_err(to_py)?;
    Ok(true)
}

/// ``out = a op b`` (or ``out = out op b`` when `a` is None), element by element, over
/// byte buffers holding elements of type `code` (numpy's and struct's codes: ``d``,
/// ``f``, ``q``, ``l``, ``i``, ``h``, ``b`` and their unsigned ``Q L I H B``). False when
/// this cannot do it (another operator or type, a buffer not aligned): the caller's
/// fallback then runs. ValueError for parts of different lengths, an operator that
/// does not apply (bitwise on floats), a read-only or overlapping `out`.
#[pyfunction]
#[pyo3(signature = (op, code, out, a, b))]
pub(crate) fn fold(
    py: Python<'_>,
    op: &str,
    code: &str,
    out: &Bound<'_, PyAny>,
    a: Option<&Bound<'_, PyAny>>,
    b: &Bound<'_, PyAny>,
) -> PyResult<bool> {
    let Some(op) = Op::from_name(op) else {
        return Ok(false);
    };
    let out = PyBuffer::<u8>::get(out)?;
    if out.readonly() {
        return Err(PyValueError::new_err("a reduction's output is read-only"));
    }
    let a = a.map(PyBuffer::<u8>::get).transpose()?;
    let b = PyBuffer::<u8>::get(b)?;
    let long = std::mem::size_of::<std::ffi::c_long>() == 8;
    match code {
        "d" => run::<f64>(py, op, &out, a.as_ref(), &b),
        "f" => run::<f32>(py, op, &out, a.as_ref(), &b),
        "q" => run::<i64>(py, op, &out, a.as_ref(), &b),
        "l" if long => run::<i64>(py, op, &out, a.as_ref(), &b),
        "i" | "l" => run::<i32>(py, op, &out, a.as_ref(), &b),
        "h" => run::<i16>(py, op, &out, a.as_ref(), &b),
        "b" => run::<i8>(py, op, &out, a.as_ref(), &b),
        "Q" => run::<u64>(py, op, &out, a.as_ref(), &b),
        "L" if long => run::<u64>(py, op, &out, a.as_ref(), &b),
        "I" | "L" => run::<u32>(py, op, &out, a.as_ref(), &b),
        "H" => run::<u16>(py, op, &out, a.as_ref(), &b),
        "B" => run::<u8>(py, op, &out, a.as_ref(), &b),
        _ => Ok(false),
    }
}
