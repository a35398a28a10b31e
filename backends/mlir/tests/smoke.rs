//! Toolchain smoke tests for the GPU backend (`tdl-mlir`): in-process PTX
//! generation with workgroup memory and barriers, and the MLIR CPU JIT.
//!
//! Kept in one test binary on purpose: every binary that links melior links
//! all of MLIR and LLVM statically (about 250 MB in debug).

use tdl_mlir::{
    melior::ir::operation::OperationLike, new_context, nvvm_pipeline, parse_module, run_pipeline, smoke_cpu_module,
    smoke_cpu_sum, smoke_gpu_module, smoke_gpu_ptx, JitEngine, MlirError, CPU_LOWERING_PIPELINE, SMOKE_KERNEL_NAME,
};

fn check_ptx(chip: &str) {
    let ptx = smoke_gpu_ptx(chip).unwrap_or_else(|e| panic!("{chip}: {e}"));
    assert!(ptx.contains(".entry"), "{chip}: no .entry:\n{ptx}");
    assert!(ptx.contains(SMOKE_KERNEL_NAME), "{chip}: kernel name missing:\n{ptx}");
    assert!(ptx.contains(".shared"), "{chip}: no .shared:\n{ptx}");
    assert!(ptx.contains("bar.sync"), "{chip}: no bar.sync:\n{ptx}");
    assert!(ptx.lines().any(|l| l.trim() == format!(".target {chip}")), "{chip}: wrong .target:\n{ptx}");
}

#[test]
fn gpu_ptx_sm90() {
    check_ptx("sm_90");
}

#[test]
fn gpu_ptx_sm80() {
    check_ptx("sm_80");
}

#[test]
fn gpu_rejects_bad_chip() {
    for chip in ["", "sm90", "sm_", "sm_9x", "gfx90a", "sm_90 opt-level=0", "sm_90}"] {
        assert!(matches!(smoke_gpu_ptx(chip), Err(MlirError::InvalidChip(_))), "accepted chip {chip:?}");
    }
    assert!(nvvm_pipeline("sm_90a").is_ok());
}

#[test]
fn smoke_modules_verify() {
    let context = new_context();
    let gpu = smoke_gpu_module(&context).expect("gpu module");
    assert!(gpu.as_operation().verify());
    let cpu = smoke_cpu_module(&context).expect("cpu module");
    assert!(cpu.as_operation().verify());
}

#[test]
fn cpu_sum_matches_rust() {
    for n in [0usize, 1, 1000] {
        let x: Vec<f32> = (0..n).map(|i| ((i * 37) % 101) as f32 * 0.01 - 0.3).collect();
        let expected = x.iter().fold(0.0f32, |a, b| a + b);
        let got = smoke_cpu_sum(&x).unwrap_or_else(|e| panic!("n={n}: {e}"));
        assert_eq!(got.to_bits(), expected.to_bits(), "n={n}: {got} vs {expected}");
    }
}

#[test]
fn errors_instead_of_crashes() {
    let context = new_context();
    // Parse error carries a diagnostic.
    match parse_module(&context, "func.func @f( {") {
        Err(MlirError::Parse { diagnostics }) => assert!(!diagnostics.is_empty()),
        other => panic!("expected a parse error, got {other:?}"),
    }
    // Unknown pass.
    let mut module = smoke_cpu_module(&context).expect("cpu module");
    assert!(matches!(run_pipeline(&mut module, "builtin.module(no-such-pass)"), Err(MlirError::PipelineParse { .. })));
    // JIT on a module that is not lowered: an error, not a segfault.
    assert!(matches!(JitEngine::new(&module, 3), Err(MlirError::NotLowered(_))));
    // Once lowered it JITs, and a missing symbol is an error.
    run_pipeline(&mut module, CPU_LOWERING_PIPELINE).expect("lowering");
    let engine = JitEngine::new(&module, 0).expect("engine");
    assert!(engine.lookup("_mlir_ciface_tdl_smoke_sum").is_ok());
    assert!(matches!(engine.lookup("nope"), Err(MlirError::SymbolNotFound(_))));
}
