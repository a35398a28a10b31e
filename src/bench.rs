//! `tdlc bench`: times one graph on random inputs and reports the time
//! (median, min, max over the timed repetitions), the useful GFLOP/s and an
//! approximate GB/s.
//!
//! The work is counted on the graph's Kernel IR, at the bound sizes:
//!
//! * **flops**: for each attention kernel `2·visible·D + 2·visible·Dv`
//!   (`4·visible·D` when `D = Dv`: Q·Kᵀ and P·V, only over the score entries
//!   the mask lets through), where `visible` is summed over the leading
//!   (batch, head) indices; `2·M·N·K·batch` for each matmul; every other
//!   kernel counts 0.
//! * **visible**: counted on the block-sparse iteration space the kernels
//!   run over ([`tdl_passes::tiles::iteration_space`], with the kernel's own
//!   tile sizes): a Full tile counts its (clipped) area, a Partial tile is
//!   counted by evaluating the mask per element
//!   ([`tdl_reference::mask::MaskEval`]), Empty tiles count nothing. Nothing
//!   of size `T×S` is allocated. Without a mask, `visible = T·S`.
//! * **bytes**: per kernel, the bytes of every buffer it reads (each once)
//!   plus the buffer it writes, at the buffer's element type. An
//!   approximation: re-reads (K/V per q-tile) and caches are not modelled,
//!   and a sliced view counts its whole buffer.

use std::time::Instant;

use tdl::ir::layout::AttentionLayout;
use tdl::ir::{Bindings, DType, Dim, MaskExpr};
use tdl::kernel::ir::{AttentionKernel, BufId, BufKind, KernelBody, KernelProgram, MatMulKernel};
use tdl::passes::tiles::{iteration_space, Ctx, MaskData, OperandData};
use tdl::reference::mask::MaskEval;
use tdl::reference::Tensor;
use tdl::tiling::visible_in_head;

/// The most timed repetitions `--reps` accepts.
pub const MAX_REPS: usize = 10_000;
/// The most warm-up runs `--warmup` accepts.
pub const MAX_WARMUP: usize = 1_000;
/// Mask evaluations (inside Partial tiles) the visible count may spend per
/// attention kernel; above this the count is given up (reported as unknown).
pub const MAX_MASK_EVALS: u64 = 1 << 32;

/// The work of one run of a program, at its bound sizes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Work {
    /// Useful flops; `None` when some attention's visible count is unknown.
    pub flops: Option<u64>,
    /// Bytes read and written (see the module docs).
    pub bytes: u64,
    /// Attention kernels.
    pub attentions: usize,
    /// Visible score entries over every attention kernel and leading index;
    /// `None` when unknown.
    pub visible: Option<u64>,
    /// All score entries: `T·S` per leading index, over attention kernels.
    pub scores: u64,
    /// Why something was not counted.
    pub notes: Vec<String>,
}

impl Work {
    /// `visible / scores`; `None` without attention or when unknown.
    pub fn visible_fraction(&self) -> Option<f64> {
        match self.visible {
            Some(v) if self.attentions > 0 && self.scores > 0 => Some(v as f64 / self.scores as f64),
            _ => None,
        }
    }
}

fn eval_shape(shape: &[Dim], b: &Bindings) -> Result<Vec<usize>, String> {
    shape
        .iter()
        .map(|d| {
            let v = d.eval(b).map_err(|e| format!("dimension {d}: {e}"))?;
            usize::try_from(v).map_err(|_| format!("dimension {d} is {v}"))
        })
        .collect()
}

fn numel(shape: &[usize]) -> u64 {
    shape.iter().fold(1u64, |a, &d| a.saturating_mul(d as u64))
}

/// Counts the work of `p` on `inputs` (one per parameter, in order).
pub fn count_work(p: &KernelProgram, inputs: &[Tensor]) -> Result<Work, String> {
    let bindings = tdl::kernel::interp::bind(p, inputs).map_err(|e| e.to_string())?;
    let buf_shape = |id: BufId| -> Result<(Vec<usize>, DType), String> {
        let b = p.buffer(id).ok_or_else(|| format!("no buffer {id}"))?;
        Ok((eval_shape(&b.shape, &bindings)?, b.dtype))
    };
    let mut work = Work { flops: Some(0), ..Work::default() };
    let mut visible_total = Some(0u64);
    for k in &p.kernels {
        let mut bufs = k.body.reads();
        bufs.push(k.body.out());
        bufs.sort();
        bufs.dedup();
        for id in bufs {
            let (shape, dtype) = buf_shape(id)?;
            work.bytes = work.bytes.saturating_add(numel(&shape).saturating_mul(dtype.size_bytes() as u64));
        }
        let flops = match &k.body {
            KernelBody::Attention(a) => {
                let c = attention_counts(p, a, inputs, &bindings, &buf_shape)?;
                work.attentions += 1;
                work.scores = work.scores.saturating_add(c.scores);
                match c.visible {
                    Ok(v) => {
                        visible_total = visible_total.map(|t| t.saturating_add(v));
                        Some(v.saturating_mul(2 * (c.d + c.dv)))
                    }
                    Err(why) => {
                        work.notes.push(format!("kernel `{}`: visible entries not counted: {why}", k.name));
                        visible_total = None;
                        None
                    }
                }
            }
            KernelBody::MatMul(m) => Some(matmul_flops(p, m, &bindings)?),
            _ => Some(0),
        };
        work.flops = match (work.flops, flops) {
            (Some(a), Some(b)) => Some(a.saturating_add(b)),
            _ => None,
        };
    }
    work.visible = visible_total;
    Ok(work)
}

