//! The errors of the interpreter ([`RunError`]) and of tensor I/O
//! ([`IoError`]).
//!
//! Both are printed by the `tdlc` CLI as they are, so every message says what
//! was expected, what was found and, where it helps, what to do about it.

use std::path::{Path, PathBuf};

/// Why a graph could not be evaluated.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The wrong number of inputs.
    #[error("graph `{graph}` takes {expected} input(s) ({signature}), but {found} were given")]
    InputCount { graph: String, signature: String, expected: usize, found: usize },

    /// An input whose element type, rank or a dimension differs from the
    /// graph's signature.
    #[error("input `{name}` (parameter {index}): expected {expected}, found {found}: {detail}")]
    InputType { name: String, index: usize, expected: String, found: String, detail: String },

    /// Two inputs give a dimension symbol different values.
    #[error(
        "symbol `{symbol}` is bound inconsistently: input `{first}` (axis {first_axis}) gives {symbol} = {first_value}, \
         but input `{second}` (axis {second_axis}) gives {symbol} = {second_value}"
    )]
    SymbolConflict {
        symbol: String,
        first: String,
        first_axis: usize,
        first_value: i64,
        second: String,
        second_axis: usize,
        second_value: i64,
    },

    /// A dimension that cannot be matched against an input's shape.
    #[error("input `{name}` (parameter {index}), axis {axis}: {detail}")]
    Unbindable { name: String, index: usize, axis: usize, detail: String },

    /// A tensor over [`crate::Limits::max_elements`]; nothing was allocated.
    #[error("{what} would have {elements} elements, over the limit of {limit} elements per tensor (raise Limits::max_elements or use smaller sizes)")]
    TooLarge { what: String, elements: String, limit: usize },

    /// A malformed [`crate::Tensor`] (data length against shape, values
    /// outside the element type).
    #[error("invalid tensor: {0}")]
    BadTensor(String),

    /// An operator or mask that cannot be evaluated on these values.
    #[error("{0}")]
    Eval(String),

    /// The error `source` happened while evaluating `node` of `graph`.
    #[error("graph `{graph}`, node {node}: {source}")]
    At { graph: String, node: String, span: Option<tdl_ir::Span>, source: Box<RunError> },
}

impl RunError {
    /// The innermost error, under every [`RunError::At`] context layer.
    /// The source span of the innermost node the error happened in, if the
    /// graph came from source.
    pub fn span(&self) -> Option<tdl_ir::Span> {
        match self {
            RunError::At { span, source, .. } => source.span().or(*span),
            _ => None,
        }
    }

    pub fn root(&self) -> &RunError {
        match self {
            RunError::At { source, .. } => source.root(),
            e => e,
        }
    }

    pub(crate) fn eval(msg: impl Into<String>) -> RunError {
        RunError::Eval(msg.into())
    }
}

/// Shorthand for an [`RunError::Eval`] error.
pub(crate) fn fail<T>(msg: impl Into<String>) -> Result<T, RunError> {
    Err(RunError::eval(msg))
}

/// Why a tensor file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The operating system refused (missing file, permissions, ...).
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },

    /// Not a well-formed `.npy` file.
    #[error("{}: not a valid .npy file: {message}", path.display())]
    BadNpy { path: PathBuf, message: String },

    /// A `.npy` element type tdlc does not read.
    #[error(
        "{}: unsupported .npy element type {found}; accepted: f32 (<f4), f16 (<f2), i32 (<i4), bool (|b1), \
         and bf16 stored as raw uint16 (<u2){hint}",
        path.display()
    )]
    NpyDType { path: PathBuf, found: String, hint: String },

    /// A Fortran-order `.npy` file.
    #[error("{}: the array is stored in Fortran order; only C order is supported (save it with np.save(path, np.ascontiguousarray(a)))", path.display())]
    FortranOrder { path: PathBuf },

    /// The file holds another element type than the one asked for.
    #[error("{}: expected {expected} data, found {found}", path.display())]
    DTypeMismatch { path: PathBuf, expected: String, found: String },

    /// Not a well-formed `.safetensors` file.
    #[error("{}: not a valid .safetensors file: {message}", path.display())]
    BadSafetensors { path: PathBuf, message: String },

    /// A safetensors tensor of an element type tdlc does not read.
    #[error("{}: tensor `{name}` has element type {dtype}; accepted: F32, F16, BF16, I32, BOOL", path.display())]
    SafetensorsDType { path: PathBuf, name: String, dtype: String },

    /// The tensor cannot be represented (element count overflow, a malformed
    /// tensor given to a writer).
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

impl IoError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> IoError {
        IoError::Io { path: path.to_path_buf(), source }
    }
}
