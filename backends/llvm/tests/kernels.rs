//! The JIT-compiled elementwise, reduce, row and data-movement kernels
//! against the Kernel IR interpreter (`NoHooks`), each kind run as a
//! one-kernel program through `run_with_hooks` with the CPU backend's
//! hooks: odd sizes (1, 17, 63, 65, 1000 rows), broadcast and
//! non-contiguous views, fully `-inf` softmax rows, NaN, infinities,
//! signed zeros and large magnitudes, 1 and 2 threads.
//!
//! Tolerances (relative, per element, against the interpreter; equal
//! values, both NaN, or the same infinity always pass):
//!
//! * everything that is plain `f32` arithmetic in the same order — `+ - ·
//!   /`, `neg`, `abs`, `relu`, `sqrt`, `rsqrt`, `select`, masks, every
//!   reduction, layernorm, rmsnorm, rope, copy/concat/repeat — must be
//!   **bit-identical** (tolerance 0);
//! * `exp`, `log`, `tanh`, `sigmoid`, `silu` and softmax (the polynomial
//!   `exp`/`log`/`tanh` against `libm`'s): 2e-6 relative to `|x|`, or to
//!   the smallest normal `f32` for subnormal results (which carry fewer
//!   bits) (measured: under 5e-7);
//! * `gelu`: 2e-6 relative to `max(|x|, 0.1)` — its `1 + erf(x/√2)`
//!   cancels for x < 0 in both implementations, so an ulp of `erf` (our
//!   `exp` inside it is not `libm`'s) shows as up to 3e-7·|x| absolute in
//!   the small negative outputs (measured: under 1e-6).
//!
//! `math_is_accurate` checks the polynomials themselves against `f64`.

use tdl_ir::{BinaryOp, DType, Dim, MaskExpr, ReduceOp, UnaryOp};
use tdl_kernel::interp::{run_with_hooks, Hooks, NoHooks};
use tdl_kernel::ir::*;
use tdl_llvm::cpu::{CpuHooks, EXECUTOR};
use tdl_reference::random::SplitMix64;
use tdl_reference::{Limits, Tensor};

const ROWS: [usize; 5] = [1, 17, 63, 65, 1000];

/// A one-kernel program under construction.
#[derive(Default)]
struct Prog {
    buffers: Vec<Buffer>,
    params: Vec<BufId>,
}

impl Prog {
    fn buf(&mut self, dtype: DType, shape: &[usize], kind: BufKind) -> BufId {
        let id = BufId(self.buffers.len() as u32);
        let shape = shape.iter().map(|&d| Dim::constant(d as i64)).collect();
        self.buffers.push(Buffer { name: format!("b{}", id.0), dtype, shape, kind });
        id
    }

    fn input(&mut self, dtype: DType, shape: &[usize]) -> BufId {
        let id = self.buf(dtype, shape, BufKind::Input(self.params.len()));
        self.params.push(id);
        id
    }

    fn temp(&mut self, dtype: DType, shape: &[usize]) -> BufId {
        self.buf(dtype, shape, BufKind::Temp)
    }

    fn program(self, body: KernelBody) -> KernelProgram {
        let out = body.out();
        KernelProgram {
            name: "test".into(),
            symbols: Vec::new(),
            buffers: self.buffers,
            params: self.params,
            kernels: vec![Kernel { name: "k".into(), span: None, body }],
            results: vec![out],
            target: "test".into(),
        }
    }
}

/// Uniform values in `[-range, range]`, with special values sprinkled in
/// when `special`.
fn values(n: usize, seed: u64, range: f64, special: bool) -> Vec<f64> {
    let mut r = SplitMix64::new(seed);
    let specials = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0, -0.0, 1e30, -1e30, 1e-40, -88.0, 88.5, 100.0];
    (0..n)
        .map(|i| {
            let u = (r.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            if special && i % 7 == 3 {
                specials[(r.next_u64() % specials.len() as u64) as usize]
            } else {
                (u * 2.0 - 1.0) * range
            }
        })
        .collect()
}

fn tensor(dtype: DType, shape: &[usize], data: Vec<f64>) -> Tensor {
    Tensor::new(dtype, shape.to_vec(), data).expect("a valid tensor")
}

fn random(shape: &[usize], seed: u64, range: f64, special: bool) -> Tensor {
    let n = shape.iter().product();
    tensor(DType::F32, shape, values(n, seed, range, special))
}

/// How far apart two results may be: `rel` relative to `max(|want|, floor)`.
#[derive(Clone, Copy, Debug)]
struct Tol {
    rel: f64,
    floor: f64,
}

