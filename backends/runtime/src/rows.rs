//! The driver of the compiled row and reduction kernels: the Kernel IR's
//! [`RowKernel`] (softmax over any axis, layernorm, rmsnorm, rope) and
//! [`ReduceKernel`] (sum, mean, max over one axis), one compiled function
//! per [`RowCode`], run over blocks of rows on the worker threads. No LLVM:
//! the code comes from a [`RowSource`] — the JIT (`tdl_llvm::rows`)
//! compiles it on demand, an artifact ([`crate::aot`]) looks it up among
//! the functions it was compiled with.
//!
//! What the functions compute (in the interpreter's order, so sums give
//! its bits) is documented with their code generator, `tdl_llvm::rows`.
//! The rope table is the interpreter's (`f64`, rounded to `f32`), built
//! here and cached per `(positions, d, base)` ([`RopeTables`]).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tdl_ir::{Dim, ReduceOp};
use tdl_kernel::interp::RowArgs;
use tdl_kernel::ir::{KernelBody, KernelProgram, ReduceKernel, RowKernel, RowOp};

use crate::code::Code;
use crate::elementwise::{par_for, GRAIN};
use crate::pool::Shared;
use crate::RtError;

/// `(x, out, p0, p1, n, inner, r0, r1, j0, j1)`: the kernel's rows
/// `r0..r1` (columns `j0..j1` of an inner-axis reduction); `p0`, `p1` are
/// the gain and bias (norms) or the cos and sin tables (rope).
pub type RowFn = unsafe extern "C" fn(*const f32, *mut f32, *const f32, *const f32, i64, i64, i64, i64, i64, i64);

/// What one compiled row function is specialised for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum RowCode {
    /// A reduction; `last`: over the last axis (one accumulator per row),
    /// else over an inner one (one per output column).
    Reduce { op: ReduceOp, last: bool },
    /// Softmax over rows of `n` elements 1 (`last`) or `inner` apart.
    Softmax { last: bool },
    /// Layernorm (`layer`) or rmsnorm with `eps` (the bits of its `f32`).
    Norm { layer: bool, eps_bits: u32 },
    /// Rotate-half rope.
    Rope,
    /// A reduction of `i32` values to `i32`s (`x` and `out` hold `i32`):
    /// sum wrapping, max, mean as the interpreter's (the `i64` sum over
    /// `n` in `f64`, truncated).
    ReduceI32 { op: ReduceOp, last: bool },
}

impl RowCode {
    /// What the reports print.
    pub fn text(&self) -> String {
        let axis = |last: bool| if last { "the last axis" } else { "an inner axis" };
        match self {
            RowCode::Reduce { op, last } => format!("{op:?} over {}", axis(*last)).to_lowercase(),
            RowCode::ReduceI32 { op, last } => format!("i32 {op:?} over {}", axis(*last)).to_lowercase(),
            RowCode::Softmax { last } => format!("softmax over {}", axis(*last)),
            RowCode::Norm { layer: true, .. } => "layernorm rows".into(),
            RowCode::Norm { layer: false, .. } => "rmsnorm rows".into(),
            RowCode::Rope => "rope rows".into(),
        }
    }
}

/// A rope `(cos, sin)` table and what it was built for: `(base bits,
/// positions, d)`.
type RopeEntry = ((u64, usize, usize), Arc<(Vec<f32>, Vec<f32>)>);

/// The last few rope tables (computing one costs more than applying it).
#[derive(Debug, Default)]
pub struct RopeTables(Mutex<VecDeque<RopeEntry>>);

impl RopeTables {
    /// The rope table for `positions × d` at `base` (the last 8 are kept).
    pub fn get(&self, base: f64, positions: usize, d: usize) -> Arc<(Vec<f32>, Vec<f32>)> {
        let key = (base.to_bits(), positions, d);
        let mut r = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, t)) = r.iter().find(|(k, _)| *k == key) {
            return t.clone();
        }
        let t = Arc::new(rope_table(base, positions, d));
        if r.len() >= 8 {
            r.pop_front();
        }
        r.push_back((key, t.clone()));
        t
    }
}

/// Where a kernel's row function comes from.
pub trait RowSource {
    /// The compiled function for `code`, or `None` when there is none (the
    /// kernel then declines to the interpreter). The [`Code`] must be a
    /// [`RowFn`] generated for exactly `code`.
    fn row_fn(&self, code: &RowCode) -> Option<Result<Code, RtError>>;

