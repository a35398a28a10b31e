//! The fused attention against its composition
//! `softmax(q @ kᵀ * scale (+ modifier) + mask) @ v`, built from the
//! individually tested operators in the same graph.

mod common;

use common::*;
use tdl_ir::{
    ArrayRef, BinaryOp, ConstValue, DType, LambdaVar, MaskExpr, NodeId, Op, ScalarBinary, ScalarExpr, ScalarUnary,
    UnaryOp,
};
use tdl_reference::{random_tensor, run, Tensor};

fn rnd(shape: &[usize], seed: u64) -> Tensor {
    random_tensor(DType::F32, shape, seed)
}

/// The composed form: `softmax(q @ transpose(k) * scale [- bias] [+ mask]) @ v`.
fn composed(
    b: &mut B,
    q: NodeId,
    k: NodeId,
    v: NodeId,
    scale: f64,
    bias: Option<NodeId>,
    mask: Option<NodeId>,
) -> NodeId {
    let kt = b.op(Op::Transpose, &[k]);
    let s = b.op(Op::MatMul, &[q, kt]);
    let c = b.scalar(scale);
    let mut s = b.op(Op::Binary(BinaryOp::Mul), &[s, c]);
    if let Some(bias) = bias {
        s = b.op(Op::Binary(BinaryOp::Sub), &[s, bias]);
    }
    if let Some(m) = mask {
        s = b.op(Op::Binary(BinaryOp::Add), &[s, m]);
    }
    let axis = b.g.node(s).ty.as_tensor().unwrap().rank() - 1;
    let p = b.op(Op::Softmax { axis }, &[s]);
    b.op(Op::MatMul, &[p, v])
}

/// Runs fused and composed attention on random `q [H, T, D]`, `k, v [H, S, D]`
/// and checks they agree to the last bit; returns the fused output.
fn fused_vs_composed(
    h: usize,
    t: usize,
    s: usize,
    d: usize,
    mask: Option<(MaskExpr, Vec<Tensor>)>,
    scale: Option<f64>,
) -> Tensor {
    let seed = (h * 1_000_003 + t * 1009 + s * 7 + d) as u64;
    let (qt, kt, vt) = (rnd(&[h, t, d], seed), rnd(&[h, s, d], seed + 1), rnd(&[h, s, d], seed + 2));
    let mut b = B::new("attn");
    let q = b.param_like("q", &qt);
    let k = b.param_like("k", &kt);
    let v = b.param_like("v", &vt);
    let mut inputs = vec![qt, kt, vt];
    let m = mask.map(|(expr, ops)| {
        let ids: Vec<NodeId> = ops.iter().enumerate().map(|(i, x)| b.param_like(&format!("m{i}"), x)).collect();
        inputs.extend(ops);
        b.op(Op::Mask(expr), &ids)
    });
    let mut ins = vec![q, k, v];
    ins.extend(m);
    let fused = b.op(Op::Attention { scale, masked: m.is_some(), score: None }, &ins);
    let c = composed(&mut b, q, k, v, scale.unwrap_or(1.0 / (d as f64).sqrt()), None, m);
    let g = b.finish(&[fused, c]);
    let out = run(&g, &inputs).unwrap();
    assert_eq!(out[0].shape, vec![h, t, d]);
    assert_eq!(out[0].max_abs_diff(&out[1]), 0.0, "fused and composed differ at H={h} T={t} S={s} D={d}");
    assert!(out[0].all_finite());
    out.into_iter().next().unwrap()
}

#[test]
fn fused_equals_composed_unmasked() {
    for t in [1, 63, 65] {
        fused_vs_composed(2, t, t, 8, None, None);
        fused_vs_composed(1, t, t, 8, None, Some(0.3));
    }
}

#[test]
fn fused_equals_composed_causal() {
    for t in [1, 63, 65, 1000] {
        fused_vs_composed(2, t, t, 8, Some((MaskExpr::Causal, vec![])), None);
    }
}

#[test]
fn fused_equals_composed_window() {
    for t in [1, 63, 65, 1000] {
        fused_vs_composed(2, t, t, 8, Some((MaskExpr::Window { w: 16 }, vec![])), None);
    }
}

