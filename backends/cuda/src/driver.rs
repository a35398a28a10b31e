//! Loading `libcuda` at run time and the table of driver entry points.
//!
//! The library is opened with `dlopen` (through `libloading`) the first time
//! [`crate::Cuda::open`] needs it. Candidates: the path in `$TDL_CUDA_DRIVER`
//! when that variable is set and non-empty (then it is the only one tried),
//! else `libcuda.so.1` and `libcuda.so` (`nvcuda.dll` on Windows), in that
//! order, found by the system loader's search path. A library that opens and
//! has every entry point below is kept loaded for the rest of the process
//! (it is leaked on purpose: unloading `libcuda` while the driver's threads
//! run is unsafe, and the function pointers must stay valid for `'static`);
//! one that fails to open is not cached, so a later call may find it.
//!
//! Every failure here is a [`CudaError::NoDriver`], whose message starts with
//! "no CUDA driver found" and lists each candidate with the loader's reason.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::Mutex;

use crate::CudaError;

/// The environment variable naming the one driver library to load.
pub const DRIVER_ENV: &str = "TDL_CUDA_DRIVER";

pub(crate) type CuResult = c_int;
pub(crate) type CuDevice = c_int;
pub(crate) type CuDevicePtr = u64;
/// Any opaque driver handle (`CUcontext`, `CUmodule`, `CUfunction`, `CUevent`, `CUstream`).
pub(crate) type CuHandle = *mut c_void;

pub(crate) const CUDA_SUCCESS: CuResult = 0;
pub(crate) const CUDA_ERROR_INVALID_VALUE: CuResult = 1;

// CUdevice_attribute values (cuda.h).
pub(crate) const ATTR_MAX_THREADS_PER_BLOCK: c_int = 1;
pub(crate) const ATTR_MAX_BLOCK_DIM_X: c_int = 2;
pub(crate) const ATTR_MAX_GRID_DIM_X: c_int = 5;
pub(crate) const ATTR_COMPUTE_CAPABILITY_MAJOR: c_int = 75;
pub(crate) const ATTR_COMPUTE_CAPABILITY_MINOR: c_int = 76;
pub(crate) const ATTR_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: c_int = 97;
// CUfunction_attribute.
pub(crate) const FUNC_ATTR_MAX_DYNAMIC_SHARED_SIZE_BYTES: c_int = 8;
// CUjit_option.
pub(crate) const JIT_ERROR_LOG_BUFFER: c_int = 5;
pub(crate) const JIT_ERROR_LOG_BUFFER_SIZE_BYTES: c_int = 6;

/// The driver entry points tdlc uses, resolved from one loaded library.
/// Names with `_v2` are the symbols `cuda.h` maps the plain names to since
/// CUDA 3.2/11 (64-bit sizes and pointers); the plain ones have no versions.
pub(crate) struct Api {
    pub cu_init: unsafe extern "C" fn(c_uint) -> CuResult,
    pub cu_driver_get_version: unsafe extern "C" fn(*mut c_int) -> CuResult,
    pub cu_get_error_name: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult,
    pub cu_get_error_string: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult,
    pub cu_device_get_count: unsafe extern "C" fn(*mut c_int) -> CuResult,
    pub cu_device_get: unsafe extern "C" fn(*mut CuDevice, c_int) -> CuResult,
    pub cu_device_get_name: unsafe extern "C" fn(*mut c_char, c_int, CuDevice) -> CuResult,
    pub cu_device_get_attribute: unsafe extern "C" fn(*mut c_int, c_int, CuDevice) -> CuResult,
    pub cu_device_primary_ctx_retain: unsafe extern "C" fn(*mut CuHandle, CuDevice) -> CuResult,
    pub cu_device_primary_ctx_release: unsafe extern "C" fn(CuDevice) -> CuResult,
    pub cu_ctx_set_current: unsafe extern "C" fn(CuHandle) -> CuResult,
    pub cu_ctx_synchronize: unsafe extern "C" fn() -> CuResult,
    pub cu_module_load_data_ex:
        unsafe extern "C" fn(*mut CuHandle, *const c_void, c_uint, *mut c_int, *mut *mut c_void) -> CuResult,
    pub cu_module_unload: unsafe extern "C" fn(CuHandle) -> CuResult,
    pub cu_module_get_function: unsafe extern "C" fn(*mut CuHandle, CuHandle, *const c_char) -> CuResult,
    pub cu_func_set_attribute: unsafe extern "C" fn(CuHandle, c_int, c_int) -> CuResult,
    /// `cuFuncGetParamInfo` (CUDA 12.4+): absent from older drivers, then
    /// launches are not checked against the kernel's parameter list.
    pub cu_func_get_param_info: Option<unsafe extern "C" fn(CuHandle, usize, *mut usize, *mut usize) -> CuResult>,
    pub cu_mem_alloc: unsafe extern "C" fn(*mut CuDevicePtr, usize) -> CuResult,
    pub cu_mem_free: unsafe extern "C" fn(CuDevicePtr) -> CuResult,
    pub cu_memset_d8: unsafe extern "C" fn(CuDevicePtr, u8, usize) -> CuResult,
    pub cu_memcpy_htod: unsafe extern "C" fn(CuDevicePtr, *const c_void, usize) -> CuResult,
    pub cu_memcpy_dtoh: unsafe extern "C" fn(*mut c_void, CuDevicePtr, usize) -> CuResult,
    #[allow(clippy::type_complexity)]
    pub cu_launch_kernel: unsafe extern "C" fn(
        CuHandle,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        CuHandle,
        *mut *mut c_void,
        *mut *mut c_void,
    ) -> CuResult,
    pub cu_event_create: unsafe extern "C" fn(*mut CuHandle, c_uint) -> CuResult,
    pub cu_event_record: unsafe extern "C" fn(CuHandle, CuHandle) -> CuResult,
    pub cu_event_synchronize: unsafe extern "C" fn(CuHandle) -> CuResult,
    pub cu_event_elapsed_time: unsafe extern "C" fn(*mut f32, CuHandle, CuHandle) -> CuResult,
    pub cu_event_destroy: unsafe extern "C" fn(CuHandle) -> CuResult,
    /// Keeps the library mapped; never dropped (the `Api` is leaked).
    _lib: libloading::Library,
}

