//! The text form: every graph prints and re-parses to itself.
//!
//! Graphs are built with the `Graph` API (types from `infer_type`), checked
//! by the verifier, printed, parsed back, compared structurally and printed
//! again byte for byte. The parser is also fed malformed and random input.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use tdl_ir::infer::infer_type;
use tdl_ir::text::{graphs_equal, parse_graph, parse_module, print_graph, print_module, TextError, MAX_DEPTH};
use tdl_ir::{
    verify, ArrayRef, BinaryOp, ConstValue, DType, Dim, Graph, LambdaVar, MaskExpr, Module, NodeId, Op, ReduceOp,
    ScalarBinary, ScalarExpr, ScalarUnary, TensorType, Type, UnaryOp,
};

// ---------------------------------------------------------------------------
// Building graphs
// ---------------------------------------------------------------------------

/// `"64"` is a constant, anything else a symbol.
fn dim(s: &str) -> Dim {
    s.parse::<i64>().map(Dim::constant).unwrap_or_else(|_| Dim::sym(s))
}

fn tt(dtype: DType, dims: &[&str]) -> TensorType {
    TensorType::new(dtype, dims.iter().map(|s| dim(s)).collect())
}

struct B {
    g: Graph,
}

impl B {
    fn new(name: &str) -> B {
        B { g: Graph::new(name) }
    }

    fn param(&mut self, name: &str, dtype: DType, dims: &[&str]) -> NodeId {
        self.g.add_param(name, tt(dtype, dims), None)
    }

    fn param_ty(&mut self, name: &str, ty: TensorType) -> NodeId {
        self.g.add_param(name, ty, None)
    }

    /// Adds `op` with its type from the shared type rules.
    fn op(&mut self, op: Op, inputs: &[NodeId]) -> NodeId {
        let tys: Vec<Type> = inputs.iter().map(|i| self.g.node(*i).ty.clone()).collect();
        let refs: Vec<&Type> = tys.iter().collect();
        let ty = infer_type(&op, &refs).unwrap_or_else(|e| panic!("{op:?}: {e}"));
        self.g.add_node(op, ty, inputs, None)
    }

    fn named(&mut self, op: Op, inputs: &[NodeId], name: &str) -> NodeId {
        let id = self.op(op, inputs);
        self.g.node_mut(id).name = Some(name.to_string());
        id
    }

    fn constant(&mut self, c: ConstValue) -> NodeId {
        self.op(Op::Constant(c), &[])
    }

    fn mask(&mut self, m: MaskExpr, inputs: &[NodeId]) -> NodeId {
        self.op(Op::Mask(m), inputs)
    }

    fn finish(mut self, results: &[NodeId]) -> Graph {
        let types = results.iter().map(|r| self.g.node(*r).ty.as_tensor().expect("tensor result").clone()).collect();
        self.g.set_results(results.to_vec(), types);
        self.g
    }
}

fn scalar(dtype: DType, v: f64) -> ConstValue {
    ConstValue::scalar(dtype, v)
}

fn array(dtype: DType, shape: &[usize], data: &[f64]) -> ConstValue {
    ConstValue { dtype, shape: shape.to_vec(), data: data.to_vec() }
}

fn var(v: LambdaVar) -> ScalarExpr {
    ScalarExpr::Var(v)
}

fn int(i: i64) -> ScalarExpr {
    ScalarExpr::Int(i)
}

fn flt(f: f64) -> ScalarExpr {
    ScalarExpr::Float(f)
}

fn bin(op: ScalarBinary, a: ScalarExpr, b: ScalarExpr) -> ScalarExpr {
    ScalarExpr::binary(op, a, b)
}

fn un(op: ScalarUnary, a: ScalarExpr) -> ScalarExpr {
    ScalarExpr::Unary(op, Box::new(a))
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

fn lambda(e: ScalarExpr) -> MaskExpr {
    MaskExpr::Lambda(e)
}

/// `q < k`, a boolean lambda body.
fn q_lt_k() -> ScalarExpr {
    bin(ScalarBinary::Lt, var(LambdaVar::Q), var(LambdaVar::K))
}

/// Verifies `g`, prints it, parses the text back and checks the result is
/// structurally equal, verifies, and prints to the same text. Returns the text.
#[track_caller]
fn roundtrip(g: &Graph) -> String {
    if let Err(e) = verify(g.clone()) {
        panic!("the test graph does not verify: {e}\n{}", print_graph(g));
    }
    let text = print_graph(g);
    let parsed = parse_graph(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(graphs_equal(g, &parsed), "not structurally equal after re-parse:\n{text}\n{}", print_graph(&parsed));
    assert!(graphs_equal(&parsed, g));
    assert_eq!(print_graph(&parsed), text);
    if let Err(e) = verify(parsed) {
        panic!("the parsed graph does not verify: {e}\n{text}");
    }
    // The verified graph displays as the text form.
    assert_eq!(verify(g.clone()).unwrap().to_string(), text);
    text
}

/// The `%n = ...` line of the text that contains `needle`.
fn line_with<'a>(text: &'a str, needle: &str) -> &'a str {
    text.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no line with {needle:?} in\n{text}"))
}

// ---------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------

fn causal_attention() -> Graph {
    let mut b = B::new("causal_attention");
    let q = b.param("q", DType::F32, &["H", "T", "64"]);
    let k = b.param("k", DType::F32, &["H", "S", "64"]);
    let v = b.param("v", DType::F32, &["H", "S", "64"]);
    let kt = b.op(Op::Transpose, &[k]);
    let s = b.named(Op::MatMul, &[q, kt], "s");
    let c = b.constant(scalar(DType::F32, 0.125));
    let sc = b.op(Op::Binary(BinaryOp::Mul), &[s, c]);
    let m = b.mask(MaskExpr::Causal, &[]);
    let sm = b.op(Op::Binary(BinaryOp::Add), &[sc, m]);
    let p = b.named(Op::Softmax { axis: 2 }, &[sm], "p");
    let o = b.op(Op::MatMul, &[p, v]);
    b.finish(&[o])
}

#[test]
fn causal_attention_prints_exactly() {
    let text = roundtrip(&causal_attention());
    let expected = "\
graph causal_attention(q: f32[H, T, 64], k: f32[H, S, 64], v: f32[H, S, 64]) -> f32[H, T, 64] {
  %0 = input 0 : f32[H, T, 64]  // q
  %1 = input 1 : f32[H, S, 64]  // k
  %2 = input 2 : f32[H, S, 64]  // v
  %3 = transpose %1 : f32[H, 64, S]
  %4 = matmul %0, %3 : f32[H, T, S]  // s
  %5 = constant 0.125 : f32[]
  %6 = mul %4, %5 : f32[H, T, S]
  %7 = mask causal : mask
  %8 = add %6, %7 : f32[H, T, S]
  %9 = softmax %8 {axis = 2} : f32[H, T, S]  // p
  %10 = matmul %9, %2 : f32[H, T, 64]
  return %10
}
";
    assert_eq!(text, expected);
}

/// One graph holding every `Op` variant, several with more than one set of
/// attributes.
fn every_op() -> Graph {
    let mut b = B::new("every_op");
    let x = b.param("x", DType::F32, &["T", "512"]);
    let g = b.param("g", DType::F32, &["512"]);
    let bias = b.param("bias", DType::F32, &["512"]);
    let q = b.param("q", DType::F32, &["8", "T", "64"]);
    let k = b.param("k", DType::F32, &["2", "S", "64"]);
    let v = b.param("v", DType::F32, &["2", "S", "64"]);
    let cond = b.param("cond", DType::Bool, &["T", "512"]);
    let slopes = b.param("slopes", DType::F32, &["8"]);
    let ids = b.param("ids", DType::I32, &["T"]);
    let xi = b.param("xi", DType::I32, &["T", "512"]);

    let mut last = x;
    for u in UnaryOp::ALL {
        last = b.op(Op::Unary(u), &[last]);
    }
    for u in [UnaryOp::Neg, UnaryOp::Abs, UnaryOp::Relu] {
        b.op(Op::Unary(u), &[xi]);
    }
    for op in BinaryOp::ALL {
        last = b.op(Op::Binary(op), &[last, x]);
        b.op(Op::Binary(op), &[xi, xi]);
    }
    let w = b.op(Op::Transpose, &[x]);
    let mm = b.named(Op::MatMul, &[x, w], "scores");
    for op in [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Mean] {
        for keepdims in [false, true] {
            b.op(Op::Reduce { op, axis: 1, keepdims }, &[mm]);
        }
    }
    b.op(Op::Reduce { op: ReduceOp::Sum, axis: 0, keepdims: false }, &[xi]);
    let sm = b.op(Op::Softmax { axis: 1 }, &[mm]);
    let m = b.mask(MaskExpr::Causal, &[]);
    let masked = b.op(Op::Binary(BinaryOp::Add), &[mm, m]);
    b.op(Op::Binary(BinaryOp::Add), &[m, mm]);
    let r = b.op(Op::Reshape { shape: vec![dim("T"), dim("8"), dim("64")] }, &[x]);
    let pr = b.op(Op::Permute { perm: vec![1, 0, 2] }, &[r]);
    let two_t = Dim::constant(2).checked_mul(&dim("T")).unwrap();
    b.op(Op::Reshape { shape: vec![two_t, dim("256")] }, &[x]);
    b.op(Op::Concat { axis: 0 }, &[x, x]);
    b.op(Op::Concat { axis: 1 }, &[x, last, x]);
    b.op(Op::Concat { axis: 1 }, &[x]);
    b.op(Op::Slice { axis: 1, start: 0, end: 512 }, &[x]);
    b.op(Op::Slice { axis: 0, start: 3, end: 7 }, &[x]);
    let rep = b.op(Op::Repeat { times: 4, axis: 0 }, &[k]);
    b.op(Op::Where, &[cond, x, x]);
    b.op(Op::Where, &[m, mm, sm]);
    let ln = b.op(Op::LayerNorm { eps: 1e-5 }, &[x, g, bias]);
    b.op(Op::RmsNorm { eps: 1e-6 }, &[ln, g]);
    let rq = b.op(Op::Rope { base: 10000.0 }, &[pr]);
    b.op(Op::Rope { base: 500000.5 }, &[q]);
    b.op(Op::Attention { scale: None, masked: false, score: None }, &[q, k, v]);
    b.op(Op::Attention { scale: None, masked: false, score: None }, &[q, rep, rep]);
    let win = b.mask(MaskExpr::Window { w: 256 }, &[]);
    b.op(Op::Attention { scale: Some(0.125), masked: true, score: None }, &[q, k, v, win]);
    // ALiBi: s - slopes[h] * abs(q - k), slopes at operand 4.
    let alibi = bin(
        ScalarBinary::Sub,
        var(LambdaVar::S),
        bin(
            ScalarBinary::Mul,
            ScalarExpr::Index { array: ArrayRef::Operand(4), indices: vec![var(LambdaVar::H)] },
            un(ScalarUnary::Abs, bin(ScalarBinary::Sub, var(LambdaVar::Q), var(LambdaVar::K))),
        ),
    );
    let att = b.named(
        Op::Attention { scale: Some(0.125), masked: true, score: Some(alibi) },
        &[q, k, v, win, slopes],
        "alibi",
    );
    // Soft-capping, unmasked.
    let cap =
        bin(ScalarBinary::Mul, flt(30.0), un(ScalarUnary::Tanh, bin(ScalarBinary::Div, var(LambdaVar::S), flt(30.0))));
    b.op(Op::Attention { scale: None, masked: false, score: Some(cap) }, &[q, k, v]);
    // A score lambda reading operand 3 of an unmasked attention.
    let sc3 = bin(
        ScalarBinary::Add,
        var(LambdaVar::S),
        ScalarExpr::Index { array: ArrayRef::Operand(3), indices: vec![var(LambdaVar::H)] },
    );
    b.op(Op::Attention { scale: Some(f64::NEG_INFINITY), masked: false, score: Some(sc3) }, &[q, k, v, slopes]);
    let doc = b.mask(MaskExpr::Document { ids: 0 }, &[ids]);
    b.op(Op::Binary(BinaryOp::Add), &[masked, doc]);
    b.op(Op::Constant(array(DType::I32, &[3], &[64.0, 128.0, 256.0])), &[]);
    let _ = rq;
    b.finish(&[ln, att, masked])
}

