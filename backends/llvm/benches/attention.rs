//! The JIT-compiled CPU attention kernel against the Kernel IR interpreter
//! (the baseline, in the same process): `cargo bench -p tdl-llvm --bench
//! attention`. Prints, per configuration, the JIT's median over 5 runs (and
//! criterion's estimate), one interpreter run as the baseline, and useful
//! GFLOP/s (4·visible·D per head, only the score entries the mask keeps,
//! counted by brute force).

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use tdl_ir::{Bindings, MaskExpr};
use tdl_kernel::{attention_tiled, AttentionSchedule, F32Tensor};
use tdl_llvm::attention::{with_attention, AttentionSpec};

fn random(shape: &[usize], seed: u64) -> F32Tensor {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let n = shape.iter().product();
    let data = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    F32Tensor { shape: shape.to_vec(), data }
}

/// Visible score entries of head 0, by brute force (the reference's
/// predicate at every point).
fn visible(mask: &Option<MaskExpr>, ops: &[tdl_reference::Tensor], t: usize, s: usize) -> f64 {
    let Some(m) = mask else { return (t * s) as f64 };
    let refs: Vec<&tdl_reference::Tensor> = ops.iter().collect();
    let b = Bindings::new();
    let ev = tdl_reference::mask::MaskEval::new(m, &refs, t, s, &b).unwrap();
    let mut n = 0u64;
    for q in 0..t {
        for k in 0..s {
            n += u64::from(ev.holds(q, k, 0).unwrap());
        }
    }
    n as f64
}

/// Name, heads, T (= S), head dimension, mask, mask operands.
type Config = (&'static str, usize, usize, usize, Option<MaskExpr>, Vec<tdl_reference::Tensor>);

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn bench(c: &mut Criterion) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    use tdl_ir::{ArrayRef, DType};
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
    let doc = tdl_reference::Tensor { dtype: DType::I32, shape: vec![4096], data: ids };
    let blocks = tdl_reference::Tensor { dtype: DType::Bool, shape: vec![64, 64], data: lay };
    let configs: Vec<Config> = vec![
        ("dense causal H=8 D=64 T=1024", 8, 1024, 64, Some(MaskExpr::Causal), vec![]),
        ("dense causal H=8 D=64 T=4096", 8, 4096, 64, Some(MaskExpr::Causal), vec![]),
        ("window 256 H=8 D=64 T=4096", 8, 4096, 64, Some(MaskExpr::Window { w: 256 }), vec![]),
        (
            "sink 4 + window 512 H=8 D=64 T=8192",
            8,
            8192,
            64,
            Some(MaskExpr::Or(Box::new(MaskExpr::Sink { n: 4 }), Box::new(MaskExpr::Window { w: 512 }))),
            vec![],
        ),
        ("2-D neighborhood 64x64 7x7 H=4 D=32", 4, 4096, 32, Some(na2d(1)), vec![]),
        ("2-D neighborhood 64x64 7x7 dilation 2 H=4 D=32", 4, 4096, 32, Some(na2d(2)), vec![]),
        (
            "10% block-sparse (64-blocks) H=8 D=64 T=4096",
            8,
            4096,
            64,
            Some(MaskExpr::Blocks { layout: ArrayRef::Operand(0), block: [64, 64] }),
            vec![blocks],
        ),
        ("4 documents H=8 D=64 T=4096", 8, 4096, 64, Some(MaskExpr::Document { ids: 0 }), vec![doc]),
    ];
    let bindings = Bindings::new();
    let mut g = c.benchmark_group("cpu-attention");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    for (name, h, t, d, mask, ops) in configs {
        let none = tdl_passes::tiles::MaskData {
            operands: ops
                .iter()
                .map(|x| tdl_passes::tiles::OperandData { dtype: x.dtype, shape: x.shape.clone(), data: &x.data })
                .collect(),
        };
        let q = random(&[h, t, d], 1);
        let k = random(&[h, t, d], 2);
        let v = random(&[h, t, d], 3);
        // The tiles the Kernel IR's cost model gives this machine (TDL_TILE=q,k overrides).
        let (tq, tk) = std::env::var("TDL_TILE")
            .ok()
            .and_then(|v| v.split_once(',').and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?))))
            .unwrap_or_else(|| {
                let host = tdl_kernel::target::Target::host();
                tdl_kernel::lower::attention_tiles(&host, Some(d), Some(d), 4, mask.as_ref())
            });
        let spec = AttentionSpec { d, dv: d, tile_q: tq, tile_k: tk, scale: None, mask: mask.clone() };
        let sched = AttentionSchedule::new(tq, tk);
        println!("{name}: tiles {tq}×{tk}");
        with_attention(&spec, |kern| {
            let mut out = Vec::new();
            g.bench_function(format!("{name}/cpu-jit/{threads}t"), |b| {
                b.iter(|| {
                    kern.run((&q.shape, &q.data), (&k.shape, &k.data), (&v.shape, &v.data), &none, &bindings, &mut out, threads)
                        .unwrap()
                })
            });

            // A one-line summary with useful GFLOP/s, measured here.
            let reps = 5;
            let time = |f: &mut dyn FnMut()| median((0..reps).map(|_| { let s = Instant::now(); f(); s.elapsed() }).collect());
            let jit = time(&mut || {
                kern.run((&q.shape, &q.data), (&k.shape, &k.data), (&v.shape, &v.data), &none, &bindings, &mut out, threads)
                    .unwrap();
            });
            let interp = median((0..1).map(|_| { let s = Instant::now(); attention_tiled(&q, &k, &v, mask.as_ref().map(|m| (m, &none)), None, None, &bindings, &sched).unwrap(); s.elapsed() }).collect());
            let flops = 4.0 * visible(&mask, &ops, t, t) * d as f64 * h as f64;
            println!(
                "{name}: cpu-jit {:.2} ms ({:.1} useful GFLOP/s, {threads} threads), interpreter {:.2} ms ({:.1} GFLOP/s): {:.1}× faster",
                jit.as_secs_f64() * 1e3,
                flops / jit.as_secs_f64() / 1e9,
                interp.as_secs_f64() * 1e3,
                flops / interp.as_secs_f64() / 1e9,
                interp.as_secs_f64() / jit.as_secs_f64()
            );
        })
        .unwrap();
    }
    // An sgemm-shaped matmul (1024³, f32) with tdlc's own matmul kernel.
    // `run_matmul` compiles on every call, so the time includes the JIT
    // compile; the fastest of 3 calls. (Not yet a machine ceiling: the
    // kernel accumulates one row at a time.)
    {
        let n = 1024;
        let a = random(&[n, n], 11);
        let b = random(&[n, n], 12);
        let args = tdl_kernel::interp::MatMulArgs {
            a: &a.data,
            b: &b.data,
            m: n,
            n,
            k: n,
            a_i: n,
            a_p: 1,
            b_p: n,
            b_j: 1,
            a_offsets: vec![0],
            b_offsets: vec![0],
        };
        let tiles = tdl_kernel::target::Target::host().matmul_tiles(4);
        let best = (0..3)
            .map(|_| {
                let s = Instant::now();
                tdl_llvm::matmul::run_matmul(tiles, &args, threads).unwrap();
                s.elapsed()
            })
            .min()
            .unwrap();
        println!(
            "sgemm 1024³ (tdlc's matmul kernel, tiles {tiles:?}, {threads} threads, JIT compile included): {:.2} ms, {:.1} GFLOP/s",
            best.as_secs_f64() * 1e3,
            2.0 * (n * n * n) as f64 / best.as_secs_f64() / 1e9
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
