//! How to run one kernel: a pure-data description ([`LaunchPlan`]) that
//! both the host check ([`crate::host`]) and a GPU runner consume, so both
//! pass identical argument lists.
//!
//! A plan holds the kernel's code ([`KernelCode`]: the `gpu.module` for the
//! GPU and the host wrappers of the same bodies), the buffers (inputs to
//! upload, zeroed outputs), the launches in order, and which buffer is the
//! result. Every size, stride, offset and launch dimension is computed at
//! run time from the hook's shapes by the `plan_*` functions; the code only
//! depends on what is static in the Kernel IR (ranks, operators, element
//! programs), so one compile serves every binding of the dimension symbols.
//!
//! ## Parameter ABI
//! The `gpu.func` of [`LaunchStep::func`] takes exactly [`LaunchStep::params`]
//! in order, with MLIR's default (non-bare) memref convention: a
//! [`Param::MemRef`] of rank `r` is `2 + 1 + 2r` kernel parameters —
//! allocated pointer, aligned pointer (both the device address of buffer
//! `buf`), `offset`, `sizes...`, `strides...` (all `i64`, in elements);
//! `I64`, `I32`, `F32` are one parameter each ([`Param::expand`] lists
//! them). The host wrapper `@func` takes the same list followed by the
//! grid `(x, y, z)` as three `index` (`i64`) values and runs every block
//! in turn; it is called through the ExecutionEngine's packed interface
//! (`_mlir_<func>`) with the same expanded words.
//!
//! Launch dimensions: `block` equals the `gpu.func`'s `known_block_size`
//! (at most 1024 threads), `grid[1]` and `grid[2]` are at most 65535 (a
//! plan chunks larger counts into several steps), `grid[0]` at most
//! 2³¹−1. All kernels use static shared memory (at most 48 KiB), so
//! `shared_bytes` (dynamic shared memory) is 0 today.
//!
//! ## Masks and lambdas
//! A kernel whose mask or lambda code reads more than its indices (see
//! [`crate::mask::Extras`]) takes extra parameters after its own, in this
//! order: the head count (`I64`, attention kernels whose lambdas read
//! `h`), one `I64` per dimension symbol a lambda reads (its bound value),
//! one row-major memref per array read (document ids, block layouts,
//! arrays indexed in lambdas, constant or operand alike: an [`PlanBuf::I32`]
//! for `i32`/`bool` arrays with bools as 0/1, an [`PlanBuf::F32`] for
//! float arrays, at least one element long), and, when a lambda indexes
//! an array, the **error flag**: a one-element [`PlanBuf::I32`] holding 0,
//! passed as a `memref<1xi32>`, which the kernel sets to 1 where an index
//! is out of range (it then reads nothing). [`LaunchPlan::error_flag`]
//! names that buffer: a runner reads it back after the launches and
//! reports "an index is out of range of an array read in a lambda" when
//! it is not 0 (the result is then not used).
//!
//! ## Attention
//! An attention plan uploads its block-sparse iteration space as `i32`
//! buffers ([`PlanBuf::I32`]) and, with a KV split, has two steps — the
//! kernel, then its merge `<func>_merge` over zeroed scratch buffers
//! ([`PlanBuf::Zeroed`]) — which a runner launches in order like any
//! other steps (see [`crate::attention`]). [`LaunchPlan::stats`] holds
//! the counts `--stats` reports (the Kernel IR interpreter's, for the
//! kernel's tiles).
//!
//! ## Outputs
//! The output buffer is `f32` ([`PlanBuf::Zeroed`]) except for
//! elementwise chains writing `i32` or `bool` (and `i32` reductions),
//! whose output is an [`PlanBuf::I32`] of zeros to upload, written as
//! `i32` (bools as 0/1): [`LaunchPlan::output_is_i32`]. A runner reads it
//! back as `i32` (4-byte words, like the `f32` output).

use std::borrow::Cow;
use std::rc::Rc;

use tdl_ir::DType;
use tdl_kernel::KernelStats;

use crate::MlirError;

