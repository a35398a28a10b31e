//! Compile-time constants: `const` declarations, literal arithmetic and
//! constant arrays.

use crate::ast::{BinOp, Expr, ExprKind, UnOp};
use crate::diag::Diagnostic;
use std::collections::HashMap;
use tdl_ir::{ConstValue, DType, Span};

/// The most axes a constant array may have.
pub const MAX_CONST_RANK: usize = 16;

/// The largest constant array the frontend builds (elements).
pub const MAX_CONST_ELEMENTS: usize = 1 << 20;

/// A compile-time value.
#[derive(Clone, Debug, PartialEq)]
pub enum Const {
    Int(i64),
    Float(f64),
    Bool(bool),
    Array(ConstValue),
}

impl Const {
    pub fn describe(&self) -> &'static str {
        match self {
            Const::Int(_) => "an integer",
            Const::Float(_) => "a number",
            Const::Bool(_) => "a boolean",
            Const::Array(_) => "an array",
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Const::Int(i) => Some(*i as f64),
            Const::Float(f) => Some(*f),
            _ => None,
        }
    }
}

/// The `const` declarations of a file, by name, with where they were made.
pub type ConstEnv = HashMap<String, (Const, Span)>;

/// Evaluates a constant expression: literals, other constants, arrays,
/// arithmetic and indexing with constant indices.
pub fn eval(e: &Expr, env: &ConstEnv) -> Result<Const, Diagnostic> {
    crate::grow(|| eval_inner(e, env))
}

fn eval_inner(e: &Expr, env: &ConstEnv) -> Result<Const, Diagnostic> {
    let not_const = |what: &str| {
        Diagnostic::error(format!("expected a constant, found {what}")).at(e.span, "not a compile-time constant")
    };
    Ok(match &e.kind {
        // Already reported by the parser; an empty message is dropped.
        ExprKind::Error => return Err(Diagnostic::error("")),
        ExprKind::Int(i) => Const::Int(*i),
        ExprKind::Float(f) => Const::Float(*f),
        ExprKind::Bool(b) => Const::Bool(*b),
        ExprKind::Inf => Const::Float(f64::INFINITY),
        ExprKind::Paren(inner) => eval(inner, env)?,
        ExprKind::Ident(name) => match env.get(name) {
            Some((c, _)) => c.clone(),
            None => {
                return Err(
                    not_const(&format!("`{name}`")).hint("only `const` names, literals and arrays can appear here")
                )
            }
        },
        ExprKind::Array(elems) => Const::Array(array(e.span, elems, env)?),
        ExprKind::Unary(UnOp::Neg, a) => match eval(a, env)? {
            Const::Int(i) => Const::Int(i.checked_neg().ok_or_else(|| overflow(e.span))?),
            Const::Float(f) => Const::Float(-f),
            Const::Array(mut a) if a.dtype != DType::Bool => {
                a.data.iter_mut().for_each(|x| *x = -*x);
                Const::Array(a)
            }
            other => return Err(not_const(&format!("`-` applied to {}", other.describe()))),
        },
        ExprKind::Unary(UnOp::Not, a) => match eval(a, env)? {
            Const::Bool(b) => Const::Bool(!b),
            other => return Err(not_const(&format!("`!` applied to {}", other.describe()))),
        },
        ExprKind::Binary(op, a, b) => binary(*op, eval(a, env)?, eval(b, env)?, e.span)?,
        ExprKind::Index { base, indices } => {
            let Const::Array(arr) = eval(base, env)? else {
                return Err(not_const("an index into a non-array"));
            };
            if indices.len() != arr.shape.len() {
                return Err(Diagnostic::error(format!(
                    "the array has {} axes but {} indices were given",
                    arr.shape.len(),
                    indices.len()
                ))
                .at(e.span, "wrong number of indices"));
            }
            let mut flat = 0usize;
            for (ix, (i, &n)) in indices.iter().zip(&arr.shape).enumerate() {
                let Const::Int(v) = eval(i, env)? else {
                    return Err(not_const("a non-integer index"));
                };
                if v < 0 || v as u128 >= n as u128 {
                    return Err(Diagnostic::error(format!("index {v} is out of range for axis {ix} of length {n}"))
                        .at(i.span, "out of range"));
                }
                flat = flat * n + v as usize;
            }
            let v = arr.data[flat];
            match arr.dtype {
                DType::I32 => Const::Int(v as i64),
                DType::Bool => Const::Bool(v != 0.0),
                _ => Const::Float(v),
            }
        }
        _ => return Err(not_const("an expression that needs run-time values")),
    })
}

fn overflow(span: Span) -> Diagnostic {
    Diagnostic::error("integer arithmetic overflows 64 bits").at(span, "overflows")
}

