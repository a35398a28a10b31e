//! Index lambdas and score modifiers compiled to LLVM IR: the scalar lambda
//! language ([`ScalarExpr`]) with the semantics of its one evaluator,
//! `tdl_ir::eval`, in `f32`/`i64` as the Kernel IR interpreter runs it.
//!
//! Types are static: `q`, `k`, `h` and dimension symbols are `i64`, `s`
//! and float literals `float`, comparisons `i1`; array reads take the
//! element type of the array (`i32` → `i64`, `bool` → `i1`, floats →
//! `float`, read from the `f64` values every buffer of the executor holds).
//! Integer arithmetic wraps; `/` and `%` are floor division and modulo with
//! `x / 0 == 0` and `x % 0 == x`; a float on either side makes an operation
//! a float one; float `%` is floor modulo; `min`/`max` ignore a NaN as
//! Rust's do; `exp`, `log`, `tanh` are the polynomials of [`crate::math`].
//! `where` is lazy (control flow: only the branch taken runs), as are the
//! mask combinators around a lambda.
//!
//! An array index out of range sets the function's error flag (`*err = 1`)
//! and reads nothing; the runtime turns the flag into the interpreter's
//! error. What the static types cannot express (a `where` whose branches
//! differ in type, a score `s` in a mask, operations the checker would
//! have refused) is declined as "not supported yet", and the interpreter
//! runs the kernel.

use std::fmt::Write as _;

use tdl_ir::{ArrayRef, DType, LambdaVar, ScalarBinary, ScalarExpr, ScalarUnary};

use crate::attention::{float_text, Ir};
use crate::LlvmError;

/// The static type of a lambda value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ty {
    Int,
    Float,
    Bool,
}

impl Ty {
    pub(crate) fn llvm(self) -> &'static str {
        match self {
            Ty::Int => "i64",
            Ty::Float => "float",
            Ty::Bool => "i1",
        }
    }

    fn of(d: DType) -> Ty {
        match d {
            DType::I32 => Ty::Int,
            DType::Bool => Ty::Bool,
            _ => Ty::Float,
        }
    }
}

/// Where an operand array of the lambda lives at run time: its element type
/// and rank (fixed at compile time), its pointer's position in the
/// function's array table and where its dimensions start in the shape
/// table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OperandSlot {
    pub(crate) dtype: DType,
    pub(crate) rank: usize,
    pub(crate) slot: usize,
    pub(crate) dims_at: usize,
}

/// What a lambda sees in the generated function.
#[derive(Clone, Copy)]
pub(crate) struct LambdaCtx<'a> {
    /// `i64` values of `q`, `k`, `h`.
    pub(crate) q: &'a str,
    pub(crate) k: &'a str,
    pub(crate) h: &'a str,
    /// The score (`float`), in score modifiers only.
    pub(crate) s: Option<&'a str>,
    /// The dimension symbols, in the order of the `i64` table `syms`.
    pub(crate) symbols: &'a [String],
    pub(crate) syms: &'a str,
    /// The operands by position (`None`: not a tensor the lambda may read).
    pub(crate) operands: &'a [Option<OperandSlot>],
    /// A table of `ptr` to each operand's `f64` values.
    pub(crate) arrays: &'a str,
    /// A table of `i64` dimensions.
    pub(crate) shapes: &'a str,
    /// A `ptr` to the `i32` error flag.
    pub(crate) err: &'a str,
}

fn unsupported(what: impl std::fmt::Display) -> LlvmError {
    LlvmError::Unsupported(format!("{what} in a compiled lambda"))
}

