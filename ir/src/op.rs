//! The operators of the typed dataflow graph.
//!
//! Every axis attribute is normalised (non-negative, `< rank`) by whoever
//! builds the node; the verifier checks it. The operand order of each
//! operator is written on its variant.

use crate::mask::{ConstValue, MaskExpr, ScalarExpr};
use crate::types::Dim;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Tanh,
    Sigmoid,
    Relu,
    /// The exact erf form: `x/2 · (1 + erf(x/√2))`.
    Gelu,
    /// `x · sigmoid(x)`.
    Silu,
    Abs,
}

impl UnaryOp {
    pub const ALL: [UnaryOp; 11] = [
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Rsqrt,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Relu,
        UnaryOp::Gelu,
        UnaryOp::Silu,
        UnaryOp::Abs,
    ];

    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Rsqrt => "rsqrt",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Relu => "relu",
            UnaryOp::Gelu => "gelu",
            UnaryOp::Silu => "silu",
            UnaryOp::Abs => "abs",
        }
    }

    pub fn from_name(s: &str) -> Option<UnaryOp> {
        UnaryOp::ALL.into_iter().find(|u| u.name() == s)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
}

impl BinaryOp {
    pub const ALL: [BinaryOp; 4] = [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div];

    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
        }
    }

    pub fn from_name(s: &str) -> Option<BinaryOp> {
        BinaryOp::ALL.into_iter().find(|b| b.name() == s)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ReduceOp {
    Sum,
    Max,
    Mean,
}

impl ReduceOp {
    pub fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Max => "max",
            ReduceOp::Mean => "mean",
        }
    }

    pub fn from_name(s: &str) -> Option<ReduceOp> {
        [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Mean].into_iter().find(|r| r.name() == s)
    }
}

/// A graph operator. Operands (the node's inputs, in order) are listed on
/// each variant.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Graph parameter number `index`. No operands.
    Input { index: usize },
    /// A scalar literal or constant array. No operands.
    Constant(ConstValue),
    /// Elementwise. Operands: `x`.
    Unary(UnaryOp),
    /// Elementwise with NumPy broadcasting. Operands: `a, b`. For `Add`, one
    /// operand may be a mask: `s + m` keeps `s` where `m` holds and is `-inf`
    /// elsewhere.
    Binary(BinaryOp),
    /// Product over the last two axes, leading axes broadcast. Operands: `a, b`.
    MatMul,
    /// Reduction over one axis. Operands: `x`.
    Reduce { op: ReduceOp, axis: usize, keepdims: bool },
    /// Numerically stable softmax over one axis. Operands: `x`.
    Softmax { axis: usize },
    /// Swaps the last two axes. Operands: `x`.
    Transpose,
    /// Output axis `i` is input axis `perm[i]`. Operands: `x`.
    Permute { perm: Vec<usize> },
    /// Same elements, row-major, new shape. Operands: `x`.
    Reshape { shape: Vec<Dim> },
    /// Concatenation along `axis`. Operands: one or more tensors.
    Concat { axis: usize },
    /// Elements `start..end` along `axis`. Operands: `x`.
    Slice { axis: usize, start: i64, end: i64 },
    /// Repeats each slice along `axis` `times` times (`[a, a, b, b]`).
    /// Operands: `x`.
    Repeat { times: i64, axis: usize },
    /// Select. Operands: `cond, a, b`; `cond` is a `bool` tensor or a mask.
    Where,
    /// Over the last axis. Operands: `x, gain, bias`.
    LayerNorm { eps: f64 },
    /// Over the last axis. Operands: `x, gain`.
    RmsNorm { eps: f64 },
    /// Rotary embedding, rotate-half convention, position = index along
    /// axis `-2`. Operands: `x`.
    Rope { base: f64 },
    /// The fused attention. Operands: `q, k, v`, then the mask if `masked`,
    /// then the tensors the score lambda reads (it refers to them by their
    /// position in this operand list). `scale: None` means `1/sqrt(D)`. The
    /// head axis (`-3`) of `k`/`v` may divide that of `q`: grouped-query
    /// attention, query head `h` reading key head `h / (Hq / Hk)`.
    Attention { scale: Option<f64>, masked: bool, score: Option<ScalarExpr> },
    /// A mask value. Operands: the tensors the expression reads, by position.
    Mask(MaskExpr),
}

impl Op {
    /// The operator's name in the text form.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Constant(_) => "constant",
            Op::Unary(u) => u.name(),
            Op::Binary(b) => b.name(),
            Op::MatMul => "matmul",
            Op::Reduce { op, .. } => op.name(),
            Op::Softmax { .. } => "softmax",
            Op::Transpose => "transpose",
            Op::Permute { .. } => "permute",
            Op::Reshape { .. } => "reshape",
            Op::Concat { .. } => "concat",
            Op::Slice { .. } => "slice",
            Op::Repeat { .. } => "repeat",
            Op::Where => "where",
            Op::LayerNorm { .. } => "layernorm",
            Op::RmsNorm { .. } => "rmsnorm",
            Op::Rope { .. } => "rope",
            Op::Attention { .. } => "attention",
            Op::Mask(_) => "mask",
        }
    }
}
