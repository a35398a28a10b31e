//! The CPU row and reduction kernels: the Kernel IR's [`RowKernel`]
//! (softmax over any axis, layernorm, rmsnorm, rope) and [`ReduceKernel`]
//! (sum, mean, max over one axis) compiled through LLVM, one function per
//! [`RowCode`] ([`row_ir`]), run over blocks of rows on the worker threads
//! by the runtime's driver ([`tdl_rt::rows`], which ahead-of-time
//! artifacts share); the JIT compiles each on demand through the
//! [`KernelCache`].
//!
//! They compute exactly what the interpreter computes, in the same order:
//!
//! * sums run sequentially in `f32` from the interpreter's start value
//!   (norms: `-0.0`, as `Iterator::sum`; softmax and reduce: `0.0`), with no
//!   reassociation, so they are bit-identical; the passes that do not
//!   accumulate (`exp`, scaling, normalising) vectorise. A reduction over
//!   an inner axis keeps one accumulator per output column and vectorises
//!   across the columns, still summing each in order.
//! * `max` is the interpreter's `max_nan` (NaN wins; among equal values,
//!   the first); softmax's max is `llvm.maximum` (it differs from `max_nan`
//!   only in the sign of a zero maximum, which `x - max` cannot see), a
//!   fully `-inf` row gives zeros, a NaN gives a NaN row.
//! * softmax's `exp` is [`crate::math`]'s polynomial (≤ 2 ulp), so softmax
//!   rows match the interpreter's within a few ulp (< 1e-6 relative).
//! * layernorm: `mean = Σx/d`, `var = Σ(x-mean)²/d`,
//!   `out = (x-mean)·(1/sqrt(var + eps))·g + b`; rmsnorm:
//!   `out = x·(1/sqrt(Σx²/d + eps))·g`, `eps` rounded to `f32`.
//! * `i32` reductions: `sum` wraps, `max`, `mean` as an `i64` sum divided
//!   in `f64` and truncated, exactly the interpreter's.
//! * rope: the same `cos`/`sin` table the interpreter builds (in `f64`,
//!   rounded to `f32`; cached per `(positions, d, base)`), then
//!   `x₁·cos - x₂·sin`, `x₂·cos + x₁·sin`.

use std::sync::Arc;

use tdl_ir::ReduceOp;
use tdl_kernel::interp::RowArgs;
use tdl_kernel::ir::{ReduceKernel, RowKernel, RowOp};
use tdl_rt::code::Code;
use tdl_rt::rows::{RopeTables, RowCode, RowSource};
use tdl_rt::RtError;

use crate::attention::{float_text, Ir};
use crate::cache::KernelCache;
use crate::elementwise::{finish_module, prelude};
use crate::{HostTarget, LlvmError};

const NEG_INF: &str = "0xFFF0000000000000";
const NAN: &str = "0x7FF8000000000000";

/// The entry point of a row function's module (a [`tdl_rt::rows::RowFn`]).
pub(crate) const FN_NAME: &str = "tdl_rows";

fn header() -> String {
    format!(
        "{}\ndefine void @{FN_NAME}(ptr noalias readonly %x, ptr noalias %out, ptr noalias readonly %p0, \
         ptr noalias readonly %p1, i64 %n, i64 %inner, i64 %r0, i64 %r1, i64 %j0, i64 %j1) #0 {{\nentry:",
        prelude()
    )
}

fn finish(mut ir: Ir, host: &HostTarget) -> String {
    ir.line("ret void");
    ir.text.push_str("}\n\n");
    finish_module(&mut ir.text, host);
    ir.text
}

fn select(ir: &mut Ir, c: &str, a: &str, b: &str) -> String {
    let t = ir.tmp();
    ir.line(format!("{t} = select i1 {c}, float {a}, float {b}"));
    t
}

/// The interpreter's `max_nan(acc, v)`: NaN if either is, else `v` if
/// `v > acc`, else `acc`.
fn max_nan(ir: &mut Ir, acc: &str, v: &str) -> String {
    let uno = ir.op("fcmp uno", "float", acc, v);
    let gt = ir.op("fcmp ogt", "float", v, acc);
    let m = select(ir, &gt, v, acc);
    select(ir, &uno, NAN, &m)
}

