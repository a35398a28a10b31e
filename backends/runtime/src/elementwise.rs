//! The driver of the compiled elementwise and data-movement kernels: the
//! Kernel IR's [`ElementwiseKernel`] (a fused SSA chain over broadcast
//! operands, masks evaluated inside the chain) and [`MoveKernel`] (copy,
//! concat, repeat) run as one **strided loop nest** each. No LLVM: the code
//! comes from a [`LoopSource`] — the JIT (`tdl_llvm::elementwise`) compiles
//! it on demand, an artifact ([`crate::aot`]) looks it up among the
//! variants it was compiled with.
//!
//! The output's leading axes are *rows*, walked with a multi-index that
//! carries like an odometer; along the last axis an inner loop computes the
//! chain per element and stores it. Every operand is read at
//! `base + Σ idx[a]·stride[a]`: broadcast axes have stride 0, views
//! (transpose, permute, slice, split reshapes) are just strides, so nothing
//! is copied first. Sizes and strides are run-time arguments; what the code
//! is specialised for is the chain, the masks and a [`LoopVariant`]: the
//! rank and, per operand, whether it holds `i32` and whether its last-axis
//! stride is 0, 1 or anything ([`Step`]). Without masks, size-1 axes are
//! dropped and axes every operand walks contiguously are merged first
//! ([`Nest::simplify`]: `[T, 512] + [T, 512]` is one loop of `512·T`).
//!
//! Before anything runs, every nest gets its code (so a decline never
//! leaves half an output), and every element the code reads or writes is
//! checked to lie inside its buffer. `document` ids and `blocks` layouts
//! are passed as `i32` arrays, checked to cover `T × S` first.
//!
//! Work items are blocks of rows (or, for few long rows, column ranges of a
//! row) of about 16 K elements, run on the worker threads; a kernel of one
//! work item runs on the calling thread.
//!
//! [`loop_variants`] derives, from a program's symbolic shapes, the
//! variants an artifact compiles for a kernel: the nests this driver builds
//! at generic sizes (every symbol bound to a large value), simplified and
//! as built.

use tdl_ir::{ArrayRef, Bindings, DType, MaskExpr};
use tdl_kernel::interp::{self, ElementwiseArgs, Elems, MoveArgs, StridedView};
use tdl_kernel::ir::{Access, ElementwiseKernel, EwInst, EwOp, KernelBody, KernelProgram, MoveKernel, MoveOp};
use tdl_passes::tiles::MaskData;

use std::sync::atomic::{AtomicI32, Ordering};

use crate::attention::{each_mask_lambda, mask_has_lambda, mask_slots, MaskSlot};
use crate::code::Code;
use crate::pool::{run_parallel, Shared};
use crate::RtError;

/// Elements per work item.
pub const GRAIN: usize = 1 << 14;

/// `(ins, in_strides, out, out_strides, shape, row0, row1, j0, j1, mask
/// arrays, mask array column counts, lambda symbols, lambda arrays, lambda
/// array dimensions, lambda error flag)`: rows `row0..row1` of the nest's
/// leading axes (columns `j0..j1` of each), operand `i` starting at
/// `ins[i]` with strides `in_strides[i·rank..]`, the output at `out` with
/// `out_strides` (`float`s, or `i32`s for a chain ending in an integer or
/// a boolean, stored as 0/1). The masks' index lambdas read the dimension symbols
/// ([`mask_lambda_symbols`] order) and their operands' `f64` values (every
/// mask's operands in turn, each array's dimensions in the dimension
/// table), and set the flag when an index is out of range.
pub type LoopFn = unsafe extern "C" fn(
    *const *const u8,
    *const i64,
    *mut u8,
    *const i64,
    *const i64,
    i64,
    i64,
    i64,
    i64,
    *const *const i32,
    *const i64,
    *const i64,
    *const *const f64,
    *const i64,
    *const AtomicI32,
);

/// The tables the masks' index lambdas read (empty without lambdas).
#[derive(Default)]
struct LambdaTables {
    syms: Vec<i64>,
    arrays: Vec<*const f64>,
    dims: Vec<i64>,
}

/// The dimension symbols the index lambdas of `masks` read, sorted: the
/// order of a loop nest's symbol table.
pub fn mask_lambda_symbols(masks: &[&MaskExpr]) -> Vec<String> {
    crate::attention::symbols_of(&mut |f| masks.iter().for_each(|m| each_mask_lambda(m, f)))
}

/// An operand's stride along the last axis, as the code is specialised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Step {
    Zero,
    One,
    Any,
}

impl Step {
    pub fn of(stride: usize) -> Step {
        match stride {
            0 => Step::Zero,
            1 => Step::One,
            _ => Step::Any,
        }
    }

