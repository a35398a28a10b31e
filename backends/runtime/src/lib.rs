//! tdlc's runtime: what runs around compiled kernels, with no LLVM.
//!
//! * [`pool`]: the worker threads (`--threads N`).
//! * [`attention`], [`matmul`]: the drivers of the compiled attention and
//!   matmul kernels (iteration spaces from the mask formula, packing,
//!   work items, the KV-split merge).
//! * [`elementwise`], [`rows`]: the drivers of the compiled elementwise,
//!   move, row and reduce kernels (strided loop nests, mask arrays, work
//!   items), with the code from a source ([`code::Code`]): the JIT compiles
//!   it on demand, an artifact looks it up among the variants it holds.
//! * [`aot`]: the entry point of ahead-of-time artifacts (`tdlc compile
//!   --emit so`): a serialized Kernel IR program run by the Kernel IR
//!   executor, with the kernels compiled into the artifact as hooks.
//!
//! The JIT backend (`tdl-llvm`) links this crate as a library; every shared
//! library `tdlc compile --emit so` writes links it as `libtdl_rt.a`.

pub mod aot;
pub mod attention;
pub mod code;
pub mod elementwise;
mod error;
pub mod matmul;
pub mod pool;
pub mod rows;

pub use error::RtError;

/// Rows of the register block of the attention and matmul micro-kernels
/// (the code generator's choice; the runtime sizes stacks with it).
pub const MR: usize = 6;