    /// The rope tables to use.
    fn rope_tables(&self) -> &RopeTables;
}

/// Everything one call of the row function needs.
struct Call<'x> {
    code: RowCode,
    /// The input (`f32`, or `i32` for [`RowCode::ReduceI32`]), as a pointer.
    x: Shared<f32>,
    p0: &'x [f32],
    p1: &'x [f32],
    n: usize,
    inner: usize,
    /// Rows (or, for an inner-axis reduction, outer indices) and the
    /// columns each covers.
    rows: usize,
    cols: usize,
    n_out: usize,
    /// Elements one row reads.
    row_elems: usize,
}

/// Runs `call`, writing `T`s (4-byte `f32` or `i32`, as the code writes).
fn run_call<T: Copy + Default>(
    call: &Call<'_>,
    source: &dyn RowSource,
    threads: usize,
) -> Option<Result<Vec<T>, RtError>> {
    let mut out = vec![T::default(); call.n_out];
    if call.rows == 0 || call.cols == 0 || call.n_out == 0 {
        return Some(Ok(out));
    }
    let code = match source.row_fn(&call.code)? {
        Ok(c) => c,
        Err(e) => return Some(Err(e)),
    };
    // SAFETY: the source answered `call.code` with a `RowFn` generated for
    // it (`Code::new`'s contract); `code` keeps it alive.
    let f = unsafe { std::mem::transmute::<usize, RowFn>(code.addr()) };
    // Rows per item, and column blocks when there are few rows.
    let per_row = call.row_elems.max(1);
    let (items, rpi, cw) = if call.cols > 1 && call.rows < 2 * threads && call.cols >= 128 {
        let cw = (GRAIN / call.n.max(1)).max(64).next_multiple_of(64).min(call.cols);
        (call.rows * call.cols.div_ceil(cw), 1, cw)
    } else {
        let rpi = (GRAIN / per_row).max(1);
        (call.rows.div_ceil(rpi), rpi, call.cols)
    };
    let nblocks = call.cols.div_ceil(cw);
    let outp = Shared(out.as_mut_ptr().cast::<f32>());
    let ptr = |s: &[f32]| Shared(s.as_ptr().cast_mut());
    let (xp, p0, p1) = (call.x, ptr(call.p0), ptr(call.p1));
    let run = par_for(items, threads, |i| {
        let (r0, r1, j0, j1) = if cw < call.cols {
            let (r, b) = (i / nblocks, i % nblocks);
            (r, r + 1, b * cw, ((b + 1) * cw).min(call.cols))
        } else {
            (i * rpi, ((i + 1) * rpi).min(call.rows), 0, call.cols)
        };
        // SAFETY: the callers checked that the rows' reads stay inside `x`
        // and the parameters and the writes inside `out`; items write
        // disjoint rows (or disjoint columns of one row).
        unsafe {
            f(
                xp.ptr().cast_const(),
                outp.ptr(),
                p0.ptr().cast_const(),
                p1.ptr().cast_const(),
                call.n as i64,
                call.inner as i64,
                r0 as i64,
                r1 as i64,
                j0 as i64,
                j1 as i64,
            )
        };
    });
    Some(run.map(|()| out))
}

/// Runs a reduction with the code of `source`, or `None` when there is
/// none for it (or it is not supported).
pub fn run_reduce(
    k: &ReduceKernel,
    args: &RowArgs<'_>,
    threads: usize,
    source: &dyn RowSource,
) -> Option<Result<Vec<f32>, RtError>> {
    let shape = args.shape;
    let x = Shared(args.x.as_ptr().cast_mut());
    let call = reduce_call(k, shape, args.x.len(), x, |op, last| RowCode::Reduce { op, last })?;
    run_call(&call, source, threads)
}

/// The call of a reduction over `x` (`len` elements of `shape`), or `None`
/// when they do not agree (or `max` reduces an empty axis).
fn reduce_call<'x>(
    k: &ReduceKernel,
    shape: &[usize],
    len: usize,
    x: Shared<f32>,
    code: impl FnOnce(ReduceOp, bool) -> RowCode,
) -> Option<Call<'x>> {
    let &n = shape.get(k.axis)?;
    let outer: usize = shape[..k.axis].iter().product();
    let inner: usize = shape[k.axis + 1..].iter().product();
    let total = outer.checked_mul(n)?.checked_mul(inner)?;
    if total != len || (k.op == ReduceOp::Max && n == 0) {
        return None;
    }
    Some(Call {
        code: code(k.op, inner == 1),
        x,
        p0: &[],
        p1: &[],
        n,
        inner,
        rows: outer,
        cols: inner,
        n_out: outer * inner,
        row_elems: n * inner,
    })
}

