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

use tdl_ir::{Bindings, MaskExpr, ScalarExpr};

use crate::error::{fail, RunError};
use crate::mask::MaskEval;
use crate::ops::{broadcast, ensure_shape, softmax_slice};
use crate::scalar::{self, Env, Val};
use crate::tensor::{next_index, shape_text, strides, Limits, Tensor};

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

/// How an output head maps to a head of `q` and of `k`/`v`.
#[derive(Clone, Copy)]
enum Heads {
    /// The leading axes broadcast as usual (one side has no head axis).
    Plain,
    /// Grouped: `q` head = `h` (or 0 when `Hq == 1`), `k`/`v` head =
    /// `h / group` (or 0 when `Hk == 1`).
    Grouped { hq: usize, hk: usize, group: usize },
}

pub(crate) fn attention(
    a: &AttentionArgs,
    bindings: &Bindings,
    limits: &Limits,
    out: &[usize],
) -> Result<Tensor, RunError> {
    let (q, k, v) = (a.q, a.k, a.v);
    let (rq, rk, rv) = (q.rank(), k.rank(), v.rank());
    if rq < 2 || rk < 2 || rv < 2 {
        return fail(format!(
            "attention needs q, k, v of rank at least 2, found {}, {}, {}",
            q.type_text(),
            k.type_text(),
            v.type_text()
        ));
    }
    let (t, d) = (q.shape[rq - 2], q.shape[rq - 1]);
    let (s, dk) = (k.shape[rk - 2], k.shape[rk - 1]);
    let dv = v.shape[rv - 1];
    if dk != d {
        return fail(format!("q {} and k {} must share the head dimension", q.type_text(), k.type_text()));
    }
    if v.shape[..rv - 1] != k.shape[..rk - 1] {
        return fail(format!(
            "k {} and v {} must have the same leading dimensions and length",
            k.type_text(),
            v.type_text()
        ));
    }
    let (lq, lk) = (&q.shape[..rq - 2], &k.shape[..rk - 2]);
    let (lead, heads) = if let (Some(&hq), Some(&hk)) = (lq.last(), lk.last()) {
        let mut lead = broadcast(&lq[..lq.len() - 1], &lk[..lk.len() - 1])?;
        let hout = if hq == hk || hk == 1 || (hk != 0 && hq % hk == 0) {
            hq
        } else if hq == 1 {
            hk
        } else {
            return fail(format!(
                "attention heads do not match: q has {hq} heads, k/v have {hk}; the query head count must be a multiple of the key head count"
            ));
        };
        lead.push(hout);
        let group = if hk == 0 || hk == 1 || hq == 1 { 1 } else { hq / hk };
        (lead, Heads::Grouped { hq, hk, group })
    } else {
        (broadcast(lq, lk)?, Heads::Plain)
    };
    let mut shape = lead.clone();
    shape.extend([t, dv]);
    ensure_shape(&shape, out)?;
    limits.check(&format!("the {t}×{s} score matrix of attention"), &[t, s])?;

    let mask = match &a.mask {
        Some((expr, ops)) => Some(MaskEval::new(expr, ops, t, s, bindings)?),
        None => None,
    };
    let scale = a.scale.unwrap_or(1.0 / (d as f64).sqrt());
    let (sq, sk, sv) = (strides(&q.shape), strides(&k.shape), strides(&v.shape));
    let n_lead: usize = lead.iter().product();
    let mut data = Vec::with_capacity(n_lead * t * dv);
    let mut scores = vec![0.0; s];
    let mut acc = vec![0.0; dv];
    let mut idx = vec![0usize; lead.len()];
    for _ in 0..n_lead {
        let h = idx.last().copied().unwrap_or(0);
        let oq = lead_offset(&idx, lq, &sq, heads, true);
        let ok = lead_offset(&idx, lk, &sk, heads, false);
        let ov = lead_offset(&idx, lk, &sv, heads, false);
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
                    value = score_mod(e, value, qi, ki, h, bindings, &a.operands)?;
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
        next_index(&mut idx, &lead);
    }
    if data.len() != n_lead * t * dv {
        return fail(format!("attention produced {} elements for shape {}", data.len(), shape_text(&shape)));
    }
    Ok(Tensor { dtype: q.dtype, shape, data })
}

/// The offset of the `[.., T, D]` block of an operand (leading shape `l`,
/// full strides `st`) for the output leading index `idx`.
fn lead_offset(idx: &[usize], l: &[usize], st: &[usize], heads: Heads, is_q: bool) -> usize {
    let start = idx.len() - l.len();
    let mut off = 0;
    for (i, &dim) in l.iter().enumerate() {
        let o = idx[start + i];
        let j = match heads {
            Heads::Grouped { hq, hk, group } if i + 1 == l.len() => {
                if is_q {
                    if hq == 1 {
                        0
                    } else {
                        o
                    }
                } else if hk == 1 {
                    0
                } else if hq == 1 {
                    o
                } else {
                    o / group
                }
            }
            _ => {
                if dim == 1 {
                    0
                } else {
                    o
                }
            }
        };
        off += j * st[i];
    }
    off
}

fn score_mod(
    e: &ScalarExpr,
    s: f64,
    q: usize,
    k: usize,
    h: usize,
    bindings: &Bindings,
    operands: &[Option<&Tensor>],
) -> Result<f64, RunError> {
    // Indices of existing tensors fit in i64.
    let env = Env { q: q as i64, k: k as i64, h: h as i64, s: Some(s), bindings, operands };
    match scalar::eval(e, &env)? {
        Val::Float(f) => Ok(f),
        Val::Int(i) => Ok(i as f64),
        Val::Bool(_) => fail("the attention score modifier evaluated to a boolean; it must give a number"),
    }
}