/// `2·M·N·K·batch`.
fn matmul_flops(p: &KernelProgram, m: &MatMulKernel, b: &Bindings) -> Result<u64, String> {
    let out = p.buffer(m.out).ok_or_else(|| format!("no buffer {}", m.out))?;
    let a = p.buffer(m.a.buf).ok_or_else(|| format!("no buffer {}", m.a.buf))?;
    let out = eval_shape(&out.shape, b)?;
    let a = eval_shape(&m.a.shape(&a.shape)?, b)?;
    let (Some(&k), true) = (a.last(), out.len() >= 2) else {
        return Err("a matmul of rank below 2".into());
    };
    Ok(numel(&out).saturating_mul(k as u64).saturating_mul(2))
}

/// One attention kernel's counts.
struct AttentionCounts {
    d: u64,
    dv: u64,
    /// `T·S` per leading index, summed.
    scores: u64,
    /// Visible entries summed over the leading indices, or why not counted.
    visible: Result<u64, String>,
}

fn attention_counts(
    p: &KernelProgram,
    a: &AttentionKernel,
    inputs: &[Tensor],
    bindings: &Bindings,
    buf_shape: &dyn Fn(BufId) -> Result<(Vec<usize>, DType), String>,
) -> Result<AttentionCounts, String> {
    let (q, k, v) = (buf_shape(a.q)?.0, buf_shape(a.k)?.0, buf_shape(a.v)?.0);
    let layout = AttentionLayout::new(DType::F32, &q, &k, &v)?;
    let (t, s) = (layout.t, layout.s);
    let n_lead = layout.n_lead().ok_or("the attention has more leading indices than fit in memory")?;
    let heads = layout.mask_heads();
    let scores = numel(&[t, s, n_lead]);
    let mut counts = AttentionCounts { d: layout.d as u64, dv: layout.dv as u64, scores, visible: Ok(scores) };
    let Some(mask) = &a.mask else { return Ok(counts) };
    // The mask's operands: inputs and constants are known before the run;
    // an operand computed by an earlier kernel is not.
    let mut tensors = Vec::new();
    for &id in &mask.operands {
        let b = p.buffer(id).ok_or_else(|| format!("no buffer {id}"))?;
        match &b.kind {
            BufKind::Input(i) => tensors.push(inputs.get(*i).ok_or_else(|| format!("no input {i}"))?.clone()),
            BufKind::Const(c) => tensors.push(Tensor { dtype: c.dtype, shape: c.shape.clone(), data: c.data.clone() }),
            BufKind::Temp => {
                counts.visible = Err(format!("the mask reads `{}`, computed while the graph runs", b.name));
                return Ok(counts);
            }
        }
    }
    let refs: Vec<&Tensor> = tensors.iter().collect();
    let data = MaskData {
        operands: tensors
            .iter()
            .map(|t| OperandData { dtype: t.dtype, shape: t.shape.clone(), data: &t.data })
            .collect(),
    };
    let eval = MaskEval::new(&mask.expr, &refs, t, s, bindings).map_err(|e| e.to_string())?;
    let (ti, si) = (i64::try_from(t).map_err(|e| e.to_string())?, i64::try_from(s).map_err(|e| e.to_string())?);
    let ctx = Ctx { t: ti, s: si, heads, bindings, data: &data };
    let space = iteration_space(&mask.expr, &ctx, a.tile_q, a.tile_k)?;
    // Only lambdas read `h`: every other mask is the same in every head.
    let distinct = if reads_lambda(&mask.expr) { heads } else { 1 };
    let mut budget = MAX_MASK_EVALS;
    let mut per_head = Vec::with_capacity(distinct);
    for h in 0..distinct {
        match visible_in_head(&space, &eval, h, &mut budget)? {
            Some(n) => per_head.push(n),
            None => {
                counts.visible = Err(format!("more than {MAX_MASK_EVALS} mask evaluations in partial tiles"));
                return Ok(counts);
            }
        }
    }
    // Leading index `i` reads the mask at head `i mod heads`: each head
    // appears `n_lead / heads` times.
    let per_lead = (n_lead / heads.max(1)) as u64;
    let sum: u64 = if distinct == heads {
        per_head.iter().sum()
    } else {
        per_head.first().copied().unwrap_or(0).saturating_mul(heads as u64)
    };
    counts.visible = Ok(sum.saturating_mul(per_lead));
    Ok(counts)
}

