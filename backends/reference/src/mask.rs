//! Mask evaluation: whether a [`MaskExpr`] holds at query `q`, key `k` and
//! head `h`, literally as the language contract writes each predicate.
//!
//! A mask is checked against the sizes it is used at (`T` queries, `S`
//! keys) once, in [`MaskEval::new`] (neighborhood grids, block layouts and
//! document ids that do not fit are errors there), and then evaluated one
//! `(q, k, h)` at a time by [`MaskEval::holds`]. Nothing is materialised
//! unless [`materialize`] is asked to.
//!
//! `a & b` and `a | b` short-circuit: when `a` decides, `b` is not
//! evaluated (so `causal & (lambda indexing q - k)` never indexes with a
//! negative `q - k`).

use tdl_ir::{ArrayRef, Bindings, DType, MaskExpr};

use crate::error::{fail, RunError};
use crate::scalar::{self, Env, Val};
use crate::tensor::{Limits, Tensor};

/// One axis of a neighborhood mask.
#[derive(Clone, Copy, Debug)]
struct NaAxis {
    len: i64,
    kernel: i64,
    dilation: i64,
    causal: bool,
}

impl NaAxis {
    /// NATTEN's rule along one axis: is key coordinate `b` visible from
    /// query coordinate `a`?
    fn visible(&self, a: i64, b: i64) -> bool {
        let d = self.dilation;
        let group = a % d;
        if b % d != group {
            return false;
        }
        let (i, j) = (a / d, b / d);
        let kk = self.kernel;
        if self.causal {
            (i - kk + 1).max(0) <= j && j <= i
        } else {
            // Members of this group: group, group + d, ... below len.
            let lg = (self.len - group + d - 1) / d;
            let start = (i - kk / 2).clamp(0, lg - kk);
            start <= j && j < start + kk
        }
    }
}

/// A block layout: a 2-D array, non-zero where the block is set.
#[derive(Debug)]
struct Layout<'a> {
    cols: usize,
    data: &'a [f64],
}

#[derive(Debug)]
enum Node<'a> {
    Causal,
    Local { left: i64, right: i64 },
    Window { w: i64 },
    Dilated { w: i64, d: i64 },
    Sink { n: i64 },
    Strided { stride: i64, offset: i64 },
    Neighborhood { axes: Vec<NaAxis> },
    Blocks { layout: Layout<'a>, bq: usize, bk: usize },
    Document { ids: &'a [f64] },
    Lambda(&'a tdl_ir::ScalarExpr),
    And(Box<Node<'a>>, Box<Node<'a>>),
    Or(Box<Node<'a>>, Box<Node<'a>>),
    Not(Box<Node<'a>>),
}

/// A mask checked against its use: `t` queries, `s` keys, the tensors it
/// reads (the operands of its `Mask` node, by position) and the bound
/// dimension symbols (for lambdas reading `Sym`).
pub struct MaskEval<'a> {
    t: i64,
    s: i64,
    root: Node<'a>,
    bindings: &'a Bindings,
    operands: Vec<Option<scalar::ArrayView<'a>>>,
}

impl std::fmt::Debug for MaskEval<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaskEval").field("t", &self.t).field("s", &self.s).field("root", &self.root).finish()
    }
}

impl<'a> MaskEval<'a> {
    /// Checks `expr` for use on `t×s` scores.
    pub fn new(
        expr: &'a MaskExpr,
        operands: &[&'a Tensor],
        t: usize,
        s: usize,
        bindings: &'a Bindings,
    ) -> Result<MaskEval<'a>, RunError> {
        let (Ok(ti), Ok(si)) = (i64::try_from(t), i64::try_from(s)) else {
            return fail(format!("mask sizes {t}×{s} do not fit in 64-bit indices"));
        };
        let root = compile(expr, operands, t, s)?;
        Ok(MaskEval {
            t: ti,
            s: si,
            root,
            bindings,
            operands: operands.iter().map(|t| Some(scalar::view(t))).collect(),
        })
    }

    /// Whether the mask holds at query `q`, key `k`, head `h`.
    pub fn holds(&self, q: usize, k: usize, h: usize) -> Result<bool, RunError> {
        // Callers pass q < t, k < s, and h below a tensor dimension: all fit.
        self.eval(&self.root, q as i64, k as i64, h as i64)
    }

