//! `tdl-passes`: the passes over graphs, the e-graph IR their rewrites run
//! in, and the one pipeline that runs them in order.
//!
//! A pass takes a [`VerifiedGraph`] and returns a graph of the same kind;
//! [`run_pipeline`] re-verifies after every pass, so a pass that breaks an
//! invariant is caught at once and named (a verifier error is always a bug).
//! The e-graph phases (`canonicalize`, `fuse-attention`) live in
//! [`egraph`]; see `passes/RULES.md` for how rules are written.
//! [`mask_algebra`] simplifies mask expressions into a canonical form.

pub mod egraph;
pub mod explain;
pub mod mask_algebra;
pub mod tiles;

use std::collections::BTreeSet;

use egraph::phase::{run_phase, PhaseLimits, PhaseReport};
use tdl_ir::{verify, Graph, VerifiedGraph, VerifyError};

/// A named transformation of a graph.
pub trait Pass {
    /// The name used by `--print-after`, `--disable-pass` and the docs.
    fn name(&self) -> &'static str;
    /// Transforms the graph. An `Err` is a bug in the pass (it is reported
    /// as an internal error naming the pass).
    fn run(&self, g: &mut Graph) -> Result<PassReport, String>;
}

/// What running one pass did.
#[derive(Clone, Debug, PartialEq)]
pub struct PassReport {
    pub pass: &'static str,
    pub changed: bool,
    /// For e-graph phases: why the phase stopped, which rules fired, costs.
    pub phase: Option<PhaseReport>,
    /// For e-graph phases: the saturated e-graph as text.
    pub egraph: Option<String>,
}

impl PassReport {
    fn simple(pass: &'static str, changed: bool) -> PassReport {
        PassReport { pass, changed, phase: None, egraph: None }
    }
}

/// Removes nodes no result depends on (parameters stay).
pub struct DeadNodeRemoval;

impl Pass for DeadNodeRemoval {
    fn name(&self) -> &'static str {
        "dead-node-removal"
    }

    fn run(&self, g: &mut Graph) -> Result<PassReport, String> {
        Ok(PassReport::simple(self.name(), g.remove_dead_nodes() > 0))
    }
}

/// An e-graph phase as a pass.
pub struct Phase {
    pub name: &'static str,
    pub limits: PhaseLimits,
}

impl Pass for Phase {
    fn name(&self) -> &'static str {
        self.name
    }

    fn run(&self, g: &mut Graph) -> Result<PassReport, String> {
        let out = run_phase(self.name, g, &self.limits)?;
        // Structural, so a re-extraction that only reorders nodes is no change.
        let changed = !tdl_ir::text::graphs_equal(g, &out.graph);
        *g = out.graph;
        Ok(PassReport { pass: self.name, changed, phase: Some(out.report), egraph: Some(out.egraph_text) })
    }
}

/// The names of every pass, in pipeline order.
pub const PASS_NAMES: &[&str] = &["dead-node-removal", "canonicalize", "fuse-attention", "mask-algebra"];

/// The passes, in order. Ordering constraints are written beside each.
pub fn default_pipeline() -> Vec<Box<dyn Pass>> {
    vec![
        // First: the phases assume every node is live.
        Box::new(DeadNodeRemoval),
        // Before fusion: the fusion rules match canonical spellings only.
        Box::new(Phase { name: "canonicalize", limits: PhaseLimits::default() }),
        // Replaces softmax(q @ kᵀ · c + m) @ v by attention nodes.
        Box::new(Phase { name: "fuse-attention", limits: PhaseLimits::default() }),
        // Last: the canonical mask form is what tile classification reads;
        // the e-graph phases treat masks as opaque values.
        Box::new(mask_algebra::MaskAlgebra),
    ]
}

/// The default pipeline without the passes named in `disabled`.
pub fn pipeline_without(disabled: &BTreeSet<String>) -> Vec<Box<dyn Pass>> {
    default_pipeline().into_iter().filter(|p| !disabled.contains(p.name())).collect()
}

/// Why the pipeline stopped: a pass failed or left an invalid graph. Both
/// are bugs in the pass.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("pass `{pass}` failed: {message}")]
    Failed { pass: &'static str, message: String },
    #[error("pass `{pass}` produced an invalid graph: {error}")]
    Invalid { pass: &'static str, error: VerifyError },
}

/// Runs `passes` in order, verifying after each and calling `after` with
/// each pass's result (for `--print-after`).
pub fn run_pipeline_with(
    g: VerifiedGraph,
    passes: &[Box<dyn Pass>],
    after: &mut dyn FnMut(&PassReport, &VerifiedGraph),
) -> Result<(VerifiedGraph, Vec<PassReport>), PipelineError> {
    let mut g = g;
    let mut reports = Vec::new();
    for p in passes {
        let mut raw = g.into_inner();
        let report = p.run(&mut raw).map_err(|message| PipelineError::Failed { pass: p.name(), message })?;
        g = verify(raw).map_err(|error| PipelineError::Invalid { pass: p.name(), error })?;
        after(&report, &g);
        reports.push(report);
    }
    Ok((g, reports))
}

/// Runs `passes` in order, verifying after each.
pub fn run_pipeline(
    g: VerifiedGraph,
    passes: &[Box<dyn Pass>],
) -> Result<(VerifiedGraph, Vec<PassReport>), PipelineError> {
    run_pipeline_with(g, passes, &mut |_, _| {})
}

#[cfg(test)]
mod tests {
    use super::*;
    use tdl_ir::{DType, Dim, Op, TensorType, Type, UnaryOp};

    #[test]
    fn dead_nodes_are_removed_and_the_graph_stays_verified() {
        let ty = TensorType::new(DType::F32, vec![Dim::sym("T")]);
        let mut g = Graph::new("g");
        let x = g.add_param("x", ty.clone(), None);
        let _dead = g.add_node(Op::Unary(UnaryOp::Exp), Type::Tensor(ty.clone()), &[x], None);
        let live = g.add_node(Op::Unary(UnaryOp::Neg), Type::Tensor(ty.clone()), &[x], None);
        g.set_results(vec![live], vec![ty]);
        let passes: Vec<Box<dyn Pass>> = vec![Box::new(DeadNodeRemoval)];
        let (g, reports) = run_pipeline(verify(g).unwrap(), &passes).unwrap();
        assert_eq!(reports, vec![PassReport::simple("dead-node-removal", true)]);
        assert_eq!(g.node_count(), 2);
        let (_, again) = run_pipeline(g, &passes).unwrap();
        assert!(!again[0].changed);
    }
}
