//! `tdl-cuda`: the CUDA driver API for tdlc, loaded at run time.
//!
//! tdlc builds and starts on machines without CUDA: nothing here links
//! against `libcuda`. [`Cuda::open`] loads the driver library with `dlopen`
//! the first time it is needed (see [`driver`] for the names tried and
//! `$TDL_CUDA_DRIVER`); where there is none it returns
//! [`CudaError::NoDriver`], whose message starts with "no CUDA driver found",
//! names every library tried with the loader's reason, and ends with
//! "--backend gpu needs an NVIDIA GPU and its driver". No CUDA toolkit is
//! needed either: kernels arrive as PTX text, which the driver's JIT compiles
//! for the device ([`Cuda::load_ptx`]).
//!
//! # Use
//! ```no_run
//! use tdl_cuda::{Cuda, KernelArg};
//! # fn main() -> Result<(), tdl_cuda::CudaError> {
//! # let ptx = "";
//! let gpu = Cuda::open(0)?;
//! let module = gpu.load_ptx(ptx)?;
//! let saxpy = module.function("saxpy")?;
//! let x = gpu.upload(&[1.0, 2.0, 3.0])?;
//! let y = gpu.alloc(3)?; // zeroed
//! let args = [KernelArg::Ptr(&x), KernelArg::Ptr(&y), KernelArg::F32(2.0), KernelArg::I64(3)];
//! gpu.launch(&saxpy, [1, 1, 1], [32, 1, 1], 0, &args)?;
//! let mut out = [0.0; 3];
//! gpu.download(&y, &mut out)?; // waits for the kernel
//! # Ok(()) }
//! ```
//! A `gpu.func` from MLIR's `gpu-to-nvvm` takes each memref as
//! `3 + 2·rank` parameters: pass [`KernelArg::MemRef`] (the ABI is in
//! [`args`]).
//!
//! # Contexts, threads and streams
//! A [`Cuda`] holds a reference on the device's *primary context*
//! (`cuDevicePrimaryCtxRetain`, released when the last [`Cuda`] clone,
//! buffer, module and function of it is dropped), and makes it current on
//! the calling thread (`cuCtxSetCurrent`) at the start of every call, so it
//! may be used from any thread: [`Cuda`], [`GpuModule`], [`GpuFunction`] and
//! [`DeviceBuffer`] are `Send + Sync`. Two [`Cuda`]s of one device share its
//! primary context, so their buffers and functions mix. All work goes to the
//! legacy default stream (stream 0), so it runs in the order it was issued:
//! a launch returns before the kernel ends, and [`Cuda::download`] and
//! [`Cuda::synchronize`] wait for it. An error inside a kernel (e.g. an
//! illegal address) is reported by the next call that waits, and the driver
//! treats it as sticky: the context is unusable afterwards.
//!
//! # Tests
//! `cargo test -p tdl-cuda` passes on any machine. Everywhere: the argument
//! packing (unit tests); the "no CUDA driver found" error for a missing
//! `$TDL_CUDA_DRIVER` (`tests/no_driver_env.rs`); and every GPU code path
//! against a mock driver in host memory (`tests/mock_driver.rs` builds
//! `tests/mock/libcuda_mock.c` with `cc`), which checks the FFI plumbing and
//! that buffers, modules, events and the context are all released.
//! `tests/driver.rs` uses the real driver search: without `libcuda` it
//! checks the error; with it, it JIT-compiles hand-written PTX and checks
//! the numbers of pointer and memref kernels, a launch with 64 KiB of
//! dynamic shared memory, timing, use from another thread and the error
//! paths (`tests/common/mod.rs`). `cargo run -p tdl-cuda --example
//! cuda_info` prints the device or the reason there is none.
//!
//! # No panics
//! No input makes this crate panic: every `CUresult` other than
//! `CUDA_SUCCESS` becomes a [`CudaError::Driver`] with the function's name
//! and the driver's `cuGetErrorName`/`cuGetErrorString` text, and misuse
//! (length mismatches, launch shapes beyond the device's limits, memrefs
//! reaching outside their buffer, an argument list that does not match the
//! kernel's parameters where the driver can tell, CUDA 12.4+) is a
//! [`CudaError::Usage`] returned before anything reaches the driver.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]
#![warn(missing_docs, clippy::undocumented_unsafe_blocks)]