/// `if cond { then } else { other }`.
fn if_else(ir: &mut Ir, cond: &str, then: impl FnOnce(&mut Ir), other: impl FnOnce(&mut Ir)) {
    let (t, e, end) = (ir.label("then"), ir.label("else"), ir.label("fi"));
    ir.line(format!("br i1 {cond}, label %{t}, label %{e}"));
    ir.block(&t);
    then(ir);
    ir.line(format!("br label %{end}"));
    ir.block(&e);
    other(ir);
    ir.line(format!("br label %{end}"));
    ir.block(&end);
}

/// `acc = acc + x` on an alloca'd `float`.
fn accumulate(ir: &mut Ir, acc: &str, x: &str) {
    let a = ir.load("float", acc);
    let s = ir.op("fadd", "float", &a, x);
    ir.line(format!("store float {s}, ptr {acc}"));
}

/// The reduction: `last` when the reduced axis is the last (one
/// accumulator per row), else one per output column, vectorised across
/// the columns `j0..j1`.
fn reduce_ir(op: ReduceOp, last: bool, host: &HostTarget) -> String {
    let mut ir = Ir::with_text(header());
    let (co, ci, cj, acc) = (ir.alloca("i64", 1), ir.alloca("i64", 1), ir.alloca("i64", 1), ir.alloca("float", 1));
    let nf = ir.tmp();
    ir.line(format!("{nf} = uitofp i64 %n to float"));
    let start = if op == ReduceOp::Max { "1" } else { "0" };
    let combine = |ir: &mut Ir, a: &str, v: &str| match op {
        ReduceOp::Max => max_nan(ir, a, v),
        _ => ir.op("fadd", "float", a, v),
    };
    ir.for_range(&co, "%r0", "%r1", |ir, o| {
        if last {
            let base = ir.op("mul", "i64", o, "%n");
            let xr = ir.gep("float", "%x", &base);
            let init = if op == ReduceOp::Max { ir.load("float", &xr) } else { "0.0".to_string() };
            ir.line(format!("store float {init}, ptr {acc}"));
            ir.for_range(&ci, start, "%n", |ir, i| {
                let p = ir.gep("float", &xr, i);
                let v = ir.load("float", &p);
                let a = ir.load("float", &acc);
                let s = combine(ir, &a, &v);
                ir.line(format!("store float {s}, ptr {acc}"));
            });
            let mut a = ir.load("float", &acc);
            if op == ReduceOp::Mean {
                a = ir.op("fdiv", "float", &a, &nf);
            }
            let po = ir.gep("float", "%out", o);
            ir.line(format!("store float {a}, ptr {po}"));
        } else {
            let ob = ir.op("mul", "i64", o, "%inner");
            let orow = ir.gep("float", "%out", &ob);
            let xb0 = ir.op("mul", "i64", o, "%n");
            let xb = ir.op("mul", "i64", &xb0, "%inner");
            let xo = ir.gep("float", "%x", &xb);
            ir.for_range(&cj, "%j0", "%j1", |ir, j| {
                let init = if op == ReduceOp::Max {
                    let p = ir.gep("float", &xo, j);
                    ir.load("float", &p)
                } else {
                    "0.0".to_string()
                };
                let po = ir.gep("float", &orow, j);
                ir.line(format!("store float {init}, ptr {po}"));
            });
            ir.for_range(&ci, start, "%n", |ir, i| {
                let xi0 = ir.op("mul", "i64", i, "%inner");
                let xi = ir.gep("float", &xo, &xi0);
                ir.for_range(&cj, "%j0", "%j1", |ir, j| {
                    let p = ir.gep("float", &xi, j);
                    let v = ir.load("float", &p);
                    let po = ir.gep("float", &orow, j);
                    let a = ir.load("float", &po);
                    let s = combine(ir, &a, &v);
                    ir.line(format!("store float {s}, ptr {po}"));
                });
            });
            if op == ReduceOp::Mean {
                ir.for_range(&cj, "%j0", "%j1", |ir, j| {
                    let po = ir.gep("float", &orow, j);
                    let a = ir.load("float", &po);
                    let m = ir.op("fdiv", "float", &a, &nf);
                    ir.line(format!("store float {m}, ptr {po}"));
                });
            }
        }
    });
    finish(ir, host)
}

