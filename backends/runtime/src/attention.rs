//! The attention kernel's runtime: what runs around the compiled program
//! function, with no LLVM — for the JIT (`tdl_llvm::attention`) and for
//! ahead-of-time artifacts ([`crate::aot`]) alike.
//!
//! [`AttentionRunner::run_with`] derives the block-sparse iteration space
//! from the mask formula (`tdl_passes::tiles::iteration_space`), flattens it
//! into run arrays (`[start, end, partial]` per run, an offset per `(head,
//! q-tile)`), packs Kᵀ once per K block, and hands the `(leading index,
//! q-tile)` programs (each possibly split across the KV range) to worker
//! threads; splits are merged with the online-softmax combine, and decode
//! with grouped heads packs a group's query heads into one program's rows.
//! The program function's contract is [`ProgramFn`].

use tdl_ir::layout::{next_index, AttentionLayout};
use tdl_ir::{ArrayRef, Bindings, DType, LambdaVar, MaskExpr, ScalarExpr};
use tdl_kernel::interp::{AttentionArgs, HookRun};
use tdl_kernel::ir::{AttentionKernel, KvSplit};
use tdl_kernel::target::resolve_kv_split;
use tdl_kernel::{F32Tensor, KernelStats};
use tdl_passes::tiles::{self, Ctx, MaskData, OperandData, TileClass};

use std::sync::atomic::{AtomicI32, Ordering};

use crate::pool::{run_parallel, Shared};
use crate::{RtError, MR};

/// The compile-time parameters of one attention kernel.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AttentionSpec {
    /// Head dimension of q and k.
    pub d: usize,
    /// Head dimension of v and the output.
    pub dv: usize,
    pub tile_q: usize,
    pub tile_k: usize,
    /// `None`: `1/sqrt(d)`.
    pub scale: Option<f64>,
    pub mask: Option<MaskExpr>,
    /// The score modifier over `s, q, k, h`, compiled into the program.
    pub score: Option<ScalarExpr>,
    /// Element type and rank of each mask operand, by position, when the
    /// mask holds an index lambda (which may read them); empty otherwise.
    pub mask_operands: Vec<Option<(DType, usize)>>,
    /// The same for the score modifier's operands (`None` where a position
    /// is not a tensor it may read).
    pub score_operands: Vec<Option<(DType, usize)>>,
}

impl AttentionSpec {
    /// A kernel without lambdas' operands or a score modifier.
    pub fn new(d: usize, dv: usize, tile_q: usize, tile_k: usize, scale: Option<f64>, mask: Option<MaskExpr>) -> Self {
        AttentionSpec {
            d,
            dv,
            tile_q,
            tile_k,
            scale,
            mask,
            score: None,
            mask_operands: Vec::new(),
            score_operands: Vec::new(),
        }
    }
}

/// Whether `m` holds an index lambda.
pub fn mask_has_lambda(m: &MaskExpr) -> bool {
    match m {
        MaskExpr::Lambda(_) => true,
        MaskExpr::And(a, b) | MaskExpr::Or(a, b) => mask_has_lambda(a) || mask_has_lambda(b),
        MaskExpr::Not(a) => mask_has_lambda(a),
        _ => false,
    }
}

/// Calls `f` on every lambda of `spec` (the mask's, then the score modifier).
/// Calls `f` on every index lambda of mask `m`.
pub fn each_mask_lambda(m: &MaskExpr, f: &mut dyn FnMut(&ScalarExpr)) {
    match m {
        MaskExpr::Lambda(e) => f(e),
        MaskExpr::And(a, b) | MaskExpr::Or(a, b) => {
            each_mask_lambda(a, f);
            each_mask_lambda(b, f);
        }
        MaskExpr::Not(a) => each_mask_lambda(a, f),
        _ => {}
    }
}

fn each_lambda(spec: &AttentionSpec, f: &mut dyn FnMut(&ScalarExpr)) {
    if let Some(m) = &spec.mask {
        each_mask_lambda(m, f);
    }
    if let Some(e) = &spec.score {
        f(e);
    }
}

