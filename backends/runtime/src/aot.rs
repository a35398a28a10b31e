//! The entry point of ahead-of-time artifacts (`tdlc compile --emit
//! obj|so`).
//!
//! An artifact holds, per graph, an [`AotProgram`] serialized with
//! postcard (the Kernel IR program and which of its kernels were compiled
//! into the artifact), a table of the compiled functions, and a small entry
//! function `tdl_run_<graph>` that calls [`run`] (through the C symbol
//! `tdl_rt_run` of the `tdl-rt-capi` static library). [`run`]:
//!
//! 1. reads the descriptor (once per artifact: it is cached by address);
//! 2. evaluates every parameter's and result's shape from the dimension
//!    values the caller passes, and checks each buffer's length against
//!    it **before anything is read or written** — a wrong size is an error,
//!    never an out-of-bounds access;
//! 3. runs the program with the Kernel IR executor
//!    ([`tdl_kernel::interp::run_with_hooks`]), the compiled kernels as its
//!    hooks ([`AotHooks`]), through the same drivers as the JIT: attention
//!    and matmul ([`crate::attention`], [`crate::matmul`]), elementwise
//!    chains and moves ([`crate::elementwise`]: the loop nest of the
//!    call's strides, run when it matches a variant the artifact holds),
//!    row and reduce kernels ([`crate::rows`]); a kernel without matching
//!    code runs in the executor's loops;
//! 4. converts the results into the caller's output buffers.
//!
//! Symbolic dimensions stay symbolic: the compiled functions take sizes as
//! arguments and the iteration spaces are derived per call, so one artifact
//! serves every sequence length. Which executor ran each kernel of the
//! last call is [`run`]'s answer (`tdl_last_run_report` in C).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use tdl_ir::{Bindings, DType};
use tdl_kernel::interp::{
    self, AttentionArgs, ElementwiseArgs, F32Run, HookRun, Hooks, I32Run, KernelRun, MatMulArgs, MoveArgs, RowArgs, Val,
};
use tdl_kernel::ir::{
    AttentionKernel, BufId, ElementwiseKernel, KernelBody, KernelProgram, MatMulKernel, MoveKernel, ReduceKernel,
    RowKernel,
};
use tdl_kernel::F32Tensor;
use tdl_reference::Limits;

use crate::attention::{AttentionRunner, AttentionSpec, ProgramFn};
use crate::code::Code;
use crate::elementwise::{LoopSource, LoopSpec, LoopVariant};
use crate::matmul::{MatMulRunner, RowsFn};
use crate::rows::{RopeTables, RowCode, RowSource};
use crate::RtError;

/// The descriptor format's version; an artifact of another version is
/// refused (the runtime it links must match the compiler that wrote it).
pub const FORMAT_VERSION: u32 = 4;

/// What the executor's `--stats` calls the compiled kernels of an artifact.
pub const EXECUTOR: &str = "cpu (AOT)";

/// A kernel compiled into the artifact: its parameters and the index of its
/// function in the artifact's table.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum AotKernel {
    /// An attention program function ([`ProgramFn`]); `tkp` is its packed
    /// Kᵀ tile width.
    Attention { spec: Box<AttentionSpec>, tkp: usize, function: usize },
    /// A matmul row-block function ([`RowsFn`]) with micro-panels of `nr`
    /// columns.
    MatMul { tiles: (usize, usize, usize), nr: usize, function: usize },
    /// The loop nest ([`crate::elementwise::LoopFn`]) of the elementwise or
    /// move kernel writing buffer `out`, specialised for `variant`.
    Loop { out: BufId, variant: LoopVariant, function: usize },
    /// The row function ([`crate::rows::RowFn`]) of the row or reduce
    /// kernel writing buffer `out`, specialised for `code`.
    Rows { out: BufId, code: RowCode, function: usize },
}

/// One graph of an artifact.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AotProgram {
    pub version: u32,
    pub program: KernelProgram,
    /// The distinct compiled kernels (several program kernels may share one).
    pub compiled: Vec<AotKernel>,
}