const EXACT: Tol = Tol { rel: 0.0, floor: 0.0 };
const POLY: Tol = Tol { rel: 2e-6, floor: f32::MIN_POSITIVE as f64 };

/// The largest relative difference, or the first element out of tolerance.
fn differ(got: &Tensor, want: &Tensor, tol: Tol) -> Result<f64, String> {
    if got.shape != want.shape || got.dtype != want.dtype {
        return Err(format!("{} vs {}", got.type_text(), want.type_text()));
    }
    let mut worst = 0f64;
    for (i, (&a, &b)) in got.data.iter().zip(&want.data).enumerate() {
        if (a.is_nan() && b.is_nan()) || a == b {
            continue;
        }
        let e = (a - b).abs() / b.abs().max(tol.floor);
        if e.is_nan() || e > tol.rel {
            return Err(format!("element {i}: compiled {a:e}, interpreter {b:e} (relative error {e:e})"));
        }
        worst = worst.max(e);
    }
    Ok(worst)
}

/// Runs `p` in the interpreter and with `hooks`; checks that the kernel ran
/// on `executor` and the results agree within `tol`. Returns the largest
/// relative difference.
fn check(p: &KernelProgram, inputs: &[Tensor], hooks: &dyn Hooks, executor: &str, tol: Tol) -> f64 {
    let limits = Limits::default();
    let want = run_with_hooks(p, inputs, &limits, &NoHooks).expect("the interpreter runs it");
    let got = run_with_hooks(p, inputs, &limits, hooks).expect("the hooks run it");
    assert_eq!(got.kernels[0].executor, executor, "{:?}", p.kernels[0].body);
    assert_eq!(want.kernels[0].executor, "interpreter");
    differ(&got.results[0], &want.results[0], tol).unwrap_or_else(|e| panic!("{e}\nkernel {:?}", p.kernels[0].body))
}

fn inst(op: EwOp, dtype: DType) -> EwInst {
    EwInst { op, dtype }
}

fn f32i(op: EwOp) -> EwInst {
    inst(op, DType::F32)
}

fn unary_program(u: UnaryOp, shape: &[usize]) -> KernelProgram {
    let mut p = Prog::default();
    let x = p.input(DType::F32, shape);
    let out = p.temp(DType::F32, shape);
    p.program(KernelBody::Elementwise(ElementwiseKernel {
        inputs: vec![Access::whole(x)],
        masks: Vec::new(),
        body: vec![f32i(EwOp::Load(0)), f32i(EwOp::Unary(u, 0))],
        out,
    }))
}

fn unary_tol(u: UnaryOp) -> Tol {
    match u {
        UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Relu | UnaryOp::Sqrt | UnaryOp::Rsqrt => EXACT,
        UnaryOp::Gelu => Tol { rel: 2e-6, floor: 0.1 },
        _ => POLY,
    }
}

#[test]
fn unary_ops_match_the_interpreter() {
    let hooks = CpuHooks::new(2);
    for u in UnaryOp::ALL {
        let mut worst = 0f64;
        for (i, rows) in ROWS.into_iter().enumerate() {
            for (range, special) in [(20.0, true), (100.0, false), (1.0, false)] {
                let shape = [rows, 37];
                let x = random(&shape, 11 + i as u64, range, special);
                worst = worst.max(check(&unary_program(u, &shape), &[x], &hooks, EXECUTOR, unary_tol(u)));
            }
        }
        println!("{u:?}: largest relative difference {worst:e}");
    }
}