/// Whether a scalar expression satisfies `p` anywhere.
fn any_expr(e: &ScalarExpr, p: &dyn Fn(&ScalarExpr) -> bool) -> bool {
    p(e) || match e {
        ScalarExpr::Index { indices, .. } => indices.iter().any(|i| any_expr(i, p)),
        ScalarExpr::Unary(_, a) => any_expr(a, p),
        ScalarExpr::Binary(_, a, b) => any_expr(a, p) || any_expr(b, p),
        ScalarExpr::Select(c, a, b) => any_expr(c, p) || any_expr(a, p) || any_expr(b, p),
        _ => false,
    }
}

/// The dimension symbols the lambdas of `spec` read, sorted: the order of
/// the program's `%lsyms` table.
pub fn lambda_symbols(spec: &AttentionSpec) -> Vec<String> {
    symbols_of(&mut |f| each_lambda(spec, f))
}

/// A walk over lambdas: calls its argument on each.
pub type LambdaWalk<'w> = &'w mut dyn FnMut(&mut dyn FnMut(&ScalarExpr));

/// The dimension symbols the lambdas `each` visits read, sorted.
pub fn symbols_of(each: LambdaWalk<'_>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    each(&mut |e| {
        let mut stack = vec![e];
        while let Some(x) = stack.pop() {
            match x {
                ScalarExpr::Sym(s) => {
                    if let Err(i) = out.binary_search(s) {
                        out.insert(i, s.clone());
                    }
                }
                ScalarExpr::Index { indices, .. } => stack.extend(indices),
                ScalarExpr::Unary(_, a) => stack.push(a),
                ScalarExpr::Binary(_, a, b) => stack.extend([&**a, &**b]),
                ScalarExpr::Select(c, a, b) => stack.extend([&**c, &**a, &**b]),
                _ => {}
            }
        }
    });
    out
}

/// Whether a lambda of `spec` reads the head index `h` (then query heads
/// are not packed into one program: each needs its own `h`).
pub fn lambdas_use_head(spec: &AttentionSpec) -> bool {
    let mut uses = false;
    each_lambda(spec, &mut |e| uses |= any_expr(e, &|x| matches!(x, ScalarExpr::Var(LambdaVar::H))));
    uses
}

/// The tile state one program keeps on its stack: m, l, O and S.
pub fn stack_bytes(spec: &AttentionSpec) -> usize {
    // Rows padded to the register block, columns to a vector (at most 16
    // lanes): O, S, the Q tile, the packed Kᵀ, m and l.
    let (tq, tk, dv, d) = (spec.tile_q + MR, spec.tile_k + 16, spec.dv + 16, spec.d);
    4 * (2 * tq + tq * dv + tq * tk + tq * d + d * tk)
}

/// `(q, k, v, out, runs, offsets, T, S, oq, ok, ov, oo, head, q_tile,
/// n_q_tiles, mask arrays, mask array column counts, the mask's T, rows per
/// query index, first and end visited kv-tile, raw split state or null,
/// packed Kᵀ of this K block or null, the lambdas' symbol values, operand
/// arrays (`f64` values, mask operands then score operands) and their
/// dimensions, the lambdas' error flag)`.
/// `T` counts the program's rows (the packed heads' rows in decode); the
/// mask sees query `row / qdiv` of `Tm`.
pub type ProgramFn = unsafe extern "C" fn(
    *const f32,
    *const f32,
    *const f32,
    *mut f32,
    *const i64,
    *const i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    *const *const i32,
    *const i64,
    i64,
    i64,
    i64,
    i64,
    *mut f32,
    *const f32,
    *const i64,
    *const *const f64,
    *const i64,
    *const AtomicI32,
);

/// The arrays a mask reads at run time (document ids, block layouts), in
/// the order the code generator (`tdl_llvm`) numbers them: a pre-order walk, left to right.
#[derive(Clone, Debug, PartialEq)]
pub enum MaskSlot {
    /// `document(ids)`: mask operand `i`, an `i32[N]` with `N ≥ T, S`.
    Document(usize),
    /// `blocks(layout, block)`: a 2-D layout (an operand or a constant).
    Blocks { layout: ArrayRef, bq: i64, bk: i64 },
}

