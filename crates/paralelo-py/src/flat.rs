//! Pickles of flat values (`int` within 64 bits, `float`, `None`, `bool`, and `str` and
//! `bytes` up to `MOST` bytes), written and read here without calling the pickler: a
//! queue's small messages are mostly these, and the two calls into `pickle` cost as much
//! as the rest of a put and a get. The bytes written are exactly what `pickle.dumps(v, 5)`
//! makes (a test holds them to it); any other pickle is left to `pickle.loads`.
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyFloat, PyInt, PyString};

const PROTO: u8 = 0x80;
const FRAME: u8 = 0x95;
const STOP: u8 = b'.';
const NONE: u8 = b'N';
const NEWTRUE: u8 = 0x88;
const NEWFALSE: u8 = 0x89;
const BININT1: u8 = b'K';
const BININT2: u8 = b'M';
const BININT: u8 = b'J';
const LONG1: u8 = 0x8a;
const BINFLOAT: u8 = b'G';
const SHORT_BINUNICODE: u8 = 0x8c;
const BINUNICODE: u8 = b'X';
const SHORT_BINBYTES: u8 = b'C';
const BINBYTES: u8 = b'B';
const MEMOIZE: u8 = 0x94;
/// The pickler frames what follows PROTO once it is this long.
const FRAME_MIN: usize = 4;
/// Strings and bytes up to this long only: past the pickler's frame target (64 KiB) it
/// writes them outside frames, which is not worth copying here.
const MOST: usize = 32 << 10;

/// `obj`'s pickle (protocol 5), if it is a flat value; None for anything else.
pub(crate) fn dumps(obj: &Bound<'_, PyAny>) -> Option<Vec<u8>> {
    let mut body = Vec::with_capacity(16);
    if obj.is_none() {
        body.push(NONE);
    } else if let Ok(b) = obj.cast_exact::<PyBool>() {
        body.push(if b.is_true() { NEWTRUE } else { NEWFALSE });
    } else if obj.is_exact_instance_of::<PyInt>() {
        long(obj.extract::<i64>().ok()?, &mut body);
    } else if let Ok(f) = obj.cast_exact::<PyFloat>() {
        body.push(BINFLOAT);
        body.extend_from_slice(&f.value().to_be_bytes());
    } else if let Ok(s) = obj.cast_exact::<PyString>() {
        // (A lone surrogate fails here: the pickler writes it with "surrogatepass".)
        sized(
            s.to_str().ok()?.as_bytes(),
            SHORT_BINUNICODE,
            BINUNICODE,
            &mut body,
        )?;
    } else if let Ok(b) = obj.cast_exact::<PyBytes>() {
        sized(b.as_bytes(), SHORT_BINBYTES, BINBYTES, &mut body)?;
    } else {
        return None;
    }
    body.push(STOP);
    let mut out = Vec::with_capacity(body.len() + 11);
    out.extend_from_slice(&[PROTO, 5]);
    if body.len() >= FRAME_MIN {
        out.push(FRAME);
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    }
    out.extend_from_slice(&body);
    Some(out)
}

/// An int as the pickler writes it: one, two or four bytes while it fits, else LONG1
/// with the fewest two's-complement bytes.
fn long(v: i64, out: &mut Vec<u8>) {
    if (0..=0xff).contains(&v) {
        out.extend_from_slice(&[BININT1, v as u8]);
    } else if (0..=0xffff).contains(&v) {
        out.push(BININT2);
        out.extend_from_slice(&(v as u16).to_le_bytes());
    } else if let Ok(v) = i32::try_from(v) {
        out.push(BININT);
        out.extend_from_slice(&v.to_le_bytes());
    } else {
        let bytes = v.to_le_bytes();
        // Drop the high bytes that only repeat the sign of the byte below them.
        let mut n = 8;
        while n > 1 {
            let (top, below) = (bytes[n - 1], bytes[n - 2]);
            if (top == 0 && below & 0x80 == 0) || (top == 0xff && below & 0x80 != 0) {
                n -= 1;
            } else {
                break;
            }
        }
        out.extend_from_slice(&[LONG1, n as u8]);
        out.extend_from_slice(&bytes[..n]);
    }
}

