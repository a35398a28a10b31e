//! Canonicalisation: one spelling for each meaning, so the fusion rules need
//! to know only one. Every rule is directional (never toward a worse or a
//! bigger program) and none is a general commutativity or associativity.
//!
//! | rule | rewrite | condition |
//! |---|---|---|
//! | `transpose-transpose` | `transpose(transpose(x)) → x` | |
//! | `permute-to-transpose` | `permute(x, p) → transpose(x)` | `p` swaps the last two axes only |
//! | `permute-identity` | `permute(x, p) → x` | `p` is the identity |
//! | `permute-permute` | `permute(permute(x, p1), p2) → permute(x, p1∘p2)` | |
//! | `reshape-reshape` | `reshape(reshape(x, s1), s2) → reshape(x, s2)` | |
//! | `reshape-identity` | `reshape(x, s) → x` | `s` is `x`'s shape |
//! | `divide-by-constant` | `x / c → x · (1/c)` | `c` and `1/c` normal float scalars |
//! | `constant-to-the-right` | `c · x → x · c` | `c` a scalar constant, `x` not |
//! | `fold-scales` | `(x · a) · b → x · (a·b)` | `a`, `b`, `a·b` normal scalar constants (no overflow, no zero) |
//! | `scale-out-of-matmul-left` | `(q · c) @ k → (q @ k) · c` | `c` a scalar constant |
//! | `scale-out-of-matmul-right` | `q @ (k · c) → (q @ k) · c` | `c` a scalar constant |
//! | `scale-out-of-transpose` | `transpose(k · c) → transpose(k) · c` | `c` a scalar constant |
//! | `mask-to-the-right` | `m + s → s + m` | `m` a mask |
//! | `where-mask-is-masked-add` | `where(m, s, -inf) → s + m` | `m` a mask, `s` already the result's shape |
//! | `softmax-spelled-out` | `exp(x - max(x)) / sum(exp(x - max(x))) → softmax(x)` | both reductions over one axis with `keepdims`; a refinement: where every entry of a row is `-inf` the spelled form gives NaN and `softmax` gives zeros (the language's rule for fully masked rows) |
//! | `rmsnorm-spelled-out` | `x · rsqrt(mean(x·x) + eps) · g → rmsnorm(x, g, eps)` (also `x / sqrt(…)`) | the mean over the last axis with `keepdims`, `eps` a scalar constant |
//! | `layernorm-spelled-out` | `(x - mean(x)) / sqrt(mean((x - mean(x))²) + eps) · g + b → layernorm(x, g, b, eps)` (also `· rsqrt(…)`) | as above; the variance is the biased one, as `layernorm`'s |
//! | `fold-OP` | `OP(c) → c'`, `c1 OP c2 → c'` | scalar float constants; `sqrt`, `rsqrt`, `neg`, `exp`, `log`, `add`, `sub`, `mul`, `div` |
//!
//! Scalar scales commute with matmul exactly in real arithmetic; in floating
//! point they can differ in the last bit, which the semantic tests allow.

use egg::{Id, Subst};
use tdl_ir::{BinaryOp, Op, ReduceOp, Type};

use super::{attr, custom, dtype, scalar, scalar_const, try_add, ty, v, Rule};
use crate::egraph::{is_mask, tensor_type, TEGraph};