/// `out = ((a · b) - c) / d + 0.5` with `a [R, C]`, `b` a transposed
/// `[C, R]` buffer, `c [1, C]`, `d [R, 1]`, on every size.
#[test]
fn binary_ops_broadcast_and_views_match() {
    let hooks = CpuHooks::new(2);
    for rows in ROWS {
        for cols in [1, 7, 33, 64] {
            let mut p = Prog::default();
            let a = p.input(DType::F32, &[rows, cols]);
            let b = p.input(DType::F32, &[cols, rows]);
            let c = p.input(DType::F32, &[1, cols]);
            let d = p.input(DType::F32, &[rows, 1]);
            let e = p.input(DType::F32, &[rows + 3, cols + 2]);
            let out = p.temp(DType::F32, &[rows, cols]);
            let body = vec![
                f32i(EwOp::Load(0)),
                f32i(EwOp::Load(1)),
                f32i(EwOp::Binary(BinaryOp::Mul, 0, 1)),
                f32i(EwOp::Load(2)),
                f32i(EwOp::Binary(BinaryOp::Sub, 2, 3)),
                f32i(EwOp::Load(3)),
                f32i(EwOp::Binary(BinaryOp::Div, 4, 5)),
                f32i(EwOp::Const(0.5)),
                f32i(EwOp::Binary(BinaryOp::Add, 6, 7)),
                f32i(EwOp::Load(4)),
                f32i(EwOp::Binary(BinaryOp::Add, 8, 9)),
            ];
            let sliced = Access {
                buf: e,
                view: vec![
                    ViewOp::Slice { axis: 0, start: 2, end: rows as i64 + 2 },
                    ViewOp::Slice { axis: 1, start: 1, end: cols as i64 + 1 },
                ],
            };
            let prog = p.program(KernelBody::Elementwise(ElementwiseKernel {
                inputs: vec![
                    Access::whole(a),
                    Access { buf: b, view: vec![ViewOp::Transpose] },
                    Access::whole(c),
                    Access::whole(d),
                    sliced,
                ],
                masks: Vec::new(),
                body,
                out,
            }));
            let inputs = [
                random(&[rows, cols], 1, 1e3, true),
                random(&[cols, rows], 2, 10.0, false),
                random(&[1, cols], 3, 1e30, true),
                random(&[rows, 1], 4, 2.0, true),
                random(&[rows + 3, cols + 2], 5, 1.0, false),
            ];
            check(&prog, &inputs, &hooks, EXECUTOR, EXACT);
        }
    }
}

/// `select(b, x, -x)` with a bool input, a rank-3 permuted view, and an
/// `f16` output (rounded by the interpreter after the hook).
#[test]
fn select_bool_permute_and_f16_output_match() {
    let hooks = CpuHooks::new(2);
    for rows in ROWS {
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let mut p = Prog::default();
            let b = p.input(DType::Bool, &[rows, 3, 5]);
            let x = p.input(DType::F32, &[5, rows, 3]);
            let out = p.temp(dtype, &[rows, 3, 5]);
            let body = vec![
                inst(EwOp::Load(0), DType::Bool),
                inst(EwOp::Load(1), dtype),
                inst(EwOp::Unary(UnaryOp::Neg, 1), dtype),
                inst(EwOp::Select(0, 1, 2), dtype),
            ];
            let prog = p.program(KernelBody::Elementwise(ElementwiseKernel {
                inputs: vec![Access::whole(b), Access { buf: x, view: vec![ViewOp::Permute(vec![1, 2, 0])] }],
                masks: Vec::new(),
                body,
                out,
            }));
            let n = rows * 15;
            let bools = values(n, 9, 1.0, false).into_iter().map(|v| if v > 0.0 { 1.0 } else { 0.0 }).collect();
            let inputs = [tensor(DType::Bool, &[rows, 3, 5], bools), random(&[5, rows, 3], 8, 1e5, true)];
            check(&prog, &inputs, &hooks, EXECUTOR, EXACT);
        }
    }
}

/// Scores masked inside the chain: `select(mask, x, -inf)` over `[H, T, S]`.
#[test]
fn masks_in_the_chain_match() {
    let hooks = CpuHooks::new(2);
    let na = |kernel: Vec<i64>, grid: Vec<i64>, dilation: Vec<i64>, causal: Vec<bool>| MaskExpr::Neighborhood {
        kernel,
        grid,
        dilation,
        causal,
    };
    let masks = |t: usize| {
        let mut m = vec![
            MaskExpr::Causal,
            MaskExpr::Local { left: 5, right: 3 },
            MaskExpr::Window { w: 16 },
            MaskExpr::Dilated { w: 4, d: 3 },
            MaskExpr::Or(Box::new(MaskExpr::Sink { n: 4 }), Box::new(MaskExpr::Window { w: 9 })),
            MaskExpr::Strided { stride: 5, offset: 2 },
            MaskExpr::And(Box::new(MaskExpr::Causal), Box::new(MaskExpr::Not(Box::new(MaskExpr::Sink { n: 3 })))),
        ];
        if t >= 7 {
            m.push(na(vec![7], vec![t as i64], vec![1], vec![false]));
        }
        m
    };
    for (t, s) in [(1, 1), (17, 17), (63, 80), (65, 40), (1000, 1000)] {
        for mask in masks(t) {
            let (ss, shape) =
                if matches!(mask, MaskExpr::Neighborhood { .. }) { (t, [2, t, t]) } else { (s, [2, t, s]) };
            let mut p = Prog::default();
            let x = p.input(DType::F32, &shape);
            let out = p.temp(DType::F32, &shape);
            let body = vec![
                inst(EwOp::Mask(0), DType::Bool),
                f32i(EwOp::Load(0)),
                f32i(EwOp::Const(f64::NEG_INFINITY)),
                f32i(EwOp::Select(0, 1, 2)),
            ];
            let prog = p.program(KernelBody::Elementwise(ElementwiseKernel {
                inputs: vec![Access::whole(x)],
                masks: vec![MaskUse { expr: mask.clone(), operands: Vec::new() }],
                body,
                out,
            }));
            check(&prog, &[random(&[2, t, ss], 3, 1.0, false)], &hooks, EXECUTOR, EXACT);
        }
    }
}

