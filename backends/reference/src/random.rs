//! Deterministic random tensors for tests and benchmarks.
//!
//! The generator is SplitMix64 (Steele, Lea and Flood 2014), written out
//! here, so a seed gives the same tensor on every platform and forever.

use tdl_ir::DType;

use crate::error::RunError;
use crate::tensor::{Limits, Tensor};

/// SplitMix64.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A deterministic random tensor.
///
/// * floats: uniform in `[-1, 1)` on a grid every value of which is exact
///   in the element type (steps of 2⁻²³ for `f32`, 2⁻¹⁰ for `f16`, 2⁻⁷ for
///   `bf16`), so the tensor means the same to the interpreter and to a
///   backend that stores it in that type;
/// * `i32`: document-style ids: along each row of the last axis a
///   non-decreasing run starting at 0 and ending at most at 3 (about three
///   document boundaries per row), for `document` masks;
/// * `bool`: a fair coin per element.
///
/// # Panics
///
/// When `shape` has more elements than [`Limits::default`] allows; use
/// [`try_random_tensor`] for sizes that come from users.
pub fn random_tensor(dtype: DType, shape: &[usize], seed: u64) -> Tensor {
    match try_random_tensor(dtype, shape, seed, &Limits::default()) {
        Ok(t) => t,
        Err(e) => panic!("random_tensor: {e}"),
    }
}

/// [`random_tensor`], with an error instead of a panic over `limits`.
pub fn try_random_tensor(dtype: DType, shape: &[usize], seed: u64, limits: &Limits) -> Result<Tensor, RunError> {
    let n = limits.check("the random tensor", shape)?;
    let mut rng = SplitMix64::new(seed);
    let data: Vec<f64> = match dtype {
        DType::F32 | DType::F16 | DType::BF16 => {
            let bits: u32 = match dtype {
                DType::F32 => 24,
                DType::F16 => 11,
                _ => 8,
            };
            let step = 2f64.powi(1 - bits as i32);
            (0..n).map(|_| (rng.next_u64() >> (64 - bits)) as f64 * step - 1.0).collect()
        }
        DType::Bool => (0..n).map(|_| (rng.next_u64() & 1) as f64).collect(),
        DType::I32 => {
            let row = shape.last().copied().unwrap_or(1).max(1) as u64;
            let mut id = 0.0;
            (0..n as u64)
                .map(|i| {
                    if i % row == 0 {
                        id = 0.0;
                    } else if id < 3.0 && rng.next_u64() % row < 3 {
                        id += 1.0;
                    }
                    id
                })
                .collect()
        }
    };
    Tensor::new(dtype, shape.to_vec(), data)
}
