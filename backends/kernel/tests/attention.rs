//! The FlashAttention-2 schedule executor against the reference interpreter.
//!
//! Every case builds a small graph with the `tdl_ir` API (`Op::Mask` +
//! `Op::Attention`), runs it with `tdl_reference::run` (the `f64` oracle),
//! runs `attention_tiled_stats` on the same data in `f32`, and checks:
//!
//! * max |kernel - reference| ≤ 1e-4, same shape, no NaN;
//! * a row the reference gives as all zeros (no visible key) is exact zeros;
//! * the tiles streamed are exactly the iteration space's visited tiles
//!   (Empty tiles never visited) and the mask predicates evaluated are
//!   exactly the elements of the Partial tiles (Full tiles evaluate none).
//!
//! Sizes `T, S ∈ {1, 17, 63, 64, 65, 130}` (and 1000 once), tiles 16×16,
//! 64×64, 13×7 and 32×128.

use tdl_ir::infer::infer_type;
use tdl_ir::{
    verify, ArrayRef, Bindings, ConstValue, DType, Dim, Graph, LambdaVar, MaskExpr, NodeId, Op, ScalarBinary,
    ScalarExpr, ScalarUnary, TensorType, Type,
};
use tdl_kernel::{attention_tiled, attention_tiled_stats, AttentionSchedule, F32Tensor, KernelStats, ScoreMod};
use tdl_passes::tiles::{iteration_space, Ctx, MaskData, OperandData, TileClass};
use tdl_reference::random::SplitMix64;
use tdl_reference::{bind_symbols, random_tensor, run, Tensor};

const SIZES: [usize; 6] = [1, 17, 63, 64, 65, 130];
const TILES: [(usize, usize); 4] = [(16, 16), (64, 64), (13, 7), (32, 128)];
const TOL: f32 = 1e-4;

// ---------------------------------------------------------------------------
// Expression builders

fn q() -> ScalarExpr {
    ScalarExpr::Var(LambdaVar::Q)
}
fn k() -> ScalarExpr {
    ScalarExpr::Var(LambdaVar::K)
}
fn h() -> ScalarExpr {
    ScalarExpr::Var(LambdaVar::H)
}
fn sv() -> ScalarExpr {
    ScalarExpr::Var(LambdaVar::S)
}
fn int(c: i64) -> ScalarExpr {
    ScalarExpr::Int(c)
}
fn fl(c: f64) -> ScalarExpr {
    ScalarExpr::Float(c)
}
fn sym(n: &str) -> ScalarExpr {
    ScalarExpr::Sym(n.into())
}
fn bin(op: ScalarBinary, a: ScalarExpr, b: ScalarExpr) -> ScalarExpr {
    ScalarExpr::binary(op, a, b)
}
fn un(op: ScalarUnary, a: ScalarExpr) -> ScalarExpr {
    ScalarExpr::Unary(op, Box::new(a))
}
fn sel(c: ScalarExpr, a: ScalarExpr, b: ScalarExpr) -> ScalarExpr {
    ScalarExpr::Select(Box::new(c), Box::new(a), Box::new(b))
}
fn idx(array: ArrayRef, indices: Vec<ScalarExpr>) -> ScalarExpr {
    ScalarExpr::Index { array, indices }
}
fn konst(dtype: DType, data: Vec<f64>) -> ArrayRef {
    ArrayRef::Const(ConstValue { dtype, shape: vec![data.len()], data })
}
fn lam(e: ScalarExpr) -> MaskExpr {
    MaskExpr::Lambda(e)
}
fn and(a: MaskExpr, b: MaskExpr) -> MaskExpr {
    MaskExpr::And(Box::new(a), Box::new(b))
}
fn or(a: MaskExpr, b: MaskExpr) -> MaskExpr {
    MaskExpr::Or(Box::new(a), Box::new(b))
}
fn not(a: MaskExpr) -> MaskExpr {
    MaskExpr::Not(Box::new(a))
}
fn na(kernel: &[i64], grid: &[i64], dilation: &[i64], causal: &[bool]) -> MaskExpr {
    MaskExpr::Neighborhood {
        kernel: kernel.to_vec(),
        grid: grid.to_vec(),
        dilation: dilation.to_vec(),
        causal: causal.to_vec(),
    }
}
fn random_layout(rows: usize, cols: usize, seed: u64) -> (Vec<usize>, Vec<f64>) {
    let mut rng = SplitMix64::new(seed);
    (vec![rows, cols], (0..rows * cols).map(|_| (rng.next_u64() % 100 < 50) as u8 as f64).collect())
}

// ---------------------------------------------------------------------------
// Cases

/// One attention node: leading shapes of `q` and of `k`/`v`, head sizes,
/// the mask and its operands, the score modifier and its operands (read by
/// the lambda at positions `3 + masked + j`), the scale.
#[derive(Clone)]
struct Spec {
    name: String,
    lq: Vec<usize>,
    lk: Vec<usize>,
    d: usize,
    dv: usize,
    mask: Option<MaskExpr>,
    mask_ops: Vec<Tensor>,
    score: Option<ScalarExpr>,
    score_ops: Vec<Tensor>,
    scale: Option<f64>,
}

