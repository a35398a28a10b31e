//! `tdl-kernel`: tdlc's schedule executor, the seed of the Kernel IR
//! interpreter. It runs the fused attention operator (`Op::Attention`) the
//! way a CPU/GPU backend will: a **FlashAttention-2 forward** schedule, in
//! **`f32`**, over the **block-sparse iteration space** the tile classifier
//! (`tdl_passes::tiles`) derives from the mask formula.
//!
//! # The schedule
//!
//! One *program* per (leading index, q-tile) — a CUDA block in a GPU
//! backend. For the program of head `h` (axis -3 of the output; 0 for
//! rank-2 inputs) and q-tile `[q0, q1)`:
//!
//! ```text
//! Q_tile = q[q0..q1]                                   resident
//! m = -inf, l = 0, O = 0                               per row
//! for each visited k-tile [k0, k1) of iteration_space[h][q-tile], in order:
//!     K_tile, V_tile = k[k0..k1], v[k0..k1]            streamed, GQA head h / group
//!     S = Q_tile · K_tileᵀ · scale                     f32, FMA accumulation
//!     Partial tile: S[i, j] = -inf where the mask does not hold
//!                   (Full tiles evaluate no predicate; Empty tiles are never visited)
//!     S = score(s, q, k, h)                            the modifier, where the mask holds
//!     m_new = max(m, rowmax S)
//!     if m_new == -inf: nothing visible yet, skip the row
//!     α = exp(m - m_new) (0 when m == -inf);  O *= α, l *= α   only when m grows
//!     P = exp(S - m_new); l += rowsum P; O += P · V_tile          FMA
//! out = O / l   (one division; l == 0, a row with no visible key or only -inf
//!               scores, gives exact zeros, never NaN)
//! ```
//!
//! The iteration space is computed once per call, for every head (heads the
//! mask does not depend on share the runs of head 0). With no mask every
//! tile is Full.
//!
//! # Semantics
//!
//! Exactly the reference's (`tdl_reference`'s `attention.rs`), up to `f32`
//! rounding: `scale: None` is `1/sqrt(D)`; the head axis (-3) of `k`/`v`
//! may divide `q`'s (grouped-query attention: query head `h` reads key head
//! `h / (Hq / Hk)`, read in place, never copied); a head count of 1 on
//! either side broadcasts; the other leading axes broadcast NumPy-style.
//! The mask predicate is evaluated per element, inside Partial tiles only,
//! by `tdl_reference::mask::MaskEval` (the language's predicates, one
//! implementation); the score modifier by the shared lambda evaluator
//! (`tdl_ir::eval`) in `f32`/`i64` and, as in the reference, only where the mask
//! holds (so a modifier that would fail where the mask hides it does not).
//! A NaN score makes its row NaN, as in the reference (the max propagates
//! NaN).
//!
//! Products and sums are separate `f32` operations (a backend fuses them
//! into FMAs where the target has them: the results differ only by
//! rounding), so the host compiler can vectorise the executor.
//!
//! Memory: `O(tile_q · (D + Dv + tile_k))` per program beside the output and
//! the iteration space; nothing of size `T × S` is allocated.

use crate::ir::KvSplit;
use crate::target::resolve_kv_split;
use tdl_ir::eval::{eval, ArrayView, Env, Val};
use tdl_ir::layout::{next_index, AttentionLayout};
use tdl_ir::{Bindings, MaskExpr, ScalarExpr};
use tdl_passes::tiles::{self, Ctx, IterSpace, MaskData, OperandData, Runs, TileClass};
use tdl_reference::mask::MaskEval;
use tdl_reference::Tensor;

/// The tile sizes of the schedule: `tile_q` query rows per program,
/// `tile_k` keys per streamed K/V tile. Neither need divide `T` or `S` (the
/// last tile of a row or column is cut).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AttentionSchedule {
    pub tile_q: usize,
    pub tile_k: usize,
    /// How each program's kv-tiles are split (resolved per call with
    /// [`crate::target::resolve_kv_split`]).
    pub kv_split: KvSplit,
}