impl AotProgram {
    pub fn to_bytes(&self) -> Result<Vec<u8>, RtError> {
        postcard::to_stdvec(self).map_err(|e| RtError::new(format!("cannot serialize the program: {e}")))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<AotProgram, RtError> {
        let p: AotProgram = postcard::from_bytes(bytes)
            .map_err(|e| RtError::new(format!("the artifact's program descriptor is unreadable: {e}")))?;
        if p.version != FORMAT_VERSION {
            return Err(RtError::new(format!(
                "the artifact was written for runtime format {}, this runtime reads format {FORMAT_VERSION}",
                p.version
            )));
        }
        Ok(p)
    }
}

/// The compiled loop nests of one elementwise or move kernel.
struct LoopEntry {
    kernel: KernelBody,
    variants: Vec<(LoopVariant, usize)>,
}

impl LoopSource for LoopEntry {
    fn loop_fn(&self, spec: &LoopSpec<'_>) -> Option<Result<Code, RtError>> {
        let &(_, addr) = self.variants.iter().find(|(v, _)| *v == spec.variant)?;
        // SAFETY: `AotHooks::new`'s contract: the function compiled for this
        // kernel's chain and this variant, alive while the artifact is.
        Some(Ok(unsafe { Code::new(addr, None) }))
    }

    fn unsimplified_too(&self) -> bool {
        true
    }
}

/// The compiled row functions of one row or reduce kernel.
struct RowEntry {
    kernel: KernelBody,
    codes: Vec<(RowCode, usize)>,
}

struct RowLookup<'a> {
    entry: &'a RowEntry,
    tables: &'a RopeTables,
}

impl RowSource for RowLookup<'_> {
    fn row_fn(&self, code: &RowCode) -> Option<Result<Code, RtError>> {
        let &(_, addr) = self.entry.codes.iter().find(|(c, _)| c == code)?;
        // SAFETY: as for `LoopEntry`.
        Some(Ok(unsafe { Code::new(addr, None) }))
    }

    fn rope_tables(&self) -> &RopeTables {
        self.tables
    }
}

/// The compiled kernels of an artifact as the executor's hooks.
pub struct AotHooks {
    attention: Vec<AttentionRunner>,
    matmul: Vec<MatMulRunner>,
    loops: HashMap<BufId, LoopEntry>,
    rows: HashMap<BufId, RowEntry>,
    rope: RopeTables,
    pub threads: usize,
}

/// A hook's answer from a driver's: `None` declines.
fn answer<T>(r: Option<Result<Vec<T>, RtError>>) -> Option<Result<(Vec<T>, &'static str), String>> {
    r.map(|r| r.map(|out| (out, EXECUTOR)).map_err(|e| e.to_string()))
}

impl AotHooks {
    /// The runners of `compiled` (the kernels of `program`), calling
    /// `functions[i]` for function `i`.
    ///
    /// # Safety
    /// Each `functions[i]` must be the machine code `compiled` says it is
    /// (the table the same compiler wrote beside the descriptor, for this
    /// program), valid as long as the hooks are used.
    pub unsafe fn new(
        program: &KernelProgram,
        compiled: &[AotKernel],
        functions: &[usize],
        threads: usize,
    ) -> Result<AotHooks, RtError> {
        let f = |i: usize| {
            functions.get(i).copied().filter(|&a| a != 0).ok_or_else(|| {
                RtError::new(format!("the artifact's function table has no function {i} ({} entries)", functions.len()))
            })
        };
        let kernel = |out: BufId| {
            program.kernels.iter().find(|k| k.body.out() == out).map(|k| k.body.clone()).ok_or_else(|| {
                RtError::new(format!("the artifact compiled a kernel writing {out}, which the program does not have"))
            })
        };
        let (mut attention, mut matmul) = (Vec::new(), Vec::new());
        let (mut loops, mut rows) = (HashMap::<BufId, LoopEntry>::new(), HashMap::<BufId, RowEntry>::new());
        for c in compiled {
            match c {
                AotKernel::Attention { spec, tkp, function } => {
                    // SAFETY: the caller guarantees the table's contents.
                    let p = unsafe { std::mem::transmute::<usize, ProgramFn>(f(*function)?) };
                    attention.push(unsafe { AttentionRunner::new((**spec).clone(), p, *tkp) });
                }
                AotKernel::MatMul { tiles, nr, function } => {
                    // SAFETY: as above.
                    let p = unsafe { std::mem::transmute::<usize, RowsFn>(f(*function)?) };
                    matmul.push(unsafe { MatMulRunner::new(*tiles, p, *nr) });
                }
                AotKernel::Loop { out, variant, function } => {
                    let addr = f(*function)?;
                    let e = match loops.entry(*out) {
                        Entry::Occupied(e) => e.into_mut(),
                        Entry::Vacant(e) => e.insert(LoopEntry { kernel: kernel(*out)?, variants: Vec::new() }),
                    };
                    e.variants.push((variant.clone(), addr));
                }
                AotKernel::Rows { out, code, function } => {
                    let addr = f(*function)?;
                    let e = match rows.entry(*out) {
                        Entry::Occupied(e) => e.into_mut(),
                        Entry::Vacant(e) => e.insert(RowEntry { kernel: kernel(*out)?, codes: Vec::new() }),
                    };
                    e.codes.push((*code, addr));
                }
            }
        }
        Ok(AotHooks { attention, matmul, loops, rows, rope: RopeTables::default(), threads: threads.max(1) })
    }

