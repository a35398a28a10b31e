//! `mask-algebra`: every rule rewrites what it should, and the reference
//! interpreter's `materialize` (the oracle) agrees with the original mask at
//! every `(h, q, k)`, for `T = S`, `T < S` and `T > S`.

use proptest::prelude::*;
use tdl_ir::infer::infer_type;
use tdl_ir::{
    verify, ArrayRef, BinaryOp, Bindings, ConstValue, DType, Dim, Graph, LambdaVar, MaskExpr, NodeId, Op, ScalarBinary,
    ScalarExpr, ScalarUnary, TensorType, Type,
};
use tdl_passes::mask_algebra::{simplify, MaskAlgebra};
use tdl_passes::Pass;
use tdl_reference::mask::materialize;
use tdl_reference::{Limits, Tensor};

// ---------------------------------------------------------------------------
// Builders

fn causal() -> MaskExpr {
    MaskExpr::Causal
}
fn local(left: i64, right: i64) -> MaskExpr {
    MaskExpr::Local { left, right }
}
fn window(w: i64) -> MaskExpr {
    MaskExpr::Window { w }
}
fn dilated(w: i64, d: i64) -> MaskExpr {
    MaskExpr::Dilated { w, d }
}
fn sink(n: i64) -> MaskExpr {
    MaskExpr::Sink { n }
}
fn strided(stride: i64, offset: i64) -> MaskExpr {
    MaskExpr::Strided { stride, offset }
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
fn ands(xs: Vec<MaskExpr>) -> MaskExpr {
    xs.into_iter().reduce(and).unwrap()
}
fn ors(xs: Vec<MaskExpr>) -> MaskExpr {
    xs.into_iter().reduce(or).unwrap()
}
fn konst(b: bool) -> MaskExpr {
    MaskExpr::Lambda(ScalarExpr::Bool(b))
}

fn q() -> ScalarExpr {
    ScalarExpr::Var(LambdaVar::Q)
}
fn k() -> ScalarExpr {
    ScalarExpr::Var(LambdaVar::K)
}
fn h() -> ScalarExpr {
    ScalarExpr::Var(LambdaVar::H)
}
fn int(c: i64) -> ScalarExpr {
    ScalarExpr::Int(c)
}
fn bin(op: ScalarBinary, a: ScalarExpr, b: ScalarExpr) -> ScalarExpr {
    ScalarExpr::binary(op, a, b)
}
fn qk() -> ScalarExpr {
    bin(ScalarBinary::Sub, q(), k())
}
/// `mask(q, k) => q - k < c`
fn dist_lt(c: i64) -> MaskExpr {
    MaskExpr::Lambda(bin(ScalarBinary::Lt, qk(), int(c)))
}
/// `mask(q, k) => k % m == r`
fn kmod(m: i64, r: i64) -> MaskExpr {
    MaskExpr::Lambda(bin(ScalarBinary::Eq, bin(ScalarBinary::Mod, k(), int(m)), int(r)))
}
/// `mask(q, k, h) => h == c`
fn head_is(c: i64) -> MaskExpr {
    MaskExpr::Lambda(bin(ScalarBinary::Eq, h(), int(c)))
}
/// `mask(q, k) => [1, 0, 1, 1][q - k] > 0`: fails where `q - k` is outside
/// `0..4`, so it is a barrier the simplifier must not move.
fn indexed() -> MaskExpr {
    let c = ConstValue { dtype: DType::I32, shape: vec![4], data: vec![1.0, 0.0, 1.0, 1.0] };
    MaskExpr::Lambda(bin(
        ScalarBinary::Gt,
        ScalarExpr::Index { array: ArrayRef::Const(c), indices: vec![qk()] },
        int(0),
    ))
}
/// `mask(q, k) => k < T - c`: reads a symbol, so it is a barrier too.
fn below_t(c: i64) -> MaskExpr {
    MaskExpr::Lambda(bin(ScalarBinary::Lt, k(), bin(ScalarBinary::Sub, ScalarExpr::Sym("T".into()), int(c))))
}
fn neighborhood7() -> MaskExpr {
    MaskExpr::Neighborhood { kernel: vec![3], grid: vec![7], dilation: vec![1], causal: vec![false] }
}
fn blocks3() -> MaskExpr {
    let data = vec![1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0];
    MaskExpr::Blocks {
        layout: ArrayRef::Const(ConstValue { dtype: DType::Bool, shape: vec![3, 3], data }),
        block: [8, 8],
    }
}

// ---------------------------------------------------------------------------
// The oracle

fn eval(m: &MaskExpr, heads: usize, t: usize, s: usize) -> Result<Tensor, String> {
    let mut b = Bindings::new();
    b.insert("T".into(), t as i64);
    b.insert("S".into(), s as i64);
    materialize(m, &[], heads, t, s, &b, &Limits::default()).map_err(|e| e.to_string())
}

/// Same value everywhere, or both fail.
fn agree(a: &MaskExpr, b: &MaskExpr, heads: usize, t: usize, s: usize) -> Result<(), String> {
    match (eval(a, heads, t, s), eval(b, heads, t, s)) {
        (Ok(x), Ok(y)) if x.shape == y.shape && x.data == y.data => Ok(()),
        (Err(_), Err(_)) => Ok(()),
        (x, y) => Err(format!(
            "{a:?}\n  vs {b:?}\n  differ at heads={heads} T={t} S={s}: {:?} vs {:?}",
            x.map(|t| t.data),
            y.map(|t| t.data)
        )),
    }
}

const SIZES: &[usize] = &[1, 7, 63, 65, 130];

/// The original and its simplification agree on every shape of `SIZES`²
/// (both orders of T and S), heads 1..=3; returns the simplification.
fn check(m: &MaskExpr) -> MaskExpr {
    let s = simplify(m);
    for &t in SIZES {
        for &n in SIZES {
            let heads = 1 + (t + n) % 3;
            agree(m, &s, heads, t, n).unwrap();
        }
    }
    assert_eq!(simplify(&s), s, "not idempotent on {m:?}");
    s
}

/// `m` simplifies to exactly `want`, and the oracle agrees.
fn rewrites(m: MaskExpr, want: MaskExpr) {
    let got = check(&m);
    assert_eq!(got, want, "simplify({m:?})");
}

// ---------------------------------------------------------------------------
// One test per rule

#[test]
fn double_negation_cancels() {
    rewrites(not(not(window(4))), window(4));
    rewrites(not(not(not(causal()))), not(causal()));
}

#[test]
fn negated_constants_fold() {
    rewrites(not(konst(true)), konst(false));
    rewrites(not(konst(false)), konst(true));
}

#[test]
fn and_or_are_idempotent() {
    rewrites(and(dist_lt(3), dist_lt(3)), dist_lt(3));
    rewrites(or(kmod(3, 0), kmod(3, 0)), kmod(3, 0));
    rewrites(and(and(sink(2), kmod(3, 0)), sink(2)), and(sink(2), kmod(3, 0)));
}

#[test]
fn absorption() {
    rewrites(and(dist_lt(3), or(dist_lt(3), kmod(3, 0))), dist_lt(3));
    rewrites(and(or(kmod(3, 0), dist_lt(3)), dist_lt(3)), dist_lt(3));
    rewrites(or(dist_lt(3), and(kmod(3, 0), dist_lt(3))), dist_lt(3));
    // The absorbing operand is found before the built-ins merge.
    rewrites(ands(vec![window(4), window(8), or(window(8), kmod(3, 0))]), window(4));
}

#[test]
fn chains_flatten_sort_and_lean_left() {
    let want = ands(vec![causal(), sink(2), kmod(3, 0)]);
    rewrites(and(kmod(3, 0), and(sink(2), causal())), want.clone());
    rewrites(and(and(causal(), kmod(3, 0)), sink(2)), want.clone());
    rewrites(and(sink(2), and(kmod(3, 0), causal())), want);
    let want = ors(vec![causal(), sink(2), kmod(3, 0)]);
    rewrites(or(kmod(3, 0), or(sink(2), causal())), want);
}

#[test]
fn window_intersection_takes_the_smaller() {
    rewrites(and(window(8), window(4)), window(4));
    rewrites(ands(vec![causal(), window(8), window(4)]), window(4));
}

#[test]
fn causal_is_implied_by_window_and_dilated() {
    rewrites(and(causal(), window(16)), window(16));
    rewrites(and(dilated(4, 2), causal()), dilated(4, 2));
}

#[test]
fn dilated_with_one_dilation_merges() {
    rewrites(and(dilated(4, 2), dilated(3, 2)), dilated(3, 2));
    rewrites(or(dilated(4, 2), dilated(3, 2)), dilated(4, 2));
    // Different dilations stay apart.
    rewrites(and(dilated(3, 2), dilated(4, 1)), and(dilated(3, 2), dilated(4, 1)));
}

#[test]
fn dilated_is_not_a_window() {
    // With T < S, dilated(w, 1) lets q see keys after q; window(w) does not.
    assert_ne!(eval(&dilated(4, 1), 1, 2, 5).unwrap().data, eval(&window(4), 1, 2, 5).unwrap().data);
    rewrites(and(causal(), dilated(4, 1)), dilated(4, 1));
}

#[test]
fn sinks_take_min_under_and_max_under_or() {
    rewrites(and(sink(4), sink(2)), sink(2));
    rewrites(or(sink(4), sink(2)), sink(4));
}

#[test]
fn locals_intersect_boundwise() {
    rewrites(and(local(3, 1), local(1, 2)), local(1, 1));
    rewrites(and(local(-1, 3), local(2, 1)), local(-1, 1));
    // Intersection empty: q - 1 <= k <= q - 2 never holds.
    rewrites(and(local(2, -2), local(1, 5)), konst(false));
}

#[test]
fn window_and_local_merge_into_a_window() {
    rewrites(and(window(8), local(3, 2)), window(4));
    rewrites(and(window(3), local(5, 0)), window(3));
    // A negative bound does not fold.
    rewrites(and(window(3), local(2, -1)), and(window(3), local(2, -1)));
}

#[test]
fn causal_and_local_left_right_zero_is_a_window() {
    rewrites(and(causal(), local(3, 0)), window(4));
    rewrites(and(local(0, 0), causal()), window(1));
    // `right != 0` is not a window when T != S.
    rewrites(and(causal(), local(3, 1)), and(causal(), local(3, 1)));
    rewrites(and(causal(), local(3, -1)), and(causal(), local(3, -1)));
}

#[test]
fn strided_rules() {
    rewrites(strided(4, 5), strided(4, 1));
    rewrites(strided(4, -1), strided(4, 3));
    rewrites(strided(1, 3), konst(true));
    rewrites(and(strided(4, 1), strided(4, 5)), strided(4, 1));
    rewrites(and(strided(4, 1), strided(4, 2)), konst(false));
    rewrites(or(strided(4, 1), strided(4, 5)), strided(4, 1));
    // Different strides stay.
    rewrites(and(strided(4, 1), strided(2, 1)), and(strided(2, 1), strided(4, 1)));
}

#[test]
fn empty_builtins_are_false() {
    rewrites(local(-2, 1), konst(false));
    rewrites(sink(0), konst(false));
    rewrites(window(0), konst(false));
    rewrites(or(sink(0), window(8)), window(8));
}

#[test]
fn constants_absorb_and_vanish() {
    rewrites(and(window(4), konst(true)), window(4));
    rewrites(and(window(4), konst(false)), konst(false));
    rewrites(or(window(4), konst(true)), konst(true));
    rewrites(or(konst(false), window(4)), window(4));
    rewrites(and(konst(true), konst(true)), konst(true));
}

#[test]
fn complements() {
    rewrites(and(kmod(3, 0), not(kmod(3, 0))), konst(false));
    rewrites(or(not(causal()), causal()), konst(true));
}

#[test]
fn or_rules() {
    rewrites(or(window(4), window(8)), window(8));
    rewrites(or(window(4), causal()), causal());
    rewrites(or(dilated(4, 2), causal()), causal());
    rewrites(or(local(1, 1), local(2, 3)), local(2, 3));
    rewrites(or(local(1, 3), local(2, 1)), or(local(1, 3), local(2, 1)));
    rewrites(or(window(3), local(2, 0)), local(2, 0));
    rewrites(or(window(4), local(2, 0)), or(window(4), local(2, 0)));
}

#[test]
fn no_de_morgan() {
    rewrites(not(and(sink(2), causal())), not(and(causal(), sink(2))));
    rewrites(or(not(causal()), not(sink(2))), or(not(causal()), not(sink(2))));
    // The streaming example of the language docs.
    rewrites(not(and(not(window(256)), not(sink(4)))), not(and(not(sink(4)), not(window(256)))));
}

#[test]
fn barriers_keep_their_place() {
    // `indexed` fails where q - k is outside 0..4: causal & window must run first.
    let m = ands(vec![sink(100), causal(), indexed(), window(2), window(3)]);
    let want = ands(vec![causal(), sink(100), indexed(), window(2)]);
    rewrites(m, want);
    // Written after, it stays after (it would fail either way; it must fail
    // the same way).
    rewrites(and(indexed(), window(4)), and(indexed(), window(4)));
    rewrites(and(below_t(1), causal()), and(below_t(1), causal()));
    // A barrier after an absorbing constant is never evaluated.
    rewrites(and(konst(false), indexed()), konst(false));
    rewrites(ands(vec![window(3), konst(false), indexed()]), konst(false));
    // A barrier before it still is.
    rewrites(ands(vec![indexed(), konst(false), sink(2)]), and(indexed(), konst(false)));
}

#[test]
fn absorption_respects_barriers() {
    // `x` guards `indexed` (q - k in 0..3 there); the `window(1)` that would
    // absorb `x` comes only after the barrier, so `x` stays.
    let x = or(window(1), and(window(3), kmod(2, 0)));
    let m = ands(vec![x.clone(), indexed(), window(1)]);
    rewrites(m.clone(), m);
    // `sink(1) & (indexed | sink(1))` evaluates `indexed` at k = 0 for every
    // q (an error once T > 4): the `|` is not absorbed.
    let m = and(sink(1), or(indexed(), sink(1)));
    rewrites(m.clone(), m);
    // With the safe operand first it is.
    rewrites(and(sink(1), or(sink(1), indexed())), sink(1));
    rewrites(or(sink(1), and(sink(1), indexed())), sink(1));
}

#[test]
fn compile_checked_leaves_are_never_dropped() {
    // neighborhood(grid = 7) fails unless T = S = 7; dropping it would
    // turn an error into a value.
    rewrites(and(konst(false), neighborhood7()), and(konst(false), neighborhood7()));
    rewrites(or(window(4), and(window(4), blocks3())), or(window(4), and(window(4), blocks3())));
    rewrites(ands(vec![neighborhood7(), causal(), neighborhood7(), causal()]), and(causal(), neighborhood7()));
    let d = MaskExpr::Document { ids: 0 };
    assert_eq!(simplify(&and(konst(false), d.clone())), and(konst(false), d));
}

#[test]
fn identical_conjunct_sets_print_identically() {
    let a = ands(vec![window(8), kmod(3, 0), sink(4), causal(), window(16)]);
    let b = ands(vec![sink(4), window(16), causal(), kmod(3, 0), window(8)]);
    assert_eq!(simplify(&a), simplify(&b));
    assert_eq!(tdl_ir::text::mask_text(&simplify(&a)), "window(8) & sink(4) & (mask(q, k, h) => k % 3 == 0)");
}

// ---------------------------------------------------------------------------
// Random masks

/// The interval-like built-ins, with small parameters (negative and empty
/// ones included).
fn builtin_leaf() -> BoxedStrategy<MaskExpr> {
    prop_oneof![
        Just(causal()),
        (-3i64..4, -3i64..4).prop_map(|(l, r)| local(l, r)),
        (-1i64..7).prop_map(window),
        (-1i64..5, -1i64..4).prop_map(|(w, d)| dilated(w, d)),
        (-1i64..6).prop_map(sink),
        (-2i64..5, -3i64..6).prop_map(|(s, o)| strided(s, o)),
    ]
    .boxed()
}

/// Operand-free lambdas that cannot fail.
fn lambda_leaf() -> BoxedStrategy<MaskExpr> {
    prop_oneof![
        (-3i64..6).prop_map(dist_lt),
        (-3i64..6).prop_map(|c| MaskExpr::Lambda(bin(ScalarBinary::Ge, qk(), int(c)))),
        (2i64..4, 0i64..3).prop_map(|(m, r)| kmod(m, r)),
        (0i64..3).prop_map(head_is),
        Just(MaskExpr::Lambda(bin(ScalarBinary::Le, k(), q()))),
        any::<bool>().prop_map(konst),
        (0i64..4).prop_map(|c| MaskExpr::Lambda(bin(
            ScalarBinary::Le,
            ScalarExpr::Unary(ScalarUnary::Abs, Box::new(qk())),
            int(c)
        ))),
        (0i64..4).prop_map(|c| MaskExpr::Lambda(bin(
            ScalarBinary::Lt,
            bin(ScalarBinary::Mul, qk(), ScalarExpr::Float(0.5)),
            int(c)
        ))),
    ]
    .boxed()
}

/// Leaves that cannot fail.
fn pure_leaf() -> BoxedStrategy<MaskExpr> {
    prop_oneof![3 => builtin_leaf(), 1 => lambda_leaf()].boxed()
}

/// Leaves that can fail: barriers, and leaves with size checks.
fn risky_leaf() -> BoxedStrategy<MaskExpr> {
    prop_oneof![
        4 => pure_leaf(),
        1 => Just(indexed()),
        1 => (0i64..3).prop_map(below_t),
        1 => Just(blocks3()),
    ]
    .boxed()
}

fn tree(leaf: BoxedStrategy<MaskExpr>) -> impl Strategy<Value = MaskExpr> {
    leaf.prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| and(a, b)),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| or(a, b)),
            inner.clone().prop_map(not),
            // Repeated operands, so the duplicate and absorption rules fire.
            (inner.clone(), inner.clone()).prop_map(|(a, b)| and(a.clone(), or(b, a))),
            (inner.clone(), inner).prop_map(|(a, b)| or(and(a.clone(), b), a)),
        ]
    })
}

