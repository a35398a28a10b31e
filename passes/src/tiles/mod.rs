//! Tile classification: which `tile_q × tile_k` tiles of a masked `T×S`
//! score matrix hold nothing (**Empty**, skipped), everything (**Full**, no
//! mask evaluation needed) or some of both (**Partial**, evaluate the mask).
//!
//! The classes come from the mask *formula*, never from evaluating it at the
//! `T·S` points (as FlexAttention's `create_block_mask` does). A tile is the
//! rectangle `q ∈ [q0, q1] × k ∈ [k0, k1]` (`h` fixed); over it:
//!
//! * **Bands** — `causal` (`k - q <= S - T`), `local` (`-L <= k - q <= R`),
//!   `window` (`-(w-1) <= k - q <= min(S - T, 0)`) and `sink` (`k <= n - 1`)
//!   constrain one quantity `v = k - q` (or `k`). Over a rectangle `k - q`
//!   takes *every* value of `[k0 - q1, k1 - q0]`, so the tile is Full iff
//!   that interval lies inside the band and Empty iff it misses it: exact,
//!   `O(1)`.
//! * **Congruences** — `dilated(w, d)` is a predicate on `δ = q - k` alone
//!   (`T - S <= δ <= w·d - 1` and `δ ≡ 0 mod d`); `δ` takes every value of
//!   `[q0 - k1, q1 - k0]`, so the tile is Empty iff the clipped interval
//!   holds no multiple of `d`, and Full iff the interval lies inside the
//!   band and is a single value or `d = 1`. `strided` is the same on
//!   `k + offset`. Exact, `O(1)`.
//! * **Neighborhood** (NATTEN, 1-D/2-D/3-D) — a flat index range is a union
//!   of at most `2n - 1` coordinate boxes; a box pair is a product over axes,
//!   so it is Empty iff some axis has no visible pair and Full iff every
//!   axis is all visible; per axis, each dilation group's windows
//!   `[clamp(i - K/2, 0, Lg - K), … + K - 1]` are monotone, so their union
//!   over a group-position interval is one interval. Exact; see
//!   `neighborhood.rs`.
//! * **`blocks(layout, [bq, bk])`** — the layout cells the tile covers (all
//!   of which it meets): Empty iff none is set, Full iff all are. Exact;
//!   `O(1)` per tile from 2-D prefix counts (`O(blocks)` to build), or
//!   `O(cells covered)` for a lone tile.
//! * **`document(ids)`** — per q-tile and per k-tile the smallest and
//!   largest id (`O(T + S)` in all). Empty iff the two id ranges are
//!   disjoint, Full iff both tiles hold one and the same id. Exact whenever
//!   each tile's ids are non-decreasing (packed sequences): a sorted run
//!   holds every id of the sequence between its min and max, so overlapping
//!   ranges share an id. With unsorted ids it is sound but may say Partial
//!   for a tile that is Empty.
//! * **Index lambdas** — abstract interpretation (`interval.rs`): every value
//!   is an interval (integers and floats) or a (may be true, may be false)
//!   pair (booleans), with `q`, `k` ranging over the tile. Sound for `+ - *`
//!   (corner products), floor `/` and `%` (exact when the dividend does not
//!   wrap), `min`/`max`/`abs`, comparisons, `& | !`, `where`, `Sym`, and
//!   indexing (min/max over the covered elements). A lambda that may *fail*
//!   somewhere in the tile (an index out of range, an unbound symbol, a type
//!   error) is Partial, so the kernel evaluates it and fails as the
//!   reference does.
//! * **Combinators** — `a & b`: Empty if either is, Full if both are;
//!   `a | b`: the dual; `!a` swaps Empty and Full. `&` and `|` evaluate `b`
//!   only where `a` does not decide (as the reference short-circuits).
//!
//! # Known looseness
//!
//! Everything above is *sound*: Empty only if no point of the tile holds,
//! Full only if every point holds. It is exact for every built-in mask
//! (`document`: with non-decreasing ids), and for `&`/`|` of two bands on
//! the same quantity (`causal & local(5, 0)`, `sink(3) | sink(9)`), which
//! fuse into one band. It can say Partial where the truth is Empty or Full
//! for:
//! * other `a & b` whose Partial parts do not meet (`causal & !causal`), and
//!   `a | b` whose Partial parts cover the tile together
//!   (`local(3,3) | !local(3,3)`). `a | b` is still exact on Empty, `a & b`
//!   on Full, when `a` and `b` are;
//! * lambdas, where intervals forget correlations (`k % 0 == k` and
//!   `q - q` see two independent intervals), congruences are not tracked
//!   (`(q + 7) % (k + 1) == 0`; `k % 3 == 0` on tiles at least 3 wide is
//!   Partial, which is exact), float functions are widened by a few ulps,
//!   and a lambda that may fail anywhere in the tile is Partial on purpose;
//! * `document` with unsorted ids (id ranges can overlap without a shared
//!   id).
//!
//! # Cost
//!
//! [`classify`] and [`iteration_space`] work q-tile by q-tile on *runs* of
//! k-tiles ([`Runs`]), never visiting the tiles a run decides at once:
//! bands (`causal`, `local`, `window`, `sink`) in closed form (`O(1)` per
//! q-tile), `document` with sorted ids by binary search over the k-tile
//! summaries (`O(log(S / tile_k))`); `dilated` classifies only the tiles
//! of its band, `blocks` only the k-tiles under layout columns with a set
//! cell; `a & b` evaluates `b` only where `a` is not Empty, `a | b` only
//! where `a` is not Full; the rest (lambdas, `neighborhood`, `strided`,
//! unsorted `document`) classify tile by tile, each in `O(1)` (lambdas: in
//! the size of the expression; `neighborhood`: `O(min(d, tile))` per axis
//! and box pair). Nothing of size `T × S` is ever allocated: `iteration_space`
//! holds the runs, `classify` one byte per tile, plus `O(T / tile + S / tile)`
//! summaries.