    /// The stride as the reports print it.
    pub fn text(self) -> &'static str {
        match self {
            Step::Zero => "0",
            Step::One => "1",
            Step::Any => "any",
        }
    }
}

/// What a loop nest's code is specialised for besides its chain and masks:
/// the rank and, per input, whether it holds `i32` (else `f32`) and its
/// last-axis step.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct LoopVariant {
    pub rank: usize,
    pub inputs: Vec<(bool, Step)>,
}

impl LoopVariant {
    /// `rank 2, strides [1, 0]`: the rank and each input's last-axis step.
    pub fn text(&self) -> String {
        let steps: Vec<&str> = self.inputs.iter().map(|(_, s)| s.text()).collect();
        format!("rank {}, last-axis strides [{}]", self.rank, steps.join(", "))
    }
}

/// What one compiled loop nest is specialised for.
#[derive(Clone, Debug)]
pub struct LoopSpec<'k> {
    pub variant: LoopVariant,
    pub body: &'k [EwInst],
    pub masks: Vec<&'k MaskExpr>,
    /// Each mask's operands as its lambdas read them: element type and rank.
    pub mask_operands: Vec<Vec<(DType, usize)>>,
}

/// Where a kernel's loop nest code comes from.
pub trait LoopSource {
    /// The compiled loop nest for `spec`, or `None` when there is none (the
    /// kernel then declines to the interpreter). The [`Code`] must be a
    /// [`LoopFn`] generated for exactly `spec`.
    fn loop_fn(&self, spec: &LoopSpec<'_>) -> Option<Result<Code, RtError>>;

    /// Whether a nest whose simplified form has no code is tried as built
    /// (un-simplified) too: an artifact compiles both forms of the nests of
    /// generic sizes, so a size-1 axis at run time still finds code.
    fn unsimplified_too(&self) -> bool {
        false
    }
}

/// The chain of a move: one `f32` load.
pub const COPY_BODY: &[EwInst] = &[EwInst { op: EwOp::Load(0), dtype: DType::F32 }];

/// An operand of the loop nest: element `idx` is `data[offset + Σ idx·strides]`.
#[derive(Clone, Debug)]
pub struct Operand<'x> {
    pub data: Elems<'x>,
    pub offset: usize,
    pub strides: Vec<usize>,
}

/// The loop nest to run: the iteration shape, the operands, where the
/// output goes (offset and strides into the output buffer).
#[derive(Clone, Debug)]
pub struct Nest<'x> {
    pub shape: Vec<usize>,
    pub inputs: Vec<Operand<'x>>,
    pub out_offset: usize,
    pub out_strides: Vec<usize>,
}

fn row_major(shape: &[usize]) -> Vec<usize> {
    tdl_ir::layout::strides(shape)
}

impl Nest<'_> {
    /// Drops size-1 axes and merges axes every operand (and the output)
    /// walks contiguously; at least one axis remains.
    pub fn simplify(&mut self) {
        let keep: Vec<usize> = (0..self.shape.len()).filter(|&a| self.shape[a] != 1).collect();
        let pick = |v: &[usize]| keep.iter().map(|&a| v[a]).collect::<Vec<_>>();
        self.shape = pick(&self.shape);
        self.out_strides = pick(&self.out_strides);
        for op in &mut self.inputs {
            op.strides = pick(&op.strides);
        }
        let mut a = self.shape.len();
        while a >= 2 {
            a -= 1;
            // Merge axis a-1 into axis a when stride[a-1] == stride[a]·shape[a] everywhere.
            let n = self.shape[a];
            let fits = |st: &[usize]| st[a].checked_mul(n) == Some(st[a - 1]);
            if fits(&self.out_strides) && self.inputs.iter().all(|op| fits(&op.strides)) {
                // The merged axis steps like the inner one.
                self.shape[a - 1] *= n;
                self.shape.remove(a);
                self.out_strides.remove(a - 1);
                for op in &mut self.inputs {
                    op.strides.remove(a - 1);
                }
            }
        }
        if self.shape.is_empty() {
            self.shape.push(1);
            self.out_strides.push(0);
            for op in &mut self.inputs {
                op.strides.push(0);
            }
        }
    }

    /// The variant of code this nest needs, `None` when an operand's
    /// strides do not match the nest's rank.
    pub fn variant(&self) -> Option<LoopVariant> {
        let rank = self.shape.len();
        let inputs = self
            .inputs
            .iter()
            .map(|op| {
                (op.strides.len() == rank)
                    .then(|| Some((matches!(op.data, Elems::I32(_)), Step::of(*op.strides.last()?))))
                    .flatten()
            })
            .collect::<Option<_>>()?;
        Some(LoopVariant { rank, inputs })
    }
}

