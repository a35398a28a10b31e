//! Type rules: the result type of every operator from its operand types.
//!
//! One set of rules serves the frontend (which turns an [`InferError`] into a
//! spanned diagnostic with hints) and the verifier (which re-derives every
//! node's type and compares), so the two can never disagree.
//!
//! Symbolic dimensions are never assumed to be 1: broadcasting pairs two
//! dimensions that are equal as polynomials, or where one is the literal 1.

use crate::mask::{ArrayRef, MaskExpr, ScalarExpr};
use crate::op::{BinaryOp, Op, UnaryOp};
use crate::types::{DType, Dim, DimError, TensorType, Type};

/// Why an operator cannot be applied to its operands. `Display` gives a
/// one-line message; the fields let the frontend add hints.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum InferError {
    #[error("`{op}` takes {expected} operand(s), found {found}")]
    Arity { op: &'static str, expected: String, found: usize },
    #[error("operand {index} of `{op}` must be a tensor, found a mask")]
    MaskNotAllowed { op: &'static str, index: usize },
    #[error("operand {index} of `{op}` must be a mask, found a tensor")]
    ExpectedMask { op: &'static str, index: usize },
    #[error("`{op}` needs matching element types, found {a} and {b}")]
    DTypeMismatch { op: &'static str, a: DType, b: DType },
    #[error("`{op}` needs {expected} elements, found {found}")]
    DTypeNotAllowed { op: &'static str, expected: &'static str, found: DType },
    #[error("shapes {a} and {b} do not broadcast: dimension {da} against {db}")]
    Broadcast { a: String, b: String, da: Dim, db: Dim },
    #[error("`{op}` needs a tensor of rank at least {min}, found rank {found}")]
    RankTooLow { op: &'static str, min: usize, found: usize },
    #[error("`{op}`: axis {axis} is out of range for rank {rank}")]
    AxisOutOfRange { op: &'static str, axis: usize, rank: usize },
    #[error("matmul inner dimensions differ: {left} (last axis of the left operand {a}) against {right} (axis -2 of the right operand {b})")]
    MatMulInner { a: TensorType, b: TensorType, left: Dim, right: Dim },
    #[error("permutation {perm:?} is not a permutation of 0..{rank}")]
    BadPermutation { perm: Vec<usize>, rank: usize },
    #[error("reshape changes the number of elements: {from} elements into {to}")]
    ReshapeCount { from: Dim, to: Dim },
    #[error("reshape dimension {dim} is not positive")]
    ReshapeNonPositive { dim: Dim },
    #[error("concat operands differ in axis {axis}: {a} against {b}")]
    ConcatMismatch { axis: usize, a: Dim, b: Dim },
    #[error("concat operands have ranks {a} and {b}")]
    ConcatRank { a: usize, b: usize },
    #[error("slice {start}..{end} is out of range for dimension {dim}")]
    SliceRange { start: i64, end: i64, dim: Dim },
    #[error("repeat count {times} must be at least 1")]
    RepeatCount { times: i64 },
    #[error("`{op}` expects {what} of shape {expected}, found {found}")]
    ShapeMismatch { op: &'static str, what: &'static str, expected: String, found: String },
    #[error("rope needs an even last dimension, found {dim}")]
    RopeOdd { dim: Dim },
    #[error("attention heads do not match: q has {q} heads, k/v have {k}; grouped-query attention needs the query head count to be a multiple of the key head count")]
    AttentionHeads { q: Dim, k: Dim },
    #[error("attention: {what}")]
    Attention { what: String },
    #[error("invalid constant: {what}")]
    BadConstant { what: String },
    #[error("invalid mask: {what}")]
    BadMask { what: String },
    #[error("mask operand {index}: {what}")]
    MaskOperand { index: usize, what: String },
    #[error(transparent)]
    Dim(#[from] DimError),
}

fn tensor<'a>(op: &'static str, tys: &[&'a Type], index: usize) -> Result<&'a TensorType, InferError> {
    tys[index].as_tensor().ok_or(InferError::MaskNotAllowed { op, index })
}

fn arity(op: &'static str, tys: &[&Type], n: usize) -> Result<(), InferError> {
    if tys.len() != n {
        return Err(InferError::Arity { op, expected: n.to_string(), found: tys.len() });
    }
    Ok(())
}

fn same_dtype(op: &'static str, a: DType, b: DType) -> Result<(), InferError> {
    if a != b {
        return Err(InferError::DTypeMismatch { op, a, b });
    }
    Ok(())
}

fn require_float(op: &'static str, d: DType) -> Result<(), InferError> {
    if !d.is_float() {
        return Err(InferError::DTypeNotAllowed { op, expected: "floating-point (f32, f16, bf16)", found: d });
    }
    Ok(())
}

fn require_numeric(op: &'static str, d: DType) -> Result<(), InferError> {
    if d == DType::Bool {
        return Err(InferError::DTypeNotAllowed { op, expected: "numeric (not bool)", found: d });
    }
    Ok(())
}

fn min_rank(op: &'static str, t: &TensorType, min: usize) -> Result<(), InferError> {
    if t.rank() < min {
        return Err(InferError::RankTooLow { op, min, found: t.rank() });
    }
    Ok(())
}

fn shape_text(s: &[Dim]) -> String {
    let parts: Vec<String> = s.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

/// NumPy broadcasting of two shapes, aligned at the right.
pub fn broadcast_shapes(a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>, InferError> {
    let n = a.len().max(b.len());
    let one = Dim::constant(1);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let da = if i + a.len() >= n { &a[i + a.len() - n] } else { &one };
        let db = if i + b.len() >= n { &b[i + b.len() - n] } else { &one };
        let d = if da == db || *db == one {
            da.clone()
        } else if *da == one {
            db.clone()
        } else {
            return Err(InferError::Broadcast { a: shape_text(a), b: shape_text(b), da: da.clone(), db: db.clone() });
        };
        out.push(d);
    }
    Ok(out)
}

/// The result type of `op` applied to operands of types `tys`. `Input` has
/// no rule (its type is the parameter's) and is rejected here.
pub fn infer_type(op: &Op, tys: &[&Type]) -> Result<Type, InferError> {
    let name = op.name();
    let t = |x: TensorType| Ok(Type::Tensor(x));
    match op {
        Op::Input { .. } => Err(InferError::Arity { op: name, expected: "a parameter, not".into(), found: tys.len() }),
        Op::Constant(c) => {
            arity(name, tys, 0)?;
            if c.shape.iter().try_fold(1usize, |a, d| a.checked_mul(*d)) != Some(c.data.len()) {
                return Err(InferError::BadConstant {
                    what: format!("shape {:?} but {} values", c.shape, c.data.len()),
                });
            }
            t(TensorType::new(c.dtype, c.shape.iter().map(|&d| Dim::constant(d as i64)).collect()))
        }
        Op::Unary(u) => {
            arity(name, tys, 1)?;
            let x = tensor(name, tys, 0)?;
            match u {
                UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Relu => require_numeric(name, x.dtype)?,
                _ => require_float(name, x.dtype)?,
            }
            t(x.clone())
        }
        Op::Binary(b) => {
            arity(name, tys, 2)?;
            match (tys[0], tys[1]) {
                (Type::Mask, Type::Mask) => Err(InferError::MaskNotAllowed { op: name, index: 1 }),
                (Type::Tensor(s), Type::Mask) | (Type::Mask, Type::Tensor(s)) => {
                    if *b != BinaryOp::Add {
                        let index = if matches!(tys[0], Type::Mask) { 0 } else { 1 };
                        return Err(InferError::MaskNotAllowed { op: name, index });
                    }
                    require_float(name, s.dtype)?;
                    min_rank(name, s, 2)?;
                    t(s.clone())
                }
                (Type::Tensor(a), Type::Tensor(c)) => {
                    same_dtype(name, a.dtype, c.dtype)?;
                    require_numeric(name, a.dtype)?;
                    t(TensorType::new(a.dtype, broadcast_shapes(&a.shape, &c.shape)?))
                }
            }
        }
        Op::MatMul => {
            arity(name, tys, 2)?;
            let a = tensor(name, tys, 0)?;
            let b = tensor(name, tys, 1)?;
            same_dtype(name, a.dtype, b.dtype)?;
            require_numeric(name, a.dtype)?;
            min_rank(name, a, 2)?;
            min_rank(name, b, 2)?;
            let (ra, rb) = (a.rank(), b.rank());
            if a.shape[ra - 1] != b.shape[rb - 2] {
                return Err(InferError::MatMulInner {
                    a: a.clone(),
                    b: b.clone(),
                    left: a.shape[ra - 1].clone(),
                    right: b.shape[rb - 2].clone(),
                });
            }
            let mut shape = broadcast_shapes(&a.shape[..ra - 2], &b.shape[..rb - 2])?;
            shape.push(a.shape[ra - 2].clone());
            shape.push(b.shape[rb - 1].clone());
            t(TensorType::new(a.dtype, shape))
        }
        Op::Reduce { op: r, axis, keepdims } => {
            arity(name, tys, 1)?;
            let x = tensor(name, tys, 0)?;
            if *r == crate::op::ReduceOp::Mean {
                require_float(name, x.dtype)?;
            } else {
                require_numeric(name, x.dtype)?;
            }
            check_axis(name, *axis, x.rank())?;
            let mut shape = x.shape.clone();
            if *keepdims {
                shape[*axis] = Dim::constant(1);
            } else {
                shape.remove(*axis);
            }
            t(TensorType::new(x.dtype, shape))
        }
        Op::Softmax { axis } => {
            arity(name, tys, 1)?;
            let x = tensor(name, tys, 0)?;
            require_float(name, x.dtype)?;
            check_axis(name, *axis, x.rank())?;
            t(x.clone())
        }
        Op::Transpose => {
            arity(name, tys, 1)?;
            let x = tensor(name, tys, 0)?;
            min_rank(name, x, 2)?;
            let mut shape = x.shape.clone();
            let r = shape.len();
            shape.swap(r - 1, r - 2);
            t(TensorType::new(x.dtype, shape))
        }
        Op::Permute { perm } => {
            arity(name, tys, 1)?;
            let x = tensor(name, tys, 0)?;
            let mut seen = vec![false; x.rank()];
            if perm.len() != x.rank() {
                return Err(InferError::BadPermutation { perm: perm.clone(), rank: x.rank() });
            }
            for &p in perm {
                if p >= x.rank() || seen[p] {
                    return Err(InferError::BadPermutation { perm: perm.clone(), rank: x.rank() });
                }
                seen[p] = true;
            }
            t(TensorType::new(x.dtype, perm.iter().map(|&p| x.shape[p].clone()).collect()))
        }
        Op::Reshape { shape } => {
            arity(name, tys, 1)?;
            let x = tensor(name, tys, 0)?;
            for d in shape {
                if let Some(c) = d.as_const() {
                    if c <= 0 {
                        return Err(InferError::ReshapeNonPositive { dim: d.clone() });
                    }
                }
            }
            let from = Dim::product(&x.shape)?;
            let to = Dim::product(shape)?;
            if from != to {
                return Err(InferError::ReshapeCount { from, to });
            }
            t(TensorType::new(x.dtype, shape.clone()))
        }
        Op::Concat { axis } => {
            if tys.is_empty() {
                return Err(InferError::Arity { op: name, expected: "at least 1".into(), found: 0 });
            }
            let first = tensor(name, tys, 0)?;
            check_axis(name, *axis, first.rank())?;
            let mut total = first.shape[*axis].clone();
            for i in 1..tys.len() {
                let x = tensor(name, tys, i)?;
                same_dtype(name, first.dtype, x.dtype)?;
                if x.rank() != first.rank() {
                    return Err(InferError::ConcatRank { a: first.rank(), b: x.rank() });
                }
                for (ax, (da, db)) in first.shape.iter().zip(&x.shape).enumerate() {
                    if ax != *axis && da != db {
                        return Err(InferError::ConcatMismatch { axis: ax, a: da.clone(), b: db.clone() });
                    }
                }
                total = total.checked_add(&x.shape[*axis])?;
            }
            let mut shape = first.shape.clone();
            shape[*axis] = total;
            t(TensorType::new(first.dtype, shape))
        }
        Op::Slice { axis, start, end } => {
            arity(name, tys, 1)?;
            let x = tensor(name, tys, 0)?;
            check_axis(name, *axis, x.rank())?;
            let dim = &x.shape[*axis];
            let in_range = *start >= 0 && start < end && dim.as_const().is_none_or(|c| *end <= c);
            if !in_range {
                return Err(InferError::SliceRange { start: *start, end: *end, dim: dim.clone() });
            }
            let mut shape = x.shape.clone();
            shape[*axis] = Dim::constant(end - start);
            t(TensorType::new(x.dtype, shape))
        }
        Op::Repeat { times, axis } => {
            arity(name, tys, 1)?;
            let x = tensor(name, tys, 0)?;
            check_axis(name, *axis, x.rank())?;
            if *times < 1 {
                return Err(InferError::RepeatCount { times: *times });
            }
            let mut shape = x.shape.clone();
            shape[*axis] = shape[*axis].checked_mul(&Dim::constant(*times))?;
            t(TensorType::new(x.dtype, shape))
        }
        Op::Where => {
            arity(name, tys, 3)?;
            let a = tensor(name, tys, 1)?;
            let b = tensor(name, tys, 2)?;
            same_dtype(name, a.dtype, b.dtype)?;
            let mut shape = broadcast_shapes(&a.shape, &b.shape)?;
            match tys[0] {
                Type::Mask => {
                    if shape.len() < 2 {
                        return Err(InferError::RankTooLow { op: name, min: 2, found: shape.len() });
                    }
                }
                Type::Tensor(c) => {
                    if c.dtype != DType::Bool {
                        return Err(InferError::DTypeNotAllowed {
                            op: name,
                            expected: "bool condition",
                            found: c.dtype,
                        });
                    }
                    shape = broadcast_shapes(&c.shape, &shape)?;
                }
            }
            t(TensorType::new(a.dtype, shape))
        }
        Op::LayerNorm { .. } | Op::RmsNorm { .. } => {
            let n = if matches!(op, Op::LayerNorm { .. }) { 3 } else { 2 };
            arity(name, tys, n)?;
            let x = tensor(name, tys, 0)?;
            require_float(name, x.dtype)?;
            min_rank(name, x, 1)?;
            let last = x.shape[x.rank() - 1].clone();
            for (i, what) in [(1, "gain"), (2, "bias")].into_iter().take(n - 1) {
                let g = tensor(name, tys, i)?;
                same_dtype(name, x.dtype, g.dtype)?;
                if g.shape != [last.clone()] {
                    return Err(InferError::ShapeMismatch {
                        op: name,
                        what,
                        expected: shape_text(std::slice::from_ref(&last)),
                        found: shape_text(&g.shape),
                    });
                }
            }
            t(x.clone())
        }
        Op::Rope { .. } => {
            arity(name, tys, 1)?;
            let x = tensor(name, tys, 0)?;
            require_float(name, x.dtype)?;
            min_rank(name, x, 2)?;
            let last = &x.shape[x.rank() - 1];
            if last.as_const().is_some_and(|c| c % 2 != 0) {
                return Err(InferError::RopeOdd { dim: last.clone() });
            }
            t(x.clone())
        }
        Op::Attention { masked, score, .. } => infer_attention(*masked, score.as_ref(), tys),
        Op::Mask(m) => {
            check_mask_operands(m, tys)?;
            Ok(Type::Mask)
        }
    }
}

fn check_axis(op: &'static str, axis: usize, rank: usize) -> Result<(), InferError> {
    if axis >= rank {
        return Err(InferError::AxisOutOfRange { op, axis, rank });
    }
    Ok(())
}

fn infer_attention(masked: bool, score: Option<&ScalarExpr>, tys: &[&Type]) -> Result<Type, InferError> {
    let name = "attention";
    if tys.len() < 3 {
        return Err(InferError::Arity { op: name, expected: "at least 3".into(), found: tys.len() });
    }
    let q = tensor(name, tys, 0)?;
    let k = tensor(name, tys, 1)?;
    let v = tensor(name, tys, 2)?;
    require_float(name, q.dtype)?;
    same_dtype(name, q.dtype, k.dtype)?;
    same_dtype(name, q.dtype, v.dtype)?;
    for x in [q, k, v] {
        min_rank(name, x, 2)?;
    }
    let (rq, rk, rv) = (q.rank(), k.rank(), v.rank());
    if q.shape[rq - 1] != k.shape[rk - 1] {
        return Err(InferError::Attention {
            what: format!("q and k must share the head dimension, found {} and {}", q.shape[rq - 1], k.shape[rk - 1]),
        });
    }
    if k.shape[rk - 2] != v.shape[rv - 2] || k.shape[..rk - 2] != v.shape[..rv - 2] {
        return Err(InferError::Attention {
            what: format!("k {k} and v {v} must have the same leading dimensions and length"),
        });
    }
    // Leading axes: the head axis (-3) may be grouped, the rest broadcast.
    let lq = &q.shape[..rq - 2];
    let lk = &k.shape[..rk - 2];
    let mut lead;
    if !lq.is_empty() && !lk.is_empty() {
        let hq = &lq[lq.len() - 1];
        let hk = &lk[lk.len() - 1];
        let grouped = hq != hk
            && match (hq.as_const(), hk.as_const()) {
                (Some(a), Some(b)) => b > 0 && a % b == 0,
                _ => false,
            };
        lead = broadcast_shapes(&lq[..lq.len() - 1], &lk[..lk.len() - 1])?;
        if grouped || hq == hk || hk.as_const() == Some(1) {
            lead.push(hq.clone());
        } else if hq.as_const() == Some(1) {
            lead.push(hk.clone());
        } else {
            return Err(InferError::AttentionHeads { q: hq.clone(), k: hk.clone() });
        }
    } else {
        lead = broadcast_shapes(lq, lk)?;
    }
    let mut next = 3;
    if masked {
        if tys.len() < 4 || !matches!(tys[3], Type::Mask) {
            return Err(InferError::ExpectedMask { op: name, index: 3 });
        }
        next = 4;
    }
    for i in next..tys.len() {
        tensor(name, tys, i)?;
    }
    if let Some(s) = score {
        for i in s.operands() {
            if i < next || i >= tys.len() {
                return Err(InferError::Attention {
                    what: format!("score lambda reads operand {i}, which is not one of its inputs"),
                });
            }
        }
    }
    lead.push(q.shape[rq - 2].clone());
    lead.push(v.shape[rv - 1].clone());
    Ok(Type::Tensor(TensorType::new(q.dtype, lead)))
}

fn check_mask_operands(m: &MaskExpr, tys: &[&Type]) -> Result<(), InferError> {
    let used = m.operands();
    for (i, ty) in tys.iter().enumerate() {
        if ty.as_tensor().is_none() {
            return Err(InferError::MaskOperand { index: i, what: "must be a tensor".into() });
        }
        if !used.contains(&i) {
            return Err(InferError::MaskOperand { index: i, what: "is not read by the mask".into() });
        }
    }
    let get = |i: usize| -> Result<&TensorType, InferError> {
        tys.get(i).and_then(|t| t.as_tensor()).ok_or(InferError::MaskOperand { index: i, what: "is missing".into() })
    };
    visit_mask(m, &mut |leaf| match leaf {
        MaskExpr::Document { ids } => {
            let t = get(*ids)?;
            if t.dtype != DType::I32 || t.rank() != 1 {
                return Err(InferError::MaskOperand {
                    index: *ids,
                    what: format!("document ids must be i32[T], found {t}"),
                });
            }
            Ok(())
        }
        MaskExpr::Blocks { layout: ArrayRef::Operand(i), .. } => {
            let t = get(*i)?;
            if t.dtype != DType::Bool || t.rank() != 2 {
                return Err(InferError::MaskOperand {
                    index: *i,
                    what: format!("a block layout must be a 2-D bool tensor, found {t}"),
                });
            }
            Ok(())
        }
        MaskExpr::Lambda(e) => check_lambda_indexing(e, &get),
        MaskExpr::Neighborhood { kernel, grid, dilation, causal } => {
            let n = kernel.len();
            if !(1..=3).contains(&n) || grid.len() != n || dilation.len() != n || causal.len() != n {
                return Err(InferError::BadMask {
                    what: "neighborhood needs 1 to 3 axes and one kernel, grid, dilation and causal entry per axis"
                        .into(),
                });
            }
            Ok(())
        }
        MaskExpr::Blocks { layout: ArrayRef::Const(c), block } => {
            if c.shape.len() != 2 || c.dtype != DType::Bool || block.iter().any(|b| *b < 1) {
                return Err(InferError::BadMask {
                    what: "a constant block layout must be a 2-D bool array, with positive block sizes".into(),
                });
            }
            Ok(())
        }
        _ => Ok(()),
    })
}

fn check_lambda_indexing<'a>(
    e: &ScalarExpr,
    get: &dyn Fn(usize) -> Result<&'a TensorType, InferError>,
) -> Result<(), InferError> {
    let mut err = Ok(());
    visit_scalar(e, &mut |x| {
        if let ScalarExpr::Index { array: ArrayRef::Operand(i), indices } = x {
            match get(*i) {
                Ok(t) if t.rank() != indices.len() => {
                    err = Err(InferError::MaskOperand {
                        index: *i,
                        what: format!("indexed with {} indices but has rank {}", indices.len(), t.rank()),
                    })
                }
                Ok(_) => {}
                Err(e) => err = Err(e),
            }
        }
    });
    err
}

/// Calls `f` on every leaf (non-combinator) of a mask.
pub fn visit_mask(m: &MaskExpr, f: &mut dyn FnMut(&MaskExpr) -> Result<(), InferError>) -> Result<(), InferError> {
    match m {
        MaskExpr::And(a, b) | MaskExpr::Or(a, b) => {
            visit_mask(a, f)?;
            visit_mask(b, f)
        }
        MaskExpr::Not(a) => visit_mask(a, f),
        leaf => f(leaf),
    }
}

/// Calls `f` on every node of a scalar expression, parents first.
pub fn visit_scalar(e: &ScalarExpr, f: &mut dyn FnMut(&ScalarExpr)) {
    f(e);
    match e {
        ScalarExpr::Index { indices, .. } => indices.iter().for_each(|i| visit_scalar(i, f)),
        ScalarExpr::Unary(_, a) => visit_scalar(a, f),
        ScalarExpr::Binary(_, a, b) => {
            visit_scalar(a, f);
            visit_scalar(b, f);
        }
        ScalarExpr::Select(c, a, b) => {
            visit_scalar(c, f);
            visit_scalar(a, f);
            visit_scalar(b, f);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tt(dtype: DType, dims: &[&str]) -> Type {
        Type::Tensor(TensorType::new(
            dtype,
            dims.iter().map(|s| s.parse::<i64>().map(Dim::constant).unwrap_or_else(|_| Dim::sym(s))).collect(),
        ))
    }

    #[test]
    fn matmul_scores() {
        let q = tt(DType::F32, &["H", "T", "64"]);
        let kt = tt(DType::F32, &["H", "64", "S"]);
        assert_eq!(infer_type(&Op::MatMul, &[&q, &kt]).unwrap(), tt(DType::F32, &["H", "T", "S"]));
        let k = tt(DType::F32, &["H", "S", "64"]);
        assert!(matches!(infer_type(&Op::MatMul, &[&q, &k]), Err(InferError::MatMulInner { .. })));
    }

    #[test]
    fn broadcasting_never_assumes_a_symbol_is_one() {
        let a = tt(DType::F32, &["T", "1"]);
        let b = tt(DType::F32, &["S"]);
        let add = Op::Binary(BinaryOp::Add);
        assert_eq!(infer_type(&add, &[&a, &b]).unwrap(), tt(DType::F32, &["T", "S"]));
        let c = tt(DType::F32, &["T"]);
        assert!(matches!(infer_type(&add, &[&b, &c]), Err(InferError::Broadcast { .. })));
    }

    #[test]
    fn reshape_checks_symbolic_counts() {
        let x = tt(DType::F32, &["T", "512"]);
        let ok = Op::Reshape { shape: vec![Dim::sym("T"), Dim::constant(8), Dim::constant(64)] };
        assert_eq!(infer_type(&ok, &[&x]).unwrap(), tt(DType::F32, &["T", "8", "64"]));
        let bad = Op::Reshape { shape: vec![Dim::sym("T"), Dim::constant(8), Dim::constant(63)] };
        assert!(matches!(infer_type(&bad, &[&x]), Err(InferError::ReshapeCount { .. })));
    }

    #[test]
    fn masks_are_not_tensors() {
        let x = tt(DType::F32, &["T", "T"]);
        assert!(infer_type(&Op::MatMul, &[&Type::Mask, &x]).is_err());
        assert!(infer_type(&Op::Binary(BinaryOp::Add), &[&x, &Type::Mask]).is_ok());
        assert!(infer_type(&Op::Binary(BinaryOp::Mul), &[&x, &Type::Mask]).is_err());
    }

    #[test]
    fn grouped_query_attention() {
        let q = tt(DType::F32, &["32", "T", "128"]);
        let k = tt(DType::F32, &["8", "T", "128"]);
        let op = Op::Attention { scale: None, masked: false, score: None };
        assert_eq!(infer_type(&op, &[&q, &k, &k]).unwrap(), q);
        let k3 = tt(DType::F32, &["3", "T", "128"]);
        assert!(matches!(infer_type(&op, &[&q, &k3, &k3]), Err(InferError::AttentionHeads { .. })));
    }
}
