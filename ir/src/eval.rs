//! The evaluator of the scalar lambda language ([`ScalarExpr`]): mask
//! lambdas and attention score modifiers. One evaluator for every consumer,
//! generic over the float type: the reference interpreter runs it in `f64`,
//! the tile schedule (`tdl-kernel`) in `f32` as a backend would.
//!
//! Values are 64-bit integers, floats and booleans. Integer arithmetic
//! wraps; integer `/` is floor division and `%` floor modulo, with `x / 0 ==
//! 0` and `x % 0 == x`. A float on either side of an arithmetic operator or
//! comparison makes it a float one (IEEE; float `%` is floor modulo too: the
//! result has the sign of the divisor, and `x % 0.0` is NaN). `select`
//! evaluates only the branch it takes. Indexing reads a constant array or an
//! operand with integer indices; an index out of range is an error. `i32`
//! elements read as integers, `bool` elements as booleans, float elements as
//! floats.

use std::fmt::Debug;
use std::ops::{Add, Div, Mul, Neg, Rem, Sub};

use crate::mask::{ArrayRef, LambdaVar, ScalarBinary, ScalarExpr, ScalarUnary};
use crate::types::{Bindings, DType};

/// The float type a lambda is evaluated in (`f32` or `f64`).
pub trait LambdaFloat:
    Copy
    + Debug
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Rem<Output = Self>
    + Neg<Output = Self>
{
    const ZERO: Self;
    const ONE: Self;
    fn from_f64(x: f64) -> Self;
    fn from_i64(x: i64) -> Self;
    fn abs(self) -> Self;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn tanh(self) -> Self;
    fn min(self, other: Self) -> Self;
    fn max(self, other: Self) -> Self;
}

macro_rules! lambda_float {
    ($t:ty) => {
        impl LambdaFloat for $t {
            const ZERO: $t = 0.0;
            const ONE: $t = 1.0;
            fn from_f64(x: f64) -> $t {
                x as $t
            }
            fn from_i64(x: i64) -> $t {
                x as $t
            }
            fn abs(self) -> $t {
                <$t>::abs(self)
            }
            fn exp(self) -> $t {
                <$t>::exp(self)
            }
            fn ln(self) -> $t {
                <$t>::ln(self)
            }
            fn sqrt(self) -> $t {
                <$t>::sqrt(self)
            }
            fn tanh(self) -> $t {
                <$t>::tanh(self)
            }
            fn min(self, other: $t) -> $t {
                <$t>::min(self, other)
            }
            fn max(self, other: $t) -> $t {
                <$t>::max(self, other)
            }
        }
    };
}

lambda_float!(f32);
lambda_float!(f64);

/// A value of the lambda language.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Val<F> {
    Int(i64),
    Float(F),
    Bool(bool),
}

impl<F: LambdaFloat> Val<F> {
    pub fn kind(self) -> &'static str {
        match self {
            Val::Int(_) => "an integer",
            Val::Float(_) => "a float",
            Val::Bool(_) => "a boolean",
        }
    }

    pub fn as_float(self) -> Option<F> {
        match self {
            Val::Int(i) => Some(F::from_i64(i)),
            Val::Float(f) => Some(f),
            Val::Bool(_) => None,
        }
    }
}

/// A tensor a lambda may index: element type, shape and row-major values
/// (as `f64`, the way every tdlc buffer of the interpreters holds them).
#[derive(Clone, Copy, Debug)]
pub struct ArrayView<'a> {
    pub dtype: DType,
    pub shape: &'a [usize],
    pub data: &'a [f64],
}

/// What a lambda sees: the indices, the score (score modifiers only), the
/// bound dimension symbols and the operands of its node by position (`None`
/// where the position is not a tensor the lambda may read).
#[derive(Clone, Copy, Debug)]
pub struct Env<'a, F> {
    pub q: i64,
    pub k: i64,
    pub h: i64,
    pub s: Option<F>,
    pub bindings: &'a Bindings,
    pub operands: &'a [Option<ArrayView<'a>>],
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

