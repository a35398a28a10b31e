//! Element types, symbolic dimensions and the types of graph values.

use std::collections::BTreeMap;
use std::fmt;

/// The element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum DType {
    F32,
    F16,
    BF16,
    I32,
    Bool,
}

impl DType {
    pub const ALL: [DType; 5] = [DType::F32, DType::F16, DType::BF16, DType::I32, DType::Bool];

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I32 => "i32",
            DType::Bool => "bool",
        }
    }

    pub fn from_name(s: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == s)
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    /// Size of one element in bytes as stored in memory.
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Bool => 1,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Values bound to dimension symbols at run time (`T = 4096`).
pub type Bindings = BTreeMap<String, i64>;

/// Errors of dimension arithmetic.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DimError {
    #[error("dimension arithmetic overflows 64-bit integers")]
    Overflow,
    #[error("symbol `{0}` is not bound")]
    Unbound(String),
    #[error("dimension expression is too complex (more than {MAX_DIM_TERMS} terms, or a term of more than {MAX_DIM_DEGREE} symbols)")]
    TooComplex,
}

/// The most terms a [`Dim`] polynomial may have.
pub const MAX_DIM_TERMS: usize = 64;
/// The most symbols one term of a [`Dim`] may multiply.
pub const MAX_DIM_DEGREE: usize = 64;

/// A dimension: a polynomial with integer coefficients over dimension symbols,
/// such as `64`, `T`, `2*T` or `H*T + 1`.
///
/// Invariant: kept in canonical form — every monomial is a sorted list of
/// symbols (the empty list is the constant term) and no coefficient is zero —
/// so structural equality is polynomial equality.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, serde::Serialize, serde::Deserialize)]
pub struct Dim {
    terms: BTreeMap<Vec<String>, i64>,
}

impl Dim {
    pub fn constant(c: i64) -> Dim {
        let mut terms = BTreeMap::new();
        if c != 0 {
            terms.insert(Vec::new(), c);
        }
        Dim { terms }
    }

    pub fn sym(name: &str) -> Dim {
        let mut terms = BTreeMap::new();
        terms.insert(vec![name.to_string()], 1);
        Dim { terms }
    }

    /// The monomials and their coefficients, constant term first.
    pub fn terms(&self) -> impl Iterator<Item = (&[String], i64)> {
        self.terms.iter().map(|(m, c)| (m.as_slice(), *c))
    }

    /// `Some(c)` when the dimension is the constant `c`.
    pub fn as_const(&self) -> Option<i64> {
        match self.terms.len() {
            0 => Some(0),
            1 => self.terms.get(&Vec::new()).copied(),
            _ => None,
        }
    }

    /// `Some(name)` when the dimension is exactly one symbol.
    pub fn as_sym(&self) -> Option<&str> {
        if self.terms.len() != 1 {
            return None;
        }
        let (m, c) = self.terms.iter().next()?;
        if *c == 1 && m.len() == 1 {
            Some(&m[0])
        } else {
            None
        }
    }

    pub fn is_const(&self) -> bool {
        self.as_const().is_some()
    }

    /// Every symbol the dimension mentions, sorted, without repetition.
    pub fn symbols(&self) -> Vec<String> {
        let mut out: Vec<String> = self.terms.keys().flatten().cloned().collect();
        out.sort();
        out.dedup();
        out
    }

    pub fn checked_add(&self, other: &Dim) -> Result<Dim, DimError> {
        let mut terms = self.terms.clone();
        for (m, c) in &other.terms {
            if terms.len() >= MAX_DIM_TERMS && !terms.contains_key(m) {
                return Err(DimError::TooComplex);
            }
            let e = terms.entry(m.clone()).or_insert(0);
            *e = e.checked_add(*c).ok_or(DimError::Overflow)?;
        }
        terms.retain(|_, c| *c != 0);
        Ok(Dim { terms })
    }

    pub fn checked_neg(&self) -> Result<Dim, DimError> {
        let mut terms = BTreeMap::new();
        for (m, c) in &self.terms {
            terms.insert(m.clone(), c.checked_neg().ok_or(DimError::Overflow)?);
        }
        Ok(Dim { terms })
    }

    pub fn checked_sub(&self, other: &Dim) -> Result<Dim, DimError> {
        self.checked_add(&other.checked_neg()?)
    }

    pub fn checked_mul(&self, other: &Dim) -> Result<Dim, DimError> {
        let mut terms: BTreeMap<Vec<String>, i64> = BTreeMap::new();
        for (ma, ca) in &self.terms {
            for (mb, cb) in &other.terms {
                let mut m = ma.clone();
                m.extend(mb.iter().cloned());
                m.sort();
                if m.len() > MAX_DIM_DEGREE {
                    // Keeps pathological products (a reshape of 10 000 symbols)
                    // from building monomials without bound.
                    return Err(DimError::TooComplex);
                }
                let c = ca.checked_mul(*cb).ok_or(DimError::Overflow)?;
                if terms.len() >= MAX_DIM_TERMS && !terms.contains_key(&m) {
                    return Err(DimError::TooComplex);
                }
                let e = terms.entry(m).or_insert(0);
                *e = e.checked_add(c).ok_or(DimError::Overflow)?;
            }
        }
        terms.retain(|_, c| *c != 0);
        Ok(Dim { terms })
    }

