//! The GPU kernels' numerics without a GPU: the attention kernel body of
//! [`crate::attention`] in its host wrapper, lowered to the LLVM dialect
//! and run by MLIR's ExecutionEngine, plugged into the Kernel IR
//! interpreter as its attention hook ([`HostHooks`]).
//!
//! What this checks is exactly the shared body — the phases, the kv-tile
//! loop, the score, mask and online-softmax code — not the GPU's thread
//! mapping, memory spaces or barriers (see ARCHITECTURE.md).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use tdl_ir::layout::AttentionLayout;
use tdl_ir::DType;
use tdl_kernel::interp::{AttentionArgs, HookRun, Hooks};
use tdl_kernel::ir::AttentionKernel;
use tdl_kernel::{F32Tensor, KernelStats};

use crate::attention::{fit, host_module, GpuAttentionSpec, HOST_PIPELINE};
use crate::{new_context, parse_module, run_pipeline, verify_module, JitEngine, MlirError};

/// The executor name `--stats` and the tests see.
pub const EXECUTOR: &str = "gpu kernel body on the host (MLIR)";

/// A rank-3 memref descriptor as MLIR's C interface passes it.
#[repr(C)]
struct MemRef3 {
    allocated: *mut f32,
    aligned: *mut f32,
    offset: i64,
    sizes: [i64; 3],
    strides: [i64; 3],
}

impl MemRef3 {
    fn new(data: *mut f32, [a, b, c]: [usize; 3]) -> MemRef3 {
        let s = [a as i64, b as i64, c as i64];
        MemRef3 { allocated: data, aligned: data, offset: 0, sizes: s, strides: [s[1] * s[2], s[2], 1] }
    }
}

type Entry = unsafe extern "C" fn(*mut MemRef3, *mut MemRef3, *mut MemRef3, *mut MemRef3);

/// A compiled host kernel; the engine owns its machine code.
struct Compiled {
    f: Entry,
    _engine: JitEngine,
}

impl Compiled {
    fn new(spec: &GpuAttentionSpec) -> Result<Compiled, MlirError> {
        let context = new_context();
        let mut module = parse_module(&context, &host_module(spec, "tdl_attn")?)?;
        verify_module(&module)?;
        run_pipeline(&mut module, HOST_PIPELINE)?;
        let engine = JitEngine::new(&module, 2)?;
        let addr = engine.lookup("_mlir_ciface_tdl_attn")?;
        // SAFETY: the C interface of `@tdl_attn`, four rank-3 f32 memrefs,
        // as `host_module` writes it; the code lives as long as the engine.
        let f = unsafe { std::mem::transmute::<*mut std::ffi::c_void, Entry>(addr) };
        Ok(Compiled { f, _engine: engine })
    }
}

/// Runs the attention kernels the GPU code generator supports through the
/// host wrapper of their body; declines the rest (the interpreter runs
/// them). Compiled kernels are cached by specification.
#[derive(Default)]
pub struct HostHooks {
    cache: RefCell<HashMap<String, Option<Rc<Compiled>>>>,
}

impl HostHooks {
    pub fn new() -> HostHooks {
        HostHooks::default()
    }

    /// Kernels compiled so far.
    pub fn compiled(&self) -> usize {
        self.cache.borrow().values().flatten().count()
    }

    fn kernel(&self, spec: &GpuAttentionSpec) -> Result<Option<Rc<Compiled>>, MlirError> {
        let key = format!("{spec:?}");
        if let Some(c) = self.cache.borrow().get(&key) {
            return Ok(c.clone());
        }
        let c = match Compiled::new(spec) {
            Ok(c) => Some(Rc::new(c)),
            Err(MlirError::Unsupported(_)) => None,
            Err(e) => return Err(e),
        };
        self.cache.borrow_mut().insert(key, c.clone());
        Ok(c)
    }
}

impl Hooks for HostHooks {
    fn attention(&self, k: &AttentionKernel, args: &AttentionArgs<'_>) -> Option<Result<HookRun, String>> {
        if k.score.is_some() {
            return None;
        }
        let layout = AttentionLayout::new(DType::F32, &args.q.shape, &args.k.shape, &args.v.shape).ok()?;
        let rank3 = |s: &[usize]| s.len() == 3;
        if !(rank3(&args.q.shape) && rank3(&args.k.shape) && rank3(&args.v.shape)) {
            return None;
        }
        let (hq, hk) = (args.q.shape[0], args.k.shape[0]);
        if hk == 0 || hq % hk != 0 || args.v.shape[0] != hk {
            return None;
        }
        let spec = fit(GpuAttentionSpec {
            d: layout.d,
            dv: layout.dv,
            tile_q: k.tile_q,
            tile_k: k.tile_k,
            scale: k.scale,
            mask: args.mask.map(|(m, _)| m.clone()),
        });
        let compiled = match self.kernel(&spec) {
            Ok(Some(c)) => c,
            Ok(None) => return None,
            Err(e) => return Some(Err(e.to_string())),
        };
        let (t, s) = (layout.t, layout.s);
        if args.q.data.len() != hq * t * layout.d
            || args.k.data.len() != hk * s * layout.d
            || args.v.data.len() != hk * s * layout.dv
        {
            return Some(Err("attention operands do not match their shapes".into()));
        }
        let mut out = vec![0f32; hq * t * layout.dv];
        let (mut q, mut kd, mut v, mut o) = (
            MemRef3::new(args.q.data.as_ptr().cast_mut(), [hq, t, layout.d]),
            MemRef3::new(args.k.data.as_ptr().cast_mut(), [hk, s, layout.d]),
            MemRef3::new(args.v.data.as_ptr().cast_mut(), [hk, s, layout.dv]),
            MemRef3::new(out.as_mut_ptr(), [hq, t, layout.dv]),
        );
        // SAFETY: the descriptors cover the operands' data exactly (the
        // layout checked the shapes against the data); the kernel reads q,
        // k, v and writes every element of `out`.
        unsafe { (compiled.f)(&mut q, &mut kd, &mut v, &mut o) };
        let stats = KernelStats { programs: (hq * t.div_ceil(spec.tile_q)) as u64, ..KernelStats::default() };
        Some(Ok((F32Tensor { shape: vec![hq, t, layout.dv], data: out }, EXECUTOR, stats)))
    }
}
