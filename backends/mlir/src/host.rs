//! The GPU kernels' numerics without a GPU: a [`LaunchPlan`] run through
//! the host wrappers of its kernel bodies ([`KernelCode::host_module`],
//! lowered to the LLVM dialect and run by MLIR's ExecutionEngine), with
//! the very argument list a GPU runner passes ([`run_plan`]); and
//! [`HostHooks`], which plugs that into the Kernel IR interpreter for
//! every kernel kind the GPU code generator supports.
//!
//! What this checks is exactly the shared bodies — index math, tiling,
//! phases, reductions, formulas — and the parameter ABI, not the GPU's
//! thread mapping, memory spaces or barriers (see ARCHITECTURE.md).

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::rc::Rc;

use tdl_kernel::interp::{
    AttentionArgs, ElementwiseArgs, F32Run, HookRun, Hooks, I32Run, MatMulArgs, MoveArgs, RowArgs,
};
use tdl_kernel::ir::{
    AttentionKernel, ElementwiseKernel, MatMulKernel, MoveKernel, MoveOp, ReduceKernel, RowKernel, RowOp,
};
use tdl_kernel::{F32Tensor, KernelStats};

use crate::launch::{KernelCode, LaunchPlan, PlanBuf, Word, HOST_PIPELINE, LAMBDA_INDEX_ERROR};
use crate::{new_context, parse_module, run_pipeline, verify_module, JitEngine, MlirError};

/// The executor name `--stats` and the tests see.
pub const EXECUTOR: &str = "gpu kernel body on the host (MLIR)";

/// Compiles the host wrappers of `code` (lowered by [`HOST_PIPELINE`],
/// JIT-compiled at O2).
pub fn compile_host(code: &KernelCode) -> Result<JitEngine, MlirError> {
    let context = new_context();
    let mut module = parse_module(&context, &code.host_module)?;
    verify_module(&module)?;
    run_pipeline(&mut module, HOST_PIPELINE)?;
    JitEngine::new(&module, 2)
}

/// What a plan's output holds.
#[derive(Clone, Debug, PartialEq)]
pub enum PlanOutput {
    F32(Vec<f32>),
    I32(Vec<i32>),
}

