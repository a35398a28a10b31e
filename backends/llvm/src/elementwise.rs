//! The CPU elementwise and data-movement kernels: the Kernel IR's
//! [`ElementwiseKernel`] (a fused SSA chain over broadcast operands, masks
//! evaluated inside the chain) and [`MoveKernel`] (copy, concat, repeat)
//! compiled through LLVM.
//!
//! Both are one **strided loop nest**: the output's leading axes are
//! *rows*, walked with a multi-index that carries like an odometer; along
//! the last axis an inner loop computes the chain per element and stores
//! it. Every operand is read at `base + Σ idx[a]·stride[a]`: broadcast
//! axes have stride 0, views (transpose, permute, slice, split reshapes)
//! are just strides, so nothing is copied first. Sizes and strides are
//! run-time arguments; what the code is specialised for (and what keys the
//! [`KernelCache`]) is a [`LoopSpec`]: the instructions, the masks, the
//! rank and, per operand, whether its last-axis stride is 0, 1 or anything
//! — so the inner loop over contiguous operands is a plain unit-stride loop
//! that LLVM vectorises (the row function takes its operands as `noalias`
//! pointers). This module generates the code ([`loop_ir`]); the nests, the
//! checks and the work items are the runtime's
//! ([`tdl_rt::elementwise`], which ahead-of-time artifacts share): without
//! masks, size-1 axes are dropped and axes every operand walks contiguously
//! are merged first (`[T, 512] + [T, 512]` is one loop of `512·T`).
//!
//! Numerics are the interpreter's: the same `f32` operations in the same
//! order, no fast-math flags, so `+ - · /`, `neg`, `abs`, `relu`, `sqrt`,
//! `rsqrt` (`1/sqrt`), `select` and integer arithmetic (wrapping, floor
//! division with `x / 0 == 0`) give identical bits. `exp`, `log`, `tanh`,
//! `erf` (and `sigmoid`, `silu`, `gelu` built from them as the interpreter
//! builds them) are the polynomials of [`crate::math`] (within 5e-7
//! relative of `f64`; the interpreter's `libm` is within an ulp or so).
//! Masks compile to integer arithmetic ([`crate::attention`]'s mask code:
//! `q`, `k` the output's last two indices, `T`, `S` its last two sizes),
//! one inlined predicate per mask; `document` ids and `blocks` layouts are
//! passed as `i32` arrays, checked to cover `T × S` first.
//!
//! Work items are blocks of rows (or, for few long rows, column ranges of a
//! row) of about 16 K elements, run on the worker threads; a kernel of one
//! work item runs on the calling thread.
//!
//! The JIT ([`run_elementwise`], [`run_move`]) compiles the code of the
//! nest each call builds, on demand, through the [`KernelCache`].
//!
//! Index-lambda masks compile through [`crate::lambda`] (the mask
//! function gets `h`, the index along axis -3, the symbol table, the
//! masks' operand arrays and the error flag, as the attention kernel's).
//!
//! Chains ending in an integer or a boolean store `i32`s (booleans as 0/1;
//! [`run_elementwise_i32`]).
//!
//! Declined (the interpreter runs them): lambdas the lambda compiler
//! declines, integer `exp`-like functions (an interpreter error), and
//! `i32`/`bool` sources of moves.

use std::fmt::Write as _;
use std::sync::Arc;

use tdl_ir::{BinaryOp, DType, MaskExpr, UnaryOp};
use tdl_kernel::interp::{ElementwiseArgs, Elems, MoveArgs};
use tdl_kernel::ir::{ElementwiseKernel, EwOp, KernelProgram, MoveKernel};
use tdl_rt::code::Code;
use tdl_rt::elementwise::{LoopSource, LoopSpec, LoopVariant, Step};
use tdl_rt::RtError;

use crate::attention::{float_text, has_lambda, mask_ir, mask_ir_lambda, mask_slots, Ir};
use crate::cache::KernelCache;
use crate::jit;
use crate::lambda::{LambdaCtx, OperandSlot};
use crate::{HostTarget, LlvmError};

/// The entry point of a loop nest's module.
pub(crate) const FN_NAME: &str = "tdl_ew";

/// The value classes of the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ty {
    F,
    I,
    B,
}

