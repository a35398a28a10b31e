//! Mask expressions and the scalar index-lambda language.
//!
//! A mask is a boolean predicate over a query index `q`, a key index `k` and
//! the head `h`. Applied to a score tensor of shape `[..., T, S]`, `q` runs
//! along axis `-2`, `k` along axis `-1` and `h` along axis `-3` (always 0 for
//! rank-2 scores). Masks never hold a materialised `T×S` tensor: they stay
//! formulas, so later passes can classify tiles from the predicate itself.
//!
//! Data-dependent masks (`document(ids)`, `blocks(layout)` with a tensor
//! layout, lambdas that index integer inputs) refer to tensors by *operand
//! index*: position `i` in the input list of the graph node that holds the
//! expression.

use crate::types::DType;

/// A compile-time constant tensor: a scalar literal or a constant array.
///
/// Values are stored as `f64` whatever the element type (`i32` and `bool`
/// are exact in `f64`); `data.len()` equals the product of `shape`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ConstValue {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl ConstValue {
    pub fn scalar(dtype: DType, value: f64) -> ConstValue {
        ConstValue { dtype, shape: Vec::new(), data: vec![value] }
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// An array a lambda or a `blocks` mask reads: either a constant (from a
/// `const` array) or a tensor operand of the node holding the expression.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum ArrayRef {
    Const(ConstValue),
    Operand(usize),
}

/// The variables of a lambda: the score `s` (score modifiers only), the query
/// index `q`, the key index `k` and the head index `h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum LambdaVar {
    S,
    Q,
    K,
    H,
}

impl LambdaVar {
    pub fn name(self) -> &'static str {
        match self {
            LambdaVar::S => "s",
            LambdaVar::Q => "q",
            LambdaVar::K => "k",
            LambdaVar::H => "h",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ScalarUnary {
    Neg,
    Not,
    Abs,
    Exp,
    Log,
    Sqrt,
    Tanh,
    Sigmoid,
}

impl ScalarUnary {
    pub fn name(self) -> &'static str {
        match self {
            ScalarUnary::Neg => "neg",
            ScalarUnary::Not => "not",
            ScalarUnary::Abs => "abs",
            ScalarUnary::Exp => "exp",
            ScalarUnary::Log => "log",
            ScalarUnary::Sqrt => "sqrt",
            ScalarUnary::Tanh => "tanh",
            ScalarUnary::Sigmoid => "sigmoid",
        }
    }
}

/// Binary operators of the lambda language.
///
/// Integer arithmetic is 64-bit and wraps on overflow. On two integers `Div`
/// is floor division and `Mod` the matching floor modulo (Python's `//` and
/// `%`), so `(q - k) % d` is never negative for positive `d`; `x / 0` is `0`
/// and `x % 0` is `x`, so every lambda is total (generated code needs no
/// traps). A float on either side makes the operation a float one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ScalarBinary {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Min,
    Max,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    And,
    Or,
}

impl ScalarBinary {
    /// The infix spelling, or `None` for `min`/`max`, which are calls.
    pub fn symbol(self) -> Option<&'static str> {
        Some(match self {
            ScalarBinary::Add => "+",
            ScalarBinary::Sub => "-",
            ScalarBinary::Mul => "*",
            ScalarBinary::Div => "/",
            ScalarBinary::Mod => "%",
            ScalarBinary::Lt => "<",
            ScalarBinary::Le => "<=",
            ScalarBinary::Gt => ">",
            ScalarBinary::Ge => ">=",
            ScalarBinary::Eq => "==",
            ScalarBinary::Ne => "!=",
            ScalarBinary::And => "&",
            ScalarBinary::Or => "|",
            ScalarBinary::Min | ScalarBinary::Max => return None,
        })
    }

    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            ScalarBinary::Lt
                | ScalarBinary::Le
                | ScalarBinary::Gt
                | ScalarBinary::Ge
                | ScalarBinary::Eq
                | ScalarBinary::Ne
        )
    }
}

/// An expression of the lambda language: integers, floats and booleans over
/// the lambda variables, constants, dimension symbols and indexed arrays.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum ScalarExpr {
    Var(LambdaVar),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// A dimension symbol of the graph (`T`, `S`), bound at run time.
    Sym(String),
    /// `array[i, j, ...]`; one index per axis of the array.
    Index {
        array: ArrayRef,
        indices: Vec<ScalarExpr>,
    },
    Unary(ScalarUnary, Box<ScalarExpr>),
    Binary(ScalarBinary, Box<ScalarExpr>, Box<ScalarExpr>),
    /// `where(c, a, b)`.
    Select(Box<ScalarExpr>, Box<ScalarExpr>, Box<ScalarExpr>),
}

impl ScalarExpr {
    pub fn binary(op: ScalarBinary, a: ScalarExpr, b: ScalarExpr) -> ScalarExpr {
        ScalarExpr::Binary(op, Box::new(a), Box::new(b))
    }