/// Runs `plan` on the host with `engine` (compiled from `plan.code` by
/// [`compile_host`]): allocates the buffers, calls each step's host
/// wrapper through the packed interface with the step's expanded
/// parameters and grid, checks the error flag and returns the output
/// buffer (`f32` — widened from a 16-bit [`LaunchPlan::output_store`] —
/// or `i32`, [`LaunchPlan::output_is_i32`]).
pub fn run_plan_any(engine: &JitEngine, plan: &LaunchPlan<'_>) -> Result<PlanOutput, MlirError> {
    plan.validate()?;
    // The buffers the kernels write (zeroed ones, the output, the error
    // flag) and 16-bit ones (converted here) are owned; the others are
    // read in place.
    enum Owned {
        F(Vec<f32>),
        I(Vec<i32>),
        H(Vec<u16>),
    }
    let written = |i: usize| i == plan.output || Some(i) == plan.error_flag;
    let mut owned: Vec<Option<Owned>> = plan
        .buffers
        .iter()
        .enumerate()
        .map(|(i, b)| match b {
            PlanBuf::Zeroed(n) => Some(Owned::F(vec![0f32; *n])),
            PlanBuf::ZeroedHalf(_, n) => Some(Owned::H(vec![0u16; *n])),
            PlanBuf::F32(d) if written(i) => Some(Owned::F(d.to_vec())),
            PlanBuf::Half(s, d) => Some(Owned::H(s.narrow_bits(d))),
            PlanBuf::I32(d) if written(i) => Some(Owned::I(d.to_vec())),
            _ => None,
        })
        .collect();
    let ptrs: Vec<*mut c_void> = plan
        .buffers
        .iter()
        .zip(owned.iter_mut())
        .map(|(b, o)| match (b, o) {
            (_, Some(Owned::F(v))) => v.as_mut_ptr().cast(),
            (_, Some(Owned::I(v))) => v.as_mut_ptr().cast(),
            (_, Some(Owned::H(v))) => v.as_mut_ptr().cast(),
            (PlanBuf::F32(d), None) => d.as_ptr().cast_mut().cast(),
            (PlanBuf::I32(d), None) => d.as_ptr().cast_mut().cast(),
            (PlanBuf::I64(d), None) => d.as_ptr().cast_mut().cast(),
            (PlanBuf::Zeroed(_) | PlanBuf::ZeroedHalf(..) | PlanBuf::Half(..), None) => std::ptr::null_mut(),
        })
        .collect();
    for step in &plan.steps {
        let mut words: Vec<u64> = Vec::new();
        for p in &step.params {
            for w in p.expand() {
                words.push(match w {
                    Word::BufPtr(b) => ptrs[b] as u64,
                    Word::I64(v) => v as u64,
                    Word::I32(v) => u64::from(v as u32),
                    Word::F32(v) => u64::from(v.to_bits()),
                });
            }
        }
        words.extend(step.grid.map(u64::from));
        let mut args: Vec<*mut c_void> = words.iter_mut().map(|w| (w as *mut u64).cast()).collect();
        // SAFETY: the host wrapper `@func` takes the expanded parameters
        // (pointers and i64 as 8 bytes, i32/f32 read from the low bytes of
        // a little-endian word) and the grid as three index values, as the
        // plan's code writes it; `validate` checked that every memref lies
        // inside its buffer, the kernels write only the owned buffers, and
        // the buffers outlive the call.
        unsafe { engine.call_packed(&step.func, &mut args)? };
    }
    if let Some(e) = plan.error_flag {
        if matches!(&owned[e], Some(Owned::I(v)) if v.first().is_some_and(|&x| x != 0)) {
            return Err(MlirError::Run(LAMBDA_INDEX_ERROR.to_string()));
        }
    }
    let store = plan.output_store();
    match owned.swap_remove(plan.output) {
        Some(Owned::F(v)) => Ok(PlanOutput::F32(v)),
        Some(Owned::H(v)) => Ok(PlanOutput::F32(store.widen_bits(&v))),
        Some(Owned::I(v)) => Ok(PlanOutput::I32(v)),
        None => Err(MlirError::BadPlan("the output is not a buffer the kernels write".into())),
    }
}

/// [`run_plan_any`] for a plan with an `f32` output.
pub fn run_plan(engine: &JitEngine, plan: &LaunchPlan<'_>) -> Result<Vec<f32>, MlirError> {
    match run_plan_any(engine, plan)? {
        PlanOutput::F32(v) => Ok(v),
        PlanOutput::I32(_) => Err(MlirError::BadPlan("the output is an i32 buffer".into())),
    }
}

/// [`run_plan_any`] for a plan with an `i32` output.
pub fn run_plan_i32(engine: &JitEngine, plan: &LaunchPlan<'_>) -> Result<Vec<i32>, MlirError> {
    match run_plan_any(engine, plan)? {
        PlanOutput::I32(v) => Ok(v),
        PlanOutput::F32(_) => Err(MlirError::BadPlan("the output is an f32 buffer".into())),
    }
}

/// Counts of what [`HostHooks`] ran, by kernel kind.
pub type RunCounts = std::collections::BTreeMap<&'static str, usize>;

/// Runs every kernel the GPU code generator supports through the host
/// wrappers of its body ([`run_plan`]); declines the rest (the interpreter
/// runs them). Compiled code is cached by [`KernelCode::key`].
#[derive(Default)]
pub struct HostHooks {
    cache: RefCell<HashMap<String, Rc<JitEngine>>>,
    runs: RefCell<RunCounts>,
}

impl HostHooks {
    pub fn new() -> HostHooks {
        HostHooks::default()
    }

    /// Kernels compiled so far.
    pub fn compiled(&self) -> usize {
        self.cache.borrow().len()
    }

    /// Kernels run so far, by kind.
    pub fn runs(&self) -> RunCounts {
        self.runs.borrow().clone()
    }

    fn engine(&self, code: &KernelCode) -> Result<Rc<JitEngine>, MlirError> {
        if let Some(e) = self.cache.borrow().get(&code.key) {
            return Ok(Rc::clone(e));
        }
        let e = Rc::new(compile_host(code)?);
        self.cache.borrow_mut().insert(code.key.clone(), Rc::clone(&e));
        Ok(e)
    }

