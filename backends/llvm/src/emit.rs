//! `tdlc compile --emit llvm|asm`: the CPU backend's kernels of one Kernel
//! IR program, as LLVM IR after the O3 pipeline or as host assembly.
//!
//! One section per kernel, in program order. Attention and matmul kernels
//! are shown; elementwise, move, row and reduce kernels are shown as an
//! artifact compiles them (one function per variant its symbolic shapes
//! give, [`crate::aot`]; the JIT generates the same code for the strides
//! it meets); kernels the CPU backend does not compile get a one-line
//! comment saying so and why.

use std::fmt::Write as _;

use tdl_ir::DType;
use tdl_kernel::ir::{AttentionKernel, BufId, KernelBody, KernelProgram, MatMulKernel};

use tdl_rt::aot::AotKernel;

use crate::attention::{attention_ir, AttentionSpec};
use crate::jit;
use crate::matmul::matmul_ir;
use crate::{HostTarget, LlvmError};

/// What `--emit` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmitKind {
    /// LLVM IR after `default<O3>` for the host.
    Llvm,
    /// The host's assembly.
    Asm,
}

/// The text of every kernel of `p` the CPU backend compiles, for the host.
pub fn program_text(p: &KernelProgram, kind: EmitKind) -> Result<String, LlvmError> {
    program_text_for(p, kind, &HostTarget::detect()?)
}

/// [`program_text`] for `host` (any x86-64 CPU and features LLVM knows:
/// nothing runs).
pub fn program_text_for(p: &KernelProgram, kind: EmitKind, host: &HostTarget) -> Result<String, LlvmError> {
    let mut out = String::new();
    let comment = if kind == EmitKind::Llvm { ";" } else { "#" };
    let _ = writeln!(
        out,
        "{comment} tdlc CPU kernels of graph `{}` for {} ({}, {}-bit vectors)",
        p.name, host.triple, host.cpu, host.vector_width_bits
    );
    for k in &p.kernels {
        let _ = writeln!(out, "\n{comment} ==== kernel `{}` ({}) ====", k.name, k.body.kind());
        let code = match &k.body {
            KernelBody::Attention(_) | KernelBody::MatMul(_) => {
                static_kernel(p, &k.body, host).map(|sk| (sk.what, vec![sk.text]))
            }
            _ => crate::aot::variant_kernel(p, &k.body, host)
                .map(|vk| (vk.what, vk.functions.into_iter().map(|(text, _, _)| text).collect())),
        };
        match code {
            Ok((what, texts)) => {
                let _ = writeln!(out, "{comment} {what}");
                for text in texts {
                    out.push_str(&jit::emit_text(&text, &k.name, host, kind == EmitKind::Asm)?);
                }
            }
            Err(why) => {
                let _ = writeln!(out, "{comment} {why}");
            }
        }
    }
    Ok(out)
}

/// A buffer's last dimension when it is a constant.
fn last_dim(p: &KernelProgram, b: BufId) -> Option<usize> {
    let d = p.buffer(b)?.shape.last()?.as_const()?;
    usize::try_from(d).ok()
}

fn f32_buffers(p: &KernelProgram, bufs: &[BufId]) -> bool {
    bufs.iter().all(|&b| p.buffer(b).is_some_and(|x| x.dtype == DType::F32))
}

/// A kernel whose code is the same whatever the sizes (attention, matmul):
/// what it is, its LLVM IR text, its entry function and what the runtime
/// needs to call it (`function` still 0).
pub(crate) struct StaticKernel {
    pub(crate) what: String,
    pub(crate) text: String,
    pub(crate) entry: &'static str,
    pub(crate) aot: AotKernel,
}

/// Kernel `body` of `p` compiled for `host` without knowing the sizes, or
/// why it cannot be (the reason, for `--emit` and the artifact's report).
pub(crate) fn static_kernel(p: &KernelProgram, body: &KernelBody, host: &HostTarget) -> Result<StaticKernel, String> {
    match body {
        KernelBody::Attention(a) => attention_kernel(p, a, host),
        KernelBody::MatMul(m) => matmul_kernel(p, m, host),
        other => Err(format!(
            "{} kernels are compiled per variant of their run-time structure (aot::variant_kernel), not here",
            other.kind()
        )),
    }
}

fn attention_kernel(p: &KernelProgram, a: &AttentionKernel, host: &HostTarget) -> Result<StaticKernel, String> {
    let (Some(d), Some(dv)) = (last_dim(p, a.q), last_dim(p, a.v)) else {
        return Err("not supported yet: symbolic head dimensions in the CPU attention kernel".into());
    };
    // Element type and rank of the operands the lambdas read, as the
    // runtime derives them from the data (`tdl_rt::attention::spec_of`).
    let typed = |b: &BufId| p.buffer(*b).map(|x| (x.dtype, x.shape.len()));
    let mask_operands = match &a.mask {
        Some(m) if tdl_rt::attention::mask_has_lambda(&m.expr) => m.operands.iter().map(&typed).collect(),
        _ => Vec::new(),
    };
    let score_operands = match &a.score {
        Some(_) => a.score_operands.iter().map(|o| o.as_ref().and_then(&typed)).collect(),
        None => Vec::new(),
    };
    let spec = AttentionSpec {
        d,
        dv,
        tile_q: a.tile_q,
        tile_k: a.tile_k,
        scale: a.scale,
        mask: a.mask.as_ref().map(|m| m.expr.clone()),
        score: a.score.clone(),
        mask_operands,
        score_operands,
    };
    let text = attention_ir(&spec, host).map_err(|e| format!("{e} (runs in the interpreter)"))?;
    let tkp = a.tile_k.next_multiple_of((host.f32_lanes() as usize).max(1));
    Ok(StaticKernel {
        what: format!("FlashAttention-2 program: head dims {d}/{dv}, tiles {}×{}", a.tile_q, a.tile_k),
        text,
        entry: crate::attention::FN_NAME,
        aot: AotKernel::Attention { spec: Box::new(spec), tkp, function: 0 },
    })
}

fn matmul_kernel(p: &KernelProgram, m: &MatMulKernel, host: &HostTarget) -> Result<StaticKernel, String> {
    if !f32_buffers(p, &[m.a.buf, m.b.buf, m.out]) {
        return Err("not supported yet: non-f32 matmuls in the CPU backend (runs in the interpreter)".into());
    }
    let tiles = (m.tile_m.max(1), m.tile_n, m.tile_k);
    let text = matmul_ir(tiles.0, tiles.1, tiles.2, host).map_err(|e| e.to_string())?;
    Ok(StaticKernel {
        what: format!("row-block matmul: tiles {}×{}×{}", m.tile_m, m.tile_n, m.tile_k),
        text,
        entry: crate::matmul::FN_NAME,
        aot: AotKernel::MatMul { tiles, nr: 2 * (host.f32_lanes() as usize).max(1), function: 0 },
    })
}
