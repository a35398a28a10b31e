//! AST → typed [`Graph`]: name resolution, constants, symbolic dimensions,
//! dtype and shape inference (through the shared rules in
//! `tdl_ir::infer`), masks as typed values and index lambdas.
//!
//! Errors never stop the walk: a failed expression becomes [`Val::Error`],
//! which later uses accept silently, so one run reports every independent
//! error once.

use std::collections::{BTreeSet, HashMap};

use tdl_ir::infer::{infer_type, InferError};
use tdl_ir::{
    ArrayRef, BinaryOp, ConstValue, DType, Dim, Graph, LambdaVar, MaskExpr, NodeId, Op, ReduceOp, ScalarBinary,
    ScalarExpr, ScalarUnary, Span, TensorType, Type, UnaryOp,
};

use crate::ast::*;
use crate::consts::{self, Const, ConstEnv};
use crate::diag::Diagnostic;

/// A value during lowering.
#[derive(Clone, Debug)]
pub(crate) enum Val {
    /// A graph node: a tensor or a mask (its type says which).
    Node(NodeId),
    /// A compile-time constant not yet given a dtype: literals take the
    /// element type of what they meet (`s * 0.125` is f32 for f32 `s`).
    Const(Const),
    /// Already reported.
    Error,
}

/// Lowers every graph of a parsed file. Returns the graphs (unverified) and
/// the diagnostics; the graphs are only meaningful when no diagnostic is an
/// error.
pub fn lower_file(src: &str, file: &File) -> (Vec<Graph>, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let mut env: ConstEnv = HashMap::new();
    let mut graphs: Vec<Graph> = Vec::new();
    let mut graph_spans: HashMap<String, Span> = HashMap::new();
    let mut poisoned: BTreeSet<String> = BTreeSet::new();
    for item in &file.items {
        match item {
            Item::Const(c) => {
                if let Some((_, prev)) = env.get(&c.name.name) {
                    diags.push(
                        Diagnostic::error(format!("constant `{}` is defined twice", c.name.name))
                            .at(c.name.span, "defined again here")
                            .with(*prev, "first defined here"),
                    );
                    continue;
                }
                match consts::eval(&c.value, &env) {
                    Ok(v) => {
                        env.insert(c.name.name.clone(), (v, c.name.span));
                    }
                    Err(d) => {
                        diags.push(d);
                        poisoned.insert(c.name.name.clone());
                    }
                }
            }
            Item::Graph(g) => {
                if let Some(prev) = graph_spans.get(&g.name.name) {
                    diags.push(
                        Diagnostic::error(format!("graph `{}` is defined twice", g.name.name))
                            .at(g.name.span, "defined again here")
                            .with(*prev, "first defined here"),
                    );
                    continue;
                }
                graph_spans.insert(g.name.name.clone(), g.name.span);
                let mut l = Lowerer {
                    src,
                    env: &env,
                    diags: Vec::new(),
                    g: Graph::new(&g.name.name),
                    locals: HashMap::new(),
                    symbols: BTreeSet::new(),
                    poisoned: &poisoned,
                    arg_cache: HashMap::new(),
                };
                l.graph(g);
                diags.append(&mut l.diags);
                graphs.push(l.g);
            }
        }
    }
    // Errors already reported elsewhere come back with an empty message.
    diags.retain(|d| !d.message.is_empty());
    (graphs, diags)
}

struct Lowerer<'a> {
    src: &'a str,
    env: &'a ConstEnv,
    diags: Vec<Diagnostic>,
    g: Graph,
    /// `let` bindings and parameters.
    locals: HashMap<String, Val>,
    /// Dimension symbols the parameters bind.
    symbols: BTreeSet<String>,
    /// Constants whose definition failed (already reported): uses stay quiet.
    poisoned: &'a BTreeSet<String>,
    /// Call arguments already lowered, by source span.
    arg_cache: HashMap<(usize, usize), Val>,
}

/// An argument of a call: from the source, or the left side of a `|>`.
#[derive(Clone)]
struct CallArg<'e> {
    name: Option<&'e Ident>,
    value: ArgValue<'e>,
    span: Span,
}

#[derive(Clone)]
enum ArgValue<'e> {
    Expr(&'e Expr),
    Val(Val),
}

const UNARY_FNS: [&str; 10] = ["exp", "log", "sqrt", "rsqrt", "tanh", "sigmoid", "relu", "gelu", "silu", "abs"];
const BUILTINS: [&str; 32] = [
    "exp",
    "log",
    "sqrt",
    "rsqrt",
    "tanh",
    "sigmoid",
    "relu",
    "gelu",
    "silu",
    "abs",
    "sum",
    "max",
    "mean",
    "softmax",
    "transpose",
    "permute",
    "reshape",
    "concat",
    "slice",
    "repeat",
    "where",
    "layernorm",
    "rmsnorm",
    "rope",
    "attention",
    "local",
    "window",
    "dilated",
    "sink",
    "strided",
    "neighborhood",
    "blocks",
];

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push((prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn closest<'n>(name: &str, candidates: impl Iterator<Item = &'n str>) -> Option<&'n str> {
    if name.chars().count() <= 1 {
        // Every one-letter name is one edit from every other: no useful guess.
        return None;
    }
    let limit = if name.len() <= 3 { 1 } else { 2 };
    candidates.map(|c| (edit_distance(name, c), c)).filter(|(d, _)| *d <= limit).min().map(|(_, c)| c)
}

