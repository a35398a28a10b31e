//! Index lambdas and score modifiers ([`ScalarExpr`]) compiled to `arith`
//! and `scf`, with the semantics of the language's one evaluator,
//! `tdl_ir::eval`, in `f32`/`i64` as the Kernel IR interpreter runs it.
//!
//! Types are static: `q`, `k`, `h` and dimension symbols are `i64`, the
//! score `s` and float literals `f32`, comparisons `i1`; an array read
//! takes the array's element type (`i32` → `i64`, `bool` → `i1`, floats →
//! `f32`). Integer arithmetic wraps; `/` and `%` are floor division and
//! modulo with `x / 0 == 0` and `x % 0 == x` (no trapping division is ever
//! executed); a float on either side makes an operation a float one; float
//! `%` is floor modulo; `min`/`max` on floats ignore a NaN (`minnumf`);
//! `exp`, `log`, `tanh`, `sigmoid` are [`Emit`]'s formulas from `arith`
//! and `llvm.exp2.f32` (no libdevice call). `where` is lazy (`scf.if`:
//! only the branch taken runs), `&` and `|` inside a lambda are not (the
//! evaluator evaluates both sides).
//!
//! Array reads go through [`Extras`]: symbols become `i64` parameters,
//! arrays (constants and operands alike) memref parameters, and an index
//! out of range stores 1 in the kernel's error flag (`%err`, a
//! `memref<1xi32>`) and reads nothing. What the static types cannot
//! express (a `where` whose branches differ in type, `s` outside a score
//! modifier, operations the checker refuses) is "not supported yet".

use tdl_ir::{ArrayRef, DType, LambdaVar, ScalarBinary, ScalarExpr, ScalarUnary, UnaryOp};

use crate::elementwise::Emit;
use crate::mask::{ArraySrc, Extras};
use crate::wrap::f32_lit;
use crate::MlirError;

/// The static type of a lambda value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ty {
    Int,
    Float,
    Bool,
}

impl Ty {
    pub(crate) fn mlir(self) -> &'static str {
        match self {
            Ty::Int => "i64",
            Ty::Float => "f32",
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

    fn zero(self) -> &'static str {
        match self {
            Ty::Int => "arith.constant 0 : i64",
            Ty::Float => "arith.constant 0.0 : f32",
            Ty::Bool => "arith.constant false",
        }
    }
}

/// What a lambda sees: `i64` values of `q`, `k`, `h`, the `f32` score in a
/// score modifier, and the operand group its `ArrayRef::Operand`s index.
pub(crate) struct LamCtx<'a> {
    pub q: &'a str,
    pub k: &'a str,
    pub h: &'a str,
    pub s: Option<&'a str>,
    pub group: usize,
}

pub(crate) fn unsupported(what: impl std::fmt::Display) -> MlirError {
    MlirError::Unsupported(format!("{what} in a GPU lambda"))
}

/// `e` compiled at the end of `em`: its value and type.
pub(crate) fn lambda(
    em: &mut Emit,
    e: &ScalarExpr,
    cx: &LamCtx<'_>,
    x: &mut Extras,
) -> Result<(String, Ty), MlirError> {
    Ok(match e {
        ScalarExpr::Var(LambdaVar::Q) => (cx.q.to_string(), Ty::Int),
        ScalarExpr::Var(LambdaVar::K) => (cx.k.to_string(), Ty::Int),
        ScalarExpr::Var(LambdaVar::H) => {
            x.heads = true;
            (cx.h.to_string(), Ty::Int)
        }
        ScalarExpr::Var(LambdaVar::S) => match cx.s {
            Some(s) => (s.to_string(), Ty::Float),
            None => return Err(unsupported("the score `s` outside a score modifier")),
        },
        ScalarExpr::Int(i) => (em.v(format!("arith.constant {i} : i64")), Ty::Int),
        ScalarExpr::Float(f) => (em.f(*f as f32), Ty::Float),
        ScalarExpr::Bool(b) => (em.v(format!("arith.constant {b}")), Ty::Bool),
        ScalarExpr::Sym(name) => (x.symbol(name), Ty::Int),
        ScalarExpr::Index { array, indices } => {
            let mut idx = Vec::with_capacity(indices.len());
            for i in indices {
                let (v, t) = lambda(em, i, cx, x)?;
                if t != Ty::Int {
                    return Err(unsupported("an array index that is not an integer"));
                }
                idx.push(v);
            }
            read_array(em, array, &idx, cx, x)?
        }
        ScalarExpr::Unary(op, a) => {
            let (v, t) = lambda(em, a, cx, x)?;
            unary(em, *op, &v, t)?
        }
        ScalarExpr::Binary(op, a, b) => {
            let (va, ta) = lambda(em, a, cx, x)?;
            let (vb, tb) = lambda(em, b, cx, x)?;
            binary(em, *op, (&va, ta), (&vb, tb))?
        }
        ScalarExpr::Select(c, a, b) => {
            let (cv, ct) = lambda(em, c, cx, x)?;
            if ct != Ty::Bool {
                return Err(unsupported("a `where` condition that is not a boolean"));
            }
            let mut ea = em.fork();
            let (va, ta) = lambda(&mut ea, a, cx, x)?;
            let mut eb = ea.fork();
            let (vb, tb) = lambda(&mut eb, b, cx, x)?;
            if ta != tb {
                return Err(unsupported("a `where` whose branches differ in type"));
            }
            em.resume(&eb);
            let r = em.v(format!("scf.if {cv} -> ({}) {{", ta.mlir()));
            em.s.push_str(&ea.s);
            em.line(format!("scf.yield {va} : {}", ta.mlir()));
            em.line("} else {");
            em.s.push_str(&eb.s);
            em.line(format!("scf.yield {vb} : {}", tb.mlir()));
            em.line("}");
            (r, ta)
        }
    })
}