mod interval;
mod neighborhood;
mod plan;

use std::ops::Range;

use tdl_ir::{Bindings, DType, MaskExpr};

use plan::Plan;

/// The class of one tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TileClass {
    /// No point of the tile holds: the tile is skipped.
    Empty,
    /// Some points hold, maybe not all: the mask is evaluated in the tile.
    Partial,
    /// Every point holds: the tile is computed without the mask.
    Full,
}

impl TileClass {
    /// The class of `a & b` from the classes of `a` and `b`.
    pub fn and(self, other: TileClass) -> TileClass {
        use TileClass::*;
        match (self, other) {
            (Empty, _) | (_, Empty) => Empty,
            (Full, Full) => Full,
            _ => Partial,
        }
    }

    /// The class of `a | b`.
    pub fn or(self, other: TileClass) -> TileClass {
        use TileClass::*;
        match (self, other) {
            (Full, _) | (_, Full) => Full,
            (Empty, Empty) => Empty,
            _ => Partial,
        }
    }

    /// The class of `!a`.
    #[allow(clippy::should_implement_trait)]
    pub fn not(self) -> TileClass {
        match self {
            TileClass::Empty => TileClass::Full,
            TileClass::Full => TileClass::Empty,
            TileClass::Partial => TileClass::Partial,
        }
    }
}

/// One tensor operand of the mask's node, as the reference's `Tensor` holds
/// it: row-major values as `f64`.
#[derive(Clone, Debug)]
pub struct OperandData<'a> {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: &'a [f64],
}

impl OperandData<'_> {
    /// The operand as the lambda evaluator reads it.
    pub fn view(&self) -> tdl_ir::eval::ArrayView<'_> {
        tdl_ir::eval::ArrayView { dtype: self.dtype, shape: &self.shape, data: self.data }
    }
}

/// The operands a data-dependent mask reads (by operand position).
#[derive(Clone, Debug, Default)]
pub struct MaskData<'a> {
    pub operands: Vec<OperandData<'a>>,
}

impl MaskData<'_> {
    /// No operands (static masks).
    pub fn none() -> MaskData<'static> {
        MaskData { operands: Vec::new() }
    }
}