fn binary(op: BinOp, a: Const, b: Const, span: Span) -> Result<Const, Diagnostic> {
    use Const::*;
    let bad = || {
        Diagnostic::error(format!(
            "`{}` cannot combine {} and {} in a constant",
            op.symbol(),
            a.describe(),
            b.describe()
        ))
        .at(span, "not a valid constant expression")
    };
    Ok(match (&a, &b) {
        (Int(x), Int(y)) => {
            let (x, y) = (*x, *y);
            match op {
                BinOp::Add => Int(x.checked_add(y).ok_or_else(|| overflow(span))?),
                BinOp::Sub => Int(x.checked_sub(y).ok_or_else(|| overflow(span))?),
                BinOp::Mul => Int(x.checked_mul(y).ok_or_else(|| overflow(span))?),
                BinOp::Div | BinOp::Mod => {
                    if y == 0 {
                        return Err(Diagnostic::error("division by zero in a constant").at(span, "divides by zero"));
                    }
                    let fl = floor_div(x, y).ok_or_else(|| overflow(span))?;
                    if op == BinOp::Div {
                        Int(fl)
                    } else {
                        Int(x.wrapping_sub(fl.wrapping_mul(y)))
                    }
                }
                BinOp::Lt => Bool(x < y),
                BinOp::Le => Bool(x <= y),
                BinOp::Gt => Bool(x > y),
                BinOp::Ge => Bool(x >= y),
                BinOp::Eq => Bool(x == y),
                BinOp::Ne => Bool(x != y),
                BinOp::And | BinOp::Or | BinOp::MatMul => return Err(bad()),
            }
        }
        (Int(_) | Float(_), Int(_) | Float(_)) => {
            let (x, y) = (a.as_f64().unwrap_or(0.0), b.as_f64().unwrap_or(0.0));
            match op {
                BinOp::Add => Float(x + y),
                BinOp::Sub => Float(x - y),
                BinOp::Mul => Float(x * y),
                BinOp::Div => Float(x / y),
                BinOp::Mod => Float(x - (x / y).floor() * y),
                BinOp::Lt => Bool(x < y),
                BinOp::Le => Bool(x <= y),
                BinOp::Gt => Bool(x > y),
                BinOp::Ge => Bool(x >= y),
                BinOp::Eq => Bool(x == y),
                BinOp::Ne => Bool(x != y),
                BinOp::And | BinOp::Or | BinOp::MatMul => return Err(bad()),
            }
        }
        (Bool(x), Bool(y)) => match op {
            BinOp::And => Bool(*x && *y),
            BinOp::Or => Bool(*x || *y),
            BinOp::Eq => Bool(x == y),
            BinOp::Ne => Bool(x != y),
            _ => return Err(bad()),
        },
        _ => return Err(bad()),
    })
}

/// Floor division of integers; `None` on overflow (`i64::MIN / -1`).
pub fn floor_div(x: i64, y: i64) -> Option<i64> {
    let q = x.checked_div(y)?;
    if (x % y != 0) && ((x < 0) != (y < 0)) {
        Some(q - 1)
    } else {
        Some(q)
    }
}

/// Builds a rectangular constant array from nested array literals.
fn array(span: Span, elems: &[Expr], env: &ConstEnv) -> Result<ConstValue, Diagnostic> {
    let mut values = Vec::with_capacity(elems.len());
    for e in elems {
        values.push((eval(e, env)?, e.span));
    }
    if values.is_empty() {
        return Err(Diagnostic::error("an empty array has no element type").at(span, "empty array"));
    }
    let mut shape = Vec::new();
    let mut data: Vec<f64> = Vec::new();
    let (mut any_float, mut any_int, mut any_bool) = (false, false, false);
    let mut inner_shape: Option<Vec<usize>> = None;
    let mut inner_dtype: Option<DType> = None;
    for (v, s) in values {
        let this_shape = match v {
            Const::Int(i) => {
                any_int = true;
                data.push(i as f64);
                Vec::new()
            }
            Const::Float(f) => {
                any_float = true;
                data.push(f);
                Vec::new()
            }
            Const::Bool(b) => {
                any_bool = true;
                data.push(if b { 1.0 } else { 0.0 });
                Vec::new()
            }
            Const::Array(a) => {
                match a.dtype {
                    DType::Bool => any_bool = true,
                    DType::I32 => any_int = true,
                    _ => any_float = true,
                }
                if inner_dtype.is_some_and(|d| d != a.dtype)
                    && !(a.dtype.is_float() || inner_dtype.is_some_and(|d| d.is_float()))
                {
                    return Err(Diagnostic::error("array rows have different element types").at(s, "this row differs"));
                }
                inner_dtype = Some(a.dtype);
                data.extend_from_slice(&a.data);
                a.shape
            }
        };
        if data.len() > MAX_CONST_ELEMENTS {
            return Err(Diagnostic::error(format!("constant array has more than {MAX_CONST_ELEMENTS} elements"))
                .at(span, "too large"));
        }
        match &inner_shape {
            None => inner_shape = Some(this_shape),
            Some(prev) if *prev != this_shape => {
                return Err(Diagnostic::error(format!(
                    "array is not rectangular: a row of shape {this_shape:?} after rows of shape {prev:?}"
                ))
                .at(s, "this row has another shape"))
            }
            Some(_) => {}
        }
    }
    if any_bool && (any_int || any_float) {
        return Err(Diagnostic::error("array mixes booleans and numbers").at(span, "mixed element types"));
    }
    let dtype = if any_bool {
        DType::Bool
    } else if any_float {
        DType::F32
    } else {
        for v in &data {
            if *v < i32::MIN as f64 || *v > i32::MAX as f64 {
                return Err(Diagnostic::error(format!("integer {v} does not fit the array's element type i32"))
                    .at(span, "out of i32 range"));
            }
        }
        DType::I32
    };
    shape.push(elems.len());
    shape.extend(inner_shape.unwrap_or_default());
    if shape.len() > MAX_CONST_RANK {
        return Err(Diagnostic::error(format!(
            "constant array has {} axes; the limit is {MAX_CONST_RANK}",
            shape.len()
        ))
        .at(span, "too deeply nested"));
    }
    Ok(ConstValue { dtype, shape, data })
}
