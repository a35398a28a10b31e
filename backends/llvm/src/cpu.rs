//! `tdlc run --backend cpu`: the Kernel IR run with the kernels this
//! backend compiles through LLVM, as [`tdl_kernel::interp::Hooks`].
//!
//! Today that is the attention kernel ([`crate::attention`]) for every mask,
//! index lambdas and score modifiers included; every f32 matmul
//! ([`crate::matmul`]); elementwise chains writing floating-point buffers
//! and copy/concat/repeat of floating-point data ([`crate::elementwise`]);
//! softmax, layernorm, rmsnorm, rope and floating-point reductions
//! ([`crate::rows`]). What they decline — elementwise chains with lambda
//! masks, integer outputs
//! and integer moves and reductions — runs
//! in the Kernel IR interpreter's loops. `--stats` says which executor ran
//! each kernel. Compiled kernels are cached — attention and matmul by their
//! specification, elementwise, movement, row and reduce kernels in a
//! [`KernelCache`] — so running a program again, at any sequence length,
//! compiles nothing. [`CpuHooks::with_host`] compiles for another CPU or
//! feature set (`--target-cpu` / `--target-features`).

use tdl_kernel::interp::{
    AttentionArgs, ElementwiseArgs, F32Run, HookRun, Hooks, I32Run, MatMulArgs, MoveArgs, RowArgs,
};
use tdl_kernel::ir::{AttentionKernel, ElementwiseKernel, MatMulKernel, MoveKernel, ReduceKernel, RowKernel};

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::attention::{AttentionSpec, CompiledAttention};
use crate::matmul::CompiledMatMul;
use crate::{HostTarget, KernelCache, LlvmError};

/// The CPU backend's executors, on `threads` worker threads. Compiled
/// kernels are cached (keyed by their specification), so running a
/// program again — every sequence length, every benchmark repetition —
/// compiles nothing.
pub struct CpuHooks {
    pub threads: usize,
    host: Option<HostTarget>,
    /// `None`: the code generator does not support that attention.
    attention: RefCell<HashMap<String, Option<Rc<CompiledAttention>>>>,
    matmul: RefCell<HashMap<(usize, usize, usize), Rc<CompiledMatMul>>>,
    kernels: KernelCache,
}

impl CpuHooks {
    /// The executors for the host CPU (when LLVM can target it; otherwise
    /// every kernel declines to the interpreter).
    pub fn new(threads: usize) -> CpuHooks {
        CpuHooks::for_host(threads, HostTarget::detect().ok())
    }

    /// The executors compiling for `host` (the host CPU, possibly with
    /// `--target-cpu` / `--target-features` applied: the code runs here).
    pub fn with_host(threads: usize, host: HostTarget) -> CpuHooks {
        CpuHooks::for_host(threads, Some(host))
    }

    fn for_host(threads: usize, host: Option<HostTarget>) -> CpuHooks {
        CpuHooks {
            threads: threads.max(1),
            host,
            attention: RefCell::default(),
            matmul: RefCell::default(),
            kernels: KernelCache::new(),
        }
    }

    /// Kernels compiled so far (attention, matmul).
    pub fn compiled(&self) -> (usize, usize) {
        (self.attention.borrow().values().flatten().count(), self.matmul.borrow().len())
    }

    /// The compiled attention for `spec`, `None` when the code generator
    /// does not support it (decided once per spec: the IR is generated
    /// only on a miss).
    fn attention_kernel(&self, spec: &AttentionSpec) -> Result<Option<Rc<CompiledAttention>>, LlvmError> {
        cached(&self.attention, format!("{spec:?}"), || match CompiledAttention::new_for(spec, self.host()?) {
            Ok(c) => Ok(Some(Rc::new(c))),
            Err(LlvmError::Unsupported(_)) => Ok(None),
            Err(e) => Err(e),
        })
    }

    fn matmul_kernel(&self, tiles: (usize, usize, usize)) -> Result<Rc<CompiledMatMul>, LlvmError> {
        cached(&self.matmul, tiles, || Ok(Rc::new(CompiledMatMul::new_for(tiles, self.host()?)?)))
    }

