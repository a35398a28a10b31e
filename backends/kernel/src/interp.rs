//! The Kernel IR interpreter: runs a [`KernelProgram`] in **`f32`**, kernel
//! by kernel, each as the loop nest the IR describes — the tile schedule
//! of attention (block-sparse iteration, online softmax, KV splits and
//! their merge) and of matmul, the fused elementwise chains evaluated per
//! output element without storing intermediates, views read in place.
//! It is how schedules are tested before any code generation exists, and
//! what `tdlc run --backend kernel` runs.
//!
//! Numbers: floating-point buffers hold `f32`; `f16`/`bf16` buffers hold
//! `f32` values rounded to their type when stored (storage precision,
//! `f32` arithmetic). `i32` and `bool` buffers hold `i32` (wrapping
//! arithmetic, floor division, `x / 0 == 0`, as the reference). Rope's
//! angle table is computed in `f64` and rounded to `f32`, as a runtime
//! would precompute it.
//!
//! Sizes: the dimension symbols are bound from the input shapes; every
//! buffer's shape is evaluated and checked against the [`Limits`] before it
//! is allocated, and every access is checked against its buffer before any
//! kernel reads it.

use std::fmt;

use tdl_ir::layout::{next_index, strides};
use tdl_ir::{BinaryOp, Bindings, DType, ReduceOp, Span, UnaryOp};
use tdl_passes::tiles::{MaskData, OperandData};
use tdl_reference::mask::MaskEval;
use tdl_reference::{round_value, Limits, Tensor};

use crate::attention::{attention_tiled_stats, AttentionSchedule, F32Tensor, KernelStats, ScoreMod};
use crate::ir::*;

/// A failure while running a program, naming the kernel (and its source
/// position) where there is one.
#[derive(Clone, Debug, PartialEq)]
pub struct InterpError {
    pub kernel: Option<String>,
    pub span: Option<Span>,
    pub message: String,
}

impl fmt::Display for InterpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kernel {
            Some(k) => write!(f, "kernel `{k}`: {}", self.message),
            None => write!(f, "{}", self.message),
        }
    }
}

impl std::error::Error for InterpError {}

fn err(message: impl Into<String>) -> InterpError {
    InterpError { kernel: None, span: None, message: message.into() }
}

/// A buffer's contents as the executor holds them: what
/// [`run_values`] takes and gives back (no `f64` detour).
#[derive(Clone, Debug, PartialEq)]
pub enum Val {
    /// `f32`, `f16`, `bf16` (values already rounded to the type).
    F(F32Tensor),
    /// `i32` and `bool` (0/1).
    I(Vec<usize>, Vec<i32>),
}

impl Val {
    pub fn shape(&self) -> &[usize] {
        match self {
            Val::F(t) => &t.shape,
            Val::I(s, _) => s,
        }
    }

    fn get_f64(&self, i: usize) -> f64 {
        match self {
            Val::F(t) => f64::from(t.data[i]),
            Val::I(_, d) => f64::from(d[i]),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Val::F(t) => t.data.len(),
            Val::I(_, d) => d.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether this holds floating-point (`f32`) values.
    pub fn is_float(&self) -> bool {
        matches!(self, Val::F(_))
    }

    pub fn elems(&self) -> Elems<'_> {
        match self {
            Val::F(t) => Elems::F32(&t.data),
            Val::I(_, d) => Elems::I32(d),
        }
    }

    /// The values as a reference tensor of `dtype`.
    pub fn to_tensor(&self, dtype: DType) -> Tensor {
        let data = (0..self.len()).map(|i| self.get_f64(i)).collect();
        Tensor { dtype, shape: self.shape().to_vec(), data }
    }
}

/// What one kernel did.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelRun {
    pub name: String,
    pub kind: &'static str,
    /// What ran it: `interpreter`, or the name a [`Hooks`] implementation gave.
    pub executor: &'static str,
    /// Attention kernels: the schedule's counts.
    pub attention: Option<KernelStats>,
}

/// The operands of one attention kernel, as [`Hooks::attention`] gets them.
pub struct AttentionArgs<'x> {
    pub q: &'x F32Tensor,
    pub k: &'x F32Tensor,
    pub v: &'x F32Tensor,
    pub mask: Option<(&'x tdl_ir::MaskExpr, &'x MaskData<'x>)>,
    /// The score modifier and its operands (`None` without one).
    pub score: Option<&'x crate::attention::ScoreMod<'x>>,
    pub bindings: &'x Bindings,
    /// The element types of q, k, v and the output (the values are `f32`,
    /// already of these types; an executor may store them narrower).
    pub dtypes: [DType; 4],
}

/// Native executors a backend plugs into the interpreter: a kernel a hook
/// takes runs there (compiled code); the others run in the interpreter.
/// [`KernelRun::executor`] records which ran what.
pub trait Hooks {
    /// Called when a program run starts, before any kernel: an executor
    /// may keep state about the run's values (e.g. device copies of the
    /// outputs it produced, which the run holds unchanged until it ends)
    /// and must forget what it kept about an earlier run's.
    fn run_started(&self) {}

    /// Called when a run ends, with its results or its error: an executor
    /// drops what it kept about the run's values.
    fn run_finished(&self) {}

    /// Lines `--stats` prints after the kernels' (what the executor did
    /// besides them, e.g. the bytes it moved to and from a device since
    /// the run started); none by default.
    fn run_report(&self) -> Vec<String> {
        Vec::new()
    }