#[test]
fn every_op_variant_round_trips() {
    let g = every_op();
    // The graph really covers every variant of `Op`.
    let samples = [
        Op::Input { index: 0 },
        Op::Constant(scalar(DType::F32, 0.0)),
        Op::Unary(UnaryOp::Neg),
        Op::Binary(BinaryOp::Add),
        Op::MatMul,
        Op::Reduce { op: ReduceOp::Sum, axis: 0, keepdims: false },
        Op::Softmax { axis: 0 },
        Op::Transpose,
        Op::Permute { perm: vec![] },
        Op::Reshape { shape: vec![] },
        Op::Concat { axis: 0 },
        Op::Slice { axis: 0, start: 0, end: 0 },
        Op::Repeat { times: 1, axis: 0 },
        Op::Where,
        Op::LayerNorm { eps: 0.0 },
        Op::RmsNorm { eps: 0.0 },
        Op::Rope { base: 0.0 },
        Op::Attention { scale: None, masked: false, score: None },
        Op::Mask(MaskExpr::Causal),
    ];
    for s in &samples {
        let d = std::mem::discriminant(s);
        assert!(g.node_ids().iter().any(|n| std::mem::discriminant(&g.node(*n).op) == d), "{s:?} not covered");
    }
    let text = roundtrip(&g);
    assert!(text.contains("sum %"), "{text}");
    assert!(line_with(&text, "keepdims = true").contains("{axis = 1, keepdims = true}"));
    assert!(text.contains("{perm = [1, 0, 2]}"));
    assert!(text.contains("{shape = [T, 8, 64]}"));
    assert!(text.contains("{shape = [2*T, 256]}"));
    assert!(text.contains("{axis = 1, start = 0, end = 512}"));
    assert!(text.contains("{times = 4, axis = 0}"));
    assert!(text.contains("{eps = 1e-5}"));
    assert!(text.contains("{eps = 1e-6}"));
    assert!(text.contains("{base = 10000.0}"));
    assert!(text.contains("constant [64, 128, 256] : i32[3]"));
    assert!(text.contains("mask document($0) (%8) : mask"), "{text}");
    let alibi = line_with(&text, "// alibi");
    assert!(
        alibi.contains("{masked = true, scale = 0.125, score = (s, q, k, h) => s - $4[h] * abs(q - k)}"),
        "{alibi}"
    );
    assert!(text.contains("{score = (s, q, k, h) => 30.0 * tanh(s / 30.0)}"), "{text}");
    assert!(text.contains("{scale = -inf, score = (s, q, k, h) => s + $3[h]}"), "{text}");
    // An unmasked attention without scale or score has no attributes.
    assert!(text.lines().any(|l| l.ends_with("= attention %3, %4, %5 : f32[8, T, 64]")), "{text}");
}

/// Scores `f32[H, T, S]` plus one mask node per expression, each added to
/// the scores, the sum of all of them returned.
fn masks_graph(name: &str, masks: Vec<(MaskExpr, Vec<&str>)>) -> Graph {
    let mut b = B::new(name);
    let s = b.param("s", DType::F32, &["4", "T", "S"]);
    let ids = b.param("ids", DType::I32, &["T"]);
    let layout = b.param("layout", DType::Bool, &["8", "8"]);
    let spans = b.param("spans", DType::I32, &["4"]);
    let table = b.param("table", DType::F32, &["T", "S"]);
    let mut acc = s;
    for (m, operands) in masks {
        let inputs: Vec<NodeId> = operands
            .iter()
            .map(|o| match *o {
                "ids" => ids,
                "layout" => layout,
                "spans" => spans,
                "table" => table,
                _ => panic!("{o}"),
            })
            .collect();
        let mk = b.mask(m, &inputs);
        acc = b.op(Op::Binary(BinaryOp::Add), &[acc, mk]);
    }
    b.finish(&[acc])
}

