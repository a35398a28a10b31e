//! Every operator against hand-computed values.
#![allow(clippy::cloned_ref_to_slice_refs)] // `&[x.clone()]` reads better in tests

mod common;

use common::*;
use tdl_ir::{BinaryOp, DType, Dim, Op, ReduceOp, UnaryOp};

fn un(op: UnaryOp, xs: &[f64]) -> Vec<f64> {
    apply_ok(Op::Unary(op), &[f32t(&[xs.len()], xs)]).data
}

#[test]
fn unary_functions_match_closed_forms() {
    let xs = [-2.0, -0.5, 0.0, 1.0, 3.0];
    assert_eq!(un(UnaryOp::Neg, &xs), vec![2.0, 0.5, -0.0, -1.0, -3.0]);
    assert_eq!(un(UnaryOp::Abs, &xs), vec![2.0, 0.5, 0.0, 1.0, 3.0]);
    assert_eq!(un(UnaryOp::Relu, &xs), vec![0.0, 0.0, 0.0, 1.0, 3.0]);
    assert_eq!(un(UnaryOp::Exp, &[0.0, 1.0]), vec![1.0, std::f64::consts::E]);
    assert_eq!(un(UnaryOp::Log, &[1.0, std::f64::consts::E]), vec![0.0, 1.0]);
    assert_eq!(un(UnaryOp::Sqrt, &[4.0, 2.0]), vec![2.0, std::f64::consts::SQRT_2]);
    assert_eq!(un(UnaryOp::Rsqrt, &[4.0, 0.25]), vec![0.5, 2.0]);
    assert!(un(UnaryOp::Sqrt, &[-1.0])[0].is_nan());
    assert_close(&un(UnaryOp::Tanh, &[0.0, 1.0, -20.0]), &[0.0, 0.7615941559557649, -1.0], 1e-15);
    assert_close(&un(UnaryOp::Sigmoid, &[0.0, 1.0, -800.0, 800.0]), &[0.5, 0.7310585786300049, 0.0, 1.0], 1e-15);
    assert_close(&un(UnaryOp::Silu, &[1.0, -1.0, 0.0]), &[0.7310585786300049, -0.2689414213699951, 0.0], 1e-15);
    // Exact erf form (Abramowitz-Stegun tables / scipy): gelu(x) = x·Φ(x).
    assert_close(
        &un(UnaryOp::Gelu, &[1.0, -1.0, 0.0, 2.0, -3.0]),
        &[0.8413447460685429, -0.15865525393145707, 0.0, 1.9544997361036416, -0.00404969409489031],
        1e-15,
    );
}

#[test]
fn unary_on_i32_wraps() {
    let x = t(DType::I32, &[4], &[-3.0, 5.0, -2147483648.0, 0.0]);
    assert_eq!(apply_ok(Op::Unary(UnaryOp::Neg), &[x.clone()]).data, vec![3.0, -5.0, -2147483648.0, 0.0]);
    assert_eq!(apply_ok(Op::Unary(UnaryOp::Abs), &[x.clone()]).data, vec![3.0, 5.0, -2147483648.0, 0.0]);
    assert_eq!(apply_ok(Op::Unary(UnaryOp::Relu), &[x]).data, vec![0.0, 5.0, 0.0, 0.0]);
}