/// Element `idx` of `array`, or the error flag set and a zero when an
/// index is out of range on some axis (nothing is read then).
fn read_array(
    em: &mut Emit,
    array: &ArrayRef,
    idx: &[String],
    cx: &LamCtx<'_>,
    x: &mut Extras,
) -> Result<(String, Ty), MlirError> {
    let (src, dtype, rank) = match array {
        ArrayRef::Const(c) => {
            if c.data.len() != c.shape.iter().product::<usize>() {
                return Err(MlirError::BadPlan("a constant array's data does not match its shape".into()));
            }
            (ArraySrc::Const(c.clone()), c.dtype, c.shape.len())
        }
        ArrayRef::Operand(i) => {
            let Some((dtype, rank)) = x.operand_type(cx.group, *i) else {
                return Err(unsupported(format!("a read of operand {i}, which is not a tensor operand")));
            };
            (ArraySrc::Operand { group: cx.group, index: *i }, dtype, rank)
        }
    };
    if rank != idx.len() {
        return Err(unsupported(format!("an array of rank {rank} read with {} indices", idx.len())));
    }
    let (name, mty) = x.array(src, dtype, rank);
    x.err = true;
    let ty = Ty::of(dtype);
    // In range on every axis (unsigned: negatives are huge).
    let mut ok = em.v("arith.constant true");
    for (a, i) in idx.iter().enumerate() {
        let ax = em.v(format!("arith.constant {a} : index"));
        let d = em.v(format!("memref.dim {name}, {ax} : {mty}"));
        let d64 = em.v(format!("arith.index_cast {d} : index to i64"));
        let inr = em.v(format!("arith.cmpi ult, {i}, {d64} : i64"));
        ok = em.v(format!("arith.andi {ok}, {inr} : i1"));
    }
    let r = em.v(format!("scf.if {ok} -> ({}) {{", ty.mlir()));
    let at: Vec<String> = idx.iter().map(|i| em.v(format!("arith.index_cast {i} : i64 to index"))).collect();
    let raw = em.v(format!("memref.load {name}[{}] : {mty}", at.join(", ")));
    let v = match ty {
        Ty::Int => em.v(format!("arith.extsi {raw} : i32 to i64")),
        Ty::Bool => {
            let z = em.v("arith.constant 0 : i32");
            em.v(format!("arith.cmpi ne, {raw}, {z} : i32"))
        }
        Ty::Float => raw,
    };
    em.line(format!("scf.yield {v} : {}", ty.mlir()));
    em.line("} else {");
    let one = em.v("arith.constant 1 : i32");
    let c0 = em.v("arith.constant 0 : index");
    em.line(format!("memref.store {one}, %err[{c0}] : memref<1xi32>"));
    let z = em.v(ty.zero());
    em.line(format!("scf.yield {z} : {}", ty.mlir()));
    em.line("}");
    Ok((r, ty))
}

/// `x` as a float (integers converted; booleans refused).
fn to_float(em: &mut Emit, v: &str, t: Ty) -> Result<String, MlirError> {
    match t {
        Ty::Float => Ok(v.to_string()),
        Ty::Int => Ok(em.v(format!("arith.sitofp {v} : i64 to f32"))),
        Ty::Bool => Err(unsupported("arithmetic on a boolean")),
    }
}

