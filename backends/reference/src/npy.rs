//! `.npy` files (NumPy's array format) through the `npyz` crate.
//!
//! Element types: `f32` (`<f4`), `f16` (`<f2`), `i32` (`<i4`), `bool`
//! (`|b1`), either byte order. NumPy has no bf16, so a `bf16` tensor is
//! stored as its raw bits in a `uint16` array (`<u2`): [`write_npy`] writes
//! that, and [`read_npy_as`] with [`DType::BF16`] reads a `<u2` array back as
//! bf16. Other element types (`float64`, `int64`, ...) and Fortran-order
//! arrays are rejected with an error that says what to do.

use std::fs::File;
use std::io::BufWriter;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use npyz::{NpyFile, NpyHeader, TypeChar, WriterBuilder};
use tdl_ir::DType;

use crate::error::IoError;
use crate::tensor::{checked_numel, round_value, Tensor};

/// What a `.npy` file holds, element-wise.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stored {
    Typed(DType),
    /// `<u2`: bf16 bits when the caller asks for bf16.
    RawU16,
}

/// Reads a `.npy` file of `f32`, `f16`, `i32` or `bool` elements. A `<u2`
/// (bf16-as-raw-bits) file needs [`read_npy_as`] with [`DType::BF16`].
pub fn read_npy(path: impl AsRef<Path>) -> Result<Tensor, IoError> {
    read(path.as_ref(), None)
}

/// Reads a `.npy` file that must hold `expected` elements (for
/// [`DType::BF16`]: a `<u2` array of raw bf16 bits).
pub fn read_npy_as(path: impl AsRef<Path>, expected: DType) -> Result<Tensor, IoError> {
    read(path.as_ref(), Some(expected))
}

fn stored_name(s: Stored) -> String {
    match s {
        Stored::Typed(DType::BF16) => "bf16 (stored as <u2)".to_string(),
        Stored::Typed(d) => format!("{d} ({})", npy_code(d)),
        Stored::RawU16 => "uint16 (<u2, raw bf16 bits)".to_string(),
    }
}

fn npy_code(d: DType) -> &'static str {
    match d {
        DType::F32 => "<f4",
        DType::F16 => "<f2",
        DType::BF16 => "<u2",
        DType::I32 => "<i4",
        DType::Bool => "|b1",
    }
}

fn friendly(tc: TypeChar, size: u64) -> String {
    match tc {
        TypeChar::Float => format!("float{}", size * 8),
        TypeChar::Int => format!("int{}", size * 8),
        TypeChar::Uint => format!("uint{}", size * 8),
        TypeChar::Complex => format!("complex{}", size * 8),
        TypeChar::Bool => "bool".to_string(),
        _ => "a non-numeric type".to_string(),
    }
}

