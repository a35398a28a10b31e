//! The text form of a graph (`tdlc compile --emit graph`).
//!
//! Every graph prints and re-parses to itself: [`parse_graph`] of
//! [`print_graph`] is a graph [`graphs_equal`] to the original, and printing
//! it again gives the same text byte for byte. Snapshot tests of the whole
//! compiler are built on this text, so it is deterministic and complete:
//! every operator prints with all its attributes and its result type.
//!
//! ```text
//! graph causal_attention(q: f32[H, T, 64], k: f32[H, S, 64], v: f32[H, S, 64]) -> f32[H, T, 64] {
//!   %0 = input 0 : f32[H, T, 64]  // q
//!   %1 = input 1 : f32[H, S, 64]  // k
//!   %2 = input 2 : f32[H, S, 64]  // v
//!   %3 = transpose %1 : f32[H, 64, S]
//!   %4 = matmul %0, %3 : f32[H, T, S]  // s
//!   %5 = constant 0.125 : f32[]
//!   %6 = mul %4, %5 : f32[H, T, S]
//!   %7 = mask causal : mask
//!   %8 = add %6, %7 : f32[H, T, S]
//!   %9 = softmax %8 {axis = 2} : f32[H, T, S]  // p
//!   %10 = matmul %9, %2 : f32[H, T, 64]
//!   return %10
//! }
//! ```
//!
//! # Grammar
//!
//! Whitespace and line breaks separate tokens and are otherwise free, with
//! one exception: a `//` comment on the same line as the end of a node
//! statement is that node's `let` name ([`crate::Node::name`]); every other
//! `//` comment is ignored.
//!
//! ```text
//! module    := graph*
//! graph     := "graph" name "(" [param ("," param)*] ")" "->" results "{" node* return "}"
//! param     := name ":" tensor_type
//! results   := tensor_type | "(" [tensor_type ("," tensor_type)*] ")"   // one result: no parentheses
//! return    := "return" [value ("," value)*]
//! node      := value "=" op ":" type [NAME_COMMENT]
//! value     := "%" (DIGIT | LETTER | "_")+          // printed %0, %1, ... in topological order
//! op        := "input" INT [extra]
//!            | "constant" const [extra]
//!            | "mask" mask [extra]
//!            | OPNAME [value ("," value)*] [attrs]
//! extra     := "(" value ("," value)* ")"           // the operands of input/constant/mask
//! attrs     := "{" [IDENT "=" attr_value ("," IDENT "=" attr_value)*] "}"
//! type      := "mask" | tensor_type
//! tensor_type := DTYPE "[" [dim ("," dim)*] "]"     // f32 f16 bf16 i32 bool
//! dim       := ["-"] term (("+" | "-") term)*       // Dim's Display: 2*H*T + T - 1
//! term      := factor ("*" factor)*
//! factor    := INT | IDENT
//! name      := IDENT | STRING                       // STRING: Rust-style "..." with escapes
//!
//! const     := values                               // dtype and shape from the node's type
//!            | typed_array                          // when the node's type disagrees
//! typed_array := tensor_type values                 // f16[2] [1.0, 2.0], i32[0, 3] []
//! values    := literal | "[" [values ("," values)*] "]"   // nested by rank; [] for any empty tensor
//! literal   := ["-"] (INT | FLOAT | "inf" | "nan" | "nan" "(" HEX ")") | "true" | "false"
//!
//! mask      := mask_and ("|" mask_and)*             // left-associative
//! mask_and  := mask_not ("&" mask_not)*
//! mask_not  := "!" mask_not | mask_atom
//! mask_atom := "causal" | "local" "(" "left" "=" int "," "right" "=" int ")"
//!            | "window" "(" int ")" | "dilated" "(" int "," int ")" | "sink" "(" int ")"
//!            | "strided" "(" int ["," "offset" "=" int] ")"
//!            | "neighborhood" "(" "kernel" "=" ints "," "grid" "=" ints
//!                             ["," "dilation" "=" ints] ["," "causal" "=" bools] ")"
//!            | "blocks" "(" array "," "block" "=" "[" int "," int "]" ")"
//!            | "document" "(" OPERAND ")"
//!            | "mask" "(" "q" "," "k" "," "h" ")" "=>" scalar   // the body extends as far as it can
//!            | "(" mask ")"
//! array     := OPERAND | inline_array
//! OPERAND   := "$" DIGIT+                           // the operand position in the node's inputs
//! inline_array := values                            // rank >= 1, non-empty: dtype from the
//!                                                   // literals (ints: i32, floats: f32, bools: bool)
//!              | typed_array                        // any other constant array
//!
//! scalar    := binary expression over unary, with precedence (loosest first)
//!              "|"  <  "&"  <  "<" "<=" ">" ">=" "==" "!=" (not chained)  <  "+" "-"  <  "*" "/" "%"
//!              all left-associative
//! unary     := "-" unary | "!" unary | "-" literal-without-space | atom
//! atom      := INT | FLOAT | "true" | "false" | "inf" | "nan" | "nan" "(" HEX ")"
//!            | "s" | "q" | "k" | "h"                 // lambda variables
//!            | IDENT | "sym" "(" name ")"           // a dimension symbol (Sym)
//!            | array "[" [scalar ("," scalar)*] "]" // Index
//!            | FUNC "(" scalar ")"                  // abs exp log sqrt tanh sigmoid neg not
//!            | ("min" | "max") "(" scalar "," scalar ")" | "where" "(" scalar "," scalar "," scalar ")"
//!            | "(" scalar ")"
//!            // IDENT "(" is a call only for the names above, or when no
//!            // value follows: `... => q < T (%2)` ends the lambda at `T`.
//! ```
//!
//! Operator names are [`crate::Op::name`]. Attributes, by operator (all are
//! printed; the parser requires those not marked optional):
//!
//! | operator | attributes |
//! |---|---|
//! | `sum` `max` `mean` | `axis`, `keepdims` (optional, default `false`) |
//! | `softmax` `concat` | `axis` |
//! | `permute` | `perm = [1, 0, 2]` |
//! | `reshape` | `shape = [T, 8, 64]` (dims) |
//! | `slice` | `axis`, `start`, `end` |
//! | `repeat` | `times`, `axis` |
//! | `layernorm` `rmsnorm` | `eps` |
//! | `rope` | `base` |
//! | `attention` | `masked = true` (absent: unmasked), `scale` (absent: `None`), `score = (s, q, k, h) => scalar` (absent: `None`) |
//!
//! Printing conventions that make the text re-parse to the same IR:
//!
//! * Floats print with Rust's `{:?}` (always a `.` or an exponent, so they
//!   stay distinguishable from integers and round-trip exactly), `inf`,
//!   `-inf`, `nan`; a NaN other than the canonical one prints its bits,
//!   `nan(0x7ff8000000000001)`.
//! * In a lambda, a negative literal is a `-` immediately followed by the
//!   number (`-3`, `-0.0`, `-inf`); negation prints as `-(x)` and `not` as
//!   `!(x)`. Operators get parentheses exactly where the precedence above
//!   needs them, so `(a - b) - c` prints `a - b - c` and `a - (b - c)`
//!   keeps its parentheses.
//! * A lambda inside a mask combinator is always parenthesised, because its
//!   body extends as far as it can: `causal & (mask(q, k, h) => q - k < 64)`.
//! * A `Sym` whose name is a lambda variable, a keyword or a function name
//!   (or is not an identifier) prints as `sym(q)` / `sym("a b")`.
//! * Graph, parameter and node names that are not identifiers print as
//!   quoted strings. Dimension symbols must be identifiers.
//!
//! The parser is hand-written. It reports the first error as a
//! [`TextError`] with a line and column, never panics, bounds the depth of
//! every expression tree it builds by [`MAX_DEPTH`] (a lambda counts as one
//! level of its mask; parentheses, brackets and arguments nest at most
//! `MAX_DEPTH + 8` deep), rejects integers outside `i64`, and allocates only
//! in proportion to its input. Whatever it accepts prints to text it accepts. It adds nodes in the printed
//! order and takes node types from the printed types (it does not infer
//! them: [`crate::verify()`] compares), parameter names from the signature and
//! the `let` names from the trailing comments.