fn unary(em: &mut Emit, op: ScalarUnary, v: &str, t: Ty) -> Result<(String, Ty), MlirError> {
    Ok(match (op, t) {
        (ScalarUnary::Not, Ty::Bool) => {
            let tr = em.v("arith.constant true");
            (em.v(format!("arith.xori {v}, {tr} : i1")), Ty::Bool)
        }
        (ScalarUnary::Not, _) | (_, Ty::Bool) => return Err(unsupported(format!("`{}` of {t:?}", op.name()))),
        (ScalarUnary::Neg, Ty::Int) => {
            let z = em.v("arith.constant 0 : i64");
            (em.v(format!("arith.subi {z}, {v} : i64")), Ty::Int)
        }
        (ScalarUnary::Abs, Ty::Int) => {
            let z = em.v("arith.constant 0 : i64");
            let n = em.v(format!("arith.subi {z}, {v} : i64"));
            let neg = em.v(format!("arith.cmpi slt, {v}, {z} : i64"));
            (em.v(format!("arith.select {neg}, {n}, {v} : i64")), Ty::Int)
        }
        _ => {
            let f = to_float(em, v, t)?;
            let u = match op {
                ScalarUnary::Neg => UnaryOp::Neg,
                ScalarUnary::Abs => UnaryOp::Abs,
                ScalarUnary::Exp => UnaryOp::Exp,
                ScalarUnary::Log => UnaryOp::Log,
                ScalarUnary::Sqrt => UnaryOp::Sqrt,
                ScalarUnary::Tanh => UnaryOp::Tanh,
                ScalarUnary::Sigmoid => UnaryOp::Sigmoid,
                ScalarUnary::Not => unreachable!("handled above"),
            };
            (em.unary(u, &f), Ty::Float)
        }
    })
}

/// Floor division of `i64`s with `x / 0 == 0` (wrapping: `MIN / -1 ==
/// MIN`); the divisor actually used is never 0 or -1.
pub(crate) fn int_div(em: &mut Emit, x: &str, y: &str) -> String {
    let c0 = em.v("arith.constant 0 : i64");
    let c1 = em.v("arith.constant 1 : i64");
    let cm1 = em.v("arith.constant -1 : i64");
    let zero = em.v(format!("arith.cmpi eq, {y}, {c0} : i64"));
    let m1 = em.v(format!("arith.cmpi eq, {y}, {cm1} : i64"));
    let bad = em.v(format!("arith.ori {zero}, {m1} : i1"));
    let ys = em.v(format!("arith.select {bad}, {c1}, {y} : i64"));
    let q0 = em.v(format!("arith.divsi {x}, {ys} : i64"));
    let r = em.v(format!("arith.remsi {x}, {ys} : i64"));
    let rnz = em.v(format!("arith.cmpi ne, {r}, {c0} : i64"));
    let sx = em.v(format!("arith.cmpi slt, {x}, {c0} : i64"));
    let sy = em.v(format!("arith.cmpi slt, {y}, {c0} : i64"));
    let diff = em.v(format!("arith.xori {sx}, {sy} : i1"));
    let adj = em.v(format!("arith.andi {rnz}, {diff} : i1"));
    let qm = em.v(format!("arith.subi {q0}, {c1} : i64"));
    let q = em.v(format!("arith.select {adj}, {qm}, {q0} : i64"));
    let negx = em.v(format!("arith.subi {c0}, {x} : i64"));
    let q = em.v(format!("arith.select {m1}, {negx}, {q} : i64"));
    em.v(format!("arith.select {zero}, {c0}, {q} : i64"))
}

/// Floor modulo of `i64`s with `x % 0 == x`: the sign of `y`.
pub(crate) fn int_mod(em: &mut Emit, x: &str, y: &str) -> String {
    let c0 = em.v("arith.constant 0 : i64");
    let c1 = em.v("arith.constant 1 : i64");
    let cm1 = em.v("arith.constant -1 : i64");
    let zero = em.v(format!("arith.cmpi eq, {y}, {c0} : i64"));
    let m1 = em.v(format!("arith.cmpi eq, {y}, {cm1} : i64"));
    let bad = em.v(format!("arith.ori {zero}, {m1} : i1"));
    let ys = em.v(format!("arith.select {bad}, {c1}, {y} : i64"));
    let r = em.v(format!("arith.remsi {x}, {ys} : i64"));
    let rnz = em.v(format!("arith.cmpi ne, {r}, {c0} : i64"));
    let sr = em.v(format!("arith.cmpi slt, {r}, {c0} : i64"));
    let sy = em.v(format!("arith.cmpi slt, {y}, {c0} : i64"));
    let diff = em.v(format!("arith.xori {sr}, {sy} : i1"));
    let adj = em.v(format!("arith.andi {rnz}, {diff} : i1"));
    let ry = em.v(format!("arith.addi {r}, {y} : i64"));
    let r = em.v(format!("arith.select {adj}, {ry}, {r} : i64"));
    let r = em.v(format!("arith.select {m1}, {c0}, {r} : i64"));
    em.v(format!("arith.select {zero}, {x}, {r} : i64"))
}