impl Ty {
    fn of(d: DType) -> Ty {
        match d {
            DType::Bool => Ty::B,
            DType::I32 => Ty::I,
            _ => Ty::F,
        }
    }

    fn llvm(self) -> &'static str {
        match self {
            Ty::F => "float",
            Ty::I => "i32",
            Ty::B => "i1",
        }
    }
}

/// Where each mask's arrays start among the kernel's (in [`mask_slots`] order).
fn slot_bases(masks: &[&MaskExpr]) -> Vec<usize> {
    let mut at = 0;
    masks
        .iter()
        .map(|m| {
            let b = at;
            at += mask_slots(m).len();
            b
        })
        .collect()
}

/// `i32` from an `f64` constant, as the interpreter converts it: non-finite
/// gives 0, else truncation, wrapped modulo 2³².
fn wrap_i32(v: f64) -> i32 {
    if !v.is_finite() {
        return 0;
    }
    let m = v.trunc().rem_euclid(4_294_967_296.0);
    (m as u64 as u32) as i32
}

fn attrs(host: &HostTarget) -> String {
    host.function_attributes().iter().map(|(k, v)| format!("\"{k}\"=\"{v}\"")).collect::<Vec<_>>().join(" ")
}

/// The module header every kernel of this backend's non-attention kinds
/// shares: the intrinsics they call.
pub(crate) fn prelude() -> String {
    "declare i64 @llvm.smin.i64(i64, i64)\ndeclare i64 @llvm.smax.i64(i64, i64)\n\
     declare i32 @llvm.smax.i32(i32, i32)\ndeclare i32 @llvm.abs.i32(i32, i1)\n\
     declare float @llvm.sqrt.f32(float)\ndeclare float @llvm.fabs.f32(float)\n\
     declare float @llvm.maximum.f32(float, float)\n\n"
        .to_string()
}

/// Ends a module: the math functions if it calls them (only then: they
/// cost compile time), and the attribute groups, `#0` for entry points,
/// `#1` for inlined helpers.
pub(crate) fn finish_module(text: &mut String, host: &HostTarget) {
    if text.contains("@tdl_m_") {
        text.push_str(&crate::math::math_ir());
    }
    // What compiled lambdas call and the prelude does not declare.
    for decl in crate::lambda::DECLARATIONS.lines() {
        let name = decl.split('@').nth(1).and_then(|x| x.split('(').next()).unwrap_or_default();
        if text.contains(&format!("@{name}(")) && !text.contains(&format!("declare float @{name}(")) {
            let _ = writeln!(text, "{}", decl.trim());
        }
    }
    let a = attrs(host);
    let _ = write!(text, "attributes #0 = {{ nounwind {a} }}\nattributes #1 = {{ alwaysinline nounwind {a} }}\n");
}

