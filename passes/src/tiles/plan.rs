//! A mask checked against its use (`T`, `S`, operands) and compiled into a
//! tree of classifiers; see the module docs of [`super`] for the method.

use std::cell::Cell;
use std::ops::Range;

use tdl_ir::{ArrayRef, Bindings, DType, LambdaVar, MaskExpr, ScalarExpr};

use super::interval::{classify_lambda, Env};
use super::neighborhood::{self, NaAxis};
use super::{Ctx, MaskData, TileClass};

/// "Unbounded" for band limits; far from overflow in every sum below.
const INF: i128 = 1 << 100;

pub(crate) use super::Runs;

/// Per-tile document-id summary: the smallest and largest non-NaN id
/// (`lo > hi` when there is none) and whether a NaN occurs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IdSum {
    lo: f64,
    hi: f64,
    nan: bool,
}

impl IdSum {
    fn of(ids: &[f64]) -> IdSum {
        let mut s = IdSum { lo: f64::INFINITY, hi: f64::NEG_INFINITY, nan: false };
        for &v in ids {
            if v.is_nan() {
                s.nan = true;
            } else {
                s.lo = s.lo.min(v);
                s.hi = s.hi.max(v);
            }
        }
        s
    }

    fn single(&self) -> bool {
        !self.nan && self.lo == self.hi
    }

    fn empty(&self) -> bool {
        self.lo > self.hi
    }

    /// `ids[q] == ids[k]`: empty iff the id ranges are disjoint (exact when
    /// both tiles' ids are sorted runs; see the module docs), full iff both
    /// tiles hold one and the same id.
    fn class(q: &IdSum, k: &IdSum) -> TileClass {
        if q.empty() || k.empty() || q.hi < k.lo || k.hi < q.lo {
            TileClass::Empty
        } else if q.single() && k.single() && q.lo == k.lo {
            TileClass::Full
        } else {
            TileClass::Partial
        }
    }
}

#[derive(Debug)]
pub(crate) struct Doc<'p> {
    ids: &'p [f64],
    /// Per q-tile and per k-tile summaries (prepared plans only).
    qsum: Vec<IdSum>,
    ksum: Vec<IdSum>,
    /// The k-tile summaries have non-decreasing `lo` and `hi`, no NaN and
    /// no empty tile: the visited k-tiles of a q-tile are found by binary
    /// search.
    ksorted: bool,
    /// The q-tile summaries are sorted too: the four search results only
    /// grow with the q-tile, so a sweep in order resumes from the last ones.
    qsorted: bool,
    /// `(q-tile + 1, results)` of the last search (0: none).
    hint: Cell<(usize, [usize; 4])>,
}

/// The first index `j >= start` of `xs` where the monotone `pred` holds,
/// given that none before `start` does: a few linear steps (a sweep moves
/// little per q-tile), then binary search.
fn resume<T>(xs: &[T], start: usize, pred: impl Fn(&T) -> bool) -> usize {
    let mut j = start.min(xs.len());
    for _ in 0..4 {
        if j == xs.len() || pred(&xs[j]) {
            return j;
        }
        j += 1;
    }
    j + xs[j..].partition_point(|x| !pred(x))
}

#[derive(Debug)]
pub(crate) struct Blocks<'p> {
    data: &'p [f64],
    cols: usize,
    bq: i64,
    bk: i64,
    /// Needed layout cols: `ceil(S / bk)`.
    nc: usize,
    /// `(nr + 1) × (nc + 1)` inclusive prefix counts of set cells (prepared
    /// plans only).
    prefix: Vec<u32>,
}

impl Blocks<'_> {
    fn cell(&self, r: usize, c: usize) -> bool {
        self.data.get(r * self.cols + c).is_some_and(|&v| v != 0.0)
    }

    /// Set cells in rows `r0..=r1`, cols `c0..=c1`.
    fn count(&self, r0: usize, r1: usize, c0: usize, c1: usize) -> u64 {
        if self.prefix.is_empty() {
            let mut n = 0;
            for r in r0..=r1 {
                for c in c0..=c1 {
                    n += self.cell(r, c) as u64;
                }
            }
            return n;
        }
        let w = self.nc + 1;
        let p = |r: usize, c: usize| self.prefix[r * w + c] as i64;
        (p(r1 + 1, c1 + 1) - p(r0, c1 + 1) - p(r1 + 1, c0) + p(r0, c0)) as u64
    }
}

