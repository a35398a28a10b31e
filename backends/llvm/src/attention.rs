//! The CPU attention kernel: the Kernel IR's [`AttentionKernel`](tdl_kernel::ir::AttentionKernel) compiled
//! to native code through LLVM and run on every core.
//!
//! # What is generated
//!
//! One function per attention, `tdl_attention_program`, that runs **one
//! program** of the FlashAttention-2 schedule — one `(leading index,
//! q-tile)` — exactly as the Kernel IR interpreter does: the running max,
//! sum and output of the q-tile's rows on the stack; for each visited
//! kv-tile of the program's runs, `S = Q·Kᵀ·scale` as a register-blocked
//! block product (`gemm`: 6 rows × 2 vectors of accumulators,
//! broadcast multiply-adds, over a Kᵀ the runtime packs once per K block; or,
//! for programs of at most 8 rows such as decode, dot products over K's rows
//! read in place, each K row's dot also prefetching the V row of the same
//! key, so the block product `P·V`, which walks V down its columns, finds
//! the tile in cache instead of missing on every row), the mask predicate **compiled to integer arithmetic**
//! and tested per element in partial tiles only, the online-softmax update
//! and `O += P·V` (the same block product, V read in place); one division
//! at the end; a row with no visible key gives
//! zeros. Head dimensions, tile sizes and the scale are constants of the
//! function; `T`, `S` and the offsets are arguments, so one compiled
//! function serves every sequence length.
//!
//! The text of the function is LLVM IR written by this module (every local
//! an `alloca` that SROA/mem2reg promote), parsed by inkwell, optimised with
//! `default<O3>` for the host CPU (its features and preferred vector width
//! as function attributes) and JIT-compiled with MCJIT.
//!
//! # The runtime
//!
//! What runs around the function lives in the LLVM-free runtime crate,
//! `tdl_rt::attention` (shared with ahead-of-time artifacts, [`crate::aot`]):
//! [`AttentionRunner::run_with`] derives the block-sparse iteration space
//! from the mask formula (`tdl_passes::tiles::iteration_space`), flattens it
//! into run arrays (`[start, end, partial]` per run, an offset per `(head,
//! q-tile)`), and hands the `(leading index, q-tile)` programs to `threads`
//! worker threads through an atomic counter; each program writes its own
//! rows of the output.
//!
//! - **KV split** (the Kernel IR's `kv_split`, resolved per call as the
//!   interpreter resolves it): each program's visited kv-tiles are cut into
//!   contiguous shares, one work item each (`%vis0..%vis1`); a share writes
//!   its raw `O`, `m`, `l` and the runtime merges them with the
//!   online-softmax combine (flash-decoding).
//! - **Decode with grouped heads**: with `T = 1`, query heads that read the
//!   same K/V head (GQA/MQA) and have the same iteration space are packed
//!   into the rows of one program (`%qdiv` rows per query index), so K and V
//!   are read once per group instead of once per query head.
//!
//! A [`CompiledAttention`] owns its machine code; `tdl_llvm::cpu::CpuHooks`
//! caches them, so one compile serves every sequence length and every run.
//!
//! # Lambdas
//!
//! Index-lambda masks and the score modifier are compiled into the program
//! (`lambda`: static types, the interpreter's integer and float rules, lazy
//! `where` and lazy `&`/`|` around a lambda). Their dimension symbols,
//! operand arrays (`f64` values) and dimensions come in tables
//! (`%lsyms`, `%larr`, `%lshape`); an index out of range sets `%lerr` and
//! the runtime reports the interpreter's error. With a score modifier every
//! visited tile takes the per-element pass (the modifier applies where the
//! mask holds, and only there); query heads are not packed for decode when
//! a lambda reads `h`.
//!
//! # Not supported yet
//!
//! Symbolic head dimensions; a `where` whose branches differ in type.
//! `document` ids and `blocks` layouts are passed as `i32` arrays (`%mops`,
//! with the layout's column count in `%mcols`), checked by the runtime as
//! the reference checks them.

use std::fmt::Write as _;

use tdl_ir::MaskExpr;

use crate::gemm::{self, BlockGemm, RowDot, MR};
use crate::jit::{self, Jitted};
use crate::lambda::{LambdaCtx, OperandSlot, Ty};

use crate::{HostTarget, LlvmError};
pub use tdl_rt::attention::{
    mask_slots, stack_bytes, AttentionRunner, AttentionSpec, CpuRunStats, MaskSlot, ProgramFn, RunOptions,
};

pub(crate) const FN_NAME: &str = "tdl_attention_program";

const MAX_STACK: usize = 16 << 20;

fn not_supported(what: &str) -> LlvmError {
    LlvmError::Unsupported(format!("{what} in the CPU attention kernel"))
}

/// A small LLVM IR text writer: fresh value and label names, lines, and
/// the loop metadata to append after the function ([`Ir::metadata`]).
#[derive(Default)]
pub(crate) struct Ir {
    pub(crate) text: String,
    pub(crate) next: usize,
    meta: Vec<String>,
    /// Module-level definitions the code needs (constant arrays of
    /// lambdas), to go after the function.
    pub(crate) globals: String,
}

impl Ir {
    pub(crate) fn new() -> Ir {
        Ir::default()
    }

    /// A writer that starts with `text`.
    pub(crate) fn with_text(text: String) -> Ir {
        Ir { text, ..Ir::default() }
    }

    /// The metadata nodes the loops refer to (to go after the function).
    pub(crate) fn metadata(&self) -> String {
        self.meta.iter().map(|m| format!("{m}\n")).collect()
    }

    /// [`Ir::for_range`] with the loop unrolled at most `count` times
    /// (`llvm.loop.unroll.count`): keeps a constant-trip inner loop from
    /// being unrolled whole, which overflows the instruction caches.
    pub(crate) fn for_range_unrolled(
        &mut self,
        counter: &str,
        lo: &str,
        hi: &str,
        count: u32,
        body: impl FnOnce(&mut Ir, &str),
    ) {
        let id = 2 * self.meta.len();
        self.meta.push(format!("!{id} = distinct !{{!{id}, !{}}}", id + 1));
        self.meta.push(format!("!{} = !{{!\"llvm.loop.unroll.count\", i32 {count}}}", id + 1));
        self.for_range_with(counter, lo, hi, &format!(", !llvm.loop !{id}"), body);
    }
    pub(crate) fn tmp(&mut self) -> String {
        self.next += 1;
        format!("%v{}", self.next)
    }

    pub(crate) fn label(&mut self, base: &str) -> String {
        self.next += 1;
        format!("{base}{}", self.next)
    }

    pub(crate) fn line(&mut self, s: impl AsRef<str>) {
        self.text.push_str("  ");
        self.text.push_str(s.as_ref());
        self.text.push('\n');
    }