/// One element of the chain: the value of every instruction at output
/// column `%j` of the row whose operands start at `%p{i}`; the last one's
/// value and class.
fn chain_ir(ir: &mut Ir, spec: &LoopSpec<'_>) -> Option<(String, Ty)> {
    let mut vals: Vec<(String, Ty)> = Vec::with_capacity(spec.body.len());
    for (pc, inst) in spec.body.iter().enumerate() {
        let ty = Ty::of(inst.dtype);
        let arg = |i: usize| -> Option<&(String, Ty)> { vals.get(i).filter(|_| i < pc) };
        let v = match &inst.op {
            EwOp::Load(i) => {
                let &(is_int, step) = spec.variant.inputs.get(*i)?;
                if is_int == (ty == Ty::F) {
                    return None;
                }
                let p = format!("%p{i}");
                let at = match step {
                    Step::Zero => p,
                    Step::One => ir.gep(if is_int { "i32" } else { "float" }, &p, "%j"),
                    Step::Any => {
                        let o = ir.op("mul", "i64", "%j", &format!("%s{i}"));
                        ir.gep(if is_int { "i32" } else { "float" }, &p, &o)
                    }
                };
                match ty {
                    Ty::F => ir.load("float", &at),
                    Ty::I => ir.load("i32", &at),
                    Ty::B => {
                        let x = ir.load("i32", &at);
                        ir.op("icmp ne", "i32", &x, "0")
                    }
                }
            }
            EwOp::Const(c) => match ty {
                Ty::F => float_text(*c as f32),
                Ty::I => wrap_i32(*c).to_string(),
                Ty::B => (if *c != 0.0 { "true" } else { "false" }).to_string(),
            },
            EwOp::Unary(u, a) => {
                let (x, xt) = arg(*a)?.clone();
                if xt != ty {
                    return None;
                }
                match ty {
                    Ty::F => unary_f(ir, *u, &x),
                    Ty::I => match u {
                        UnaryOp::Neg => ir.op("sub", "i32", "0", &x),
                        UnaryOp::Abs => {
                            let t = ir.tmp();
                            ir.line(format!("{t} = call i32 @llvm.abs.i32(i32 {x}, i1 false)"));
                            t
                        }
                        UnaryOp::Relu => {
                            let t = ir.tmp();
                            ir.line(format!("{t} = call i32 @llvm.smax.i32(i32 {x}, i32 0)"));
                            t
                        }
                        _ => return None,
                    },
                    Ty::B => return None,
                }
            }
            EwOp::Binary(b, x, y) => {
                let (x, xt) = arg(*x)?.clone();
                let (y, yt) = arg(*y)?.clone();
                if xt != ty || yt != ty {
                    return None;
                }
                match ty {
                    Ty::F => {
                        let op = match b {
                            BinaryOp::Add => "fadd",
                            BinaryOp::Sub => "fsub",
                            BinaryOp::Mul => "fmul",
                            BinaryOp::Div => "fdiv",
                        };
                        ir.op(op, "float", &x, &y)
                    }
                    Ty::I => match b {
                        BinaryOp::Add => ir.op("add", "i32", &x, &y),
                        BinaryOp::Sub => ir.op("sub", "i32", &x, &y),
                        BinaryOp::Mul => ir.op("mul", "i32", &x, &y),
                        BinaryOp::Div => floor_div_i32(ir, &x, &y),
                    },
                    Ty::B => return None,
                }
            }
            EwOp::Select(c, x, y) => {
                let (c, ct) = arg(*c)?.clone();
                let (x, xt) = arg(*x)?.clone();
                let (y, yt) = arg(*y)?.clone();
                if ct != Ty::B || xt != ty || yt != ty {
                    return None;
                }
                let t = ir.tmp();
                ir.line(format!("{t} = select i1 {c}, {ty} {x}, {ty} {y}", ty = ty.llvm()));
                t
            }
            EwOp::Mask(m) => {
                if ty != Ty::B || *m >= spec.masks.len() {
                    return None;
                }
                // Mask m's own arrays: its slots start at its base.
                let base = slot_bases(&spec.masks)[*m];
                let ops = ir.gep("ptr", "%mops", &base.to_string());
                let cols = ir.gep("i64", "%mcols", &base.to_string());
                let t = ir.tmp();
                ir.line(format!(
                    "{t} = call i1 @tdl_mask{m}(i64 %q, i64 %j, i64 %T, i64 %S, ptr {ops}, ptr {cols}, i64 %h, \
                     ptr %lsyms, ptr %larr, ptr %lshape, ptr %lerr)"
                ));
                t
            }
        };
        vals.push((v, ty));
    }
    vals.last().cloned()
}

fn call(ir: &mut Ir, f: &str, x: &str) -> String {
    let t = ir.tmp();
    ir.line(format!("{t} = call float @{f}(float {x})"));
    t
}

/// `1 / (1 + e^-x)`, as the interpreter computes it.
fn sigmoid(ir: &mut Ir, x: &str) -> String {
    let n = ir.tmp();
    ir.line(format!("{n} = fneg float {x}"));
    let e = call(ir, "tdl_m_exp", &n);
    let d = ir.op("fadd", "float", "1.0", &e);
    ir.op("fdiv", "float", "1.0", &d)
}