/// The run-time arrays of `m`, in slot order.
pub fn mask_slots(m: &MaskExpr) -> Vec<MaskSlot> {
    let mut out = Vec::new();
    fn walk(m: &MaskExpr, out: &mut Vec<MaskSlot>) {
        match m {
            MaskExpr::Document { ids } => out.push(MaskSlot::Document(*ids)),
            MaskExpr::Blocks { layout, block } => {
                out.push(MaskSlot::Blocks { layout: layout.clone(), bq: block[0], bk: block[1] })
            }
            MaskExpr::And(a, b) | MaskExpr::Or(a, b) => {
                walk(a, out);
                walk(b, out);
            }
            MaskExpr::Not(a) => walk(a, out),
            _ => {}
        }
    }
    walk(m, &mut out);
    out
}

/// How a run went.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuRunStats {
    /// `(leading index, q-tile)` programs (after GQA packing).
    pub programs: usize,
    /// Over every leading index (batch and head).
    pub tiles_visited: usize,
    pub tiles_full: usize,
    pub tiles_partial: usize,
    pub threads: usize,
    /// The KV split used (1: none).
    pub kv_splits: usize,
    /// Query heads packed into one program's rows (decode with GQA/MQA; 1:
    /// none).
    pub packed_heads: usize,
}

/// Run-time choices of [`AttentionRunner::run_with`].
#[derive(Clone, Copy, Debug)]
pub struct RunOptions {
    pub threads: usize,
    /// How each program's visited kv-tiles are split across work items
    /// (resolved per call with `tdl_kernel::target::resolve_kv_split`).
    pub kv_split: KvSplit,
}

/// The specification a compiled kernel must have to run `k` on `args`:
/// `None` for what the code generator does not compile (score modifiers).
pub fn spec_of(k: &AttentionKernel, args: &AttentionArgs<'_>) -> Option<AttentionSpec> {
    let layout = AttentionLayout::new(DType::F32, &args.q.shape, &args.k.shape, &args.v.shape).ok()?;
    let mask = args.mask.map(|(m, _)| m.clone());
    let mask_operands = match args.mask {
        Some((m, data)) if mask_has_lambda(m) => data.operands.iter().map(|o| Some((o.dtype, o.shape.len()))).collect(),
        _ => Vec::new(),
    };
    let score_operands = match (&k.score, args.score) {
        (Some(_), Some(sm)) => sm.operands.iter().map(|o| o.as_ref().map(|o| (o.dtype, o.shape.len()))).collect(),
        (Some(_), None) => return None,
        _ => Vec::new(),
    };
    Some(AttentionSpec {
        d: layout.d,
        dv: layout.dv,
        tile_q: k.tile_q,
        tile_k: k.tile_k,
        scale: k.scale,
        mask,
        score: k.score.clone(),
        mask_operands,
        score_operands,
    })
}

/// The runtime of one compiled attention program function.
#[derive(Clone, Debug)]
pub struct AttentionRunner {
    spec: AttentionSpec,
    f: ProgramFn,
    /// Columns of a packed Kᵀ tile (`tile_k` rounded up to a vector).
    tkp: usize,
}

impl AttentionRunner {
    /// The runtime of `f`, compiled for `spec` with packed Kᵀ tiles of
    /// `tkp` columns.
    ///
    /// # Safety
    /// `f` must be a program function generated for exactly `spec` and
    /// `tkp` (the contract of [`ProgramFn`]), valid as long as the runner
    /// is used.
    pub unsafe fn new(spec: AttentionSpec, f: ProgramFn, tkp: usize) -> AttentionRunner {
        AttentionRunner { spec, f, tkp }
    }

    pub fn spec(&self) -> &AttentionSpec {
        &self.spec
    }

