//! Lowering: a verified graph (normally the fused graph the pass pipeline
//! gives) → a [`KernelProgram`].
//!
//! * Parameters and constant arrays become read-only buffers; scalar
//!   constants are folded into the elementwise kernels that read them.
//! * `transpose`, `permute`, `slice` and `reshape` become [`Access`] views
//!   (no kernel, no copy); a consumer that needs a contiguous operand
//!   (attention, rows, reductions, mask operands) gets a `copy` kernel when
//!   the view is not contiguous, and so does a reshape of a non-contiguous
//!   view unless it only splits axes (a strided view still).
//! * Elementwise nodes (`unary`, `binary`, `where`, a mask added to scores)
//!   are **fused**: a node used exactly once, by an elementwise node of the
//!   same shape, is computed inside its consumer's loop instead of being
//!   stored (chains are cut every [`MAX_FUSED_DEPTH`] levels). Masks are
//!   never stored: each kernel that applies one evaluates its predicate.
//! * `attention` becomes an [`AttentionKernel`] with tile sizes and the
//!   KV split chosen by the [`Target`] (or forced by [`LowerOptions`]);
//!   tiles align with a `blocks` mask's blocks where a divisor allows, so
//!   every visited tile is Full;
//!   `matmul` a tiled [`MatMulKernel`]; norms, softmax and rope row kernels;
//!   `concat`/`repeat` move kernels.
//!
//! Every node a result depends on is lowered; nothing else is.

use std::collections::{HashMap, HashSet};

use tdl_ir::{BinaryOp, ConstValue, DType, Dim, Graph, MaskExpr, NodeId, Op, Type, VerifiedGraph};

use crate::ir::*;
use crate::target::Target;

/// Fused elementwise trees are cut (an intermediate stored) at this depth.
pub const MAX_FUSED_DEPTH: usize = 32;

/// Choices that override the target's cost model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LowerOptions {
    /// `(tile_q, tile_k)` for every attention.
    pub attention_tiles: Option<(usize, usize)>,
    /// The KV split of every attention.
    pub kv_split: Option<KvSplit>,
}

/// What a lowered node is.
#[derive(Clone, Debug)]
enum LVal {
    Tensor(Access),
    /// A scalar constant, folded into its elementwise readers.
    Scalar(ConstValue),
    /// A mask: its expression and operand nodes.
    Mask(MaskExpr, Vec<NodeId>),
    /// Computed inside its (single) elementwise consumer.
    Fused,
}

struct Lowerer<'g> {
    g: &'g Graph,
    target: &'g Target,
    opts: &'g LowerOptions,
    buffers: Vec<Buffer>,
    kernels: Vec<Kernel>,
    vals: HashMap<NodeId, LVal>,
    /// Constant buffers made for scalar constants read as tensors.
    scalar_bufs: HashMap<NodeId, BufId>,
    fused: HashSet<NodeId>,
    temps: usize,
}

fn is_elementwise(op: &Op) -> bool {
    matches!(op, Op::Unary(_) | Op::Binary(_) | Op::Where)
}

