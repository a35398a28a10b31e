//! The mask formula as MLIR, shared by the attention and elementwise
//! kernels: every [`MaskExpr`] with the reference's semantics
//! (`tdl_reference::mask`), at query `q`, key `k`, head `h` (`i64`
//! values) over `T` queries and `S` keys.
//!
//! - `causal`, `local`, `window`, `dilated`, `sink`, `strided` in `i64`
//!   arithmetic that cannot overflow (differences of indices compared with
//!   the constants, floor modulo by constants);
//! - `neighborhood` (1-D/2-D/3-D, dilation, causal axes): NATTEN's rule per
//!   grid axis, last axis fastest; the plan checks the grid against `T`
//!   and `S` as the reference does (`check_neighborhood`) and declines
//!   otherwise, so the interpreter reports the error;
//! - `document(ids)`: `ids[q] == ids[k]`, the `i32` ids an array
//!   parameter; `blocks(layout, [bq, bk])`: `layout[q / bq, k / bk] != 0`,
//!   the layout (constant or operand) an array parameter. The plan checks
//!   that they cover `T` and `S` ([`check`]);
//! - index lambdas through [`crate::lambda`];
//! - `&`, `|`, `!`; `&` and `|` are lazy (`scf.if`) when their right side
//!   holds a lambda that reads an array, as the reference short-circuits.
//!
//! What the code reads besides its indices — dimension symbols, arrays,
//! the head count, an error flag — is collected in [`Extras`], which
//! becomes extra kernel parameters after the kernel's own (see
//! [`Extras::params`] and [`crate::launch`]) and whose values a plan
//! computes ([`plan_extras`]).

use std::borrow::Cow;

use tdl_ir::{ArrayRef, Bindings, ConstValue, DType, MaskExpr, ScalarExpr};

use crate::elementwise::{dense, Emit};
use crate::lambda::{int_mod, lambda, LamCtx, Ty};
use crate::launch::{Param, PlanBuf};
use crate::MlirError;

/// An array the mask or lambda code reads (one kernel parameter).
#[derive(Clone, Debug, PartialEq)]
pub enum ArraySrc {
    /// A constant array of the program (uploaded by the plan).
    Const(ConstValue),
    /// Operand `index` of operand group `group`: attention's group 0 is the
    /// mask's operands, group 1 the score modifier's; an elementwise
    /// kernel's group `m` is its mask `m`'s.
    Operand { group: usize, index: usize },
}

/// The extra inputs of a kernel's mask and lambda code, collected while
/// the code is generated; they become kernel parameters after the
/// kernel's own, in this order: `%hn: i64` (the head count, when
/// `heads`; attention only), `%sym<i>: i64` per symbol, `%arr<i>` per
/// array (a row-major `memref<?x…xi32>` for `i32`/`bool` arrays, bools as
/// 0/1, `memref<?x…xf32>` for float arrays), `%err: memref<1xi32>` (when
/// `err`: set to 1 where a lambda's index is out of range).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Extras {
    /// Input: per operand group, per operand, its element type and rank
    /// (`None`: not a tensor the code may read).
    pub groups: Vec<Vec<Option<(DType, usize)>>>,
    pub heads: bool,
    pub syms: Vec<String>,
    pub arrays: Vec<(ArraySrc, DType, usize)>,
    pub err: bool,
}

/// The memref type of an array of `dtype` and `rank`.
fn array_type(dtype: DType, rank: usize) -> String {
    dense(rank, if int_elems(dtype) { "i32" } else { "f32" })
}

fn int_elems(d: DType) -> bool {
    matches!(d, DType::I32 | DType::Bool)
}

impl Extras {
    pub fn new(groups: Vec<Vec<Option<(DType, usize)>>>) -> Extras {
        Extras { groups, ..Extras::default() }
    }

    /// No extra parameters.
    pub fn is_empty(&self) -> bool {
        !self.heads && self.syms.is_empty() && self.arrays.is_empty() && !self.err
    }

    pub(crate) fn operand_type(&self, group: usize, index: usize) -> Option<(DType, usize)> {
        self.groups.get(group)?.get(index).copied().flatten()
    }