mod parse;
mod print;

use std::collections::HashMap;

use crate::graph::{Graph, NodeId};
use crate::mask::{ArrayRef, ConstValue, MaskExpr, ScalarExpr};
use crate::op::Op;

pub use parse::{parse_graph, parse_module};
pub use print::{mask_text, print_graph, print_module, scalar_text};

/// The deepest nesting the parser accepts (parentheses, brackets, prefix
/// operators, and the depth of the expression trees it builds).
pub const MAX_DEPTH: usize = 256;

/// A malformed text form: where (1-based line and column, in characters)
/// and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{column}: {message}")]
pub struct TextError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Words a dimension symbol cannot print as bare in a lambda: lambda
/// variables, literals, function names and element types.
pub(crate) const RESERVED: &[&str] = &[
    "s", "q", "k", "h", "true", "false", "inf", "nan", "sym", "neg", "not", "abs", "exp", "log", "sqrt", "tanh",
    "sigmoid", "min", "max", "where", "mask", "f32", "f16", "bf16", "i32", "bool",
];

/// `[A-Za-z_][A-Za-z0-9_]*`.
pub(crate) fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Structural equality of two graphs: the same name, parameters (names and
/// types), result types, and nodes matched through parameters, results and
/// operands (operator with every attribute, type and `let` name). Spans and
/// [`NodeId`] numbering are ignored; floats are compared bitwise, so `-0.0`
/// differs from `0.0` and a NaN equals the same NaN.
pub fn graphs_equal(a: &Graph, b: &Graph) -> bool {
    if a.name != b.name
        || a.params().len() != b.params().len()
        || a.result_types() != b.result_types()
        || a.results().len() != b.results().len()
        || a.node_count() != b.node_count()
    {
        return false;
    }
    let mut m = Matcher { a, b, ab: HashMap::new(), ba: HashMap::new(), work: Vec::new() };
    for (pa, pb) in a.params().iter().zip(b.params()) {
        if pa.name != pb.name || pa.ty != pb.ty || !m.unify(pa.node, pb.node) {
            return false;
        }
    }
    for (ra, rb) in a.results().iter().zip(b.results()) {
        if !m.unify(*ra, *rb) {
            return false;
        }
    }
    if !m.drain() {
        return false;
    }
    // Nodes no result or parameter reaches: pair them in topological order.
    let order = |g: &Graph| g.topo_order().unwrap_or_else(|| g.node_ids());
    let left_a: Vec<NodeId> = order(a).into_iter().filter(|n| !m.ab.contains_key(n)).collect();
    let left_b: Vec<NodeId> = order(b).into_iter().filter(|n| !m.ba.contains_key(n)).collect();
    if left_a.len() != left_b.len() {
        return false;
    }
    for (x, y) in left_a.into_iter().zip(left_b) {
        if !m.unify(x, y) || !m.drain() {
            return false;
        }
    }
    m.ab.len() == a.node_count()
}

struct Matcher<'g> {
    a: &'g Graph,
    b: &'g Graph,
    ab: HashMap<NodeId, NodeId>,
    ba: HashMap<NodeId, NodeId>,
    work: Vec<(NodeId, NodeId)>,
}

