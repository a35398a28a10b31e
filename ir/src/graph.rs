//! The typed dataflow graph.
//!
//! A [`Graph`] is a petgraph `StableDiGraph` whose nodes are operators with
//! their result type and whose edges run from a producer to a consumer,
//! weighted by the operand position. petgraph's indices never leave this
//! module: callers hold [`NodeId`]s.
//!
//! Invariants (checked by [`crate::verify()`]): the graph is acyclic; each
//! node has exactly one edge per operand position `0..n`; parameter `i` is
//! the node `Op::Input { index: i }`; every result is a tensor whose type
//! equals the declared result type.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::fmt;

use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

use crate::op::Op;
use crate::span::Span;
use crate::types::{TensorType, Type};

/// A handle to a node of one [`Graph`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(NodeIndex<u32>);

impl NodeId {
    /// The raw index; stable for the life of the node, not across graphs.
    pub fn index(self) -> usize {
        self.0.index()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0.index())
    }
}

/// An operator, the type of the value it produces, where it came from and
/// the `let` name it was bound to, if any.
#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    pub ty: Type,
    pub span: Option<Span>,
    pub name: Option<String>,
}

/// A graph parameter.
#[derive(Clone, Debug)]
pub struct Param {
    pub name: String,
    pub ty: TensorType,
    pub node: NodeId,
    pub span: Option<Span>,
}

/// A typed dataflow graph with named parameters and one or more results.
#[derive(Clone, Debug)]
pub struct Graph {
    pub name: String,
    pub span: Option<Span>,
    params: Vec<Param>,
    results: Vec<NodeId>,
    result_types: Vec<TensorType>,
    g: StableDiGraph<Node, u32>,
}

impl Graph {
    pub fn new(name: impl Into<String>) -> Graph {
        Graph {
            name: name.into(),
            span: None,
            params: Vec::new(),
            results: Vec::new(),
            result_types: Vec::new(),
            g: StableDiGraph::new(),
        }
    }

    /// Adds parameter number `params().len()` and its `Input` node.
    pub fn add_param(&mut self, name: impl Into<String>, ty: TensorType, span: Option<Span>) -> NodeId {
        let name = name.into();
        let index = self.params.len();
        let node = self.add_node(Op::Input { index }, Type::Tensor(ty.clone()), &[], span);
        self.g[node.0].name = Some(name.clone());
        self.params.push(Param { name, ty, node, span });
        node
    }

    /// Adds a node whose operands are `inputs`, in order.
    pub fn add_node(&mut self, op: Op, ty: Type, inputs: &[NodeId], span: Option<Span>) -> NodeId {
        let id = NodeId(self.g.add_node(Node { op, ty, span, name: None }));
        for (pos, input) in inputs.iter().enumerate() {
            self.g.add_edge(input.0, id.0, pos as u32);
        }
        id
    }

    /// Declares the results and their types.
    pub fn set_results(&mut self, results: Vec<NodeId>, types: Vec<TensorType>) {
        self.results = results;
        self.result_types = types;
    }

    pub fn params(&self) -> &[Param] {
        &self.params
    }

    pub fn results(&self) -> &[NodeId] {
        &self.results
    }

    pub fn result_types(&self) -> &[TensorType] {
        &self.result_types
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.g[id.0]
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.g[id.0]
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.g.contains_node(id.0)
    }

    pub fn node_count(&self) -> usize {
        self.g.node_count()
    }