fn unary_f(ir: &mut Ir, u: UnaryOp, x: &str) -> String {
    match u {
        UnaryOp::Neg => {
            let t = ir.tmp();
            ir.line(format!("{t} = fneg float {x}"));
            t
        }
        UnaryOp::Abs => call(ir, "llvm.fabs.f32", x),
        UnaryOp::Relu => {
            let neg = ir.op("fcmp olt", "float", x, "0.0");
            let t = ir.tmp();
            ir.line(format!("{t} = select i1 {neg}, float 0.0, float {x}"));
            t
        }
        UnaryOp::Exp => call(ir, "tdl_m_exp", x),
        UnaryOp::Log => call(ir, "tdl_m_log", x),
        UnaryOp::Sqrt => call(ir, "llvm.sqrt.f32", x),
        UnaryOp::Rsqrt => {
            let s = call(ir, "llvm.sqrt.f32", x);
            ir.op("fdiv", "float", "1.0", &s)
        }
        UnaryOp::Tanh => call(ir, "tdl_m_tanh", x),
        UnaryOp::Sigmoid => sigmoid(ir, x),
        UnaryOp::Silu => {
            let s = sigmoid(ir, x);
            ir.op("fmul", "float", x, &s)
        }
        UnaryOp::Gelu => {
            let h = ir.op("fmul", "float", &float_text(0.5), x);
            let a = ir.op("fmul", "float", x, &float_text(std::f32::consts::FRAC_1_SQRT_2));
            let e = call(ir, "tdl_m_erf", &a);
            let one = ir.op("fadd", "float", "1.0", &e);
            ir.op("fmul", "float", &h, &one)
        }
    }
}

/// Floor division of `i32`s with `x / 0 == 0` and `i32::MIN / -1`
/// wrapping (computed in `i64`, truncated), as the interpreter does.
fn floor_div_i32(ir: &mut Ir, x: &str, y: &str) -> String {
    let a = ir.tmp();
    ir.line(format!("{a} = sext i32 {x} to i64"));
    let b = ir.tmp();
    ir.line(format!("{b} = sext i32 {y} to i64"));
    let bz = ir.op("icmp eq", "i64", &b, "0");
    let bs = ir.tmp();
    ir.line(format!("{bs} = select i1 {bz}, i64 1, i64 {b}"));
    let q = ir.op("sdiv", "i64", &a, &bs);
    let r = ir.op("srem", "i64", &a, &bs);
    let rnz = ir.op("icmp ne", "i64", &r, "0");
    let an = ir.op("icmp slt", "i64", &a, "0");
    let bn = ir.op("icmp slt", "i64", &bs, "0");
    let diff = ir.op("xor", "i1", &an, &bn);
    let adj = ir.op("and", "i1", &rnz, &diff);
    let adj64 = ir.tmp();
    ir.line(format!("{adj64} = zext i1 {adj} to i64"));
    let q1 = ir.op("sub", "i64", &q, &adj64);
    let q2 = ir.tmp();
    ir.line(format!("{q2} = select i1 {bz}, i64 0, i64 {q1}"));
    let t = ir.tmp();
    ir.line(format!("{t} = trunc i64 {q2} to i32"));
    t
}

