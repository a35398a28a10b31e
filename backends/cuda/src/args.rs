//! Kernel arguments and their packing into `cuLaunchKernel`'s parameters.
//!
//! `cuLaunchKernel` takes `void **kernelParams`: one pointer per kernel
//! parameter, each to a value of that parameter's size. [`pack_params`]
//! turns [`KernelArg`]s into that flat list of values (as bytes); the launch
//! stores each in its own 8-byte slot and passes the slots' addresses.
//!
//! # The MemRef ABI
//! A `memref<…xT>` parameter of a `gpu.func` lowered by MLIR's
//! `gpu-to-nvvm` (the default, non-bare-pointer calling convention) becomes
//! `2 + 1 + 2·rank` kernel parameters, in this order:
//!
//! | # | value | PTX type |
//! |---|-------|----------|
//! | 0 | allocated pointer (the buffer's device address) | `.u64` |
//! | 1 | aligned pointer (the same address) | `.u64` |
//! | 2 | offset, in elements | `.u64` (i64) |
//! | 3 … 3+rank-1 | sizes, outermost first | `.u64` (i64) |
//! | 3+rank … 3+2·rank-1 | strides, in elements | `.u64` (i64) |
//!
//! Element `[i0, …, ik]` is at `aligned + e·(offset + Σ ij·stridej)` for
//! elements of `e` bytes ([`KernelArg::MemRef`]'s `elem_bytes`: 4 for the
//! `f32`/`i32` buffers, 2 for `f16`/`bf16`, 8 for `i64`); the views are
//! checked against the buffer's bytes in those units. A rank-0 memref is the two
//! pointers and the offset. [`KernelArg::Ptr`] is one `llvm.ptr` parameter
//! (a bare-pointer or hand-written kernel), `I64`/`I32`/`F32` are scalars.

use crate::{CudaError, DeviceBuffer};

/// One argument of a kernel launch (see the module docs for the MemRef ABI).
#[derive(Debug, Clone)]
pub enum KernelArg<'a> {
    /// An MLIR memref parameter of a `gpu.func` lowered by `gpu-to-nvvm`
    /// (non-bare pointer convention): it expands to allocated ptr, aligned
    /// ptr (both the buffer's device pointer + 0), offset (i64, in elements),
    /// sizes\[rank\] (i64 each), strides\[rank\] (i64 each). `sizes` and
    /// `strides` must have the same length, and every element the view can
    /// reach must lie in the buffer (counted in `elem_bytes` elements).
    MemRef {
        /// The buffer the memref views.
        buf: &'a DeviceBuffer,
        /// The size of the memref's element type in bytes (1, 2, 4 or 8):
        /// the unit of `offset`, `sizes` and `strides`.
        elem_bytes: usize,
        /// The first element's index in the buffer.
        offset: i64,
        /// The extent of each dimension, outermost first.
        sizes: Vec<i64>,
        /// The step in elements of each dimension.
        strides: Vec<i64>,
    },
    /// A raw pointer parameter (`llvm.ptr`): the buffer's device address.
    Ptr(&'a DeviceBuffer),
    /// A 64-bit integer (`.u64`/`.s64`) parameter.
    I64(i64),
    /// A 32-bit integer (`.u32`/`.s32`) parameter.
    I32(i32),
    /// A 32-bit float (`.f32`) parameter.
    F32(f32),
}

impl<'a> KernelArg<'a> {
    /// A row-major (C-contiguous) view of `buf` with these sizes, offset 0,
    /// of 4-byte elements.
    pub fn memref(buf: &'a DeviceBuffer, sizes: &[i64]) -> KernelArg<'a> {
        KernelArg::MemRef { buf, elem_bytes: 4, offset: 0, sizes: sizes.to_vec(), strides: row_major_strides(sizes) }
    }
}

/// The strides of a row-major layout of `sizes` (the last dimension contiguous).
fn row_major_strides(sizes: &[i64]) -> Vec<i64> {
    let mut strides = vec![1i64; sizes.len()];
    let mut step = 1i64;
    for (stride, size) in strides.iter_mut().zip(sizes).rev() {
        *stride = step;
        step = step.saturating_mul((*size).max(1));
    }
    strides
}

/// One kernel parameter's value, in the bytes `cuLaunchKernel` copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamValue {
    /// An 8-byte parameter (pointer, i64).
    B8([u8; 8]),
    /// A 4-byte parameter (i32, f32).
    B4([u8; 4]),
}

impl ParamValue {
    /// The parameter's bytes, in the host's (= the device's, little-endian) order.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            ParamValue::B8(b) => b,
            ParamValue::B4(b) => b,
        }
    }

    /// The parameter's size in bytes (8 or 4).
    pub fn size(&self) -> usize {
        self.as_bytes().len()
    }

    /// The value in an 8-byte slot whose first `size()` bytes are the value.
    pub(crate) fn slot(&self) -> u64 {
        let mut bytes = [0u8; 8];
        for (dst, src) in bytes.iter_mut().zip(self.as_bytes()) {
            *dst = *src;
        }
        u64::from_ne_bytes(bytes)
    }
}