/// Lowers `g` for `target`.
pub fn lower(g: &VerifiedGraph, target: &Target, opts: &LowerOptions) -> Result<KernelProgram, String> {
    let graph = g.graph();
    let order = graph.topo_order().ok_or_else(|| format!("graph `{}` has a cycle", graph.name))?;

    // Live nodes and their uses (a result counts as a use).
    let mut live = HashSet::new();
    let mut stack: Vec<NodeId> = graph.results().to_vec();
    while let Some(n) = stack.pop() {
        if live.insert(n) {
            stack.extend(graph.inputs(n));
        }
    }
    let mut uses: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
    for &n in &order {
        if live.contains(&n) {
            for i in graph.inputs(n) {
                uses.entry(i).or_default().push(n);
            }
        }
    }
    let results: HashSet<NodeId> = graph.results().iter().copied().collect();

    // Which elementwise nodes are computed inside their consumer.
    let mut fused = HashSet::new();
    let mut depth: HashMap<NodeId, usize> = HashMap::new();
    for &n in &order {
        if !live.contains(&n) || !is_elementwise(&graph.node(n).op) {
            continue;
        }
        let d = 1 + graph.inputs(n).iter().filter(|i| fused.contains(*i)).map(|i| depth[i]).max().unwrap_or(0);
        depth.insert(n, d);
        let users = uses.get(&n).map(Vec::as_slice).unwrap_or(&[]);
        if let [c] = users {
            let same_shape = match (&graph.node(n).ty, &graph.node(*c).ty) {
                (Type::Tensor(a), Type::Tensor(b)) => a.shape == b.shape,
                _ => false,
            };
            if !results.contains(&n) && is_elementwise(&graph.node(*c).op) && same_shape && d < MAX_FUSED_DEPTH {
                fused.insert(n);
            }
        }
    }

    let mut lw = Lowerer {
        g: graph,
        target,
        opts,
        buffers: Vec::new(),
        kernels: Vec::new(),
        vals: HashMap::new(),
        scalar_bufs: HashMap::new(),
        fused,
        temps: 0,
    };
    let mut params = Vec::new();
    for (i, p) in graph.params().iter().enumerate() {
        let b = lw.add_buffer(p.name.clone(), p.ty.dtype, p.ty.shape.clone(), BufKind::Input(i));
        params.push(b);
        lw.vals.insert(p.node, LVal::Tensor(Access::whole(b)));
    }
    for &n in &order {
        if live.contains(&n) && !lw.vals.contains_key(&n) {
            lw.node(n).map_err(|e| {
                let node = graph.node(n);
                let name = node.name.as_ref().map_or_else(String::new, |s| format!(" `{s}`"));
                format!("lowering {n} (`{}`{name}) of graph `{}` to Kernel IR: {e}", node.op.name(), graph.name)
            })?;
        }
    }
    let mut res = Vec::new();
    for &r in graph.results() {
        let a = lw.access(r)?;
        let b = if a.view.is_empty() { a.buf } else { lw.copy(r, a)? };
        res.push(b);
    }

    let mut symbols: Vec<String> = Vec::new();
    for b in &lw.buffers {
        for d in &b.shape {
            symbols.extend(d.symbols());
        }
    }
    symbols.sort();
    symbols.dedup();
    Ok(KernelProgram {
        name: graph.name.clone(),
        symbols,
        buffers: lw.buffers,
        params,
        kernels: lw.kernels,
        results: res,
        target: target.describe(),
    })
}