    /// The product of several dimensions (the element count of a shape).
    pub fn product<'a>(dims: impl IntoIterator<Item = &'a Dim>) -> Result<Dim, DimError> {
        let mut acc = Dim::constant(1);
        for d in dims {
            acc = acc.checked_mul(d)?;
        }
        Ok(acc)
    }

    /// Evaluates the dimension under `bindings`, with checked arithmetic.
    pub fn eval(&self, bindings: &Bindings) -> Result<i64, DimError> {
        let mut total: i64 = 0;
        for (m, c) in &self.terms {
            let mut v = *c;
            for s in m {
                let b = *bindings.get(s).ok_or_else(|| DimError::Unbound(s.clone()))?;
                v = v.checked_mul(b).ok_or(DimError::Overflow)?;
            }
            total = total.checked_add(v).ok_or(DimError::Overflow)?;
        }
        Ok(total)
    }
}

impl From<i64> for Dim {
    fn from(c: i64) -> Dim {
        Dim::constant(c)
    }
}

impl fmt::Debug for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dim({self})")
    }
}

/// Prints `2*H*T + T - 1`: monomials of higher degree first, then by name,
/// the constant last. The text form's dimension parser reads this back.
impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.terms.is_empty() {
            return f.write_str("0");
        }
        let mut order: Vec<(&Vec<String>, i64)> = self.terms.iter().map(|(m, c)| (m, *c)).collect();
        order.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(b.0)));
        for (i, (m, c)) in order.into_iter().enumerate() {
            let mag = c.unsigned_abs();
            if i == 0 {
                if c < 0 {
                    f.write_str("-")?;
                }
            } else if c < 0 {
                f.write_str(" - ")?;
            } else {
                f.write_str(" + ")?;
            }
            if m.is_empty() {
                write!(f, "{mag}")?;
            } else {
                if mag != 1 {
                    write!(f, "{mag}*")?;
                }
                f.write_str(&m.join("*"))?;
            }
        }
        Ok(())
    }
}

/// The type of a tensor value: element type and shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Vec<Dim>,
}

impl TensorType {
    pub fn new(dtype: DType, shape: Vec<Dim>) -> TensorType {
        TensorType { dtype, shape }
    }

    pub fn scalar(dtype: DType) -> TensorType {
        TensorType { dtype, shape: Vec::new() }
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Evaluates every dimension under `bindings`.
    pub fn concrete_shape(&self, bindings: &Bindings) -> Result<Vec<i64>, DimError> {
        self.shape.iter().map(|d| d.eval(bindings)).collect()
    }

    /// Every symbol the shape mentions, sorted, without repetition.
    pub fn symbols(&self) -> Vec<String> {
        let mut out: Vec<String> = self.shape.iter().flat_map(|d| d.symbols()).collect();
        out.sort();
        out.dedup();
        out
    }
}

/// Prints `f32[H, T, 64]`; a scalar prints as `f32[]`.
impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[", self.dtype)?;
        for (i, d) in self.shape.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// The type of a graph value. A mask is a typed value of its own, not a
/// tensor: its shape is implied by the scores it is applied to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Type {
    Tensor(TensorType),
    Mask,
}

impl Type {
    pub fn as_tensor(&self) -> Option<&TensorType> {
        match self {
            Type::Tensor(t) => Some(t),
            Type::Mask => None,
        }
    }
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Type::Tensor(t) => write!(f, "{t}"),
            Type::Mask => f.write_str("mask"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dim_arithmetic_is_canonical() {
        let t = Dim::sym("T");
        let two_t = t.checked_add(&t).unwrap();
        assert_eq!(two_t.to_string(), "2*T");
        assert_eq!(two_t.checked_sub(&t).unwrap(), t);
        let ht = Dim::sym("H").checked_mul(&t).unwrap();
        assert_eq!(ht, t.checked_mul(&Dim::sym("H")).unwrap());
        let p = ht.checked_add(&Dim::constant(-1)).unwrap();
        assert_eq!(p.to_string(), "H*T - 1");
        assert_eq!(Dim::constant(0).to_string(), "0");
        assert_eq!(Dim::constant(-3).to_string(), "-3");
        let mut b = Bindings::new();
        b.insert("H".into(), 3);
        b.insert("T".into(), 5);
        assert_eq!(p.eval(&b), Ok(14));
        assert_eq!(Dim::sym("S").eval(&b), Err(DimError::Unbound("S".into())));
    }

    #[test]
    fn dim_polynomials_stay_small() {
        // (A + B + ... + J)^3 has 220 terms: too complex, not a slow expansion.
        let sum = (b'A'..=b'J')
            .map(|c| Dim::sym(&(c as char).to_string()))
            .try_fold(Dim::constant(0), |a, d| a.checked_add(&d))
            .unwrap();
        let sq = sum.checked_mul(&sum).unwrap();
        assert_eq!(sq.checked_mul(&sum), Err(DimError::TooComplex));
    }

    #[test]
    fn dim_overflow_is_an_error() {
        let big = Dim::constant(i64::MAX);
        assert_eq!(big.checked_add(&Dim::constant(1)), Err(DimError::Overflow));
        assert_eq!(big.checked_mul(&Dim::constant(2)), Err(DimError::Overflow));
    }

    #[test]
    fn tensor_type_display() {
        let t = TensorType::new(DType::F32, vec![Dim::sym("H"), Dim::sym("T"), Dim::constant(64)]);
        assert_eq!(t.to_string(), "f32[H, T, 64]");
        assert_eq!(TensorType::scalar(DType::Bool).to_string(), "bool[]");
    }
}