    fn eval(&self, n: &Node<'a>, q: i64, k: i64, h: i64) -> Result<bool, RunError> {
        let (q128, k128) = (q as i128, k as i128);
        let causal = k128 <= q128 + (self.s as i128 - self.t as i128);
        let local = |left: i64, right: i64| q128 - left as i128 <= k128 && k128 <= q128 + right as i128;
        Ok(match n {
            Node::Causal => causal,
            Node::Local { left, right } => local(*left, *right),
            Node::Window { w } => causal && local(w.saturating_sub(1), 0),
            Node::Dilated { w, d } => {
                let diff = q - k; // both in 0..2^63: no overflow
                causal && (diff as i128) < (*w as i128) * (*d as i128) && scalar::int_mod(diff, *d) == 0
            }
            Node::Sink { n } => k < *n,
            Node::Strided { stride, offset } => floor_mod_128(k128 + *offset as i128, *stride as i128) == 0,
            Node::Neighborhood { axes } => {
                let (mut qr, mut kr) = (q, k);
                let mut ok = true;
                for ax in axes.iter().rev() {
                    let (a, b) = (qr % ax.len, kr % ax.len);
                    qr /= ax.len;
                    kr /= ax.len;
                    ok &= ax.visible(a, b);
                }
                ok
            }
            Node::Blocks { layout, bq, bk } => {
                let (r, c) = (q as usize / bq, k as usize / bk);
                // In range: checked against ceil(T/bq) × ceil(S/bk) in compile.
                layout.data.get(r * layout.cols + c).is_some_and(|&v| v != 0.0)
            }
            Node::Document { ids } => match (ids.get(q as usize), ids.get(k as usize)) {
                (Some(a), Some(b)) => a == b,
                _ => {
                    return fail(format!(
                        "document ids have {} entries, fewer than query {q} / key {k} needs",
                        ids.len()
                    ))
                }
            },
            Node::Lambda(e) => {
                let env = Env { q, k, h, s: None, bindings: self.bindings, operands: &self.operands };
                match scalar::eval(e, &env)? {
                    Val::Bool(b) => b,
                    Val::Int(_) => {
                        return fail(
                            "a mask lambda evaluated to an integer; it must give a boolean (write a comparison)",
                        )
                    }
                    Val::Float(_) => {
                        return fail("a mask lambda evaluated to a float; it must give a boolean (write a comparison)")
                    }
                }
            }
            Node::And(a, b) => self.eval(a, q, k, h)? && self.eval(b, q, k, h)?,
            Node::Or(a, b) => self.eval(a, q, k, h)? || self.eval(b, q, k, h)?,
            Node::Not(a) => !self.eval(a, q, k, h)?,
        })
    }
}

fn floor_mod_128(a: i128, b: i128) -> i128 {
    if b == 0 {
        return a;
    }
    let r = a % b;
    if r != 0 && ((r < 0) != (b < 0)) {
        r + b
    } else {
        r
    }
}

fn operand<'a>(operands: &[&'a Tensor], i: usize, what: &str) -> Result<&'a Tensor, RunError> {
    match operands.get(i) {
        Some(t) => Ok(t),
        None => fail(format!("{what} reads mask operand {i}, but the mask has only {} operand(s)", operands.len())),
    }
}

