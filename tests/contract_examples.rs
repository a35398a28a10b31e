//! Acceptance: `tdlc run` on each of the contract's five examples, with
//! random inputs, gives finite outputs that match the contract's formulas.
//!
//! Every test runs the real binary (`tdlc run examples/X.tdl --random --seed
//! 7 --bind ... --output OUT.npy`), reads OUT.npy back, regenerates the same
//! inputs with `tdl::reference::random_tensor` (input number `i` gets seed
//! `7 + i`, as `tdlc run --random --seed 7` documents), and compares against
//! an implementation written here from the contract's text alone: plain f64
//! loops, no call into the reference interpreter.
//!
//! Sizes are small and deliberately not multiples of any tile size.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use tdl::ir::DType;
use tdl::reference::{npy, random_tensor, Tensor};

/// Outputs are f32: compare with `1e-4 * max(1, |expected|)`.
const TOL: f64 = 1e-4;
const SEED: u64 = 7;

/// Runs `tdlc run FILE --backend reference --random --seed 7 --bind ...
/// --output OUT.npy` and returns the output tensor and the wall time of the
/// run. The reference (f64) is what these formulas check, element by
/// element; the backends are checked against it norm-wise elsewhere
/// (`tdlc selftest`, the corpus tests).
fn run_random(file: &Path, binds: &[(&str, usize)], dir: &Path) -> (Tensor, Duration) {
    let out_path = dir.join("out.npy");
    let mut args: Vec<String> = vec![
        "run".into(),
        file.display().to_string(),
        "--backend".into(),
        "reference".into(),
        "--random".into(),
        "--seed".into(),
        SEED.to_string(),
    ];
    for (sym, n) in binds {
        args.push("--bind".into());
        args.push(format!("{sym}={n}"));
    }
    args.push("--output".into());
    args.push(out_path.display().to_string());
    let start = Instant::now();
    let out = tdlc(&args);
    let took = start.elapsed();
    assert_ok(&out);
    let lines: Vec<&str> = out.stdout.lines().filter(|l| l.starts_with("result ")).collect();
    assert_eq!(lines.len(), 1, "one result line:\n{}", out.describe());
    assert!(lines[0].starts_with("result 0: f32["), "{}", out.describe());
    assert!(lines[0].contains("(all finite)"), "the summary must say all finite:\n{}", out.describe());
    let t = npy::read_npy(&out_path).unwrap_or_else(|e| panic!("reading {}: {e}", out_path.display()));
    assert_eq!(t.dtype, DType::F32);
    assert!(t.all_finite(), "non-finite values in {}", out_path.display());
    (t, took)
}

/// Input number `i` of a `--random --seed 7` run.
fn input(i: u64, shape: &[usize]) -> Vec<f64> {
    random_tensor(DType::F32, shape, SEED + i).data
}

