//! [`Tensor`], the interpreter's value: an element type, a shape and the
//! elements in row-major order, every one held as an `f64`.
//!
//! `f32`, `f16` and `bf16` values are *not* rounded as they flow through the
//! interpreter; [`Tensor::round_to_dtype`] rounds them (correctly: to
//! nearest, ties to even) when a caller wants the declared precision. `i32`
//! and `bool` elements are integers (`bool` is 0 or 1) and exact in `f64`.
//!
//! [`Limits`] bounds the size of every tensor the interpreter creates.

use tdl_ir::DType;

use crate::error::RunError;

/// A dense tensor: `data[i]` is the element whose row-major flat index is
/// `i`; `data.len()` equals the product of `shape` (1 for a scalar).
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

/// Bounds on what the interpreter allocates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The most elements any one tensor may have: inputs, intermediates,
    /// outputs and the `T×S` score matrix of an attention. Anything larger is
    /// a [`RunError::TooLarge`] before any allocation is attempted.
    pub max_elements: usize,
}

impl Default for Limits {
    /// `1 << 28` elements (2 GiB of `f64`) per tensor.
    fn default() -> Limits {
        Limits { max_elements: 1 << 28 }
    }
}

impl Limits {
    /// Checks that a tensor of `shape` fits; `what` names it in the error.
    pub fn check(&self, what: &str, shape: &[usize]) -> Result<usize, RunError> {
        match checked_numel(shape) {
            Some(n) if n <= self.max_elements => Ok(n),
            Some(n) => {
                Err(RunError::TooLarge { what: what.to_string(), elements: n.to_string(), limit: self.max_elements })
            }
            None => Err(RunError::TooLarge {
                what: what.to_string(),
                elements: format!("{} (more than fits in 64 bits)", shape_text(shape)),
                limit: self.max_elements,
            }),
        }
    }
}