/// The LLVM IR of the loop nest, or `None` when it holds something the
/// code generator does not compile.
fn loop_ir(spec: &LoopSpec<'_>, host: &HostTarget) -> Option<String> {
    let (r, n_in) = (spec.variant.rank, spec.variant.inputs.len());
    if r == 0 || r > 16 || n_in > 64 || spec.body.is_empty() || spec.body.len() > 4096 {
        return None;
    }
    // The row function: one row, columns j0..j1.
    let mut row = Ir::new();
    let cj = row.alloca("i64", 1);
    let mut value = None;
    row.for_range(&cj, "%j0", "%j1", |ir, j| {
        ir.line(format!("%j = add i64 {j}, 0"));
        value = chain_ir(ir, spec);
        // Floats are stored as `float`, integers and booleans (0/1) as `i32`.
        match &value {
            Some((v, Ty::F)) => {
                let po = ir.gep("float", "%o", "%j");
                ir.line(format!("store float {v}, ptr {po}"));
            }
            Some((v, Ty::I)) => {
                let po = ir.gep("i32", "%o", "%j");
                ir.line(format!("store i32 {v}, ptr {po}"));
            }
            Some((v, Ty::B)) => {
                let x = ir.tmp();
                ir.line(format!("{x} = zext i1 {v} to i32"));
                let po = ir.gep("i32", "%o", "%j");
                ir.line(format!("store i32 {x}, ptr {po}"));
            }
            None => {}
        }
    });
    value.as_ref()?;
    row.line("ret void");
    let mut params: Vec<String> = vec!["ptr noalias %o".into()];
    params.extend((0..n_in).map(|i| format!("ptr noalias readonly %p{i}")));
    params.extend((0..n_in).map(|i| format!("i64 %s{i}")));
    params.extend(["i64 %j0", "i64 %j1", "i64 %q", "i64 %T", "i64 %S"].map(String::from));
    params.extend(["ptr noalias readonly %mops", "ptr noalias readonly %mcols"].map(String::from));
    params.extend(["i64 %h", "ptr %lsyms", "ptr %larr", "ptr %lshape", "ptr %lerr"].map(String::from));
    let mut text = prelude();
    // One predicate function per mask, reading its own arrays; index
    // lambdas read the symbol table and their operands (every mask's in
    // turn in the array and dimension tables).
    let symbols = tdl_rt::elementwise::mask_lambda_symbols(&spec.masks);
    let (mut slot, mut dims_at) = (0, 0);
    let mut globals = String::new();
    for (i, m) in spec.masks.iter().enumerate() {
        let mut mi = Ir::new();
        let v = if has_lambda(m) {
            let types = spec.mask_operands.get(i)?;
            let operands: Vec<Option<OperandSlot>> = types
                .iter()
                .map(|&(dtype, rank)| {
                    let o = OperandSlot { dtype, rank, slot, dims_at };
                    slot += 1;
                    dims_at += rank;
                    Some(o)
                })
                .collect();
            let lam = LambdaCtx {
                q: "%q",
                k: "%k",
                h: "%h",
                s: None,
                symbols: &symbols,
                syms: "%lsyms",
                operands: &operands,
                arrays: "%larr",
                shapes: "%lshape",
                err: "%lerr",
            };
            let v = mask_ir_lambda(&mut mi, m, "%q", "%k", "%T", "%S", &lam).ok()?;
            if !mi.metadata().is_empty() {
                return None;
            }
            v
        } else {
            mask_ir(&mut mi, m, "%q", "%k", "%T", "%S").ok()?
        };
        // Constant arrays get names of their own mask.
        let own = format!("@tdl_lconst_m{i}_");
        globals.push_str(&mi.globals.replace("@tdl_lconst", &own));
        let _ = writeln!(
            text,
            "define internal i1 @tdl_mask{i}(i64 %q, i64 %k, i64 %T, i64 %S, ptr %mops, ptr %mcols, i64 %h, \
             ptr %lsyms, ptr %larr, ptr %lshape, ptr %lerr) #1 {{\nentry:\n{}  ret i1 {v}\n}}\n",
            mi.text.replace("@tdl_lconst", &own)
        );
    }
    text.push_str(&globals);
    let _ = writeln!(text, "define internal void @tdl_ew_row({}) #1 {{\nentry:", params.join(", "));
    text.push_str(&row.text);
    text.push_str("}\n\n");

    // The entry: rows row0..row1 of the leading axes (an odometer index).
    let mut ir = Ir::new();
    let lead = r - 1;
    let dims: Vec<String> = (0..r)
        .map(|a| {
            let p = ir.gep("i64", "%shape", &a.to_string());
            ir.load("i64", &p)
        })
        .collect();
    let ptrs: Vec<String> = (0..n_in)
        .map(|i| {
            let p = ir.gep("ptr", "%ins", &i.to_string());
            ir.load("ptr", &p)
        })
        .collect();
    let stride = |ir: &mut Ir, base: &str, k: usize| {
        let p = ir.gep("i64", base, &k.to_string());
        ir.load("i64", &p)
    };
    let in_st: Vec<Vec<String>> =
        (0..n_in).map(|i| (0..r).map(|a| stride(&mut ir, "%ist", i * r + a)).collect()).collect();
    let out_st: Vec<String> = (0..r).map(|a| stride(&mut ir, "%ost", a)).collect();
    let idx: Vec<String> = (0..lead).map(|_| ir.alloca("i64", 1)).collect();
    // Decompose row0 (last leading axis fastest).
    let mut rest = "%row0".to_string();
    for a in (0..lead).rev() {
        let v = ir.op("urem", "i64", &rest, &dims[a]);
        ir.line(format!("store i64 {v}, ptr {}", idx[a]));
        rest = ir.op("udiv", "i64", &rest, &dims[a]);
    }
    let crow = ir.alloca("i64", 1);
    ir.for_range(&crow, "%row0", "%row1", |ir, _| {
        let iv: Vec<String> = idx.iter().map(|p| ir.load("i64", p)).collect();
        let offset = |ir: &mut Ir, st: &[String]| {
            let mut acc = "0".to_string();
            for (i, s) in iv.iter().zip(st) {
                let m = ir.op("mul", "i64", i, s);
                acc = ir.op("add", "i64", &acc, &m);
            }
            acc
        };
        let oo = offset(ir, &out_st);
        let po = ir.gep("float", "%out", &oo);
        let mut args = vec![format!("ptr {po}")];
        for (i, &(is_int, _)) in spec.variant.inputs.iter().enumerate() {
            let off = offset(ir, &in_st[i]);
            let p = ir.gep(if is_int { "i32" } else { "float" }, &ptrs[i], &off);
            args.push(format!("ptr {p}"));
        }
        args.extend((0..n_in).map(|i| format!("i64 {}", in_st[i][r - 1])));
        let q = if r >= 2 { iv[r - 2].clone() } else { "0".into() };
        let t = if r >= 2 { dims[r - 2].clone() } else { "1".into() };
        args.extend(["i64 %j0".to_string(), "i64 %j1".to_string(), format!("i64 {q}"), format!("i64 {t}")]);
        args.push(format!("i64 {}", dims[r - 1]));
        args.extend(["ptr %mops".to_string(), "ptr %mcols".to_string()]);
        // `h`: the index along axis -3 (0 below rank 3), as the interpreter's.
        let h = if r >= 3 { iv[r - 3].clone() } else { "0".into() };
        args.push(format!("i64 {h}"));
        args.extend(["ptr %lsyms", "ptr %larr", "ptr %lshape", "ptr %lerr"].map(String::from));
        ir.line(format!("call void @tdl_ew_row({})", args.join(", ")));
        // idx += 1, carrying.
        if lead > 0 {
            let done = ir.label("carried");
            for a in (0..lead).rev() {
                let v = ir.load("i64", &idx[a]);
                let v1 = ir.op("add", "i64", &v, "1");
                let wraps = ir.op("icmp eq", "i64", &v1, &dims[a]);
                let (keep, next) = (ir.label("keep"), ir.label("carry"));
                ir.line(format!("br i1 {wraps}, label %{next}, label %{keep}"));
                ir.block(&keep);
                ir.line(format!("store i64 {v1}, ptr {}", idx[a]));
                ir.line(format!("br label %{done}"));
                ir.block(&next);
                ir.line(format!("store i64 0, ptr {}", idx[a]));
            }
            ir.line(format!("br label %{done}"));
            ir.block(&done);
        }
    });
    ir.line("ret void");
    let _ = writeln!(
        text,
        "define void @{FN_NAME}(ptr noalias readonly %ins, ptr noalias readonly %ist, ptr noalias %out, \
         ptr noalias readonly %ost, ptr noalias readonly %shape, i64 %row0, i64 %row1, i64 %j0, i64 %j1, \
         ptr noalias readonly %mops, ptr noalias readonly %mcols, ptr noalias readonly %lsyms, \
         ptr noalias readonly %larr, ptr noalias readonly %lshape, ptr %lerr) #0 {{\nentry:"
    );
    text.push_str(&ir.text);
    text.push_str("}\n\n");
    finish_module(&mut text, host);
    Some(text)
}