    pub(crate) fn block(&mut self, l: &str) {
        let _ = writeln!(self.text, "{l}:");
    }

    /// `op ty a, b` into a fresh value.
    pub(crate) fn op(&mut self, op: &str, ty: &str, a: &str, b: &str) -> String {
        let t = self.tmp();
        self.line(format!("{t} = {op} {ty} {a}, {b}"));
        t
    }

    pub(crate) fn load(&mut self, ty: &str, ptr: &str) -> String {
        let t = self.tmp();
        self.line(format!("{t} = load {ty}, ptr {ptr}"));
        t
    }

    pub(crate) fn gep(&mut self, ty: &str, base: &str, index: &str) -> String {
        let t = self.tmp();
        self.line(format!("{t} = getelementptr inbounds {ty}, ptr {base}, i64 {index}"));
        t
    }

    pub(crate) fn alloca(&mut self, ty: &str, n: usize) -> String {
        let t = self.tmp();
        self.line(format!("{t} = alloca {ty}, i64 {n}, align 64"));
        t
    }

    pub(crate) fn min(&mut self, a: &str, b: &str) -> String {
        let t = self.tmp();
        self.line(format!("{t} = call i64 @llvm.smin.i64(i64 {a}, i64 {b})"));
        t
    }

    /// `for var in lo..hi { body }`; the counter lives in an alloca.
    pub(crate) fn for_range(&mut self, counter: &str, lo: &str, hi: &str, body: impl FnOnce(&mut Ir, &str)) {
        self.for_range_with(counter, lo, hi, "", body);
    }

    fn for_range_with(&mut self, counter: &str, lo: &str, hi: &str, latch: &str, body: impl FnOnce(&mut Ir, &str)) {
        let (head, bodyl, end) = (self.label("head"), self.label("body"), self.label("end"));
        self.line(format!("store i64 {lo}, ptr {counter}"));
        self.line(format!("br label %{head}"));
        self.block(&head);
        let i = self.load("i64", counter);
        let c = self.op("icmp slt", "i64", &i, hi);
        self.line(format!("br i1 {c}, label %{bodyl}, label %{end}"));
        self.block(&bodyl);
        let iv = self.load("i64", counter);
        body(self, &iv);
        let i2 = self.load("i64", counter);
        let n = self.op("add nsw", "i64", &i2, "1");
        self.line(format!("store i64 {n}, ptr {counter}"));
        self.line(format!("br label %{head}{latch}"));
        self.block(&end);
    }

    /// `if cond { then }`.
    pub(crate) fn if_then(&mut self, cond: &str, then: impl FnOnce(&mut Ir)) {
        let (t, e) = (self.label("then"), self.label("endif"));
        self.line(format!("br i1 {cond}, label %{t}, label %{e}"));
        self.block(&t);
        then(self);
        self.line(format!("br label %{e}"));
        self.block(&e);
    }
}

/// Rows of the register blocks of programs with few rows (decode with a
/// GQA group of up to 4 heads); the others take blocks of [`MR`].
const FEW: usize = 4;

/// `if cond { then } else { other }`, both falling through to what follows.
fn if_else(ir: &mut Ir, cond: &str, then: impl FnOnce(&mut Ir), other: impl FnOnce(&mut Ir)) {
    let (t, e, done) = (ir.label("then"), ir.label("else"), ir.label("endif"));
    ir.line(format!("br i1 {cond}, label %{t}, label %{e}"));
    ir.block(&t);
    then(ir);
    ir.line(format!("br label %{done}"));
    ir.block(&e);
    other(ir);
    ir.line(format!("br label %{done}"));
    ir.block(&done);
}

pub(crate) fn float_text(x: f32) -> String {
    // LLVM reads float constants as the hex of the equivalent double.
    format!("0x{:016X}", f64::from(x).to_bits())
}

/// `tdl_expf(x)`: `e^x` in `f32` without a library call, so loops that
/// call it vectorise (it is always inlined). Cody–Waite range reduction
/// `x = n·ln 2 + r` (|r| ≤ ln 2 / 2), Cephes' degree-6 polynomial for
/// `e^r`, and `2^n` built in the exponent bits. Below -87.34 (and for
/// `-inf`) it gives exactly 0; above 88.38 it saturates at about 3.4e38.
/// Measured maximum relative error against `f64` exp over [-87, 88]:
/// 7.7e-8 (about 1.3 ulp; the test `expf_polynomial_is_accurate` checks < 3e-7).
fn expf_ir() -> String {
    let f = |x: f32| float_text(x);
    let (lo, hi) = (f(-87.336_54), f(88.376_26));
    let (log2e, ln2_hi, ln2_lo) = (f(std::f32::consts::LOG2_E), f(0.693_359_4), f(-2.121_944_4e-4));
    let c = [f(1.987_569_1e-4), f(1.398_199_9e-3), f(8.333_452e-3), f(4.166_579_6e-2), f(0.166_666_65), f(0.5)];
    format!(
        "
define internal float @tdl_expf(float %x) #1 {{
  %lo = fcmp olt float %x, {lo}
  %c1 = select i1 %lo, float {lo}, float %x
  %hi = fcmp ogt float %c1, {hi}
  %c = select i1 %hi, float {hi}, float %c1
  %t = fmul float %c, {log2e}
  %n = call float @llvm.rint.f32(float %t)
  %a = fmul float %n, {ln2_hi}
  %r1 = fsub float %c, %a
  %b = fmul float %n, {ln2_lo}
  %r = fsub float %r1, %b
  %p1 = call float @llvm.fmuladd.f32(float %r, float {c0}, float {c1})
  %p3 = call float @llvm.fmuladd.f32(float %p1, float %r, float {c2})
  %p5 = call float @llvm.fmuladd.f32(float %p3, float %r, float {c3})
  %p7 = call float @llvm.fmuladd.f32(float %p5, float %r, float {c4})
  %p9 = call float @llvm.fmuladd.f32(float %p7, float %r, float {c5})
  %r2 = fmul float %r, %r
  %p11 = call float @llvm.fmuladd.f32(float %p9, float %r2, float %r)
  %y = fadd float %p11, 1.0
  %ni = fptosi float %n to i32
  %e = add i32 %ni, 127
  %bits = shl i32 %e, 23
  %scale = bitcast i32 %bits to float
  %res = fmul float %y, %scale
  %zero = select i1 %lo, float 0.0, float %res
  ret float %zero
}}
declare float @llvm.rint.f32(float)
declare float @llvm.fmuladd.f32(float, float, float)
",
        c0 = c[0],
        c1 = c[1],
        c2 = c[2],
        c3 = c[3],
        c4 = c[4],
        c5 = c[5]
    )
}