/// The number of elements of `shape`, or `None` on overflow.
pub fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// `[2, 3, 4]`.
pub(crate) fn shape_text(shape: &[usize]) -> String {
    let parts: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

// Row-major strides and multi-index stepping are shared with every
// executor (the caller guarantees the element count does not overflow: every
// shape the interpreter builds passed [`Limits::check`] or belongs to an
// existing tensor).
pub(crate) use tdl_ir::layout::{next_index, strides};

/// Rounds `v` to the nearest value of `dtype` (ties to even for floats;
/// overflow gives ±inf). `i32` wraps modulo 2³² after truncation toward zero
/// (NaN and ±inf become 0); `bool` is 1 for any non-zero value (NaN included)
/// and 0 otherwise.
pub fn round_value(dtype: DType, v: f64) -> f64 {
    match dtype {
        DType::F32 => v as f32 as f64,
        // f16: 11 significant bits, smallest normal exponent -14, largest finite 65504.
        DType::F16 => round_float(v, 11, -14, 65504.0),
        // bf16: 8 significant bits, the exponent range of f32.
        DType::BF16 => round_float(v, 8, -126, f64::from_bits(0x47EF_E000_0000_0000)),
        DType::I32 => wrap_i32(v),
        DType::Bool => {
            if v != 0.0 {
                1.0
            } else {
                0.0
            }
        }
    }
}

/// Correct rounding of `v` to a binary format with `precision` significant
/// bits, minimum normal exponent `emin` and largest finite value `max`.
fn round_float(v: f64, precision: i32, emin: i32, max: f64) -> f64 {
    if !v.is_finite() || v == 0.0 {
        return v;
    }
    let biased = ((v.to_bits() >> 52) & 0x7ff) as i32;
    // f64 subnormals are far below every target's subnormal range.
    let e = if biased == 0 { emin } else { (biased - 1023).max(emin) };
    let quantum = 2f64.powi(e - (precision - 1));
    // Scaling by a power of two is exact, so this rounds exactly once.
    let r = (v / quantum).round_ties_even() * quantum;
    if r.abs() > max {
        f64::INFINITY.copysign(v)
    } else {
        r
    }
}

/// Wraps an integral value to `i32` (two's complement), as `i32` arithmetic
/// does; the fractional part is truncated, NaN and ±inf give 0.
pub(crate) fn wrap_i32(v: f64) -> f64 {
    if !v.is_finite() {
        return 0.0;
    }
    let t = v.trunc();
    if (i32::MIN as f64..=i32::MAX as f64).contains(&t) {
        return t;
    }
    // fmod is exact in floating point.
    let m = t.rem_euclid(4_294_967_296.0);
    if m >= 2_147_483_648.0 {
        m - 4_294_967_296.0
    } else {
        m
    }
}

impl Tensor {
    /// A tensor from its parts; fails when `data.len()` is not the product
    /// of `shape`.
    pub fn new(dtype: DType, shape: Vec<usize>, data: Vec<f64>) -> Result<Tensor, RunError> {
        match checked_numel(&shape) {
            Some(n) if n == data.len() => Ok(Tensor { dtype, shape, data }),
            Some(n) => Err(RunError::BadTensor(format!(
                "shape {} needs {n} elements, but {} were given",
                shape_text(&shape),
                data.len()
            ))),
            None => {
                Err(RunError::BadTensor(format!("shape {} has more elements than fit in 64 bits", shape_text(&shape))))
            }
        }
    }

    /// A tensor of zeros; fails (without allocating) over the default
    /// [`Limits`].
    pub fn zeros(dtype: DType, shape: &[usize]) -> Result<Tensor, RunError> {
        let n = Limits::default().check("a zeros tensor", shape)?;
        Ok(Tensor { dtype, shape: shape.to_vec(), data: vec![0.0; n] })
    }

    /// A rank-0 tensor.
    pub fn scalar(dtype: DType, value: f64) -> Tensor {
        Tensor { dtype, shape: Vec::new(), data: vec![value] }
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// The element at a multi-index; `None` when the index has the wrong
    /// length or is out of range.
    pub fn get(&self, index: &[usize]) -> Option<f64> {
        if index.len() != self.shape.len() {
            return None;
        }
        let mut flat = 0usize;
        for (&i, &d) in index.iter().zip(&self.shape) {
            if i >= d {
                return None;
            }
            flat = flat.checked_mul(d)?.checked_add(i)?;
        }
        self.data.get(flat).copied()
    }

    /// Every element rounded to the tensor's element type (see
    /// [`round_value`]): what a backend computing in that type would store.
    pub fn round_to_dtype(&self) -> Tensor {
        Tensor {
            dtype: self.dtype,
            shape: self.shape.clone(),
            data: self.data.iter().map(|&v| round_value(self.dtype, v)).collect(),
        }
    }

    /// The largest `|a - b|` over corresponding elements. Equal infinities
    /// and two NaNs count as equal (0); a NaN against a number, or an
    /// infinity against anything else, counts as `inf`; so do different
    /// shapes.
    pub fn max_abs_diff(&self, other: &Tensor) -> f64 {
        if self.shape != other.shape || self.data.len() != other.data.len() {
            return f64::INFINITY;
        }
        let mut worst = 0.0f64;
        for (&a, &b) in self.data.iter().zip(&other.data) {
            let d = if a == b || (a.is_nan() && b.is_nan()) {
                0.0
            } else if a.is_nan() || b.is_nan() {
                f64::INFINITY
            } else {
                (a - b).abs()
            };
            if d > worst {
                worst = d;
            }
        }
        worst
    }

    /// `true` when no element is NaN or infinite.
    pub fn all_finite(&self) -> bool {
        self.data.iter().all(|v| v.is_finite())
    }

    /// `f32[2, 3]`: the tensor's type as the language writes it.
    pub fn type_text(&self) -> String {
        tdl_ir::layout::type_text(self.dtype, &self.shape)
    }

    /// Checks that every element is a value of the element type: integers
    /// in `i32` range for `i32`, 0 or 1 for `bool` (floats may be anything,
    /// NaN and infinities included).
    pub fn check_values(&self) -> Result<(), String> {
        let bad = match self.dtype {
            DType::I32 => {
                self.data.iter().position(|&v| !(v.fract() == 0.0 && (i32::MIN as f64..=i32::MAX as f64).contains(&v)))
            }
            DType::Bool => self.data.iter().position(|&v| v != 0.0 && v != 1.0),
            _ => None,
        };
        match bad {
            None => Ok(()),
            Some(i) => Err(format!(
                "element {i} is {}, which is not an {} value{}",
                self.data[i],
                self.dtype,
                if self.dtype == DType::Bool { " (0 or 1)" } else { " (an integer in i32 range)" }
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_correct_to_nearest_even() {
        // f16: the spacing above 1 is 2^-10; 1 + 2^-11 is a tie (to even: 1).
        assert_eq!(round_value(DType::F16, 1.0 + 2f64.powi(-11)), 1.0);
        // Just above the tie rounds up (a sticky bit far below f32 precision).
        assert_eq!(round_value(DType::F16, 1.0 + 2f64.powi(-11) + 2f64.powi(-40)), 1.0 + 2f64.powi(-10));
        assert_eq!(round_value(DType::F16, 65504.0), 65504.0);
        assert_eq!(round_value(DType::F16, 65519.99), 65504.0);
        assert_eq!(round_value(DType::F16, 65520.0), f64::INFINITY);
        assert_eq!(round_value(DType::F16, -1e6), f64::NEG_INFINITY);
        // Smallest f16 subnormal 2^-24; half of it ties to 0.
        assert_eq!(round_value(DType::F16, 2f64.powi(-24)), 2f64.powi(-24));
        assert_eq!(round_value(DType::F16, 2f64.powi(-25)), 0.0);
        assert_eq!(round_value(DType::F16, 1.5 * 2f64.powi(-25)), 2f64.powi(-24));
        // bf16: 8 significant bits.
        assert_eq!(round_value(DType::BF16, 1.0 + 2f64.powi(-8)), 1.0);
        assert_eq!(round_value(DType::BF16, 1.0 + 3.0 * 2f64.powi(-8)), 1.0 + 2f64.powi(-6));
        assert_eq!(round_value(DType::BF16, 3.39e38), f64::from_bits(0x47EF_E000_0000_0000));
        assert_eq!(round_value(DType::BF16, 3.4e38), f64::INFINITY);
        assert_eq!(round_value(DType::F32, 0.1), 0.1f32 as f64);
        assert!(round_value(DType::F16, f64::NAN).is_nan());
        // Agrees with the half crate where that one is exact (f32 inputs).
        for i in 0..2000 {
            let x = (i as f64 - 1000.0) * 0.0371;
            let xf = x as f32 as f64;
            assert_eq!(round_value(DType::F16, xf), half::f16::from_f32(xf as f32).to_f64());
            assert_eq!(round_value(DType::BF16, xf), half::bf16::from_f32(xf as f32).to_f64());
        }
    }

    #[test]
    fn i32_wraps_and_bool_is_zero_one() {
        assert_eq!(round_value(DType::I32, 2_147_483_648.0), -2_147_483_648.0);
        assert_eq!(round_value(DType::I32, -2_147_483_649.0), 2_147_483_647.0);
        assert_eq!(round_value(DType::I32, 4_294_967_301.0), 5.0);
        assert_eq!(round_value(DType::I32, -7.9), -7.0);
        assert_eq!(round_value(DType::I32, f64::NAN), 0.0);
        assert_eq!(round_value(DType::Bool, 0.5), 1.0);
        assert_eq!(round_value(DType::Bool, 0.0), 0.0);
    }

    #[test]
    fn get_and_new() {
        let t = Tensor::new(DType::F32, vec![2, 3], (0..6).map(f64::from).collect()).unwrap();
        assert_eq!(t.get(&[1, 2]), Some(5.0));
        assert_eq!(t.get(&[2, 0]), None);
        assert_eq!(t.get(&[1]), None);
        assert!(Tensor::new(DType::F32, vec![2, 3], vec![0.0; 5]).is_err());
        assert!(Tensor::new(DType::F32, vec![usize::MAX, 3], vec![]).is_err());
        assert!(Tensor::zeros(DType::F32, &[1 << 20, 1 << 20]).is_err());
        assert_eq!(Tensor::scalar(DType::I32, 3.0).get(&[]), Some(3.0));
    }

    #[test]
    fn max_abs_diff_handles_specials() {
        let a = Tensor::new(DType::F32, vec![3], vec![1.0, f64::NEG_INFINITY, f64::NAN]).unwrap();
        assert_eq!(a.max_abs_diff(&a), 0.0);
        let b = Tensor::new(DType::F32, vec![3], vec![1.5, f64::NEG_INFINITY, f64::NAN]).unwrap();
        assert_eq!(a.max_abs_diff(&b), 0.5);
        let c = Tensor::new(DType::F32, vec![3], vec![1.0, 0.0, f64::NAN]).unwrap();
        assert_eq!(a.max_abs_diff(&c), f64::INFINITY);
        assert_eq!(a.max_abs_diff(&Tensor::scalar(DType::F32, 1.0)), f64::INFINITY);
        assert!(!a.all_finite());
    }
}
