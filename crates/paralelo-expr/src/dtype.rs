//! The six element types numexpr computes in, ranked as numexpr ranks its kinds.

use num_complex::Complex64;

/// An element type. The order is numexpr's rank: an operation on two kinds runs in the
/// higher one (an `int64` and a `float32` meet in `float32`, as in numexpr).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DType {
    Bool,
    Int,
    Long,
    Float,
    Double,
    Complex,
}

impl DType {
    /// numpy's name for it.
    pub fn name(self) -> &'static str {
        match self {
            DType::Bool => "bool",
            DType::Int => "int32",
            DType::Long => "int64",
            DType::Float => "float32",
            DType::Double => "float64",
            DType::Complex => "complex128",
        }
    }

    /// The type numpy names `name` (one of `name()`'s answers).
    pub fn from_name(name: &str) -> Option<DType> {
        Some(match name {
            "bool" => DType::Bool,
            "int32" => DType::Int,
            "int64" => DType::Long,
            "float32" => DType::Float,
            "float64" => DType::Double,
            "complex128" => DType::Complex,
            _ => return None,
        })
    }

    /// Bytes an element takes.
    pub fn size(self) -> usize {
        match self {
            DType::Bool => 1,
            DType::Int | DType::Float => 4,
            DType::Long | DType::Double => 8,
            DType::Complex => 16,
        }
    }

    pub fn is_integer(self) -> bool {
        matches!(self, DType::Int | DType::Long)
    }

    /// numexpr's one-letter code for it, as in its opcode names ("add_ddd").
    pub fn code(self) -> char {
        match self {
            DType::Bool => 'b',
            DType::Int => 'i',
            DType::Long => 'l',
            DType::Float => 'f',
            DType::Double => 'd',
            DType::Complex => 'c',
        }
    }
}

/// A typed scalar: a constant as the kernels use it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scalar {
    Bool(bool),
    Int(i32),
    Long(i64),
    Float(f32),
    Double(f64),
    Complex(Complex64),
}

impl Scalar {
    pub fn dtype(self) -> DType {
        match self {
            Scalar::Bool(_) => DType::Bool,
            Scalar::Int(_) => DType::Int,
            Scalar::Long(_) => DType::Long,
            Scalar::Float(_) => DType::Float,
            Scalar::Double(_) => DType::Double,
            Scalar::Complex(_) => DType::Complex,
        }
    }

    /// The value as a complex number (every kind widens to it).
    fn widest(self) -> Complex64 {
        match self {
            Scalar::Bool(b) => Complex64::new(f64::from(u8::from(b)), 0.0),
            Scalar::Int(v) => Complex64::new(f64::from(v), 0.0),
            Scalar::Long(v) => Complex64::new(v as f64, 0.0),
            Scalar::Float(v) => Complex64::new(f64::from(v), 0.0),
            Scalar::Double(v) => Complex64::new(v, 0.0),
            Scalar::Complex(v) => v,
        }
    }

    /// The value in `to`, which is never a lower kind than its own but for integers held
    /// as a wider kind (constants: an `int` constant may be asked for as `int64`).
    pub fn cast(self, to: DType) -> Scalar {
        match (self, to) {
            (s, t) if s.dtype() == t => s,
            (Scalar::Bool(b), DType::Int) => Scalar::Int(i32::from(b)),
            (Scalar::Bool(b), DType::Long) => Scalar::Long(i64::from(b)),
            (Scalar::Int(v), DType::Long) => Scalar::Long(i64::from(v)),
            (Scalar::Bool(b), DType::Float) => Scalar::Float(f32::from(u8::from(b))),
            (Scalar::Int(v), DType::Float) => Scalar::Float(v as f32),
            (Scalar::Long(v), DType::Float) => Scalar::Float(v as f32),
            (Scalar::Double(v), DType::Float) => Scalar::Float(v as f32),
            (s, DType::Double) => Scalar::Double(s.widest().re),
            (s, DType::Complex) => Scalar::Complex(s.widest()),
            (Scalar::Long(v), DType::Int) => Scalar::Int(v as i32),
            (s, DType::Bool) => Scalar::Bool(s.widest() != Complex64::new(0.0, 0.0)),
            (s, _) => s,
        }
    }
}
