//! Toolchain smoke tests for the GPU backend (`tdl-mlir`): in-process PTX
//! generation with workgroup memory and barriers, and the MLIR CPU JIT.
//!
//! Kept in one test binary on purpose: every binary that links melior links
//! all of MLIR and LLVM statically (about 250 MB in debug).

use tdl_mlir::{
    melior::ir::operation::OperationLike, new_context, nvvm_pipeline, parse_module, run_pipeline, smoke_cpu_module,
    smoke_cpu_sum, smoke_gpu_module, smoke_gpu_ptx, JitEngine, MlirError, CPU_LOWERING_PIPELINE, SMOKE_KERNEL_NAME,
};

/// `x` rounded to storage `st` (to nearest even), as an `f32`.
fn round_to(st: tdl_mlir::launch::Store, x: f32) -> f32 {
    use tdl_mlir::launch::Store;
    match st {
        Store::F16 => half::f16::from_f32(x).to_f32(),
        Store::Bf16 => half::bf16::from_f32(x).to_f32(),
        Store::F32 => x,
    }
}

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

// ---- The FA2 attention kernel (tdl_mlir::attention): one body, host and GPU.

mod attention {
    use super::masks_and_lambdas::attn_kernel;
    use tdl_ir::MaskExpr;

    use tdl_ir::Bindings;
    use tdl_kernel::ir::{AttentionKernel, KvSplit};
    use tdl_kernel::F32Tensor;
    use tdl_mlir::attention::{gpu_module, host_module, plan_attention_arrays, GpuAttentionSpec};
    use tdl_mlir::host::{compile_host, run_plan};
    use tdl_mlir::{extract_ptx, new_context, nvvm_pipeline, parse_module, run_pipeline, verify_module};

    fn fill(n: usize, seed: u64) -> Vec<f32> {
        (0..n as u64).map(|i| ((i * 7919 + seed * 104729) % 1000) as f32 / 500.0 - 1.0).collect()
    }