pub mod args;
pub mod driver;

use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::{Arc, OnceLock};

pub use args::{pack_params, KernelArg, ParamValue};
pub use driver::DRIVER_ENV;
use driver::{Api, CuDevice, CuDevicePtr, CuHandle};

/// What went wrong talking to the GPU.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// No usable driver library: the message says which were tried and why.
    #[error("no CUDA driver found: {0}")]
    NoDriver(String),
    /// A driver call returned an error.
    #[error("{call} failed: {message} (CUresult {code})")]
    Driver {
        /// The driver function, e.g. `"cuModuleLoadDataEx"`.
        call: &'static str,
        /// The `CUresult`.
        code: i32,
        /// `cuGetErrorName: cuGetErrorString`, plus context (e.g. the JIT log).
        message: String,
    },
    /// A call this crate refuses before reaching the driver.
    #[error("{0}")]
    Usage(String),
}

/// Kernels that need more dynamic shared memory than this must opt in
/// (`CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`).
const DEFAULT_SHARED_LIMIT: u32 = 48 * 1024;
/// The size of the buffer the JIT writes its error log into.
const JIT_LOG_BYTES: usize = 16 * 1024;

/// A driver handle; `Send + Sync` because the driver API is thread-safe and
/// every use makes the owning context current first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Handle(CuHandle);
// SAFETY: CUDA driver handles are opaque references into the driver, which
// may be used from any thread (the driver API is thread-safe); this crate
// binds the owning context on the calling thread before each use.
unsafe impl Send for Handle {}
// SAFETY: as for `Send`: shared use only passes the handle to the driver.
unsafe impl Sync for Handle {}

/// A retained primary context; released on drop.
struct Context {
    api: &'static Api,
    device: CuDevice,
    ctx: Handle,
}

impl Context {
    /// Makes this context current on the calling thread.
    fn bind(&self) -> Result<(), CudaError> {
        // SAFETY: `ctx` is a primary context retained by this value.
        self.api.check("cuCtxSetCurrent", unsafe { (self.api.cu_ctx_set_current)(self.ctx.0) })
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: releases the reference `Cuda::open` retained; everything
        // allocated in it holds an `Arc<Context>`, so it is already freed.
        let _ = unsafe { (self.api.cu_device_primary_ctx_release)(self.device) };
    }
}

/// The device limits launches are checked against.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_threads: u32,
    max_block: [u32; 3],
    max_grid: [u32; 3],
    max_shared_optin: u32,
}

/// One device's primary context: loads modules, owns buffers, launches.
/// Cheap to clone (the clones share the context). `Send + Sync`.
#[derive(Clone)]
pub struct Cuda {
    ctx: Arc<Context>,
    name: String,
    capability: (u32, u32),
    driver_version: i32,
    limits: Limits,
}

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cuda")
            .field("device", &self.ctx.device)
            .field("name", &self.name)
            .field("capability", &self.capability)
            .field("driver_version", &self.driver_version)
            .finish()
    }
}