/// `e` as IR in `ctx`: its value and type.
pub(crate) fn lambda_ir(ir: &mut Ir, e: &ScalarExpr, ctx: &LambdaCtx<'_>) -> Result<(String, Ty), LlvmError> {
    Ok(match e {
        ScalarExpr::Var(LambdaVar::Q) => (ctx.q.to_string(), Ty::Int),
        ScalarExpr::Var(LambdaVar::K) => (ctx.k.to_string(), Ty::Int),
        ScalarExpr::Var(LambdaVar::H) => (ctx.h.to_string(), Ty::Int),
        ScalarExpr::Var(LambdaVar::S) => match ctx.s {
            Some(s) => (s.to_string(), Ty::Float),
            None => return Err(unsupported("the score `s` outside a score modifier")),
        },
        ScalarExpr::Int(i) => (i.to_string(), Ty::Int),
        ScalarExpr::Float(f) => (float_text(*f as f32), Ty::Float),
        ScalarExpr::Bool(b) => (b.to_string(), Ty::Bool),
        ScalarExpr::Sym(name) => {
            let Some(i) = ctx.symbols.iter().position(|s| s == name) else {
                return Err(LlvmError::Internal(format!("the symbol `{name}` has no slot")));
            };
            let p = ir.gep("i64", ctx.syms, &i.to_string());
            (ir.load("i64", &p), Ty::Int)
        }
        ScalarExpr::Index { array, indices } => {
            let mut idx = Vec::with_capacity(indices.len());
            for i in indices {
                let (v, t) = lambda_ir(ir, i, ctx)?;
                if t != Ty::Int {
                    return Err(unsupported("an array index that is not an integer"));
                }
                idx.push(v);
            }
            read_array(ir, array, &idx, ctx)?
        }
        ScalarExpr::Unary(op, a) => {
            let (x, t) = lambda_ir(ir, a, ctx)?;
            unary(ir, *op, &x, t)?
        }
        ScalarExpr::Binary(op, a, b) => {
            let (x, tx) = lambda_ir(ir, a, ctx)?;
            let (y, ty) = lambda_ir(ir, b, ctx)?;
            binary(ir, *op, (&x, tx), (&y, ty))?
        }
        ScalarExpr::Select(c, a, b) => {
            let (cv, ct) = lambda_ir(ir, c, ctx)?;
            if ct != Ty::Bool {
                return Err(unsupported("a `where` condition that is not a boolean"));
            }
            let (then_l, else_l, end_l) = (ir.label("lw_then"), ir.label("lw_else"), ir.label("lw_end"));
            ir.line(format!("br i1 {cv}, label %{then_l}, label %{else_l}"));
            ir.block(&then_l);
            let (x, tx) = lambda_ir(ir, a, ctx)?;
            let from_then = ir.label("lw_t");
            ir.line(format!("br label %{from_then}"));
            ir.block(&from_then);
            ir.line(format!("br label %{end_l}"));
            ir.block(&else_l);
            let (y, ty) = lambda_ir(ir, b, ctx)?;
            let from_else = ir.label("lw_e");
            ir.line(format!("br label %{from_else}"));
            ir.block(&from_else);
            ir.line(format!("br label %{end_l}"));
            if tx != ty {
                return Err(unsupported("a `where` whose branches differ in type"));
            }
            ir.block(&end_l);
            let r = ir.tmp();
            ir.line(format!("{r} = phi {} [ {x}, %{from_then} ], [ {y}, %{from_else} ]", tx.llvm()));
            (r, tx)
        }
    })
}

