//! A checked wrapper around MLIR's execution engine (LLVM ORC JIT), and the
//! memref descriptor layout used to pass buffers to JIT-compiled code.
//!
//! melior's own `ExecutionEngine::new` does not report failure: on a module
//! that is not fully lowered it returns a null engine and the first lookup
//! segfaults. [`JitEngine::new`] instead checks that the module contains
//! only LLVM-dialect operations and that engine creation succeeded.

use std::ffi::c_void;

use melior::ir::{
    operation::{OperationLike, WalkOrder, WalkResult},
    Module,
};
use mlir_sys::{
    mlirExecutionEngineCreate, mlirExecutionEngineDestroy, mlirExecutionEngineInvokePacked, mlirExecutionEngineLookup,
    MlirExecutionEngine, MlirStringRef,
};

use crate::{context::DiagnosticCollector, MlirError};

/// The C layout of a rank-1 strided memref (`memref<?xT>`) descriptor, as
/// passed by pointer to `_mlir_ciface_*` functions.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct MemRef1D<T> {
    /// Pointer returned by the allocator (used only for deallocation).
    pub allocated: *mut T,
    /// Aligned pointer to the data; element `i` is at `aligned + offset + i*stride`.
    pub aligned: *mut T,
    /// Offset in elements from `aligned`.
    pub offset: i64,
    /// Number of elements.
    pub size: i64,
    /// Stride in elements.
    pub stride: i64,
}

impl<T> MemRef1D<T> {
    /// Describes a mutable slice (contiguous, offset 0, stride 1).
    pub fn from_slice_mut(data: &mut [T]) -> Result<Self, MlirError> {
        let size = i64::try_from(data.len()).map_err(|_| MlirError::TooLong(data.len()))?;
        let ptr = data.as_mut_ptr();
        Ok(Self { allocated: ptr, aligned: ptr, offset: 0, size, stride: 1 })
    }

    /// Describes a shared slice. The callee must only read through it.
    pub fn from_slice(data: &[T]) -> Result<Self, MlirError> {
        let size = i64::try_from(data.len()).map_err(|_| MlirError::TooLong(data.len()))?;
        let ptr = data.as_ptr().cast_mut();
        Ok(Self { allocated: ptr, aligned: ptr, offset: 0, size, stride: 1 })
    }
}

/// A JIT-compiled MLIR module (LLVM dialect only).
pub struct JitEngine {
    raw: MlirExecutionEngine,
}

impl std::fmt::Debug for JitEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JitEngine").finish_non_exhaustive()
    }
}

fn string_ref(s: &str) -> MlirStringRef {
    MlirStringRef { data: s.as_ptr().cast(), length: s.len() }
}

/// Returns the name of the first operation that is neither `builtin.module`
/// nor in the `llvm` dialect.
fn first_non_llvm_op(module: &Module) -> Option<String> {
    let mut bad = None;
    module.as_operation().walk(WalkOrder::PreOrder, |op| {
        let name = op.name();
        let name = name.as_string_ref().as_str().unwrap_or("<non-utf8>").to_string();
        if name == "builtin.module" || name.starts_with("llvm.") {
            WalkResult::Advance
        } else {
            bad = Some(name);
            WalkResult::Interrupt
        }
    });
    bad
}

impl JitEngine {
    /// JIT-compiles `module` at LLVM optimisation level `opt_level` (0–3).
    /// Fails, instead of crashing later, if the module is not fully lowered
    /// to the LLVM dialect or if MLIR cannot translate or compile it.
    pub fn new(module: &Module, opt_level: u8) -> Result<Self, MlirError> {
        if let Some(op) = first_non_llvm_op(module) {
            return Err(MlirError::NotLowered(op));
        }
        let context = module.context();
        // SAFETY: the reference does not outlive `module`.
        let collector = DiagnosticCollector::attach(unsafe { context.to_ref() });
        // SAFETY: the module is valid; no shared libraries are passed.
        let raw = unsafe {
            mlirExecutionEngineCreate(module.to_raw(), i32::from(opt_level.min(3)), 0, std::ptr::null(), false, false)
        };
        if raw.ptr.is_null() {
            return Err(MlirError::EngineCreate { diagnostics: collector.take() });
        }
        Ok(Self { raw })
    }

    /// Address of the JIT-compiled symbol `name` (e.g. `_mlir_ciface_f` for a
    /// function marked `llvm.emit_c_interface`).
    pub fn lookup(&self, name: &str) -> Result<*mut c_void, MlirError> {
        // SAFETY: the engine is live; the string is valid for the call.
        let ptr = unsafe { mlirExecutionEngineLookup(self.raw, string_ref(name)) };
        if ptr.is_null() {
            Err(MlirError::SymbolNotFound(name.to_string()))
        } else {
            Ok(ptr)
        }
    }

    /// Calls the C interface of function `name` (`_mlir_ciface_<name>`,
    /// memrefs as descriptor pointers) through its packed wrapper.
    /// `args` holds one pointer per argument, pointing at the argument value,
    /// followed by one pointer per result, pointing at where to store it.
    ///
    /// # Safety
    /// The pointers must be valid and match the function's lowered signature.
    pub unsafe fn invoke_packed(&self, name: &str, args: &mut [*mut c_void]) -> Result<(), MlirError> {
        self.lookup(&format!("_mlir__mlir_ciface_{name}"))?;
        // SAFETY: the wrapper exists (checked above); the caller vouches for args.
        let result = unsafe { mlirExecutionEngineInvokePacked(self.raw, string_ref(name), args.as_mut_ptr()) };
        if result.value == 0 {
            Err(MlirError::SymbolNotFound(format!("_mlir__mlir_ciface_{name}")))
        } else {
            Ok(())
        }
    }
}

impl JitEngine {
    /// Calls `_mlir_<name>`, the packed wrapper the engine generates for a
    /// function `name` marked `llvm.emit_c_interface`, which calls `name`
    /// itself (not its C interface): `args` holds one pointer per
    /// **lowered** argument (a memref is its expanded allocated pointer,
    /// aligned pointer, offset, sizes and strides), pointing at the value.
    ///
    /// # Safety
    /// The pointers must be valid and match the function's lowered signature.
    pub unsafe fn call_packed(&self, name: &str, args: &mut [*mut c_void]) -> Result<(), MlirError> {
        let f = self.lookup(&format!("_mlir_{name}"))?;
        // SAFETY: packed wrappers have the signature `void(void**)`.
        let f = unsafe { std::mem::transmute::<*mut c_void, unsafe extern "C" fn(*mut *mut c_void)>(f) };
        // SAFETY: the caller vouches for the arguments.
        unsafe { f(args.as_mut_ptr()) };
        Ok(())
    }
}

impl Drop for JitEngine {
    fn drop(&mut self) {
        // SAFETY: created by mlirExecutionEngineCreate, non-null, dropped once.
        unsafe { mlirExecutionEngineDestroy(self.raw) }
    }
}
