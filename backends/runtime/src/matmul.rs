//! The matmul kernel's runtime: packs B into micro-panels once per distinct
//! operand and hands `(batch, m-tile)` row blocks to worker threads, each
//! calling the compiled row-block function ([`RowsFn`]). No LLVM: the JIT
//! (`tdl_llvm::matmul`) and ahead-of-time artifacts share it.

use tdl_kernel::interp::MatMulArgs;

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
}

/// The shape of the packed B: k-tiles of `tk`, n-tiles of `tn` columns
/// (each padded to a multiple of `nr`), micro-panels of `nr` columns.
struct PanelGeometry {
    k: usize,
    n: usize,
    tk: usize,
    tn: usize,
    nr: usize,
}

/// B (`args.b` at `off`, strides `b_p`, `b_j`) packed for the kernel: per
/// (k-tile, n-tile) a panel of `tk × tn'` (`tn'` = `tn` rounded up to `nr`)
/// laid out as micro-panels `[j / nr][p][j % nr]`, zero past N (and past K
/// in the last k-tile's unused rows).
fn pack_b(args: &MatMulArgs<'_>, off: usize, g: &PanelGeometry) -> Vec<f32> {
    let tnp = g.tn.next_multiple_of(g.nr);
    let (ktiles, ntiles) = (g.k.div_ceil(g.tk), g.n.div_ceil(g.tn));
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

impl MatMulRunner {
    /// The runtime of `f`, compiled for `tiles` with micro-panels of `nr`
    /// columns.
    ///
    /// # Safety
    /// `f` must be a row-block function generated for exactly `tiles` and
    /// `nr` (the contract of [`RowsFn`]), valid as long as the runner is
    /// used.
    pub unsafe fn new(tiles: (usize, usize, usize), f: RowsFn, nr: usize) -> MatMulRunner {
        MatMulRunner { tiles, f, nr }
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
        // B packed once per distinct operand (batches often share weights).
        let mut distinct: Vec<usize> = args.b_offsets.clone();
        distinct.sort_unstable();
        distinct.dedup();
        let geometry = PanelGeometry { k, n, tk, tn, nr: self.nr };
        let packed: Vec<Vec<f32>> = distinct.iter().map(|&off| pack_b(args, off, &geometry)).collect();
        let which: Vec<usize> = args.b_offsets.iter().map(|o| distinct.binary_search(o).unwrap_or_default()).collect();
        let mut out = vec![0f32; nbatch * m * n];
        let mtiles = m.div_ceil(tm);
        let outp = Shared(out.as_mut_ptr());
        let ap = Shared(args.a.as_ptr().cast_mut());
        let (packed, which) = (&packed, &which);
        run_parallel(nbatch * mtiles, threads, (2 << 20) + 4 * ((tm + MR) * tk + 64), |w| {
            let (bi, mt) = (w / mtiles, w % mtiles);
            let (i0, i1) = (mt * tm, ((mt + 1) * tm).min(m));
            // SAFETY: A's offsets and strides were checked against the operand
            // above, and B's packed panels cover every (k-tile, n-tile); this
            // item writes rows i0..i1 of batch bi only.
            unsafe {
                f(
                    ap.ptr().add(args.a_offsets[bi]),
                    packed[which[bi]].as_ptr(),
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
        Ok(out)
    }
}