impl Matcher<'_> {
    /// Records that `x` (of `a`) corresponds to `y` (of `b`); false when
    /// either is already matched to something else or is missing.
    fn unify(&mut self, x: NodeId, y: NodeId) -> bool {
        if !self.a.contains(x) || !self.b.contains(y) {
            return false;
        }
        match (self.ab.get(&x), self.ba.get(&y)) {
            (Some(y2), _) => *y2 == y,
            (None, Some(_)) => false,
            (None, None) => {
                self.ab.insert(x, y);
                self.ba.insert(y, x);
                self.work.push((x, y));
                true
            }
        }
    }

    fn drain(&mut self) -> bool {
        while let Some((x, y)) = self.work.pop() {
            let (nx, ny) = (self.a.node(x), self.b.node(y));
            if nx.ty != ny.ty || nx.name != ny.name || !op_eq(&nx.op, &ny.op) {
                return false;
            }
            let (ix, iy) = (self.a.inputs(x), self.b.inputs(y));
            if ix.len() != iy.len() {
                return false;
            }
            for (p, q) in ix.into_iter().zip(iy) {
                if !self.unify(p, q) {
                    return false;
                }
            }
        }
        true
    }
}

fn f_eq(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits()
}

fn const_eq(a: &ConstValue, b: &ConstValue) -> bool {
    a.dtype == b.dtype
        && a.shape == b.shape
        && a.data.len() == b.data.len()
        && a.data.iter().zip(&b.data).all(|(x, y)| f_eq(*x, *y))
}