/// Floor modulo of `a` by the positive constant `m`.
fn floor_mod(ir: &mut Ir, a: &str, m: i64) -> String {
    let r = ir.op("srem", "i64", a, &m.to_string());
    let neg = ir.op("icmp slt", "i64", &r, "0");
    let fixed = ir.op("add", "i64", &r, &m.to_string());
    let t = ir.tmp();
    ir.line(format!("{t} = select i1 {neg}, i64 {fixed}, i64 {r}"));
    t
}

/// Loads the pointer and the column count of run-time array `slot`.
fn slot_ir(ir: &mut Ir, slot: usize) -> (String, String) {
    let pp = ir.gep("ptr", "%mops", &slot.to_string());
    let p = ir.load("ptr", &pp);
    let pc = ir.gep("i64", "%mcols", &slot.to_string());
    let c = ir.load("i64", &pc);
    (p, c)
}

/// The mask predicate at `(q, k)` as an `i1`; `t`, `s` are the sizes.
pub(crate) fn mask_ir(ir: &mut Ir, m: &MaskExpr, q: &str, k: &str, t: &str, s: &str) -> Result<String, LlvmError> {
    let mut slot = 0;
    mask_ir_at(ir, m, q, k, t, s, &mut slot, None)
}

/// [`mask_ir`] with index lambdas compiled in `lam` (and the combinators
/// around them lazy, as the reference evaluates them).
#[allow(clippy::too_many_arguments)]
pub(crate) fn mask_ir_lambda(
    ir: &mut Ir,
    m: &MaskExpr,
    q: &str,
    k: &str,
    t: &str,
    s: &str,
    lam: &LambdaCtx<'_>,
) -> Result<String, LlvmError> {
    let mut slot = 0;
    mask_ir_at(ir, m, q, k, t, s, &mut slot, Some(lam))
}

/// Where the lambdas' operand arrays sit in the runtime's tables: mask
/// operands first, then score operands, by position (as
/// `tdl_rt::attention` fills `%larr` and `%lshape`).
fn operand_slots(spec: &AttentionSpec) -> (Vec<Option<OperandSlot>>, Vec<Option<OperandSlot>>) {
    let (mut slot, mut dims_at) = (0, 0);
    let mut place = |ops: &[Option<(tdl_ir::DType, usize)>]| -> Vec<Option<OperandSlot>> {
        ops.iter()
            .map(|o| {
                let r = o.map(|(dtype, rank)| OperandSlot { dtype, rank, slot, dims_at });
                slot += 1;
                if let Some((_, rank)) = o {
                    dims_at += rank;
                }
                r
            })
            .collect()
    };
    let m = place(&spec.mask_operands);
    let sc = place(&spec.score_operands);
    (m, sc)
}

/// Whether `m` holds an index lambda.
pub(crate) fn has_lambda(m: &MaskExpr) -> bool {
    match m {
        MaskExpr::Lambda(_) => true,
        MaskExpr::And(a, b) | MaskExpr::Or(a, b) => has_lambda(a) || has_lambda(b),
        MaskExpr::Not(a) => has_lambda(a),
        _ => false,
    }
}

