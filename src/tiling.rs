//! The tile report of one fused attention, for `tdlc explain --bind …`:
//! how the mask's tiles classify (from the formula, `tdl_passes::tiles`)
//! and, where the sizes allow, how that compares with brute force.

use tdl_ir::{Bindings, Graph, MaskExpr, NodeId, Op};
use tdl_kernel::ir::KvSplit;
use tdl_kernel::target::{resolve_kv_split, Target};
use tdl_passes::tiles::{iteration_space, Ctx, IterSpace, MaskData, OperandData, TileClass};
use tdl_reference::mask::MaskEval;
use tdl_reference::Tensor;

/// Brute force (the oracle's mask evaluator, point by point) runs only up
/// to this many score entries.
pub const BRUTE_FORCE_LIMIT: u64 = 1 << 26;

/// The tile classification of one attention at concrete sizes.
#[derive(Clone, Debug, PartialEq)]
pub struct TileReport {
    pub tile_q: usize,
    pub tile_k: usize,
    pub tiles_total: usize,
    pub tiles_visited: usize,
    pub tiles_full: usize,
    pub tiles_partial: usize,
    /// Visible score entries ÷ (heads·T·S), by brute force; `None` above
    /// [`BRUTE_FORCE_LIMIT`].
    pub density: Option<f64>,
    /// Visited tiles ÷ the tiles that hold at least one visible entry.
    pub visited_over_minimum: Option<f64>,
    /// The analytic bound over dense: total tiles ÷ visited tiles.
    pub best_case_speedup: f64,
    /// Split-KV chunks the Kernel IR's `auto` split resolves to on the
    /// target (per batch element: `heads × q-tiles` programs, the busiest
    /// program's visited kv-tiles).
    pub kv_splits: usize,
    /// Query rows whose mask holds for no key (they give zeros): how many,
    /// and the first few. `None` when not computed (brute force too large).
    pub empty_rows: Option<(usize, Vec<usize>)>,
}

fn eval_dim(d: &tdl_ir::Dim, b: &Bindings) -> Result<i64, String> {
    d.eval(b).map_err(|e| match e {
        tdl_ir::DimError::Unbound(s) => format!("symbol `{s}` is not bound: pass --bind {s}=N"),
        other => other.to_string(),
    })
}

/// Why an attention's mask cannot be looked at before the graph runs.
#[derive(Clone, Debug, PartialEq)]
pub enum MaskUnavailable {
    /// The mask reads run-time data (document ids, a block layout input).
    RunTimeData,
    /// A size is unknown (unbound symbol) or invalid.
    Sizes(String),
}

/// One fused attention's mask at concrete sizes, with the constant
/// operands it reads: what `tdlc explain` classifies and `tdlc masks` draws.
pub struct AttentionMask {
    pub t: i64,
    pub s: i64,
    pub heads: i64,
    /// `None` for an unmasked attention.
    pub mask: Option<(MaskExpr, Vec<Tensor>)>,
}

impl AttentionMask {
    /// The mask of the attention node `id` of `g`. Run-time data is checked
    /// before the sizes: no `--bind` helps there.
    pub fn of(g: &Graph, id: NodeId, bindings: &Bindings) -> Result<AttentionMask, MaskUnavailable> {
        let sizes = MaskUnavailable::Sizes;
        let Op::Attention { masked, .. } = &g.node(id).op else { return Err(sizes("not an attention node".into())) };
        let ins = g.inputs(id);
        let mask = if *masked {
            let Op::Mask(m) = &g.node(ins[3]).op else { return Err(sizes("the mask operand is not a mask".into())) };
            let mut tensors = Vec::new();
            for o in g.inputs(ins[3]) {
                match &g.node(o).op {
                    Op::Constant(c) => {
                        tensors.push(Tensor { dtype: c.dtype, shape: c.shape.clone(), data: c.data.clone() })
                    }
                    _ => return Err(MaskUnavailable::RunTimeData),
                }
            }
            Some((m.clone(), tensors))
        } else {
            None
        };
        let qt = g.node(ins[0]).ty.as_tensor().ok_or(sizes("q is not a tensor".into()))?;
        let kt = g.node(ins[1]).ty.as_tensor().ok_or(sizes("k is not a tensor".into()))?;
        let t = eval_dim(&qt.shape[qt.rank() - 2], bindings).map_err(sizes)?;
        let s = eval_dim(&kt.shape[kt.rank() - 2], bindings).map_err(sizes)?;
        let heads = if qt.rank() >= 3 { eval_dim(&qt.shape[qt.rank() - 3], bindings).map_err(sizes)? } else { 1 };
        if t < 1 || s < 1 || heads < 1 {
            return Err(sizes(format!("sizes must be positive (T = {t}, S = {s}, heads = {heads})")));
        }
        Ok(AttentionMask { t, s, heads, mask })
    }

    /// The constant operands as the tile classifier reads them.
    pub fn data(&self) -> MaskData<'_> {
        let operands = match &self.mask {
            Some((_, tensors)) => {
                tensors.iter().map(|t| OperandData { dtype: t.dtype, shape: t.shape.clone(), data: &t.data }).collect()
            }
            None => Vec::new(),
        };
        MaskData { operands }
    }
}