/// Masks that read data: `document` ids (an input) and `blocks` layouts
/// (an input and a constant), two masks in one chain.
#[test]
fn data_masks_in_the_chain_match() {
    let hooks = CpuHooks::new(2);
    for t in ROWS {
        let mut p = Prog::default();
        let x = p.input(DType::F32, &[2, t, t]);
        let ids = p.input(DType::I32, &[t]);
        let lay = p.input(DType::Bool, &[t.div_ceil(8), t.div_ceil(16)]);
        let out = p.temp(DType::F32, &[2, t, t]);
        let (r, c) = (t.div_ceil(4), t.div_ceil(16));
        let layout = tdl_ir::ConstValue {
            dtype: DType::Bool,
            shape: vec![r, c],
            data: (0..r * c).map(|i| f64::from(i % 3 != 1)).collect(),
        };
        let second = MaskExpr::Or(
            Box::new(MaskExpr::Blocks { layout: tdl_ir::ArrayRef::Operand(0), block: [8, 16] }),
            Box::new(MaskExpr::And(
                Box::new(MaskExpr::Causal),
                Box::new(MaskExpr::Blocks { layout: tdl_ir::ArrayRef::Const(layout), block: [4, 16] }),
            )),
        );
        let prog = p.program(KernelBody::Elementwise(ElementwiseKernel {
            inputs: vec![Access::whole(x)],
            masks: vec![
                MaskUse { expr: MaskExpr::Document { ids: 0 }, operands: vec![ids] },
                MaskUse { expr: second, operands: vec![lay] },
            ],
            body: vec![
                inst(EwOp::Mask(0), DType::Bool),
                inst(EwOp::Mask(1), DType::Bool),
                f32i(EwOp::Load(0)),
                f32i(EwOp::Const(0.0)),
                f32i(EwOp::Select(1, 2, 3)),
                f32i(EwOp::Const(-1.0)),
                f32i(EwOp::Select(0, 4, 5)),
            ],
            out,
        }));
        let ids_t = tensor(DType::I32, &[t], (0..t).map(|i| (i / 7) as f64).collect());
        let nl = t.div_ceil(8) * t.div_ceil(16);
        let lay_t =
            tensor(DType::Bool, &[t.div_ceil(8), t.div_ceil(16)], (0..nl).map(|i| f64::from(i % 2 == 0)).collect());
        check(&prog, &[random(&[2, t, t], 1, 1.0, false), ids_t, lay_t], &hooks, EXECUTOR, EXACT);
    }
}