#[test]
fn binary_broadcasts_like_numpy() {
    let a = f32t(&[2, 1], &[1.0, 2.0]);
    let b = f32t(&[3], &[10.0, 20.0, 30.0]);
    let add = apply_ok(Op::Binary(BinaryOp::Add), &[a.clone(), b.clone()]);
    assert_eq!(add.shape, vec![2, 3]);
    assert_eq!(add.data, vec![11.0, 21.0, 31.0, 12.0, 22.0, 32.0]);
    let sub = apply_ok(Op::Binary(BinaryOp::Sub), &[b.clone(), a.clone()]);
    assert_eq!(sub.data, vec![9.0, 19.0, 29.0, 8.0, 18.0, 28.0]);
    let mul = apply_ok(Op::Binary(BinaryOp::Mul), &[a.clone(), b.clone()]);
    assert_eq!(mul.data, vec![10.0, 20.0, 30.0, 20.0, 40.0, 60.0]);
    let div = apply_ok(Op::Binary(BinaryOp::Div), &[a, b]);
    assert_eq!(div.data, vec![0.1, 0.05, 1.0 / 30.0, 0.2, 0.1, 2.0 / 30.0]);
    // A scalar against a rank-3 tensor.
    let x = f32t(&[2, 1, 2], &[1.0, 2.0, 3.0, 4.0]);
    let s = f32t(&[], &[0.5]);
    assert_eq!(apply_ok(Op::Binary(BinaryOp::Mul), &[x, s]).data, vec![0.5, 1.0, 1.5, 2.0]);
    // IEEE division by zero.
    let z = apply_ok(Op::Binary(BinaryOp::Div), &[f32t(&[2], &[1.0, -1.0]), f32t(&[1], &[0.0])]);
    assert_eq!(z.data, vec![f64::INFINITY, f64::NEG_INFINITY]);
}

#[test]
fn binary_on_i32_wraps_and_floor_divides() {
    let i = |d: &[f64]| t(DType::I32, &[d.len()], d);
    let a = i(&[-7.0, 7.0, 7.0, -7.0, 2147483647.0, -2147483648.0, 65536.0]);
    let b = i(&[2.0, -2.0, 0.0, -2.0, 1.0, -1.0, 65536.0]);
    assert_eq!(
        apply_ok(Op::Binary(BinaryOp::Div), &[a.clone(), b.clone()]).data,
        vec![-4.0, -4.0, 0.0, 3.0, 2147483647.0, -2147483648.0, 1.0]
    );
    assert_eq!(
        apply_ok(Op::Binary(BinaryOp::Add), &[a.clone(), b.clone()]).data,
        vec![-5.0, 5.0, 7.0, -9.0, -2147483648.0, 2147483647.0, 131072.0]
    );
    assert_eq!(
        apply_ok(Op::Binary(BinaryOp::Mul), &[a.clone(), b.clone()]).data,
        vec![-14.0, -14.0, 0.0, 14.0, 2147483647.0, -2147483648.0, 0.0]
    );
    assert_eq!(
        apply_ok(Op::Binary(BinaryOp::Sub), &[a, b]).data,
        vec![-9.0, 9.0, 7.0, -5.0, 2147483646.0, -2147483647.0, 0.0]
    );
}

