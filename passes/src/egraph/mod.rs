//! The e-graph IR: the tensor language as an egg [`Language`], the
//! per-class [`TensorAnalysis`], and conversion from and to [`Graph`].
//!
//! Every operator of the graph IR is an e-node. Operators with attributes
//! (axes, shapes, constants, masks, attention settings) take one extra first
//! child: an [`TL::Attr`] leaf naming the whole `Op` in the analysis's
//! attribute table, so patterns can match structure (`(softmax ?ax ?x)`)
//! and conditions read attributes (`axis is the last one`).
//!
//! Specification nodes are the contract's operators (matmul, softmax, …);
//! `attention` is the implementation node the fusion rules introduce.
//!
//! **Invariant:** every class holding tensors has one type; a merge of two
//! classes with different types is recorded as a soundness violation (an
//! unsound rule), which the phase turns into an internal error.

pub mod cost;
pub mod phase;
pub mod rules;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;

use egg::{define_language, Analysis, DidMerge, EGraph, Id};
use tdl_ir::infer::infer_type;
use tdl_ir::{BinaryOp, Graph, NodeId, Op, ReduceOp, Span, Type, UnaryOp};

/// A key into the attribute table (`#12` in e-graph text).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttrKey(pub u32);

impl fmt::Display for AttrKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

impl FromStr for AttrKey {
    type Err = String;
    fn from_str(s: &str) -> Result<AttrKey, String> {
        s.strip_prefix('#')
            .and_then(|n| n.parse().ok())
            .map(AttrKey)
            .ok_or_else(|| format!("not an attribute key: {s}"))
    }
}

define_language! {
    /// The tensor language. Attribute children come first.
    pub enum TL {
        "input" = Input([Id; 1]),
        "const" = Const([Id; 1]),
        "neg" = Neg([Id; 1]),
        "exp" = Exp([Id; 1]),
        "log" = Log([Id; 1]),
        "sqrt" = Sqrt([Id; 1]),
        "rsqrt" = Rsqrt([Id; 1]),
        "tanh" = Tanh([Id; 1]),
        "sigmoid" = Sigmoid([Id; 1]),
        "relu" = Relu([Id; 1]),
        "gelu" = Gelu([Id; 1]),
        "silu" = Silu([Id; 1]),
        "abs" = Abs([Id; 1]),
        "add" = Add([Id; 2]),
        "sub" = Sub([Id; 2]),
        "mul" = Mul([Id; 2]),
        "div" = Div([Id; 2]),
        "matmul" = MatMul([Id; 2]),
        "sum" = Sum([Id; 2]),
        "max" = Max([Id; 2]),
        "mean" = Mean([Id; 2]),
        "softmax" = Softmax([Id; 2]),
        "transpose" = Transpose([Id; 1]),
        "permute" = Permute([Id; 2]),
        "reshape" = Reshape([Id; 2]),
        "concat" = Concat(Box<[Id]>),
        "slice" = Slice([Id; 2]),
        "repeat" = Repeat([Id; 2]),
        "where" = Where([Id; 3]),
        "layernorm" = LayerNorm([Id; 4]),
        "rmsnorm" = RmsNorm([Id; 3]),
        "rope" = Rope([Id; 2]),
        "attention" = Attention(Box<[Id]>),
        "mask" = Mask(Box<[Id]>),
        Attr(AttrKey),
    }
}

/// What the analysis knows about a class.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassData {
    /// The type of the values in the class; `None` for attribute leaves.
    pub ty: Option<Type>,
    /// For an attribute leaf, its key.
    pub attr: Option<AttrKey>,
    /// The value, when the class is a rank-0 constant.
    pub scalar: Option<f64>,
    /// The mask descriptor: the expression, when the class holds a mask
    /// (operand positions refer to that e-node's operands).
    pub mask: Option<tdl_ir::MaskExpr>,
    /// Whether the value depends only on constants. (Weights bound at
    /// compile time will count as constants too; they are run-time inputs
    /// today.)
    pub constant_only: bool,
}

/// The analysis: the attribute table, and the soundness violations seen.
#[derive(Debug, Default)]
pub struct TensorAnalysis {
    attrs: Vec<Op>,
    index: HashMap<String, AttrKey>,
    /// Merges of classes whose types differ: each one is a bug in a rule.
    pub violations: Vec<String>,
}