#[test]
fn fused_equals_composed_document() {
    for t in [1, 63, 65, 1000] {
        let ids = random_tensor(DType::I32, &[t], t as u64);
        let m = MaskExpr::And(Box::new(MaskExpr::Causal), Box::new(MaskExpr::Document { ids: 0 }));
        fused_vs_composed(2, t, t, 8, Some((m, vec![ids.clone()])), None);
        fused_vs_composed(1, t, t, 8, Some((MaskExpr::Document { ids: 0 }, vec![ids])), None);
    }
}

#[test]
fn decode_t_ne_s() {
    // One new token against a cache of 37 keys: causal sees all of them.
    let one = fused_vs_composed(2, 1, 37, 8, Some((MaskExpr::Causal, vec![])), None);
    let unmasked = fused_vs_composed(2, 1, 37, 8, None, None);
    assert_eq!(one.max_abs_diff(&unmasked), 0.0);
    fused_vs_composed(3, 5, 64, 8, Some((MaskExpr::Causal, vec![])), None);
    fused_vs_composed(1, 3, 7, 4, Some((MaskExpr::Window { w: 2 }, vec![])), None);
}

#[test]
fn grouped_query_attention_equals_explicit_repeat() {
    let (t, d) = (65, 8);
    let (qt, kt, vt) = (rnd(&[4, t, d], 1), rnd(&[2, t, d], 2), rnd(&[2, t, d], 3));
    // A head-dependent mask checks that `h` is the query head.
    let lam = ScalarExpr::binary(
        ScalarBinary::Lt,
        ScalarExpr::binary(ScalarBinary::Sub, ScalarExpr::Var(LambdaVar::Q), ScalarExpr::Var(LambdaVar::K)),
        ScalarExpr::binary(
            ScalarBinary::Mul,
            ScalarExpr::binary(ScalarBinary::Add, ScalarExpr::Var(LambdaVar::H), ScalarExpr::Int(1)),
            ScalarExpr::Int(5),
        ),
    );
    let mask = MaskExpr::And(Box::new(MaskExpr::Causal), Box::new(MaskExpr::Lambda(lam)));
    let mut b = B::new("gqa");
    let q = b.param_like("q", &qt);
    let k = b.param_like("k", &kt);
    let v = b.param_like("v", &vt);
    let m = b.op(Op::Mask(mask), &[]);
    let grouped = b.op(Op::Attention { scale: None, masked: true, score: None }, &[q, k, v, m]);
    let kk = b.op(Op::Repeat { times: 2, axis: 0 }, &[k]);
    let vv = b.op(Op::Repeat { times: 2, axis: 0 }, &[v]);
    let repeated = b.op(Op::Attention { scale: None, masked: true, score: None }, &[q, kk, vv, m]);
    let c = composed(&mut b, q, kk, vv, 1.0 / 8f64.sqrt(), None, Some(m));
    let g = b.finish(&[grouped, repeated, c]);
    let out = run(&g, &[qt.clone(), kt.clone(), vt.clone()]).unwrap();
    assert_eq!(out[0].shape, vec![4, t, d]);
    assert_eq!(out[0].max_abs_diff(&out[1]), 0.0);
    assert_eq!(out[0].max_abs_diff(&out[2]), 0.0);
    // Query heads 0, 1 read kv head 0; heads 2, 3 read kv head 1: head 1's
    // output differs from head 2's only through q and the mask.
    let mut b = B::new("mqa");
    let q = b.param_like("q", &qt);
    let k1 = b.param_like("k", &rnd(&[1, t, d], 4));
    let v1 = b.param_like("v", &rnd(&[1, t, d], 5));
    let mqa = b.op(Op::Attention { scale: None, masked: false, score: None }, &[q, k1, v1]);
    let kk = b.op(Op::Repeat { times: 4, axis: 0 }, &[k1]);
    let vv = b.op(Op::Repeat { times: 4, axis: 0 }, &[v1]);
    let c = composed(&mut b, q, kk, vv, 1.0 / 8f64.sqrt(), None, None);
    let g = b.finish(&[mqa, c]);
    let out = run(&g, &[qt, rnd(&[1, t, d], 4), rnd(&[1, t, d], 5)]).unwrap();
    assert_eq!(out[0].max_abs_diff(&out[1]), 0.0);
}

