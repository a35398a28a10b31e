//! The JIT-compiled CPU matmul (register-blocked micro-kernel) against a
//! plain f64 product: sizes no tile or micro-kernel block divides,
//! transposed and strided operands, batches, 1 and 2 threads (identical
//! results).

use tdl_kernel::interp::MatMulArgs;
use tdl_llvm::matmul::CompiledMatMul;
use tdl_reference::random::SplitMix64;

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut r = SplitMix64::new(seed);
    (0..n).map(|_| ((r.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0).collect()
}

#[test]
fn jit_matmul_matches_a_plain_product() {
    let mut cases = 0;
    for tiles in [(64, 64, 128), (7, 24, 5), (13, 40, 300)] {
        let kern = CompiledMatMul::new(tiles).unwrap();
        for (m, n, k) in [(1, 1, 1), (5, 17, 3), (63, 65, 130), (100, 33, 257), (6, 16, 8)] {
            for transposed_b in [false, true] {
                let batch = 2;
                let a = random(batch * m * k, 1);
                let b = random(batch * k * n, 2);
                // A row-major [batch, m, k]; B [batch, k, n] or stored as [batch, n, k].
                let (b_p, b_j) = if transposed_b { (1, k) } else { (n, 1) };
                let args = MatMulArgs {
                    a: &a,
                    b: &b,
                    m,
                    n,
                    k,
                    a_i: k,
                    a_p: 1,
                    b_p,
                    b_j,
                    a_offsets: (0..batch).map(|i| i * m * k).collect(),
                    b_offsets: (0..batch).map(|i| i * k * n).collect(),
                    dtypes: [tdl_ir::DType::F32; 3],
                };
                let one = kern.run(&args, 1).unwrap();
                let two = kern.run(&args, 2).unwrap();
                assert_eq!(one, two, "threads change the result");
                let mut worst = 0f64;
                for bi in 0..batch {
                    for i in 0..m {
                        for j in 0..n {
                            let want: f64 = (0..k)
                                .map(|p| {
                                    f64::from(a[bi * m * k + i * k + p]) * f64::from(b[bi * k * n + p * b_p + j * b_j])
                                })
                                .sum();
                            let got = f64::from(one[(bi * m + i) * n + j]);
                            worst = worst.max((got - want).abs() / want.abs().max(1.0));
                        }
                    }
                }
                assert!(worst <= 1e-5, "tiles {tiles:?} sizes {m}×{n}×{k} transposed {transposed_b}: error {worst}");
                cases += 1;
            }
        }
    }
    assert_eq!(cases, 30);
}

#[test]
fn jit_matmul_refuses_views_out_of_bounds() {
    let kern = CompiledMatMul::new((8, 16, 16)).unwrap();
    let (a, b) = (vec![1f32; 12], vec![1f32; 12]);
    let args = MatMulArgs {
        a: &a,
        b: &b,
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
    let e = kern.run(&args, 1).expect_err("16 elements needed, 12 given");
    assert!(e.to_string().contains("out of bounds"), "{e}");
}

/// The arithmetic ceiling the benchmarks report against is measured, not
/// assumed: the FMA loop runs and gives a positive rate.
#[test]
fn fma_peak_is_measured() {
    let gf = tdl_llvm::ceiling::fma_peak_gflops(1, 1_000_000, 1).unwrap();
    assert!(gf.is_finite() && gf > 0.1, "{gf} GFLOP/s");
}