/// An `i32` reduction (`x` and `out` hold `i32`s), one accumulator per
/// output, in the interpreter's order: `sum` wraps, `max` is the largest,
/// `mean` sums in `i64`, divides by `n` in `f64` and truncates (0 when
/// `n = 0`).
fn reduce_i32_ir(op: ReduceOp, last: bool, host: &HostTarget) -> String {
    let mut ir = Ir::with_text(header());
    let (co, ci, cj) = (ir.alloca("i64", 1), ir.alloca("i64", 1), ir.alloca("i64", 1));
    let (acc, acc64) = (ir.alloca("i32", 1), ir.alloca("i64", 1));
    let (j0, j1, stride) = if last { ("0", "1", "1") } else { ("%j0", "%j1", "%inner") };
    ir.for_range(&co, "%r0", "%r1", |ir, o| {
        let xb0 = ir.op("mul", "i64", o, "%n");
        let xb = if last { xb0 } else { ir.op("mul", "i64", &xb0, "%inner") };
        let ob = if last { o.to_string() } else { ir.op("mul", "i64", o, "%inner") };
        ir.for_range(&cj, j0, j1, |ir, j| {
            let base = ir.op("add", "i64", &xb, j);
            let xo = ir.gep("i32", "%x", &base);
            let at = |ir: &mut Ir, i: &str| {
                let off = ir.op("mul", "i64", i, stride);
                let p = ir.gep("i32", &xo, &off);
                ir.load("i32", &p)
            };
            let result = match op {
                ReduceOp::Sum | ReduceOp::Max => {
                    let (init, start) = if op == ReduceOp::Max { (at(ir, "0"), "1") } else { ("0".into(), "0") };
                    ir.line(format!("store i32 {init}, ptr {acc}"));
                    ir.for_range(&ci, start, "%n", |ir, i| {
                        let v = at(ir, i);
                        let a = ir.load("i32", &acc);
                        let r = if op == ReduceOp::Max {
                            let t = ir.tmp();
                            ir.line(format!("{t} = call i32 @llvm.smax.i32(i32 {a}, i32 {v})"));
                            t
                        } else {
                            ir.op("add", "i32", &a, &v)
                        };
                        ir.line(format!("store i32 {r}, ptr {acc}"));
                    });
                    ir.load("i32", &acc)
                }
                ReduceOp::Mean => {
                    ir.line(format!("store i64 0, ptr {acc64}"));
                    ir.for_range(&ci, "0", "%n", |ir, i| {
                        let v = at(ir, i);
                        let w = ir.tmp();
                        ir.line(format!("{w} = sext i32 {v} to i64"));
                        let a = ir.load("i64", &acc64);
                        let r = ir.op("add", "i64", &a, &w);
                        ir.line(format!("store i64 {r}, ptr {acc64}"));
                    });
                    let sum = ir.load("i64", &acc64);
                    let (sf, nf) = (ir.tmp(), ir.tmp());
                    ir.line(format!("{sf} = sitofp i64 {sum} to double"));
                    ir.line(format!("{nf} = uitofp i64 %n to double"));
                    let q = ir.op("fdiv", "double", &sf, &nf);
                    // Non-zero `n`: the quotient lies in i32's range.
                    let nz = ir.op("icmp ne", "i64", "%n", "0");
                    let qs = ir.tmp();
                    ir.line(format!("{qs} = select i1 {nz}, double {q}, double 0.0"));
                    let t = ir.tmp();
                    ir.line(format!("{t} = fptosi double {qs} to i32"));
                    t
                }
            };
            let oi = ir.op("add", "i64", &ob, j);
            let po = ir.gep("i32", "%out", &oi);
            ir.line(format!("store i32 {result}, ptr {po}"));
        });
    });
    finish(ir, host)
}