/// Element `idx` of `array`, or the error flag set and a zero when an
/// index is out of range (nothing is read then).
fn read_array(ir: &mut Ir, array: &ArrayRef, idx: &[String], ctx: &LambdaCtx<'_>) -> Result<(String, Ty), LlvmError> {
    // The base pointer and each dimension (constants for a constant array).
    let (base, dims, dtype): (String, Vec<String>, DType) = match array {
        ArrayRef::Const(c) => {
            let name = format!("@tdl_lconst{}", ir.label(""));
            let vals: Vec<String> = c.data.iter().map(|v| format!("double 0x{:016X}", v.to_bits())).collect();
            let _ = writeln!(
                ir.globals,
                "{name} = private unnamed_addr constant [{} x double] [{}]",
                c.data.len(),
                vals.join(", ")
            );
            if c.data.len() != c.shape.iter().product::<usize>() {
                return Err(LlvmError::Internal("a constant array's data does not match its shape".into()));
            }
            (name, c.shape.iter().map(|d| d.to_string()).collect(), c.dtype)
        }
        ArrayRef::Operand(i) => {
            let Some(Some(op)) = ctx.operands.get(*i) else {
                return Err(unsupported(format!("a read of operand {i}, which is not a tensor operand")));
            };
            let pp = ir.gep("ptr", ctx.arrays, &op.slot.to_string());
            let base = ir.load("ptr", &pp);
            let dims = (0..op.rank)
                .map(|a| {
                    let p = ir.gep("i64", ctx.shapes, &(op.dims_at + a).to_string());
                    ir.load("i64", &p)
                })
                .collect();
            (base, dims, op.dtype)
        }
    };
    if dims.len() != idx.len() {
        return Err(unsupported(format!("an array of rank {} read with {} indices", dims.len(), idx.len())));
    }
    let ty = Ty::of(dtype);
    // In range on every axis (unsigned compare: negatives are huge), and
    // the row-major flat index.
    let mut ok = "true".to_string();
    let mut flat = "0".to_string();
    for (i, d) in idx.iter().zip(&dims) {
        let inr = ir.op("icmp ult", "i64", i, d);
        ok = ir.op("and", "i1", &ok, &inr);
        let f = ir.op("mul", "i64", &flat, d);
        flat = ir.op("add", "i64", &f, i);
    }
    let (read_l, bad_l, end_l) = (ir.label("la_read"), ir.label("la_bad"), ir.label("la_end"));
    ir.line(format!("br i1 {ok}, label %{read_l}, label %{bad_l}"));
    ir.block(&read_l);
    let p = ir.gep("double", &base, &flat);
    let x = ir.load("double", &p);
    let v = ir.tmp();
    match ty {
        Ty::Int => ir.line(format!("{v} = fptosi double {x} to i64")),
        Ty::Float => ir.line(format!("{v} = fptrunc double {x} to float")),
        Ty::Bool => ir.line(format!("{v} = fcmp une double {x}, 0.0")),
    }
    ir.line(format!("br label %{end_l}"));
    ir.block(&bad_l);
    ir.line(format!("store i32 1, ptr {}", ctx.err));
    ir.line(format!("br label %{end_l}"));
    ir.block(&end_l);
    let zero = match ty {
        Ty::Int => "0",
        Ty::Float => "0.0",
        Ty::Bool => "false",
    };
    let r = ir.tmp();
    ir.line(format!("{r} = phi {} [ {v}, %{read_l} ], [ {zero}, %{bad_l} ]", ty.llvm()));
    Ok((r, ty))
}

/// `x` as a float (integers converted; booleans refused).
fn to_float(ir: &mut Ir, x: &str, t: Ty) -> Result<String, LlvmError> {
    match t {
        Ty::Float => Ok(x.to_string()),
        Ty::Int => {
            let v = ir.tmp();
            ir.line(format!("{v} = sitofp i64 {x} to float"));
            Ok(v)
        }
        Ty::Bool => Err(unsupported("arithmetic on a boolean")),
    }
}

fn call_f(ir: &mut Ir, f: &str, x: &str) -> String {
    let t = ir.tmp();
    ir.line(format!("{t} = call float @{f}(float {x})"));
    t
}

fn unary(ir: &mut Ir, op: ScalarUnary, x: &str, t: Ty) -> Result<(String, Ty), LlvmError> {
    Ok(match (op, t) {
        (ScalarUnary::Not, Ty::Bool) => (ir.op("xor", "i1", x, "true"), Ty::Bool),
        (ScalarUnary::Not, _) | (_, Ty::Bool) => return Err(unsupported(format!("`{}` of {t:?}", op.name()))),
        (ScalarUnary::Neg, Ty::Int) => (ir.op("sub", "i64", "0", x), Ty::Int),
        (ScalarUnary::Abs, Ty::Int) => {
            let n = ir.op("sub", "i64", "0", x);
            let neg = ir.op("icmp slt", "i64", x, "0");
            let r = ir.tmp();
            ir.line(format!("{r} = select i1 {neg}, i64 {n}, i64 {x}"));
            (r, Ty::Int)
        }
        _ => {
            let f = to_float(ir, x, t)?;
            let r = match op {
                ScalarUnary::Neg => {
                    let r = ir.tmp();
                    ir.line(format!("{r} = fneg float {f}"));
                    r
                }
                ScalarUnary::Abs => call_f(ir, "llvm.fabs.f32", &f),
                ScalarUnary::Exp => call_f(ir, "tdl_m_exp", &f),
                ScalarUnary::Log => call_f(ir, "tdl_m_log", &f),
                ScalarUnary::Sqrt => call_f(ir, "llvm.sqrt.f32", &f),
                ScalarUnary::Tanh => call_f(ir, "tdl_m_tanh", &f),
                ScalarUnary::Sigmoid => {
                    let n = ir.tmp();
                    ir.line(format!("{n} = fneg float {f}"));
                    let e = call_f(ir, "tdl_m_exp", &n);
                    let d = ir.op("fadd", "float", "1.0", &e);
                    ir.op("fdiv", "float", "1.0", &d)
                }
                ScalarUnary::Not => unreachable!("handled above"),
            };
            (r, Ty::Float)
        }
    })
}