/// [`run_reduce`] of an `i32` (or `bool`, 0/1) input `x` of `shape`: the
/// `i32` results ([`RowCode::ReduceI32`]).
pub fn run_reduce_i32(
    k: &ReduceKernel,
    x: &[i32],
    shape: &[usize],
    threads: usize,
    source: &dyn RowSource,
) -> Option<Result<Vec<i32>, RtError>> {
    let xp = Shared(x.as_ptr().cast::<f32>().cast_mut());
    let call = reduce_call(k, shape, x.len(), xp, |op, last| RowCode::ReduceI32 { op, last })?;
    run_call(&call, source, threads)
}

/// Runs a row kernel with the code of `source`, or `None` when there is
/// none for it (or it is not supported).
pub fn run_row(
    k: &RowKernel,
    args: &RowArgs<'_>,
    threads: usize,
    source: &dyn RowSource,
) -> Option<Result<Vec<f32>, RtError>> {
    let shape = args.shape;
    let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
    if numel != args.x.len() {
        return None;
    }
    let r = shape.len();
    let d = shape.last().copied().unwrap_or(1);
    let rows = numel.checked_div(d).unwrap_or(0);
    let base = Call {
        code: RowCode::Rope,
        x: Shared(args.x.as_ptr().cast_mut()),
        p0: &[],
        p1: &[],
        n: d,
        inner: 1,
        rows,
        cols: 1,
        n_out: numel,
        row_elems: d,
    };
    let params_ok = |want: usize| args.params.len() == want && args.params.iter().all(|p| p.len() == d);
    let eps_bits = |eps: f64| (eps as f32).to_bits();
    let call = match &k.op {
        RowOp::Softmax { axis } => {
            let &n = shape.get(*axis)?;
            let inner: usize = shape[*axis + 1..].iter().product();
            let rows = numel.checked_div(n).unwrap_or(0);
            Call { code: RowCode::Softmax { last: inner == 1 }, n, inner, rows, row_elems: n, ..base }
        }
        RowOp::LayerNorm { eps } if params_ok(2) => Call {
            code: RowCode::Norm { layer: true, eps_bits: eps_bits(*eps) },
            p0: args.params[0],
            p1: args.params[1],
            ..base
        },
        RowOp::RmsNorm { eps } if params_ok(1) => {
            Call { code: RowCode::Norm { layer: false, eps_bits: eps_bits(*eps) }, p0: args.params[0], ..base }
        }
        RowOp::Rope { base: b } => {
            if r < 2 || d % 2 != 0 || !args.params.is_empty() {
                return None;
            }
            if numel == 0 {
                return Some(Ok(Vec::new()));
            }
            let p = shape[r - 2].max(1);
            let table = source.rope_tables().get(*b, p, d);
            let call = Call { p0: &table.0, p1: &table.1, inner: p, ..base };
            return run_call(&call, source, threads);
        }
        _ => return None,
    };
    run_call(&call, source, threads)
}

/// The interpreter's rope table: `theta = pos · base^(-2i/d)` in `f64`,
/// `(cos, sin)` rounded to `f32`, `[positions, d/2]` each.
pub fn rope_table(base: f64, positions: usize, d: usize) -> (Vec<f32>, Vec<f32>) {
    let half = d / 2;
    let n = positions * half;
    let (mut cs, mut sn) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for pos in 0..positions {
        for i in 0..half {
            let theta = pos as f64 * base.powf(-((2 * i) as f64) / d as f64);
            let (s, c) = theta.sin_cos();
            cs.push(c as f32);
            sn.push(s as f32);
        }
    }
    (cs, sn)
}

/// Whether the product of `dims` is 1 (`Some(true)`), cannot be 1
/// (`Some(false)`: a constant other than 1) or depends on the symbols
/// (`None`).
fn unit_product(dims: &[Dim]) -> Option<bool> {
    let prod = Dim::product(dims).ok()?;
    prod.as_const().map(|c| c == 1)
}