    fn host(&self) -> Result<&HostTarget, LlvmError> {
        self.host.as_ref().ok_or_else(|| LlvmError::Internal("no host target".into()))
    }

    /// The compiled elementwise, movement, row and reduce kernels.
    pub fn kernel_cache(&self) -> &KernelCache {
        &self.kernels
    }
}

/// The value of `key` in `map`, made by `make` on a miss.
fn cached<K: std::hash::Hash + Eq, V: Clone>(
    map: &RefCell<HashMap<K, V>>,
    key: K,
    make: impl FnOnce() -> Result<V, LlvmError>,
) -> Result<V, LlvmError> {
    if let Some(v) = map.borrow().get(&key) {
        return Ok(v.clone());
    }
    let v = make()?;
    map.borrow_mut().insert(key, v.clone());
    Ok(v)
}

/// A hook's answer from a runner's: `None` declines.
fn answer<T>(r: Option<Result<Vec<T>, LlvmError>>) -> Option<Result<(Vec<T>, &'static str), String>> {
    r.map(|r| r.map(|out| (out, EXECUTOR)).map_err(|e| e.to_string()))
}

/// The name the CPU backend's compiled kernels run under.
pub const EXECUTOR: &str = "cpu (LLVM JIT)";

impl Hooks for CpuHooks {
    fn elementwise(&self, k: &ElementwiseKernel, args: &ElementwiseArgs<'_>) -> Option<Result<F32Run, String>> {
        let host = self.host.as_ref()?;
        answer(crate::elementwise::run_elementwise(k, args, host, &self.kernels, self.threads))
    }

    fn elementwise_i32(&self, k: &ElementwiseKernel, args: &ElementwiseArgs<'_>) -> Option<Result<I32Run, String>> {
        let host = self.host.as_ref()?;
        answer(crate::elementwise::run_elementwise_i32(k, args, host, &self.kernels, self.threads))
    }

    fn reduce(&self, k: &ReduceKernel, args: &RowArgs<'_>) -> Option<Result<F32Run, String>> {
        let host = self.host.as_ref()?;
        answer(crate::rows::run_reduce(k, args, host, &self.kernels, self.threads))
    }

    fn reduce_i32(&self, k: &ReduceKernel, x: &[i32], shape: &[usize]) -> Option<Result<I32Run, String>> {
        let host = self.host.as_ref()?;
        answer(crate::rows::run_reduce_i32(k, x, shape, host, &self.kernels, self.threads))
    }

    fn row(&self, k: &RowKernel, args: &RowArgs<'_>) -> Option<Result<F32Run, String>> {
        let host = self.host.as_ref()?;
        answer(crate::rows::run_row(k, args, host, &self.kernels, self.threads))
    }

    fn movement(&self, k: &MoveKernel, args: &MoveArgs<'_>) -> Option<Result<F32Run, String>> {
        let host = self.host.as_ref()?;
        answer(crate::elementwise::run_move(k, args, host, &self.kernels, self.threads))
    }

    fn matmul(&self, k: &MatMulKernel, args: &MatMulArgs<'_>) -> Option<Result<(Vec<f32>, &'static str), String>> {
        self.host.as_ref()?;
        let run = self.matmul_kernel((k.tile_m, k.tile_n, k.tile_k)).and_then(|c| c.run(args, self.threads));
        Some(run.map(|out| (out, EXECUTOR)).map_err(|e| e.to_string()))
    }

    fn attention(&self, k: &AttentionKernel, args: &AttentionArgs<'_>) -> Option<Result<HookRun, String>> {
        self.host.as_ref()?;
        let spec = tdl_rt::attention::spec_of(k, args)?;
        // Only what the code generator supports; the rest is the interpreter's.
        match self.attention_kernel(&spec) {
            Ok(Some(c)) => Some(c.runner().hook_run(k, args, self.threads, EXECUTOR)),
            Ok(None) => None,
            Err(e) => Some(Err(e.to_string())),
        }
    }
}