impl Cuda {
    /// Loads the driver (once per process), initialises it and retains the
    /// primary context of device `ordinal`.
    pub fn open(ordinal: usize) -> Result<Cuda, CudaError> {
        let api = driver::api()?;
        // SAFETY: cuInit takes flags, which must be 0; calling it again is allowed.
        api.check("cuInit", unsafe { (api.cu_init)(0) })?;
        let mut version: c_int = 0;
        // SAFETY: valid out-pointer.
        api.check("cuDriverGetVersion", unsafe { (api.cu_driver_get_version)(&mut version) })?;
        let mut count: c_int = 0;
        // SAFETY: valid out-pointer.
        api.check("cuDeviceGetCount", unsafe { (api.cu_device_get_count)(&mut count) })?;
        let index = match c_int::try_from(ordinal) {
            Ok(i) if i < count => i,
            _ => return Err(CudaError::Usage(format!("no CUDA device {ordinal}: this machine has {count}"))),
        };
        let mut device: CuDevice = 0;
        // SAFETY: valid out-pointer, ordinal in 0..count.
        api.check("cuDeviceGet", unsafe { (api.cu_device_get)(&mut device, index) })?;
        let mut raw_ctx: CuHandle = std::ptr::null_mut();
        // SAFETY: valid out-pointer and device.
        api.check("cuDevicePrimaryCtxRetain", unsafe { (api.cu_device_primary_ctx_retain)(&mut raw_ctx, device) })?;
        // From here on, dropping `ctx` releases the retained context.
        let ctx = Arc::new(Context { api, device, ctx: Handle(raw_ctx) });
        ctx.bind()?;

        let mut name = [0 as c_char; 256];
        // SAFETY: the buffer holds `len` bytes; the driver NUL-terminates.
        api.check("cuDeviceGetName", unsafe { (api.cu_device_get_name)(name.as_mut_ptr(), 256, device) })?;
        let name_bytes: Vec<u8> = name.iter().map(|c| *c as u8).take_while(|b| *b != 0).collect();
        let name = String::from_utf8_lossy(&name_bytes).into_owned();

        let attr = |attribute: c_int| -> Result<u32, CudaError> {
            let mut v: c_int = 0;
            // SAFETY: valid out-pointer, device and attribute number.
            api.check("cuDeviceGetAttribute", unsafe { (api.cu_device_get_attribute)(&mut v, attribute, device) })?;
            Ok(u32::try_from(v).unwrap_or(0))
        };
        let capability = (attr(driver::ATTR_COMPUTE_CAPABILITY_MAJOR)?, attr(driver::ATTR_COMPUTE_CAPABILITY_MINOR)?);
        let dims =
            |first: c_int| -> Result<[u32; 3], CudaError> { Ok([attr(first)?, attr(first + 1)?, attr(first + 2)?]) };
        let limits = Limits {
            max_threads: attr(driver::ATTR_MAX_THREADS_PER_BLOCK)?,
            max_block: dims(driver::ATTR_MAX_BLOCK_DIM_X)?,
            max_grid: dims(driver::ATTR_MAX_GRID_DIM_X)?,
            max_shared_optin: attr(driver::ATTR_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?,
        };
        Ok(Cuda { ctx, name, capability, driver_version: version, limits })
    }

    /// The device's name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn device_name(&self) -> String {
        self.name.clone()
    }

    /// The compute capability (major, minor), e.g. (9, 0).
    pub fn compute_capability(&self) -> (u32, u32) {
        self.capability
    }

    /// `cuDriverGetVersion`: 1000·major + 10·minor, e.g. 13000 for CUDA 13.0.
    pub fn driver_version(&self) -> i32 {
        self.driver_version
    }

    /// The most shared memory (static + dynamic) a block may opt in to, in bytes.
    pub fn max_shared_bytes(&self) -> u32 {
        self.limits.max_shared_optin
    }

    /// JIT-compiles PTX text for this device (`cuModuleLoadDataEx`); on
    /// failure the error's message holds the JIT's error log.
    pub fn load_ptx(&self, ptx: &str) -> Result<GpuModule, CudaError> {
        if ptx.as_bytes().contains(&0) {
            return Err(CudaError::Usage("PTX text contains a NUL byte".into()));
        }
        let mut image = Vec::with_capacity(ptx.len() + 1);
        image.extend_from_slice(ptx.as_bytes());
        image.push(0);
        let mut log = vec![0u8; JIT_LOG_BYTES];
        let mut options = [driver::JIT_ERROR_LOG_BUFFER, driver::JIT_ERROR_LOG_BUFFER_SIZE_BYTES];
        // The size option's value is the unsigned int itself, in the pointer slot.
        let mut values = [log.as_mut_ptr().cast::<c_void>(), std::ptr::without_provenance_mut(JIT_LOG_BYTES)];
        let api = self.ctx.api;
        self.ctx.bind()?;
        let mut module: CuHandle = std::ptr::null_mut();
        // SAFETY: `image` is NUL-terminated PTX; two options with their
        // values, the log buffer being JIT_LOG_BYTES long and alive for the call.
        let code = unsafe {
            (api.cu_module_load_data_ex)(
                &mut module,
                image.as_ptr().cast(),
                2,
                options.as_mut_ptr(),
                values.as_mut_ptr(),
            )
        };
        if code != driver::CUDA_SUCCESS {
            let text = String::from_utf8_lossy(log.split(|b| *b == 0).next().unwrap_or_default());
            let text = text.trim();
            let context = if text.is_empty() { String::new() } else { format!("; JIT log:\n{text}") };
            return Err(api.error("cuModuleLoadDataEx", code, &context));
        }
        Ok(GpuModule { inner: Arc::new(ModuleInner { ctx: self.ctx.clone(), module: Handle(module) }) })
    }