    /// Runs kernel `k` for the Kernel IR executor's hook
    /// ([`tdl_kernel::interp::Hooks::attention`]); `executor` names this
    /// executor in `--stats`.
    pub fn hook_run(
        &self,
        k: &AttentionKernel,
        args: &AttentionArgs<'_>,
        threads: usize,
        executor: &'static str,
    ) -> Result<HookRun, String> {
        let layout = AttentionLayout::new(DType::F32, &args.q.shape, &args.k.shape, &args.v.shape)?;
        let none = MaskData::none();
        let data = args.mask.map_or(&none, |(_, d)| d);
        let mut out = Vec::new();
        let opts = RunOptions { threads, kv_split: k.kv_split };
        let score_ops = args.score.map_or(&[][..], |sm| &sm.operands[..]);
        let st = self
            .run_scored(
                (&args.q.shape, &args.q.data),
                (&args.k.shape, &args.k.data),
                (&args.v.shape, &args.v.data),
                data,
                score_ops,
                args.bindings,
                &mut out,
                &opts,
            )
            .map_err(|e| e.to_string())?;
        let mut shape = layout.lead.clone();
        shape.extend([layout.t, layout.dv]);
        let stats = KernelStats {
            programs: st.programs as u64,
            tiles_visited: st.tiles_visited as u64,
            full_tiles: st.tiles_full as u64,
            partial_tiles: st.tiles_partial as u64,
            kv_splits: st.kv_splits,
            ..KernelStats::default()
        };
        Ok((F32Tensor { shape, data: out }, executor, stats))
    }
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        q: (&[usize], &[f32]),
        k: (&[usize], &[f32]),
        v: (&[usize], &[f32]),
        mask_data: &MaskData<'_>,
        bindings: &Bindings,
        out: &mut Vec<f32>,
        threads: usize,
    ) -> Result<CpuRunStats, RtError> {
        self.run_with(q, k, v, mask_data, bindings, out, &RunOptions { threads, kv_split: KvSplit::None })
    }

    /// Runs the attention on row-major `f32` data of shapes `q: [..., T, d]`,
    /// `k: [..., S, d]`, `v: [..., S, dv]` (leading axes as the Kernel IR's
    /// attention layout: GQA on axis -3, broadcasting), writing `out` of
    /// shape `[lead..., T, dv]`, on `threads` threads.
    ///
    /// Decode with grouped heads (`T = 1`, query heads sharing a K/V head,
    /// the same iteration space for each) packs the group's heads into the
    /// rows of one program, so K and V are read once per group.
    #[allow(clippy::too_many_arguments)]
    pub fn run_with(
        &self,
        q: (&[usize], &[f32]),
        k: (&[usize], &[f32]),
        v: (&[usize], &[f32]),
        mask_data: &MaskData<'_>,
        bindings: &Bindings,
        out: &mut Vec<f32>,
        opts: &RunOptions,
    ) -> Result<CpuRunStats, RtError> {
        self.run_scored(q, k, v, mask_data, &[], bindings, out, opts)
    }

    /// [`AttentionRunner::run_with`] with the score modifier's operands
    /// (by position; the spec says which it reads).
    #[allow(clippy::too_many_arguments)]
    pub fn run_scored(
        &self,
        q: (&[usize], &[f32]),
        k: (&[usize], &[f32]),
        v: (&[usize], &[f32]),
        mask_data: &MaskData<'_>,
        score_ops: &[Option<OperandData<'_>>],
        bindings: &Bindings,
        out: &mut Vec<f32>,
        opts: &RunOptions,
    ) -> Result<CpuRunStats, RtError> {
        let layout = AttentionLayout::new(DType::F32, q.0, k.0, v.0).map_err(RtError::new)?;
        let (t, s) = (layout.t, layout.s);
        if layout.d != self.spec.d || layout.dv != self.spec.dv {
            return Err(RtError::new(format!(
                "the kernel was compiled for head dimensions {}/{}, the data has {}/{}",
                self.spec.d, self.spec.dv, layout.d, layout.dv
            )));
        }
        for (what, (shape, data)) in [("q", q), ("k", k), ("v", v)] {
            if shape.iter().product::<usize>() != data.len() {
                return Err(RtError::new(format!("{what}: shape {shape:?} does not match {} elements", data.len())));
            }
        }
        let (tq, tk) = (self.spec.tile_q, self.spec.tile_k);
        let (nq, nk) = (t.div_ceil(tq), s.div_ceil(tk));
        let heads = layout.mask_heads();
        let n_lead = layout.n_lead().ok_or_else(|| RtError::new("too many leading elements"))?;
        // The iteration space, flattened: runs [start, end, partial] and an
        // offset per (head, q-tile).
        let (mut runs, mut offs): (Vec<i64>, Vec<i64>) = (Vec::new(), vec![0]);
        let (mut full, mut partial) = (0usize, 0usize);
        match &self.spec.mask {
            Some(m) => {
                let (ti, si) = (t as i64, s as i64);
                let ctx = Ctx { t: ti, s: si, heads, bindings, data: mask_data };
                let space = tiles::iteration_space(m, &ctx, tq, tk).map_err(RtError::new)?;
                for h in 0..heads {
                    for qt in 0..nq {
                        for (r, class) in &space.per_head[h][qt] {
                            let is_partial = *class == TileClass::Partial;
                            runs.extend([r.start as i64, r.end as i64, i64::from(is_partial)]);
                            if is_partial {
                                partial += r.len();
                            } else {
                                full += r.len();
                            }
                        }
                        offs.push((runs.len() / 3) as i64);
                    }
                }
            }
            None => {
                for _ in 0..heads * nq {
                    if nk > 0 {
                        runs.extend([0, nk as i64, 0]);
                        full += nk;
                    }
                    offs.push((runs.len() / 3) as i64);
                }
            }
        }
        // Neighborhood grids must match the sizes (NATTEN's rules, the shared check).
        if let Some(m) = &self.spec.mask {
            let mut stack = vec![m];
            while let Some(x) = stack.pop() {
                match x {
                    MaskExpr::Neighborhood { kernel, grid, dilation, causal } => {
                        tdl_ir::mask::check_neighborhood(kernel, grid, dilation, causal, t as i64, s as i64)
                            .map_err(RtError::new)?
                    }
                    MaskExpr::And(a, b) | MaskExpr::Or(a, b) => stack.extend([&**a, &**b]),
                    MaskExpr::Not(a) => stack.push(a),
                    _ => {}
                }
            }
        }
        // The mask's run-time arrays as i32, checked as the reference checks them.
        let slots = self.spec.mask.as_ref().map(mask_slots).unwrap_or_default();
        let mut arrays: Vec<Vec<i32>> = Vec::new();
        let mut cols: Vec<i64> = Vec::new();
        for slot in &slots {
            let operand = |i: usize| {
                mask_data.operands.get(i).ok_or_else(|| {
                    RtError::new(format!("the mask reads operand {i}, but it has {}", mask_data.operands.len()))
                })
            };
            match slot {
                MaskSlot::Document(i) => {
                    let x = operand(*i)?;
                    if x.shape.len() != 1 || x.dtype != DType::I32 || x.data.len() < t || x.data.len() < s {
                        return Err(RtError::new(format!(
                            "document ids must be an i32[N] with N ≥ {t} queries and {s} keys, found {:?} of shape {:?}",
                            x.dtype, x.shape
                        )));
                    }
                    arrays.push(x.data.iter().map(|&v| v as i32).collect());
                    cols.push(0);
                }
                MaskSlot::Blocks { layout, bq, bk } => {
                    let (shape, data): (Vec<usize>, Vec<f64>) = match layout {
                        ArrayRef::Const(c) => (c.shape.clone(), c.data.clone()),
                        ArrayRef::Operand(i) => {
                            let x = operand(*i)?;
                            (x.shape.clone(), x.data.to_vec())
                        }
                    };
                    let (Ok(bq), Ok(bk)) = (usize::try_from(*bq), usize::try_from(*bk)) else {
                        return Err(RtError::new(format!("block sizes must be positive, found [{bq}, {bk}]")));
                    };
                    let ok = shape.len() == 2
                        && bq > 0
                        && bk > 0
                        && data.len() == shape[0] * shape[1]
                        && shape[0] >= t.div_ceil(bq)
                        && shape[1] >= s.div_ceil(bk);
                    if !ok {
                        return Err(RtError::new(format!(
                            "block layout of shape {shape:?} does not cover {t} queries × {s} keys in blocks of [{bq}, {bk}]"
                        )));
                    }
                    arrays.push(data.iter().map(|&v| i32::from(v != 0.0)).collect());
                    cols.push(shape[1] as i64);
                }
            }
        }
        let array_ptrs: Vec<*const i32> = arrays.iter().map(|a| a.as_ptr()).collect();
        let (mptr, cptr) = (Shared(array_ptrs.as_ptr().cast_mut()), Shared(cols.as_ptr().cast_mut()));
        let dv = self.spec.dv;
        let n_out = n_lead * t * dv;
        out.clear();
        out.resize(n_out, 0.0);
        // Per leading index: offsets into q, k, v, out and the head.
        let mut leads = Vec::with_capacity(n_lead);
        let mut idx = vec![0usize; layout.lead.len()];
        for li in 0..n_lead {
            let (oq, ok, ov) = layout.offsets(&idx);
            leads.push((oq, ok, ov, li * t * dv, idx.last().copied().unwrap_or(0)));
            next_index(&mut idx, &layout.lead);
        }
        let visited_of = |h: usize, qt: usize| -> usize {
            let slot = h * nq + qt;
            runs[3 * offs[slot] as usize..3 * offs[slot + 1] as usize].chunks(3).map(|r| (r[1] - r[0]) as usize).sum()
        };
        // The lambdas' tables: symbol values, operand arrays and dimensions.
        let symbols = lambda_symbols(&self.spec);
        let sym_vals = symbols
            .iter()
            .map(|name| {
                bindings.get(name).copied().ok_or_else(|| {
                    RtError::new(format!("dimension symbol `{name}` used in a lambda is not bound by any input"))
                })
            })
            .collect::<Result<Vec<i64>, RtError>>()?;
        let (mut lptrs, mut ldims): (Vec<*const f64>, Vec<i64>) = (Vec::new(), Vec::new());
        let mut table = |want: &[Option<(DType, usize)>], got: &[Option<&OperandData<'_>>], what: &str| {
            for (i, w) in want.iter().enumerate() {
                let Some((dtype, rank)) = w else {
                    lptrs.push(std::ptr::null());
                    continue;
                };
                let o = got
                    .get(i)
                    .copied()
                    .flatten()
                    .ok_or_else(|| RtError::new(format!("the {what} reads operand {i}, which was not given")))?;
                if o.dtype != *dtype || o.shape.len() != *rank || o.shape.iter().product::<usize>() != o.data.len() {
                    return Err(RtError::new(format!(
                        "the {what}'s operand {i} is {:?} of shape {:?} ({} values); the kernel was compiled for {:?} of rank {rank}",
                        o.dtype,
                        o.shape,
                        o.data.len(),
                        dtype
                    )));
                }
                lptrs.push(o.data.as_ptr());
                ldims.extend(o.shape.iter().map(|&d| d as i64));
            }
            Ok(())
        };
        let mask_got: Vec<Option<&OperandData<'_>>> = mask_data.operands.iter().map(Some).collect();
        let score_got: Vec<Option<&OperandData<'_>>> = score_ops.iter().map(Option::as_ref).collect();
        table(&self.spec.mask_operands, &mask_got, "mask")?;
        table(&self.spec.score_operands, &score_got, "score modifier")?;
        let lerr = AtomicI32::new(0);
        let (lsp, lap, ldp) = (
            Shared(sym_vals.as_ptr().cast_mut()),
            Shared(lptrs.as_ptr().cast_mut()),
            Shared(ldims.as_ptr().cast_mut()),
        );
        let lerr_p = &lerr;
        let pack = if lambdas_use_head(&self.spec) {
            1
        } else {
            decode_pack(&leads, t, self.spec.d, dv, tq, |h| {
                let slot = h * nq;
                &runs[3 * offs[slot] as usize..3 * offs[slot + 1] as usize]
            })
        };
        // Work items: programs (a leading index, or `pack` of them, × a
        // q-tile), each split into `splits` shares of its visited tiles.
        let programs = (n_lead / pack) * nq;
        let rows_total = if pack > 1 { pack } else { t };
        let busiest = (0..heads).flat_map(|h| (0..nq).map(move |qt| (h, qt))).map(|(h, qt)| visited_of(h, qt)).max();
        let mut splits = resolve_kv_split(opts.kv_split, programs, busiest.unwrap_or(0)).max(1);
        let raw_len = tq * dv + 2 * tq;
        while splits > 1 && programs.saturating_mul(splits).saturating_mul(raw_len) > MAX_SPLIT_STATE {
            splits -= 1;
        }
        let mut raw = vec![0f32; if splits > 1 { programs * splits * raw_len } else { 0 }];
        let outp = Shared(out.as_mut_ptr());
        let rawp = Shared(raw.as_mut_ptr());
        // Kᵀ packed once per K block (query heads and q-tiles share it),
        // unless the programs have few rows (decode): then the kernel dots
        // K's rows in place and K is read once, as it is.
        let few_rows = tq.min(rows_total) <= DOT_ROWS;
        let mut kblocks: Vec<usize> = if few_rows { Vec::new() } else { leads.iter().map(|l| l.1).collect() };
        kblocks.sort_unstable();
        kblocks.dedup();
        let kpacked = pack_kt(k.1, &kblocks, (s, self.spec.d, tk, self.tkp), opts.threads)?;
        let kt_len = nk * self.spec.d * self.tkp;
        let kp = Shared(kpacked.as_ptr().cast_mut());
        let kblocks = &kblocks;
        let (runs, offs, leads) = (&runs, &offs, &leads);
        let f = self.f;
        let items = programs * splits;
        let threads = run_parallel(items, opts.threads, (2 << 20) + stack_bytes(&self.spec), |w| {
            let (p, si) = (w / splits, w % splits);
            let (li, qt) = ((p / nq) * pack, p % nq);
            let (oq, ok, ov, oo, h) = leads[li];
            let ktp = if few_rows {
                std::ptr::null()
            } else {
                kp.ptr().wrapping_add(kblocks.binary_search(&ok).unwrap_or_default() * kt_len).cast_const()
            };
            let (v0, v1) = if splits > 1 {
                let per = visited_of(h, qt).div_ceil(splits).max(1);
                ((si * per) as i64, ((si + 1) * per) as i64)
            } else {
                (0, i64::MAX)
            };
            let raww = if splits > 1 { rawp.ptr().wrapping_add(w * raw_len) } else { std::ptr::null_mut() };
            // SAFETY: the function reads q/k/v/runs/offs and the mask arrays
            // within the bounds the layout, the iteration space and the checks
            // above guarantee (packed rows are checked by `decode_pack`), and
            // writes rows [qt·tile_q, ..) of lead `li` (and of the leads packed
            // with it), or its own share of `raw`, which no other item writes.
            unsafe {
                f(
                    q.1.as_ptr(),
                    k.1.as_ptr(),
                    v.1.as_ptr(),
                    outp.ptr(),
                    runs.as_ptr(),
                    offs.as_ptr(),
                    rows_total as i64,
                    s as i64,
                    oq as i64,
                    ok as i64,
                    ov as i64,
                    oo as i64,
                    h as i64,
                    qt as i64,
                    nq as i64,
                    mptr.ptr().cast_const(),
                    cptr.ptr().cast_const(),
                    t as i64,
                    pack as i64,
                    v0,
                    v1,
                    raww,
                    ktp,
                    lsp.ptr().cast_const(),
                    lap.ptr().cast_const(),
                    ldp.ptr().cast_const(),
                    lerr_p,
                )
            };
        })?;
        if lerr.load(Ordering::Relaxed) != 0 {
            return Err(RtError::new(
                "an index is out of range of an array read in a lambda of this attention (its mask or score modifier)",
            ));
        }
        if splits > 1 {
            merge_splits(&raw, out, programs, splits, (tq, dv, nq), rows_total, |p| leads[(p / nq) * pack].3);
        }
        // The space is per head; every other leading axis repeats it.
        let per = (n_lead / heads.max(1)).max(1);
        Ok(CpuRunStats {
            programs,
            tiles_visited: (full + partial) * per,
            tiles_full: full * per,
            tiles_partial: partial * per,
            threads,
            kv_splits: splits,
            packed_heads: pack,
        })
    }
}