#[test]
fn matmul_by_hand() {
    // [[1,2,3],[4,5,6]] @ [[7,8],[9,10],[11,12]] = [[58,64],[139,154]]
    let a = f32t(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let b = f32t(&[3, 2], &[7.0, 8.0, 9.0, 10.0, 11.0, 12.0]);
    let c = apply_ok(Op::MatMul, &[a.clone(), b.clone()]);
    assert_eq!(c.shape, vec![2, 2]);
    assert_eq!(c.data, vec![58.0, 64.0, 139.0, 154.0]);
    // Broadcast batch: [2, 2, 3] @ [3, 2]; the second batch is 2·a.
    let mut ab = a.data.clone();
    ab.extend(a.data.iter().map(|x| 2.0 * x));
    let c2 = apply_ok(Op::MatMul, &[f32t(&[2, 2, 3], &ab), b.clone()]);
    assert_eq!(c2.shape, vec![2, 2, 2]);
    assert_eq!(c2.data, vec![58.0, 64.0, 139.0, 154.0, 116.0, 128.0, 278.0, 308.0]);
    // [1, 2, 3] @ [2, 3, 2]: batch broadcast on the left.
    let mut bb = b.data.clone();
    bb.extend(b.data.iter().map(|x| -x));
    let c3 = apply_ok(Op::MatMul, &[f32t(&[1, 2, 3], &a.data), f32t(&[2, 3, 2], &bb)]);
    assert_eq!(c3.shape, vec![2, 2, 2]);
    assert_eq!(c3.data, vec![58.0, 64.0, 139.0, 154.0, -58.0, -64.0, -139.0, -154.0]);
    // i32 wraps: 65536·65536 + 1·1 = 2^32 + 1 ≡ 1.
    let x = t(DType::I32, &[1, 2], &[65536.0, 1.0]);
    let y = t(DType::I32, &[2, 1], &[65536.0, 1.0]);
    assert_eq!(apply_ok(Op::MatMul, &[x, y]).data, vec![1.0]);
}

#[test]
fn reductions_with_and_without_keepdims() {
    let x = f32t(&[2, 3], &[1.0, 5.0, 3.0, -4.0, 2.0, 8.0]);
    let r = |op, axis, keepdims| apply_ok(Op::Reduce { op, axis, keepdims }, &[x.clone()]);
    let s0 = r(ReduceOp::Sum, 0, false);
    assert_eq!((s0.shape.clone(), s0.data.clone()), (vec![3], vec![-3.0, 7.0, 11.0]));
    let s1 = r(ReduceOp::Sum, 1, true);
    assert_eq!((s1.shape.clone(), s1.data.clone()), (vec![2, 1], vec![9.0, 6.0]));
    let m1 = r(ReduceOp::Max, 1, false);
    assert_eq!(m1.data, vec![5.0, 8.0]);
    let m0 = r(ReduceOp::Max, 0, true);
    assert_eq!((m0.shape.clone(), m0.data.clone()), (vec![1, 3], vec![1.0, 5.0, 8.0]));
    let mean = r(ReduceOp::Mean, 1, false);
    assert_eq!(mean.data, vec![3.0, 2.0]);
    // max propagates NaN, like NumPy.
    let n = apply_ok(Op::Reduce { op: ReduceOp::Max, axis: 0, keepdims: false }, &[f32t(&[3], &[1.0, f64::NAN, 2.0])]);
    assert!(n.data[0].is_nan());
    // i32 sum wraps.
    let i = t(DType::I32, &[2], &[2147483647.0, 2.0]);
    assert_eq!(apply_ok(Op::Reduce { op: ReduceOp::Sum, axis: 0, keepdims: false }, &[i]).data, vec![-2147483647.0]);
}

#[test]
fn softmax_rows() {
    let x = f32t(&[3, 3], &[1.0, 2.0, 3.0, 1000.0, 1001.0, 1002.0, 0.0, f64::NEG_INFINITY, 0.0]);
    let p = apply_ok(Op::Softmax { axis: 1 }, &[x]);
    let expect = [0.09003057317038046, 0.24472847105479767, 0.6652409557748219];
    assert_close(&p.data[0..3], &expect, 1e-15);
    // Stable for large inputs: the same row shifted by 999.
    assert_close(&p.data[3..6], &expect, 1e-15);
    assert_eq!(&p.data[6..9], &[0.5, 0.0, 0.5]);
    for row in p.data.chunks(3) {
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-15);
    }
    // An all -inf row gives zeros, not NaN.
    let inf = f64::NEG_INFINITY;
    let z = apply_ok(Op::Softmax { axis: 1 }, &[f32t(&[2, 2], &[inf, inf, 0.0, inf])]);
    assert_eq!(z.data, vec![0.0, 0.0, 1.0, 0.0]);
    // Over axis 0: the columns.
    let c = apply_ok(Op::Softmax { axis: 0 }, &[f32t(&[2, 2], &[0.0, 1.0, 0.0, 1.0])]);
    assert_eq!(c.data, vec![0.5, 0.5, 0.5, 0.5]);
}

