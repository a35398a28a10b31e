//! `tdl`: the facade of tdlc — the Rust API and the `tdlc` binary.
//!
//! **API Boundary:** this crate is the one public surface. Embedders call
//! [`check_source`] to turn `.tdl` text into verified graphs and
//! [`reference::run`] to evaluate them; the member crates are re-exported
//! for advanced use but may change shape between releases.
//!
//! No panic crosses this boundary on any input: errors come back as values
//! ([`CheckError`], [`reference::RunError`], [`reference::IoError`]).

pub use tdl_cuda as cuda;
pub use tdl_frontend as frontend;
pub use tdl_frontend::{CheckError, Checked, Diagnostic};
pub use tdl_ir as ir;
pub use tdl_kernel as kernel;
pub use tdl_llvm as llvm;
pub use tdl_mlir as mlir;
pub use tdl_passes as passes;
pub use tdl_reference as reference;

pub mod gpu;
pub mod inputs;
pub mod masks;
pub mod selftest;
pub mod tiling;

/// Parses and type-checks `.tdl` source; every graph in it comes back
/// verified. See [`tdl_frontend::check`].
pub fn check_source(src: &str) -> Result<Checked, CheckError> {
    tdl_frontend::check(src)
}

/// The stages of the pipeline, by the names the CLI and the docs use
/// (`--emit STAGE`).
pub const STAGES: &[&str] = &["graph", "egraph", "fused", "kernel"];