impl Spec {
    fn new(name: &str, lq: &[usize], lk: &[usize]) -> Spec {
        Spec {
            name: name.into(),
            lq: lq.to_vec(),
            lk: lk.to_vec(),
            d: 8,
            dv: 5,
            mask: None,
            mask_ops: Vec::new(),
            score: None,
            score_ops: Vec::new(),
            scale: None,
        }
    }
    fn mask(mut self, m: MaskExpr, ops: Vec<Tensor>) -> Spec {
        self.mask = Some(m);
        self.mask_ops = ops;
        self
    }
    fn score(mut self, e: ScalarExpr, ops: Vec<Tensor>) -> Spec {
        self.score = Some(e);
        self.score_ops = ops;
        self
    }
    fn scale(mut self, s: Option<f64>) -> Spec {
        self.scale = s;
        self
    }
    /// The position of the first score operand in the attention's inputs.
    fn first_score_operand(&self) -> usize {
        3 + usize::from(self.mask.is_some())
    }
}

fn dims(lead: &[usize], sym: &str, last: usize) -> Vec<Dim> {
    let mut out: Vec<Dim> = lead.iter().map(|&d| Dim::constant(d as i64)).collect();
    out.push(Dim::sym(sym));
    out.push(Dim::constant(last as i64));
    out
}

fn concrete(t: &Tensor) -> TensorType {
    TensorType::new(t.dtype, t.shape.iter().map(|&d| Dim::constant(d as i64)).collect())
}

fn add(g: &mut Graph, op: Op, ins: &[NodeId]) -> NodeId {
    let tys: Vec<&Type> = ins.iter().map(|i| &g.node(*i).ty).collect();
    let ty = infer_type(&op, &tys).unwrap_or_else(|e| panic!("{op:?}: {e}"));
    g.add_node(op, ty, ins, None)
}

fn f32_of(t: &Tensor) -> F32Tensor {
    F32Tensor { shape: t.shape.clone(), data: t.data.iter().map(|&x| x as f32).collect() }
}

fn operand(t: &Tensor) -> OperandData<'_> {
    OperandData { dtype: t.dtype, shape: t.shape.clone(), data: &t.data }
}

struct Outcome {
    kernel: F32Tensor,
    stats: KernelStats,
    max_err: f32,
}