    /// The parameter holding symbol `name`.
    pub(crate) fn symbol(&mut self, name: &str) -> String {
        let i = match self.syms.iter().position(|s| s == name) {
            Some(i) => i,
            None => {
                self.syms.push(name.to_string());
                self.syms.len() - 1
            }
        };
        format!("%sym{i}")
    }

    /// The parameter holding `src` and its memref type.
    pub(crate) fn array(&mut self, src: ArraySrc, dtype: DType, rank: usize) -> (String, String) {
        let i = match self.arrays.iter().position(|(s, _, _)| *s == src) {
            Some(i) => i,
            None => {
                self.arrays.push((src, dtype, rank));
                self.arrays.len() - 1
            }
        };
        (format!("%arr{i}"), array_type(dtype, rank))
    }

    /// The extra parameters (name, type), in order.
    pub fn params(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        if self.heads {
            p.push(("%hn".to_string(), "i64".to_string()));
        }
        for i in 0..self.syms.len() {
            p.push((format!("%sym{i}"), "i64".to_string()));
        }
        for (i, (_, d, r)) in self.arrays.iter().enumerate() {
            p.push((format!("%arr{i}"), array_type(*d, *r)));
        }
        if self.err {
            p.push(("%err".to_string(), "memref<1xi32>".to_string()));
        }
        p
    }
}

/// An operand a mask or lambda reads, as the hooks give it (the
/// interpreter's `OperandData`): element type, shape, row-major values.
#[derive(Clone, Copy, Debug)]
pub struct ArrayData<'a> {
    pub dtype: DType,
    pub shape: &'a [usize],
    pub data: &'a [f64],
}

/// The operand types of `operands` (for [`Extras::new`]).
pub fn operand_types(operands: &[ArrayData<'_>]) -> Vec<Option<(DType, usize)>> {
    operands.iter().map(|o| Some((o.dtype, o.shape.len()))).collect()
}

/// Where a mask is evaluated: `i64` values of the query, key and head
/// indices and of `T` and `S`, and the operand group of its operands.
pub(crate) struct MaskCtx<'a> {
    pub q: &'a str,
    pub k: &'a str,
    pub h: &'a str,
    pub t: &'a str,
    pub s: &'a str,
    pub group: usize,
}

/// Whether `m` holds a lambda.
pub fn has_lambda(m: &MaskExpr) -> bool {
    match m {
        MaskExpr::Lambda(_) => true,
        MaskExpr::And(a, b) | MaskExpr::Or(a, b) => has_lambda(a) || has_lambda(b),
        MaskExpr::Not(a) => has_lambda(a),
        _ => false,
    }
}

/// Whether the scalar expression reads an array (and so may fail).
pub fn reads_array(e: &ScalarExpr) -> bool {
    match e {
        ScalarExpr::Index { .. } => true,
        ScalarExpr::Unary(_, a) => reads_array(a),
        ScalarExpr::Binary(_, a, b) => reads_array(a) || reads_array(b),
        ScalarExpr::Select(c, a, b) => reads_array(c) || reads_array(a) || reads_array(b),
        _ => false,
    }
}

/// Whether evaluating `m` may fail (a lambda reading an array).
fn may_fail(m: &MaskExpr) -> bool {
    match m {
        MaskExpr::Lambda(e) => reads_array(e),
        MaskExpr::And(a, b) | MaskExpr::Or(a, b) => may_fail(a) || may_fail(b),
        MaskExpr::Not(a) => may_fail(a),
        _ => false,
    }
}

/// Whether `m` reads memory (arrays or operands): its code must then run
/// only at in-range `(q, k)`.
pub fn reads_memory(m: &MaskExpr) -> bool {
    match m {
        MaskExpr::Lambda(_) | MaskExpr::Document { .. } | MaskExpr::Blocks { .. } => true,
        MaskExpr::And(a, b) | MaskExpr::Or(a, b) => reads_memory(a) || reads_memory(b),
        MaskExpr::Not(a) => reads_memory(a),
        _ => false,
    }
}