    /// Runs attention kernel `k`, or returns `None` when this executor does
    /// not support it (the interpreter runs it then). The result is the
    /// `[lead..., T, Dv]` output in `f32`, the executor's name and what it did
    /// (the counts it knows; the others 0).
    fn attention(&self, k: &AttentionKernel, args: &AttentionArgs<'_>) -> Option<Result<HookRun, String>>;

    /// Runs a matmul given as strided `f32` operands, or returns `None`
    /// (the interpreter runs it then). The result is the row-major
    /// `[batch, M, N]` output and the executor's name.
    fn matmul(&self, _k: &MatMulKernel, _args: &MatMulArgs<'_>) -> Option<Result<(Vec<f32>, &'static str), String>> {
        None
    }

    /// Runs an elementwise chain writing a floating-point buffer, or returns
    /// `None` (the interpreter runs it then). Called after the interpreter
    /// has type-checked the body and checked the masks, so a hook may decline
    /// anything it does not recognise and the interpreter reports the error.
    /// The result is the row-major output in `f32`, before rounding to the
    /// buffer's type (the interpreter rounds it, as it rounds its own).
    fn elementwise(&self, _k: &ElementwiseKernel, _args: &ElementwiseArgs<'_>) -> Option<Result<F32Run, String>> {
        None
    }

    /// Runs an elementwise chain writing an `i32` or `bool` buffer (`bool`
    /// as 0/1), or returns `None` (the interpreter runs it then).
    fn elementwise_i32(&self, _k: &ElementwiseKernel, _args: &ElementwiseArgs<'_>) -> Option<Result<I32Run, String>> {
        None
    }

    /// Runs a reduction of a floating-point input, or returns `None`. The
    /// result is the row-major output in `f32`, before rounding.
    fn reduce(&self, _k: &ReduceKernel, _args: &RowArgs<'_>) -> Option<Result<F32Run, String>> {
        None
    }

    /// Runs a reduction of an `i32` (or `bool`, 0/1) input `x` of `shape`,
    /// or returns `None`: the row-major `i32` output.
    fn reduce_i32(&self, _k: &ReduceKernel, _x: &[i32], _shape: &[usize]) -> Option<Result<I32Run, String>> {
        None
    }

    /// Runs a row kernel (softmax, layernorm, rmsnorm, rope), or returns
    /// `None`. The result is the row-major output in `f32`, before rounding.
    fn row(&self, _k: &RowKernel, _args: &RowArgs<'_>) -> Option<Result<F32Run, String>> {
        None
    }

    /// Runs a data-movement kernel over floating-point sources, or returns
    /// `None`. The result is the row-major output.
    fn movement(&self, _k: &MoveKernel, _args: &MoveArgs<'_>) -> Option<Result<F32Run, String>> {
        None
    }
}

/// What the `f32` hooks give back: the row-major output and the executor's name.
pub type F32Run = (Vec<f32>, &'static str);

/// What the `i32` hooks give back: the row-major output and the executor's name.
pub type I32Run = (Vec<i32>, &'static str);

/// The elements of a buffer, as the interpreter holds them.
#[derive(Clone, Copy, Debug)]
pub enum Elems<'x> {
    /// `f32`, `f16` and `bf16` buffers (`f32` values).
    F32(&'x [f32]),
    /// `i32` and `bool` (0/1) buffers.
    I32(&'x [i32]),
}

impl Elems<'_> {
    pub fn len(&self) -> usize {
        match self {
            Elems::F32(d) => d.len(),
            Elems::I32(d) => d.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A buffer read through a view, resolved under the bindings: element
/// `idx` (of `shape`) is `data[offset + Σ idx[a]·strides[a]]` (a view of a
/// buffer stays inside it; a hook checks before it reads through raw
/// pointers all the same).
#[derive(Clone, Debug)]
pub struct StridedView<'x> {
    pub data: Elems<'x>,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub strides: Vec<usize>,
}

/// An elementwise kernel's operands, as [`Hooks::elementwise`] gets them.
pub struct ElementwiseArgs<'x> {
    /// The output's shape.
    pub shape: &'x [usize],
    /// Input `i` (read by `EwOp::Load(i)`) broadcast to `shape`: its shape
    /// is the output's and its stride is 0 along every broadcast axis.
    pub inputs: Vec<StridedView<'x>>,
    /// The operands of each of the kernel's masks, in order.
    pub masks: Vec<MaskData<'x>>,
    pub bindings: &'x Bindings,
    /// The element types of the inputs (in order) and of the output (the
    /// values are already of these types; an executor may store
    /// floating-point ones narrower).
    pub dtypes: Vec<DType>,
    pub out_dtype: DType,
}

/// A row or reduce kernel's operands, as [`Hooks::row`] and
/// [`Hooks::reduce`] get them: the contiguous input `x` of `shape`, and
/// for norms their `[d]` parameters (gain, then bias) where `d` is the
/// last axis.
pub struct RowArgs<'x> {
    pub x: &'x [f32],
    pub shape: &'x [usize],
    pub params: Vec<&'x [f32]>,
    /// The element types of `x` and of the output (the values are already
    /// of these types; an executor may store them narrower).
    pub dtypes: [DType; 2],
}

/// A data-movement kernel's sources (each through its view, not
/// broadcast) and the output's shape, as [`Hooks::movement`] gets them.
pub struct MoveArgs<'x> {
    pub shape: &'x [usize],
    pub srcs: Vec<StridedView<'x>>,
    /// The element types of the sources (in order) and of the output (the
    /// values are already of these types; an executor may store them
    /// narrower).
    pub dtypes: Vec<DType>,
    pub out_dtype: DType,
}

/// A matmul's operands, resolved: element `(b, i, p)` of A is
/// `a[a_offsets[b] + i·a_i + p·a_p]`, element `(b, p, j)` of B is
/// `b[b_offsets[b] + p·b_p + j·b_j]`; the output is `[batch, m, n]`.
pub struct MatMulArgs<'x> {
    pub a: &'x [f32],
    pub b: &'x [f32],
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a_i: usize,
    pub a_p: usize,
    pub b_p: usize,
    pub b_j: usize,
    pub a_offsets: Vec<usize>,
    pub b_offsets: Vec<usize>,
    /// The element types of A, B and the output (the values are `f32`,
    /// already of these types; an executor may store them narrower).
    pub dtypes: [DType; 3],
}

/// What a hook gives back: the output, its executor's name, its counts.
pub type HookRun = (F32Tensor, &'static str, KernelStats);

/// No hooks: everything runs in the interpreter.
pub struct NoHooks;

impl Hooks for NoHooks {
    fn attention(&self, _: &AttentionKernel, _: &AttentionArgs<'_>) -> Option<Result<HookRun, String>> {
        None
    }
}

/// The results and what each kernel did.
#[derive(Clone, Debug)]
pub struct RunOutput {
    pub results: Vec<Tensor>,
    pub kernels: Vec<KernelRun>,
    pub bindings: Bindings,
}

/// Runs `p` on `inputs` (one per parameter, in order) under the default
/// [`Limits`].
pub fn run(p: &KernelProgram, inputs: &[Tensor]) -> Result<RunOutput, InterpError> {
    run_with_limits(p, inputs, &Limits::default())
}

/// Binds the dimension symbols from the input shapes and checks every
/// input against its parameter's type.
pub fn bind(p: &KernelProgram, inputs: &[Tensor]) -> Result<Bindings, InterpError> {
    let typed: Vec<(DType, &[usize])> = inputs.iter().map(|t| (t.dtype, t.shape.as_slice())).collect();
    bind_shapes(p, &typed)
}

/// [`bind`] from each input's type and shape.
pub fn bind_shapes(p: &KernelProgram, inputs: &[(DType, &[usize])]) -> Result<Bindings, InterpError> {
    if inputs.len() != p.params.len() {
        return Err(err(format!("`{}` takes {} input(s), {} given", p.name, p.params.len(), inputs.len())));
    }
    let mut b = Bindings::new();
    let param = |i: usize| -> Result<&Buffer, InterpError> {
        p.params.get(i).and_then(|&id| p.buffer(id)).ok_or_else(|| err(format!("parameter {i} has no buffer")))
    };
    for (i, &(dtype, shape)) in inputs.iter().enumerate() {
        let buf = param(i)?;
        if dtype != buf.dtype || shape.len() != buf.shape.len() {
            return Err(err(format!(
                "input `{}` must be {}[{}], found {}",
                buf.name,
                buf.dtype.name(),
                dims_text(&buf.shape),
                tdl_ir::layout::type_text(dtype, shape)
            )));
        }
        for (d, &n) in buf.shape.iter().zip(shape) {
            if let Some(sym) = d.as_sym() {
                let n = i64::try_from(n).map_err(|_| err("an input dimension does not fit in 64 bits"))?;
                if let Some(&old) = b.get(sym) {
                    if old != n {
                        return Err(err(format!(
                            "input `{}`: `{sym}` is {n} here but {old} in an earlier input",
                            buf.name
                        )));
                    }
                }
                b.insert(sym.to_string(), n);
            }
        }
    }
    for (i, &(_, shape)) in inputs.iter().enumerate() {
        let buf = param(i)?;
        let want = eval_shape(&buf.shape, &b)?;
        if want != shape {
            return Err(err(format!(
                "input `{}` must have shape [{}] = {:?} under the bound symbols, found {:?}",
                buf.name,
                dims_text(&buf.shape),
                want,
                shape
            )));
        }
    }
    for s in &p.symbols {
        if !b.contains_key(s) {
            return Err(err(format!("the symbol `{s}` is not bound by any input's shape")));
        }
    }
    Ok(b)
}

fn dims_text(d: &[tdl_ir::Dim]) -> String {
    d.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// A symbolic shape under `b`: every dimension evaluated and non-negative.
pub fn eval_shape(shape: &[tdl_ir::Dim], b: &Bindings) -> Result<Vec<usize>, InterpError> {
    shape
        .iter()
        .map(|d| {
            let v = d.eval(b).map_err(|e| err(format!("dimension {d}: {e}")))?;
            usize::try_from(v).map_err(|_| err(format!("dimension {d} is {v}, which is negative")))
        })
        .collect()
}

/// Runs `p` on `inputs`; every buffer is checked against `limits` before
/// it is allocated.
pub fn run_with_limits(p: &KernelProgram, inputs: &[Tensor], limits: &Limits) -> Result<RunOutput, InterpError> {
    run_with_hooks(p, inputs, limits, &NoHooks)
}

/// [`run_with_limits`], handing the kernels `hooks` supports to it.
pub fn run_with_hooks(
    p: &KernelProgram,
    inputs: &[Tensor],
    limits: &Limits,
    hooks: &dyn Hooks,
) -> Result<RunOutput, InterpError> {
    bind(p, inputs)?;
    let mut vals = Vec::with_capacity(inputs.len());
    for (i, t) in inputs.iter().enumerate() {
        t.check_values().map_err(|e| err(format!("input {i}: {e}")))?;
        vals.push(from_tensor(t));
    }
    let out = run_values(p, vals, limits, hooks)?;
    let results = out.results.iter().zip(&p.results).map(|(v, &r)| v.to_tensor(p.buffers[r.index()].dtype)).collect();
    Ok(RunOutput { results, kernels: out.kernels, bindings: out.bindings })
}

/// What [`run_values`] gives back.
#[derive(Clone, Debug)]
pub struct ValuesOutput {
    pub results: Vec<Val>,
    pub kernels: Vec<KernelRun>,
    pub bindings: Bindings,
}

/// [`run_with_hooks`] on values the caller already holds as the executor
/// does (`f32` for floating-point parameters, already rounded to `f16` or
/// `bf16` where the parameter has that type; `i32` for `i32`, 0/1 for
/// `bool`), giving the results the same way: a compiled artifact passes
/// its callers' buffers through without converting them to `f64`.
pub fn run_values(
    p: &KernelProgram,
    inputs: Vec<Val>,
    limits: &Limits,
    hooks: &dyn Hooks,
) -> Result<ValuesOutput, InterpError> {
    let mut typed = Vec::with_capacity(inputs.len());
    for (i, v) in inputs.iter().enumerate() {
        let dtype = p.params.get(i).and_then(|&id| p.buffer(id)).map_or(DType::F32, |b| b.dtype);
        let ok = match v {
            Val::F(_) => dtype.is_float(),
            Val::I(_, d) => !dtype.is_float() && (dtype != DType::Bool || d.iter().all(|&x| x == 0 || x == 1)),
        };
        if !ok {
            return Err(err(format!("input {i} does not hold {} values", dtype.name())));
        }
        if v.len() != v.shape().iter().product::<usize>() {
            return Err(err(format!("input {i} has {} elements for shape {:?}", v.len(), v.shape())));
        }
        typed.push((dtype, v.shape()));
    }
    let bindings = bind_shapes(p, &typed)?;
    hooks.run_started();
    let out = run_kernels(p, inputs, bindings, limits, hooks);
    hooks.run_finished();
    out
}

/// The kernels of [`run_values`] in order, between the hooks' start and end.
fn run_kernels(
    p: &KernelProgram,
    inputs: Vec<Val>,
    bindings: Bindings,
    limits: &Limits,
    hooks: &dyn Hooks,
) -> Result<ValuesOutput, InterpError> {
    let mut vals: Vec<Option<Val>> = vec![None; p.buffers.len()];
    for (i, v) in inputs.into_iter().enumerate() {
        vals[p.params[i].index()] = Some(v);
    }
    for (i, b) in p.buffers.iter().enumerate() {
        if let BufKind::Const(c) = &b.kind {
            let t = Tensor::new(c.dtype, c.shape.clone(), c.data.clone()).map_err(|e| err(e.to_string()))?;
            vals[i] = Some(from_tensor(&t));
        }
    }
    let mut runs = Vec::with_capacity(p.kernels.len());
    for k in &p.kernels {
        let at = |e: InterpError| InterpError { kernel: Some(k.name.clone()), span: k.span, message: e.message };
        let out = k.body.out();
        let ob = p.buffer(out).ok_or_else(|| at(err(format!("no buffer {out}"))))?;
        let shape = eval_shape(&ob.shape, &bindings).map_err(at)?;
        limits.check(&format!("buffer {out} (`{}`)", ob.name), &shape).map_err(|e| at(err(e.to_string())))?;
        let mut ctx = Ctx { p, vals: &vals, bindings: &bindings, limits, hooks, executor: "interpreter" };
        let (val, stats) = ctx.kernel(&k.body, ob.dtype, &shape).map_err(at)?;
        let executor = ctx.executor;
        if val.shape() != shape.as_slice() {
            return Err(at(err(format!("computed shape {:?}, but the buffer is {:?}", val.shape(), shape))));
        }
        // Values never change during a run (executors may rely on it,
        // see `Hooks::run_started`): a buffer is written once.
        match vals.get_mut(out.index()) {
            Some(slot @ None) => *slot = Some(val),
            _ => return Err(at(err(format!("{out} is written twice (or is an input or a constant)")))),
        }
        runs.push(KernelRun { name: k.name.clone(), kind: k.body.kind(), executor, attention: stats });
    }
    // Results move out of the buffers; a buffer returned twice is cloned.
    let mut results: Vec<Val> = Vec::with_capacity(p.results.len());
    for (i, &r) in p.results.iter().enumerate() {
        let v = match vals.get_mut(r.index()).and_then(Option::take) {
            Some(v) => v,
            None => match p.results[..i].iter().position(|&e| e == r) {
                Some(j) => results[j].clone(),
                None => return Err(err(format!("result {r} has no value"))),
            },
        };
        results.push(v);
    }
    Ok(ValuesOutput { results, kernels: runs, bindings })
}

fn from_tensor(t: &Tensor) -> Val {
    if t.dtype.is_float() {
        let data = t.data.iter().map(|&v| round_value(t.dtype, v) as f32).collect();
        Val::F(F32Tensor { shape: t.shape.clone(), data })
    } else {
        Val::I(t.shape.clone(), t.data.iter().map(|&v| round_value(t.dtype, v) as i32).collect())
    }
}

/// An access resolved under the bindings: element `idx` of the view is
/// `data[offset + Σ idx[a]·strides[a]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub offset: usize,
    pub shape: Vec<usize>,
    pub strides: Vec<usize>,
}

impl Resolved {
    fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Strides for reading this view broadcast (right-aligned) to `out`.
    pub fn broadcast_to(&self, out: &[usize]) -> Result<Vec<usize>, InterpError> {
        if self.shape.len() > out.len() {
            return Err(err(format!("an operand of shape {:?} does not broadcast to {:?}", self.shape, out)));
        }
        let lead = out.len() - self.shape.len();
        let mut st = vec![0usize; out.len()];
        for (a, (&d, &s)) in self.shape.iter().zip(&self.strides).enumerate() {
            if d == out[lead + a] {
                st[lead + a] = s;
            } else if d != 1 {
                return Err(err(format!("an operand of shape {:?} does not broadcast to {:?}", self.shape, out)));
            }
        }
        Ok(st)
    }
}

/// Access `a` of a row-major buffer of shape `buf_shape`, resolved under
/// `bindings` (what the interpreter reads; backends derive the same views
/// from it ahead of time).
pub fn resolve_access(a: &Access, buf_shape: &[usize], bindings: &Bindings) -> Result<Resolved, InterpError> {
    let shape = buf_shape.to_vec();
    let mut r = Resolved { offset: 0, strides: strides(&shape), shape };
    for op in &a.view {
        let rank = r.shape.len();
        match op {
            ViewOp::Transpose if rank >= 2 => {
                r.shape.swap(rank - 2, rank - 1);
                r.strides.swap(rank - 2, rank - 1);
            }
            ViewOp::Permute(perm) if perm.len() == rank && perm.iter().all(|&x| x < rank) => {
                r.shape = perm.iter().map(|&x| r.shape[x]).collect();
                r.strides = perm.iter().map(|&x| r.strides[x]).collect();
            }
            ViewOp::Slice { axis, start, end } if *axis < rank => {
                let (s, e) = (usize::try_from(*start), usize::try_from(*end));
                let (Ok(s), Ok(e)) = (s, e) else {
                    return Err(err(format!("slice {start}..{end} has a negative bound")));
                };
                if s > e || e > r.shape[*axis] {
                    return Err(err(format!(
                        "slice {start}..{end} of axis {axis} (size {}) is out of range",
                        r.shape[*axis]
                    )));
                }
                r.offset += s * r.strides[*axis];
                r.shape[*axis] = e - s;
            }
            ViewOp::Reshape(dims) => {
                let shape = eval_shape(dims, bindings)?;
                if shape.iter().try_fold(1usize, |x, &d| x.checked_mul(d)) != Some(r.numel()) {
                    return Err(err(format!("reshape of {:?} into {:?}: element counts differ", r.shape, shape)));
                }
                r.strides = if r.strides == strides(&r.shape) {
                    strides(&shape)
                } else {
                    split_strides(&r.shape, &r.strides, &shape).ok_or_else(|| {
                        err(format!("a reshape of a non-contiguous view of {:?} into {:?}", r.shape, shape))
                    })?
                };
                r.shape = shape;
            }
            other => return Err(err(format!("view {other:?} does not apply to rank {rank}"))),
        }
    }
    Ok(r)
}

struct Ctx<'a> {
    p: &'a KernelProgram,
    vals: &'a [Option<Val>],
    bindings: &'a Bindings,
    limits: &'a Limits,
    hooks: &'a dyn Hooks,
    executor: &'static str,
}

fn round_f32(dtype: DType, v: f32) -> f32 {
    match dtype {
        DType::F32 => v,
        _ => round_value(dtype, f64::from(v)) as f32,
    }
}

impl<'a> Ctx<'a> {
    fn val(&self, b: BufId) -> Result<&'a Val, InterpError> {
        match self.vals.get(b.index()) {
            Some(Some(v)) => Ok(v),
            _ => Err(err(format!("{b} is read before it is written"))),
        }
    }