/// Runs `spec` at `t × s` under both the reference and the kernel and
/// checks the kernel (error, zero rows, visited tiles, mask evaluations).
fn check(spec: &Spec, t: usize, s: usize, tiles: (usize, usize), seed: u64) -> Outcome {
    let what = format!("{} T={t} S={s} tiles={tiles:?} lq={:?} lk={:?}", spec.name, spec.lq, spec.lk);
    let mut g = Graph::new("attn");
    let qp = g.add_param("q", TensorType::new(DType::F32, dims(&spec.lq, "T", spec.d)), None);
    let kp = g.add_param("k", TensorType::new(DType::F32, dims(&spec.lk, "S", spec.d)), None);
    let vp = g.add_param("v", TensorType::new(DType::F32, dims(&spec.lk, "S", spec.dv)), None);
    let mut ins = vec![qp, kp, vp];
    if let Some(m) = &spec.mask {
        let ops: Vec<NodeId> =
            spec.mask_ops.iter().enumerate().map(|(i, x)| g.add_param(format!("m{i}"), concrete(x), None)).collect();
        ins.push(add(&mut g, Op::Mask(m.clone()), &ops));
    }
    for (i, x) in spec.score_ops.iter().enumerate() {
        ins.push(g.add_param(format!("s{i}"), concrete(x), None));
    }
    let op = Op::Attention { scale: spec.scale, masked: spec.mask.is_some(), score: spec.score.clone() };
    let a = add(&mut g, op, &ins);
    let ty = g.node(a).ty.as_tensor().unwrap().clone();
    g.set_results(vec![a], vec![ty]);
    let vg = verify(g).unwrap_or_else(|e| panic!("{what}: verify: {e}"));

    let with = |lead: &[usize], rows: usize, cols: usize| -> Vec<usize> {
        let mut v = lead.to_vec();
        v.extend([rows, cols]);
        v
    };
    let qt = random_tensor(DType::F32, &with(&spec.lq, t, spec.d), seed);
    let kt = random_tensor(DType::F32, &with(&spec.lk, s, spec.d), seed + 1);
    let vt = random_tensor(DType::F32, &with(&spec.lk, s, spec.dv), seed + 2);
    let mut inputs = vec![qt.clone(), kt.clone(), vt.clone()];
    inputs.extend(spec.mask_ops.iter().cloned());
    inputs.extend(spec.score_ops.iter().cloned());
    let bindings = bind_symbols(vg.graph(), &inputs).unwrap();
    let reference = run(&vg, &inputs).unwrap_or_else(|e| panic!("{what}: reference: {e}")).remove(0);

    let mdata = MaskData { operands: spec.mask_ops.iter().map(operand).collect() };
    let mut sops: Vec<Option<OperandData>> = vec![None; spec.first_score_operand()];
    sops.extend(spec.score_ops.iter().map(|x| Some(operand(x))));
    let score = spec.score.as_ref().map(|e| ScoreMod { expr: e, operands: sops });
    let sched = AttentionSchedule::new(tiles.0, tiles.1);
    let (kernel, stats) = attention_tiled_stats(
        &f32_of(&qt),
        &f32_of(&kt),
        &f32_of(&vt),
        spec.mask.as_ref().map(|m| (m, &mdata)),
        spec.scale,
        score.as_ref(),
        &bindings,
        &sched,
    )
    .unwrap_or_else(|e| panic!("{what}: kernel: {e}"));

    // Values.
    assert_eq!(kernel.shape, reference.shape, "{what}: shape");
    let mut max_err = 0f32;
    for (i, (&x, &r)) in kernel.data.iter().zip(&reference.data).enumerate() {
        assert!(!x.is_nan(), "{what}: NaN at {i} (reference {r})");
        let e = (x - r as f32).abs();
        assert!(e <= TOL, "{what}: element {i}: kernel {x}, reference {r}, error {e}");
        max_err = max_err.max(e);
    }
    // Rows with no visible key are exact zeros.
    let dv = spec.dv;
    if dv > 0 {
        for (row, (kr, rr)) in kernel.data.chunks(dv).zip(reference.data.chunks(dv)).enumerate() {
            if rr.iter().all(|&x| x == 0.0) {
                assert!(kr.iter().all(|&x| x.to_bits() == 0), "{what}: row {row} should be exact zeros: {kr:?}");
            }
        }
    }

    // Visited tiles and mask evaluations against the iteration space.
    let n_lead: usize = reference.shape[..reference.shape.len() - 2].iter().product();
    let heads = if reference.shape.len() > 2 { reference.shape[reference.shape.len() - 3] } else { 1 };
    let (nq, nk) = (t.div_ceil(tiles.0), s.div_ceil(tiles.1));
    let per_head_group = n_lead.checked_div(heads).unwrap_or(0);
    assert_eq!(stats.programs as usize, n_lead * nq, "{what}: programs");
    match &spec.mask {
        Some(m) => {
            let ctx = Ctx { t: t as i64, s: s as i64, heads, bindings: &bindings, data: &mdata };
            let space = iteration_space(m, &ctx, tiles.0, tiles.1).unwrap();
            let (_, visited, full, partial) = space.counts();
            assert_eq!(stats.tiles_visited as usize, per_head_group * visited, "{what}: tiles visited");
            assert_eq!(stats.full_tiles as usize, per_head_group * full, "{what}: full tiles");
            assert_eq!(stats.partial_tiles as usize, per_head_group * partial, "{what}: partial tiles");
            // One predicate per element of each Partial tile, none elsewhere.
            let mut partial_area = 0usize;
            for rows in &space.per_head {
                for (qi, runs) in rows.iter().enumerate() {
                    let bq = tiles.0.min(t - qi * tiles.0);
                    for (r, c) in runs {
                        if *c == TileClass::Partial {
                            for ki in r.clone() {
                                partial_area += bq * tiles.1.min(s - ki * tiles.1);
                            }
                        }
                    }
                }
            }
            assert_eq!(stats.mask_evals as usize, per_head_group * partial_area, "{what}: mask evaluations");
        }
        None => {
            assert_eq!(stats.tiles_visited as usize, n_lead * nq * nk, "{what}: tiles visited");
            assert_eq!(stats.full_tiles, stats.tiles_visited, "{what}");
            assert_eq!(stats.mask_evals, 0, "{what}");
        }
    }
    Outcome { kernel, stats, max_err }
}

/// The leading shapes used in turn: rank 2, 3 and 4.
fn lead_for(i: usize) -> (Vec<usize>, Vec<usize>) {
    match i % 3 {
        0 => (vec![], vec![]),
        1 => (vec![2], vec![2]),
        _ => (vec![2, 3], vec![2, 3]),
    }
}

/// Runs `make(t, s)` (None: skipped) at every size pair and tile shape,
/// cycling ranks and scales; returns the number of runs and the worst error.
fn sweep(name: &str, make: &dyn Fn(usize, usize) -> Option<(MaskExpr, Vec<Tensor>)>) -> (usize, f32) {
    let (mut runs, mut worst) = (0, 0f32);
    for (ti, &t) in SIZES.iter().enumerate() {
        for (si, &s) in SIZES.iter().enumerate() {
            let Some((m, ops)) = make(t, s) else { continue };
            for (tj, &tiles) in TILES.iter().enumerate() {
                let n = ti + si + tj;
                let (lq, lk) = lead_for(n);
                let scale = if n % 2 == 0 { None } else { Some(0.3) };
                let spec = Spec::new(name, &lq, &lk).mask(m.clone(), ops.clone()).scale(scale);
                let o = check(&spec, t, s, tiles, (n * 7 + t * 1000 + s) as u64);
                runs += 1;
                worst = worst.max(o.max_err);
            }
        }
    }
    assert!(runs > 0, "{name}: no run");
    println!("{name}: {runs} runs, max error {worst:.2e}");
    (runs, worst)
}

