//! `paralelo.evaluate`'s engine: expressions compiled once (`Expression`) and run over
//! the Python side's arrays (read through the buffer protocol) or arrays it describes by
//! address, kind and strides, with the GIL released.
use paralelo_expr::{
    compile, evaluate, names, ArrayArg, DType, Elem, Optimization, Program, Stored,
};
use pyo3::buffer::PyUntypedBuffer;
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
    /// Its kernels loaded per (device, merged dimensions).
    #[cfg(feature = "cuda")]
    kernels: gpu::Loaded,
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
        Ok(Expression {
            program,
            #[cfg(feature = "cuda")]
            kernels: Default::default(),
        })
    }

    /// The inputs' numpy kind names, in order (what it was compiled for).
    #[getter]
    fn kinds(&self) -> Vec<&'static str> {
        self.program.inputs.iter().map(|(_, k)| k.name()).collect()
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

    /// The CUDA C++ source of its kernels over `ndim` merged dimensions.
    fn cuda_source(&self, ndim: usize) -> String {
        paralelo_expr::cuda::kernel_source(&self.program, ndim.max(1))
    }

    /// Runs on CUDA device `ordinal` as `run` does, the addresses device memory.
    #[cfg(feature = "cuda")]
    fn run_cuda(
        &self,
        py: Python<'_>,
        ordinal: usize,
        inputs: Vec<Described>,
        shape: Vec<usize>,
        out: Described,
    ) -> PyResult<()> {
        let (args, out) = arrays(&inputs, &out)?;
        let program = &self.program;
        let loaded = &self.kernels;
        // SAFETY: `paralelo._device` passes device arrays it holds for the call (uploaded
        // copies, the caller's own, a fresh or checked output), every index of `shape`
        // inside them.
        py.detach(|| unsafe { gpu::run(loaded, program, ordinal, &args, &shape, out) })
            .map_err(expr_to_py)
    }

    /// Runs over `inputs` (each `(array, kind, stored)`, of `shape`; `stored` the
    /// array's numpy type string where its elements are not the kind's own, as `'|u1'` or
    /// `'>f8'`, else None) into `out` (`(array, kind, strides)`: 0 strides along what a
    /// reduction folds), each array's address and strides read through the buffer
    /// protocol.
    fn run_arrays(
        &self,
        py: Python<'_>,
        inputs: Vec<(Bound<'_, PyAny>, String, Option<String>)>,
        shape: Vec<usize>,
        out: (Bound<'_, PyAny>, String, Vec<isize>),
    ) -> PyResult<()> {
        // (The arrays stay alive, held by the caller, for the whole call.)
        let mut stored = Vec::with_capacity(inputs.len());
        let inputs = inputs
            .iter()
            .map(|(array, kind, how)| {
                let Located {
                    addr,
                    strides,
                    size,
                    own,
                    ..
                } = locate(array)?;
                let how = how.as_deref().map_or(Ok(Stored::default()), stored_as)?;
                // (what the engine reads must be what the buffer holds)
                let want = how.size(dtype(kind)?);
                if size != want {
                    return Err(PyValueError::new_err(format!(
                        "an input's elements are {size} bytes, not the {want} of {kind} stored as \
                         {how:?}"
                    )));
                }
                inside(&shape, &strides, want, own, "an input")?;
                stored.push(how);
                Ok((addr, kind.clone(), strides))
            })
            .collect::<PyResult<Vec<Described>>>()?;
        let target = locate(&out.0)?;
        if target.readonly {
            return Err(PyValueError::new_err("output array is read-only"));
        }
        let want = dtype(&out.1)?.size();
        if target.size != want {
            return Err(PyValueError::new_err(format!(
                "the output's elements are {} bytes, not the {want} of {}",
                target.size, out.1
            )));
        }
        inside(&shape, &out.2, want, target.own, "the output")?;
        let out = (target.addr, out.1, out.2);
        let (mut args, out) = arrays(&inputs, &out)?;
        for (a, s) in args.iter_mut().zip(stored) {
            a.stored = s;
        }
        self.evaluate(py, &args, &shape, out)
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
        let (args, out) = arrays(&inputs, &out)?;
        self.evaluate(py, &args, &shape, out)
    }
}

impl Expression {
    fn evaluate(
        &self,
        py: Python<'_>,
        args: &[ArrayArg],
        shape: &[usize],
        out: ArrayArg,
    ) -> PyResult<()> {
        let program = &self.program;
        // SAFETY: `paralelo.expressions` passes the addresses and strides of numpy arrays it holds
        // for the call (broadcast views and a fresh or checked output, never overlapping an
        // input), every index of `shape` inside them, of the types their `stored` says.
        py.detach(|| unsafe { evaluate(program, args, shape, out) })
            .map_err(expr_to_py)
    }
}

/// A numpy type string (`'|u1'`, `'>f8'`, `'<c8'`) as the engine reads such elements.
fn stored_as(code: &str) -> PyResult<Stored> {
    let bad = || PyValueError::new_err(format!("no conversion is read from dtype '{code}'"));
    let (order, elem) = code.split_at_checked(1).ok_or_else(bad)?;
    let native = if cfg!(target_endian = "little") {
        '<'
    } else {
        '>'
    };
    let swapped = !matches!(order.chars().next(), Some('|' | '=')) && !order.starts_with(native);
    let elem = match elem {
        "i1" => Elem::I8,
        "u1" => Elem::U8,
        "i2" => Elem::I16,
        "u2" => Elem::U16,
        "u4" => Elem::U32,
        "u8" => Elem::U64,
        "f2" => Elem::F16,
        "c8" => Elem::C64,
        "b1" | "i4" | "i8" | "f4" | "f8" | "c16" => Elem::Kind,
        _ => return Err(bad()),
    };
    Ok(Stored { elem, swapped })
}

/// `array`'s first element's address and its strides in bytes, read through the buffer
/// protocol (reading `__array_interface__` cost a 100-element call 1.3 µs an array), or
/// through its interface where it exports no strided buffer (a 0-d array); with its
/// elements' size where the buffer tells it.
/// An array as the engine is to walk it.
struct Located {
    addr: usize,
    strides: Vec<isize>,
    /// Bytes an element.
    size: usize,
    /// The bytes from `addr` its own elements span.
    own: Extent,
    readonly: bool,
}

/// An array's address, strides, element size and extent: through the buffer protocol,
/// else (a 0-d array) its `__array_interface__` and attributes.
fn locate(array: &Bound<'_, PyAny>) -> PyResult<Located> {
    if let Ok(buffer) = PyUntypedBuffer::get(array) {
        let (size, strides) = (buffer.item_size(), buffer.strides().to_vec());
        return Ok(Located {
            addr: buffer.buf_ptr() as usize,
            own: extent(buffer.shape(), &strides, size),
            strides,
            size,
            readonly: buffer.readonly(),
        });
    }
    let (addr, readonly): (usize, bool) = array
        .getattr("__array_interface__")?
        .get_item("data")?
        .extract()?;
    let shape: Vec<usize> = array.getattr("shape")?.extract()?;
    let strides: Vec<isize> = array.getattr("strides")?.extract()?;
    let size: usize = array.getattr("itemsize")?.extract()?;
    Ok(Located {
        addr,
        own: extent(&shape, &strides, size),
        strides,
        size,
        readonly,
    })
}

/// The bytes from an address that `shape` elements of `size` at `strides` span:
/// `Some(Some([low, high)))`, `Some(None)` for no element, None past what an address
/// can reach (refused).
type Extent = Option<Option<(i128, i128)>>;

fn extent(shape: &[usize], strides: &[isize], size: usize) -> Extent {
    if shape.contains(&0) {
        return Some(None);
    }
    let (mut low, mut high) = (0i128, i128::try_from(size).ok()?);
    for (n, s) in shape.iter().zip(strides) {
        let reach = (i128::try_from(*n).ok()? - 1).checked_mul(i128::from(*s as i64))?;
        if reach < 0 {
            low = low.checked_add(reach)?;
        } else {
            high = high.checked_add(reach)?;
        }
    }
    Some(Some((low, high)))
}

/// That the engine, walking `shape` at `strides`, stays inside the array's own
/// elements (`own`): a shape or strides the array does not have would read or write
/// past it.
fn inside(
    shape: &[usize],
    strides: &[isize],
    size: usize,
    own: Extent,
    what: &str,
) -> PyResult<()> {
    if strides.len() != shape.len() {
        return Ok(()); // (refused by `check_operands`, before anything is read)
    }
    match (extent(shape, strides, size), own) {
        (Some(None), _) => Ok(()),
        (Some(Some((low, high))), Some(Some((own_low, own_high))))
            if own_low <= low && high <= own_high =>
        {
            Ok(())
        }
        _ => Err(PyValueError::new_err(format!(
            "{what}'s elements do not span the shape {shape:?} at strides {strides:?}"
        ))),
    }
}

/// The engine's view of described arrays.
fn arrays<'a>(
    inputs: &'a [Described],
    out: &'a Described,
) -> PyResult<(Vec<ArrayArg<'a>>, ArrayArg<'a>)> {
    let args = inputs
        .iter()
        .map(|(addr, kind, strides)| {
            Ok(ArrayArg {
                addr: *addr,
                dtype: dtype(kind)?,
                strides,
                stored: Stored::default(),
            })
        })
        .collect::<PyResult<Vec<_>>>()?;
    let out = ArrayArg {
        addr: out.0,
        dtype: dtype(&out.1)?,
        strides: &out.2,
        stored: Stored::default(),
    };
    Ok((args, out))
}