fn binary(
    em: &mut Emit,
    op: ScalarBinary,
    (x, tx): (&str, Ty),
    (y, ty): (&str, Ty),
) -> Result<(String, Ty), MlirError> {
    use ScalarBinary as B;
    let pred_i = |op: B| match op {
        B::Lt => "slt",
        B::Le => "sle",
        B::Gt => "sgt",
        B::Ge => "sge",
        B::Eq => "eq",
        _ => "ne",
    };
    Ok(match (tx, ty) {
        (Ty::Bool, Ty::Bool) => match op {
            B::And => (em.v(format!("arith.andi {x}, {y} : i1")), Ty::Bool),
            B::Or => (em.v(format!("arith.ori {x}, {y} : i1")), Ty::Bool),
            B::Eq => (em.v(format!("arith.cmpi eq, {x}, {y} : i1")), Ty::Bool),
            B::Ne => (em.v(format!("arith.cmpi ne, {x}, {y} : i1")), Ty::Bool),
            _ => return Err(unsupported(format!("{op:?} of two booleans"))),
        },
        _ if matches!(op, B::And | B::Or) => return Err(unsupported(format!("{op:?} of numbers"))),
        (Ty::Bool, _) | (_, Ty::Bool) => return Err(unsupported(format!("{op:?} of a boolean and a number"))),
        (Ty::Int, Ty::Int) => match op {
            B::Add => (em.v(format!("arith.addi {x}, {y} : i64")), Ty::Int),
            B::Sub => (em.v(format!("arith.subi {x}, {y} : i64")), Ty::Int),
            B::Mul => (em.v(format!("arith.muli {x}, {y} : i64")), Ty::Int),
            B::Div => (int_div(em, x, y), Ty::Int),
            B::Mod => (int_mod(em, x, y), Ty::Int),
            B::Min => (em.v(format!("arith.minsi {x}, {y} : i64")), Ty::Int),
            B::Max => (em.v(format!("arith.maxsi {x}, {y} : i64")), Ty::Int),
            _ => (em.v(format!("arith.cmpi {}, {x}, {y} : i64", pred_i(op))), Ty::Bool),
        },
        _ => {
            let (a, b) = (to_float(em, x, tx)?, to_float(em, y, ty)?);
            let f = |em: &mut Emit, o: &str| em.v(format!("arith.{o} {a}, {b} : f32"));
            let c = |em: &mut Emit, p: &str| em.v(format!("arith.cmpf {p}, {a}, {b} : f32"));
            match op {
                B::Add => (f(em, "addf"), Ty::Float),
                B::Sub => (f(em, "subf"), Ty::Float),
                B::Mul => (f(em, "mulf"), Ty::Float),
                B::Div => (f(em, "divf"), Ty::Float),
                B::Mod => {
                    let r = f(em, "remf");
                    let z = em.v(format!("arith.constant {} : f32", f32_lit(0.0)));
                    let rnz = em.v(format!("arith.cmpf une, {r}, {z} : f32"));
                    let sr = em.v(format!("arith.cmpf olt, {r}, {z} : f32"));
                    let sb = em.v(format!("arith.cmpf olt, {b}, {z} : f32"));
                    let diff = em.v(format!("arith.xori {sr}, {sb} : i1"));
                    let adj = em.v(format!("arith.andi {rnz}, {diff} : i1"));
                    let rb = em.v(format!("arith.addf {r}, {b} : f32"));
                    (em.v(format!("arith.select {adj}, {rb}, {r} : f32")), Ty::Float)
                }
                B::Min => (f(em, "minnumf"), Ty::Float),
                B::Max => (f(em, "maxnumf"), Ty::Float),
                B::Lt => (c(em, "olt"), Ty::Bool),
                B::Le => (c(em, "ole"), Ty::Bool),
                B::Gt => (c(em, "ogt"), Ty::Bool),
                B::Ge => (c(em, "oge"), Ty::Bool),
                B::Eq => (c(em, "oeq"), Ty::Bool),
                B::Ne => (c(em, "une"), Ty::Bool),
                B::And | B::Or => unreachable!("handled above"),
            }
        }
    })
}