/// Floor modulo on floats (Python's `%`): the result has the sign of `b`.
pub fn float_mod<F: LambdaFloat>(a: F, b: F) -> F {
    let r = a % b;
    if r != F::ZERO && ((r < F::ZERO) != (b < F::ZERO)) {
        r + b
    } else {
        r
    }
}

/// Evaluates `e` in `env`.
pub fn eval<F: LambdaFloat>(e: &ScalarExpr, env: &Env<'_, F>) -> Result<Val<F>, String> {
    Ok(match e {
        ScalarExpr::Var(LambdaVar::Q) => Val::Int(env.q),
        ScalarExpr::Var(LambdaVar::K) => Val::Int(env.k),
        ScalarExpr::Var(LambdaVar::H) => Val::Int(env.h),
        ScalarExpr::Var(LambdaVar::S) => match env.s {
            Some(s) => Val::Float(s),
            None => return Err("the score `s` is only defined in an attention score modifier, not in a mask".into()),
        },
        ScalarExpr::Int(i) => Val::Int(*i),
        ScalarExpr::Float(f) => Val::Float(F::from_f64(*f)),
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

fn read_array<F: LambdaFloat>(array: &ArrayRef, idx: &[i64], env: &Env<'_, F>) -> Result<Val<F>, String> {
    let (dtype, shape, data, what): (DType, &[usize], &[f64], String) = match array {
        ArrayRef::Const(c) => (c.dtype, &c.shape, &c.data, format!("constant array of shape {:?}", c.shape)),
        ArrayRef::Operand(i) => match env.operands.get(*i).copied().flatten() {
            Some(t) => {
                (t.dtype, t.shape, t.data, format!("operand {i} ({})", crate::layout::type_text(t.dtype, t.shape)))
            }
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
        _ => Val::Float(F::from_f64(v)),
    })
}

fn unary<F: LambdaFloat>(op: ScalarUnary, a: Val<F>) -> Result<Val<F>, String> {
    let float = |f: fn(F) -> F| -> Result<Val<F>, String> {
        match a.as_float() {
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
        (ScalarUnary::Abs, _) => float(F::abs),
        (ScalarUnary::Exp, _) => float(F::exp),
        (ScalarUnary::Log, _) => float(F::ln),
        (ScalarUnary::Sqrt, _) => float(F::sqrt),
        (ScalarUnary::Tanh, _) => float(F::tanh),
        (ScalarUnary::Sigmoid, _) => float(|x| F::ONE / (F::ONE + (-x).exp())),
    }
}

fn binary<F: LambdaFloat>(op: ScalarBinary, a: Val<F>, b: Val<F>) -> Result<Val<F>, String> {
    use ScalarBinary as B;
    match (a, b) {
        (Val::Bool(x), Val::Bool(y)) => match op {
            B::And => Ok(Val::Bool(x && y)),
            B::Or => Ok(Val::Bool(x || y)),
            B::Eq => Ok(Val::Bool(x == y)),
            B::Ne => Ok(Val::Bool(x != y)),
            _ => Err(format!("lambda `{}` needs numbers, found two booleans", op_name(op))),
        },
        _ if matches!(op, B::And | B::Or) => {
            Err(format!("lambda `{}` needs two booleans, found {} and {}", op_name(op), a.kind(), b.kind()))
        }
        (Val::Int(x), Val::Int(y)) => Ok(match op {
            B::Add => Val::Int(x.wrapping_add(y)),
            B::Sub => Val::Int(x.wrapping_sub(y)),
            B::Mul => Val::Int(x.wrapping_mul(y)),
            B::Div => Val::Int(int_div(x, y)),
            B::Mod => Val::Int(int_mod(x, y)),
            B::Min => Val::Int(x.min(y)),
            B::Max => Val::Int(x.max(y)),
            _ => Val::Bool(compare(op, x, y)),
        }),
        _ => {
            let (Some(x), Some(y)) = (a.as_float(), b.as_float()) else {
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
                _ => Val::Bool(compare(op, x, y)),
            })
        }
    }
}

/// A comparison (the only binary operators left once arithmetic and the
/// boolean connectives are handled).
fn compare<T: PartialOrd>(op: ScalarBinary, x: T, y: T) -> bool {
    match op {
        ScalarBinary::Lt => x < y,
        ScalarBinary::Le => x <= y,
        ScalarBinary::Gt => x > y,
        ScalarBinary::Ge => x >= y,
        ScalarBinary::Eq => x == y,
        _ => x != y,
    }
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
    use crate::mask::ConstValue;

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
        assert_eq!(int_mod(-6, 3), 0);
        assert_eq!(int_mod(5, 0), 5);
        assert_eq!(int_mod(i64::MIN, -1), 0);
        assert_eq!(float_mod(-1.5f64, 1.0), 0.5);
        assert_eq!(float_mod(1.5f64, -1.0), -0.5);
        assert!(float_mod(1.0f64, 0.0).is_nan());
        assert_eq!(float_mod(-1.5f32, 1.0), 0.5);
        assert!(float_mod(1.0f32, 0.0).is_nan());
    }

    const IDS: [f64; 3] = [10.0, 20.0, 30.0];

    fn ev<F: LambdaFloat>(e: &ScalarExpr, s: Option<F>) -> Result<Val<F>, String> {
        let b = Bindings::from([("T".to_string(), 9)]);
        let ops = [None, Some(ArrayView { dtype: DType::I32, shape: &[3], data: &IDS })];
        eval(e, &Env { q: 5, k: 2, h: 1, s, bindings: &b, operands: &ops })
    }

    #[test]
    fn lambda_values() {
        use ScalarExpr as E;
        let ev = |e: &ScalarExpr| ev::<f64>(e, None);
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
        let idx = E::Index { array: ArrayRef::Operand(1), indices: vec![E::Var(LambdaVar::H)] };
        assert_eq!(ev(&idx).unwrap(), Val::Int(20));
        let konst = ConstValue { dtype: DType::F32, shape: vec![2], data: vec![0.25, 0.5] };
        let cidx = E::Index { array: ArrayRef::Const(konst), indices: vec![E::Var(LambdaVar::H)] };
        assert_eq!(ev(&cidx).unwrap(), Val::Float(0.5));
        let oob = E::Index { array: ArrayRef::Operand(1), indices: vec![q()] };
        let msg = ev(&oob).unwrap_err();
        assert!(msg.contains("index 5") && msg.contains("size 3"), "{msg}");
        // select is lazy: the out-of-range branch is not taken.
        let sel = E::Select(Box::new(E::Bool(true)), Box::new(E::Int(1)), Box::new(oob));
        assert_eq!(ev(&sel).unwrap(), Val::Int(1));
        assert!(ev(&E::Var(LambdaVar::S)).is_err());
        assert!(ev(&E::Index { array: ArrayRef::Operand(0), indices: vec![] }).is_err());
        assert!(ev(&E::binary(ScalarBinary::And, E::Int(1), E::Bool(true))).is_err());
        assert!(ev(&E::Sym("Z".into())).is_err());
        assert_eq!(ev(&E::Unary(ScalarUnary::Abs, Box::new(E::Int(-4)))).unwrap(), Val::Int(4));
        assert_eq!(ev(&E::binary(ScalarBinary::Min, E::Int(3), E::Float(2.5))).unwrap(), Val::Float(2.5));
    }

    #[test]
    fn scores_in_f32() {
        use ScalarExpr as E;
        let e = E::binary(ScalarBinary::Mul, E::Var(LambdaVar::S), E::Int(4));
        assert_eq!(ev::<f32>(&e, Some(0.5)).unwrap(), Val::Float(2.0));
        let third = E::binary(ScalarBinary::Div, E::Var(LambdaVar::S), E::Float(3.0));
        assert_eq!(ev::<f32>(&third, Some(1.0)).unwrap(), Val::Float(1.0f32 / 3.0));
    }
}