/// Where a mask is used: `t` queries, `s` keys, `heads` heads, the bound
/// dimension symbols (read by `Sym` in lambdas) and the operands.
#[derive(Clone, Copy, Debug)]
pub struct Ctx<'a> {
    pub t: i64,
    pub s: i64,
    pub heads: usize,
    pub bindings: &'a Bindings,
    pub data: &'a MaskData<'a>,
}

/// The class of every tile, `[head][q-tile][k-tile]` row-major. The last
/// tile of a row or column is cut at `T` / `S`.
#[derive(Clone, Debug, PartialEq)]
pub struct TileGrid {
    pub tile_q: usize,
    pub tile_k: usize,
    pub t: usize,
    pub s: usize,
    pub heads: usize,
    pub classes: Vec<TileClass>,
}

impl TileGrid {
    /// Number of q-tiles.
    pub fn q_tiles(&self) -> usize {
        self.t.div_ceil(self.tile_q)
    }

    /// Number of k-tiles.
    pub fn k_tiles(&self) -> usize {
        self.s.div_ceil(self.tile_k)
    }

    /// `(total, visited = partial + full, full, partial)` over all heads.
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let (mut full, mut partial) = (0, 0);
        for c in &self.classes {
            match c {
                TileClass::Full => full += 1,
                TileClass::Partial => partial += 1,
                TileClass::Empty => {}
            }
        }
        (self.classes.len(), full + partial, full, partial)
    }

    /// The class of tile `(qi, ki)` of head `h`.
    pub fn get(&self, h: usize, qi: usize, ki: usize) -> TileClass {
        self.classes[(h * self.q_tiles() + qi) * self.k_tiles() + ki]
    }
}

/// The visited k-tiles of one q-tile: sorted, disjoint ranges of k-tile
/// indices, each `Partial` or `Full` (the gaps are Empty tiles); adjacent
/// runs of one class are merged.
pub type Runs = Vec<(Range<usize>, TileClass)>;

/// The block-sparse iteration space: for each head and q-tile, the runs of
/// visited k-tiles in increasing order, each `Full` or `Partial` (the gaps
/// are Empty tiles).
#[derive(Clone, Debug, PartialEq)]
pub struct IterSpace {
    pub tile_q: usize,
    pub tile_k: usize,
    pub t: usize,
    pub s: usize,
    pub per_head: Vec<Vec<Runs>>,
    /// How many tiles were classified one at a time while building it (the
    /// others were decided a range at a time). Per distinct head computed.
    pub tiles_examined: u64,
}

impl IterSpace {
    /// `(total, visited, full, partial)` over all heads, as [`TileGrid::counts`].
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let total = self.per_head.len() * self.t.div_ceil(self.tile_q) * self.s.div_ceil(self.tile_k);
        let (mut full, mut partial) = (0, 0);
        for runs in self.per_head.iter().flatten().flatten() {
            match runs.1 {
                TileClass::Full => full += runs.0.len(),
                _ => partial += runs.0.len(),
            }
        }
        (total, full + partial, full, partial)
    }

    /// The same classes as a dense [`TileGrid`].
    pub fn to_grid(&self) -> TileGrid {
        let (nq, nk) = (self.t.div_ceil(self.tile_q), self.s.div_ceil(self.tile_k));
        let mut classes = vec![TileClass::Empty; self.per_head.len() * nq * nk];
        for (h, rows) in self.per_head.iter().enumerate() {
            for (qi, runs) in rows.iter().enumerate() {
                let base = (h * nq + qi) * nk;
                for (r, c) in runs {
                    classes[base + r.start..base + r.end].fill(*c);
                }
            }
        }
        TileGrid { tile_q: self.tile_q, tile_k: self.tile_k, t: self.t, s: self.s, heads: self.per_head.len(), classes }
    }
}

