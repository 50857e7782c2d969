//! A GPU, through cudarc: kernels compiled by NVRTC for its architecture, loaded once per
//! program and dimension count by the caller, launched on the legacy default stream
//! (where cupy and torch work unless told otherwise, so their work and ours stay in
//! order). The driver and NVRTC are loaded when first asked; without them every entry
//! says which is missing.

use std::sync::{Arc, Mutex, OnceLock};

use std::ffi::CString;

use cudarc::driver::sys::{
    self as driver_sys, CUcontext, CUdevice_attribute, CUmemPool_attribute, CUstream,
};
use cudarc::driver::{
    result as driver, CudaContext, CudaFunction, CudaStream, DeviceRepr, DriverError, LaunchConfig,
    PushKernelArg,
};
use cudarc::nvrtc::result::{self as nvrtc_result, NvrtcError};
use cudarc::nvrtc::sys as nvrtc_sys;
use cudarc::nvrtc::Ptx;

use super::plan::{Args, Launch};
use super::source::kernel_source;
use crate::error::{ExprError, Result};
use crate::program::Program;

// SAFETY: `Args` is `#[repr(C)]` over plain integers, the layout of the kernels' `px_args`
// (a struct of one `long long` array), so its bytes are the parameter's.
unsafe impl DeviceRepr for Args {}

fn driver_error(what: &str, e: DriverError) -> ExprError {
    ExprError::Device(format!("CUDA {what}: {e}"))
}

/// Whether a library cudarc loads is there: found once, it stays (each look opens it).
fn present(found: &OnceLock<()>, look: unsafe fn() -> bool) -> bool {
    // SAFETY: `look` is cudarc's check, which only tries to load the library.
    if found.get().is_none() && unsafe { look() } {
        let _ = found.set(());
    }
    found.get().is_some()
}

/// Why the CUDA driver cannot be used here, if it cannot.
pub fn driver_missing() -> Option<String> {
    static FOUND: OnceLock<()> = OnceLock::new();
    (!present(&FOUND, cudarc::driver::sys::is_culib_present)).then(|| {
        "device='cuda' needs an NVIDIA GPU and its driver: libcuda.so was not found".to_string()
    })
}

/// Why NVRTC cannot be used here, if it cannot.
pub fn nvrtc_missing() -> Option<String> {
    static FOUND: OnceLock<()> = OnceLock::new();
    (!present(&FOUND, cudarc::nvrtc::sys::is_culib_present)).then(|| {
        "device='cuda' compiles its kernels with NVRTC, which was not found (libnvrtc.so.12): \
         pip install nvidia-cuda-nvrtc-cu12, or put the CUDA toolkit's lib64 on LD_LIBRARY_PATH"
            .to_string()
    })
}

/// The options every kernel compiles with: no fused multiply-adds, so that products and
/// sums round as on the CPU.
fn options(arch: Option<&str>) -> Vec<String> {
    let mut o = vec!["--fmad=false".to_string()];
    if let Some(a) = arch {
        o.push(format!("--gpu-architecture={a}"));
    }
    o
}

/// Compiles `source` with NVRTC, then reads what `get` makes of the program (PTX or
/// machine code).
fn nvrtc<T>(
    source: &str,
    arch: Option<&str>,
    get: impl FnOnce(nvrtc_sys::nvrtcProgram) -> std::result::Result<T, NvrtcError>,
) -> Result<T> {
    if let Some(why) = nvrtc_missing() {
        return Err(ExprError::Device(why));
    }
    let src = CString::new(source).map_err(|_| ExprError::Value("a NUL in the source".into()))?;
    let fail = |e: NvrtcError| ExprError::Device(format!("NVRTC failed: {e:?}"));
    let prog = nvrtc_result::create_program(&src, Some(c"paralelo_expression.cu")).map_err(fail)?;
    // SAFETY: `prog` was just created from `src`, which outlives it, and is destroyed once,
    // below.
    let out = unsafe {
        match nvrtc_result::compile_program(prog, &options(arch)) {
            Ok(()) => get(prog).map_err(fail),
            Err(e) => {
                let log = nvrtc_result::get_program_log(prog).unwrap_or_default();
                let log: Vec<u8> = log
                    .iter()
                    .map(|c| *c as u8)
                    .take_while(|c| *c != 0)
                    .collect();
                Err(ExprError::Device(format!(
                    "NVRTC could not compile the kernel ({e:?}):\n{}",
                    String::from_utf8_lossy(&log)
                )))
            }
        }
    };
    // SAFETY: as above.
    let _ = unsafe { nvrtc_result::destroy_program(prog) };
    out
}