fn sweep_static(name: &str, m: MaskExpr) {
    sweep(name, &|_, _| Some((m.clone(), Vec::new())));
}

// ---------------------------------------------------------------------------
// Masks

#[test]
fn band_masks_match_reference() {
    // causal with T < S, T = S and T > S (the sweep holds every pair).
    sweep_static("causal", MaskExpr::Causal);
    sweep_static("local(3, 5)", MaskExpr::Local { left: 3, right: 5 });
    sweep_static("local(0, 20)", MaskExpr::Local { left: 0, right: 20 });
    sweep_static("window(8)", MaskExpr::Window { w: 8 });
    sweep_static("sink(5)", MaskExpr::Sink { n: 5 });
}

#[test]
fn congruence_masks_match_reference() {
    sweep_static("dilated(4, 3)", MaskExpr::Dilated { w: 4, d: 3 });
    sweep_static("dilated(40, 1)", MaskExpr::Dilated { w: 40, d: 1 });
    sweep_static("strided(3, 1)", MaskExpr::Strided { stride: 3, offset: 1 });
    sweep_static("strided(1, 0)", MaskExpr::Strided { stride: 1, offset: 0 });
}

#[test]
fn neighborhood_masks_match_reference() {
    let cases: Vec<(&str, usize, MaskExpr)> = vec![
        ("na1d k7 d2", 17, na(&[7], &[17], &[2], &[false])),
        ("na1d k5 causal", 63, na(&[5], &[63], &[1], &[true])),
        ("na1d k9 d3", 130, na(&[9], &[130], &[3], &[false])),
        ("na2d 8x8 k3x5", 64, na(&[3, 5], &[8, 8], &[1, 1], &[false, false])),
        ("na2d 8x8 k3x3 d1x2", 64, na(&[3, 3], &[8, 8], &[1, 2], &[false, false])),
        ("na2d 5x13 k3x5 causal", 65, na(&[3, 5], &[5, 13], &[1, 2], &[true, false])),
        ("na2d 10x13 k5x3 d2x1", 130, na(&[5, 3], &[10, 13], &[2, 1], &[false, true])),
        ("na2d 7x9 k3x3", 63, na(&[3, 3], &[7, 9], &[2, 3], &[false, false])),
        ("na3d 2x4x8 k1x3x3", 64, na(&[1, 3, 3], &[2, 4, 8], &[1, 1, 2], &[false, false, false])),
    ];
    let mut runs = 0;
    for (name, n, m) in cases {
        let r = sweep(name, &|t, s| (t == n && s == n).then(|| (m.clone(), Vec::new())));
        runs += r.0;
    }
    assert_eq!(runs, 9 * TILES.len());
}

#[test]
fn data_masks_match_reference() {
    // blocks with a constant layout and with a bool operand layout.
    sweep("blocks const 16x16", &|t, s| {
        let (shape, data) = random_layout(t.div_ceil(16), s.div_ceil(16), (t * 131 + s) as u64);
        let layout = ArrayRef::Const(ConstValue { dtype: DType::Bool, shape, data });
        Some((MaskExpr::Blocks { layout, block: [16, 16] }, Vec::new()))
    });
    sweep("blocks operand 8x24", &|t, s| {
        let (shape, data) = random_layout(t.div_ceil(8), s.div_ceil(24), (t * 7 + s) as u64);
        let layout = Tensor::new(DType::Bool, shape, data).unwrap();
        Some((MaskExpr::Blocks { layout: ArrayRef::Operand(0), block: [8, 24] }, vec![layout]))
    });
    // document: sorted ids (packed sequences) and unsorted ids, i32 operand.
    sweep("document sorted", &|t, s| {
        let ids = random_tensor(DType::I32, &[t.max(s)], (t + s) as u64);
        Some((MaskExpr::Document { ids: 0 }, vec![ids]))
    });
    sweep("document unsorted", &|t, s| {
        let mut rng = SplitMix64::new((t * 3 + s) as u64);
        let data = (0..t.max(s)).map(|_| (rng.next_u64() % 3) as f64).collect();
        Some((MaskExpr::Document { ids: 0 }, vec![Tensor::new(DType::I32, vec![t.max(s)], data).unwrap()]))
    });
    sweep("causal & document", &|t, s| {
        let ids = random_tensor(DType::I32, &[t.max(s)], (t * s) as u64);
        Some((and(MaskExpr::Causal, MaskExpr::Document { ids: 0 }), vec![ids]))
    });
}