#[test]
fn transpose_and_permute() {
    let x = f32t(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let tr = apply_ok(Op::Transpose, &[x]);
    assert_eq!((tr.shape.clone(), tr.data.clone()), (vec![3, 2], vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]));
    let data: Vec<f64> = (0..24).map(f64::from).collect();
    let y = f32t(&[2, 3, 4], &data);
    let p = apply_ok(Op::Permute { perm: vec![1, 0, 2] }, &[y.clone()]);
    assert_eq!(p.shape, vec![3, 2, 4]);
    for i in 0..2 {
        for j in 0..3 {
            for k in 0..4 {
                assert_eq!(p.get(&[j, i, k]), y.get(&[i, j, k]));
            }
        }
    }
    let p2 = apply_ok(Op::Permute { perm: vec![2, 0, 1] }, &[y.clone()]);
    assert_eq!(p2.shape, vec![4, 2, 3]);
    assert_eq!(p2.get(&[3, 1, 2]), Some(23.0));
    assert_eq!(p2.get(&[1, 0, 2]), Some(9.0));
    let t3 = apply_ok(Op::Transpose, &[y.clone()]);
    assert_eq!(t3.get(&[1, 3, 2]), y.get(&[1, 2, 3]));
}

#[test]
fn shape_ops() {
    let data: Vec<f64> = (0..6).map(f64::from).collect();
    let x = f32t(&[2, 3], &data);
    let r = apply_ok(Op::Reshape { shape: vec![Dim::constant(3), Dim::constant(2)] }, &[x.clone()]);
    assert_eq!((r.shape.clone(), r.data.clone()), (vec![3, 2], data.clone()));
    let c0 = apply_ok(Op::Concat { axis: 0 }, &[x.clone(), f32t(&[1, 3], &[9.0, 9.0, 9.0])]);
    assert_eq!((c0.shape.clone(), c0.data.clone()), (vec![3, 3], vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 9.0, 9.0, 9.0]));
    let c1 = apply_ok(Op::Concat { axis: 1 }, &[x.clone(), f32t(&[2, 1], &[7.0, 8.0]), x.clone()]);
    assert_eq!(c1.shape, vec![2, 7]);
    assert_eq!(c1.data, vec![0.0, 1.0, 2.0, 7.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 8.0, 3.0, 4.0, 5.0]);
    let s = apply_ok(Op::Slice { axis: 1, start: 1, end: 3 }, &[x.clone()]);
    assert_eq!((s.shape.clone(), s.data.clone()), (vec![2, 2], vec![1.0, 2.0, 4.0, 5.0]));
    // An empty slice is not a valid graph: the type rules need start < end.
    assert!(tdl_ir::infer::infer_type(
        &Op::Slice { axis: 0, start: 1, end: 1 },
        &[&tdl_ir::Type::Tensor(tdl_ir::TensorType::new(DType::F32, vec![2.into(), 3.into()]))]
    )
    .is_err());
    // repeat: each slice `times` times consecutively, np.repeat.
    let rp0 = apply_ok(Op::Repeat { times: 2, axis: 0 }, &[x.clone()]);
    assert_eq!(rp0.data, vec![0.0, 1.0, 2.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 3.0, 4.0, 5.0]);
    let rp1 = apply_ok(Op::Repeat { times: 3, axis: 1 }, &[f32t(&[1, 2], &[1.0, 2.0])]);
    assert_eq!(rp1.data, vec![1.0, 1.0, 1.0, 2.0, 2.0, 2.0]);
}

#[test]
fn where_with_a_bool_tensor_broadcasts() {
    let c = t(DType::Bool, &[2, 1], &[1.0, 0.0]);
    let a = f32t(&[3], &[1.0, 2.0, 3.0]);
    let b = f32t(&[], &[-1.0]);
    let w = apply_ok(Op::Where, &[c, a, b]);
    assert_eq!((w.shape.clone(), w.data.clone()), (vec![2, 3], vec![1.0, 2.0, 3.0, -1.0, -1.0, -1.0]));
}