#[test]
fn every_mask_variant_round_trips() {
    let bool_layout = array(DType::Bool, &[2, 2], &[1.0, 0.0, 0.0, 1.0]);
    let masks = vec![
        (MaskExpr::Causal, vec![]),
        (MaskExpr::Local { left: 3, right: 0 }, vec![]),
        (MaskExpr::Local { left: -2, right: i64::MAX }, vec![]),
        (MaskExpr::Window { w: 4096 }, vec![]),
        (MaskExpr::Dilated { w: 8, d: 2 }, vec![]),
        (MaskExpr::Sink { n: 4 }, vec![]),
        (MaskExpr::Strided { stride: 4, offset: 1 }, vec![]),
        (MaskExpr::Strided { stride: 4, offset: 0 }, vec![]),
        (
            MaskExpr::Neighborhood {
                kernel: vec![7, 7],
                grid: vec![64, 64],
                dilation: vec![2, 2],
                causal: vec![false, true],
            },
            vec![],
        ),
        (MaskExpr::Neighborhood { kernel: vec![3], grid: vec![16], dilation: vec![1], causal: vec![false] }, vec![]),
        (MaskExpr::Blocks { layout: ArrayRef::Operand(0), block: [64, 64] }, vec!["layout"]),
        (MaskExpr::Blocks { layout: ArrayRef::Const(bool_layout), block: [128, 64] }, vec![]),
        (MaskExpr::Document { ids: 0 }, vec!["ids"]),
        (
            lambda(bin(
                ScalarBinary::Lt,
                bin(ScalarBinary::Sub, var(LambdaVar::Q), var(LambdaVar::K)),
                ScalarExpr::Index {
                    array: ArrayRef::Const(array(DType::I32, &[2], &[64.0, 128.0])),
                    indices: vec![var(LambdaVar::H)],
                },
            )),
            vec![],
        ),
        (
            lambda(bin(
                ScalarBinary::Lt,
                bin(ScalarBinary::Sub, var(LambdaVar::Q), var(LambdaVar::K)),
                ScalarExpr::Index { array: ArrayRef::Operand(0), indices: vec![var(LambdaVar::H)] },
            )),
            vec!["spans"],
        ),
        (and(MaskExpr::Causal, MaskExpr::Sink { n: 4 }), vec![]),
        (or(MaskExpr::Window { w: 16 }, MaskExpr::Sink { n: 1 }), vec![]),
        (not(MaskExpr::Causal), vec![]),
        (
            and(MaskExpr::Document { ids: 0 }, MaskExpr::Blocks { layout: ArrayRef::Operand(1), block: [2, 2] }),
            vec!["ids", "layout"],
        ),
        (
            lambda(bin(
                ScalarBinary::Gt,
                ScalarExpr::Index { array: ArrayRef::Operand(0), indices: vec![var(LambdaVar::Q), var(LambdaVar::K)] },
                flt(0.5),
            )),
            vec!["table"],
        ),
    ];
    let text = roundtrip(&masks_graph("every_mask", masks));
    for needle in [
        "mask causal : mask",
        "mask local(left = 3, right = 0) : mask",
        "mask local(left = -2, right = 9223372036854775807) : mask",
        "mask window(4096) : mask",
        "mask dilated(8, 2) : mask",
        "mask sink(4) : mask",
        "mask strided(4, offset = 1) : mask",
        "mask neighborhood(kernel = [7, 7], grid = [64, 64], dilation = [2, 2], causal = [false, true]) : mask",
        "mask blocks($0, block = [64, 64]) (%2) : mask",
        "mask blocks([[true, false], [false, true]], block = [128, 64]) : mask",
        "mask document($0) (%1) : mask",
        "mask mask(q, k, h) => q - k < [64, 128][h] : mask",
        "mask mask(q, k, h) => q - k < $0[h] (%3) : mask",
        "mask causal & sink(4) : mask",
        "mask window(16) | sink(1) : mask",
        "mask !causal : mask",
        "mask document($0) & blocks($1, block = [2, 2]) (%1, %2) : mask",
        "mask mask(q, k, h) => $0[q, k] > 0.5 (%4) : mask",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
}

#[test]
fn mask_combinator_precedence() {
    let (a, b, c) = (MaskExpr::Causal, MaskExpr::Sink { n: 4 }, MaskExpr::Window { w: 8 });
    let l = lambda(q_lt_k());
    let cases: Vec<(MaskExpr, &str)> = vec![
        (or(or(a.clone(), b.clone()), c.clone()), "causal | sink(4) | window(8)"),
        (or(a.clone(), or(b.clone(), c.clone())), "causal | (sink(4) | window(8))"),
        (and(and(a.clone(), b.clone()), c.clone()), "causal & sink(4) & window(8)"),
        (and(a.clone(), and(b.clone(), c.clone())), "causal & (sink(4) & window(8))"),
        (or(a.clone(), and(b.clone(), c.clone())), "causal | sink(4) & window(8)"),
        (or(and(a.clone(), b.clone()), c.clone()), "causal & sink(4) | window(8)"),
        (and(or(a.clone(), b.clone()), c.clone()), "(causal | sink(4)) & window(8)"),
        (and(a.clone(), or(b.clone(), c.clone())), "causal & (sink(4) | window(8))"),
        (not(and(a.clone(), b.clone())), "!(causal & sink(4))"),
        (not(or(a.clone(), b.clone())), "!(causal | sink(4))"),
        (and(not(a.clone()), b.clone()), "!causal & sink(4)"),
        (not(not(a.clone())), "!!causal"),
        (and(a.clone(), l.clone()), "causal & (mask(q, k, h) => q < k)"),
        (and(l.clone(), a.clone()), "(mask(q, k, h) => q < k) & causal"),
        (or(l.clone(), l.clone()), "(mask(q, k, h) => q < k) | (mask(q, k, h) => q < k)"),
        (not(l.clone()), "!(mask(q, k, h) => q < k)"),
        (l.clone(), "mask(q, k, h) => q < k"),
    ];
    let exprs: Vec<(MaskExpr, Vec<&str>)> = cases.iter().map(|(m, _)| (m.clone(), vec![])).collect();
    let text = roundtrip(&masks_graph("mask_precedence", exprs));
    for (_, printed) in &cases {
        let line = format!("mask {printed} : mask");
        assert!(text.contains(&line), "missing {line:?} in\n{text}");
    }
}

#[test]
fn every_scalar_variant_and_precedence() {
    use LambdaVar::{H, K, Q, S};
    use ScalarBinary as Bo;
    let (q, k, h) = (var(Q), var(K), var(H));
    let i32_arr = ArrayRef::Const(array(DType::I32, &[3], &[1.0, -2.0, 3.0]));
    let f32_arr = ArrayRef::Const(array(DType::F32, &[2, 2], &[0.5, -0.0, 1e300, f64::INFINITY]));
    let f16_arr = ArrayRef::Const(array(DType::F16, &[2], &[1.0, 2.5]));
    let bf16_arr = ArrayRef::Const(array(DType::BF16, &[1, 1, 1], &[7.0]));
    let bool_arr = ArrayRef::Const(array(DType::Bool, &[2], &[1.0, 0.0]));
    let rank0 = ArrayRef::Const(array(DType::I32, &[], &[5.0]));
    let odd_i32 = ArrayRef::Const(array(DType::I32, &[2], &[0.5, -0.0]));
    let empty = ArrayRef::Const(array(DType::I32, &[0], &[]));
    let idx = |a: &ArrayRef, ix: Vec<ScalarExpr>| ScalarExpr::Index { array: a.clone(), indices: ix };
    let lt = |a: ScalarExpr| bin(Bo::Lt, a, int(0));
    let mut cases: Vec<(ScalarExpr, &str)> = vec![
        (lt(q.clone()), "q < 0"),
        (bin(Bo::Lt, int(-3), flt(-0.0)), "-3 < -0.0"),
        (bin(Bo::Eq, int(i64::MIN), int(i64::MAX)), "-9223372036854775808 == 9223372036854775807"),
        (bin(Bo::Ne, flt(0.1), flt(1e-5)), "0.1 != 1e-5"),
        (bin(Bo::Lt, flt(1e300), flt(f64::INFINITY)), "1e300 < inf"),
        (bin(Bo::Lt, flt(f64::NEG_INFINITY), flt(f64::NAN)), "-inf < nan"),
        (bin(Bo::Lt, flt(f64::from_bits(0x7ff8_0000_0000_0001)), flt(1.0)), "nan(0x7ff8000000000001) < 1.0"),
        (bin(Bo::Lt, flt(-f64::NAN), flt(5e-324)), "nan(0xfff8000000000000) < 5e-324"),
        (bin(Bo::Eq, ScalarExpr::Bool(true), ScalarExpr::Bool(false)), "true == false"),
        (lt(ScalarExpr::Sym("T".into())), "T < 0"),
        (lt(ScalarExpr::Sym("q".into())), "sym(q) < 0"),
        (lt(ScalarExpr::Sym("abs".into())), "sym(abs) < 0"),
        (lt(ScalarExpr::Sym("a b".into())), "sym(\"a b\") < 0"),
        (lt(ScalarExpr::Sym("causal".into())), "causal < 0"),
        (lt(idx(&i32_arr, vec![h.clone()])), "[1, -2, 3][h] < 0"),
        (lt(idx(&f32_arr, vec![q.clone(), k.clone()])), "[[0.5, -0.0], [1e300, inf]][q, k] < 0"),
        (lt(idx(&f16_arr, vec![h.clone()])), "f16[2] [1.0, 2.5][h] < 0"),
        (lt(idx(&bf16_arr, vec![q.clone(), k.clone(), h.clone()])), "bf16[1, 1, 1] [[[7.0]]][q, k, h] < 0"),
        (lt(idx(&bool_arr, vec![h.clone()])), "[true, false][h] < 0"),
        (lt(idx(&rank0, vec![])), "i32[] 5[] < 0"),
        (lt(idx(&odd_i32, vec![h.clone()])), "i32[2] [0.5, -0.0][h] < 0"),
        (lt(idx(&empty, vec![h.clone()])), "i32[0] [][h] < 0"),
        (
            lt(idx(&i32_arr, vec![bin(Bo::Mod, bin(Bo::Add, q.clone(), k.clone()), int(3))])),
            "[1, -2, 3][(q + k) % 3] < 0",
        ),
        (lt(un(ScalarUnary::Neg, q.clone())), "-(q) < 0"),
        (lt(un(ScalarUnary::Neg, int(3))), "-(3) < 0"),
        (lt(un(ScalarUnary::Neg, int(-3))), "-(-3) < 0"),
        (un(ScalarUnary::Not, lt(q.clone())), "!(q < 0)"),
        (lt(un(ScalarUnary::Abs, q.clone())), "abs(q) < 0"),
        (lt(un(ScalarUnary::Exp, q.clone())), "exp(q) < 0"),
        (lt(un(ScalarUnary::Log, q.clone())), "log(q) < 0"),
        (lt(un(ScalarUnary::Sqrt, q.clone())), "sqrt(q) < 0"),
        (lt(un(ScalarUnary::Tanh, q.clone())), "tanh(q) < 0"),
        (lt(un(ScalarUnary::Sigmoid, q.clone())), "sigmoid(q) < 0"),
        (lt(bin(Bo::Min, q.clone(), k.clone())), "min(q, k) < 0"),
        (lt(bin(Bo::Max, q.clone(), bin(Bo::Add, k.clone(), int(1)))), "max(q, k + 1) < 0"),
        (
            ScalarExpr::Select(Box::new(lt(q.clone())), Box::new(ScalarExpr::Bool(true)), Box::new(lt(k.clone()))),
            "where(q < 0, true, k < 0)",
        ),
        // Precedence and associativity.
        (lt(bin(Bo::Sub, bin(Bo::Sub, q.clone(), k.clone()), h.clone())), "q - k - h < 0"),
        (lt(bin(Bo::Sub, q.clone(), bin(Bo::Sub, k.clone(), h.clone()))), "q - (k - h) < 0"),
        (lt(bin(Bo::Div, bin(Bo::Div, q.clone(), k.clone()), h.clone())), "q / k / h < 0"),
        (lt(bin(Bo::Div, q.clone(), bin(Bo::Mul, k.clone(), h.clone()))), "q / (k * h) < 0"),
        (lt(bin(Bo::Mul, bin(Bo::Add, q.clone(), k.clone()), h.clone())), "(q + k) * h < 0"),
        (lt(bin(Bo::Add, q.clone(), bin(Bo::Mul, k.clone(), h.clone()))), "q + k * h < 0"),
        (lt(bin(Bo::Sub, q.clone(), int(-3))), "q - -3 < 0"),
        (lt(bin(Bo::Mul, int(-3), q.clone())), "-3 * q < 0"),
        (lt(bin(Bo::Sub, flt(f64::NEG_INFINITY), q.clone())), "-inf - q < 0"),
        (lt(un(ScalarUnary::Neg, bin(Bo::Sub, q.clone(), k.clone()))), "-(q - k) < 0"),
        (bin(Bo::Or, lt(q.clone()), bin(Bo::And, lt(k.clone()), lt(h.clone()))), "q < 0 | k < 0 & h < 0"),
        (bin(Bo::And, bin(Bo::Or, lt(q.clone()), lt(k.clone())), lt(h.clone())), "(q < 0 | k < 0) & h < 0"),
        (bin(Bo::Or, bin(Bo::And, lt(q.clone()), lt(k.clone())), lt(h.clone())), "q < 0 & k < 0 | h < 0"),
        (un(ScalarUnary::Not, bin(Bo::And, lt(q.clone()), lt(k.clone()))), "!(q < 0 & k < 0)"),
        (bin(Bo::Eq, lt(q.clone()), lt(k.clone())), "(q < 0) == (k < 0)"),
        (bin(Bo::Ne, bin(Bo::Eq, q.clone(), k.clone()), ScalarExpr::Bool(true)), "(q == k) != true"),
        (bin(Bo::Le, q.clone(), k.clone()), "q <= k"),
        (bin(Bo::Ge, q.clone(), k.clone()), "q >= k"),
        (bin(Bo::Gt, q.clone(), k.clone()), "q > k"),
        (
            bin(
                Bo::And,
                bin(Bo::Lt, q.clone(), k.clone()),
                bin(Bo::Or, ScalarExpr::Bool(false), ScalarExpr::Bool(true)),
            ),
            "q < k & (false | true)",
        ),
    ];
    // Every `ScalarBinary` and `ScalarUnary`, every lambda variable but `s`
    // (which only score modifiers bind; see below).
    let all_bin = [
        Bo::Add,
        Bo::Sub,
        Bo::Mul,
        Bo::Div,
        Bo::Mod,
        Bo::Min,
        Bo::Max,
        Bo::Lt,
        Bo::Le,
        Bo::Gt,
        Bo::Ge,
        Bo::Eq,
        Bo::Ne,
        Bo::And,
        Bo::Or,
    ];
    let printed = |e: &ScalarExpr| format!("{e:?}");
    for op in all_bin {
        assert!(cases.iter().any(|(e, _)| printed(e).contains(&format!("{op:?}"))), "{op:?} not covered");
    }
    cases.push((lt(bin(Bo::Mod, q.clone(), k.clone())), "q % k < 0"));
    let masks: Vec<(MaskExpr, Vec<&str>)> = cases.iter().map(|(e, _)| (lambda(e.clone()), vec![])).collect();
    let text = roundtrip(&masks_graph("scalars", masks));
    for (_, p) in &cases {
        let line = format!("mask mask(q, k, h) => {p} : mask");
        assert!(text.contains(&line), "missing {line:?} in\n{text}");
    }

    // `s`, in a score modifier.
    let mut b = B::new("score");
    let qq = b.param("q", DType::F32, &["2", "T", "16"]);
    let kk = b.param("k", DType::F32, &["2", "S", "16"]);
    let vv = b.param("v", DType::F32, &["2", "S", "16"]);
    let e = ScalarExpr::Select(
        Box::new(bin(Bo::Gt, var(S), flt(30.0))),
        Box::new(flt(30.0)),
        Box::new(bin(Bo::Mul, var(S), un(ScalarUnary::Sigmoid, var(S)))),
    );
    let a = b.op(Op::Attention { scale: Some(1.0), masked: false, score: Some(e) }, &[qq, kk, vv]);
    let text = roundtrip(&b.finish(&[a]));
    assert!(text.contains("{scale = 1.0, score = (s, q, k, h) => where(s > 30.0, 30.0, s * sigmoid(s))}"), "{text}");
}

#[test]
fn multi_result_graphs() {
    let mut b = B::new("two");
    let x = b.param("x", DType::F32, &["T", "D"]);
    let e = b.op(Op::Unary(UnaryOp::Exp), &[x]);
    let s = b.op(Op::Reduce { op: ReduceOp::Sum, axis: 1, keepdims: false }, &[e]);
    let text = roundtrip(&b.finish(&[e, s]));
    assert!(text.starts_with("graph two(x: f32[T, D]) -> (f32[T, D], f32[T]) {\n"), "{text}");
    assert!(text.contains("  return %1, %2\n"), "{text}");

    // Three results, one of them a parameter, one repeated.
    let mut b = B::new("three");
    let x = b.param("x", DType::F32, &["4"]);
    let n = b.op(Op::Unary(UnaryOp::Neg), &[x]);
    let text = roundtrip(&b.finish(&[n, x, n]));
    assert!(text.contains("-> (f32[4], f32[4], f32[4])"), "{text}");
    assert!(text.contains("  return %1, %0, %1\n"), "{text}");
}

#[test]
fn constants_of_every_dtype_and_rank() {
    let mut b = B::new("constants");
    let mut expect: Vec<String> = Vec::new();
    for dtype in DType::ALL {
        let val = |i: usize| -> f64 {
            match dtype {
                DType::Bool => (i % 2) as f64,
                DType::I32 => i as f64 - 3.0,
                _ => i as f64 * 0.5 - 1.0,
            }
        };
        for shape in [vec![], vec![3], vec![2, 3], vec![2, 1, 2], vec![0], vec![2, 0], vec![0, 3], vec![1, 0, 5]] {
            let n: usize = shape.iter().product();
            let data: Vec<f64> = (0..n).map(val).collect();
            b.constant(array(dtype, &shape, &data));
        }
    }
    let floats = [
        0.1,
        1e-5,
        1e300,
        -0.0,
        0.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        f64::from_bits(0x7ff0_0000_0000_0001),
        5e-324,
        f64::MAX,
        f64::MIN,
        f64::MIN_POSITIVE,
        1e16,
        123456789.125,
        -2.5e-7,
    ];
    for f in floats {
        b.constant(scalar(DType::F32, f));
    }
    b.constant(array(DType::F32, &[floats.len()], &floats));
    b.constant(array(DType::F16, &[2, 2], &[0.1, -0.0, f64::INFINITY, f64::NAN]));
    b.constant(array(DType::I32, &[2], &[i32::MIN as f64, i32::MAX as f64]));
    b.constant(array(DType::I32, &[3], &[64.0, 128.0, 256.0]));
    expect.push("constant [64, 128, 256] : i32[3]".into());
    b.constant(array(DType::Bool, &[2, 2], &[1.0, 0.0, 0.0, 1.0]));
    expect.push("constant [[true, false], [false, true]] : bool[2, 2]".into());
    // Values the element type cannot hold exactly still round-trip.
    b.constant(array(DType::I32, &[3], &[0.5, -0.0, 1e20]));
    expect.push("constant [0.5, -0.0, 1e20] : i32[3]".into());
    b.constant(array(DType::Bool, &[2], &[2.0, -0.0]));
    expect.push("constant [2.0, -0.0] : bool[2]".into());
    b.constant(scalar(DType::I32, -7.0));
    expect.push("constant -7 : i32[]".into());
    b.constant(scalar(DType::Bool, 1.0));
    expect.push("constant true : bool[]".into());
    let last = b.constant(scalar(DType::F32, -0.0));
    expect.push("constant -0.0 : f32[]".into());
    for line in [
        "constant 0.1 : f32[]",
        "constant 1e-5 : f32[]",
        "constant 1e300 : f32[]",
        "constant inf : f32[]",
        "constant -inf : f32[]",
        "constant nan : f32[]",
        "constant nan(0x7ff0000000000001) : f32[]",
        "constant 5e-324 : f32[]",
        "constant [] : f32[0]",
        "constant [] : i32[2, 0]",
        "constant [] : bool[1, 0, 5]",
        "constant [[[-1.0, -0.5]], [[0.0, 0.5]]] : bf16[2, 1, 2]",
        "constant [[-1.0, -0.5, 0.0], [0.5, 1.0, 1.5]] : f16[2, 3]",
        "constant [[-3, -2, -1], [0, 1, 2]] : i32[2, 3]",
        "constant [false, true, false] : bool[3]",
        "constant [[0.1, -0.0], [inf, nan]] : f16[2, 2]",
        "constant [-2147483648, 2147483647] : i32[2]",
    ] {
        expect.push(line.into());
    }
    let text = roundtrip(&b.finish(&[last]));
    for e in &expect {
        assert!(text.contains(&format!("= {e}\n")), "missing {e:?} in\n{text}");
    }
}

#[test]
fn symbolic_dimensions_round_trip() {
    let t = Dim::sym("T");
    let h = Dim::sym("H");
    let two_ht = Dim::constant(2).checked_mul(&h).unwrap().checked_mul(&t).unwrap();
    let poly = two_ht.checked_add(&t).unwrap().checked_sub(&Dim::constant(1)).unwrap();
    assert_eq!(poly.to_string(), "2*H*T + T - 1");
    let neg = Dim::constant(-3).checked_mul(&t).unwrap().checked_add(&Dim::constant(i64::MIN)).unwrap();
    let big = Dim::constant(i64::MIN);
    let mut b = B::new("dims");
    let x = b.param_ty("x", TensorType::new(DType::F32, vec![poly.clone(), Dim::constant(0), neg.clone(), big]));
    let y = b.param_ty("y", TensorType::new(DType::F32, vec![h.clone(), t.clone(), Dim::constant(64)]));
    let r = b.op(Op::Reshape { shape: vec![h.checked_mul(&t).unwrap(), Dim::constant(64)] }, &[y]);
    let text = roundtrip(&b.finish(&[r, x]));
    assert!(text.contains("x: f32[2*H*T + T - 1, 0, -3*T - 9223372036854775808, -9223372036854775808]"), "{text}");
    assert!(text.contains("{shape = [H*T, 64]}"), "{text}");
}

#[test]
fn names_that_are_not_identifiers_are_quoted() {
    let mut b = B::new("my graph");
    let x = b.param("x y", DType::F32, &["4"]);
    let e = b.named(Op::Unary(UnaryOp::Exp), &[x], "two words");
    let f = b.named(Op::Unary(UnaryOp::Exp), &[e], " padded ");
    let g = b.named(Op::Unary(UnaryOp::Exp), &[f], "line\nbreak \"quoted\" \u{1b}");
    let h = b.named(Op::Unary(UnaryOp::Exp), &[g], "");
    let i = b.named(Op::Unary(UnaryOp::Exp), &[h], "\"leading quote");
    let j = b.named(Op::Unary(UnaryOp::Exp), &[i], "a // b");
    let k = b.named(Op::Unary(UnaryOp::Exp), &[j], "ünïcödé");
    let text = roundtrip(&b.finish(&[k]));
    assert!(text.starts_with("graph \"my graph\"(\"x y\": f32[4]) -> f32[4] {\n"), "{text}");
    assert!(text.contains("%0 = input 0 : f32[4]  // x y\n"), "{text}");
    assert!(text.contains("  // two words\n"));
    assert!(text.contains("  // \" padded \"\n"));
    assert!(text.contains("  // \"line\\nbreak \\\"quoted\\\" \\u{1b}\"\n"), "{text}");
    assert!(text.contains("  // \"\"\n"));
    assert!(text.contains("  // a // b\n"));
    assert!(text.contains("  // ünïcödé\n"));
}

#[test]
fn graphs_equal_is_structural() {
    let a = causal_attention();
    // Same graph, independent nodes added in another order.
    let mut b = B::new("causal_attention");
    let m = b.mask(MaskExpr::Causal, &[]);
    let c = b.constant(scalar(DType::F32, 0.125));
    let q = b.param("q", DType::F32, &["H", "T", "64"]);
    let k = b.param("k", DType::F32, &["H", "S", "64"]);
    let v = b.param("v", DType::F32, &["H", "S", "64"]);
    let kt = b.op(Op::Transpose, &[k]);
    let s = b.named(Op::MatMul, &[q, kt], "s");
    let sc = b.op(Op::Binary(BinaryOp::Mul), &[s, c]);
    let sm = b.op(Op::Binary(BinaryOp::Add), &[sc, m]);
    let p = b.named(Op::Softmax { axis: 2 }, &[sm], "p");
    let o = b.op(Op::MatMul, &[p, v]);
    let reordered = b.finish(&[o]);
    assert!(graphs_equal(&a, &reordered));
    assert_ne!(print_graph(&a), print_graph(&reordered));
    roundtrip(&reordered);

    // Differences that count.
    let mut other = a.clone();
    let id = other.node_ids().into_iter().find(|n| matches!(other.node(*n).op, Op::Constant(_))).unwrap();
    other.node_mut(id).op = Op::Constant(scalar(DType::F32, 0.25));
    assert!(!graphs_equal(&a, &other));
    let mut named = a.clone();
    named.node_mut(id).name = Some("c".into());
    assert!(!graphs_equal(&a, &named));
    let mut renamed = a.clone();
    renamed.name = "other".into();
    assert!(!graphs_equal(&a, &renamed));
    // Floats compare bitwise: 0.0 is not -0.0, NaN equals itself.
    let zero = |v: f64| {
        let mut b = B::new("z");
        let c = b.constant(scalar(DType::F32, v));
        b.finish(&[c])
    };
    assert!(!graphs_equal(&zero(0.0), &zero(-0.0)));
    assert!(graphs_equal(&zero(f64::NAN), &zero(f64::NAN)));
    // Operand order counts.
    let sub = |swap: bool| {
        let mut b = B::new("sub");
        let x = b.param("x", DType::F32, &["4"]);
        let y = b.param("y", DType::F32, &["4"]);
        let operands = if swap { [y, x] } else { [x, y] };
        let d = b.op(Op::Binary(BinaryOp::Sub), &operands);
        b.finish(&[d])
    };
    assert!(!graphs_equal(&sub(false), &sub(true)));
    assert!(graphs_equal(&sub(true), &sub(true)));
    // Spans are ignored.
    let mut spanned = a.clone();
    spanned.span = Some(tdl_ir::Span::new(1, 2));
    assert!(graphs_equal(&a, &spanned));
    // Dead nodes count too.
    let mut dead = a.clone();
    dead.add_node(Op::Mask(MaskExpr::Causal), Type::Mask, &[], None);
    assert!(!graphs_equal(&a, &dead));
    roundtrip(&dead);
}

#[test]
fn modules_round_trip() {
    let m = Module { graphs: vec![causal_attention(), every_op()] };
    let text = print_module(&m);
    assert!(text.contains("}\n\ngraph every_op("), "graphs are separated by a blank line");
    let parsed = parse_module(&text).unwrap();
    assert_eq!(parsed.graphs.len(), 2);
    for (a, b) in m.graphs.iter().zip(&parsed.graphs) {
        assert!(graphs_equal(a, b));
    }
    assert_eq!(print_module(&parsed), text);
    assert_eq!(parse_module("").unwrap().graphs.len(), 0);
    assert_eq!(parse_module("  // only a comment\n").unwrap().graphs.len(), 0);
    assert_eq!(print_module(&Module::default()), "");
    let e = parse_graph(&text).unwrap_err();
    assert!(e.message.contains("end of the input"), "{e}");
    assert!(parse_graph("").is_err());
}

#[test]
fn hand_written_text_parses_field_by_field() {
    let text = r#"
// A hand-written graph: value names need not be numbers, spacing is free,
// comments on their own line are ignored.
graph "gqa window"(q: f32[32, T, 128], k: f32[8, T, 128],
                   v: f32[8, T, 128], ids: i32[T]) -> (f32[32, T, 128], f32[32, T]) {
  %q = input 0 : f32[32, T, 128]    //   query
  %k = input 1 : f32[8, T, 128]
  // a comment between nodes
  %v = input 2 : f32[8, T, 128]  // "v\tv"
  %ids = input 3 : i32[T]
  %kk = repeat %k {axis = 0, times = 4} : f32[32, T, 128]
  %m = mask window(4096) & !(document($0) | mask(q, k, h) => q - k >= [1, 2][h % 2] * T) (%ids) : mask
  %c = constant [[1, 2], [3, -4]] : f32[2, 2]
  %e = constant f16[] 3 : f32[]
  %a = attention %q, %kk, %kk, %m {scale = 0.0884, masked = true} : f32[32, T, 128]  // out
  %s = sum %a {axis = 2} : f32[32, T]
  return %a, %s
}
"#;
    let g = parse_graph(text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(g.name, "gqa window");
    let params: Vec<(&str, String)> = g.params().iter().map(|p| (p.name.as_str(), p.ty.to_string())).collect();
    assert_eq!(
        params,
        vec![
            ("q", "f32[32, T, 128]".to_string()),
            ("k", "f32[8, T, 128]".to_string()),
            ("v", "f32[8, T, 128]".to_string()),
            ("ids", "i32[T]".to_string()),
        ]
    );
    assert_eq!(g.result_types(), &[tt(DType::F32, &["32", "T", "128"]), tt(DType::F32, &["32", "T"])]);
    let order = g.topo_order().unwrap();
    assert_eq!(order.len(), 10);
    let node = |i: usize| g.node(order[i]);
    assert_eq!(node(0).name.as_deref(), Some("query"));
    assert_eq!(node(1).name, None, "no comment, no name");
    assert_eq!(node(2).name.as_deref(), Some("v\tv"));
    for (i, p) in g.params().iter().enumerate() {
        assert_eq!(p.node, order[i]);
        assert_eq!(g.node(p.node).op, Op::Input { index: i });
    }
    assert_eq!(node(4).op, Op::Repeat { times: 4, axis: 0 });
    assert_eq!(g.inputs(order[4]), vec![order[1]]);
    assert_eq!(node(4).ty, Type::Tensor(tt(DType::F32, &["32", "T", "128"])));
    let expect_mask = and(
        MaskExpr::Window { w: 4096 },
        not(or(
            MaskExpr::Document { ids: 0 },
            lambda(bin(
                ScalarBinary::Ge,
                bin(ScalarBinary::Sub, var(LambdaVar::Q), var(LambdaVar::K)),
                bin(
                    ScalarBinary::Mul,
                    ScalarExpr::Index {
                        array: ArrayRef::Const(array(DType::I32, &[2], &[1.0, 2.0])),
                        indices: vec![bin(ScalarBinary::Mod, var(LambdaVar::H), int(2))],
                    },
                    ScalarExpr::Sym("T".into()),
                ),
            )),
        )),
    );
    assert_eq!(node(5).op, Op::Mask(expect_mask));
    assert_eq!(node(5).ty, Type::Mask);
    assert_eq!(g.inputs(order[5]), vec![order[3]]);
    assert_eq!(node(6).op, Op::Constant(array(DType::F32, &[2, 2], &[1.0, 2.0, 3.0, -4.0])));
    assert_eq!(node(7).op, Op::Constant(scalar(DType::F16, 3.0)));
    assert_eq!(node(7).ty, Type::Tensor(tt(DType::F32, &[])), "the printed type is kept, not re-inferred");
    assert_eq!(node(8).op, Op::Attention { scale: Some(0.0884), masked: true, score: None });
    assert_eq!(node(8).name.as_deref(), Some("out"));
    assert_eq!(g.inputs(order[8]), vec![order[0], order[4], order[4], order[5]]);
    assert_eq!(node(9).op, Op::Reduce { op: ReduceOp::Sum, axis: 2, keepdims: false });
    assert_eq!(g.results(), &[order[8], order[9]]);
    // The verifier catches the mistyped constant (f16 values, f32 type).
    let err = verify(g.clone()).unwrap_err();
    assert!(err.message.contains("constant"), "{err}");
    // The printed form keeps the constant's own type.
    let printed = print_graph(&g);
    assert!(printed.contains("%7 = constant f16[] 3.0 : f32[]"), "{printed}");
    let again = parse_graph(&printed).unwrap();
    assert!(graphs_equal(&g, &again));
    assert_eq!(print_graph(&again), printed);
}

#[test]
fn printing_never_panics_on_invalid_graphs() {
    let mut g = Graph::new("bad");
    let x = g.add_param("x", tt(DType::F32, &["4"]), None);
    // A constant whose data disagrees with its shape.
    let c = g.add_node(
        Op::Constant(array(DType::F32, &[2, 3], &[1.0])),
        Type::Tensor(tt(DType::F32, &["2", "3"])),
        &[],
        None,
    );
    // A node whose type disagrees with its operator.
    let n = g.add_node(Op::Unary(UnaryOp::Exp), Type::Mask, &[x], None);
    let gone = g.add_node(Op::MatMul, Type::Mask, &[], None);
    g.set_results(vec![n, c], vec![]);
    assert_eq!(g.remove_dead_nodes(), 1);
    let mut g2 = g.clone();
    g2.set_results(vec![n, c, gone], vec![]);
    let text = print_graph(&g2);
    assert!(text.contains("%missing_n"), "{text}");
    assert!(text.contains("constant f32[2, 3] [1.0] : f32[2, 3]"), "{text}");
    let e = parse_graph(&text).unwrap_err();
    assert!(e.message.contains("element"), "{e}");
    // Without the bad constant and the missing result, the invalid graph
    // still round-trips, so the verifier sees exactly what was printed.
    let mut g3 = Graph::new("bad");
    let x = g3.add_param("x", tt(DType::F32, &["4"]), None);
    let n = g3.add_node(Op::Unary(UnaryOp::Exp), Type::Mask, &[x], None);
    let m = g3.add_node(Op::MatMul, Type::Tensor(tt(DType::I32, &[])), &[], None);
    g3.set_results(vec![n, m], vec![tt(DType::Bool, &["1"])]);
    let text = print_graph(&g3);
    let back = parse_graph(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(graphs_equal(&g3, &back));
    assert_eq!(print_graph(&back), text);
    assert!(verify(back).is_err());
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

fn err(text: &str) -> TextError {
    match parse_module(text) {
        Ok(m) => panic!("parsed, expected an error:\n{text}\n{}", print_module(&m)),
        Err(e) => e,
    }
}

const HEADER: &str = "graph g(x: f32[4]) -> f32[4] {\n  %0 = input 0 : f32[4]\n";

#[test]
fn errors_carry_line_and_column() {
    let cases: Vec<(String, usize, usize, &str)> = vec![
        ("graf g() -> f32[] {}".into(), 1, 1, "expected `graph`"),
        ("graph g(x: f33[4]) -> f32[4] {".into(), 1, 12, "unknown element type `f33`"),
        ("graph g(x: f32[4]) -> mask {".into(), 1, 23, "unknown element type `mask`"),
        (format!("{HEADER}  %1 = exp %2 : f32[4]\n  return %1\n}}"), 3, 12, "`%2` is not defined"),
        (format!("{HEADER}  %0 = exp %0 : f32[4]\n  return %0\n}}"), 3, 3, "defined twice"),
        (format!("{HEADER}  %1 = frobnicate %0 : f32[4]\n  return %1\n}}"), 3, 8, "unknown operator `frobnicate`"),
        (format!("{HEADER}  %1 = softmax %0 : f32[4]\n  return %1\n}}"), 3, 8, "missing attribute `axis`"),
        (format!("{HEADER}  %1 = softmax %0 {{axis = 0, axis = 0}} : f32[4]\n  return %1\n}}"), 3, 30, "given twice"),
        (format!("{HEADER}  %1 = softmax %0 {{axes = 0}} : f32[4]\n  return %1\n}}"), 3, 20, "unknown attribute `axes`"),
        (format!("{HEADER}  %1 = exp %0 : f32[4]\n  return %1\n"), 5, 1, "expected `}`"),
        (format!("{HEADER}  %1 = constant [1, 2] : f32[3]\n  return %0\n}}"), 3, 17, "expected 3 element(s)"),
        (format!("{HEADER}  %1 = constant [[1], 2] : f32[2, 1]\n  return %0\n}}"), 3, 23, "expected a list"),
        (format!("{HEADER}  %1 = constant 99999999999999999999 : i32[]\n  return %0\n}}"), 3, 17, "64-bit"),
        (format!("{HEADER}  %1 = constant 1 : f32[T]\n  return %0\n}}"), 3, 21, "constant dimensions"),
        (format!("{HEADER}  %1 = constant 1e999 : f32[]\n  return %0\n}}"), 3, 17, "out of range"),
        (format!("{HEADER}  %1 = constant true : f32[]\n  return %0\n}}"), 3, 17, "boolean"),
        (format!("{HEADER}  %1 = mask blob : mask\n  return %0\n}}"), 3, 13, "unknown mask `blob`"),
        (format!("{HEADER}  %1 = mask mask(q, k, h) => q < k < 1 : mask\n  return %0\n}}"), 3, 36, "do not chain"),
        (format!("{HEADER}  %1 = mask mask(q, k, h) => foo(q) : mask\n  return %0\n}}"), 3, 30, "unknown function `foo`"),
        (format!("{HEADER}  %1 = mask mask(q, k, h) => min(q) : mask\n  return %0\n}}"), 3, 30, "takes 2 argument(s)"),
        (format!("{HEADER}  %1 = mask mask(q, k, h) => q %2 : mask\n  return %0\n}}"), 3, 32, "with a space"),
        (format!("{HEADER}  %1 = mask mask(q, k) => q : mask\n  return %0\n}}"), 3, 22, "expected `,`"),
        (format!("{HEADER}  %1 = mask blocks($0, block = [1]) (%0) : mask\n  return %0\n}}"), 3, 32, "two sizes"),
        (format!("{HEADER}  %1 = mask mask(q, k, h) => [][q] : mask\n  return %0\n}}"), 3, 30, "empty array"),
        (format!("{HEADER}  %1 = mask mask(q, k, h) => [true, 1][q] : mask\n  return %0\n}}"), 3, 30, "mixes"),
        ("graph g(x: f32[4]) -> f32[4] {\n  return\n}".into(), 2, 3, "parameter 0 (`x`) has no `input 0` node"),
        (format!("{HEADER}  %1 = input 1 : f32[4]\n  return %0\n}}"), 3, 8, "more `input` nodes"),
        (format!("{HEADER}  %1 = exp %0 : f32[4]  // \"unterminated\n  return %0\n}}"), 3, 25, "unterminated"),
        (format!("{HEADER}  %1 = exp %0 : f32[4] # no\n  return %0\n}}"), 3, 24, "unexpected character '#'"),
        (format!("{HEADER}  %1 = exp %0 : f32[12abc]\n  return %0\n}}"), 3, 21, "malformed number"),
        (format!("{HEADER}  %1 = exp %0 : f32[T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T*T]\n  return %0\n}}"), 3, 21, "64-bit"),
        (format!("{HEADER}  %1 = exp %0 : f32[9223372036854775807 + 1]\n  return %0\n}}"), 3, 21, "64-bit"),
        (format!("{HEADER}  %1 = exp %0 : f32[4]\n  return %0\n}}\ngarbage"), 6, 1, "expected `graph`"),
        ("graph g() -> f32[] {\n  %0 = constant nan(0x1) : f32[]\n  return %0\n}".into(), 2, 21, "not a NaN"),
        ("graph g() -> f32[] {\n  %0 = constant \"s\" : f32[]\n  return %0\n}".into(), 2, 17, "expected a literal"),
        ("graph g() -> f32[] {\n  %0 = constant 1 : f32[]  // \"a\" b\n  return %0\n}".into(), 2, 28, "text after"),
        ("graph g() -> f32[] {\n  %0 = input 99999999999999999999 : f32[]\n  return %0\n}".into(), 2, 14, "64-bit"),
        ("graph g() -> f32[] {\n  %0 = mask document($99999999999999999999) : mask\n  return %0\n}".into(), 2, 22, "64-bit"),
        ("graph g() -> f32[] {\n  %0 = mask mask(q, k, h) => q < 99999999999999999999 : mask\n  return %0\n}".into(), 2, 34, "64-bit"),
        ("graph g() -> f32[] {\n  %0 = mask mask(q, k, h) => q < -99999999999999999999 : mask\n  return %0\n}".into(), 2, 35, "64-bit"),
        ("graph g() -> f32[] {\n  %0 = mask local(left = 1) : mask\n  return %0\n}".into(), 2, 13, "missing attribute `right`"),
        ("graph \"a\\q\"() -> f32[] {}".into(), 1, 9, "unknown escape"),
        ("graph g() -> f32[] {\n  %0 = mask mask(q, k, h) => q < T() : mask\n  return %0\n}".into(), 2, 34, "unknown function `T`"),
        ("graph g() -> f32[] {\n  %0 = mask mask(q, k, h) => q < T (%9) : mask\n  return %0\n}".into(), 2, 37, "`%9` is not defined"),
    ];
    let mut bad = Vec::new();
    for (text, line, column, msg) in cases {
        let e = err(&text);
        if !(e.line == line && e.column == column && e.message.contains(msg)) {
            bad.push(format!("for\n{text}\nexpected {line}:{column}: ...{msg}..., got {e}"));
        }
        assert_eq!(e.to_string(), format!("{}:{}: {}", e.line, e.column, e.message));
    }
    assert!(bad.is_empty(), "{}", bad.join("\n\n"));
}

/// Runs `f`, checking it finishes within a generous bound.
fn quickly<T>(f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let r = f();
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
    r
}

fn in_lambda(body: &str) -> String {
    format!("graph g() -> f32[] {{\n  %0 = mask mask(q, k, h) => {body} : mask\n  return %0\n}}\n")
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let n = 100_000;
    let deep = [
        in_lambda(&format!("{}q{}", "(".repeat(n), ")".repeat(n))),
        in_lambda(&format!("{}q", "!".repeat(n))),
        in_lambda(&format!("{}q", "- ".repeat(n))),
        in_lambda(&format!("{}q", "-(".repeat(n))),
        in_lambda(&format!("{}q{}", "abs(".repeat(n), ")".repeat(n))),
        in_lambda(&format!("{}q{}", "$0[".repeat(n), "]".repeat(n))),
        in_lambda(&format!("q{}", " + q".repeat(n))),
        in_lambda(&format!("q{}", " | q".repeat(n))),
        in_lambda(&format!("{}0{}", "[".repeat(n), "]".repeat(n))),
        format!("graph g() -> f32[] {{\n  %0 = mask {}causal : mask\n  return %0\n}}\n", "!".repeat(n)),
        format!(
            "graph g() -> f32[] {{\n  %0 = mask {}causal{} : mask\n  return %0\n}}\n",
            "(".repeat(n),
            ")".repeat(n)
        ),
        format!("graph g() -> f32[] {{\n  %0 = mask causal{} : mask\n  return %0\n}}\n", " & causal".repeat(n)),
        format!(
            "graph g() -> f32[] {{\n  %0 = constant {}1{} : f32[]\n  return %0\n}}\n",
            "[".repeat(n),
            "]".repeat(n)
        ),
    ];
    for text in &deep {
        let e = quickly(|| parse_graph(text)).unwrap_err();
        assert!(e.message.contains("deeper than"), "{e}");
    }
    // Up to the limit is fine, and prints back to text that parses.
    let ok = [
        in_lambda(&format!("{}q{} < k", "(".repeat(MAX_DEPTH - 2), ")".repeat(MAX_DEPTH - 2))),
        // The lambda itself is one level of the mask's tree.
        in_lambda(&format!("{}q", "!".repeat(MAX_DEPTH - 2))),
        in_lambda(&format!("q{}", " + q".repeat(MAX_DEPTH - 2))),
        in_lambda(&format!("q{}", " - (q".repeat(MAX_DEPTH - 2) + &")".repeat(MAX_DEPTH - 2))),
        format!("graph g() -> f32[] {{\n  %0 = mask {}causal : mask\n  return %0\n}}\n", "!".repeat(MAX_DEPTH - 1)),
        format!(
            "graph g() -> f32[] {{\n  %0 = mask causal{} : mask\n  return %0\n}}\n",
            " | causal".repeat(MAX_DEPTH - 1)
        ),
    ];
    for text in &ok {
        let g = quickly(|| parse_graph(text)).unwrap_or_else(|e| panic!("{e}"));
        let printed = print_graph(&g);
        let back = parse_graph(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}"));
        assert!(graphs_equal(&g, &back));
        assert_eq!(print_graph(&back), printed);
    }
}

#[test]
fn huge_numbers_are_errors() {
    let huge = "9".repeat(10_000);
    for text in [
        in_lambda(&format!("q < {huge}")),
        in_lambda(&format!("q < {huge}.0")),
        in_lambda(&format!("q < 1e{huge}")),
        format!("graph g() -> f32[{huge}] {{\n  return\n}}"),
        format!("graph g() -> f32[] {{\n  %0 = constant [] : f32[0, {huge}]\n  return %0\n}}"),
        format!("graph g() -> f32[] {{\n  %0 = softmax {{axis = {huge}}} : f32[]\n  return %0\n}}"),
        format!("graph g() -> f32[] {{\n  %0 = mask window({huge}) : mask\n  return %0\n}}"),
    ] {
        let e = quickly(|| parse_graph(&text)).unwrap_err();
        assert!(e.message.contains("64-bit") || e.message.contains("out of range"), "{e}");
    }
    // A huge declared shape needs as many values as it says: no allocation
    // follows the number.
    let text =
        "graph g() -> f32[] {\n  %0 = constant [1.0] : f32[9223372036854775807, 9223372036854775807]\n  return %0\n}";
    assert!(quickly(|| parse_graph(text)).unwrap_err().message.contains("element(s)"));
    // An empty tensor of a huge (but representable) shape is fine: `[]`.
    let text = "graph g() -> f32[0, 9223372036854775807] {\n  %0 = constant [] : f32[0, 9223372036854775807]\n  return %0\n}\n";
    let g = parse_graph(text).unwrap();
    assert_eq!(print_graph(&g), text);
    assert!(verify(g).is_ok());
}

// ---------------------------------------------------------------------------
// Random input
// ---------------------------------------------------------------------------

/// When random text happens to parse, printing it gives text that parses to
/// an equal graph and prints identically.
fn check_reprint(text: &str) {
    if let Ok(m) = parse_module(text) {
        let printed = print_module(&m);
        let back = parse_module(&printed).unwrap_or_else(|e| panic!("{e}\nfrom\n{text}\nprinted\n{printed}"));
        assert_eq!(back.graphs.len(), m.graphs.len());
        for (a, b) in m.graphs.iter().zip(&back.graphs) {
            assert!(graphs_equal(a, b), "from\n{text}\nprinted\n{printed}");
        }
        assert_eq!(print_module(&back), printed);
    }
}

/// A valid text exercising most of the grammar, for mutation.
fn seed_text() -> String {
    let mut text = print_graph(&every_op());
    text.push('\n');
    let masks = vec![
        (
            and(
                MaskExpr::Local { left: 3, right: 0 },
                or(not(MaskExpr::Blocks { layout: ArrayRef::Operand(0), block: [64, 64] }), lambda(q_lt_k())),
            ),
            vec!["layout"],
        ),
        (
            lambda(bin(
                ScalarBinary::Lt,
                bin(ScalarBinary::Sub, var(LambdaVar::Q), ScalarExpr::Sym("T".into())),
                ScalarExpr::Index {
                    array: ArrayRef::Const(array(DType::F16, &[2], &[1.5, -0.0])),
                    indices: vec![un(ScalarUnary::Neg, var(LambdaVar::H))],
                },
            )),
            vec![],
        ),
        (
            MaskExpr::Neighborhood {
                kernel: vec![3, 3],
                grid: vec![8, 8],
                dilation: vec![1, 1],
                causal: vec![true, false],
            },
            vec![],
        ),
    ];
    text.push_str(&print_graph(&masks_graph("masks", masks)));
    text
}

/// Pieces of the grammar for random insertion.
const TOKENS: &[&str] = &[
    "%0",
    "%1",
    "%99",
    "$0",
    "$1",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    "=",
    "=>",
    "->",
    "+",
    "-",
    "*",
    "/",
    "%",
    "<",
    "<=",
    "==",
    "!=",
    "&",
    "|",
    "!",
    "//",
    "\"",
    "\n",
    " ",
    "graph",
    "return",
    "input",
    "constant",
    "mask",
    "causal",
    "f32",
    "i32",
    "bool",
    "f32[]",
    "T",
    "q",
    "k",
    "h",
    "s",
    "0",
    "1",
    "-1",
    "1.5",
    "1e300",
    "inf",
    "nan",
    "nan(0x7ff8000000000001)",
    "true",
    "false",
    "axis",
    "attention",
    "where",
    "abs(",
    "min(",
    "sym(",
    "0x",
    "9999999999999999999999",
];

/// Splits text into tokens: runs of word characters, runs of spaces, and
/// single other characters.
fn pieces(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in text.chars() {
        let word = c.is_alphanumeric() || c == '_' || c == '.';
        let same = out.last().and_then(|l| l.chars().last()).is_some_and(|p| {
            let pw = p.is_alphanumeric() || p == '_' || p == '.';
            (pw && word) || (p == ' ' && c == ' ')
        });
        if same {
            out.last_mut().unwrap().push(c);
        } else {
            out.push(c.to_string());
        }
    }
    out
}

#[derive(Clone, Debug)]
enum Mutation {
    DeleteChar(usize),
    InsertChar(usize, char),
    DuplicateChars(usize, usize),
    DeleteToken(usize),
    DuplicateToken(usize),
    InsertToken(usize, usize),
    SwapTokens(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::DeleteChar),
        (any::<usize>(), any::<char>()).prop_map(|(i, c)| Mutation::InsertChar(i, c)),
        (any::<usize>(), 1usize..40).prop_map(|(i, n)| Mutation::DuplicateChars(i, n)),
        any::<usize>().prop_map(Mutation::DeleteToken),
        any::<usize>().prop_map(Mutation::DuplicateToken),
        (any::<usize>(), any::<usize>()).prop_map(|(i, t)| Mutation::InsertToken(i, t)),
        (any::<usize>(), any::<usize>()).prop_map(|(i, j)| Mutation::SwapTokens(i, j)),
    ]
}

fn apply(text: &str, muts: &[Mutation]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for m in muts {
        let n = chars.len().max(1);
        match m {
            Mutation::DeleteChar(i) => {
                if !chars.is_empty() {
                    chars.remove(i % n);
                }
            }
            Mutation::InsertChar(i, c) => chars.insert(i % (chars.len() + 1), *c),
            Mutation::DuplicateChars(i, len) => {
                let start = i % n;
                let end = (start + len).min(chars.len());
                let dup: Vec<char> = chars[start.min(chars.len())..end].to_vec();
                chars.splice(end..end, dup);
            }
            _ => {
                let mut toks = pieces(&chars.iter().collect::<String>());
                let tn = toks.len().max(1);
                match m {
                    Mutation::DeleteToken(i) if !toks.is_empty() => {
                        toks.remove(i % tn);
                    }
                    Mutation::DuplicateToken(i) if !toks.is_empty() => {
                        let t = toks[i % tn].clone();
                        toks.insert(i % tn, t);
                    }
                    Mutation::InsertToken(i, t) => {
                        toks.insert(i % (toks.len() + 1), TOKENS[t % TOKENS.len()].to_string());
                    }
                    Mutation::SwapTokens(i, j) if !toks.is_empty() => {
                        toks.swap(i % tn, j % tn);
                    }
                    _ => {}
                }
                chars = toks.concat().chars().collect();
            }
        }
    }
    chars.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_strings_never_panic(s in "\\PC{0,200}") {
        quickly(|| check_reprint(&s));
    }

    #[test]
    fn random_token_soup_never_panics(toks in prop::collection::vec(0..TOKENS.len(), 0..80)) {
        let text: String = toks.iter().map(|t| format!("{} ", TOKENS[*t])).collect();
        quickly(|| check_reprint(&text));
        let wrapped = format!("graph g(x: f32[4]) -> f32[4] {{\n  %0 = input 0 : f32[4]\n  %1 = mask {text} : mask\n  return %0\n}}");
        quickly(|| check_reprint(&wrapped));
        let lambda = in_lambda(&text);
        quickly(|| check_reprint(&lambda));
    }

    #[test]
    fn mutated_graphs_never_panic(muts in prop::collection::vec(mutation(), 1..6)) {
        let seed = seed_text();
        let text = apply(&seed, &muts);
        quickly(|| check_reprint(&text));
    }
}

#[test]
fn the_seed_round_trips() {
    let seed = seed_text();
    let m = parse_module(&seed).unwrap_or_else(|e| panic!("{e}\n{seed}"));
    assert_eq!(m.graphs.len(), 2);
    assert_eq!(print_module(&m), seed);
    for g in &m.graphs {
        assert!(verify(g.clone()).is_ok());
    }
}

// ---------------------------------------------------------------------------
// Random expression trees: printer and parser agree on precedence
// ---------------------------------------------------------------------------

/// Any bit pattern, NaN payloads included, plus the usual suspects.
fn arb_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        any::<u64>().prop_map(f64::from_bits),
        prop::sample::select(vec![0.0, -0.0, 0.1, 1e-5, 1e300, 30.0, f64::INFINITY, f64::NEG_INFINITY, f64::NAN]),
    ]
}

fn arb_const() -> impl Strategy<Value = ConstValue> {
    (prop::sample::select(DType::ALL.to_vec()), prop::collection::vec(0usize..3, 0..4)).prop_flat_map(
        |(dtype, shape)| {
            let n: usize = shape.iter().product();
            let value = match dtype {
                DType::I32 => prop_oneof![3 => (-1000i64..1000).prop_map(|i| i as f64), 1 => arb_f64()].boxed(),
                DType::Bool => prop_oneof![3 => prop::sample::select(vec![0.0, 1.0]), 1 => arb_f64()].boxed(),
                _ => arb_f64().boxed(),
            };
            prop::collection::vec(value, n).prop_map(move |data| ConstValue { dtype, shape: shape.clone(), data })
        },
    )
}

fn arb_scalar() -> impl Strategy<Value = ScalarExpr> {
    let leaf = prop_oneof![
        prop::sample::select(vec![LambdaVar::S, LambdaVar::Q, LambdaVar::K, LambdaVar::H]).prop_map(ScalarExpr::Var),
        any::<i64>().prop_map(ScalarExpr::Int),
        prop::sample::select(vec![0i64, 1, -1, 3, i64::MIN, i64::MAX]).prop_map(ScalarExpr::Int),
        arb_f64().prop_map(ScalarExpr::Float),
        any::<bool>().prop_map(ScalarExpr::Bool),
        prop::sample::select(vec![
            "T", "S", "D", "q", "s", "abs", "min", "where", "nan", "inf", "true", "sym", "mask", "f32", "causal",
            "a b", "", "x\"y", "ü", "T_2",
        ])
        .prop_map(|s| ScalarExpr::Sym(s.to_string())),
    ];
    leaf.prop_recursive(6, 48, 3, |inner| {
        let unary = prop::sample::select(vec![
            ScalarUnary::Neg,
            ScalarUnary::Not,
            ScalarUnary::Abs,
            ScalarUnary::Exp,
            ScalarUnary::Log,
            ScalarUnary::Sqrt,
            ScalarUnary::Tanh,
            ScalarUnary::Sigmoid,
        ]);
        use ScalarBinary as Bo;
        let binary = prop::sample::select(vec![
            Bo::Add,
            Bo::Sub,
            Bo::Mul,
            Bo::Div,
            Bo::Mod,
            Bo::Min,
            Bo::Max,
            Bo::Lt,
            Bo::Le,
            Bo::Gt,
            Bo::Ge,
            Bo::Eq,
            Bo::Ne,
            Bo::And,
            Bo::Or,
        ]);
        prop_oneof![
            (unary, inner.clone()).prop_map(|(u, a)| ScalarExpr::Unary(u, Box::new(a))),
            (binary, inner.clone(), inner.clone()).prop_map(|(op, a, b)| ScalarExpr::binary(op, a, b)),
            (inner.clone(), inner.clone(), inner.clone()).prop_map(|(c, a, b)| ScalarExpr::Select(
                Box::new(c),
                Box::new(a),
                Box::new(b)
            )),
            (arb_const(), prop::collection::vec(inner, 0..3))
                .prop_map(|(c, indices)| ScalarExpr::Index { array: ArrayRef::Const(c), indices }),
        ]
    })
}

fn arb_mask() -> impl Strategy<Value = MaskExpr> {
    let leaf = prop_oneof![
        Just(MaskExpr::Causal),
        (any::<i64>(), any::<i64>()).prop_map(|(left, right)| MaskExpr::Local { left, right }),
        any::<i64>().prop_map(|w| MaskExpr::Window { w }),
        (any::<i64>(), any::<i64>()).prop_map(|(w, d)| MaskExpr::Dilated { w, d }),
        any::<i64>().prop_map(|n| MaskExpr::Sink { n }),
        (any::<i64>(), any::<i64>()).prop_map(|(stride, offset)| MaskExpr::Strided { stride, offset }),
        // The verifier requires one entry per axis (1 to 3 axes) in every vector.
        (1usize..=3)
            .prop_flat_map(|n| (
                prop::collection::vec(any::<i64>(), n),
                prop::collection::vec(any::<i64>(), n),
                prop::collection::vec(any::<i64>(), n),
                prop::collection::vec(any::<bool>(), n),
            ))
            .prop_map(|(kernel, grid, dilation, causal)| { MaskExpr::Neighborhood { kernel, grid, dilation, causal } }),
        // A constant layout is a 2-D bool array with positive block sizes.
        (1usize..4, 1usize..4, prop::collection::vec(any::<bool>(), 16), 1i64..i64::MAX, 1i64..i64::MAX).prop_map(
            |(r, c, bits, bq, bk)| {
                let data = bits[..r * c].iter().map(|b| if *b { 1.0 } else { 0.0 }).collect();
                let layout = ConstValue { dtype: DType::Bool, shape: vec![r, c], data };
                MaskExpr::Blocks { layout: ArrayRef::Const(layout), block: [bq, bk] }
            }
        ),
        arb_scalar().prop_map(MaskExpr::Lambda),
    ];
    leaf.prop_recursive(5, 24, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| and(a, b)),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| or(a, b)),
            inner.prop_map(not),
        ]
    })
}

