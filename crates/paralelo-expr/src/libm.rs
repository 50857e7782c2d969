//! The C library's inverse hyperbolic functions, which numexpr calls: Rust's own
//! (`f64::asinh`) are computed differently and round differently in the last place.

use std::ffi::{c_double, c_float};

extern "C" {
    fn asinh(x: c_double) -> c_double;
    fn acosh(x: c_double) -> c_double;
    fn atanh(x: c_double) -> c_double;
    fn asinhf(x: c_float) -> c_float;
    fn acoshf(x: c_float) -> c_float;
    fn atanhf(x: c_float) -> c_float;
}

/// `asinh`, `acosh` and `atanh` for a float type, as the C library computes them.
pub trait Hyperbolic: Sized {
    fn c_asinh(self) -> Self;
    fn c_acosh(self) -> Self;
    fn c_atanh(self) -> Self;
}

impl Hyperbolic for f64 {
    fn c_asinh(self) -> f64 {
        // SAFETY: a pure C function of a double (defined for every input; NaN out of domain).
        unsafe { asinh(self) }
    }
    fn c_acosh(self) -> f64 {
        // SAFETY: as above.
        unsafe { acosh(self) }
    }
    fn c_atanh(self) -> f64 {
        // SAFETY: as above.
        unsafe { atanh(self) }
    }
}

impl Hyperbolic for f32 {
    fn c_asinh(self) -> f32 {
        // SAFETY: a pure C function of a float (defined for every input; NaN out of domain).
        unsafe { asinhf(self) }
    }
    fn c_acosh(self) -> f32 {
        // SAFETY: as above.
        unsafe { acoshf(self) }
    }
    fn c_atanh(self) -> f32 {
        // SAFETY: as above.
        unsafe { atanhf(self) }
    }
}