#[test]
fn lambda_and_combinator_masks_match_reference() {
    use ScalarBinary as B;
    // A lambda reading a constant array at `h` (heads ≤ 6 in the sweep).
    let reach = konst(DType::I32, vec![1.0, 4.0, 9.0, 0.0, 20.0, 2.0]);
    sweep_static(
        "lambda |q-k| <= reach[h]",
        lam(bin(B::Le, un(ScalarUnary::Abs, bin(B::Sub, q(), k())), idx(reach.clone(), vec![h()]))),
    );
    sweep_static(
        "lambda (q + 2k + h) % 3 != 0",
        lam(bin(B::Ne, bin(B::Mod, bin(B::Add, bin(B::Add, q(), bin(B::Mul, int(2), k())), h()), int(3)), int(0))),
    );
    // Reads the dimension symbols: k·T <= (q + 1)·S (causal stretched to T×S).
    sweep_static(
        "lambda k*T <= (q+1)*S",
        lam(bin(B::Le, bin(B::Mul, k(), sym("T")), bin(B::Mul, bin(B::Add, q(), int(1)), sym("S")))),
    );
    // Fully masked rows: q % 4 == 1 sees nothing.
    sweep_static("lambda q % 4 != 1", lam(bin(B::Ne, bin(B::Mod, q(), int(4)), int(1))));
    sweep_static(
        "lambda where + float",
        lam(sel(
            bin(B::Lt, q(), int(20)),
            bin(B::Ge, bin(B::Div, q(), fl(2.0)), bin(B::Sub, k(), int(3))),
            bin(B::Eq, bin(B::Mod, k(), int(2)), int(0)),
        )),
    );
    sweep_static("sink(4) | window(16)", or(MaskExpr::Sink { n: 4 }, MaskExpr::Window { w: 16 }));
    sweep_static("causal & !local(2, 2)", and(MaskExpr::Causal, not(MaskExpr::Local { left: 2, right: 2 })));
    sweep_static("!causal", not(MaskExpr::Causal));
    sweep_static(
        "causal & (lambda reach[h]) | sink(2)",
        or(
            and(MaskExpr::Causal, lam(bin(B::Le, bin(B::Sub, q(), k()), idx(reach, vec![h()])))),
            MaskExpr::Sink { n: 2 },
        ),
    );
    sweep_static(
        "local(3,3) | !local(3,3)",
        or(MaskExpr::Local { left: 3, right: 3 }, not(MaskExpr::Local { left: 3, right: 3 })),
    );
}

// ---------------------------------------------------------------------------
// Score modifiers

fn alibi() -> ScalarExpr {
    use ScalarBinary as B;
    let slopes = konst(DType::F32, vec![0.5, 0.25, 0.125, 0.0625]);
    bin(B::Sub, sv(), bin(B::Mul, idx(slopes, vec![h()]), un(ScalarUnary::Abs, bin(B::Sub, q(), k()))))
}

fn softcap(c: f64) -> ScalarExpr {
    use ScalarBinary as B;
    bin(B::Mul, fl(c), un(ScalarUnary::Tanh, bin(B::Div, sv(), fl(c))))
}

#[test]
fn score_modifiers_match_reference() {
    use ScalarBinary as B;
    let mut runs = 0;
    for (ti, &t) in SIZES.iter().enumerate() {
        for (si, &s) in SIZES.iter().enumerate() {
            for (tj, &tiles) in TILES.iter().enumerate() {
                let seed = (ti * 100 + si * 10 + tj) as u64;
                // ALiBi with a const slope array, 4 heads, rank 3 or 4.
                let lead: &[usize] = if tj % 2 == 0 { &[4] } else { &[2, 4] };
                let spec =
                    Spec::new("alibi & causal", lead, lead).mask(MaskExpr::Causal, vec![]).score(alibi(), vec![]);
                check(&spec, t, s, tiles, seed);
                // Softcap (tanh), no mask, scores made large by the scale.
                let spec = Spec::new("softcap", &[2], &[2]).score(softcap(0.5), vec![]).scale(Some(3.0));
                check(&spec, t, s, tiles, seed + 1);
                // A float bias operand indexed [q, k], with and without a mask.
                let bias = random_tensor(DType::F32, &[t, s], seed + 2);
                let at = |pos: usize| idx(ArrayRef::Operand(pos), vec![q(), k()]);
                let spec = Spec::new("bias", &[], &[]).score(bin(B::Add, sv(), at(3)), vec![bias.clone()]);
                check(&spec, t, s, tiles, seed + 3);
                let ids = random_tensor(DType::I32, &[t.max(s)], seed + 4);
                let spec = Spec::new("bias & document", &[3], &[3])
                    .mask(MaskExpr::Document { ids: 0 }, vec![ids])
                    .score(bin(B::Add, sv(), bin(B::Mul, fl(2.0), at(4))), vec![bias])
                    .scale(Some(0.5));
                check(&spec, t, s, tiles, seed + 5);
                runs += 4;
            }
        }
    }
    println!("score modifiers: {runs} runs");
}