/// The last element a view reaches, if it has any, checked.
fn reach(offset: usize, shape: &[usize], strides: &[usize]) -> Option<usize> {
    let mut r = offset;
    for (&n, &s) in shape.iter().zip(strides) {
        r = r.checked_add(n.checked_sub(1)?.checked_mul(s)?)?;
    }
    Some(r)
}

/// Whether the code generator may compile `m` at `t × s` (the arrays
/// `document` and `blocks` read are checked by [`mask_arrays`]; lambdas the
/// code generator declines itself).
pub fn mask_supported(m: &MaskExpr, t: usize, s: usize) -> bool {
    let small = |x: i64| x.unsigned_abs() < 1 << 40;
    match m {
        MaskExpr::Causal => true,
        MaskExpr::Local { left, right } => small(*left) && small(*right),
        MaskExpr::Window { w } => small(*w),
        MaskExpr::Dilated { w, d } => *d > 0 && small(*w) && small(*d) && w.checked_mul(*d).is_some(),
        MaskExpr::Sink { n } => small(*n),
        MaskExpr::Strided { stride, offset } => *stride > 0 && small(*stride) && small(*offset),
        MaskExpr::Neighborhood { kernel, grid, dilation, causal } => {
            let (Ok(ti), Ok(si)) = (i64::try_from(t), i64::try_from(s)) else { return false };
            tdl_ir::mask::check_neighborhood(kernel, grid, dilation, causal, ti, si).is_ok()
        }
        MaskExpr::And(a, b) | MaskExpr::Or(a, b) => mask_supported(a, t, s) && mask_supported(b, t, s),
        MaskExpr::Not(a) => mask_supported(a, t, s),
        MaskExpr::Blocks { block: [bq, bk], .. } => *bq > 0 && *bk > 0,
        MaskExpr::Document { .. } => true,
        // Whether the lambda compiles is the code generator's to say.
        MaskExpr::Lambda(_) => true,
    }
}

/// The run-time arrays of mask `m` (document ids, block layouts) as `i32`
/// with their column counts, in [`mask_slots`] order, checked as the
/// reference checks them: `None` when they do not cover `t × s`.
pub fn mask_arrays(m: &MaskExpr, data: &MaskData<'_>, t: usize, s: usize) -> Option<Vec<(Vec<i32>, i64)>> {
    mask_slots(m)
        .iter()
        .map(|slot| match slot {
            MaskSlot::Document(i) => {
                let x = data.operands.get(*i)?;
                let ok = x.shape.len() == 1 && x.dtype == DType::I32 && x.data.len() >= t.max(s);
                ok.then(|| (x.data.iter().map(|&v| v as i32).collect(), 0))
            }
            MaskSlot::Blocks { layout, bq, bk } => {
                let (shape, values): (&[usize], &[f64]) = match layout {
                    ArrayRef::Const(c) => (&c.shape, &c.data),
                    ArrayRef::Operand(i) => {
                        let x = data.operands.get(*i)?;
                        (&x.shape, x.data)
                    }
                };
                let (bq, bk) = (usize::try_from(*bq).ok()?, usize::try_from(*bk).ok()?);
                let ok = shape.len() == 2
                    && bq > 0
                    && bk > 0
                    && shape[0].checked_mul(shape[1]) == Some(values.len())
                    && shape[0] >= t.div_ceil(bq)
                    && shape[1] >= s.div_ceil(bk);
                ok.then(|| (values.iter().map(|&v| i32::from(v != 0.0)).collect(), shape[1] as i64))
            }
        })
        .collect()
}

/// How a loop nest of `rows × w` elements is cut into work items: `(items,
/// rows per item, columns per item)`; an item covers either whole rows or
/// one column range of one row.
pub fn plan(rows: usize, w: usize, threads: usize) -> (usize, usize, usize) {
    let total = rows.saturating_mul(w);
    if threads <= 1 || total <= GRAIN || rows == 0 || w == 0 {
        return (1, rows, w);
    }
    if rows < 2 * threads && w >= 2 * GRAIN {
        let chunks = w.div_ceil(GRAIN);
        let cw = w.div_ceil(chunks).next_multiple_of(64);
        return (rows * w.div_ceil(cw), 1, cw);
    }
    let rpi = (GRAIN / w).max(1);
    (rows.div_ceil(rpi), rpi, w)
}

/// Runs `work(i)` for `i < items`: on the calling thread when there is one
/// item or one thread, else on worker threads.
pub fn par_for(items: usize, threads: usize, work: impl Fn(usize) + Sync) -> Result<(), RtError> {
    if items <= 1 || threads <= 1 {
        (0..items).for_each(work);
        return Ok(());
    }
    run_parallel(items, threads, 1 << 20, work).map(|_| ())
}

