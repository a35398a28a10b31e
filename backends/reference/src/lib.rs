//! `tdl-reference`: tdlc's reference interpreter, the numerical oracle every
//! pass and backend is tested against, and tensor I/O.
//!
//! [`run`] evaluates any [`tdl_ir::VerifiedGraph`] exactly as the language
//! contract says, holding every value as an `f64` and accumulating in `f64`
//! (`i32` arithmetic is exact wrapping 32-bit arithmetic). Simple over fast:
//! plain loops, O(T·S·D) attention.
//!
//! * [`tensor`]: [`Tensor`], [`Limits`], rounding to an element type.
//! * [`bind`]: [`bind_symbols`], inputs against the signature.
//! * [`interp`]: [`run`] and [`run_with_limits`].
//! * [`mask`]: mask predicates, and [`mask::materialize`].
//! * [`random`]: [`random_tensor`], deterministic test data.
//! * [`npy`] and [`weights`]: `.npy` and `.safetensors` files.
//!
//! Nothing here panics on any input: errors are [`RunError`] and
//! [`IoError`], whose messages are meant to be printed as they are.

mod attention;
pub mod bind;
pub mod error;
pub mod interp;
pub mod mask;
pub mod npy;
mod ops;
pub mod random;
pub mod scalar;
pub mod tensor;
pub mod weights;

pub use bind::bind_symbols;
pub use error::{IoError, RunError};
pub use interp::{run, run_with_limits};
pub use random::{random_tensor, try_random_tensor};
pub use tensor::{round_value, Limits, Tensor};