/// The JIT's loop nests: generated for the spec and compiled on demand
/// through the cache (keyed by the IR text).
struct JitLoops<'a> {
    host: &'a HostTarget,
    cache: &'a KernelCache,
}

impl LoopSource for JitLoops<'_> {
    fn loop_fn(&self, spec: &LoopSpec<'_>) -> Option<Result<Code, RtError>> {
        let text = loop_ir(spec, self.host)?;
        Some(match self.cache.get(&text, "tdl_elementwise", FN_NAME, self.host) {
            // SAFETY: `loop_ir` generated a `LoopFn` for exactly `spec`; the
            // cache entry keeps its code alive.
            Ok(c) => Ok(unsafe { Code::new(c.addr, Some(c as Arc<_>)) }),
            Err(e) => Err(RtError::new(e.to_string())),
        })
    }
}

/// Runs an elementwise kernel, or `None` when the code generator does not
/// support it (the interpreter runs it then).
pub fn run_elementwise(
    k: &ElementwiseKernel,
    args: &ElementwiseArgs<'_>,
    host: &HostTarget,
    cache: &KernelCache,
    threads: usize,
) -> Option<Result<Vec<f32>, LlvmError>> {
    let r = tdl_rt::elementwise::run_elementwise(k, args, threads, &JitLoops { host, cache })?;
    Some(r.map_err(LlvmError::from))
}

