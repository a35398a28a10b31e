//! A Kernel IR program as one `gpu.module` (`tdlc compile --emit
//! mlir|ptx`): one `gpu.func` per kernel the GPU code generator supports
//! (attention, matmul, elementwise, reduce, the row kernels, data
//! movement), a comment saying why for the others. Each `gpu.func` is the
//! one a launch plan of that kernel runs (same generator; only the name
//! differs), so its parameters are those of the kind's `plan_*` function.

use std::fmt::Write as _;

use tdl_kernel::ir::{AttentionKernel, BufId, KernelBody, KernelProgram};

use crate::attention::{fit, gpu_func, GpuAttentionSpec};
use crate::launch::stores;
use crate::{extract_ptx, new_context, nvvm_pipeline, parse_module, run_pipeline, verify_module, MlirError};

/// How one kernel of the program fares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuKernelReport {
    pub name: String,
    pub kind: &'static str,
    /// `Ok(gpu.func name and what it is)` or `Err(why it is not generated)`.
    pub how: Result<String, String>,
}

/// A buffer's shape when every axis but the first is constant: `(rank,
/// last axis)`.
fn last_dim(p: &KernelProgram, b: BufId) -> Option<(usize, usize)> {
    let buf = p.buffer(b)?;
    let last = usize::try_from(buf.shape.last()?.as_const()?).ok()?;
    Some((buf.shape.len(), last))
}

fn attention_spec(p: &KernelProgram, a: &AttentionKernel) -> Result<GpuAttentionSpec, String> {
    let (Some((rq, d)), Some((rk, _)), Some((rv, dv))) = (last_dim(p, a.q), last_dim(p, a.k), last_dim(p, a.v)) else {
        return Err("not supported yet: symbolic head dimensions in the GPU attention kernel".into());
    };
    if rq < 2 || rk != rq || rv != rq {
        return Err(format!(
            "not supported yet: operands of rank {rq}/{rk}/{rv} in the GPU attention kernel (it takes q, k, v of one rank, leading axes flattened into heads)"
        ));
    }
    let ty = |b: BufId| p.buffer(b).map(|x| (x.dtype, x.shape.len()));
    let mask_ops = a.mask.as_ref().map(|m| m.operands.iter().map(|&b| ty(b)).collect()).unwrap_or_default();
    let score_ops = a.score_operands.iter().map(|o| o.and_then(ty)).collect();
    Ok(fit(GpuAttentionSpec {
        d,
        dv,
        tile_q: a.tile_q,
        tile_k: a.tile_k,
        scale: a.scale,
        mask: a.mask.as_ref().map(|m| m.expr.clone()),
        score: a.score.clone(),
        operands: vec![mask_ops, score_ops],
        store: stores(p, [a.q, a.k, a.v, a.out]),
    }))
}

/// `name` as an MLIR symbol (letters, digits, `_`).
fn symbol(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}

/// The MLIR text of `p` (before lowering) and how each kernel fared. The
/// module holds `gpu.module @<graph>_kernels` with `gpu.func @k<i>_<name>`
/// per generated kernel.
pub fn program_mlir(p: &KernelProgram) -> (String, Vec<GpuKernelReport>) {
    let (mut aliases, mut funcs, mut report) = (String::new(), String::new(), Vec::new());
    for (i, k) in p.kernels.iter().enumerate() {
        let fname = format!("k{i}_{}", symbol(&k.name));
        let how = match &k.body {
            KernelBody::Attention(a) => attention_spec(p, a).and_then(|spec| {
                let (al, f) = gpu_func(&spec, &fname, &format!("{fname}_")).map_err(|e| e.to_string())?;
                aliases.push_str(&al);
                let _ = writeln!(
                    funcs,
                    "  // kernel `{}`: FlashAttention-2, head dims {}/{}, {} threads × kv-tiles of {}",
                    k.name, spec.d, spec.dv, spec.tile_q, spec.tile_k
                );
                funcs.push_str(&f);
                Ok(format!("@{fname}: FlashAttention-2, {} threads, kv-tiles of {}", spec.tile_q, spec.tile_k))
            }),
            other => {
                let r = match other {
                    KernelBody::MatMul(m) => crate::matmul::ir_func(p, m, &fname),
                    KernelBody::Elementwise(e) => crate::elementwise::ir_func(p, e, &fname),
                    KernelBody::Reduce(r) => crate::rows::ir_reduce_func(p, r, &fname),
                    KernelBody::Row(r) => crate::rows::ir_row_func(p, r, &fname),
                    KernelBody::Move(m) => crate::movement::ir_func(p, m, &fname),
                    KernelBody::Attention(_) => unreachable!("handled above"),
                };
                r.map_err(|e| e.to_string()).map(|(f, what)| {
                    let _ = writeln!(funcs, "  // kernel `{}`: {what}", k.name);
                    funcs.push_str(&f);
                    format!("@{fname}: {what}")
                })
            }
        };
        if let Err(why) = &how {
            let _ = writeln!(funcs, "  // kernel `{}` ({}): {why}", k.name, k.body.kind());
        }
        report.push(GpuKernelReport { name: k.name.clone(), kind: k.body.kind(), how });
    }
    let text = format!(
        "// tdlc GPU kernels of graph `{}`\n{aliases}module attributes {{gpu.container_module}} {{\ngpu.module @{}_kernels {{\n{funcs}}}\n}}\n",
        p.name,
        symbol(&p.name)
    );
    (text, report)
}

/// The PTX of `p` for `chip` (e.g. `sm_90`): [`program_mlir`] verified and
/// lowered in process. `None` when no kernel of `p` is generated.
pub fn program_ptx(p: &KernelProgram, chip: &str) -> Result<(Option<String>, Vec<GpuKernelReport>), MlirError> {
    let pipeline = nvvm_pipeline(chip)?;
    let (text, report) = program_mlir(p);
    if report.iter().all(|r| r.how.is_err()) {
        return Ok((None, report));
    }
    let context = new_context();
    let mut module = parse_module(&context, &text)?;
    verify_module(&module)?;
    run_pipeline(&mut module, &pipeline)?;
    Ok((Some(extract_ptx(&module)?), report))
}