#[allow(clippy::too_many_arguments)]
fn mask_ir_at(
    ir: &mut Ir,
    m: &MaskExpr,
    q: &str,
    k: &str,
    t: &str,
    s: &str,
    slot: &mut usize,
    lam: Option<&LambdaCtx<'_>>,
) -> Result<String, LlvmError> {
    let causal = |ir: &mut Ir| {
        let st = ir.op("sub", "i64", s, t);
        let lim = ir.op("add", "i64", q, &st);
        ir.op("icmp sle", "i64", k, &lim)
    };
    let local = |ir: &mut Ir, left: i64, right: i64| {
        let lo = ir.op("sub", "i64", q, &left.to_string());
        let hi = ir.op("add", "i64", q, &right.to_string());
        let a = ir.op("icmp sle", "i64", &lo, k);
        let b = ir.op("icmp sle", "i64", k, &hi);
        ir.op("and", "i1", &a, &b)
    };
    let bounded = |x: i64| x.abs() < (1 << 40);
    Ok(match m {
        MaskExpr::Causal => causal(ir),
        MaskExpr::Local { left, right } if bounded(*left) && bounded(*right) => local(ir, *left, *right),
        MaskExpr::Window { w } if bounded(*w) => {
            let c = causal(ir);
            let l = local(ir, w.saturating_sub(1), 0);
            ir.op("and", "i1", &c, &l)
        }
        MaskExpr::Dilated { w, d } if *d > 0 && bounded(*w) && bounded(*d) => {
            let c = causal(ir);
            let diff = ir.op("sub", "i64", q, k);
            let lt = ir.op("icmp slt", "i64", &diff, &(w * d).to_string());
            let r = floor_mod(ir, &diff, *d);
            let z = ir.op("icmp eq", "i64", &r, "0");
            let a = ir.op("and", "i1", &c, &lt);
            ir.op("and", "i1", &a, &z)
        }
        MaskExpr::Sink { n } => ir.op("icmp slt", "i64", k, &n.to_string()),
        MaskExpr::Strided { stride, offset } if *stride > 0 && bounded(*stride) && bounded(*offset) => {
            let x = ir.op("add", "i64", k, &offset.to_string());
            let r = floor_mod(ir, &x, *stride);
            ir.op("icmp eq", "i64", &r, "0")
        }
        MaskExpr::And(a, b) | MaskExpr::Or(a, b) if lam.is_some() && has_lambda(b) => {
            // Lazy: the right side (which may read arrays) runs only when
            // the left does not decide.
            let and = matches!(m, MaskExpr::And(..));
            let x = mask_ir_at(ir, a, q, k, t, s, slot, lam)?;
            let (rhs_l, end_l) = (ir.label("lm_rhs"), ir.label("lm_end"));
            let from = ir.label("lm_lhs");
            ir.line(format!("br label %{from}"));
            ir.block(&from);
            if and {
                ir.line(format!("br i1 {x}, label %{rhs_l}, label %{end_l}"));
            } else {
                ir.line(format!("br i1 {x}, label %{end_l}, label %{rhs_l}"));
            }
            ir.block(&rhs_l);
            let y = mask_ir_at(ir, b, q, k, t, s, slot, lam)?;
            let from_rhs = ir.label("lm_r");
            ir.line(format!("br label %{from_rhs}"));
            ir.block(&from_rhs);
            ir.line(format!("br label %{end_l}"));
            ir.block(&end_l);
            let r = ir.tmp();
            ir.line(format!("{r} = phi i1 [ {x}, %{from} ], [ {y}, %{from_rhs} ]"));
            r
        }
        MaskExpr::And(a, b) | MaskExpr::Or(a, b) => {
            let x = mask_ir_at(ir, a, q, k, t, s, slot, lam)?;
            let y = mask_ir_at(ir, b, q, k, t, s, slot, lam)?;
            ir.op(if matches!(m, MaskExpr::And(..)) { "and" } else { "or" }, "i1", &x, &y)
        }
        MaskExpr::Not(a) => {
            let x = mask_ir_at(ir, a, q, k, t, s, slot, lam)?;
            ir.op("xor", "i1", &x, "true")
        }
        MaskExpr::Lambda(e) if lam.is_some() => {
            let ctx = lam.expect("checked by the guard");
            let (v, ty) = crate::lambda::lambda_ir(ir, e, &LambdaCtx { s: None, ..*ctx })?;
            if ty != Ty::Bool {
                return Err(not_supported("a mask lambda that does not give a boolean"));
            }
            v
        }
        // NATTEN's rule per grid axis, last axis fastest (the runtime checks
        // the grid with `check_neighborhood`, as the reference does).
        MaskExpr::Neighborhood { kernel, grid, dilation, causal: cz }
            if !grid.is_empty()
                && kernel.len() == grid.len()
                && dilation.len() == grid.len()
                && cz.len() == grid.len()
                && grid.iter().chain(kernel).chain(dilation).all(|&x| (1..1 << 31).contains(&x)) =>
        {
            // The runtime checks T == S == Π grid (`check_neighborhood`), so
            // with fewer than 2³¹ positions every index fits in 32 bits, where
            // the divisions by constants vectorise (AVX2 has no 64-bit
            // multiply-high).
            let positions = grid.iter().try_fold(1i64, |p, &g| p.checked_mul(g));
            let it = if positions.is_some_and(|p| p < 1 << 31) { "i32" } else { "i64" };
            let narrow = |ir: &mut Ir, x: &str| {
                if it == "i32" {
                    let t = ir.tmp();
                    ir.line(format!("{t} = trunc i64 {x} to i32"));
                    t
                } else {
                    x.to_string()
                }
            };
            let (mut qr, mut kr) = (narrow(ir, q), narrow(ir, k));
            let mut all = "true".to_string();
            for ax in (0..grid.len()).rev() {
                let (len, kk, d) = (grid[ax], kernel[ax], dilation[ax]);
                let a = ir.op("urem", it, &qr, &len.to_string());
                let b = ir.op("urem", it, &kr, &len.to_string());
                qr = ir.op("udiv", it, &qr, &len.to_string());
                kr = ir.op("udiv", it, &kr, &len.to_string());
                let group = ir.op("urem", it, &a, &d.to_string());
                let bg = ir.op("urem", it, &b, &d.to_string());
                let same = ir.op("icmp eq", it, &group, &bg);
                let i = ir.op("udiv", it, &a, &d.to_string());
                let j = ir.op("udiv", it, &b, &d.to_string());
                let vis = if cz[ax] {
                    let lo0 = ir.op("sub", it, &i, &(kk - 1).to_string());
                    let lo = ir.tmp();
                    ir.line(format!("{lo} = call {it} @llvm.smax.{it}({it} {lo0}, {it} 0)"));
                    let x = ir.op("icmp sle", it, &lo, &j);
                    let y = ir.op("icmp sle", it, &j, &i);
                    ir.op("and", "i1", &x, &y)
                } else {
                    // lg = members of this group; start = clamp(i - kk/2, 0, lg - kk).
                    let t0 = ir.op("sub", it, &(len + d - 1).to_string(), &group);
                    let lg = ir.op("sdiv", it, &t0, &d.to_string());
                    let hi = ir.op("sub", it, &lg, &kk.to_string());
                    let c = ir.op("sub", it, &i, &(kk / 2).to_string());
                    let cmp = ir.op("icmp slt", it, &c, &hi);
                    let c1 = ir.tmp();
                    ir.line(format!("{c1} = select i1 {cmp}, {it} {c}, {it} {hi}"));
                    let start = ir.tmp();
                    ir.line(format!("{start} = call {it} @llvm.smax.{it}({it} {c1}, {it} 0)"));
                    let end = ir.op("add", it, &start, &kk.to_string());
                    let x = ir.op("icmp sle", it, &start, &j);
                    let y = ir.op("icmp slt", it, &j, &end);
                    ir.op("and", "i1", &x, &y)
                };
                let v = ir.op("and", "i1", &same, &vis);
                all = ir.op("and", "i1", &all, &v);
            }
            all
        }
        // ids[q] == ids[k] (the runtime checks the ids cover T and S).
        MaskExpr::Document { .. } => {
            let (p, _) = slot_ir(ir, *slot);
            *slot += 1;
            let pq = ir.gep("i32", &p, q);
            let pk = ir.gep("i32", &p, k);
            let a = ir.load("i32", &pq);
            let b = ir.load("i32", &pk);
            ir.op("icmp eq", "i32", &a, &b)
        }
        // layout[q / bq][k / bk] (the runtime checks the layout covers the tiles).
        MaskExpr::Blocks { block: [bq, bk], .. } if *bq > 0 && *bk > 0 => {
            let (p, cols) = slot_ir(ir, *slot);
            *slot += 1;
            let r = ir.op("sdiv", "i64", q, &bq.to_string());
            let c = ir.op("sdiv", "i64", k, &bk.to_string());
            let rc = ir.op("mul", "i64", &r, &cols);
            let idx = ir.op("add", "i64", &rc, &c);
            let pv = ir.gep("i32", &p, &idx);
            let v = ir.load("i32", &pv);
            ir.op("icmp ne", "i32", &v, "0")
        }
        other => return Err(not_supported(&format!("the mask `{}`", tdl_ir::text::mask_text(other)))),
    })
}