    /// Naive attention in f64 with `visible(q, k, T, S)`.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        (hq, hk, t, s, d, dv): (usize, usize, usize, usize, usize, usize),
        scale: f64,
        visible: &dyn Fn(i64, i64, i64, i64) -> bool,
    ) -> Vec<f64> {
        let mut out = vec![0f64; hq * t * dv];
        for h in 0..hq {
            let kh = h / (hq / hk);
            for r in 0..t {
                let ks: Vec<usize> = (0..s).filter(|&j| visible(r as i64, j as i64, t as i64, s as i64)).collect();
                if ks.is_empty() {
                    continue;
                }
                let sc: Vec<f64> = ks
                    .iter()
                    .map(|&j| {
                        (0..d)
                            .map(|x| f64::from(q[(h * t + r) * d + x]) * f64::from(k[(kh * s + j) * d + x]))
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = sc.iter().map(|x| (x - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for (w, &j) in e.iter().zip(&ks) {
                    for x in 0..dv {
                        out[(h * t + r) * dv + x] += w / z * f64::from(v[(kh * s + j) * dv + x]);
                    }
                }
            }
        }
        out
    }

    type Case = (&'static str, Option<MaskExpr>, &'static dyn Fn(i64, i64, i64, i64) -> bool);

    fn cases() -> Vec<Case> {
        let causal = MaskExpr::Causal;
        vec![
            ("none", None, &|_, _, _, _| true),
            ("causal", Some(causal.clone()), &|q, k, t, s| k <= q + s - t),
            ("window(5)", Some(MaskExpr::Window { w: 5 }), &|q, k, t, s| k <= q + s - t && q - 4 <= k && k <= q),
            (
                "sink(2) | window(3)",
                Some(MaskExpr::Or(Box::new(MaskExpr::Sink { n: 2 }), Box::new(MaskExpr::Window { w: 3 }))),
                &|q, k, t, s| k < 2 || (k <= q + s - t && q - 2 <= k && k <= q),
            ),
            ("!causal (rows with no key)", Some(MaskExpr::Not(Box::new(causal))), &|q, k, t, s| k > q + s - t),
            ("local(3, 1)", Some(MaskExpr::Local { left: 3, right: 1 }), &|q, k, _, _| q - 3 <= k && k <= q + 1),
        ]
    }

    /// The host lowering of the kernel body matches naive attention: masks,
    /// a row with no visible key (zeros), T ≠ S, GQA, sizes that are not
    /// multiples of the tiles, two tilings.
    #[test]
    fn host_run_matches_naive_attention() {
        for (tq, tk) in [(16, 16), (8, 32)] {
            for (what, mask, visible) in cases() {
                let ak = attn_kernel(tq, tk, None);
                let mut engine = None;
                for (hq, hk, t, s) in [(2, 2, 37, 37), (4, 2, 5, 37), (2, 1, 40, 19), (1, 1, 1, 1)] {
                    let (d, dv) = (16, 8);
                    let (q, k, v) = (fill(hq * t * d, 1), fill(hk * s * d, 2), fill(hk * s * dv, 3));
                    let qt = F32Tensor { shape: vec![hq, t, d], data: q.clone() };
                    let kt = F32Tensor { shape: vec![hk, s, d], data: k.clone() };
                    let vt = F32Tensor { shape: vec![hk, s, dv], data: v.clone() };
                    let plan = plan_attention_arrays(
                        &ak,
                        (&qt, &kt, &vt),
                        mask.as_ref().map(|m| (m, &[][..])),
                        None,
                        &Bindings::new(),
                    )
                    .unwrap_or_else(|e| panic!("{what}: {e}"))
                    .unwrap_or_else(|| panic!("{what}: declined"));
                    if engine.as_ref().is_none_or(|(key, _)| *key != plan.code.key) {
                        let e = compile_host(&plan.code).unwrap_or_else(|e| panic!("{what}: {e}"));
                        engine = Some((plan.code.key.clone(), e));
                    }
                    let o = run_plan(&engine.as_ref().unwrap().1, &plan).unwrap_or_else(|e| panic!("{what}: {e}"));
                    let want = reference(&q, &k, &v, (hq, hk, t, s, d, dv), 0.25, visible);
                    let err = o.iter().zip(&want).map(|(a, b)| (f64::from(*a) - b).abs()).fold(0f64, f64::max);
                    assert!(err <= 1e-5, "{what}, tiles {tq}×{tk}, Hq={hq} Hk={hk} T={t} S={s}: max error {err:e}");
                }
            }
        }
    }

    /// The GPU wrapper of the same body lowers to PTX for sm_90 and sm_80:
    /// one entry, the tiles as 16-byte-aligned shared arrays, barriers, no
    /// local memory and no external (libdevice) calls.
    #[test]
    fn gpu_kernel_lowers_to_ptx() {
        for chip in ["sm_90", "sm_80"] {
            for (what, mask, _) in cases() {
                let spec = GpuAttentionSpec {
                    d: 64,
                    dv: 64,
                    tile_q: 64,
                    tile_k: 64,
                    scale: Some(0.125),
                    mask,
                    ..Default::default()
                };
                let context = new_context();
                let text = gpu_module(&spec, "tdl_attn", "attn").unwrap();
                let mut module = parse_module(&context, &text).unwrap_or_else(|e| panic!("{what}: {e}\n{text}"));
                verify_module(&module).unwrap_or_else(|e| panic!("{what}: {e}"));
                run_pipeline(&mut module, &nvvm_pipeline(chip).unwrap()).unwrap_or_else(|e| panic!("{what}: {e}"));
                let ptx = extract_ptx(&module).unwrap();
                assert!(ptx.contains(".entry attn"), "{what}: no entry:\n{ptx}");
                assert!(
                    ptx.matches(".shared .align 16 .b8").count() >= 3,
                    "{what}: tiles not in shared memory:\n{ptx}"
                );
                assert!(ptx.contains("bar.sync"), "{what}: no barrier");
                assert!(!ptx.contains(".local"), "{what}: local memory used");
                assert!(!ptx.contains(".extern .func"), "{what}: external calls:\n{ptx}");
            }
        }
    }

    /// GQA packing: at decode shapes the query heads of one key head run as
    /// the rows of one program (grid y = key heads), and the threads rows
    /// leave idle share each row's keys (`kw` threads per row, merged at
    /// the end), with every mask, with and without KV splits, and match
    /// naive attention; where their rows do not fit one q-tile, or the
    /// heads' tiles differ, or a lambda reads the head, nothing is packed.
    #[test]
    fn gqa_heads_pack_into_one_program() {
        let b = Bindings::new();
        let mut engines: std::collections::HashMap<String, tdl_mlir::JitEngine> = Default::default();
        for (what, mask, visible) in cases() {
            // (Hq, Hk, T, S, programs per q-tile, threads per row)
            for (hq, hk, t, s, want_y, want_kw) in [
                (8, 2, 1, 300, 2, 4),
                (8, 2, 3, 300, 2, 1),
                (8, 2, 5, 70, 4, 1),
                (8, 2, 17, 70, 8, 1),
                (3, 3, 1, 300, 3, 16),
                (3, 3, 2, 70, 3, 8),
                (3, 3, 5, 70, 3, 2),
                (6, 1, 2, 45, 1, 1),
            ] {
                for split in [KvSplit::None, KvSplit::Fixed(4)] {
                    let (d, dv) = (16, 8);
                    let ak = AttentionKernel { kv_split: split, ..attn_kernel(16, 16, None) };
                    let (q, k, v) = (fill(hq * t * d, 4), fill(hk * s * d, 5), fill(hk * s * dv, 6));
                    let qt = F32Tensor { shape: vec![hq, t, d], data: q.clone() };
                    let kt = F32Tensor { shape: vec![hk, s, d], data: k.clone() };
                    let vt = F32Tensor { shape: vec![hk, s, dv], data: v.clone() };
                    let plan =
                        plan_attention_arrays(&ak, (&qt, &kt, &vt), mask.as_ref().map(|m| (m, &[][..])), None, &b)
                            .unwrap()
                            .expect("planned");
                    let case = format!("{what}, Hq={hq} Hk={hk} T={t} S={s} {split:?}");
                    assert_eq!(plan.steps[0].grid[1], want_y, "{case}: programs per q-tile");
                    assert_eq!(
                        plan.steps[0].params[10],
                        tdl_mlir::launch::Param::I64(want_kw),
                        "{case}: threads per row"
                    );
                    let key = plan.code.key.clone();
                    let e = engines.entry(key).or_insert_with(|| compile_host(&plan.code).unwrap());
                    let o = run_plan(e, &plan).unwrap_or_else(|e| panic!("{case}: {e}"));
                    let want = reference(&q, &k, &v, (hq, hk, t, s, d, dv), 0.25, visible);
                    let err = o.iter().zip(&want).map(|(a, b)| (f64::from(*a) - b).abs()).fold(0f64, f64::max);
                    assert!(err <= 1e-5, "{case}: max error {err:e}");
                }
            }
        }
        // A lambda that reads the head: one program per head.
        use tdl_ir::{LambdaVar, ScalarBinary, ScalarExpr};
        let by_head = MaskExpr::Lambda(ScalarExpr::Binary(
            ScalarBinary::Le,
            Box::new(ScalarExpr::Var(LambdaVar::K)),
            Box::new(ScalarExpr::Var(LambdaVar::H)),
        ));
        let ak = attn_kernel(16, 16, None);
        let qt = F32Tensor { shape: vec![8, 1, 16], data: fill(128, 1) };
        let kt = F32Tensor { shape: vec![2, 40, 16], data: fill(1280, 2) };
        let vt = F32Tensor { shape: vec![2, 40, 8], data: fill(640, 3) };
        let plan = plan_attention_arrays(&ak, (&qt, &kt, &vt), Some((&by_head, &[][..])), None, &b).unwrap().unwrap();
        assert_eq!(plan.steps[0].grid[1], 8, "a lambda reading h: not packed");
        let o = run_plan(&compile_host(&plan.code).unwrap(), &plan).unwrap();
        // Head h sees keys 0..=h only.
        for h in 0..8 {
            let (qh, kh) = (&qt.data[h * 16..(h + 1) * 16], h / 4);
            let sc: Vec<f64> = (0..=h)
                .map(|j| {
                    (0..16).map(|x| f64::from(qh[x]) * f64::from(kt.data[(kh * 40 + j) * 16 + x])).sum::<f64>() * 0.25
                })
                .collect();
            let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = sc.iter().map(|x| (x - mx).exp()).sum();
            for dd in 0..8 {
                let w: f64 = (0..=h).map(|j| (sc[j] - mx).exp() / z * f64::from(vt.data[(kh * 40 + j) * 8 + dd])).sum();
                assert!((f64::from(o[h * 8 + dd]) - w).abs() <= 1e-5, "head {h}: {} vs {w}", o[h * 8 + dd]);
            }
        }
        assert_eq!(o.len(), 64);
    }

    /// `f16`/`bf16` storage (alone and mixed with `f32`): the kernel reads
    /// the 16-bit inputs, computes in `f32` and writes the output rounded
    /// to its type — also through a KV split's merge — within one rounding
    /// of naive attention over the same (already rounded) inputs; the PTX
    /// loads and stores 16-bit values.
    #[test]
    fn half_storage_matches_naive_attention() {
        use tdl_mlir::attention::plan_attention_stored;
        use tdl_mlir::launch::{PlanBuf, Store};
        let round = super::round_to;
        let ulp = |st: Store| match st {
            Store::F16 => 2f64.powi(-10),
            Store::Bf16 => 2f64.powi(-7),
            Store::F32 => 1e-6,
        };
        let (f, h, b) = (Store::F32, Store::F16, Store::Bf16);
        let (hq, hk, t, s, d, dv) = (4, 2, 37, 45, 16, 8);
        for store in [[h, h, h, h], [b, b, b, b], [f, b, h, f], [h, f, f, b]] {
            for split in [KvSplit::None, KvSplit::Fixed(3)] {
                let ak = AttentionKernel { kv_split: split, ..attn_kernel(16, 16, None) };
                let data = |n: usize, seed: u64, st: Store| -> Vec<f32> {
                    fill(n, seed).into_iter().map(|x| round(st, x)).collect()
                };
                let (q, k, v) =
                    (data(hq * t * d, 1, store[0]), data(hk * s * d, 2, store[1]), data(hk * s * dv, 3, store[2]));
                let qt = F32Tensor { shape: vec![hq, t, d], data: q.clone() };
                let kt = F32Tensor { shape: vec![hk, s, d], data: k.clone() };
                let vt = F32Tensor { shape: vec![hk, s, dv], data: v.clone() };
                let causal = MaskExpr::Causal;
                let plan = plan_attention_stored(
                    &ak,
                    (&qt, &kt, &vt),
                    store,
                    Some((&causal, &[][..])),
                    None,
                    &Bindings::new(),
                )
                .unwrap()
                .expect("planned");
                assert_eq!(plan.output_store(), store[3]);
                assert!(matches!(plan.buffers[0], PlanBuf::F32(_)) == (store[0] == f), "{store:?}");
                assert_eq!(plan.steps.len(), if split == KvSplit::None { 1 } else { 2 });
                let engine = compile_host(&plan.code).unwrap();
                let o = run_plan(&engine, &plan).unwrap();
                let want = reference(&q, &k, &v, (hq, hk, t, s, d, dv), 0.25, &|q, k, t, s| k <= q + s - t);
                for (i, (&g, &w)) in o.iter().zip(&want).enumerate() {
                    assert_eq!(round(store[3], g), g, "{store:?} {split:?}: output {i} ({g}) is not rounded");
                    let tol = ulp(store[3]) * w.abs() + 1e-5;
                    assert!((f64::from(g) - w).abs() <= tol, "{store:?} {split:?}: output {i}: {g} vs {w}");
                }
                if split == KvSplit::None {
                    let text = &plan.code.mlir_module;
                    assert!(text.contains(&format!("!qt = memref<?x?x{d}x{}>", store[0].mlir())), "{text}");
                    let p = super::kernels::ptx(&plan.code, &["tdl_attn"]);
                    if store.contains(&h) || store.contains(&b) {
                        assert!(p.contains(".b16") || p.contains(".u16"), "no 16-bit loads or stores:\n{p}");
                        // sm_80 has no `cvt.f32.bf16`: LLVM widens by a shift.
                        let context = new_context();
                        let mut m = parse_module(&context, text).unwrap();
                        run_pipeline(&mut m, &nvvm_pipeline("sm_80").unwrap()).unwrap();
                        let p80 = extract_ptx(&m).unwrap();
                        assert!(p80.contains(".entry tdl_attn(") && !p80.contains(".extern .func"), "{p80}");
                    }
                }
            }
        }
    }

    #[test]
    fn unsupported_masks_and_sizes_say_so() {
        // `s` is only defined in a score modifier.
        let lambda = MaskExpr::Lambda(tdl_ir::ScalarExpr::Var(tdl_ir::LambdaVar::S));
        let spec = GpuAttentionSpec {
            d: 16,
            dv: 16,
            tile_q: 16,
            tile_k: 16,
            scale: None,
            mask: Some(lambda),
            ..Default::default()
        };
        let e = host_module(&spec, "attn").unwrap_err().to_string();
        assert!(e.contains("not supported yet") && e.contains("score `s`"), "{e}");
        let big = GpuAttentionSpec {
            d: 512,
            dv: 512,
            tile_q: 128,
            tile_k: 128,
            scale: None,
            mask: None,
            ..Default::default()
        };
        let e = gpu_module(&big, "m", "k").unwrap_err().to_string();
        assert!(e.contains("not supported yet") && e.contains("workgroup memory"), "{e}");
    }
}

// ---- The simple kernels: launch plans run through their host wrappers,
// ---- and their gpu.funcs lowered to PTX.

mod kernels {
    use tdl_kernel::interp::MatMulArgs;
    use tdl_mlir::host::{compile_host, run_plan};
    use tdl_mlir::launch::{KernelCode, LaunchPlan};
    use tdl_mlir::{extract_ptx, new_context, nvvm_pipeline, parse_module, run_pipeline, verify_module};

    pub fn fill(n: usize, seed: u64) -> Vec<f32> {
        (0..n as u64).map(|i| ((i * 7919 + seed * 104729) % 1000) as f32 / 500.0 - 1.0).collect()
    }

    /// Runs a plan on the host (compiling its code).
    pub fn run(plan: &LaunchPlan<'_>) -> Vec<f32> {
        plan.validate().expect("valid plan");
        let engine = compile_host(&plan.code).unwrap_or_else(|e| panic!("{e}\n{}", plan.code.host_module));
        run_plan(&engine, plan).expect("host run")
    }

    /// The code's gpu.module lowers to PTX with one entry per function and
    /// no external calls; returns the PTX.
    pub fn ptx(code: &KernelCode, entries: &[&str]) -> String {
        let context = new_context();
        let mut module =
            parse_module(&context, &code.mlir_module).unwrap_or_else(|e| panic!("{e}\n{}", code.mlir_module));
        verify_module(&module).unwrap();
        run_pipeline(&mut module, &nvvm_pipeline("sm_90").unwrap()).unwrap();
        let ptx = extract_ptx(&module).unwrap();
        for e in entries {
            assert!(ptx.contains(&format!(".entry {e}(")), "no entry {e}:\n{ptx}");
        }
        assert!(!ptx.contains(".extern .func"), "external calls:\n{ptx}");
        ptx
    }

    pub fn close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            let ok = (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-5 * b.abs().max(1.0);
            assert!(ok, "{what}: element {i}: got {a}, want {b}");
        }
    }

    /// Matmul at sizes that are not multiples of the tile, A row-major, B
    /// read transposed, the batch broadcast (A shared by both batches); in
    /// `f32` and with `f16`/`bf16` storage (inputs of those types, the
    /// output rounded to its type once, from the `f32` sum).
    #[test]
    fn matmul_odd_sizes_transposed_and_broadcast() {
        use tdl_ir::DType::{BF16, F16, F32};
        use tdl_mlir::launch::Store;
        for dtypes in [[F32; 3], [F16; 3], [BF16, BF16, F32], [F32, F16, BF16]] {
            let store = dtypes.map(Store::of);
            let round = |i: usize, x: f32| super::round_to(store[i], x);
            for (m, n, k) in [(37, 19, 70), (1, 1, 1), (16, 16, 16), (5, 33, 0)] {
                let batch = 2;
                let a: Vec<f32> = fill(m * k, 1).into_iter().map(|x| round(0, x)).collect(); // [m, k], shared by both batches
                let b: Vec<f32> = fill(batch * n * k, 2).into_iter().map(|x| round(1, x)).collect(); // [batch, n, k], read as [k, n]
                let args = MatMulArgs {
                    a: &a,
                    b: &b,
                    m,
                    n,
                    k,
                    a_i: k,
                    a_p: 1,
                    b_p: 1,
                    b_j: k,
                    a_offsets: vec![0, 0],
                    b_offsets: vec![0, n * k],
                    dtypes,
                };
                let plan = tdl_mlir::matmul::plan_matmul(&args).unwrap().expect("supported");
                assert_eq!(plan.output_store(), store[2]);
                let got = run(&plan);
                let mut want = vec![0f32; batch * m * n];
                for bi in 0..batch {
                    for i in 0..m {
                        for j in 0..n {
                            let mut s = 0f32;
                            for p in 0..k {
                                s += a[i * k + p] * b[bi * n * k + j * k + p];
                            }
                            want[(bi * m + i) * n + j] = s;
                        }
                    }
                }
                let what = format!("matmul {m}×{n}×{k} {dtypes:?}");
                if store[2] == Store::F32 {
                    close(&got, &want, &what);
                } else {
                    // One rounding of sums that may differ in their last f32 bits.
                    let ulp = if store[2] == Store::F16 { 2f32.powi(-10) } else { 2f32.powi(-7) };
                    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(round(2, g), g, "{what}: element {i} ({g}) is not rounded");
                        assert!((g - w).abs() <= ulp * w.abs() + 1e-5, "{what}: element {i}: got {g}, want {w}");
                    }
                }
                let ptx = ptx(&plan.code, &["tdl_matmul"]);
                assert!(ptx.matches(".shared .align 16 .b8").count() >= 3, "tiles not in shared memory");
                assert!(ptx.contains("bar.sync"));
            }
        }
    }

    #[test]
    fn plans_reject_out_of_bounds_operands() {
        let a = fill(10, 1);
        let args = MatMulArgs {
            a: &a,
            b: &a,
            m: 4,
            n: 4,
            k: 4,
            a_i: 4,
            a_p: 1,
            b_p: 4,
            b_j: 1,
            a_offsets: vec![0],
            b_offsets: vec![0],
            dtypes: [tdl_ir::DType::F32; 3],
        };
        assert!(tdl_mlir::matmul::plan_matmul(&args).is_err());
    }

    use tdl_ir::{BinaryOp, DType, MaskExpr, ReduceOp, UnaryOp};
    use tdl_kernel::interp::{ElementwiseArgs, Elems, MoveArgs, RowArgs, StridedView};
    use tdl_kernel::ir::{
        Access, BufId, ElementwiseKernel, EwInst, EwOp, MaskUse, MoveKernel, MoveOp, ReduceKernel, RowKernel, RowOp,
    };

    fn erf64(x: f64) -> f64 {
        // Maclaurin series (|x| < 3 here).
        let (mut term, mut sum, mut n) = (x, x, 0.0);
        while term.abs() > 1e-17 {
            n += 1.0;
            term *= -x * x / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    fn unary_ref(u: UnaryOp, v: f32) -> f32 {
        let sig = |v: f32| 1.0 / (1.0 + (-v).exp());
        match u {
            UnaryOp::Neg => -v,
            UnaryOp::Abs => v.abs(),
            UnaryOp::Relu => {
                if v < 0.0 {
                    0.0
                } else {
                    v
                }
            }
            UnaryOp::Exp => v.exp(),
            UnaryOp::Log => v.ln(),
            UnaryOp::Sqrt => v.sqrt(),
            UnaryOp::Rsqrt => 1.0 / v.sqrt(),
            UnaryOp::Tanh => v.tanh(),
            UnaryOp::Sigmoid => sig(v),
            UnaryOp::Gelu => (0.5 * f64::from(v) * (1.0 + erf64(f64::from(v) / 2f64.sqrt()))) as f32,
            UnaryOp::Silu => v * sig(v),
        }
    }

    fn inst(op: EwOp, dtype: DType) -> EwInst {
        EwInst { op, dtype }
    }

    /// Every unary operator on a rank-3 output [3, 17, 5], times an input
    /// broadcast from [17, 1] (stride 0 on two axes) and read at an offset.
    #[test]
    fn elementwise_unary_ops_broadcast_and_offsets() {
        let shape = [3usize, 17, 5];
        let n: usize = shape.iter().product();
        let x = fill(n + 2, 3); // read from offset 2
        let y = fill(17, 4);
        let bindings = tdl_ir::Bindings::new();
        for u in UnaryOp::ALL {
            let k = ElementwiseKernel {
                inputs: vec![Access::whole(BufId(0)), Access::whole(BufId(1))],
                masks: vec![],
                body: vec![
                    inst(EwOp::Load(0), DType::F32),
                    inst(EwOp::Unary(u, 0), DType::F32),
                    inst(EwOp::Load(1), DType::F32),
                    inst(EwOp::Binary(BinaryOp::Mul, 1, 2), DType::F32),
                ],
                out: BufId(2),
            };
            let args = ElementwiseArgs {
                shape: &shape,
                inputs: vec![
                    StridedView { data: Elems::F32(&x), offset: 2, shape: shape.to_vec(), strides: vec![85, 5, 1] },
                    StridedView { data: Elems::F32(&y), offset: 0, shape: shape.to_vec(), strides: vec![0, 1, 0] },
                ],
                masks: vec![],
                bindings: &bindings,
                dtypes: vec![],
                out_dtype: tdl_ir::DType::F32,
            };
            let plan = tdl_mlir::elementwise::plan_elementwise(&k, &args).unwrap().expect("supported");
            let got = run(&plan);
            let want: Vec<f32> = (0..n).map(|i| unary_ref(u, x[2 + i]) * y[(i / 5) % 17]).collect();
            close(&got, &want, &format!("{u:?}"));
            if u == UnaryOp::Gelu {
                ptx(&plan.code, &["tdl_ew"]);
            }
        }
    }

    /// `log` at the special values (0, negative, inf, NaN, subnormal, huge).
    #[test]
    fn elementwise_log_special_values() {
        let x = [0.0f32, -0.0, -1.0, f32::INFINITY, f32::NAN, 1e-40, 1e30, 1.0, 2.0, 0.5, 1.41, 1.42, 7.0];
        let shape = [x.len()];
        let bindings = tdl_ir::Bindings::new();
        let k = ElementwiseKernel {
            inputs: vec![Access::whole(BufId(0))],
            masks: vec![],
            body: vec![inst(EwOp::Load(0), DType::F32), inst(EwOp::Unary(UnaryOp::Log, 0), DType::F32)],
            out: BufId(1),
        };
        let args = ElementwiseArgs {
            shape: &shape,
            inputs: vec![StridedView { data: Elems::F32(&x), offset: 0, shape: shape.to_vec(), strides: vec![1] }],
            masks: vec![],
            bindings: &bindings,
            dtypes: vec![],
            out_dtype: tdl_ir::DType::F32,
        };
        let plan = tdl_mlir::elementwise::plan_elementwise(&k, &args).unwrap().expect("supported");
        let want: Vec<f32> = x.iter().map(|v| v.ln()).collect();
        close(&run(&plan), &want, "log");
    }

    /// A causal mask inside an elementwise chain (T=7, S=9) selecting -inf,
    /// and a boolean input selecting between two values.
    #[test]
    fn elementwise_masks_and_bool_inputs() {
        let shape = [2usize, 7, 9];
        let n: usize = shape.iter().product();
        let x = fill(n, 5);
        let flags: Vec<i32> = (0..n as i32).map(|i| i % 3 % 2).collect();
        let bindings = tdl_ir::Bindings::new();
        let k = ElementwiseKernel {
            inputs: vec![Access::whole(BufId(0)), Access::whole(BufId(1))],
            masks: vec![MaskUse { expr: MaskExpr::Causal, operands: vec![] }],
            body: vec![
                inst(EwOp::Load(0), DType::F32),
                inst(EwOp::Mask(0), DType::Bool),
                inst(EwOp::Const(f64::NEG_INFINITY), DType::F32),
                inst(EwOp::Select(1, 0, 2), DType::F32),
                inst(EwOp::Load(1), DType::Bool),
                inst(EwOp::Const(2.5), DType::F32),
                inst(EwOp::Select(4, 3, 5), DType::F32),
            ],
            out: BufId(2),
        };
        let args = ElementwiseArgs {
            shape: &shape,
            inputs: vec![
                StridedView { data: Elems::F32(&x), offset: 0, shape: shape.to_vec(), strides: vec![63, 9, 1] },
                StridedView { data: Elems::I32(&flags), offset: 0, shape: shape.to_vec(), strides: vec![63, 9, 1] },
            ],
            masks: vec![],
            bindings: &bindings,
            dtypes: vec![],
            out_dtype: tdl_ir::DType::F32,
        };
        let plan = tdl_mlir::elementwise::plan_elementwise(&k, &args).unwrap().expect("supported");
        let want: Vec<f32> = (0..n)
            .map(|i| {
                let (q, kk) = ((i / 9) % 7, i % 9);
                let v = if kk <= q + 2 { x[i] } else { f32::NEG_INFINITY };
                if flags[i] != 0 {
                    v
                } else {
                    2.5
                }
            })
            .collect();
        close(&run(&plan), &want, "masked");
        ptx(&plan.code, &["tdl_ew"]);
    }

    /// Reductions over a middle axis and over rows longer than a workgroup.
    #[test]
    fn reductions_odd_sizes() {
        for (shape, axis) in [(vec![3usize, 37, 5], 1usize), (vec![2, 300], 1), (vec![7, 3], 0)] {
            let n: usize = shape.iter().product();
            let x = fill(n, 6);
            let (outer, len): (usize, usize) = (shape[..axis].iter().product(), shape[axis]);
            let inner: usize = shape[axis + 1..].iter().product();
            for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max] {
                let k = ReduceKernel { op, axis, keepdims: false, x: Access::whole(BufId(0)), out: BufId(1) };
                let args = RowArgs { x: &x, shape: &shape, params: vec![], dtypes: [tdl_ir::DType::F32; 2] };
                let plan = tdl_mlir::rows::plan_reduce(&k, &args).unwrap().expect("supported");
                let mut want = Vec::new();
                for o in 0..outer {
                    for j in 0..inner {
                        let at = |i: usize| x[(o * len + i) * inner + j];
                        want.push(match op {
                            ReduceOp::Sum => (0..len).map(at).sum::<f32>(),
                            ReduceOp::Mean => (0..len).map(at).sum::<f32>() / len as f32,
                            ReduceOp::Max => (0..len).map(at).fold(f32::NEG_INFINITY, f32::max),
                        });
                    }
                }
                close(&run(&plan), &want, &format!("{op:?} of {shape:?} over {axis}"));
            }
        }
    }

    /// Softmax over a middle axis with one all -inf row (zeros), layernorm
    /// and rmsnorm over rows of 37 and 300, rope over [2, 7, 6].
    #[test]
    fn row_kernels_odd_sizes() {
        let shape = [3usize, 37, 5];
        let mut x = fill(555, 7);
        for i in 0..37 {
            x[i * 5] = f32::NEG_INFINITY; // row (o=0, j=0)
        }
        let k = RowKernel { op: RowOp::Softmax { axis: 1 }, x: Access::whole(BufId(0)), params: vec![], out: BufId(1) };
        let plan = tdl_mlir::rows::plan_row(
            &k,
            &RowArgs { x: &x, shape: &shape, params: vec![], dtypes: [tdl_ir::DType::F32; 2] },
        )
        .unwrap()
        .unwrap();
        let mut want = x.clone();
        for o in 0..3 {
            for j in 0..5 {
                let idx: Vec<usize> = (0..37).map(|i| (o * 37 + i) * 5 + j).collect();
                let m = idx.iter().map(|&i| x[i]).fold(f32::NEG_INFINITY, f32::max);
                let s: f32 = idx.iter().map(|&i| (x[i] - m).exp()).sum();
                for &i in &idx {
                    want[i] = if m == f32::NEG_INFINITY { 0.0 } else { (x[i] - m).exp() / s };
                }
            }
        }
        close(&run(&plan), &want, "softmax");
        ptx(&plan.code, &["tdl_row"]);
        for d in [37usize, 300] {
            let x = fill(5 * d, 8);
            let (g, b) = (fill(d, 9), fill(d, 10));
            for ln in [true, false] {
                let (op, params) = if ln {
                    (RowOp::LayerNorm { eps: 1e-5 }, vec![g.as_slice(), b.as_slice()])
                } else {
                    (RowOp::RmsNorm { eps: 1e-6 }, vec![g.as_slice()])
                };
                let k = RowKernel { op, x: Access::whole(BufId(0)), params: vec![], out: BufId(1) };
                let shape = [5, d];
                let plan = tdl_mlir::rows::plan_row(
                    &k,
                    &RowArgs { x: &x, shape: &shape, params, dtypes: [tdl_ir::DType::F32; 2] },
                )
                .unwrap()
                .unwrap();
                let mut want = x.clone();
                for row in want.chunks_exact_mut(d) {
                    if ln {
                        let mean = row.iter().sum::<f32>() / d as f32;
                        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
                        let inv = 1.0 / (var + 1e-5f32).sqrt();
                        row.iter_mut().enumerate().for_each(|(i, v)| *v = (*v - mean) * inv * g[i] + b[i]);
                    } else {
                        let ms = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
                        let inv = 1.0 / (ms + 1e-6f32).sqrt();
                        row.iter_mut().enumerate().for_each(|(i, v)| *v = *v * inv * g[i]);
                    }
                }
                close(&run(&plan), &want, &format!("norm d={d} layernorm={ln}"));
            }
        }
        let shape = [2usize, 7, 6];
        let x = fill(84, 11);
        let k =
            RowKernel { op: RowOp::Rope { base: 10000.0 }, x: Access::whole(BufId(0)), params: vec![], out: BufId(1) };
        let plan = tdl_mlir::rows::plan_row(
            &k,
            &RowArgs { x: &x, shape: &shape, params: vec![], dtypes: [tdl_ir::DType::F32; 2] },
        )
        .unwrap()
        .unwrap();
        let mut want = x.clone();
        for (ri, row) in want.chunks_exact_mut(6).enumerate() {
            let pos = ri % 7;
            for i in 0..3 {
                let th = pos as f64 * 10000f64.powf(-((2 * i) as f64) / 6.0);
                let (sn, cs) = (th.sin() as f32, th.cos() as f32);
                let (x1, x2) = (row[i], row[i + 3]);
                row[i] = x1 * cs - x2 * sn;
                row[i + 3] = x2 * cs + x1 * sn;
            }
        }
        close(&run(&plan), &want, "rope");
        ptx(&plan.code, &["tdl_rope"]);
    }

    /// Concat of three sources along a middle axis (one a transposed view),
    /// repeat along axis 0, a strided copy.
    #[test]
    fn data_movement_odd_sizes() {
        let (a, b, c) = (fill(2 * 3 * 4, 12), fill(2 * 5 * 4, 13), fill(2 * 4 + 1, 14));
        let view = |d: &'static [f32], offset, shape: Vec<usize>, strides| StridedView {
            data: Elems::F32(d),
            offset,
            shape,
            strides,
        };
        let (a, b, c): (&'static [f32], &'static [f32], &'static [f32]) =
            (Box::leak(a.into_boxed_slice()), Box::leak(b.into_boxed_slice()), Box::leak(c.into_boxed_slice()));
        // c viewed as [2, 1, 4] from offset 1.
        let srcs = vec![
            view(a, 0, vec![2, 3, 4], vec![12, 4, 1]),
            view(b, 0, vec![2, 5, 4], vec![20, 4, 1]),
            view(c, 1, vec![2, 1, 4], vec![4, 4, 1]),
        ];
        let k = MoveKernel { op: MoveOp::Concat { axis: 1 }, srcs: vec![], out: BufId(3) };
        let shape = [2usize, 9, 4];
        let plan = tdl_mlir::movement::plan_move(
            &k,
            &MoveArgs { shape: &shape, srcs, dtypes: vec![], out_dtype: tdl_ir::DType::F32 },
        )
        .unwrap()
        .unwrap();
        let mut want = Vec::new();
        for o in 0..2 {
            for i in 0..9 {
                for j in 0..4 {
                    want.push(if i < 3 {
                        a[o * 12 + i * 4 + j]
                    } else if i < 8 {
                        b[o * 20 + (i - 3) * 4 + j]
                    } else {
                        c[1 + o * 4 + j]
                    });
                }
            }
        }
        close(&run(&plan), &want, "concat");
        ptx(&plan.code, &["tdl_move"]);
        // repeat 3× along axis 0 of a read transposed ([2, 4, 3]).
        let k = MoveKernel { op: MoveOp::Repeat { times: 3, axis: 0 }, srcs: vec![], out: BufId(1) };
        let shape = [6usize, 4, 3];
        let srcs = vec![view(a, 0, vec![2, 4, 3], vec![12, 1, 4])];
        let plan = tdl_mlir::movement::plan_move(
            &k,
            &MoveArgs { shape: &shape, srcs, dtypes: vec![], out_dtype: tdl_ir::DType::F32 },
        )
        .unwrap()
        .unwrap();
        let want: Vec<f32> = (0..72)
            .map(|i| {
                let (r, p, q) = (i / 12, (i / 3) % 4, i % 3);
                a[(r / 3) * 12 + q * 4 + p]
            })
            .collect();
        close(&run(&plan), &want, "repeat");
        let k = MoveKernel { op: MoveOp::Copy, srcs: vec![], out: BufId(1) };
        let srcs = vec![view(a, 0, vec![2, 4, 3], vec![12, 1, 4])];
        let plan = tdl_mlir::movement::plan_move(
            &k,
            &MoveArgs { shape: &[2, 4, 3], srcs, dtypes: vec![], out_dtype: tdl_ir::DType::F32 },
        )
        .unwrap()
        .unwrap();
        let want: Vec<f32> = (0..24)
            .map(|i| {
                let (r, p, q) = (i / 12, (i / 3) % 4, i % 3);
                a[r * 12 + q * 4 + p]
            })
            .collect();
        close(&run(&plan), &want, "copy");
    }

    /// Every simple kernel kind with `f16`/`bf16` storage (input and output
    /// of the type, and mixed with `f32`): the same kernel stored as `f32`
    /// over the same (rounded) inputs gives the 16-bit result once rounded,
    /// bit for bit; the 16-bit code lowers to PTX.
    #[test]
    fn half_storage_in_every_simple_kernel() {
        use tdl_mlir::launch::{LaunchPlan, PlanBuf, Store};
        fn round(st: DType, x: f32) -> f32 {
            super::round_to(Store::of(st), x)
        }
        /// Runs `plan_of(input type, output type)` with 16-bit and with
        /// `f32` storage and compares.
        fn check<'a>(kind: &str, (ti, to): (DType, DType), plan_of: &dyn Fn(DType, DType) -> LaunchPlan<'a>) {
            let what = format!("{kind} {} -> {}", ti.name(), to.name());
            let narrow = plan_of(ti, to);
            assert_eq!(narrow.output_store(), Store::of(to), "{what}");
            let half_in = narrow.buffers.iter().filter(|b| matches!(b, PlanBuf::Half(..))).count();
            assert_eq!(half_in > 0, ti != DType::F32, "{what}: 16-bit inputs");
            let got = run(&narrow);
            let want: Vec<f32> = run(&plan_of(DType::F32, DType::F32)).into_iter().map(|v| round(to, v)).collect();
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(a == b || (a.is_nan() && b.is_nan()), "{what}: element {i}: {a} vs {b}");
            }
            ptx(&narrow.code, &[]);
        }
        let bindings = tdl_ir::Bindings::new();
        let shape = [3usize, 37, 5];
        let n: usize = shape.iter().product();
        for (ti, to) in
            [(DType::F16, DType::F16), (DType::BF16, DType::BF16), (DType::F16, DType::F32), (DType::F32, DType::BF16)]
        {
            let tt = (ti, to);
            let x: Vec<f32> = fill(n, 21).into_iter().map(|v| round(ti, 3.0 * v)).collect();
            let g: Vec<f32> = fill(5, 22);
            let g = g.as_slice();
            let view = StridedView { data: Elems::F32(&x), offset: 0, shape: shape.to_vec(), strides: vec![185, 5, 1] };
            let silu = ElementwiseKernel {
                inputs: vec![Access::whole(BufId(0))],
                masks: vec![],
                body: vec![inst(EwOp::Load(0), to), inst(EwOp::Unary(UnaryOp::Silu, 0), to)],
                out: BufId(1),
            };
            check("silu", tt, &|i, o| {
                let args = ElementwiseArgs {
                    shape: &shape,
                    inputs: vec![view.clone()],
                    masks: vec![],
                    bindings: &bindings,
                    dtypes: vec![i],
                    out_dtype: o,
                };
                tdl_mlir::elementwise::plan_elementwise(&silu, &args).unwrap().unwrap()
            });
            let softmax =
                RowKernel { op: RowOp::Softmax { axis: 1 }, x: Access::whole(BufId(0)), params: vec![], out: BufId(1) };
            check("softmax", tt, &|i, o| {
                let args = RowArgs { x: &x, shape: &shape, params: vec![], dtypes: [i, o] };
                tdl_mlir::rows::plan_row(&softmax, &args).unwrap().unwrap()
            });
            let rms = RowKernel {
                op: RowOp::RmsNorm { eps: 1e-5 },
                x: Access::whole(BufId(0)),
                params: vec![],
                out: BufId(1),
            };
            check("rmsnorm", tt, &|i, o| {
                let args = RowArgs { x: &x, shape: &shape, params: vec![g], dtypes: [i, o] };
                tdl_mlir::rows::plan_row(&rms, &args).unwrap().unwrap()
            });
            let rope = RowKernel {
                op: RowOp::Rope { base: 10000.0 },
                x: Access::whole(BufId(0)),
                params: vec![],
                out: BufId(1),
            };
            let (rx, rshape) = (&x[..3 * 37 * 4], [3usize, 37, 4]);
            check("rope", tt, &|i, o| {
                let args = RowArgs { x: rx, shape: &rshape, params: vec![], dtypes: [i, o] };
                tdl_mlir::rows::plan_row(&rope, &args).unwrap().unwrap()
            });
            let sum =
                ReduceKernel { op: ReduceOp::Sum, axis: 1, keepdims: false, x: Access::whole(BufId(0)), out: BufId(1) };
            check("sum", tt, &|i, o| {
                let args = RowArgs { x: &x, shape: &shape, params: vec![], dtypes: [i, o] };
                tdl_mlir::rows::plan_reduce(&sum, &args).unwrap().unwrap()
            });
            let concat = MoveKernel { op: MoveOp::Concat { axis: 1 }, srcs: vec![], out: BufId(2) };
            check("concat", tt, &|i, o| {
                let srcs = vec![view.clone(), view.clone()];
                let args = MoveArgs { shape: &[3, 74, 5], srcs, dtypes: vec![i, i], out_dtype: o };
                tdl_mlir::movement::plan_move(&concat, &args).unwrap().unwrap()
            });
        }
    }
}

