//! Attention fusion: `softmax(q @ transpose(k) · c + m + b) @ v` becomes one
//! `attention(q, k, v, mask = m, scale = c, score = (s, q, k, h) => s + b[..])`
//! node, which a later stage schedules with an online softmax (one pass over
//! the scores instead of three, and no `T×S` matrix in memory).
//!
//! One rule, `fuse-attention`, matches `softmax(x) @ v` over the last axis
//! and then decomposes the class of `x` (any e-node of it may be used):
//!
//! | form of `x` | becomes |
//! |---|---|
//! | `q @ transpose(k)` | the scores, scale 1 |
//! | `y · c`, `c` a finite scalar constant | scale `c` (if `y` holds masks, only for `c > 0`, since `-inf · c` must stay `-inf`; never over a bias) |
//! | `y + m`, `m + y`, `m` a mask | mask `m` (several masks are combined with `&`) |
//! | `y + b`, `b + y`, `b` a float tensor of the scores' trailing shape | score modifier `s + b[q, k]` or `s + b[h, q, k]` (one bias) |
//!
//! Canonicalisation brings the other spellings to these (division by a
//! constant, scale on `q` or `k`, `where(m, s, -inf)`, `permute`, a
//! spelled-out softmax). The fused node must type-check and have the matched
//! class's type. When `k` and `v` are `repeat(·, g, axis = -3)` with the same
//! group count, a grouped alternative reading the un-repeated K/V is added
//! too (GQA without copies); the extractor takes it because it moves less.

use egg::{Id, Subst};
use tdl_ir::{ArrayRef, LambdaVar, MaskExpr, Op, ScalarBinary, ScalarExpr};

use super::{attr, custom, nodes_where_repeat, scalar, tensor_dims, try_add, v, Rule};
use crate::egraph::{is_mask, op_of, TEGraph, TL};

pub fn rules() -> Vec<Rule> {
    vec![custom("fuse-attention", "(matmul (softmax ?ax ?x) ?v)", |eg, _, s| fuse(eg, s))]
}

/// One way to read the softmax input as scaled, masked, biased scores.
#[derive(Clone, Debug)]
struct Parts {
    q: Id,
    k: Id,
    scale: f64,
    masks: Vec<Id>,
    bias: Option<Id>,
}

/// The ways to read class `c` as attention scores, at most a few, found by
/// walking its e-nodes to a bounded depth.
fn decompose(eg: &TEGraph, c: Id, depth: usize) -> Vec<Parts> {
    let mut out = Vec::new();
    if depth == 0 {
        return out;
    }
    for n in &eg[c].nodes {
        match n {
            TL::MatMul([a, bt]) => {
                for m in &eg[*bt].nodes {
                    if let TL::Transpose([k]) = m {
                        out.push(Parts { q: eg.find(*a), k: eg.find(*k), scale: 1.0, masks: Vec::new(), bias: None });
                    }
                }
            }
            TL::Mul([y, cc]) => {
                let Some(factor) = scalar(eg, *cc) else { continue };
                if !factor.is_finite() {
                    continue;
                }
                for mut p in decompose(eg, *y, depth - 1) {
                    if p.bias.is_some() || (!p.masks.is_empty() && factor <= 0.0) {
                        continue;
                    }
                    p.scale *= factor;
                    if p.scale.is_finite() {
                        out.push(p);
                    }
                }
            }
            TL::Add([a, b]) => {
                for (y, extra) in [(*a, *b), (*b, *a)] {
                    let is_m = is_mask(eg, extra);
                    for mut p in decompose(eg, y, depth - 1) {
                        if is_m {
                            p.masks.push(eg.find(extra));
                        } else if p.bias.is_none() && p.masks.is_empty() {
                            p.bias = Some(eg.find(extra));
                        } else {
                            continue;
                        }
                        out.push(p);
                    }
                }
            }
            _ => {}
        }
        if out.len() > 8 {
            break;
        }
    }
    out
}

/// The expression and operand classes of a mask class.
fn mask_parts(eg: &TEGraph, m: Id) -> Option<(MaskExpr, Vec<Id>)> {
    eg[m].nodes.iter().find_map(|n| match op_of(eg, n)? {
        (Op::Mask(e), xs) => Some((e, xs.iter().map(|x| eg.find(*x)).collect())),
        _ => None,
    })
}