/// A string's or bytes' opcode, length and data, memoized as the pickler does.
fn sized(data: &[u8], short: u8, long: u8, out: &mut Vec<u8>) -> Option<()> {
    if data.len() > MOST {
        return None;
    }
    if let Ok(n) = u8::try_from(data.len()) {
        out.extend_from_slice(&[short, n]);
    } else {
        out.push(long);
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(data);
    out.push(MEMOIZE);
    Some(())
}

/// The value of `data` if it is the pickle of a flat value (any protocol from 2, framed
/// or not); None for any other pickle (it is then `pickle.loads`'s to read).
pub(crate) fn loads<'py>(py: Python<'py>, data: &[u8]) -> Option<Bound<'py, PyAny>> {
    let mut r = Reader { data, at: 0 };
    if r.byte()? != PROTO || !(2..=5).contains(&r.byte()?) {
        return None;
    }
    if r.peek()? == FRAME {
        r.take(1)?;
        // (A frame longer than what is left: the unpickler's to refuse.)
        let len = u64::from_le_bytes(r.array()?);
        if len > (data.len() - r.at) as u64 {
            return None;
        }
    }
    let value = match r.byte()? {
        NONE => py.None().into_bound(py),
        NEWTRUE => PyBool::new(py, true).to_owned().into_any(),
        NEWFALSE => PyBool::new(py, false).to_owned().into_any(),
        BININT1 => r.byte()?.into_pyobject(py).ok()?.into_any(),
        BININT2 => u16::from_le_bytes(r.array()?)
            .into_pyobject(py)
            .ok()?
            .into_any(),
        BININT => i32::from_le_bytes(r.array()?)
            .into_pyobject(py)
            .ok()?
            .into_any(),
        LONG1 => {
            let n = usize::from(r.byte()?);
            if !(1..=8).contains(&n) {
                return None;
            }
            let bytes = r.take(n)?;
            let fill = if bytes[n - 1] & 0x80 != 0 { 0xff } else { 0 };
            let mut full = [fill; 8];
            full[..n].copy_from_slice(bytes);
            i64::from_le_bytes(full).into_pyobject(py).ok()?.into_any()
        }
        BINFLOAT => PyFloat::new(py, f64::from_be_bytes(r.array()?)).into_any(),
        SHORT_BINUNICODE => {
            let n = usize::from(r.byte()?);
            PyString::new(py, std::str::from_utf8(r.take(n)?).ok()?).into_any()
        }
        BINUNICODE => {
            let n = u32::from_le_bytes(r.array()?) as usize;
            PyString::new(py, std::str::from_utf8(r.take(n)?).ok()?).into_any()
        }
        SHORT_BINBYTES => {
            let n = usize::from(r.byte()?);
            PyBytes::new(py, r.take(n)?).into_any()
        }
        BINBYTES => {
            let n = u32::from_le_bytes(r.array()?) as usize;
            PyBytes::new(py, r.take(n)?).into_any()
        }
        _ => return None,
    };
    if r.peek()? == MEMOIZE {
        r.take(1)?;
    }
    (r.byte()? == STOP && r.at == data.len()).then_some(value)
}

/// A cursor over a pickle; every read is bounds-checked (None past the end).
struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let out = self.data.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(out)
    }

    fn byte(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn peek(&self) -> Option<u8> {
        self.data.get(self.at).copied()
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
}

/// `pickle.dumps(obj, 5)` for a flat value, made here; None for anything else (for
/// `queues.dumps`, whose pipes' small messages skip the pickler).
#[pyfunction]
pub(crate) fn dumps_flat<'py>(
    py: Python<'py>,
    obj: &Bound<'py, PyAny>,
) -> Option<Bound<'py, PyBytes>> {
    dumps(obj).map(|d| PyBytes::new(py, &d))
}