/// A dimension polynomial over a few symbols with any coefficients.
fn arb_dim() -> impl Strategy<Value = Dim> {
    let term = (any::<i64>(), prop::collection::vec(prop::sample::select(vec!["A", "B", "T", "x_1"]), 0..3));
    prop::collection::vec(term, 0..4).prop_map(|terms| {
        let mut d = Dim::constant(0);
        for (c, syms) in terms {
            let mut t = Dim::constant(c);
            for s in syms {
                t = t.checked_mul(&Dim::sym(s)).unwrap_or_else(|_| Dim::constant(0));
            }
            d = d.checked_add(&t).unwrap_or(d);
        }
        d
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_masks_round_trip(masks in prop::collection::vec(arb_mask(), 1..4)) {
        let g = masks_graph("random", masks.into_iter().map(|m| (m, vec![])).collect());
        roundtrip(&g);
    }

    #[test]
    fn random_scores_and_constants_round_trip(
        score in arb_scalar(),
        scale in prop::option::of(arb_f64()),
        c in arb_const(),
        dims in prop::collection::vec(arb_dim(), 0..4),
    ) {
        let mut b = B::new("random");
        let q = b.param("q", DType::F32, &["2", "T", "8"]);
        let k = b.param("k", DType::F32, &["2", "S", "8"]);
        let v = b.param("v", DType::F32, &["2", "S", "8"]);
        b.param_ty("p", TensorType::new(DType::BF16, dims));
        let a = b.op(Op::Attention { scale, masked: false, score: Some(score) }, &[q, k, v]);
        b.constant(c);
        roundtrip(&b.finish(&[a]));
    }
}