/// PTX for `source`, for architecture `arch` ("sm_90"; None: NVRTC's default).
pub fn compile(source: &str, arch: Option<&str>) -> Result<String> {
    nvrtc(source, arch, |prog| {
        // SAFETY: `prog` is compiled and alive for the call.
        let ptx = unsafe { nvrtc_result::get_ptx(prog) }?;
        let bytes: Vec<u8> = ptx
            .iter()
            .map(|c| *c as u8)
            .take_while(|c| *c != 0)
            .collect();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    })
}

/// Machine code (a cubin) for `source` on architecture `arch` ("sm_90"). Unlike PTX, which
/// the driver compiles on and refuses from an NVRTC newer than itself, a cubin runs on
/// any driver of the same major CUDA version.
pub fn compile_cubin(source: &str, arch: &str) -> Result<Vec<u8>> {
    nvrtc(source, Some(arch), |prog| {
        let mut size = 0usize;
        // SAFETY: `prog` is compiled and alive; `size` and then `cubin` are written by NVRTC
        // within the size it reports.
        unsafe {
            nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size).result()?;
            let mut cubin = vec![0u8; size];
            nvrtc_sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr() as *mut std::ffi::c_char).result()?;
            Ok(cubin)
        }
    })
}

/// One GPU.
pub struct Device {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    arch: String,
    /// Blocks a grid takes at most: a few per multiprocessor, each thread striding on.
    max_blocks: u32,
    /// Whether memory comes from the device's stream-ordered pool.
    pooled: bool,
    /// The partial results of reductions, kept from call to call (each call waits for its
    /// kernels, holding this meanwhile).
    scratch: Mutex<Option<Buffer>>,
    /// The process that opened it (a forked child cannot use its parent's CUDA).
    pid: u32,
}

/// The devices opened, by ordinal.
static DEVICES: OnceLock<Mutex<Vec<Option<Arc<Device>>>>> = OnceLock::new();

/// Bytes a device's memory pool keeps when freed, rather than return them to the driver
/// at each synchronisation (its default keeps none: each call would map its output
/// anew).
const POOL_KEEPS: u64 = 1 << 30;

/// The thread's current CUDA context while one of ours is bound, restored when dropped:
/// cupy and torch take the current context for their current device, which a call here
/// must not change.
struct Bound(Option<CUcontext>);

impl Bound {
    fn to(ctx: &CudaContext) -> Result<Bound> {
        let previous = driver::ctx::get_current().map_err(|e| driver_error("failed", e))?;
        ctx.bind_to_thread()
            .map_err(|e| driver_error("could not use the device", e))?;
        Ok(Bound(previous))
    }
}

impl Drop for Bound {
    fn drop(&mut self) {
        // SAFETY: the context was current on this thread (or none was), and contexts live
        // for the process: setting it back is what the thread had.
        let _ = unsafe { driver::ctx::set_current(self.0.unwrap_or(std::ptr::null_mut())) };
    }
}