fn array_eq(a: &ArrayRef, b: &ArrayRef) -> bool {
    match (a, b) {
        (ArrayRef::Const(x), ArrayRef::Const(y)) => const_eq(x, y),
        (ArrayRef::Operand(x), ArrayRef::Operand(y)) => x == y,
        _ => false,
    }
}

/// Equality of scalar expressions with floats compared bitwise.
pub(crate) fn scalar_eq(a: &ScalarExpr, b: &ScalarExpr) -> bool {
    use ScalarExpr as S;
    match (a, b) {
        (S::Float(x), S::Float(y)) => f_eq(*x, *y),
        (S::Index { array: xa, indices: xi }, S::Index { array: ya, indices: yi }) => {
            array_eq(xa, ya) && xi.len() == yi.len() && xi.iter().zip(yi).all(|(p, q)| scalar_eq(p, q))
        }
        (S::Unary(o, x), S::Unary(p, y)) => o == p && scalar_eq(x, y),
        (S::Binary(o, x1, x2), S::Binary(p, y1, y2)) => o == p && scalar_eq(x1, y1) && scalar_eq(x2, y2),
        (S::Select(x1, x2, x3), S::Select(y1, y2, y3)) => scalar_eq(x1, y1) && scalar_eq(x2, y2) && scalar_eq(x3, y3),
        // Float-free leaves; different variants compare unequal.
        _ => a == b,
    }
}

/// Equality of mask expressions with floats compared bitwise.
pub(crate) fn mask_eq(a: &MaskExpr, b: &MaskExpr) -> bool {
    use MaskExpr as M;
    match (a, b) {
        (M::Blocks { layout: la, block: ba }, M::Blocks { layout: lb, block: bb }) => ba == bb && array_eq(la, lb),
        (M::Lambda(x), M::Lambda(y)) => scalar_eq(x, y),
        (M::And(x1, x2), M::And(y1, y2)) | (M::Or(x1, x2), M::Or(y1, y2)) => mask_eq(x1, y1) && mask_eq(x2, y2),
        (M::Not(x), M::Not(y)) => mask_eq(x, y),
        _ => a == b,
    }
}

/// Equality of operators with floats compared bitwise.
pub(crate) fn op_eq(a: &Op, b: &Op) -> bool {
    match (a, b) {
        (Op::Constant(x), Op::Constant(y)) => const_eq(x, y),
        (Op::LayerNorm { eps: x }, Op::LayerNorm { eps: y }) | (Op::RmsNorm { eps: x }, Op::RmsNorm { eps: y }) => {
            f_eq(*x, *y)
        }
        (Op::Rope { base: x }, Op::Rope { base: y }) => f_eq(*x, *y),
        (Op::Attention { scale: sa, masked: ma, score: ca }, Op::Attention { scale: sb, masked: mb, score: cb }) => {
            ma == mb
                && match (sa, sb) {
                    (Some(x), Some(y)) => f_eq(*x, *y),
                    (None, None) => true,
                    _ => false,
                }
                && match (ca, cb) {
                    (Some(x), Some(y)) => scalar_eq(x, y),
                    (None, None) => true,
                    _ => false,
                }
        }
        (Op::Mask(x), Op::Mask(y)) => mask_eq(x, y),
        _ => a == b,
    }
}
