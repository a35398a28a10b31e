//! The matmul kernel's runtime: packs B into micro-panels once per distinct
//! operand and hands `(batch, m-tile)` row blocks to worker threads, each
//! calling the compiled row-block function ([`RowsFn`]). No LLVM: the JIT
//! (`tdl_llvm::matmul`) and ahead-of-time artifacts share it.

use tdl_kernel::interp::MatMulArgs;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, TryLockError};

use crate::pool::{run_parallel, Shared};
use crate::{RtError, MR};

/// `(a, b, c, M, N, K, a_i, a_p, b_p, b_j, i0, i1)`: rows `i0..i1` of `c`
/// (row-major `M × N`), B packed as [`MatMulRunner::run`] packs it.
pub type RowsFn = unsafe extern "C" fn(*const f32, *const f32, *mut f32, i64, i64, i64, i64, i64, i64, i64, i64, i64);

/// The runtime of one compiled row-block function.
#[derive(Clone, Debug)]
pub struct MatMulRunner {
    tiles: (usize, usize, usize),
    f: RowsFn,
    /// Columns of one micro-panel (two vectors).
    nr: usize,
    /// The packed B's buffer, kept for the next call (shared by clones).
    scratch: Scratch,
}

/// A buffer reused across calls when no other call holds it.
#[derive(Clone, Default)]
struct Scratch(Arc<Mutex<Vec<f32>>>);

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scratch")
    }
}

/// Packed B buffers larger than this (in floats) are not kept.
const KEEP_SCRATCH: usize = 16 << 20;

/// The shape of the packed B: k-tiles of `tk`, n-tiles of `tn` columns
/// (each padded to a multiple of `nr`), micro-panels of `nr` columns.
struct PanelGeometry {
    k: usize,
    n: usize,
    tk: usize,
    tn: usize,
    nr: usize,
}

impl PanelGeometry {
    fn ktiles(&self) -> usize {
        self.k.div_ceil(self.tk)
    }

    fn ntiles(&self) -> usize {
        self.n.div_ceil(self.tn)
    }

    /// Floats of one (k-tile, n-tile) panel.
    fn panel_len(&self) -> usize {
        self.tk * self.tn.next_multiple_of(self.nr)
    }
}

/// Packs the (k-tile `pt`, n-tile `jt`) panel of B (`args.b` at `off`,
/// strides `b_p`, `b_j`) into `dst` (one panel, see
/// [`PanelGeometry::panel_len`]): micro-panels `[j / nr][p][j % nr]`, zero
/// past N in the last micro-panel used. Rows past K and micro-panels past N
/// are left as they are (the kernel reads neither). B is read along its
/// smaller stride.
fn pack_panel(args: &MatMulArgs<'_>, off: usize, g: &PanelGeometry, pt: usize, jt: usize, dst: &mut [f32]) {
    let (nr, tk) = (g.nr, g.tk);
    let (p0, j0) = (pt * tk, jt * g.tn);
    let (bk, bn) = (tk.min(g.k - p0), g.tn.min(g.n - j0));
    let (bp, bj) = (args.b_p, args.b_j);
    let b = &args.b[off + p0 * bp + j0 * bj..];
    let groups = bn.div_ceil(nr);
    if bj == 1 {
        // Rows of B contiguous: row p of every micro-panel at once.
        for p in 0..bk {
            let row = &b[p * bp..p * bp + bn];
            for (gi, src) in row.chunks(nr).enumerate() {
                let d = &mut dst[gi * tk * nr + p * nr..][..nr];
                d[..src.len()].copy_from_slice(src);
                d[src.len()..].fill(0.0);
            }
        }
        return;
    }
    if bj <= bp {
        for p in 0..bk {
            for j in 0..bn {
                dst[(j / nr) * tk * nr + p * nr + j % nr] = b[p * bp + j * bj];
            }
        }
    } else {
        // Columns of B contiguous (a transposed view): down each column.
        for j in 0..bn {
            let d = &mut dst[(j / nr) * tk * nr + j % nr..];
            if bp == 1 {
                for (p, &x) in b[j * bj..j * bj + bk].iter().enumerate() {
                    d[p * nr] = x;
                }
            } else {
                for p in 0..bk {
                    d[p * nr] = b[p * bp + j * bj];
                }
            }
        }
    }
    if bn % nr != 0 {
        let last = &mut dst[(groups - 1) * tk * nr..];
        for p in 0..bk {
            last[p * nr + bn % nr..(p + 1) * nr].fill(0.0);
        }
    }
}