impl<'a> Lowerer<'a> {
    fn text(&self, span: Span) -> &'a str {
        self.src.get(span.range()).unwrap_or("")
    }

    fn err(&mut self, d: Diagnostic) -> Val {
        self.diags.push(d);
        Val::Error
    }

    fn ty(&self, id: NodeId) -> &Type {
        &self.g.node(id).ty
    }

    fn tensor_ty(&self, id: NodeId) -> Option<&TensorType> {
        self.g.node(id).ty.as_tensor()
    }

    // ---- graphs -----------------------------------------------------------

    fn graph(&mut self, decl: &GraphDecl) {
        self.g.span = Some(decl.span);
        // Symbols first: every identifier in a parameter's shape that is not a constant.
        for p in &decl.params {
            for d in &p.ty.dims {
                if let ExprKind::Ident(n) = &d.kind {
                    if !self.env.contains_key(n) {
                        self.symbols.insert(n.clone());
                    }
                }
            }
        }
        let mut seen: HashMap<&str, Span> = HashMap::new();
        for p in &decl.params {
            if let Some(prev) = seen.insert(&p.name.name, p.name.span) {
                self.diags.push(
                    Diagnostic::error(format!("parameter `{}` is declared twice", p.name.name))
                        .at(p.name.span, "declared again here")
                        .with(prev, "first declared here"),
                );
                continue;
            }
            let Some(ty) = self.param_type(&p.ty) else {
                self.locals.insert(p.name.name.clone(), Val::Error);
                continue;
            };
            let id = self.g.add_param(&p.name.name, ty, Some(p.span));
            self.locals.insert(p.name.name.clone(), Val::Node(id));
        }
        let result_types: Vec<Option<TensorType>> = decl.results.iter().map(|t| self.type_expr(t, false)).collect();

        let mut returned = false;
        for stmt in &decl.body {
            if returned {
                self.diags.push(
                    Diagnostic::error("statement after `return`")
                        .at(stmt.span(), "never reached")
                        .hint("`return` must be the graph's last statement"),
                );
                break;
            }
            match stmt {
                Stmt::Let { name, value, .. } => {
                    let v = self.expr(value);
                    if let Val::Node(id) = v {
                        let node = self.g.node_mut(id);
                        if node.name.is_none() {
                            node.name = Some(name.name.clone());
                        }
                    }
                    self.locals.insert(name.name.clone(), v);
                }
                Stmt::Return { values, span } => {
                    returned = true;
                    self.ret(decl, values, *span, &result_types);
                }
            }
        }
        if !returned {
            self.diags.push(
                Diagnostic::error(format!("graph `{}` has no `return`", decl.name.name))
                    .at(decl.close, "expected `return` before the end of the graph")
                    .with(decl.name.span, "graph defined here"),
            );
        }
    }

    fn ret(&mut self, decl: &GraphDecl, values: &[Expr], span: Span, types: &[Option<TensorType>]) {
        if values.len() != types.len() {
            self.diags.push(
                Diagnostic::error(format!(
                    "graph `{}` returns {} value(s) but declares {}",
                    decl.name.name,
                    values.len(),
                    types.len()
                ))
                .at(span, format!("{} value(s) returned", values.len()))
                .with(
                    decl.results
                        .first()
                        .map_or(decl.name.span, |r| r.span.to(decl.results[decl.results.len() - 1].span)),
                    "declared here",
                ),
            );
            return;
        }
        let mut ids = Vec::new();
        let mut tys = Vec::new();
        for ((e, want), decl_ty) in values.iter().zip(types).zip(&decl.results) {
            let v = self.expr(e);
            let Some(want) = want else { continue };
            let id = match v {
                Val::Error => continue,
                Val::Const(c) => match self.const_node(&c, want.dtype, e.span) {
                    Some(id) => id,
                    None => continue,
                },
                Val::Node(id) => id,
            };
            let got = match self.ty(id).clone() {
                Type::Mask => {
                    self.diags.push(
                        Diagnostic::error("a graph cannot return a mask")
                            .at(e.span, "this is a mask")
                            .hint("return `where(m, x, y)` or attention with `mask = m`"),
                    );
                    continue;
                }
                Type::Tensor(t) => t,
            };
            if got != *want {
                let mut d = Diagnostic::error(format!("expected {want}, found {got}"))
                    .at(e.span, format!("this is {got}"))
                    .with(decl_ty.span, format!("{want} declared here"));
                if got.rank() == want.rank() && got.rank() >= 2 && got.dtype == want.dtype {
                    let r = got.rank();
                    let mut swapped = got.shape.clone();
                    swapped.swap(r - 1, r - 2);
                    if swapped == want.shape {
                        d = d.hint("a `transpose` is probably missing");
                    } else {
                        let mut a: Vec<String> = got.shape.iter().map(|x| x.to_string()).collect();
                        let mut b: Vec<String> = want.shape.iter().map(|x| x.to_string()).collect();
                        a.sort();
                        b.sort();
                        if a == b {
                            d = d.hint("the axes are in another order: a `permute` is probably missing");
                        }
                    }
                } else if got.dtype != want.dtype && got.shape == want.shape {
                    d = d.note("tdlc does not convert between element types implicitly");
                }
                self.diags.push(d);
                continue;
            }
            ids.push(id);
            tys.push(got);
        }
        if ids.len() == values.len() {
            self.g.set_results(ids, tys);
        }
    }

    fn param_type(&mut self, t: &TypeExpr) -> Option<TensorType> {
        self.type_expr(t, true)
    }

    /// A type annotation. In parameters each dimension must be a constant or
    /// a single symbol (that is what binds symbols from input shapes).
    fn type_expr(&mut self, t: &TypeExpr, is_param: bool) -> Option<TensorType> {
        let Some(dtype) = DType::from_name(&t.dtype.name) else {
            let mut d = Diagnostic::error(format!("unknown element type `{}`", t.dtype.name))
                .at(t.dtype.span, "expected f32, f16, bf16, i32 or bool");
            if let Some(c) = closest(&t.dtype.name, DType::ALL.iter().map(|d| d.name())) {
                d = d.hint(format!("did you mean `{c}`?"));
            }
            self.diags.push(d);
            return None;
        };
        let mut shape = Vec::new();
        let mut ok = true;
        for e in &t.dims {
            match self.dim(e) {
                Some(d) => {
                    if let Some(c) = d.as_const() {
                        if c < 1 {
                            self.diags.push(
                                Diagnostic::error(format!("dimension {c} is not positive"))
                                    .at(e.span, "dimensions are at least 1"),
                            );
                            ok = false;
                        }
                    } else if is_param && d.as_sym().is_none() {
                        self.diags.push(
                            Diagnostic::error(format!(
                                "not supported yet: parameter dimension `{d}` is an expression of symbols"
                            ))
                            .at(e.span, "use a constant or a single symbol")
                            .note("symbols are bound from input shapes, one dimension each"),
                        );
                        ok = false;
                    }
                    shape.push(d);
                }
                None => ok = false,
            }
        }
        ok.then(|| TensorType::new(dtype, shape))
    }

    /// A dimension expression: integers, integer constants, symbols, `+ - *`.
    fn dim(&mut self, e: &Expr) -> Option<Dim> {
        crate::grow(|| self.dim_inner(e))
    }

    fn dim_inner(&mut self, e: &Expr) -> Option<Dim> {
        let r = match &e.kind {
            ExprKind::Int(i) => Ok(Dim::constant(*i)),
            ExprKind::Paren(a) => return self.dim(a),
            ExprKind::Ident(n) => match self.env.get(n) {
                Some((Const::Int(i), _)) => Ok(Dim::constant(*i)),
                Some((c, _)) => {
                    let what = c.describe();
                    self.diags.push(
                        Diagnostic::error(format!("constant `{n}` is {what}, not an integer dimension"))
                            .at(e.span, "expected an integer"),
                    );
                    return None;
                }
                None if self.symbols.contains(n) => Ok(Dim::sym(n)),
                None if self.poisoned.contains(n) => return None,
                None => {
                    let mut d = Diagnostic::error(format!("unknown dimension `{n}`"))
                        .at(e.span, "not a constant, and no parameter's shape binds it");
                    if let Some(c) =
                        closest(n, self.symbols.iter().map(|s| s.as_str()).chain(self.env.keys().map(|s| s.as_str())))
                    {
                        d = d.hint(format!("did you mean `{c}`?"));
                    }
                    let bound: Vec<&str> = self.symbols.iter().map(|s| s.as_str()).collect();
                    d = d.note(format!(
                        "dimensions are integers, constants, or symbols bound by a parameter's shape (bound here: {})",
                        if bound.is_empty() { "none".to_string() } else { bound.join(", ") }
                    ));
                    self.diags.push(d);
                    return None;
                }
            },
            ExprKind::Unary(UnOp::Neg, a) => {
                let a = self.dim(a)?;
                a.checked_neg()
            }
            ExprKind::Binary(op @ (BinOp::Add | BinOp::Sub | BinOp::Mul), a, b) => {
                let a = self.dim(a)?;
                let b = self.dim(b)?;
                match op {
                    BinOp::Add => a.checked_add(&b),
                    BinOp::Sub => a.checked_sub(&b),
                    _ => a.checked_mul(&b),
                }
            }
            _ => {
                self.diags.push(
                    Diagnostic::error("expected a dimension")
                        .at(e.span, "dimensions are integers, constants, symbols and `+ - *` of them"),
                );
                return None;
            }
        };
        match r {
            Ok(d) => Some(d),
            Err(err) => {
                self.diags.push(Diagnostic::error(format!("invalid dimension: {err}")).at(e.span, "here"));
                None
            }
        }
    }

    // ---- nodes --------------------------------------------------------------

    /// Adds a node, inferring its type; a type error becomes a diagnostic at
    /// `span`, with the operands' types as labels.
    fn node(&mut self, op: Op, inputs: &[NodeId], span: Span, operand_spans: &[Span]) -> Val {
        let tys: Vec<Type> = inputs.iter().map(|i| self.ty(*i).clone()).collect();
        let refs: Vec<&Type> = tys.iter().collect();
        match infer_type(&op, &refs) {
            Ok(ty) => Val::Node(self.g.add_node(op, ty, inputs, Some(span))),
            Err(e) => {
                let mut d = Diagnostic::error(e.to_string()).at(span, self.infer_label(&e));
                for (s, t) in operand_spans.iter().zip(&tys) {
                    if *s != span {
                        d = d.with(*s, format!("this is {t}"));
                    }
                }
                if let InferError::MatMulInner { a, b, .. } = &e {
                    let (ra, rb) = (a.rank(), b.rank());
                    if a.shape[ra - 1] == b.shape[rb - 1] {
                        let rhs = operand_spans.get(1).map(|s| self.text(*s)).unwrap_or("k");
                        d = d.hint(format!("`transpose({rhs})` is probably missing"));
                    }
                }
                if let InferError::DTypeMismatch { .. } = &e {
                    d = d.note("tdlc does not convert between element types implicitly");
                }
                self.err(d)
            }
        }
    }

    fn infer_label(&self, e: &InferError) -> String {
        match e {
            InferError::MatMulInner { left, right, .. } => format!("{left} against {right}"),
            InferError::Broadcast { da, db, .. } => format!("{da} against {db}"),
            InferError::ReshapeCount { .. } => "element counts differ".into(),
            _ => "here".into(),
        }
    }

    /// A constant as a node of element type `dtype`.
    fn const_node(&mut self, c: &Const, dtype: DType, span: Span) -> Option<NodeId> {
        let value = match c {
            Const::Int(i) => {
                if dtype == DType::Bool {
                    self.diags.push(
                        Diagnostic::error("an integer where a bool is expected").at(span, "expected `true` or `false`"),
                    );
                    return None;
                }
                if dtype == DType::I32 && i32::try_from(*i).is_err() {
                    self.diags.push(
                        Diagnostic::error(format!("integer {i} does not fit in i32"))
                            .at(span, format!("i32 holds {} ..= {}", i32::MIN, i32::MAX)),
                    );
                    return None;
                }
                ConstValue::scalar(dtype, *i as f64)
            }
            Const::Float(f) => {
                let max = match dtype {
                    DType::F32 => f32::MAX as f64,
                    DType::F16 => 65504.0,
                    DType::BF16 => 3.3895313892515355e38,
                    _ => f64::INFINITY,
                };
                if f.is_finite() && f.abs() > max {
                    self.diags.push(
                        Diagnostic::error(format!("{f} is out of range for {dtype}"))
                            .at(span, format!("the largest finite {dtype} is {max:e}"))
                            .hint("write `inf` for infinity"),
                    );
                    return None;
                }
                if !dtype.is_float() {
                    self.diags.push(
                        Diagnostic::error(format!("a floating-point number where {dtype} is expected"))
                            .at(span, format!("expected {dtype}")),
                    );
                    return None;
                }
                ConstValue::scalar(dtype, *f)
            }
            Const::Bool(b) => {
                if dtype != DType::Bool {
                    self.diags.push(
                        Diagnostic::error(format!("a bool where {dtype} is expected"))
                            .at(span, format!("expected {dtype}")),
                    );
                    return None;
                }
                ConstValue::scalar(dtype, if *b { 1.0 } else { 0.0 })
            }
            Const::Array(a) => {
                let mut a = a.clone();
                if a.dtype != dtype {
                    let fits = match (a.dtype, dtype) {
                        (DType::I32, d) if d.is_float() => true,
                        (s, d) => s.is_float() && d.is_float(),
                    };
                    if !fits {
                        self.diags.push(
                            Diagnostic::error(format!("a {} array where {dtype} is expected", a.dtype))
                                .at(span, format!("expected {dtype}")),
                        );
                        return None;
                    }
                    a.dtype = dtype;
                }
                a
            }
        };
        let ty = TensorType::new(value.dtype, value.shape.iter().map(|&d| Dim::constant(d as i64)).collect());
        Some(self.g.add_node(Op::Constant(value), Type::Tensor(ty), &[], Some(span)))
    }

    /// A value as a tensor node; constants default to f32 (or i32/bool arrays).
    fn tensor(&mut self, v: Val, span: Span) -> Option<NodeId> {
        match v {
            Val::Error => None,
            Val::Const(c) => {
                let dtype = match &c {
                    Const::Array(a) => a.dtype,
                    Const::Bool(_) => DType::Bool,
                    _ => DType::F32,
                };
                self.const_node(&c, dtype, span)
            }
            Val::Node(id) => {
                if matches!(self.ty(id), Type::Mask) {
                    self.diags.push(self.mask_not_tensor(span));
                    return None;
                }
                Some(id)
            }
        }
    }

    fn mask_not_tensor(&self, span: Span) -> Diagnostic {
        Diagnostic::error("a mask is not a tensor").at(span, "this is a mask").hint(
            "apply a mask to scores with `s + m` or `where(m, s, -inf)`, or pass it as `attention(..., mask = m)`",
        )
    }

    /// Two operands of an elementwise op: constants take the other side's dtype.
    fn pair(&mut self, a: Val, sa: Span, b: Val, sb: Span) -> Option<(NodeId, NodeId)> {
        match (a, b) {
            (Val::Error, _) | (_, Val::Error) => None,
            (Val::Node(x), Val::Const(c)) => {
                let dt = self.tensor_ty(x).map_or(DType::F32, |t| t.dtype);
                let y = self.const_node(&c, dt, sb)?;
                Some((x, y))
            }
            (Val::Const(c), Val::Node(y)) => {
                let dt = self.tensor_ty(y).map_or(DType::F32, |t| t.dtype);
                let x = self.const_node(&c, dt, sa)?;
                Some((x, y))
            }
            // Two constants, one an array: the other takes the array's type.
            (Val::Const(x @ Const::Array(_)), Val::Const(c)) => {
                let x = self.tensor(Val::Const(x), sa)?;
                self.pair(Val::Node(x), sa, Val::Const(c), sb)
            }
            (Val::Const(c), Val::Const(y @ Const::Array(_))) => {
                let y = self.tensor(Val::Const(y), sb)?;
                self.pair(Val::Const(c), sa, Val::Node(y), sb)
            }
            (a, b) => {
                let x = self.tensor(a, sa);
                let y = self.tensor(b, sb);
                Some((x?, y?))
            }
        }
    }

    // ---- expressions ----------------------------------------------------------

    fn expr(&mut self, e: &Expr) -> Val {
        crate::grow(|| self.expr_inner(e))
    }

    fn expr_inner(&mut self, e: &Expr) -> Val {
        let span = e.span;
        match &e.kind {
            ExprKind::Error => Val::Error,
            ExprKind::Int(i) => Val::Const(Const::Int(*i)),
            ExprKind::Float(f) => Val::Const(Const::Float(*f)),
            ExprKind::Bool(b) => Val::Const(Const::Bool(*b)),
            ExprKind::Inf => Val::Const(Const::Float(f64::INFINITY)),
            ExprKind::Paren(a) => self.expr(a),
            ExprKind::Ident(n) => self.ident(n, span),
            ExprKind::Array(elems) => match consts::eval(e, self.env) {
                Ok(c) => Val::Const(c),
                Err(d) => {
                    let names_a_tensor = elems.iter().any(
                        |x| matches!(&x.kind, ExprKind::Ident(n) if matches!(self.locals.get(n), Some(Val::Node(_)))),
                    );
                    let d = if names_a_tensor {
                        d.note("array literals are constants; to join tensors use `concat([a, b], axis = ...)`")
                    } else {
                        d
                    };
                    self.err(d)
                }
            },
            ExprKind::Unary(op, a) => {
                let v = self.expr(a);
                self.unary(*op, v, a.span, span)
            }
            ExprKind::Binary(op, a, b) => {
                let va = self.expr(a);
                let vb = self.expr(b);
                self.binary(*op, va, a.span, vb, b.span, span)
            }
            ExprKind::Call { func, args } => {
                let args: Vec<CallArg> = args
                    .iter()
                    .map(|a| CallArg { name: a.name.as_ref(), value: ArgValue::Expr(&a.value), span: a.value.span })
                    .collect();
                self.call(func, args, span)
            }
            ExprKind::Pipe { lhs, func, args, .. } => {
                // An array literal stays source, so `[a, b] |> concat(axis = 0)`
                // reads its elements as `concat([a, b], axis = 0)` does.
                let first = match lhs.kind {
                    ExprKind::Array(_) => ArgValue::Expr(lhs),
                    _ => ArgValue::Val(self.expr(lhs)),
                };
                let mut all = vec![CallArg { name: None, value: first, span: lhs.span }];
                all.extend(args.iter().map(|a| CallArg {
                    name: a.name.as_ref(),
                    value: ArgValue::Expr(&a.value),
                    span: a.value.span,
                }));
                self.call(func, all, span)
            }
            ExprKind::Index { .. } => match consts::eval(e, self.env) {
                Ok(c) => Val::Const(c),
                Err(_) => self.err(Diagnostic::error("not supported yet: indexing a tensor outside a lambda").at(
                    span,
                    "indexing is for constant arrays, and for inputs inside `mask(q, k, h) => ...` and score lambdas",
                )),
            },
            ExprKind::Lambda { is_mask: true, params, body } => self.mask_lambda(params, body, span),
            ExprKind::Lambda { is_mask: false, .. } => self.err(
                Diagnostic::error("a score lambda is only allowed as `attention(..., score = (s, q, k, h) => ...)`")
                    .at(span, "lambda here")
                    .hint("a mask predicate is written `mask(q, k, h) => ...`"),
            ),
        }
    }

    fn ident(&mut self, n: &str, span: Span) -> Val {
        if let Some(v) = self.locals.get(n) {
            return v.clone();
        }
        if let Some((c, _)) = self.env.get(n) {
            return Val::Const(c.clone());
        }
        if self.poisoned.contains(n) {
            // A constant whose definition failed: already reported.
            return Val::Error;
        }
        if n == "causal" {
            return self.mask_node(MaskExpr::Causal, Vec::new(), span);
        }
        if self.symbols.contains(n) {
            return self.err(
                Diagnostic::error(format!("`{n}` is a dimension symbol, not a value"))
                    .at(span, "symbols can be used in shapes and inside lambdas")
                    .note("not supported yet: symbols as run-time values in tensor expressions"),
            );
        }
        let mut d = Diagnostic::error(format!("unknown name `{n}`")).at(span, "not defined");
        let cands: Vec<String> =
            self.locals.keys().chain(self.env.keys()).cloned().chain(BUILTINS.iter().map(|s| s.to_string())).collect();
        if BUILTINS.contains(&n) || n == "document" {
            d = Diagnostic::error(format!("`{n}` is a function, not a value"))
                .at(span, "used without arguments")
                .hint(format!("call it: `{n}(...)`"));
        } else if let Some(c) = closest(n, cands.iter().map(|s| s.as_str())) {
            d = d.hint(format!("did you mean `{c}`?"));
        }
        self.err(d)
    }

    fn unary(&mut self, op: UnOp, v: Val, vspan: Span, span: Span) -> Val {
        match (op, v) {
            (_, Val::Error) => Val::Error,
            (UnOp::Neg, Val::Const(c)) => match c {
                Const::Int(i) => match i.checked_neg() {
                    Some(n) => Val::Const(Const::Int(n)),
                    None => self.err(Diagnostic::error("integer overflow").at(span, "overflows")),
                },
                Const::Float(f) => Val::Const(Const::Float(-f)),
                Const::Array(mut a) if a.dtype != DType::Bool => {
                    a.data.iter_mut().for_each(|x| *x = -*x);
                    Val::Const(Const::Array(a))
                }
                other => self
                    .err(Diagnostic::error(format!("`-` cannot be applied to {}", other.describe())).at(span, "here")),
            },
            (UnOp::Not, Val::Const(Const::Bool(b))) => Val::Const(Const::Bool(!b)),
            (UnOp::Neg, Val::Node(id)) => match self.tensor(Val::Node(id), vspan) {
                Some(x) => self.node(Op::Unary(UnaryOp::Neg), &[x], span, &[vspan]),
                None => Val::Error,
            },
            (UnOp::Not, Val::Node(id)) if matches!(self.ty(id), Type::Mask) => {
                let (m, ops) = self.mask_of(id);
                self.mask_node(MaskExpr::Not(Box::new(m)), ops, span)
            }
            (UnOp::Not, _) => self.err(
                Diagnostic::error("`!` applies to masks and booleans")
                    .at(span, "not a mask")
                    .note("not supported yet: logical operations on bool tensors"),
            ),
        }
    }

    fn binary(&mut self, op: BinOp, a: Val, sa: Span, b: Val, sb: Span, span: Span) -> Val {
        if matches!(a, Val::Error) || matches!(b, Val::Error) {
            return Val::Error;
        }
        let is_mask = |s: &Self, v: &Val| matches!(v, Val::Node(id) if matches!(s.ty(*id), Type::Mask));
        let (ma, mb) = (is_mask(self, &a), is_mask(self, &b));
        // In tensor expressions numbers are real numbers: `1 / 8` is 0.125
        // (integer floor division is for constants and lambdas).
        if let (BinOp::Div, Val::Const(Const::Int(x)), Val::Const(Const::Int(y))) = (op, &a, &b) {
            if *y != 0 && x.checked_rem(*y) != Some(0) {
                return Val::Const(Const::Float(*x as f64 / *y as f64));
            }
        }
        // Constant folding.
        if let (Val::Const(x), Val::Const(y)) = (&a, &b) {
            if !matches!(x, Const::Array(_)) && !matches!(y, Const::Array(_)) {
                let fake =
                    Expr { kind: ExprKind::Binary(op, Box::new(const_expr(x, sa)), Box::new(const_expr(y, sb))), span };
                return match consts::eval(&fake, self.env) {
                    Ok(c) => Val::Const(c),
                    Err(d) => self.err(d),
                };
            }
        }
        match op {
            BinOp::And | BinOp::Or => {
                if ma && mb {
                    let (Val::Node(x), Val::Node(y)) = (&a, &b) else { return Val::Error };
                    let (mx, ox) = self.mask_of(*x);
                    let (mut my, oy) = self.mask_of(*y);
                    let ops = merge_operands(ox, oy, &mut my);
                    let m = if op == BinOp::And {
                        MaskExpr::And(Box::new(mx), Box::new(my))
                    } else {
                        MaskExpr::Or(Box::new(mx), Box::new(my))
                    };
                    return self.mask_node(m, ops, span);
                }
                let bad = if !ma { sa } else { sb };
                self.err(
                    Diagnostic::error(format!("`{}` combines masks", op.symbol()))
                        .at(bad, "not a mask")
                        .note("not supported yet: logical operations on bool tensors"),
                )
            }
            BinOp::MatMul => {
                if ma || mb {
                    return self.err(self.mask_not_tensor(if ma { sa } else { sb }));
                }
                match self.pair(a, sa, b, sb) {
                    Some((x, y)) => self.node(Op::MatMul, &[x, y], span, &[sa, sb]),
                    None => Val::Error,
                }
            }
            BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div => {
                if ma && mb {
                    return self.err(
                        Diagnostic::error("masks combine with `&` and `|`, not arithmetic")
                            .at(span, "two masks")
                            .hint(format!("write `{} & {}` for the intersection", self.text(sa), self.text(sb))),
                    );
                }
                if ma || mb {
                    if op != BinOp::Add {
                        return self.err(self.mask_not_tensor(if ma { sa } else { sb }));
                    }
                    let (Val::Node(m), other, so) =
                        (if ma { (a.clone(), b.clone(), sb) } else { (b.clone(), a.clone(), sa) })
                    else {
                        return Val::Error;
                    };
                    let Some(s) = self.tensor(other, so) else { return Val::Error };
                    if let Some(st) = self.tensor_ty(s).cloned() {
                        let r = st.rank();
                        if r >= 2 {
                            self.check_mask_fits(m, st.shape[r - 2].as_const(), st.shape[r - 1].as_const(), span);
                        }
                    }
                    let ins = if ma { [m, s] } else { [s, m] };
                    return self.node(Op::Binary(BinaryOp::Add), &ins, span, &[sa, sb]);
                }
                let bop = match op {
                    BinOp::Add => BinaryOp::Add,
                    BinOp::Sub => BinaryOp::Sub,
                    BinOp::Mul => BinaryOp::Mul,
                    _ => BinaryOp::Div,
                };
                match self.pair(a, sa, b, sb) {
                    Some((x, y)) => self.node(Op::Binary(bop), &[x, y], span, &[sa, sb]),
                    None => Val::Error,
                }
            }
            BinOp::Mod | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge | BinOp::Eq | BinOp::Ne => self.err(
                Diagnostic::error(format!("not supported yet: `{}` on tensors", op.symbol())).at(span, "here").note(
                    "comparisons and `%` are for constants and for lambdas such as `mask(q, k, h) => q - k < 64`",
                ),
            ),
        }
    }

    // ---- masks ------------------------------------------------------------------

    fn mask_node(&mut self, m: MaskExpr, operands: Vec<NodeId>, span: Span) -> Val {
        if let Err(e) = tdl_ir::mask::check_expr_limits(m.measure()) {
            return self.err(
                Diagnostic::error(format!("mask expression too large: {e}"))
                    .at(span, "this mask")
                    .hint("masks combined through many `let`s grow with every use; simplify the mask or use a lambda"),
            );
        }
        let spans = vec![span; operands.len()];
        self.node(Op::Mask(m), &operands, span, &spans)
    }

    /// The expression and operands of a mask node.
    fn mask_of(&self, id: NodeId) -> (MaskExpr, Vec<NodeId>) {
        match &self.g.node(id).op {
            Op::Mask(m) => (m.clone(), self.g.inputs(id)),
            _ => (MaskExpr::Causal, Vec::new()),
        }
    }

    /// Compile-time checks of a mask against the scores it is applied to,
    /// where the score shape is known.
    /// Compile-time checks of a mask against the scores it is applied to,
    /// where the score shape is known: one error per offending mask, at the
    /// mask, with the application as a secondary label.
    fn check_mask_fits(&mut self, mask: NodeId, t: Option<i64>, s: Option<i64>, span: Span) {
        let (m, _) = self.mask_of(mask);
        let mask_span = self.g.node(mask).span.unwrap_or(span);
        let mut problems = Vec::new();
        let _ = tdl_ir::infer::visit_mask(&m, &mut |leaf| {
            if let MaskExpr::Neighborhood { grid, .. } = leaf {
                let prod: i64 = grid.iter().product();
                let bad: Vec<String> = [("T", t), ("S", s)]
                    .into_iter()
                    .filter_map(|(what, n)| n.filter(|n| *n != prod).map(|n| format!("{what} = {n}")))
                    .collect();
                if !bad.is_empty() {
                    problems.push((
                        format!(
                            "neighborhood grid {grid:?} holds {prod} positions, but the scores have {}",
                            bad.join(" and ")
                        ),
                        "the product of `grid` must equal the number of queries and keys",
                    ));
                }
            }
            if let (MaskExpr::Blocks { layout: ArrayRef::Const(c), block }, Some(t), Some(s)) = (leaf, t, s) {
                if c.shape.len() == 2 {
                    // Ceiling division without overflow (t, s, blocks are positive).
                    let need = [(t - 1) / block[0] + 1, (s - 1) / block[1] + 1];
                    if (c.shape[0] as i64) < need[0] || (c.shape[1] as i64) < need[1] {
                        problems.push((
                            format!(
                                "block layout is {}×{}, but {t} queries × {s} keys in blocks of {block:?} need at least {}×{}",
                                c.shape[0], c.shape[1], need[0], need[1]
                            ),
                            "the layout needs one entry per (query block, key block)",
                        ));
                    }
                }
            }
            Ok(())
        });
        for (p, hint) in problems {
            let d = Diagnostic::error(p)
                .at(mask_span, "does not fit the scores")
                .with(span, "mask applied here")
                .hint(hint);
            self.diags.push(d);
        }
    }

    fn mask_lambda(&mut self, params: &[Ident], body: &Expr, span: Span) -> Val {
        if !(2..=3).contains(&params.len()) {
            return self.err(
                Diagnostic::error(format!(
                    "a mask lambda takes (q, k) or (q, k, h), found {} parameter(s)",
                    params.len()
                ))
                .at(span, "here"),
            );
        }
        if !self.distinct_params(params) {
            return Val::Error;
        }
        let vars: Vec<(String, LambdaVar)> =
            params.iter().zip([LambdaVar::Q, LambdaVar::K, LambdaVar::H]).map(|(p, v)| (p.name.clone(), v)).collect();
        let mut operands = Vec::new();
        let Some((e, ty)) = self.scalar(body, &vars, &mut operands) else {
            return Val::Error;
        };
        if ty != SType::Bool {
            return self.err(
                Diagnostic::error(format!("a mask lambda must give a boolean, this gives {}", ty.name()))
                    .at(body.span, "not a predicate")
                    .hint("compare something, e.g. `q - k < 64`"),
            );
        }
        self.mask_node(MaskExpr::Lambda(e), operands, span)
    }

    /// Reports a lambda parameter named twice; true when all are distinct.
    fn distinct_params(&mut self, params: &[Ident]) -> bool {
        for (i, p) in params.iter().enumerate() {
            if let Some(prev) = params[..i].iter().find(|q| q.name == p.name) {
                self.diags.push(
                    Diagnostic::error(format!("lambda parameter `{}` is named twice", p.name))
                        .at(p.span, "named again here")
                        .with(prev.span, "first named here"),
                );
                return false;
            }
        }
        true
    }

    // ---- the lambda language -----------------------------------------------------

    fn scalar(&mut self, e: &Expr, vars: &[(String, LambdaVar)], ops: &mut Vec<NodeId>) -> Option<(ScalarExpr, SType)> {
        crate::grow(|| self.scalar_inner(e, vars, ops))
    }

    fn scalar_inner(
        &mut self,
        e: &Expr,
        vars: &[(String, LambdaVar)],
        ops: &mut Vec<NodeId>,
    ) -> Option<(ScalarExpr, SType)> {
        let span = e.span;
        let fail = |s: &mut Self, d: Diagnostic| {
            s.diags.push(d);
            None
        };
        match &e.kind {
            ExprKind::Error => None,
            ExprKind::Int(i) => Some((ScalarExpr::Int(*i), SType::Int)),
            ExprKind::Float(f) => Some((ScalarExpr::Float(*f), SType::Float)),
            ExprKind::Bool(b) => Some((ScalarExpr::Bool(*b), SType::Bool)),
            ExprKind::Inf => Some((ScalarExpr::Float(f64::INFINITY), SType::Float)),
            ExprKind::Paren(a) => self.scalar(a, vars, ops),
            ExprKind::Ident(n) => {
                if let Some((_, v)) = vars.iter().find(|(name, _)| name == n) {
                    let t = if *v == LambdaVar::S { SType::Float } else { SType::Int };
                    return Some((ScalarExpr::Var(*v), t));
                }
                match self.locals.get(n) {
                    Some(Val::Const(Const::Int(i))) => return Some((ScalarExpr::Int(*i), SType::Int)),
                    Some(Val::Const(Const::Float(f))) => return Some((ScalarExpr::Float(*f), SType::Float)),
                    Some(Val::Const(Const::Bool(b))) => return Some((ScalarExpr::Bool(*b), SType::Bool)),
                    Some(Val::Error) => return None,
                    _ => {}
                }
                if self.poisoned.contains(n) && !self.locals.contains_key(n) {
                    return None;
                }
                if !self.locals.contains_key(n) {
                    match self.env.get(n) {
                        Some((Const::Int(i), _)) => return Some((ScalarExpr::Int(*i), SType::Int)),
                        Some((Const::Float(f), _)) => return Some((ScalarExpr::Float(*f), SType::Float)),
                        Some((Const::Bool(b), _)) => return Some((ScalarExpr::Bool(*b), SType::Bool)),
                        Some((Const::Array(_), _)) => {
                            return fail(self, Diagnostic::error(format!("`{n}` is an array; index it, e.g. `{n}[h]`")).at(span, "array used as a scalar"))
                        }
                        None => {}
                    }
                    if self.symbols.contains(n) {
                        return Some((ScalarExpr::Sym(n.clone()), SType::Int));
                    }
                }
                if self.locals.contains_key(n) {
                    return fail(self, Diagnostic::error(format!("`{n}` is a tensor; inside a lambda index it, e.g. `{n}[q]`")).at(span, "tensor used as a scalar"));
                }
                let names: Vec<String> = vars.iter().map(|(n, _)| n.clone()).chain(self.env.keys().cloned()).collect();
                let mut d = Diagnostic::error(format!("unknown name `{n}` in a lambda")).at(span, "not defined");
                if let Some(c) = closest(n, names.iter().map(|s| s.as_str())) {
                    d = d.hint(format!("did you mean `{c}`?"));
                }
                fail(self, d)
            }
            ExprKind::Index { base, indices } => {
                let ExprKind::Ident(n) = &base.kind else {
                    return fail(self, Diagnostic::error("only named arrays and inputs can be indexed").at(base.span, "not a name"));
                };
                let (array, rank, ety) = if let Some(v) = self.locals.get(n).cloned() {
                    match v {
                        Val::Node(id) => match self.tensor_ty(id) {
                            Some(t) => {
                                let pos = ops.iter().position(|o| *o == id).unwrap_or_else(|| {
                                    ops.push(id);
                                    ops.len() - 1
                                });
                                (ArrayRef::Operand(pos), t.rank(), SType::of(t.dtype))
                            }
                            None => return fail(self, Diagnostic::error("a mask cannot be indexed").at(base.span, "this is a mask")),
                        },
                        Val::Const(Const::Array(a)) => {
                            let (r, t) = (a.shape.len(), SType::of(a.dtype));
                            (ArrayRef::Const(a), r, t)
                        }
                        Val::Const(_) => return fail(self, Diagnostic::error(format!("`{n}` is a scalar and cannot be indexed")).at(base.span, "not an array")),
                        Val::Error => return None,
                    }
                } else if let Some((Const::Array(a), _)) = self.env.get(n) {
                    (ArrayRef::Const(a.clone()), a.shape.len(), SType::of(a.dtype))
                } else {
                    return fail(self, Diagnostic::error(format!("`{n}` is not an array or an input")).at(base.span, "cannot be indexed"));
                };
                if indices.len() != rank {
                    return fail(
                        self,
                        Diagnostic::error(format!("`{n}` has {rank} axes but {} indices were given", indices.len())).at(span, "wrong number of indices"),
                    );
                }
                let mut ix = Vec::new();
                for i in indices {
                    let (x, t) = self.scalar(i, vars, ops)?;
                    if t != SType::Int {
                        return fail(self, Diagnostic::error(format!("an index must be an integer, found {}", t.name())).at(i.span, "not an integer"));
                    }
                    ix.push(x);
                }
                Some((ScalarExpr::Index { array, indices: ix }, ety))
            }
            ExprKind::Unary(op, a) => {
                let (x, t) = self.scalar(a, vars, ops)?;
                match (op, t) {
                    (UnOp::Neg, SType::Int | SType::Float) => Some((ScalarExpr::Unary(ScalarUnary::Neg, Box::new(x)), t)),
                    (UnOp::Not, SType::Bool) => Some((ScalarExpr::Unary(ScalarUnary::Not, Box::new(x)), t)),
                    _ => fail(self, Diagnostic::error(format!("`{}` cannot be applied to {}", if *op == UnOp::Neg { "-" } else { "!" }, t.name())).at(span, "here")),
                }
            }
            ExprKind::Binary(op, a, b) => {
                let (x, ta) = self.scalar(a, vars, ops)?;
                let (y, tb) = self.scalar(b, vars, ops)?;
                let numeric = |t: SType| t != SType::Bool;
                let (sop, ty) = match op {
                    BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Mod if numeric(ta) && numeric(tb) => {
                        let t = if ta == SType::Int && tb == SType::Int { SType::Int } else { SType::Float };
                        let s = match op {
                            BinOp::Add => ScalarBinary::Add,
                            BinOp::Sub => ScalarBinary::Sub,
                            BinOp::Mul => ScalarBinary::Mul,
                            BinOp::Div => ScalarBinary::Div,
                            _ => ScalarBinary::Mod,
                        };
                        (s, t)
                    }
                    BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge if numeric(ta) && numeric(tb) => {
                        let s = match op {
                            BinOp::Lt => ScalarBinary::Lt,
                            BinOp::Le => ScalarBinary::Le,
                            BinOp::Gt => ScalarBinary::Gt,
                            _ => ScalarBinary::Ge,
                        };
                        (s, SType::Bool)
                    }
                    BinOp::Eq | BinOp::Ne if numeric(ta) == numeric(tb) => {
                        (if *op == BinOp::Eq { ScalarBinary::Eq } else { ScalarBinary::Ne }, SType::Bool)
                    }
                    BinOp::And | BinOp::Or if ta == SType::Bool && tb == SType::Bool => {
                        (if *op == BinOp::And { ScalarBinary::And } else { ScalarBinary::Or }, SType::Bool)
                    }
                    _ => {
                        return fail(
                            self,
                            Diagnostic::error(format!("`{}` cannot combine {} and {} in a lambda", op.symbol(), ta.name(), tb.name()))
                                .at(span, "here")
                                .with(a.span, ta.name())
                                .with(b.span, tb.name()),
                        )
                    }
                };
                Some((ScalarExpr::binary(sop, x, y), ty))
            }
            ExprKind::Call { func, args } => {
                if args.iter().any(|a| a.name.is_some()) {
                    return fail(self, Diagnostic::error("lambda functions take positional arguments only").at(span, "here"));
                }
                let mut xs = Vec::new();
                for a in args {
                    xs.push(self.scalar(&a.value, vars, ops)?);
                }
                let f = func.name.as_str();
                let unary = match f {
                    "abs" => Some(ScalarUnary::Abs),
                    "exp" => Some(ScalarUnary::Exp),
                    "log" => Some(ScalarUnary::Log),
                    "sqrt" => Some(ScalarUnary::Sqrt),
                    "tanh" => Some(ScalarUnary::Tanh),
                    "sigmoid" => Some(ScalarUnary::Sigmoid),
                    _ => None,
                };
                let want = if unary.is_some() { 1 } else if f == "where" { 3 } else { 2 };
                if !matches!(f, "min" | "max" | "where") && unary.is_none() {
                    return fail(
                        self,
                        Diagnostic::error(format!("`{f}` is not available in lambdas"))
                            .at(func.span, "unknown lambda function")
                            .note("lambdas may call abs, exp, log, sqrt, tanh, sigmoid, min, max and where"),
                    );
                }
                if xs.len() != want {
                    return fail(self, Diagnostic::error(format!("`{f}` takes {want} argument(s) in a lambda, found {}", xs.len())).at(span, "here"));
                }
                if let Some(u) = unary {
                    let (x, t) = xs.pop()?;
                    if t == SType::Bool {
                        return fail(self, Diagnostic::error(format!("`{f}` needs a number, found a boolean")).at(span, "here"));
                    }
                    let rt = if u == ScalarUnary::Abs { t } else { SType::Float };
                    return Some((ScalarExpr::Unary(u, Box::new(x)), rt));
                }
                if f == "where" {
                    let (b, tb) = xs.pop()?;
                    let (a, ta) = xs.pop()?;
                    let (c, tc) = xs.pop()?;
                    if tc != SType::Bool || (ta == SType::Bool) != (tb == SType::Bool) {
                        return fail(self, Diagnostic::error("`where(c, a, b)` needs a boolean `c` and two values of one kind").at(span, "here"));
                    }
                    let t = if ta == SType::Int && tb == SType::Int {
                        SType::Int
                    } else if ta == SType::Bool {
                        SType::Bool
                    } else {
                        SType::Float
                    };
                    // One integer and one float branch: the result is a float
                    // whichever branch is taken, so the integer one is promoted.
                    let promote = |x: ScalarExpr, tx: SType| {
                        if t == SType::Float && tx == SType::Int {
                            ScalarExpr::binary(ScalarBinary::Mul, x, ScalarExpr::Float(1.0))
                        } else {
                            x
                        }
                    };
                    let (a, b) = (promote(a, ta), promote(b, tb));
                    return Some((ScalarExpr::Select(Box::new(c), Box::new(a), Box::new(b)), t));
                }
                let (b, tb) = xs.pop()?;
                let (a, ta) = xs.pop()?;
                if ta == SType::Bool || tb == SType::Bool {
                    return fail(self, Diagnostic::error(format!("`{f}` needs numbers")).at(span, "here"));
                }
                let t = if ta == SType::Int && tb == SType::Int { SType::Int } else { SType::Float };
                let op = if f == "min" { ScalarBinary::Min } else { ScalarBinary::Max };
                Some((ScalarExpr::binary(op, a, b), t))
            }
            _ => fail(
                self,
                Diagnostic::error("this expression is not allowed inside a lambda")
                    .at(span, "here")
                    .note("lambdas hold arithmetic, comparisons, `&`, `|`, `!`, indexing and calls of abs, exp, log, sqrt, tanh, sigmoid, min, max, where"),
            ),
        }
    }
}