    /// Buffer `b` as a reference tensor (what mask and lambda evaluators read).
    fn tensor(&self, b: BufId) -> Result<Tensor, InterpError> {
        Ok(self.val(b)?.to_tensor(self.dtype(b)?))
    }

    fn dtype(&self, b: BufId) -> Result<DType, InterpError> {
        self.p.buffer(b).map(|x| x.dtype).ok_or_else(|| err(format!("no buffer {b}")))
    }

    fn resolve(&self, a: &Access) -> Result<Resolved, InterpError> {
        resolve_access(a, self.val(a.buf)?.shape(), self.bindings)
    }

    fn kernel(
        &mut self,
        k: &KernelBody,
        dtype: DType,
        shape: &[usize],
    ) -> Result<(Val, Option<KernelStats>), InterpError> {
        Ok(match k {
            KernelBody::Attention(a) => {
                let (v, s) = self.attention(a, dtype)?;
                (v, Some(s))
            }
            KernelBody::MatMul(m) => (self.matmul(m, dtype, shape)?, None),
            KernelBody::Elementwise(e) => (self.elementwise(e, dtype, shape)?, None),
            KernelBody::Reduce(r) => (self.reduce(r, dtype, shape)?, None),
            KernelBody::Row(r) => (self.row(r, dtype, shape)?, None),
            KernelBody::Move(m) => (self.movement(m, dtype, shape)?, None),
        })
    }