    /// All node ids, by index. (petgraph reuses the slots of removed nodes,
    /// so after a removal this is not necessarily insertion order.)
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.g.node_indices().map(NodeId).collect()
    }

    /// The operands of `id`, in operand order.
    pub fn inputs(&self, id: NodeId) -> Vec<NodeId> {
        let mut edges: Vec<(u32, NodeId)> =
            self.g.edges_directed(id.0, Direction::Incoming).map(|e| (*e.weight(), NodeId(e.source()))).collect();
        edges.sort_by_key(|(pos, _)| *pos);
        edges.into_iter().map(|(_, n)| n).collect()
    }

    /// The operand positions of `id` as recorded on its edges, sorted. The
    /// verifier checks these are exactly `0..n`.
    pub fn operand_positions(&self, id: NodeId) -> Vec<u32> {
        let mut pos: Vec<u32> = self.g.edges_directed(id.0, Direction::Incoming).map(|e| *e.weight()).collect();
        pos.sort_unstable();
        pos
    }

    /// The distinct nodes that use `id` as an operand, sorted.
    pub fn users(&self, id: NodeId) -> Vec<NodeId> {
        let set: BTreeSet<NodeId> =
            self.g.edges_directed(id.0, Direction::Outgoing).map(|e| NodeId(e.target())).collect();
        set.into_iter().collect()
    }

    /// A topological order, deterministic: among ready nodes the one with the
    /// lowest index comes first (Kahn's algorithm with a min-heap). A graph
    /// built in a topological order with no removals in between (as the text
    /// parser builds one) is listed in exactly that order, which is what
    /// makes print → parse → print the identity. `None` on a cycle.
    pub fn topo_order(&self) -> Option<Vec<NodeId>> {
        let mut indeg: std::collections::HashMap<NodeIndex<u32>, usize> = std::collections::HashMap::new();
        let mut heap = BinaryHeap::new();
        for n in self.g.node_indices() {
            let d = self.g.edges_directed(n, Direction::Incoming).count();
            indeg.insert(n, d);
            if d == 0 {
                heap.push(Reverse(n));
            }
        }
        let mut out = Vec::with_capacity(self.g.node_count());
        while let Some(Reverse(n)) = heap.pop() {
            out.push(NodeId(n));
            for e in self.g.edges_directed(n, Direction::Outgoing) {
                let t = e.target();
                let d = indeg.get_mut(&t)?;
                *d -= 1;
                if *d == 0 {
                    heap.push(Reverse(t));
                }
            }
        }
        (out.len() == self.g.node_count()).then_some(out)
    }

    /// Removes every node no result depends on, except parameters. Returns
    /// how many nodes were removed.
    pub fn remove_dead_nodes(&mut self) -> usize {
        let mut live: BTreeSet<NodeIndex<u32>> = BTreeSet::new();
        let mut stack: Vec<NodeIndex<u32>> = self.results.iter().map(|r| r.0).collect();
        while let Some(n) = stack.pop() {
            if live.insert(n) {
                stack.extend(self.g.edges_directed(n, Direction::Incoming).map(|e| e.source()));
            }
        }
        live.extend(self.params.iter().map(|p| p.node.0));
        let dead: Vec<NodeIndex<u32>> = self.g.node_indices().filter(|n| !live.contains(n)).collect();
        for n in &dead {
            self.g.remove_node(*n);
        }
        dead.len()
    }

    /// Every dimension symbol mentioned by a parameter, sorted.
    pub fn symbols(&self) -> Vec<String> {
        let mut out: Vec<String> = self.params.iter().flat_map(|p| p.ty.symbols()).collect();
        out.sort();
        out.dedup();
        out
    }

    /// `name(q: f32[H, T, D], ...) -> f32[H, T, D]`, as `tdlc check` prints it.
    pub fn signature(&self) -> String {
        let params: Vec<String> = self.params.iter().map(|p| format!("{}: {}", p.name, p.ty)).collect();
        let results: Vec<String> = self.result_types.iter().map(|t| t.to_string()).collect();
        let ret = if results.len() == 1 { results[0].clone() } else { format!("({})", results.join(", ")) };
        format!("{}({}) -> {}", self.name, params.join(", "), ret)
    }
}

/// The graphs of one `.tdl` file, in source order.
#[derive(Clone, Debug, Default)]
pub struct Module {
    pub graphs: Vec<Graph>,
}

impl Module {
    pub fn graph(&self, name: &str) -> Option<&Graph> {
        self.graphs.iter().find(|g| g.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::{BinaryOp, UnaryOp};
    use crate::types::{DType, Dim};

    fn t(shape: &[&str]) -> TensorType {
        TensorType::new(
            DType::F32,
            shape.iter().map(|s| s.parse::<i64>().map(Dim::constant).unwrap_or_else(|_| Dim::sym(s))).collect(),
        )
    }

    #[test]
    fn inputs_come_back_in_operand_order() {
        let mut g = Graph::new("g");
        let a = g.add_param("a", t(&["T"]), None);
        let b = g.add_param("b", t(&["T"]), None);
        let s = g.add_node(Op::Binary(BinaryOp::Sub), Type::Tensor(t(&["T"])), &[b, a], None);
        assert_eq!(g.inputs(s), vec![b, a]);
        let sq = g.add_node(Op::Binary(BinaryOp::Mul), Type::Tensor(t(&["T"])), &[s, s], None);
        assert_eq!(g.inputs(sq), vec![s, s]);
        assert_eq!(g.users(s), vec![sq]);
        g.set_results(vec![sq], vec![t(&["T"])]);
        assert_eq!(g.topo_order().unwrap(), vec![a, b, s, sq]);
        assert_eq!(g.signature(), "g(a: f32[T], b: f32[T]) -> f32[T]");
    }

    #[test]
    fn dead_nodes_go_parameters_stay() {
        let mut g = Graph::new("g");
        let a = g.add_param("a", t(&["4"]), None);
        let _unused = g.add_param("b", t(&["4"]), None);
        let dead = g.add_node(Op::Unary(UnaryOp::Exp), Type::Tensor(t(&["4"])), &[a], None);
        let live = g.add_node(Op::Unary(UnaryOp::Neg), Type::Tensor(t(&["4"])), &[a], None);
        g.set_results(vec![live], vec![t(&["4"])]);
        assert_eq!(g.remove_dead_nodes(), 1);
        assert!(!g.contains(dead));
        assert_eq!(g.node_count(), 3);
    }
}