proptest! {
    // No regression files: a failure prints its minimal input; add it as a
    // unit test above.
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn simplify_is_sound_and_idempotent(m in tree(risky_leaf()), t in 1usize..40, s in 1usize..40, heads in 1usize..4) {
        let simple = simplify(&m);
        prop_assert!(agree(&m, &simple, heads, t, s).is_ok(), "{}", agree(&m, &simple, heads, t, s).unwrap_err());
        prop_assert_eq!(simplify(&simple), simple);
    }

    #[test]
    fn flat_builtin_chains_are_exact(
        xs in proptest::collection::vec((builtin_leaf(), any::<bool>()), 1..6),
        conj in any::<bool>(),
        t in 1usize..40,
        s in 1usize..40,
        heads in 1usize..3,
    ) {
        let xs: Vec<MaskExpr> = xs.into_iter().map(|(x, neg)| if neg { not(x) } else { x }).collect();
        let m = if conj { ands(xs) } else { ors(xs) };
        let simple = simplify(&m);
        prop_assert!(agree(&m, &simple, heads, t, s).is_ok(), "{}", agree(&m, &simple, heads, t, s).unwrap_err());
        prop_assert_eq!(simplify(&simple), simple);
    }

    #[test]
    fn simplify_is_sound_with_a_neighborhood(m in tree(pure_leaf()), other in 6usize..9) {
        // grid = 7: valid at T = S = 7 only; a size check error elsewhere.
        let m = and(m, neighborhood7());
        let simple = simplify(&m);
        for (t, s) in [(7, 7), (7, other), (other, 7)] {
            prop_assert!(agree(&m, &simple, 2, t, s).is_ok(), "{}", agree(&m, &simple, 2, t, s).unwrap_err());
        }
    }

    #[test]
    fn simplify_ignores_operand_order(a in tree(pure_leaf()), b in tree(pure_leaf()), c in tree(pure_leaf())) {
        prop_assert_eq!(simplify(&and(a.clone(), b.clone())), simplify(&and(b.clone(), a.clone())));
        prop_assert_eq!(simplify(&or(a.clone(), b.clone())), simplify(&or(b.clone(), a.clone())));
        prop_assert_eq!(
            simplify(&and(and(a.clone(), b.clone()), c.clone())),
            simplify(&and(a.clone(), and(c.clone(), b.clone())))
        );
        prop_assert_eq!(simplify(&or(or(a.clone(), b.clone()), c.clone())), simplify(&or(c, or(b, a))));
    }
}