impl TensorAnalysis {
    /// Interns an attribute-carrying operator.
    pub fn intern(&mut self, op: Op) -> AttrKey {
        let key = format!("{op:?}");
        if let Some(k) = self.index.get(&key) {
            return *k;
        }
        let k = AttrKey(self.attrs.len() as u32);
        self.attrs.push(op);
        self.index.insert(key, k);
        k
    }

    pub fn attr(&self, k: AttrKey) -> &Op {
        &self.attrs[k.0 as usize]
    }
}

pub type TEGraph = EGraph<TL, TensorAnalysis>;

/// Whether an operator carries attributes (and so an attribute child).
pub fn has_attr(op: &Op) -> bool {
    !matches!(op, Op::Unary(_) | Op::Binary(_) | Op::MatMul | Op::Transpose | Op::Where)
}

/// The e-node for `op` with attribute leaf `attr` (when `has_attr(op)`) and
/// tensor children `xs`.
pub fn enode(op: &Op, attr: Option<Id>, xs: &[Id]) -> TL {
    let a = || attr.unwrap_or(Id::from(0usize));
    let with_attr = |xs: &[Id]| -> Box<[Id]> { std::iter::once(a()).chain(xs.iter().copied()).collect() };
    match op {
        Op::Input { .. } => TL::Input([a()]),
        Op::Constant(_) => TL::Const([a()]),
        Op::Unary(u) => {
            let x = [xs[0]];
            match u {
                UnaryOp::Neg => TL::Neg(x),
                UnaryOp::Exp => TL::Exp(x),
                UnaryOp::Log => TL::Log(x),
                UnaryOp::Sqrt => TL::Sqrt(x),
                UnaryOp::Rsqrt => TL::Rsqrt(x),
                UnaryOp::Tanh => TL::Tanh(x),
                UnaryOp::Sigmoid => TL::Sigmoid(x),
                UnaryOp::Relu => TL::Relu(x),
                UnaryOp::Gelu => TL::Gelu(x),
                UnaryOp::Silu => TL::Silu(x),
                UnaryOp::Abs => TL::Abs(x),
            }
        }
        Op::Binary(b) => {
            let x = [xs[0], xs[1]];
            match b {
                BinaryOp::Add => TL::Add(x),
                BinaryOp::Sub => TL::Sub(x),
                BinaryOp::Mul => TL::Mul(x),
                BinaryOp::Div => TL::Div(x),
            }
        }
        Op::MatMul => TL::MatMul([xs[0], xs[1]]),
        Op::Reduce { op: r, .. } => match r {
            ReduceOp::Sum => TL::Sum([a(), xs[0]]),
            ReduceOp::Max => TL::Max([a(), xs[0]]),
            ReduceOp::Mean => TL::Mean([a(), xs[0]]),
        },
        Op::Softmax { .. } => TL::Softmax([a(), xs[0]]),
        Op::Transpose => TL::Transpose([xs[0]]),
        Op::Permute { .. } => TL::Permute([a(), xs[0]]),
        Op::Reshape { .. } => TL::Reshape([a(), xs[0]]),
        Op::Concat { .. } => TL::Concat(with_attr(xs)),
        Op::Slice { .. } => TL::Slice([a(), xs[0]]),
        Op::Repeat { .. } => TL::Repeat([a(), xs[0]]),
        Op::Where => TL::Where([xs[0], xs[1], xs[2]]),
        Op::LayerNorm { .. } => TL::LayerNorm([a(), xs[0], xs[1], xs[2]]),
        Op::RmsNorm { .. } => TL::RmsNorm([a(), xs[0], xs[1]]),
        Op::Rope { .. } => TL::Rope([a(), xs[0]]),
        Op::Attention { .. } => TL::Attention(with_attr(xs)),
        Op::Mask(_) => TL::Mask(with_attr(xs)),
    }
}

