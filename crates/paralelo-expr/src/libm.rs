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

macro_rules! hyperbolic {
    ($t:ty, $asinh:ident, $acosh:ident, $atanh:ident) => {
        impl Hyperbolic for $t {
            fn c_asinh(self) -> $t {
                // SAFETY: a pure C function of one number, defined for every input (NaN
                // out of its domain).
                unsafe { $asinh(self) }
            }
            fn c_acosh(self) -> $t {
                // SAFETY: as above.
                unsafe { $acosh(self) }
            }
            fn c_atanh(self) -> $t {
                // SAFETY: as above.
                unsafe { $atanh(self) }
            }
        }
    };
}
hyperbolic!(f64, asinh, acosh, atanh);
hyperbolic!(f32, asinhf, acoshf, atanhf);