impl Lowerer<'_> {
    fn add_buffer(&mut self, name: String, dtype: DType, shape: Vec<Dim>, kind: BufKind) -> BufId {
        let id = BufId(self.buffers.len() as u32);
        self.buffers.push(Buffer { name, dtype, shape, kind });
        id
    }

    fn node_name(&self, n: NodeId) -> String {
        self.g.node(n).name.clone().unwrap_or_else(|| n.to_string())
    }

    /// A fresh temporary for node `n`'s value (of type `ty`).
    fn temp(&mut self, n: NodeId, dtype: DType, shape: Vec<Dim>) -> BufId {
        self.temps += 1;
        let name = self.g.node(n).name.clone().unwrap_or_else(|| format!("t{}", self.temps));
        self.add_buffer(name, dtype, shape, BufKind::Temp)
    }

    fn emit(&mut self, n: NodeId, body: KernelBody) {
        self.kernels.push(Kernel { name: self.node_name(n), span: self.g.node(n).span, body });
    }

    fn tensor_type(&self, n: NodeId) -> Result<(DType, Vec<Dim>), String> {
        match &self.g.node(n).ty {
            Type::Tensor(t) => Ok((t.dtype, t.shape.clone())),
            Type::Mask => Err(format!("{n} is a mask where a tensor is needed")),
        }
    }

    fn access_shape(&self, a: &Access) -> Result<Vec<Dim>, String> {
        let b = self.buffers.get(a.buf.index()).ok_or_else(|| format!("no buffer {}", a.buf))?;
        a.shape(&b.shape)
    }

    /// The tensor value of `n` as an access (a scalar constant gets a buffer).
    fn access(&mut self, n: NodeId) -> Result<Access, String> {
        match self.vals.get(&n) {
            Some(LVal::Tensor(a)) => Ok(a.clone()),
            Some(LVal::Scalar(c)) => {
                if let Some(b) = self.scalar_bufs.get(&n) {
                    return Ok(Access::whole(*b));
                }
                let (name, c) = (self.node_name(n), c.clone());
                let b = self.add_buffer(name, c.dtype, Vec::new(), BufKind::Const(c));
                self.scalar_bufs.insert(n, b);
                Ok(Access::whole(b))
            }
            Some(LVal::Mask(..)) => Err(format!("the mask {n} is used where a tensor is needed")),
            Some(LVal::Fused) => Err(format!("{n} was fused into its consumer but is read as a tensor")),
            None => Err(format!("{n} has no value yet")),
        }
    }

    /// A copy kernel materialising `a` as node `n`'s buffer.
    fn copy(&mut self, n: NodeId, a: Access) -> Result<BufId, String> {
        let shape = self.access_shape(&a)?;
        let dtype = self.buffers[a.buf.index()].dtype;
        let out = self.temp(n, dtype, shape);
        self.emit(n, KernelBody::Move(MoveKernel { op: MoveOp::Copy, srcs: vec![a], out }));
        Ok(out)
    }

    /// `n`'s value as a whole buffer (copied when it is a view).
    fn whole(&mut self, n: NodeId) -> Result<BufId, String> {
        let a = self.access(n)?;
        if a.view.is_empty() {
            Ok(a.buf)
        } else {
            self.copy(n, a)
        }
    }

    /// `n`'s value as a contiguous access (copied when it is not).
    fn contiguous(&mut self, n: NodeId) -> Result<Access, String> {
        let a = self.access(n)?;
        if a.is_contiguous() {
            Ok(a)
        } else {
            self.copy(n, a).map(Access::whole)
        }
    }

    fn mask_use(&mut self, n: NodeId) -> Result<MaskUse, String> {
        match self.vals.get(&n).cloned() {
            Some(LVal::Mask(expr, ops)) => {
                let operands = ops.iter().map(|&o| self.whole(o)).collect::<Result<_, _>>()?;
                Ok(MaskUse { expr, operands })
            }
            _ => Err(format!("{n} is not a mask")),
        }
    }

    fn node(&mut self, n: NodeId) -> Result<(), String> {
        let node = self.g.node(n);
        let ins = self.g.inputs(n);
        let operand = |i: usize| ins.get(i).copied().ok_or_else(|| format!("operand {i} is missing"));
        let val = match &node.op {
            Op::Input { .. } => return Err("a parameter node that is not a graph parameter".into()),
            Op::Constant(c) if c.shape.is_empty() => LVal::Scalar(c.clone()),
            Op::Constant(c) => {
                let b = self.add_buffer(self.node_name(n), c.dtype, node_shape(node)?, BufKind::Const(c.clone()));
                LVal::Tensor(Access::whole(b))
            }
            Op::Mask(e) => LVal::Mask(e.clone(), ins.clone()),
            op if is_elementwise(op) => {
                if self.fused.contains(&n) {
                    LVal::Fused
                } else {
                    LVal::Tensor(Access::whole(self.elementwise(n)?))
                }
            }
            Op::Transpose | Op::Permute { .. } | Op::Slice { .. } => {
                let mut a = self.access(operand(0)?)?;
                a.view.push(match &node.op {
                    Op::Transpose => ViewOp::Transpose,
                    Op::Permute { perm } => ViewOp::Permute(perm.clone()),
                    Op::Slice { axis, start, end } => ViewOp::Slice { axis: *axis, start: *start, end: *end },
                    _ => unreachable!("matched above"),
                });
                LVal::Tensor(a)
            }
            Op::Reshape { .. } => {
                let to = node_shape(node)?;
                let a = self.access(operand(0)?)?;
                let mut a = if a.is_contiguous() || reshape_only_splits(&self.access_shape(&a)?, &to) {
                    a
                } else {
                    self.contiguous(operand(0)?)?
                };
                a.view.push(ViewOp::Reshape(to));
                LVal::Tensor(a)
            }
            Op::MatMul => {
                let (a, b) = (self.access(operand(0)?)?, self.access(operand(1)?)?);
                let (dtype, shape) = self.tensor_type(n)?;
                if !dtype.is_float() {
                    return Err(format!("not supported yet: {} matmul in the Kernel IR (floats only)", dtype.name()));
                }
                let (tile_m, tile_n, tile_k) = self.target.matmul_tiles(dtype.size_bytes());
                let out = self.temp(n, dtype, shape);
                self.emit(n, KernelBody::MatMul(MatMulKernel { a, b, tile_m, tile_n, tile_k, out }));
                LVal::Tensor(Access::whole(out))
            }
            Op::Reduce { op, axis, keepdims } => {
                let x = self.contiguous(operand(0)?)?;
                let (dtype, shape) = self.tensor_type(n)?;
                let out = self.temp(n, dtype, shape);
                let k = ReduceKernel { op: *op, axis: *axis, keepdims: *keepdims, x, out };
                self.emit(n, KernelBody::Reduce(k));
                LVal::Tensor(Access::whole(out))
            }
            Op::Softmax { .. } | Op::LayerNorm { .. } | Op::RmsNorm { .. } | Op::Rope { .. } => {
                let op = match &node.op {
                    Op::Softmax { axis } => RowOp::Softmax { axis: *axis },
                    Op::LayerNorm { eps } => RowOp::LayerNorm { eps: *eps },
                    Op::RmsNorm { eps } => RowOp::RmsNorm { eps: *eps },
                    Op::Rope { base } => RowOp::Rope { base: *base },
                    _ => unreachable!("matched above"),
                };
                let x = self.contiguous(operand(0)?)?;
                let params = ins[1..].iter().map(|&p| self.contiguous(p)).collect::<Result<_, _>>()?;
                let (dtype, shape) = self.tensor_type(n)?;
                let out = self.temp(n, dtype, shape);
                self.emit(n, KernelBody::Row(RowKernel { op, x, params, out }));
                LVal::Tensor(Access::whole(out))
            }
            Op::Concat { .. } | Op::Repeat { .. } => {
                let op = match &node.op {
                    Op::Concat { axis } => MoveOp::Concat { axis: *axis },
                    Op::Repeat { times, axis } => MoveOp::Repeat { times: *times, axis: *axis },
                    _ => unreachable!("matched above"),
                };
                let srcs = ins.iter().map(|&s| self.access(s)).collect::<Result<_, _>>()?;
                let (dtype, shape) = self.tensor_type(n)?;
                let out = self.temp(n, dtype, shape);
                self.emit(n, KernelBody::Move(MoveKernel { op, srcs, out }));
                LVal::Tensor(Access::whole(out))
            }
            Op::Attention { scale, masked, score } => {
                let first_extra = 3 + usize::from(*masked);
                if ins.len() < first_extra {
                    return Err(format!("attention needs {first_extra} operands, found {}", ins.len()));
                }
                let (q, k, v) = (self.whole(ins[0])?, self.whole(ins[1])?, self.whole(ins[2])?);
                let mask = if *masked { Some(self.mask_use(ins[3])?) } else { None };
                let mut score_operands = vec![None; first_extra];
                for &o in &ins[first_extra..] {
                    score_operands.push(Some(self.whole(o)?));
                }
                if score.is_none() {
                    score_operands.clear();
                }
                let (dtype, shape) = self.tensor_type(n)?;
                let (qd, vd) = (&self.buffers[q.index()].shape, &self.buffers[v.index()].shape);
                let d = qd.last().and_then(Dim::as_const).and_then(|x| usize::try_from(x).ok());
                let dv = vd.last().and_then(Dim::as_const).and_then(|x| usize::try_from(x).ok());
                let (tile_q, tile_k) = match self.opts.attention_tiles {
                    Some(t) => t,
                    None => attention_tiles(self.target, d, dv, dtype.size_bytes(), mask.as_ref().map(|m| &m.expr)),
                };
                let kv_split = self.opts.kv_split.unwrap_or_else(|| self.target.kv_split());
                let out = self.temp(n, dtype, shape);
                let k = AttentionKernel {
                    q,
                    k,
                    v,
                    mask,
                    scale: *scale,
                    score: score.clone(),
                    score_operands,
                    tile_q,
                    tile_k,
                    kv_split,
                    out,
                };
                self.emit(n, KernelBody::Attention(Box::new(k)));
                LVal::Tensor(Access::whole(out))
            }
            other => return Err(format!("not supported yet: `{}` in the Kernel IR", other.name())),
        };
        self.vals.insert(n, val);
        Ok(())
    }

    /// The fused elementwise kernel rooted at `root`.
    fn elementwise(&mut self, root: NodeId) -> Result<BufId, String> {
        let mut k = EwBuilder::default();
        let result = self.ew_tree(root, root, &mut k)?;
        if result + 1 != k.body.len() {
            // The root's instruction is always the last one pushed.
            return Err("internal: the fused root is not the last instruction".into());
        }
        let (dtype, shape) = self.tensor_type(root)?;
        let out = self.temp(root, dtype, shape);
        let body = ElementwiseKernel { inputs: k.inputs, masks: k.masks, body: k.body, out };
        self.emit(root, KernelBody::Elementwise(body));
        Ok(out)
    }

    fn ew_tree(&mut self, root: NodeId, n: NodeId, k: &mut EwBuilder) -> Result<usize, String> {
        let node = self.g.node(n);
        let inner = n == root || self.fused.contains(&n);
        if !inner {
            return match self.vals.get(&n) {
                Some(LVal::Scalar(c)) => {
                    let v = c.data.first().copied().unwrap_or(0.0);
                    Ok(k.push(EwOp::Const(v), c.dtype))
                }
                Some(LVal::Mask(..)) => {
                    let m = match k.mask_of.get(&n) {
                        Some(&m) => m,
                        None => {
                            let mu = self.mask_use(n)?;
                            k.masks.push(mu);
                            k.mask_of.insert(n, k.masks.len() - 1);
                            k.masks.len() - 1
                        }
                    };
                    Ok(k.push(EwOp::Mask(m), DType::Bool))
                }
                _ => {
                    let i = match k.input_of.get(&n) {
                        Some(&i) => i,
                        None => {
                            let a = self.access(n)?;
                            k.inputs.push(a);
                            k.input_of.insert(n, k.inputs.len() - 1);
                            k.inputs.len() - 1
                        }
                    };
                    let dtype = self.tensor_type(n)?.0;
                    Ok(k.push(EwOp::Load(i), dtype))
                }
            };
        }
        let (dtype, _) = self.tensor_type(n)?;
        let ins = self.g.inputs(n);
        let is_mask = |x: NodeId| matches!(self.g.node(x).ty, Type::Mask);
        match (&node.op, ins.as_slice()) {
            (Op::Unary(u), [x]) => {
                let a = self.ew_tree(root, *x, k)?;
                Ok(k.push(EwOp::Unary(*u, a), dtype))
            }
            (Op::Binary(BinaryOp::Add), [a, b]) if is_mask(*a) || is_mask(*b) => {
                let (s, m) = if is_mask(*b) { (*a, *b) } else { (*b, *a) };
                let sv = self.ew_tree(root, s, k)?;
                let mv = self.ew_tree(root, m, k)?;
                let ninf = k.push(EwOp::Const(f64::NEG_INFINITY), dtype);
                Ok(k.push(EwOp::Select(mv, sv, ninf), dtype))
            }
            (Op::Binary(op), [a, b]) => {
                let x = self.ew_tree(root, *a, k)?;
                let y = self.ew_tree(root, *b, k)?;
                Ok(k.push(EwOp::Binary(*op, x, y), dtype))
            }
            (Op::Where, [c, a, b]) => {
                let cv = self.ew_tree(root, *c, k)?;
                let x = self.ew_tree(root, *a, k)?;
                let y = self.ew_tree(root, *b, k)?;
                Ok(k.push(EwOp::Select(cv, x, y), dtype))
            }
            (op, ins) => Err(format!("`{}` with {} operand(s) is not an elementwise operation", op.name(), ins.len())),
        }
    }
}