#[test]
fn score_modifier_is_evaluated_only_where_the_mask_holds() {
    use ScalarBinary as B;
    // A relative-position bias table read at q - k: out of range (negative)
    // exactly where causal hides the score. The reference evaluates the
    // modifier only where the mask holds; so must the kernel.
    for &n in &[17usize, 65, 130] {
        let table = Tensor::new(DType::F32, vec![n], (0..n).map(|i| (i as f64 * 0.37).sin()).collect()).unwrap();
        let e = bin(B::Add, sv(), idx(ArrayRef::Operand(4), vec![bin(B::Sub, q(), k())]));
        for tiles in TILES {
            let spec = Spec::new("relative bias", &[2], &[2])
                .mask(MaskExpr::Causal, vec![])
                .score(e.clone(), vec![table.clone()]);
            let o = check(&spec, n, n, tiles, n as u64);
            // One modifier evaluation per visible score.
            assert_eq!(o.stats.score_evals as usize, 2 * n * (n + 1) / 2);
        }
    }
}

// ---------------------------------------------------------------------------
// Heads, ranks, scale

#[test]
fn gqa_matches_reference() {
    use ScalarBinary as B;
    let reach = konst(DType::I32, vec![1.0, 4.0, 9.0, 0.0]);
    let head_lambda = lam(bin(B::Le, un(ScalarUnary::Abs, bin(B::Sub, q(), k())), idx(reach, vec![h()])));
    let shapes: Vec<(Vec<usize>, Vec<usize>)> = vec![
        (vec![4], vec![2]),
        (vec![4], vec![1]),
        (vec![2, 4], vec![2, 2]),
        (vec![2, 4], vec![2, 1]),
        (vec![2, 4], vec![1]),
        (vec![1, 4], vec![3, 2]),
        // One query head broadcast against two key heads.
        (vec![1], vec![2]),
    ];
    let mut runs = 0;
    for (lq, lk) in &shapes {
        for &(t, s) in &[(17usize, 17usize), (63, 130), (130, 64), (1, 65)] {
            for (tj, &tiles) in TILES.iter().enumerate() {
                let scale = if tj % 2 == 0 { None } else { Some(0.7) };
                let seed = (t * 3 + s + tj) as u64;
                check(&Spec::new("gqa", lq, lk).scale(scale), t, s, tiles, seed);
                check(&Spec::new("gqa causal", lq, lk).mask(MaskExpr::Causal, vec![]).scale(scale), t, s, tiles, seed);
                check(&Spec::new("gqa head lambda", lq, lk).mask(head_lambda.clone(), vec![]), t, s, tiles, seed);
                if lq.last() == Some(&4) {
                    let spec = Spec::new("gqa alibi", lq, lk).mask(MaskExpr::Causal, vec![]).score(alibi(), vec![]);
                    check(&spec, t, s, tiles, seed);
                }
                runs += 1;
            }
        }
    }
    println!("gqa: {runs} shape/size/tile combinations");
}

#[test]
fn ranks_and_broadcast_match_reference() {
    let shapes: Vec<(Vec<usize>, Vec<usize>)> = vec![
        (vec![], vec![]),
        (vec![3], vec![3]),
        (vec![2, 3], vec![2, 3]),
        // Leading axes of different lengths (no grouping on one side).
        (vec![3], vec![]),
        (vec![], vec![3]),
        // Batch broadcast beside the head axis.
        (vec![2, 2], vec![1, 2]),
        (vec![1, 2], vec![3, 2]),
        (vec![2, 1, 3], vec![4, 3]),
    ];
    for (lq, lk) in &shapes {
        for &t in &SIZES {
            for &s in &[1usize, 64, 65] {
                for (tj, &tiles) in TILES.iter().enumerate() {
                    let scale = if tj % 2 == 0 { None } else { Some(1.5) };
                    let seed = (t * 5 + s + tj) as u64;
                    check(&Spec::new("plain", lq, lk).scale(scale), t, s, tiles, seed);
                    check(
                        &Spec::new("window", lq, lk).mask(MaskExpr::Window { w: 9 }, vec![]).scale(scale),
                        t,
                        s,
                        tiles,
                        seed,
                    );
                }
            }
        }
    }
    // Head sizes D ≠ Dv, and D = 1.
    for (d, dv) in [(1usize, 3usize), (16, 1), (33, 17)] {
        let mut spec = Spec::new("dims", &[2], &[2]).mask(MaskExpr::Causal, vec![]);
        spec.d = d;
        spec.dv = dv;
        check(&spec, 65, 63, (16, 16), d as u64);
    }
}

#[test]
fn long_sequence_1000_matches_reference() {
    let mut spec = Spec::new("causal 1000", &[2], &[2]).mask(MaskExpr::Causal, vec![]);
    spec.d = 16;
    let o = check(&spec, 1000, 1000, (64, 64), 1000);
    // 16 q-tiles: ∑ (i + 1) visited tiles per head, the diagonal ones Partial.
    assert_eq!(o.stats.tiles_visited, 2 * (16 * 17 / 2));
    assert_eq!(o.stats.partial_tiles, 2 * 16);
    let ids = random_tensor(DType::I32, &[1000], 7);
    let spec = Spec::new("document 1000", &[], &[]).mask(MaskExpr::Document { ids: 0 }, vec![ids]).scale(Some(0.25));
    check(&spec, 1000, 1000, (32, 128), 1001);
}