// ---------------------------------------------------------------------------
// The pass

fn scores_type() -> TensorType {
    TensorType::new(DType::F32, vec![Dim::sym("H"), Dim::sym("T"), Dim::sym("S")])
}

fn node(g: &mut Graph, op: Op, ins: &[NodeId]) -> NodeId {
    let tys: Vec<Type> = ins.iter().map(|i| g.node(*i).ty.clone()).collect();
    let refs: Vec<&Type> = tys.iter().collect();
    let ty = infer_type(&op, &refs).unwrap_or_else(|e| panic!("{op:?}: {e}"));
    g.add_node(op, ty, ins, None)
}

/// `s + m`, `m` reading `extra` as its operands.
fn masked_scores(m: MaskExpr, extra: &[(&str, TensorType)]) -> Graph {
    let mut g = Graph::new("g");
    let s = g.add_param("s", scores_type(), None);
    let ins: Vec<NodeId> = extra.iter().map(|(n, ty)| g.add_param(*n, ty.clone(), None)).collect();
    let mask = node(&mut g, Op::Mask(m), &ins);
    let out = node(&mut g, Op::Binary(BinaryOp::Add), &[s, mask]);
    g.set_results(vec![out], vec![scores_type()]);
    verify(g).unwrap().into_inner()
}