impl AttentionSchedule {
    /// Tiles `tile_q × tile_k`, no KV split.
    pub fn new(tile_q: usize, tile_k: usize) -> AttentionSchedule {
        AttentionSchedule { tile_q, tile_k, kv_split: KvSplit::None }
    }
}

/// A dense `f32` tensor, row-major; `data.len()` is the product of `shape`.
#[derive(Clone, Debug, PartialEq)]
pub struct F32Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl F32Tensor {
    /// Checks that `data` holds exactly the elements of `shape`.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<F32Tensor, String> {
        let t = F32Tensor { shape, data };
        t.check("tensor")?;
        Ok(t)
    }

    /// Zeros of `shape`.
    pub fn zeros(shape: &[usize]) -> F32Tensor {
        let n = shape.iter().product();
        F32Tensor { shape: shape.to_vec(), data: vec![0.0; n] }
    }

    /// The number of elements `shape` says, or `None` on overflow.
    pub fn numel(&self) -> Option<usize> {
        self.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
    }

    fn check(&self, what: &str) -> Result<(), String> {
        match self.numel() {
            Some(n) if n == self.data.len() => Ok(()),
            Some(n) => {
                Err(format!("{what} of shape {:?} needs {n} elements, but holds {}", self.shape, self.data.len()))
            }
            None => Err(format!("{what} of shape {:?} has more elements than fit in memory", self.shape)),
        }
    }
}

/// A score modifier: the lambda over `s, q, k, h` and the attention node's
/// operands by position (`q = 0`, `k = 1`, `v = 2`, the mask `= 3` when
/// masked, then the tensors the lambda reads). Positions the lambda does
/// not read may be `None` (the type rules forbid it to read `q`, `k`, `v`
/// and the mask).
#[derive(Clone, Debug)]
pub struct ScoreMod<'a> {
    pub expr: &'a ScalarExpr,
    pub operands: Vec<Option<OperandData<'a>>>,
}

/// What one call did (counted over every program, i.e. every leading
/// index — batch and head — and q-tile).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    /// Programs run: leading indices × q-tiles.
    pub programs: u64,
    /// K/V tiles streamed (Full + Partial); Empty tiles are never visited.
    pub tiles_visited: u64,
    pub full_tiles: u64,
    pub partial_tiles: u64,
    /// Mask predicates evaluated (one per element of a Partial tile).
    pub mask_evals: u64,
    /// Score-modifier evaluations (one per visible element).
    pub score_evals: u64,
    /// `(total, visited, full, partial)` of the iteration space for one
    /// leading index per head (`IterSpace::counts`); `None` without a mask.
    pub space_counts: Option<(usize, usize, usize, usize)>,
    /// The KV split used (1: none).
    pub kv_splits: usize,
    /// Rows merged from more than one split (the online-softmax combine).
    pub merged_rows: u64,
}