    /// The compiled loop nests of kernel `k` (the program's kernel writing
    /// `out`, checked to be `k`).
    fn loop_entry(&self, out: BufId, is: impl Fn(&KernelBody) -> bool) -> Option<&LoopEntry> {
        self.loops.get(&out).filter(|e| is(&e.kernel))
    }

    fn row_lookup(&self, out: BufId, is: impl Fn(&KernelBody) -> bool) -> Option<RowLookup<'_>> {
        let entry = self.rows.get(&out).filter(|e| is(&e.kernel))?;
        Some(RowLookup { entry, tables: &self.rope })
    }
}

impl Hooks for AotHooks {
    fn attention(&self, k: &AttentionKernel, args: &AttentionArgs<'_>) -> Option<Result<HookRun, String>> {
        let spec = crate::attention::spec_of(k, args)?;
        let runner = self.attention.iter().find(|r| *r.spec() == spec)?;
        Some(runner.hook_run(k, args, self.threads, EXECUTOR))
    }

    fn matmul(&self, k: &MatMulKernel, args: &MatMulArgs<'_>) -> Option<Result<(Vec<f32>, &'static str), String>> {
        let runner = self.matmul.iter().find(|r| r.tiles() == (k.tile_m.max(1), k.tile_n, k.tile_k))?;
        Some(runner.run(args, self.threads).map(|out| (out, EXECUTOR)).map_err(|e| e.to_string()))
    }

    fn elementwise(&self, k: &ElementwiseKernel, args: &ElementwiseArgs<'_>) -> Option<Result<F32Run, String>> {
        let e = self.loop_entry(k.out, |b| matches!(b, KernelBody::Elementwise(x) if x == k))?;
        answer(crate::elementwise::run_elementwise(k, args, self.threads, e))
    }

    fn elementwise_i32(&self, k: &ElementwiseKernel, args: &ElementwiseArgs<'_>) -> Option<Result<I32Run, String>> {
        let e = self.loop_entry(k.out, |b| matches!(b, KernelBody::Elementwise(x) if x == k))?;
        answer(crate::elementwise::run_elementwise_i32(k, args, self.threads, e))
    }

    fn movement(&self, k: &MoveKernel, args: &MoveArgs<'_>) -> Option<Result<F32Run, String>> {
        let e = self.loop_entry(k.out, |b| matches!(b, KernelBody::Move(x) if x == k))?;
        answer(crate::elementwise::run_move(k, args, self.threads, e))
    }

    fn reduce(&self, k: &ReduceKernel, args: &RowArgs<'_>) -> Option<Result<F32Run, String>> {
        let l = self.row_lookup(k.out, |b| matches!(b, KernelBody::Reduce(x) if x == k))?;
        answer(crate::rows::run_reduce(k, args, self.threads, &l))
    }

    fn reduce_i32(&self, k: &ReduceKernel, x: &[i32], shape: &[usize]) -> Option<Result<I32Run, String>> {
        let l = self.row_lookup(k.out, |b| matches!(b, KernelBody::Reduce(r) if r == k))?;
        answer(crate::rows::run_reduce_i32(k, x, shape, self.threads, &l))
    }

    fn row(&self, k: &RowKernel, args: &RowArgs<'_>) -> Option<Result<F32Run, String>> {
        let l = self.row_lookup(k.out, |b| matches!(b, KernelBody::Row(x) if x == k))?;
        answer(crate::rows::run_row(k, args, self.threads, &l))
    }
}

/// A caller's buffer: its address and its length in elements.
#[derive(Clone, Copy, Debug)]
pub struct RawBuf {
    pub ptr: usize,
    pub len: usize,
}

/// The dimension values in `p.symbols` order, as bindings; each must be
/// positive.
pub fn bindings(p: &KernelProgram, dims: &[i64]) -> Result<Bindings, RtError> {
    if dims.len() != p.symbols.len() {
        return Err(RtError::new(format!(
            "`{}` takes {} dimension value(s) ({}), {} given",
            p.name,
            p.symbols.len(),
            p.symbols.join(", "),
            dims.len()
        )));
    }
    let mut b = Bindings::new();
    for (s, &v) in p.symbols.iter().zip(dims) {
        if v <= 0 {
            return Err(RtError::new(format!("dimension `{s}` must be positive, found {v}")));
        }
        b.insert(s.clone(), v);
    }
    Ok(b)
}