/// Libraries loaded so far, by the candidate list that found them (`None`:
/// the default names; `Some(path)`: `$TDL_CUDA_DRIVER`).
static LOADED: Mutex<Vec<(Option<String>, &'static Api)>> = Mutex::new(Vec::new());

const HINT: &str = "--backend gpu needs an NVIDIA GPU and its driver";

#[cfg(windows)]
const DEFAULT_NAMES: &[&str] = &["nvcuda.dll"];
#[cfg(not(windows))]
const DEFAULT_NAMES: &[&str] = &["libcuda.so.1", "libcuda.so"];

/// The driver library, loaded on first use (see the module docs).
pub(crate) fn api() -> Result<&'static Api, CudaError> {
    let from_env = std::env::var_os(DRIVER_ENV).filter(|v| !v.is_empty()).map(|v| v.to_string_lossy().into_owned());
    let mut loaded = LOADED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, api)) = loaded.iter().find(|(key, _)| *key == from_env) {
        return Ok(api);
    }
    let candidates: Vec<(String, String)> = match &from_env {
        Some(path) => vec![(path.clone(), format!("{path} (from {DRIVER_ENV})"))],
        None => DEFAULT_NAMES.iter().map(|n| (n.to_string(), n.to_string())).collect(),
    };
    let mut reasons = Vec::new();
    for (name, shown) in &candidates {
        match load(name) {
            Ok(api) => {
                let api: &'static Api = Box::leak(Box::new(api));
                loaded.push((from_env, api));
                return Ok(api);
            }
            Err(why) => reasons.push(format!("{shown} {why}")),
        }
    }
    Err(CudaError::NoDriver(format!("{}; {HINT}", reasons.join("; "))))
}