    /// A zeroed buffer of `elems` f32 (4-byte) elements; 0 allocates 4 bytes.
    pub fn alloc(&self, elems: usize) -> Result<DeviceBuffer, CudaError> {
        let buf = self.alloc_uninit(elems)?;
        // SAFETY: the allocation is `bytes` long.
        let code = unsafe { (self.ctx.api.cu_memset_d8)(buf.ptr, 0, buf.bytes) };
        self.ctx.api.check("cuMemsetD8", code)?;
        Ok(buf)
    }

    /// A buffer holding a copy of `data`.
    pub fn upload(&self, data: &[f32]) -> Result<DeviceBuffer, CudaError> {
        self.upload_words(data.as_ptr().cast(), data.len())
    }

    /// A buffer holding a copy of `data` (the same type: bytes are bytes).
    pub fn upload_i32(&self, data: &[i32]) -> Result<DeviceBuffer, CudaError> {
        self.upload_words(data.as_ptr().cast(), data.len())
    }

    /// Copies `buf` into `out`, whose length must be `buf.len()`; waits for
    /// the work issued before it.
    pub fn download(&self, buf: &DeviceBuffer, out: &mut [f32]) -> Result<(), CudaError> {
        self.download_words(buf, out.as_mut_ptr().cast(), out.len())
    }

    /// [`Cuda::download`] into i32s.
    pub fn download_i32(&self, buf: &DeviceBuffer, out: &mut [i32]) -> Result<(), CudaError> {
        self.download_words(buf, out.as_mut_ptr().cast(), out.len())
    }

