//! The graph verifier, and [`VerifiedGraph`], the proof that a graph passed.
//!
//! A verifier error is always a bug in whoever built the graph (the frontend
//! reports user errors itself, with spans), so errors name the node and say
//! what is wrong with it.

use std::fmt;

use crate::graph::{Graph, NodeId};
use crate::infer::infer_type;
use crate::op::Op;
use crate::types::Type;

/// What is wrong with a graph, and where.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("graph `{graph}`: {node}: {message}")]
pub struct VerifyError {
    pub graph: String,
    /// The offending node (`n12`), or `graph` for whole-graph problems.
    pub node: String,
    pub message: String,
}

/// A graph that passed [`verify`]. Lowering and backends take this type, so
/// they cannot be handed an unchecked graph.
#[derive(Clone, Debug)]
pub struct VerifiedGraph(Graph);

impl VerifiedGraph {
    pub fn graph(&self) -> &Graph {
        &self.0
    }

    pub fn into_inner(self) -> Graph {
        self.0
    }
}

impl std::ops::Deref for VerifiedGraph {
    type Target = Graph;
    fn deref(&self) -> &Graph {
        &self.0
    }
}

impl fmt::Display for VerifiedGraph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", crate::text::print_graph(&self.0))
    }
}

/// Checks every invariant written on [`Graph`] and re-derives every node's
/// type with the shared type rules.
pub fn verify(g: Graph) -> Result<VerifiedGraph, VerifyError> {
    check(&g)?;
    Ok(VerifiedGraph(g))
}

fn err(g: &Graph, node: Option<NodeId>, message: impl Into<String>) -> VerifyError {
    VerifyError {
        graph: g.name.clone(),
        node: node.map_or_else(|| "graph".to_string(), |n| n.to_string()),
        message: message.into(),
    }
}

fn check(g: &Graph) -> Result<(), VerifyError> {
    let order = g.topo_order().ok_or_else(|| err(g, None, "the graph has a cycle"))?;
    for (i, p) in g.params().iter().enumerate() {
        if !g.contains(p.node) {
            return Err(err(g, None, format!("parameter {i} (`{}`) has no node", p.name)));
        }
        let n = g.node(p.node);
        if n.op != (Op::Input { index: i }) || n.ty != Type::Tensor(p.ty.clone()) {
            return Err(err(
                g,
                Some(p.node),
                format!("parameter {i} (`{}`) is not `input {i}` of type {}", p.name, p.ty),
            ));
        }
    }
    for id in order {
        let node = g.node(id);
        let positions = g.operand_positions(id);
        if positions.iter().enumerate().any(|(i, p)| *p as usize != i) {
            return Err(err(g, Some(id), format!("operand positions {positions:?} are not 0..{}", positions.len())));
        }
        if let Op::Input { index } = node.op {
            if g.params().get(index).map(|p| p.node) != Some(id) {
                return Err(err(g, Some(id), format!("`input {index}` is not parameter {index}")));
            }
            continue;
        }
        let measured = match &node.op {
            Op::Mask(m) => Some(m.measure()),
            Op::Attention { score: Some(e), .. } => Some(e.measure()),
            _ => None,
        };
        if let Some(m) = measured {
            crate::mask::check_expr_limits(m).map_err(|e| err(g, Some(id), format!("`{}`: {e}", node.op.name())))?;
        }
        let inputs = g.inputs(id);
        let tys: Vec<&Type> = inputs.iter().map(|i| &g.node(*i).ty).collect();
        let inferred =
            infer_type(&node.op, &tys).map_err(|e| err(g, Some(id), format!("`{}`: {e}", node.op.name())))?;
        if inferred != node.ty {
            return Err(err(
                g,
                Some(id),
                format!("`{}` is typed {} but its operands give {inferred}", node.op.name(), node.ty),
            ));
        }
    }
    if g.results().is_empty() {
        return Err(err(g, None, "the graph has no results"));
    }
    if g.results().len() != g.result_types().len() {
        return Err(err(g, None, "result count differs from the declared result types"));
    }
    for (r, ty) in g.results().iter().zip(g.result_types()) {
        if !g.contains(*r) {
            return Err(err(g, None, format!("result {r} does not exist")));
        }
        if g.node(*r).ty != Type::Tensor(ty.clone()) {
            return Err(err(g, Some(*r), format!("result has type {} but {ty} is declared", g.node(*r).ty)));
        }
    }
    Ok(())
}