/// Softmax over rows of `n` elements `inner` apart (`last`: 1 apart).
fn softmax_ir(last: bool, host: &HostTarget) -> String {
    let mut ir = Ir::with_text(header());
    let (cr, ci, acc) = (ir.alloca("i64", 1), ir.alloca("i64", 1), ir.alloca("float", 1));
    let st = if last { "1" } else { "%inner" };
    ir.for_range(&cr, "%r0", "%r1", |ir, r| {
        // Row r = (o, j): starts at o·n·inner + j.
        let base = if last {
            ir.op("mul", "i64", r, "%n")
        } else {
            let o = ir.op("udiv", "i64", r, "%inner");
            let j = ir.op("urem", "i64", r, "%inner");
            let on = ir.op("mul", "i64", &o, "%n");
            let oni = ir.op("mul", "i64", &on, "%inner");
            ir.op("add", "i64", &oni, &j)
        };
        let xr = ir.gep("float", "%x", &base);
        let or = ir.gep("float", "%out", &base);
        let at = |ir: &mut Ir, p: &str, i: &str| {
            if last {
                ir.gep("float", p, i)
            } else {
                let o = ir.op("mul", "i64", i, st);
                ir.gep("float", p, &o)
            }
        };
        let nonempty = ir.op("icmp sgt", "i64", "%n", "0");
        ir.if_then(&nonempty, |ir| {
            let x0 = ir.load("float", &xr);
            ir.line(format!("store float {x0}, ptr {acc}"));
            ir.for_range(&ci, "1", "%n", |ir, i| {
                let p = at(ir, &xr, i);
                let v = ir.load("float", &p);
                let a = ir.load("float", &acc);
                let m = ir.tmp();
                ir.line(format!("{m} = call float @llvm.maximum.f32(float {a}, float {v})"));
                ir.line(format!("store float {m}, ptr {acc}"));
            });
            let m = ir.load("float", &acc);
            let dead = ir.op("fcmp oeq", "float", &m, NEG_INF);
            if_else(
                ir,
                &dead,
                |ir| {
                    ir.for_range(&ci, "0", "%n", |ir, i| {
                        let p = at(ir, &or, i);
                        ir.line(format!("store float 0.0, ptr {p}"));
                    });
                },
                |ir| {
                    ir.for_range(&ci, "0", "%n", |ir, i| {
                        let p = at(ir, &xr, i);
                        let v = ir.load("float", &p);
                        let d = ir.op("fsub", "float", &v, &m);
                        let e = ir.tmp();
                        ir.line(format!("{e} = call float @tdl_m_exp(float {d})"));
                        let q = at(ir, &or, i);
                        ir.line(format!("store float {e}, ptr {q}"));
                    });
                    ir.line(format!("store float 0.0, ptr {acc}"));
                    ir.for_range(&ci, "0", "%n", |ir, i| {
                        let q = at(ir, &or, i);
                        let e = ir.load("float", &q);
                        accumulate(ir, &acc, &e);
                    });
                    let sum = ir.load("float", &acc);
                    let inv = ir.op("fdiv", "float", "1.0", &sum);
                    ir.for_range(&ci, "0", "%n", |ir, i| {
                        let q = at(ir, &or, i);
                        let e = ir.load("float", &q);
                        let y = ir.op("fmul", "float", &e, &inv);
                        ir.line(format!("store float {y}, ptr {q}"));
                    });
                },
            );
        });
    });
    finish(ir, host)
}