#[test]
fn leading_axes_broadcast() {
    // q [2, 4, T, D] (batch, heads) against k, v [2, 2, S, D]: grouped heads per batch.
    let (t, s, d) = (5, 6, 4);
    let (qt, kt, vt) = (rnd(&[2, 4, t, d], 11), rnd(&[2, 2, s, d], 12), rnd(&[2, 2, s, d], 13));
    let mut b = B::new("batched");
    let q = b.param_like("q", &qt);
    let k = b.param_like("k", &kt);
    let v = b.param_like("v", &vt);
    let m = b.op(Op::Mask(MaskExpr::Causal), &[]);
    let a = b.op(Op::Attention { scale: None, masked: true, score: None }, &[q, k, v, m]);
    let kk = b.op(Op::Repeat { times: 2, axis: 1 }, &[k]);
    let vv = b.op(Op::Repeat { times: 2, axis: 1 }, &[v]);
    let c = composed(&mut b, q, kk, vv, 0.5, None, Some(m));
    let g = b.finish(&[a, c]);
    let out = run(&g, &[qt, kt, vt]).unwrap();
    assert_eq!(out[0].shape, vec![2, 4, t, d]);
    assert_eq!(out[0].max_abs_diff(&out[1]), 0.0);
    // q [3, T, D] against shared k, v [S, D] (rank 2): plain broadcasting.
    let (qt, kt, vt) = (rnd(&[3, t, d], 14), rnd(&[s, d], 15), rnd(&[s, d], 16));
    let mut b = B::new("shared_kv");
    let q = b.param_like("q", &qt);
    let k = b.param_like("k", &kt);
    let v = b.param_like("v", &vt);
    let a = b.op(Op::Attention { scale: None, masked: false, score: None }, &[q, k, v]);
    let c = composed(&mut b, q, k, v, 0.5, None, None);
    let g = b.finish(&[a, c]);
    let out = run(&g, &[qt, kt, vt]).unwrap();
    assert_eq!(out[0].shape, vec![3, t, d]);
    assert_eq!(out[0].max_abs_diff(&out[1]), 0.0);
}

/// `s - slopes[h] * abs(q - k)`.
fn alibi(slopes: ArrayRef) -> ScalarExpr {
    use ScalarExpr as E;
    E::binary(
        ScalarBinary::Sub,
        E::Var(LambdaVar::S),
        E::binary(
            ScalarBinary::Mul,
            E::Index { array: slopes, indices: vec![E::Var(LambdaVar::H)] },
            E::Unary(
                ScalarUnary::Abs,
                Box::new(E::binary(ScalarBinary::Sub, E::Var(LambdaVar::Q), E::Var(LambdaVar::K))),
            ),
        ),
    )
}

#[test]
fn alibi_score_modifier() {
    let (h, t, d) = (4, 65, 8);
    let slopes = [0.5, 0.25, 0.125, 0.0625];
    let (qt, kt, vt) = (rnd(&[h, t, d], 21), rnd(&[h, t, d], 22), rnd(&[h, t, d], 23));
    // The bias, computed here directly: slope[h] · |q - k|.
    let mut bias = Vec::new();
    for slope in slopes {
        for q in 0..t as i64 {
            for k in 0..t as i64 {
                bias.push(slope * (q - k).abs() as f64);
            }
        }
    }
    let bias_t = f32t(&[h, t, t], &bias);
    let slopes_t = f32t(&[h], &slopes);
    let mut b = B::new("alibi");
    let q = b.param_like("q", &qt);
    let k = b.param_like("k", &kt);
    let v = b.param_like("v", &vt);
    let bias_n = b.param_like("bias", &bias_t);
    let sl = b.param_like("slopes", &slopes_t);
    let m = b.op(Op::Mask(MaskExpr::Window { w: 16 }), &[]);
    let konst = ArrayRef::Const(ConstValue { dtype: DType::F32, shape: vec![h], data: slopes.to_vec() });
    let with_const = b.op(Op::Attention { scale: None, masked: true, score: Some(alibi(konst)) }, &[q, k, v, m]);
    // Operand positions: q, k, v, mask, slopes.
    let with_operand =
        b.op(Op::Attention { scale: None, masked: true, score: Some(alibi(ArrayRef::Operand(4))) }, &[q, k, v, m, sl]);
    let c = composed(&mut b, q, k, v, 1.0 / 8f64.sqrt(), Some(bias_n), Some(m));
    let g = b.finish(&[with_const, with_operand, c]);
    let out = run(&g, &[qt, kt, vt, bias_t, slopes_t]).unwrap();
    assert_eq!(out[0].max_abs_diff(&out[2]), 0.0);
    assert_eq!(out[1].max_abs_diff(&out[2]), 0.0);
}

