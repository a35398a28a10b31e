//! The Kernel IR: what a fused graph becomes before code generation.
//!
//! A [`KernelProgram`] is one graph as a list of **buffers** (inputs,
//! constants, intermediates; every shape symbolic, as in the graph) and an
//! ordered list of **kernels**, each a parameterised loop nest that reads
//! buffers and writes exactly one. Backends (LLVM for CPUs, MLIR for GPUs)
//! turn each kernel kind into code; the interpreter ([`crate::interp`])
//! executes the same loop nests in `f32`.
//!
//! Kernel kinds and their loop nests (the text form,
//! [`crate::text::print_program`], spells them out):
//!
//! * [`AttentionKernel`]: the FlashAttention-2 forward over
//!   `(lead..., q-tile) × visited kv-tiles` of the block-sparse iteration
//!   space the tile classifier derives from the mask formula, online
//!   softmax, optional split-KV with the online-softmax merge.
//! * [`MatMulKernel`]: `(batch..., m-tile, n-tile) × k-tiles`, A and B read
//!   through [`Access`] views (so `q @ transpose(k)` reads `k` in place).
//! * [`ElementwiseKernel`]: one loop over the output, a fused chain of
//!   element operations ([`EwInst`], SSA) over broadcast inputs and masks.
//! * [`ReduceKernel`], [`RowKernel`] (softmax, layernorm, rmsnorm, rope):
//!   one program per row.
//! * [`CopyKernel`] (a view made contiguous), concat, repeat: data movement.
//!
//! Views (`transpose`, `permute`, `slice`, `reshape`) are not kernels: they
//! are [`Access`] paths that consumers read through. Kernels that need a
//! contiguous operand (attention, rows, reductions) get one: the lowering
//! inserts a [`CopyKernel`] where the view is not contiguous.

use tdl_ir::{BinaryOp, ConstValue, DType, Dim, MaskExpr, ReduceOp, ScalarExpr, Span, UnaryOp};

/// A buffer of the program, printed `%N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct BufId(pub u32);

impl BufId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl std::fmt::Display for BufId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "%{}", self.0)
    }
}

/// Where a buffer's contents come from.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum BufKind {
    /// Graph parameter number `n` (read-only).
    Input(usize),
    /// A constant array (read-only).
    Const(ConstValue),
    /// Written by exactly one kernel, before any kernel reads it.
    Temp,
}

/// A row-major buffer.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Buffer {
    /// The source name (a parameter or `let` name) or a generated `tN`.
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<Dim>,
    pub kind: BufKind,
}

/// One step of a view, applied to the shape before it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum ViewOp {
    /// Swaps the last two axes.
    Transpose,
    /// Output axis `i` is input axis `perm[i]`.
    Permute(Vec<usize>),
    /// Elements `start..end` along `axis`.
    Slice { axis: usize, start: i64, end: i64 },
    /// The same elements, row-major, in a new shape. Valid on a contiguous
    /// view, or on any view when it only splits axes
    /// ([`reshape_only_splits`]: `[T, 256]` → `[T, 4, 64]`), which strides
    /// express; the lowering copies first otherwise.
    Reshape(Vec<Dim>),
}

/// Whether reshaping `from` into `to` only splits axes (ignoring axes of
/// size 1): each axis of `from` is either an axis of `to` or the product of
/// consecutive constant axes of `to`. Such a reshape is a strided view of
/// any view, contiguous or not.
pub fn reshape_only_splits(from: &[Dim], to: &[Dim]) -> bool {
    let one = Dim::constant(1);
    let from: Vec<&Dim> = from.iter().filter(|d| **d != one).collect();
    let to: Vec<&Dim> = to.iter().filter(|d| **d != one).collect();
    let mut j = 0;
    for d in from {
        if to.get(j) == Some(&d) {
            j += 1;
            continue;
        }
        let Some(want) = d.as_const() else { return false };
        let mut prod: i64 = 1;
        while prod < want {
            let Some(c) = to.get(j).and_then(|x| x.as_const()) else { return false };
            prod = prod.saturating_mul(c);
            j += 1;
        }
        if prod != want {
            return false;
        }
    }
    j == to.len()
}

/// A read of a buffer through a chain of views: an affine map from the
/// view's index to the buffer's flat index (resolved to an offset and
/// strides once the dimension symbols are bound).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Access {
    pub buf: BufId,
    pub view: Vec<ViewOp>,
}

impl Access {
    pub fn whole(buf: BufId) -> Access {
        Access { buf, view: Vec::new() }
    }

    /// Reads the buffer's elements in row-major order (only reshapes).
    pub fn is_contiguous(&self) -> bool {
        self.view.iter().all(|v| matches!(v, ViewOp::Reshape(_)))
    }