    /// Calls `f` on every operand index the expression reads, mutably, so
    /// callers can renumber operands when they merge expressions.
    pub fn map_operands(&mut self, f: &mut dyn FnMut(usize) -> usize) {
        match self {
            ScalarExpr::Var(_)
            | ScalarExpr::Int(_)
            | ScalarExpr::Float(_)
            | ScalarExpr::Bool(_)
            | ScalarExpr::Sym(_) => {}
            ScalarExpr::Index { array, indices } => {
                if let ArrayRef::Operand(i) = array {
                    *i = f(*i);
                }
                for e in indices {
                    e.map_operands(f);
                }
            }
            ScalarExpr::Unary(_, a) => a.map_operands(f),
            ScalarExpr::Binary(_, a, b) => {
                a.map_operands(f);
                b.map_operands(f);
            }
            ScalarExpr::Select(c, a, b) => {
                c.map_operands(f);
                a.map_operands(f);
                b.map_operands(f);
            }
        }
    }

    /// Every operand index the expression reads, in order of appearance.
    pub fn operands(&self) -> Vec<usize> {
        let mut out = Vec::new();
        self.clone().map_operands(&mut |i| {
            out.push(i);
            i
        });
        out
    }
}

/// A mask expression. The variants are the built-in masks of the language
/// (see `docs/language.md` for their exact predicates), index lambdas and the
/// combinators.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum MaskExpr {
    /// `k <= q + (S - T)`: causal, aligned bottom-right when `T < S`.
    Causal,
    /// `q - left <= k <= q + right`.
    Local {
        left: i64,
        right: i64,
    },
    /// `causal & local(left = w - 1, right = 0)`.
    Window {
        w: i64,
    },
    /// `causal`, `q - k < w*d` and `(q - k) % d == 0`.
    Dilated {
        w: i64,
        d: i64,
    },
    /// `k < n`.
    Sink {
        n: i64,
    },
    /// `(k + offset) % stride == 0`.
    Strided {
        stride: i64,
        offset: i64,
    },
    /// NATTEN's neighborhood attention over a 1-D, 2-D or 3-D grid; all four
    /// vectors have one entry per grid axis.
    Neighborhood {
        kernel: Vec<i64>,
        grid: Vec<i64>,
        dilation: Vec<i64>,
        causal: Vec<bool>,
    },
    /// Block `(q / block[0], k / block[1])` is set in the 2-D bool `layout`.
    Blocks {
        layout: ArrayRef,
        block: [i64; 2],
    },
    /// `ids[q] == ids[k]`; `ids` is the operand at this index (an `i32[T]`).
    Document {
        ids: usize,
    },
    /// `mask(q, k, h) => expr`: a boolean lambda.
    Lambda(ScalarExpr),
    And(Box<MaskExpr>, Box<MaskExpr>),
    Or(Box<MaskExpr>, Box<MaskExpr>),
    Not(Box<MaskExpr>),
}

impl MaskExpr {
    /// Calls `f` on every operand index the mask reads, mutably.
    pub fn map_operands(&mut self, f: &mut dyn FnMut(usize) -> usize) {
        match self {
            MaskExpr::Causal
            | MaskExpr::Local { .. }
            | MaskExpr::Window { .. }
            | MaskExpr::Dilated { .. }
            | MaskExpr::Sink { .. }
            | MaskExpr::Strided { .. }
            | MaskExpr::Neighborhood { .. } => {}
            MaskExpr::Blocks { layout, .. } => {
                if let ArrayRef::Operand(i) = layout {
                    *i = f(*i);
                }
            }
            MaskExpr::Document { ids } => *ids = f(*ids),
            MaskExpr::Lambda(e) => e.map_operands(f),
            MaskExpr::And(a, b) | MaskExpr::Or(a, b) => {
                a.map_operands(f);
                b.map_operands(f);
            }
            MaskExpr::Not(a) => a.map_operands(f),
        }
    }

    /// Every operand index the mask reads, in order of appearance.
    pub fn operands(&self) -> Vec<usize> {
        let mut out = Vec::new();
        self.clone().map_operands(&mut |i| {
            out.push(i);
            i
        });
        out
    }
}

/// The deepest mask or lambda tree a graph may hold (the verifier checks it;
/// the frontend reports it at the source). Below the text form's nesting
/// limit, so every verified graph prints to text that parses back.
pub const MAX_EXPR_DEPTH: usize = 200;
/// The most tree nodes one mask or lambda may have.
pub const MAX_EXPR_NODES: usize = 10_000;
/// The most constant-array elements one mask or lambda may hold (each use of
/// a constant array inside it counts its elements).
pub const MAX_EXPR_ELEMENTS: usize = 1 << 22;