/// Whether the mask holds an index lambda (the only masks that can depend
/// on the head).
fn reads_lambda(m: &MaskExpr) -> bool {
    match m {
        MaskExpr::Lambda(_) => true,
        MaskExpr::And(a, b) | MaskExpr::Or(a, b) => reads_lambda(a) || reads_lambda(b),
        MaskExpr::Not(a) => reads_lambda(a),
        _ => false,
    }
}

/// Runs `f` `warmup` times untimed, then `reps` times (at least once),
/// timing each call alone (`Instant` around the call; dropping the previous
/// result is not timed). Returns the times in milliseconds and the last
/// result.
pub fn time_reps<T, E>(warmup: usize, reps: usize, mut f: impl FnMut() -> Result<T, E>) -> Result<(Vec<f64>, T), E> {
    for _ in 0..warmup {
        f()?;
    }
    let mut timed = || -> Result<(f64, T), E> {
        let start = Instant::now();
        let out = f()?;
        Ok((start.elapsed().as_secs_f64() * 1e3, out))
    };
    let (first, mut last) = timed()?;
    let mut times = vec![first];
    for _ in 1..reps {
        let (ms, out) = timed()?;
        times.push(ms);
        last = out;
    }
    Ok((times, last))
}

/// Median, min and max of `times` (the median of an even count is the mean
/// of the middle two); zeros for no times.
pub fn summarize(times: &[f64]) -> (f64, f64, f64) {
    if times.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
    (median, sorted[0], sorted[n - 1])
}

/// What one kernel ran on (the last timed repetition).
#[derive(Clone, Debug)]
pub struct KernelLine {
    pub name: String,
    pub kind: &'static str,
    pub executor: &'static str,
}

/// Everything `tdlc bench` prints.
#[derive(Clone, Debug)]
pub struct Report {
    pub file: String,
    pub graph: String,
    pub backend: &'static str,
    pub threads: usize,
    pub bindings: Bindings,
    pub warmup: usize,
    pub reps: usize,
    pub times_ms: Vec<f64>,
    /// `None` when the work could not be counted (see `notes`).
    pub work: Option<Work>,
    pub kernels: Vec<KernelLine>,
    pub notes: Vec<String>,
}

impl Report {
    fn rates(&self) -> (f64, f64, f64, Option<f64>, Option<f64>) {
        let (median, min, max) = summarize(&self.times_ms);
        let per_s = |x: u64| (median > 0.0).then(|| x as f64 / (median * 1e-3) / 1e9);
        let gflops = self.work.as_ref().and_then(|w| w.flops).and_then(per_s);
        let gbps = self.work.as_ref().and_then(|w| per_s(w.bytes));
        (median, min, max, gflops, gbps)
    }

    fn all_notes(&self) -> Vec<String> {
        let mut notes = self.notes.clone();
        if let Some(w) = &self.work {
            notes.extend(w.notes.iter().cloned());
        }
        notes
    }

    /// The `--json` object.
    pub fn to_json(&self) -> serde_json::Value {
        let (median, min, max, gflops, gbps) = self.rates();
        let w = self.work.as_ref();
        serde_json::json!({
            "file": self.file,
            "graph": self.graph,
            "backend": self.backend,
            "threads": self.threads,
            "bindings": self.bindings,
            "warmup": self.warmup,
            "reps": self.reps,
            "median_ms": median,
            "min_ms": min,
            "max_ms": max,
            "times_ms": self.times_ms,
            "flops": w.and_then(|w| w.flops),
            "gflops": gflops,
            "attentions": w.map(|w| w.attentions),
            "visible": w.and_then(|w| if w.attentions > 0 { w.visible } else { None }),
            "visible_fraction": w.and_then(Work::visible_fraction),
            "bytes": w.map(|w| w.bytes),
            "gbps": gbps,
            "kernels": self.kernels.iter().map(|k| serde_json::json!({
                "name": k.name, "kind": k.kind, "executor": k.executor,
            })).collect::<Vec<_>>(),
            "notes": self.all_notes(),
        })
    }

