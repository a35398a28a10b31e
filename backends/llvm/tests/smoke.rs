//! Toolchain smoke tests for the CPU backend (`tdl-llvm`): host detection,
//! O3 vectorisation of a loop kernel, and MCJIT execution.
//!
//! Kept in one test binary on purpose: every binary that links inkwell links
//! all of LLVM statically, so each extra binary costs link time and disk.

use tdl_llvm::{smoke_axpy_jit, smoke_ir_text, HostTarget, LlvmError, AXPY_FN_NAME};

fn inputs(n: usize) -> (Vec<f32>, Vec<f32>) {
    let x = (0..n).map(|i| (i as f32) * 0.5 - 3.25).collect();
    let y = (0..n).map(|i| 1.0 / (i as f32 + 1.0)).collect();
    (x, y)
}

#[test]
fn host_target_is_detected() {
    let host = HostTarget::detect().expect("detect host");
    assert!(!host.triple.is_empty(), "empty triple");
    assert!(!host.cpu.is_empty(), "empty cpu name");
    assert!([128, 256, 512].contains(&host.vector_width_bits));
    assert_eq!(host.f32_lanes() * 32, host.vector_width_bits);
    eprintln!("host: {} {} ({} bits)", host.triple, host.cpu, host.vector_width_bits);
}

#[test]
fn vector_width_follows_features() {
    assert_eq!(HostTarget::vector_width_for_features("+sse2,+avx2,+avx512f"), 512);
    assert_eq!(HostTarget::vector_width_for_features("+sse2,+avx2,-avx512f"), 256);
    assert_eq!(HostTarget::vector_width_for_features("+avx512fp16,-avx2,-avx512f"), 128);
    assert_eq!(HostTarget::vector_width_for_features(""), 128);
}

#[test]
fn axpy_jit_matches_rust() {
    let a = 1.75f32;
    for n in [0usize, 1, 17, 1000] {
        let (x, mut y) = inputs(n);
        let expected: Vec<f32> = x.iter().zip(&y).map(|(xi, yi)| a * xi + yi).collect();
        smoke_axpy_jit(a, &x, &mut y).unwrap_or_else(|e| panic!("n={n}: {e}"));
        // Bit-exact: no fast-math, so no FMA contraction.
        let got: Vec<u32> = y.iter().map(|v| v.to_bits()).collect();
        let want: Vec<u32> = expected.iter().map(|v| v.to_bits()).collect();
        assert_eq!(got, want, "n={n}");
    }
}

#[test]
fn axpy_jit_rejects_length_mismatch() {
    let mut y = vec![0.0f32; 3];
    let err = smoke_axpy_jit(1.0, &[1.0, 2.0], &mut y).unwrap_err();
    assert!(matches!(err, LlvmError::LengthMismatch { x: 2, y: 3 }), "{err}");
}

#[test]
fn axpy_ir_is_vectorised_for_host() {
    let host = HostTarget::detect().expect("detect host");
    let ir = smoke_ir_text(&host).expect("optimised IR");
    assert!(ir.contains(&format!("define void @{AXPY_FN_NAME}(")), "{ir}");
    assert!(ir.contains("\"prefer-vector-width\"=\""), "missing prefer-vector-width attr:\n{ir}");
    let vectorised = ir.contains("<16 x float>") || ir.contains("<8 x float>");
    if host.has_feature("avx2") {
        assert!(vectorised, "host {} has AVX2 but the loop is not vectorised:\n{ir}", host.cpu);
    }
    if host.has_feature("avx512f") {
        assert!(ir.contains("<16 x float>"), "AVX-512 host but no <16 x float>:\n{ir}");
    }
}