/// The graph operator of an e-node and its tensor children, reading the
/// attribute from the table. `None` for attribute leaves.
pub fn op_of(egraph: &TEGraph, n: &TL) -> Option<(Op, Vec<Id>)> {
    let attr_op = |id: Id| -> Option<Op> {
        let k = egraph[id].data.attr?;
        Some(egraph.analysis.attr(k).clone())
    };
    let simple = |op: Op, xs: &[Id]| Some((op, xs.to_vec()));
    match n {
        TL::Attr(_) => None,
        TL::Input([a]) | TL::Const([a]) => Some((attr_op(*a)?, Vec::new())),
        TL::Neg(x) => simple(Op::Unary(UnaryOp::Neg), x),
        TL::Exp(x) => simple(Op::Unary(UnaryOp::Exp), x),
        TL::Log(x) => simple(Op::Unary(UnaryOp::Log), x),
        TL::Sqrt(x) => simple(Op::Unary(UnaryOp::Sqrt), x),
        TL::Rsqrt(x) => simple(Op::Unary(UnaryOp::Rsqrt), x),
        TL::Tanh(x) => simple(Op::Unary(UnaryOp::Tanh), x),
        TL::Sigmoid(x) => simple(Op::Unary(UnaryOp::Sigmoid), x),
        TL::Relu(x) => simple(Op::Unary(UnaryOp::Relu), x),
        TL::Gelu(x) => simple(Op::Unary(UnaryOp::Gelu), x),
        TL::Silu(x) => simple(Op::Unary(UnaryOp::Silu), x),
        TL::Abs(x) => simple(Op::Unary(UnaryOp::Abs), x),
        TL::Add(x) => simple(Op::Binary(BinaryOp::Add), x),
        TL::Sub(x) => simple(Op::Binary(BinaryOp::Sub), x),
        TL::Mul(x) => simple(Op::Binary(BinaryOp::Mul), x),
        TL::Div(x) => simple(Op::Binary(BinaryOp::Div), x),
        TL::MatMul(x) => simple(Op::MatMul, x),
        TL::Transpose(x) => simple(Op::Transpose, x),
        TL::Where(x) => simple(Op::Where, x),
        TL::Sum([a, x])
        | TL::Max([a, x])
        | TL::Mean([a, x])
        | TL::Softmax([a, x])
        | TL::Permute([a, x])
        | TL::Reshape([a, x])
        | TL::Slice([a, x])
        | TL::Repeat([a, x])
        | TL::Rope([a, x]) => Some((attr_op(*a)?, vec![*x])),
        TL::LayerNorm([a, x, g, b]) => Some((attr_op(*a)?, vec![*x, *g, *b])),
        TL::RmsNorm([a, x, g]) => Some((attr_op(*a)?, vec![*x, *g])),
        TL::Concat(ids) | TL::Attention(ids) | TL::Mask(ids) => Some((attr_op(ids[0])?, ids[1..].to_vec())),
    }
}

impl Analysis<TL> for TensorAnalysis {
    type Data = ClassData;

    fn make(egraph: &mut TEGraph, enode: &TL, _id: Id) -> ClassData {
        if let TL::Attr(k) = enode {
            return ClassData { ty: None, attr: Some(*k), scalar: None, mask: None, constant_only: true };
        }
        let Some((op, xs)) = op_of(egraph, enode) else {
            egraph.analysis.violations.push(format!("an e-node with a missing attribute: {enode:?}"));
            return ClassData { ty: None, attr: None, scalar: None, mask: None, constant_only: false };
        };
        let scalar = match &op {
            Op::Constant(c) if c.shape.is_empty() && c.data.len() == 1 => Some(c.data[0]),
            _ => None,
        };
        let mask = match &op {
            Op::Mask(m) => Some(m.clone()),
            _ => None,
        };
        let constant_only = match &op {
            Op::Input { .. } => false,
            _ => xs.iter().all(|x| egraph[*x].data.constant_only),
        };
        let ty = match &op {
            Op::Input { .. } => None, // set by the converter, which knows the parameter types
            _ => {
                let tys: Vec<Option<Type>> = xs.iter().map(|x| egraph[*x].data.ty.clone()).collect();
                if tys.iter().any(|t| t.is_none()) {
                    None
                } else {
                    let refs: Vec<&Type> = tys.iter().flatten().collect();
                    match infer_type(&op, &refs) {
                        Ok(t) => Some(t),
                        Err(e) => {
                            egraph.analysis.violations.push(format!("a rule built an ill-typed `{}`: {e}", op.name()));
                            None
                        }
                    }
                }
            }
        };
        ClassData { ty, attr: None, scalar, mask, constant_only }
    }

    fn merge(&mut self, a: &mut ClassData, b: ClassData) -> DidMerge {
        let mut changed_a = false;
        match (&a.ty, &b.ty) {
            (Some(x), Some(y)) if x != y => {
                self.violations.push(format!("merged classes of different types: {x} and {y}"));
            }
            (None, Some(_)) => {
                a.ty = b.ty.clone();
                changed_a = true;
            }
            _ => {}
        }
        if a.scalar.is_none() && b.scalar.is_some() {
            a.scalar = b.scalar;
            changed_a = true;
        }
        if a.mask.is_none() && b.mask.is_some() {
            a.mask = b.mask;
            changed_a = true;
        }
        if !a.constant_only && b.constant_only {
            a.constant_only = true;
            changed_a = true;
        }
        DidMerge(changed_a, true)
    }
}

