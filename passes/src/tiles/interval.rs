//! Abstract evaluation of index lambdas over a tile: every lambda value is
//! over-approximated by an interval (numbers) or a pair of "may be true /
//! may be false" flags (booleans), with `q`, `k` ranging over the tile and
//! `h` fixed.
//!
//! Soundness invariant: for every point `(q, k)` of the tile at which the
//! reference evaluator (`tdl_reference::scalar::eval`) *succeeds*, the value
//! it computes lies in the abstract value computed here. Every place where
//! the reference *may fail* (an index out of range, an unbound symbol, a
//! type error, `s` in a mask) sets [`Env::err`]; a lambda that may fail
//! anywhere in the tile is classified `Partial`, so the kernel evaluates it
//! there and reports the error exactly as the reference would.

use std::cell::Cell;

use tdl_ir::{ArrayRef, Bindings, DType, LambdaVar, ScalarBinary, ScalarExpr, ScalarUnary};

use super::{MaskData, TileClass};

/// Elements an `Index` may scan for its min/max before giving up and
/// answering with the element type's full range (still sound).
const MAX_INDEX_SCAN: u128 = 1 << 16;

/// An abstract lambda value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Av {
    /// Every value lies in `lo..=hi`.
    Int(i64, i64),
    /// Every non-NaN value lies in `lo..=hi` (finite or infinite); the flag
    /// says a NaN is possible.
    Float(f64, f64, bool),
    /// (may be true, may be false).
    Bool(bool, bool),
    /// Anything (values of different kinds joined by a `where`).
    Any,
}

const INT_TOP: Av = Av::Int(i64::MIN, i64::MAX);
const FLOAT_TOP: Av = Av::Float(f64::NEG_INFINITY, f64::INFINITY, true);
const BOOL_TOP: Av = Av::Bool(true, true);

/// The evaluation environment of one tile: inclusive index ranges.
pub(crate) struct Env<'a> {
    pub q: (i64, i64),
    pub k: (i64, i64),
    pub h: i64,
    pub bindings: &'a Bindings,
    pub data: &'a MaskData<'a>,
    /// Set when the reference may fail at some point of the tile.
    pub err: Cell<bool>,
}

impl Env<'_> {
    fn fail(&self) -> Av {
        self.err.set(true);
        Av::Any
    }
}

/// The class of a mask lambda `e` over the tile of `env`.
pub(crate) fn classify_lambda(e: &ScalarExpr, env: &Env) -> TileClass {
    let v = eval(e, env);
    if env.err.get() {
        return TileClass::Partial;
    }
    match v {
        Av::Bool(true, false) => TileClass::Full,
        Av::Bool(false, true) => TileClass::Empty,
        _ => TileClass::Partial,
    }
}

fn int(lo: i128, hi: i128) -> Av {
    if lo >= i64::MIN as i128 && hi <= i64::MAX as i128 {
        Av::Int(lo as i64, hi as i64)
    } else {
        // The reference wraps: after an overflow the value can be anything.
        INT_TOP
    }
}

fn float(lo: f64, hi: f64, nan: bool) -> Av {
    if lo.is_nan() || hi.is_nan() {
        FLOAT_TOP
    } else {
        Av::Float(lo, hi, nan)
    }
}

/// The value as a float interval (`Int` converts as `as f64` does, which is
/// monotone).
fn as_float(v: Av) -> Option<(f64, f64, bool)> {
    match v {
        Av::Int(lo, hi) => Some((lo as f64, hi as f64, false)),
        Av::Float(lo, hi, n) => Some((lo, hi, n)),
        _ => None,
    }
}

fn join(a: Av, b: Av) -> Av {
    match (a, b) {
        (Av::Int(a0, a1), Av::Int(b0, b1)) => Av::Int(a0.min(b0), a1.max(b1)),
        (Av::Float(a0, a1, an), Av::Float(b0, b1, bn)) => float(a0.min(b0), a1.max(b1), an || bn),
        (Av::Bool(at, af), Av::Bool(bt, bf)) => Av::Bool(at || bt, af || bf),
        _ => Av::Any,
    }
}