#[test]
fn softcap_score_modifier() {
    use ScalarExpr as E;
    let (h, t, d) = (2, 63, 8);
    let (qt, kt, vt) = (rnd(&[h, t, d], 31), rnd(&[h, t, d], 32), rnd(&[h, t, d], 33));
    // Large scores so the cap matters: scale 40.
    let scale = 40.0;
    let cap = E::binary(
        ScalarBinary::Mul,
        E::Float(30.0),
        E::Unary(ScalarUnary::Tanh, Box::new(E::binary(ScalarBinary::Div, E::Var(LambdaVar::S), E::Float(30.0)))),
    );
    let mut b = B::new("softcap");
    let q = b.param_like("q", &qt);
    let k = b.param_like("k", &kt);
    let v = b.param_like("v", &vt);
    let m = b.op(Op::Mask(MaskExpr::Causal), &[]);
    let fused = b.op(Op::Attention { scale: Some(scale), masked: true, score: Some(cap) }, &[q, k, v, m]);
    // 30 * tanh(s / 30), composed.
    let kt_ = b.op(Op::Transpose, &[k]);
    let s = b.op(Op::MatMul, &[q, kt_]);
    let c = b.scalar(scale);
    let s = b.op(Op::Binary(BinaryOp::Mul), &[s, c]);
    let c30 = b.scalar(30.0);
    let s = b.op(Op::Binary(BinaryOp::Div), &[s, c30]);
    let s = b.op(Op::Unary(UnaryOp::Tanh), &[s]);
    let s = b.op(Op::Binary(BinaryOp::Mul), &[c30, s]);
    let s = b.op(Op::Binary(BinaryOp::Add), &[s, m]);
    let p = b.op(Op::Softmax { axis: 2 }, &[s]);
    let o = b.op(Op::MatMul, &[p, v]);
    let plain = b.op(Op::Attention { scale: Some(scale), masked: true, score: None }, &[q, k, v, m]);
    let g = b.finish(&[fused, o, plain]);
    let out = run(&g, &[qt, kt, vt]).unwrap();
    assert_eq!(out[0].max_abs_diff(&out[1]), 0.0);
    assert!(out[0].max_abs_diff(&out[2]) > 1e-6, "the cap changed nothing");
}

#[test]
fn fully_masked_rows_are_exact_zeros() {
    use ScalarExpr as E;
    let (h, t, d) = (2, 7, 4);
    let (qt, kt, vt) = (rnd(&[h, t, d], 41), rnd(&[h, t, d], 42), rnd(&[h, t, d], 43));
    let mut b = B::new("masked_rows");
    let q = b.param_like("q", &qt);
    let k = b.param_like("k", &kt);
    let v = b.param_like("v", &vt);
    // Query 1 sees no key.
    let m = b.op(Op::Mask(MaskExpr::Lambda(E::binary(ScalarBinary::Ne, E::Var(LambdaVar::Q), E::Int(1)))), &[]);
    let fused = b.op(Op::Attention { scale: None, masked: true, score: None }, &[q, k, v, m]);
    let c = composed(&mut b, q, k, v, 0.5, None, Some(m));
    // Nobody sees anything.
    let none = b.op(Op::Mask(MaskExpr::Sink { n: 0 }), &[]);
    let empty = b.op(Op::Attention { scale: None, masked: true, score: None }, &[q, k, v, none]);
    // A score modifier that sends everything to -inf.
    let neg = b.op(Op::Attention { scale: None, masked: false, score: Some(E::Float(f64::NEG_INFINITY)) }, &[q, k, v]);
    let g = b.finish(&[fused, c, empty, neg]);
    let out = run(&g, &[qt, kt, vt]).unwrap();
    for hh in 0..h {
        for q in 0..t {
            for dd in 0..d {
                let x = out[0].get(&[hh, q, dd]).unwrap();
                if q == 1 {
                    assert_eq!(x.to_bits(), 0f64.to_bits(), "row 1 must be +0.0");
                } else {
                    assert!(x.is_finite() && x != 0.0);
                }
            }
        }
    }
    assert_eq!(out[0].max_abs_diff(&out[1]), 0.0);
    assert!(out[2].data.iter().all(|&x| x == 0.0));
    assert!(out[3].data.iter().all(|&x| x == 0.0));
}