/// The shape of buffer `buf` under `b`, checked against the limits.
fn shape_of(
    p: &KernelProgram,
    buf: tdl_kernel::ir::BufId,
    b: &Bindings,
    limits: &Limits,
) -> Result<Vec<usize>, RtError> {
    let buffer = p.buffer(buf).ok_or_else(|| RtError::new(format!("no buffer {buf}")))?;
    let shape = buffer
        .shape
        .iter()
        .map(|d| {
            let v = d.eval(b).map_err(|e| RtError::new(format!("`{}`: dimension {d}: {e}", buffer.name)))?;
            usize::try_from(v).map_err(|_| RtError::new(format!("`{}`: dimension {d} is {v}", buffer.name)))
        })
        .collect::<Result<Vec<usize>, RtError>>()?;
    limits.check(&format!("`{}`", buffer.name), &shape).map_err(|e| RtError::new(e.to_string()))?;
    Ok(shape)
}

/// Reads `shape`'s elements of `dtype` at `ptr` as the executor holds
/// them: `f32` straight through (a copy), `f16`/`bf16` widened to `f32`
/// (exact), `i32` as is, `bool` bytes as 0/1.
///
/// # Safety
/// `ptr` must point to `shape.iter().product()` readable elements of
/// `dtype`'s C type.
unsafe fn read_val(ptr: usize, shape: Vec<usize>, dtype: DType) -> Val {
    let n = shape.iter().product();
    if n == 0 {
        return if dtype.is_float() {
            Val::F(F32Tensor { shape, data: Vec::new() })
        } else {
            Val::I(shape, Vec::new())
        };
    }
    // SAFETY: the caller guarantees `n` elements of this type at `ptr`.
    unsafe {
        match dtype {
            DType::F32 => Val::F(F32Tensor { shape, data: std::slice::from_raw_parts(ptr as *const f32, n).to_vec() }),
            DType::I32 => Val::I(shape, std::slice::from_raw_parts(ptr as *const i32, n).to_vec()),
            DType::Bool => Val::I(
                shape,
                std::slice::from_raw_parts(ptr as *const u8, n).iter().map(|&x| i32::from(x != 0)).collect(),
            ),
            DType::F16 => Val::F(F32Tensor {
                shape,
                data: std::slice::from_raw_parts(ptr as *const u16, n)
                    .iter()
                    .map(|&x| half::f16::from_bits(x).to_f32())
                    .collect(),
            }),
            DType::BF16 => Val::F(F32Tensor {
                shape,
                data: std::slice::from_raw_parts(ptr as *const u16, n)
                    .iter()
                    .map(|&x| half::bf16::from_bits(x).to_f32())
                    .collect(),
            }),
        }
    }
}

/// Writes `v` as `dtype` at `ptr` (`f16`/`bf16` values are already rounded
/// to the type by the executor, so narrowing them is exact).
///
/// # Safety
/// `ptr` must point to `v.len()` writable elements of `dtype`'s C type.
unsafe fn write_val(ptr: usize, v: &Val, dtype: DType) {
    let n = v.len();
    if n == 0 {
        return;
    }
    // SAFETY: the caller guarantees `n` elements of this type at `ptr`.
    unsafe {
        match (v, dtype) {
            (Val::F(t), DType::F32) => std::slice::from_raw_parts_mut(ptr as *mut f32, n).copy_from_slice(&t.data),
            (Val::F(t), DType::F16) => {
                let out = std::slice::from_raw_parts_mut(ptr as *mut u16, n);
                out.iter_mut().zip(&t.data).for_each(|(o, &x)| *o = half::f16::from_f32(x).to_bits());
            }
            (Val::F(t), _) => {
                let out = std::slice::from_raw_parts_mut(ptr as *mut u16, n);
                out.iter_mut().zip(&t.data).for_each(|(o, &x)| *o = half::bf16::from_f32(x).to_bits());
            }
            (Val::I(_, d), DType::Bool) => {
                let out = std::slice::from_raw_parts_mut(ptr as *mut u8, n);
                out.iter_mut().zip(d).for_each(|(o, &x)| *o = u8::from(x != 0));
            }
            (Val::I(_, d), _) => std::slice::from_raw_parts_mut(ptr as *mut i32, n).copy_from_slice(d),
        }
    }
}

/// A loaded artifact graph: its program and hooks.
struct Loaded {
    program: AotProgram,
    hooks: AotHooks,
}