// ---------------------------------------------------------------------------
// Zeros, visits, errors

#[test]
fn fully_masked_rows_are_exact_zeros() {
    use ScalarBinary as B;
    // causal with T > S: queries q < T - S see no key.
    let o = check(&Spec::new("causal T>S", &[2], &[2]).mask(MaskExpr::Causal, vec![]), 130, 17, (16, 16), 1);
    let (t, dv) = (130, 5);
    for b in 0..2 {
        for qi in 0..t {
            let row = &o.kernel.data[(b * t + qi) * dv..(b * t + qi + 1) * dv];
            if qi < 130 - 17 {
                assert!(row.iter().all(|x| x.to_bits() == 0), "row {qi}: {row:?}");
            } else {
                assert!(row.iter().any(|&x| x != 0.0), "row {qi}: {row:?}");
            }
        }
    }
    // A whole mask that holds nowhere: every tile Empty, nothing visited.
    let never = lam(bin(B::Lt, k(), int(0)));
    let o = check(&Spec::new("never", &[3], &[3]).mask(never, vec![]), 65, 63, (13, 7), 2);
    assert!(o.kernel.data.iter().all(|x| x.to_bits() == 0));
    assert_eq!(o.stats.tiles_visited, 0);
    // Scores of -inf from the modifier (rows q % 5 == 2) inside visited tiles.
    let e = sel(bin(B::Eq, bin(B::Mod, q(), int(5)), int(2)), fl(f64::NEG_INFINITY), sv());
    let o = check(&Spec::new("-inf rows", &[2], &[2]).score(e, vec![]), 63, 65, (16, 16), 3);
    for (row, chunk) in o.kernel.data.chunks(5).enumerate() {
        let qi = row % 63;
        assert_eq!(chunk.iter().all(|x| x.to_bits() == 0), qi % 5 == 2, "row {row}: {chunk:?}");
    }
    // Rows whose first visited tiles are all -inf and later ones are not
    // (exp(-inf - -inf) must not give NaN).
    let late = lam(bin(B::Ge, k(), bin(B::Add, q(), int(100))));
    let o = check(&Spec::new("late keys", &[], &[]).mask(late, vec![]), 17, 130, (16, 16), 4);
    assert!(o.kernel.data.iter().all(|x| x.is_finite()));
    for row in o.kernel.data.chunks(5) {
        assert!(row.iter().any(|&x| x != 0.0), "{row:?}");
    }
}

#[test]
fn empty_tiles_are_never_visited() {
    // causal 130×130, 16×16: 9 q-tiles, row i visits k-tiles 0..=i, the
    // diagonal Partial: 45 visited of 81, 9 Partial, 36 Full.
    let spec = Spec::new("causal", &[2, 2], &[2, 2]).mask(MaskExpr::Causal, vec![]);
    let o = check(&spec, 130, 130, (16, 16), 5);
    let st = &o.stats;
    // The space is per head (2 heads); the kernel runs it for 2 batches.
    assert_eq!(st.space_counts, Some((2 * 81, 2 * 45, 2 * 36, 2 * 9)));
    assert_eq!(st.programs, 4 * 9);
    assert_eq!((st.tiles_visited, st.full_tiles, st.partial_tiles), (4 * 45, 4 * 36, 4 * 9));
    // Diagonal tiles: 8 of 16×16 and the last 2×2.
    assert_eq!(st.mask_evals, 4 * (8 * 256 + 4));
    // sink(4) | window(16) at 1-tile granularity: per q-tile at most 3 tiles.
    let spec = Spec::new("streaming", &[], &[]).mask(or(MaskExpr::Sink { n: 4 }, MaskExpr::Window { w: 16 }), vec![]);
    let o = check(&spec, 130, 130, (16, 16), 6);
    assert!(o.stats.tiles_visited <= 3 * 9, "{:?}", o.stats);
    assert!(o.stats.tiles_visited < o.stats.space_counts.unwrap().0 as u64 / 2);
    // A blocks layout with a single set block: one tile per matching q-tile.
    let mut data = vec![0.0; 9 * 9];
    data[3 * 9 + 5] = 1.0;
    let layout = ArrayRef::Const(ConstValue { dtype: DType::Bool, shape: vec![9, 9], data });
    let spec = Spec::new("one block", &[], &[]).mask(MaskExpr::Blocks { layout, block: [16, 16] }, vec![]);
    let o = check(&spec, 130, 130, (16, 16), 7);
    assert_eq!((o.stats.tiles_visited, o.stats.full_tiles, o.stats.mask_evals), (1, 1, 0));
}

