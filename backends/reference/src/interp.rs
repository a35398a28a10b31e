//! The interpreter: evaluates a [`VerifiedGraph`] node by node in
//! `topo_order`, every value an `f64` [`Tensor`] (or a mask, which stays a
//! formula until it is applied to scores).
//!
//! Before a node runs, its declared type is evaluated under the bindings and
//! checked against the [`Limits`]; the kernel then checks that the actual
//! operand shapes give exactly that shape before it allocates. Only nodes a
//! result depends on are evaluated, and a value is dropped after its last
//! use.

use std::collections::HashMap;
use std::rc::Rc;

use tdl_ir::{Bindings, DType, Graph, MaskExpr, NodeId, Op, Type, VerifiedGraph};

use crate::attention::{attention, AttentionArgs};
use crate::bind::bind_symbols;
use crate::error::{fail, RunError};
use crate::mask::MaskEval;
use crate::ops;
use crate::tensor::{round_value, Limits, Tensor};

/// A graph value.
enum Value {
    Tensor(Tensor),
    /// A mask node: its expression and the tensors it reads, by position.
    Mask(MaskExpr, Vec<Rc<Value>>),
}

impl Value {
    fn tensor(&self) -> Result<&Tensor, RunError> {
        match self {
            Value::Tensor(t) => Ok(t),
            Value::Mask(..) => fail("a mask was given where a tensor is needed"),
        }
    }
}

/// Evaluates `g` on `inputs` under the default [`Limits`].
pub fn run(g: &VerifiedGraph, inputs: &[Tensor]) -> Result<Vec<Tensor>, RunError> {
    run_with_limits(g, inputs, &Limits::default())
}

/// Evaluates `g` on `inputs`. Results are `f64` tensors tagged with the
/// declared element types (not rounded: see [`Tensor::round_to_dtype`]).
pub fn run_with_limits(g: &VerifiedGraph, inputs: &[Tensor], limits: &Limits) -> Result<Vec<Tensor>, RunError> {
    let graph: &Graph = g.graph();
    for (i, t) in inputs.iter().enumerate() {
        let name = graph.params().get(i).map_or_else(|| format!("input {i}"), |p| format!("input `{}`", p.name));
        limits.check(&name, &t.shape)?;
        if Some(t.data.len()) != crate::tensor::checked_numel(&t.shape) {
            return Err(RunError::BadTensor(format!(
                "{name}: shape {:?} needs {} elements, but the data holds {}",
                t.shape,
                crate::tensor::checked_numel(&t.shape).unwrap_or(0),
                t.data.len()
            )));
        }
        t.check_values().map_err(|e| RunError::BadTensor(format!("{name} ({}): {e}", t.type_text())))?;
    }
    let bindings = bind_symbols(graph, inputs)?;
    let Some(order) = graph.topo_order() else {
        return fail(format!("graph `{}` has a cycle", graph.name));
    };

    // Live nodes (those a result depends on) and how often each is used.
    let mut uses: HashMap<NodeId, usize> = HashMap::new();
    let mut stack: Vec<NodeId> = graph.results().to_vec();
    let mut live = std::collections::HashSet::new();
    for r in graph.results() {
        *uses.entry(*r).or_default() += 1;
    }
    while let Some(n) = stack.pop() {
        if live.insert(n) {
            for i in graph.inputs(n) {
                *uses.entry(i).or_default() += 1;
                stack.push(i);
            }
        }
    }

    let mut values: HashMap<NodeId, Rc<Value>> = HashMap::new();
    for id in order {
        if !live.contains(&id) {
            continue;
        }
        let operands: Vec<Rc<Value>> = graph
            .inputs(id)
            .into_iter()
            .map(|i| values.get(&i).cloned().ok_or_else(|| RunError::eval(format!("operand {i} of {id} has no value"))))
            .collect::<Result<_, _>>()
            .map_err(|e| at(graph, id, e))?;
        let value = eval_node(graph, id, &operands, inputs, &bindings, limits).map_err(|e| at(graph, id, e))?;
        drop(operands);
        for i in graph.inputs(id) {
            if let Some(u) = uses.get_mut(&i) {
                *u = u.saturating_sub(1);
                if *u == 0 {
                    values.remove(&i);
                }
            }
        }
        values.insert(id, Rc::new(value));
    }

    let mut out = Vec::with_capacity(graph.results().len());
    for (r, ty) in graph.results().iter().zip(graph.result_types()) {
        match values.get(r).map(|v| &**v) {
            Some(Value::Tensor(t)) => {
                out.push(Tensor { dtype: ty.dtype, shape: t.shape.clone(), data: t.data.clone() })
            }
            _ => return fail(format!("result {r} of graph `{}` has no tensor value", graph.name)),
        }
    }
    Ok(out)
}

