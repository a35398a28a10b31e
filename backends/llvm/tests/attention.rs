//! The JIT-compiled CPU attention kernel against the Kernel IR interpreter
//! (`tdl_kernel::attention_tiled`, itself tested against the f64 reference):
//! every mask the CPU kernel compiles, GQA, T ≠ S, sizes that no tile
//! divides, 1 and 2 threads (identical results), and a clean "not supported
//! yet" for the rest.

use tdl_ir::{Bindings, MaskExpr};
use tdl_kernel::{attention_tiled, AttentionSchedule, F32Tensor};
use tdl_llvm::attention::{with_attention, AttentionSpec};
use tdl_passes::tiles::{MaskData, OperandData};
use tdl_reference::random::SplitMix64;

fn random(shape: &[usize], seed: u64) -> F32Tensor {
    let mut r = SplitMix64::new(seed);
    let n = shape.iter().product();
    let data = (0..n).map(|_| ((r.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0).collect();
    F32Tensor { shape: shape.to_vec(), data }
}

/// The largest `|a - b|` over two outputs.
/// The Kernel IR interpreter's attention (no operands, no bindings) with
/// tiles `tq`×`tk`: the oracle the compiled kernels are held to.
fn interpreted(
    q: &F32Tensor,
    k: &F32Tensor,
    v: &F32Tensor,
    mask: Option<&MaskExpr>,
    (tq, tk): (usize, usize),
) -> F32Tensor {
    let none = MaskData::none();
    let sched = AttentionSchedule::new(tq, tk);
    attention_tiled(q, k, v, mask.map(|m| (m, &none)), None, None, &Bindings::new(), &sched).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

fn masks() -> Vec<Option<MaskExpr>> {
    vec![
        None,
        Some(MaskExpr::Causal),
        Some(MaskExpr::Local { left: 5, right: 3 }),
        Some(MaskExpr::Window { w: 16 }),
        Some(MaskExpr::Dilated { w: 4, d: 3 }),
        Some(MaskExpr::Or(Box::new(MaskExpr::Sink { n: 4 }), Box::new(MaskExpr::Window { w: 9 }))),
        Some(MaskExpr::Strided { stride: 5, offset: 2 }),
        Some(MaskExpr::And(Box::new(MaskExpr::Causal), Box::new(MaskExpr::Not(Box::new(MaskExpr::Sink { n: 3 }))))),
    ]
}

/// Neighborhood masks need the grid to match T = S.
fn neighborhood_masks() -> Vec<(MaskExpr, usize)> {
    let na = |kernel: Vec<i64>, grid: Vec<i64>, dilation: Vec<i64>, causal: Vec<bool>| MaskExpr::Neighborhood {
        kernel,
        grid,
        dilation,
        causal,
    };
    vec![
        (na(vec![7], vec![100], vec![1], vec![false]), 100),
        (na(vec![5], vec![90], vec![3], vec![true]), 90),
        (na(vec![3, 5], vec![9, 11], vec![2, 1], vec![false, false]), 99),
        (na(vec![3, 3], vec![10, 10], vec![1, 2], vec![true, false]), 100),
        (na(vec![3, 3, 3], vec![4, 5, 6], vec![1, 1, 2], vec![false, true, false]), 120),
    ]
}

#[test]
fn jit_attention_neighborhood_matches_the_interpreter() {
    let bindings = Bindings::new();
    let none = MaskData::none();
    for (mask, n) in neighborhood_masks() {
        for (tq, tk) in [(16, 16), (13, 7)] {
            let spec = AttentionSpec::new(8, 8, tq, tk, None, Some(mask.clone()));
            let (q, kk, v) = (random(&[2, n, 8], 7), random(&[2, n, 8], 8), random(&[2, n, 8], 9));
            let want = attention_tiled(
                &q,
                &kk,
                &v,
                Some((&mask, &none)),
                None,
                None,
                &bindings,
                &AttentionSchedule::new(tq, tk),
            )
            .unwrap();
            let mut out = Vec::new();
            with_attention(&spec, |k| {
                k.run((&q.shape, &q.data), (&kk.shape, &kk.data), (&v.shape, &v.data), &none, &bindings, &mut out, 2)
                    .unwrap()
            })
            .unwrap();
            let err = max_abs_diff(&out, &want.data);
            assert!(err <= 1e-5, "{mask:?} tiles {tq}×{tk}: max error {err}");
        }
    }
}

#[test]
fn jit_attention_matches_the_interpreter() {
    let bindings = Bindings::new();
    let none = MaskData::none();
    let mut cases = 0;
    for mask in masks() {
        for (tq, tk) in [(16, 16), (13, 7), (64, 32)] {
            let spec = AttentionSpec::new(24, 16, tq, tk, None, mask.clone());
            with_attention(&spec, |k| {
                for (hq, hk, t, s) in [(2, 2, 1, 1), (2, 1, 17, 17), (4, 2, 65, 40), (1, 1, 30, 130), (3, 3, 100, 100)]
                {
                    let q = random(&[hq, t, 24], 1);
                    let kk = random(&[hk, s, 24], 2);
                    let v = random(&[hk, s, 16], 3);
                    let want = interpreted(&q, &kk, &v, mask.as_ref(), (tq, tk));
                    let mut outs = Vec::new();
                    for threads in [1, 2] {
                        let mut out = Vec::new();
                        let st = k
                            .run(
                                (&q.shape, &q.data),
                                (&kk.shape, &kk.data),
                                (&v.shape, &v.data),
                                &none,
                                &bindings,
                                &mut out,
                                threads,
                            )
                            .unwrap();
                        assert_eq!(st.programs, hq * t.div_ceil(tq));
                        outs.push(out);
                    }
                    assert_eq!(outs[0], outs[1], "threads change the result");
                    let err = max_abs_diff(&outs[0], &want.data);
                    assert!(err <= 1e-5, "mask {mask:?} tiles {tq}×{tk} sizes {hq}/{hk}×{t}×{s}: max error {err}");
                    assert!(outs[0].iter().all(|x| x.is_finite()));
                    cases += 1;
                }
            })
            .unwrap();
        }
    }
    assert_eq!(cases, 8 * 3 * 5);
}

/// Decode (T = 1) with grouped heads packs a group's heads into one
/// program; KV splits (fixed and automatic) merge to the unsplit result.
#[test]
fn jit_attention_decode_packs_heads_and_splits_the_kv_range() {
    use tdl_kernel::ir::KvSplit;
    use tdl_llvm::attention::{CompiledAttention, RunOptions};
    let bindings = Bindings::new();
    let none = MaskData::none();
    let mut packed_runs = 0;
    let mut split_runs = 0;
    for mask in masks() {
        for (tq, tk) in [(16, 16), (13, 7)] {
            let spec = AttentionSpec::new(24, 16, tq, tk, None, mask.clone());
            let k = CompiledAttention::new(&spec).unwrap();
            for (hq, hk, t, s) in
                [(8, 2, 1, 300), (4, 1, 1, 77), (6, 3, 1, 1), (2, 2, 1, 1000), (32, 1, 1, 50), (4, 2, 9, 200)]
            {
                let q = random(&[hq, t, 24], 11);
                let kk = random(&[hk, s, 24], 12);
                let v = random(&[hk, s, 16], 13);
                let want = interpreted(&q, &kk, &v, mask.as_ref(), (tq, tk));
                let splits =
                    [KvSplit::None, KvSplit::Fixed(3), KvSplit::Auto { workers: 64, max_splits: 16, min_tiles: 2 }];
                for kv_split in splits {
                    let mut outs = Vec::new();
                    for threads in [1, 2] {
                        let mut out = Vec::new();
                        let st = k
                            .run_with(
                                (&q.shape, &q.data),
                                (&kk.shape, &kk.data),
                                (&v.shape, &v.data),
                                &none,
                                &bindings,
                                &mut out,
                                &RunOptions { threads, kv_split },
                            )
                            .unwrap();
                        let group = hq / hk;
                        let expect_pack = if t == 1 && group > 1 && group <= tq { group } else { 1 };
                        assert_eq!(st.packed_heads, expect_pack, "{hq}/{hk}×{t}×{s} tiles {tq}×{tk}");
                        assert_eq!(st.programs, hq / expect_pack * t.div_ceil(tq));
                        packed_runs += usize::from(expect_pack > 1);
                        split_runs += usize::from(st.kv_splits > 1);
                        outs.push(out);
                    }
                    assert_eq!(outs[0], outs[1], "threads change the result");
                    let err = max_abs_diff(&outs[0], &want.data);
                    assert!(
                        err <= 1e-5,
                        "mask {mask:?} tiles {tq}×{tk} sizes {hq}/{hk}×{t}×{s} {kv_split:?}: max error {err}"
                    );
                }
            }
        }
    }
    assert!(packed_runs >= 8 * 2 * 3 * 3 * 2, "{packed_runs} packed runs");
    assert!(split_runs > 100, "{split_runs} split runs");
}

/// Decode at the head dimensions of real models (64, 128): the dot-product
/// path (K rows read in place, V prefetched) with 4, 1 and 8 query heads per
/// K/V head (register blocks of 4 and of 6 rows), lengths no tile divides,
/// masks, and KV splits.
#[test]
fn jit_attention_decode_at_model_head_dimensions() {
    use tdl_kernel::ir::KvSplit;
    use tdl_llvm::attention::{CompiledAttention, RunOptions};
    let bindings = Bindings::new();
    let none = MaskData::none();
    let masks = [
        None,
        Some(MaskExpr::Causal),
        Some(MaskExpr::Window { w: 100 }),
        Some(MaskExpr::Or(Box::new(MaskExpr::Sink { n: 4 }), Box::new(MaskExpr::Window { w: 37 }))),
    ];
    let mut cases = 0;
    for d in [64, 128] {
        for mask in &masks {
            for (tq, tk) in [(128, 64), (13, 7)] {
                let spec = AttentionSpec::new(d, d, tq, tk, None, mask.clone());
                let k = CompiledAttention::new(&spec).unwrap();
                for (hq, hk, s) in [(8, 2, 1003), (4, 1, 77), (3, 3, 130), (4, 1, 1), (16, 2, 77)] {
                    let q = random(&[hq, 1, d], 21);
                    let kk = random(&[hk, s, d], 22);
                    let v = random(&[hk, s, d], 23);
                    let want = interpreted(&q, &kk, &v, mask.as_ref(), (tq, tk));
                    for kv_split in
                        [KvSplit::None, KvSplit::Fixed(3), KvSplit::Auto { workers: 64, max_splits: 16, min_tiles: 2 }]
                    {
                        let mut out = Vec::new();
                        let st = k
                            .run_with(
                                (&q.shape, &q.data),
                                (&kk.shape, &kk.data),
                                (&v.shape, &v.data),
                                &none,
                                &bindings,
                                &mut out,
                                &RunOptions { threads: 2, kv_split },
                            )
                            .unwrap();
                        assert_eq!(st.packed_heads, hq / hk);
                        let err = max_abs_diff(&out, &want.data);
                        assert!(err <= 1e-5, "d {d} mask {mask:?} tiles {tq}×{tk} {hq}/{hk}×{s} {kv_split:?}: {err}");
                        cases += 1;
                    }
                }
            }
        }
    }
    assert_eq!(cases, 2 * 4 * 2 * 5 * 3);
}

#[test]
fn unsupported_masks_say_so() {
    use tdl_ir::{ScalarBinary, ScalarExpr};
    // A mask lambda must give a boolean (the checker refuses this one; the
    // code generator declines it rather than guess).
    let lambda = MaskExpr::Lambda(ScalarExpr::binary(
        ScalarBinary::Add,
        ScalarExpr::Var(tdl_ir::LambdaVar::K),
        ScalarExpr::Var(tdl_ir::LambdaVar::Q),
    ));
    let spec = AttentionSpec::new(8, 8, 16, 16, None, Some(lambda));
    let e = with_attention(&spec, |_| ()).expect_err("refused");
    assert!(e.to_string().contains("not supported yet"), "{e}");
}

#[test]
fn optimised_ir_is_vectorised() {
    let spec = AttentionSpec::new(64, 64, 64, 64, None, Some(MaskExpr::Causal));
    let text = tdl_llvm::attention::attention_llvm_text(&spec).unwrap();
    assert!(
        text.contains("<8 x float>") || text.contains("<16 x float>") || text.contains("<4 x float>"),
        "no vector code"
    );
}

/// The polynomial exp the kernels inline: maximum relative error against
/// `f64` exp over [-87, 88] (and exact 0 for -inf and below -87.34).
#[test]
fn expf_polynomial_is_accurate() {
    let xs: Vec<f32> = (0..=175_000).map(|i| -87.0 + i as f32 * 0.001).collect();
    let ys = tdl_llvm::attention::expf_polynomial(&xs).unwrap();
    let mut worst = 0f64;
    for (&x, &y) in xs.iter().zip(&ys) {
        let want = f64::from(x).exp();
        worst = worst.max((f64::from(y) - want).abs() / want);
    }
    println!("tdl_expf: max relative error {worst:.3e} over [-87, 88]");
    assert!(worst < 3e-7, "max relative error {worst}");
    let edge = tdl_llvm::attention::expf_polynomial(&[f32::NEG_INFINITY, -100.0, 0.0]).unwrap();
    assert_eq!(edge, vec![0.0, 0.0, 1.0]);
}

/// Masks that read run-time arrays: `document(ids)` and `blocks(layout)`
/// (an operand and a constant layout), alone and combined with causal.
#[test]
fn jit_attention_with_document_ids_and_block_layouts() {
    use tdl_ir::{ArrayRef, ConstValue, DType};
    let bindings = Bindings::new();
    let (t, s) = (70usize, 70usize);
    // Four documents of uneven lengths.
    let ids: Vec<f64> = (0..t).map(|i| [0, 0, 1, 2, 2, 2, 3][i * 7 / t] as f64).collect();
    // A 5×5 layout of 16-blocks with a pseudo-random pattern.
    let lay: Vec<f64> = (0..25).map(|i| f64::from(u8::from((i * 7 + 3) % 5 < 2 || i % 6 == 0))).collect();
    let doc = OperandData { dtype: DType::I32, shape: vec![t], data: &ids };
    let layout = OperandData { dtype: DType::Bool, shape: vec![5, 5], data: &lay };
    let konst = ConstValue { dtype: DType::Bool, shape: vec![5, 5], data: lay.clone() };
    let cases: Vec<(MaskExpr, Vec<OperandData>)> = vec![
        (MaskExpr::Document { ids: 0 }, vec![doc.clone()]),
        (MaskExpr::And(Box::new(MaskExpr::Causal), Box::new(MaskExpr::Document { ids: 0 })), vec![doc.clone()]),
        (MaskExpr::Blocks { layout: ArrayRef::Operand(0), block: [16, 16] }, vec![layout.clone()]),
        (MaskExpr::Blocks { layout: ArrayRef::Const(konst), block: [16, 16] }, vec![]),
        (
            MaskExpr::Or(
                Box::new(MaskExpr::Blocks { layout: ArrayRef::Operand(1), block: [16, 16] }),
                Box::new(MaskExpr::Document { ids: 0 }),
            ),
            vec![doc.clone(), layout.clone()],
        ),
    ];
    for (mask, ops) in cases {
        let data = MaskData { operands: ops };
        for (tq, tk) in [(16, 16), (13, 7)] {
            let spec = AttentionSpec::new(16, 8, tq, tk, Some(0.3), Some(mask.clone()));
            let q = random(&[2, t, 16], 4);
            let kk = random(&[2, s, 16], 5);
            let v = random(&[2, s, 8], 6);
            let want = attention_tiled(
                &q,
                &kk,
                &v,
                Some((&mask, &data)),
                Some(0.3),
                None,
                &bindings,
                &AttentionSchedule::new(tq, tk),
            )
            .unwrap();
            let mut out = Vec::new();
            with_attention(&spec, |k| {
                k.run((&q.shape, &q.data), (&kk.shape, &kk.data), (&v.shape, &v.data), &data, &bindings, &mut out, 2)
                    .unwrap()
            })
            .unwrap();
            let err = max_abs_diff(&out, &want.data);
            assert!(err <= 1e-5, "{mask:?} tiles {tq}×{tk}: max error {err}");
        }
    }
    // Ids that do not cover the keys are an error, not a read out of bounds.
    let short: Vec<f64> = vec![0.0; 10];
    let data = MaskData { operands: vec![OperandData { dtype: DType::I32, shape: vec![10], data: &short }] };
    let spec = AttentionSpec::new(16, 8, 16, 16, None, Some(MaskExpr::Document { ids: 0 }));
    let (q, kk, v) = (random(&[1, t, 16], 1), random(&[1, s, 16], 2), random(&[1, s, 8], 3));
    let r = with_attention(&spec, |k| {
        let mut out = Vec::new();
        k.run((&q.shape, &q.data), (&kk.shape, &kk.data), (&v.shape, &v.data), &data, &bindings, &mut out, 1)
    })
    .unwrap();
    assert!(r.is_err());
}