fn compile<'a>(m: &'a MaskExpr, operands: &[&'a Tensor], t: usize, s: usize) -> Result<Node<'a>, RunError> {
    Ok(match m {
        MaskExpr::Causal => Node::Causal,
        MaskExpr::Local { left, right } => Node::Local { left: *left, right: *right },
        MaskExpr::Window { w } => Node::Window { w: *w },
        MaskExpr::Dilated { w, d } => Node::Dilated { w: *w, d: *d },
        MaskExpr::Sink { n } => Node::Sink { n: *n },
        MaskExpr::Strided { stride, offset } => Node::Strided { stride: *stride, offset: *offset },
        MaskExpr::Neighborhood { kernel, grid, dilation, causal } => {
            compile_neighborhood(kernel, grid, dilation, causal, t, s)?
        }
        MaskExpr::Blocks { layout, block } => {
            let (rows, cols, data) = match layout {
                ArrayRef::Const(c) => {
                    if c.shape.len() != 2 || c.data.len() != c.shape[0].saturating_mul(c.shape[1]) {
                        return fail(format!(
                            "a block layout must be a 2-D array, found shape {:?} with {} values",
                            c.shape,
                            c.data.len()
                        ));
                    }
                    (c.shape[0], c.shape[1], c.data.as_slice())
                }
                ArrayRef::Operand(i) => {
                    let x = operand(operands, *i, "blocks")?;
                    if x.rank() != 2 {
                        return fail(format!("a block layout must be a 2-D tensor, found {}", x.type_text()));
                    }
                    (x.shape[0], x.shape[1], x.data.as_slice())
                }
            };
            let [bq, bk] = *block;
            let (Ok(bq), Ok(bk)) = (usize::try_from(bq), usize::try_from(bk)) else {
                return fail(format!("block sizes must be positive, found [{bq}, {bk}]"));
            };
            if bq == 0 || bk == 0 {
                return fail(format!("block sizes must be positive, found [{bq}, {bk}]"));
            }
            let (need_r, need_c) = (t.div_ceil(bq), s.div_ceil(bk));
            if rows < need_r || cols < need_c {
                return fail(format!(
                    "block layout is {rows}×{cols}, but {t} queries × {s} keys in blocks of [{bq}, {bk}] need at least {need_r}×{need_c}"
                ));
            }
            Node::Blocks { layout: Layout { cols, data }, bq, bk }
        }
        MaskExpr::Document { ids } => {
            let x = operand(operands, *ids, "document")?;
            if x.rank() != 1 || x.dtype != DType::I32 {
                return fail(format!("document ids must be an i32[T] tensor, found {}", x.type_text()));
            }
            if x.len() < t || x.len() < s {
                return fail(format!(
                    "document ids have {} entries, but the scores have {t} queries and {s} keys",
                    x.len()
                ));
            }
            Node::Document { ids: &x.data }
        }
        MaskExpr::Lambda(e) => Node::Lambda(e),
        MaskExpr::And(a, b) => Node::And(Box::new(compile(a, operands, t, s)?), Box::new(compile(b, operands, t, s)?)),
        MaskExpr::Or(a, b) => Node::Or(Box::new(compile(a, operands, t, s)?), Box::new(compile(b, operands, t, s)?)),
        MaskExpr::Not(a) => Node::Not(Box::new(compile(a, operands, t, s)?)),
    })
}

fn compile_neighborhood<'a>(
    kernel: &[i64],
    grid: &[i64],
    dilation: &[i64],
    causal: &[bool],
    t: usize,
    s: usize,
) -> Result<Node<'a>, RunError> {
    let (ti, si) = (i64::try_from(t).unwrap_or(i64::MAX), i64::try_from(s).unwrap_or(i64::MAX));
    if let Err(e) = tdl_ir::mask::check_neighborhood(kernel, grid, dilation, causal, ti, si) {
        return fail(e);
    }
    let axes = (0..grid.len())
        .map(|ax| NaAxis { len: grid[ax], kernel: kernel[ax], dilation: dilation[ax], causal: causal[ax] })
        .collect();
    Ok(Node::Neighborhood { axes })
}

/// The mask as a `bool[heads, t, s]` tensor: element `[h, q, k]` is 1 where
/// the mask holds. An oracle for anything that classifies or lowers masks.
pub fn materialize(
    expr: &MaskExpr,
    operands: &[Tensor],
    heads: usize,
    t: usize,
    s: usize,
    bindings: &Bindings,
    limits: &Limits,
) -> Result<Tensor, RunError> {
    let n = limits.check("the materialised mask", &[heads, t, s])?;
    let refs: Vec<&Tensor> = operands.iter().collect();
    let m = MaskEval::new(expr, &refs, t, s, bindings)?;
    let mut data = Vec::with_capacity(n);
    for h in 0..heads {
        for q in 0..t {
            for k in 0..s {
                data.push(if m.holds(q, k, h)? { 1.0 } else { 0.0 });
            }
        }
    }
    Tensor::new(DType::Bool, vec![heads, t, s], data)
}