fn read(path: &Path, expected: Option<DType>) -> Result<Tensor, IoError> {
    let bad = |message: String| IoError::BadNpy { path: path.to_path_buf(), message };
    let bytes = std::fs::read(path).map_err(|e| IoError::io(path, e))?;
    // npyz allocates the header's declared length before reading it; make
    // sure the file actually holds that many bytes (the fixed preamble is
    // magic, version, then a u16 (v1) or u32 (v2, v3) little-endian length).
    let declared = match (bytes.get(6), bytes.get(8..10), bytes.get(8..12)) {
        (Some(1), Some(l), _) => Some(u16::from_le_bytes([l[0], l[1]]) as usize + 10),
        (Some(2 | 3), _, Some(l)) => {
            usize::try_from(u32::from_le_bytes([l[0], l[1], l[2], l[3]])).ok().and_then(|n| n.checked_add(12))
        }
        _ => None, // npyz reports a bad magic or version
    };
    if let Some(end) = declared {
        if end > bytes.len() {
            return Err(bad(format!("the header claims {end} bytes, but the file has only {}", bytes.len())));
        }
    }
    let mut rest: &[u8] = &bytes;
    // npyz multiplies the header's shape out without overflow checks, which
    // panics in debug builds on a hostile header (release builds wrap, and
    // the checked product below rejects it); contain that.
    let header = match catch_unwind(AssertUnwindSafe(|| NpyHeader::from_reader(&mut rest))) {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => return Err(bad(e.to_string())),
        Err(_) => return Err(bad("the header's shape has more elements than fit in 64 bits".to_string())),
    };
    let ts = match header.dtype() {
        npyz::DType::Plain(ts) => ts,
        other => {
            return Err(IoError::NpyDType {
                path: path.to_path_buf(),
                found: format!("a structured type {}", other.descr()),
                hint: String::new(),
            })
        }
    };
    let (tc, size) = (ts.type_char(), ts.size_field());
    let stored = match (tc, size) {
        (TypeChar::Float, 4) => Stored::Typed(DType::F32),
        (TypeChar::Float, 2) => Stored::Typed(DType::F16),
        (TypeChar::Int, 4) => Stored::Typed(DType::I32),
        (TypeChar::Bool, 1) => Stored::Typed(DType::Bool),
        (TypeChar::Uint, 2) => Stored::RawU16,
        _ => {
            let hint = match (tc, size) {
                (TypeChar::Float, 8) => "; convert with a.astype(np.float32)",
                (TypeChar::Int, _) | (TypeChar::Uint, _) => "; convert with a.astype(np.int32)",
                _ => "",
            };
            return Err(IoError::NpyDType {
                path: path.to_path_buf(),
                found: format!("{} ({ts})", friendly(tc, size)),
                hint: hint.to_string(),
            });
        }
    };
    let dtype = match (stored, expected) {
        (Stored::RawU16, Some(DType::BF16)) => DType::BF16,
        (Stored::RawU16, None) => {
            return Err(IoError::NpyDType {
                path: path.to_path_buf(),
                found: format!("uint16 ({ts})"),
                hint: "; a <u2 file is read as bf16 only where bf16 is expected (read_npy_as with bf16)".to_string(),
            })
        }
        (Stored::Typed(d), None) => d,
        (Stored::Typed(d), Some(e)) if d == e => d,
        (s, Some(e)) => {
            return Err(IoError::DTypeMismatch {
                path: path.to_path_buf(),
                expected: stored_name(Stored::Typed(e)),
                found: stored_name(s),
            })
        }
    };
    if header.order() == npyz::Order::Fortran {
        return Err(IoError::FortranOrder { path: path.to_path_buf() });
    }
    let shape: Vec<usize> = header
        .shape()
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| bad(format!("shape {:?} does not fit in memory sizes", header.shape())))?;
    let n =
        checked_numel(&shape).ok_or_else(|| bad(format!("shape {shape:?} has more elements than fit in 64 bits")))?;
    let need = n.checked_mul(size as usize).ok_or_else(|| bad(format!("shape {shape:?} is too large")))?;
    if rest.len() < need {
        return Err(bad(format!(
            "shape {shape:?} of {ts} needs {need} data bytes, but the file holds only {}",
            rest.len()
        )));
    }
    let file = NpyFile::with_header(header, rest);
    let err = |e: std::io::Error| bad(e.to_string());
    let data: Vec<f64> = match (stored, dtype) {
        (Stored::RawU16, _) => {
            file.into_vec::<u16>().map_err(err)?.into_iter().map(|b| half::bf16::from_bits(b).to_f64()).collect()
        }
        (_, DType::F32) => file.into_vec::<f32>().map_err(err)?.into_iter().map(f64::from).collect(),
        (_, DType::F16) => file.into_vec::<half::f16>().map_err(err)?.into_iter().map(|x| x.to_f64()).collect(),
        (_, DType::I32) => file.into_vec::<i32>().map_err(err)?.into_iter().map(f64::from).collect(),
        (_, DType::Bool) => {
            file.into_vec::<bool>().map_err(err)?.into_iter().map(|b| if b { 1.0 } else { 0.0 }).collect()
        }
        (_, DType::BF16) => return Err(bad("bf16 is only stored as <u2".to_string())),
    };
    Tensor::new(dtype, shape, data).map_err(|e| bad(e.to_string()))
}

/// Writes `t` as a C-order `.npy` file, each element rounded to the
/// tensor's element type (bf16 as raw `<u2` bits).
pub fn write_npy(path: impl AsRef<Path>, t: &Tensor) -> Result<(), IoError> {
    let path = path.as_ref();
    if checked_numel(&t.shape) != Some(t.data.len()) {
        return Err(IoError::Invalid {
            path: path.to_path_buf(),
            message: format!("cannot write a tensor of shape {:?} holding {} elements", t.shape, t.data.len()),
        });
    }
    let shape: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
    let r = |v: f64| round_value(t.dtype, v);
    match t.dtype {
        DType::F32 => write_as(path, &shape, t.data.iter().map(|&v| v as f32)),
        DType::F16 => write_as(path, &shape, t.data.iter().map(|&v| half::f16::from_f64(r(v)))),
        DType::BF16 => write_as(path, &shape, t.data.iter().map(|&v| half::bf16::from_f64(r(v)).to_bits())),
        DType::I32 => write_as(path, &shape, t.data.iter().map(|&v| r(v) as i32)),
        DType::Bool => write_as(path, &shape, t.data.iter().map(|&v| v != 0.0)),
    }
}

fn write_as<T: npyz::AutoSerialize>(path: &Path, shape: &[u64], items: impl Iterator<Item = T>) -> Result<(), IoError> {
    let io = |e: std::io::Error| IoError::io(path, e);
    let file = File::create(path).map_err(io)?;
    let mut w =
        npyz::WriteOptions::new().default_dtype().shape(shape).writer(BufWriter::new(file)).begin_nd().map_err(io)?;
    w.extend(items).map_err(io)?;
    w.finish().map_err(io)
}