/// [`run_elementwise`] for a chain writing `i32` or `bool` (0/1) values.
pub fn run_elementwise_i32(
    k: &ElementwiseKernel,
    args: &ElementwiseArgs<'_>,
    host: &HostTarget,
    cache: &KernelCache,
    threads: usize,
) -> Option<Result<Vec<i32>, LlvmError>> {
    let r = tdl_rt::elementwise::run_elementwise_i32(k, args, threads, &JitLoops { host, cache })?;
    Some(r.map_err(LlvmError::from))
}

/// Runs a data-movement kernel, or `None` when the code generator does not
/// support it.
pub fn run_move(
    k: &MoveKernel,
    args: &MoveArgs<'_>,
    host: &HostTarget,
    cache: &KernelCache,
    threads: usize,
) -> Option<Result<Vec<f32>, LlvmError>> {
    let r = tdl_rt::elementwise::run_move(k, args, threads, &JitLoops { host, cache })?;
    Some(r.map_err(LlvmError::from))
}

/// The LLVM IR text of the loop nest of `variant` for elementwise kernel
/// `k` of `p` (a move's copy chain with `k = None`), or `None` when the
/// code generator does not compile it: what an artifact compiles.
pub(crate) fn variant_ir(
    p: &KernelProgram,
    k: Option<&ElementwiseKernel>,
    variant: &LoopVariant,
    host: &HostTarget,
) -> Option<String> {
    let (body, masks, mask_operands) = match k {
        Some(k) => {
            // The masks' operands as the program types them.
            let ops = k
                .masks
                .iter()
                .map(|m| m.operands.iter().map(|&b| p.buffer(b).map(|b| (b.dtype, b.shape.len()))).collect())
                .collect::<Option<Vec<Vec<_>>>>()?;
            (&k.body[..], k.masks.iter().map(|m| &m.expr).collect(), ops)
        }
        None => (tdl_rt::elementwise::COPY_BODY, Vec::new(), Vec::new()),
    };
    loop_ir(&LoopSpec { variant: variant.clone(), body, masks, mask_operands }, host)
}

/// The optimised LLVM IR of an elementwise kernel's loop nest for the host
/// (to inspect what LLVM made of it), or `None` when it is not supported.
pub fn elementwise_llvm_text(k: &ElementwiseKernel, args: &ElementwiseArgs<'_>) -> Result<Option<String>, LlvmError> {
    let host = HostTarget::detect()?;
    let shape = args.shape.to_vec();
    let inputs: Vec<(bool, Step)> = args
        .inputs
        .iter()
        .map(|v| (matches!(v.data, Elems::I32(_)), Step::of(v.strides.last().copied().unwrap_or(0))))
        .collect();
    let masks: Vec<&MaskExpr> = k.masks.iter().map(|m| &m.expr).collect();
    let mask_operands =
        args.masks.iter().map(|d| d.operands.iter().map(|o| (o.dtype, o.shape.len())).collect()).collect();
    let spec =
        LoopSpec { variant: LoopVariant { rank: shape.len().max(1), inputs }, body: &k.body, masks, mask_operands };
    let Some(text) = loop_ir(&spec, &host) else { return Ok(None) };
    let ctx = inkwell::context::Context::create();
    let module = jit::optimised_module(&ctx, &text, "tdl_elementwise", &host)?;
    Ok(Some(module.print_to_string().to_string()))
}
