//! The lambda language ([`ScalarExpr`]) evaluated as a kernel evaluates it:
//! 64-bit integers, **`f32`** floats and booleans.
//!
//! The semantics are the language's (`tdl_ir::mask`, and the reference's
//! `scalar.rs`), with `f32` in place of `f64` for floats:
//!
//! * integer arithmetic is 64-bit and wraps; `/` is floor division and `%`
//!   floor modulo; `x / 0 == 0` and `x % 0 == x`;
//! * a float on either side of an arithmetic operator or comparison makes it
//!   a float one (the integer is converted to `f32`); float `%` is floor
//!   modulo too (the sign of the divisor; `x % 0.0` is NaN);
//! * `where` evaluates only the branch it takes; `&`/`|` need booleans;
//! * indexing reads a constant array or an operand with integer indices; an
//!   index out of range is an error. `i32` elements read as integers, `bool`
//!   elements as booleans, float elements as `f32`.
//!
//! The reference's score-modifier evaluator is crate-private, hence this
//! one; its error messages follow the reference's words.

use tdl_ir::{ArrayRef, Bindings, DType, LambdaVar, ScalarBinary, ScalarExpr, ScalarUnary};
use tdl_passes::tiles::OperandData;

/// A value of the lambda language, as a kernel holds it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Val {
    Int(i64),
    Float(f32),
    Bool(bool),
}

impl Val {
    fn kind(self) -> &'static str {
        match self {
            Val::Int(_) => "an integer",
            Val::Float(_) => "a float",
            Val::Bool(_) => "a boolean",
        }
    }

    fn as_f32(self) -> Option<f32> {
        match self {
            Val::Int(i) => Some(i as f32),
            Val::Float(f) => Some(f),
            Val::Bool(_) => None,
        }
    }
}

/// What a lambda sees: the indices, the score (score modifiers only), the
/// bound dimension symbols and the operands of its node by position
/// (`None` where the position is not a tensor the lambda may read).
#[derive(Clone, Copy, Debug)]
pub struct Env<'a> {
    pub q: i64,
    pub k: i64,
    pub h: i64,
    pub s: Option<f32>,
    pub bindings: &'a Bindings,
    pub operands: &'a [Option<OperandData<'a>>],
}

/// Floor division with `x / 0 == 0`, wrapping (`i64::MIN / -1 == i64::MIN`).
pub fn int_div(a: i64, b: i64) -> i64 {
    if b == 0 {
        return 0;
    }
    let q = a.wrapping_div(b);
    if a.wrapping_rem(b) != 0 && ((a < 0) != (b < 0)) {
        q.wrapping_sub(1)
    } else {
        q
    }
}

/// Floor modulo with `x % 0 == x`: the result has the sign of `b`.
pub fn int_mod(a: i64, b: i64) -> i64 {
    if b == 0 {
        return a;
    }
    let r = a.wrapping_rem(b);
    if r != 0 && ((r < 0) != (b < 0)) {
        r.wrapping_add(b)
    } else {
        r
    }
}

/// Floor modulo on `f32` (Python's `%`): the result has the sign of `b`.
pub fn float_mod(a: f32, b: f32) -> f32 {
    let r = a % b;
    if r != 0.0 && ((r < 0.0) != (b < 0.0)) {
        r + b
    } else {
        r
    }
}

/// Evaluates `e` in `env`.
pub fn eval(e: &ScalarExpr, env: &Env<'_>) -> Result<Val, String> {
    Ok(match e {
        ScalarExpr::Var(LambdaVar::Q) => Val::Int(env.q),
        ScalarExpr::Var(LambdaVar::K) => Val::Int(env.k),
        ScalarExpr::Var(LambdaVar::H) => Val::Int(env.h),
        ScalarExpr::Var(LambdaVar::S) => match env.s {
            Some(s) => Val::Float(s),
            None => return Err("the score `s` is only defined in an attention score modifier, not in a mask".into()),
        },
        ScalarExpr::Int(i) => Val::Int(*i),
        ScalarExpr::Float(f) => Val::Float(*f as f32),
        ScalarExpr::Bool(b) => Val::Bool(*b),
        ScalarExpr::Sym(name) => match env.bindings.get(name) {
            Some(v) => Val::Int(*v),
            None => return Err(format!("dimension symbol `{name}` used in a lambda is not bound by any input")),
        },
        ScalarExpr::Index { array, indices } => {
            let mut idx = Vec::with_capacity(indices.len());
            for (pos, ie) in indices.iter().enumerate() {
                match eval(ie, env)? {
                    Val::Int(i) => idx.push(i),
                    v => {
                        return Err(format!(
                            "index {pos} of an array read in a lambda is {}, expected an integer",
                            v.kind()
                        ))
                    }
                }
            }
            read_array(array, &idx, env)?
        }
        ScalarExpr::Unary(op, a) => unary(*op, eval(a, env)?)?,
        ScalarExpr::Binary(op, a, b) => binary(*op, eval(a, env)?, eval(b, env)?)?,
        ScalarExpr::Select(c, a, b) => match eval(c, env)? {
            Val::Bool(true) => eval(a, env)?,
            Val::Bool(false) => eval(b, env)?,
            v => return Err(format!("the condition of a lambda `where` is {}, expected a boolean", v.kind())),
        },
    })
}

