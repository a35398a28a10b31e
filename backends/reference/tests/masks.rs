//! Every mask against an independent brute-force implementation of its
//! formula, read back through `s + mask` (and `mask + s`), `where(mask, 1,
//! 0)` and `mask::materialize`.
#![allow(clippy::cloned_ref_to_slice_refs)] // `&[x.clone()]` reads better in tests

mod common;

use common::*;
use tdl_ir::{
    ArrayRef, BinaryOp, Bindings, ConstValue, DType, LambdaVar, MaskExpr, NodeId, Op, ScalarBinary, ScalarExpr,
};
use tdl_reference::{mask::materialize, random_tensor, run, Limits, RunError, Tensor};

const SIZES: [usize; 4] = [1, 7, 63, 65];

fn zeros(shape: &[usize]) -> Tensor {
    Tensor::zeros(DType::F32, shape).unwrap()
}

/// Visibility `[h][q][k]` read from `s + mask` (or `mask + s`): finite
/// where the mask holds, -inf elsewhere.
fn via_add(
    mask: &MaskExpr,
    operands: &[Tensor],
    heads: usize,
    t: usize,
    s: usize,
    mask_first: bool,
) -> Result<Vec<bool>, RunError> {
    let scores = f32t(&[heads, t, s], &vec![0.25; heads * t * s]);
    let mut b = B::new("add_mask");
    let sc = b.param_like("s", &scores);
    let ops: Vec<NodeId> = operands.iter().enumerate().map(|(i, x)| b.param_like(&format!("o{i}"), x)).collect();
    let m = b.op(Op::Mask(mask.clone()), &ops);
    let r =
        if mask_first { b.op(Op::Binary(BinaryOp::Add), &[m, sc]) } else { b.op(Op::Binary(BinaryOp::Add), &[sc, m]) };
    let g = b.finish(&[r]);
    let mut inputs = vec![scores];
    inputs.extend(operands.iter().cloned());
    let out = run(&g, &inputs)?.remove(0);
    for &v in &out.data {
        assert!(v == 0.25 || v == f64::NEG_INFINITY, "s + mask gave {v}");
    }
    Ok(out.data.iter().map(|&v| v == 0.25).collect())
}

/// Visibility read from `where(mask, ones, 0)`.
fn via_where(mask: &MaskExpr, operands: &[Tensor], heads: usize, t: usize, s: usize) -> Result<Vec<bool>, RunError> {
    let ones = f32t(&[heads, t, s], &vec![1.0; heads * t * s]);
    let mut b = B::new("where_mask");
    let a = b.param_like("ones", &ones);
    let ops: Vec<NodeId> = operands.iter().enumerate().map(|(i, x)| b.param_like(&format!("o{i}"), x)).collect();
    let m = b.op(Op::Mask(mask.clone()), &ops);
    let zero = b.scalar(0.0);
    let r = b.op(Op::Where, &[m, a, zero]);
    let g = b.finish(&[r]);
    let mut inputs = vec![ones];
    inputs.extend(operands.iter().cloned());
    let out = run(&g, &inputs)?.remove(0);
    Ok(out.data.iter().map(|&v| v == 1.0).collect())
}

/// Checks all three read-outs against `brute(q, k, h)`; returns the pattern.
fn check(
    mask: &MaskExpr,
    operands: &[Tensor],
    heads: usize,
    t: usize,
    s: usize,
    brute: impl Fn(i64, i64, i64) -> bool,
) -> Vec<bool> {
    let mut expect = Vec::new();
    for h in 0..heads {
        for q in 0..t {
            for k in 0..s {
                expect.push(brute(q as i64, k as i64, h as i64));
            }
        }
    }
    let ctx = format!("{mask:?} at heads={heads} T={t} S={s}");
    let a = via_add(mask, operands, heads, t, s, false).unwrap_or_else(|e| panic!("{ctx}: {e}"));
    assert_eq!(a, expect, "s + mask: {ctx}");
    let a2 = via_add(mask, operands, heads, t, s, true).unwrap_or_else(|e| panic!("{ctx}: {e}"));
    assert_eq!(a2, expect, "mask + s: {ctx}");
    let w = via_where(mask, operands, heads, t, s).unwrap_or_else(|e| panic!("{ctx}: {e}"));
    assert_eq!(w, expect, "where: {ctx}");
    let m = materialize(mask, operands, heads, t, s, &Bindings::new(), &Limits::default()).unwrap();
    assert_eq!(m.data.iter().map(|&v| v == 1.0).collect::<Vec<_>>(), expect, "materialize: {ctx}");
    expect
}