    /// Waits for all work issued to the context (`cuCtxSynchronize`).
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.ctx.bind()?;
        // SAFETY: no arguments; the context is current.
        self.ctx.api.check("cuCtxSynchronize", unsafe { (self.ctx.api.cu_ctx_synchronize)() })
    }

    /// Launches `f` on stream 0 with `grid` blocks of `block` threads and
    /// `shared_bytes` of dynamic shared memory (above 48 KiB the function's
    /// `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES` is raised first).
    /// Returns once the launch is queued; errors inside the kernel show up
    /// at the next call that waits.
    pub fn launch(
        &self,
        f: &GpuFunction,
        grid: [u32; 3],
        block: [u32; 3],
        shared_bytes: u32,
        args: &[KernelArg<'_>],
    ) -> Result<(), CudaError> {
        self.check_shape(grid, block, shared_bytes)?;
        if f.module.ctx.ctx != self.ctx.ctx {
            return Err(CudaError::Usage(format!("kernel `{}` belongs to another CUDA context", f.name)));
        }
        for (i, arg) in args.iter().enumerate() {
            let buf = match arg {
                KernelArg::MemRef { buf, .. } | KernelArg::Ptr(buf) => buf,
                _ => continue,
            };
            if buf.ctx.ctx != self.ctx.ctx {
                return Err(CudaError::Usage(format!("kernel argument {i}: a buffer of another CUDA context")));
            }
        }
        let params = pack_params(args)?;
        self.ctx.bind()?;
        f.check_params(&params)?;
        let api = self.ctx.api;
        if shared_bytes > DEFAULT_SHARED_LIMIT {
            let bytes = c_int::try_from(shared_bytes).unwrap_or(c_int::MAX);
            // SAFETY: a function of the current context and a valid attribute.
            let code = unsafe {
                (api.cu_func_set_attribute)(f.func.0, driver::FUNC_ATTR_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes)
            };
            api.check("cuFuncSetAttribute", code)?;
        }
        // Each value in its own 8-byte slot; `slots` is not resized after
        // `pointers` is taken, so the addresses stay valid through the call.
        let mut slots: Vec<u64> = params.iter().map(ParamValue::slot).collect();
        let mut pointers: Vec<*mut c_void> = slots.iter_mut().map(|s| (s as *mut u64).cast::<c_void>()).collect();
        let kernel_params = if pointers.is_empty() { std::ptr::null_mut() } else { pointers.as_mut_ptr() };
        // SAFETY: `f` is a function of the current context; the shape was
        // checked against the device's limits; `kernel_params` holds one
        // pointer per parameter to a value of at least its size (checked
        // against the kernel's own parameter list where the driver can say).
        let code = unsafe {
            (api.cu_launch_kernel)(
                f.func.0,
                grid[0],
                grid[1],
                grid[2],
                block[0],
                block[1],
                block[2],
                shared_bytes,
                std::ptr::null_mut(),
                kernel_params,
                std::ptr::null_mut(),
            )
        };
        api.check("cuLaunchKernel", code)
    }

    /// Runs `f` (typically launches) once between two events on stream 0 and
    /// returns the GPU time between them in milliseconds
    /// (`cuEventRecord`/`cuEventElapsedTime`, ~0.5 µs resolution).
    pub fn time_ms(&self, mut f: impl FnMut() -> Result<(), CudaError>) -> Result<f32, CudaError> {
        let start = self.event()?;
        let end = self.event()?;
        let api = self.ctx.api;
        self.ctx.bind()?;
        // SAFETY: an event of the current context, the default stream.
        api.check("cuEventRecord", unsafe { (api.cu_event_record)(start.event.0, std::ptr::null_mut()) })?;
        f()?;
        self.ctx.bind()?;
        // SAFETY: as above.
        api.check("cuEventRecord", unsafe { (api.cu_event_record)(end.event.0, std::ptr::null_mut()) })?;
        // SAFETY: a recorded event of the current context.
        api.check("cuEventSynchronize", unsafe { (api.cu_event_synchronize)(end.event.0) })?;
        let mut ms = 0f32;
        // SAFETY: valid out-pointer; both events recorded and complete.
        let code = unsafe { (api.cu_event_elapsed_time)(&mut ms, start.event.0, end.event.0) };
        api.check("cuEventElapsedTime", code)?;
        Ok(ms)
    }

    fn check_shape(&self, grid: [u32; 3], block: [u32; 3], shared_bytes: u32) -> Result<(), CudaError> {
        let usage = |why: String| Err(CudaError::Usage(why));
        let limits = &self.limits;
        if grid.contains(&0) || block.contains(&0) {
            return usage(format!("launch with an empty grid {grid:?} or block {block:?}"));
        }
        let threads = block.iter().map(|b| u64::from(*b)).product::<u64>();
        let max_threads = limits.max_threads.min(1024);
        if threads > u64::from(max_threads) {
            return usage(format!("block {block:?} has {threads} threads; the device allows {max_threads}"));
        }
        for (axis, ((g, b), (mg, mb))) in
            grid.iter().zip(&block).zip(limits.max_grid.iter().zip(&limits.max_block)).enumerate()
        {
            if g > mg || b > mb {
                return usage(format!(
                    "grid {grid:?} × block {block:?}: axis {axis} allows at most {mg} blocks of {mb} threads"
                ));
            }
        }
        if shared_bytes > limits.max_shared_optin {
            return usage(format!(
                "{shared_bytes} bytes of shared memory requested; the device allows {} per block",
                limits.max_shared_optin
            ));
        }
        Ok(())
    }

    fn alloc_uninit(&self, elems: usize) -> Result<DeviceBuffer, CudaError> {
        let bytes = elems
            .checked_mul(4)
            .ok_or_else(|| CudaError::Usage(format!("a buffer of {elems} elements is too large")))?
            .max(4);
        self.ctx.bind()?;
        let mut ptr: CuDevicePtr = 0;
        // SAFETY: valid out-pointer, nonzero size.
        self.ctx.api.check("cuMemAlloc", unsafe { (self.ctx.api.cu_mem_alloc)(&mut ptr, bytes) })?;
        Ok(DeviceBuffer { ctx: self.ctx.clone(), ptr, len: elems, bytes })
    }

    /// Uploads `len` 4-byte words from `src`.
    fn upload_words(&self, src: *const c_void, len: usize) -> Result<DeviceBuffer, CudaError> {
        if len == 0 {
            return self.alloc(0);
        }
        let buf = self.alloc_uninit(len)?;
        // SAFETY: `src` points to `len` readable words (a live slice), the
        // allocation holds `buf.bytes == 4·len` bytes.
        let code = unsafe { (self.ctx.api.cu_memcpy_htod)(buf.ptr, src, buf.bytes) };
        self.ctx.api.check("cuMemcpyHtoD", code)?;
        Ok(buf)
    }

    /// Downloads `buf` into `len` 4-byte words at `dst`.
    fn download_words(&self, buf: &DeviceBuffer, dst: *mut c_void, len: usize) -> Result<(), CudaError> {
        if buf.len != len {
            return Err(CudaError::Usage(format!("download of a {}-element buffer into {len} elements", buf.len)));
        }
        if buf.ctx.ctx != self.ctx.ctx {
            return Err(CudaError::Usage("download of a buffer of another CUDA context".into()));
        }
        if len == 0 {
            return Ok(());
        }
        self.ctx.bind()?;
        // SAFETY: `dst` points to `len` writable words (a live slice) and
        // the allocation holds at least 4·len bytes.
        let code = unsafe { (self.ctx.api.cu_memcpy_dtoh)(dst, buf.ptr, 4 * len) };
        self.ctx.api.check("cuMemcpyDtoH", code)
    }

    fn event(&self) -> Result<Event, CudaError> {
        self.ctx.bind()?;
        let mut event: CuHandle = std::ptr::null_mut();
        // SAFETY: valid out-pointer; flags 0 = CU_EVENT_DEFAULT (timing enabled).
        self.ctx.api.check("cuEventCreate", unsafe { (self.ctx.api.cu_event_create)(&mut event, 0) })?;
        Ok(Event { ctx: self.ctx.clone(), event: Handle(event) })
    }
}