fn read_array(array: &ArrayRef, idx: &[i64], env: &Env<'_>) -> Result<Val, String> {
    let (dtype, shape, data, what): (DType, &[usize], &[f64], String) = match array {
        ArrayRef::Const(c) => (c.dtype, &c.shape, &c.data, format!("constant array of shape {:?}", c.shape)),
        ArrayRef::Operand(i) => match env.operands.get(*i).and_then(|o| o.as_ref()) {
            Some(t) => (t.dtype, &t.shape, t.data, format!("operand {i} ({}{:?})", t.dtype.name(), t.shape)),
            None => return Err(format!("a lambda reads operand {i}, which is not a tensor operand of its node")),
        },
    };
    if idx.len() != shape.len() {
        return Err(format!("the {what} is indexed with {} indices, but has rank {}", idx.len(), shape.len()));
    }
    let mut flat = 0usize;
    for (axis, (&i, &d)) in idx.iter().zip(shape).enumerate() {
        let Some(u) = usize::try_from(i).ok().filter(|&u| u < d) else {
            return Err(format!(
                "index {i} is out of range for axis {axis} of size {d} of the {what} read in a lambda"
            ));
        };
        // In range of an existing array, so no overflow.
        flat = flat * d + u;
    }
    let Some(&v) = data.get(flat) else {
        return Err(format!("the {what} holds {} elements, fewer than its shape says", data.len()));
    };
    Ok(match dtype {
        DType::I32 => Val::Int(v as i64),
        DType::Bool => Val::Bool(v != 0.0),
        _ => Val::Float(v as f32),
    })
}

fn unary(op: ScalarUnary, a: Val) -> Result<Val, String> {
    let float = |f: fn(f32) -> f32| -> Result<Val, String> {
        match a.as_f32() {
            Some(x) => Ok(Val::Float(f(x))),
            None => Err(format!("lambda `{}` needs a number, found {}", op.name(), a.kind())),
        }
    };
    match (op, a) {
        (ScalarUnary::Not, Val::Bool(b)) => Ok(Val::Bool(!b)),
        (ScalarUnary::Not, _) => Err(format!("lambda `!` needs a boolean, found {}", a.kind())),
        (ScalarUnary::Neg, Val::Int(i)) => Ok(Val::Int(i.wrapping_neg())),
        (ScalarUnary::Neg, _) => float(|x| -x),
        (ScalarUnary::Abs, Val::Int(i)) => Ok(Val::Int(i.wrapping_abs())),
        (ScalarUnary::Abs, _) => float(f32::abs),
        (ScalarUnary::Exp, _) => float(f32::exp),
        (ScalarUnary::Log, _) => float(f32::ln),
        (ScalarUnary::Sqrt, _) => float(f32::sqrt),
        (ScalarUnary::Tanh, _) => float(f32::tanh),
        (ScalarUnary::Sigmoid, _) => float(|x| 1.0 / (1.0 + (-x).exp())),
    }
}

fn binary(op: ScalarBinary, a: Val, b: Val) -> Result<Val, String> {
    use ScalarBinary as B;
    if matches!(op, B::And | B::Or) {
        return match (a, b) {
            (Val::Bool(x), Val::Bool(y)) => Ok(Val::Bool(if op == B::And { x && y } else { x || y })),
            _ => Err(format!("lambda `{}` needs two booleans, found {} and {}", op_name(op), a.kind(), b.kind())),
        };
    }
    if let (Val::Bool(x), Val::Bool(y)) = (a, b) {
        return match op {
            B::Eq => Ok(Val::Bool(x == y)),
            B::Ne => Ok(Val::Bool(x != y)),
            _ => Err(format!("lambda `{}` needs numbers, found two booleans", op_name(op))),
        };
    }
    if let (Val::Int(x), Val::Int(y)) = (a, b) {
        return Ok(match op {
            B::Add => Val::Int(x.wrapping_add(y)),
            B::Sub => Val::Int(x.wrapping_sub(y)),
            B::Mul => Val::Int(x.wrapping_mul(y)),
            B::Div => Val::Int(int_div(x, y)),
            B::Mod => Val::Int(int_mod(x, y)),
            B::Min => Val::Int(x.min(y)),
            B::Max => Val::Int(x.max(y)),
            B::Lt => Val::Bool(x < y),
            B::Le => Val::Bool(x <= y),
            B::Gt => Val::Bool(x > y),
            B::Ge => Val::Bool(x >= y),
            B::Eq => Val::Bool(x == y),
            B::Ne => Val::Bool(x != y),
            // Handled above; kept exhaustive without a panic.
            B::And | B::Or => Val::Bool(false),
        });
    }
    let (Some(x), Some(y)) = (a.as_f32(), b.as_f32()) else {
        return Err(format!("lambda `{}` needs numbers, found {} and {}", op_name(op), a.kind(), b.kind()));
    };
    Ok(match op {
        B::Add => Val::Float(x + y),
        B::Sub => Val::Float(x - y),
        B::Mul => Val::Float(x * y),
        B::Div => Val::Float(x / y),
        B::Mod => Val::Float(float_mod(x, y)),
        B::Min => Val::Float(x.min(y)),
        B::Max => Val::Float(x.max(y)),
        B::Lt => Val::Bool(x < y),
        B::Le => Val::Bool(x <= y),
        B::Gt => Val::Bool(x > y),
        B::Ge => Val::Bool(x >= y),
        B::Eq => Val::Bool(x == y),
        B::Ne => Val::Bool(x != y),
        B::And | B::Or => Val::Bool(false),
    })
}