fn rows(p: &[bool], s: usize) -> Vec<Vec<usize>> {
    p.chunks(s).map(|r| r.iter().enumerate().filter(|(_, &v)| v).map(|(k, _)| k).collect()).collect()
}

fn causal(q: i64, k: i64, t: i64, s: i64) -> bool {
    k <= q + (s - t)
}

#[test]
fn causal_mask() {
    for n in SIZES {
        let ni = n as i64;
        let p = check(&MaskExpr::Causal, &[], 1, n, n, |q, k, _| causal(q, k, ni, ni));
        assert_eq!(p.iter().filter(|&&v| v).count(), n * (n + 1) / 2);
    }
}

#[test]
fn causal_mask_aligns_bottom_right_when_t_lt_s() {
    let p = check(&MaskExpr::Causal, &[], 1, 3, 7, |q, k, _| causal(q, k, 3, 7));
    assert_eq!(rows(&p, 7), vec![vec![0, 1, 2, 3, 4], vec![0, 1, 2, 3, 4, 5], vec![0, 1, 2, 3, 4, 5, 6]]);
    // Decoding one token sees every key.
    let p1 = check(&MaskExpr::Causal, &[], 1, 1, 9, |q, k, _| causal(q, k, 1, 9));
    assert!(p1.iter().all(|&v| v));
    // T > S: the first queries see nothing.
    let p2 = check(&MaskExpr::Causal, &[], 1, 5, 3, |q, k, _| causal(q, k, 5, 3));
    assert_eq!(rows(&p2, 3), vec![vec![], vec![], vec![0], vec![0, 1], vec![0, 1, 2]]);
}

#[test]
fn local_window_dilated_sink_strided() {
    for n in SIZES {
        let ni = n as i64;
        for (l, r) in [(3, 2), (0, 0), (10, 0), (0, 70)] {
            check(&MaskExpr::Local { left: l, right: r }, &[], 1, n, n, |q, k, _| q - l <= k && k <= q + r);
        }
        for w in [1, 5, 64] {
            check(&MaskExpr::Window { w }, &[], 1, n, n, |q, k, _| causal(q, k, ni, ni) && q - (w - 1) <= k && k <= q);
        }
        for (w, d) in [(4, 3), (2, 1), (8, 8)] {
            check(&MaskExpr::Dilated { w, d }, &[], 1, n, n, |q, k, _| {
                causal(q, k, ni, ni) && q - k < w * d && (q - k).rem_euclid(d) == 0
            });
        }
        for sink in [0, 4, 100] {
            check(&MaskExpr::Sink { n: sink }, &[], 1, n, n, |_, k, _| k < sink);
        }
        for (stride, offset) in [(3, 1), (4, 0), (1, 0), (5, -2)] {
            check(&MaskExpr::Strided { stride, offset }, &[], 1, n, n, |_, k, _| (k + offset).rem_euclid(stride) == 0);
        }
    }
    // T != S for the causal-based masks: `local` (and so `window` and
    // `dilated`) uses q and k as they are, only `causal` is bottom-right
    // aligned, literally as the contract writes it.
    check(&MaskExpr::Window { w: 3 }, &[], 1, 3, 7, |q, k, _| causal(q, k, 3, 7) && q - 2 <= k && k <= q);
    check(&MaskExpr::Dilated { w: 2, d: 2 }, &[], 1, 3, 7, |q, k, _| {
        causal(q, k, 3, 7) && q - k < 4 && (q - k).rem_euclid(2) == 0
    });
}

