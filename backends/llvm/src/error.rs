//! The error type of the LLVM backend.

use thiserror::Error;

/// Everything that can go wrong while building, optimising or running code
/// through LLVM. LLVM's own messages are carried as text.
#[derive(Debug, Error)]
pub enum LlvmError {
    /// The native (host) target could not be initialised.
    #[error("cannot initialise the native LLVM target: {0}")]
    TargetInit(String),
    /// LLVM knows no target for this triple.
    #[error("no LLVM target for triple `{triple}`: {message}")]
    UnknownTarget { triple: String, message: String },
    /// LLVM refused to create a target machine.
    #[error("cannot create an LLVM target machine for `{triple}` (cpu `{cpu}`)")]
    TargetMachine { triple: String, cpu: String },
    /// An IR builder call failed.
    #[error("LLVM IR builder error: {0}")]
    Builder(#[from] inkwell::builder::BuilderError),
    /// The generated module did not verify.
    #[error("LLVM module failed to verify: {0}")]
    Verify(String),
    /// The pass pipeline could not be parsed or run.
    #[error("LLVM pass pipeline `{pipeline}` failed: {message}")]
    Passes { pipeline: String, message: String },
    /// The JIT could not be created.
    #[error("cannot create the LLVM JIT: {0}")]
    Jit(String),
    /// A JIT-compiled function could not be found.
    #[error("JIT function `{name}` not found: {source}")]
    JitLookup {
        name: String,
        #[source]
        source: inkwell::execution_engine::FunctionLookupError,
    },
    /// Two buffers that must have the same length do not.
    #[error("length mismatch: x has {x} elements, y has {y}")]
    LengthMismatch { x: usize, y: usize },
    /// A buffer is too long to index with an `i64`.
    #[error("buffer of {0} elements is too long")]
    TooLong(usize),
    /// The code generator does not handle this yet (the caller may fall
    /// back to the Kernel IR interpreter).
    #[error("not supported yet: {0}")]
    Unsupported(String),
    /// A `--target-cpu` / `--target-features` value is malformed.
    #[error("{0}")]
    InvalidTarget(String),
    /// A requested intrinsic or declaration is missing (an internal error).
    #[error("internal LLVM backend error: {0}")]
    Internal(String),
}

impl From<tdl_rt::RtError> for LlvmError {
    fn from(e: tdl_rt::RtError) -> LlvmError {
        LlvmError::Internal(e.0)
    }
}
