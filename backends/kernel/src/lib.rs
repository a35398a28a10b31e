//! `tdl-kernel`: the Kernel IR and its `f32` interpreter.
//!
//! * [`ir`]: the Kernel IR — buffers with symbolic shapes and an ordered
//!   list of parameterised loop-nest kernels (attention, matmul, fused
//!   elementwise, reductions, rows, data movement).
//! * [`lower`]: a verified (fused) graph → [`ir::KernelProgram`], with tile
//!   sizes from a [`target::Target`].
//! * [`target`]: target descriptions (the host CPU read from the machine,
//!   GPU presets) and the cost model choosing tile sizes and KV splits.
//! * [`text`]: the text form (`tdlc compile --emit kernel`).
//! * [`verify`]: the Kernel IR verifier.
//! * [`interp`]: executes a program in `f32` exactly as a backend would
//!   (`tdlc run --backend kernel`).
//! * [`attention`]: the FlashAttention-2 forward schedule over the
//!   block-sparse iteration space, the attention kernel's executor.

pub mod attention;
pub mod interp;
pub mod ir;
pub mod lower;
pub mod target;
pub mod text;
pub mod verify;

pub use attention::{attention_tiled, attention_tiled_stats, AttentionSchedule, F32Tensor, KernelStats, ScoreMod};
