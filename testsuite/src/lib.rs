//! Helpers shared by tdlc's test suite (`testsuite/tests/*.rs`).
//!
//! Adding a test case is dropping a file: a `.tdl` program into `corpus/`
//! gets a snapshot of its graph text and a round-trip check; a malformed one
//! into `errors/` gets a snapshot of its rendered diagnostics.

use std::path::{Path, PathBuf};

use tdl::frontend::diag::render;
use tdl::{CheckError, Checked};

/// The repository root (the workspace), whatever the test's working dir.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Checks `src`, panicking with the rendered diagnostics if it fails.
pub fn check_ok(name: &str, src: &str) -> Checked {
    match tdl::check_source(src) {
        Ok(c) => c,
        Err(CheckError::User(d)) => panic!("{name} does not check:\n{}", render(&d, name, src)),
        Err(CheckError::Internal(m)) => panic!("{name}: internal error: {m}"),
    }
}

/// The rendered diagnostics of a file that must not check. Panics if it
/// checks, or on an internal error.
pub fn check_err(name: &str, src: &str) -> String {
    match tdl::check_source(src) {
        Ok(_) => panic!("{name} was expected to fail but checks"),
        Err(CheckError::User(d)) => render(&d, name, src),
        Err(CheckError::Internal(m)) => panic!("{name}: internal error: {m}"),
    }
}

/// The text form of every graph of a checked file.
pub fn graph_text(c: &Checked) -> String {
    c.graphs.iter().map(|g| tdl::ir::text::print_graph(g.graph())).collect::<Vec<_>>().join("\n")
}