pub(crate) fn eval(e: &ScalarExpr, env: &Env) -> Av {
    match e {
        ScalarExpr::Var(LambdaVar::Q) => Av::Int(env.q.0, env.q.1),
        ScalarExpr::Var(LambdaVar::K) => Av::Int(env.k.0, env.k.1),
        ScalarExpr::Var(LambdaVar::H) => Av::Int(env.h, env.h),
        ScalarExpr::Var(LambdaVar::S) => env.fail(),
        ScalarExpr::Int(i) => Av::Int(*i, *i),
        ScalarExpr::Float(f) => float(*f, *f, f.is_nan()),
        ScalarExpr::Bool(b) => Av::Bool(*b, !*b),
        ScalarExpr::Sym(name) => match env.bindings.get(name) {
            Some(v) => Av::Int(*v, *v),
            None => env.fail(),
        },
        ScalarExpr::Index { array, indices } => {
            let idx: Vec<Av> = indices.iter().map(|i| eval(i, env)).collect();
            index(array, &idx, env)
        }
        ScalarExpr::Unary(op, a) => unary(*op, eval(a, env), env),
        ScalarExpr::Binary(op, a, b) => {
            let (a, b) = (eval(a, env), eval(b, env));
            binary(*op, a, b, env)
        }
        ScalarExpr::Select(c, a, b) => match eval(c, env) {
            // Only the branch taken is evaluated (errors in the other do not count).
            Av::Bool(true, false) => eval(a, env),
            Av::Bool(false, true) => eval(b, env),
            Av::Bool(..) => {
                let (a, b) = (eval(a, env), eval(b, env));
                join(a, b)
            }
            _ => env.fail(),
        },
    }
}

