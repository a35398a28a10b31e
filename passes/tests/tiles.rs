//! Tile classification against brute force (`tdl_reference::mask::materialize`):
//!
//! 1. soundness for every mask (Empty only where nothing holds, Full only
//!    where everything holds) and exactness for every built-in, at
//!    `T, S ∈ {1, 17, 63, 64, 65, 200}` and tiles 16×16, 64×64, 13×7, 64×128;
//!    `classify`, `iteration_space` and `classify_tile` agree tile by tile;
//! 2. the tightness table at T = S = 4096 with 64×64 tiles
//!    (`cargo test -p tdl-passes --test tiles -- --nocapture` prints it);
//! 3. `document` at T = 131072 in O(T) memory (a counting allocator
//!    measures the peak).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use tdl_ir::{ArrayRef, Bindings, ConstValue, DType, LambdaVar, MaskExpr, ScalarBinary, ScalarExpr, ScalarUnary};
use tdl_passes::tiles::{classify, classify_tile, iteration_space, Ctx, MaskData, OperandData, TileClass, TileGrid};
use tdl_reference::mask::{materialize, MaskEval};
use tdl_reference::random::SplitMix64;
use tdl_reference::{random_tensor, Limits, Tensor};

// ---------------------------------------------------------------------------
// A counting allocator: bytes live and the peak, per thread.

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note(delta: isize) {
    let _ = LIVE.try_with(|l| {
        let n = l.get() + delta;
        l.set(n);
        let _ = PEAK.try_with(|p| {
            if n > p.get() {
                p.set(n)
            }
        });
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            note(l.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            note(l.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        note(-(l.size() as isize));
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let r = unsafe { System.realloc(p, l, new) };
        if !r.is_null() {
            note(new as isize - l.size() as isize);
        }
        r
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns its result and the peak bytes it had allocated at
/// once (on this thread) above what was live before.
fn peak_bytes<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = LIVE.with(|l| l.get());
    PEAK.with(|p| p.set(base));
    let r = f();
    let peak = PEAK.with(|p| p.get());
    (r, (peak - base).max(0) as usize)
}

// ---------------------------------------------------------------------------
// Builders

fn q() -> ScalarExpr {
    ScalarExpr::Var(LambdaVar::Q)
}
fn k() -> ScalarExpr {
    ScalarExpr::Var(LambdaVar::K)
}
fn h() -> ScalarExpr {
    ScalarExpr::Var(LambdaVar::H)
}
fn int(c: i64) -> ScalarExpr {
    ScalarExpr::Int(c)
}
fn fl(c: f64) -> ScalarExpr {
    ScalarExpr::Float(c)
}
fn sym(n: &str) -> ScalarExpr {
    ScalarExpr::Sym(n.into())
}
fn bin(op: ScalarBinary, a: ScalarExpr, b: ScalarExpr) -> ScalarExpr {
    ScalarExpr::binary(op, a, b)
}
fn un(op: ScalarUnary, a: ScalarExpr) -> ScalarExpr {
    ScalarExpr::Unary(op, Box::new(a))
}
fn sel(c: ScalarExpr, a: ScalarExpr, b: ScalarExpr) -> ScalarExpr {
    ScalarExpr::Select(Box::new(c), Box::new(a), Box::new(b))
}
fn idx(array: ArrayRef, indices: Vec<ScalarExpr>) -> ScalarExpr {
    ScalarExpr::Index { array, indices }
}
fn konst(dtype: DType, data: Vec<f64>) -> ArrayRef {
    ArrayRef::Const(ConstValue { dtype, shape: vec![data.len()], data })
}
fn lam(e: ScalarExpr) -> MaskExpr {
    MaskExpr::Lambda(e)
}
fn and(a: MaskExpr, b: MaskExpr) -> MaskExpr {
    MaskExpr::And(Box::new(a), Box::new(b))
}
fn or(a: MaskExpr, b: MaskExpr) -> MaskExpr {
    MaskExpr::Or(Box::new(a), Box::new(b))
}
fn not(a: MaskExpr) -> MaskExpr {
    MaskExpr::Not(Box::new(a))
}
fn local(left: i64, right: i64) -> MaskExpr {
    MaskExpr::Local { left, right }
}
fn window(w: i64) -> MaskExpr {
    MaskExpr::Window { w }
}
fn dilated(w: i64, d: i64) -> MaskExpr {
    MaskExpr::Dilated { w, d }
}
fn sink(n: i64) -> MaskExpr {
    MaskExpr::Sink { n }
}
fn strided(stride: i64, offset: i64) -> MaskExpr {
    MaskExpr::Strided { stride, offset }
}
fn na(kernel: &[i64], grid: &[i64], dilation: &[i64], causal: &[bool]) -> MaskExpr {
    MaskExpr::Neighborhood {
        kernel: kernel.to_vec(),
        grid: grid.to_vec(),
        dilation: dilation.to_vec(),
        causal: causal.to_vec(),
    }
}
fn blocks_const(rows: usize, cols: usize, bq: i64, bk: i64, seed: u64, percent: u64) -> MaskExpr {
    let mut rng = SplitMix64::new(seed);
    let data = (0..rows * cols).map(|_| (rng.next_u64() % 100 < percent) as u8 as f64).collect();
    MaskExpr::Blocks {
        layout: ArrayRef::Const(ConstValue { dtype: DType::Bool, shape: vec![rows, cols], data }),
        block: [bq, bk],
    }
}

// ---------------------------------------------------------------------------
// Cases and the oracle

struct Case {
    name: String,
    mask: MaskExpr,
    operands: Vec<Tensor>,
    heads: usize,
    /// The classification must equal brute force (built-ins).
    exact: bool,
}

fn case(name: &str, mask: MaskExpr, exact: bool) -> Case {
    Case { name: name.into(), mask, operands: Vec::new(), heads: 1, exact }
}

fn bindings(t: usize, s: usize) -> Bindings {
    Bindings::from([("T".to_string(), t as i64), ("S".to_string(), s as i64), ("H".to_string(), 4)])
}

fn mask_data(ops: &[Tensor]) -> MaskData<'_> {
    MaskData {
        operands: ops.iter().map(|t| OperandData { dtype: t.dtype, shape: t.shape.clone(), data: &t.data }).collect(),
    }
}

/// Shuffled (unsorted) ids with a few values, for soundness only.
fn shuffled_ids(n: usize, seed: u64) -> Tensor {
    let mut rng = SplitMix64::new(seed);
    let data = (0..n).map(|_| (rng.next_u64() % 4) as f64).collect();
    Tensor::new(DType::I32, vec![n], data).unwrap()
}

/// Sorted ids with gaps between the values (0, 5, 10, ...).
fn gapped_ids(n: usize, seed: u64) -> Tensor {
    let base = random_tensor(DType::I32, &[n], seed);
    Tensor::new(DType::I32, vec![n], base.data.iter().map(|v| v * 5.0).collect()).unwrap()
}

/// Every mask of test 1 for `t` queries and `s` keys.
fn cases(t: usize, s: usize) -> Vec<Case> {
    use ScalarBinary as B;
    let n = t.max(s).max(1);
    let mut v = vec![
        case("causal", MaskExpr::Causal, true),
        case("local()", local(0, 0), true),
        case("local(3,5)", local(3, 5), true),
        case("local(20,0)", local(20, 0), true),
        case("local(-2,5)", local(-2, 5), true),
        case("local(100,100)", local(100, 100), true),
        case("local(5,-9)", local(5, -9), true),
        case("window(1)", window(1), true),
        case("window(5)", window(5), true),
        case("window(64)", window(64), true),
        case("window(0)", window(0), true),
        case("dilated(4,2)", dilated(4, 2), true),
        case("dilated(8,3)", dilated(8, 3), true),
        case("dilated(3,16)", dilated(3, 16), true),
        case("dilated(1,1)", dilated(1, 1), true),
        case("dilated(100,7)", dilated(100, 7), true),
        case("dilated(5,64)", dilated(5, 64), true),
        case("sink(0)", sink(0), true),
        case("sink(1)", sink(1), true),
        case("sink(4)", sink(4), true),
        case("sink(70)", sink(70), true),
        case("strided(1)", strided(1, 0), true),
        case("strided(4,1)", strided(4, 1), true),
        case("strided(3)", strided(3, 0), true),
        case("strided(16,5)", strided(16, 5), true),
        case("strided(64,3)", strided(64, 3), true),
        case("strided(5,-2)", strided(5, -2), true),
        case("strided(300,-7)", strided(300, -7), true),
        case("blocks 16x16 50%", blocks_const(n.div_ceil(16), n.div_ceil(16), 16, 16, 1, 50), true),
        case("blocks 7x13 70%", blocks_const(n.div_ceil(7), n.div_ceil(13), 7, 13, 2, 70), true),
        case("blocks 64x64 30%", blocks_const(n.div_ceil(64) + 1, n.div_ceil(64) + 2, 64, 64, 3, 30), true),
        case("blocks 1x200 90%", blocks_const(n, n.div_ceil(200), 1, 200, 4, 90), true),
        // Parameters outside the documented ranges (the IR can hold them).
        case("dilated(3,-2)", dilated(3, -2), true),
        case("dilated(2,0)", dilated(2, 0), true),
        case("dilated(-1,3)", dilated(-1, 3), true),
        case("strided(0,-5)", strided(0, -5), true),
        case("strided(-4,1)", strided(-4, 1), true),
        case("strided(i64::MIN,3)", strided(i64::MIN, 3), true),
        case("sink(-3)", sink(-3), true),
        case("window(-2)", window(-2), true),
        case("window(i64::MIN)", window(i64::MIN), true),
        case("local(i64::MAX,i64::MIN)", local(i64::MAX, i64::MIN), true),
        case("local(i64::MIN,i64::MAX)", local(i64::MIN, i64::MAX), true),
        case("local(i64::MAX,i64::MAX)", local(i64::MAX, i64::MAX), true),
        case("dilated(i64::MAX,i64::MAX)", dilated(i64::MAX, i64::MAX), true),
        case("sink(i64::MAX)", sink(i64::MAX), true),
        // Combinators (sound; not exact in general).
        case("sink(4) | window(8)", or(sink(4), window(8)), false),
        // Bands on one quantity fuse into one band: exact.
        case("causal & local(5,0)", and(MaskExpr::Causal, local(5, 0)), true),
        case("local(0,3) | local(2,0)", or(local(0, 3), local(2, 0)), true),
        case("local() | local(-1,1)", or(local(0, 0), local(-1, 1)), true),
        case("sink(3) | sink(9) & sink(5)", or(sink(3), and(sink(9), sink(5))), true),
        case("local() | local(-5,5)", or(local(0, 0), local(-5, 5)), false),
        case("!causal", not(MaskExpr::Causal), false),
        case("causal & !sink(2)", and(MaskExpr::Causal, not(sink(2))), false),
        case("!(!sink(4) & !window(16))", not(and(not(sink(4)), not(window(16)))), false),
        case("dilated(4,2) | strided(8)", or(dilated(4, 2), strided(8, 0)), false),
        case("causal & !causal", and(MaskExpr::Causal, not(MaskExpr::Causal)), false),
        case("local(3,3) | !local(3,3)", or(local(3, 3), not(local(3, 3))), false),
        // Lambdas (sound).
        case("q/64 == k/64", lam(bin(B::Eq, bin(B::Div, q(), int(64)), bin(B::Div, k(), int(64)))), false),
        case("k % 3 == 0", lam(bin(B::Eq, bin(B::Mod, k(), int(3)), int(0))), false),
        case("(q-k) % 4 == 1", lam(bin(B::Eq, bin(B::Mod, bin(B::Sub, q(), k()), int(4)), int(1))), false),
        case("abs(q-k) <= 5", lam(bin(B::Le, un(ScalarUnary::Abs, bin(B::Sub, q(), k())), int(5))), false),
        case("k >= S - 4", lam(bin(B::Ge, k(), bin(B::Sub, sym("S"), int(4)))), false),
        case(
            "q < T - 2 & k < S / 2",
            lam(bin(
                B::And,
                bin(B::Lt, q(), bin(B::Sub, sym("T"), int(2))),
                bin(B::Lt, k(), bin(B::Div, sym("S"), int(2))),
            )),
            false,
        ),
        case("q * k < 100", lam(bin(B::Lt, bin(B::Mul, q(), k()), int(100))), false),
        case("!(k > q)", lam(un(ScalarUnary::Not, bin(B::Gt, k(), q()))), false),
        case("true", lam(ScalarExpr::Bool(true)), false),
        case("false", lam(ScalarExpr::Bool(false)), false),
        case(
            "k / 0 == 0 & k % 0 == k",
            lam(bin(B::And, bin(B::Eq, bin(B::Div, k(), int(0)), int(0)), bin(B::Eq, bin(B::Mod, k(), int(0)), k()))),
            false,
        ),
        case(
            "(k - 30) / (q - 20) > 1",
            lam(bin(B::Gt, bin(B::Div, bin(B::Sub, k(), int(30)), bin(B::Sub, q(), int(20))), int(1))),
            false,
        ),
        case(
            "(q + 7) % (k + 1) == 0",
            lam(bin(B::Eq, bin(B::Mod, bin(B::Add, q(), int(7)), bin(B::Add, k(), int(1))), int(0))),
            false,
        ),
        case("(k - q) % -5 == -1", lam(bin(B::Eq, bin(B::Mod, bin(B::Sub, k(), q()), int(-5)), int(-1))), false),
        case("min(q, 40) <= max(k, 10)", lam(bin(B::Le, bin(B::Min, q(), int(40)), bin(B::Max, k(), int(10)))), false),
        case("sqrt(q) >= k * 0.5", lam(bin(B::Ge, un(ScalarUnary::Sqrt, q()), bin(B::Mul, k(), fl(0.5)))), false),
        case(
            "exp(-(q-k)/8.0) > 0.2 & k <= q",
            lam(bin(
                B::And,
                bin(
                    B::Gt,
                    un(ScalarUnary::Exp, bin(B::Div, un(ScalarUnary::Neg, bin(B::Sub, q(), k())), fl(8.0))),
                    fl(0.2),
                ),
                bin(B::Le, k(), q()),
            )),
            false,
        ),
        case("q * 2^62 < k (wraps)", lam(bin(B::Lt, bin(B::Mul, q(), int(1 << 62)), k())), false),
        case("k + i64::MAX > 0 (wraps)", lam(bin(B::Gt, bin(B::Add, k(), int(i64::MAX)), int(0))), false),
        case(
            "-(k - i64::MIN) ... abs wraps",
            lam(bin(B::Lt, un(ScalarUnary::Abs, bin(B::Sub, bin(B::Sub, k(), int(i64::MAX)), int(1))), int(0))),
            false,
        ),
        case("1.0 / (q - k) < 0.5", lam(bin(B::Lt, bin(B::Div, fl(1.0), bin(B::Sub, q(), k())), fl(0.5))), false),
        case("log(k) < 2.0", lam(bin(B::Lt, un(ScalarUnary::Log, k()), fl(2.0))), false),
        case(
            "tanh(q - k) > sigmoid(0.0 - k)",
            lam(bin(
                B::Gt,
                un(ScalarUnary::Tanh, bin(B::Sub, q(), k())),
                un(ScalarUnary::Sigmoid, bin(B::Sub, fl(0.0), k())),
            )),
            false,
        ),
        case(
            "q % 2.5 < 1.0 | max(q, 3.5) == 3.5",
            lam(bin(
                B::Or,
                bin(B::Lt, bin(B::Mod, q(), fl(2.5)), fl(1.0)),
                bin(B::Eq, bin(B::Max, q(), fl(3.5)), fl(3.5)),
            )),
            false,
        ),
        case("(k < 5) == (q < 5)", lam(bin(B::Eq, bin(B::Lt, k(), int(5)), bin(B::Lt, q(), int(5)))), false),
        case(
            "where(k < 10, q > 3, k % 2 == 0)",
            lam(sel(bin(B::Lt, k(), int(10)), bin(B::Gt, q(), int(3)), bin(B::Eq, bin(B::Mod, k(), int(2)), int(0)))),
            false,
        ),
        case(
            "causal & c[q - k] > 0",
            and(
                MaskExpr::Causal,
                lam(bin(
                    B::Gt,
                    idx(
                        konst(DType::I32, (0..n.max(1)).map(|i| ((i * 7) % 3 != 0) as u8 as f64).collect()),
                        vec![bin(B::Sub, bin(B::Add, q(), int(s as i64 - t as i64)), k())],
                    ),
                    int(0),
                )),
            ),
            false,
        ),
    ];
    // Per-head lambdas (4 heads).
    let spans = konst(DType::I32, vec![4.0, 8.0, 16.0, 32.0]);
    let moa = and(MaskExpr::Causal, lam(bin(B::Lt, bin(B::Sub, q(), k()), idx(spans, vec![h()]))));
    v.push(Case { heads: 4, ..case("causal & q - k < spans[h]", moa, false) });
    let band = lam(bin(
        B::Le,
        un(ScalarUnary::Abs, bin(B::Sub, q(), k())),
        sel(bin(B::Eq, h(), int(0)), int(8), bin(B::Min, int(16), bin(B::Max, bin(B::Mul, h(), int(4)), int(4)))),
    ));
    v.push(Case { heads: 4, ..case("abs(q-k) <= where(h==0, 8, ...)", band, false) });
    let shard = konst(DType::I32, vec![1.0, 2.0, 4.0, 8.0]);
    let s2 = lam(bin(
        B::Or,
        bin(B::Eq, bin(B::Mod, k(), idx(shard, vec![h()])), int(0)),
        bin(B::Lt, bin(B::Sub, q(), k()), int(2)),
    ));
    v.push(Case { heads: 4, ..case("k % shard[h] == 0 | q - k < 2", s2, false) });
    // Data-dependent masks: operands.
    let ids = random_tensor(DType::I32, &[n], 11);
    v.push(Case { operands: vec![ids.clone()], ..case("document (sorted)", MaskExpr::Document { ids: 0 }, true) });
    v.push(Case {
        operands: vec![gapped_ids(n, 12)],
        ..case("document (sorted, gaps)", MaskExpr::Document { ids: 0 }, true)
    });
    v.push(Case {
        operands: vec![shuffled_ids(n, 13)],
        ..case("document (unsorted)", MaskExpr::Document { ids: 0 }, false)
    });
    v.push(Case {
        operands: vec![Tensor::new(DType::I32, vec![n], vec![0.0; n]).unwrap()],
        ..case("document (one doc)", MaskExpr::Document { ids: 0 }, true)
    });
    v.push(Case {
        operands: vec![ids.clone()],
        ..case("document & causal", and(MaskExpr::Document { ids: 0 }, MaskExpr::Causal), false)
    });
    // Per head, and only on some q-tiles: the document search resumes
    // across q-tiles and restarts per head.
    let some_rows =
        lam(bin(B::Or, bin(B::Or, bin(B::Lt, q(), int(20)), bin(B::Gt, q(), int(50))), bin(B::Eq, h(), int(1))));
    v.push(Case {
        operands: vec![ids.clone()],
        heads: 2,
        ..case("(q < 20 | q > 50 | h == 1) & document", and(some_rows, MaskExpr::Document { ids: 0 }), false)
    });
    v.push(Case {
        operands: vec![ids.clone()],
        ..case(
            "ids[q] == ids[k] (lambda)",
            lam(bin(B::Eq, idx(ArrayRef::Operand(0), vec![q()]), idx(ArrayRef::Operand(0), vec![k()]))),
            false,
        )
    });
    let lay = random_tensor(DType::Bool, &[t.div_ceil(8).max(1), s.div_ceil(16).max(1)], 14);
    v.push(Case {
        operands: vec![lay.clone()],
        ..case("blocks(operand, [8,16])", MaskExpr::Blocks { layout: ArrayRef::Operand(0), block: [8, 16] }, true)
    });
    v.push(Case {
        operands: vec![lay],
        ..case(
            "blocks(operand) & causal",
            and(MaskExpr::Blocks { layout: ArrayRef::Operand(0), block: [8, 16] }, MaskExpr::Causal),
            false,
        )
    });
    let len = Tensor::new(DType::I32, vec![4], vec![3.0, 17.0, 64.0, 150.0]).unwrap();
    v.push(Case {
        operands: vec![len],
        heads: 4,
        ..case("k < len[h] (operand)", lam(bin(B::Lt, k(), idx(ArrayRef::Operand(0), vec![h()]))), false)
    });
    let bias = random_tensor(DType::Bool, &[t.max(1), s.max(1)], 15);
    v.push(Case {
        operands: vec![bias],
        ..case("bias[q, k] (bool operand)", lam(idx(ArrayRef::Operand(0), vec![q(), k()])), false)
    });
    let fbias = random_tensor(DType::F32, &[t.max(1), s.max(1)], 16);
    v.push(Case {
        operands: vec![fbias],
        ..case("fbias[q, k] > -0.9", lam(bin(B::Gt, idx(ArrayRef::Operand(0), vec![q(), k()]), fl(-0.9))), false)
    });
    v
}

/// The brute-force class of every tile, `[h][qi][ki]`.
fn brute(m: &Tensor, heads: usize, t: usize, s: usize, tq: usize, tk: usize) -> Vec<TileClass> {
    let (nq, nk) = (t.div_ceil(tq), s.div_ceil(tk));
    let mut vis = vec![0usize; heads * nq * nk];
    for hh in 0..heads {
        for qq in 0..t {
            let row = &m.data[(hh * t + qq) * s..(hh * t + qq + 1) * s];
            let base = (hh * nq + qq / tq) * nk;
            for (kj, chunk) in row.chunks(tk).enumerate() {
                vis[base + kj] += chunk.iter().filter(|&&v| v != 0.0).count();
            }
        }
    }
    let mut out = Vec::with_capacity(vis.len());
    for hh in 0..heads {
        for qi in 0..nq {
            for kj in 0..nk {
                let area = ((qi * tq + tq).min(t) - qi * tq) * ((kj * tk + tk).min(s) - kj * tk);
                let v = vis[(hh * nq + qi) * nk + kj];
                out.push(if v == 0 {
                    TileClass::Empty
                } else if v == area {
                    TileClass::Full
                } else {
                    TileClass::Partial
                });
            }
        }
    }
    out
}

/// Checks one classification against brute force: sound always, equal if
/// `exact`. Returns the number of tiles where it is looser than brute force.
fn compare(name: &str, got: &TileGrid, want: &[TileClass], exact: bool) -> usize {
    let (nq, nk) = (got.q_tiles(), got.k_tiles());
    let mut loose = 0;
    for (i, (&g, &w)) in got.classes.iter().zip(want).enumerate() {
        let (hh, qi, ki) = (i / (nq * nk), (i / nk) % nq, i % nk);
        let at = format!(
            "{name}: T={} S={} tiles {}x{} head {hh} tile ({qi}, {ki}): classified {g:?}, brute force {w:?}",
            got.t, got.s, got.tile_q, got.tile_k
        );
        assert!(!(g == TileClass::Empty && w != TileClass::Empty), "UNSOUND (visible element skipped) {at}");
        assert!(!(g == TileClass::Full && w != TileClass::Full), "UNSOUND (hidden element kept) {at}");
        if g != w {
            loose += 1;
            assert!(!exact, "NOT EXACT {at}");
        }
    }
    loose
}

const SIZES: &[usize] = &[1, 17, 63, 64, 65, 200];
const TILES: &[(usize, usize)] = &[(16, 16), (64, 64), (13, 7), (64, 128)];

/// Runs a case at `t × s` against brute force with every tile size;
/// `classify`, `iteration_space` and `classify_tile` must agree.
fn check_case(c: &Case, t: usize, s: usize, loose: &mut std::collections::BTreeMap<String, (usize, usize)>) {
    let b = bindings(t, s);
    let m = materialize(&c.mask, &c.operands, c.heads, t, s, &b, &Limits::default())
        .unwrap_or_else(|e| panic!("{}: T={t} S={s}: the reference fails: {e}", c.name));
    let data = mask_data(&c.operands);
    let ctx = Ctx { t: t as i64, s: s as i64, heads: c.heads, bindings: &b, data: &data };
    for &(tq, tk) in TILES {
        let want = brute(&m, c.heads, t, s, tq, tk);
        let got = classify(&c.mask, &ctx, tq, tk).unwrap();
        assert_eq!(got.classes.len(), want.len());
        let l = compare(&c.name, &got, &want, c.exact);
        let e = loose.entry(c.name.clone()).or_default();
        e.0 += l;
        e.1 += want.len();
        let space = iteration_space(&c.mask, &ctx, tq, tk).unwrap();
        assert_eq!(space.to_grid(), got, "{}: iteration_space differs from classify at T={t} S={s} {tq}x{tk}", c.name);
        assert_eq!(space.counts(), got.counts());
        for hh in 0..c.heads {
            for qi in 0..got.q_tiles() {
                for ki in 0..got.k_tiles() {
                    let (q0, k0) = ((qi * tq) as i64, (ki * tk) as i64);
                    let one = classify_tile(&c.mask, &ctx, hh, q0..q0 + tq as i64, k0..k0 + tk as i64);
                    assert_eq!(
                        one,
                        got.get(hh, qi, ki),
                        "{}: classify_tile differs at T={t} S={s} {tq}x{tk} tile ({hh}, {qi}, {ki})",
                        c.name
                    );
                }
            }
        }
    }
    // Unaligned rectangles through classify_tile.
    let mut rng = SplitMix64::new((t * 1000 + s) as u64);
    let me = MaskEval::new(&c.mask, &c.operands.iter().collect::<Vec<_>>(), t, s, &b).unwrap();
    for _ in 0..40 {
        let q0 = (rng.next_u64() % t as u64) as usize;
        let q1 = q0 + 1 + (rng.next_u64() % 40) as usize;
        let k0 = (rng.next_u64() % s as u64) as usize;
        let k1 = k0 + 1 + (rng.next_u64() % 40) as usize;
        let hh = (rng.next_u64() % c.heads as u64) as usize;
        let (mut any, mut all) = (false, true);
        for qq in q0..q1.min(t) {
            for kk in k0..k1.min(s) {
                let v = me.holds(qq, kk, hh).unwrap();
                any |= v;
                all &= v;
            }
        }
        let want = if !any {
            TileClass::Empty
        } else if all {
            TileClass::Full
        } else {
            TileClass::Partial
        };
        let got = classify_tile(&c.mask, &ctx, hh, q0 as i64..q1 as i64, k0 as i64..k1 as i64);
        assert!(!(got == TileClass::Empty && any), "{}: unsound rectangle {q0}..{q1} x {k0}..{k1}", c.name);
        assert!(got != TileClass::Full || all, "{}: unsound rectangle {q0}..{q1} x {k0}..{k1}", c.name);
        if c.exact {
            assert_eq!(got, want, "{}: rectangle {q0}..{q1} x {k0}..{k1} at T={t} S={s}", c.name);
        }
    }
}

#[test]
fn sound_and_exact_against_brute_force() {
    let mut loose = std::collections::BTreeMap::new();
    let mut checked = 0;
    for &t in SIZES {
        for &s in SIZES {
            for c in cases(t, s) {
                check_case(&c, t, s, &mut loose);
                checked += 1;
            }
        }
    }
    println!("{checked} (mask, T, S) cases, each with tiles {TILES:?}");
    println!("| mask | tiles looser than brute force / tiles |");
    println!("|---|---|");
    for (name, (l, n)) in &loose {
        println!("| {} | {l} / {n} |", name.replace('|', "\\|"));
    }
}

#[test]
fn neighborhood_is_exact() {
    let cases: Vec<(&str, MaskExpr)> = vec![
        ("1-D 17 k5", na(&[5], &[17], &[1], &[false])),
        ("1-D 17 k17", na(&[17], &[17], &[1], &[false])),
        ("1-D 64 k7 d2", na(&[7], &[64], &[2], &[false])),
        ("1-D 200 k9 d3 causal", na(&[9], &[200], &[3], &[true])),
        ("1-D 63 k1", na(&[1], &[63], &[1], &[false])),
        ("1-D 65 k5 d13", na(&[5], &[65], &[13], &[false])),
        ("1-D 200 k3 d66", na(&[3], &[200], &[66], &[false])),
        ("2-D 8x8 k3", na(&[3, 3], &[8, 8], &[1, 1], &[false, false])),
        ("2-D 8x8 k3x5 d2x1", na(&[3, 5], &[8, 8], &[2, 1], &[false, false])),
        ("2-D 10x20 k5x7 causal-rows", na(&[5, 7], &[10, 20], &[1, 1], &[true, false])),
        ("2-D 20x10 k3x3 d3x2 causal", na(&[3, 3], &[20, 10], &[3, 2], &[true, true])),
        ("2-D 13x5 k3x5 d4x1", na(&[3, 5], &[13, 5], &[4, 1], &[false, false])),
        ("2-D 7x9 k7x3 d1x3", na(&[7, 3], &[7, 9], &[1, 3], &[false, false])),
        ("2-D 1x17 k1x5", na(&[1, 5], &[1, 17], &[1, 1], &[false, false])),
        ("3-D 4x4x4 k3", na(&[3, 3, 3], &[4, 4, 4], &[1, 1, 1], &[false, false, false])),
        ("3-D 2x10x10 k1x3x5 d1x2x2 causal-t", na(&[1, 3, 5], &[2, 10, 10], &[1, 2, 2], &[true, false, false])),
        ("3-D 5x13x1 k5x3x1", na(&[5, 3, 1], &[5, 13, 1], &[1, 1, 1], &[false, true, false])),
        ("3-D 4x4x4 k1 d4", na(&[1, 1, 1], &[4, 4, 4], &[4, 4, 4], &[false, false, false])),
        ("3-D 3x5x13 k3x3x5 d1x1x2", na(&[3, 3, 5], &[3, 5, 13], &[1, 1, 2], &[false, true, false])),
    ];
    let mut loose = std::collections::BTreeMap::new();
    for (name, m) in cases {
        let MaskExpr::Neighborhood { grid, .. } = &m else { unreachable!() };
        let n: i64 = grid.iter().product();
        let n = n as usize;
        check_case(&case(name, m.clone(), true), n, n, &mut loose);
        // In combinations (sound).
        check_case(&case(&format!("{name} & causal"), and(m.clone(), MaskExpr::Causal), false), n, n, &mut loose);
        check_case(&case(&format!("{name} | sink(2)"), or(m, sink(2)), false), n, n, &mut loose);
    }
}

#[test]
fn errors_mirror_the_reference() {
    let b = bindings(64, 64);
    let none = MaskData::none();
    let ctx = Ctx { t: 64, s: 64, heads: 1, bindings: &b, data: &none };
    let e = classify(&na(&[3], &[60], &[1], &[false]), &ctx, 16, 16).unwrap_err();
    assert!(e.contains("60 positions"), "{e}");
    let e = classify(&na(&[9], &[64], &[8], &[false]), &ctx, 16, 16).unwrap_err();
    assert!(e.contains("fewer than the kernel"), "{e}");
    let e = classify(&na(&[4], &[64], &[1], &[false]), &ctx, 16, 16).unwrap_err();
    assert!(e.contains("odd"), "{e}");
    let e = classify(&blocks_const(3, 4, 16, 16, 1, 50), &ctx, 16, 16).unwrap_err();
    assert!(e.contains("at least 4×4"), "{e}");
    let e = classify(
        &MaskExpr::Blocks {
            layout: ArrayRef::Const(ConstValue { dtype: DType::Bool, shape: vec![16], data: vec![1.0; 16] }),
            block: [4, 4],
        },
        &ctx,
        16,
        16,
    )
    .unwrap_err();
    assert!(e.contains("2-D"), "{e}");
    let e = classify(&MaskExpr::Document { ids: 0 }, &ctx, 16, 16).unwrap_err();
    assert!(e.contains("operand 0"), "{e}");
    let short = Tensor::new(DType::I32, vec![10], vec![0.0; 10]).unwrap();
    let data = mask_data(std::slice::from_ref(&short));
    let ctx2 = Ctx { data: &data, ..ctx };
    let e = classify(&MaskExpr::Document { ids: 0 }, &ctx2, 16, 16).unwrap_err();
    assert!(e.contains("10 entries"), "{e}");
    assert!(classify(&MaskExpr::Causal, &ctx, 0, 16).is_err());
    // Each of these fails in the reference too.
    for m in [na(&[3], &[60], &[1], &[false]), blocks_const(3, 4, 16, 16, 1, 50)] {
        assert!(materialize(&m, &[], 1, 64, 64, &b, &Limits::default()).is_err());
    }
    // A lone tile of a mask that does not fit is Partial (unknown).
    assert_eq!(classify_tile(&na(&[3], &[60], &[1], &[false]), &ctx, 0, 0..16, 0..16), TileClass::Partial);
    // Empty rectangles and zero sizes.
    assert_eq!(classify_tile(&MaskExpr::Causal, &ctx, 0, 70..80, 0..16), TileClass::Empty);
    let z = Ctx { t: 0, s: 5, ..ctx };
    assert_eq!(classify(&MaskExpr::Causal, &z, 16, 16).unwrap().classes.len(), 0);
}

#[test]
fn lambdas_that_may_fail_are_partial() {
    use ScalarBinary as B;
    let b = bindings(64, 64);
    let none = MaskData::none();
    let ctx = Ctx { t: 64, s: 64, heads: 1, bindings: &b, data: &none };
    // c[q - k] indexes out of range above the diagonal: unguarded, those
    // tiles must be evaluated (Partial) so the kernel fails as the reference does.
    let c = konst(DType::I32, vec![1.0; 64]);
    let m = lam(bin(B::Gt, idx(c, vec![bin(B::Sub, q(), k())]), int(0)));
    assert_eq!(classify_tile(&m, &ctx, 0, 0..16, 32..48), TileClass::Partial);
    assert_eq!(classify_tile(&m, &ctx, 0, 32..48, 0..16), TileClass::Full);
    // Guarded by causal (short-circuit), the upper tiles are Empty.
    assert_eq!(classify_tile(&and(MaskExpr::Causal, m), &ctx, 0, 0..16, 32..48), TileClass::Empty);
    // Unbound symbols, `s` in a mask, type errors: Partial.
    let z = lam(bin(B::Lt, k(), sym("Z")));
    assert_eq!(classify_tile(&z, &ctx, 0, 0..16, 0..16), TileClass::Partial);
    let i = lam(bin(B::Add, k(), int(1)));
    assert_eq!(classify_tile(&i, &ctx, 0, 0..16, 0..16), TileClass::Partial);
}

// ---------------------------------------------------------------------------
// 2. Tightness at 4096

#[test]
fn tightness_table_4096() {
    const N: usize = 4096;
    const TILE: usize = 64;
    let mut rows: Vec<(String, MaskExpr, Vec<Tensor>, usize)> = Vec::new();
    let mut add = |name: &str, m: MaskExpr, ops: Vec<Tensor>, t: usize| rows.push((name.into(), m, ops, t));
    add("causal", MaskExpr::Causal, vec![], N);
    add("causal, T=1024 < S=4096 (decode)", MaskExpr::Causal, vec![], 1024);
    add("local(128, 128)", local(128, 128), vec![], N);
    add("window(256)", window(256), vec![], N);
    add("window(4096) (Mistral)", window(4096), vec![], N);
    add("dilated(64, 4)", dilated(64, 4), vec![], N);
    add("sink(4) | window(512)", or(sink(4), window(512)), vec![], N);
    add("strided(8)", strided(8, 0), vec![], N);
    add("strided(64, offset=3)", strided(64, 3), vec![], N);
    add("neighborhood 1-D k127", na(&[127], &[4096], &[1], &[false]), vec![], N);
    add("neighborhood 2-D 64x64 k7x7", na(&[7, 7], &[64, 64], &[1, 1], &[false, false]), vec![], N);
    add("neighborhood 2-D 64x64 k7x7 d2", na(&[7, 7], &[64, 64], &[2, 2], &[false, false]), vec![], N);
    add("neighborhood 3-D 16^3 k5", na(&[5, 5, 5], &[16, 16, 16], &[1, 1, 1], &[false, false, false]), vec![], N);
    add("blocks 10% @64", blocks_const(64, 64, 64, 64, 99, 10), vec![], N);
    // Four documents with random boundaries.
    let mut rng = SplitMix64::new(4);
    let mut cuts: Vec<usize> = (0..3).map(|_| (rng.next_u64() % N as u64) as usize).collect();
    cuts.sort_unstable();
    let ids: Vec<f64> = (0..N).map(|i| cuts.iter().filter(|&&c| c <= i).count() as f64).collect();
    let ids = Tensor::new(DType::I32, vec![N], ids).unwrap();
    add("document (4 docs)", MaskExpr::Document { ids: 0 }, vec![ids], N);

    println!();
    println!("T = S = {N} (decode row: T = 1024), {TILE}x{TILE} tiles");
    println!();
    println!("| mask | visited | minimum | ratio | full | partial | partial % of visited | density in visited |");
    println!("|---|---|---|---|---|---|---|---|");
    for (name, m, ops, t) in rows {
        let s = N;
        let b = bindings(t, s);
        let data = mask_data(&ops);
        let ctx = Ctx { t: t as i64, s: s as i64, heads: 1, bindings: &b, data: &data };
        let grid = classify(&m, &ctx, TILE, TILE).unwrap();
        let mat = materialize(&m, &ops, 1, t, s, &b, &Limits::default()).unwrap();
        let want = brute(&mat, 1, t, s, TILE, TILE);
        let visible = mat.data.iter().filter(|&&v| v != 0.0).count();
        drop(mat);
        compare(&name, &grid, &want, false);
        let (_, visited, full, partial) = grid.counts();
        let minimum = want.iter().filter(|&&c| c != TileClass::Empty).count();
        let ratio = visited as f64 / minimum.max(1) as f64;
        let density = visible as f64 / (visited * TILE * TILE).max(1) as f64;
        println!(
            "| {} | {visited} | {minimum} | {ratio:.3} | {full} | {partial} | {:.1}% | {:.1}% |",
            name.replace('|', "\\|"),
            100.0 * partial as f64 / visited.max(1) as f64,
            100.0 * density
        );
        assert!(ratio <= 1.1, "{name}: ratio {ratio}");
        // Every row is exact on Empty (built-ins; `|` of built-ins is empty
        // exactly where both are): nothing visited that brute force skips.
        assert_eq!(visited, minimum, "{name}");
        let space = iteration_space(&m, &ctx, TILE, TILE).unwrap();
        assert_eq!(space.counts(), grid.counts(), "{name}");
    }
}

// ---------------------------------------------------------------------------
// 3. document at T = 131072: O(T) work and memory.

#[test]
fn document_131072_is_linear() {
    const N: usize = 131072;
    const TILE: usize = 64;
    let mut rng = SplitMix64::new(77);
    let mut cuts: Vec<usize> = (0..49).map(|_| (rng.next_u64() % N as u64) as usize).collect();
    cuts.sort_unstable();
    let ids: Vec<f64> = (0..N).map(|i| cuts.iter().filter(|&&c| c <= i).count() as f64).collect();
    let ids = Tensor::new(DType::I32, vec![N], ids).unwrap();
    let b = bindings(N, N);
    let data = mask_data(std::slice::from_ref(&ids));
    let ctx = Ctx { t: N as i64, s: N as i64, heads: 1, bindings: &b, data: &data };
    let m = MaskExpr::Document { ids: 0 };
    let tiles = (N / TILE) * (N / TILE);

    let (space, bytes) = peak_bytes(|| iteration_space(&m, &ctx, TILE, TILE).unwrap());
    // The runs plus O(T) summaries; T×S would be 1.7e10 elements, the tile
    // grid alone 4 MiB.
    println!("iteration_space: peak {bytes} bytes, {} tiles examined one at a time", space.tiles_examined);
    assert!(bytes < 64 * N, "iteration_space allocated {bytes} bytes");
    assert_eq!(space.tiles_examined, 0, "sorted ids: every run comes from binary search");

    let (grid, bytes) = peak_bytes(|| classify(&m, &ctx, TILE, TILE).unwrap());
    println!("classify: peak {bytes} bytes for {tiles} tiles");
    assert!(bytes <= tiles + 64 * N, "classify allocated {bytes} bytes");
    assert_eq!(space.to_grid(), grid);

    // Spot checks against the reference: the tiles at every boundary and random ones.
    let me = MaskEval::new(&m, &[&ids], N, N, &b).unwrap();
    let mut tiles_to_check: Vec<(usize, usize)> = Vec::new();
    for &c in &cuts {
        for &o in &[0usize, TILE] {
            let qi = (c.saturating_sub(o) / TILE).min(N / TILE - 1);
            for kd in 0..3usize {
                tiles_to_check.push((qi, (qi + kd).saturating_sub(1).min(N / TILE - 1)));
            }
        }
    }
    for _ in 0..300 {
        let qi = (rng.next_u64() % (N / TILE) as u64) as usize;
        let ki = if rng.next_u64().is_multiple_of(2) { qi } else { (rng.next_u64() % (N / TILE) as u64) as usize };
        tiles_to_check.push((qi, ki));
    }
    for (qi, ki) in tiles_to_check {
        let (mut any, mut all) = (false, true);
        for qq in qi * TILE..(qi + 1) * TILE {
            for kk in ki * TILE..(ki + 1) * TILE {
                let v = me.holds(qq, kk, 0).unwrap();
                any |= v;
                all &= v;
            }
        }
        let want = if !any {
            TileClass::Empty
        } else if all {
            TileClass::Full
        } else {
            TileClass::Partial
        };
        assert_eq!(grid.get(0, qi, ki), want, "tile ({qi}, {ki})");
    }
    let (total, visited, full, partial) = grid.counts();
    println!("document T={N}: {total} tiles, {visited} visited ({full} full, {partial} partial)");
}
