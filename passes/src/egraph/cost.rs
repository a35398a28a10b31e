//! The cost model and the extractor.
//!
//! A node costs `flops + BYTE_WEIGHT · bytes`, where bytes are what it reads
//! and writes in main memory (4 bytes an element, whatever the element type:
//! the model compares schedules, it does not predict times). Symbolic
//! dimensions are costed at [`SYMBOL_SIZE`]. A materialised `T×S` score
//! matrix costs what it costs: `softmax` reads its input three times (max,
//! exp-sum, normalise: FuseMax's three passes) and writes it once, while a
//! fused `attention` streams K and V and never stores scores.
//!
//! Extraction is greedy over the DAG: a class's cost is the sum of the costs
//! of the *distinct* classes its best term uses, so a shared subexpression
//! is counted once.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use egg::Id;
use tdl_ir::{Dim, Op, TensorType, Type};

use super::{op_of, TEGraph, TL};

/// The size every symbolic dimension is costed at.
pub const SYMBOL_SIZE: f64 = 1024.0;
/// How many flops one byte of memory traffic is worth.
pub const BYTE_WEIGHT: f64 = 8.0;

fn dim_value(d: &Dim) -> f64 {
    d.terms().map(|(m, c)| c as f64 * SYMBOL_SIZE.powi(m.len() as i32)).sum::<f64>().max(1.0)
}

fn elems(t: &TensorType) -> f64 {
    t.shape.iter().map(dim_value).product()
}

fn elems_of(ty: Option<&Type>) -> f64 {
    ty.and_then(|t| t.as_tensor()).map_or(0.0, elems)
}

/// Flops and bytes of one operator, given its operand types and its own.
pub fn flops_bytes(op: &Op, ins: &[Option<&Type>], out: Option<&Type>) -> (f64, f64) {
    let n = elems_of(out);
    let read: f64 = ins.iter().map(|t| elems_of(*t)).sum();
    let shape = |i: usize| ins.get(i).copied().flatten().and_then(|t| t.as_tensor());
    match op {
        Op::Input { .. } | Op::Constant(_) | Op::Mask(_) | Op::Reshape { .. } => (0.0, 0.0),
        Op::Unary(_) | Op::Binary(_) | Op::Where => (n, 4.0 * (read + n)),
        Op::MatMul => {
            let k = shape(0).and_then(|t| t.shape.last()).map_or(1.0, dim_value);
            (2.0 * n * k, 4.0 * (read + n))
        }
        Op::Reduce { .. } => (read, 4.0 * (read + n)),
        Op::Softmax { .. } => (5.0 * n, 4.0 * (3.0 * read + n)),
        Op::Transpose | Op::Permute { .. } | Op::Slice { .. } | Op::Concat { .. } | Op::Repeat { .. } => (0.0, 8.0 * n),
        Op::LayerNorm { .. } | Op::RmsNorm { .. } => (5.0 * n, 4.0 * (read + n)),
        Op::Rope { .. } => (6.0 * n, 8.0 * n),
        Op::Attention { score, .. } => {
            // out: [.., T, Dv]; q: [.., T, D]; k: [.., S, D].
            let (Some(q), Some(k), Some(o)) = (shape(0), shape(1), out.and_then(|t| t.as_tensor())) else {
                return (0.0, 0.0);
            };
            let d = q.shape.last().map_or(1.0, dim_value);
            let dv = o.shape.last().map_or(1.0, dim_value);
            let s = k.shape.get(k.rank().wrapping_sub(2)).map_or(1.0, dim_value);
            let t = o.shape.get(o.rank().wrapping_sub(2)).map_or(1.0, dim_value);
            let heads = elems(o) / (t * dv);
            let modifier = if score.is_some() { 4.0 } else { 0.0 };
            let flops = heads * t * s * (2.0 * d + 2.0 * dv + 5.0 + modifier);
            let bytes = 4.0 * (elems(q) + elems(k) + shape(2).map_or(0.0, elems) + elems(o));
            (flops, bytes)
        }
    }
}

/// The cost of one e-node.
pub fn node_cost(egraph: &TEGraph, n: &TL, class: Id) -> f64 {
    let Some((op, xs)) = op_of(egraph, n) else { return 0.0 };
    let ins: Vec<Option<&Type>> = xs.iter().map(|x| egraph[*x].data.ty.as_ref()).collect();
    let (f, b) = flops_bytes(&op, &ins, egraph[class].data.ty.as_ref());
    f + BYTE_WEIGHT * b
}

type CostSet = Rc<BTreeMap<Id, f64>>;

/// Chooses one e-node per class, greedily minimising the summed cost of the
/// distinct classes each choice uses. Returns the choices and, per root,
/// nothing more: see [`dag_cost`] for the cost of the extracted program.
pub fn extract(egraph: &TEGraph) -> HashMap<Id, TL> {
    let classes = super::classes_sorted(egraph);
    let mut best: HashMap<Id, (TL, CostSet, f64)> = HashMap::new();
    let mut changed = true;
    let mut rounds = 0;
    while changed && rounds < 10_000 {
        changed = false;
        rounds += 1;
        for &c in &classes {
            for n in &egraph[c].nodes {
                let kids: Vec<Id> = n.children().iter().map(|k| egraph.find(*k)).collect();
                if kids.iter().any(|k| !best.contains_key(k)) {
                    continue;
                }
                if kids.iter().any(|k| *k == c || best[k].1.contains_key(&c)) {
                    continue; // would use itself: a cycle
                }
                let mut set: BTreeMap<Id, f64> = BTreeMap::new();
                for k in &kids {
                    for (cls, cost) in best[k].1.iter() {
                        set.insert(*cls, *cost);
                    }
                }
                set.insert(c, node_cost(egraph, n, c));
                let total: f64 = set.values().sum();
                let better = match best.get(&c) {
                    None => true,
                    Some((_, _, old)) => total < *old * (1.0 - 1e-12) - 1e-9,
                };
                if better {
                    best.insert(c, (n.clone(), Rc::new(set), total));
                    changed = true;
                }
            }
        }
    }
    best.into_iter().map(|(c, (n, _, _))| (c, n)).collect()
}

/// The cost of the program the choices describe from `roots`, counting each
/// class once.
pub fn dag_cost(egraph: &TEGraph, roots: &[Id], choice: &HashMap<Id, TL>) -> f64 {
    let mut seen = std::collections::HashSet::new();
    let mut stack: Vec<Id> = roots.iter().map(|r| egraph.find(*r)).collect();
    let mut total = 0.0;
    while let Some(c) = stack.pop() {
        if !seen.insert(c) {
            continue;
        }
        if let Some(n) = choice.get(&c) {
            total += node_cost(egraph, n, c);
            stack.extend(n.children().iter().map(|k| egraph.find(*k)));
        }
    }
    total
}

/// The cost of a graph, each node once (used for "cost before").
pub fn graph_cost(g: &tdl_ir::Graph) -> f64 {
    let mut total = 0.0;
    for id in g.node_ids() {
        let node = g.node(id);
        let ins: Vec<Option<&Type>> = g.inputs(id).iter().map(|i| Some(&g.node(*i).ty)).collect();
        let (f, b) = flops_bytes(&node.op, &ins, Some(&node.ty));
        total += f + BYTE_WEIGHT * b;
    }
    total
}

use egg::Language as _;