// ---- Masks, lambdas, score modifiers, attention ranks, integer outputs:
// ---- plans run on the host against independent implementations here.

mod masks_and_lambdas {
    use super::kernels::{fill, ptx, run};
    use tdl_ir::eval::{eval, ArrayView, Env, Val};
    use tdl_ir::{
        ArrayRef, BinaryOp, Bindings, ConstValue, DType, LambdaVar, MaskExpr, ReduceOp, ScalarBinary, ScalarExpr,
        ScalarUnary, UnaryOp,
    };
    use tdl_kernel::attention::{attention_tiled_stats, AttentionSchedule, ScoreMod};
    use tdl_kernel::interp::{Elems, StridedView};
    use tdl_kernel::ir::{
        Access, AttentionKernel, BufId, ElementwiseKernel, EwInst, EwOp, KvSplit, MaskUse, ReduceKernel,
    };
    use tdl_kernel::{F32Tensor, KernelStats};
    use tdl_mlir::host::{compile_host, run_plan, run_plan_i32};
    use tdl_mlir::launch::LaunchPlan;
    use tdl_mlir::mask::ArrayData;
    use tdl_passes::tiles::{MaskData, OperandData};

    /// An operand: element type, shape, values.
    type Op = (DType, Vec<usize>, Vec<f64>);