    /// A hook's `f32` result as the output value (rounded to `dtype`), or
    /// `None` when the hook declined.
    fn hook_f32(
        &mut self,
        r: Option<Result<F32Run, String>>,
        dtype: DType,
        out: &[usize],
    ) -> Result<Option<Val>, InterpError> {
        let Some(r) = r else { return Ok(None) };
        let (mut data, name) = r.map_err(err)?;
        let n: usize = out.iter().product();
        if data.len() != n {
            return Err(err(format!("the {name} executor gave {} values, not {n}", data.len())));
        }
        self.executor = name;
        if dtype != DType::F32 {
            data.iter_mut().for_each(|v| *v = round_f32(dtype, *v));
        }
        Ok(Some(Val::F(F32Tensor { shape: out.to_vec(), data })))
    }

    /// [`Self::hook_f32`] for hooks giving `i32` values (`bool` ones must be
    /// 0 or 1).
    fn hook_i32(
        &mut self,
        r: Option<Result<I32Run, String>>,
        dtype: DType,
        out: &[usize],
    ) -> Result<Option<Val>, InterpError> {
        let Some(r) = r else { return Ok(None) };
        let (data, name) = r.map_err(err)?;
        let n: usize = out.iter().product();
        if data.len() != n {
            return Err(err(format!("the {name} executor gave {} values, not {n}", data.len())));
        }
        if dtype == DType::Bool && data.iter().any(|&x| x != 0 && x != 1) {
            return Err(err(format!("the {name} executor gave a bool that is not 0 or 1")));
        }
        self.executor = name;
        Ok(Some(Val::I(out.to_vec(), data)))
    }