fn unsupported(m: &MaskExpr, why: &str, ctx: &str) -> MlirError {
    MlirError::Unsupported(format!("the mask `{}` ({why}) in the {ctx}", tdl_ir::text::mask_text(m)))
}

/// Emits whether `m` holds at `cx` into `em`; returns the `i1` value.
/// Unsupported masks say "the mask `…` (why) in the {ctx}".
pub(crate) fn mask(
    em: &mut Emit,
    m: &MaskExpr,
    cx: &MaskCtx<'_>,
    x: &mut Extras,
    ctx: &str,
) -> Result<String, MlirError> {
    let c = |em: &mut Emit, v: i64| em.v(format!("arith.constant {v} : i64"));
    let (q, k) = (cx.q, cx.k);
    // k <= q + (S - T)
    let causal = |em: &mut Emit| {
        let st = em.v(format!("arith.subi {}, {} : i64", cx.s, cx.t));
        let lim = em.v(format!("arith.addi {q}, {st} : i64"));
        em.v(format!("arith.cmpi sle, {k}, {lim} : i64"))
    };
    // q - k (no overflow: both are indices)
    let diff = |em: &mut Emit| em.v(format!("arith.subi {q}, {k} : i64"));
    // q - left <= k <= q + right, as q - k <= left and k - q <= right
    let local = |em: &mut Emit, left: i64, right: i64| {
        let d = em.v(format!("arith.subi {q}, {k} : i64"));
        let nd = em.v(format!("arith.subi {k}, {q} : i64"));
        let cl = c(em, left);
        let cr = c(em, right);
        let a = em.v(format!("arith.cmpi sle, {d}, {cl} : i64"));
        let b = em.v(format!("arith.cmpi sle, {nd}, {cr} : i64"));
        em.v(format!("arith.andi {a}, {b} : i1"))
    };
    let and = |em: &mut Emit, a: &str, b: &str| em.v(format!("arith.andi {a}, {b} : i1"));
    Ok(match m {
        MaskExpr::Causal => causal(em),
        MaskExpr::Local { left, right } => local(em, *left, *right),
        MaskExpr::Window { w } => {
            let cz = causal(em);
            let l = local(em, w.saturating_sub(1), 0);
            and(em, &cz, &l)
        }
        MaskExpr::Dilated { w, d } => {
            // causal, q - k < w·d (in i128), (q - k) mod d == 0 (floor).
            let cz = causal(em);
            let df = diff(em);
            let wd = i128::from(*w) * i128::from(*d);
            let lt = if wd > i128::from(i64::MAX) {
                em.v("arith.constant true")
            } else if wd < i128::from(i64::MIN) {
                em.v("arith.constant false")
            } else {
                let cw = c(em, wd as i64);
                em.v(format!("arith.cmpi slt, {df}, {cw} : i64"))
            };
            let cd = c(em, *d);
            let r = int_mod(em, &df, &cd);
            let z = c(em, 0);
            let m0 = em.v(format!("arith.cmpi eq, {r}, {z} : i64"));
            let a = and(em, &cz, &lt);
            and(em, &a, &m0)
        }
        MaskExpr::Sink { n } => {
            let cn = c(em, *n);
            em.v(format!("arith.cmpi slt, {k}, {cn} : i64"))
        }
        MaskExpr::Strided { stride, offset } => {
            // (k + offset) floor-mod stride == 0, in i128.
            if *stride == 0 {
                // x % 0 == x: k + offset == 0.
                if *offset > 0 || *offset == i64::MIN {
                    em.v("arith.constant false")
                } else {
                    let co = c(em, -*offset);
                    em.v(format!("arith.cmpi eq, {k}, {co} : i64"))
                }
            } else {
                // Divisible by |stride| (unsigned: k ≥ 0, the sum < 2⁶⁴).
                let ms = stride.unsigned_abs();
                let om = i128::from(*offset).rem_euclid(i128::from(ms)) as u64;
                let cm = c(em, ms as i64);
                let co = c(em, om as i64);
                let kr = em.v(format!("arith.remui {k}, {cm} : i64"));
                let sum = em.v(format!("arith.addi {kr}, {co} : i64"));
                let r = em.v(format!("arith.remui {sum}, {cm} : i64"));
                let z = c(em, 0);
                em.v(format!("arith.cmpi eq, {r}, {z} : i64"))
            }
        }
        MaskExpr::Neighborhood { kernel, grid, dilation, causal: cz } => {
            let n = grid.len();
            let fits = |v: &i64| (1..1i64 << 31).contains(v);
            if n == 0
                || kernel.len() != n
                || dilation.len() != n
                || cz.len() != n
                || !grid.iter().chain(kernel).chain(dilation).all(fits)
            {
                return Err(unsupported(m, "malformed", ctx));
            }
            let (mut qr, mut kr) = (q.to_string(), k.to_string());
            let mut all = em.v("arith.constant true");
            for ax in (0..n).rev() {
                let (len, kk, d) = (grid[ax], kernel[ax], dilation[ax]);
                let cl = c(em, len);
                let cd = c(em, d);
                let a = em.v(format!("arith.remui {qr}, {cl} : i64"));
                let b = em.v(format!("arith.remui {kr}, {cl} : i64"));
                qr = em.v(format!("arith.divui {qr}, {cl} : i64"));
                kr = em.v(format!("arith.divui {kr}, {cl} : i64"));
                let ga = em.v(format!("arith.remui {a}, {cd} : i64"));
                let gb = em.v(format!("arith.remui {b}, {cd} : i64"));
                let same = em.v(format!("arith.cmpi eq, {ga}, {gb} : i64"));
                let i = em.v(format!("arith.divui {a}, {cd} : i64"));
                let j = em.v(format!("arith.divui {b}, {cd} : i64"));
                let vis = if cz[ax] {
                    // max(0, i - kk + 1) <= j <= i
                    let ck = c(em, kk - 1);
                    let z = c(em, 0);
                    let lo0 = em.v(format!("arith.subi {i}, {ck} : i64"));
                    let lo = em.v(format!("arith.maxsi {lo0}, {z} : i64"));
                    let x1 = em.v(format!("arith.cmpi sle, {lo}, {j} : i64"));
                    let x2 = em.v(format!("arith.cmpi sle, {j}, {i} : i64"));
                    and(em, &x1, &x2)
                } else {
                    // lg = members of the group; start = clamp(i - kk/2, 0, lg - kk)
                    let cl1 = c(em, len + d - 1);
                    let t0 = em.v(format!("arith.subi {cl1}, {ga} : i64"));
                    let lg = em.v(format!("arith.divsi {t0}, {cd} : i64"));
                    let ck = c(em, kk);
                    let hi = em.v(format!("arith.subi {lg}, {ck} : i64"));
                    let ch = c(em, kk / 2);
                    let c0 = em.v(format!("arith.subi {i}, {ch} : i64"));
                    let c1 = em.v(format!("arith.minsi {c0}, {hi} : i64"));
                    let z = c(em, 0);
                    let start = em.v(format!("arith.maxsi {c1}, {z} : i64"));
                    let end = em.v(format!("arith.addi {start}, {ck} : i64"));
                    let x1 = em.v(format!("arith.cmpi sle, {start}, {j} : i64"));
                    let x2 = em.v(format!("arith.cmpi slt, {j}, {end} : i64"));
                    and(em, &x1, &x2)
                };
                let v = and(em, &same, &vis);
                all = and(em, &all, &v);
            }
            all
        }
        MaskExpr::Document { ids } => {
            match x.operand_type(cx.group, *ids) {
                Some((DType::I32, 1)) => {}
                _ => return Err(unsupported(m, "its ids are not an i32 vector", ctx)),
            }
            let (a, ty) = x.array(ArraySrc::Operand { group: cx.group, index: *ids }, DType::I32, 1);
            let qi = em.v(format!("arith.index_cast {q} : i64 to index"));
            let ki = em.v(format!("arith.index_cast {k} : i64 to index"));
            let iq = em.v(format!("memref.load {a}[{qi}] : {ty}"));
            let ik = em.v(format!("memref.load {a}[{ki}] : {ty}"));
            em.v(format!("arith.cmpi eq, {iq}, {ik} : i32"))
        }
        MaskExpr::Blocks { layout, block: [bq, bk] } => {
            if *bq <= 0 || *bk <= 0 {
                return Err(unsupported(m, "block sizes not positive", ctx));
            }
            let (src, dtype) = match layout {
                ArrayRef::Const(cv) if cv.shape.len() == 2 && cv.data.len() == cv.shape[0] * cv.shape[1] => {
                    (ArraySrc::Const(cv.clone()), cv.dtype)
                }
                ArrayRef::Operand(i) => match x.operand_type(cx.group, *i) {
                    Some((d, 2)) => (ArraySrc::Operand { group: cx.group, index: *i }, d),
                    _ => return Err(unsupported(m, "its layout is not a 2-D tensor", ctx)),
                },
                ArrayRef::Const(_) => return Err(unsupported(m, "its layout is not a 2-D array", ctx)),
            };
            let (a, ty) = x.array(src, dtype, 2);
            let cq = c(em, *bq);
            let ck = c(em, *bk);
            let r = em.v(format!("arith.divui {q}, {cq} : i64"));
            let col = em.v(format!("arith.divui {k}, {ck} : i64"));
            let ri = em.v(format!("arith.index_cast {r} : i64 to index"));
            let ci = em.v(format!("arith.index_cast {col} : i64 to index"));
            let v = em.v(format!("memref.load {a}[{ri}, {ci}] : {ty}"));
            if int_elems(dtype) {
                let z = em.v("arith.constant 0 : i32");
                em.v(format!("arith.cmpi ne, {v}, {z} : i32"))
            } else {
                let z = em.v("arith.constant 0.0 : f32");
                em.v(format!("arith.cmpf une, {v}, {z} : f32"))
            }
        }
        MaskExpr::Lambda(e) => {
            let lc = LamCtx { q, k, h: cx.h, s: None, group: cx.group };
            let (v, t) = lambda(em, e, &lc, x).map_err(|err| match err {
                MlirError::Unsupported(why) => unsupported(m, &why, ctx),
                other => other,
            })?;
            if t != Ty::Bool {
                return Err(unsupported(m, "a lambda that does not give a boolean", ctx));
            }
            v
        }
        MaskExpr::And(a, b) | MaskExpr::Or(a, b) if may_fail(b) => {
            // Lazy: the right side runs only when the left does not decide.
            let is_and = matches!(m, MaskExpr::And(..));
            let va = mask(em, a, cx, x, ctx)?;
            let mut eb = em.fork();
            let vb = mask(&mut eb, b, cx, x, ctx)?;
            em.resume(&eb);
            let r = em.v(format!("scf.if {va} -> (i1) {{"));
            if is_and {
                em.s.push_str(&eb.s);
                em.line(format!("scf.yield {vb} : i1"));
                em.line("} else {");
                em.line(format!("scf.yield {va} : i1"));
            } else {
                em.line(format!("scf.yield {va} : i1"));
                em.line("} else {");
                em.s.push_str(&eb.s);
                em.line(format!("scf.yield {vb} : i1"));
            }
            em.line("}");
            r
        }
        MaskExpr::And(a, b) | MaskExpr::Or(a, b) => {
            let va = mask(em, a, cx, x, ctx)?;
            let vb = mask(em, b, cx, x, ctx)?;
            let op = if matches!(m, MaskExpr::And(..)) { "andi" } else { "ori" };
            em.v(format!("arith.{op} {va}, {vb} : i1"))
        }
        MaskExpr::Not(a) => {
            let va = mask(em, a, cx, x, ctx)?;
            let t = em.v("arith.constant true");
            em.v(format!("arith.xori {va}, {t} : i1"))
        }
    })
}

