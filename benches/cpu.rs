//! The CPU backend's benchmark suite, with the machine's own ceilings
//! measured in the same run: `cargo bench --bench cpu`.
//!
//! Every configuration of issue 5 runs through the JIT-compiled kernels
//! (compiled once, before timing): per configuration a criterion group
//! (`cpu/<name>`) and a median over `TDL_REPS` runs (default 5) that goes
//! into the summary table printed at the end, beside:
//!
//! - **FMA peak**: a JIT-compiled loop of independent vector fused
//!   multiply-adds on every thread (`tdl_llvm::ceiling`), the arithmetic
//!   ceiling;
//! - **sgemm ceiling**: tdlc's own matmul kernel on a 1024³ f32 product, the
//!   best of a few tilings (median of 5 each) — the attention configs are
//!   reported as a fraction of it;
//! - **memory bandwidth**: a parallel read (sum) of 256 MiB — the decode
//!   configs, which must read K and V once, are reported as a fraction of it.
//!
//! Useful GFLOP/s count only the score entries the mask keeps: 4·visible·D
//! per head (QKᵀ and PV), `visible` counted exactly from the iteration space
//! (full tiles by area, partial tiles element by element). Environment:
//! `TDL_BENCH=substring` runs only the configurations whose name contains
//! it (`a|b`: either; the ceilings are named `peak`, `sgemm`, `bandwidth`); `TDL_QUICK=1` skips criterion's sampling (medians only);
//! `TDL_THREADS=N` (default: every core); `TDL_TILE=q,k` forces the
//! attention tiles (default: the Kernel IR cost model's for this machine);
//! `TDL_MM_TILES=m,n,k;m,n,k` adds matmul tilings to the sgemm sweep.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use tdl::ir::{ArrayRef, Bindings, DType, MaskExpr};
use tdl::kernel::interp::MatMulArgs;
use tdl::kernel::ir::KvSplit;
use tdl::kernel::target::Target;
use tdl::kernel::F32Tensor;
use tdl::llvm::attention::{AttentionSpec, CompiledAttention, RunOptions};
use tdl::llvm::matmul::CompiledMatMul;
use tdl::passes::tiles::{self, MaskData, OperandData};
use tdl::reference::Tensor;

fn random(shape: &[usize], seed: u64, scale: f32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let n: usize = shape.iter().product();
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * scale
        })
        .collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time_median(reps: usize, mut f: impl FnMut()) -> Duration {
    f(); // warm-up
    median(
        (0..reps)
            .map(|_| {
                let s = Instant::now();
                f();
                s.elapsed()
            })
            .collect(),
    )
}

/// Visible score entries of one head, exactly: full tiles of the iteration
/// space by area, partial tiles element by element (no T×S pass).
fn visible(mask: Option<&MaskExpr>, ops: &[Tensor], t: usize, s: usize, tiles_qk: (usize, usize)) -> f64 {
    let Some(m) = mask else { return (t * s) as f64 };
    let data = mask_data(ops);
    let b = Bindings::new();
    let ctx = tiles::Ctx { t: t as i64, s: s as i64, heads: 1, bindings: &b, data: &data };
    let space = tiles::iteration_space(m, &ctx, tiles_qk.0, tiles_qk.1).expect("iteration space");
    let refs: Vec<&Tensor> = ops.iter().collect();
    let ev = tdl::reference::mask::MaskEval::new(m, &refs, t, s, &b).expect("mask");
    let mut budget = u64::MAX;
    let n = tdl::tiling::visible_in_head(&space, &ev, 0, &mut budget).expect("counts").expect("in budget");
    n as f64
}

fn mask_data(ops: &[Tensor]) -> MaskData<'_> {
    MaskData {
        operands: ops.iter().map(|x| OperandData { dtype: x.dtype, shape: x.shape.clone(), data: &x.data }).collect(),
    }
}

/// One row of the summary table.
struct Row {
    name: String,
    detail: String,
    ms: f64,
    gflops: f64,
    /// Bytes of K and V (decode) the kernel must read.
    kv_bytes: Option<f64>,
}

struct AttnConfig {
    name: &'static str,
    hq: usize,
    hk: usize,
    t: usize,
    s: usize,
    d: usize,
    mask: Option<MaskExpr>,
    ops: Vec<Tensor>,
    decode: bool,
}

