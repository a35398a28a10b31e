//! The CPU attention kernel: the Kernel IR's [`AttentionKernel`] compiled
//! to native code through LLVM and run on every core.
//!
//! # What is generated
//!
//! One function per attention, `tdl_attention_program`, that runs **one
//! program** of the FlashAttention-2 schedule — one `(leading index,
//! q-tile)` — exactly as the Kernel IR interpreter does: the running max,
//! sum and output of the q-tile's rows on the stack; for each visited
//! kv-tile of the program's runs, `S = Q·Kᵀ·scale` as a register-blocked
//! block product ([`crate::gemm`]: 6 rows × 2 vectors of accumulators,
//! broadcast multiply-adds, over a Kᵀ the runtime packs once per K block; or,
//! for programs of at most 8 rows such as decode, dot products over K's rows
//! read in place), the mask predicate **compiled to integer arithmetic**
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
//! [`CompiledAttention::run_with`] derives the block-sparse iteration space
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
//! # Not supported yet
//!
//! Index lambdas and score modifiers (the Kernel IR interpreter runs those
//! attentions), symbolic head dimensions. `document` ids and `blocks`
//! layouts are passed as `i32` arrays (`%mops`, with the layout's column
//! count in `%mcols`), checked by the runtime as the reference checks them.

use std::fmt::Write as _;

use tdl_ir::layout::{next_index, AttentionLayout};
use tdl_ir::{ArrayRef, Bindings, DType, MaskExpr};
use tdl_kernel::ir::KvSplit;
use tdl_kernel::target::resolve_kv_split;
use tdl_passes::tiles::{self, Ctx, MaskData, TileClass};

use crate::gemm::{self, BlockGemm, RowDot, MR};
use crate::jit::{self, Jitted, Shared};
use crate::{HostTarget, LlvmError};

/// The compile-time parameters of one attention kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionSpec {
    /// Head dimension of q and k.
    pub d: usize,
    /// Head dimension of v and the output.
    pub dv: usize,
    pub tile_q: usize,
    pub tile_k: usize,
    /// `None`: `1/sqrt(d)`.
    pub scale: Option<f64>,
    pub mask: Option<MaskExpr>,
}

const FN_NAME: &str = "tdl_attention_program";

/// The tile state one program keeps on its stack: m, l, O and S.
fn stack_bytes(spec: &AttentionSpec) -> usize {
    // Rows padded to the register block, columns to a vector (at most 16
    // lanes): O, S, the Q tile, the packed Kᵀ, m and l.
    let (tq, tk, dv, d) = (spec.tile_q + MR, spec.tile_k + 16, spec.dv + 16, spec.d);
    4 * (2 * tq + tq * dv + tq * tk + tq * d + d * tk)
}

const MAX_STACK: usize = 16 << 20;

/// `(q, k, v, out, runs, offsets, T, S, oq, ok, ov, oo, head, q_tile,
/// n_q_tiles, mask arrays, mask array column counts, the mask's T, rows per
/// query index, first and end visited kv-tile, raw split state or null,
/// packed Kᵀ of this K block or null)`.
/// `T` counts the program's rows (the packed heads' rows in decode); the
/// mask sees query `row / qdiv` of `Tm`.
type ProgramFn = unsafe extern "C" fn(
    *const f32,
    *const f32,
    *const f32,
    *mut f32,
    *const i64,
    *const i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    *const *const i32,
    *const i64,
    i64,
    i64,
    i64,
    i64,
    *mut f32,
    *const f32,
);

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
  %p0 = fmul float %r, {c0}
  %p1 = fadd float %p0, {c1}
  %p2 = fmul float %p1, %r
  %p3 = fadd float %p2, {c2}
  %p4 = fmul float %p3, %r
  %p5 = fadd float %p4, {c3}
  %p6 = fmul float %p5, %r
  %p7 = fadd float %p6, {c4}
  %p8 = fmul float %p7, %r
  %p9 = fadd float %p8, {c5}
  %r2 = fmul float %r, %r
  %p10 = fmul float %p9, %r2
  %p11 = fadd float %p10, %r
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