/// The code of a kernel: one MLIR text per target, from the same bodies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelCode {
    /// Identifies the code (a cache key: equal keys, equal texts).
    pub key: String,
    /// `module attributes {gpu.container_module} { gpu.module @… { gpu.func … } }`,
    /// before lowering (see [`crate::nvvm_pipeline`]).
    pub mlir_module: String,
    /// The host wrappers (`func.func @<func>(params…, %gx, %gy, %gz)`),
    /// before lowering (see [`HOST_PIPELINE`]).
    pub host_module: String,
}

/// The pass pipeline that lowers a [`KernelCode::host_module`] to the LLVM
/// dialect (thread loops made sequential).
/// `arith-expand{include-bf16}` turns `bf16` conversions into integer
/// arithmetic (x86 has no `bf16` instructions and LLVM would call
/// `__truncsfbf2`, which Debian 12's libgcc lacks); `f16` conversions are
/// the CPU's (F16C) or libgcc's.
pub const HOST_PIPELINE: &str =
    "builtin.module(scf-forall-to-parallel,arith-expand{include-bf16=true},convert-scf-to-cf,convert-vector-to-llvm,convert-to-llvm,reconcile-unrealized-casts)";

/// How a floating-point tensor is stored in device memory: `f32`, or the
/// 16-bit `f16`/`bf16` of a graph whose types say so (kernels widen what
/// they read to `f32`, compute in `f32` and round what they write).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Store {
    #[default]
    F32,
    F16,
    Bf16,
}

impl Store {
    /// The storage of a buffer of element type `dtype` (integer types,
    /// which no float kernel stores, as `f32`).
    pub fn of(dtype: DType) -> Store {
        match dtype {
            DType::F16 => Store::F16,
            DType::BF16 => Store::Bf16,
            _ => Store::F32,
        }
    }

    /// The MLIR element type.
    pub fn mlir(self) -> &'static str {
        match self {
            Store::F32 => "f32",
            Store::F16 => "f16",
            Store::Bf16 => "bf16",
        }
    }

    /// MLIR (one line each, `indent`ed) that defines `dst` (e.g. `%v`) as
    /// `f32`: `memref.load {src} : {ty}` (`src` e.g. `%Q[%h, %r, %dd]`),
    /// widened from this storage (through `{dst}_s`).
    pub fn load(self, dst: &str, src: &str, ty: &str, indent: &str) -> String {
        match self {
            Store::F32 => format!("{indent}{dst} = memref.load {src} : {ty}\n"),
            s => format!(
                "{indent}{dst}_s = memref.load {src} : {ty}\n{indent}{dst} = arith.extf {dst}_s : {} to f32\n",
                s.mlir()
            ),
        }
    }

    /// MLIR that stores the `f32` value `val` (e.g. `%o`, of `shape`: `""`
    /// for a scalar, `"64x"` for a `vector<64xf32>`) to `{dst} : {ty}` with
    /// `op` (`memref.store`/`vector.store`), rounded to this storage
    /// (through `{val}_s`).
    pub fn store(self, op: &str, val: &str, shape: &str, dst: &str, ty: &str, indent: &str) -> String {
        let vty = |e: &str| if shape.is_empty() { e.to_string() } else { format!("vector<{shape}{e}>") };
        let suffix = if op == "vector.store" { format!(", {}", vty(self.mlir())) } else { String::new() };
        match self {
            Store::F32 => format!("{indent}{op} {val}, {dst} : {ty}{suffix}\n"),
            s => format!(
                "{indent}{val}_s = arith.truncf {val} : {} to {}\n{indent}{op} {val}_s, {dst} : {ty}{suffix}\n",
                vty("f32"),
                vty(s.mlir())
            ),
        }
    }

    /// Scalar `v` (of this storage, as loaded) as `f32`, in `e`'s code.
    pub(crate) fn widen(self, e: &mut crate::elementwise::Emit, v: &str) -> String {
        match self {
            Store::F32 => v.to_string(),
            s => e.v(format!("arith.extf {v} : {} to f32", s.mlir())),
        }
    }

    /// Scalar `f32` `v` rounded to this storage, in `e`'s code.
    pub(crate) fn narrow(self, e: &mut crate::elementwise::Emit, v: &str) -> String {
        match self {
            Store::F32 => v.to_string(),
            s => e.v(format!("arith.truncf {v} : f32 to {}", s.mlir())),
        }
    }

    /// The buffer holding `x` (`f32` values of this storage's type, as the
    /// interpreter holds them: converting them is exact).
    pub fn input(self, x: &[f32]) -> PlanBuf<'_> {
        match self {
            Store::F32 => PlanBuf::F32(Cow::Borrowed(x)),
            s => PlanBuf::Half(s, Cow::Borrowed(x)),
        }
    }

    /// `f32` values as this (16-bit) storage's bits, rounded to nearest
    /// even (exact for values of the type; `f32` storage gives `f16` bits).
    pub fn narrow_bits(self, x: &[f32]) -> Vec<u16> {
        match self {
            Store::Bf16 => x.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect(),
            _ => x.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect(),
        }
    }

    /// A zeroed output buffer of `n` elements.
    pub fn zeroed(self, n: usize) -> PlanBuf<'static> {
        match self {
            Store::F32 => PlanBuf::Zeroed(n),
            s => PlanBuf::ZeroedHalf(s, n),
        }
    }

    /// 16-bit values of this storage as `f32` (exact).
    pub fn widen_bits(self, bits: &[u16]) -> Vec<f32> {
        match self {
            Store::Bf16 => bits.iter().map(|&b| half::bf16::from_bits(b).to_f32()).collect(),
            _ => bits.iter().map(|&b| half::f16::from_bits(b).to_f32()).collect(),
        }
    }
}