/// The fused attention under the FlashAttention-2 schedule `sched`; see the
/// crate docs. `q: [..., T, D]`, `k: [..., S, D]`, `v: [..., S, Dv]`; the
/// result is `[lead..., T, Dv]`. `mask` is the mask expression and the
/// operands of its `Mask` node; `bindings` the bound dimension symbols
/// (lambdas reading `T`, `S`, ...).
#[allow(clippy::too_many_arguments)]
pub fn attention_tiled(
    q: &F32Tensor,
    k: &F32Tensor,
    v: &F32Tensor,
    mask: Option<(&MaskExpr, &MaskData<'_>)>,
    scale: Option<f64>,
    score: Option<&ScoreMod<'_>>,
    bindings: &Bindings,
    sched: &AttentionSchedule,
) -> Result<F32Tensor, String> {
    attention_tiled_stats(q, k, v, mask, scale, score, bindings, sched).map(|(t, _)| t)
}

/// `max` that propagates NaN (as the reference's softmax does).
fn max_nan(acc: f32, v: f32) -> f32 {
    if acc.is_nan() || v.is_nan() {
        f32::NAN
    } else if v > acc {
        v
    } else {
        acc
    }
}

/// [`attention_tiled`], also returning what it did ([`KernelStats`]).
#[allow(clippy::too_many_arguments)]
pub fn attention_tiled_stats(
    q: &F32Tensor,
    k: &F32Tensor,
    v: &F32Tensor,
    mask: Option<(&MaskExpr, &MaskData<'_>)>,
    scale: Option<f64>,
    score: Option<&ScoreMod<'_>>,
    bindings: &Bindings,
    sched: &AttentionSchedule,
) -> Result<(F32Tensor, KernelStats), String> {
    q.check("attention q")?;
    k.check("attention k")?;
    v.check("attention v")?;
    // Leading axes, heads and offsets: the same layout as the reference.
    let layout = AttentionLayout::new(tdl_ir::DType::F32, &q.shape, &k.shape, &v.shape)?;
    let (t, s, d, dv) = (layout.t, layout.s, layout.d, layout.dv);
    let (tile_q, tile_k) = (sched.tile_q, sched.tile_k);
    if tile_q == 0 || tile_k == 0 {
        return Err(format!("tile sizes must be positive, found {tile_q}×{tile_k}"));
    }
    // The score lambda's operands, viewed once for the whole call.
    let score_ops: Vec<Option<ArrayView>> =
        score.map(|sm| sm.operands.iter().map(|o| o.as_ref().map(|o| o.view())).collect()).unwrap_or_default();

    let n_lead = layout.n_lead();
    let n_out = n_lead.and_then(|n| n.checked_mul(t)).and_then(|n| n.checked_mul(dv));
    let (Some(n_lead), Some(n_out)) = (n_lead, n_out) else {
        return Err("the attention output has more elements than fit in memory".into());
    };
    // The mask's `h` is the index along the output's axis -3 (0 at rank 2).
    let n_heads = layout.mask_heads();
    let (ti, si) = match (i64::try_from(t), i64::try_from(s)) {
        (Ok(a), Ok(b)) => (a, b),
        _ => return Err(format!("attention sizes {t}×{s} do not fit in 64-bit indices")),
    };

    // The mask: checked as the reference checks it, then classified once.
    let mask_tensors: Vec<Tensor> = match mask {
        Some((_, data)) => data
            .operands
            .iter()
            .map(|o| Tensor { dtype: o.dtype, shape: o.shape.clone(), data: o.data.to_vec() })
            .collect(),
        None => Vec::new(),
    };
    let mask_refs: Vec<&Tensor> = mask_tensors.iter().collect();
    let (eval, space): (Option<MaskEval<'_>>, Option<IterSpace>) = match mask {
        Some((expr, data)) => {
            let ev = MaskEval::new(expr, &mask_refs, t, s, bindings).map_err(|e| e.to_string())?;
            let ctx = Ctx { t: ti, s: si, heads: n_heads, bindings, data };
            let sp = tiles::iteration_space(expr, &ctx, tile_q, tile_k)?;
            (Some(ev), Some(sp))
        }
        None => (None, None),
    };
    let (nq, nk) = (t.div_ceil(tile_q), s.div_ceil(tile_k));
    // Without a mask every tile is Full.
    let all_full: Runs = if nk > 0 { vec![(0..nk, TileClass::Full)] } else { Vec::new() };

    let scale = scale.unwrap_or(1.0 / (d as f64).sqrt()) as f32;
    let mut stats = KernelStats { space_counts: space.as_ref().map(IterSpace::counts), ..KernelStats::default() };
    let mut out = vec![0f32; n_out];

    // The KV split: resolved once per call from the busiest program.
    let runs_of = |h: usize, qt: usize| -> &Runs {
        match &space {
            Some(sp) => &sp.per_head[h][qt],
            None => &all_full,
        }
    };
    let busiest = (0..n_heads.max(1))
        .flat_map(|h| (0..nq).map(move |qt| (h, qt)))
        .map(|(h, qt)| runs_of(h.min(n_heads.saturating_sub(1)), qt).iter().map(|(r, _)| r.len()).sum::<usize>())
        .max()
        .unwrap_or(0);
    let splits = resolve_kv_split(sched.kv_split, n_lead.saturating_mul(nq), busiest).max(1);
    stats.kv_splits = splits;

    // Per-program buffers: the Q tile, the score tile, and per split the
    // running max, sum and output.
    let rows = tile_q.min(t.max(1));
    let mut q_tile = vec![0f32; rows * d];
    let mut s_tile = vec![0f32; rows * tile_k.min(s.max(1))];
    let mut state: Vec<SplitState> = (0..splits).map(|_| SplitState::new(rows, dv)).collect();
    let mut visited: Vec<(usize, bool)> = Vec::new();

    let mut idx = vec![0usize; layout.lead.len()];
    for li in 0..n_lead {
        let h = idx.last().copied().unwrap_or(0);
        let (oq, ok, ov) = layout.offsets(&idx);
        for qt in 0..nq {
            stats.programs += 1;
            let q0 = qt * tile_q;
            let bq = tile_q.min(t - q0);
            // Q tile resident.
            q_tile[..bq * d].copy_from_slice(&q.data[oq + q0 * d..oq + (q0 + bq) * d]);
            visited.clear();
            for (range, class) in runs_of(h, qt) {
                visited.extend(range.clone().map(|kt| (kt, *class == TileClass::Partial)));
            }
            // Split i takes a contiguous share of the visited kv-tiles.
            let per = visited.len().div_ceil(splits).max(1);
            for (si_, st) in state.iter_mut().enumerate() {
                st.reset(bq, dv);
                let lo = (si_ * per).min(visited.len());
                let hi = ((si_ + 1) * per).min(visited.len());
                for &(kt, partial) in &visited[lo..hi] {
                    stats.tiles_visited += 1;
                    if partial {
                        stats.partial_tiles += 1;
                    } else {
                        stats.full_tiles += 1;
                    }
                    let k0 = kt * tile_k;
                    let bk = tile_k.min(s - k0);
                    // S = Q·Kᵀ·scale, the mask (Partial tiles), the modifier.
                    for i in 0..bq {
                        let qrow = &q_tile[i * d..(i + 1) * d];
                        let srow = &mut s_tile[i * bk..(i + 1) * bk];
                        for (j, sc) in srow.iter_mut().enumerate() {
                            let (qi, ki) = (q0 + i, k0 + j);
                            if partial {
                                stats.mask_evals += 1;
                                let holds = match &eval {
                                    Some(m) => m.holds(qi, ki, h).map_err(|e| e.to_string())?,
                                    None => true,
                                };
                                if !holds {
                                    *sc = f32::NEG_INFINITY;
                                    continue;
                                }
                            }
                            let krow = &k.data[ok + ki * d..ok + (ki + 1) * d];
                            let mut dot = 0f32;
                            for (x, y) in qrow.iter().zip(krow) {
                                dot += x * y;
                            }
                            let mut value = dot * scale;
                            if let Some(sm) = score {
                                stats.score_evals += 1;
                                value = score_mod(sm.expr, &score_ops, value, qi, ki, h, bindings)?;
                            }
                            *sc = value;
                        }
                    }
                    // Online softmax and O += P·V.
                    for i in 0..bq {
                        let srow = &s_tile[i * bk..(i + 1) * bk];
                        let m_old = st.m[i];
                        let m_new = srow.iter().fold(m_old, |a, &x| max_nan(a, x));
                        if m_new == f32::NEG_INFINITY {
                            // Nothing visible in this row yet: P is all zero.
                            continue;
                        }
                        let orow = &mut st.acc[i * dv..(i + 1) * dv];
                        if m_new != m_old {
                            // The max grew (or became NaN): rescale.
                            let alpha = if m_old == f32::NEG_INFINITY { 0.0 } else { (m_old - m_new).exp() };
                            orow.iter_mut().for_each(|o| *o *= alpha);
                            st.l[i] *= alpha;
                        }
                        st.m[i] = m_new;
                        let mut l = st.l[i];
                        for (j, &x) in srow.iter().enumerate() {
                            let p = (x - m_new).exp();
                            l += p;
                            let vrow = &v.data[ov + (k0 + j) * dv..ov + (k0 + j + 1) * dv];
                            for (o, y) in orow.iter_mut().zip(vrow) {
                                *o += p * y;
                            }
                        }
                        st.l[i] = l;
                    }
                }
            }
            // Merge the splits (online-softmax combine) and divide once:
            // m = max mᵢ, l = Σ e^(mᵢ-m)·lᵢ, O = Σ e^(mᵢ-m)·Oᵢ, out = O / l.
            // No visible key (l == 0) gives zeros.
            for i in 0..bq {
                let dst = &mut out[(li * t + q0 + i) * dv..(li * t + q0 + i + 1) * dv];
                let (first, rest) = state.split_at_mut(1);
                let base = &mut first[0];
                if splits > 1 {
                    stats.merged_rows += 1;
                    let m = rest.iter().fold(base.m[i], |a, st| max_nan(a, st.m[i]));
                    let w0 = if base.m[i] == f32::NEG_INFINITY { 0.0 } else { (base.m[i] - m).exp() };
                    base.l[i] *= w0;
                    base.acc[i * dv..(i + 1) * dv].iter_mut().for_each(|o| *o *= w0);
                    for st in rest.iter() {
                        if st.m[i] == f32::NEG_INFINITY {
                            continue;
                        }
                        let w = (st.m[i] - m).exp();
                        base.l[i] += w * st.l[i];
                        for (o, x) in base.acc[i * dv..(i + 1) * dv].iter_mut().zip(&st.acc[i * dv..(i + 1) * dv]) {
                            *o += w * x;
                        }
                    }
                }
                let l = base.l[i];
                if l == 0.0 {
                    dst.fill(0.0);
                } else {
                    for (o, a) in dst.iter_mut().zip(&base.acc[i * dv..(i + 1) * dv]) {
                        *o = a / l;
                    }
                }
            }
        }
        next_index(&mut idx, &layout.lead);
    }
    let mut shape = layout.lead;
    shape.extend([t, dv]);
    Ok((F32Tensor { shape, data: out }, stats))
}

/// One split's online-softmax state for the rows of a q-tile.
struct SplitState {
    m: Vec<f32>,
    l: Vec<f32>,
    acc: Vec<f32>,
}

impl SplitState {
    fn new(rows: usize, dv: usize) -> SplitState {
        SplitState { m: vec![f32::NEG_INFINITY; rows], l: vec![0.0; rows], acc: vec![0.0; rows * dv] }
    }

    fn reset(&mut self, rows: usize, dv: usize) {
        self.m[..rows].fill(f32::NEG_INFINITY);
        self.l[..rows].fill(0.0);
        self.acc[..rows * dv].fill(0.0);
    }
}

fn score_mod(
    expr: &ScalarExpr,
    operands: &[Option<ArrayView>],
    s: f32,
    q: usize,
    k: usize,
    h: usize,
    bindings: &Bindings,
) -> Result<f32, String> {
    // Indices of existing tensors fit in i64.
    let env = Env { q: q as i64, k: k as i64, h: h as i64, s: Some(s), bindings, operands };
    match eval(expr, &env)? {
        Val::Float(f) => Ok(f),
        Val::Int(i) => Ok(i as f32),
        Val::Bool(_) => Err("the attention score modifier evaluated to a boolean; it must give a number".into()),
    }
}