#[test]
fn transformer_block_from_the_contract() {
    // The contract's pre-norm block at d_model = 16, 2 heads of 8, hidden 32:
    // the composed attention and the fused one give the same block output.
    use tdl_ir::Dim;
    let (t, dm, nh, hd, hid) = (9usize, 16usize, 2usize, 8usize, 32usize);
    let mut b = B::new("block");
    let x = b.param("x", DType::F32, &["T", "16"]);
    let g1 = b.param("g1", DType::F32, &["16"]);
    let wqkv = b.param("wqkv", DType::F32, &["16", "48"]);
    let wo = b.param("wo", DType::F32, &["16", "16"]);
    let g2 = b.param("g2", DType::F32, &["16"]);
    let w1 = b.param("w1", DType::F32, &["16", "32"]);
    let w2 = b.param("w2", DType::F32, &["32", "16"]);
    let h = b.op(Op::RmsNorm { eps: 1e-6 }, &[x, g1]);
    let qkv = b.op(Op::MatMul, &[h, wqkv]);
    let heads = |b: &mut B, start: i64| {
        let s = b.op(Op::Slice { axis: 1, start, end: start + 16 }, &[qkv]);
        let r = b.op(Op::Reshape { shape: vec![Dim::sym("T"), Dim::constant(2), Dim::constant(8)] }, &[s]);
        b.op(Op::Permute { perm: vec![1, 0, 2] }, &[r])
    };
    let (q, k, v) = (heads(&mut b, 0), heads(&mut b, 16), heads(&mut b, 32));
    let (rq, rk) = (b.op(Op::Rope { base: 10000.0 }, &[q]), b.op(Op::Rope { base: 10000.0 }, &[k]));
    let causal = b.op(Op::Mask(MaskExpr::Causal), &[]);
    let composed_a = composed(&mut b, rq, rk, v, 1.0 / (hd as f64).sqrt(), None, Some(causal));
    let fused_a = b.op(Op::Attention { scale: None, masked: true, score: None }, &[rq, rk, v, causal]);
    let finish = |b: &mut B, a| {
        let p = b.op(Op::Permute { perm: vec![1, 0, 2] }, &[a]);
        let r = b.op(Op::Reshape { shape: vec![Dim::sym("T"), Dim::constant(16)] }, &[p]);
        let o = b.op(Op::MatMul, &[r, wo]);
        let x2 = b.op(Op::Binary(BinaryOp::Add), &[x, o]);
        let n2 = b.op(Op::RmsNorm { eps: 1e-6 }, &[x2, g2]);
        let u = b.op(Op::MatMul, &[n2, w1]);
        let u = b.op(Op::Unary(UnaryOp::Silu), &[u]);
        let d = b.op(Op::MatMul, &[u, w2]);
        b.op(Op::Binary(BinaryOp::Add), &[x2, d])
    };
    let y1 = finish(&mut b, composed_a);
    let y2 = finish(&mut b, fused_a);
    let g = b.finish(&[y1, y2]);
    let inputs = [
        rnd(&[t, dm], 1),
        rnd(&[dm], 2),
        rnd(&[dm, 3 * dm], 3),
        rnd(&[dm, dm], 4),
        rnd(&[dm], 5),
        rnd(&[dm, hid], 6),
        rnd(&[hid, dm], 7),
    ];
    let out = run(&g, &inputs).unwrap();
    assert_eq!(out[0].shape, vec![t, dm]);
    assert_eq!(out[0].max_abs_diff(&out[1]), 0.0);
    assert!(out[0].all_finite());
    let _ = nh;
}
