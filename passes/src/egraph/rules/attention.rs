//! Attention fusion: `softmax(q @ transpose(k) · c + m) @ v` becomes one
//! `attention(q, k, v, mask = m, scale = c)` node, which a later stage
//! schedules with an online softmax (one pass over the scores instead of
//! three, and no `T×S` matrix in memory).
//!
//! The rules match the canonical spelling only; canonicalisation brings the
//! other spellings to it (scale on `q` or `k`, division, `where(m, s, -inf)`,
//! `permute`, a spelled-out softmax, a constant on the left).
//!
//! | rule | pattern |
//! |---|---|
//! | `fuse-attention-scaled-masked` | `softmax(q @ transpose(k) · c + m) @ v` |
//! | `fuse-attention-scaled` | `softmax(q @ transpose(k) · c) @ v` |
//! | `fuse-attention-masked` | `softmax(q @ transpose(k) + m) @ v` (scale 1) |
//! | `fuse-attention` | `softmax(q @ transpose(k)) @ v` (scale 1) |
//!
//! Conditions: the softmax is over the last axis; `c` is a scalar constant;
//! `m` is a mask, or a float bias whose shape is the scores' last two (or
//! three) axes exactly, which becomes the score modifier `s + bias[q, k]`;
//! the fused node type-checks and has the matched class's type. When `k` and
//! `v` are `repeat(·, g, axis = -3)` of the same group count, a grouped
//! alternative that reads the un-repeated K/V is added too (GQA without
//! copies); the extractor takes it because it moves less data.

use egg::{Id, Subst};
use tdl_ir::{LambdaVar, Op, ScalarBinary, ScalarExpr};

use super::{attr, custom, nodes_where_repeat, scalar, tensor_dims, try_add, v, Rule};
use crate::egraph::{is_mask, TEGraph};

pub fn rules() -> Vec<Rule> {
    vec![
        custom(
            "fuse-attention-scaled-masked",
            "(matmul (softmax ?ax (add (mul (matmul ?q (transpose ?k)) ?c) ?m)) ?v)",
            |eg, _, s| fuse(eg, s, true, true),
        ),
        custom("fuse-attention-scaled", "(matmul (softmax ?ax (mul (matmul ?q (transpose ?k)) ?c)) ?v)", |eg, _, s| {
            fuse(eg, s, true, false)
        }),
        custom("fuse-attention-masked", "(matmul (softmax ?ax (add (matmul ?q (transpose ?k)) ?m)) ?v)", |eg, _, s| {
            fuse(eg, s, false, true)
        }),
        custom("fuse-attention", "(matmul (softmax ?ax (matmul ?q (transpose ?k))) ?v)", |eg, _, s| {
            fuse(eg, s, false, false)
        }),
    ]
}

fn fuse(eg: &mut TEGraph, s: &Subst, scaled: bool, masked: bool) -> Option<Id> {
    let (q, k, vv) = (s[v("?q")], s[v("?k")], s[v("?v")]);
    let Some(Op::Softmax { axis }) = attr(eg, s[v("?ax")]) else { return None };
    let q_rank = tensor_dims(eg, q)?.len();
    // Scores have q's rank (leading axes broadcast); softmax must be over keys.
    let k_rank = tensor_dims(eg, k)?.len();
    if axis + 1 != q_rank.max(k_rank) {
        return None;
    }
    let scale = if scaled { scalar(eg, s[v("?c")])? } else { 1.0 };
    if !scale.is_finite() {
        return None;
    }
    let mut extra: Vec<Id> = Vec::new();
    let mut score = None;
    let mut is_masked = false;
    if masked {
        let m = s[v("?m")];
        if is_mask(eg, m) {
            is_masked = true;
            extra.push(m);
        } else {
            // An additive float bias becomes the score modifier s + bias[...].
            let dims = tensor_dims(eg, m)?;
            let vars: &[LambdaVar] = match dims.len() {
                2 => &[LambdaVar::Q, LambdaVar::K],
                3 if q_rank == 3 => &[LambdaVar::H, LambdaVar::Q, LambdaVar::K],
                _ => return None,
            };
            let index = ScalarExpr::Index {
                array: tdl_ir::ArrayRef::Operand(3),
                indices: vars.iter().map(|x| ScalarExpr::Var(*x)).collect(),
            };
            score = Some(ScalarExpr::binary(ScalarBinary::Add, ScalarExpr::Var(LambdaVar::S), index));
            extra.push(m);
        }
    }
    if score.is_some() {
        // The bias must have exactly the scores' trailing shape ([T, S] or
        // [H, T, S]), so indexing it per (h, q, k) is the same as adding it.
        let qd = tensor_dims(eg, q)?;
        let kd = tensor_dims(eg, k)?;
        let mut scores = qd[..q_rank - 1].to_vec();
        scores.push(kd[k_rank - 2].clone());
        let bd = tensor_dims(eg, s[v("?m")])?;
        if bd.len() > scores.len() || scores[scores.len() - bd.len()..] != bd[..] {
            return None;
        }
    }
    let op = Op::Attention { scale: Some(scale), masked: is_masked, score };
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