/// The mask predicate at `(q, k)` as an `i1`; `t`, `s` are the sizes.
/// The arrays a mask reads at run time (document ids, block layouts), in
/// the order [`mask_ir`] numbers them: a pre-order walk, left to right.
#[derive(Clone, Debug, PartialEq)]
pub enum MaskSlot {
    /// `document(ids)`: mask operand `i`, an `i32[N]` with `N ≥ T, S`.
    Document(usize),
    /// `blocks(layout, block)`: a 2-D layout (an operand or a constant).
    Blocks { layout: ArrayRef, bq: i64, bk: i64 },
}

/// The run-time arrays of `m`, in slot order.
pub fn mask_slots(m: &MaskExpr) -> Vec<MaskSlot> {
    let mut out = Vec::new();
    fn walk(m: &MaskExpr, out: &mut Vec<MaskSlot>) {
        match m {
            MaskExpr::Document { ids } => out.push(MaskSlot::Document(*ids)),
            MaskExpr::Blocks { layout, block } => {
                out.push(MaskSlot::Blocks { layout: layout.clone(), bq: block[0], bk: block[1] })
            }
            MaskExpr::And(a, b) | MaskExpr::Or(a, b) => {
                walk(a, out);
                walk(b, out);
            }
            MaskExpr::Not(a) => walk(a, out),
            _ => {}
        }
    }
    walk(m, &mut out);
    out
}

/// Loads the pointer and the column count of run-time array `slot`.
fn slot_ir(ir: &mut Ir, slot: usize) -> (String, String) {
    let pp = ir.gep("ptr", "%mops", &slot.to_string());
    let p = ir.load("ptr", &pp);
    let pc = ir.gep("i64", "%mcols", &slot.to_string());
    let c = ir.load("i64", &pc);
    (p, c)
}