/// The class of one tile: queries `q`, keys `k` (half-open, clipped to
/// `0..T` and `0..S`), head `h`. A tile with no point is Empty; a mask that
/// does not fit `ctx` (see [`classify`]'s errors) is Partial.
pub fn classify_tile(m: &MaskExpr, ctx: &Ctx<'_>, h: usize, q: Range<i64>, k: Range<i64>) -> TileClass {
    let (q0, q1) = (q.start.max(0), q.end.min(ctx.t));
    let (k0, k1) = (k.start.max(0), k.end.min(ctx.s));
    if q0 >= q1 || k0 >= k1 {
        return TileClass::Empty;
    }
    match Plan::new(m, ctx, None) {
        Ok(p) => p.tile_class(&p.root, h, (q0, q1 - 1), (k0, k1 - 1)),
        Err(_) => TileClass::Partial,
    }
}

fn check(ctx: &Ctx<'_>, tile_q: usize, tile_k: usize) -> Result<(usize, usize), String> {
    if tile_q == 0 || tile_k == 0 {
        return Err(format!("tile sizes must be positive, found {tile_q}×{tile_k}"));
    }
    let (Ok(t), Ok(s)) = (usize::try_from(ctx.t), usize::try_from(ctx.s)) else {
        return Err(format!("mask sizes {}×{} must not be negative", ctx.t, ctx.s));
    };
    let tiles = ctx
        .heads
        .checked_mul(t.div_ceil(tile_q))
        .and_then(|x| x.checked_mul(s.div_ceil(tile_k)))
        .ok_or_else(|| "the tile grid has more tiles than fit in memory".to_string())?;
    let _ = tiles;
    Ok((t, s))
}

/// The runs of every head and q-tile (heads the mask does not depend on
/// share the runs of head 0).
fn all_runs(plan: &Plan<'_>, heads: usize) -> Vec<Vec<Runs>> {
    let distinct = if plan.uses_h { heads } else { heads.min(1) };
    let mut per_head: Vec<Vec<_>> =
        (0..distinct).map(|h| (0..plan.nq()).map(|qi| plan.row_runs(h, qi)).collect()).collect();
    while per_head.len() < heads {
        per_head.push(per_head[0].clone());
    }
    per_head
}

/// Classifies every tile of `m` used as `ctx` says, with `tile_q × tile_k`
/// tiles.
///
/// Errors are the reference's compile-time errors (`MaskEval::new`): a
/// neighborhood grid whose product is not `T` and `S` (or bad kernels,
/// dilations), a block layout that is not 2-D or smaller than
/// `ceil(T/bq) × ceil(S/bk)`, document ids that are not `i32[≥ max(T, S)]`,
/// a missing operand; plus non-positive tile sizes.
pub fn classify(m: &MaskExpr, ctx: &Ctx<'_>, tile_q: usize, tile_k: usize) -> Result<TileGrid, String> {
    let (t, s) = check(ctx, tile_q, tile_k)?;
    let plan = Plan::new(m, ctx, Some((tile_q, tile_k)))?;
    let (nq, nk) = (plan.nq(), plan.nk());
    let mut classes = vec![TileClass::Empty; ctx.heads * nq * nk];
    let distinct = if plan.uses_h { ctx.heads } else { ctx.heads.min(1) };
    for h in 0..distinct {
        for qi in 0..nq {
            let base = (h * nq + qi) * nk;
            for (r, c) in plan.row_runs(h, qi) {
                classes[base + r.start..base + r.end].fill(c);
            }
        }
    }
    if distinct == 1 && nq * nk > 0 {
        let (head, rest) = classes.split_at_mut(nq * nk);
        for chunk in rest.chunks_mut(nq * nk) {
            chunk.copy_from_slice(head);
        }
    }
    Ok(TileGrid { tile_q, tile_k, t, s, heads: ctx.heads, classes })
}

/// The block-sparse iteration space of `m`: per head and q-tile, the runs
/// of visited k-tiles, built range by range where the mask's structure
/// allows (see the module docs). Errors as [`classify`].
pub fn iteration_space(m: &MaskExpr, ctx: &Ctx<'_>, tile_q: usize, tile_k: usize) -> Result<IterSpace, String> {
    let (t, s) = check(ctx, tile_q, tile_k)?;
    let plan = Plan::new(m, ctx, Some((tile_q, tile_k)))?;
    let per_head = all_runs(&plan, ctx.heads);
    Ok(IterSpace { tile_q, tile_k, t, s, per_head, tiles_examined: plan.examined.get() })
}