    /// Runs a plan; `None` for a declined kernel.
    fn run(
        &self,
        kind: &'static str,
        plan: Result<Option<LaunchPlan<'_>>, MlirError>,
    ) -> Option<Result<Vec<f32>, String>> {
        self.run_with(kind, plan, run_plan)
    }

    fn run_with<T>(
        &self,
        kind: &'static str,
        plan: Result<Option<LaunchPlan<'_>>, MlirError>,
        runner: impl FnOnce(&JitEngine, &LaunchPlan<'_>) -> Result<T, MlirError>,
    ) -> Option<Result<T, String>> {
        let plan = match plan {
            Ok(Some(p)) => p,
            Ok(None) | Err(MlirError::Unsupported(_)) => return None,
            Err(e) => return Some(Err(e.to_string())),
        };
        let out = self.engine(&plan.code).and_then(|e| runner(&e, &plan)).map_err(|e| e.to_string());
        *self.runs.borrow_mut().entry(kind).or_default() += 1;
        Some(out)
    }
}

impl Hooks for HostHooks {
    fn attention(&self, k: &AttentionKernel, args: &AttentionArgs<'_>) -> Option<Result<HookRun, String>> {
        let plan = crate::attention::plan_attention(k, args);
        let (shape, stats) = match &plan {
            Ok(Some(p)) => (p.output_shape.clone(), p.stats.clone().unwrap_or_default()),
            _ => (Vec::new(), KernelStats::default()),
        };
        let out = self.run("attention", plan)?;
        Some(out.map(|data| (F32Tensor { shape, data }, EXECUTOR, stats)))
    }

    fn matmul(&self, _k: &MatMulKernel, args: &MatMulArgs<'_>) -> Option<Result<(Vec<f32>, &'static str), String>> {
        let out = self.run("matmul", crate::matmul::plan_matmul(args))?;
        Some(out.map(|d| (d, EXECUTOR)))
    }

    fn elementwise(&self, k: &ElementwiseKernel, args: &ElementwiseArgs<'_>) -> Option<Result<F32Run, String>> {
        let out = self.run("elementwise", crate::elementwise::plan_elementwise(k, args))?;
        Some(out.map(|d| (d, EXECUTOR)))
    }

    fn elementwise_i32(&self, k: &ElementwiseKernel, args: &ElementwiseArgs<'_>) -> Option<Result<I32Run, String>> {
        let out = self.run_with("elementwise", crate::elementwise::plan_elementwise(k, args), run_plan_i32)?;
        Some(out.map(|d| (d, EXECUTOR)))
    }

    fn reduce(&self, k: &ReduceKernel, args: &RowArgs<'_>) -> Option<Result<F32Run, String>> {
        let out = self.run("reduce", crate::rows::plan_reduce(k, args))?;
        Some(out.map(|d| (d, EXECUTOR)))
    }

    fn reduce_i32(&self, k: &ReduceKernel, x: &[i32], shape: &[usize]) -> Option<Result<I32Run, String>> {
        let out = self.run_with("reduce", crate::rows::plan_reduce_i32(k, x, shape), run_plan_i32)?;
        Some(out.map(|d| (d, EXECUTOR)))
    }

    fn row(&self, k: &RowKernel, args: &RowArgs<'_>) -> Option<Result<F32Run, String>> {
        let kind = match k.op {
            RowOp::Softmax { .. } => "softmax",
            RowOp::LayerNorm { .. } => "layernorm",
            RowOp::RmsNorm { .. } => "rmsnorm",
            RowOp::Rope { .. } => "rope",
        };
        let out = self.run(kind, crate::rows::plan_row(k, args))?;
        Some(out.map(|d| (d, EXECUTOR)))
    }

    fn movement(&self, k: &MoveKernel, args: &MoveArgs<'_>) -> Option<Result<F32Run, String>> {
        let kind = match k.op {
            MoveOp::Copy => "copy",
            MoveOp::Concat { .. } => "concat",
            MoveOp::Repeat { .. } => "repeat",
        };
        let out = self.run(kind, crate::movement::plan_move(k, args))?;
        Some(out.map(|d| (d, EXECUTOR)))
    }
}
