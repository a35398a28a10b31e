//! CPU smoke path: `scf`/`memref`/`arith` lowered to the LLVM dialect and run
//! by MLIR's JIT. This proves the host-side lowering and the memref calling
//! convention (`llvm.emit_c_interface` → `_mlir_ciface_<name>` taking a
//! pointer to a memref descriptor).

use melior::{ir::Module, Context};

use crate::{
    context::{new_context, parse_module, run_pipeline, verify_module},
    jit::{JitEngine, MemRef1D},
    MlirError,
};

/// The smoke function: a sequential f32 sum over `memref<?xf32>`.
pub const SMOKE_CPU_SUM_MLIR: &str = r#"
module {
  func.func @tdl_smoke_sum(%x: memref<?xf32>) -> f32 attributes {llvm.emit_c_interface} {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %zero = arith.constant 0.0 : f32
    %n = memref.dim %x, %c0 : memref<?xf32>
    %sum = scf.for %i = %c0 to %n step %c1 iter_args(%acc = %zero) -> (f32) {
      %v = memref.load %x[%i] : memref<?xf32>
      %next = arith.addf %acc, %v : f32
      scf.yield %next : f32
    }
    return %sum : f32
  }
}
"#;

/// Lowers `func`/`scf`/`memref`/`arith` to the LLVM dialect.
pub const CPU_LOWERING_PIPELINE: &str = "builtin.module(convert-scf-to-cf,convert-to-llvm,reconcile-unrealized-casts)";

type SumFn = unsafe extern "C" fn(*mut MemRef1D<f32>) -> f32;

/// Parses and verifies the smoke sum module (before lowering).
pub fn smoke_cpu_module(context: &Context) -> Result<Module<'_>, MlirError> {
    let module = parse_module(context, SMOKE_CPU_SUM_MLIR)?;
    verify_module(&module)?;
    Ok(module)
}

/// Sums `x` in order (like `x.iter().fold(0.0, |a, b| a + b)`) with the
/// smoke function, lowered to LLVM and JIT-compiled at O3 by MLIR.
pub fn smoke_cpu_sum(x: &[f32]) -> Result<f32, MlirError> {
    let mut descriptor = MemRef1D::from_slice(x)?;
    let context = new_context();
    let mut module = smoke_cpu_module(&context)?;
    run_pipeline(&mut module, CPU_LOWERING_PIPELINE)?;
    verify_module(&module)?;
    let engine = JitEngine::new(&module, 3)?;
    let sum = engine.lookup("_mlir_ciface_tdl_smoke_sum")?;
    // SAFETY: `_mlir_ciface_tdl_smoke_sum` is generated from the function
    // above: it takes a pointer to a rank-1 f32 memref descriptor and returns
    // f32. The function only reads through the descriptor, which describes
    // exactly `x`.
    let result = unsafe {
        let sum: SumFn = std::mem::transmute::<*mut std::ffi::c_void, SumFn>(sum);
        sum(&mut descriptor)
    };
    Ok(result)
}