/// The class of `m1 & m2 & ...` (the first mask as is when alone).
fn combine_masks(eg: &mut TEGraph, masks: &[Id]) -> Option<Id> {
    if masks.len() == 1 {
        return Some(masks[0]);
    }
    // Masks were collected from the outside in; the innermost was applied first.
    let mut parts: Vec<(MaskExpr, Vec<Id>)> = masks.iter().rev().map(|m| mask_parts(eg, *m)).collect::<Option<_>>()?;
    let (mut expr, mut ops) = parts.remove(0);
    for (mut e, o) in parts {
        let mut map = Vec::new();
        for id in o {
            let pos = ops.iter().position(|x| *x == id).unwrap_or_else(|| {
                ops.push(id);
                ops.len() - 1
            });
            map.push(pos);
        }
        e.map_operands(&mut |i| map.get(i).copied().unwrap_or(i));
        expr = MaskExpr::And(Box::new(expr), Box::new(e));
    }
    tdl_ir::mask::check_expr_limits(expr.measure()).ok()?;
    try_add(eg, Op::Mask(expr), &ops)
}

fn fuse(eg: &mut TEGraph, s: &Subst) -> Option<Id> {
    let (x, vv) = (s[v("?x")], s[v("?v")]);
    let Some(Op::Softmax { axis }) = attr(eg, s[v("?ax")]) else { return None };
    if axis + 1 != tensor_dims(eg, x)?.len() {
        return None; // softmax over another axis than the keys
    }
    let mut first = None;
    for p in decompose(eg, x, 6) {
        if let Some(id) = build(eg, &p, vv) {
            match first {
                None => first = Some(id),
                Some(f) => {
                    if eg[f].data.ty == eg[id].data.ty {
                        eg.union(f, id);
                    }
                }
            }
        }
    }
    first
}

fn build(eg: &mut TEGraph, p: &Parts, vv: Id) -> Option<Id> {
    let (q, k) = (p.q, p.k);
    let qd = tensor_dims(eg, q)?;
    let kd = tensor_dims(eg, k)?;
    let (q_rank, k_rank) = (qd.len(), kd.len());
    let mut extra = Vec::new();
    let masked = !p.masks.is_empty();
    if masked {
        extra.push(combine_masks(eg, &p.masks)?);
    }
    let mut score = None;
    if let Some(b) = p.bias {
        // The bias must have exactly the scores' trailing shape, so indexing
        // it per (h, q, k) is the same as adding it with broadcasting.
        let mut scores = qd[..q_rank - 1].to_vec();
        scores.push(kd[k_rank - 2].clone());
        let bd = tensor_dims(eg, b)?;
        if bd.len() > scores.len() || scores[scores.len() - bd.len()..] != bd[..] {
            return None;
        }
        let vars: &[LambdaVar] = match bd.len() {
            2 => &[LambdaVar::Q, LambdaVar::K],
            3 => &[LambdaVar::H, LambdaVar::Q, LambdaVar::K],
            _ => return None,
        };
        let operand = 3 + usize::from(masked);
        let index = ScalarExpr::Index {
            array: ArrayRef::Operand(operand),
            indices: vars.iter().map(|x| ScalarExpr::Var(*x)).collect(),
        };
        score = Some(ScalarExpr::binary(ScalarBinary::Add, ScalarExpr::Var(LambdaVar::S), index));
        extra.push(b);
    }
    let op = Op::Attention { scale: Some(p.scale), masked, score };
    let mut ins = vec![q, k, vv];
    ins.extend(&extra);
    let plain = try_add(eg, op.clone(), &ins)?;
    // Grouped-query attention: read the shared K/V heads without copies.
    if let (Some((k0, g1, a1)), Some((v0, g2, a2))) = (nodes_where_repeat(eg, k), nodes_where_repeat(eg, vv)) {
        if g1 == g2 && a1 == a2 && a1 + 3 == k_rank {
            let mut gins = vec![q, k0, v0];
            gins.extend(&extra);
            if let Some(grouped) = try_add(eg, op, &gins) {
                if eg[grouped].data.ty == eg[plain].data.ty {
                    eg.union(plain, grouped);
                }
            }
        }
    }
    Some(plain)
}