/// Lambda masks and integer results compile (and give the interpreter's
/// bits); a lambda the lambda compiler declines (a `where` whose branches
/// differ in type) runs in the interpreter.
#[test]
fn lambda_masks_and_integer_chains_compile_and_the_rest_declines() {
    use tdl_ir::{LambdaVar, ScalarBinary, ScalarExpr};
    let hooks = CpuHooks::new(2);
    let masked = |m: MaskExpr| {
        let mut p = Prog::default();
        let x = p.input(DType::F32, &[9, 9]);
        let out = p.temp(DType::F32, &[9, 9]);
        p.program(KernelBody::Elementwise(ElementwiseKernel {
            inputs: vec![Access::whole(x)],
            masks: vec![MaskUse { expr: m, operands: Vec::new() }],
            body: vec![
                inst(EwOp::Mask(0), DType::Bool),
                f32i(EwOp::Load(0)),
                f32i(EwOp::Const(0.0)),
                f32i(EwOp::Select(0, 1, 2)),
            ],
            out,
        }))
    };
    // A lambda mask: compiled.
    let lambda = MaskExpr::Lambda(ScalarExpr::binary(
        ScalarBinary::Le,
        ScalarExpr::Var(LambdaVar::K),
        ScalarExpr::Var(LambdaVar::Q),
    ));
    check(&masked(lambda), &[random(&[9, 9], 1, 1.0, false)], &hooks, EXECUTOR, EXACT);
    // `where(q < 2, 1, 2.5) > 1`: branches of different types, declined.
    let mixed = MaskExpr::Lambda(ScalarExpr::binary(
        ScalarBinary::Gt,
        ScalarExpr::Select(
            Box::new(ScalarExpr::binary(ScalarBinary::Lt, ScalarExpr::Var(LambdaVar::Q), ScalarExpr::Int(2))),
            Box::new(ScalarExpr::Int(1)),
            Box::new(ScalarExpr::Float(2.5)),
        ),
        ScalarExpr::Int(1),
    ));
    check(&masked(mixed), &[random(&[9, 9], 1, 1.0, false)], &hooks, "interpreter", EXACT);
    // An integer result (floor division, `x / 0 == 0`): compiled.
    let mut p = Prog::default();
    let a = p.input(DType::I32, &[4, 5]);
    let out = p.temp(DType::I32, &[4, 5]);
    let prog = p.program(KernelBody::Elementwise(ElementwiseKernel {
        inputs: vec![Access::whole(a), Access::whole(a)],
        masks: Vec::new(),
        body: vec![
            inst(EwOp::Load(0), DType::I32),
            inst(EwOp::Load(1), DType::I32),
            inst(EwOp::Binary(BinaryOp::Div, 0, 1), DType::I32),
        ],
        out,
    }));
    let ints = (0..20).map(|i| f64::from(i - 10)).collect();
    check(&prog, &[tensor(DType::I32, &[4, 5], ints)], &hooks, EXECUTOR, EXACT);
    // A boolean result (0/1): compiled.
    let mut p = Prog::default();
    let a = p.input(DType::I32, &[3, 7]);
    let out = p.temp(DType::Bool, &[3, 7]);
    let prog = p.program(KernelBody::Elementwise(ElementwiseKernel {
        inputs: vec![Access::whole(a)],
        masks: vec![MaskUse { expr: MaskExpr::Causal, operands: Vec::new() }],
        body: vec![inst(EwOp::Mask(0), DType::Bool)],
        out,
    }));
    let ints = (0..21).map(f64::from).collect();
    check(&prog, &[tensor(DType::I32, &[3, 7], ints)], &hooks, EXECUTOR, EXACT);
}

#[test]
fn reductions_match_the_interpreter() {
    let hooks = CpuHooks::new(2);
    for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max] {
        for rows in ROWS {
            for (shape, axis) in [
                (vec![rows, 33], 1),
                (vec![rows, 33], 0),
                (vec![3, rows, 5], 1),
                (vec![rows, 2, 70], 2),
                (vec![2, rows, 300], 0),
            ] {
                let mut out_shape = shape.clone();
                out_shape.remove(axis);
                let mut p = Prog::default();
                let x = p.input(DType::F32, &shape);
                let out = p.temp(DType::F32, &out_shape);
                let prog =
                    p.program(KernelBody::Reduce(ReduceKernel { op, axis, keepdims: false, x: Access::whole(x), out }));
                for special in [false, true] {
                    check(&prog, &[random(&shape, 5, 1e4, special)], &hooks, EXECUTOR, EXACT);
                }
            }
        }
    }
}

/// `i32` reductions: sums wrap (values near `i32::MAX`), means truncate
/// toward zero (negative sums too), max; over the last and inner axes, an
/// empty axis for sum and mean.
#[test]
fn integer_reductions_match_the_interpreter() {
    let hooks = CpuHooks::new(2);
    for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max] {
        for (shape, axis) in
            [(vec![7, 33], 1), (vec![7, 33], 0), (vec![3, 9, 5], 1), (vec![5, 2, 70], 2), (vec![4, 0, 3], 1)]
        {
            if op == ReduceOp::Max && shape[axis] == 0 {
                continue;
            }
            let mut out_shape = shape.clone();
            out_shape.remove(axis);
            let mut p = Prog::default();
            let x = p.input(DType::I32, &shape);
            let out = p.temp(DType::I32, &out_shape);
            let prog =
                p.program(KernelBody::Reduce(ReduceKernel { op, axis, keepdims: false, x: Access::whole(x), out }));
            let n: usize = shape.iter().product();
            for big in [false, true] {
                let data = (0..n as i64)
                    .map(|i| {
                        let v = (i * 7919 % 2001) - 1000;
                        (if big { v.signum() * (i64::from(i32::MAX) - v.abs()) } else { v }) as f64
                    })
                    .collect();
                check(&prog, &[tensor(DType::I32, &shape, data)], &hooks, EXECUTOR, EXACT);
            }
        }
    }
}

