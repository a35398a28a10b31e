//! The JIT-compiled CPU attention kernel against the Kernel IR interpreter
//! (the baseline, in the same process): `cargo bench -p tdl-llvm --bench
//! attention`. Prints, per configuration, the medians and useful GFLOP/s
//! (4·visible·D per head, only the score entries the mask keeps).

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use tdl_ir::{Bindings, MaskExpr};
use tdl_kernel::{attention_tiled, AttentionSchedule, F32Tensor};
use tdl_llvm::attention::{with_attention, AttentionSpec};
use tdl_passes::tiles::MaskData;

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

/// Visible score entries of one head.
fn visible(mask: &Option<MaskExpr>, t: usize, s: usize) -> f64 {
    match mask {
        None => (t * s) as f64,
        Some(MaskExpr::Causal) => (0..t).map(|q| (q + s - t + 1).min(s) as f64).sum(),
        Some(MaskExpr::Window { w }) => (0..t).map(|q| (q + 1).min(*w as usize) as f64).sum(),
        Some(_) => f64::NAN,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn bench(c: &mut Criterion) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let configs: Vec<(&str, usize, usize, usize, Option<MaskExpr>)> = vec![
        ("dense causal H=8 D=64 T=1024", 8, 1024, 64, Some(MaskExpr::Causal)),
        ("window 256 H=8 D=64 T=4096", 8, 4096, 64, Some(MaskExpr::Window { w: 256 })),
    ];
    let bindings = Bindings::new();
    let none = MaskData::none();
    let mut g = c.benchmark_group("cpu-attention");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    for (name, h, t, d, mask) in configs {
        let q = random(&[h, t, d], 1);
        let k = random(&[h, t, d], 2);
        let v = random(&[h, t, d], 3);
        // The tiles the Kernel IR's cost model gives this machine (TDL_TILE=q,k overrides).
        let (tq, tk) = std::env::var("TDL_TILE")
            .ok()
            .and_then(|v| v.split_once(',').and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?))))
            .unwrap_or_else(|| tdl_kernel::target::Target::host().attention_tiles(Some(d), Some(d), 4));
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
            g.bench_function(format!("{name}/interpreter/1t"), |b| {
                b.iter(|| attention_tiled(&q, &k, &v, mask.as_ref().map(|m| (m, &none)), None, None, &bindings, &sched).unwrap())
            });
            // A one-line summary with useful GFLOP/s, measured here.
            let reps = 5;
            let time = |f: &mut dyn FnMut()| median((0..reps).map(|_| { let s = Instant::now(); f(); s.elapsed() }).collect());
            let jit = time(&mut || {
                kern.run((&q.shape, &q.data), (&k.shape, &k.data), (&v.shape, &v.data), &none, &bindings, &mut out, threads)
                    .unwrap();
            });
            let interp = time(&mut || {
                attention_tiled(&q, &k, &v, mask.as_ref().map(|m| (m, &none)), None, None, &bindings, &sched).unwrap();
            });
            let flops = 4.0 * visible(&mask, t, t) * d as f64 * h as f64;
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
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