/// Whether the reference accepts `m` over `t` queries and `s` keys with
/// these operands (`MaskEval::new`'s checks: neighborhood grids, document
/// ids and block layouts covering the scores). A plan declines otherwise,
/// so the interpreter reports the error.
pub fn check(m: &MaskExpr, operands: &[ArrayData<'_>], t: usize, s: usize) -> bool {
    match m {
        MaskExpr::Neighborhood { kernel, grid, dilation, causal } => {
            let (Ok(ti), Ok(si)) = (i64::try_from(t), i64::try_from(s)) else { return false };
            tdl_ir::mask::check_neighborhood(kernel, grid, dilation, causal, ti, si).is_ok()
        }
        MaskExpr::Document { ids } => operands.get(*ids).is_some_and(|o| {
            o.dtype == DType::I32
                && o.shape.len() == 1
                && o.shape[0] >= t
                && o.shape[0] >= s
                && o.data.len() >= o.shape[0]
        }),
        MaskExpr::Blocks { layout, block: [bq, bk] } => {
            let (Ok(bq), Ok(bk)) = (usize::try_from(*bq), usize::try_from(*bk)) else { return false };
            if bq == 0 || bk == 0 {
                return false;
            }
            let (rows, cols) = match layout {
                ArrayRef::Const(c) if c.shape.len() == 2 => (c.shape[0], c.shape[1]),
                ArrayRef::Operand(i) => match operands.get(*i) {
                    Some(o) if o.shape.len() == 2 => (o.shape[0], o.shape[1]),
                    _ => return false,
                },
                ArrayRef::Const(_) => return false,
            };
            rows >= t.div_ceil(bq) && cols >= s.div_ceil(bk)
        }
        MaskExpr::And(a, b) | MaskExpr::Or(a, b) => check(a, operands, t, s) && check(b, operands, t, s),
        MaskExpr::Not(a) => check(a, operands, t, s),
        _ => true,
    }
}

/// An array's values as a plan buffer (`i32` for integer and boolean
/// arrays, bools as 0/1; `f32` otherwise), at least one element long.
fn array_buf(dtype: DType, data: &[f64]) -> PlanBuf<'static> {
    if int_elems(dtype) {
        let mut v: Vec<i32> =
            data.iter().map(|&x| if dtype == DType::Bool { i32::from(x != 0.0) } else { x as i32 }).collect();
        if v.is_empty() {
            v.push(0);
        }
        PlanBuf::I32(Cow::Owned(v))
    } else {
        let mut v: Vec<f32> = data.iter().map(|&x| x as f32).collect();
        if v.is_empty() {
            v.push(0.0);
        }
        PlanBuf::F32(Cow::Owned(v))
    }
}