/// Artifacts loaded so far, by the address of their descriptor.
fn loaded(desc: &'static [u8], functions: &[usize], threads: usize) -> Result<Arc<Loaded>, RtError> {
    static CACHE: OnceLock<Mutex<HashMap<usize, Arc<Loaded>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    let key = desc.as_ptr() as usize;
    if let Some(l) = cache.lock().map_err(|_| RtError::new("runtime cache poisoned"))?.get(&key) {
        if l.hooks.threads == threads.max(1) {
            return Ok(l.clone());
        }
    }
    let program = AotProgram::from_bytes(desc)?;
    // SAFETY: the artifact's entry function passes the table its compiler
    // wrote beside this descriptor (see `run`'s contract).
    let hooks = unsafe { AotHooks::new(&program.program, &program.compiled, functions, threads)? };
    let l = Arc::new(Loaded { program, hooks });
    cache.lock().map_err(|_| RtError::new("runtime cache poisoned"))?.insert(key, l.clone());
    Ok(l)
}

/// Runs one graph of an artifact; returns what ran each kernel.
///
/// # Safety
/// `desc` and `functions` must be a descriptor and the function table the
/// same compiler wrote into the artifact (the code stays loaded while the
/// artifact is); each input must point to `len` readable elements and each
/// output to `len` writable elements of the parameter's or result's C type
/// (`float`, `int32_t`, `uint8_t` for `bool`, `uint16_t` bits for
/// `f16`/`bf16`).
pub unsafe fn run(
    desc: &'static [u8],
    functions: &[usize],
    dims: &[i64],
    inputs: &[RawBuf],
    outputs: &[RawBuf],
    threads: usize,
) -> Result<Vec<KernelRun>, RtError> {
    let l = loaded(desc, functions, threads)?;
    let p = &l.program.program;
    let b = bindings(p, dims)?;
    let limits = Limits::default();
    if inputs.len() != p.params.len() || outputs.len() != p.results.len() {
        return Err(RtError::new(format!(
            "`{}` takes {} input(s) and {} output(s), {} and {} given",
            p.name,
            p.params.len(),
            p.results.len(),
            inputs.len(),
            outputs.len()
        )));
    }
    // Every size is checked before anything is read or written.
    let mut values = Vec::with_capacity(inputs.len());
    let mut in_shapes = Vec::with_capacity(inputs.len());
    for (&id, x) in p.params.iter().zip(inputs) {
        let shape = shape_of(p, id, &b, &limits)?;
        let n: usize = shape.iter().product();
        let name = &p.buffers[id.index()].name;
        if x.len != n {
            return Err(RtError::new(format!(
                "input `{name}` must have {n} elements (shape {shape:?}), the buffer has {}",
                x.len
            )));
        }
        if x.ptr == 0 && n > 0 {
            return Err(RtError::new(format!("input `{name}` is a null pointer")));
        }
        in_shapes.push(shape);
    }
    let mut out_shapes = Vec::with_capacity(outputs.len());
    for (i, (&id, x)) in p.results.iter().zip(outputs).enumerate() {
        let shape = shape_of(p, id, &b, &limits)?;
        let n: usize = shape.iter().product();
        if x.len != n {
            return Err(RtError::new(format!(
                "output {i} (`{}`) must have {n} elements (shape {shape:?}), the buffer has {}",
                p.buffers[id.index()].name,
                x.len
            )));
        }
        if x.ptr == 0 && n > 0 {
            return Err(RtError::new(format!("output {i} is a null pointer")));
        }
        out_shapes.push(shape);
    }
    for ((&id, x), shape) in p.params.iter().zip(inputs).zip(in_shapes) {
        let dtype = p.buffers[id.index()].dtype;
        // SAFETY: the length was checked above; the caller guarantees the type.
        values.push(unsafe { read_val(x.ptr, shape, dtype) });
    }
    let out = interp::run_values(p, values, &limits, &l.hooks).map_err(|e| RtError::new(e.to_string()))?;
    for (i, ((r, x), shape)) in out.results.iter().zip(outputs).zip(&out_shapes).enumerate() {
        let dtype = p.buffers[p.results[i].index()].dtype;
        if r.shape() != shape.as_slice() || r.is_float() != dtype.is_float() {
            return Err(RtError::new(format!(
                "result {i} has shape {:?}, expected {}",
                r.shape(),
                tdl_ir::layout::type_text(dtype, shape)
            )));
        }
        // SAFETY: `r.len() == x.len` (the shape equals the checked one) and
        // the value class matches the type.
        unsafe { write_val(x.ptr, r, dtype) };
    }
    Ok(out.kernels)
}

/// The worker threads an artifact uses: `TDL_THREADS` if set to a positive
/// number, else the machine's parallelism.
pub fn default_threads() -> usize {
    std::env::var("TDL_THREADS")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}