/// Runs expressions on `n` threads from now on (0: one per CPU); the number they ran on.
#[pyfunction]
pub(crate) fn set_expression_threads(n: usize) -> usize {
    paralelo_expr::set_threads(n)
}

/// How many threads expressions run on.
#[pyfunction]
pub(crate) fn expression_threads() -> usize {
    paralelo_expr::current_threads()
}

/// How many CUDA devices the driver sees (0 in a build without CUDA support).
#[pyfunction]
pub(crate) fn cuda_device_count(py: Python<'_>) -> PyResult<usize> {
    #[cfg(feature = "cuda")]
    return py
        .detach(paralelo_expr::cuda::device::count)
        .map_err(expr_to_py);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = py;
        Ok(0)
    }
}

/// Why `device="cuda"` cannot run here (None: it can be tried).
#[pyfunction]
pub(crate) fn cuda_missing() -> Option<String> {
    #[cfg(feature = "cuda")]
    return paralelo_expr::cuda::device::driver_missing();
    #[cfg(not(feature = "cuda"))]
    Some("this build of paralelo has no CUDA support (built without the 'cuda' feature)".into())
}

#[cfg(feature = "cuda")]
pub(crate) mod gpu {
    //! Device memory and kernels for `paralelo._device`.
    use std::sync::{Arc, Mutex};