/// Types of the lambda language.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SType {
    Int,
    Float,
    Bool,
}

impl SType {
    fn of(d: DType) -> SType {
        match d {
            DType::I32 => SType::Int,
            DType::Bool => SType::Bool,
            _ => SType::Float,
        }
    }

    fn name(self) -> &'static str {
        match self {
            SType::Int => "an integer",
            SType::Float => "a number",
            SType::Bool => "a boolean",
        }
    }
}

fn const_expr(c: &Const, span: Span) -> Expr {
    let kind = match c {
        Const::Int(i) => ExprKind::Int(*i),
        Const::Float(f) if f.is_infinite() && *f > 0.0 => ExprKind::Inf,
        Const::Float(f) => ExprKind::Float(*f),
        Const::Bool(b) => ExprKind::Bool(*b),
        Const::Array(_) => ExprKind::Error,
    };
    Expr { kind, span }
}

/// Appends `b`'s operands to `a`'s (sharing ones already there) and
/// renumbers `b_expr` accordingly.
fn merge_operands(a: Vec<NodeId>, b: Vec<NodeId>, b_expr: &mut MaskExpr) -> Vec<NodeId> {
    let mut out = a;
    let mut map = Vec::new();
    for id in b {
        let pos = out.iter().position(|x| *x == id).unwrap_or_else(|| {
            out.push(id);
            out.len() - 1
        });
        map.push(pos);
    }
    b_expr.map_operands(&mut |i| map.get(i).copied().unwrap_or(i));
    out
}

mod calls;
