//! The text form of a graph (`tdlc compile --emit graph`).
//!
//! Placeholder printer; the full printer and parser live in `print.rs` and
//! `parse.rs`.

use crate::graph::Graph;

/// Prints a graph in the text form.
pub fn print_graph(g: &Graph) -> String {
    format!("{g:?}")
}
