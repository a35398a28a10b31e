//! `.safetensors` weight files through the `safetensors` crate.
//!
//! Element types `F32`, `F16`, `BF16`, `I32` and `BOOL` are read (little
//! endian, C order, as the format defines); any other is an error naming the
//! tensor and its type.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use tdl_ir::DType;

use crate::error::IoError;
use crate::tensor::Tensor;

/// Every tensor of a `.safetensors` file, by name.
pub fn load_safetensors(path: impl AsRef<Path>) -> Result<BTreeMap<String, Tensor>, IoError> {
    load_safetensors_where(path, |_| true)
}

/// Like [`load_safetensors`], but converts only the tensors whose names
/// `wanted` accepts (the others are not decoded at all), and refuses any
/// tensor over the default [`crate::Limits`] before converting it.
pub fn load_safetensors_where(
    path: impl AsRef<Path>,
    wanted: impl Fn(&str) -> bool,
) -> Result<BTreeMap<String, Tensor>, IoError> {
    let path = path.as_ref();
    let bad = |message: String| IoError::BadSafetensors { path: path.to_path_buf(), message };
    let bytes = std::fs::read(path).map_err(|e| IoError::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let mut out = BTreeMap::new();
    let limits = crate::Limits::default();
    for (name, view) in st.tensors() {
        if !wanted(&name) {
            continue;
        }
        limits.check(&format!("weight `{name}`"), view.shape()).map_err(|e| bad(e.to_string()))?;
        let raw = view.data();
        let (dtype, data): (DType, Vec<f64>) = match view.dtype() {
            Dtype::F32 => (
                DType::F32,
                raw.chunks_exact(4).map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect(),
            ),
            Dtype::F16 => {
                (DType::F16, raw.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64()).collect())
            }
            Dtype::BF16 => {
                (DType::BF16, raw.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64()).collect())
            }
            Dtype::I32 => (
                DType::I32,
                raw.chunks_exact(4).map(|c| f64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect(),
            ),
            Dtype::BOOL => {
                if let Some(b) = raw.iter().find(|&&b| b > 1) {
                    return Err(bad(format!("tensor `{name}` holds the byte {b}, which is not a bool (0 or 1)")));
                }
                (DType::Bool, raw.iter().map(|&b| f64::from(b)).collect())
            }
            other => {
                return Err(IoError::SafetensorsDType { path: path.to_path_buf(), name, dtype: other.to_string() })
            }
        };
        let t = Tensor::new(dtype, view.shape().to_vec(), data).map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
        out.insert(name, t);
    }
    Ok(out)
}