    /// The human-readable block.
    pub fn to_text(&self) -> String {
        let (median, min, max, gflops, gbps) = self.rates();
        let w = self.work.as_ref();
        let mut lines: Vec<(&str, String)> = Vec::new();
        lines.push(("graph", format!("{} ({})", self.graph, self.file)));
        let threads = if self.threads == 1 { "1 thread".to_string() } else { format!("{} threads", self.threads) };
        lines.push(("backend", format!("{}, {threads}", self.backend)));
        let binds: Vec<String> = self.bindings.iter().map(|(k, v)| format!("{k}={v}")).collect();
        lines.push(("bindings", if binds.is_empty() { "(none)".into() } else { binds.join(" ") }));
        lines.push(("reps", format!("{} timed, {} warm-up", self.reps, self.warmup)));
        lines.push(("time", format!("median {median:.3} ms, min {min:.3} ms, max {max:.3} ms")));
        let flops = w.and_then(|w| w.flops);
        lines.push((
            "GFLOP/s",
            match (gflops, flops) {
                (Some(g), Some(f)) => format!("{g:.2} (useful: {f} flop per run)"),
                (None, Some(f)) => format!("n/a (useful: {f} flop per run)"),
                _ => "n/a".into(),
            },
        ));
        lines.push((
            "visible",
            match (w.and_then(Work::visible_fraction), w.and_then(|w| w.visible)) {
                (Some(f), Some(v)) => format!("{f:.4} of the attention scores ({v} entries)"),
                _ if w.is_some_and(|w| w.attentions == 0) => "n/a (no attention)".into(),
                _ => "n/a".into(),
            },
        ));
        lines.push((
            "GB/s",
            match (gbps, w) {
                (Some(g), Some(w)) => format!("{g:.2} ({} bytes per run, approximate)", w.bytes),
                _ => "n/a".into(),
            },
        ));
        for (i, line) in kernel_summary(&self.kernels).into_iter().enumerate() {
            lines.push((if i == 0 { "kernels" } else { "" }, line));
        }
        for (i, n) in self.all_notes().iter().enumerate() {
            lines.push((if i == 0 { "notes" } else { "" }, n.clone()));
        }
        let mut out = String::new();
        for (label, value) in lines {
            out.push_str(&format!("{label:<10} {value}\n"));
        }
        out
    }
}

/// One line per executor, in order of first appearance, counting its
/// kernels by kind: `cpu (LLVM JIT): 1 attention, 4 matmul`.
fn kernel_summary(kernels: &[KernelLine]) -> Vec<String> {
    let mut by_executor: Vec<(&str, Vec<(&str, usize)>)> = Vec::new();
    for k in kernels {
        let i = match by_executor.iter().position(|(e, _)| *e == k.executor) {
            Some(i) => i,
            None => {
                by_executor.push((k.executor, Vec::new()));
                by_executor.len() - 1
            }
        };
        let kinds = &mut by_executor[i].1;
        match kinds.iter_mut().find(|(kind, _)| *kind == k.kind) {
            Some((_, n)) => *n += 1,
            None => kinds.push((k.kind, 1)),
        }
    }
    by_executor
        .into_iter()
        .map(|(e, kinds)| {
            let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
            format!("{e}: {}", kinds.join(", "))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarize_takes_the_middle() {
        assert_eq!(summarize(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(summarize(&[4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
        assert_eq!(summarize(&[]), (0.0, 0.0, 0.0));
    }

    #[test]
    fn time_reps_runs_warmup_and_reps_and_stops_at_an_error() {
        let mut calls = 0;
        let (times, last) = time_reps::<_, ()>(2, 3, || {
            calls += 1;
            Ok(calls)
        })
        .unwrap();
        assert_eq!((times.len(), last, calls), (3, 5, 5));
        assert!(times.iter().all(|t| *t >= 0.0));
        let mut calls = 0;
        let r = time_reps(1, 3, || {
            calls += 1;
            if calls == 2 {
                Err("boom")
            } else {
                Ok(())
            }
        });
        assert_eq!(r.err(), Some("boom"));
    }

    #[test]
    fn kernels_are_summarized_per_executor_and_kind() {
        let k = |name: &str, kind, executor| KernelLine { name: name.into(), kind, executor };
        let lines = kernel_summary(&[
            k("a", "matmul", "cpu"),
            k("b", "copy", "interpreter"),
            k("c", "attention", "cpu"),
            k("d", "matmul", "cpu"),
        ]);
        assert_eq!(lines, ["cpu: 2 matmul, 1 attention", "interpreter: 1 copy"]);
    }

    #[test]
    fn lambdas_are_the_masks_that_read_the_head() {
        assert!(!reads_lambda(&MaskExpr::Causal));
        let lam = MaskExpr::Lambda(tdl::ir::ScalarExpr::Bool(true));
        assert!(reads_lambda(&MaskExpr::And(Box::new(MaskExpr::Causal), Box::new(MaskExpr::Not(Box::new(lam))))));
    }
}