#[test]
fn window_by_hand() {
    let p = check(&MaskExpr::Window { w: 2 }, &[], 1, 4, 4, |q, k, _| k == q || k + 1 == q);
    assert_eq!(rows(&p, 4), vec![vec![0], vec![0, 1], vec![1, 2], vec![2, 3]]);
    let d = check(&MaskExpr::Dilated { w: 2, d: 2 }, &[], 1, 6, 6, |q, k, _| k == q || k + 2 == q);
    assert_eq!(rows(&d, 6), vec![vec![0], vec![1], vec![0, 2], vec![1, 3], vec![2, 4], vec![3, 5]]);
}

/// NATTEN along one axis, by listing group members: the keys a query at
/// coordinate `a` sees.
fn natten_axis(a: usize, len: usize, kernel: usize, dil: usize, causal: bool) -> Vec<usize> {
    let members: Vec<usize> = (a % dil..len).step_by(dil).collect();
    let i = members.iter().position(|&m| m == a).unwrap();
    if causal {
        members[i.saturating_sub(kernel - 1)..=i].to_vec()
    } else {
        let start = (i as i64 - (kernel / 2) as i64).clamp(0, (members.len() - kernel) as i64) as usize;
        members[start..start + kernel].to_vec()
    }
}

fn natten(q: usize, k: usize, grid: &[usize], kernel: &[usize], dil: &[usize], causal: &[bool]) -> bool {
    // Row-major unflattening.
    let (mut qr, mut kr) = (q, k);
    let mut qc = vec![0; grid.len()];
    let mut kc = vec![0; grid.len()];
    for ax in (0..grid.len()).rev() {
        qc[ax] = qr % grid[ax];
        kc[ax] = kr % grid[ax];
        qr /= grid[ax];
        kr /= grid[ax];
    }
    (0..grid.len()).all(|ax| natten_axis(qc[ax], grid[ax], kernel[ax], dil[ax], causal[ax]).contains(&kc[ax]))
}

fn na(kernel: &[usize], grid: &[usize], dil: &[usize], causal: &[bool]) -> Vec<bool> {
    let m = MaskExpr::Neighborhood {
        kernel: kernel.iter().map(|&x| x as i64).collect(),
        grid: grid.iter().map(|&x| x as i64).collect(),
        dilation: dil.iter().map(|&x| x as i64).collect(),
        causal: causal.to_vec(),
    };
    let n: usize = grid.iter().product();
    let p = check(&m, &[], 1, n, n, |q, k, _| natten(q as usize, k as usize, grid, kernel, dil, causal));
    if causal.iter().all(|c| !c) {
        // Non-causal: every query sees exactly the kernel volume.
        let vol: usize = kernel.iter().product();
        for r in rows(&p, n) {
            assert_eq!(r.len(), vol);
        }
    }
    p
}

#[test]
fn neighborhood_by_hand() {
    // L = 5, K = 3: windows clamped at the borders.
    let p = na(&[3], &[5], &[1], &[false]);
    assert_eq!(rows(&p, 5), vec![vec![0, 1, 2], vec![0, 1, 2], vec![1, 2, 3], vec![2, 3, 4], vec![2, 3, 4]]);
    let c = na(&[3], &[5], &[1], &[true]);
    assert_eq!(rows(&c, 5), vec![vec![0], vec![0, 1], vec![0, 1, 2], vec![1, 2, 3], vec![2, 3, 4]]);
    // L = 6, K = 3, dilation 2: groups {0, 2, 4} and {1, 3, 5}.
    let d = na(&[3], &[6], &[2], &[false]);
    let (even, odd) = (vec![0, 2, 4], vec![1, 3, 5]);
    assert_eq!(rows(&d, 6), vec![even.clone(), odd.clone(), even.clone(), odd.clone(), even, odd]);
    // 2-D 3×3 grid, 3×3 kernel: everyone sees everything.
    assert!(na(&[3, 3], &[3, 3], &[1, 1], &[false, false]).iter().all(|&v| v));
}