/// Rows of `[rows, cols]` for softmax: random, fully `-inf`, a NaN, a
/// `+inf`, huge magnitudes, a single `-inf`.
fn softmax_input(rows: usize, cols: usize, seed: u64) -> Tensor {
    let mut data = values(rows * cols, seed, 30.0, false);
    for r in 0..rows {
        let row = &mut data[r * cols..(r + 1) * cols];
        match r % 6 {
            1 => row.fill(f64::NEG_INFINITY),
            2 => row[cols / 2] = f64::NAN,
            3 => row[cols - 1] = f64::INFINITY,
            4 => row.iter_mut().for_each(|v| *v *= 1e30),
            5 => row[0] = f64::NEG_INFINITY,
            _ => {}
        }
    }
    tensor(DType::F32, &[rows, cols], data)
}

#[test]
fn softmax_matches_the_interpreter() {
    let hooks = CpuHooks::new(2);
    let mut worst = 0f64;
    for rows in ROWS {
        for cols in [1, 17, 63, 65, 1000] {
            for axis in [1, 0] {
                let mut p = Prog::default();
                let x = p.input(DType::F32, &[rows, cols]);
                let out = p.temp(DType::F32, &[rows, cols]);
                let prog = p.program(KernelBody::Row(RowKernel {
                    op: RowOp::Softmax { axis },
                    x: Access::whole(x),
                    params: Vec::new(),
                    out,
                }));
                let input = if axis == 1 { softmax_input(rows, cols, 7) } else { random(&[rows, cols], 7, 30.0, true) };
                worst = worst.max(check(&prog, &[input], &hooks, EXECUTOR, POLY));
            }
        }
    }
    // A middle axis of a rank-3 input.
    let mut p = Prog::default();
    let x = p.input(DType::F32, &[3, 65, 17]);
    let out = p.temp(DType::F32, &[3, 65, 17]);
    let prog = p.program(KernelBody::Row(RowKernel {
        op: RowOp::Softmax { axis: 1 },
        x: Access::whole(x),
        params: Vec::new(),
        out,
    }));
    worst = worst.max(check(&prog, &[random(&[3, 65, 17], 8, 50.0, true)], &hooks, EXECUTOR, POLY));
    println!("softmax: largest relative difference {worst:e}");
}

#[test]
fn norms_and_rope_match_the_interpreter() {
    let hooks = CpuHooks::new(2);
    for rows in ROWS {
        for d in [1, 2, 18, 64, 65, 512] {
            for (layer, eps) in [(true, 1e-5), (false, 1e-6)] {
                let mut p = Prog::default();
                let x = p.input(DType::F32, &[rows, d]);
                let g = p.input(DType::F32, &[d]);
                let b = p.input(DType::F32, &[d]);
                let out = p.temp(DType::F32, &[rows, d]);
                let (op, params) = if layer {
                    (RowOp::LayerNorm { eps }, vec![Access::whole(g), Access::whole(b)])
                } else {
                    (RowOp::RmsNorm { eps }, vec![Access::whole(g)])
                };
                let prog = p.program(KernelBody::Row(RowKernel { op, x: Access::whole(x), params, out }));
                // Large magnitudes, and rows around a large offset.
                let mut xs = values(rows * d, 4, 1e3, false);
                xs.iter_mut().enumerate().filter(|(i, _)| (i / d) % 3 == 1).for_each(|(_, v)| *v += 1e4);
                let inputs =
                    [tensor(DType::F32, &[rows, d], xs), random(&[d], 5, 2.0, false), random(&[d], 6, 1.0, false)];
                check(&prog, &inputs, &hooks, EXECUTOR, EXACT);
            }
            if d % 2 == 0 {
                let shape = [3, rows, d];
                let mut p = Prog::default();
                let x = p.input(DType::F32, &shape);
                let out = p.temp(DType::F32, &shape);
                let prog = p.program(KernelBody::Row(RowKernel {
                    op: RowOp::Rope { base: 10000.0 },
                    x: Access::whole(x),
                    params: Vec::new(),
                    out,
                }));
                check(&prog, &[random(&shape, 9, 10.0, true)], &hooks, EXECUTOR, EXACT);
            }
        }
    }
}