/// Kᵀ of every K block at `starts` (each `[S, d]` row-major in `k`) packed
/// per kv-tile for the kernel: block `b`'s tile `t` is `d × tkp` floats at
/// `(b·n_tiles + t)·d·tkp`, row `dd` holding `K[t·tk + j][dd]` for
/// `j < tk` inside S and zeros elsewhere.
fn pack_kt(
    k: &[f32],
    starts: &[usize],
    (s, d, tk, tkp): (usize, usize, usize, usize),
    threads: usize,
) -> Result<Vec<f32>, RtError> {
    if starts.iter().any(|&o| o.checked_add(s * d).is_none_or(|end| end > k.len())) {
        return Err(RtError::new(format!("k: a block of {s}×{d} does not fit in {} elements", k.len())));
    }
    let nk = s.div_ceil(tk);
    let tile = d * tkp;
    let mut out = vec![0f32; starts.len() * nk * tile];
    let outp = Shared(out.as_mut_ptr());
    run_parallel(starts.len() * nk, threads, 1 << 20, |item| {
        let (b, t) = (item / nk, item % nk);
        let (k0, bk) = (t * tk, tk.min(s - t * tk));
        // SAFETY: item (b, t) writes its own tile of `out` only; the reads are
        // inside `k` (checked above).
        let dst = unsafe { std::slice::from_raw_parts_mut(outp.ptr().add(item * tile), tile) };
        let src = &k[starts[b] + k0 * d..starts[b] + (k0 + bk) * d];
        for (j, row) in src.chunks_exact(d).enumerate() {
            for (dd, &x) in row.iter().enumerate() {
                dst[dd * tkp + j] = x;
            }
        }
    })?;
    Ok(out)
}