#[test]
fn layernorm_of_1_2_3_4() {
    let x = f32t(&[1, 4], &[1.0, 2.0, 3.0, 4.0]);
    // mean 2.5, population variance 1.25.
    let d = (1.25f64 + 1e-5).sqrt();
    let plain = apply_ok(Op::LayerNorm { eps: 1e-5 }, &[x.clone(), f32t(&[4], &[1.0; 4]), f32t(&[4], &[0.0; 4])]);
    assert_close(&plain.data, &[-1.5 / d, -0.5 / d, 0.5 / d, 1.5 / d], 1e-15);
    assert_close(&plain.data, &[-1.3416354, -0.4472118, 0.4472118, 1.3416354], 1e-7);
    let gb = apply_ok(
        Op::LayerNorm { eps: 1e-5 },
        &[x, f32t(&[4], &[1.0, 2.0, 1.0, 1.0]), f32t(&[4], &[0.0, 0.0, 1.0, 0.0])],
    );
    assert_close(&gb.data, &[-1.5 / d, -1.0 / d, 0.5 / d + 1.0, 1.5 / d], 1e-15);
}

#[test]
fn rmsnorm_of_1_2_3_4() {
    let x = f32t(&[2, 4], &[1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0]);
    // mean of squares 7.5
    let d = (7.5f64 + 1e-6).sqrt();
    let r = apply_ok(Op::RmsNorm { eps: 1e-6 }, &[x, f32t(&[4], &[1.0, 1.0, 2.0, 1.0])]);
    assert_close(&r.data, &[1.0 / d, 2.0 / d, 6.0 / d, 4.0 / d, 0.0, 0.0, 0.0, 0.0], 1e-15);
}

#[test]
fn rope_on_a_tiny_tensor() {
    // P = 3 positions, D = 4: half = 2, θ(pos, 0) = pos, θ(pos, 1) = pos · 10000^(-1/2) = pos / 100.
    let x: Vec<f64> = (1..=12).map(f64::from).collect();
    let r = apply_ok(Op::Rope { base: 10000.0 }, &[f32t(&[3, 4], &x)]);
    let mut expect = Vec::new();
    for pos in 0..3 {
        let row = &x[pos * 4..pos * 4 + 4];
        let (t0, t1) = (pos as f64, pos as f64 / 100.0);
        expect.extend([
            row[0] * t0.cos() - row[2] * t0.sin(),
            row[1] * t1.cos() - row[3] * t1.sin(),
            row[2] * t0.cos() + row[0] * t0.sin(),
            row[3] * t1.cos() + row[1] * t1.sin(),
        ]);
    }
    assert_close(&r.data, &expect, 1e-14);
    // Position 0 is the identity.
    assert_eq!(&r.data[0..4], &x[0..4]);
    // Position 1, pair 0: (5, 7) rotated by 1 radian.
    assert_close(&r.data[4..5], &[5.0 * 1f64.cos() - 7.0 * 1f64.sin()], 1e-15);
    // Leading axes do not change positions: [2, 3, 4] repeats the table.
    let mut x2 = x.clone();
    x2.extend(&x);
    let r2 = apply_ok(Op::Rope { base: 10000.0 }, &[f32t(&[2, 3, 4], &x2)]);
    assert_eq!(&r2.data[12..], &r.data[..]);
}

#[test]
fn attention_by_hand() {
    // One query, two keys, D = 1, scale 1: scores [0, 1].
    let q = f32t(&[1, 1], &[1.0]);
    let k = f32t(&[2, 1], &[0.0, 1.0]);
    let v = f32t(&[2, 1], &[1.0, 3.0]);
    let e = std::f64::consts::E;
    let out =
        apply_ok(Op::Attention { scale: Some(1.0), masked: false, score: None }, &[q.clone(), k.clone(), v.clone()]);
    assert_close(&out.data, &[(1.0 + 3.0 * e) / (1.0 + e)], 1e-15);
    // The default scale is 1/sqrt(D): D = 4 gives 1/2.
    let q4 = f32t(&[1, 4], &[1.0, 1.0, 0.0, 0.0]);
    let k4 = f32t(&[2, 4], &[0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]);
    let out4 = apply_ok(Op::Attention { scale: None, masked: false, score: None }, &[q4, k4, v]);
    // scores [0, 2] · 1/2 = [0, 1]: the same weights.
    assert_close(&out4.data, &[(1.0 + 3.0 * e) / (1.0 + e)], 1e-15);
}