fn at(g: &Graph, id: NodeId, e: RunError) -> RunError {
    let node = g.node(id);
    let name = node.name.as_ref().map_or_else(String::new, |n| format!(", `{n}`"));
    RunError::At {
        graph: g.name.clone(),
        node: format!("{id} (`{}`{name})", node.op.name()),
        span: node.span,
        source: Box::new(e),
    }
}

/// A mask node's expression and operand tensors.
fn mask_parts(v: &Value) -> Result<(&MaskExpr, Vec<&Tensor>), RunError> {
    match v {
        Value::Mask(e, ops) => Ok((e, ops.iter().map(|o| o.tensor()).collect::<Result<_, _>>()?)),
        Value::Tensor(_) => fail("a tensor was given where a mask is needed"),
    }
}

fn eval_node(
    g: &Graph,
    id: NodeId,
    operands: &[Rc<Value>],
    inputs: &[Tensor],
    bindings: &Bindings,
    limits: &Limits,
) -> Result<Value, RunError> {
    let node = g.node(id);
    let ty = match &node.ty {
        Type::Mask => {
            let Op::Mask(e) = &node.op else {
                return fail("only a `mask` node has the mask type");
            };
            return Ok(Value::Mask(e.clone(), operands.to_vec()));
        }
        Type::Tensor(t) => t,
    };
    // The declared shape, evaluated and checked before anything is allocated.
    let mut out = Vec::with_capacity(ty.rank());
    for (axis, d) in ty.shape.iter().enumerate() {
        let v =
            d.eval(bindings).map_err(|e| RunError::eval(format!("axis {axis} ({d}) of the result type {ty}: {e}")))?;
        let Ok(u) = usize::try_from(v) else {
            return fail(format!("axis {axis} of the result type {ty} is {d} = {v}, which is negative"));
        };
        out.push(u);
    }
    limits.check("the result of this node", &out)?;

    let t = |i: usize| -> Result<&Tensor, RunError> {
        match operands.get(i) {
            Some(v) => v.tensor(),
            None => fail(format!("operand {i} is missing")),
        }
    };
    let arity = |n: usize| -> Result<(), RunError> {
        if operands.len() != n {
            return fail(format!("`{}` takes {n} operand(s), found {}", node.op.name(), operands.len()));
        }
        Ok(())
    };
    let mut result = match &node.op {
        Op::Input { index } => {
            let Some(x) = inputs.get(*index) else {
                return fail(format!("parameter {index} has no input"));
            };
            ops::ensure_shape(&x.shape, &out)?;
            x.clone()
        }
        Op::Constant(c) => {
            let x = Tensor::new(c.dtype, c.shape.clone(), c.data.clone())?;
            x.check_values().map_err(|e| RunError::eval(format!("constant {}: {e}", x.type_text())))?;
            ops::ensure_shape(&x.shape, &out)?;
            x
        }
        Op::Unary(u) => {
            arity(1)?;
            let x = t(0)?;
            ops::ensure_shape(&x.shape, &out)?;
            ops::unary(*u, x)
        }
        Op::Binary(b) => {
            arity(2)?;
            match (&*operands[0], &*operands[1]) {
                (Value::Tensor(s), m @ Value::Mask(..)) | (m @ Value::Mask(..), Value::Tensor(s)) => {
                    if *b != tdl_ir::BinaryOp::Add {
                        return fail(format!("a mask can only be added to scores, not combined with `{}`", b.name()));
                    }
                    let (expr, mops) = mask_parts(m)?;
                    let r = s.rank();
                    if r < 2 {
                        return fail(format!("a mask is added to scores of rank at least 2, found {}", s.type_text()));
                    }
                    let mask = MaskEval::new(expr, &mops, s.shape[r - 2], s.shape[r - 1], bindings)?;
                    ops::add_mask(s, &mask, &out)?
                }
                (Value::Tensor(x), Value::Tensor(y)) => ops::binary(*b, x, y, &out)?,
                _ => return fail("two masks cannot be added; combine them with `&` or `|`"),
            }
        }
        Op::MatMul => {
            arity(2)?;
            ops::matmul(t(0)?, t(1)?, &out)?
        }
        Op::Reduce { op, axis, keepdims } => {
            arity(1)?;
            ops::reduce(*op, *axis, *keepdims, t(0)?, &out)?
        }
        Op::Softmax { axis } => {
            arity(1)?;
            ops::softmax(*axis, t(0)?, &out)?
        }
        Op::Transpose => {
            arity(1)?;
            ops::transpose(t(0)?, &out)?
        }
        Op::Permute { perm } => {
            arity(1)?;
            ops::permute(perm, t(0)?, &out)?
        }
        Op::Reshape { .. } => {
            arity(1)?;
            ops::reshape(t(0)?, &out)?
        }
        Op::Concat { axis } => {
            let xs: Vec<&Tensor> = (0..operands.len()).map(t).collect::<Result<_, _>>()?;
            ops::concat(*axis, &xs, &out)?
        }
        Op::Slice { axis, start, end } => {
            arity(1)?;
            ops::slice(*axis, *start, *end, t(0)?, &out)?
        }
        Op::Repeat { times, axis } => {
            arity(1)?;
            ops::repeat(*times, *axis, t(0)?, &out)?
        }
        Op::Where => {
            arity(3)?;
            let (a, b) = (t(1)?, t(2)?);
            match &*operands[0] {
                Value::Tensor(c) => ops::where_tensor(c, a, b, &out)?,
                m @ Value::Mask(..) => {
                    let (expr, mops) = mask_parts(m)?;
                    let r = out.len();
                    if r < 2 {
                        return fail(format!("`where` with a mask needs a result of rank at least 2, found rank {r}"));
                    }
                    let mask = MaskEval::new(expr, &mops, out[r - 2], out[r - 1], bindings)?;
                    ops::where_mask(&mask, a, b, &out)?
                }
            }
        }
        Op::LayerNorm { eps } => {
            arity(3)?;
            ops::layernorm(*eps, t(0)?, t(1)?, t(2)?, &out)?
        }
        Op::RmsNorm { eps } => {
            arity(2)?;
            ops::rmsnorm(*eps, t(0)?, t(1)?, &out)?
        }
        Op::Rope { base } => {
            arity(1)?;
            ops::rope(*base, t(0)?, &out)?
        }
        Op::Attention { scale, masked, score } => {
            if operands.len() < 3 + usize::from(*masked) {
                return fail(format!(
                    "attention takes q, k, v{}, found {} operand(s)",
                    if *masked { ", mask" } else { "" },
                    operands.len()
                ));
            }
            let mask = if *masked { Some(mask_parts(&operands[3])?) } else { None };
            let all: Vec<Option<&Tensor>> = operands
                .iter()
                .map(|v| match &**v {
                    Value::Tensor(x) => Some(x),
                    Value::Mask(..) => None,
                })
                .collect();
            let args = AttentionArgs {
                q: t(0)?,
                k: t(1)?,
                v: t(2)?,
                mask,
                score: score.as_ref(),
                operands: all,
                scale: *scale,
            };
            attention(&args, bindings, limits, &out)?
        }
        Op::Mask(_) => return fail("a `mask` node must have the mask type"),
    };
    if result.shape != out {
        return fail(format!("computed shape {:?} differs from the declared {:?}", result.shape, out));
    }
    result.dtype = ty.dtype;
    if ty.dtype == DType::I32 || ty.dtype == DType::Bool {
        // Integer kernels are exact already; this only normalises.
        result.data.iter_mut().for_each(|v| *v = round_value(ty.dtype, *v));
    }
    Ok(Value::Tensor(result))
}
