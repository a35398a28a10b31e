//! `tdl-mlir`: tdlc's GPU backend, built on MLIR 22 through melior.
//!
//! Kernels: [`attention`], [`matmul`], [`elementwise`], [`rows`] (reduce,
//! softmax, layernorm, rmsnorm, rope) and [`movement`] (masks: [`mask`];
//! index lambdas and score modifiers: [`lambda`]), each one body
//! wrapped as a `gpu.func` and as host functions, run through a
//! [`launch::LaunchPlan`] (`plan_*` per kind) on a GPU or, for the
//! numerics, on the host ([`host::run_plan`], [`host::HostHooks`]);
//! [`program`] puts a Kernel IR program's kernels in one `gpu.module`.
//!
//! The toolchain pieces underneath:
//! - [`new_context`]: a context with every dialect, LLVM translation and pass
//!   registered;
//! - [`smoke_gpu_ptx`]: a `gpu.module` kernel using workgroup (shared) memory
//!   and `gpu.barrier`, lowered in process to PTX text for an `sm_XX` chip
//!   (no CUDA toolkit, no `ptxas`);
//! - [`smoke_cpu_sum`]: an `scf`/`memref`/`arith` function lowered to the LLVM
//!   dialect and run by MLIR's JIT ([`JitEngine`]), which also serves as the
//!   host-side reference path for MLIR-generated code.
//!
//! The helpers underneath ([`parse_module`], [`run_pipeline`],
//! [`extract_ptx`], [`JitEngine`], [`DiagnosticCollector`]) are the pieces the
//! full GPU backend will be built from. Every MLIR failure is reported as an
//! [`MlirError`] carrying MLIR's diagnostics; nothing on these paths panics.
//!
//! MLIR and all of LLVM are linked statically (Debian ships no
//! `libMLIR-C.so`); `tdl-llvm` (inkwell) shares that one LLVM copy.

pub mod attention;
mod context;
mod cpu;
pub mod elementwise;
mod error;
mod gpu;
pub mod host;
mod jit;
pub mod lambda;
pub mod launch;
pub mod mask;
pub mod matmul;
pub mod movement;
pub mod program;
pub mod rows;
mod wrap;

pub use context::{new_context, parse_module, run_pipeline, verify_module, DiagnosticCollector};
pub use cpu::{smoke_cpu_module, smoke_cpu_sum, CPU_LOWERING_PIPELINE, SMOKE_CPU_SUM_MLIR};
pub use error::MlirError;
pub use gpu::{
    extract_ptx, nvvm_pipeline, smoke_gpu_module, smoke_gpu_ptx, validate_chip, SMOKE_KERNEL_NAME,
    SMOKE_THREADS_PER_BLOCK,
};
pub use jit::{JitEngine, MemRef1D};

/// Re-exported so that users of this crate need no direct melior dependency
/// for the types in its signatures.
pub use melior;
