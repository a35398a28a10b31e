//! Inputs against signatures, symbol binding, limits and run-time shape
//! errors: every one a clean `RunError`, never a panic or a huge allocation.
#![allow(clippy::cloned_ref_to_slice_refs)] // `&[x.clone()]` reads better in tests

mod common;

use common::*;
use tdl_ir::{DType, Dim, MaskExpr, Op};
use tdl_reference::{bind_symbols, run, run_with_limits, Limits, RunError, Tensor};

fn zeros(dtype: DType, shape: &[usize]) -> Tensor {
    Tensor::zeros(dtype, shape).unwrap()
}

fn qk_graph() -> tdl_ir::VerifiedGraph {
    let mut b = B::new("g");
    let q = b.param("q", DType::F32, &["H", "T", "64"]);
    let k = b.param("k", DType::F32, &["H", "T", "64"]);
    let kt = b.op(Op::Transpose, &[k]);
    let s = b.op(Op::MatMul, &[q, kt]);
    b.finish(&[s])
}

#[test]
fn binds_symbols_from_inputs() {
    let g = qk_graph();
    let b = bind_symbols(&g, &[zeros(DType::F32, &[2, 5, 64]), zeros(DType::F32, &[2, 5, 64])]).unwrap();
    assert_eq!(b.get("H"), Some(&2));
    assert_eq!(b.get("T"), Some(&5));
    let out = run(&g, &[zeros(DType::F32, &[2, 5, 64]), zeros(DType::F32, &[2, 5, 64])]).unwrap();
    assert_eq!(out[0].shape, vec![2, 5, 5]);
    assert_eq!(out[0].dtype, DType::F32);
}

#[test]
fn wrong_dtype_rank_dim_and_count() {
    let g = qk_graph();
    let ok = zeros(DType::F32, &[2, 5, 64]);
    let e = run(&g, &[zeros(DType::F16, &[2, 5, 64]), ok.clone()]).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, RunError::InputType { index: 0, .. }), "{e:?}");
    assert!(
        msg.contains("input `q`") && msg.contains("expected f32[H, T, 64]") && msg.contains("found f16[2, 5, 64]"),
        "{msg}"
    );

    let e = run(&g, &[zeros(DType::F32, &[2, 5]), ok.clone()]).unwrap_err().to_string();
    assert!(e.contains("found f32[2, 5]") && e.contains("rank is 2, expected 3"), "{e}");

    let e = run(&g, &[ok.clone(), zeros(DType::F32, &[2, 5, 32])]).unwrap_err().to_string();
    assert!(e.contains("input `k`") && e.contains("axis 2 is 32, expected 64"), "{e}");

    let e = run(&g, &[ok.clone()]).unwrap_err();
    assert!(matches!(e, RunError::InputCount { expected: 2, found: 1, .. }), "{e:?}");
    assert!(e.to_string().contains("g(q: f32[H, T, 64], k: f32[H, T, 64])"), "{e}");
}

#[test]
fn conflicting_symbol_bindings_name_both_inputs() {
    let g = qk_graph();
    let e = run(&g, &[zeros(DType::F32, &[2, 5, 64]), zeros(DType::F32, &[2, 7, 64])]).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, RunError::SymbolConflict { .. }), "{e:?}");
    assert!(
        msg.contains("`T`")
            && msg.contains("`q`")
            && msg.contains("`k`")
            && msg.contains("T = 5")
            && msg.contains("T = 7"),
        "{msg}"
    );
}

#[test]
fn composite_dimensions_are_solved_and_checked() {
    // x: f32[T], y: f32[2*T]; y's size alone binds T when x is absent.
    let mut b = B::new("comp");
    let y = b.param("y", DType::F32, &["2*T"]);
    let r = b.op(Op::Unary(tdl_ir::UnaryOp::Neg), &[y]);
    let g = b.finish(&[r]);
    assert_eq!(bind_symbols(&g, &[zeros(DType::F32, &[6])]).unwrap().get("T"), Some(&3));
    let e = run(&g, &[zeros(DType::F32, &[7])]).unwrap_err().to_string();
    assert!(e.contains("input `y`") && e.contains("2*T"), "{e}");

    let mut b = B::new("comp2");
    let x = b.param("x", DType::F32, &["T"]);
    let y = b.param("y", DType::F32, &["2*T"]);
    let _ = x;
    let r = b.op(Op::Unary(tdl_ir::UnaryOp::Neg), &[y]);
    let g = b.finish(&[r]);
    assert!(run(&g, &[zeros(DType::F32, &[3]), zeros(DType::F32, &[6])]).is_ok());
    let e = run(&g, &[zeros(DType::F32, &[3]), zeros(DType::F32, &[8])]).unwrap_err().to_string();
    assert!(e.contains("axis 0 is 8") && e.contains("T = 3"), "{e}");
}