/// Programs of at most this many query rows (decode, packed heads) dot K's
/// rows in place instead of using a packed Kᵀ.
const DOT_ROWS: usize = 8;

/// The most `f32`s of split state (`[O, m, l]` per program and split) a
/// run keeps; larger splits are reduced to fit.
const MAX_SPLIT_STATE: usize = 64 << 20;

/// How many consecutive leading indices one decode program can take as its
/// rows: with `T = 1`, a group of leads that read the same K/V block, whose
/// q rows and output rows are consecutive, and whose heads have the same
/// runs. 1 when there is no such group.
fn decode_pack<'r>(
    leads: &[(usize, usize, usize, usize, usize)],
    t: usize,
    d: usize,
    dv: usize,
    tile_q: usize,
    runs_of_head: impl Fn(usize) -> &'r [i64],
) -> usize {
    if t != 1 || leads.len() < 2 {
        return 1;
    }
    let g = leads.iter().take_while(|l| (l.1, l.2) == (leads[0].1, leads[0].2)).count();
    if g < 2 || g > tile_q || !leads.len().is_multiple_of(g) {
        return 1;
    }
    let ok = leads.chunks(g).all(|grp| {
        let (q0, k0, v0, o0, h0) = grp[0];
        grp.iter().enumerate().all(|(i, &(q, k, v, o, h))| {
            (k, v) == (k0, v0) && q == q0 + i * d && o == o0 + i * dv && runs_of_head(h) == runs_of_head(h0)
        })
    });
    if ok {
        g
    } else {
        1
    }
}