fn load(name: &str) -> Result<Api, String> {
    // SAFETY: loading a shared library runs its initialisers. The libraries
    // tried are the NVIDIA driver (or what the user named in
    // $TDL_CUDA_DRIVER as being it), whose initialisers are sound to run in
    // any process; nothing else of this crate runs during the load.
    let lib = unsafe { libloading::Library::new(name) }.map_err(|e| format!("could not be loaded ({e})"))?;
    macro_rules! sym {
        ($name:literal) => {
            // SAFETY: the symbol is the driver entry point of that name and
            // the field it is stored in has its C signature from cuda.h.
            unsafe { symbol(&lib, $name) }.map_err(|e| format!("was loaded but lacks {} ({e})", $name))
        };
    }
    // SAFETY: as in `sym!`; this entry point is optional.
    let param_info = unsafe { symbol(&lib, "cuFuncGetParamInfo") }.ok();
    Ok(Api {
        cu_init: sym!("cuInit")?,
        cu_driver_get_version: sym!("cuDriverGetVersion")?,
        cu_get_error_name: sym!("cuGetErrorName")?,
        cu_get_error_string: sym!("cuGetErrorString")?,
        cu_device_get_count: sym!("cuDeviceGetCount")?,
        cu_device_get: sym!("cuDeviceGet")?,
        cu_device_get_name: sym!("cuDeviceGetName")?,
        cu_device_get_attribute: sym!("cuDeviceGetAttribute")?,
        cu_device_primary_ctx_retain: sym!("cuDevicePrimaryCtxRetain")?,
        cu_device_primary_ctx_release: sym!("cuDevicePrimaryCtxRelease_v2")?,
        cu_ctx_set_current: sym!("cuCtxSetCurrent")?,
        cu_ctx_synchronize: sym!("cuCtxSynchronize")?,
        cu_module_load_data_ex: sym!("cuModuleLoadDataEx")?,
        cu_module_unload: sym!("cuModuleUnload")?,
        cu_module_get_function: sym!("cuModuleGetFunction")?,
        cu_func_set_attribute: sym!("cuFuncSetAttribute")?,
        cu_func_get_param_info: param_info,
        cu_mem_alloc: sym!("cuMemAlloc_v2")?,
        cu_mem_free: sym!("cuMemFree_v2")?,
        cu_memset_d8: sym!("cuMemsetD8_v2")?,
        cu_memcpy_htod: sym!("cuMemcpyHtoD_v2")?,
        cu_memcpy_dtoh: sym!("cuMemcpyDtoH_v2")?,
        cu_launch_kernel: sym!("cuLaunchKernel")?,
        cu_event_create: sym!("cuEventCreate")?,
        cu_event_record: sym!("cuEventRecord")?,
        cu_event_synchronize: sym!("cuEventSynchronize")?,
        // The plain symbol is in every driver; CUDA 13 headers map the name
        // to `_v2` (same signature), so take that where the plain one is gone.
        cu_event_elapsed_time: match sym!("cuEventElapsedTime") {
            Ok(f) => f,
            Err(_) => sym!("cuEventElapsedTime_v2")?,
        },
        cu_event_destroy: sym!("cuEventDestroy_v2")?,
        _lib: lib,
    })
}

/// The entry point `name` of `lib` as a `T`.
///
/// # Safety
/// `T` must be the function pointer type of that symbol's C signature. The
/// pointer is valid while `lib` is loaded, which is forever here (see `api`).
unsafe fn symbol<T: Copy>(lib: &libloading::Library, name: &str) -> Result<T, libloading::Error> {
    let mut cname = Vec::with_capacity(name.len() + 1);
    cname.extend_from_slice(name.as_bytes());
    cname.push(0);
    // SAFETY: the caller's contract.
    unsafe { lib.get::<T>(&cname) }.map(|s| *s)
}

impl Api {
    /// `Ok` for `CUDA_SUCCESS`, else the error named by the driver.
    pub(crate) fn check(&self, call: &'static str, code: CuResult) -> Result<(), CudaError> {
        if code == CUDA_SUCCESS {
            Ok(())
        } else {
            Err(self.error(call, code, ""))
        }
    }

    /// The error for a failed `call`, with `context` appended to the driver's text.
    pub(crate) fn error(&self, call: &'static str, code: CuResult, context: &str) -> CudaError {
        let mut message = self.describe(code);
        if !context.is_empty() {
            message.push_str(context);
        }
        CudaError::Driver { call, code, message }
    }

    /// "CUDA_ERROR_X: what it means" from cuGetErrorName/cuGetErrorString.
    fn describe(&self, code: CuResult) -> String {
        let text = |f: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult| {
            let mut s: *const c_char = std::ptr::null();
            // SAFETY: `s` is a valid out-pointer; on success the driver
            // stores a pointer to a static NUL-terminated string.
            let r = unsafe { f(code, &mut s) };
            if r != CUDA_SUCCESS || s.is_null() {
                None
            } else {
                // SAFETY: non-null and NUL-terminated, static in the driver.
                Some(unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned())
            }
        };
        match (text(self.cu_get_error_name), text(self.cu_get_error_string)) {
            (Some(name), Some(string)) => format!("{name}: {string}"),
            (Some(name), None) => name,
            (None, Some(string)) => string,
            (None, None) => format!("unknown CUresult {code}"),
        }
    }
}