/// An event, destroyed on drop.
struct Event {
    ctx: Arc<Context>,
    event: Handle,
}

impl Drop for Event {
    fn drop(&mut self) {
        if self.ctx.bind().is_ok() {
            // SAFETY: an event this value created and owns.
            let _ = unsafe { (self.ctx.api.cu_event_destroy)(self.event.0) };
        }
    }
}

/// A module and the context it lives in; unloaded on drop.
struct ModuleInner {
    ctx: Arc<Context>,
    module: Handle,
}

impl Drop for ModuleInner {
    fn drop(&mut self) {
        if self.ctx.bind().is_ok() {
            // SAFETY: a module this value loaded and owns; its functions
            // hold an `Arc` of it, so none is still in use.
            let _ = unsafe { (self.ctx.api.cu_module_unload)(self.module.0) };
        }
    }
}

/// JIT-compiled PTX (a `CUmodule`), unloaded when it and its functions are dropped.
#[derive(Clone)]
pub struct GpuModule {
    inner: Arc<ModuleInner>,
}

impl std::fmt::Debug for GpuModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuModule").field("module", &self.inner.module.0).finish()
    }
}

impl GpuModule {
    /// The kernel (`.entry`) called `name`.
    pub fn function(&self, name: &str) -> Result<GpuFunction, CudaError> {
        let cname =
            CString::new(name).map_err(|_| CudaError::Usage(format!("kernel name {name:?} contains a NUL byte")))?;
        let ctx = &self.inner.ctx;
        ctx.bind()?;
        let mut func: CuHandle = std::ptr::null_mut();
        // SAFETY: valid out-pointer, a loaded module, a NUL-terminated name.
        let code = unsafe { (ctx.api.cu_module_get_function)(&mut func, self.inner.module.0, cname.as_ptr()) };
        if code != driver::CUDA_SUCCESS {
            return Err(ctx.api.error("cuModuleGetFunction", code, &format!(" (kernel `{name}`)")));
        }
        Ok(GpuFunction {
            module: self.inner.clone(),
            func: Handle(func),
            name: name.to_string(),
            params: OnceLock::new(),
        })
    }
}