    /// The view's shape, given the buffer's.
    pub fn shape(&self, buf_shape: &[Dim]) -> Result<Vec<Dim>, String> {
        let mut shape = buf_shape.to_vec();
        for op in &self.view {
            match op {
                ViewOp::Transpose => {
                    let r = shape.len();
                    if r < 2 {
                        return Err(format!("transpose of a rank-{r} view"));
                    }
                    shape.swap(r - 2, r - 1);
                }
                ViewOp::Permute(perm) => {
                    let mut seen = vec![false; shape.len()];
                    if perm.len() != shape.len()
                        || perm.iter().any(|&p| p >= seen.len() || std::mem::replace(&mut seen[p], true))
                    {
                        return Err(format!("permute {perm:?} of a rank-{} view", shape.len()));
                    }
                    shape = perm.iter().map(|&p| shape[p].clone()).collect();
                }
                ViewOp::Slice { axis, start, end } => {
                    if *axis >= shape.len() || *start < 0 || start >= end {
                        return Err(format!("slice {start}..{end} of axis {axis} of a rank-{} view", shape.len()));
                    }
                    if let Some(n) = shape[*axis].as_const() {
                        if *end > n {
                            return Err(format!("slice {start}..{end} of an axis of size {n}"));
                        }
                    }
                    shape[*axis] = Dim::constant(end - start);
                }
                ViewOp::Reshape(s) => shape = s.clone(),
            }
        }
        Ok(shape)
    }
}

/// A mask applied inside a kernel: the expression and the buffers it reads
/// (by position, as the graph's `Mask` node lists them). Its `q`, `k` are
/// the last two indices of the kernel's output (or of the attention scores),
/// `h` the index along axis -3 (0 below rank 3).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MaskUse {
    pub expr: MaskExpr,
    pub operands: Vec<BufId>,
}

/// How the KV range of an attention is split across parallel workers
/// (flash-decoding / Lean Attention): each split runs the online softmax
/// over its share of the visited kv-tiles, giving `(m, l, O)` per row, and a
/// merge combines them: `m = max mᵢ`, `l = Σ e^(mᵢ-m) lᵢ`,
/// `out = Σ e^(mᵢ-m) Oᵢ / l`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum KvSplit {
    /// One split: each (lead, q-tile) program walks all its kv-tiles.
    None,
    /// Decided at run time, when the sizes are bound: when the
    /// `(lead, q-tile)` programs are fewer than `workers`, split each into
    /// `min(max_splits, ceil(workers / programs), visited kv-tiles /
    /// min_tiles)` chunks (at least 1).
    Auto { workers: usize, max_splits: usize, min_tiles: usize },
    /// Exactly this many (forced; at most the visited kv-tiles).
    Fixed(usize),
}

/// The fused attention as a FlashAttention-2 forward loop nest; see
/// [`crate::attention`] for the schedule and its semantics.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AttentionKernel {
    pub q: BufId,
    pub k: BufId,
    pub v: BufId,
    pub mask: Option<MaskUse>,
    /// `None`: `1/sqrt(D)`.
    pub scale: Option<f64>,
    /// The score modifier over `s, q, k, h`; its operand `i` is
    /// `score_operands[i]` (positions of the graph's attention operands:
    /// `q, k, v`, the mask, then the lambda's tensors; only the latter are
    /// `Some`).
    pub score: Option<ScalarExpr>,
    pub score_operands: Vec<Option<BufId>>,
    pub tile_q: usize,
    pub tile_k: usize,
    pub kv_split: KvSplit,
    pub out: BufId,
}

/// `out = a @ b` over the last two axes, leading axes broadcast.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MatMulKernel {
    pub a: Access,
    pub b: Access,
    pub tile_m: usize,
    pub tile_n: usize,
    pub tile_k: usize,
    pub out: BufId,
}

/// One element operation of a fused elementwise chain. Operands name
/// earlier instructions by index; every instruction has an element type.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum EwOp {
    /// Input `i` of the kernel, broadcast (NumPy, right-aligned) to the
    /// output shape.
    Load(usize),
    /// A scalar constant.
    Const(f64),
    Unary(UnaryOp, usize),
    Binary(BinaryOp, usize, usize),
    /// `cond ? a : b`; `cond` is a `bool` instruction.
    Select(usize, usize, usize),
    /// Whether mask `m` of the kernel holds at the output's `(q, k, h)`.
    Mask(usize),
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EwInst {
    pub op: EwOp,
    pub dtype: DType,
}

/// `out[i] = body(i)` for every output index; the last instruction is the
/// value stored (rounded to the output's element type).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ElementwiseKernel {
    pub inputs: Vec<Access>,
    pub masks: Vec<MaskUse>,
    pub body: Vec<EwInst>,
    pub out: BufId,
}

/// A reduction of one axis of a contiguous input.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReduceKernel {
    pub op: ReduceOp,
    pub axis: usize,
    pub keepdims: bool,
    pub x: Access,
    pub out: BufId,
}

/// Per-row operators.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum RowOp {
    /// Over `axis` (not necessarily the last).
    Softmax { axis: usize },
    /// Over the last axis; extra operands: gain, bias.
    LayerNorm { eps: f64 },
    /// Over the last axis; extra operand: gain.
    RmsNorm { eps: f64 },
    /// Rotate-half rotary embedding over the last axis, position = index
    /// along axis -2.
    Rope { base: f64 },
}

