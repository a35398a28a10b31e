//! The error type of the MLIR backend.

use thiserror::Error;

/// Joins MLIR diagnostics for display ("no diagnostics" when empty).
fn diags(d: &[String]) -> String {
    if d.is_empty() {
        "no diagnostics".to_string()
    } else {
        d.join("\n")
    }
}

/// Everything that can go wrong while building, lowering or running MLIR.
/// `diagnostics` fields hold the messages MLIR emitted while the failing step
/// ran (location: message).
#[derive(Debug, Error)]
pub enum MlirError {
    /// The code generator does not handle this yet.
    #[error("not supported yet: {0}")]
    Unsupported(String),
    /// MLIR text did not parse.
    #[error("MLIR parse error:\n{}", diags(.diagnostics))]
    Parse { diagnostics: Vec<String> },
    /// A module failed verification.
    #[error("MLIR module failed to verify:\n{}", diags(.diagnostics))]
    Verify { diagnostics: Vec<String> },
    /// A pass pipeline string was rejected.
    #[error("invalid MLIR pass pipeline `{pipeline}`: {message}")]
    PipelineParse { pipeline: String, message: String },
    /// A pass pipeline failed while running.
    #[error("MLIR pass pipeline `{pipeline}` failed:\n{}", diags(.diagnostics))]
    PipelineRun { pipeline: String, diagnostics: Vec<String> },
    /// The GPU chip name is not of the form `sm_<digits>[a|f]`.
    #[error("invalid CUDA chip `{0}` (expected e.g. `sm_80`, `sm_90`, `sm_90a`)")]
    InvalidChip(String),
    /// Lowering produced no `gpu.binary` with a GPU object.
    #[error("no GPU object found after lowering: {0}")]
    NoGpuObject(String),
    /// The module still contains non-LLVM-dialect operations, so it cannot be
    /// handed to the JIT.
    #[error("module is not fully lowered to the LLVM dialect: found `{0}`")]
    NotLowered(String),
    /// MLIR's execution engine could not be created.
    #[error("cannot create the MLIR execution engine:\n{}", diags(.diagnostics))]
    EngineCreate { diagnostics: Vec<String> },
    /// A JIT symbol was not found.
    #[error("symbol `{0}` not found in the JIT-compiled module")]
    SymbolNotFound(String),
    /// A buffer is too long to describe with an `i64` size.
    #[error("buffer of {0} elements is too long")]
    TooLong(usize),
    /// A launch plan refers outside its buffers or breaks a launch limit.
    #[error("invalid launch plan: {0}")]
    BadPlan(String),
    /// A kernel run failed (e.g. a lambda indexed an array out of range).
    #[error("{0}")]
    Run(String),
    /// MLIR returned text that is not UTF-8.
    #[error("MLIR returned invalid UTF-8: {0}")]
    Utf8(#[from] std::string::FromUtf8Error),
}

impl MlirError {
    /// `r` with a "not supported yet" error as `None` (the kernel is
    /// declined: the interpreter runs it), other errors kept.
    pub fn declined<T>(r: Result<T, MlirError>) -> Result<Option<T>, MlirError> {
        match r {
            Ok(v) => Ok(Some(v)),
            Err(MlirError::Unsupported(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
