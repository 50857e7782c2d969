//! A GPU, through cudarc: kernels compiled by NVRTC for its architecture, loaded once per
//! program and dimension count by the caller, launched on the legacy default stream
//! (where cupy and torch work unless told otherwise, so their work and ours stay in
//! order). The driver and NVRTC are loaded when first asked; without them every entry
//! says which is missing.

use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{
    result as driver, CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr,
    DriverError, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions, Ptx};

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

/// Why the CUDA driver cannot be used here, if it cannot.
pub fn driver_missing() -> Option<String> {
    // SAFETY: only tries to load the library (cudarc's documented check).
    let present = unsafe { cudarc::driver::sys::is_culib_present() };
    (!present).then(|| {
        "device='cuda' needs an NVIDIA GPU and its driver: libcuda.so was not found".to_string()
    })
}

/// Why NVRTC cannot be used here, if it cannot.
pub fn nvrtc_missing() -> Option<String> {
    // SAFETY: as `driver_missing`.
    let present = unsafe { cudarc::nvrtc::sys::is_culib_present() };
    (!present).then(|| {
        "device='cuda' compiles its kernels with NVRTC, which was not found (libnvrtc.so.12): \
         pip install nvidia-cuda-nvrtc-cu12, or put the CUDA toolkit's lib64 on LD_LIBRARY_PATH"
            .to_string()
    })
}

/// PTX for `source`, for architecture `arch` ("sm_90"; None: NVRTC's default, which the
/// driver compiles on for any newer GPU). Arithmetic is not contracted into fused
/// multiply-adds, so that results round as on the CPU.
pub fn compile(source: &str, arch: Option<&'static str>) -> Result<String> {
    if let Some(why) = nvrtc_missing() {
        return Err(ExprError::Device(why));
    }
    let options = CompileOptions {
        fmad: Some(false),
        arch,
        name: Some("paralelo_expression.cu".into()),
        ..Default::default()
    };
    compile_ptx_with_opts(source, options)
        .map(|ptx| ptx.to_src())
        .map_err(|e| ExprError::Device(format!("NVRTC could not compile the kernel: {e:?}")))
}

/// One GPU.
pub struct Device {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    arch: &'static str,
    /// Blocks a grid takes at most: a few per multiprocessor, each thread striding on.
    max_blocks: u32,
    /// The process that opened it (a forked child cannot use its parent's CUDA).
    pid: u32,
}

/// The devices opened, by ordinal.
static DEVICES: OnceLock<Mutex<Vec<Option<Arc<Device>>>>> = OnceLock::new();

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
    let ctx =
        CudaContext::new(ordinal).map_err(|e| driver_error("could not open the device", e))?;
    let (major, minor) = ctx
        .compute_capability()
        .map_err(|e| driver_error("could not read the device", e))?;
    let sms = ctx
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .map_err(|e| driver_error("could not read the device", e))?;
    let d = Arc::new(Device {
        stream: ctx.default_stream(),
        ctx,
        // (one string per device opened, for NVRTC's `&'static str`)
        arch: Box::leak(format!("sm_{major}{minor}").into_boxed_str()),
        max_blocks: (sms.max(1) as u32) * 8,
        pid: std::process::id(),
    });
    if devices.len() <= ordinal {
        devices.resize(ordinal + 1, None);
    }
    devices[ordinal] = Some(d.clone());
    Ok(d)
}

/// A program's kernels, loaded on one device.
pub struct Kernels {
    functions: Vec<(&'static str, CudaFunction)>,
}

/// Device memory paralelo allocated: freed when dropped.
pub struct Buffer {
    slice: CudaSlice<u8>,
    addr: u64,
}

impl Buffer {
    pub fn addr(&self) -> u64 {
        self.addr
    }
    pub fn len(&self) -> usize {
        self.slice.len()
    }
    pub fn is_empty(&self) -> bool {
        self.slice.is_empty()
    }
}

impl Device {
    pub fn max_blocks(&self) -> u32 {
        self.max_blocks
    }

    /// Compiles and loads `program`'s kernels for `ndim` merged dimensions.
    pub fn kernels(&self, program: &Program, ndim: usize) -> Result<Kernels> {
        let source = kernel_source(program, ndim);
        // An NVRTC older than the GPU does not know its architecture: PTX for its default
        // one, which the driver compiles on, serves.
        let ptx = compile(&source, Some(self.arch)).or_else(|_| compile(&source, None))?;
        let module = self
            .ctx
            .load_module(Ptx::from_src(ptx))
            .map_err(|e| driver_error("could not load the kernels", e))?;
        let names: &[&'static str] = if program.reduce.is_some() {
            &["px_partial", "px_finish", "px_rows"]
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
        let scratch = if launch.scratch > 0 {
            let b = self.alloc(launch.scratch)?;
            launch.set_scratch(b.addr());
            Some(b)
        } else {
            None
        };
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
        self.synchronize()?;
        drop(scratch);
        Ok(())
    }

    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| driver_error("kernel failed", e))
    }

    /// `bytes` of uninitialised device memory.
    pub fn alloc(&self, bytes: usize) -> Result<Buffer> {
        // SAFETY: bytes, every pattern valid; the caller writes before anything reads.
        let slice = unsafe { self.stream.alloc::<u8>(bytes.max(1)) }
            .map_err(|e| driver_error("could not allocate device memory", e))?;
        let addr = slice.device_ptr(&self.stream).0;
        Ok(Buffer { slice, addr })
    }

    /// Copies `host` to device address `addr`, and waits.
    ///
    /// # Safety
    /// `addr` is device memory of this device, valid for `host.len()` bytes, used by
    /// nothing else meanwhile.
    pub unsafe fn upload_into(&self, addr: u64, host: &[u8]) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| driver_error("could not use the device", e))?;
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
        self.ctx
            .bind_to_thread()
            .map_err(|e| driver_error("could not use the device", e))?;
        // SAFETY: as the caller promised; `host` is ours for the call, which waits.
        unsafe { driver::memcpy_dtoh_async(host, addr, self.stream.cu_stream()) }
            .map_err(|e| driver_error("could not copy from the device", e))?;
        self.synchronize()
    }
}