/// The LLVM IR text of the program function for `spec` (before optimisation).
pub fn attention_ir(spec: &AttentionSpec, host: &HostTarget) -> Result<String, LlvmError> {
    let (d, dv, tq, tk) = (spec.d, spec.dv, spec.tile_q, spec.tile_k);
    if d == 0 || dv == 0 || tq == 0 || tk == 0 || d > 4096 || dv > 4096 || tq > 1024 || tk > 1024 {
        return Err(not_supported(&format!("head dimensions {d}/{dv} with tiles {tq}×{tk}")));
    }
    if stack_bytes(spec) > MAX_STACK {
        return Err(not_supported(&format!(
            "tiles {tq}×{tk} with head dimension {dv} (more than 16 MiB of tile state)"
        )));
    }
    let scale = spec.scale.unwrap_or(1.0 / (d as f64).sqrt()) as f32;
    // Lambdas (mask lambdas, the score modifier): their symbols and operand
    // arrays, in the runtime's table order (`tdl_rt::attention`).
    let lambdas = spec.score.is_some() || spec.mask.as_ref().is_some_and(has_lambda);
    let symbols = tdl_rt::attention::lambda_symbols(spec);
    let (mask_slots_l, score_slots) = operand_slots(spec);
    let mut ir = Ir::new();
    let attrs: Vec<String> = host.function_attributes().iter().map(|(k, v)| format!("\"{k}\"=\"{v}\"")).collect();
    let _ = writeln!(
        ir.text,
        "declare i64 @llvm.smin.i64(i64, i64)\ndeclare i64 @llvm.smax.i64(i64, i64)\ndeclare i32 @llvm.smax.i32(i32, i32)\ndeclare float @llvm.exp.f32(float)\ndeclare float @llvm.maxnum.f32(float, float)\n\
         declare void @llvm.memset.p0.i64(ptr, i8, i64, i1)\n{GEMM}{EXPF}\n\
         define void @{FN_NAME}(ptr noalias readonly %q, ptr noalias readonly %k, ptr noalias readonly %v, ptr noalias %out, \
         ptr noalias readonly %runs, ptr noalias readonly %offs, i64 %T, i64 %S, i64 %oq, i64 %ok, i64 %ov, i64 %oo, \
         i64 %h, i64 %qt, i64 %nq, ptr noalias readonly %mops, ptr noalias readonly %mcols, i64 %Tm, i64 %qdiv, \
         i64 %vis0, i64 %vis1, ptr noalias %raw, ptr noalias readonly %ktp, ptr noalias readonly %lsyms, \
         ptr noalias readonly %larr, ptr noalias readonly %lshape, ptr %lerr) #0 {{\nentry:",
        EXPF = expf_ir(),
        GEMM = gemm::declarations((host.f32_lanes() as usize).max(1)),
    );
    let fast = "fast";
    let ninf = "0xFFF0000000000000";
    // Tiles padded: rows to the register block, columns to a vector.
    let w = (host.f32_lanes() as usize).max(1);
    let (tqp, tkp, dvp) = (tq.next_multiple_of(MR), tk.next_multiple_of(w), dv.next_multiple_of(w));
    let (m, l, acc, st) =
        (ir.alloca("float", tq), ir.alloca("float", tq), ir.alloca("float", tqp * dvp), ir.alloca("float", tqp * tkp));
    let vt = format!("<{w} x float>");
    let gemm_acc: Vec<String> = (0..2 * MR).map(|_| ir.alloca(&vt, 1)).collect();
    let (cgb, cgp) = (ir.alloca("i64", 1), ir.alloca("i64", 1));
    let counters: Vec<String> = (0..7).map(|_| ir.alloca("i64", 1)).collect();
    let cvis = counters[6].clone();
    let (ci, cj, cd, cr, ckt, cmax) =
        (&counters[0], &counters[1], &counters[2], &counters[3], &counters[4], &counters[5]);
    let (lsum, mrow) = (ir.alloca("float", 1), ir.alloca("float", 1));
    let (lres, lhold) = (ir.alloca("float", 1), ir.alloca("i1", 1));
    let qs = ir.alloca("float", tqp * d);
    let q0 = ir.op("mul", "i64", "%qt", &tq.to_string());
    let rest = ir.op("sub", "i64", "%T", &q0);
    let bq = ir.min(&tq.to_string(), &rest);
    // Row blocks of the register-blocked products (rows past bq compute
    // values nobody reads, from zeroed Q rows).
    let bq5 = ir.op("add", "i64", &bq, &(MR - 1).to_string());
    let blocks = ir.op("udiv", "i64", &bq5, &MR.to_string());
    // At most FEW rows: one register block of FEW rows.
    let few_rows = ir.op("icmp ule", "i64", &bq, &FEW.to_string());
    ir.line(format!("call void @llvm.memset.p0.i64(ptr align 64 {qs}, i8 0, i64 {}, i1 false)", 4 * tqp * d));
    ir.line(format!("call void @llvm.memset.p0.i64(ptr align 64 {acc}, i8 0, i64 {}, i1 false)", 4 * tqp * dvp));
    // The Q tile, resident and pre-scaled: Qs = Q · scale.
    ir.for_range(ci, "0", &bq, |ir, i| {
        let qi = ir.op("add", "i64", &q0, i);
        let qoff0 = ir.op("mul", "i64", &qi, &d.to_string());
        let qoff = ir.op("add", "i64", &qoff0, "%oq");
        let qrow = ir.gep("float", "%q", &qoff);
        let srow = ir.op("mul", "i64", i, &d.to_string());
        ir.for_range(cd, "0", &d.to_string(), |ir, dd| {
            let pq = ir.gep("float", &qrow, dd);
            let x = ir.load("float", &pq);
            let y = ir.op("fmul", "float", &x, &float_text(scale));
            let idx = ir.op("add", "i64", &srow, dd);
            let p = ir.gep("float", &qs, &idx);
            ir.line(format!("store float {y}, ptr {p}"));
        });
    });
    // m = -inf, l = 0, O = 0.
    ir.for_range(ci, "0", &bq, |ir, i| {
        let pm = ir.gep("float", &m, i);
        ir.line(format!("store float {ninf}, ptr {pm}"));
        let pl = ir.gep("float", &l, i);
        ir.line(format!("store float 0.0, ptr {pl}"));
    });
    // The program's runs.
    let hq = ir.op("mul", "i64", "%h", "%nq");
    let slot = ir.op("add", "i64", &hq, "%qt");
    let p0 = ir.gep("i64", "%offs", &slot);
    let r0 = ir.load("i64", &p0);
    let slot1 = ir.op("add", "i64", &slot, "1");
    let p1 = ir.gep("i64", "%offs", &slot1);
    let r1 = ir.load("i64", &p1);
    let mut result: Result<(), LlvmError> = Ok(());
    // Only the visited kv-tiles [v0, v1) of the program's runs (a KV split's
    // share; all of them when unsplit).
    ir.line(format!("store i64 0, ptr {cvis}"));
    ir.for_range(cr, &r0, &r1, |ir, r| {
        let r3 = ir.op("mul", "i64", r, "3");
        let ps = ir.gep("i64", "%runs", &r3);
        let ks = ir.load("i64", &ps);
        let r31 = ir.op("add", "i64", &r3, "1");
        let pe = ir.gep("i64", "%runs", &r31);
        let ke = ir.load("i64", &pe);
        let r32 = ir.op("add", "i64", &r3, "2");
        let pp = ir.gep("i64", "%runs", &r32);
        let partial_i = ir.load("i64", &pp);
        let partial = ir.op("icmp ne", "i64", &partial_i, "0");
        let len = ir.op("sub", "i64", &ke, &ks);
        let seen = ir.load("i64", &cvis);
        let seen2 = ir.op("add", "i64", &seen, &len);
        ir.line(format!("store i64 {seen2}, ptr {cvis}"));
        let lo0 = ir.op("sub", "i64", "%vis0", &seen);
        let lo1 = ir.tmp();
        ir.line(format!("{lo1} = call i64 @llvm.smax.i64(i64 {lo0}, i64 0)"));
        let hi0 = ir.op("sub", "i64", "%vis1", &seen);
        let hi1 = ir.min(&hi0, &len);
        let (ks, ke) = (ir.op("add", "i64", &ks, &lo1), ir.op("add", "i64", &ks, &hi1));
        ir.for_range(ckt, &ks, &ke, |ir, kt| {
            let k0 = ir.op("mul", "i64", kt, &tk.to_string());
            let krest = ir.op("sub", "i64", "%S", &k0);
            let bk = ir.min(&tk.to_string(), &krest);
            // S = Qs·Kᵀ. With Kᵀ packed by the runtime (`pack_kt`: Kt[d][j],
            // zero past the end of S), register-blocked (MR rows × two
            // vectors); without (`%ktp` null: programs of few rows, decode),
            // dot products over K's rows read in place.
            let packed = ir.op("icmp ne", "ptr", "%ktp", "null");
            let (gemm_l, dot_l, s_done) = (ir.label("qk_gemm"), ir.label("qk_dot"), ir.label("qk_done"));
            ir.line(format!("br i1 {packed}, label %{gemm_l}, label %{dot_l}"));
            ir.block(&gemm_l);
            let ktoff = ir.op("mul", "i64", kt, &(d * tkp).to_string());
            let kt_pack = ir.gep("float", "%ktp", &ktoff);
            BlockGemm {
                w,
                rows: MR,
                blocks: &blocks,
                n: tkp,
                n_valid: tkp,
                k: &d.to_string(),
                a: &qs,
                a_row: d,
                b: &kt_pack,
                b_row: tkp,
                c: &st,
                c_row: tkp,
                accumulate: false,
                counters: [&cgb, &cgp],
                acc: &gemm_acc,
            }
            .emit(ir);
            ir.line(format!("br label %{s_done}"));
            ir.block(&dot_l);
            let koff0 = ir.op("mul", "i64", &k0, &d.to_string());
            let koff = ir.op("add", "i64", &koff0, "%ok");
            let ktile = ir.gep("float", "%k", &koff);
            let voff0 = ir.op("mul", "i64", &k0, &dv.to_string());
            let voff = ir.op("add", "i64", &voff0, "%ov");
            let vtile = ir.gep("float", "%v", &voff);
            // Programs of at most FEW rows (decode with a GQA group of up
            // to 4) take register blocks of FEW rows: no wasted dot products.
            let dot = |ir: &mut Ir, rows: usize, blocks: &str| {
                RowDot {
                    w,
                    rows,
                    blocks,
                    cols: &bk,
                    d,
                    a: &qs,
                    a_row: d,
                    b: &ktile,
                    b_row: d,
                    c: &st,
                    c_row: tkp,
                    counters: [&cgb, &cgp, cd],
                    acc: &gemm_acc,
                    prefetch: Some((&vtile, dv, 4 * dv)),
                }
                .emit(ir)
            };
            if_else(ir, &few_rows, |ir| dot(ir, FEW, "1"), |ir| dot(ir, MR, &blocks));
            ir.line(format!("br label %{s_done}"));
            ir.block(&s_done);
            // -inf past the end of S and, in partial tiles, where the mask
            // does not hold (full tiles skip this pass).
            let short = ir.op("icmp slt", "i64", &bk, &tk.to_string());
            let needs = ir.op("or", "i1", &short, &partial);
            // With lambdas every tile takes the pass (the score modifier
            // applies to every visible score).
            let needs = if spec.score.is_some() { "true".to_string() } else { needs };
            ir.if_then(&needs, |ir| {
                ir.for_range(ci, "0", &bq, |ir, i| {
                    // The row's query index for the mask (rows of `qdiv` packed heads
                    // share it).
                    let row = ir.op("add", "i64", &q0, i);
                    let qi = ir.op("udiv", "i64", &row, "%qdiv");
                    let srow0 = ir.op("mul", "i64", i, &tkp.to_string());
                    ir.for_range(cj, "0", &tk.to_string(), |ir, j| {
                        let ki = ir.op("add", "i64", &k0, j);
                        let sidx = ir.op("add", "i64", &srow0, j);
                        let sp = ir.gep("float", &st, &sidx);
                        let inside = ir.op("icmp slt", "i64", j, &bk);
                        if lambdas {
                            let x = ir.load("float", &sp);
                            ir.line(format!("store float {ninf}, ptr {lres}"));
                            // What the mask's lambdas see; the score modifier's differ in `s`
                            // and in their operands.
                            let lam = LambdaCtx {
                                q: &qi,
                                k: &ki,
                                h: "%h",
                                s: None,
                                symbols: &symbols,
                                syms: "%lsyms",
                                operands: &mask_slots_l,
                                arrays: "%larr",
                                shapes: "%lshape",
                                err: "%lerr",
                            };
                            ir.if_then(&inside, |ir| {
                                ir.line(format!("store i1 true, ptr {lhold}"));
                                if let Some(mk) = &spec.mask {
                                    ir.if_then(&partial, |ir| {
                                        match mask_ir_lambda(ir, mk, &qi, &ki, "%Tm", "%S", &lam) {
                                            Ok(h) => ir.line(format!("store i1 {h}, ptr {lhold}")),
                                            Err(e) => result = Err(e),
                                        }
                                    });
                                }
                                let hold = ir.load("i1", &lhold);
                                ir.if_then(&hold, |ir| {
                                    let y = match &spec.score {
                                        Some(e) => {
                                            let lam = LambdaCtx { s: Some(&x), operands: &score_slots, ..lam };
                                            match crate::lambda::lambda_ir(ir, e, &lam) {
                                                Ok((v, Ty::Float)) => v,
                                                Ok((v, Ty::Int)) => {
                                                    let f = ir.tmp();
                                                    ir.line(format!("{f} = sitofp i64 {v} to float"));
                                                    f
                                                }
                                                Ok((_, Ty::Bool)) => {
                                                    result =
                                                        Err(not_supported("a score modifier that gives a boolean"));
                                                    x.clone()
                                                }
                                                Err(e) => {
                                                    result = Err(e);
                                                    x.clone()
                                                }
                                            }
                                        }
                                        None => x.clone(),
                                    };
                                    ir.line(format!("store float {y}, ptr {lres}"));
                                });
                            });
                            let y = ir.load("float", &lres);
                            ir.line(format!("store float {y}, ptr {sp}"));
                        } else {
                            let holds = match &spec.mask {
                                Some(mk) => match mask_ir(ir, mk, &qi, &ki, "%Tm", "%S") {
                                    Ok(h) => {
                                        let np = ir.op("xor", "i1", &partial, "true");
                                        ir.op("or", "i1", &np, &h)
                                    }
                                    Err(e) => {
                                        result = Err(e);
                                        "true".to_string()
                                    }
                                },
                                None => "true".to_string(),
                            };
                            let keep = ir.op("and", "i1", &inside, &holds);
                            let x = ir.load("float", &sp);
                            let y = ir.tmp();
                            ir.line(format!("{y} = select i1 {keep}, float {x}, float {ninf}"));
                            ir.line(format!("store float {y}, ptr {sp}"));
                        }
                    });
                });
            });
            // Online softmax row by row: P = exp(S - m) in place, O and l
            // rescaled when the max grows; a row with no visible key gets P = 0.
            ir.for_range(ci, "0", &bq, |ir, i| {
                let srow0 = ir.op("mul", "i64", i, &tkp.to_string());
                let pm = ir.gep("float", &m, i);
                let m_old = ir.load("float", &pm);
                ir.line(format!("store float {m_old}, ptr {mrow}"));
                ir.for_range(cmax, "0", &tk.to_string(), |ir, j| {
                    let sidx = ir.op("add", "i64", &srow0, j);
                    let sp = ir.gep("float", &st, &sidx);
                    let x = ir.load("float", &sp);
                    let cur = ir.load("float", &mrow);
                    let t = ir.tmp();
                    ir.line(format!("{t} = call nnan nsz float @llvm.maxnum.f32(float {x}, float {cur})"));
                    ir.line(format!("store float {t}, ptr {mrow}"));
                });
                let m_new = ir.load("float", &mrow);
                let any = ir.op("fcmp one", "float", &m_new, ninf);
                let none = ir.op("xor", "i1", &any, "true");
                ir.if_then(&none, |ir| {
                    ir.for_range(cj, "0", &tk.to_string(), |ir, j| {
                        let sidx = ir.op("add", "i64", &srow0, j);
                        let sp = ir.gep("float", &st, &sidx);
                        ir.line(format!("store float 0.0, ptr {sp}"));
                    });
                });
                ir.if_then(&any, |ir| {
                    let grew = ir.op("fcmp une", "float", &m_new, &m_old);
                    let pl = ir.gep("float", &l, i);
                    let orow0 = ir.op("mul", "i64", i, &dvp.to_string());
                    ir.if_then(&grew, |ir| {
                        let was_ninf = ir.op("fcmp oeq", "float", &m_old, ninf);
                        let diff = ir.op("fsub", "float", &m_old, &m_new);
                        let e = ir.tmp();
                        ir.line(format!("{e} = call float @llvm.exp.f32(float {diff})"));
                        let alpha = ir.tmp();
                        ir.line(format!("{alpha} = select i1 {was_ninf}, float 0.0, float {e}"));
                        ir.for_range(cd, "0", &dv.to_string(), |ir, dd| {
                            let idx = ir.op("add", "i64", &orow0, dd);
                            let p = ir.gep("float", &acc, &idx);
                            let o = ir.load("float", &p);
                            let o2 = ir.op("fmul", "float", &o, &alpha);
                            ir.line(format!("store float {o2}, ptr {p}"));
                        });
                        let lv = ir.load("float", &pl);
                        let l2 = ir.op("fmul", "float", &lv, &alpha);
                        ir.line(format!("store float {l2}, ptr {pl}"));
                    });
                    ir.line(format!("store float {m_new}, ptr {pm}"));
                    let lv = ir.load("float", &pl);
                    ir.line(format!("store float {lv}, ptr {lsum}"));
                    // P = exp(S - m) in place (vectorised, the polynomial exp), l += Σ P.
                    ir.for_range(cj, "0", &tk.to_string(), |ir, j| {
                        let sidx = ir.op("add", "i64", &srow0, j);
                        let sp = ir.gep("float", &st, &sidx);
                        let x = ir.load("float", &sp);
                        let diff = ir.op("fsub", "float", &x, &m_new);
                        let p = ir.tmp();
                        ir.line(format!("{p} = call float @tdl_expf(float {diff})"));
                        ir.line(format!("store float {p}, ptr {sp}"));
                        let ls = ir.load("float", &lsum);
                        let ls2 = ir.op(&format!("fadd {fast}"), "float", &ls, &p);
                        ir.line(format!("store float {ls2}, ptr {lsum}"));
                    });
                    let ls = ir.load("float", &lsum);
                    ir.line(format!("store float {ls}, ptr {pl}"));
                });
            });
            // O += P·V, register-blocked, V read in place (rows k0.., bk of them).
            let voff0 = ir.op("mul", "i64", &k0, &dv.to_string());
            let voff = ir.op("add", "i64", &voff0, "%ov");
            let vtile = ir.gep("float", "%v", &voff);
            let pv = |ir: &mut Ir, rows: usize, blocks: &str| {
                BlockGemm {
                    w,
                    rows,
                    blocks,
                    n: dvp,
                    n_valid: dv,
                    k: &bk,
                    a: &st,
                    a_row: tkp,
                    b: &vtile,
                    b_row: dv,
                    c: &acc,
                    c_row: dvp,
                    accumulate: true,
                    counters: [&cgb, &cgp],
                    acc: &gemm_acc,
                }
                .emit(ir)
            };
            if_else(ir, &few_rows, |ir| pv(ir, FEW, "1"), |ir| pv(ir, MR, &blocks));
        });
    });
    result?;
    // A KV split's share: the raw state, `[O (tile_q × dv), m (tile_q), l
    // (tile_q)]`, for the merge.
    let is_raw = ir.op("icmp ne", "ptr", "%raw", "null");
    let (raw_l, done_l) = (ir.label("raw"), ir.label("normal"));
    ir.line(format!("br i1 {is_raw}, label %{raw_l}, label %{done_l}"));
    ir.block(&raw_l);
    ir.for_range(ci, "0", &bq, |ir, i| {
        let base = ir.op("mul", "i64", i, &dv.to_string());
        let abase = ir.op("mul", "i64", i, &dvp.to_string());
        ir.for_range(cd, "0", &dv.to_string(), |ir, dd| {
            let idx = ir.op("add", "i64", &base, dd);
            let aidx = ir.op("add", "i64", &abase, dd);
            let pa = ir.gep("float", &acc, &aidx);
            let a = ir.load("float", &pa);
            let po = ir.gep("float", "%raw", &idx);
            ir.line(format!("store float {a}, ptr {po}"));
        });
        for (k, src) in [(0, &m), (1, &l)] {
            let ps = ir.gep("float", src, i);
            let x = ir.load("float", &ps);
            let at = ir.op("add", "i64", i, &(tq * dv + k * tq).to_string());
            let pd = ir.gep("float", "%raw", &at);
            ir.line(format!("store float {x}, ptr {pd}"));
        }
    });
    ir.line("ret void");
    ir.block(&done_l);
    // out = O / l; l == 0 gives zeros.
    ir.for_range(ci, "0", &bq, |ir, i| {
        let pl = ir.gep("float", &l, i);
        let lv = ir.load("float", &pl);
        let zero = ir.op("fcmp oeq", "float", &lv, "0.0");
        let inv0 = ir.op("fdiv", "float", "1.0", &lv);
        let inv = ir.tmp();
        ir.line(format!("{inv} = select i1 {zero}, float 0.0, float {inv0}"));
        let qi = ir.op("add", "i64", &q0, i);
        let ooff0 = ir.op("mul", "i64", &qi, &dv.to_string());
        let ooff = ir.op("add", "i64", &ooff0, "%oo");
        let orow = ir.gep("float", "%out", &ooff);
        let arow0 = ir.op("mul", "i64", i, &dvp.to_string());
        ir.for_range(cd, "0", &dv.to_string(), |ir, dd| {
            let idx = ir.op("add", "i64", &arow0, dd);
            let pa = ir.gep("float", &acc, &idx);
            let a = ir.load("float", &pa);
            let o0 = ir.op("fmul", "float", &a, &inv);
            let o = ir.tmp();
            ir.line(format!("{o} = select i1 {zero}, float 0.0, float {o0}"));
            let po = ir.gep("float", &orow, dd);
            ir.line(format!("store float {o}, ptr {po}"));
        });
    });
    ir.line("ret void");
    ir.text.push_str("}\n\n");
    let _ = writeln!(ir.text, "attributes #0 = {{ nounwind {} }}", attrs.join(" "));
    let _ = writeln!(ir.text, "attributes #1 = {{ alwaysinline nounwind {} }}", attrs.join(" "));
    let globals = std::mem::take(&mut ir.globals);
    ir.text.push_str(&globals);
    if ir.text.contains("@tdl_m_") {
        // The math functions, less declarations the module already has.
        for line in crate::math::math_ir().lines() {
            if !(line.starts_with("declare") && ir.text.contains(line)) {
                ir.text.push_str(line);
                ir.text.push('\n');
            }
        }
    }
    for decl in crate::lambda::DECLARATIONS.lines() {
        let name = decl.split('@').nth(1).and_then(|x| x.split('(').next()).unwrap_or_default();
        if ir.text.contains(&format!("@{name}(")) && !ir.text.contains(&format!("declare float @{name}(")) {
            let _ = writeln!(ir.text, "{decl}");
        }
    }
    let meta = ir.metadata();
    ir.text.push_str(&meta);
    Ok(ir.text)
}

