//! `tdl-frontend`: `.tdl` source to typed graphs.
//!
//! [`lexer`] (logos) → [`parser`] (recursive descent + Pratt, with error
//! recovery) → [`ast`] → [`lower`] (name resolution, constants, symbolic
//! dimensions, dtype and shape inference) → `tdl_ir::Module`. Diagnostics
//! ([`diag`]) carry spans and render with codespan-reporting. [`fmt`] is the
//! canonical formatter behind `tdlc fmt`.

pub mod ast;
pub mod diag;
pub mod lexer;
pub mod parser;

pub use diag::{Diagnostic, Severity};

/// Runs `f` with at least 256 KiB of stack left, growing the stack on the
/// heap when needed. Every recursion over the syntax tree goes through this,
/// so trees up to [`parser::MAX_DEPTH`] deep are safe on any thread.
pub(crate) fn grow<R>(f: impl FnOnce() -> R) -> R {
    stacker::maybe_grow(256 * 1024, 2 * 1024 * 1024, f)
}

pub mod consts;
pub mod fmt;
pub mod lower;

use tdl_ir::VerifiedGraph;

/// A file that parsed and type-checked: its graphs, verified, and any
/// warnings.
#[derive(Debug)]
pub struct Checked {
    pub graphs: Vec<VerifiedGraph>,
    pub warnings: Vec<Diagnostic>,
}

/// Why a file did not check.
#[derive(Debug)]
pub enum CheckError {
    /// The source is wrong: report the diagnostics (exit code 1).
    User(Vec<Diagnostic>),
    /// The frontend built a graph the verifier rejects: a bug in tdlc
    /// (exit code 2).
    Internal(String),
}

/// Parses, resolves and type-checks a whole file, then verifies every graph.
pub fn check(src: &str) -> Result<Checked, CheckError> {
    let parsed = parser::parse(src);
    let mut diags = parsed.diagnostics;
    let (graphs, mut more) = lower::lower_file(src, &parsed.file);
    diags.append(&mut more);
    if diags.iter().any(|d| d.is_error()) {
        return Err(CheckError::User(diags));
    }
    let mut verified = Vec::new();
    for mut g in graphs {
        g.remove_dead_nodes();
        match tdl_ir::verify(g) {
            Ok(v) => verified.push(v),
            Err(e) => return Err(CheckError::Internal(format!("frontend produced an invalid graph: {e}"))),
        }
    }
    Ok(Checked { graphs: verified, warnings: diags })
}