/// An argument with its buffer reduced to address and length, so the
/// packing is testable without a GPU.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RawArg<'s> {
    /// `bytes`: the buffer's size; `elem_bytes`: the memref's element size.
    MemRef {
        ptr: u64,
        bytes: usize,
        elem_bytes: usize,
        offset: i64,
        sizes: &'s [i64],
        strides: &'s [i64],
    },
    Ptr(u64),
    I64(i64),
    I32(i32),
    F32(f32),
}

impl KernelArg<'_> {
    pub(crate) fn raw(&self) -> RawArg<'_> {
        match self {
            KernelArg::MemRef { buf, elem_bytes, offset, sizes, strides } => RawArg::MemRef {
                ptr: buf.device_ptr(),
                bytes: 4 * buf.len(),
                elem_bytes: *elem_bytes,
                offset: *offset,
                sizes,
                strides,
            },
            KernelArg::Ptr(buf) => RawArg::Ptr(buf.device_ptr()),
            KernelArg::I64(v) => RawArg::I64(*v),
            KernelArg::I32(v) => RawArg::I32(*v),
            KernelArg::F32(v) => RawArg::F32(*v),
        }
    }
}

/// The kernel parameters `args` expand to, in order (a MemRef expands to
/// `3 + 2·rank` values, see the module docs). A MemRef whose sizes and
/// strides differ in length, with a negative size, or reaching outside its
/// buffer is a [`CudaError::Usage`].
pub fn pack_params(args: &[KernelArg<'_>]) -> Result<Vec<ParamValue>, CudaError> {
    pack_raw(args.iter().map(KernelArg::raw))
}

pub(crate) fn pack_raw<'s>(args: impl IntoIterator<Item = RawArg<'s>>) -> Result<Vec<ParamValue>, CudaError> {
    let mut out = Vec::new();
    for (index, arg) in args.into_iter().enumerate() {
        match arg {
            RawArg::MemRef { ptr, bytes, elem_bytes, offset, sizes, strides } => {
                if !matches!(elem_bytes, 1 | 2 | 4 | 8) {
                    return Err(CudaError::Usage(format!(
                        "kernel argument {index} (memref): elements of {elem_bytes} bytes"
                    )));
                }
                check_memref(index, bytes / elem_bytes, offset, sizes, strides)?;
                out.push(ParamValue::B8(ptr.to_ne_bytes()));
                out.push(ParamValue::B8(ptr.to_ne_bytes()));
                out.push(ParamValue::B8(offset.to_ne_bytes()));
                out.extend(sizes.iter().map(|s| ParamValue::B8(s.to_ne_bytes())));
                out.extend(strides.iter().map(|s| ParamValue::B8(s.to_ne_bytes())));
            }
            RawArg::Ptr(ptr) => out.push(ParamValue::B8(ptr.to_ne_bytes())),
            RawArg::I64(v) => out.push(ParamValue::B8(v.to_ne_bytes())),
            RawArg::I32(v) => out.push(ParamValue::B4(v.to_ne_bytes())),
            RawArg::F32(v) => out.push(ParamValue::B4(v.to_ne_bytes())),
        }
    }
    Ok(out)
}