/// The row functions an artifact compiles for row or reduce kernel `body`
/// of `p`: what [`run_row`] / [`run_reduce`] ask for at any size (both
/// forms of an axis whose inner size depends on the symbols: it is 1 when
/// they are). `Err` says why the kernel gets no compiled code.
pub fn row_codes(p: &KernelProgram, body: &KernelBody) -> Result<Vec<RowCode>, String> {
    let is_float = |a: &tdl_kernel::ir::Access| p.buffer(a.buf).is_some_and(|b| b.dtype.is_float());
    let input = |a: &tdl_kernel::ir::Access, ints: bool| -> Result<Vec<Dim>, String> {
        let buf = p.buffer(a.buf).ok_or_else(|| format!("no buffer {}", a.buf))?;
        if !buf.dtype.is_float() && !ints {
            return Err(format!("its input holds {} values (compiled code reads f32)", buf.dtype.name()));
        }
        a.shape(&buf.shape)
    };
    let forms = |shape: &[Dim], axis: usize| -> Result<Vec<bool>, String> {
        if axis >= shape.len() {
            return Err(format!("axis {axis} is out of range"));
        }
        Ok(match unit_product(&shape[axis + 1..]) {
            Some(last) => vec![last],
            None => vec![false, true],
        })
    };
    match body {
        KernelBody::Reduce(k) => {
            let shape = input(&k.x, true)?;
            let float = is_float(&k.x);
            Ok(forms(&shape, k.axis)?
                .into_iter()
                .map(
                    |last| {
                        if float {
                            RowCode::Reduce { op: k.op, last }
                        } else {
                            RowCode::ReduceI32 { op: k.op, last }
                        }
                    },
                )
                .collect())
        }
        KernelBody::Row(k) => {
            let shape = input(&k.x, false)?;
            let eps_bits = |eps: f64| (eps as f32).to_bits();
            match &k.op {
                RowOp::Softmax { axis } => {
                    Ok(forms(&shape, *axis)?.into_iter().map(|last| RowCode::Softmax { last }).collect())
                }
                RowOp::LayerNorm { eps } if k.params.len() == 2 => {
                    Ok(vec![RowCode::Norm { layer: true, eps_bits: eps_bits(*eps) }])
                }
                RowOp::RmsNorm { eps } if k.params.len() == 1 => {
                    Ok(vec![RowCode::Norm { layer: false, eps_bits: eps_bits(*eps) }])
                }
                RowOp::Rope { .. } if k.params.is_empty() => Ok(vec![RowCode::Rope]),
                _ => Err("its parameters are not the operator's".into()),
            }
        }
        other => Err(format!("{} kernels are not row kernels", other.kind())),
    }
}

#[cfg(test)]
mod tests {
    use tdl_kernel::ir::{Access, BufId, BufKind, Buffer, Kernel};

    use super::*;

    fn program(x: &[&str], body: impl FnOnce(Access, BufId) -> KernelBody) -> (KernelProgram, KernelBody) {
        let shape: Vec<Dim> = x.iter().map(|d| d.parse::<i64>().map_or_else(|_| Dim::sym(d), Dim::constant)).collect();
        let buf =
            |name: &str, kind| Buffer { name: name.into(), dtype: tdl_ir::DType::F32, shape: shape.clone(), kind };
        let kbody = body(Access::whole(BufId(0)), BufId(1));
        let p = KernelProgram {
            name: "g".into(),
            symbols: vec!["S".into(), "T".into()],
            buffers: vec![buf("x", BufKind::Input(0)), buf("out", BufKind::Temp)],
            params: vec![BufId(0)],
            kernels: vec![Kernel { name: "k".into(), span: None, body: kbody.clone() }],
            results: vec![BufId(1)],
            target: String::new(),
        };
        (p, kbody)
    }

    #[test]
    fn row_codes_cover_the_axis_forms_the_sizes_allow() {
        let softmax =
            |axis| move |x, out| KernelBody::Row(RowKernel { op: RowOp::Softmax { axis }, x, params: vec![], out });
        // Over an inner axis whose inner size is a symbol (1 when it is).
        let (p, k) = program(&["T", "S"], softmax(0));
        assert_eq!(row_codes(&p, &k).unwrap(), [RowCode::Softmax { last: false }, RowCode::Softmax { last: true }]);
        let (p, k) = program(&["T", "S"], softmax(1));
        assert_eq!(row_codes(&p, &k).unwrap(), [RowCode::Softmax { last: true }]);
        let reduce = |x, out| KernelBody::Reduce(ReduceKernel { op: ReduceOp::Sum, axis: 0, keepdims: false, x, out });
        let (p, k) = program(&["T", "64"], reduce);
        assert_eq!(row_codes(&p, &k).unwrap(), [RowCode::Reduce { op: ReduceOp::Sum, last: false }]);
    }
}
