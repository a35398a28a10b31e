//! Helpers shared by tdlc's test suite (`testsuite/tests/*.rs`).
//!
//! Adding a test case is dropping a file: a `.tdl` program into `corpus/`
//! gets a snapshot of its graph text and a round-trip check; a malformed one
//! into `errors/` gets a snapshot of its rendered diagnostics.

use std::path::{Path, PathBuf};

use tdl::frontend::diag::render;
use tdl::ir::{Bindings, Graph};
use tdl::reference::{Limits, Tensor};
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

/// Every `.tdl` program of the corpus and the examples, sorted, as
/// (`corpus/NAME.tdl` or `examples/NAME.tdl`, path).
pub fn program_files() -> Vec<(String, PathBuf)> {
    let root = repo_root();
    let mut out = Vec::new();
    for dir in ["testsuite/corpus", "examples"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "tdl"))
            .collect();
        files.sort();
        let short = dir.rsplit('/').next().unwrap_or(dir);
        for f in files {
            out.push((format!("{short}/{}", f.file_name().unwrap().to_string_lossy()), f));
        }
    }
    assert!(out.len() > 30, "found only {} programs", out.len());
    out
}

/// The text of a file, panicking with its path if it cannot be read.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Random inputs for `g` under `b` (seeds by parameter index), or `None`
/// if a shape does not evaluate or is over `limits`.
pub fn inputs_with(g: &Graph, b: &Bindings, limits: &Limits) -> Option<Vec<Tensor>> {
    tdl::selftest::inputs_for(g, b, limits)
}