/// A kernel of a [`GpuModule`]; keeps its module loaded.
pub struct GpuFunction {
    module: Arc<ModuleInner>,
    func: Handle,
    name: String,
    /// The kernel's parameter sizes, when the driver can say (CUDA 12.4+).
    params: OnceLock<Option<Vec<usize>>>,
}

impl std::fmt::Debug for GpuFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuFunction").field("name", &self.name).finish()
    }
}

impl GpuFunction {
    /// The kernel's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The size in bytes of each of the kernel's parameters, from
    /// `cuFuncGetParamInfo` (CUDA 12.4+); `None` where the driver cannot
    /// say. Needs the context current (launch binds it first).
    fn param_sizes(&self) -> Option<&[usize]> {
        self.params
            .get_or_init(|| {
                let get = self.module.ctx.api.cu_func_get_param_info?;
                let mut sizes = Vec::new();
                loop {
                    let (mut offset, mut size) = (0usize, 0usize);
                    // SAFETY: a function of the current context, valid out-pointers.
                    let code = unsafe { get(self.func.0, sizes.len(), &mut offset, &mut size) };
                    match code {
                        driver::CUDA_SUCCESS => sizes.push(size),
                        // Past the last parameter. No parameters at all may
                        // also mean the query is unsupported for this
                        // function: then do not check (launching a kernel
                        // without parameters with arguments is harmless).
                        driver::CUDA_ERROR_INVALID_VALUE => return (!sizes.is_empty()).then_some(sizes),
                        _ => return None,
                    }
                    if sizes.len() > 4096 {
                        return None; // more than a kernel can have: do not trust it
                    }
                }
            })
            .as_deref()
    }

    /// A [`CudaError::Usage`] when the packed arguments do not match the
    /// kernel's parameters (count or sizes), where the driver can tell.
    fn check_params(&self, params: &[ParamValue]) -> Result<(), CudaError> {
        let Some(sizes) = self.param_sizes() else { return Ok(()) };
        let given: Vec<usize> = params.iter().map(ParamValue::size).collect();
        if given != sizes {
            return Err(CudaError::Usage(format!(
                "kernel `{}` takes {} parameters of sizes {sizes:?} bytes; the arguments expand to {} of sizes {given:?} \
                 (a memref is 3 + 2·rank parameters)",
                self.name,
                sizes.len(),
                given.len()
            )));
        }
        Ok(())
    }
}

/// Device memory of `len()` 4-byte elements; freed on drop.
pub struct DeviceBuffer {
    ctx: Arc<Context>,
    ptr: CuDevicePtr,
    len: usize,
    /// The allocation's size: `4·len`, at least 4.
    bytes: usize,
}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceBuffer").field("ptr", &format_args!("{:#x}", self.ptr)).field("len", &self.len).finish()
    }
}

impl DeviceBuffer {
    /// The number of 4-byte elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device address (`CUdeviceptr`).
    pub fn device_ptr(&self) -> u64 {
        self.ptr
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if self.ctx.bind().is_ok() {
            // SAFETY: an allocation this value owns; work still using it was
            // issued on stream 0, which cuMemFree waits for.
            let _ = unsafe { (self.ctx.api.cu_mem_free)(self.ptr) };
        }
    }
}

// Compile-time check of the thread-safety the docs promise.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Cuda>();
    send_sync::<GpuModule>();
    send_sync::<GpuFunction>();
    send_sync::<DeviceBuffer>();
};