/// The code of every nest (simplified when `simplify`; as built too when
/// the source asks for it), all writing into `out` (of `n_out` elements),
/// run on `threads` threads. `None` when a nest has no code.
#[allow(clippy::too_many_arguments)]
fn run_nests<T: Copy + Default>(
    nests: Vec<Nest<'_>>,
    simplify: bool,
    body: &[EwInst],
    masks: &[&MaskExpr],
    arrays: &[(Vec<i32>, i64)],
    lambdas: (&LambdaTables, &[Vec<(DType, usize)>]),
    n_out: usize,
    threads: usize,
    source: &dyn LoopSource,
) -> Option<Result<Vec<T>, RtError>> {
    // Every nest's code first, so a decline never leaves half an output.
    let mut chosen = Vec::with_capacity(nests.len());
    for nest in nests {
        let mut candidates = Vec::with_capacity(2);
        if simplify {
            let mut s = nest.clone();
            s.simplify();
            candidates.push(s);
        }
        if !simplify || source.unsimplified_too() {
            candidates.push(nest);
        }
        let mut found = None;
        let mut tried: Vec<LoopVariant> = Vec::new();
        for c in candidates {
            let variant = c.variant()?;
            if tried.contains(&variant) {
                continue;
            }
            tried.push(variant.clone());
            let spec = LoopSpec { variant, body, masks: masks.to_vec(), mask_operands: lambdas.1.to_vec() };
            match source.loop_fn(&spec) {
                Some(Ok(code)) => {
                    found = Some((c, code));
                    break;
                }
                Some(Err(e)) => return Some(Err(e)),
                None => {}
            }
        }
        chosen.push(found?);
    }
    Some(run_checked(&chosen, arrays, lambdas.0, n_out, threads))
}

