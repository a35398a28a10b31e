//! `tdl-passes`: passes over verified graphs, and the pipeline that runs
//! them in order.
//!
//! A pass takes a [`VerifiedGraph`] and returns a graph of the same kind;
//! the pipeline re-verifies after every pass, so a pass that breaks an
//! invariant is caught at once and named (a verifier error is always a bug).
//!
//! The e-graph phases (canonicalize, fuse-attention, mask algebra) arrive
//! with the e-graph milestone; today the pipeline holds the graph-level
//! clean-up every later stage relies on.

use tdl_ir::{verify, Graph, VerifiedGraph, VerifyError};

/// A named transformation of a graph.
pub trait Pass {
    /// The name used by `--print-after`, `--disable-pass` and the docs.
    fn name(&self) -> &'static str;
    /// Transforms the graph; returns whether anything changed.
    fn run(&self, g: &mut Graph) -> bool;
}

/// Removes nodes no result depends on (parameters stay).
pub struct DeadNodeRemoval;

impl Pass for DeadNodeRemoval {
    fn name(&self) -> &'static str {
        "dead-node-removal"
    }

    fn run(&self, g: &mut Graph) -> bool {
        g.remove_dead_nodes() > 0
    }
}

/// The passes, in order. Ordering constraints are written beside each.
pub fn default_pipeline() -> Vec<Box<dyn Pass>> {
    vec![
        // First: later passes assume every node is live.
        Box::new(DeadNodeRemoval),
    ]
}

/// What running one pass did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassReport {
    pub pass: &'static str,
    pub changed: bool,
}

/// Runs `passes` in order, verifying after each. The error names the pass
/// that produced an invalid graph.
pub fn run_pipeline(
    g: VerifiedGraph,
    passes: &[Box<dyn Pass>],
) -> Result<(VerifiedGraph, Vec<PassReport>), (&'static str, VerifyError)> {
    let mut g = g;
    let mut reports = Vec::new();
    for p in passes {
        let mut raw = g.into_inner();
        let changed = p.run(&mut raw);
        g = verify(raw).map_err(|e| (p.name(), e))?;
        reports.push(PassReport { pass: p.name(), changed });
    }
    Ok((g, reports))
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
        let (g, reports) = run_pipeline(verify(g).unwrap(), &default_pipeline()).unwrap();
        assert_eq!(reports, vec![PassReport { pass: "dead-node-removal", changed: true }]);
        assert_eq!(g.node_count(), 2);
        let (_, again) = run_pipeline(g, &default_pipeline()).unwrap();
        assert!(!again[0].changed);
    }
}