#[test]
fn no_mask_visits_every_tile_without_predicates() {
    let o = check(&Spec::new("dense", &[3], &[3]), 65, 130, (13, 7), 8);
    assert_eq!(o.stats.tiles_visited, 3 * 5 * 19);
    assert_eq!((o.stats.partial_tiles, o.stats.mask_evals, o.stats.space_counts), (0, 0, None));
}

#[test]
fn empty_sequences() {
    // S = 0: every row sees nothing (zeros); T = 0: an empty output.
    let q = F32Tensor::new(vec![2, 3, 4], vec![0.5; 24]).unwrap();
    let k = F32Tensor::new(vec![2, 0, 4], vec![]).unwrap();
    let v = F32Tensor::new(vec![2, 0, 6], vec![]).unwrap();
    let b = Bindings::new();
    let sched = AttentionSchedule::new(16, 16);
    let none = MaskData::none();
    let out = attention_tiled(&q, &k, &v, Some((&MaskExpr::Causal, &none)), None, None, &b, &sched).unwrap();
    assert_eq!(out.shape, vec![2, 3, 6]);
    assert!(out.data.iter().all(|x| x.to_bits() == 0));
    let q0 = F32Tensor::new(vec![2, 0, 4], vec![]).unwrap();
    let k1 = F32Tensor::new(vec![2, 5, 4], vec![0.1; 40]).unwrap();
    let v1 = F32Tensor::new(vec![2, 5, 6], vec![0.1; 60]).unwrap();
    let out = attention_tiled(&q0, &k1, &v1, None, None, None, &b, &sched).unwrap();
    assert_eq!((out.shape, out.data.len()), (vec![2, 0, 6], 0));
}

#[test]
fn errors_are_reported() {
    use ScalarBinary as B;
    let b = Bindings::new();
    let sched = AttentionSchedule::new(16, 16);
    let t = |shape: &[usize]| F32Tensor::zeros(shape);
    let err = |q: &F32Tensor, k: &F32Tensor, v: &F32Tensor| {
        attention_tiled(q, k, v, None, None, None, &b, &sched).unwrap_err()
    };
    assert!(err(&t(&[4]), &t(&[4, 4]), &t(&[4, 4])).contains("rank at least 2"));
    assert!(err(&t(&[4, 8]), &t(&[4, 6]), &t(&[4, 4])).contains("head dimension"));
    assert!(err(&t(&[4, 8]), &t(&[4, 8]), &t(&[5, 4])).contains("same leading dimensions"));
    assert!(err(&t(&[3, 4, 8]), &t(&[2, 4, 8]), &t(&[2, 4, 4])).contains("heads do not match"));
    assert!(err(&t(&[2, 3, 4, 8]), &t(&[3, 3, 4, 8]), &t(&[3, 3, 4, 4])).contains("do not broadcast"));
    let bad = F32Tensor { shape: vec![4, 8], data: vec![0.0; 3] };
    assert!(err(&bad, &t(&[4, 8]), &t(&[4, 4])).contains("needs 32 elements"));
    let zero = AttentionSchedule::new(0, 16);
    let e = attention_tiled(&t(&[4, 8]), &t(&[4, 8]), &t(&[4, 4]), None, None, None, &b, &zero).unwrap_err();
    assert!(e.contains("tile sizes"), "{e}");

    // A mask lambda indexing out of range in a Partial tile fails as the
    // reference does.
    let small = konst(DType::I32, vec![0.0, 1.0, 0.0]);
    let m = lam(bin(B::Eq, idx(small, vec![q()]), int(0)));
    let none = MaskData::none();
    let (q5, k5, v5) = (t(&[5, 8]), t(&[5, 8]), t(&[5, 4]));
    let e = attention_tiled(&q5, &k5, &v5, Some((&m, &none)), None, None, &b, &sched).unwrap_err();
    assert!(e.contains("out of range"), "{e}");
    // A mask that does not fit its use (document ids too short).
    let ids = Tensor::new(DType::I32, vec![3], vec![0.0; 3]).unwrap();
    let data = MaskData { operands: vec![operand(&ids)] };
    let e = attention_tiled(&q5, &k5, &v5, Some((&MaskExpr::Document { ids: 0 }, &data)), None, None, &b, &sched)
        .unwrap_err();
    assert!(e.contains("document"), "{e}");
    // A score modifier giving a boolean.
    let e = bin(B::Lt, sv(), fl(0.0));
    let sm = ScoreMod { expr: &e, operands: vec![] };
    let msg = attention_tiled(&q5, &k5, &v5, None, None, Some(&sm), &b, &sched).unwrap_err();
    assert!(msg.contains("boolean"), "{msg}");
    // A score modifier reading a missing operand.
    let e = bin(B::Add, sv(), idx(ArrayRef::Operand(3), vec![q()]));
    let sm = ScoreMod { expr: &e, operands: vec![None, None, None] };
    let msg = attention_tiled(&q5, &k5, &v5, None, None, Some(&sm), &b, &sched).unwrap_err();
    assert!(msg.contains("operand 3"), "{msg}");
}