/// A compiled attention kernel; its machine code lives as long as it does,
/// so it can be cached and run many times (every sequence length).
pub struct CompiledAttention {
    runner: AttentionRunner,
    /// Owns the machine code `f` points into.
    _jit: Jitted,
}

/// Compiles `spec` for the host and calls `f` with the compiled kernel.
pub fn with_attention<R>(spec: &AttentionSpec, f: impl FnOnce(&CompiledAttention) -> R) -> Result<R, LlvmError> {
    Ok(f(&CompiledAttention::new(spec)?))
}

/// Compiles `tdl_expf` alone and evaluates it at `xs` (for its accuracy test).
pub fn expf_polynomial(xs: &[f32]) -> Result<Vec<f32>, LlvmError> {
    let host = HostTarget::detect()?;
    let attrs: Vec<String> = host.function_attributes().iter().map(|(k, v)| format!("\"{k}\"=\"{v}\"")).collect();
    let text = format!(
        "{}\ndefine float @tdl_expf_entry(float %x) {{\n  %y = call float @tdl_expf(float %x)\n  ret float %y\n}}\n\
         attributes #1 = {{ alwaysinline nounwind {} }}\n",
        expf_ir(),
        attrs.join(" ")
    );
    let jit = Jitted::compile(&text, "tdl_expf", "tdl_expf_entry", &host)?;
    // SAFETY: `tdl_expf_entry` is `float(float)` as written above; its code
    // lives as long as `jit`, which outlives the calls.
    let f = unsafe { std::mem::transmute::<usize, unsafe extern "C" fn(f32) -> f32>(jit.addr) };
    // SAFETY: a pure function of its argument.
    Ok(xs.iter().map(|&x| unsafe { f(x) }).collect())
}