fn run_checked<T: Copy + Default>(
    nests: &[(Nest<'_>, Code)],
    arrays: &[(Vec<i32>, i64)],
    lambdas: &LambdaTables,
    n_out: usize,
    threads: usize,
) -> Result<Vec<T>, RtError> {
    let lerr = AtomicI32::new(0);
    let (lsyms, larr, ldims) = (
        Shared(lambdas.syms.as_ptr().cast_mut()),
        Shared(lambdas.arrays.as_ptr().cast_mut()),
        Shared(lambdas.dims.as_ptr().cast_mut()),
    );
    let lerr_p = &lerr;
    let oob = |what: &str| RtError::new(format!("{what} reaches outside its buffer"));
    let mut out = vec![T::default(); n_out];
    let array_ptrs: Vec<Shared<i32>> = arrays.iter().map(|(a, _)| Shared(a.as_ptr().cast_mut())).collect();
    let mcols: Vec<i64> = arrays.iter().map(|(_, c)| *c).collect();
    for (nest, code) in nests {
        let r = nest.shape.len();
        if nest.shape.contains(&0) {
            continue;
        }
        // Every element the code reads or writes is inside its buffer.
        if reach(nest.out_offset, &nest.shape, &nest.out_strides).is_none_or(|x| x >= n_out) {
            return Err(oob("the output"));
        }
        for op in &nest.inputs {
            if op.strides.len() != r || reach(op.offset, &nest.shape, &op.strides).is_none_or(|x| x >= op.data.len()) {
                return Err(oob("an operand"));
            }
        }
        // SAFETY: the source answered this nest's spec with a `LoopFn`
        // generated for it (`Code::new`'s contract); `code` keeps it alive.
        let f = unsafe { std::mem::transmute::<usize, LoopFn>(code.addr()) };
        let ptrs: Vec<Shared<u8>> = nest
            .inputs
            .iter()
            .map(|op| match op.data {
                // SAFETY: offset ≤ reach < len (checked above).
                Elems::F32(d) => Shared(unsafe { d.as_ptr().add(op.offset) }.cast::<u8>().cast_mut()),
                Elems::I32(d) => Shared(unsafe { d.as_ptr().add(op.offset) }.cast::<u8>().cast_mut()),
            })
            .collect();
        let ist: Vec<i64> = nest.inputs.iter().flat_map(|op| op.strides.iter().map(|&s| s as i64)).collect();
        let ost: Vec<i64> = nest.out_strides.iter().map(|&s| s as i64).collect();
        let shape: Vec<i64> = nest.shape.iter().map(|&s| s as i64).collect();
        let w = nest.shape[r - 1];
        let rows: usize = nest.shape[..r - 1].iter().product();
        let (items, rpi, cw) = plan(rows, w, threads);
        // SAFETY: out_offset ≤ reach < n_out.
        let outp = Shared(unsafe { out.as_mut_ptr().add(nest.out_offset) });
        let cols = w.div_ceil(cw.max(1)).max(1);
        par_for(items, threads, |i| {
            let (r0, r1, j0, j1) = if rpi == 1 && cw < w {
                let (row, c) = (i / cols, i % cols);
                (row, row + 1, c * cw, ((c + 1) * cw).min(w))
            } else {
                (i * rpi, ((i + 1) * rpi).min(rows), 0, w)
            };
            let raw: Vec<*const u8> = ptrs.iter().map(|p| p.ptr().cast_const()).collect();
            let mops: Vec<*const i32> = array_ptrs.iter().map(|p| p.ptr().cast_const()).collect();
            // SAFETY: the reads stay inside the operands and the mask
            // arrays (checked by `mask_arrays` to cover T × S) and the writes
            // inside `out` (the reaches checked above); work items write
            // disjoint elements (distinct rows or columns of the nest,
            // whose output strides map distinct indices apart).
            unsafe {
                f(
                    raw.as_ptr(),
                    ist.as_ptr(),
                    outp.ptr().cast::<u8>(),
                    ost.as_ptr(),
                    shape.as_ptr(),
                    r0 as i64,
                    r1 as i64,
                    j0 as i64,
                    j1 as i64,
                    mops.as_ptr(),
                    mcols.as_ptr(),
                    lsyms.ptr().cast_const(),
                    larr.ptr().cast_const(),
                    ldims.ptr().cast_const(),
                    lerr_p,
                )
            };
        })?;
        if lerr.load(Ordering::Relaxed) != 0 {
            return Err(RtError::new("an index is out of range of an array read in a lambda of this kernel's mask"));
        }
    }
    Ok(out)
}

/// The loop nest of an elementwise kernel writing `shape` from `inputs`
/// (each broadcast to `shape`), as built, and whether it may be simplified
/// (not when masks read the output's own indices); `None` when the kernel
/// does not fit a nest.
pub fn elementwise_nest<'x>(
    k: &ElementwiseKernel,
    shape: &[usize],
    inputs: &[StridedView<'x>],
) -> Option<(Nest<'x>, bool)> {
    let r = shape.len();
    if inputs.len() != k.inputs.len() {
        return None;
    }
    let inputs: Vec<Operand<'x>> = inputs
        .iter()
        .map(|v| (v.strides.len() == r).then(|| Operand { data: v.data, offset: v.offset, strides: v.strides.clone() }))
        .collect::<Option<_>>()?;
    let nest = Nest { out_strides: row_major(shape), shape: shape.to_vec(), inputs, out_offset: 0 };
    // Masks read the output's own last two indices: keep its axes then.
    if k.body.iter().any(|i| matches!(i.op, EwOp::Mask(_))) {
        return (r >= 2).then_some((nest, false));
    }
    Some((nest, true))
}

/// Runs an elementwise kernel writing floating-point values with the code
/// of `source`, or `None` when there is none for it (the interpreter runs
/// it then).
pub fn run_elementwise(
    k: &ElementwiseKernel,
    args: &ElementwiseArgs<'_>,
    threads: usize,
    source: &dyn LoopSource,
) -> Option<Result<Vec<f32>, RtError>> {
    if !k.body.last()?.dtype.is_float() {
        return None;
    }
    run_elementwise_as(k, args, threads, source)
}

/// [`run_elementwise`] for a chain ending in an `i32` or a `bool` (0/1).
pub fn run_elementwise_i32(
    k: &ElementwiseKernel,
    args: &ElementwiseArgs<'_>,
    threads: usize,
    source: &dyn LoopSource,
) -> Option<Result<Vec<i32>, RtError>> {
    if k.body.last()?.dtype.is_float() {
        return None;
    }
    run_elementwise_as(k, args, threads, source)
}

fn run_elementwise_as<T: Copy + Default>(
    k: &ElementwiseKernel,
    args: &ElementwiseArgs<'_>,
    threads: usize,
    source: &dyn LoopSource,
) -> Option<Result<Vec<T>, RtError>> {
    let shape = args.shape;
    let r = shape.len();
    if args.inputs.len() != k.inputs.len() || args.masks.len() != k.masks.len() {
        return None;
    }
    let (t, s) = if r >= 2 { (shape[r - 2], shape[r - 1]) } else { (1, 1) };
    if !k.masks.iter().all(|m| mask_supported(&m.expr, t, s)) {
        return None;
    }
    let (nest, simplify) = elementwise_nest(k, shape, &args.inputs)?;
    let n_out: usize = shape.iter().product();
    let masks: Vec<&MaskExpr> = k.masks.iter().map(|m| &m.expr).collect();
    let mut arrays = Vec::new();
    for (m, data) in masks.iter().zip(&args.masks) {
        arrays.extend(mask_arrays(m, data, t, s)?);
    }
    // The lambdas' tables: the symbols' values, every mask's operands.
    let mut tables = LambdaTables::default();
    let mut operand_types = Vec::with_capacity(masks.len());
    if masks.iter().any(|m| mask_has_lambda(m)) {
        for name in mask_lambda_symbols(&masks) {
            tables.syms.push(*args.bindings.get(&name)?);
        }
        for data in &args.masks {
            let mut types = Vec::with_capacity(data.operands.len());
            for o in &data.operands {
                if o.shape.iter().product::<usize>() != o.data.len() {
                    return None;
                }
                tables.arrays.push(o.data.as_ptr());
                tables.dims.extend(o.shape.iter().map(|&d| d as i64));
                types.push((o.dtype, o.shape.len()));
            }
            operand_types.push(types);
        }
    }
    run_nests(vec![nest], simplify, &k.body, &masks, &arrays, (&tables, &operand_types), n_out, threads, source)
}

/// The iteration nests of a data-movement kernel writing `out` (row-major),
/// as built, or `None` when the sources do not fit it.
pub fn move_nests<'x>(k: &MoveKernel, out: &[usize], srcs: &[StridedView<'x>]) -> Option<Vec<Nest<'x>>> {
    let r = out.len();
    let ost = row_major(out);
    let ok = |v: &StridedView<'_>| v.shape.len() == r && v.strides.len() == r && matches!(v.data, Elems::F32(_));
    if srcs.is_empty() || !srcs.iter().all(ok) {
        return None;
    }
    let op = |v: &StridedView<'x>, strides: Vec<usize>| Operand { data: v.data, offset: v.offset, strides };
    Some(match &k.op {
        MoveOp::Copy => {
            let [src] = srcs else { return None };
            if src.shape != out {
                return None;
            }
            vec![Nest {
                shape: out.to_vec(),
                inputs: vec![op(src, src.strides.clone())],
                out_offset: 0,
                out_strides: ost,
            }]
        }
        MoveOp::Repeat { times, axis } => {
            let [src] = srcs else { return None };
            let t = usize::try_from(*times).ok().filter(|&t| t >= 1)?;
            let a = *axis;
            if a >= r || src.shape[a].checked_mul(t) != Some(out[a]) || (0..r).any(|b| b != a && src.shape[b] != out[b])
            {
                return None;
            }
            // out[.., i·t + u, ..] = src[.., i, ..]: split the axis into (i, u).
            let mut shape = out.to_vec();
            shape[a] = src.shape[a];
            shape.insert(a + 1, t);
            let mut st = src.strides.clone();
            st.insert(a + 1, 0);
            vec![Nest { out_strides: row_major(&shape), shape, inputs: vec![op(src, st)], out_offset: 0 }]
        }
        MoveOp::Concat { axis } => {
            let a = *axis;
            if a >= r {
                return None;
            }
            let mut at = 0usize;
            let mut nests = Vec::with_capacity(srcs.len());
            for src in srcs {
                if (0..r).any(|b| b != a && src.shape[b] != out[b]) {
                    return None;
                }
                nests.push(Nest {
                    shape: src.shape.clone(),
                    inputs: vec![op(src, src.strides.clone())],
                    out_offset: at.checked_mul(ost[a])?,
                    out_strides: ost.clone(),
                });
                at = at.checked_add(src.shape[a])?;
            }
            if at != out[a] {
                return None;
            }
            nests
        }
    })
}