/// Every element a memref view can reach must lie in `0..len`.
fn check_memref(index: usize, len: usize, offset: i64, sizes: &[i64], strides: &[i64]) -> Result<(), CudaError> {
    let usage = |why: String| Err(CudaError::Usage(format!("kernel argument {index} (memref): {why}")));
    if sizes.len() != strides.len() {
        return usage(format!("{} sizes but {} strides", sizes.len(), strides.len()));
    }
    if let Some(s) = sizes.iter().find(|s| **s < 0) {
        return usage(format!("negative size {s}"));
    }
    if sizes.contains(&0) {
        return Ok(()); // an empty view reaches nothing
    }
    // The smallest and largest element index the view reaches (i128: no overflow).
    let (mut lo, mut hi) = (i128::from(offset), i128::from(offset));
    for (size, stride) in sizes.iter().zip(strides) {
        let reach = i128::from(*size - 1).saturating_mul(i128::from(*stride));
        if reach < 0 {
            lo = lo.saturating_add(reach);
        } else {
            hi = hi.saturating_add(reach);
        }
    }
    if lo < 0 || hi >= len as i128 {
        return usage(format!(
            "offset {offset}, sizes {sizes:?}, strides {strides:?} reach elements {lo}..={hi} of a {len}-element buffer"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b8(v: u64) -> ParamValue {
        ParamValue::B8(v.to_ne_bytes())
    }

    #[test]
    fn memref_expands_to_pointers_offset_sizes_strides() {
        let sizes = [2i64, 3, 4];
        let strides = [12i64, 4, 1];
        let args = [RawArg::MemRef {
            ptr: 0x7f00_0000_1000,
            bytes: 120,
            elem_bytes: 4,
            offset: 6,
            sizes: &sizes,
            strides: &strides,
        }];
        let packed = pack_raw(args).unwrap();
        let expected = [0x7f00_0000_1000u64, 0x7f00_0000_1000, 6, 2, 3, 4, 12, 4, 1].map(b8);
        assert_eq!(packed, expected);
        assert!(packed.iter().all(|p| p.size() == 8));
    }

    #[test]
    fn scalars_and_pointers_keep_their_sizes_and_order() {
        let args = [RawArg::F32(2.5), RawArg::Ptr(0xdead_0000), RawArg::I32(-7), RawArg::I64(-1)];
        let packed = pack_raw(args).unwrap();
        assert_eq!(
            packed,
            vec![
                ParamValue::B4(2.5f32.to_ne_bytes()),
                b8(0xdead_0000),
                ParamValue::B4((-7i32).to_ne_bytes()),
                ParamValue::B8((-1i64).to_ne_bytes()),
            ]
        );
        assert_eq!(packed.iter().map(ParamValue::size).collect::<Vec<_>>(), [4, 8, 4, 8]);
        // A 4-byte value sits in the first bytes of its 8-byte slot.
        assert_eq!(packed[0].slot().to_ne_bytes()[..4], 2.5f32.to_ne_bytes());
        assert_eq!(packed[2].slot().to_ne_bytes()[4..], [0; 4]);
    }

    #[test]
    fn mixed_arguments_expand_in_order() {
        let (s1, t1) = ([5i64], [1i64]);
        let args = [
            RawArg::F32(1.0),
            RawArg::MemRef { ptr: 16, bytes: 20, elem_bytes: 4, offset: 0, sizes: &s1, strides: &t1 },
            RawArg::MemRef { ptr: 32, bytes: 4, elem_bytes: 4, offset: 0, sizes: &[], strides: &[] },
            RawArg::I64(9),
        ];
        let packed = pack_raw(args).unwrap();
        let expected =
            vec![ParamValue::B4(1f32.to_ne_bytes()), b8(16), b8(16), b8(0), b8(5), b8(1), b8(32), b8(32), b8(0), b8(9)];
        assert_eq!(packed, expected);
    }

    #[test]
    fn bad_memrefs_are_usage_errors() {
        let bad = |len: usize, offset, sizes: &[i64], strides: &[i64]| {
            let r = pack_raw([RawArg::MemRef { ptr: 0, bytes: 4 * len, elem_bytes: 4, offset, sizes, strides }]);
            matches!(r, Err(CudaError::Usage(_)))
        };
        assert!(bad(10, 0, &[2, 5], &[5])); // rank mismatch
        assert!(bad(10, 0, &[-1], &[1])); // negative size
        assert!(bad(10, 0, &[11], &[1])); // past the end
        assert!(bad(10, 1, &[10], &[1])); // offset pushes past the end
        assert!(bad(10, -1, &[1], &[1])); // before the start
        assert!(bad(10, 0, &[2], &[-1])); // negative stride before the start
        assert!(bad(10, 0, &[i64::MAX], &[i64::MAX])); // overflow-sized reach
        assert!(bad(10, 0, &[i64::MAX; 4], &[i64::MAX; 4]));
        assert!(bad(10, 0, &[i64::MAX; 4], &[i64::MIN; 4]));
        assert!(!bad(10, 0, &[2, 5], &[5, 1]));
        assert!(!bad(10, 9, &[2], &[-9])); // negative stride inside
        assert!(!bad(0, 100, &[0, 7], &[7, 1])); // empty view reaches nothing
        assert!(!bad(10, 3, &[4, 2], &[0, 1])); // broadcast (stride 0)
    }

    /// A view of 16-bit (or 8-byte) elements is checked in those units: a
    /// 4-word buffer holds 8 halves but only 2 `i64`s.
    #[test]
    fn memrefs_count_their_own_elements() {
        let fits = |elem_bytes: usize, n: i64| {
            pack_raw([RawArg::MemRef { ptr: 0, bytes: 16, elem_bytes, offset: 0, sizes: &[n], strides: &[1] }]).is_ok()
        };
        assert!(fits(2, 8) && !fits(2, 9));
        assert!(fits(4, 4) && !fits(4, 5));
        assert!(fits(8, 2) && !fits(8, 3));
        assert!(fits(1, 16) && !fits(1, 17));
        assert!(!fits(3, 1) && !fits(0, 1));
    }

    #[test]
    fn row_major_strides_are_last_dimension_contiguous() {
        let strides = super::row_major_strides;
        assert_eq!(strides(&[2, 3, 4]), [12, 4, 1]);
        assert_eq!(strides(&[7]), [1]);
        assert_eq!(strides(&[]), Vec::<i64>::new());
    }
}