    fn f32_buf(&self, b: BufId, what: &str) -> Result<&'a F32Tensor, InterpError> {
        match self.val(b)? {
            Val::F(t) => Ok(t),
            Val::I(..) => Err(err(format!("attention {what} must be a floating-point tensor"))),
        }
    }

    fn attention(&mut self, a: &AttentionKernel, dtype: DType) -> Result<(Val, KernelStats), InterpError> {
        let (q, k, v) = (self.f32_buf(a.q, "q")?, self.f32_buf(a.k, "k")?, self.f32_buf(a.v, "v")?);
        // Mask and lambda operands as the predicate evaluator reads them.
        let mask_tensors: Vec<Tensor> = match &a.mask {
            Some(m) => m.operands.iter().map(|&b| self.tensor(b)).collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        let mask_data = MaskData {
            operands: mask_tensors
                .iter()
                .map(|t| OperandData { dtype: t.dtype, shape: t.shape.clone(), data: &t.data })
                .collect(),
        };
        let score_tensors: Vec<Option<Tensor>> = a
            .score_operands
            .iter()
            .map(|o| match o {
                Some(b) => self.tensor(*b).map(Some),
                None => Ok(None),
            })
            .collect::<Result<_, InterpError>>()?;
        let score = a.score.as_ref().map(|expr| ScoreMod {
            expr,
            operands: score_tensors
                .iter()
                .map(|t| t.as_ref().map(|t| OperandData { dtype: t.dtype, shape: t.shape.clone(), data: &t.data }))
                .collect(),
        });
        let sched = AttentionSchedule { tile_q: a.tile_q, tile_k: a.tile_k, kv_split: a.kv_split };
        let mask = a.mask.as_ref().map(|m| (&m.expr, &mask_data));
        let dtypes = [self.dtype(a.q)?, self.dtype(a.k)?, self.dtype(a.v)?, dtype];
        let args = AttentionArgs { q, k, v, mask, score: score.as_ref(), bindings: self.bindings, dtypes };
        let (mut out, stats) = match self.hooks.attention(a, &args) {
            Some(r) => {
                let (out, name, stats) = r.map_err(err)?;
                self.executor = name;
                (out, stats)
            }
            None => {
                attention_tiled_stats(q, k, v, mask, a.scale, score.as_ref(), self.bindings, &sched).map_err(err)?
            }
        };
        if dtype != DType::F32 {
            out.data.iter_mut().for_each(|x| *x = round_f32(dtype, *x));
        }
        Ok((Val::F(out), stats))
    }

    fn matmul(&mut self, m: &MatMulKernel, dtype: DType, out_shape: &[usize]) -> Result<Val, InterpError> {
        let (ra, rb) = (self.resolve(&m.a)?, self.resolve(&m.b)?);
        let (Val::F(av), Val::F(bv)) = (self.val(m.a.buf)?, self.val(m.b.buf)?) else {
            return Err(err("not supported yet: integer matmul in the Kernel IR interpreter"));
        };
        let (na, nb, no) = (ra.shape.len(), rb.shape.len(), out_shape.len());
        if na < 2 || nb < 2 || no < 2 {
            return Err(err("matmul needs operands of rank at least 2"));
        }
        let (mm, kk) = (ra.shape[na - 2], ra.shape[na - 1]);
        let (kb, nn) = (rb.shape[nb - 2], rb.shape[nb - 1]);
        if kk != kb || out_shape[no - 2] != mm || out_shape[no - 1] != nn {
            return Err(err(format!("matmul {:?} @ {:?} does not give {:?}", ra.shape, rb.shape, out_shape)));
        }
        let batch = &out_shape[..no - 2];
        // Leading-axis strides, broadcast to the batch shape.
        let lead = |r: &Resolved, n: usize| -> Result<Vec<usize>, InterpError> {
            let sub = Resolved { offset: 0, shape: r.shape[..n - 2].to_vec(), strides: r.strides[..n - 2].to_vec() };
            sub.broadcast_to(batch)
        };
        let (la, lb) = (lead(&ra, na)?, lead(&rb, nb)?);
        let (a_i, a_p) = (ra.strides[na - 2], ra.strides[na - 1]);
        let (b_p, b_j) = (rb.strides[nb - 2], rb.strides[nb - 1]);
        let (tm, tn, tk) = (m.tile_m.max(1), m.tile_n.max(1), m.tile_k.max(1));
        let nbatch: usize = batch.iter().product();
        {
            let (mut a_offsets, mut b_offsets) = (Vec::with_capacity(nbatch), Vec::with_capacity(nbatch));
            let mut bidx = vec![0usize; batch.len()];
            for _ in 0..nbatch {
                a_offsets.push(ra.offset + bidx.iter().zip(&la).map(|(i, s)| i * s).sum::<usize>());
                b_offsets.push(rb.offset + bidx.iter().zip(&lb).map(|(i, s)| i * s).sum::<usize>());
                next_index(&mut bidx, batch);
            }
            let dtypes = [self.dtype(m.a.buf)?, self.dtype(m.b.buf)?, dtype];
            let args = MatMulArgs {
                a: &av.data,
                b: &bv.data,
                m: mm,
                n: nn,
                k: kk,
                a_i,
                a_p,
                b_p,
                b_j,
                a_offsets,
                b_offsets,
                dtypes,
            };
            if let Some(r) = self.hooks.matmul(m, &args) {
                let (mut out, name) = r.map_err(err)?;
                if out.len() != nbatch * mm * nn {
                    return Err(err(format!("the {name} matmul gave {} values, not {}", out.len(), nbatch * mm * nn)));
                }
                self.executor = name;
                if dtype != DType::F32 {
                    out.iter_mut().for_each(|v| *v = round_f32(dtype, *v));
                }
                return Ok(Val::F(F32Tensor { shape: out_shape.to_vec(), data: out }));
            }
        }
        // C accumulates in f32 in the output itself; B is packed one
        // (k-tile × n-tile) panel at a time, contiguous, as a GEMM micro-kernel
        // reads it; every m-tile of the batch reuses the panel.
        let mut out = vec![0f32; nbatch * mm * nn];
        let mut panel = vec![0f32; tk.min(kk.max(1)) * tn.min(nn.max(1))];
        let mut bidx = vec![0usize; batch.len()];
        for bi in 0..nbatch {
            let oa = ra.offset + bidx.iter().zip(&la).map(|(i, s)| i * s).sum::<usize>();
            let ob = rb.offset + bidx.iter().zip(&lb).map(|(i, s)| i * s).sum::<usize>();
            for j0 in (0..nn).step_by(tn) {
                let bn = tn.min(nn - j0);
                for p0 in (0..kk).step_by(tk) {
                    let bk = tk.min(kk - p0);
                    for p in 0..bk {
                        let src = ob + (p0 + p) * b_p + j0 * b_j;
                        for (j, x) in panel[p * bn..(p + 1) * bn].iter_mut().enumerate() {
                            *x = bv.data[src + j * b_j];
                        }
                    }
                    for i0 in (0..mm).step_by(tm) {
                        for i in i0..tm.min(mm - i0) + i0 {
                            let arow = oa + i * a_i;
                            let crow = &mut out[(bi * mm + i) * nn + j0..(bi * mm + i) * nn + j0 + bn];
                            for p in 0..bk {
                                let x = av.data[arow + (p0 + p) * a_p];
                                for (c, y) in crow.iter_mut().zip(&panel[p * bn..(p + 1) * bn]) {
                                    *c += x * y;
                                }
                            }
                        }
                    }
                }
            }
            next_index(&mut bidx, batch);
        }
        if dtype != DType::F32 {
            out.iter_mut().for_each(|v| *v = round_f32(dtype, *v));
        }
        Ok(Val::F(F32Tensor { shape: out_shape.to_vec(), data: out }))
    }

    fn mask_evals(&self, masks: &'a [MaskUse], out: &[usize]) -> Result<Vec<(Vec<Tensor>, &'a MaskUse)>, InterpError> {
        masks
            .iter()
            .map(|m| {
                let ts = m.operands.iter().map(|&b| self.tensor(b)).collect::<Result<Vec<_>, _>>()?;
                if out.len() < 2 {
                    return Err(err("a mask applies to a result of rank at least 2"));
                }
                Ok((ts, m))
            })
            .collect()
    }

    /// The fused chain, evaluated one output row (last axis) at a time: each
    /// instruction computes a whole row of lanes from its operands' lanes,
    /// as a vectorising backend would; nothing but the result is stored.
    fn elementwise(&mut self, e: &ElementwiseKernel, dtype: DType, out: &[usize]) -> Result<Val, InterpError> {
        let inputs: Vec<(&Val, Resolved, Vec<usize>)> = e
            .inputs
            .iter()
            .map(|a| {
                let r = self.resolve(a)?;
                let st = r.broadcast_to(out)?;
                Ok((self.val(a.buf)?, r, st))
            })
            .collect::<Result<_, InterpError>>()?;
        let mask_parts = self.mask_evals(&e.masks, out)?;
        let r = out.len();
        let (tq, ts) = if r >= 2 { (out[r - 2], out[r - 1]) } else { (1, 1) };
        let masks: Vec<MaskEval<'_>> = mask_parts
            .iter()
            .map(|(ts_, m)| {
                let refs: Vec<&Tensor> = ts_.iter().collect();
                MaskEval::new(&m.expr, &refs, tq, ts, self.bindings).map_err(|x| err(x.to_string()))
            })
            .collect::<Result<_, _>>()?;
        // Type-check the body once, so the row loop cannot meet a mismatch.
        for (pc, inst) in e.body.iter().enumerate() {
            let ty = |i: usize| -> Result<DType, InterpError> {
                if i >= pc {
                    return Err(err(format!("instruction {pc} reads v{i}, which is not computed before it")));
                }
                Ok(e.body[i].dtype)
            };
            let ok = match &inst.op {
                EwOp::Load(i) => {
                    inputs.get(*i).is_some_and(|(v, _, _)| matches!(v, Val::F(_)) == inst.dtype.is_float())
                }
                EwOp::Const(_) => true,
                EwOp::Unary(_, a) => ty(*a)? == inst.dtype && inst.dtype != DType::Bool,
                EwOp::Binary(_, x, y) => ty(*x)? == inst.dtype && ty(*y)? == inst.dtype && inst.dtype != DType::Bool,
                EwOp::Select(c, x, y) => ty(*c)? == DType::Bool && ty(*x)? == inst.dtype && ty(*y)? == inst.dtype,
                EwOp::Mask(m) => *m < masks.len() && inst.dtype == DType::Bool && r >= 2,
            };
            if !ok {
                return Err(err(format!("instruction {pc} ({:?}: {}) is ill-typed", inst.op, inst.dtype.name())));
            }
        }
        match e.body.last() {
            Some(l) if l.dtype.is_float() == dtype.is_float() => {}
            _ => return Err(err("the elementwise result's type differs from its buffer's")),
        }
        {
            let args = ElementwiseArgs {
                shape: out,
                inputs: inputs
                    .iter()
                    .map(|(v, res, st)| StridedView {
                        data: v.elems(),
                        offset: res.offset,
                        shape: out.to_vec(),
                        strides: st.clone(),
                    })
                    .collect(),
                masks: mask_parts
                    .iter()
                    .map(|(ts_, _)| MaskData {
                        operands: ts_
                            .iter()
                            .map(|t| OperandData { dtype: t.dtype, shape: t.shape.clone(), data: &t.data })
                            .collect(),
                    })
                    .collect(),
                bindings: self.bindings,
                dtypes: e.inputs.iter().map(|a| self.dtype(a.buf)).collect::<Result<_, _>>()?,
                out_dtype: dtype,
            };
            if dtype.is_float() {
                let r = self.hooks.elementwise(e, &args);
                if let Some(v) = self.hook_f32(r, dtype, out)? {
                    return Ok(v);
                }
            } else if let Some(v) = self.hook_i32(self.hooks.elementwise_i32(e, &args), dtype, out)? {
                return Ok(v);
            }
        }
        let width = out.last().copied().unwrap_or(1);
        let n: usize = out.iter().product();
        let rows = n.checked_div(width).unwrap_or(0);
        let lead = &out[..r.saturating_sub(1)];
        let mut lanes: Vec<Lane> = e.body.iter().map(|i| Lane::new(i.dtype, width)).collect();
        let mut fout = if dtype.is_float() { Vec::with_capacity(n) } else { Vec::new() };
        let mut iout = if dtype.is_float() { Vec::new() } else { Vec::with_capacity(n) };
        let mut idx = vec![0usize; lead.len()];
        for _ in 0..rows {
            for (pc, inst) in e.body.iter().enumerate() {
                let (done, rest) = lanes.split_at_mut(pc);
                let dst = &mut rest[0];
                match (&inst.op, dst) {
                    (EwOp::Load(i), dst) => {
                        let (val, res, st) = &inputs[*i];
                        let base = res.offset + idx.iter().zip(st).map(|(a, b)| a * b).sum::<usize>();
                        let step = if r == 0 { 0 } else { st[r - 1] };
                        match (val, dst) {
                            (Val::F(t), Lane::F(d)) => {
                                d.iter_mut().enumerate().for_each(|(j, x)| *x = t.data[base + j * step])
                            }
                            (Val::I(_, t), Lane::I(d)) => {
                                d.iter_mut().enumerate().for_each(|(j, x)| *x = t[base + j * step])
                            }
                            (Val::I(_, t), Lane::B(d)) => {
                                d.iter_mut().enumerate().for_each(|(j, x)| *x = t[base + j * step] != 0)
                            }
                            _ => return Err(err(format!("instruction {pc}: a load of the wrong type"))),
                        }
                    }
                    (EwOp::Const(c), Lane::F(d)) => d.fill(*c as f32),
                    (EwOp::Const(c), Lane::I(d)) => d.fill(round_value(DType::I32, *c) as i32),
                    (EwOp::Const(c), Lane::B(d)) => d.fill(*c != 0.0),
                    (EwOp::Unary(u, a), dst) => unary_lane(*u, &done[*a], dst)?,
                    (EwOp::Binary(b, x, y), dst) => binary_lane(*b, &done[*x], &done[*y], dst)?,
                    (EwOp::Select(c, x, y), dst) => {
                        let Lane::B(c) = &done[*c] else { return Err(err("select on a non-bool")) };
                        match (&done[*x], &done[*y], dst) {
                            (Lane::F(a), Lane::F(b), Lane::F(d)) => select(c, a, b, d),
                            (Lane::I(a), Lane::I(b), Lane::I(d)) => select(c, a, b, d),
                            (Lane::B(a), Lane::B(b), Lane::B(d)) => select(c, a, b, d),
                            _ => return Err(err(format!("instruction {pc}: select of mismatched types"))),
                        }
                    }
                    (EwOp::Mask(m), Lane::B(d)) => {
                        let ev = &masks[*m];
                        let q = idx[r - 2];
                        let h = if r >= 3 { idx[r - 3] } else { 0 };
                        for (k, x) in d.iter_mut().enumerate() {
                            *x = ev.holds(q, k, h).map_err(|x| err(x.to_string()))?;
                        }
                    }
                    _ => return Err(err(format!("instruction {pc} ({:?}) is ill-typed", inst.op))),
                }
            }
            match lanes.last() {
                Some(Lane::F(x)) => fout.extend(x.iter().map(|&v| round_f32(dtype, v))),
                Some(Lane::I(x)) => iout.extend_from_slice(x),
                Some(Lane::B(x)) => iout.extend(x.iter().map(|&b| i32::from(b))),
                None => return Err(err("an elementwise kernel with no instructions")),
            }
            next_index(&mut idx, lead);
        }
        if dtype.is_float() {
            Ok(Val::F(F32Tensor { shape: out.to_vec(), data: fout }))
        } else {
            Ok(Val::I(out.to_vec(), iout))
        }
    }

    fn contiguous(&self, a: &Access) -> Result<(&'a Val, Vec<usize>), InterpError> {
        let r = self.resolve(a)?;
        if r.offset != 0 || r.strides != strides(&r.shape) {
            return Err(err("this kernel needs a contiguous operand"));
        }
        Ok((self.val(a.buf)?, r.shape))
    }

    fn reduce(&mut self, k: &ReduceKernel, dtype: DType, out: &[usize]) -> Result<Val, InterpError> {
        let (x, shape) = self.contiguous(&k.x)?;
        let Some(&n) = shape.get(k.axis) else {
            return Err(err(format!("axis {} is out of range for shape {:?}", k.axis, shape)));
        };
        let outer: usize = shape[..k.axis].iter().product();
        let inner: usize = shape[k.axis + 1..].iter().product();
        if outer * inner != out.iter().product::<usize>() {
            return Err(err(format!("reduce of {:?} over axis {} does not give {:?}", shape, k.axis, out)));
        }
        if k.op == ReduceOp::Max && n == 0 {
            return Err(err(format!("`max` over the empty axis {} of {:?} has no maximum", k.axis, shape)));
        }
        match x {
            Val::F(t) => {
                let dtypes = [self.dtype(k.x.buf)?, dtype];
                let r = self.hooks.reduce(k, &RowArgs { x: &t.data, shape: &shape, params: Vec::new(), dtypes });
                if let Some(v) = self.hook_f32(r, dtype, out)? {
                    return Ok(v);
                }
            }
            Val::I(_, d) => {
                if let Some(v) = self.hook_i32(self.hooks.reduce_i32(k, d, &shape), dtype, out)? {
                    return Ok(v);
                }
            }
        }
        match x {
            Val::F(t) => {
                let mut data = Vec::with_capacity(outer * inner);
                for o in 0..outer {
                    for j in 0..inner {
                        let at = |i: usize| t.data[(o * n + i) * inner + j];
                        let v = match k.op {
                            ReduceOp::Sum => (0..n).fold(0f32, |a, i| a + at(i)),
                            ReduceOp::Mean => (0..n).fold(0f32, |a, i| a + at(i)) / n as f32,
                            ReduceOp::Max => (1..n).fold(at(0), |a, i| max_nan(a, at(i))),
                        };
                        data.push(round_f32(dtype, v));
                    }
                }
                Ok(Val::F(F32Tensor { shape: out.to_vec(), data }))
            }
            Val::I(_, d) => {
                let mut data = Vec::with_capacity(outer * inner);
                for o in 0..outer {
                    for j in 0..inner {
                        let at = |i: usize| d[(o * n + i) * inner + j];
                        let v = match k.op {
                            ReduceOp::Sum => (0..n).fold(0i32, |a, i| a.wrapping_add(at(i))),
                            ReduceOp::Mean => {
                                let s: i64 = (0..n).map(|i| i64::from(at(i))).sum();
                                round_value(dtype, s as f64 / n as f64) as i32
                            }
                            ReduceOp::Max => (1..n).fold(at(0), |a, i| a.max(at(i))),
                        };
                        data.push(v);
                    }
                }
                Ok(Val::I(out.to_vec(), data))
            }
        }
    }

    fn row(&mut self, k: &RowKernel, dtype: DType, out: &[usize]) -> Result<Val, InterpError> {
        let (x, shape) = self.contiguous(&k.x)?;
        let Val::F(xt) = x else {
            return Err(err(format!("`{}` needs a floating-point input", KernelBody::Row(k.clone()).kind())));
        };
        if shape != out {
            return Err(err(format!("a row kernel of shape {shape:?} writing {out:?}")));
        }
        let r = shape.len();
        let d = shape.last().copied().unwrap_or(1);
        let params: Vec<&[f32]> = k
            .params
            .iter()
            .map(|a| match self.contiguous(a)? {
                (Val::F(t), s) if s == [d] => Ok(t.data.as_slice()),
                (_, s) => Err(err(format!("a norm parameter must be [{d}] (the input's last axis), found {s:?}"))),
            })
            .collect::<Result<_, _>>()?;
        let dtypes = [self.dtype(k.x.buf)?, dtype];
        let r_hook = self.hooks.row(k, &RowArgs { x: &xt.data, shape: &shape, params: params.clone(), dtypes });
        if let Some(v) = self.hook_f32(r_hook, dtype, out)? {
            return Ok(v);
        }
        let mut data = xt.data.clone();
        match &k.op {
            RowOp::Softmax { axis } => {
                let Some(&n) = shape.get(*axis) else {
                    return Err(err(format!("softmax axis {axis} is out of range for {shape:?}")));
                };
                let outer: usize = shape[..*axis].iter().product();
                let inner: usize = shape[*axis + 1..].iter().product();
                let mut rowv = vec![0f32; n];
                for o in 0..outer {
                    for j in 0..inner {
                        for (i, v) in rowv.iter_mut().enumerate() {
                            *v = data[(o * n + i) * inner + j];
                        }
                        softmax_row(&mut rowv);
                        for (i, v) in rowv.iter().enumerate() {
                            data[(o * n + i) * inner + j] = *v;
                        }
                    }
                }
            }
            RowOp::LayerNorm { eps } => {
                let [g, b] = params.as_slice() else {
                    return Err(err("layernorm takes a gain and a bias"));
                };
                if d > 0 {
                    for row in data.chunks_exact_mut(d) {
                        let mean = row.iter().sum::<f32>() / d as f32;
                        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
                        let inv = 1.0 / (var + *eps as f32).sqrt();
                        for (i, v) in row.iter_mut().enumerate() {
                            *v = (*v - mean) * inv * g[i] + b[i];
                        }
                    }
                }
            }
            RowOp::RmsNorm { eps } => {
                let [g] = params.as_slice() else {
                    return Err(err("rmsnorm takes a gain"));
                };
                if d > 0 {
                    for row in data.chunks_exact_mut(d) {
                        let ms = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
                        let inv = 1.0 / (ms + *eps as f32).sqrt();
                        for (i, v) in row.iter_mut().enumerate() {
                            *v = *v * inv * g[i];
                        }
                    }
                }
            }
            RowOp::Rope { base } => {
                if r < 2 || d % 2 != 0 {
                    return Err(err(format!("rope needs rank ≥ 2 and an even last axis, found {shape:?}")));
                }
                let (p, half) = (shape[r - 2].max(1), d / 2);
                if d > 0 {
                    // The cos/sin table, per (position, frequency).
                    let mut table = vec![(0f32, 0f32); p * half];
                    for pos in 0..p {
                        for i in 0..half {
                            let theta = pos as f64 * base.powf(-((2 * i) as f64) / d as f64);
                            let (sn, cs) = theta.sin_cos();
                            table[pos * half + i] = (cs as f32, sn as f32);
                        }
                    }
                    for (ri, row) in data.chunks_exact_mut(d).enumerate() {
                        let pos = ri % p;
                        for i in 0..half {
                            let (cs, sn) = table[pos * half + i];
                            let (x1, x2) = (row[i], row[i + half]);
                            row[i] = x1 * cs - x2 * sn;
                            row[i + half] = x2 * cs + x1 * sn;
                        }
                    }
                }
            }
        }
        if dtype != DType::F32 {
            data.iter_mut().for_each(|v| *v = round_f32(dtype, *v));
        }
        Ok(Val::F(F32Tensor { shape: out.to_vec(), data }))
    }

    fn movement(&mut self, k: &MoveKernel, dtype: DType, out: &[usize]) -> Result<Val, InterpError> {
        let srcs: Vec<(&Val, Resolved)> =
            k.srcs.iter().map(|a| Ok((self.val(a.buf)?, self.resolve(a)?))).collect::<Result<_, InterpError>>()?;
        let Some((first, _)) = srcs.first() else {
            return Err(err("a data-movement kernel with no source"));
        };
        let n: usize = out.iter().product();
        self.limits.check("the moved data", out).map_err(|e| err(e.to_string()))?;
        if dtype.is_float() && srcs.iter().all(|(v, _)| matches!(v, Val::F(_))) {
            let args = MoveArgs {
                shape: out,
                srcs: srcs
                    .iter()
                    .map(|(v, r)| StridedView {
                        data: v.elems(),
                        offset: r.offset,
                        shape: r.shape.clone(),
                        strides: r.strides.clone(),
                    })
                    .collect(),
                dtypes: k.srcs.iter().map(|a| self.dtype(a.buf)).collect::<Result<_, _>>()?,
                out_dtype: dtype,
            };
            let r = self.hooks.movement(k, &args);
            if let Some(v) = self.hook_f32(r, dtype, out)? {
                return Ok(v);
            }
        }
        // For every output index, the (source, flat offset) it reads.
        let mut picks: Vec<(usize, usize)> = Vec::with_capacity(n);
        let mut idx = vec![0usize; out.len()];
        let mut src_idx = vec![0usize; out.len()];
        for _ in 0..n {
            src_idx.copy_from_slice(&idx);
            let which = match &k.op {
                MoveOp::Copy => 0,
                MoveOp::Concat { axis } => {
                    let mut at = idx.get(*axis).copied().ok_or_else(|| err("concat axis out of range"))?;
                    let mut w = 0;
                    while let Some((_, r)) = srcs.get(w) {
                        let len = r.shape.get(*axis).copied().unwrap_or(0);
                        if at < len {
                            break;
                        }
                        at -= len;
                        w += 1;
                    }
                    src_idx[*axis] = at;
                    w
                }
                MoveOp::Repeat { times, axis } => {
                    let t = usize::try_from(*times).ok().filter(|&t| t >= 1).ok_or_else(|| err("repeat count < 1"))?;
                    let a = src_idx.get_mut(*axis).ok_or_else(|| err("repeat axis out of range"))?;
                    *a /= t;
                    0
                }
            };
            let (_, r) = srcs.get(which).ok_or_else(|| err("an output index no source covers"))?;
            if r.shape.len() != out.len() || src_idx.iter().zip(&r.shape).any(|(i, d)| i >= d) {
                return Err(err(format!("source {which} of shape {:?} does not cover output {:?}", r.shape, out)));
            }
            picks.push((which, r.offset + src_idx.iter().zip(&r.strides).map(|(a, b)| a * b).sum::<usize>()));
            next_index(&mut idx, out);
        }
        Ok(match first {
            Val::F(_) => {
                let mut data = Vec::with_capacity(n);
                for (w, off) in picks {
                    let Val::F(t) = srcs[w].0 else { return Err(err("sources of different element types")) };
                    data.push(t.data[off]);
                }
                Val::F(F32Tensor { shape: out.to_vec(), data })
            }
            Val::I(..) => {
                let mut data = Vec::with_capacity(n);
                for (w, off) in picks {
                    let Val::I(_, d) = srcs[w].0 else { return Err(err("sources of different element types")) };
                    data.push(d[off]);
                }
                Val::I(out.to_vec(), data)
            }
        })
    }
}

