//! The syntax tree of a `.tdl` file. Every node carries its span; the tree
//! keeps what the user wrote (parentheses, pipes, argument names) so that
//! `tdlc fmt` can print it back faithfully.

use tdl_ir::Span;

#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct File {
    pub items: Vec<Item>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    Const(ConstDecl),
    Graph(GraphDecl),
}

impl Item {
    pub fn span(&self) -> Span {
        match self {
            Item::Const(c) => c.span,
            Item::Graph(g) => g.span,
        }
    }
}

/// `const NAME = expr`
#[derive(Clone, Debug, PartialEq)]
pub struct ConstDecl {
    pub name: Ident,
    pub value: Expr,
    pub span: Span,
}

/// `graph name(params) -> results { body }`
#[derive(Clone, Debug, PartialEq)]
pub struct GraphDecl {
    pub name: Ident,
    pub params: Vec<Param>,
    pub results: Vec<TypeExpr>,
    /// `-> (a, b)` rather than `-> a`.
    pub results_parenthesized: bool,
    pub body: Vec<Stmt>,
    pub span: Span,
    /// Span of the closing brace, where comments at the end of a body attach.
    pub close: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub name: Ident,
    pub ty: TypeExpr,
    pub span: Span,
}

/// `f32[H, T, 64]`
#[derive(Clone, Debug, PartialEq)]
pub struct TypeExpr {
    pub dtype: Ident,
    pub dims: Vec<Expr>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    Let { name: Ident, value: Expr, span: Span },
    Return { values: Vec<Expr>, span: Span },
}

impl Stmt {
    pub fn span(&self) -> Span {
        match self {
            Stmt::Let { span, .. } | Stmt::Return { span, .. } => *span,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnOp {
    Neg,
    Not,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    MatMul,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    And,
    Or,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Mod => "%",
            BinOp::MatMul => "@",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::And => "&",
            BinOp::Or => "|",
        }
    }

    /// Binding power: higher binds tighter. `|>` and lambdas sit below all.
    pub fn precedence(self) -> u8 {
        match self {
            BinOp::Or => 1,
            BinOp::And => 2,
            BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge | BinOp::Eq | BinOp::Ne => 3,
            BinOp::Add | BinOp::Sub => 4,
            BinOp::Mul | BinOp::Div | BinOp::Mod | BinOp::MatMul => 5,
        }
    }
}

/// A call argument, positional or named (`axis = -1`).
#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    Int(i64),
    Float(f64),
    Bool(bool),
    Inf,
    Ident(String),
    /// `[a, b, c]`
    Array(Vec<Expr>),
    Paren(Box<Expr>),
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    Call {
        func: Ident,
        args: Vec<Arg>,
    },
    /// `base[i, j]`
    Index {
        base: Box<Expr>,
        indices: Vec<Expr>,
    },
    /// `mask(q, k, h) => body` (`is_mask`) or `(s, q, k, h) => body`.
    Lambda {
        is_mask: bool,
        params: Vec<Ident>,
        body: Box<Expr>,
    },
    /// `lhs |> func(args)`, meaning `func(lhs, args)`; `has_parens` is false
    /// for `lhs |> func`.
    Pipe {
        lhs: Box<Expr>,
        func: Ident,
        args: Vec<Arg>,
        has_parens: bool,
    },
    /// Where the parser recovered from an error; already reported.
    Error,
}