/// An e-graph built from a graph, with the class of every graph node and
/// what is needed to build a graph back.
pub struct Converted {
    pub egraph: TEGraph,
    /// The class of each result, in order.
    pub roots: Vec<Id>,
    /// A source span and `let` name per class, where the graph had one
    /// (ordered, so merging classes keeps a deterministic one).
    pub origins: BTreeMap<Id, (Option<Span>, Option<String>)>,
}

/// Graph → e-graph.
pub fn from_graph(g: &Graph) -> Converted {
    let mut egraph = TEGraph::default();
    let mut class: HashMap<NodeId, Id> = HashMap::new();
    let mut origins = BTreeMap::new();
    for id in g.topo_order().unwrap_or_default() {
        let node = g.node(id);
        let xs: Vec<Id> = g.inputs(id).iter().map(|i| class[i]).collect();
        let attr = has_attr(&node.op).then(|| {
            let k = egraph.analysis.intern(node.op.clone());
            egraph.add(TL::Attr(k))
        });
        let c = egraph.add(enode(&node.op, attr, &xs));
        if let Op::Input { .. } = node.op {
            egraph[c].data.ty = Some(node.ty.clone());
        }
        origins.entry(c).or_insert((node.span, node.name.clone()));
        class.insert(id, c);
    }
    egraph.rebuild();
    let roots = g.results().iter().map(|r| egraph.find(class[r])).collect();
    let origins = canonical_origins(&egraph, &origins);
    Converted { egraph, roots, origins }
}

/// The origins keyed by canonical class: where classes merged, the one
/// added first (the earliest in the graph) wins, deterministically.
pub fn canonical_origins(
    egraph: &TEGraph,
    origins: &BTreeMap<Id, (Option<Span>, Option<String>)>,
) -> BTreeMap<Id, (Option<Span>, Option<String>)> {
    let mut out = BTreeMap::new();
    for (c, o) in origins {
        out.entry(egraph.find(*c)).or_insert_with(|| o.clone());
    }
    out
}

/// Adds `op` over `xs` to the e-graph (interning its attribute).
pub fn add_op(egraph: &mut TEGraph, op: Op, xs: &[Id]) -> Id {
    let attr = has_attr(&op).then(|| {
        let k = egraph.analysis.intern(op.clone());
        egraph.add(TL::Attr(k))
    });
    egraph.add(enode(&op, attr, xs))
}

/// E-graph → graph, following one chosen e-node per class from the roots.
/// Parameters keep their order, names and types.
pub fn to_graph(
    original: &Graph,
    egraph: &TEGraph,
    roots: &[Id],
    choice: &HashMap<Id, TL>,
    origins: &BTreeMap<Id, (Option<Span>, Option<String>)>,
) -> Result<Graph, String> {
    let mut g = Graph::new(original.name.clone());
    g.span = original.span;
    let mut params = Vec::new();
    for p in original.params() {
        params.push(g.add_param(p.name.clone(), p.ty.clone(), p.span));
    }
    let mut built: HashMap<Id, NodeId> = HashMap::new();
    // Iterative post-order, so deep graphs need no deep recursion.
    for &root in roots {
        let mut stack = vec![(egraph.find(root), false)];
        while let Some((c, expanded)) = stack.pop() {
            if built.contains_key(&c) {
                continue;
            }
            let n = choice.get(&c).ok_or_else(|| format!("no e-node chosen for class {c}"))?;
            let (op, xs) = op_of(egraph, n).ok_or_else(|| format!("class {c} holds no operator"))?;
            let xs: Vec<Id> = xs.iter().map(|x| egraph.find(*x)).collect();
            if !expanded {
                stack.push((c, true));
                for x in xs.iter().rev() {
                    if !built.contains_key(x) {
                        stack.push((*x, false));
                    }
                }
                continue;
            }
            let id = if let Op::Input { index } = op {
                *params.get(index).ok_or_else(|| format!("input {index} is not a parameter"))?
            } else {
                let inputs: Vec<NodeId> = xs.iter().map(|x| built[x]).collect();
                let tys: Vec<&Type> = inputs.iter().map(|i| &g.node(*i).ty).collect();
                let ty = infer_type(&op, &tys).map_err(|e| format!("extracted an ill-typed `{}`: {e}", op.name()))?;
                let (span, name) = origins.get(&c).cloned().unwrap_or((None, None));
                let id = g.add_node(op, ty, &inputs, span);
                g.node_mut(id).name = name;
                id
            };
            built.insert(c, id);
        }
    }
    let results: Vec<NodeId> = roots.iter().map(|r| built[&egraph.find(*r)]).collect();
    g.set_results(results, original.result_types().to_vec());
    Ok(g)
}