/// How buffers `bufs` of `p` are stored (a missing buffer as `f32`; the
/// plans, which check the buffers, are the executors).
pub(crate) fn stores<const N: usize>(
    p: &tdl_kernel::ir::KernelProgram,
    bufs: [tdl_kernel::ir::BufId; N],
) -> [Store; N] {
    bufs.map(|b| Store::of(p.buffer(b).map_or(DType::F32, |x| x.dtype)))
}

/// A device buffer of a plan.
#[derive(Clone, Debug, PartialEq)]
pub enum PlanBuf<'a> {
    /// `f32` data to upload.
    F32(Cow<'a, [f32]>),
    /// Values to upload as 16-bit floats of [`Store`] `f16` or `bf16`,
    /// given as the `f32` values the interpreter holds (of that type
    /// already): a runner converts them ([`Store::narrow_bits`]) where it
    /// uploads them, and may recognise a tensor it has seen by its slice.
    Half(Store, Cow<'a, [f32]>),
    /// `n` 16-bit floats, zero-filled (outputs).
    ZeroedHalf(Store, usize),
    /// `i32` data to upload.
    I32(Cow<'a, [i32]>),
    /// `i64` data to upload (e.g. per-batch offsets).
    I64(Cow<'a, [i64]>),
    /// `n` `f32` elements, zero-filled (outputs, scratch).
    Zeroed(usize),
}

impl PlanBuf<'_> {
    /// Elements.
    pub fn len(&self) -> usize {
        match self {
            PlanBuf::F32(d) => d.len(),
            PlanBuf::Half(_, d) => d.len(),
            PlanBuf::ZeroedHalf(_, n) => *n,
            PlanBuf::I32(d) => d.len(),
            PlanBuf::I64(d) => d.len(),
            PlanBuf::Zeroed(n) => *n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes per element.
    pub fn elem_bytes(&self) -> usize {
        match self {
            PlanBuf::I64(_) => 8,
            PlanBuf::Half(..) | PlanBuf::ZeroedHalf(..) => 2,
            _ => 4,
        }
    }
}

/// One kernel parameter.
#[derive(Clone, Debug, PartialEq)]
pub enum Param {
    /// A memref over buffer `buf`: element `idx` is at
    /// `offset + Σ idx[a]·strides[a]` (elements; strides may be 0).
    MemRef {
        buf: usize,
        offset: i64,
        sizes: Vec<i64>,
        strides: Vec<i64>,
    },
    I64(i64),
    I32(i32),
    F32(f32),
}

/// One scalar kernel parameter after expansion ([`Param::expand`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Word {
    /// The device (or host) address of buffer `n`; twice per memref.
    BufPtr(usize),
    I64(i64),
    I32(i32),
    F32(f32),
}

impl Param {
    /// A row-major memref over the whole of `shape` at offset 0.
    pub fn contiguous(buf: usize, shape: &[usize]) -> Param {
        let sizes: Vec<i64> = shape.iter().map(|&s| s as i64).collect();
        Param::MemRef { buf, offset: 0, strides: row_major(&sizes), sizes }
    }

    /// A rank-1 memref over the first `len` elements of `buf`.
    pub fn flat(buf: usize, len: usize) -> Param {
        Param::MemRef { buf, offset: 0, sizes: vec![len as i64], strides: vec![1] }
    }

    /// The scalar kernel parameters this parameter becomes, in order.
    pub fn expand(&self) -> Vec<Word> {
        match self {
            Param::MemRef { buf, offset, sizes, strides } => {
                let mut w = vec![Word::BufPtr(*buf), Word::BufPtr(*buf), Word::I64(*offset)];
                w.extend(sizes.iter().map(|&s| Word::I64(s)));
                w.extend(strides.iter().map(|&s| Word::I64(s)));
                w
            }
            Param::I64(v) => vec![Word::I64(*v)],
            Param::I32(v) => vec![Word::I32(*v)],
            Param::F32(v) => vec![Word::F32(*v)],
        }
    }
}

/// Row-major strides of `sizes`.
pub fn row_major(sizes: &[i64]) -> Vec<i64> {
    let mut st = vec![1i64; sizes.len()];
    for a in (0..sizes.len().saturating_sub(1)).rev() {
        st[a] = st[a + 1] * sizes[a + 1].max(1);
    }
    st
}

/// One kernel launch.
#[derive(Clone, Debug, PartialEq)]
pub struct LaunchStep {
    /// The `gpu.func` (and host wrapper) name.
    pub func: String,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    /// Dynamic shared memory in bytes (0: the kernels declare theirs statically).
    pub shared_bytes: u32,
    pub params: Vec<Param>,
}

/// How to run one kernel: upload `buffers`, launch `steps` in order, read
/// back buffer `output` (row-major `f32` of `output_shape`).
#[derive(Clone, Debug)]
pub struct LaunchPlan<'a> {
    pub code: Rc<KernelCode>,
    pub buffers: Vec<PlanBuf<'a>>,
    pub steps: Vec<LaunchStep>,
    pub output: usize,
    pub output_shape: Vec<usize>,
    /// The error flag of lambdas that index arrays (an `I32` buffer of one
    /// 0; non-zero after the run: an index was out of range; see the
    /// module docs), or `None`.
    pub error_flag: Option<usize>,
    /// What the launches will do, counted as the Kernel IR interpreter
    /// counts it (attention plans: kv-tiles visited, Full and Partial, mask
    /// evaluations and the iteration space's counts, per head as the
    /// interpreter counts them; the programs launched — heads × q-tiles,
    /// fewer with GQA packing — and the KV splits and merged rows chosen
    /// for them; not `score_evals`, which only a run knows), for
    /// `--stats`; `None` for the other kinds.
    pub stats: Option<KernelStats>,
}

/// The largest `grid[0]`.
pub const MAX_GRID_X: u64 = (1 << 31) - 1;
/// The largest `grid[1]` and `grid[2]`.
pub const MAX_GRID_YZ: u64 = 65535;

/// The message a runner reports when [`LaunchPlan::error_flag`] is set.
pub const LAMBDA_INDEX_ERROR: &str =
    "an index is out of range of an array read in a lambda of this kernel (its mask or score modifier)";

impl LaunchPlan<'_> {
    /// Whether the output buffer holds `i32` (an elementwise chain writing
    /// `i32`/`bool`, an integer reduction) rather than `f32`.
    pub fn output_is_i32(&self) -> bool {
        matches!(self.buffers.get(self.output), Some(PlanBuf::I32(_)))
    }

    /// How the (floating-point) output is stored.
    pub fn output_store(&self) -> Store {
        match self.buffers.get(self.output) {
            Some(PlanBuf::Half(s, _) | PlanBuf::ZeroedHalf(s, _)) => *s,
            _ => Store::F32,
        }
    }

    /// Checks that every memref of every step stays inside its buffer, that
    /// the output is an `f32` (or `i32`) buffer of the output shape's size, and that
    /// the launch dimensions are within the limits: what a runner checks
    /// before it hands raw pointers to a kernel.
    pub fn validate(&self) -> Result<(), MlirError> {
        let bad = |m: String| Err(MlirError::BadPlan(m));
        let n: usize = self.output_shape.iter().product();
        match self.buffers.get(self.output) {
            Some(b @ (PlanBuf::Zeroed(_) | PlanBuf::ZeroedHalf(..) | PlanBuf::F32(_) | PlanBuf::I32(_)))
                if b.len() == n => {}
            _ => {
                return bad(format!(
                    "output buffer {} is not a zeroed float or an i32 buffer of {n} elements",
                    self.output
                ))
            }
        }
        if let Some(e) = self.error_flag {
            if e == self.output || !matches!(self.buffers.get(e), Some(PlanBuf::I32(d)) if d.len() == 1) {
                return bad(format!("error flag {e} is not a one-element i32 buffer"));
            }
        }
        for s in &self.steps {
            let threads: u64 = s.block.iter().map(|&b| u64::from(b)).product();
            if threads == 0 || threads > 1024 || s.grid.contains(&0) {
                return bad(format!("`{}`: block {:?}, grid {:?}", s.func, s.block, s.grid));
            }
            if u64::from(s.grid[0]) > MAX_GRID_X
                || u64::from(s.grid[1]) > MAX_GRID_YZ
                || u64::from(s.grid[2]) > MAX_GRID_YZ
            {
                return bad(format!("`{}`: grid {:?} exceeds the limits", s.func, s.grid));
            }
            for p in &s.params {
                let Param::MemRef { buf, offset, sizes, strides } = p else { continue };
                let Some(b) = self.buffers.get(*buf) else {
                    return bad(format!("`{}`: no buffer {buf}", s.func));
                };
                if sizes.len() != strides.len() || *offset < 0 || sizes.iter().chain(strides).any(|&x| x < 0) {
                    return bad(format!("`{}`: memref of buffer {buf} is malformed", s.func));
                }
                if sizes.contains(&0) {
                    continue;
                }
                let last = sizes
                    .iter()
                    .zip(strides)
                    .try_fold(*offset as i128, |a, (&n, &st)| Some(a + (i128::from(n) - 1) * i128::from(st)));
                if last.is_none_or(|l| l >= b.len() as i128) {
                    return bad(format!(
                        "`{}`: memref (offset {offset}, sizes {sizes:?}, strides {strides:?}) outside buffer {buf} of {} elements",
                        s.func,
                        b.len()
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Steps of `grid = (x, y, total)` where the z extent may exceed 65535:
/// one step per chunk of at most 65535, each given its first z index by
/// `with_base` (which builds the step's parameters).
pub(crate) fn chunk_z(total: u64, mut with_base: impl FnMut(u64, u32) -> LaunchStep) -> Vec<LaunchStep> {
    let mut steps = Vec::new();
    let mut z0 = 0u64;
    while z0 < total {
        let n = (total - z0).min(MAX_GRID_YZ) as u32;
        steps.push(with_base(z0, n));
        z0 += u64::from(n);
    }
    steps
}

/// A stable hexadecimal hash of `text` (FNV-1a, 64 bits) for cache keys.
pub(crate) fn text_hash(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}
