//! Tile classification at T = S = 131072 with 64×64 tiles (2048 × 2048 =
//! 4M tiles): `document` (random boundaries, non-decreasing ids) and
//! `causal`, as the block-sparse iteration space (runs of k-tiles per
//! q-tile; target < 1 ms for `document`) and as a dense class per tile.
//!
//! `cargo bench -p tdl-passes --bench tiles`

use criterion::{criterion_group, criterion_main, Criterion};
use tdl_ir::{Bindings, DType, MaskExpr};
use tdl_passes::tiles::{classify, iteration_space, Ctx, MaskData, OperandData};

const T: usize = 131072;
const TILE: usize = 64;

/// Non-decreasing document ids: `docs` documents with random lengths.
fn doc_ids(t: usize, docs: usize, seed: u64) -> Vec<f64> {
    let mut x = seed;
    let mut next = || {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut cuts: Vec<usize> = (1..docs).map(|_| (next() % t as u64) as usize).collect();
    cuts.sort_unstable();
    let mut ids = Vec::with_capacity(t);
    let mut id = 0;
    for i in 0..t {
        while id < cuts.len() && cuts[id] <= i {
            id += 1;
        }
        ids.push(id as f64);
    }
    ids
}

fn bench(c: &mut Criterion) {
    let ids = doc_ids(T, 64, 7);
    let data = MaskData { operands: vec![OperandData { dtype: DType::I32, shape: vec![T], data: &ids }] };
    let none = MaskData::none();
    let b = Bindings::new();
    let doc_ctx = Ctx { t: T as i64, s: T as i64, heads: 1, bindings: &b, data: &data };
    let causal_ctx = Ctx { t: T as i64, s: T as i64, heads: 1, bindings: &b, data: &none };
    let doc = MaskExpr::Document { ids: 0 };
    let causal = MaskExpr::Causal;

    let mut g = c.benchmark_group("tiles-131072-64x64");
    g.bench_function("document/iteration_space", |bch| {
        bch.iter(|| iteration_space(&doc, &doc_ctx, TILE, TILE).unwrap())
    });
    g.bench_function("causal/iteration_space", |bch| {
        bch.iter(|| iteration_space(&causal, &causal_ctx, TILE, TILE).unwrap())
    });
    g.bench_function("document/classify", |bch| bch.iter(|| classify(&doc, &doc_ctx, TILE, TILE).unwrap()));
    g.bench_function("causal/classify", |bch| bch.iter(|| classify(&causal, &causal_ctx, TILE, TILE).unwrap()));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
