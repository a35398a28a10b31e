//! Property tests: the fused attention equals its composition for random
//! sizes and masks; lambda integer division is floor division; rounding is
//! idempotent and monotone.

mod common;

use common::*;
use proptest::prelude::*;
use tdl_ir::{BinaryOp, DType, MaskExpr, NodeId, Op};
use tdl_reference::scalar::{int_div, int_mod};
use tdl_reference::{random_tensor, round_value, run};

fn mask_for(choice: u8, n: i64) -> Option<MaskExpr> {
    match choice {
        0 => None,
        1 => Some(MaskExpr::Causal),
        2 => Some(MaskExpr::Window { w: n.max(1) }),
        3 => Some(MaskExpr::And(
            Box::new(MaskExpr::Sink { n }),
            Box::new(MaskExpr::Not(Box::new(MaskExpr::Strided { stride: 2, offset: 0 }))),
        )),
        _ => Some(MaskExpr::Local { left: n, right: 1 }),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn fused_attention_equals_composed(h in 1usize..3, t in 1usize..12, s in 1usize..12, d in 1usize..6, choice in 0u8..5, n in 0i64..6, seed in 0u64..1000) {
        let (qt, kt, vt) = (random_tensor(DType::F32, &[h, t, d], seed), random_tensor(DType::F32, &[h, s, d], seed + 1), random_tensor(DType::F32, &[h, s, d], seed + 2));
        let mut b = B::new("p");
        let q = b.param_like("q", &qt);
        let k = b.param_like("k", &kt);
        let v = b.param_like("v", &vt);
        let m: Option<NodeId> = mask_for(choice, n).map(|e| b.op(Op::Mask(e), &[]));
        let mut ins = vec![q, k, v];
        ins.extend(m);
        let fused = b.op(Op::Attention { scale: None, masked: m.is_some(), score: None }, &ins);
        let ktr = b.op(Op::Transpose, &[k]);
        let sc = b.op(Op::MatMul, &[q, ktr]);
        let c = b.scalar(1.0 / (d as f64).sqrt());
        let mut sc = b.op(Op::Binary(BinaryOp::Mul), &[sc, c]);
        if let Some(m) = m {
            sc = b.op(Op::Binary(BinaryOp::Add), &[sc, m]);
        }
        let p = b.op(Op::Softmax { axis: 2 }, &[sc]);
        let o = b.op(Op::MatMul, &[p, v]);
        let g = b.finish(&[fused, o]);
        let out = run(&g, &[qt, kt, vt]).unwrap();
        prop_assert_eq!(out[0].max_abs_diff(&out[1]), 0.0);
        prop_assert!(out[0].all_finite());
    }

    #[test]
    fn lambda_division_is_floor_division(a in -1000i64..1000, b in -50i64..50) {
        if b == 0 {
            prop_assert_eq!(int_div(a, b), 0);
            prop_assert_eq!(int_mod(a, b), a);
        } else {
            prop_assert_eq!(int_div(a, b), (a as f64 / b as f64).floor() as i64);
            prop_assert_eq!(int_div(a, b) * b + int_mod(a, b), a);
            prop_assert!(int_mod(a, b) == 0 || (int_mod(a, b) < 0) == (b < 0));
        }
    }

    #[test]
    fn rounding_is_idempotent_and_monotone(x in -70000.0f64..70000.0, y in -70000.0f64..70000.0) {
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let rx = round_value(dtype, x);
            prop_assert_eq!(round_value(dtype, rx), rx);
            if x <= y {
                prop_assert!(rx <= round_value(dtype, y));
            }
        }
    }
}