fn the_mask(g: &Graph) -> MaskExpr {
    let masks: Vec<MaskExpr> = g
        .node_ids()
        .into_iter()
        .filter_map(|id| match &g.node(id).op {
            Op::Mask(m) => Some(m.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(masks.len(), 1);
    masks[0].clone()
}

#[test]
fn pass_rewrites_mask_nodes() {
    let mut g = masked_scores(ands(vec![causal(), window(8), window(4)]), &[]);
    let report = MaskAlgebra.run(&mut g).unwrap();
    assert_eq!(report.pass, "mask-algebra");
    assert!(report.changed);
    let g = verify(g).unwrap().into_inner();
    assert_eq!(the_mask(&g), window(4));
    let mut g = g;
    assert!(!MaskAlgebra.run(&mut g).unwrap().changed);
    assert_eq!(the_mask(&g), window(4));
}

#[test]
fn pass_keeps_operands_read() {
    let ids = TensorType::new(DType::I32, vec![Dim::sym("T")]);
    let doc = MaskExpr::Document { ids: 0 };
    let mut g = masked_scores(ands(vec![doc.clone(), causal(), causal()]), &[("ids", ids.clone())]);
    assert!(MaskAlgebra.run(&mut g).unwrap().changed);
    let g = verify(g).unwrap().into_inner();
    assert_eq!(the_mask(&g), and(causal(), doc));

    // Simplifying would leave operand 0 unread: the node keeps its mask.
    let reads = MaskExpr::Lambda(bin(
        ScalarBinary::Gt,
        ScalarExpr::Index { array: ArrayRef::Operand(0), indices: vec![q()] },
        int(0),
    ));
    let original = and(konst(false), reads);
    assert_eq!(simplify(&original), konst(false));
    let mut g = masked_scores(original.clone(), &[("x", ids)]);
    assert!(!MaskAlgebra.run(&mut g).unwrap().changed);
    let g = verify(g).unwrap().into_inner();
    assert_eq!(the_mask(&g), original);
}

#[test]
fn pass_leaves_masks_whose_chain_would_be_too_deep() {
    // 256 distinct conjuncts as a balanced tree (depth 13) become a chain
    // deeper than `MAX_EXPR_DEPTH`: the verifier would reject it.
    let mut level: Vec<MaskExpr> = (0..256).map(|i| kmod(1000 + i, 0)).collect();
    while level.len() > 1 {
        level = level.chunks(2).map(|p| and(p[0].clone(), p[1].clone())).collect();
    }
    let original = level.pop().unwrap();
    let chain = simplify(&original);
    assert!(chain.measure().0 > tdl_ir::mask::MAX_EXPR_DEPTH);
    let mut g = masked_scores(original.clone(), &[]);
    assert!(!MaskAlgebra.run(&mut g).unwrap().changed);
    let g = verify(g).unwrap().into_inner();
    assert_eq!(the_mask(&g), original);
}