/// `array[indices]`: the min/max (or the booleans present) over the
/// elements the index intervals cover, clipped to the array's bounds.
/// Clipping is where an index may be out of range: an error there.
fn index(array: &ArrayRef, idx: &[Av], env: &Env) -> Av {
    let (dtype, shape, data): (DType, &[usize], &[f64]) = match array {
        ArrayRef::Const(c) => (c.dtype, &c.shape, &c.data),
        ArrayRef::Operand(i) => match env.data.operands.get(*i) {
            Some(o) => (o.dtype, &o.shape, o.data),
            None => return env.fail(),
        },
    };
    if idx.len() != shape.len() {
        return env.fail();
    }
    let mut ranges = Vec::with_capacity(idx.len());
    let mut count: u128 = 1;
    for (v, &d) in idx.iter().zip(shape) {
        let Av::Int(lo, hi) = *v else { return env.fail() };
        let (clo, chi) = (lo.max(0) as i128, (hi as i128).min(d as i128 - 1));
        if clo > lo as i128 || chi < hi as i128 {
            env.err.set(true);
        }
        if clo > chi {
            return env.fail();
        }
        count = count.saturating_mul((chi - clo + 1) as u128);
        ranges.push((clo as usize, chi as usize));
    }
    let top = match dtype {
        DType::I32 => INT_TOP,
        DType::Bool => BOOL_TOP,
        _ => FLOAT_TOP,
    };
    if count > MAX_INDEX_SCAN {
        return top;
    }
    // Row-major odometer over the covered box.
    let strides: Vec<usize> = {
        let mut s = vec![1usize; shape.len()];
        for a in (0..shape.len().saturating_sub(1)).rev() {
            s[a] = s[a + 1] * shape[a + 1];
        }
        s
    };
    let mut cur: Vec<usize> = ranges.iter().map(|r| r.0).collect();
    let (mut lo, mut hi, mut nan, mut any_t, mut any_f) = (f64::INFINITY, f64::NEG_INFINITY, false, false, false);
    loop {
        let flat: usize = cur.iter().zip(&strides).map(|(c, s)| c * s).sum();
        let Some(&v) = data.get(flat) else { return env.fail() };
        if v.is_nan() {
            nan = true;
        } else {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        if v != 0.0 {
            any_t = true;
        } else {
            any_f = true;
        }
        // Advance.
        let mut a = cur.len();
        loop {
            if a == 0 {
                return match dtype {
                    DType::Bool => Av::Bool(any_t, any_f),
                    DType::I32 => {
                        if nan {
                            INT_TOP
                        } else {
                            // `as i64` saturates, as the reference's conversion does.
                            Av::Int(lo as i64, hi as i64)
                        }
                    }
                    _ => {
                        if lo > hi {
                            FLOAT_TOP
                        } else {
                            float(lo, hi, nan)
                        }
                    }
                };
            }
            a -= 1;
            if cur[a] < ranges[a].1 {
                cur[a] += 1;
                break;
            }
            cur[a] = ranges[a].0;
        }
    }
}

/// Floor division in `i128` (the divisor is non-zero).
fn fdiv(a: i128, b: i128) -> i128 {
    let q = a / b;
    if a % b != 0 && ((a < 0) != (b < 0)) {
        q - 1
    } else {
        q
    }
}

/// A monotone non-decreasing float function over `[lo, hi]`, defined from
/// `domain_lo` on (NaN below it). Libm results are widened a little, since
/// they need not be correctly rounded (hence not exactly monotone).
fn monotone(lo: f64, hi: f64, nan: bool, domain_lo: f64, f: impl Fn(f64) -> f64) -> Av {
    if hi < domain_lo {
        return FLOAT_TOP;
    }
    let nan = nan || lo < domain_lo;
    let (a, b) = (f(lo.max(domain_lo)), f(hi));
    if a.is_nan() || b.is_nan() {
        return FLOAT_TOP;
    }
    let widen = |x: f64, up: bool| {
        if x.is_infinite() {
            x
        } else {
            let m = x.abs() * 1e-12 + 1e-300;
            if up {
                x + m
            } else {
                x - m
            }
        }
    };
    float(widen(a, false), widen(b, true), nan)
}

fn unary(op: ScalarUnary, a: Av, env: &Env) -> Av {
    if a == Av::Any {
        return env.fail();
    }
    match (op, a) {
        (ScalarUnary::Not, Av::Bool(t, f)) => Av::Bool(f, t),
        (ScalarUnary::Not, _) => env.fail(),
        (_, Av::Bool(..)) => env.fail(),
        (ScalarUnary::Neg, Av::Int(lo, hi)) => int(-(hi as i128), -(lo as i128)),
        (ScalarUnary::Neg, Av::Float(lo, hi, n)) => float(-hi, -lo, n),
        (ScalarUnary::Abs, Av::Int(lo, hi)) => {
            let (lo, hi) = (lo as i128, hi as i128);
            if lo >= 0 {
                int(lo, hi)
            } else if hi <= 0 {
                int(-hi, -lo)
            } else {
                int(0, (-lo).max(hi))
            }
        }
        (ScalarUnary::Abs, Av::Float(lo, hi, n)) => {
            if lo >= 0.0 {
                float(lo, hi, n)
            } else if hi <= 0.0 {
                float(-hi, -lo, n)
            } else {
                float(0.0, (-lo).max(hi), n)
            }
        }
        (op, v) => {
            let Some((lo, hi, n)) = as_float(v) else { return env.fail() };
            match op {
                ScalarUnary::Exp => monotone(lo, hi, n, f64::NEG_INFINITY, f64::exp),
                ScalarUnary::Tanh => monotone(lo, hi, n, f64::NEG_INFINITY, f64::tanh),
                ScalarUnary::Sigmoid => monotone(lo, hi, n, f64::NEG_INFINITY, |x| 1.0 / (1.0 + (-x).exp())),
                ScalarUnary::Log => monotone(lo, hi, n, 0.0, f64::ln),
                ScalarUnary::Sqrt => monotone(lo, hi, n, 0.0, f64::sqrt),
                _ => FLOAT_TOP,
            }
        }
    }
}

/// Three-valued `<`-family comparison of two intervals; `nan` adds the
/// answers a NaN operand gives (false, or true for `!=`).
fn compare<T: PartialOrd + Copy>(op: ScalarBinary, a: (T, T), b: (T, T), nan: bool) -> Av {
    use ScalarBinary as B;
    let ((a0, a1), (b0, b1)) = (a, b);
    // (always true, always false) on non-NaN values.
    let (yes, no) = match op {
        B::Lt => (a1 < b0, a0 >= b1),
        B::Le => (a1 <= b0, a0 > b1),
        B::Gt => (a0 > b1, a1 <= b0),
        B::Ge => (a0 >= b1, a1 < b0),
        B::Eq | B::Ne => {
            let same = a0 == a1 && b0 == b1 && a0 == b0;
            let disjoint = a1 < b0 || b1 < a0;
            if op == B::Eq {
                (same, disjoint)
            } else {
                (disjoint, same)
            }
        }
        _ => (false, false),
    };
    let (mut t, mut f) = (!no, !yes);
    if nan {
        if op == B::Ne {
            t = true;
        } else {
            f = true;
        }
    }
    Av::Bool(t, f)
}

fn binary(op: ScalarBinary, a: Av, b: Av, env: &Env) -> Av {
    use ScalarBinary as B;
    if a == Av::Any || b == Av::Any {
        return env.fail();
    }
    if matches!(op, B::And | B::Or) {
        return match (a, b) {
            (Av::Bool(at, af), Av::Bool(bt, bf)) => {
                if op == B::And {
                    Av::Bool(at && bt, af || bf)
                } else {
                    Av::Bool(at || bt, af && bf)
                }
            }
            _ => env.fail(),
        };
    }
    if let (Av::Bool(at, af), Av::Bool(bt, bf)) = (a, b) {
        // Equal is possible when both can be true or both can be false.
        let can_eq = (at && bt) || (af && bf);
        let can_ne = (at && bf) || (af && bt);
        return match op {
            B::Eq => Av::Bool(can_eq, can_ne),
            B::Ne => Av::Bool(can_ne, can_eq),
            _ => env.fail(),
        };
    }
    if matches!(a, Av::Bool(..)) || matches!(b, Av::Bool(..)) {
        return env.fail();
    }
    if let (Av::Int(a0, a1), Av::Int(b0, b1)) = (a, b) {
        return int_binary(op, (a0 as i128, a1 as i128), (b0 as i128, b1 as i128));
    }
    let (Some((a0, a1, an)), Some((b0, b1, bn))) = (as_float(a), as_float(b)) else { return env.fail() };
    let nan = an || bn;
    if op.is_comparison() {
        return compare(op, (a0, a1), (b0, b1), nan);
    }
    let finite = a0.is_finite() && a1.is_finite() && b0.is_finite() && b1.is_finite();
    let corners = |f: fn(f64, f64) -> f64| {
        let c = [f(a0, b0), f(a0, b1), f(a1, b0), f(a1, b1)];
        let lo = c.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = c.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if c.iter().any(|x| x.is_nan()) {
            FLOAT_TOP
        } else {
            float(lo, hi, nan)
        }
    };
    match op {
        B::Add | B::Sub | B::Mul if !finite => FLOAT_TOP,
        B::Add => float(a0 + b0, a1 + b1, nan),
        B::Sub => float(a0 - b1, a1 - b0, nan),
        B::Mul => corners(|x, y| x * y),
        B::Div if !finite || (b0 <= 0.0 && b1 >= 0.0) => FLOAT_TOP,
        B::Div => corners(|x, y| x / y),
        B::Min | B::Max => {
            let (mut lo, mut hi) = if op == B::Min { (a0.min(b0), a1.min(b1)) } else { (a0.max(b0), a1.max(b1)) };
            // `f64::min`/`max` return the other operand when one is NaN.
            if an {
                lo = lo.min(b0);
                hi = hi.max(b1);
            }
            if bn {
                lo = lo.min(a0);
                hi = hi.max(a1);
            }
            float(lo, hi, an && bn)
        }
        _ => FLOAT_TOP, // float `%`
    }
}

fn int_binary(op: ScalarBinary, (a0, a1): (i128, i128), (b0, b1): (i128, i128)) -> Av {
    use ScalarBinary as B;
    match op {
        B::Add => int(a0 + b0, a1 + b1),
        B::Sub => int(a0 - b1, a1 - b0),
        B::Mul => {
            let c = [a0 * b0, a0 * b1, a1 * b0, a1 * b1];
            int(*c.iter().min().unwrap_or(&0), *c.iter().max().unwrap_or(&0))
        }
        B::Div => {
            // Split the divisor at 0 (`x / 0 == 0`); on a same-sign divisor
            // interval floor(x / y) is monotone in each argument, so its
            // extremes are at the corners.
            let mut acc: Option<(i128, i128)> = None;
            let mut add = |lo: i128, hi: i128| {
                acc = Some(match acc {
                    None => (lo, hi),
                    Some((l, h)) => (l.min(lo), h.max(hi)),
                })
            };
            if b0 <= 0 && b1 >= 0 {
                add(0, 0);
            }
            for (p, r) in [(b0, b1.min(-1)), (b0.max(1), b1)] {
                if p <= r {
                    let c = [fdiv(a0, p), fdiv(a0, r), fdiv(a1, p), fdiv(a1, r)];
                    add(*c.iter().min().unwrap_or(&0), *c.iter().max().unwrap_or(&0));
                }
            }
            let (lo, hi) = acc.unwrap_or((0, 0));
            int(lo, hi)
        }
        B::Mod => {
            let mut acc: Option<(i128, i128)> = None;
            let mut add = |lo: i128, hi: i128| {
                acc = Some(match acc {
                    None => (lo, hi),
                    Some((l, h)) => (l.min(lo), h.max(hi)),
                })
            };
            if b0 <= 0 && b1 >= 0 {
                add(a0, a1); // x % 0 == x
            }
            if b0 == b1 && b0 != 0 {
                let d = b0;
                if fdiv(a0, d) == fdiv(a1, d) {
                    // No wrap inside the interval: exact.
                    let (x, y) = (a0 - d * fdiv(a0, d), a1 - d * fdiv(a1, d));
                    add(x.min(y), x.max(y));
                } else if d > 0 {
                    add(0, d - 1);
                } else {
                    add(d + 1, 0);
                }
            } else {
                if b1 >= 1 {
                    // 0 <= x % y <= y - 1, and x % y == x for 0 <= x < y.
                    let p = b0.max(1);
                    if a0 >= 0 && a1 < p {
                        add(a0, a1);
                    } else {
                        let cap = if a0 >= 0 { a1.min(b1 - 1) } else { b1 - 1 };
                        add(0, cap);
                    }
                }
                if b0 <= -1 {
                    add(b0 + 1, 0);
                }
            }
            let (lo, hi) = acc.unwrap_or((0, 0));
            int(lo, hi)
        }
        B::Min => int(a0.min(b0), a1.min(b1)),
        B::Max => int(a0.max(b0), a1.max(b1)),
        _ => compare(op, (a0, a1), (b0, b1), false),
    }
}