#[derive(Default)]
struct EwBuilder {
    inputs: Vec<Access>,
    input_of: HashMap<NodeId, usize>,
    masks: Vec<MaskUse>,
    mask_of: HashMap<NodeId, usize>,
    body: Vec<EwInst>,
}

impl EwBuilder {
    fn push(&mut self, op: EwOp, dtype: DType) -> usize {
        self.body.push(EwInst { op, dtype });
        self.body.len() - 1
    }
}

/// The attention tiles the lowering chooses: the target's cost model for
/// head dimensions `d`, `dv` (`None`: symbolic) and elements of `elem_bytes`,
/// aligned with the blocks of a `blocks` mask. `tdlc explain` and the
/// benchmarks use this too, so they report what `--emit kernel` runs.
pub fn attention_tiles(
    target: &Target,
    d: Option<usize>,
    dv: Option<usize>,
    elem_bytes: usize,
    mask: Option<&MaskExpr>,
) -> (usize, usize) {
    let mut t = target.attention_tiles(d, dv, elem_bytes);
    // Banded masks on a CPU: q-tiles of at most 64 rows (measured: a
    // window of 256 at T = 16384 runs 1.6× faster with 64×64 tiles than with
    // 128×64; a taller tile adds partial tiles at both edges of the band).
    if matches!(target.kind, crate::target::TargetKind::Cpu(_)) && mask.and_then(band).is_some_and(|b| b <= MAX_BAND) {
        t.0 = t.0.min(BANDED_TILE_Q);
    }
    mask.and_then(|m| block_aligned(m, t)).unwrap_or(t)
}