/// The tile sizes the lowering gives the attention node `id` (what
/// `--emit kernel` uses): `tdl_kernel::lower::attention_tiles` from its head
/// dimensions, element type and mask.
pub fn default_tiles(g: &Graph, id: NodeId, target: &Target) -> (usize, usize) {
    let ins = g.inputs(id);
    let last = |i: usize| {
        ins.get(i)
            .and_then(|&n| g.node(n).ty.as_tensor())
            .and_then(|t| t.shape.last())
            .and_then(tdl_ir::Dim::as_const)
            .and_then(|x| usize::try_from(x).ok())
    };
    let elem = g.node(id).ty.as_tensor().map_or(4, |t| t.dtype.size_bytes());
    let mask = match &g.node(id).op {
        Op::Attention { masked: true, .. } => ins.get(3).and_then(|&m| match &g.node(m).op {
            Op::Mask(e) => Some(e),
            _ => None,
        }),
        _ => None,
    };
    tdl_kernel::lower::attention_tiles(target, last(0), last(2), elem, mask)
}

/// The tile report of the attention node `id` of `g`; `kv_split` is the
/// split the Kernel IR would give it (`Target::kv_split`).
pub fn tile_report(
    g: &Graph,
    id: NodeId,
    bindings: &Bindings,
    tile_q: usize,
    tile_k: usize,
    kv_split: KvSplit,
) -> Result<TileReport, String> {
    let am = AttentionMask::of(g, id, bindings).map_err(|e| match e {
        MaskUnavailable::RunTimeData => {
            "the mask reads run-time data (document ids or a block layout input): its tiles are classified when it runs"
                .to_string()
        }
        MaskUnavailable::Sizes(why) => why,
    })?;
    let (t, s, heads) = (am.t, am.s, am.heads);
    let (t_u, s_u, h_u) = (t as usize, s as usize, heads as usize);
    let nq = t_u.div_ceil(tile_q);
    let nk = s_u.div_ceil(tile_k);
    let total = h_u * nq * nk;
    let Some((m, tensors)) = &am.mask else {
        return Ok(TileReport {
            tile_q,
            tile_k,
            tiles_total: total,
            tiles_visited: total,
            tiles_full: total,
            tiles_partial: 0,
            density: Some(1.0),
            visited_over_minimum: Some(1.0),
            best_case_speedup: 1.0,
            kv_splits: resolve_kv_split(kv_split, h_u * nq, nk),
            empty_rows: Some((0, Vec::new())),
        });
    };
    let data = am.data();
    let ctx = Ctx { t, s, heads: h_u, bindings, data: &data };
    let space = iteration_space(m, &ctx, tile_q, tile_k)?;
    let (tiles_total, visited, full, partial) = space.counts();
    let mut report = TileReport {
        tile_q,
        tile_k,
        tiles_total,
        tiles_visited: visited,
        tiles_full: full,
        tiles_partial: partial,
        density: None,
        visited_over_minimum: None,
        best_case_speedup: if visited == 0 { f64::INFINITY } else { tiles_total as f64 / visited as f64 },
        kv_splits: {
            let busiest = space
                .per_head
                .iter()
                .flatten()
                .map(|runs| runs.iter().map(|(r, _)| r.len()).sum::<usize>())
                .max()
                .unwrap_or(0);
            resolve_kv_split(kv_split, h_u * nq, busiest)
        },
        empty_rows: None,
    };
    let points = (t as u64).saturating_mul(s as u64).saturating_mul(heads as u64);
    if points <= BRUTE_FORCE_LIMIT {
        let refs: Vec<&Tensor> = tensors.iter().collect();
        let eval = MaskEval::new(m, &refs, t_u, s_u, bindings).map_err(|e| e.to_string())?;
        let mut tile_seen = vec![false; h_u * nq * nk];
        let mut visible: u64 = 0;
        let mut empty = Vec::new();
        let mut empty_count = 0usize;
        for h in 0..h_u {
            for q in 0..t_u {
                let mut row_any = false;
                for k in 0..s_u {
                    if eval.holds(q, k, h).map_err(|e| e.to_string())? {
                        visible += 1;
                        row_any = true;
                        tile_seen[(h * nq + q / tile_q) * nk + k / tile_k] = true;
                    }
                }
                if !row_any && h == 0 {
                    empty_count += 1;
                    if empty.len() < 10 {
                        empty.push(q);
                    }
                }
            }
        }
        let minimum = tile_seen.iter().filter(|x| **x).count();
        report.density = Some(visible as f64 / points as f64);
        report.visited_over_minimum = (minimum > 0).then(|| visited as f64 / minimum as f64);
        report.empty_rows = Some((empty_count, empty));
    }
    Ok(report)
}

/// The visible entries of head `h`: Full tiles by area, Partial tiles
/// element by element; `None` when that would spend more than `budget`
/// mask evaluations (the budget is shared across calls).
pub fn visible_in_head(
    space: &IterSpace,
    eval: &MaskEval<'_>,
    h: usize,
    budget: &mut u64,
) -> Result<Option<u64>, String> {
    let (t, s, tq, tk) = (space.t, space.s, space.tile_q, space.tile_k);
    let Some(rows) = space.per_head.get(h) else { return Err(format!("the iteration space has no head {h}")) };
    let mut visible = 0u64;
    for (qi, runs) in rows.iter().enumerate() {
        let q0 = qi * tq;
        let q1 = (q0 + tq).min(t);
        for (range, class) in runs {
            let k0 = range.start * tk;
            let k1 = (range.end * tk).min(s);
            if q0 >= q1 || k0 >= k1 {
                continue;
            }
            let area = ((q1 - q0) as u64) * ((k1 - k0) as u64);
            match class {
                TileClass::Full => visible += area,
                TileClass::Empty => {}
                TileClass::Partial => {
                    if area > *budget {
                        return Ok(None);
                    }
                    *budget -= area;
                    for q in q0..q1 {
                        for k in k0..k1 {
                            if eval.holds(q, k, h).map_err(|e| e.to_string())? {
                                visible += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(Some(visible))
}