/// Runs a data-movement kernel with the code of `source`, or `None` when
/// there is none for it.
pub fn run_move(
    k: &MoveKernel,
    args: &MoveArgs<'_>,
    threads: usize,
    source: &dyn LoopSource,
) -> Option<Result<Vec<f32>, RtError>> {
    let nests = move_nests(k, args.shape, &args.srcs)?;
    let n_out: usize = args.shape.iter().product();
    run_nests(nests, true, COPY_BODY, &[], &[], (&LambdaTables::default(), &[]), n_out, threads, source)
}

/// Bindings of generic sizes for `p`'s symbols: large, distinct, and not
/// multiples of the constant sizes a program holds, so the nests built at
/// them have the structure of nests at any size above 1 (two sets, in case
/// one meets a coincidence).
pub fn generic_bindings(p: &KernelProgram) -> [Bindings; 2] {
    let at = |base: i64, step: i64| -> Bindings {
        p.symbols.iter().enumerate().map(|(i, s)| (s.clone(), base + step * i as i64)).collect()
    };
    [at(1009, 12), at(1213, 14)]
}

/// `a` resolved under `b`, as the interpreter resolves it, with empty data
/// of its element type (what nest building needs to know of it).
fn generic_view(p: &KernelProgram, a: &Access, b: &Bindings) -> Result<(interp::Resolved, Elems<'static>), String> {
    let buf = p.buffer(a.buf).ok_or_else(|| format!("no buffer {}", a.buf))?;
    let shape = interp::eval_shape(&buf.shape, b).map_err(|e| e.to_string())?;
    let r = interp::resolve_access(a, &shape, b).map_err(|e| e.to_string())?;
    let data = if buf.dtype.is_float() { Elems::F32(&[]) } else { Elems::I32(&[]) };
    Ok((r, data))
}