#[test]
fn moves_match_the_interpreter() {
    let hooks = CpuHooks::new(2);
    for rows in ROWS {
        // copy of a permuted view, and of a transposed slice.
        let mut p = Prog::default();
        let x = p.input(DType::F32, &[rows, 8, 24]);
        let out = p.temp(DType::F32, &[8, rows, 24]);
        let prog = p.program(KernelBody::Move(MoveKernel {
            op: MoveOp::Copy,
            srcs: vec![Access { buf: x, view: vec![ViewOp::Permute(vec![1, 0, 2])] }],
            out,
        }));
        check(&prog, &[random(&[rows, 8, 24], 1, 1.0, true)], &hooks, EXECUTOR, EXACT);
        let mut p = Prog::default();
        let x = p.input(DType::F32, &[rows, 40]);
        let out = p.temp(DType::F32, &[30, rows]);
        let prog = p.program(KernelBody::Move(MoveKernel {
            op: MoveOp::Copy,
            srcs: vec![Access { buf: x, view: vec![ViewOp::Slice { axis: 1, start: 5, end: 35 }, ViewOp::Transpose] }],
            out,
        }));
        check(&prog, &[random(&[rows, 40], 2, 1.0, false)], &hooks, EXECUTOR, EXACT);
        // concat along every axis, one source a transposed view.
        for axis in 0..3 {
            let mut shapes = [[rows, 4, 6], [rows, 4, 6], [rows, 4, 6]];
            for (i, s) in shapes.iter_mut().enumerate() {
                s[axis] += i + 1;
            }
            let mut out_shape = shapes[0];
            out_shape[axis] = shapes.iter().map(|s| s[axis]).sum();
            let mut p = Prog::default();
            let a = p.input(DType::F32, &shapes[0]);
            let bt = [shapes[1][0], shapes[1][2], shapes[1][1]];
            let b = p.input(DType::F32, &bt);
            let c = p.input(DType::F32, &shapes[2]);
            let out = p.temp(DType::F32, &out_shape);
            let prog = p.program(KernelBody::Move(MoveKernel {
                op: MoveOp::Concat { axis },
                srcs: vec![Access::whole(a), Access { buf: b, view: vec![ViewOp::Transpose] }, Access::whole(c)],
                out,
            }));
            let inputs =
                [random(&shapes[0], 3, 1.0, true), random(&bt, 4, 1.0, false), random(&shapes[2], 5, 1.0, false)];
            check(&prog, &inputs, &hooks, EXECUTOR, EXACT);
        }
        // repeat along each axis.
        for axis in 0..3 {
            let shape = [rows, 3, 5];
            let mut out_shape = shape;
            out_shape[axis] *= 3;
            let mut p = Prog::default();
            let x = p.input(DType::F32, &shape);
            let out = p.temp(DType::F32, &out_shape);
            let prog = p.program(KernelBody::Move(MoveKernel {
                op: MoveOp::Repeat { times: 3, axis },
                srcs: vec![Access::whole(x)],
                out,
            }));
            check(&prog, &[random(&shape, 6, 1.0, true)], &hooks, EXECUTOR, EXACT);
        }
    }
}

/// Work items split across threads give the result one thread gives, and
/// a second run compiles nothing new.
#[test]
fn threads_agree_and_kernels_are_cached() {
    let one = CpuHooks::new(1);
    let two = CpuHooks::new(2);
    let limits = Limits::default();
    let shape = [1000, 301];
    let mut progs = vec![unary_program(UnaryOp::Silu, &shape), unary_program(UnaryOp::Exp, &[3, 100_000])];
    for op in [RowOp::Softmax { axis: 1 }, RowOp::Softmax { axis: 0 }] {
        let mut p = Prog::default();
        let x = p.input(DType::F32, &shape);
        let out = p.temp(DType::F32, &shape);
        progs.push(p.program(KernelBody::Row(RowKernel { op, x: Access::whole(x), params: Vec::new(), out })));
    }
    for axis in [0, 1] {
        let mut p = Prog::default();
        let x = p.input(DType::F32, &shape);
        let out = p.temp(DType::F32, &[shape[1 - axis]]);
        progs.push(p.program(KernelBody::Reduce(ReduceKernel {
            op: ReduceOp::Sum,
            axis,
            keepdims: false,
            x: Access::whole(x),
            out,
        })));
    }
    for prog in &progs {
        let x = match &prog.buffers[0].shape[..] {
            [a, b] => random(&[a.as_const().unwrap() as usize, b.as_const().unwrap() as usize], 3, 5.0, true),
            _ => unreachable!(),
        };
        let inputs = [x];
        let a = run_with_hooks(prog, &inputs, &limits, &one).unwrap();
        let b = run_with_hooks(prog, &inputs, &limits, &two).unwrap();
        assert_eq!(a.kernels[0].executor, EXECUTOR);
        let same = a.results[0].data.iter().zip(&b.results[0].data).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "1 and 2 threads differ: {:?}", prog.kernels[0].body);
    }
    let compiled = two.kernel_cache().len();
    assert!(compiled >= progs.len() - 1, "{compiled} kernels cached");
    for prog in &progs {
        let x = random(&[1000, 301], 4, 5.0, false);
        let inputs = if prog.buffers[0].shape[0].as_const() == Some(3) {
            vec![random(&[3, 100_000], 1, 1.0, false)]
        } else {
            vec![x]
        };
        run_with_hooks(prog, &inputs, &limits, &two).unwrap();
    }
    assert_eq!(two.kernel_cache().len(), compiled, "a second run compiled again");
}