fn configs() -> Vec<AttnConfig> {
    let na2d = |d: i64| MaskExpr::Neighborhood {
        kernel: vec![7, 7],
        grid: vec![64, 64],
        dilation: vec![d, d],
        causal: vec![false, false],
    };
    // 4 documents of uneven lengths in 4096 tokens.
    let ids: Vec<f64> =
        (0..4096).map(|i| f64::from(u8::from(i >= 700) + u8::from(i >= 1900) + u8::from(i >= 3100))).collect();
    // 10% of the 64×64 blocks of a 4096² score matrix (the diagonal always set).
    let lay: Vec<f64> =
        (0..64 * 64).map(|i| f64::from(u8::from(i / 64 == i % 64 || (i * 2_654_435_761usize) % 100 < 9))).collect();
    let doc = Tensor { dtype: DType::I32, shape: vec![4096], data: ids };
    let blocks = Tensor { dtype: DType::Bool, shape: vec![64, 64], data: lay };
    let sink_window = MaskExpr::Or(Box::new(MaskExpr::Sink { n: 4 }), Box::new(MaskExpr::Window { w: 512 }));
    let c = |name, h, t, d, mask, ops| AttnConfig { name, hq: h, hk: h, t, s: t, d, mask, ops, decode: false };
    let decode = |name, s| AttnConfig { name, hq: 32, hk: 8, t: 1, s, d: 128, mask: None, ops: vec![], decode: true };
    vec![
        c("dense causal H=8 D=64 T=1024", 8, 1024, 64, Some(MaskExpr::Causal), vec![]),
        c("dense causal H=8 D=64 T=4096", 8, 4096, 64, Some(MaskExpr::Causal), vec![]),
        c("window 256 H=8 D=64 T=4096", 8, 4096, 64, Some(MaskExpr::Window { w: 256 }), vec![]),
        c("window 256 H=8 D=64 T=16384", 8, 16384, 64, Some(MaskExpr::Window { w: 256 }), vec![]),
        c("sink 4 + window 512 H=8 D=64 T=8192", 8, 8192, 64, Some(sink_window), vec![]),
        c("2-D neighborhood 64x64 7x7 H=4 D=32", 4, 4096, 32, Some(na2d(1)), vec![]),
        c("2-D neighborhood 64x64 7x7 dilation 2 H=4 D=32", 4, 4096, 32, Some(na2d(2)), vec![]),
        c(
            "10% block-sparse (64-blocks) H=8 D=64 T=4096",
            8,
            4096,
            64,
            Some(MaskExpr::Blocks { layout: ArrayRef::Operand(0), block: [64, 64] }),
            vec![blocks],
        ),
        c("4 documents H=8 D=64 T=4096", 8, 4096, 64, Some(MaskExpr::Document { ids: 0 }), vec![doc]),
        decode("GQA decode 32q/8kv D=128 S=8192", 8192),
        decode("GQA decode 32q/8kv D=128 S=32768", 32768),
    ]
}

fn selected(name: &str) -> bool {
    std::env::var("TDL_BENCH").map_or(true, |f| f.split('|').any(|alt| name.contains(alt)))
}

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).filter(|&n| n > 0).unwrap_or(default)
}