/// The optimised LLVM IR of `spec` for the host (`--emit llvm`).
pub fn attention_llvm_text(spec: &AttentionSpec) -> Result<String, LlvmError> {
    let host = HostTarget::detect()?;
    jit::emit_text(&attention_ir(spec, &host)?, "tdl_attention", &host, false)
}

/// The runtime's calls (`run`, `run_with`, `run_scored`) on the compiled
/// function.
impl std::ops::Deref for CompiledAttention {
    type Target = AttentionRunner;

    fn deref(&self) -> &AttentionRunner {
        &self.runner
    }
}

impl CompiledAttention {
    /// Generates, optimises and JIT-compiles `spec` for the host.
    pub fn new(spec: &AttentionSpec) -> Result<CompiledAttention, LlvmError> {
        CompiledAttention::new_for(spec, &HostTarget::detect()?)
    }

    /// [`CompiledAttention::new`] for `host` (the host CPU, possibly with
    /// `--target-cpu` / `--target-features` applied; it must run here).
    pub fn new_for(spec: &AttentionSpec, host: &HostTarget) -> Result<CompiledAttention, LlvmError> {
        let text = attention_ir(spec, host)?;
        let jit = Jitted::compile(&text, "tdl_attention", FN_NAME, host)?;
        // SAFETY: the function was generated above with exactly this
        // signature, and its code stays valid while `jit` lives, i.e. as
        // long as `self`.
        let f: ProgramFn = unsafe { std::mem::transmute::<usize, ProgramFn>(jit.addr) };
        let tkp = spec.tile_k.next_multiple_of((host.f32_lanes() as usize).max(1));
        // SAFETY: `f` is the program function for `spec` and `tkp`, and
        // `jit` (owned beside the runner) keeps its code alive.
        let runner = unsafe { AttentionRunner::new(spec.clone(), f, tkp) };
        Ok(CompiledAttention { runner, _jit: jit })
    }

    /// The runtime around the compiled function.
    pub fn runner(&self) -> &AttentionRunner {
        &self.runner
    }
}