/// Bands up to this width get [`BANDED_TILE_Q`]-row q-tiles on a CPU.
const MAX_BAND: i64 = 1024;
const BANDED_TILE_Q: usize = 64;

/// The width of the diagonal band a mask's visible keys lie in around each
/// query (window, local, dilated, neighborhood; a conjunction with one; a
/// union of bands, or of a band with a sink), or `None`.
fn band(m: &MaskExpr) -> Option<i64> {
    match m {
        MaskExpr::Window { w } => Some(*w),
        MaskExpr::Local { left, right } => Some(left.saturating_add(*right).saturating_add(1)),
        MaskExpr::Dilated { w, d } => Some(w.saturating_mul(*d)),
        MaskExpr::Neighborhood { kernel, grid, dilation, .. } => {
            // The span in tokens: the kernel's extent along the slowest axis
            // times the row length of the faster ones.
            let row: i64 = grid.iter().skip(1).product();
            let k0 = kernel.first().copied().unwrap_or(1);
            let d0 = dilation.first().copied().unwrap_or(1);
            Some(k0.saturating_mul(d0).saturating_mul(row.max(1)))
        }
        MaskExpr::And(a, b) => match (band(a), band(b)) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        },
        MaskExpr::Or(a, b) => match (&**a, &**b) {
            (MaskExpr::Sink { .. }, x) | (x, MaskExpr::Sink { .. }) => band(x),
            _ => Some(band(a)?.max(band(b)?)),
        },
        _ => None,
    }
}