fn bench(c: &mut Criterion) {
    let threads = env_usize("TDL_THREADS", std::thread::available_parallelism().map_or(1, |n| n.get()));
    let reps = env_usize("TDL_REPS", 5);
    let quick = std::env::var("TDL_QUICK").is_ok_and(|v| v == "1");
    let host = Target::host();
    let mut rows: Vec<Row> = Vec::new();
    let mut g = c.benchmark_group("cpu");
    g.sample_size(10).measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));

    // The machine's ceilings, measured here.
    let peak = selected("peak").then(|| {
        let gf = tdl::llvm::ceiling::fma_peak_gflops(threads, 100_000_000, 3).expect("the FMA loop runs");
        println!("FMA peak: {gf:.1} GFLOP/s ({threads} threads)");
        gf
    });
    let sgemm = selected("sgemm").then(|| sgemm_ceiling(threads, reps));
    let bandwidth = selected("bandwidth").then(|| read_bandwidth(threads, reps));

    for cfg in configs().into_iter().filter(|c| selected(c.name)) {
        let AttnConfig { name, hq, hk, t, s, d, mask, ops, decode } = cfg;
        // The tiles the Kernel IR's cost model gives this machine (TDL_TILE=q,k overrides).
        let (tq, tk) = std::env::var("TDL_TILE")
            .ok()
            .and_then(|v| v.split_once(',').and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?))))
            .unwrap_or_else(|| tdl::kernel::lower::attention_tiles(&host, Some(d), Some(d), 4, mask.as_ref()));
        let spec = AttentionSpec::new(d, d, tq, tk, None, mask.clone());
        let kern = CompiledAttention::new(&spec).expect("compiles");
        let q = F32Tensor { shape: vec![hq, t, d], data: random(&[hq, t, d], 1, 1.0) };
        let k = F32Tensor { shape: vec![hk, s, d], data: random(&[hk, s, d], 2, 1.0) };
        let v = F32Tensor { shape: vec![hk, s, d], data: random(&[hk, s, d], 3, 1.0) };
        let data = mask_data(&ops);
        let bindings = Bindings::new();
        let opts = RunOptions { threads, kv_split: if decode { host.kv_split() } else { KvSplit::None } };
        let mut out = Vec::new();
        let mut stats = None;
        let mut run = || {
            stats = Some(
                kern.run_with(
                    (&q.shape, &q.data),
                    (&k.shape, &k.data),
                    (&v.shape, &v.data),
                    &data,
                    &bindings,
                    &mut out,
                    &opts,
                )
                .expect("runs"),
            );
        };
        if !quick {
            g.bench_function(name, |b| b.iter(&mut run));
        }
        let time = time_median(reps, &mut run);
        let st = stats.expect("ran");
        let vis = visible(mask.as_ref(), &ops, t, s, (tq, tk));
        let flops = 4.0 * vis * d as f64 * hq as f64;
        let ms = time.as_secs_f64() * 1e3;
        let detail = format!(
            "tiles {tq}×{tk}, visible {:.1}%, {} programs{}{}",
            100.0 * vis / (t * s) as f64,
            st.programs,
            if st.kv_splits > 1 { format!(", kv split {}", st.kv_splits) } else { String::new() },
            if st.packed_heads > 1 { format!(", {} heads packed per program", st.packed_heads) } else { String::new() },
        );
        println!(
            "{name}: {ms:.3} ms, {:.1} useful GFLOP/s ({detail}, {threads} threads)",
            flops / time.as_secs_f64() / 1e9
        );
        let kv_bytes = decode.then(|| (2 * hk * s * d * 4) as f64);
        rows.push(Row { name: name.to_string(), detail, ms, gflops: flops / time.as_secs_f64() / 1e9, kv_bytes });
    }
    if selected("transformer block") {
        rows.push(transformer_block(threads, reps));
    }
    g.finish();

    // The summary table (markdown).
    println!("\n## CPU benchmark summary ({threads} threads, median of {reps})\n");
    match peak {
        Some(gf) => {
            println!("- FMA peak (a JIT-compiled loop of 12 independent vector FMAs per thread): {gf:.1} GFLOP/s")
        }
        None => println!("- FMA peak: not measured (TDL_BENCH filter)"),
    }
    match sgemm {
        Some((gf, tiles)) => println!("- sgemm ceiling (tdlc's matmul, 1024³ f32, tiles {tiles:?}): {gf:.1} GFLOP/s"),
        None => println!("- sgemm ceiling: not measured (TDL_BENCH filter)"),
    }
    match bandwidth {
        Some(bw) => println!("- memory bandwidth (parallel read of 256 MiB): {bw:.1} GB/s"),
        None => println!("- memory bandwidth: not measured (TDL_BENCH filter)"),
    }
    println!(
        "\n| configuration | median ms | useful GFLOP/s | of FMA peak | of sgemm | K/V GB/s | of bandwidth | notes |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let of_sgemm = sgemm.map_or("–".to_string(), |(s, _)| format!("{:.0}%", 100.0 * r.gflops / s));
        let of_peak = peak.map_or("–".to_string(), |p| format!("{:.0}%", 100.0 * r.gflops / p));
        let (gbs, of_bw) = match r.kv_bytes {
            Some(b) => {
                let gbs = b / (r.ms / 1e3) / 1e9;
                (format!("{gbs:.1}"), bandwidth.map_or("–".to_string(), |bw| format!("{:.0}%", 100.0 * gbs / bw)))
            }
            None => ("–".to_string(), "–".to_string()),
        };
        println!(
            "| {} | {:.3} | {:.1} | {of_peak} | {of_sgemm} | {gbs} | {of_bw} | {} |",
            r.name, r.ms, r.gflops, r.detail
        );
    }
}