/// The classes of `egraph` in a deterministic order (by id).
pub fn classes_sorted(egraph: &TEGraph) -> Vec<Id> {
    let mut ids: Vec<Id> = egraph.classes().map(|c| c.id).collect();
    ids.sort();
    ids
}

/// A short text of the e-graph: one line per class with its e-nodes
/// (`tdlc compile --emit egraph`).
pub fn egraph_text(egraph: &TEGraph, roots: &[Id]) -> String {
    let mut out = String::new();
    let roots: Vec<Id> = roots.iter().map(|r| egraph.find(*r)).collect();
    for c in classes_sorted(egraph) {
        let class = &egraph[c];
        if class.data.attr.is_some() {
            continue;
        }
        let ty = class.data.ty.as_ref().map_or("?".to_string(), |t| t.to_string());
        let mark = if roots.contains(&c) { " (result)" } else { "" };
        out.push_str(&format!("e{c}: {ty}{mark}\n"));
        let mut lines: Vec<String> = class
            .nodes
            .iter()
            .filter_map(|n| op_of(egraph, n))
            .map(|(op, xs)| {
                let args: Vec<String> = xs.iter().map(|x| format!("e{}", egraph.find(*x))).collect();
                format!("    {}({})", describe_op(&op), args.join(", "))
            })
            .collect();
        lines.sort();
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
    }
    out
}

/// The operator with its attributes, as one short token.
pub fn describe_op(op: &Op) -> String {
    match op {
        Op::Input { index } => format!("input{index}"),
        Op::Constant(c) if c.shape.is_empty() && c.data.len() == 1 => format!("const {:?}", c.data[0]),
        Op::Constant(c) => format!("const {}{:?}", c.dtype, c.shape),
        Op::Reduce { op, axis, keepdims } => format!("{}{{axis={axis}, keepdims={keepdims}}}", op.name()),
        Op::Softmax { axis } => format!("softmax{{axis={axis}}}"),
        Op::Permute { perm } => format!("permute{perm:?}"),
        Op::Reshape { shape } => {
            let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
            format!("reshape[{}]", dims.join(", "))
        }
        Op::Concat { axis } => format!("concat{{axis={axis}}}"),
        Op::Slice { axis, start, end } => format!("slice{{axis={axis}, {start}..{end}}}"),
        Op::Repeat { times, axis } => format!("repeat{{times={times}, axis={axis}}}"),
        Op::LayerNorm { eps } | Op::RmsNorm { eps } => format!("{}{{eps={eps:?}}}", op.name()),
        Op::Rope { base } => format!("rope{{base={base:?}}}"),
        Op::Attention { scale, masked, score } => {
            let mut parts = Vec::new();
            if let Some(s) = scale {
                parts.push(format!("scale={s:?}"));
            }
            if *masked {
                parts.push("masked".into());
            }
            if let Some(e) = score {
                parts.push(format!("score={}", tdl_ir::text::scalar_text(e)));
            }
            format!("attention{{{}}}", parts.join(", "))
        }
        Op::Mask(m) => format!("mask{{{}}}", tdl_ir::text::mask_text(m)),
        other => other.name().to_string(),
    }
}

/// Whether the class holds a mask.
pub fn is_mask(egraph: &TEGraph, c: Id) -> bool {
    matches!(egraph[c].data.ty, Some(Type::Mask))
}

/// The tensor type of a class, if it holds tensors.
pub fn tensor_type(egraph: &TEGraph, c: Id) -> Option<&tdl_ir::TensorType> {
    egraph[c].data.ty.as_ref().and_then(|t| t.as_tensor())
}

/// The e-nodes of a class that satisfy `f`, with their operator.
pub fn nodes_where(egraph: &TEGraph, c: Id, f: impl Fn(&TL) -> bool) -> Vec<(TL, Op, Vec<Id>)> {
    egraph[c]
        .nodes
        .iter()
        .filter(|n| f(n))
        .filter_map(|n| op_of(egraph, n).map(|(op, xs)| (n.clone(), op, xs)))
        .collect()
}