/// Merges the splits' raw states (online-softmax combine) and writes the
/// output: `m = max mᵢ`, `l = Σ e^(mᵢ-m)·lᵢ`, `O = Σ e^(mᵢ-m)·Oᵢ`, out =
/// `O / l`; no visible key (`l == 0`) gives zeros.
fn merge_splits(
    raw: &[f32],
    out: &mut [f32],
    programs: usize,
    splits: usize,
    (tq, dv, nq): (usize, usize, usize),
    rows_total: usize,
    out_offset: impl Fn(usize) -> usize,
) {
    let raw_len = tq * dv + 2 * tq;
    for p in 0..programs {
        let q0 = (p % nq) * tq;
        let bq = tq.min(rows_total - q0);
        let base = out_offset(p) + q0 * dv;
        let share = |si: usize| &raw[(p * splits + si) * raw_len..(p * splits + si + 1) * raw_len];
        for i in 0..bq {
            let m = (0..splits).map(|si| share(si)[tq * dv + i]).fold(f32::NEG_INFINITY, f32::max);
            let dst = &mut out[base + i * dv..base + (i + 1) * dv];
            dst.fill(0.0);
            let mut l = 0f32;
            if m != f32::NEG_INFINITY {
                for si in 0..splits {
                    let st = share(si);
                    let mi = st[tq * dv + i];
                    if mi == f32::NEG_INFINITY {
                        continue;
                    }
                    let w = (mi - m).exp();
                    l += w * st[tq * dv + tq + i];
                    for (o, x) in dst.iter_mut().zip(&st[i * dv..(i + 1) * dv]) {
                        *o += w * x;
                    }
                }
            }
            if l == 0.0 {
                dst.fill(0.0);
            } else {
                dst.iter_mut().for_each(|o| *o /= l);
            }
        }
    }
}