/// The best GFLOP/s of tdlc's own matmul kernel on a 1024³ f32 product
/// over a few tilings (the cost model's first), and the tiles that gave it.
fn sgemm_ceiling(threads: usize, reps: usize) -> (f64, (usize, usize, usize)) {
    let n = 1024;
    let a = random(&[n, n], 11, 1.0);
    let b = random(&[n, n], 12, 1.0);
    let args = MatMulArgs {
        a: &a,
        b: &b,
        m: n,
        n,
        k: n,
        a_i: n,
        a_p: 1,
        b_p: n,
        b_j: 1,
        a_offsets: vec![0],
        b_offsets: vec![0],
        dtypes: [tdl_ir::DType::F32; 3],
    };
    let mut best = (0.0, (0, 0, 0));
    let host = Target::host().matmul_tiles(4);
    let extra: Vec<(usize, usize, usize)> = std::env::var("TDL_MM_TILES")
        .ok()
        .map(|v| {
            v.split(';')
                .filter_map(|t| {
                    let n: Vec<usize> = t.split(',').filter_map(|x| x.parse().ok()).collect();
                    (n.len() == 3).then(|| (n[0], n[1], n[2]))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut candidates = vec![host, (48, 256, 256), (96, 128, 256), (64, 512, 128), (192, 256, 384)];
    candidates.extend(extra);
    for tiles in candidates {
        let kern = CompiledMatMul::new(tiles).expect("compiles");
        let t = time_median(reps, || {
            kern.run(&args, threads).expect("runs");
        });
        let gf = 2.0 * (n * n * n) as f64 / t.as_secs_f64() / 1e9;
        println!("sgemm 1024³ tiles {tiles:?}: {:.2} ms, {gf:.1} GFLOP/s", t.as_secs_f64() * 1e3);
        if gf > best.0 {
            best = (gf, tiles);
        }
    }
    best
}

/// Read bandwidth: `threads` threads summing their share of 256 MiB.
fn read_bandwidth(threads: usize, reps: usize) -> f64 {
    let n: usize = 64 << 20;
    let data: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let chunk = n.div_ceil(threads);
    let mut sink = 0f32;
    let t = time_median(reps, || {
        let total: f32 = std::thread::scope(|sc| {
            let hs: Vec<_> = data
                .chunks(chunk)
                .map(|part| {
                    sc.spawn(move || {
                        let mut acc = [0f32; 16];
                        for c in part.chunks_exact(16) {
                            for i in 0..16 {
                                acc[i] += c[i];
                            }
                        }
                        acc.iter().sum::<f32>()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        sink += total;
    });
    std::hint::black_box(sink);
    let gbs = (n * 4) as f64 / t.as_secs_f64() / 1e9;
    println!("read bandwidth: {gbs:.1} GB/s ({threads} threads)");
    gbs
}

/// The contract's transformer block (examples/block.tdl) at T = 1024
/// through `--backend cpu` (every kernel the CPU backend compiles, the rest
/// in the Kernel IR interpreter).
fn transformer_block(threads: usize, reps: usize) -> Row {
    let src = include_str!("../examples/block.tdl");
    let checked = tdl::check_source(src).expect("block.tdl checks");
    let g = &checked.graphs[0];
    let mut none = |_: &tdl::passes::PassReport, _: &tdl::ir::VerifiedGraph| {};
    let fused =
        tdl::passes::run_pipeline_with(g.clone(), &tdl::passes::default_pipeline(), &mut none).expect("passes").0;
    let p = tdl::kernel::lower::lower(&fused, &Target::host(), &Default::default()).expect("lowers");
    let t = 1024;
    let shapes: [&[usize]; 7] = [&[t, 512], &[512], &[512, 1536], &[512, 512], &[512], &[512, 2048], &[2048, 512]];
    let inputs: Vec<Tensor> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let scale = if s.len() == 2 && i > 0 { 0.05 } else { 1.0 };
            let data = random(s, 20 + i as u64, scale).into_iter().map(f64::from).collect();
            Tensor::new(DType::F32, s.to_vec(), data).expect("tensor")
        })
        .collect();
    let hooks = tdl::llvm::cpu::CpuHooks::new(threads);
    let limits = tdl::reference::Limits::default();
    let time = time_median(reps, || {
        tdl::kernel::interp::run_with_hooks(&p, &inputs, &limits, &hooks).expect("runs");
    });
    let out = tdl::kernel::interp::run_with_hooks(&p, &inputs, &limits, &hooks).expect("runs");
    let compiled = out.kernels.iter().filter(|k| k.executor == tdl::llvm::cpu::EXECUTOR).count();
    // Matmuls 2·T·512·(1536 + 512 + 2048) + 2·T·2048·512, causal attention 4·visible·64·8.
    let matmul = 2.0 * (t * 512 * (1536 + 512 + 2048) + t * 2048 * 512) as f64;
    let attn = 4.0 * (t * (t + 1) / 2) as f64 * 64.0 * 8.0;
    let ms = time.as_secs_f64() * 1e3;
    let gflops = (matmul + attn) / time.as_secs_f64() / 1e9;
    let detail = format!("{compiled} of {} kernels compiled", out.kernels.len());
    println!("transformer block T=1024: {ms:.2} ms, {gflops:.1} GFLOP/s ({detail})");
    Row { name: "transformer block (examples/block.tdl) T=1024".into(), detail, ms, gflops, kv_bytes: None }
}

criterion_group!(benches, bench);
criterion_main!(benches);