pub(crate) fn mask_ir(ir: &mut Ir, m: &MaskExpr, q: &str, k: &str, t: &str, s: &str) -> Result<String, LlvmError> {
    let mut slot = 0;
    mask_ir_at(ir, m, q, k, t, s, &mut slot)
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
        MaskExpr::And(a, b) | MaskExpr::Or(a, b) => {
            let x = mask_ir_at(ir, a, q, k, t, s, slot)?;
            let y = mask_ir_at(ir, b, q, k, t, s, slot)?;
            ir.op(if matches!(m, MaskExpr::And(..)) { "and" } else { "or" }, "i1", &x, &y)
        }
        MaskExpr::Not(a) => {
            let x = mask_ir_at(ir, a, q, k, t, s, slot)?;
            ir.op("xor", "i1", &x, "true")
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
            let (mut qr, mut kr) = (q.to_string(), k.to_string());
            let mut all = "true".to_string();
            for ax in (0..grid.len()).rev() {
                let (len, kk, d) = (grid[ax], kernel[ax], dilation[ax]);
                let a = ir.op("urem", "i64", &qr, &len.to_string());
                let b = ir.op("urem", "i64", &kr, &len.to_string());
                qr = ir.op("udiv", "i64", &qr, &len.to_string());
                kr = ir.op("udiv", "i64", &kr, &len.to_string());
                let group = ir.op("urem", "i64", &a, &d.to_string());
                let bg = ir.op("urem", "i64", &b, &d.to_string());
                let same = ir.op("icmp eq", "i64", &group, &bg);
                let i = ir.op("udiv", "i64", &a, &d.to_string());
                let j = ir.op("udiv", "i64", &b, &d.to_string());
                let vis = if cz[ax] {
                    let lo0 = ir.op("sub", "i64", &i, &(kk - 1).to_string());
                    let lo = ir.tmp();
                    ir.line(format!("{lo} = call i64 @llvm.smax.i64(i64 {lo0}, i64 0)"));
                    let x = ir.op("icmp sle", "i64", &lo, &j);
                    let y = ir.op("icmp sle", "i64", &j, &i);
                    ir.op("and", "i1", &x, &y)
                } else {
                    // lg = members of this group; start = clamp(i - kk/2, 0, lg - kk).
                    let t0 = ir.op("sub", "i64", &(len + d - 1).to_string(), &group);
                    let lg = ir.op("sdiv", "i64", &t0, &d.to_string());
                    let hi = ir.op("sub", "i64", &lg, &kk.to_string());
                    let c = ir.op("sub", "i64", &i, &(kk / 2).to_string());
                    let c1 = ir.min(&c, &hi);
                    let start = ir.tmp();
                    ir.line(format!("{start} = call i64 @llvm.smax.i64(i64 {c1}, i64 0)"));
                    let end = ir.op("add", "i64", &start, &kk.to_string());
                    let x = ir.op("icmp sle", "i64", &start, &j);
                    let y = ir.op("icmp slt", "i64", &j, &end);
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
    let mut ir = Ir::new();
    let attrs: Vec<String> = host.function_attributes().iter().map(|(k, v)| format!("\"{k}\"=\"{v}\"")).collect();
    let _ = writeln!(
        ir.text,
        "declare i64 @llvm.smin.i64(i64, i64)\ndeclare i64 @llvm.smax.i64(i64, i64)\ndeclare float @llvm.exp.f32(float)\ndeclare float @llvm.maxnum.f32(float, float)\n\
         declare void @llvm.memset.p0.i64(ptr, i8, i64, i1)\n{GEMM}{EXPF}\n\
         define void @{FN_NAME}(ptr noalias readonly %q, ptr noalias readonly %k, ptr noalias readonly %v, ptr noalias %out, \
         ptr noalias readonly %runs, ptr noalias readonly %offs, i64 %T, i64 %S, i64 %oq, i64 %ok, i64 %ov, i64 %oo, \
         i64 %h, i64 %qt, i64 %nq, ptr noalias readonly %mops, ptr noalias readonly %mcols, i64 %Tm, i64 %qdiv, \
         i64 %vis0, i64 %vis1, ptr noalias %raw, ptr noalias readonly %ktp) #0 {{\nentry:",
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
    let qs = ir.alloca("float", tqp * d);
    let q0 = ir.op("mul", "i64", "%qt", &tq.to_string());
    let rest = ir.op("sub", "i64", "%T", &q0);
    let bq = ir.min(&tq.to_string(), &rest);
    // Row blocks of the register-blocked products (rows past bq compute
    // values nobody reads, from zeroed Q rows).
    let bq5 = ir.op("add", "i64", &bq, &(MR - 1).to_string());
    let blocks = ir.op("udiv", "i64", &bq5, &MR.to_string());
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
            RowDot {
                w,
                blocks: &blocks,
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
            }
            .emit(ir);
            ir.line(format!("br label %{s_done}"));
            ir.block(&s_done);
            // -inf past the end of S and, in partial tiles, where the mask
            // does not hold (full tiles skip this pass).
            let short = ir.op("icmp slt", "i64", &bk, &tk.to_string());
            let needs = ir.op("or", "i1", &short, &partial);
            ir.if_then(&needs, |ir| {
                ir.for_range(ci, "0", &bq, |ir, i| {
                    // The row's query index for the mask (rows of `qdiv`
                    // packed heads share it).
                    let row = ir.op("add", "i64", &q0, i);
                    let qi = ir.op("udiv", "i64", &row, "%qdiv");
                    let srow0 = ir.op("mul", "i64", i, &tkp.to_string());
                    ir.for_range(cj, "0", &tk.to_string(), |ir, j| {
                        let ki = ir.op("add", "i64", &k0, j);
                        let sidx = ir.op("add", "i64", &srow0, j);
                        let sp = ir.gep("float", &st, &sidx);
                        let inside = ir.op("icmp slt", "i64", j, &bk);
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
            BlockGemm {
                w,
                blocks: &blocks,
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
            .emit(ir);
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
    let meta = ir.metadata();
    ir.text.push_str(&meta);
    Ok(ir.text)
}

/// A compiled attention kernel; its machine code lives as long as it does,
/// so it can be cached and run many times (every sequence length).
pub struct CompiledAttention {
    spec: AttentionSpec,
    f: ProgramFn,
    /// Columns of a packed Kᵀ tile (`tile_k` rounded up to a vector).
    tkp: usize,
    /// Owns the machine code `f` points into.
    _jit: Jitted,
}

/// How a run went.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuRunStats {
    /// `(leading index, q-tile)` programs (after GQA packing).
    pub programs: usize,
    /// Over every leading index (batch and head).
    pub tiles_visited: usize,
    pub tiles_full: usize,
    pub tiles_partial: usize,
    pub threads: usize,
    /// The KV split used (1: none).
    pub kv_splits: usize,
    /// Query heads packed into one program's rows (decode with GQA/MQA; 1:
    /// none).
    pub packed_heads: usize,
}

/// Run-time choices of [`CompiledAttention::run_with`].
#[derive(Clone, Copy, Debug)]
pub struct RunOptions {
    pub threads: usize,
    /// How each program's visited kv-tiles are split across work items
    /// (resolved per call with `tdl_kernel::target::resolve_kv_split`).
    pub kv_split: KvSplit,
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
        Ok(CompiledAttention { spec: spec.clone(), f, tkp, _jit: jit })
    }

    /// [`CompiledAttention::run_with`] on `threads` threads without a KV split.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        q: (&[usize], &[f32]),
        k: (&[usize], &[f32]),
        v: (&[usize], &[f32]),
        mask_data: &MaskData<'_>,
        bindings: &Bindings,
        out: &mut Vec<f32>,
        threads: usize,
    ) -> Result<CpuRunStats, LlvmError> {
        self.run_with(q, k, v, mask_data, bindings, out, &RunOptions { threads, kv_split: KvSplit::None })
    }

    /// Runs the attention on row-major `f32` data of shapes `q: [..., T, d]`,
    /// `k: [..., S, d]`, `v: [..., S, dv]` (leading axes as the Kernel IR's
    /// attention layout: GQA on axis -3, broadcasting), writing `out` of
    /// shape `[lead..., T, dv]`, on `threads` threads.
    ///
    /// Decode with grouped heads (`T = 1`, query heads sharing a K/V head,
    /// the same iteration space for each) packs the group's heads into the
    /// rows of one program, so K and V are read once per group.
    #[allow(clippy::too_many_arguments)]
    pub fn run_with(
        &self,
        q: (&[usize], &[f32]),
        k: (&[usize], &[f32]),
        v: (&[usize], &[f32]),
        mask_data: &MaskData<'_>,
        bindings: &Bindings,
        out: &mut Vec<f32>,
        opts: &RunOptions,
    ) -> Result<CpuRunStats, LlvmError> {
        let layout = AttentionLayout::new(DType::F32, q.0, k.0, v.0).map_err(LlvmError::Internal)?;
        let (t, s) = (layout.t, layout.s);
        if layout.d != self.spec.d || layout.dv != self.spec.dv {
            return Err(LlvmError::Internal(format!(
                "the kernel was compiled for head dimensions {}/{}, the data has {}/{}",
                self.spec.d, self.spec.dv, layout.d, layout.dv
            )));
        }
        for (what, (shape, data)) in [("q", q), ("k", k), ("v", v)] {
            if shape.iter().product::<usize>() != data.len() {
                return Err(LlvmError::Internal(format!(
                    "{what}: shape {shape:?} does not match {} elements",
                    data.len()
                )));
            }
        }
        let (tq, tk) = (self.spec.tile_q, self.spec.tile_k);
        let (nq, nk) = (t.div_ceil(tq), s.div_ceil(tk));
        let heads = layout.mask_heads();
        let n_lead = layout.n_lead().ok_or_else(|| LlvmError::Internal("too many leading elements".into()))?;
        // The iteration space, flattened: runs [start, end, partial] and an
        // offset per (head, q-tile).
        let (mut runs, mut offs): (Vec<i64>, Vec<i64>) = (Vec::new(), vec![0]);
        let (mut full, mut partial) = (0usize, 0usize);
        match &self.spec.mask {
            Some(m) => {
                let (ti, si) = (t as i64, s as i64);
                let ctx = Ctx { t: ti, s: si, heads, bindings, data: mask_data };
                let space = tiles::iteration_space(m, &ctx, tq, tk).map_err(LlvmError::Internal)?;
                for h in 0..heads {
                    for qt in 0..nq {
                        for (r, class) in &space.per_head[h][qt] {
                            let is_partial = *class == TileClass::Partial;
                            runs.extend([r.start as i64, r.end as i64, i64::from(is_partial)]);
                            if is_partial {
                                partial += r.len();
                            } else {
                                full += r.len();
                            }
                        }
                        offs.push((runs.len() / 3) as i64);
                    }
                }
            }
            None => {
                for _ in 0..heads * nq {
                    if nk > 0 {
                        runs.extend([0, nk as i64, 0]);
                        full += nk;
                    }
                    offs.push((runs.len() / 3) as i64);
                }
            }
        }
        // Neighborhood grids must match the sizes (NATTEN's rules, the shared check).
        if let Some(m) = &self.spec.mask {
            let mut stack = vec![m];
            while let Some(x) = stack.pop() {
                match x {
                    MaskExpr::Neighborhood { kernel, grid, dilation, causal } => {
                        tdl_ir::mask::check_neighborhood(kernel, grid, dilation, causal, t as i64, s as i64)
                            .map_err(LlvmError::Internal)?
                    }
                    MaskExpr::And(a, b) | MaskExpr::Or(a, b) => stack.extend([&**a, &**b]),
                    MaskExpr::Not(a) => stack.push(a),
                    _ => {}
                }
            }
        }
        // The mask's run-time arrays as i32, checked as the reference checks them.
        let slots = self.spec.mask.as_ref().map(mask_slots).unwrap_or_default();
        let mut arrays: Vec<Vec<i32>> = Vec::new();
        let mut cols: Vec<i64> = Vec::new();
        for slot in &slots {
            let operand = |i: usize| {
                mask_data.operands.get(i).ok_or_else(|| {
                    LlvmError::Internal(format!("the mask reads operand {i}, but it has {}", mask_data.operands.len()))
                })
            };
            match slot {
                MaskSlot::Document(i) => {
                    let x = operand(*i)?;
                    if x.shape.len() != 1 || x.dtype != DType::I32 || x.data.len() < t || x.data.len() < s {
                        return Err(LlvmError::Internal(format!(
                            "document ids must be an i32[N] with N ≥ {t} queries and {s} keys, found {:?} of shape {:?}",
                            x.dtype, x.shape
                        )));
                    }
                    arrays.push(x.data.iter().map(|&v| v as i32).collect());
                    cols.push(0);
                }
                MaskSlot::Blocks { layout, bq, bk } => {
                    let (shape, data): (Vec<usize>, Vec<f64>) = match layout {
                        ArrayRef::Const(c) => (c.shape.clone(), c.data.clone()),
                        ArrayRef::Operand(i) => {
                            let x = operand(*i)?;
                            (x.shape.clone(), x.data.to_vec())
                        }
                    };
                    let (Ok(bq), Ok(bk)) = (usize::try_from(*bq), usize::try_from(*bk)) else {
                        return Err(LlvmError::Internal(format!("block sizes must be positive, found [{bq}, {bk}]")));
                    };
                    let ok = shape.len() == 2
                        && bq > 0
                        && bk > 0
                        && data.len() == shape[0] * shape[1]
                        && shape[0] >= t.div_ceil(bq)
                        && shape[1] >= s.div_ceil(bk);
                    if !ok {
                        return Err(LlvmError::Internal(format!(
                            "block layout of shape {shape:?} does not cover {t} queries × {s} keys in blocks of [{bq}, {bk}]"
                        )));
                    }
                    arrays.push(data.iter().map(|&v| i32::from(v != 0.0)).collect());
                    cols.push(shape[1] as i64);
                }
            }
        }
        let array_ptrs: Vec<*const i32> = arrays.iter().map(|a| a.as_ptr()).collect();
        let (mptr, cptr) = (Shared(array_ptrs.as_ptr().cast_mut()), Shared(cols.as_ptr().cast_mut()));
        let dv = self.spec.dv;
        let n_out = n_lead * t * dv;
        out.clear();
        out.resize(n_out, 0.0);
        // Per leading index: offsets into q, k, v, out and the head.
        let mut leads = Vec::with_capacity(n_lead);
        let mut idx = vec![0usize; layout.lead.len()];
        for li in 0..n_lead {
            let (oq, ok, ov) = layout.offsets(&idx);
            leads.push((oq, ok, ov, li * t * dv, idx.last().copied().unwrap_or(0)));
            next_index(&mut idx, &layout.lead);
        }
        let visited_of = |h: usize, qt: usize| -> usize {
            let slot = h * nq + qt;
            runs[3 * offs[slot] as usize..3 * offs[slot + 1] as usize].chunks(3).map(|r| (r[1] - r[0]) as usize).sum()
        };
        let pack = decode_pack(&leads, t, self.spec.d, dv, tq, |h| {
            let slot = h * nq;
            &runs[3 * offs[slot] as usize..3 * offs[slot + 1] as usize]
        });
        // Work items: programs (a leading index, or `pack` of them, × a
        // q-tile), each split into `splits` shares of its visited tiles.
        let programs = (n_lead / pack) * nq;
        let rows_total = if pack > 1 { pack } else { t };
        let busiest = (0..heads).flat_map(|h| (0..nq).map(move |qt| (h, qt))).map(|(h, qt)| visited_of(h, qt)).max();
        let mut splits = resolve_kv_split(opts.kv_split, programs, busiest.unwrap_or(0)).max(1);
        let raw_len = tq * dv + 2 * tq;
        while splits > 1 && programs.saturating_mul(splits).saturating_mul(raw_len) > MAX_SPLIT_STATE {
            splits -= 1;
        }
        let mut raw = vec![0f32; if splits > 1 { programs * splits * raw_len } else { 0 }];
        let outp = Shared(out.as_mut_ptr());
        let rawp = Shared(raw.as_mut_ptr());
        // Kᵀ packed once per K block (query heads and q-tiles share it),
        // unless the programs have few rows (decode): then the kernel dots
        // K's rows in place and K is read once, as it is.
        let few_rows = tq.min(rows_total) <= DOT_ROWS;
        let mut kblocks: Vec<usize> = if few_rows { Vec::new() } else { leads.iter().map(|l| l.1).collect() };
        kblocks.sort_unstable();
        kblocks.dedup();
        let kpacked = pack_kt(k.1, &kblocks, (s, self.spec.d, tk, self.tkp), opts.threads)?;
        let kt_len = nk * self.spec.d * self.tkp;
        let kp = Shared(kpacked.as_ptr().cast_mut());
        let kblocks = &kblocks;
        let (runs, offs, leads) = (&runs, &offs, &leads);
        let f = self.f;
        let items = programs * splits;
        let threads = jit::run_parallel(items, opts.threads, (2 << 20) + stack_bytes(&self.spec), |w| {
            let (p, si) = (w / splits, w % splits);
            let (li, qt) = ((p / nq) * pack, p % nq);
            let (oq, ok, ov, oo, h) = leads[li];
            let ktp = if few_rows {
                std::ptr::null()
            } else {
                kp.ptr().wrapping_add(kblocks.binary_search(&ok).unwrap_or_default() * kt_len).cast_const()
            };
            let (v0, v1) = if splits > 1 {
                let per = visited_of(h, qt).div_ceil(splits).max(1);
                ((si * per) as i64, ((si + 1) * per) as i64)
            } else {
                (0, i64::MAX)
            };
            let raww = if splits > 1 { rawp.ptr().wrapping_add(w * raw_len) } else { std::ptr::null_mut() };
            // SAFETY: the function reads q/k/v/runs/offs and the mask arrays
            // within the bounds the layout, the iteration space and the checks
            // above guarantee (packed rows are checked by `decode_pack`), and
            // writes rows [qt·tile_q, ..) of lead `li` (and of the leads packed
            // with it), or its own share of `raw`, which no other item writes.
            unsafe {
                f(
                    q.1.as_ptr(),
                    k.1.as_ptr(),
                    v.1.as_ptr(),
                    outp.ptr(),
                    runs.as_ptr(),
                    offs.as_ptr(),
                    rows_total as i64,
                    s as i64,
                    oq as i64,
                    ok as i64,
                    ov as i64,
                    oo as i64,
                    h as i64,
                    qt as i64,
                    nq as i64,
                    mptr.ptr().cast_const(),
                    cptr.ptr().cast_const(),
                    t as i64,
                    pack as i64,
                    v0,
                    v1,
                    raww,
                    ktp,
                )
            };
        })?;
        if splits > 1 {
            merge_splits(&raw, out, programs, splits, (tq, dv, nq), rows_total, |p| leads[(p / nq) * pack].3);
        }
        // The space is per head; every other leading axis repeats it.
        let per = (n_lead / heads.max(1)).max(1);
        Ok(CpuRunStats {
            programs,
            tiles_visited: (full + partial) * per,
            tiles_full: full * per,
            tiles_partial: partial * per,
            threads,
            kv_splits: splits,
            packed_heads: pack,
        })
    }
}

/// Kᵀ of every K block at `starts` (each `[S, d]` row-major in `k`) packed
/// per kv-tile for the kernel: block `b`'s tile `t` is `d × tkp` floats at
/// `(b·n_tiles + t)·d·tkp`, row `dd` holding `K[t·tk + j][dd]` for
/// `j < tk` inside S and zeros elsewhere.
fn pack_kt(
    k: &[f32],
    starts: &[usize],
    (s, d, tk, tkp): (usize, usize, usize, usize),
    threads: usize,
) -> Result<Vec<f32>, LlvmError> {
    if starts.iter().any(|&o| o.checked_add(s * d).is_none_or(|end| end > k.len())) {
        return Err(LlvmError::Internal(format!("k: a block of {s}×{d} does not fit in {} elements", k.len())));
    }
    let nk = s.div_ceil(tk);
    let tile = d * tkp;
    let mut out = vec![0f32; starts.len() * nk * tile];
    let outp = Shared(out.as_mut_ptr());
    jit::run_parallel(starts.len() * nk, threads, 1 << 20, |item| {
        let (b, t) = (item / nk, item % nk);
        let (k0, bk) = (t * tk, tk.min(s - t * tk));
        // SAFETY: item (b, t) writes its own tile of `out` only; the reads are
        // inside `k` (checked above).
        let dst = unsafe { std::slice::from_raw_parts_mut(outp.ptr().add(item * tile), tile) };
        let src = &k[starts[b] + k0 * d..starts[b] + (k0 + bk) * d];
        for (j, row) in src.chunks_exact(d).enumerate() {
            for (dd, &x) in row.iter().enumerate() {
                dst[dd * tkp + j] = x;
            }
        }
    })?;
    Ok(out)
}

/// Programs of at most this many query rows (decode, packed heads) dot K's
/// rows in place instead of using a packed Kᵀ.
const DOT_ROWS: usize = 8;

/// The most `f32`s of split state (`[O, m, l]` per program and split) a
/// run keeps; larger splits are reduced to fit.
const MAX_SPLIT_STATE: usize = 64 << 20;

/// How many consecutive leading indices one decode program can take as its
/// rows: with `T = 1`, a group of leads that read the same K/V block, whose
/// q rows and output rows are consecutive, and whose heads have the same
/// runs. 1 when there is no such group.
fn decode_pack<'r>(
    leads: &[(usize, usize, usize, usize, usize)],
    t: usize,
    d: usize,
    dv: usize,
    tile_q: usize,
    runs_of_head: impl Fn(usize) -> &'r [i64],
) -> usize {
    if t != 1 || leads.len() < 2 {
        return 1;
    }
    let g = leads.iter().take_while(|l| (l.1, l.2) == (leads[0].1, leads[0].2)).count();
    if g < 2 || g > tile_q || !leads.len().is_multiple_of(g) {
        return 1;
    }
    let ok = leads.chunks(g).all(|grp| {
        let (q0, k0, v0, o0, h0) = grp[0];
        grp.iter().enumerate().all(|(i, &(q, k, v, o, h))| {
            (k, v) == (k0, v0) && q == q0 + i * d && o == o0 + i * dv && runs_of_head(h) == runs_of_head(h0)
        })
    });
    if ok {
        g
    } else {
        1
    }
}

/// Merges the splits' raw states (online-softmax combine) and writes the
/// output: `m = max mᵢ`, `l = Σ e^(mᵢ-m)·lᵢ`, `O = Σ e^(mᵢ-m)·Oᵢ`, out =
/// `O / l`; no visible key (`l == 0`) gives zeros.
fn merge_splits(
    raw: &[f32],
    out: &mut [f32],
    programs: usize,
    splits: usize,
    (tq, dv, nq): (usize, usize, usize),
    rows_total: usize,
    out_offset: impl Fn(usize) -> usize,
) {
    let raw_len = tq * dv + 2 * tq;
    for p in 0..programs {
        let q0 = (p % nq) * tq;
        let bq = tq.min(rows_total - q0);
        let base = out_offset(p) + q0 * dv;
        let share = |si: usize| &raw[(p * splits + si) * raw_len..(p * splits + si + 1) * raw_len];
        for i in 0..bq {
            let m = (0..splits).map(|si| share(si)[tq * dv + i]).fold(f32::NEG_INFINITY, f32::max);
            let dst = &mut out[base + i * dv..base + (i + 1) * dv];
            dst.fill(0.0);
            let mut l = 0f32;
            if m != f32::NEG_INFINITY {
                for si in 0..splits {
                    let st = share(si);
                    let mi = st[tq * dv + i];
                    if mi == f32::NEG_INFINITY {
                        continue;
                    }
                    let w = (mi - m).exp();
                    l += w * st[tq * dv + tq + i];
                    for (o, x) in dst.iter_mut().zip(&st[i * dv..(i + 1) * dv]) {
                        *o += w * x;
                    }
                }
            }
            if l == 0.0 {
                dst.fill(0.0);
            } else {
                dst.iter_mut().for_each(|o| *o /= l);
            }
        }
    }
}