fn select(ir: &mut Ir, c: &str, ty: &str, a: &str, b: &str) -> String {
    let r = ir.tmp();
    ir.line(format!("{r} = select i1 {c}, {ty} {a}, {ty} {b}"));
    r
}

/// Floor division with `x / 0 == 0` (wrapping: `MIN / -1 == MIN`).
fn int_div(ir: &mut Ir, x: &str, y: &str) -> String {
    let zero = ir.op("icmp eq", "i64", y, "0");
    // Avoid the traps: divide by 1 when y == 0 or (x, y) == (MIN, -1).
    let m1 = ir.op("icmp eq", "i64", y, "-1");
    let ys = select(ir, &zero, "i64", "1", y);
    let ys = select(ir, &m1, "i64", "1", &ys);
    let q0 = ir.op("sdiv", "i64", x, &ys);
    let neg_x = ir.op("sub", "i64", "0", x);
    let q = select(ir, &m1, "i64", &neg_x, &q0);
    let r = ir.op("srem", "i64", x, &ys);
    let rnz = ir.op("icmp ne", "i64", &r, "0");
    let sx = ir.op("icmp slt", "i64", x, "0");
    let sy = ir.op("icmp slt", "i64", y, "0");
    let diff = ir.op("xor", "i1", &sx, &sy);
    let adj = ir.op("and", "i1", &rnz, &diff);
    let nm1 = ir.op("xor", "i1", &m1, "true");
    let adj = ir.op("and", "i1", &adj, &nm1);
    let qm = ir.op("sub", "i64", &q, "1");
    let q = select(ir, &adj, "i64", &qm, &q);
    select(ir, &zero, "i64", "0", &q)
}

/// Floor modulo with `x % 0 == x`: the sign of `y`.
fn int_mod(ir: &mut Ir, x: &str, y: &str) -> String {
    let zero = ir.op("icmp eq", "i64", y, "0");
    let m1 = ir.op("icmp eq", "i64", y, "-1");
    let bad = ir.op("or", "i1", &zero, &m1);
    let ys = select(ir, &bad, "i64", "1", y);
    let r = ir.op("srem", "i64", x, &ys);
    let rnz = ir.op("icmp ne", "i64", &r, "0");
    let sr = ir.op("icmp slt", "i64", &r, "0");
    let sy = ir.op("icmp slt", "i64", y, "0");
    let diff = ir.op("xor", "i1", &sr, &sy);
    let adj = ir.op("and", "i1", &rnz, &diff);
    let ry = ir.op("add", "i64", &r, y);
    let r = select(ir, &adj, "i64", &ry, &r);
    // x % -1 == 0; x % 0 == x.
    let r = select(ir, &m1, "i64", "0", &r);
    select(ir, &zero, "i64", x, &r)
}