/// Layernorm (`bias`) or rmsnorm over rows of `n`, gain `%p0`, bias `%p1`.
fn norm_ir(layer: bool, eps: f32, host: &HostTarget) -> String {
    let mut ir = Ir::with_text(header());
    let (cr, ci, acc) = (ir.alloca("i64", 1), ir.alloca("i64", 1), ir.alloca("float", 1));
    let nf = ir.tmp();
    ir.line(format!("{nf} = uitofp i64 %n to float"));
    let eps = float_text(eps);
    ir.for_range(&cr, "%r0", "%r1", |ir, r| {
        let base = ir.op("mul", "i64", r, "%n");
        let xr = ir.gep("float", "%x", &base);
        let or = ir.gep("float", "%out", &base);
        let mean = if layer {
            ir.line(format!("store float -0.0, ptr {acc}"));
            ir.for_range(&ci, "0", "%n", |ir, i| {
                let p = ir.gep("float", &xr, i);
                let v = ir.load("float", &p);
                accumulate(ir, &acc, &v);
            });
            let s = ir.load("float", &acc);
            Some(ir.op("fdiv", "float", &s, &nf))
        } else {
            None
        };
        ir.line(format!("store float -0.0, ptr {acc}"));
        ir.for_range(&ci, "0", "%n", |ir, i| {
            let p = ir.gep("float", &xr, i);
            let v = ir.load("float", &p);
            let c = match &mean {
                Some(m) => ir.op("fsub", "float", &v, m),
                None => v,
            };
            let sq = ir.op("fmul", "float", &c, &c);
            accumulate(ir, &acc, &sq);
        });
        let s = ir.load("float", &acc);
        let ms = ir.op("fdiv", "float", &s, &nf);
        let me = ir.op("fadd", "float", &ms, &eps);
        let sq = ir.tmp();
        ir.line(format!("{sq} = call float @llvm.sqrt.f32(float {me})"));
        let inv = ir.op("fdiv", "float", "1.0", &sq);
        ir.for_range(&ci, "0", "%n", |ir, i| {
            let p = ir.gep("float", &xr, i);
            let v = ir.load("float", &p);
            let c = match &mean {
                Some(m) => ir.op("fsub", "float", &v, m),
                None => v,
            };
            let y0 = ir.op("fmul", "float", &c, &inv);
            let pg = ir.gep("float", "%p0", i);
            let g = ir.load("float", &pg);
            let mut y = ir.op("fmul", "float", &y0, &g);
            if layer {
                let pb = ir.gep("float", "%p1", i);
                let b = ir.load("float", &pb);
                y = ir.op("fadd", "float", &y, &b);
            }
            let q = ir.gep("float", &or, i);
            ir.line(format!("store float {y}, ptr {q}"));
        });
    });
    finish(ir, host)
}

/// Rope over rows of `n = 2·half`; the row's position is `r mod inner`;
/// `%p0`, `%p1` are the `[positions, half]` cos and sin tables.
fn rope_ir(host: &HostTarget) -> String {
    let mut ir = Ir::with_text(header());
    let (cr, ci) = (ir.alloca("i64", 1), ir.alloca("i64", 1));
    let half = ir.op("udiv", "i64", "%n", "2");
    ir.for_range(&cr, "%r0", "%r1", |ir, r| {
        let base = ir.op("mul", "i64", r, "%n");
        let xr = ir.gep("float", "%x", &base);
        let or = ir.gep("float", "%out", &base);
        let pos = ir.op("urem", "i64", r, "%inner");
        let tb = ir.op("mul", "i64", &pos, &half);
        let cs = ir.gep("float", "%p0", &tb);
        let sn = ir.gep("float", "%p1", &tb);
        ir.for_range(&ci, "0", &half, |ir, i| {
            let i2 = ir.op("add", "i64", i, &half);
            let (p1, p2) = (ir.gep("float", &xr, i), ir.gep("float", &xr, &i2));
            let (x1, x2) = (ir.load("float", &p1), ir.load("float", &p2));
            let (pc, ps) = (ir.gep("float", &cs, i), ir.gep("float", &sn, i));
            let (c, s) = (ir.load("float", &pc), ir.load("float", &ps));
            let a = ir.op("fmul", "float", &x1, &c);
            let b = ir.op("fmul", "float", &x2, &s);
            let y1 = ir.op("fsub", "float", &a, &b);
            let d = ir.op("fmul", "float", &x2, &c);
            let e = ir.op("fmul", "float", &x1, &s);
            let y2 = ir.op("fadd", "float", &d, &e);
            let (q1, q2) = (ir.gep("float", &or, i), ir.gep("float", &or, &i2));
            ir.line(format!("store float {y1}, ptr {q1}"));
            ir.line(format!("store float {y2}, ptr {q2}"));
        });
    });
    finish(ir, host)
}