fn report(name: &str, took: Duration, total: Instant) {
    eprintln!(
        "timing: {name}: tdlc run {:.2} s; whole test (run + independent formula) {:.2} s",
        took.as_secs_f64(),
        total.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------
// The formulas, from the contract.
// ---------------------------------------------------------------------------

/// `softmax(q·kᵀ·scale + mask)·v` per head, over the keys `keys(h, q)`
/// returns; a query that sees no key gets a row of zeros.
///
/// `q: [hq, t, d]`, `k: [hk, s, d]`, `v: [hk, s, dv]`; query head `h` reads
/// key/value head `kv_head(h)`. Returns `[hq, t, dv]`.
#[allow(clippy::too_many_arguments)]
fn attention(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    (hq, t, s, d, dv): (usize, usize, usize, usize, usize),
    kv_head: &dyn Fn(usize) -> usize,
    scale: f64,
    keys: &dyn Fn(usize, usize) -> Vec<usize>,
) -> Vec<f64> {
    let mut out = vec![0.0; hq * t * dv];
    for h in 0..hq {
        let kh = kv_head(h);
        for qi in 0..t {
            let ks = keys(h, qi);
            if ks.is_empty() {
                continue; // fully masked: zeros
            }
            let qrow = &q[(h * t + qi) * d..][..d];
            let scores: Vec<f64> = ks
                .iter()
                .map(|&kj| {
                    let krow = &k[(kh * s + kj) * d..][..d];
                    qrow.iter().zip(krow).map(|(a, b)| a * b).sum::<f64>() * scale
                })
                .collect();
            let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = scores.iter().map(|&x| (x - m).exp()).collect();
            let z: f64 = w.iter().sum();
            let orow = &mut out[(h * t + qi) * dv..][..dv];
            for (&kj, &wj) in ks.iter().zip(&w) {
                let vrow = &v[(kh * s + kj) * dv..][..dv];
                for (o, x) in orow.iter_mut().zip(vrow) {
                    *o += wj / z * x;
                }
            }
        }
    }
    out
}

/// `causal`: `k <= q + (S - T)` (bottom-right aligned).
fn causal(t: usize, s: usize, q: usize, k: usize) -> bool {
    (k as i64) <= q as i64 + (s as i64 - t as i64)
}

/// `window(w)`: `causal & local(left = w - 1, right = 0)`, where `local` is
/// `q - L <= k <= q + R`.
fn window(w: usize, t: usize, s: usize, q: usize, k: usize) -> bool {
    let (q, k, w) = (q as i64, k as i64, w as i64);
    causal(t, s, q as usize, k as usize) && q - (w - 1) <= k && k <= q
}

/// Keys for which `pred` holds, scanning all of `0..s`.
fn scan(s: usize, pred: impl Fn(usize) -> bool) -> Vec<usize> {
    (0..s).filter(|&k| pred(k)).collect()
}

/// NATTEN along one axis of length `len`, kernel `kernel`, dilation `dil`:
/// indices split into `dil` groups by `index mod dil`; in a group of `Lg`
/// members the query at group position `i = index div dil` sees the
/// `kernel` members starting at `clamp(i - kernel/2, 0, Lg - kernel)`.
fn natten_1d(len: usize, kernel: usize, dil: usize, qi: usize, ki: usize) -> bool {
    if qi % dil != ki % dil {
        return false;
    }
    let g = qi % dil;
    let lg = (len - g).div_ceil(dil); // members g, g + dil, ... below len
    assert!(lg >= kernel, "test setup: group of {lg} members < kernel {kernel}");
    let (i, j) = ((qi / dil) as i64, (ki / dil) as i64);
    let start = (i - (kernel / 2) as i64).clamp(0, (lg - kernel) as i64);
    start <= j && j < start + kernel as i64
}

/// `x @ y` for row-major `x: [m, n]`, `y: [n, p]`.
fn matmul(x: &[f64], y: &[f64], m: usize, n: usize, p: usize) -> Vec<f64> {
    let mut out = vec![0.0; m * p];
    for i in 0..m {
        let orow = &mut out[i * p..][..p];
        for (l, &a) in x[i * n..][..n].iter().enumerate() {
            let yrow = &y[l * p..][..p];
            for (o, &b) in orow.iter_mut().zip(yrow) {
                *o += a * b;
            }
        }
    }
    out
}

/// `rmsnorm(x, g, eps = 1e-6)` over the last axis: `x / sqrt(mean(x²) + eps) · g`.
fn rmsnorm(x: &[f64], g: &[f64], rows: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0.0; rows * n];
    for r in 0..rows {
        let row = &x[r * n..][..n];
        let ms = row.iter().map(|v| v * v).sum::<f64>() / n as f64;
        let inv = 1.0 / (ms + 1e-6).sqrt();
        for j in 0..n {
            out[r * n + j] = row[j] * inv * g[j];
        }
    }
    out
}

/// `rope(x, base = 10000)` on `[heads, T, D]`, Llama's rotate-half: position
/// `p` = index along axis -2, `θᵢ = p · base^(-2i/D)`, pairs `(i, i + D/2)`:
/// `out[i] = x[i]·cos θᵢ − x[i+D/2]·sin θᵢ`, `out[i+D/2] = x[i+D/2]·cos θᵢ + x[i]·sin θᵢ`.
fn rope(x: &[f64], heads: usize, t: usize, d: usize) -> Vec<f64> {
    let half = d / 2;
    let mut out = vec![0.0; x.len()];
    for h in 0..heads {
        for p in 0..t {
            let row = &x[(h * t + p) * d..][..d];
            let o = &mut out[(h * t + p) * d..][..d];
            for i in 0..half {
                let theta = p as f64 * 10000f64.powf(-2.0 * i as f64 / d as f64);
                let (sn, cs) = theta.sin_cos();
                o[i] = row[i] * cs - row[i + half] * sn;
                o[i + half] = row[i + half] * cs + row[i] * sn;
            }
        }
    }
    out
}

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

// ---------------------------------------------------------------------------
// The examples.
// ---------------------------------------------------------------------------

/// `causal_attention`: `softmax(q @ kᵀ * 0.125 + causal) @ v` with T < S, so
/// the bottom-right alignment of `causal` matters.
#[test]
fn causal_attention_matches_the_formula() {
    let total = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (h, t, s, d) = (2, 37, 45, 64);
    let (got, took) = run_random(&example("causal_attention"), &[("H", h), ("T", t), ("S", s)], dir.path());
    let (q, k, v) = (input(0, &[h, t, d]), input(1, &[h, s, d]), input(2, &[h, s, d]));
    let want = attention(&q, &k, &v, (h, t, s, d, d), &|h| h, 0.125, &|_, qi| scan(s, |kj| causal(t, s, qi, kj)));
    assert_close("causal_attention H=2 T=37 S=45", &got, &[h, t, d], &want, TOL);
    report("causal_attention (H=2, T=37, S=45)", took, total);
}

/// `causal_attention` with T > S: `k <= q + (S - T)` holds for no key in the
/// first T - S query rows, which must come out as zeros (not NaN).
#[test]
fn causal_attention_with_more_queries_than_keys_gives_zero_rows() {
    let total = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (h, t, s, d) = (2, 45, 37, 64);
    let (got, took) = run_random(&example("causal_attention"), &[("H", h), ("T", t), ("S", s)], dir.path());
    let (q, k, v) = (input(0, &[h, t, d]), input(1, &[h, s, d]), input(2, &[h, s, d]));
    let want = attention(&q, &k, &v, (h, t, s, d, d), &|h| h, 0.125, &|_, qi| scan(s, |kj| causal(t, s, qi, kj)));
    for hh in 0..h {
        for qi in 0..(t - s) {
            let row = &got.data[(hh * t + qi) * d..][..d];
            assert!(
                row.iter().all(|&x| x == 0.0),
                "head {hh}, query {qi} sees no key: its row must be zeros, got {row:?}"
            );
        }
    }
    assert_close("causal_attention H=2 T=45 S=37", &got, &[h, t, d], &want, TOL);
    report("causal_attention (H=2, T=45, S=37)", took, total);
}

fn gqa_expected(t: usize, w: usize) -> Vec<f64> {
    let (hq, hk, d) = (32, 8, 128);
    let (q, k, v) = (input(0, &[hq, t, d]), input(1, &[hk, t, d]), input(2, &[hk, t, d]));
    // repeat(k, 4, axis = 0) repeats each slice 4 times: head h reads h / 4.
    attention(&q, &k, &v, (hq, t, t, d, d), &|h| h / 4, 0.0884, &|_, qi| scan(t, |kj| window(w, t, t, qi, kj)))
}

/// `gqa_window`: grouped-query attention (`repeat`) with `window(4096)`.
#[test]
fn gqa_window_matches_the_formula() {
    let total = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let t = 50;
    let (got, took) = run_random(&example("gqa_window"), &[("T", t)], dir.path());
    assert_close("gqa_window T=50", &got, &[32, t, 128], &gqa_expected(t, 4096), TOL);
    report("gqa_window (T=50)", took, total);
}

/// The same graph with a window that bites at T = 50 (the example's 4096
/// only does at T > 4096).
#[test]
fn gqa_window_with_a_short_window_matches_the_formula() {
    let total = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let src = std::fs::read_to_string(example("gqa_window")).unwrap();
    assert!(src.contains("window(4096)"), "the example changed: {src}");
    let file = dir.path().join("gqa_window13.tdl");
    std::fs::write(&file, src.replace("window(4096)", "window(13)")).unwrap();
    let t = 50;
    let (got, took) = run_random(&file, &[("T", t)], dir.path());
    assert_close("gqa_window with window(13), T=50", &got, &[32, t, 128], &gqa_expected(t, 13), TOL);
    report("gqa_window with window(13) (T=50)", took, total);
}

/// `moa`: `causal & (q - k < spans[h])`, default scale `1/sqrt(64)`; at
/// T = 70 the span of head 0 (64) bites.
#[test]
fn moa_matches_the_formula() {
    let total = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (h, t, d) = (8, 70, 64);
    let spans = [64i64, 128, 256, 512, 1024, 2048, 4096, 8192];
    let (got, took) = run_random(&example("moa"), &[("T", t)], dir.path());
    let (q, k, v) = (input(0, &[h, t, d]), input(1, &[h, t, d]), input(2, &[h, t, d]));
    let want = attention(&q, &k, &v, (h, t, t, d, d), &|h| h, 1.0 / (d as f64).sqrt(), &|hh, qi| {
        scan(t, |kj| causal(t, t, qi, kj) && (qi as i64 - kj as i64) < spans[hh])
    });
    // The span must really matter somewhere, or this test proves less.
    assert!(scan(t, |kj| causal(t, t, t - 1, kj)).len() > scan(t, |kj| (t - 1 - kj) < 64).len());
    assert_close("moa T=70", &got, &[h, t, d], &want, TOL);
    report("moa (T=70)", took, total);
}

/// `na2d`: NATTEN 2-D, kernel 7×7 on a 64×64 grid with dilation 2, default
/// scale `1/sqrt(32)`; every query sees exactly 49 keys. Fixed shapes
/// `[4, 4096, 32]`, all rows compared.
#[test]
fn na2d_matches_the_formula() {
    let total = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (h, t, d) = (4, 4096, 32);
    let (gh, gw, kernel, dil) = (64, 64, 7, 2);
    let (got, took) = run_random(&example("na2d"), &[], dir.path());
    let (q, k, v) = (input(0, &[h, t, d]), input(1, &[h, t, d]), input(2, &[h, t, d]));
    // Per axis: the visible key positions of each query position, by the
    // predicate over every key position.
    let rows: Vec<Vec<usize>> = (0..gh).map(|r| scan(gh, |kr| natten_1d(gh, kernel, dil, r, kr))).collect();
    let cols: Vec<Vec<usize>> = (0..gw).map(|c| scan(gw, |kc| natten_1d(gw, kernel, dil, c, kc))).collect();
    assert!(rows.iter().chain(&cols).all(|v| v.len() == kernel));
    // Row-major flattening q = r·gw + c; a key is visible when it is visible
    // along both axes.
    let keys = |_h: usize, qi: usize| -> Vec<usize> {
        let (r, c) = (qi / gw, qi % gw);
        let mut ks = Vec::with_capacity(kernel * kernel);
        for &kr in &rows[r] {
            for &kc in &cols[c] {
                ks.push(kr * gw + kc);
            }
        }
        ks
    };
    // Spot-check the clamping at a corner and in the middle.
    assert_eq!(rows[0], vec![0, 2, 4, 6, 8, 10, 12]);
    assert_eq!(rows[1], vec![1, 3, 5, 7, 9, 11, 13]);
    assert_eq!(rows[20], vec![14, 16, 18, 20, 22, 24, 26]);
    assert_eq!(rows[63], vec![51, 53, 55, 57, 59, 61, 63]);
    let want = attention(&q, &k, &v, (h, t, t, d, d), &|h| h, 1.0 / (d as f64).sqrt(), &keys);
    assert_close("na2d", &got, &[h, t, d], &want, TOL);
    report("na2d (fixed 4x4096x32, all rows)", took, total);
}

/// `block`: a pre-norm transformer block (rmsnorm, qkv projection, rope,
/// causal attention over 8 heads of 64 with scale 0.125, output projection,
/// residual, rmsnorm, silu MLP, residual).
#[test]
fn block_matches_the_formula() {
    let total = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let t = 19;
    let (dm, heads, hd, ff) = (512, 8, 64, 2048);
    let (got, took) = run_random(&example("block"), &[("T", t)], dir.path());
    let x = input(0, &[t, dm]);
    let g1 = input(1, &[dm]);
    let wqkv = input(2, &[dm, 3 * dm]);
    let wo = input(3, &[dm, dm]);
    let g2 = input(4, &[dm]);
    let w1 = input(5, &[dm, ff]);
    let w2 = input(6, &[ff, dm]);

    let h = rmsnorm(&x, &g1, t, dm);
    let qkv = matmul(&h, &wqkv, t, dm, 3 * dm);
    // slice(qkv, start = off, end = off + 512) |> reshape([T, 8, 64]) |> permute([1, 0, 2])
    let split = |off: usize| -> Vec<f64> {
        let mut out = vec![0.0; heads * t * hd];
        for hh in 0..heads {
            for p in 0..t {
                for j in 0..hd {
                    out[(hh * t + p) * hd + j] = qkv[p * 3 * dm + off + hh * hd + j];
                }
            }
        }
        out
    };
    let (q, k, v) = (split(0), split(dm), split(2 * dm));
    let (rq, rk) = (rope(&q, heads, t, hd), rope(&k, heads, t, hd));
    let a = attention(&rq, &rk, &v, (heads, t, t, hd, hd), &|h| h, 0.125, &|_, qi| scan(t, |kj| causal(t, t, qi, kj)));
    // reshape(permute(a, [1, 0, 2]), [T, 512])
    let mut merged = vec![0.0; t * dm];
    for hh in 0..heads {
        for p in 0..t {
            for j in 0..hd {
                merged[p * dm + hh * hd + j] = a[(hh * t + p) * hd + j];
            }
        }
    }
    let proj = matmul(&merged, &wo, t, dm, dm);
    let x2: Vec<f64> = x.iter().zip(&proj).map(|(a, b)| a + b).collect();
    let n2 = rmsnorm(&x2, &g2, t, dm);
    let up: Vec<f64> = matmul(&n2, &w1, t, dm, ff).into_iter().map(silu).collect();
    let down = matmul(&up, &w2, t, ff, dm);
    let want: Vec<f64> = x2.iter().zip(&down).map(|(a, b)| a + b).collect();
    assert_close("block T=19", &got, &[t, dm], &want, TOL);
    report("block (T=19)", took, total);
}

/// `tdlc check` accepts every example and prints one `graph NAME(...) -> ...`
/// signature line naming the parameters in order.
#[test]
fn check_accepts_every_example_and_prints_signatures() {
    let params: [(&str, &[&str]); 5] = [
        ("causal_attention", &["q", "k", "v"]),
        ("gqa_window", &["q", "k", "v"]),
        ("moa", &["q", "k", "v"]),
        ("na2d", &["q", "k", "v"]),
        ("block", &["x", "g1", "wqkv", "wo", "g2", "w1", "w2"]),
    ];
    for (name, ps) in params {
        let out = tdlc(["check".as_ref(), example(name).as_os_str()]);
        assert_ok(&out);
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(lines.len(), 1, "{name}: one signature line:\n{}", out.describe());
        let line = lines[0];
        assert!(line.starts_with(&format!("graph {name}(")), "{name}: {line}");
        assert!(line.contains(") -> "), "{name}: {line}");
        let mut at = 0;
        for p in ps {
            let needle = format!("{p}: ");
            let i = line[at..]
                .find(&needle)
                .unwrap_or_else(|| panic!("{name}: parameter `{p}` missing or out of order in {line}"));
            at += i + needle.len();
        }
    }
    assert_eq!(EXAMPLES.len(), params.len());
}