#[test]
fn over_limit_intermediate_errors_before_allocating() {
    // x: f32[T] with T = 2^20; reshape(x, [T, 1]) @ reshape(x, [1, T]) is
    // f32[T, T]: 2^40 elements.
    let mut b = B::new("outer");
    let x = b.param("x", DType::F32, &["T"]);
    let col = b.op(Op::Reshape { shape: vec![Dim::sym("T"), Dim::constant(1)] }, &[x]);
    let row = b.op(Op::Reshape { shape: vec![Dim::constant(1), Dim::sym("T")] }, &[x]);
    let outer = b.op(Op::MatMul, &[col, row]);
    let added = b.op(Op::Binary(tdl_ir::BinaryOp::Add), &[col, row]);
    let g = b.finish(&[outer]);
    let big = zeros(DType::F32, &[1 << 20]);
    let e = run(&g, &[big.clone()]).unwrap_err();
    match e.root() {
        RunError::TooLarge { elements, limit, .. } => {
            assert_eq!(elements, &(1u64 << 40).to_string());
            assert_eq!(*limit, 1 << 28);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(e.to_string().contains("matmul"), "{e}");
    let g2 = B { g: g.into_inner() }.finish(&[added]);
    assert!(matches!(run(&g2, &[big]).unwrap_err().root(), RunError::TooLarge { .. }));
}

#[test]
fn over_limit_inputs_and_score_matrix() {
    let small = Limits { max_elements: 1000 };
    let mut b = B::new("attn");
    let q = b.param("q", DType::F32, &["T", "4"]);
    let m = b.op(Op::Mask(MaskExpr::Causal), &[]);
    let a = b.op(Op::Attention { scale: None, masked: true, score: None }, &[q, q, q, m]);
    let g = b.finish(&[a]);
    // 40 × 4 inputs and outputs fit; the 40 × 40 score matrix does not.
    let e = run_with_limits(&g, &[zeros(DType::F32, &[40, 4])], &small).unwrap_err();
    assert!(matches!(e.root(), RunError::TooLarge { .. }), "{e:?}");
    assert!(e.to_string().contains("score matrix"), "{e}");
    assert!(run_with_limits(&g, &[zeros(DType::F32, &[30, 4])], &small).is_ok());
    // An input over the limit.
    let e = run_with_limits(&g, &[zeros(DType::F32, &[300, 4])], &small).unwrap_err();
    assert!(matches!(e, RunError::TooLarge { .. }), "{e:?}");
    assert!(e.to_string().contains("input `q`"), "{e}");
}

#[test]
fn malformed_tensors_are_rejected() {
    let mut b = B::new("ids");
    let x = b.param("x", DType::I32, &["T"]);
    let r = b.op(Op::Unary(tdl_ir::UnaryOp::Neg), &[x]);
    let g = b.finish(&[r]);
    let frac = Tensor::new(DType::I32, vec![2], vec![1.0, 2.5]).unwrap();
    let e = run(&g, &[frac]).unwrap_err().to_string();
    assert!(e.contains("2.5") && e.contains("i32"), "{e}");
    let bad_len = Tensor { dtype: DType::I32, shape: vec![3], data: vec![1.0] };
    assert!(matches!(run(&g, &[bad_len]).unwrap_err(), RunError::BadTensor(_)));
    assert!(Tensor::new(DType::F32, vec![2, 2], vec![0.0; 3]).is_err());
}

#[test]
fn slice_beyond_a_symbolic_axis() {
    let mut b = B::new("sl");
    let x = b.param("x", DType::F32, &["T"]);
    let s = b.op(Op::Slice { axis: 0, start: 0, end: 5 }, &[x]);
    let g = b.finish(&[s]);
    assert_eq!(run(&g, &[zeros(DType::F32, &[8])]).unwrap()[0].shape, vec![5]);
    let e = run(&g, &[zeros(DType::F32, &[3])]).unwrap_err().to_string();
    assert!(e.contains("0..5") && e.contains("axis size 3"), "{e}");
}

#[test]
fn rope_with_a_symbolic_odd_width() {
    let mut b = B::new("rope");
    let x = b.param("x", DType::F32, &["T", "D"]);
    let r = b.op(Op::Rope { base: 10000.0 }, &[x]);
    let g = b.finish(&[r]);
    assert!(run(&g, &[zeros(DType::F32, &[2, 4])]).is_ok());
    let e = run(&g, &[zeros(DType::F32, &[2, 3])]).unwrap_err().to_string();
    assert!(e.contains("even") && e.contains("rope"), "{e}");
}

#[test]
fn single_kv_head_broadcasts() {
    let mut b = B::new("mqa");
    let q = b.param("q", DType::F32, &["4", "T", "8"]);
    let k = b.param("k", DType::F32, &["1", "T", "8"]);
    let a = b.op(Op::Attention { scale: None, masked: false, score: None }, &[q, k, k]);
    let g = b.finish(&[a]);
    let out = run(&g, &[zeros(DType::F32, &[4, 3, 8]), zeros(DType::F32, &[1, 3, 8])]).unwrap();
    assert_eq!(out[0].shape, vec![4, 3, 8]);
}

#[test]
fn empty_axes_do_not_panic() {
    let mut b = B::new("empty");
    let x = b.param("x", DType::F32, &["T", "S"]);
    let s = b.op(Op::Softmax { axis: 1 }, &[x]);
    let m = b.op(Op::Reduce { op: tdl_ir::ReduceOp::Max, axis: 1, keepdims: false }, &[x]);
    let g = b.finish(&[s]);
    assert_eq!(run(&g, &[zeros(DType::F32, &[3, 0])]).unwrap()[0].shape, vec![3, 0]);
    let g2 = B { g: g.into_inner() }.finish(&[m]);
    let e = run(&g2, &[zeros(DType::F32, &[3, 0])]).unwrap_err().to_string();
    assert!(e.contains("empty"), "{e}");
}