/// The LLVM IR text of the row function of `code`.
pub(crate) fn row_ir(code: &RowCode, host: &HostTarget) -> String {
    match *code {
        RowCode::Reduce { op, last } => reduce_ir(op, last, host),
        RowCode::ReduceI32 { op, last } => reduce_i32_ir(op, last, host),
        RowCode::Softmax { last } => softmax_ir(last, host),
        RowCode::Norm { layer, eps_bits } => norm_ir(layer, f32::from_bits(eps_bits), host),
        RowCode::Rope => rope_ir(host),
    }
}

/// The JIT's row functions: compiled on demand through the cache (keyed by
/// the IR text).
struct JitRows<'a> {
    host: &'a HostTarget,
    cache: &'a KernelCache,
}

impl RowSource for JitRows<'_> {
    fn row_fn(&self, code: &RowCode) -> Option<Result<Code, RtError>> {
        let text = row_ir(code, self.host);
        Some(match self.cache.get(&text, "tdl_rows", FN_NAME, self.host) {
            // SAFETY: `row_ir` generated a `RowFn` for exactly `code`; the
            // cache entry keeps its code alive.
            Ok(c) => Ok(unsafe { Code::new(c.addr, Some(c as Arc<_>)) }),
            Err(e) => Err(RtError::new(e.to_string())),
        })
    }

    fn rope_tables(&self) -> &RopeTables {
        self.cache.rope_tables()
    }
}

/// Runs a reduction, or `None` when it is not supported.
pub fn run_reduce(
    k: &ReduceKernel,
    args: &RowArgs<'_>,
    host: &HostTarget,
    cache: &KernelCache,
    threads: usize,
) -> Option<Result<Vec<f32>, LlvmError>> {
    let r = tdl_rt::rows::run_reduce(k, args, threads, &JitRows { host, cache })?;
    Some(r.map_err(LlvmError::from))
}

/// Runs a reduction of an `i32` input, or `None` when it is not supported.
pub fn run_reduce_i32(
    k: &ReduceKernel,
    x: &[i32],
    shape: &[usize],
    host: &HostTarget,
    cache: &KernelCache,
    threads: usize,
) -> Option<Result<Vec<i32>, LlvmError>> {
    let r = tdl_rt::rows::run_reduce_i32(k, x, shape, threads, &JitRows { host, cache })?;
    Some(r.map_err(LlvmError::from))
}

/// Runs a row kernel, or `None` when it is not supported.
pub fn run_row(
    k: &RowKernel,
    args: &RowArgs<'_>,
    host: &HostTarget,
    cache: &KernelCache,
    threads: usize,
) -> Option<Result<Vec<f32>, LlvmError>> {
    let r = tdl_rt::rows::run_row(k, args, threads, &JitRows { host, cache })?;
    Some(r.map_err(LlvmError::from))
}

/// The optimised LLVM IR of a row kernel's function for the host (to
/// inspect what LLVM made of it; softmax over the last axis).
pub fn row_llvm_text(op: &RowOp) -> Result<String, LlvmError> {
    let host = HostTarget::detect()?;
    let text = match op {
        RowOp::Softmax { .. } => softmax_ir(true, &host),
        RowOp::LayerNorm { eps } => norm_ir(true, *eps as f32, &host),
        RowOp::RmsNorm { eps } => norm_ir(false, *eps as f32, &host),
        RowOp::Rope { .. } => rope_ir(&host),
    };
    let ctx = inkwell::context::Context::create();
    let module = crate::jit::optimised_module(&ctx, &text, "tdl_rows", &host)?;
    Ok(module.print_to_string().to_string())
}
