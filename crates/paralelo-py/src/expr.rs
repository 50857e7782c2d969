//! `paralelo.evaluate`'s engine: expressions compiled once (`Expression`) and run over
//! arrays the Python side describes by address, kind and strides, with the GIL released.
use paralelo_expr::{compile, evaluate, names, ArrayArg, DType, Optimization, Program};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors::expr_to_py;

/// The names an expression reads, sorted (its inputs, in the order `Expression` wants).
#[pyfunction]
pub(crate) fn expression_names(src: &str) -> PyResult<Vec<String>> {
    names(src).map_err(expr_to_py)
}

fn dtype(name: &str) -> PyResult<DType> {
    DType::from_name(name)
        .ok_or_else(|| PyValueError::new_err(format!("no kernels for {name} arrays")))
}

/// A compiled expression.
#[pyclass(frozen, module = "paralelo._native")]
pub(crate) struct Expression {
    program: Program,
}

/// An array as Python describes it: (address, numpy kind name, strides in bytes).
type Described = (usize, String, Vec<isize>);

#[pymethods]
impl Expression {
    /// Compiles `src` for inputs of the given kinds (`[(name, numpy kind name)]`, in
    /// `expression_names` order), with numexpr's `optimization`.
    #[new]
    fn new(src: &str, inputs: Vec<(String, String)>, optimization: &str) -> PyResult<Self> {
        let optimization = match optimization {
            "none" => Optimization::None,
            "moderate" => Optimization::Moderate,
            "aggressive" => Optimization::Aggressive,
            other => {
                return Err(PyValueError::new_err(format!(
                "'optimization' must be one of ('none', 'moderate', 'aggressive'), not {other:?}"
            )))
            }
        };
        let inputs = inputs
            .into_iter()
            .map(|(n, k)| Ok((n, dtype(&k)?)))
            .collect::<PyResult<Vec<_>>>()?;
        let program = compile(src, &inputs, optimization).map_err(expr_to_py)?;
        Ok(Expression { program })
    }

    /// The result's numpy kind name.
    #[getter]
    fn out(&self) -> &'static str {
        self.program.out.name()
    }

    /// The final reduction: None, or `(name, axis or None)`.
    #[getter]
    fn reduction(&self) -> Option<(String, Option<usize>)> {
        self.program
            .reduce
            .map(|(r, axis)| (format!("{r:?}").to_lowercase(), axis))
    }

    /// Which inputs it reads (by position): those folded away play no part in the shape.
    #[getter]
    fn reads(&self) -> Vec<bool> {
        (0..self.program.inputs.len())
            .map(|i| self.program.reads(i))
            .collect()
    }

    /// How many of its `where`s run each branch only where it is picked.
    #[getter]
    fn lazy_wheres(&self) -> usize {
        self.program.lazy.len()
    }

    /// How many instructions it runs per block (for tests and `explain`).
    #[getter]
    fn instructions(&self) -> usize {
        self.program.instrs.len()
    }

    /// Runs over `inputs` (each `(address, kind, strides)`, of `shape`) into `out`
    /// (`(address, kind, strides)`: 0 strides along what a reduction folds).
    fn run(
        &self,
        py: Python<'_>,
        inputs: Vec<Described>,
        shape: Vec<usize>,
        out: Described,
    ) -> PyResult<()> {
        let kinds = inputs
            .iter()
            .map(|(_, k, _)| dtype(k))
            .collect::<PyResult<Vec<_>>>()?;
        let args: Vec<ArrayArg> = inputs
            .iter()
            .zip(&kinds)
            .map(|((addr, _, strides), kind)| ArrayArg {
                addr: *addr,
                dtype: *kind,
                strides,
            })
            .collect();
        let out = ArrayArg {
            addr: out.0,
            dtype: dtype(&out.1)?,
            strides: &out.2,
        };
        let program = &self.program;
        // SAFETY: `paralelo.expr` passes the addresses and strides of numpy arrays it holds
        // for the call (broadcast views and a fresh or checked output, never overlapping an
        // input), every index of `shape` inside them.
        py.detach(|| unsafe { evaluate(program, &args, &shape, out) })
            .map_err(expr_to_py)
    }
}
