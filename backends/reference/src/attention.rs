//! The fused attention operator, computed exactly as its composition:
//!
//! ```text
//! scores = (q @ kᵀ) * scale                  scale = given, or 1/sqrt(D)
//! scores = score(s, q, k, h)                  the score modifier, if any
//! scores = where(mask, scores, -inf)          the mask, if any
//! p      = softmax(scores, axis = -1)         an all -inf row gives zeros
//! out    = p @ v
//! ```
//!
//! with the same `f64` operations in the same order as the composed
//! operators ([`crate::ops`]), so the fused and composed forms agree to the
//! last bit. The score modifier is evaluated only where the mask holds (its
//! value is replaced by `-inf` elsewhere anyway).
//!
//! Leading axes: the head axis (-3) of `k`/`v` may be smaller than `q`'s:
//! query head `h` reads key/value head `h / (Hq / Hk)` (grouped-query
//! attention); a head count of 1 on either side broadcasts; the other
//! leading axes broadcast NumPy-style. One `T×S` score row is held at a time.

use tdl_ir::layout::AttentionLayout;
use tdl_ir::{Bindings, MaskExpr, ScalarExpr};

use crate::error::{fail, RunError};
use crate::mask::MaskEval;
use crate::ops::{ensure_shape, softmax_slice};
use crate::scalar::{self, Env, Val};
use crate::tensor::{next_index, shape_text, Limits, Tensor};

/// The operands of one attention node.
pub(crate) struct AttentionArgs<'a> {
    pub q: &'a Tensor,
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    /// The mask expression and the tensors it reads.
    pub mask: Option<(&'a MaskExpr, Vec<&'a Tensor>)>,
    pub score: Option<&'a ScalarExpr>,
    /// Every operand by position (`None` for the mask), for the score
    /// lambda's `Index` reads.
    pub operands: Vec<Option<&'a Tensor>>,
    pub scale: Option<f64>,
}

pub(crate) fn attention(
    a: &AttentionArgs,
    bindings: &Bindings,
    limits: &Limits,
    out: &[usize],
) -> Result<Tensor, RunError> {
    let (q, k, v) = (a.q, a.k, a.v);
    let layout = AttentionLayout::new(q.dtype, &q.shape, &k.shape, &v.shape).map_err(RunError::Eval)?;
    let (t, s, d, dv) = (layout.t, layout.s, layout.d, layout.dv);
    let lead = &layout.lead;
    let mut shape = lead.clone();
    shape.extend([t, dv]);
    ensure_shape(&shape, out)?;
    limits.check(&format!("the {t}×{s} score matrix of attention"), &[t, s])?;

    let mask = match &a.mask {
        Some((expr, ops)) => Some(MaskEval::new(expr, ops, t, s, bindings)?),
        None => None,
    };
    let scale = a.scale.unwrap_or(1.0 / (d as f64).sqrt());
    let score_operands: Vec<Option<scalar::ArrayView>> = a.operands.iter().map(|o| o.map(scalar::view)).collect();
    let n_lead: usize = lead.iter().product();
    let mut data = Vec::with_capacity(n_lead * t * dv);
    let mut scores = vec![0.0; s];
    let mut acc = vec![0.0; dv];
    let mut idx = vec![0usize; lead.len()];
    for _ in 0..n_lead {
        let h = idx.last().copied().unwrap_or(0);
        let (oq, ok, ov) = layout.offsets(&idx);
        for qi in 0..t {
            let qrow = &q.data[oq + qi * d..oq + (qi + 1) * d];
            for (ki, sc) in scores.iter_mut().enumerate() {
                let visible = match &mask {
                    Some(m) => m.holds(qi, ki, h)?,
                    None => true,
                };
                if !visible {
                    *sc = f64::NEG_INFINITY;
                    continue;
                }
                let krow = &k.data[ok + ki * d..ok + (ki + 1) * d];
                let mut dot = 0.0;
                for (x, y) in qrow.iter().zip(krow) {
                    dot += x * y;
                }
                let mut value = dot * scale;
                if let Some(e) = a.score {
                    value = score_mod(e, value, qi, ki, h, bindings, &score_operands)?;
                }
                *sc = value;
            }
            softmax_slice(&mut scores);
            acc.iter_mut().for_each(|x| *x = 0.0);
            for (ki, &p) in scores.iter().enumerate() {
                let vrow = &v.data[ov + ki * dv..ov + (ki + 1) * dv];
                for (o, x) in acc.iter_mut().zip(vrow) {
                    *o += p * x;
                }
            }
            data.extend_from_slice(&acc);
        }
        next_index(&mut idx, lead);
    }
    if data.len() != n_lead * t * dv {
        return fail(format!("attention produced {} elements for shape {}", data.len(), shape_text(&shape)));
    }
    Ok(Tensor { dtype: q.dtype, shape, data })
}

fn score_mod(
    e: &ScalarExpr,
    s: f64,
    q: usize,
    k: usize,
    h: usize,
    bindings: &Bindings,
    operands: &[Option<scalar::ArrayView>],
) -> Result<f64, RunError> {
    // Indices of existing tensors fit in i64.
    let env = Env { q: q as i64, k: k as i64, h: h as i64, s: Some(s), bindings, operands };
    match scalar::eval(e, &env)? {
        Val::Float(f) => Ok(f),
        Val::Int(i) => Ok(i as f64),
        Val::Bool(_) => fail("the attention score modifier evaluated to a boolean; it must give a number"),
    }
}