    fn view(o: &Op) -> ArrayData<'_> {
        ArrayData { dtype: o.0, shape: &o.1, data: &o.2 }
    }

    fn na_visible(len: i64, kk: i64, d: i64, causal: bool, a: i64, b: i64) -> bool {
        let g = a % d;
        if b % d != g {
            return false;
        }
        let (i, j) = (a / d, b / d);
        if causal {
            (i - kk + 1).max(0) <= j && j <= i
        } else {
            let lg = (len - g + d - 1) / d;
            let start = (i - kk / 2).clamp(0, lg - kk);
            start <= j && j < start + kk
        }
    }

    /// The mask as the language contract writes it (an oracle independent
    /// of the code generator).
    fn holds(m: &MaskExpr, (q, k, h, t, s): (i64, i64, i64, i64, i64), ops: &[Op], b: &Bindings) -> bool {
        let rec = |x: &MaskExpr| holds(x, (q, k, h, t, s), ops, b);
        let causal = k <= q + s - t;
        match m {
            MaskExpr::Causal => causal,
            MaskExpr::Local { left, right } => q - left <= k && k <= q + right,
            MaskExpr::Window { w } => causal && q - (w - 1) <= k && k <= q,
            MaskExpr::Dilated { w, d } => causal && q - k < w * d && (q - k).rem_euclid(*d) == 0,
            MaskExpr::Sink { n } => k < *n,
            MaskExpr::Strided { stride, offset } => (k + offset).rem_euclid(*stride) == 0,
            MaskExpr::Neighborhood { kernel, grid, dilation, causal: cz } => {
                let (mut qr, mut kr, mut ok) = (q, k, true);
                for ax in (0..grid.len()).rev() {
                    let (a, bb) = (qr % grid[ax], kr % grid[ax]);
                    qr /= grid[ax];
                    kr /= grid[ax];
                    ok &= na_visible(grid[ax], kernel[ax], dilation[ax], cz[ax], a, bb);
                }
                ok
            }
            MaskExpr::Blocks { layout, block } => {
                let (shape, data): (&[usize], &[f64]) = match layout {
                    ArrayRef::Const(c) => (&c.shape, &c.data),
                    ArrayRef::Operand(i) => (&ops[*i].1, &ops[*i].2),
                };
                data[(q / block[0]) as usize * shape[1] + (k / block[1]) as usize] != 0.0
            }
            MaskExpr::Document { ids } => ops[*ids].2[q as usize] == ops[*ids].2[k as usize],
            MaskExpr::Lambda(e) => lambda_val(e, (q, k, h), None, ops, b).unwrap() == Val::Bool(true),
            MaskExpr::And(x, y) => rec(x) && rec(y),
            MaskExpr::Or(x, y) => rec(x) || rec(y),
            MaskExpr::Not(x) => !rec(x),
        }
    }

    fn lambda_val(
        e: &ScalarExpr,
        (q, k, h): (i64, i64, i64),
        s: Option<f32>,
        ops: &[Op],
        b: &Bindings,
    ) -> Result<Val<f32>, String> {
        let views: Vec<Option<ArrayView<'_>>> =
            ops.iter().map(|o| Some(ArrayView { dtype: o.0, shape: &o.1, data: &o.2 })).collect();
        eval(e, &Env { q, k, h, s, bindings: b, operands: &views })
    }

    fn var(v: LambdaVar) -> ScalarExpr {
        ScalarExpr::Var(v)
    }

    fn bin(op: ScalarBinary, a: ScalarExpr, b: ScalarExpr) -> ScalarExpr {
        ScalarExpr::binary(op, a, b)
    }

    fn idx(array: ArrayRef, i: ScalarExpr) -> ScalarExpr {
        ScalarExpr::Index { array, indices: vec![i] }
    }

    fn ints(v: &[i64]) -> ConstValue {
        ConstValue { dtype: DType::I32, shape: vec![v.len()], data: v.iter().map(|&x| x as f64).collect() }
    }

    fn and(a: MaskExpr, b: MaskExpr) -> MaskExpr {
        MaskExpr::And(Box::new(a), Box::new(b))
    }

    fn mask_kernel(m: &MaskExpr, ops: usize) -> ElementwiseKernel {
        ElementwiseKernel {
            inputs: vec![],
            masks: vec![MaskUse { expr: m.clone(), operands: (0..ops as u32).map(BufId).collect() }],
            body: vec![EwInst { op: EwOp::Mask(0), dtype: DType::Bool }],
            out: BufId(9),
        }
    }

    /// Runs mask `m` as an elementwise chain writing `bool` over `[heads,
    /// t, s]` (the plan's i32 output) and compares it with [`holds`].
    fn check_mask(what: &str, m: &MaskExpr, (heads, t, s): (usize, usize, usize), ops: &[Op], b: &Bindings) {
        let k = mask_kernel(m, ops.len());
        let shape = [heads, t, s];
        let masks = vec![ops.iter().map(view).collect::<Vec<_>>()];
        let plan = tdl_mlir::elementwise::plan_elementwise_arrays(&k, &shape, &[], &masks, b)
            .unwrap_or_else(|e| panic!("{what}: {e}"))
            .unwrap_or_else(|| panic!("{what}: declined"));
        assert!(plan.output_is_i32(), "{what}: not an i32 output");
        let engine = compile_host(&plan.code).unwrap_or_else(|e| panic!("{what}: {e}\n{}", plan.code.host_module));
        let got = run_plan_i32(&engine, &plan).unwrap_or_else(|e| panic!("{what}: {e}"));
        let mut n = 0;
        for h in 0..heads {
            for q in 0..t {
                for kk in 0..s {
                    let want = holds(m, (q as i64, kk as i64, h as i64, t as i64, s as i64), ops, b);
                    assert_eq!(got[n], i32::from(want), "{what}: h={h} q={q} k={kk}");
                    n += 1;
                }
            }
        }
        ptx(&plan.code, &["tdl_ew"]);
    }

    /// Every mask kind at odd sizes (T ≠ S where the mask allows it),
    /// through an elementwise chain writing the mask as `bool`.
    #[test]
    fn every_mask_kind_matches_its_definition() {
        let b: Bindings = [("T".to_string(), 7), ("S".to_string(), 11)].into_iter().collect();
        let nb = |kernel: Vec<i64>, grid: Vec<i64>, dilation: Vec<i64>, causal: Vec<bool>| MaskExpr::Neighborhood {
            kernel,
            grid,
            dilation,
            causal,
        };
        let layout = ConstValue { dtype: DType::Bool, shape: vec![2, 3], data: vec![1.0, 0.0, 1.0, 0.0, 1.0, 1.0] };
        let ids: Op = (DType::I32, vec![11], vec![0., 0., 1., 1., 1., 2., 2., 2., 2., 3., 3.]);
        let bl: Op = (DType::Bool, vec![3, 4], vec![1., 0., 0., 1., 1., 1., 0., 0., 0., 1., 1., 1.]);
        type Case = (&'static str, MaskExpr, (usize, usize, usize), Vec<Op>);
        let cases: Vec<Case> = vec![
            ("causal", MaskExpr::Causal, (2, 7, 11), vec![]),
            ("local(3, 2)", MaskExpr::Local { left: 3, right: 2 }, (1, 7, 11), vec![]),
            ("window(4)", MaskExpr::Window { w: 4 }, (1, 11, 7), vec![]),
            ("dilated(3, 2)", MaskExpr::Dilated { w: 3, d: 2 }, (1, 13, 13), vec![]),
            (
                "sink(2) | !causal",
                MaskExpr::Or(Box::new(MaskExpr::Sink { n: 2 }), Box::new(MaskExpr::Not(Box::new(MaskExpr::Causal)))),
                (1, 7, 11),
                vec![],
            ),
            ("strided(3, 1)", MaskExpr::Strided { stride: 3, offset: 1 }, (1, 5, 11), vec![]),
            ("strided(4, -7)", MaskExpr::Strided { stride: 4, offset: -7 }, (1, 5, 11), vec![]),
            ("na1d dilated", nb(vec![5], vec![23], vec![2], vec![false]), (1, 23, 23), vec![]),
            ("na1d causal", nb(vec![3], vec![17], vec![1], vec![true]), (1, 17, 17), vec![]),
            ("na2d", nb(vec![3, 5], vec![5, 7], vec![1, 1], vec![true, false]), (1, 35, 35), vec![]),
            ("na3d", nb(vec![3, 3, 3], vec![3, 6, 5], vec![1, 2, 1], vec![false, false, true]), (1, 90, 90), vec![]),
            ("blocks const", MaskExpr::Blocks { layout: ArrayRef::Const(layout), block: [4, 4] }, (1, 7, 11), vec![]),
            ("blocks operand", MaskExpr::Blocks { layout: ArrayRef::Operand(0), block: [3, 3] }, (2, 7, 11), vec![bl]),
            ("document & causal", and(MaskExpr::Document { ids: 0 }, MaskExpr::Causal), (1, 11, 11), vec![ids.clone()]),
            (
                "lambda: abs, min/max, h, where, symbols",
                MaskExpr::Lambda(bin(
                    ScalarBinary::And,
                    bin(
                        ScalarBinary::Le,
                        ScalarExpr::Unary(
                            ScalarUnary::Abs,
                            Box::new(bin(ScalarBinary::Sub, var(LambdaVar::Q), var(LambdaVar::K))),
                        ),
                        bin(
                            ScalarBinary::Max,
                            ScalarExpr::Int(1),
                            bin(
                                ScalarBinary::Min,
                                bin(ScalarBinary::Mul, var(LambdaVar::H), ScalarExpr::Int(3)),
                                ScalarExpr::Sym("T".into()),
                            ),
                        ),
                    ),
                    ScalarExpr::Select(
                        Box::new(bin(ScalarBinary::Eq, var(LambdaVar::H), ScalarExpr::Int(0))),
                        Box::new(bin(ScalarBinary::Le, var(LambdaVar::K), var(LambdaVar::Q))),
                        Box::new(bin(
                            ScalarBinary::Lt,
                            var(LambdaVar::K),
                            bin(ScalarBinary::Sub, ScalarExpr::Sym("S".into()), ScalarExpr::Int(2)),
                        )),
                    ),
                )),
                (3, 7, 11),
                vec![],
            ),
            (
                "lambda: floor / and % of negatives, float compare, ids",
                MaskExpr::Lambda(bin(
                    ScalarBinary::Or,
                    bin(
                        ScalarBinary::Eq,
                        bin(
                            ScalarBinary::Mod,
                            bin(ScalarBinary::Sub, var(LambdaVar::K), var(LambdaVar::Q)),
                            ScalarExpr::Int(-3),
                        ),
                        bin(
                            ScalarBinary::Div,
                            bin(ScalarBinary::Sub, var(LambdaVar::K), var(LambdaVar::Q)),
                            ScalarExpr::Int(4),
                        ),
                    ),
                    bin(
                        ScalarBinary::Gt,
                        bin(
                            ScalarBinary::Div,
                            ScalarExpr::Float(1.5),
                            ScalarExpr::Unary(ScalarUnary::Exp, Box::new(idx(ArrayRef::Operand(0), var(LambdaVar::K)))),
                        ),
                        ScalarExpr::Float(0.3),
                    ),
                )),
                (1, 11, 11),
                vec![ids],
            ),
        ];
        for (what, m, dims, ops) in &cases {
            check_mask(what, m, *dims, ops, &b);
        }
    }

    /// A lambda reading an array out of range sets the error flag and the
    /// run fails (the interpreter's error); a `where` guarding the read, or
    /// a mask conjunction whose left side decides, reads nothing out of range.
    #[test]
    fn lambda_out_of_range_fails_and_guards_avoid_it() {
        let b = Bindings::new();
        let ids: Op = (DType::I32, vec![4], vec![3.0, 1.0, 4.0, 1.0]);
        let read = |i: ScalarExpr| idx(ArrayRef::Operand(0), i);
        let oob = MaskExpr::Lambda(bin(ScalarBinary::Ge, read(var(LambdaVar::Q)), ScalarExpr::Int(0)));
        let k = mask_kernel(&oob, 1);
        let masks = vec![vec![view(&ids)]];
        let plan = tdl_mlir::elementwise::plan_elementwise_arrays(&k, &[9, 5], &[], &masks, &b).unwrap().unwrap();
        assert!(plan.error_flag.is_some());
        let engine = compile_host(&plan.code).unwrap();
        let e = run_plan_i32(&engine, &plan).unwrap_err().to_string();
        assert!(e.contains("out of range") && e.contains("lambda"), "{e}");
        // In range at 4 × 5: no error.
        let plan = tdl_mlir::elementwise::plan_elementwise_arrays(&k, &[4, 5], &[], &masks, &b).unwrap().unwrap();
        assert!(run_plan_i32(&engine, &plan).unwrap().iter().all(|&x| x == 1));
        let guarded_where = MaskExpr::Lambda(ScalarExpr::Select(
            Box::new(bin(ScalarBinary::Lt, var(LambdaVar::Q), ScalarExpr::Int(4))),
            Box::new(bin(ScalarBinary::Ne, read(var(LambdaVar::Q)), ScalarExpr::Int(1))),
            Box::new(bin(ScalarBinary::Le, var(LambdaVar::K), var(LambdaVar::Q))),
        ));
        let guarded_and = and(
            MaskExpr::Lambda(bin(ScalarBinary::Lt, var(LambdaVar::Q), ScalarExpr::Int(4))),
            MaskExpr::Lambda(bin(ScalarBinary::Ne, read(var(LambdaVar::Q)), ScalarExpr::Int(4))),
        );
        for (what, m) in [("where", guarded_where), ("&", guarded_and)] {
            check_mask(what, &m, (1, 9, 5), std::slice::from_ref(&ids), &b);
        }
    }

    pub fn attn_kernel(tile_q: usize, tile_k: usize, scale: Option<f64>) -> AttentionKernel {
        AttentionKernel {
            q: BufId(0),
            k: BufId(1),
            v: BufId(2),
            mask: None,
            scale,
            score: None,
            score_operands: vec![],
            tile_q,
            tile_k,
            kv_split: KvSplit::None,
            out: BufId(3),
        }
    }

    struct AttnCase {
        what: &'static str,
        q: Vec<usize>,
        k: Vec<usize>,
        dv: usize,
        mask: Option<(MaskExpr, Vec<Op>)>,
        score: Option<(ScalarExpr, Vec<Op>)>,
    }

    /// The case's q, k and v (v's last axis `dv`), filled deterministically.
    fn operands(c: &AttnCase) -> (F32Tensor, F32Tensor, F32Tensor) {
        let mut vs = c.k.clone();
        vs[c.q.len() - 1] = c.dv;
        let n = |s: &[usize]| s.iter().product::<usize>();
        (
            F32Tensor { shape: c.q.clone(), data: fill(n(&c.q), 1) },
            F32Tensor { shape: c.k.clone(), data: fill(n(&c.k), 2) },
            F32Tensor { shape: vs.clone(), data: fill(n(&vs), 3) },
        )
    }

    /// Naive attention in f64 over the flattened heads, the mask by
    /// [`holds`], the score modifier by the evaluator (in `f32`, as the
    /// interpreter).
    fn naive(c: &AttnCase, q: &[f32], k: &[f32], v: &[f32], b: &Bindings) -> Vec<f64> {
        let r = c.q.len();
        let (t, d, s, dv) = (c.q[r - 2], c.q[r - 1], c.k[r - 2], c.dv);
        let (hq, hk) = if r >= 3 { (c.q[r - 3], c.k[r - 3]) } else { (1, 1) };
        let lead: usize = c.q[..r - 2].iter().product();
        let scale = 1.0 / (d as f64).sqrt();
        let mut out = vec![0f64; lead * t * dv];
        for li in 0..lead {
            let h = li % hq;
            let kh = (li / hq) * hk + h / (hq / hk);
            for qi in 0..t {
                let mut sc = Vec::new();
                for kj in 0..s {
                    let at = (qi as i64, kj as i64, h as i64, t as i64, s as i64);
                    if let Some((m, ops)) = &c.mask {
                        if !holds(m, at, ops, b) {
                            continue;
                        }
                    }
                    let dot: f64 =
                        (0..d).map(|x| f64::from(q[(li * t + qi) * d + x]) * f64::from(k[(kh * s + kj) * d + x])).sum();
                    let mut val = dot * scale;
                    if let Some((e, ops)) = &c.score {
                        val = match lambda_val(e, (at.0, at.1, at.2), Some(val as f32), ops, b).unwrap() {
                            Val::Float(f) => f64::from(f),
                            Val::Int(i) => i as f64,
                            Val::Bool(_) => unreachable!(),
                        };
                    }
                    sc.push((kj, val));
                }
                if sc.is_empty() {
                    continue;
                }
                let mx = sc.iter().map(|x| x.1).fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = sc.iter().map(|x| (x.1 - mx).exp()).sum();
                for (kj, x) in &sc {
                    let w = (x - mx).exp() / z;
                    for y in 0..dv {
                        out[(li * t + qi) * dv + y] += w * f64::from(v[(kh * s + kj) * dv + y]);
                    }
                }
            }
        }
        out
    }

    /// Attention through `plan_attention_arrays`: document, blocks (an
    /// operand), neighborhood and lambda masks, score modifiers reading
    /// constants, operands and symbols, GQA, and operands of rank 2, 3 and
    /// 4, at sizes that are not multiples of the tiles; the PTX of each.
    #[test]
    fn attention_masks_scores_and_ranks() {
        let b: Bindings = [("S".to_string(), 23)].into_iter().collect();
        let slopes: Op = (DType::F32, vec![3], vec![0.5, 0.25, 0.125]);
        let spans = ArrayRef::Const(ints(&[2, 5, 9]));
        let (q_, k_, h_, s_) = (var(LambdaVar::Q), var(LambdaVar::K), var(LambdaVar::H), var(LambdaVar::S));
        let dist = ScalarExpr::Unary(ScalarUnary::Abs, Box::new(bin(ScalarBinary::Sub, q_.clone(), k_.clone())));
        let alibi =
            bin(ScalarBinary::Sub, s_.clone(), bin(ScalarBinary::Mul, idx(ArrayRef::Operand(0), h_.clone()), dist));
        let softcap = bin(
            ScalarBinary::Mul,
            ScalarExpr::Float(3.0),
            ScalarExpr::Unary(ScalarUnary::Tanh, Box::new(bin(ScalarBinary::Div, s_.clone(), ScalarExpr::Float(3.0)))),
        );
        let sym_bias = bin(
            ScalarBinary::Add,
            s_,
            bin(
                ScalarBinary::Div,
                bin(ScalarBinary::Sub, ScalarExpr::Sym("S".into()), k_.clone()),
                ScalarExpr::Float(10.0),
            ),
        );
        let ids: Op = (DType::I32, vec![37], (0..37).map(|i| f64::from(i / 7)).collect());
        let layout: Op = (DType::Bool, vec![5, 6], (0..30).map(|i| f64::from(i % 3 != 1)).collect());
        let cases = vec![
            AttnCase {
                what: "rank 3, GQA 4:2, document & causal, T ≠ S",
                q: vec![4, 29, 16],
                k: vec![2, 37, 16],
                dv: 8,
                mask: Some((and(MaskExpr::Document { ids: 0 }, MaskExpr::Causal), vec![ids])),
                score: None,
            },
            AttnCase {
                what: "rank 4, GQA 3:1, causal & lambda spans[h], ALiBi from an operand",
                q: vec![2, 3, 21, 16],
                k: vec![2, 1, 21, 16],
                dv: 16,
                mask: Some((
                    and(
                        MaskExpr::Causal,
                        MaskExpr::Lambda(bin(
                            ScalarBinary::Lt,
                            bin(ScalarBinary::Sub, q_.clone(), k_.clone()),
                            idx(spans, h_),
                        )),
                    ),
                    vec![],
                )),
                score: Some((alibi, vec![slopes])),
            },
            AttnCase {
                what: "rank 2, blocks(operand), soft-capping",
                q: vec![19, 16],
                k: vec![23, 16],
                dv: 8,
                mask: Some((MaskExpr::Blocks { layout: ArrayRef::Operand(0), block: [4, 4] }, vec![layout])),
                score: Some((softcap, vec![])),
            },
            AttnCase {
                what: "rank 3, neighborhood 2-D, a score reading a symbol",
                q: vec![2, 35, 16],
                k: vec![2, 35, 16],
                dv: 16,
                mask: Some((
                    MaskExpr::Neighborhood {
                        kernel: vec![3, 5],
                        grid: vec![5, 7],
                        dilation: vec![1, 1],
                        causal: vec![false, true],
                    },
                    vec![],
                )),
                score: Some((sym_bias, vec![])),
            },
        ];
        let b35: Bindings = [("S".to_string(), 35)].into_iter().collect();
        for c in &cases {
            let bind = if c.k[c.k.len() - 2] == 35 { &b35 } else { &b };
            let r = c.q.len();
            let (q, k, v) = operands(c);
            for (tq, tk) in [(16, 16), (8, 32)] {
                let ak = attn_kernel(tq, tk, None);
                let mops: Vec<ArrayData<'_>> =
                    c.mask.as_ref().map(|(_, o)| o.iter().map(view).collect()).unwrap_or_default();
                let sops: Vec<Option<ArrayData<'_>>> =
                    c.score.as_ref().map(|(_, o)| o.iter().map(|x| Some(view(x))).collect()).unwrap_or_default();
                let plan = tdl_mlir::attention::plan_attention_arrays(
                    &ak,
                    (&q, &k, &v),
                    c.mask.as_ref().map(|(m, _)| (m, mops.as_slice())),
                    c.score.as_ref().map(|(e, _)| (e, sops.as_slice())),
                    bind,
                )
                .unwrap_or_else(|e| panic!("{}: {e}", c.what))
                .unwrap_or_else(|| panic!("{}: declined", c.what));
                let mut want_shape = c.q[..r - 1].to_vec();
                want_shape.push(c.dv);
                assert_eq!(plan.output_shape, want_shape, "{}", c.what);
                let got = run(&plan);
                let want = naive(c, &q.data, &k.data, &v.data, bind);
                let err = got.iter().zip(&want).map(|(a, b)| (f64::from(*a) - b).abs()).fold(0f64, f64::max);
                assert!(err <= 2e-5, "{}, tiles {tq}×{tk}: max error {err:e}", c.what);
                if tq == 16 {
                    let p = ptx(&plan.code, &["tdl_attn"]);
                    assert!(p.matches(".shared .align 16 .b8").count() >= 3, "{}: no shared tiles", c.what);
                }
            }
        }
    }

    /// A score modifier reading an array out of range fails the run.
    #[test]
    fn score_modifier_out_of_range_fails() {
        let b = Bindings::new();
        let q = F32Tensor { shape: vec![1, 9, 8], data: fill(72, 1) };
        let k = F32Tensor { shape: vec![1, 9, 8], data: fill(72, 2) };
        let bias = ArrayRef::Const(ConstValue { dtype: DType::F32, shape: vec![4], data: vec![0.0, 0.1, 0.2, 0.3] });
        let e = bin(
            ScalarBinary::Add,
            var(LambdaVar::S),
            idx(bias, bin(ScalarBinary::Sub, var(LambdaVar::Q), var(LambdaVar::K))),
        );
        let plan = tdl_mlir::attention::plan_attention_arrays(
            &attn_kernel(16, 16, None),
            (&q, &k, &k),
            Some((&MaskExpr::Causal, &[])),
            Some((&e, &[])),
            &b,
        )
        .unwrap()
        .unwrap();
        let engine = compile_host(&plan.code).unwrap();
        let err = run_plan(&engine, &plan).unwrap_err().to_string();
        assert!(err.contains("out of range") && err.contains("lambda"), "{err}");
        // Within a window of 4 every read is in range.
        let plan = tdl_mlir::attention::plan_attention_arrays(
            &attn_kernel(16, 16, None),
            (&q, &k, &k),
            Some((&MaskExpr::Window { w: 4 }, &[])),
            Some((&e, &[])),
            &b,
        )
        .unwrap()
        .unwrap();
        let engine = compile_host(&plan.code).unwrap();
        assert_eq!(run_plan(&engine, &plan).unwrap().len(), 72);
    }

    /// Runs `c` through `plan_attention_arrays` with tiles `tiles` and
    /// `split`, checks it against [`naive`] and its stats against the
    /// Kernel IR interpreter's for the same tiles (all but `score_evals`,
    /// which only a run knows); returns the stats.
    fn sparse_case(c: &AttnCase, tiles: (usize, usize), split: KvSplit, b: &Bindings) -> (Vec<f32>, KernelStats) {
        let (q, k, v) = operands(c);
        let ak = AttentionKernel { kv_split: split, ..attn_kernel(tiles.0, tiles.1, None) };
        let mops: Vec<ArrayData<'_>> = c.mask.as_ref().map(|(_, o)| o.iter().map(view).collect()).unwrap_or_default();
        let plan = tdl_mlir::attention::plan_attention_arrays(
            &ak,
            (&q, &k, &v),
            c.mask.as_ref().map(|(m, _)| (m, mops.as_slice())),
            c.score.as_ref().map(|(e, _)| (e, &[][..])),
            b,
        )
        .unwrap_or_else(|e| panic!("{}: {e}", c.what))
        .unwrap_or_else(|| panic!("{}: declined", c.what));
        let got = run(&plan);
        let want = naive(c, &q.data, &k.data, &v.data, b);
        let err = got.iter().zip(&want).map(|(a, b)| (f64::from(*a) - b).abs()).fold(0f64, f64::max);
        assert!(err <= 2e-5, "{}, tiles {tiles:?}, {split:?}: max error {err:e}", c.what);
        let stats = plan.stats.clone().unwrap_or_else(|| panic!("{}: no stats", c.what));
        let data = MaskData {
            operands: c
                .mask
                .as_ref()
                .map(|(_, o)| o.iter().map(|o| OperandData { dtype: o.0, shape: o.1.clone(), data: &o.2 }).collect())
                .unwrap_or_default(),
        };
        let sm = c.score.as_ref().map(|(e, _)| ScoreMod { expr: e, operands: vec![] });
        let sched = AttentionSchedule { tile_q: tiles.0, tile_k: tiles.1, kv_split: split };
        let (_, theirs) =
            attention_tiled_stats(&q, &k, &v, c.mask.as_ref().map(|(m, _)| (m, &data)), None, sm.as_ref(), b, &sched)
                .unwrap_or_else(|e| panic!("{}: the interpreter: {e}", c.what));
        // The programs launched (fewer than the interpreter's with GQA
        // packing, whose KV split `Auto` then chooses for those).
        let launched = plan.steps.first().map_or(0, |s| u64::from(s.grid[0]) * u64::from(s.grid[1]));
        assert_eq!(stats.programs, launched, "{}: programs", c.what);
        let mut ours = KernelStats { score_evals: theirs.score_evals, programs: theirs.programs, ..stats.clone() };
        if launched < theirs.programs && matches!(split, KvSplit::Auto { .. }) {
            (ours.kv_splits, ours.merged_rows) = (theirs.kv_splits, theirs.merged_rows);
        }
        assert_eq!(ours, theirs, "{}, tiles {tiles:?}, {split:?}: stats", c.what);
        assert_eq!(plan.steps.len(), if stats.kv_splits > 1 { 2 } else { 1 }, "{}: steps", c.what);
        (got, stats)
    }

    fn case(what: &'static str, q: &[usize], k: &[usize], mask: Option<(MaskExpr, Vec<Op>)>) -> AttnCase {
        AttnCase { what, q: q.to_vec(), k: k.to_vec(), dv: 8, mask, score: None }
    }

    /// The block-sparse iteration space at sizes that are not multiples of
    /// the tiles (300 queries, 300 or 333 keys, tiles 16×16, GQA 2:1): every
    /// mask kind, a lambda mask and a score modifier match naive attention,
    /// and the plan's stats — the interpreter's own for these tiles — show
    /// the skipped tiles.
    #[test]
    fn sparse_iteration_skips_tiles() {
        let b = Bindings::new();
        let (q, k, k333) = ([2, 300, 16], [1, 300, 16], [1, 333, 16]);
        let (q_, k_) = (var(LambdaVar::Q), var(LambdaVar::K));
        let near = MaskExpr::Lambda(bin(
            ScalarBinary::Lt,
            ScalarExpr::Unary(ScalarUnary::Abs, Box::new(bin(ScalarBinary::Sub, q_, k_))),
            ScalarExpr::Int(20),
        ));
        let softcap = bin(
            ScalarBinary::Mul,
            ScalarExpr::Float(3.0),
            ScalarExpr::Unary(
                ScalarUnary::Tanh,
                Box::new(bin(ScalarBinary::Div, var(LambdaVar::S), ScalarExpr::Float(3.0))),
            ),
        );
        let sink_window = MaskExpr::Or(Box::new(MaskExpr::Sink { n: 4 }), Box::new(MaskExpr::Window { w: 16 }));
        let layout: Op = (DType::Bool, vec![10, 11], (0..110).map(|i| f64::from(i % 4 == 0 || i % 12 == 0)).collect());
        let ids: Op = (DType::I32, vec![333], (0..333).map(|i| f64::from(i / 50)).collect());
        let hood = MaskExpr::Neighborhood {
            kernel: vec![3, 5],
            grid: vec![15, 20],
            dilation: vec![1, 1],
            causal: vec![false, false],
        };
        let cases = vec![
            case("causal", &q, &k, Some((MaskExpr::Causal, vec![]))),
            case("window(16)", &q, &k, Some((MaskExpr::Window { w: 16 }, vec![]))),
            case("sink(4) | window(16), S = 333", &q, &k333, Some((sink_window, vec![]))),
            case(
                "blocks(operand, 32×32), S = 333",
                &q,
                &k333,
                Some((MaskExpr::Blocks { layout: ArrayRef::Operand(0), block: [32, 32] }, vec![layout])),
            ),
            case(
                "document & causal, S = 333",
                &q,
                &k333,
                Some((and(MaskExpr::Document { ids: 0 }, MaskExpr::Causal), vec![ids])),
            ),
            case("neighborhood 2-D", &q, &k, Some((hood, vec![]))),
            case("lambda |q - k| < 20", &q, &k, Some((near, vec![]))),
            AttnCase {
                score: Some((softcap, vec![])),
                ..case("causal, soft-capping", &q, &k, Some((MaskExpr::Causal, vec![])))
            },
        ];
        let dense = 2 * 19 * 19; // heads × q-tiles × kv-tiles at T = S = 300
        for c in &cases {
            let (_, st) = sparse_case(c, (16, 16), KvSplit::None, &b);
            assert_eq!(st.programs, 2 * 19, "{}", c.what);
            assert!(st.tiles_visited < dense, "{}: nothing skipped: {st:?}", c.what);
            println!("{}: {st:?}", c.what);
            match c.what {
                "causal" | "causal, soft-capping" => {
                    // 19·20/2 of 19² per head, the diagonal Partial.
                    assert_eq!((st.tiles_visited, st.partial_tiles), (2 * 190, 2 * 19), "{}", c.what);
                }
                "window(16)" => assert!(st.tiles_visited <= 2 * 19 * 2, "{}: {st:?}", c.what),
                _ => {}
            }
        }
        // No mask: every tile Full, no mask evaluated.
        let (_, st) = sparse_case(&case("none", &q, &k, None), (16, 16), KvSplit::None, &b);
        assert_eq!((st.tiles_visited, st.full_tiles, st.mask_evals), (dense, dense, 0));
    }

    /// KV splits (flash-decoding): decode at T = 1, S = 1000 with GQA
    /// (Fixed(3), the GPU cost model's Auto, a mask, a score modifier),
    /// rows with no visible key (zeros), more splits than some programs'
    /// tiles; against naive attention and the interpreter's stats; the
    /// merge kernel's PTX.
    #[test]
    fn kv_splits_and_merge() {
        let b = Bindings::new();
        let auto = tdl_kernel::target::Target::gpu("sm_90").unwrap().kv_split();
        let (q, k) = ([4, 1, 16], [2, 1000, 16]);
        // The decode mask of the corpus: sinks and the last 128 keys.
        let recent = MaskExpr::Lambda(bin(ScalarBinary::Gt, var(LambdaVar::K), ScalarExpr::Int(872)));
        let sink_window = MaskExpr::Or(Box::new(MaskExpr::Sink { n: 4 }), Box::new(recent));
        let softcap = bin(
            ScalarBinary::Mul,
            ScalarExpr::Float(3.0),
            ScalarExpr::Unary(
                ScalarUnary::Tanh,
                Box::new(bin(ScalarBinary::Div, var(LambdaVar::S), ScalarExpr::Float(3.0))),
            ),
        );
        let first_row = MaskExpr::Lambda(bin(ScalarBinary::Lt, var(LambdaVar::Q), ScalarExpr::Int(1)));
        for (tiles, split, c, want_splits) in [
            ((16, 16), KvSplit::Fixed(3), case("decode, no mask", &q, &k, None), 3),
            ((16, 16), auto, case("decode, no mask", &q, &k, None), 31),
            ((8, 32), auto, case("decode, causal", &q, &k, Some((MaskExpr::Causal, vec![]))), 16),
            ((16, 16), auto, case("decode, sink(4) | k > 872", &q, &k, Some((sink_window, vec![]))), 5),
            (
                (16, 16),
                auto,
                AttnCase { score: Some((softcap, vec![])), ..case("decode, soft-capping", &q, &k, None) },
                31,
            ),
            ((16, 16), KvSplit::Fixed(3), case("rows 1, 2 see no key", &[2, 3, 16], &k, Some((first_row, vec![]))), 3),
            (
                (16, 16),
                KvSplit::Fixed(6),
                case("causal, 6 splits of 1..7 tiles", &[2, 100, 16], &[2, 100, 16], Some((MaskExpr::Causal, vec![]))),
                6,
            ),
            (
                (16, 16),
                KvSplit::Fixed(50),
                case("50 splits of at most 7 tiles", &[2, 100, 16], &[2, 100, 16], Some((MaskExpr::Causal, vec![]))),
                7,
            ),
        ] {
            let (got, st) = sparse_case(&c, tiles, split, &b);
            println!("{}, {split:?}: {st:?}", c.what);
            assert_eq!(st.kv_splits, want_splits, "{}, {split:?}: {st:?}", c.what);
            assert_eq!(st.merged_rows as usize, c.q[0] * c.q[1], "{}", c.what);
            if c.what.starts_with("rows 1, 2") {
                let dv = c.dv;
                for h in 0..2 {
                    assert!(got[(h * 3 + 1) * dv..(h * 3 + 3) * dv].iter().all(|&x| x == 0.0), "no zeros: {got:?}");
                    assert!(got[h * 3 * dv..(h * 3 + 1) * dv].iter().any(|&x| x != 0.0));
                }
            }
        }
        // The merge kernel lowers with the attention kernel, no local memory.
        let c = case("decode", &q, &k, None);
        let qt = F32Tensor { shape: q.to_vec(), data: fill(64, 1) };
        let kt = F32Tensor { shape: k.to_vec(), data: fill(32000, 2) };
        let vt = F32Tensor { shape: vec![2, 1000, 8], data: fill(16000, 3) };
        let ak = AttentionKernel { kv_split: KvSplit::Fixed(3), ..attn_kernel(16, 16, None) };
        let plan = tdl_mlir::attention::plan_attention_arrays(&ak, (&qt, &kt, &vt), None, None, &b).unwrap().unwrap();
        assert_eq!(plan.steps[1].func, "tdl_attn_merge", "{}", c.what);
        let p = ptx(&plan.code, &["tdl_attn", "tdl_attn_merge"]);
        assert!(!p.contains(".local"), "local memory used");
    }

    /// Elementwise chains of `i32` values writing `i32` and `bool`:
    /// wrapping arithmetic, floor division (x / 0 == 0), abs, relu,
    /// select, constants rounded as the interpreter does.
    #[test]
    fn integer_and_boolean_elementwise_outputs() {
        let shape = [3usize, 7, 5];
        let n: usize = shape.iter().product();
        let x: Vec<i32> = (0..n as i32).map(|i| (i * 7919) % 201 - 100).collect();
        let mut y: Vec<i32> = (0..5).map(|i| i - 2).collect();
        y[0] = i32::MIN;
        let ins = |i: usize, op: EwOp, dt: DType| -> EwInst {
            let _ = i;
            EwInst { op, dtype: dt }
        };
        let body = vec![
            ins(0, EwOp::Load(0), DType::I32),                     // 0: x
            ins(1, EwOp::Load(1), DType::I32),                     // 1: y (broadcast)
            ins(2, EwOp::Binary(BinaryOp::Div, 0, 1), DType::I32), // 2: x / y
            ins(3, EwOp::Unary(UnaryOp::Abs, 1), DType::I32),      // 3: |y|
            ins(4, EwOp::Binary(BinaryOp::Mul, 2, 3), DType::I32), // 4
            ins(5, EwOp::Const(2_147_483_650.7), DType::I32),      // 5: wraps
            ins(6, EwOp::Binary(BinaryOp::Add, 4, 5), DType::I32), // 6
            ins(7, EwOp::Unary(UnaryOp::Relu, 0), DType::I32),     // 7
            ins(8, EwOp::Binary(BinaryOp::Sub, 6, 7), DType::I32), // 8
        ];
        let inputs = vec![Access::whole(BufId(0)), Access::whole(BufId(1))];
        let views = vec![
            StridedView { data: Elems::I32(&x), offset: 0, shape: shape.to_vec(), strides: vec![35, 5, 1] },
            StridedView { data: Elems::I32(&y), offset: 0, shape: shape.to_vec(), strides: vec![0, 0, 1] },
        ];
        let b = Bindings::new();
        let k = ElementwiseKernel { inputs: inputs.clone(), masks: vec![], body: body.clone(), out: BufId(2) };
        let plan = tdl_mlir::elementwise::plan_elementwise_arrays(&k, &shape, &views, &[], &b).unwrap().unwrap();
        let engine = compile_host(&plan.code).unwrap();
        let got = run_plan_i32(&engine, &plan).unwrap();
        let c5 = 2_147_483_650.7f64.trunc().rem_euclid(4_294_967_296.0) as u32 as i32;
        let want: Vec<i32> = (0..n)
            .map(|i| {
                let (a, bb) = (x[i], y[i % 5]);
                let q = tdl_ir::eval::int_div(i64::from(a), i64::from(bb)) as i32;
                q.wrapping_mul(bb.wrapping_abs()).wrapping_add(c5).wrapping_sub(a.max(0))
            })
            .collect();
        assert_eq!(got, want);
        ptx(&plan.code, &["tdl_ew"]);
        // bool: (x > … as a mask) selected with i32 values, stored 0/1.
        let mut body2 = body;
        body2.push(EwInst { op: EwOp::Mask(0), dtype: DType::Bool }); // 9
        body2.push(EwInst { op: EwOp::Load(2), dtype: DType::Bool }); // 10
        body2.push(EwInst { op: EwOp::Select(10, 9, 10), dtype: DType::Bool }); // 11
        let flags: Vec<i32> = (0..n as i32).map(|i| i % 3 % 2).collect();
        let mut views2 = views;
        views2.push(StridedView {
            data: Elems::I32(&flags),
            offset: 0,
            shape: shape.to_vec(),
            strides: vec![35, 5, 1],
        });
        let mut inputs2 = inputs;
        inputs2.push(Access::whole(BufId(3)));
        let k2 = ElementwiseKernel {
            inputs: inputs2,
            masks: vec![MaskUse { expr: MaskExpr::Causal, operands: vec![] }],
            body: body2,
            out: BufId(4),
        };
        let plan = tdl_mlir::elementwise::plan_elementwise_arrays(&k2, &shape, &views2, &[], &b).unwrap().unwrap();
        let engine = compile_host(&plan.code).unwrap();
        let got = run_plan_i32(&engine, &plan).unwrap();
        let want: Vec<i32> = (0..n)
            .map(|i| {
                let (qq, kk) = ((i / 5) % 7, i % 5);
                i32::from(flags[i] != 0 && kk + 2 <= qq)
            })
            .collect();
        assert_eq!(got, want);
    }

    /// `i32` reductions (sum wraps, max, mean truncated) over a middle
    /// and a last axis, against the interpreter's formulas.
    #[test]
    fn integer_reductions() {
        for (shape, axis) in [(vec![3usize, 37, 5], 1usize), (vec![7, 300], 1), (vec![4, 3], 0)] {
            let n: usize = shape.iter().product();
            let mut x: Vec<i32> = (0..n as i32).map(|i| (i * 7919) % 2001 - 1000).collect();
            x[1] = i32::MAX;
            x[2] = i32::MAX;
            let outer: usize = shape[..axis].iter().product();
            let len = shape[axis];
            let inner: usize = shape[axis + 1..].iter().product();
            for op in [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Mean] {
                let k = ReduceKernel { op, axis, keepdims: true, x: Access::whole(BufId(0)), out: BufId(1) };
                let plan: LaunchPlan<'_> = tdl_mlir::rows::plan_reduce_i32(&k, &x, &shape).unwrap().unwrap();
                let engine = compile_host(&plan.code).unwrap();
                let got = run_plan_i32(&engine, &plan).unwrap();
                let mut want = Vec::new();
                for o in 0..outer {
                    for j in 0..inner {
                        let at = |i: usize| x[(o * len + i) * inner + j];
                        want.push(match op {
                            ReduceOp::Sum => (0..len).fold(0i32, |a, i| a.wrapping_add(at(i))),
                            ReduceOp::Max => (0..len).map(at).max().unwrap(),
                            ReduceOp::Mean => {
                                let s: i64 = (0..len).map(|i| i64::from(at(i))).sum();
                                (s as f64 / len as f64).trunc() as i32
                            }
                        });
                    }
                }
                assert_eq!(got, want, "{op:?} over axis {axis} of {shape:?}");
                let mut out_shape = shape.clone();
                out_shape[axis] = 1;
                assert_eq!(plan.output_shape, out_shape);
                if axis == 1 && shape[0] == 3 {
                    ptx(&plan.code, &["tdl_ireduce"]);
                }
            }
        }
    }
}