fn binary(ir: &mut Ir, op: ScalarBinary, (x, tx): (&str, Ty), (y, ty): (&str, Ty)) -> Result<(String, Ty), LlvmError> {
    use ScalarBinary as B;
    let cmp_i = |op: B| match op {
        B::Lt => "icmp slt",
        B::Le => "icmp sle",
        B::Gt => "icmp sgt",
        B::Ge => "icmp sge",
        B::Eq => "icmp eq",
        _ => "icmp ne",
    };
    Ok(match (tx, ty) {
        (Ty::Bool, Ty::Bool) => match op {
            B::And => (ir.op("and", "i1", x, y), Ty::Bool),
            B::Or => (ir.op("or", "i1", x, y), Ty::Bool),
            B::Eq => (ir.op("icmp eq", "i1", x, y), Ty::Bool),
            B::Ne => (ir.op("icmp ne", "i1", x, y), Ty::Bool),
            _ => return Err(unsupported(format!("{op:?} of two booleans"))),
        },
        _ if matches!(op, B::And | B::Or) => return Err(unsupported(format!("{op:?} of numbers"))),
        (Ty::Bool, _) | (_, Ty::Bool) => return Err(unsupported(format!("{op:?} of a boolean and a number"))),
        (Ty::Int, Ty::Int) => match op {
            B::Add => (ir.op("add", "i64", x, y), Ty::Int),
            B::Sub => (ir.op("sub", "i64", x, y), Ty::Int),
            B::Mul => (ir.op("mul", "i64", x, y), Ty::Int),
            B::Div => (int_div(ir, x, y), Ty::Int),
            B::Mod => (int_mod(ir, x, y), Ty::Int),
            B::Min => {
                let c = ir.op("icmp slt", "i64", x, y);
                (select(ir, &c, "i64", x, y), Ty::Int)
            }
            B::Max => {
                let c = ir.op("icmp sgt", "i64", x, y);
                (select(ir, &c, "i64", x, y), Ty::Int)
            }
            _ => (ir.op(cmp_i(op), "i64", x, y), Ty::Bool),
        },
        _ => {
            let (a, b) = (to_float(ir, x, tx)?, to_float(ir, y, ty)?);
            match op {
                B::Add => (ir.op("fadd", "float", &a, &b), Ty::Float),
                B::Sub => (ir.op("fsub", "float", &a, &b), Ty::Float),
                B::Mul => (ir.op("fmul", "float", &a, &b), Ty::Float),
                B::Div => (ir.op("fdiv", "float", &a, &b), Ty::Float),
                B::Mod => {
                    let r = ir.op("frem", "float", &a, &b);
                    let rnz = ir.op("fcmp une", "float", &r, "0.0");
                    let sr = ir.op("fcmp olt", "float", &r, "0.0");
                    let sb = ir.op("fcmp olt", "float", &b, "0.0");
                    let diff = ir.op("xor", "i1", &sr, &sb);
                    let adj = ir.op("and", "i1", &rnz, &diff);
                    let rb = ir.op("fadd", "float", &r, &b);
                    (select(ir, &adj, "float", &rb, &r), Ty::Float)
                }
                B::Min => {
                    let t = ir.tmp();
                    ir.line(format!("{t} = call float @llvm.minnum.f32(float {a}, float {b})"));
                    (t, Ty::Float)
                }
                B::Max => {
                    let t = ir.tmp();
                    ir.line(format!("{t} = call float @llvm.maxnum.f32(float {a}, float {b})"));
                    (t, Ty::Float)
                }
                B::Lt => (ir.op("fcmp olt", "float", &a, &b), Ty::Bool),
                B::Le => (ir.op("fcmp ole", "float", &a, &b), Ty::Bool),
                B::Gt => (ir.op("fcmp ogt", "float", &a, &b), Ty::Bool),
                B::Ge => (ir.op("fcmp oge", "float", &a, &b), Ty::Bool),
                B::Eq => (ir.op("fcmp oeq", "float", &a, &b), Ty::Bool),
                B::Ne => (ir.op("fcmp une", "float", &a, &b), Ty::Bool),
                B::And | B::Or => unreachable!("handled above"),
            }
        }
    })
}

/// The declarations lambda code may call (besides `crate::math`'s).
pub(crate) const DECLARATIONS: &str =
    "declare float @llvm.minnum.f32(float, float)\ndeclare float @llvm.fabs.f32(float)\n\
                                       declare float @llvm.sqrt.f32(float)\n";