pub fn rules() -> Vec<Rule> {
    vec![
        custom("transpose-transpose", "(transpose (transpose ?x))", |_, _, s| Some(s[v("?x")])),
        custom("permute-to-transpose", "(permute ?p ?x)", |eg, _, s| {
            let Some(Op::Permute { perm }) = attr(eg, s[v("?p")]) else { return None };
            let r = perm.len();
            let swap = r >= 2
                && perm[r - 2] == r - 1
                && perm[r - 1] == r - 2
                && perm[..r - 2].iter().enumerate().all(|(i, p)| i == *p);
            if !swap {
                return None;
            }
            try_add(eg, Op::Transpose, &[s[v("?x")]])
        }),
        custom("permute-identity", "(permute ?p ?x)", |eg, _, s| {
            let Some(Op::Permute { perm }) = attr(eg, s[v("?p")]) else { return None };
            perm.iter().enumerate().all(|(i, p)| i == *p).then(|| s[v("?x")])
        }),
        custom("permute-permute", "(permute ?p2 (permute ?p1 ?x))", |eg, _, s| {
            let (Some(Op::Permute { perm: p1 }), Some(Op::Permute { perm: p2 })) =
                (attr(eg, s[v("?p1")]), attr(eg, s[v("?p2")]))
            else {
                return None;
            };
            // out[i] = mid[p2[i]] = x[p1[p2[i]]]
            let perm: Option<Vec<usize>> = p2.iter().map(|&i| p1.get(i).copied()).collect();
            try_add(eg, Op::Permute { perm: perm? }, &[s[v("?x")]])
        }),
        custom("reshape-reshape", "(reshape ?s2 (reshape ?s1 ?x))", |eg, _, s| {
            let op = attr(eg, s[v("?s2")])?;
            try_add(eg, op, &[s[v("?x")]])
        }),
        custom("reshape-identity", "(reshape ?s ?x)", |eg, _, s| {
            let Some(Op::Reshape { shape }) = attr(eg, s[v("?s")]) else { return None };
            (tensor_type(eg, s[v("?x")])?.shape == shape).then(|| s[v("?x")])
        }),
        custom("divide-by-constant", "(div ?x ?c)", |eg, _, s| {
            let c = scalar(eg, s[v("?c")])?;
            let dt = dtype(eg, s[v("?c")])?;
            // 1/c must itself be an ordinary number, or x·(1/c) means
            // something else than x/c (1/1e-310 is inf).
            if !dt.is_float() || !c.is_normal() || !(1.0 / c).is_normal() || !fits(dt, 1.0 / c) {
                return None;
            }
            let inv = scalar_const(eg, dt, 1.0 / c);
            try_add(eg, Op::Binary(BinaryOp::Mul), &[s[v("?x")], inv])
        }),
        custom("constant-to-the-right", "(mul ?c ?x)", |eg, _, s| {
            let (c, x) = (s[v("?c")], s[v("?x")]);
            if scalar(eg, c).is_none() || scalar(eg, x).is_some() {
                return None;
            }
            try_add(eg, Op::Binary(BinaryOp::Mul), &[x, c])
        }),
        custom("fold-scales", "(mul (mul ?x ?a) ?b)", |eg, matched, s| {
            // A product that already is its own operand (x·0 = (x·0)·2 after
            // folding) would fold forever: C·2, C·4, … Nothing to learn there.
            if eg.find(s[v("?x")]) == eg.find(matched) {
                return None;
            }
            let (a, b) = (scalar(eg, s[v("?a")])?, scalar(eg, s[v("?b")])?);
            let dt = dtype(eg, s[v("?a")])?;
            if dtype(eg, s[v("?b")])? != dt || !dt.is_float() {
                return None;
            }
            // Reassociating is only the same computation when the folded
            // scale is an ordinary number (1e200·1e200 is inf: 0·inf is NaN).
            if !a.is_normal() || !b.is_normal() || !(a * b).is_normal() || !fits(dt, a * b) {
                return None;
            }
            let c = scalar_const(eg, dt, a * b);
            try_add(eg, Op::Binary(BinaryOp::Mul), &[s[v("?x")], c])
        }),
        custom("scale-out-of-matmul-left", "(matmul (mul ?q ?c) ?k)", |eg, _, s| scale_out(eg, s, true)),
        custom("scale-out-of-matmul-right", "(matmul ?q (mul ?k ?c))", |eg, _, s| scale_out(eg, s, false)),
        custom("scale-out-of-transpose", "(transpose (mul ?k ?c))", |eg, _, s| {
            scalar(eg, s[v("?c")])?;
            let t = try_add(eg, Op::Transpose, &[s[v("?k")]])?;
            try_add(eg, Op::Binary(BinaryOp::Mul), &[t, s[v("?c")]])
        }),
        custom("mask-to-the-right", "(add ?m ?s)", |eg, _, s| {
            let (m, x) = (s[v("?m")], s[v("?s")]);
            (is_mask(eg, m) && !is_mask(eg, x)).then_some(())?;
            try_add(eg, Op::Binary(BinaryOp::Add), &[x, m])
        }),
        custom("where-mask-is-masked-add", "(where ?m ?s ?b)", |eg, matched, s| {
            let (m, x, b) = (s[v("?m")], s[v("?s")], s[v("?b")]);
            if !is_mask(eg, m) || scalar(eg, b) != Some(f64::NEG_INFINITY) {
                return None;
            }
            // `s + m` has `s`'s shape: only the same meaning if no broadcast.
            if ty(eg, x) != ty(eg, matched) {
                return None;
            }
            try_add(eg, Op::Binary(BinaryOp::Add), &[x, m])
        }),
        custom(
            "softmax-spelled-out",
            "(div (exp (sub ?x (max ?a ?x))) (sum ?b (exp (sub ?x (max ?a ?x)))))",
            |eg, _, s| {
                let (
                    Some(Op::Reduce { op: ReduceOp::Max, axis: a1, keepdims: true }),
                    Some(Op::Reduce { op: ReduceOp::Sum, axis: a2, keepdims: true }),
                ) = (attr(eg, s[v("?a")]), attr(eg, s[v("?b")]))
                else {
                    return None;
                };
                if a1 != a2 {
                    return None;
                }
                try_add(eg, Op::Softmax { axis: a1 }, &[s[v("?x")]])
            },
        ),
        custom("rmsnorm-spelled-out", "(mul (mul ?x (rsqrt (add (mean ?a (mul ?x ?x)) ?eps))) ?g)", |eg, _, s| norm(eg, s, false)),
        custom("rmsnorm-spelled-out-div", "(mul (div ?x (sqrt (add (mean ?a (mul ?x ?x)) ?eps))) ?g)", |eg, _, s| {
            norm(eg, s, false)
        }),
        custom(
            "layernorm-spelled-out",
            "(add (mul (div (sub ?x (mean ?a ?x)) (sqrt (add (mean ?a (mul (sub ?x (mean ?a ?x)) (sub ?x (mean ?a ?x)))) ?eps))) ?g) ?b)",
            |eg, _, s| norm(eg, s, true),
        ),
        custom(
            "layernorm-spelled-out-rsqrt",
            "(add (mul (mul (sub ?x (mean ?a ?x)) (rsqrt (add (mean ?a (mul (sub ?x (mean ?a ?x)) (sub ?x (mean ?a ?x)))) ?eps))) ?g) ?b)",
            |eg, _, s| norm(eg, s, true),
        ),
        custom("fold-sqrt", "(sqrt ?c)", |eg, _, s| fold1(eg, s, f64::sqrt)),
        custom("fold-rsqrt", "(rsqrt ?c)", |eg, _, s| fold1(eg, s, |x| 1.0 / x.sqrt())),
        custom("fold-neg", "(neg ?c)", |eg, _, s| fold1(eg, s, |x| -x)),
        custom("fold-exp", "(exp ?c)", |eg, _, s| fold1(eg, s, f64::exp)),
        custom("fold-log", "(log ?c)", |eg, _, s| fold1(eg, s, f64::ln)),
        custom("fold-add", "(add ?a ?b)", |eg, _, s| fold2(eg, s, |a, b| a + b)),
        custom("fold-sub", "(sub ?a ?b)", |eg, _, s| fold2(eg, s, |a, b| a - b)),
        custom("fold-mul", "(mul ?a ?b)", |eg, _, s| fold2(eg, s, |a, b| a * b)),
        custom("fold-div", "(div ?a ?b)", |eg, _, s| fold2(eg, s, |a, b| a / b)),
    ]
}