#[test]
fn neighborhood_1d() {
    for dil in [1, 2] {
        for causal in [false, true] {
            na(&[3], &[9], &[dil], &[causal]);
        }
    }
    na(&[5], &[9], &[1], &[false]);
    na(&[1], &[7], &[3], &[false]);
}

#[test]
fn neighborhood_2d_and_3d() {
    na(&[3, 3], &[5, 7], &[1, 2], &[false, false]);
    na(&[3, 3], &[5, 7], &[1, 2], &[true, false]);
    na(&[3, 3], &[5, 7], &[1, 1], &[false, true]);
    na(&[3, 3, 3], &[3, 4, 5], &[1, 1, 1], &[false, false, false]);
    na(&[3, 3, 3], &[3, 4, 5], &[1, 1, 1], &[true, false, true]);
}

#[test]
fn neighborhood_errors() {
    let m = |kernel: Vec<i64>, grid: Vec<i64>, dilation: Vec<i64>| MaskExpr::Neighborhood {
        causal: vec![false; grid.len()],
        kernel,
        grid,
        dilation,
    };
    // Grid product 9 against T = S = 8.
    let e = via_add(&m(vec![3], vec![9], vec![1]), &[], 1, 8, 8, false).unwrap_err();
    assert!(e.to_string().contains("9 positions"), "{e}");
    // Grid product equals T but not S.
    assert!(via_add(&m(vec![3], vec![9], vec![1]), &[], 1, 9, 8, false).is_err());
    // L = 5, dilation 2: the group {1, 3} has 2 members < K = 3.
    let e = via_add(&m(vec![3], vec![5], vec![2]), &[], 1, 5, 5, false).unwrap_err();
    assert!(e.to_string().contains("fewer than the kernel 3"), "{e}");
    // An even kernel, a zero dilation, mismatched vector lengths.
    assert!(via_add(&m(vec![2], vec![5], vec![1]), &[], 1, 5, 5, false).is_err());
    assert!(via_add(&m(vec![3], vec![5], vec![0]), &[], 1, 5, 5, false).is_err());
    // Mismatched vector lengths never reach the interpreter: the type rules
    // (and so the verifier) reject them.
    assert!(tdl_ir::infer::infer_type(&Op::Mask(m(vec![3, 3], vec![5], vec![1])), &[]).is_err());
}

fn layout_const(rows: usize, cols: usize, bits: &[u8]) -> ArrayRef {
    ArrayRef::Const(ConstValue {
        dtype: DType::Bool,
        shape: vec![rows, cols],
        data: bits.iter().map(|&b| f64::from(b)).collect(),
    })
}

#[test]
fn blocks_mask() {
    // T = 5, S = 7 in blocks of [2, 3]: a 3×3 layout.
    let bits = [1, 0, 1, 0, 1, 0, 1, 1, 0];
    let layout = |q: i64, k: i64| bits[(q / 2 * 3 + k / 3) as usize] == 1;
    check(&MaskExpr::Blocks { layout: layout_const(3, 3, &bits), block: [2, 3] }, &[], 1, 5, 7, |q, k, _| layout(q, k));
    // The same layout as a bool operand; a larger layout is fine.
    let op = t(DType::Bool, &[3, 3], &bits.map(f64::from));
    check(&MaskExpr::Blocks { layout: ArrayRef::Operand(0), block: [2, 3] }, &[op], 2, 5, 7, |q, k, _| layout(q, k));
    for n in SIZES {
        let nb = n.div_ceil(16);
        let lay: Vec<u8> = (0..nb * nb).map(|i| u8::from((i * 7) % 3 != 1)).collect();
        let lay2 = lay.clone();
        check(
            &MaskExpr::Blocks { layout: layout_const(nb, nb, &lay), block: [16, 16] },
            &[],
            1,
            n,
            n,
            move |q, k, _| lay2[(q / 16) as usize * nb + (k / 16) as usize] == 1,
        );
    }
    // A layout smaller than ceil(T/bq) × ceil(S/bk).
    let e = via_add(&MaskExpr::Blocks { layout: layout_const(2, 3, &bits[..6]), block: [2, 3] }, &[], 1, 5, 7, false)
        .unwrap_err();
    assert!(e.to_string().contains("need at least 3×3"), "{e}");
}

