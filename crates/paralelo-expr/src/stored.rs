//! Inputs stored otherwise than as their kernel kind: the dtypes numexpr widens (int8 and
//! int16, uint8 to uint64, float16, complex64) and either byte order. Such an input is
//! converted a block at a time as it is read, as numpy's `astype` converts it, never as
//! a whole copy (a 200 M-element uint8 image would take 800 MB more).

use crate::dtype::DType;
use crate::error::{ExprError, Result};

/// An input's elements as they sit in memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stored {
    pub elem: Elem,
    /// In the other byte order than this machine's.
    pub swapped: bool,
}

/// An element's type in memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Elem {
    /// The kernel kind's own.
    #[default]
    Kind,
    I8,
    U8,
    I16,
    U16,
    U32,
    U64,
    F16,
    C64,
}

impl Stored {
    /// Whether elements stored so can be read as `kind`: numexpr's widenings (uint64
    /// wraps to int64, as numpy's cast does).
    pub fn check(self, kind: DType) -> Result<()> {
        use DType::*;
        let fits = match self.elem {
            Elem::Kind => true,
            Elem::I8 | Elem::U8 | Elem::I16 | Elem::U16 => kind == Int,
            Elem::U32 | Elem::U64 => kind == Long,
            Elem::F16 => kind == Float,
            Elem::C64 => kind == Complex,
        };
        if fits {
            Ok(())
        } else {
            Err(ExprError::Value(format!(
                "an input stored as {:?} is not read as {kind:?}",
                self.elem
            )))
        }
    }

    /// Bytes an element stored so takes, read as `kind`.
    pub fn size(self, kind: DType) -> usize {
        match self.elem {
            Elem::Kind => kind.size(),
            Elem::I8 | Elem::U8 => 1,
            Elem::I16 | Elem::U16 | Elem::F16 => 2,
            Elem::U32 => 4,
            Elem::U64 | Elem::C64 => 8,
        }
    }

    /// Whether elements are read as they are (no conversion, native order).
    pub fn is_kind(self) -> bool {
        self == Stored::default()
    }
}

/// An element's bytes in the other order.
pub(crate) trait Swap: Copy {
    fn swap(self) -> Self;
}

macro_rules! swap_ints {
    ($($t:ty),*) => {$(
        impl Swap for $t {
            fn swap(self) -> Self {
                self.swap_bytes()
            }
        }
    )*};
}
swap_ints!(u8, i8, i16, u16, i32, u32, i64, u64);

impl Swap for f32 {
    fn swap(self) -> Self {
        f32::from_bits(self.to_bits().swap_bytes())
    }
}

impl Swap for f64 {
    fn swap(self) -> Self {
        f64::from_bits(self.to_bits().swap_bytes())
    }
}

impl Swap for [f32; 2] {
    fn swap(self) -> Self {
        [self[0].swap(), self[1].swap()]
    }
}

impl Swap for num_complex::Complex64 {
    fn swap(self) -> Self {
        num_complex::Complex64::new(self.re.swap(), self.im.swap())
    }
}