/// `items` row blocks of about equal size, each a whole number of `MR`
/// rows (but the last) and at most `tm` rounded up to `MR`: block `t` is
/// rows `rows(t)`.
struct RowSplit {
    m: usize,
    items: usize,
    mblocks: usize,
}

impl RowSplit {
    /// At least `m / tm` blocks per batch, as many more as make the total
    /// over `nbatch` batches a multiple of `threads` (so the threads get
    /// equal shares), at most `threads` more.
    fn new(m: usize, tm: usize, nbatch: usize, threads: usize) -> RowSplit {
        let mblocks = m.div_ceil(MR).max(1);
        let base = m.div_ceil(tm.max(1)).clamp(1, mblocks);
        let items = (base..=(base + threads).min(mblocks))
            .find(|c| (nbatch * c).is_multiple_of(threads.max(1)))
            .unwrap_or(base);
        // Never more rows than the kernel's packed A holds (true by the
        // choice above; one block of MR rows per item otherwise).
        if mblocks.div_ceil(items) * MR <= tm.max(1).next_multiple_of(MR) {
            RowSplit { m, items, mblocks }
        } else {
            RowSplit { m, items: mblocks, mblocks }
        }
    }

    fn rows(&self, t: usize) -> (usize, usize) {
        let (b0, b1) = (t * self.mblocks / self.items, (t + 1) * self.mblocks / self.items);
        ((b0 * MR).min(self.m), (b1 * MR).min(self.m))
    }
}

impl MatMulRunner {
    /// The runtime of `f`, compiled for `tiles` with micro-panels of `nr`
    /// columns.
    ///
    /// # Safety
    /// `f` must be a row-block function generated for exactly `tiles` and
    /// `nr` (the contract of [`RowsFn`]), valid as long as the runner is
    /// used.
    pub unsafe fn new(tiles: (usize, usize, usize), f: RowsFn, nr: usize) -> MatMulRunner {
        MatMulRunner { tiles, f, nr, scratch: Scratch::default() }
    }

    /// The `(tile_m, tile_n, tile_k)` the function was compiled for.
    pub fn tiles(&self) -> (usize, usize, usize) {
        self.tiles
    }