/// The loop-nest variants an artifact compiles for elementwise or move
/// kernel `body` of `p`: the nests this driver builds at generic sizes
/// ([`generic_bindings`]), simplified and as built. A run whose nests match
/// none of them (a symbol bound to 1 turning an operand into a broadcast,
/// say) runs in the executor's loops. `Err` says why the kernel gets no
/// compiled code at all.
pub fn loop_variants(p: &KernelProgram, body: &KernelBody) -> Result<Vec<LoopVariant>, String> {
    let out_buf = p.buffer(body.out()).ok_or_else(|| format!("no buffer {}", body.out()))?;
    if !out_buf.dtype.is_float() && !matches!(body, KernelBody::Elementwise(_)) {
        return Err(format!(
            "the {} kernel writes {} values (compiled moves write f32)",
            body.kind(),
            out_buf.dtype.name()
        ));
    }
    let mut variants: Vec<LoopVariant> = Vec::new();
    let mut last_err = String::new();
    for b in generic_bindings(p) {
        let nests = (|| -> Result<(Vec<Nest<'static>>, bool), String> {
            let out = interp::eval_shape(&out_buf.shape, &b).map_err(|e| e.to_string())?;
            match body {
                KernelBody::Elementwise(k) => {
                    let views = k
                        .inputs
                        .iter()
                        .map(|a| {
                            let (r, data) = generic_view(p, a, &b)?;
                            let strides = r.broadcast_to(&out).map_err(|e| e.to_string())?;
                            Ok(StridedView { data, offset: r.offset, shape: out.clone(), strides })
                        })
                        .collect::<Result<Vec<_>, String>>()?;
                    let (nest, simplify) = elementwise_nest(k, &out, &views)
                        .ok_or("its operands do not fit a loop nest (a mask on an output of rank < 2)")?;
                    Ok((vec![nest], simplify))
                }
                KernelBody::Move(k) => {
                    let views = k
                        .srcs
                        .iter()
                        .map(|a| {
                            let (r, data) = generic_view(p, a, &b)?;
                            if !matches!(data, Elems::F32(_)) {
                                return Err("it moves integer data (compiled moves are f32)".to_string());
                            }
                            Ok(StridedView { data, offset: r.offset, shape: r.shape, strides: r.strides })
                        })
                        .collect::<Result<Vec<_>, String>>()?;
                    let nests = move_nests(k, &out, &views).ok_or("its sources do not fit a loop nest")?;
                    Ok((nests, true))
                }
                other => Err(format!("{} kernels are not loop nests", other.kind())),
            }
        })();
        let (nests, simplify) = match nests {
            Ok(n) => n,
            Err(e) => {
                last_err = e;
                continue;
            }
        };
        for nest in nests {
            let mut forms = vec![nest.clone()];
            if simplify {
                let mut s = nest;
                s.simplify();
                forms.insert(0, s);
            }
            for f in forms {
                let v = f.variant().ok_or("an operand's rank differs from the nest's")?;
                if !variants.contains(&v) {
                    variants.push(v);
                }
            }
        }
    }
    if variants.is_empty() {
        return Err(last_err);
    }
    Ok(variants)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use tdl_ir::{BinaryOp, Dim};
    use tdl_kernel::ir::{BufId, BufKind, Buffer, Kernel, ViewOp};

    use super::*;

    fn dim(s: &str) -> Dim {
        s.parse::<i64>().map_or_else(|_| Dim::sym(s), Dim::constant)
    }

    /// `out = in0 · in1` over `out` (an `i32` output with `int_out`), the
    /// inputs of the given shapes read through `views`.
    fn program(ins: &[(&[&str], Vec<ViewOp>)], out: &[&str], int_out: bool) -> (KernelProgram, KernelBody) {
        let buf = |name: &str, shape: &[&str], kind: BufKind, dtype: DType| Buffer {
            name: name.into(),
            dtype,
            shape: shape.iter().map(|d| dim(d)).collect(),
            kind,
        };
        let mut buffers: Vec<Buffer> =
            ins.iter().enumerate().map(|(i, (s, _))| buf(&format!("x{i}"), s, BufKind::Input(i), DType::F32)).collect();
        let out_id = BufId(buffers.len() as u32);
        let dt = if int_out { DType::I32 } else { DType::F32 };
        buffers.push(buf("out", out, BufKind::Temp, dt));
        let inputs: Vec<Access> =
            ins.iter().enumerate().map(|(i, (_, v))| Access { buf: BufId(i as u32), view: v.clone() }).collect();
        let f = |op| EwInst { op, dtype: DType::F32 };
        let mut body: Vec<EwInst> = (0..ins.len()).map(|i| f(EwOp::Load(i))).collect();
        body.push(f(EwOp::Binary(BinaryOp::Mul, 0, ins.len() - 1)));
        let kbody = KernelBody::Elementwise(ElementwiseKernel { inputs, masks: Vec::new(), body, out: out_id });
        let mut symbols: Vec<String> = ins
            .iter()
            .flat_map(|(s, _)| s.iter())
            .chain(out)
            .filter(|d| d.parse::<i64>().is_err())
            .map(|d| d.to_string())
            .collect();
        symbols.sort();
        symbols.dedup();
        let p = KernelProgram {
            name: "g".into(),
            symbols,
            params: (0..ins.len()).map(|i| BufId(i as u32)).collect(),
            buffers,
            kernels: vec![Kernel { name: "k".into(), span: None, body: kbody.clone() }],
            results: vec![out_id],
            target: String::new(),
        };
        (p, kbody)
    }

    fn v(rank: usize, steps: &[Step]) -> LoopVariant {
        LoopVariant { rank, inputs: steps.iter().map(|&s| (false, s)).collect() }
    }

    #[test]
    fn variants_are_the_nests_of_generic_sizes_simplified_and_as_built() {
        use Step::{Any, One, Zero};
        // Contiguous operands: one merged loop, and the nest as built.
        let (p, k) = program(&[(&["T", "512"], vec![]), (&["T", "512"], vec![])], &["T", "512"], false);
        assert_eq!(loop_variants(&p, &k).unwrap(), [v(1, &[One, One]), v(2, &[One, One])]);
        // A broadcast row: nothing merges.
        let (p, k) = program(&[(&["T", "512"], vec![]), (&["512"], vec![])], &["T", "512"], false);
        assert_eq!(loop_variants(&p, &k).unwrap(), [v(2, &[One, One])]);
        // A column broadcast along the last axis: stride 0.
        let (p, k) = program(&[(&["T", "S"], vec![]), (&["T", "1"], vec![])], &["T", "S"], false);
        assert_eq!(loop_variants(&p, &k).unwrap(), [v(2, &[One, Zero])]);
        // A transposed view: any stride.
        let (p, k) = program(&[(&["S", "T"], vec![ViewOp::Transpose])], &["T", "S"], false);
        assert_eq!(loop_variants(&p, &k).unwrap(), [v(2, &[Any])]);
        // An integer output gets code too.
        let (p, k) = program(&[(&["T"], vec![])], &["T"], true);
        assert_eq!(loop_variants(&p, &k).unwrap(), [v(1, &[One])]);
    }

    /// Records the specs it is asked for; has no code.
    struct Recording {
        unsimplified_too: bool,
        asked: RefCell<Vec<LoopVariant>>,
    }

    impl LoopSource for Recording {
        fn loop_fn(&self, spec: &LoopSpec<'_>) -> Option<Result<Code, RtError>> {
            self.asked.borrow_mut().push(spec.variant.clone());
            None
        }

        fn unsimplified_too(&self) -> bool {
            self.unsimplified_too
        }
    }

    #[test]
    fn a_nest_asks_for_its_simplified_form_then_as_built_and_declines_without_code() {
        use Step::One;
        // `[T, S] · [T, 1]` at S = 1: `y` is no longer a broadcast.
        let (p, k) = program(&[(&["T", "S"], vec![]), (&["T", "1"], vec![])], &["T", "S"], false);
        let KernelBody::Elementwise(ek) = &k else { unreachable!() };
        fn view(d: &[f32], strides: Vec<usize>) -> StridedView<'_> {
            StridedView { data: Elems::F32(d), offset: 0, shape: vec![3, 1], strides }
        }
        let (x, y) = ([1f32; 3], [2f32; 3]);
        let bindings = Bindings::new();
        let args = ElementwiseArgs {
            shape: &[3, 1],
            inputs: vec![view(&x, vec![1, 1]), view(&y, vec![1, 1])],
            masks: Vec::new(),
            bindings: &bindings,
            dtypes: vec![],
            out_dtype: tdl_ir::DType::F32,
        };
        let aot = Recording { unsimplified_too: true, asked: RefCell::default() };
        assert!(run_elementwise(ek, &args, 1, &aot).is_none());
        assert_eq!(*aot.asked.borrow(), [v(1, &[One, One]), v(2, &[One, One])]);
        let jit = Recording { unsimplified_too: false, asked: RefCell::default() };
        assert!(run_elementwise(ek, &args, 1, &jit).is_none());
        assert_eq!(*jit.asked.borrow(), [v(1, &[One, One])]);
        // Neither is what an artifact compiles for this kernel.
        assert!(!loop_variants(&p, &k).unwrap().iter().any(|c| aot.asked.borrow().contains(c)));
    }
}