    use paralelo_expr::cuda::device::{self, Buffer, Device, Kernels};
    use paralelo_expr::cuda::{plan, BLOCK};
    use paralelo_expr::{ArrayArg, Program, Result};
    use pyo3::prelude::*;

    use crate::errors::expr_to_py;

    /// Kernels loaded, per (device, merged dimensions).
    pub(crate) type Loaded = Mutex<Vec<((usize, usize), Arc<Kernels>)>>;

    /// # Safety
    /// As `Device::run`: device addresses valid for what their strides reach.
    pub(super) unsafe fn run(
        loaded: &Loaded,
        program: &Program,
        ordinal: usize,
        inputs: &[ArrayArg],
        shape: &[usize],
        out: ArrayArg,
    ) -> Result<()> {
        let dev = device::device(ordinal)?;
        let mut launch = plan(program, inputs, shape, out, BLOCK, dev.max_blocks())?;
        let key = (ordinal, launch.ndim);
        let found = loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, k)| k.clone());
        let kernels = match found {
            Some(k) => k,
            None => {
                // (compiled unlocked: two threads may both compile once; either serves)
                let k = Arc::new(dev.kernels(program, launch.ndim)?);
                loaded
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((key, k.clone()));
                k
            }
        };
        // SAFETY: as the caller promised.
        unsafe { dev.run(&kernels, &mut launch) }
    }

    /// Device memory paralelo allocated, freed when the last reference goes.
    #[pyclass(frozen, module = "paralelo._native")]
    pub(crate) struct DeviceBuffer {
        buffer: Buffer,
        ordinal: usize,
        _device: Arc<Device>,
    }

    #[pymethods]
    impl DeviceBuffer {
        /// `nbytes` of uninitialised memory on device `ordinal`.
        #[staticmethod]
        fn empty(py: Python<'_>, ordinal: usize, nbytes: usize) -> PyResult<Self> {
            py.detach(|| {
                let dev = device::device(ordinal)?;
                Ok(DeviceBuffer {
                    buffer: dev.alloc(nbytes)?,
                    ordinal,
                    _device: dev,
                })
            })
            .map_err(expr_to_py)
        }

        #[getter]
        fn ptr(&self) -> u64 {
            self.buffer.addr()
        }

        #[getter]
        fn nbytes(&self) -> usize {
            self.buffer.len()
        }

        #[getter]
        fn device(&self) -> usize {
            self.ordinal
        }
    }

    /// Host memory lent for a call (an address and a length that cross `detach`).
    #[derive(Clone, Copy)]
    struct HostBytes(usize, usize);

    impl HostBytes {
        /// # Safety
        /// The memory is valid for the call (readable; writable for `slice_mut`).
        unsafe fn slice<'a>(self) -> &'a [u8] {
            if self.1 == 0 {
                return &[];
            }
            // SAFETY: as the caller promised.
            unsafe { std::slice::from_raw_parts(self.0 as *const u8, self.1) }
        }

        /// # Safety
        /// As `slice`, and nobody else uses the memory meanwhile.
        unsafe fn slice_mut<'a>(self) -> &'a mut [u8] {
            if self.1 == 0 {
                return &mut [];
            }
            // SAFETY: as the caller promised.
            unsafe { std::slice::from_raw_parts_mut(self.0 as *mut u8, self.1) }
        }
    }

    /// PTX for CUDA C++ `source` (for GPU architecture `arch`, e.g. "sm_90"; None: NVRTC's
    /// default), as the kernels are compiled.
    #[pyfunction]
    #[pyo3(signature = (source, arch=None))]
    pub(crate) fn cuda_compile(
        py: Python<'_>,
        source: &str,
        arch: Option<String>,
    ) -> PyResult<String> {
        py.detach(|| device::compile(source, arch.as_deref()))
            .map_err(expr_to_py)
    }

    /// The device that device memory at `addr` belongs to.
    #[pyfunction]
    pub(crate) fn cuda_pointer_device(py: Python<'_>, addr: u64) -> PyResult<usize> {
        py.detach(|| device::pointer_device(addr))
            .map_err(expr_to_py)
    }

    /// Waits on device `ordinal` for the work queued on `stream` (a handle from an
    /// array's `__cuda_array_interface__`).
    #[pyfunction]
    pub(crate) fn cuda_wait_stream(py: Python<'_>, ordinal: usize, stream: u64) -> PyResult<()> {
        py.detach(|| device::device(ordinal)?.wait_for(stream))
            .map_err(expr_to_py)
    }

    /// Machine code for CUDA C++ `source` on GPU architecture `arch` ("sm_90"), as the
    /// kernels are loaded.
    #[pyfunction]
    pub(crate) fn cuda_compile_cubin<'py>(
        py: Python<'py>,
        source: &str,
        arch: &str,
    ) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
        let cubin = py
            .detach(|| device::compile_cubin(source, arch))
            .map_err(expr_to_py)?;
        Ok(pyo3::types::PyBytes::new(py, &cubin))
    }

    /// Copies `nbytes` between device address `device_addr` (on device `ordinal`) and host
    /// address `host` (a numpy array the caller holds, written by nothing else meanwhile):
    /// to the device if `upload`, else from it.
    #[pyfunction]
    pub(crate) fn cuda_copy(
        py: Python<'_>,
        ordinal: usize,
        device_addr: u64,
        host: usize,
        nbytes: usize,
        upload: bool,
    ) -> PyResult<()> {
        let host = HostBytes(host, nbytes);
        py.detach(move || {
            let dev = device::device(ordinal)?;
            // SAFETY: the caller holds both arrays for the call.
            unsafe {
                if upload {
                    dev.upload_into(device_addr, host.slice())
                } else {
                    dev.download(device_addr, host.slice_mut())
                }
            }
        })
        .map_err(expr_to_py)
    }
}