/// The normalisation idioms: the mean must be over the last axis with
/// `keepdims` and `eps` a scalar constant; the type rules check the gain
/// (and bias) shapes.
fn norm(eg: &mut TEGraph, s: &Subst, layer: bool) -> Option<Id> {
    let x = s[v("?x")];
    let rank = crate::egraph::tensor_type(eg, x)?.rank();
    let Some(Op::Reduce { op: ReduceOp::Mean, axis, keepdims: true }) = attr(eg, s[v("?a")]) else { return None };
    if axis + 1 != rank {
        return None;
    }
    let eps = scalar(eg, s[v("?eps")])?;
    if layer {
        try_add(eg, Op::LayerNorm { eps }, &[x, s[v("?g")], s[v("?b")]])
    } else {
        try_add(eg, Op::RmsNorm { eps }, &[x, s[v("?g")]])
    }
}

/// `OP(c)` for a scalar float constant `c`, computed in f64 and stored in
/// `c`'s element type (the reference interpreter computes in f64 too).
fn fold1(eg: &mut TEGraph, s: &Subst, f: fn(f64) -> f64) -> Option<Id> {
    let c = s[v("?c")];
    let (x, dt) = (scalar(eg, c)?, dtype(eg, c)?);
    if !dt.is_float() {
        return None;
    }
    Some(scalar_const(eg, dt, f(x)))
}

fn fold2(eg: &mut TEGraph, s: &Subst, f: fn(f64, f64) -> f64) -> Option<Id> {
    let (a, b) = (s[v("?a")], s[v("?b")]);
    let (x, y, dt) = (scalar(eg, a)?, scalar(eg, b)?, dtype(eg, a)?);
    if !dt.is_float() || dtype(eg, b)? != dt {
        return None;
    }
    Some(scalar_const(eg, dt, f(x, y)))
}

/// Whether `x` is a normal number of the element type (no overflow to
/// `inf`, no underflow to zero or subnormals when stored in `dt`).
fn fits(dt: tdl_ir::DType, x: f64) -> bool {
    let (max, min) = match dt {
        tdl_ir::DType::F32 => (f32::MAX as f64, f32::MIN_POSITIVE as f64),
        tdl_ir::DType::F16 => (65504.0, 6.103515625e-5),
        tdl_ir::DType::BF16 => (3.3895313892515355e38, 1.1754943508222875e-38),
        _ => return false,
    };
    x.is_finite() && x.abs() <= max && x.abs() >= min
}

fn scale_out(eg: &mut TEGraph, s: &Subst, left: bool) -> Option<Id> {
    let (q, k, c) = (s[v("?q")], s[v("?k")], s[v("?c")]);
    scalar(eg, c)?;
    // A scalar scale only: a tensor-shaped factor does not commute with @.
    if !matches!(ty(eg, c), Some(Type::Tensor(t)) if t.rank() == 0) {
        return None;
    }
    let _ = left;
    let mm = try_add(eg, Op::MatMul, &[q, k])?;
    try_add(eg, Op::Binary(BinaryOp::Mul), &[mm, c])
}