/// The loop over a contiguous row is vectorised.
#[test]
fn elementwise_code_is_vectorised() {
    let prog = unary_program(UnaryOp::Silu, &[10, 64]);
    let KernelBody::Elementwise(k) = &prog.kernels[0].body else { unreachable!() };
    let data = vec![0f32; 640];
    let args = tdl_kernel::interp::ElementwiseArgs {
        shape: &[10, 64],
        inputs: vec![tdl_kernel::interp::StridedView {
            data: tdl_kernel::interp::Elems::F32(&data),
            offset: 0,
            shape: vec![10, 64],
            strides: vec![64, 1],
        }],
        masks: Vec::new(),
        bindings: &Default::default(),
        dtypes: vec![],
        out_dtype: tdl_ir::DType::F32,
    };
    let text = tdl_llvm::elementwise::elementwise_llvm_text(k, &args).unwrap().expect("supported");
    assert!(
        text.contains("<8 x float>") || text.contains("<16 x float>") || text.contains("<4 x float>"),
        "no vector code"
    );
    let text = tdl_llvm::rows::row_llvm_text(&RowOp::Softmax { axis: 1 }).unwrap();
    assert!(
        text.contains("<8 x float>") || text.contains("<16 x float>") || text.contains("<4 x float>"),
        "no vector code"
    );
}

/// The polynomials against `f64`, through the compiled unary kernels.
#[test]
fn math_is_accurate() {
    let hooks = CpuHooks::new(2);
    let limits = Limits::default();
    type Case = (UnaryOp, f64, f64, fn(f64) -> f64, f64);
    let cases: [Case; 5] = [
        (UnaryOp::Exp, -87.0, 88.7, f64::exp, 2.4e-7),
        (UnaryOp::Log, 1e-30, 1e30, f64::ln, 2.4e-7),
        (UnaryOp::Tanh, -12.0, 12.0, f64::tanh, 5e-7),
        (UnaryOp::Sigmoid, -80.0, 80.0, |x| 1.0 / (1.0 + (-x).exp()), 5e-7),
        // erf over [0, 6.4] and beyond (for x < 0, `1 + erf` cancels; the
        // code is the same with the sign copied).
        (UnaryOp::Gelu, 0.0, 9.0, |x| 0.5 * x * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2)), 5e-7),
    ];
    for (u, lo, hi, exact, bound) in cases {
        let n = 200_001;
        let xs: Vec<f64> = (0..n)
            .map(|i| {
                let t = i as f64 / (n - 1) as f64;
                // Log sweeps its range geometrically.
                let v = if u == UnaryOp::Log { lo * (hi / lo).powf(t) } else { lo + (hi - lo) * t };
                v as f32 as f64
            })
            .collect();
        let prog = unary_program(u, &[n]);
        let out = run_with_hooks(&prog, &[tensor(DType::F32, &[n], xs.clone())], &limits, &hooks).unwrap();
        assert_eq!(out.kernels[0].executor, EXECUTOR);
        let mut worst = 0f64;
        for (&x, &y) in xs.iter().zip(&out.results[0].data) {
            let want = exact(x);
            let e = (y - want).abs() / want.abs().max(f64::from(f32::MIN_POSITIVE));
            worst = worst.max(e);
        }
        println!("{u:?}: largest relative error against f64 {worst:e}");
        assert!(worst < bound, "{u:?}: {worst:e} ≥ {bound:e}");
    }
    // Special values.
    let specials = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0, -0.0, 89.0, -104.0, -88.0, 1e-40, -1.0];
    for u in [UnaryOp::Exp, UnaryOp::Log, UnaryOp::Tanh, UnaryOp::Gelu, UnaryOp::Sigmoid] {
        let prog = unary_program(u, &[specials.len()]);
        check(&prog, &[tensor(DType::F32, &[specials.len()], specials.to_vec())], &hooks, EXECUTOR, POLY);
    }
}