    /// Runs the kernel on `args` with `threads` worker threads; returns the
    /// row-major `[batch, M, N]`.
    pub fn run(&self, args: &MatMulArgs<'_>, threads: usize) -> Result<Vec<f32>, RtError> {
        let (tm, tn, tk) = self.tiles;
        let f = self.f;
        let (m, n, k) = (args.m, args.n, args.k);
        let nbatch = args.a_offsets.len();
        if args.b_offsets.len() != nbatch {
            return Err(RtError::new("matmul batch offsets differ in length"));
        }
        // Every element the kernel reads must be inside the operands.
        let reach = |off: usize, s1: usize, n1: usize, s2: usize, n2: usize| {
            off + s1 * n1.saturating_sub(1) + s2 * n2.saturating_sub(1)
        };
        for (&oa, &ob) in args.a_offsets.iter().zip(&args.b_offsets) {
            if m > 0 && k > 0 && reach(oa, args.a_i, m, args.a_p, k) >= args.a.len() {
                return Err(RtError::new("matmul A view out of bounds"));
            }
            if n > 0 && k > 0 && reach(ob, args.b_p, k, args.b_j, n) >= args.b.len() {
                return Err(RtError::new("matmul B view out of bounds"));
            }
        }
        let total = nbatch * m * n;
        if total == 0 || k == 0 {
            return Ok(vec![0f32; total]);
        }
        // B packed once per distinct operand (batches often share weights).
        let mut distinct: Vec<usize> = args.b_offsets.clone();
        distinct.sort_unstable();
        distinct.dedup();
        let g = PanelGeometry { k, n, tk, tn, nr: self.nr };
        let (ktiles, ntiles, panel_len) = (g.ktiles(), g.ntiles(), g.panel_len());
        let per_b = ktiles * ntiles * panel_len;
        let panels = distinct.len() * ktiles * ntiles;
        let which: Vec<usize> = args.b_offsets.iter().map(|o| distinct.binary_search(o).unwrap_or_default()).collect();
        // The last call's buffer when no other call is using it.
        let mut held = match self.scratch.0.try_lock() {
            Ok(b) => Some(b),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        };
        let mut own = Vec::new();
        let packed: &mut Vec<f32> = held.as_deref_mut().unwrap_or(&mut own);
        if packed.len() < panels * panel_len {
            *packed = vec![0f32; panels * panel_len];
        }
        let packp = Shared(packed.as_mut_ptr());
        let split = RowSplit::new(m, tm, nbatch, threads.max(1));
        let items = split.items;
        // Every element is written by the kernel (the first k-tile stores
        // without reading); the length is set once it has run.
        let mut out: Vec<f32> = Vec::with_capacity(total);
        let outp = Shared(out.as_mut_ptr());
        let ap = Shared(args.a.as_ptr().cast_mut());
        let (which, distinct, g) = (&which, &distinct, &g);
        // Items `0..panels` pack B's panels, the rest run row blocks once
        // every panel is packed (all panel items are handed out first, so
        // waiting on them never deadlocks).
        let packed_count = AtomicUsize::new(0);
        run_parallel(panels + nbatch * items, threads, (2 << 20) + 4 * ((tm + MR) * tk + 64), |w| {
            if w < panels {
                // Counted even if packing panics, so no item waits forever
                // (the panic then reaches the caller).
                struct Done<'c>(&'c AtomicUsize);
                impl Drop for Done<'_> {
                    fn drop(&mut self) {
                        self.0.fetch_add(1, Ordering::Release);
                    }
                }
                let _done = Done(&packed_count);
                let (d, pt, jt) = (w / (ktiles * ntiles), (w / ntiles) % ktiles, w % ntiles);
                // SAFETY: panel w of the buffer (panels · panel_len floats
                // long), written by this item only and read only after every
                // panel item is done.
                let dst = unsafe { std::slice::from_raw_parts_mut(packp.ptr().add(w * panel_len), panel_len) };
                pack_panel(args, distinct[d], g, pt, jt, dst);
                return;
            }
            while packed_count.load(Ordering::Acquire) < panels {
                std::thread::yield_now();
            }
            let w = w - panels;
            let (bi, t) = (w / items, w % items);
            let (i0, i1) = split.rows(t);
            // SAFETY: A's offsets and strides were checked against the operand
            // above, and B's packed panels cover every (k-tile, n-tile); this
            // item writes rows i0..i1 (at most tm rounded up to MR of them,
            // see `RowSplit`) of batch bi only.
            unsafe {
                f(
                    ap.ptr().add(args.a_offsets[bi]),
                    packp.ptr().add(which[bi] * per_b),
                    outp.ptr().add(bi * m * n),
                    m as i64,
                    n as i64,
                    k as i64,
                    args.a_i as i64,
                    args.a_p as i64,
                    args.b_p as i64,
                    args.b_j as i64,
                    i0 as i64,
                    i1 as i64,
                )
            };
        })?;
        // SAFETY: every row of every batch was written above.
        unsafe { out.set_len(total) };
        if packed.len() > KEEP_SCRATCH {
            *packed = Vec::new();
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The packing as it was (one thread, down each column): the reference.
    fn pack_b_reference(args: &MatMulArgs<'_>, off: usize, g: &PanelGeometry) -> Vec<f32> {
        let tnp = g.tn.next_multiple_of(g.nr);
        let (ktiles, ntiles) = (g.ktiles(), g.ntiles());
        let mut out = vec![0f32; ktiles * ntiles * g.tk * tnp];
        for pt in 0..ktiles {
            for jt in 0..ntiles {
                let base = (pt * ntiles + jt) * g.tk * tnp;
                let (p0, j0) = (pt * g.tk, jt * g.tn);
                let (bk, bn) = (g.tk.min(g.k - p0), g.tn.min(g.n - j0));
                for j in 0..bn {
                    let dst = base + (j / g.nr) * g.tk * g.nr + j % g.nr;
                    let src = off + (j0 + j) * args.b_j + p0 * args.b_p;
                    for p in 0..bk {
                        out[dst + p * g.nr] = args.b[src + p * args.b_p];
                    }
                }
            }
        }
        out
    }

    #[test]
    fn panels_match_the_reference_packing_for_every_layout() {
        let b: Vec<f32> = (0..20_000).map(|i| i as f32 * 0.5 + 1.0).collect();
        for (k, n, tk, tn) in [(37, 29, 8, 16), (5, 40, 8, 24), (64, 64, 64, 64), (9, 7, 4, 5)] {
            // (b_p, b_j): row-major, transposed, strided both ways.
            for (bp, bj) in [(n, 1), (1, k), (2 * n + 3, 2), (3, 3 * k + 1)] {
                let args = MatMulArgs {
                    a: &[],
                    b: &b,
                    m: 1,
                    n,
                    k,
                    a_i: 0,
                    a_p: 0,
                    b_p: bp,
                    b_j: bj,
                    a_offsets: vec![],
                    b_offsets: vec![],
                    dtypes: [tdl_ir::DType::F32; 3],
                };
                let g = PanelGeometry { k, n, tk, tn, nr: 16 };
                let off = 7;
                let want = pack_b_reference(&args, off, &g);
                // Stale contents where the kernel reads nothing.
                let mut got = vec![f32::NAN; want.len()];
                let len = g.panel_len();
                for pt in 0..g.ktiles() {
                    for jt in 0..g.ntiles() {
                        let q = pt * g.ntiles() + jt;
                        pack_panel(&args, off, &g, pt, jt, &mut got[q * len..(q + 1) * len]);
                        // What the kernel reads: bk rows of the micro-panels
                        // that hold columns.
                        let bk = tk.min(k - pt * tk);
                        let bn = tn.min(n - jt * tn);
                        for gi in 0..bn.div_ceil(16) {
                            for p in 0..bk {
                                let at = q * len + gi * tk * 16 + p * 16;
                                assert_eq!(
                                    got[at..at + 16],
                                    want[at..at + 16],
                                    "{k}×{n} tiles {tk}×{tn} strides ({bp}, {bj}) panel ({pt}, {jt}) group {gi} row {p}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn row_blocks_cover_the_rows_in_whole_register_blocks() {
        for m in [1, 5, 6, 7, 100, 1024, 1000] {
            for tm in [1, 6, 7, 64, 192, 4096] {
                for (nbatch, threads) in [(1, 1), (1, 2), (3, 2), (2, 3), (1, 16)] {
                    let s = RowSplit::new(m, tm, nbatch, threads);
                    let mut next = 0;
                    for t in 0..s.items {
                        let (i0, i1) = s.rows(t);
                        assert_eq!(i0, next);
                        assert!(i1 > i0 && i1 - i0 <= tm.next_multiple_of(MR), "{m} {tm}: {i0}..{i1}");
                        assert!(i0 % MR == 0);
                        next = i1;
                    }
                    assert_eq!(next, m);
                    if m.div_ceil(tm) < m.div_ceil(MR) && nbatch * s.items >= threads {
                        assert!(s.items >= m.div_ceil(tm));
                    }
                }
            }
        }
        // 1024 rows in tiles of 192 on 2 threads: 6 blocks of 29 or 28
        // register blocks, rather than five of 192 and one of 64.
        let s = RowSplit::new(1024, 192, 1, 2);
        assert_eq!(s.items, 6);
        assert!((0..6).all(|t| (168..=174).contains(&(s.rows(t).1 - s.rows(t).0))));
    }
}
