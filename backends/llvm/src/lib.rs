//! `tdl-llvm`: tdlc's CPU backend, built on LLVM 22 through inkwell.
//!
//! At the moment this crate proves the CPU toolchain end to end: it detects
//! the host target ([`HostTarget`]), builds a small loop kernel with inkwell,
//! optimises it with LLVM's `default<O3>` pipeline for the host CPU, and runs it
//! through the MCJIT execution engine ([`smoke_axpy_jit`], [`smoke_ir_text`]).
//! The same pieces (target detection, function attributes, the pass pipeline,
//! JIT) are what the full CPU backend will be built from.
//!
//! LLVM is linked statically, and it is the same single copy that `tdl-mlir`
//! (melior) uses, so both backends can live in one process.

pub mod aot;
pub mod attention;
mod cache;
pub mod ceiling;
pub mod cpu;
pub mod elementwise;
pub mod emit;
mod error;
mod gemm;
mod jit;
mod lambda;
mod math;
pub mod matmul;
pub mod rows;
mod smoke;
mod target;

pub use cache::KernelCache;
pub use error::LlvmError;
pub use smoke::{smoke_axpy_jit, smoke_ir_text, AXPY_FN_NAME};
pub use target::{init_native_target, HostTarget};