/// One program per row of a contiguous input; `params` are the extra
/// operands (norm gains and biases), broadcast along the rows.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RowKernel {
    pub op: RowOp,
    pub x: Access,
    pub params: Vec<Access>,
    pub out: BufId,
}

/// Data movement.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum MoveOp {
    /// Materialises a view.
    Copy,
    /// Concatenation of every source along `axis`.
    Concat { axis: usize },
    /// Each slice along `axis` repeated `times` times.
    Repeat { times: i64, axis: usize },
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MoveKernel {
    pub op: MoveOp,
    pub srcs: Vec<Access>,
    pub out: BufId,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum KernelBody {
    Attention(Box<AttentionKernel>),
    MatMul(MatMulKernel),
    Elementwise(ElementwiseKernel),
    Reduce(ReduceKernel),
    Row(RowKernel),
    Move(MoveKernel),
}

impl KernelBody {
    /// The buffer this kernel writes.
    pub fn out(&self) -> BufId {
        match self {
            KernelBody::Attention(k) => k.out,
            KernelBody::MatMul(k) => k.out,
            KernelBody::Elementwise(k) => k.out,
            KernelBody::Reduce(k) => k.out,
            KernelBody::Row(k) => k.out,
            KernelBody::Move(k) => k.out,
        }
    }

    /// Every buffer this kernel reads, in operand order.
    pub fn reads(&self) -> Vec<BufId> {
        match self {
            KernelBody::Attention(k) => {
                let mut r = vec![k.q, k.k, k.v];
                if let Some(m) = &k.mask {
                    r.extend(&m.operands);
                }
                r.extend(k.score_operands.iter().flatten());
                r
            }
            KernelBody::MatMul(k) => vec![k.a.buf, k.b.buf],
            KernelBody::Elementwise(k) => {
                let mut r: Vec<BufId> = k.inputs.iter().map(|a| a.buf).collect();
                for m in &k.masks {
                    r.extend(&m.operands);
                }
                r
            }
            KernelBody::Reduce(k) => vec![k.x.buf],
            KernelBody::Row(k) => std::iter::once(k.x.buf).chain(k.params.iter().map(|a| a.buf)).collect(),
            KernelBody::Move(k) => k.srcs.iter().map(|a| a.buf).collect(),
        }
    }

    /// The kind's name in the text form.
    pub fn kind(&self) -> &'static str {
        match self {
            KernelBody::Attention(_) => "attention",
            KernelBody::MatMul(_) => "matmul",
            KernelBody::Elementwise(_) => "elementwise",
            KernelBody::Reduce(_) => "reduce",
            KernelBody::Row(k) => match k.op {
                RowOp::Softmax { .. } => "softmax",
                RowOp::LayerNorm { .. } => "layernorm",
                RowOp::RmsNorm { .. } => "rmsnorm",
                RowOp::Rope { .. } => "rope",
            },
            KernelBody::Move(k) => match k.op {
                MoveOp::Copy => "copy",
                MoveOp::Concat { .. } => "concat",
                MoveOp::Repeat { .. } => "repeat",
            },
        }
    }
}

/// A kernel and where it came from.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Kernel {
    /// The graph node it computes (its `let` name or `nN`).
    pub name: String,
    pub span: Option<Span>,
    pub body: KernelBody,
}

/// A graph as kernels. Kernels run in order; `results[i]` is the buffer
/// holding result `i` (possibly an input or constant buffer).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KernelProgram {
    pub name: String,
    /// The graph's dimension symbols, sorted.
    pub symbols: Vec<String>,
    pub buffers: Vec<Buffer>,
    /// Buffer of each graph parameter, in parameter order.
    pub params: Vec<BufId>,
    pub kernels: Vec<Kernel>,
    pub results: Vec<BufId>,
    /// The target description the tile sizes were chosen for (one line).
    pub target: String,
}

impl KernelProgram {
    pub fn buffer(&self, id: BufId) -> Option<&Buffer> {
        self.buffers.get(id.index())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Dim {
        s.parse::<i64>().map_or_else(|_| Dim::sym(s), Dim::constant)
    }

    fn dims(s: &[&str]) -> Vec<Dim> {
        s.iter().map(|x| d(x)).collect()
    }

    #[test]
    fn reshapes_that_only_split_axes() {
        let yes = [
            (&["T", "256"][..], &["T", "4", "64"][..]),
            (&["T", "256"], &["T", "256"]),
            (&["1", "T", "8"], &["T", "2", "2", "2"]),
            (&["T", "8"], &["T", "1", "8", "1"]),
            (&["6"], &["2", "3"]),
        ];
        for (a, b) in yes {
            assert!(reshape_only_splits(&dims(a), &dims(b)), "{a:?} -> {b:?}");
        }
        let no = [
            (&["T", "4", "64"][..], &["T", "256"][..]), // a merge
            (&["H", "T"], &["T", "H"]),
            (&["T", "6"], &["T", "4"]),
            (&["T", "6"], &["T", "4", "2"]),
            (&["12"], &["T", "3"]),
        ];
        for (a, b) in no {
            assert!(!reshape_only_splits(&dims(a), &dims(b)), "{a:?} -> {b:?}");
        }
    }
}