#[test]
fn document_mask() {
    let ids = t(DType::I32, &[6], &[0.0, 0.0, 1.0, 1.0, 1.0, 2.0]);
    let p = check(&MaskExpr::Document { ids: 0 }, &[ids.clone()], 1, 6, 6, |q, k, _| {
        let d = [0, 0, 1, 1, 1, 2];
        d[q as usize] == d[k as usize]
    });
    assert_eq!(rows(&p, 6)[3], vec![2, 3, 4]);
    assert_eq!(rows(&p, 6)[5], vec![5]);
    for n in SIZES {
        let ids = random_tensor(DType::I32, &[n], n as u64);
        let d = ids.data.clone();
        let both = MaskExpr::And(Box::new(MaskExpr::Causal), Box::new(MaskExpr::Document { ids: 0 }));
        check(&both, &[ids], 1, n, n, |q, k, _| k <= q && d[q as usize] == d[k as usize]);
    }
    // Ids shorter than T.
    let e = via_add(&MaskExpr::Document { ids: 0 }, &[ids], 1, 7, 7, false).unwrap_err();
    assert!(e.to_string().contains("6 entries"), "{e}");
}

fn var(v: LambdaVar) -> ScalarExpr {
    ScalarExpr::Var(v)
}

fn bin(op: ScalarBinary, a: ScalarExpr, b: ScalarExpr) -> ScalarExpr {
    ScalarExpr::binary(op, a, b)
}

#[test]
fn lambda_masks() {
    // MoA-style per-head spans from a constant array: causal & (q - k < spans[h]).
    let spans = ArrayRef::Const(ConstValue { dtype: DType::I32, shape: vec![3], data: vec![1.0, 3.0, 100.0] });
    let lam = bin(
        ScalarBinary::Lt,
        bin(ScalarBinary::Sub, var(LambdaVar::Q), var(LambdaVar::K)),
        ScalarExpr::Index { array: spans, indices: vec![var(LambdaVar::H)] },
    );
    let moa = MaskExpr::And(Box::new(MaskExpr::Causal), Box::new(MaskExpr::Lambda(lam)));
    let sp = [1, 3, 100];
    for n in SIZES {
        check(&moa, &[], 3, n, n, |q, k, h| k <= q && q - k < sp[h as usize]);
    }
    // The same spans from an i32 operand.
    let lam_op = bin(
        ScalarBinary::Lt,
        bin(ScalarBinary::Sub, var(LambdaVar::Q), var(LambdaVar::K)),
        ScalarExpr::Index { array: ArrayRef::Operand(0), indices: vec![var(LambdaVar::H)] },
    );
    let moa_op = MaskExpr::And(Box::new(MaskExpr::Causal), Box::new(MaskExpr::Lambda(lam_op.clone())));
    let spans_t = t(DType::I32, &[3], &[1.0, 3.0, 100.0]);
    check(&moa_op, &[spans_t.clone()], 3, 7, 7, |q, k, h| k <= q && q - k < sp[h as usize]);
    // Floor modulo and division on negative numbers: (q - k) % 3 == 0 and (k - q) / 2 == -1.
    let m3 = bin(
        ScalarBinary::Eq,
        bin(ScalarBinary::Mod, bin(ScalarBinary::Sub, var(LambdaVar::Q), var(LambdaVar::K)), ScalarExpr::Int(3)),
        ScalarExpr::Int(0),
    );
    check(&MaskExpr::Lambda(m3), &[], 1, 7, 7, |q, k, _| (q - k).rem_euclid(3) == 0);
    let d2 = bin(
        ScalarBinary::Eq,
        bin(ScalarBinary::Div, bin(ScalarBinary::Sub, var(LambdaVar::K), var(LambdaVar::Q)), ScalarExpr::Int(2)),
        ScalarExpr::Int(-1),
    );
    check(&MaskExpr::Lambda(d2), &[], 1, 7, 7, |q, k, _| (k - q).div_euclid(2) == -1);
    // A head count above the array's size: index out of range, named.
    let e = via_add(&moa_op, &[spans_t], 4, 5, 5, false).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("index 3") && msg.contains("size 3"), "{msg}");
    // A lambda that is not a predicate.
    assert!(via_add(&MaskExpr::Lambda(var(LambdaVar::Q)), &[], 1, 3, 3, false).is_err());
}