#[derive(Debug)]
pub(crate) enum Node<'p> {
    /// `lo <= k - q <= hi` (`causal`, `local`, `window`) or, without `q`,
    /// `lo <= k <= hi` (`sink`).
    Band {
        with_q: bool,
        lo: i128,
        hi: i128,
    },
    /// `lo <= q - k <= hi` and `(q - k) ≡ 0 (mod m)` (`m == 0`: `q - k == 0`).
    Dilated {
        lo: i128,
        hi: i128,
        m: i128,
    },
    /// `k + off ≡ 0 (mod m)` (`m == 0`: `k + off == 0`).
    Strided {
        off: i128,
        m: i128,
    },
    Neighborhood {
        axes: Vec<NaAxis>,
        dims: Vec<i64>,
    },
    Blocks(Blocks<'p>),
    Document(Doc<'p>),
    Lambda(&'p ScalarExpr),
    And(Box<Node<'p>>, Box<Node<'p>>),
    Or(Box<Node<'p>>, Box<Node<'p>>),
    Not(Box<Node<'p>>),
}

/// A compiled mask. `tq`/`tk` are the tile sizes it was prepared for (0 when
/// it classifies arbitrary ranges).
pub(crate) struct Plan<'p> {
    pub t: i64,
    pub s: i64,
    bindings: &'p Bindings,
    data: &'p MaskData<'p>,
    pub root: Node<'p>,
    pub tq: usize,
    pub tk: usize,
    pub uses_h: bool,
    /// Tiles classified one at a time (the others were decided by ranges).
    pub examined: Cell<u64>,
}

fn uses_h(e: &ScalarExpr) -> bool {
    match e {
        ScalarExpr::Var(v) => *v == LambdaVar::H,
        ScalarExpr::Int(_) | ScalarExpr::Float(_) | ScalarExpr::Bool(_) | ScalarExpr::Sym(_) => false,
        ScalarExpr::Index { indices, .. } => indices.iter().any(uses_h),
        ScalarExpr::Unary(_, a) => uses_h(a),
        ScalarExpr::Binary(_, a, b) => uses_h(a) || uses_h(b),
        ScalarExpr::Select(c, a, b) => uses_h(c) || uses_h(a) || uses_h(b),
    }
}

fn node_uses_h(n: &Node) -> bool {
    match n {
        Node::Lambda(e) => uses_h(e),
        Node::And(a, b) | Node::Or(a, b) => node_uses_h(a) || node_uses_h(b),
        Node::Not(a) => node_uses_h(a),
        _ => false,
    }
}

/// Tile `i` of size `size` over `0..n`, inclusive.
fn tile(i: usize, size: usize, n: i64) -> (i64, i64) {
    let lo = (i * size) as i64;
    (lo, (lo + size as i64).min(n) - 1)
}

/// The first `j` in `0..n` where the monotone (false…true) `pred` holds.
fn first_true(n: usize, pred: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

/// Whether `ids` is non-decreasing (false on NaN), in vectorisable blocks.
fn non_decreasing(ids: &[f64]) -> bool {
    let n = ids.len();
    let mut i = 0;
    while i + 1 < n {
        let end = (i + 4096).min(n - 1);
        let ok = ids[i..end].iter().zip(&ids[i + 1..end + 1]).fold(true, |acc, (x, y)| acc & (x <= y));
        if !ok {
            return false;
        }
        i = end;
    }
    true
}

/// Whether `lo..=hi` holds a multiple of `m` (`m == 0`: holds `0`).
fn has_multiple(lo: i128, hi: i128, m: i128) -> bool {
    if lo > hi {
        return false;
    }
    if m == 0 {
        return lo <= 0 && 0 <= hi;
    }
    let r = lo.rem_euclid(m);
    let first = if r == 0 { lo } else { lo + (m - r) };
    first <= hi
}

impl<'p> Plan<'p> {
    /// Checks `m` against `ctx` (the reference's compile-time errors) and
    /// compiles it; with `tiles`, prepares per-tile summaries.
    pub fn new(m: &'p MaskExpr, ctx: &'p Ctx<'p>, tiles: Option<(usize, usize)>) -> Result<Plan<'p>, String> {
        if ctx.t < 0 || ctx.s < 0 {
            return Err(format!("mask sizes {}×{} must not be negative", ctx.t, ctx.s));
        }
        let (tq, tk) = tiles.unwrap_or((0, 0));
        let mut plan = Plan {
            t: ctx.t,
            s: ctx.s,
            bindings: ctx.bindings,
            data: ctx.data,
            root: Node::Band { with_q: false, lo: 0, hi: 0 },
            tq,
            tk,
            uses_h: false,
            examined: Cell::new(0),
        };
        plan.root = plan.compile(m)?;
        plan.uses_h = node_uses_h(&plan.root);
        Ok(plan)
    }

    fn prepared(&self) -> bool {
        self.tq > 0
    }

    pub fn nq(&self) -> usize {
        (self.t as usize).div_ceil(self.tq)
    }

    pub fn nk(&self) -> usize {
        (self.s as usize).div_ceil(self.tk)
    }

    fn compile(&self, m: &'p MaskExpr) -> Result<Node<'p>, String> {
        let (t, s) = (self.t as i128, self.s as i128);
        Ok(match m {
            MaskExpr::Causal => Node::Band { with_q: true, lo: -INF, hi: s - t },
            MaskExpr::Local { left, right } => Node::Band { with_q: true, lo: -(*left as i128), hi: *right as i128 },
            MaskExpr::Window { w } => {
                Node::Band { with_q: true, lo: -(w.saturating_sub(1) as i128), hi: (s - t).min(0) }
            }
            MaskExpr::Dilated { w, d } => {
                Node::Dilated { lo: t - s, hi: (*w as i128) * (*d as i128) - 1, m: (*d as i128).abs() }
            }
            MaskExpr::Sink { n } => Node::Band { with_q: false, lo: -INF, hi: *n as i128 - 1 },
            MaskExpr::Strided { stride, offset } => Node::Strided { off: *offset as i128, m: (*stride as i128).abs() },
            MaskExpr::Neighborhood { kernel, grid, dilation, causal } => {
                self.compile_neighborhood(kernel, grid, dilation, causal)?
            }
            MaskExpr::Blocks { layout, block } => self.compile_blocks(layout, *block)?,
            MaskExpr::Document { ids } => self.compile_document(*ids)?,
            MaskExpr::Lambda(e) => Node::Lambda(e),
            // Two bands on the same quantity fuse into one (exact): their
            // intersection, or their union when it is one interval.
            MaskExpr::And(a, b) => match (self.compile(a)?, self.compile(b)?) {
                (Node::Band { with_q, lo, hi }, Node::Band { with_q: w2, lo: l2, hi: h2 }) if with_q == w2 => {
                    Node::Band { with_q, lo: lo.max(l2), hi: hi.min(h2) }
                }
                (x, y) => Node::And(Box::new(x), Box::new(y)),
            },
            MaskExpr::Or(a, b) => match (self.compile(a)?, self.compile(b)?) {
                (Node::Band { with_q, lo, hi }, Node::Band { with_q: w2, lo: l2, hi: h2 })
                    if with_q == w2 && (lo > hi || l2 > h2 || lo.max(l2) <= hi.min(h2) + 1) =>
                {
                    if lo > hi {
                        Node::Band { with_q, lo: l2, hi: h2 }
                    } else if l2 > h2 {
                        Node::Band { with_q, lo, hi }
                    } else {
                        Node::Band { with_q, lo: lo.min(l2), hi: hi.max(h2) }
                    }
                }
                (x, y) => Node::Or(Box::new(x), Box::new(y)),
            },
            MaskExpr::Not(a) => Node::Not(Box::new(self.compile(a)?)),
        })
    }

    fn operand(&self, i: usize, what: &str) -> Result<&'p super::OperandData<'p>, String> {
        let data: &'p MaskData<'p> = self.data;
        data.operands.get(i).ok_or_else(|| {
            format!("{what} reads mask operand {i}, but the mask has only {} operand(s)", data.operands.len())
        })
    }

    fn compile_neighborhood(
        &self,
        kernel: &[i64],
        grid: &[i64],
        dilation: &[i64],
        causal: &[bool],
    ) -> Result<Node<'p>, String> {
        tdl_ir::mask::check_neighborhood(kernel, grid, dilation, causal, self.t, self.s)?;
        let axes = (0..grid.len())
            .map(|ax| NaAxis { len: grid[ax], kernel: kernel[ax], dilation: dilation[ax], causal: causal[ax] })
            .collect();
        Ok(Node::Neighborhood { axes, dims: grid.to_vec() })
    }

    fn compile_blocks(&self, layout: &'p ArrayRef, block: [i64; 2]) -> Result<Node<'p>, String> {
        let (rows, cols, data): (usize, usize, &'p [f64]) = match layout {
            ArrayRef::Const(c) => {
                if c.shape.len() != 2 || c.data.len() != c.shape[0].saturating_mul(c.shape[1]) {
                    return Err(format!(
                        "a block layout must be a 2-D array, found shape {:?} with {} values",
                        c.shape,
                        c.data.len()
                    ));
                }
                (c.shape[0], c.shape[1], c.data.as_slice())
            }
            ArrayRef::Operand(i) => {
                let x = self.operand(*i, "blocks")?;
                if x.shape.len() != 2 {
                    return Err(format!("a block layout must be a 2-D tensor, found shape {:?}", x.shape));
                }
                if x.data.len() != x.shape[0].saturating_mul(x.shape[1]) {
                    return Err(format!("a block layout of shape {:?} holds {} values", x.shape, x.data.len()));
                }
                (x.shape[0], x.shape[1], x.data)
            }
        };
        let [bq, bk] = block;
        if bq <= 0 || bk <= 0 {
            return Err(format!("block sizes must be positive, found [{bq}, {bk}]"));
        }
        let (t, s) = (self.t as usize, self.s as usize);
        let (nr, nc) = (t.div_ceil(bq as usize), s.div_ceil(bk as usize));
        if rows < nr || cols < nc {
            return Err(format!(
                "block layout is {rows}×{cols}, but {t} queries × {s} keys in blocks of [{bq}, {bk}] need at least {nr}×{nc}"
            ));
        }
        let mut b = Blocks { data, cols, bq, bk, nc, prefix: Vec::new() };
        if self.prepared() {
            let w = nc + 1;
            let mut p = vec![0u32; (nr + 1) * w];
            for r in 0..nr {
                let mut row = 0u32;
                for c in 0..nc {
                    row += b.cell(r, c) as u32;
                    p[(r + 1) * w + c + 1] = p[r * w + c + 1] + row;
                }
            }
            b.prefix = p;
        }
        Ok(Node::Blocks(b))
    }

    fn compile_document(&self, i: usize) -> Result<Node<'p>, String> {
        let x = self.operand(i, "document")?;
        if x.shape.len() != 1 || x.dtype != DType::I32 {
            return Err(format!("document ids must be an i32[T] tensor, found {:?}{:?}", x.dtype, x.shape));
        }
        let (t, s) = (self.t as usize, self.s as usize);
        if x.data.len() < t || x.data.len() < s {
            return Err(format!(
                "document ids have {} entries, but the scores have {t} queries and {s} keys",
                x.data.len()
            ));
        }
        let ids: &'p [f64] = x.data;
        let mut doc = Doc {
            ids,
            qsum: Vec::new(),
            ksum: Vec::new(),
            ksorted: false,
            qsorted: false,
            hint: Cell::new((0, [0; 4])),
        };
        if self.prepared() {
            // O(T + S): one pass over the ids (a vectorisable sortedness
            // check; sorted ids need only each tile's first and last id).
            let sorted = non_decreasing(&ids[..t.max(s)]);
            let sums = |n: usize, size: usize| -> Vec<IdSum> {
                if sorted {
                    ids[..n].chunks(size).map(|c| IdSum { lo: c[0], hi: c[c.len() - 1], nan: false }).collect()
                } else {
                    ids[..n].chunks(size).map(IdSum::of).collect()
                }
            };
            doc.qsum = sums(t, self.tq);
            doc.ksum = if (t, self.tq) == (s, self.tk) { doc.qsum.clone() } else { sums(s, self.tk) };
            let monotone = |v: &[IdSum]| {
                v.iter().all(|x| !x.nan && !x.empty()) && v.windows(2).all(|w| w[0].lo <= w[1].lo && w[0].hi <= w[1].hi)
            };
            doc.ksorted = monotone(&doc.ksum);
            doc.qsorted = monotone(&doc.qsum);
        }
        Ok(Node::Document(doc))
    }

    /// The class of the tile `q × k` (inclusive, non-empty, in range).
    pub fn tile_class(&self, n: &Node<'p>, h: usize, q: (i64, i64), k: (i64, i64)) -> TileClass {
        use TileClass::*;
        match n {
            Node::Band { with_q, lo, hi } => {
                let (q0, q1) = if *with_q { (q.0 as i128, q.1 as i128) } else { (0, 0) };
                let (vlo, vhi) = (k.0 as i128 - q1, k.1 as i128 - q0);
                if lo > hi {
                    Empty
                } else if vlo >= *lo && vhi <= *hi {
                    Full
                } else if vhi < *lo || vlo > *hi {
                    Empty
                } else {
                    Partial
                }
            }
            Node::Dilated { lo, hi, m } => {
                // q - k takes every value of [q0 - k1, q1 - k0].
                let (dlo, dhi) = (q.0 as i128 - k.1 as i128, q.1 as i128 - k.0 as i128);
                if !has_multiple(dlo.max(*lo), dhi.min(*hi), *m) {
                    Empty
                } else if dlo >= *lo && dhi <= *hi && (*m == 1 || dlo == dhi) {
                    Full
                } else {
                    Partial
                }
            }
            Node::Strided { off, m } => {
                let (lo, hi) = (k.0 as i128 + off, k.1 as i128 + off);
                if !has_multiple(lo, hi, *m) {
                    Empty
                } else if *m == 1 || lo == hi {
                    Full
                } else {
                    Partial
                }
            }
            Node::Neighborhood { axes, dims } => match neighborhood::classify(axes, dims, q, k) {
                (false, _) => Empty,
                (true, true) => Full,
                (true, false) => Partial,
            },
            Node::Blocks(b) => {
                let (r0, r1) = ((q.0 / b.bq) as usize, (q.1 / b.bq) as usize);
                let (c0, c1) = ((k.0 / b.bk) as usize, (k.1 / b.bk) as usize);
                let set = b.count(r0, r1, c0, c1);
                if set == 0 {
                    Empty
                } else if set == ((r1 - r0 + 1) * (c1 - c0 + 1)) as u64 {
                    Full
                } else {
                    Partial
                }
            }
            Node::Document(d) => {
                let sum = |r: (i64, i64), size: usize, n: i64, pre: &[IdSum]| {
                    if size > 0 && (r.0 as usize).is_multiple_of(size) && tile(r.0 as usize / size, size, n).1 == r.1 {
                        pre[r.0 as usize / size]
                    } else {
                        IdSum::of(&d.ids[r.0 as usize..=r.1 as usize])
                    }
                };
                IdSum::class(&sum(q, self.tq, self.t, &d.qsum), &sum(k, self.tk, self.s, &d.ksum))
            }
            Node::Lambda(e) => {
                let env = Env { q, k, h: h as i64, bindings: self.bindings, data: self.data, err: Cell::new(false) };
                classify_lambda(e, &env)
            }
            Node::And(a, b) => match self.tile_class(a, h, q, k) {
                Empty => Empty,
                ca => ca.and(self.tile_class(b, h, q, k)),
            },
            Node::Or(a, b) => match self.tile_class(a, h, q, k) {
                Full => Full,
                ca => ca.or(self.tile_class(b, h, q, k)),
            },
            Node::Not(a) => self.tile_class(a, h, q, k).not(),
        }
    }

    // -----------------------------------------------------------------
    // Runs: the classes of one q-tile's k-tiles, as ranges (prepared plans).

    /// The runs of q-tile `qi` for the whole mask.
    pub fn row_runs(&self, h: usize, qi: usize) -> Runs {
        let nk = self.nk();
        if nk == 0 {
            return Vec::new();
        }
        self.runs(&self.root, h, qi, std::slice::from_ref(&(0..nk)))
    }

    /// The first k-tile `j` whose last key `k1(j) >= x` (or `nk`).
    fn first_k1_ge(&self, x: i128) -> usize {
        let nk = self.nk();
        if x > self.s as i128 - 1 {
            return nk;
        }
        // (j + 1)·tk - 1 >= x  ⇔  j >= floor(x / tk); the last tile ends at S - 1 >= x.
        x.div_euclid(self.tk as i128).clamp(0, nk as i128) as usize
    }

    /// The first k-tile `j` whose first key `k0(j) = j·tk >= x` (or `nk`).
    fn first_k0_ge(&self, x: i128) -> usize {
        let ceil = -(-x).div_euclid(self.tk as i128);
        ceil.clamp(0, self.nk() as i128) as usize
    }

    fn k_tile(&self, j: usize) -> (i64, i64) {
        tile(j, self.tk, self.s)
    }

    /// Classifies the tiles of `within` one at a time.
    fn scan(&self, n: &Node<'p>, h: usize, q: (i64, i64), within: &[Range<usize>]) -> Runs {
        let mut out = Vec::new();
        for r in within {
            self.examined.set(self.examined.get() + r.len() as u64);
            for j in r.clone() {
                push(&mut out, j..j + 1, self.tile_class(n, h, q, self.k_tile(j)));
            }
        }
        out
    }

    /// The runs of node `n` for q-tile `qi`, restricted to the k-tile ranges
    /// `within` (sorted, disjoint): outside them the result says Empty.
    fn runs(&self, n: &Node<'p>, h: usize, qi: usize, within: &[Range<usize>]) -> Runs {
        let q = tile(qi, self.tq, self.t);
        let nk = self.nk();
        match n {
            Node::Band { with_q, lo, hi } => {
                if lo > hi {
                    return Vec::new();
                }
                let (q0, q1) = if *with_q { (q.0 as i128, q.1 as i128) } else { (0, 0) };
                // Over k-tile j, v spans [k0(j) - q1, k1(j) - q0], both ends
                // non-decreasing in j: the boundaries in closed form.
                let a = self.first_k1_ge(lo + q0); // vhi >= lo
                let b = self.first_k0_ge(hi + q1 + 1); // vlo > hi
                let c = self.first_k0_ge(lo + q1); // vlo >= lo
                let e = self.first_k1_ge(hi + q0 + 1); // vhi > hi
                debug_assert_eq!(
                    (a, b, c, e),
                    (
                        first_true(nk, |j| self.k_tile(j).1 as i128 - q0 >= *lo),
                        first_true(nk, |j| self.k_tile(j).0 as i128 - q1 > *hi),
                        first_true(nk, |j| self.k_tile(j).0 as i128 - q1 >= *lo),
                        first_true(nk, |j| self.k_tile(j).1 as i128 - q0 > *hi),
                    )
                );
                clip(band(a, b, c, e), within)
            }
            Node::Dilated { lo, hi, .. } => {
                // The band of tiles meeting lo <= q - k <= hi, then each tile
                // of it for the congruence.
                // Over k-tile j, q - k spans [q0 - k1(j), q1 - k0(j)], both
                // ends non-increasing in j.
                let a = self.first_k1_ge(q.0 as i128 - hi); // q0 - k1 <= hi
                let b = self.first_k0_ge(q.1 as i128 - lo + 1); // q1 - k0 < lo
                debug_assert_eq!(
                    (a, b),
                    (
                        first_true(nk, |j| q.0 as i128 - self.k_tile(j).1 as i128 <= *hi),
                        first_true(nk, |j| (q.1 as i128 - self.k_tile(j).0 as i128) < *lo),
                    )
                );
                let w = clip_ranges(std::slice::from_ref(&(a..b.max(a))), within);
                self.scan(n, h, q, &w)
            }
            Node::Document(d) if d.ksorted => {
                let s = d.qsum[qi];
                if s.empty() {
                    return Vec::new();
                }
                // `lo` and `hi` of the k-tiles are non-decreasing: each
                // boundary is a search over them, resumed from the previous
                // q-tile's when the q-tiles are sorted and swept in order.
                let ks = &d.ksum[..];
                let (last, prev) = d.hint.get();
                let from = if d.qsorted && last != 0 && last - 1 <= qi { prev } else { [0; 4] };
                let a = resume(ks, from[0], |x| x.hi >= s.lo);
                let b = resume(ks, from[1], |x| x.lo > s.hi);
                // Full tiles (only for a single-id q-tile, where x = lo = hi)
                // hold exactly id x: lo >= x and hi <= x. `hi` grows with the
                // q-tile, so these searches resume too.
                let x = s.hi;
                let c = resume(ks, from[2], |k| k.lo >= x);
                let e = resume(ks, from[3], |k| k.hi > x);
                d.hint.set((qi + 1, [a, b, c, e]));
                debug_assert_eq!(
                    [a, b, c, e],
                    [
                        ks.partition_point(|k| k.hi < s.lo),
                        ks.partition_point(|k| k.lo <= s.hi),
                        ks.partition_point(|k| k.lo < x),
                        ks.partition_point(|k| k.hi <= x),
                    ]
                );
                let (c, e) = if s.single() { (c, e) } else { (0, 0) };
                clip(band(a, b, c, e), within)
            }
            Node::Blocks(bl) if !bl.prefix.is_empty() && bl.nc <= nk => {
                // Only the k-tiles under a layout column with a set cell in
                // this q-tile's layout rows can be visited.
                let (r0, r1) = ((q.0 / bl.bq) as usize, (q.1 / bl.bq) as usize);
                let mut cand: Vec<Range<usize>> = Vec::new();
                for c in 0..bl.nc {
                    if bl.count(r0, r1, c, c) == 0 {
                        continue;
                    }
                    let k0 = c as i64 * bl.bk;
                    let k1 = ((c as i64 + 1) * bl.bk).min(self.s) - 1;
                    let (j0, j1) = (k0 as usize / self.tk, k1 as usize / self.tk + 1);
                    match cand.last_mut() {
                        Some(last) if last.end >= j0 => last.end = last.end.max(j1),
                        _ => cand.push(j0..j1),
                    }
                }
                self.scan(n, h, q, &clip_ranges(&cand, within))
            }
            Node::And(a, b) => {
                let ra = self.runs(a, h, qi, within);
                if ra.is_empty() {
                    return ra;
                }
                let wa: Vec<Range<usize>> = ra.iter().map(|r| r.0.clone()).collect();
                let rb = self.runs(b, h, qi, &coalesce(wa));
                merge(&ra, &rb, TileClass::and)
            }
            Node::Or(a, b) => {
                let ra = self.runs(a, h, qi, within);
                let full: Vec<Range<usize>> =
                    ra.iter().filter(|r| r.1 == TileClass::Full).map(|r| r.0.clone()).collect();
                let rb = self.runs(b, h, qi, &subtract(within, &full));
                merge(&ra, &rb, TileClass::or)
            }
            Node::Not(a) => {
                let ra = self.runs(a, h, qi, within);
                let all: Runs = within.iter().map(|r| (r.clone(), TileClass::Full)).collect();
                merge(&all, &ra, |w, a| if w == TileClass::Empty { TileClass::Empty } else { a.not() })
            }
            _ => self.scan(n, h, q, within),
        }
    }
}

/// Runs of a band: non-empty tiles `a..b`, full tiles `c..e` (inside `a..b`).
fn band(a: usize, b: usize, c: usize, e: usize) -> Runs {
    let mut out = Vec::new();
    if a >= b {
        return out;
    }
    let (f0, f1) = (c.max(a), e.min(b));
    if f0 < f1 {
        push(&mut out, a..f0, TileClass::Partial);
        push(&mut out, f0..f1, TileClass::Full);
        push(&mut out, f1..b, TileClass::Partial);
    } else {
        push(&mut out, a..b, TileClass::Partial);
    }
    out
}

/// Appends a run, merging with the last one; drops empty ranges and Empty.
pub(crate) fn push(out: &mut Runs, r: Range<usize>, c: TileClass) {
    if r.is_empty() || c == TileClass::Empty {
        return;
    }
    if let Some(last) = out.last_mut() {
        if last.1 == c && last.0.end == r.start {
            last.0.end = r.end;
            return;
        }
    }
    out.push((r, c));
}

fn coalesce(rs: Vec<Range<usize>>) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::with_capacity(rs.len());
    for r in rs {
        match out.last_mut() {
            Some(last) if last.end == r.start => last.end = r.end,
            _ => out.push(r),
        }
    }
    out
}

fn clip_ranges(rs: &[Range<usize>], within: &[Range<usize>]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < rs.len() && j < within.len() {
        let (lo, hi) = (rs[i].start.max(within[j].start), rs[i].end.min(within[j].end));
        if lo < hi {
            out.push(lo..hi);
        }
        if rs[i].end < within[j].end {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

fn clip(runs: Runs, within: &[Range<usize>]) -> Runs {
    if let ([w], Some(first), Some(last)) = (within, runs.first(), runs.last()) {
        if w.start <= first.0.start && last.0.end <= w.end {
            return runs;
        }
    }
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < runs.len() && j < within.len() {
        let (lo, hi) = (runs[i].0.start.max(within[j].start), runs[i].0.end.min(within[j].end));
        if lo < hi {
            out.push((lo..hi, runs[i].1));
        }
        if runs[i].0.end < within[j].end {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// `within` minus `remove` (both sorted, disjoint).
fn subtract(within: &[Range<usize>], remove: &[Range<usize>]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut j = 0;
    for w in within {
        let mut start = w.start;
        while j < remove.len() && remove[j].end <= start {
            j += 1;
        }
        let mut jj = j;
        while jj < remove.len() && remove[jj].start < w.end {
            if remove[jj].start > start {
                out.push(start..remove[jj].start);
            }
            start = start.max(remove[jj].end);
            jj += 1;
        }
        if start < w.end {
            out.push(start..w.end);
        }
    }
    out
}

/// Combines two run lists segment by segment (a tile in neither is Empty).
fn merge(a: &Runs, b: &Runs, f: impl Fn(TileClass, TileClass) -> TileClass) -> Runs {
    let mut pts: Vec<usize> = a.iter().chain(b).flat_map(|r| [r.0.start, r.0.end]).collect();
    pts.sort_unstable();
    pts.dedup();
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    for w in pts.windows(2) {
        let (x, y) = (w[0], w[1]);
        while i < a.len() && a[i].0.end <= x {
            i += 1;
        }
        while j < b.len() && b[j].0.end <= x {
            j += 1;
        }
        let ca = if i < a.len() && a[i].0.start <= x { a[i].1 } else { TileClass::Empty };
        let cb = if j < b.len() && b[j].0.start <= x { b[j].1 } else { TileClass::Empty };
        push(&mut out, x..y, f(ca, cb));
    }
    out
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    #[test]
    fn range_helpers() {
        assert_eq!(subtract(&[0..10], &[2..4, 6..7]), vec![0..2, 4..6, 7..10]);
        assert_eq!(subtract(&[0..3, 5..9], &[2..6]), vec![0..2, 6..9]);
        assert_eq!(subtract(&[0..3], &[]), vec![0..3]);
        assert_eq!(clip_ranges(&[0..4, 6..9], &[2..7]), vec![2..4, 6..7]);
        let a = vec![(0..4, TileClass::Full)];
        let b = vec![(2..6, TileClass::Partial)];
        assert_eq!(merge(&a, &b, TileClass::or), vec![(0..4, TileClass::Full), (4..6, TileClass::Partial)]);
        assert_eq!(merge(&a, &b, TileClass::and), vec![(2..4, TileClass::Partial)]);
        assert!(has_multiple(-3, 3, 4) && !has_multiple(1, 3, 4) && has_multiple(4, 4, 4) && has_multiple(0, 0, 0));
        assert!(!has_multiple(1, 5, 0) && has_multiple(-7, -5, 3) && !has_multiple(-5, -4, 3));
    }
}