/// The strides of `to` as a view of a (strided) view `from` when the reshape
/// only splits axes (size-1 axes aside); `None` otherwise.
fn split_strides(from: &[usize], from_strides: &[usize], to: &[usize]) -> Option<Vec<usize>> {
    let mut out = vec![0usize; to.len()];
    if to.contains(&0) {
        return Some(out);
    }
    let targets: Vec<usize> = (0..to.len()).filter(|&j| to[j] != 1).collect();
    let mut t = 0;
    for (&d, &st) in from.iter().zip(from_strides) {
        if d == 1 {
            continue;
        }
        let start = t;
        let mut prod = 1usize;
        while prod < d {
            prod = prod.checked_mul(to[*targets.get(t)?])?;
            t += 1;
        }
        if prod != d {
            return None;
        }
        // The last axis of the group steps by the source stride.
        let mut step = st;
        for &j in targets[start..t].iter().rev() {
            out[j] = step;
            step = step.checked_mul(to[j])?;
        }
    }
    (t == targets.len()).then_some(out)
}

/// One row of an elementwise instruction's values.
#[derive(Clone, Debug)]
enum Lane {
    F(Vec<f32>),
    I(Vec<i32>),
    B(Vec<bool>),
}

impl Lane {
    fn new(dtype: DType, width: usize) -> Lane {
        match dtype {
            DType::Bool => Lane::B(vec![false; width]),
            DType::I32 => Lane::I(vec![0; width]),
            _ => Lane::F(vec![0.0; width]),
        }
    }
}