fn op_name(op: ScalarBinary) -> &'static str {
    op.symbol().unwrap_or(match op {
        ScalarBinary::Min => "min",
        _ => "max",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tdl_ir::ConstValue;

    #[test]
    fn floor_division_and_modulo() {
        assert_eq!(int_div(7, 2), 3);
        assert_eq!(int_div(-7, 2), -4);
        assert_eq!(int_div(7, -2), -4);
        assert_eq!(int_div(-7, -2), 3);
        assert_eq!(int_div(5, 0), 0);
        assert_eq!(int_div(i64::MIN, -1), i64::MIN);
        assert_eq!(int_mod(-7, 3), 2);
        assert_eq!(int_mod(7, -3), -2);
        assert_eq!(int_mod(5, 0), 5);
        assert_eq!(int_mod(i64::MIN, -1), 0);
        assert_eq!(float_mod(-1.5, 1.0), 0.5);
        assert_eq!(float_mod(1.5, -1.0), -0.5);
        assert!(float_mod(1.0, 0.0).is_nan());
    }

    fn ev(e: &ScalarExpr) -> Result<Val, String> {
        let b = Bindings::from([("T".to_string(), 9)]);
        let data = [10.0, 20.0, 30.0];
        let ops = [None, Some(OperandData { dtype: DType::I32, shape: vec![3], data: &data })];
        eval(e, &Env { q: 5, k: 2, h: 1, s: Some(0.5), bindings: &b, operands: &ops })
    }

    #[test]
    fn lambda_values() {
        use ScalarExpr as E;
        let q = || E::Var(LambdaVar::Q);
        let k = || E::Var(LambdaVar::K);
        assert_eq!(ev(&E::binary(ScalarBinary::Sub, k(), q())).unwrap(), Val::Int(-3));
        assert_eq!(
            ev(&E::binary(ScalarBinary::Div, E::binary(ScalarBinary::Sub, k(), q()), E::Int(2))).unwrap(),
            Val::Int(-2)
        );
        assert_eq!(ev(&E::binary(ScalarBinary::Div, q(), E::Float(2.0))).unwrap(), Val::Float(2.5));
        assert_eq!(ev(&E::binary(ScalarBinary::Div, q(), E::Int(0))).unwrap(), Val::Int(0));
        assert_eq!(ev(&E::binary(ScalarBinary::Mod, q(), E::Int(0))).unwrap(), Val::Int(5));
        assert_eq!(ev(&E::binary(ScalarBinary::Lt, q(), E::Sym("T".into()))).unwrap(), Val::Bool(true));
        assert_eq!(ev(&E::binary(ScalarBinary::Add, E::Int(i64::MAX), E::Int(1))).unwrap(), Val::Int(i64::MIN));
        assert_eq!(ev(&E::binary(ScalarBinary::Mul, E::Var(LambdaVar::S), E::Int(4))).unwrap(), Val::Float(2.0));
        let idx = E::Index { array: ArrayRef::Operand(1), indices: vec![E::Var(LambdaVar::H)] };
        assert_eq!(ev(&idx).unwrap(), Val::Int(20));
        let konst = ConstValue { dtype: DType::F32, shape: vec![2], data: vec![0.25, 0.5] };
        let cidx = E::Index { array: ArrayRef::Const(konst), indices: vec![E::Var(LambdaVar::H)] };
        assert_eq!(ev(&cidx).unwrap(), Val::Float(0.5));
        let oob = E::Index { array: ArrayRef::Operand(1), indices: vec![q()] };
        let msg = ev(&oob).unwrap_err();
        assert!(msg.contains("index 5") && msg.contains("size 3"), "{msg}");
        let sel = E::Select(Box::new(E::Bool(true)), Box::new(E::Int(1)), Box::new(oob));
        assert_eq!(ev(&sel).unwrap(), Val::Int(1));
        assert!(ev(&E::Index { array: ArrayRef::Operand(0), indices: vec![] }).is_err());
        assert!(ev(&E::binary(ScalarBinary::And, E::Int(1), E::Bool(true))).is_err());
        assert!(ev(&E::Sym("Z".into())).is_err());
        assert_eq!(ev(&E::Unary(ScalarUnary::Abs, Box::new(E::Int(-4)))).unwrap(), Val::Int(4));
        assert_eq!(ev(&E::binary(ScalarBinary::Min, E::Int(3), E::Float(2.5))).unwrap(), Val::Float(2.5));
    }
}