enum Item<'a> {
    Mask(&'a MaskExpr),
    Scalar(&'a ScalarExpr),
}

/// `(depth, nodes, elements)` of a mask or scalar tree, without recursion (a tree built
/// through an API may be arbitrarily deep). An index into an array of rank
/// `r` adds `r` levels, as its nested brackets do in the text form.
fn measure(root: Item<'_>) -> (usize, usize, usize) {
    let mut stack = vec![(root, 1usize)];
    let (mut depth, mut nodes, mut size) = (0usize, 0usize, 0usize);
    while let Some((item, d)) = stack.pop() {
        depth = depth.max(d);
        nodes = nodes.saturating_add(1);
        match item {
            Item::Mask(m) => match m {
                MaskExpr::And(a, b) | MaskExpr::Or(a, b) => {
                    stack.push((Item::Mask(a), d + 1));
                    stack.push((Item::Mask(b), d + 1));
                }
                MaskExpr::Not(a) => stack.push((Item::Mask(a), d + 1)),
                MaskExpr::Lambda(e) => stack.push((Item::Scalar(e), d + 1)),
                MaskExpr::Blocks { layout: ArrayRef::Const(c), .. } => {
                    size = size.saturating_add(c.len());
                    depth = depth.max(d + c.shape.len());
                }
                MaskExpr::Neighborhood { .. } => {}
                _ => {}
            },
            Item::Scalar(e) => match e {
                ScalarExpr::Index { array, indices } => {
                    let rank = match array {
                        ArrayRef::Const(c) => {
                            size = size.saturating_add(c.len());
                            c.shape.len()
                        }
                        ArrayRef::Operand(_) => 0,
                    };
                    depth = depth.max(d + rank);
                    stack.extend(indices.iter().map(|i| (Item::Scalar(i), d + 1)));
                }
                ScalarExpr::Unary(_, a) => stack.push((Item::Scalar(a), d + 1)),
                ScalarExpr::Binary(_, a, b) => {
                    stack.push((Item::Scalar(a), d + 1));
                    stack.push((Item::Scalar(b), d + 1));
                }
                ScalarExpr::Select(c, a, b) => {
                    stack.extend([c, a, b].into_iter().map(|x| (Item::Scalar(x), d + 1)));
                }
                _ => {}
            },
        }
    }
    (depth, nodes, size)
}

impl MaskExpr {
    /// `(depth, nodes, constant elements)`: see [`check_expr_limits`].
    pub fn measure(&self) -> (usize, usize, usize) {
        measure(Item::Mask(self))
    }
}

impl ScalarExpr {
    /// `(depth, nodes, constant elements)`: see [`check_expr_limits`].
    pub fn measure(&self) -> (usize, usize, usize) {
        measure(Item::Scalar(self))
    }
}

/// Checks a mask or lambda against [`MAX_EXPR_DEPTH`], [`MAX_EXPR_NODES`]
/// and [`MAX_EXPR_ELEMENTS`]; the error says which limit and by how much.
pub fn check_expr_limits((depth, nodes, elements): (usize, usize, usize)) -> Result<(), String> {
    if depth > MAX_EXPR_DEPTH {
        return Err(format!("it is {depth} levels deep; the limit is {MAX_EXPR_DEPTH}"));
    }
    if nodes > MAX_EXPR_NODES {
        return Err(format!("it has {nodes} parts; the limit is {MAX_EXPR_NODES}"));
    }
    if elements > MAX_EXPR_ELEMENTS {
        return Err(format!("it holds {elements} constant array elements; the limit is {MAX_EXPR_ELEMENTS}"));
    }
    Ok(())
}

/// Checks a neighborhood mask against the queries and keys it is applied to
/// (NATTEN's rules: one entry per axis in every vector, odd positive
/// kernels, positive grid sizes and dilations, every dilation group at least
/// as large as the kernel, and a grid of exactly `t` = `s` positions). The
/// reference interpreter and the tile classifier share this one check, so
/// they accept and refuse the same masks with the same words.
pub fn check_neighborhood(
    kernel: &[i64],
    grid: &[i64],
    dilation: &[i64],
    causal: &[bool],
    t: i64,
    s: i64,
) -> Result<(), String> {
    let n = grid.len();
    if n == 0 || kernel.len() != n || dilation.len() != n || causal.len() != n {
        return Err(format!(
            "neighborhood needs one kernel, grid, dilation and causal entry per grid axis, found {}, {}, {} and {}",
            kernel.len(),
            grid.len(),
            dilation.len(),
            causal.len()
        ));
    }
    let mut product: i64 = 1;
    for ax in 0..n {
        let (len, kk, d) = (grid[ax], kernel[ax], dilation[ax]);
        if len < 1 {
            return Err(format!("neighborhood grid axis {ax} has size {len}; sizes must be positive"));
        }
        if kk < 1 || kk % 2 == 0 {
            return Err(format!("neighborhood kernel on axis {ax} is {kk}; kernels must be odd and positive"));
        }
        if d < 1 {
            return Err(format!("neighborhood dilation on axis {ax} is {d}; dilations must be positive"));
        }
        // The smallest non-empty dilation group has floor(len / d) members
        // (or 1 when d > len).
        let smallest = if d > len { 1 } else { len / d };
        if smallest < kk {
            return Err(format!(
                "neighborhood axis {ax}: {len} positions with dilation {d} leave a group of {smallest} member(s), fewer than the kernel {kk}"
            ));
        }
        product = product
            .checked_mul(len)
            .ok_or_else(|| "the neighborhood grid has more positions than fit in 64 bits".to_string())?;
    }
    if product != t || product != s {
        return Err(format!(
            "the neighborhood grid {grid:?} has {product} positions, but the scores have {t} queries and {s} keys; all three must be equal"
        ));
    }
    Ok(())
}