fn select<T: Copy>(c: &[bool], a: &[T], b: &[T], d: &mut [T]) {
    for (((x, &c), &a), &b) in d.iter_mut().zip(c).zip(a).zip(b) {
        *x = if c { a } else { b };
    }
}

fn max_nan(acc: f32, v: f32) -> f32 {
    if acc.is_nan() || v.is_nan() {
        f32::NAN
    } else if v > acc {
        v
    } else {
        acc
    }
}

/// Softmax of one row in place; an all `-inf` row gives zeros.
fn softmax_row(row: &mut [f32]) {
    let Some(&first) = row.first() else { return };
    let m = row.iter().skip(1).fold(first, |a, &v| max_nan(a, v));
    if m == f32::NEG_INFINITY {
        row.fill(0.0);
        return;
    }
    let mut sum = 0f32;
    for v in row.iter_mut() {
        *v = (*v - m).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

fn unary_lane(u: UnaryOp, x: &Lane, dst: &mut Lane) -> Result<(), InterpError> {
    match (x, dst) {
        (Lane::I(x), Lane::I(d)) => {
            let f: fn(i32) -> i32 = match u {
                UnaryOp::Neg => i32::wrapping_neg,
                UnaryOp::Abs => i32::wrapping_abs,
                UnaryOp::Relu => |v| v.max(0),
                other => return Err(err(format!("`{}` of an integer", other.name()))),
            };
            d.iter_mut().zip(x).for_each(|(d, &v)| *d = f(v));
        }
        (Lane::F(x), Lane::F(d)) => {
            let f: fn(f32) -> f32 = match u {
                UnaryOp::Neg => |v| -v,
                UnaryOp::Abs => f32::abs,
                // NaN stays NaN.
                UnaryOp::Relu => |v| if v < 0.0 { 0.0 } else { v },
                UnaryOp::Exp => f32::exp,
                UnaryOp::Log => f32::ln,
                UnaryOp::Sqrt => f32::sqrt,
                UnaryOp::Rsqrt => |v| 1.0 / v.sqrt(),
                UnaryOp::Tanh => f32::tanh,
                UnaryOp::Sigmoid => sigmoid,
                UnaryOp::Gelu => |v| 0.5 * v * (1.0 + libm::erff(v * std::f32::consts::FRAC_1_SQRT_2)),
                UnaryOp::Silu => |v| v * sigmoid(v),
            };
            d.iter_mut().zip(x).for_each(|(d, &v)| *d = f(v));
        }
        _ => return Err(err(format!("`{}` of a bool or of a mismatched type", u.name()))),
    }
    Ok(())
}

fn binary_lane(op: BinaryOp, x: &Lane, y: &Lane, dst: &mut Lane) -> Result<(), InterpError> {
    match (x, y, dst) {
        (Lane::F(a), Lane::F(b), Lane::F(d)) => {
            let f: fn(f32, f32) -> f32 = match op {
                BinaryOp::Add => |a, b| a + b,
                BinaryOp::Sub => |a, b| a - b,
                BinaryOp::Mul => |a, b| a * b,
                BinaryOp::Div => |a, b| a / b,
            };
            d.iter_mut().zip(a.iter().zip(b)).for_each(|(d, (&a, &b))| *d = f(a, b));
        }
        (Lane::I(a), Lane::I(b), Lane::I(d)) => {
            let f: fn(i32, i32) -> i32 = match op {
                BinaryOp::Add => i32::wrapping_add,
                BinaryOp::Sub => i32::wrapping_sub,
                BinaryOp::Mul => i32::wrapping_mul,
                // Floor division, x / 0 == 0, i32::MIN / -1 wraps.
                BinaryOp::Div => |a, b| tdl_ir::eval::int_div(i64::from(a), i64::from(b)) as i32,
            };
            d.iter_mut().zip(a.iter().zip(b)).for_each(|(d, (&a, &b))| *d = f(a, b));
        }
        _ => return Err(err(format!("`{}` of operands of different types", op.name()))),
    }
    Ok(())
}