/// Device `ordinal`, opened (its primary context, which cupy and torch share) when first
/// asked.
pub fn device(ordinal: usize) -> Result<Arc<Device>> {
    if let Some(why) = driver_missing() {
        return Err(ExprError::Device(why));
    }
    let mut devices = DEVICES
        .get_or_init(|| Mutex::new(Vec::new()))
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(Some(d)) = devices.get(ordinal) {
        if d.pid != std::process::id() {
            return Err(ExprError::Device(
                "CUDA cannot be used in a process forked from one that used it: start workers \
                 with the 'spawn' or 'forkserver' method"
                    .into(),
            ));
        }
        return Ok(d.clone());
    }
    let count = CudaContext::device_count().map_err(|e| driver_error("found no device", e))?;
    if ordinal >= count.max(0) as usize {
        return Err(ExprError::Value(format!(
            "there is no CUDA device {ordinal}: this machine has {count}"
        )));
    }
    let previous = driver::ctx::get_current().map_err(|e| driver_error("failed", e))?;
    let ctx = CudaContext::new(ordinal).map_err(|e| driver_error("could not open the device", e));
    // (opening binds the new context: the thread's own goes back)
    let _restore = Bound(previous);
    let ctx = ctx?;
    let read = |a| {
        ctx.attribute(a)
            .map_err(|e| driver_error("could not read the device", e))
    };
    let (major, minor) = (
        read(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
        read(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
    );
    let sms = read(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
    let pooled = read(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED)? != 0;
    if pooled {
        let mut keep = POOL_KEEPS;
        // SAFETY: the device exists (counted above); the attribute takes a u64.
        unsafe {
            let dev = driver::device::get(ordinal as i32)
                .map_err(|e| driver_error("could not read the device", e))?;
            let pool = driver::device::get_default_mem_pool(dev)
                .map_err(|e| driver_error("could not read the device", e))?;
            let _ = driver::mem_pool::set_attribute(
                pool,
                CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                &mut keep as *mut u64 as *mut std::ffi::c_void,
            );
        }
    }
    let d = Arc::new(Device {
        stream: ctx.default_stream(),
        ctx,
        arch: format!("sm_{major}{minor}"),
        max_blocks: (sms.max(1) as u32) * 8,
        pooled,
        scratch: Mutex::new(None),
        pid: std::process::id(),
    });
    if devices.len() <= ordinal {
        devices.resize(ordinal + 1, None);
    }
    devices[ordinal] = Some(d.clone());
    Ok(d)
}

/// How many devices the driver sees (0 without a driver).
pub fn count() -> Result<usize> {
    if driver_missing().is_some() {
        return Ok(0);
    }
    CudaContext::device_count()
        .map(|n| n.max(0) as usize)
        .map_err(|e| driver_error("found no device", e))
}

/// The device that device memory at `addr` belongs to.
pub fn pointer_device(addr: u64) -> Result<usize> {
    if let Some(why) = driver_missing() {
        return Err(ExprError::Device(why));
    }
    driver::init().map_err(|e| driver_error("could not start", e))?;
    let mut ordinal: i32 = -1;
    // SAFETY: the attribute writes one int, into `ordinal`.
    unsafe {
        driver_sys::cuPointerGetAttribute(
            &mut ordinal as *mut i32 as *mut std::ffi::c_void,
            driver_sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
            addr,
        )
    }
    .result()
    .map_err(|e| ExprError::Value(format!("address {addr:#x} is not device memory ({e})")))?;
    Ok(ordinal.max(0) as usize)
}

/// A program's kernels, loaded on one device.
pub struct Kernels {
    functions: Vec<(&'static str, CudaFunction)>,
}

/// Device memory paralelo allocated: freed when dropped (from any thread).
pub struct Buffer {
    addr: u64,
    len: usize,
    pooled: bool,
    ctx: Arc<CudaContext>,
}

impl Buffer {
    pub fn addr(&self) -> u64 {
        self.addr
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // (a buffer may go on any thread, with any context current, or none)
        let Ok(_bound) = Bound::to(&self.ctx) else {
            return;
        };
        // SAFETY: `addr` was allocated by `Device::alloc` in this context, the same way, and
        // is freed once; every kernel that used it was waited for.
        let _ = unsafe {
            if self.pooled {
                driver::free_async(self.addr, std::ptr::null_mut())
            } else {
                driver::free_sync(self.addr)
            }
        };
    }
}

impl Device {
    pub fn max_blocks(&self) -> u32 {
        self.max_blocks
    }

    /// Compiles and loads `program`'s kernels for `ndim` merged dimensions: machine code
    /// for this GPU, or PTX where NVRTC does not know it (a GPU newer than NVRTC, whose
    /// driver is newer too and compiles the PTX on).
    pub fn kernels(&self, program: &Program, ndim: usize) -> Result<Kernels> {
        let source = kernel_source(program, ndim);
        let image = match compile_cubin(&source, &self.arch) {
            Ok(cubin) => Ptx::from_binary(cubin),
            Err(_) => Ptx::from_src(compile(&source, None)?),
        };
        let _bound = Bound::to(&self.ctx)?;
        let module = self
            .ctx
            .load_module(image)
            .map_err(|e| driver_error("could not load the kernels", e))?;
        let names: &[&'static str] = if program.reduce.is_some() {
            &["px_partial", "px_finish", "px_rows", "px_row_threads"]
        } else {
            &["px_map"]
        };
        let functions = names
            .iter()
            .map(|n| {
                module
                    .load_function(n)
                    .map(|f| (*n, f))
                    .map_err(|e| driver_error("could not find a kernel", e))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Kernels { functions })
    }

    /// Runs `launch`'s steps with `kernels`, and waits for them.
    ///
    /// # Safety
    /// The addresses in `launch` are device memory of this device, valid for every
    /// element its strides reach, the output written by nothing else meanwhile.
    pub unsafe fn run(&self, kernels: &Kernels, launch: &mut Launch) -> Result<()> {
        let _bound = Bound::to(&self.ctx)?;
        let mut scratch = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        if launch.scratch > 0 {
            if scratch.as_ref().is_none_or(|b| b.len() < launch.scratch) {
                *scratch = None;
                *scratch = Some(self.alloc(launch.scratch.max(64 << 10))?);
            }
            launch.set_scratch(scratch.as_ref().expect("allocated").addr());
        }
        for step in &launch.steps {
            let (_, f) = kernels
                .functions
                .iter()
                .find(|(n, _)| *n == step.kernel)
                .ok_or_else(|| ExprError::Device(format!("no kernel {}", step.kernel)))?;
            let config = LaunchConfig {
                grid_dim: (step.grid, 1, 1),
                block_dim: (step.block, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut builder = self.stream.launch_builder(f);
            builder.arg(&launch.args);
            // SAFETY: the kernel takes one `px_args` by value, which `Args` is; the memory it
            // reaches is valid as the caller promised.
            unsafe { builder.launch(config) }.map_err(|e| driver_error("kernel failed", e))?;
        }
        self.synchronize()
    }

    fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| driver_error("kernel failed", e))
    }

    /// `bytes` of uninitialised device memory.
    pub fn alloc(&self, bytes: usize) -> Result<Buffer> {
        let _bound = Bound::to(&self.ctx)?;
        // SAFETY: plain bytes, every pattern valid; the caller writes before anything reads.
        let addr = unsafe {
            if self.pooled {
                driver::malloc_async(std::ptr::null_mut(), bytes.max(1))
            } else {
                driver::malloc_sync(bytes.max(1))
            }
        }
        .map_err(|e| driver_error("could not allocate device memory", e))?;
        Ok(Buffer {
            addr,
            len: bytes,
            pooled: self.pooled,
            ctx: self.ctx.clone(),
        })
    }

    /// Makes what follows wait for the work queued on `stream` (a handle another library
    /// gave with its array), by waiting for it here.
    pub fn wait_for(&self, stream: u64) -> Result<()> {
        let _bound = Bound::to(&self.ctx)?;
        // SAFETY: a stream handle of this context, as `__cuda_array_interface__` promises.
        unsafe { driver::stream::synchronize(stream as CUstream) }
            .map_err(|e| driver_error("could not wait for the array's stream", e))
    }

    /// Copies `host` to device address `addr`, and waits.
    ///
    /// # Safety
    /// `addr` is device memory of this device, valid for `host.len()` bytes, used by
    /// nothing else meanwhile.
    pub unsafe fn upload_into(&self, addr: u64, host: &[u8]) -> Result<()> {
        let _bound = Bound::to(&self.ctx)?;
        // SAFETY: as the caller promised; `host` is borrowed for the call, which waits.
        unsafe { driver::memcpy_htod_async(addr, host, self.stream.cu_stream()) }
            .map_err(|e| driver_error("could not copy to the device", e))?;
        self.synchronize()
    }

    /// Copies `host.len()` bytes from device address `addr` into `host`, and waits.
    ///
    /// # Safety
    /// `addr` is device memory of this device, valid for `host.len()` bytes.
    pub unsafe fn download(&self, addr: u64, host: &mut [u8]) -> Result<()> {
        let _bound = Bound::to(&self.ctx)?;
        // SAFETY: as the caller promised; `host` is ours for the call, which waits.
        unsafe { driver::memcpy_dtoh_async(host, addr, self.stream.cu_stream()) }
            .map_err(|e| driver_error("could not copy from the device", e))?;
        self.synchronize()
    }
}
