//! How the operands of an `attention` map onto its output, at concrete
//! shapes: the leading axes (batch, heads), grouped-query heads and
//! NumPy broadcasting, and the offsets of each `[.., T, D]` block. One
//! implementation for every executor of attention (the reference
//! interpreter, the tile schedule), so they cannot disagree on layout.

use crate::types::DType;

/// How an output head maps to a head of `q` and of `k`/`v`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Heads {
    /// The leading axes broadcast as usual (one side has no head axis).
    Plain,
    /// Grouped: `q` head = `h` (or 0 when `Hq == 1`), `k`/`v` head =
    /// `h / group` (or 0 when `Hk == 1`, `h` when `Hq == 1`).
    Grouped { hq: usize, hk: usize, group: usize },
}

/// The layout of one attention: `q: [.., T, D]`, `k: [.., S, D]`,
/// `v: [.., S, Dv]`, output `[lead.., T, Dv]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttentionLayout {
    pub t: usize,
    pub s: usize,
    pub d: usize,
    pub dv: usize,
    /// The output's leading axes; the last one (when any) is the head axis.
    pub lead: Vec<usize>,
    heads: Heads,
    lq: Vec<usize>,
    lk: Vec<usize>,
    sq: Vec<usize>,
    sk: Vec<usize>,
    sv: Vec<usize>,
}

/// `f32[2, 3]`, for messages.
pub fn type_text(dtype: DType, shape: &[usize]) -> String {
    let parts: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("{}[{}]", dtype, parts.join(", "))
}

/// Row-major strides (saturating: only used for shapes that exist).
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut out = vec![0; shape.len()];
    let mut acc = 1usize;
    for (s, &d) in out.iter_mut().zip(shape).rev() {
        *s = acc;
        acc = acc.saturating_mul(d);
    }
    out
}

/// Advances a row-major multi-index; returns false after the last one.
pub fn next_index(idx: &mut [usize], shape: &[usize]) -> bool {
    for ax in (0..idx.len()).rev() {
        idx[ax] += 1;
        if idx[ax] < shape[ax] {
            return true;
        }
        idx[ax] = 0;
    }
    false
}

/// NumPy broadcasting of two concrete shapes; `None` when they do not.
pub fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let da = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
        let db = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
        out.push(if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return None;
        });
    }
    Some(out)
}

fn broadcast_lead(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    broadcast(a, b).ok_or_else(|| format!("attention: leading shapes {a:?} and {b:?} do not broadcast"))
}

impl AttentionLayout {
    /// The layout of `attention(q, k, v)` with these element type and
    /// shapes, or what is wrong with them.
    pub fn new(dtype: DType, q: &[usize], k: &[usize], v: &[usize]) -> Result<AttentionLayout, String> {
        let (rq, rk, rv) = (q.len(), k.len(), v.len());
        let tt = |s: &[usize]| type_text(dtype, s);
        if rq < 2 || rk < 2 || rv < 2 {
            return Err(format!("attention needs q, k, v of rank at least 2, found {}, {}, {}", tt(q), tt(k), tt(v)));
        }
        let (t, d) = (q[rq - 2], q[rq - 1]);
        let (s, dk) = (k[rk - 2], k[rk - 1]);
        let dv = v[rv - 1];
        if dk != d {
            return Err(format!("q {} and k {} must share the head dimension", tt(q), tt(k)));
        }
        if v[..rv - 1] != k[..rk - 1] {
            return Err(format!("k {} and v {} must have the same leading dimensions and length", tt(k), tt(v)));
        }
        let (lq, lk) = (&q[..rq - 2], &k[..rk - 2]);
        let (lead, heads) = if let (Some(&hq), Some(&hk)) = (lq.last(), lk.last()) {
            let mut lead = broadcast_lead(&lq[..lq.len() - 1], &lk[..lk.len() - 1])?;
            let hout = if hq == hk || hk == 1 || (hk != 0 && hq % hk == 0) {
                hq
            } else if hq == 1 {
                hk
            } else {
                return Err(format!(
                    "attention heads do not match: q has {hq} heads, k/v have {hk}; the query head count must be a multiple of the key head count"
                ));
            };
            lead.push(hout);
            let group = if hk == 0 || hk == 1 || hq == 1 { 1 } else { hq / hk };
            (lead, Heads::Grouped { hq, hk, group })
        } else {
            (broadcast_lead(lq, lk)?, Heads::Plain)
        };
        Ok(AttentionLayout {
            t,
            s,
            d,
            dv,
            lead,
            heads,
            lq: lq.to_vec(),
            lk: lk.to_vec(),
            sq: strides(q),
            sk: strides(k),
            sv: strides(v),
        })
    }

    /// The number of output leading indices (batch × heads), `None` on
    /// overflow.
    pub fn n_lead(&self) -> Option<usize> {
        self.lead.iter().try_fold(1usize, |a, &x| a.checked_mul(x))
    }

    /// The head count the mask's `h` runs over (axis -3 of the output; 1 at
    /// rank 2).
    pub fn mask_heads(&self) -> usize {
        self.lead.last().copied().unwrap_or(1)
    }

    /// The offsets in `q`, `k` and `v` of the blocks that the output's
    /// leading index `idx` reads.
    pub fn offsets(&self, idx: &[usize]) -> (usize, usize, usize) {
        (
            self.lead_offset(idx, &self.lq, &self.sq, true),
            self.lead_offset(idx, &self.lk, &self.sk, false),
            self.lead_offset(idx, &self.lk, &self.sv, false),
        )
    }

    fn lead_offset(&self, idx: &[usize], l: &[usize], st: &[usize], is_q: bool) -> usize {
        let start = idx.len() - l.len();
        let mut off = 0;
        for (i, &dim) in l.iter().enumerate() {
            let o = idx[start + i];
            let j = match self.heads {
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
}