#[test]
fn combinators() {
    let m = MaskExpr::Or(
        Box::new(MaskExpr::And(Box::new(MaskExpr::Causal), Box::new(MaskExpr::Not(Box::new(MaskExpr::Sink { n: 2 }))))),
        Box::new(MaskExpr::Strided { stride: 3, offset: 1 }),
    );
    for n in SIZES {
        check(&m, &[], 1, n, n, |q, k, _| (k <= q && k >= 2) || (k + 1) % 3 == 0);
    }
    check(&MaskExpr::Not(Box::new(MaskExpr::Causal)), &[], 2, 3, 7, |q, k, _| !causal(q, k, 3, 7));
}

#[test]
fn lambda_reads_bound_symbols() {
    // mask(q, k) => k <= q + (S - T), with T and S bound from the scores.
    let lam = bin(
        ScalarBinary::Le,
        var(LambdaVar::K),
        bin(
            ScalarBinary::Add,
            var(LambdaVar::Q),
            bin(ScalarBinary::Sub, ScalarExpr::Sym("S".into()), ScalarExpr::Sym("T".into())),
        ),
    );
    let mut b = B::new("sym");
    let s = b.param("s", DType::F32, &["T", "S"]);
    let m = b.op(Op::Mask(MaskExpr::Lambda(lam)), &[]);
    let r = b.op(Op::Binary(BinaryOp::Add), &[s, m]);
    let g = b.finish(&[r]);
    let out = run(&g, &[zeros(&[3, 7])]).unwrap().remove(0);
    let vis: Vec<bool> = out.data.iter().map(|v| v.is_finite()).collect();
    let expect: Vec<bool> = (0..3).flat_map(|q| (0..7).map(move |k| causal(q, k, 3, 7))).collect();
    assert_eq!(vis, expect);
}

#[test]
fn mask_heads_follow_axis_minus_3() {
    // Rank-4 scores [B, H, T, S]: h is axis 1; rank 2 scores: h = 0.
    let lam = bin(ScalarBinary::Eq, var(LambdaVar::K), var(LambdaVar::H));
    let mut b = B::new("heads");
    let s = b.param("s", DType::F32, &["2", "3", "2", "4"]);
    let m = b.op(Op::Mask(MaskExpr::Lambda(lam.clone())), &[]);
    let r = b.op(Op::Binary(BinaryOp::Add), &[s, m]);
    let g = b.finish(&[r]);
    let out = run(&g, &[zeros(&[2, 3, 2, 4])]).unwrap().remove(0);
    for bb in 0..2 {
        for h in 0..3 {
            for q in 0..2 {
                for k in 0..4 {
                    assert_eq!(out.get(&[bb, h, q, k]).unwrap().is_finite(), k == h);
                }
            }
        }
    }
    check(&MaskExpr::Lambda(lam), &[], 1, 2, 3, |_, k, _| k == 0);
}