/// The values of `x`'s parameters for a launch: appended buffers (arrays,
/// the zeroed error flag) and the parameters in [`Extras::params`] order;
/// `heads` is the value of `%hn`. Also the error flag's buffer. `None`
/// when a symbol is unbound or an operand is missing or not of the type
/// the code was generated for (the interpreter reports it).
pub fn plan_extras(
    x: &Extras,
    groups: &[Vec<Option<ArrayData<'_>>>],
    bindings: &Bindings,
    heads: usize,
    buffers: &mut Vec<PlanBuf<'_>>,
) -> Option<(Vec<Param>, Option<usize>)> {
    let mut params = Vec::new();
    if x.heads {
        params.push(Param::I64(i64::try_from(heads).ok()?));
    }
    for s in &x.syms {
        params.push(Param::I64(*bindings.get(s)?));
    }
    for (src, dtype, rank) in &x.arrays {
        let (shape, data): (&[usize], &[f64]) = match src {
            ArraySrc::Const(c) => (&c.shape, &c.data),
            ArraySrc::Operand { group, index } => {
                let o = (*groups.get(*group)?.get(*index)?)?;
                if int_elems(o.dtype) != int_elems(*dtype) || o.shape.len() != *rank {
                    return None;
                }
                (o.shape, o.data)
            }
        };
        if shape.len() != *rank || data.len() != shape.iter().product::<usize>() {
            return None;
        }
        let b = buffers.len();
        buffers.push(array_buf(*dtype, data));
        params.push(Param::contiguous(b, shape));
    }
    let err = if x.err {
        let b = buffers.len();
        buffers.push(PlanBuf::I32(Cow::Owned(vec![0])));
        params.push(Param::contiguous(b, &[1]));
        Some(b)
    } else {
        None
    };
    Some((params, err))
}