/// Tiles aligned with a `blocks` mask's blocks (the whole mask, or a
/// conjunct of it): each tile size becomes the block size, or its largest
/// divisor not above the cost model's choice (at least 8), so that every
/// visited tile is Full instead of Partial. `None` when there are no blocks
/// or no such divisor.
fn block_aligned(m: &MaskExpr, (tq, tk): (usize, usize)) -> Option<(usize, usize)> {
    let [bq, bk] = match m {
        MaskExpr::Blocks { block, .. } => *block,
        MaskExpr::And(a, b) => return block_aligned(a, (tq, tk)).or_else(|| block_aligned(b, (tq, tk))),
        _ => return None,
    };
    let fit = |b: i64, cap: usize| -> Option<usize> {
        let b = usize::try_from(b).ok()?;
        (8..=cap.min(b)).rev().find(|&t| b % t == 0)
    };
    Some((fit(bq, tq)?, fit(bk, tk)?))
}

fn node_shape(node: &tdl_ir::Node) -> Result<Vec<Dim>, String> {
    match &node.ty {
        Type::Tensor(t) => Ok(t.shape.clone()),
        Type::Mask => Err("a mask has no shape".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tdl_ir::ArrayRef;

    #[test]
    fn tiles_align_with_blocks() {
        let blocks = |bq, bk| MaskExpr::Blocks { layout: ArrayRef::Operand(0), block: [bq, bk] };
        assert_eq!(block_aligned(&blocks(64, 64), (128, 64)), Some((64, 64)));
        assert_eq!(block_aligned(&blocks(256, 256), (128, 64)), Some((128, 64)));
        assert_eq!(block_aligned(&blocks(48, 96), (128, 64)), Some((48, 48)));
        assert_eq!(
            block_aligned(&MaskExpr::And(Box::new(MaskExpr::Causal), Box::new(blocks(32, 32))), (128, 64)),
            Some((32, 32))
        );
        // No divisor of 7 is at least 8: keep the cost model's tiles.
        assert_eq!(block_aligned(&blocks(7, 64), (128, 64)), None);
        assert_eq!(block_aligned(&MaskExpr::Or(Box::new(MaskExpr::Causal), Box::new(blocks(64, 64))), (128, 64)), None);
    }

    #[test]
    fn banded_masks_get_short_q_tiles_on_a_cpu() {
        let cpu = Target::cpu(crate::target::CpuInfo {
            l1d_bytes: 32 << 10,
            l2_bytes: 1 << 20,
            l3_bytes: 32 << 20,
            vector_bits: 256,
            cores: 2,
            name: "test avx2".into(),
        });
        let dense = attention_tiles(&cpu, Some(64), Some(64), 4, Some(&MaskExpr::Causal));
        assert!(dense.0 > 64, "{dense:?}");
        let sink_window = MaskExpr::Or(Box::new(MaskExpr::Sink { n: 4 }), Box::new(MaskExpr::Window { w: 512 }));
        for m in [MaskExpr::Window { w: 256 }, MaskExpr::Local { left: 100, right: 100 }, sink_window] {
            assert_eq!(attention_tiles(&cpu, Some(64), Some(64), 4, Some(&m)), (64, dense.1), "{m:?}");
        }
        // A band wider than 1024 keeps the cost model's tiles, as does a GPU.
        assert_eq!(attention_tiles(&cpu, Some(64), Some(64), 4, Some(&MaskExpr::Window { w: 4096 })), dense);
        let gpu = Target::gpu("sm_90").unwrap();
        assert_eq!(
            attention_tiles(&gpu, Some(64), Some(64), 4, Some(&MaskExpr::Window { w: 256 })),
            gpu.attention_tiles(Some(64), Some(64), 4)
        );
    }
}
