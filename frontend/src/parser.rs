//! The `.tdl` parser: recursive descent for items and statements, Pratt
//! parsing for expressions, with error recovery at statement and item
//! boundaries so one run reports several errors.
//!
//! Nesting is bounded: an expression more than [`MAX_DEPTH`] levels deep
//! (parentheses, calls, operator chains) is a clean error, so no input can
//! overflow the stack here or in the passes that walk the tree afterwards.

use crate::ast::*;
use crate::diag::Diagnostic;
use crate::lexer::{lex, Tok, Token};
use tdl_ir::Span;

/// The deepest expression tree the frontend accepts.
pub const MAX_DEPTH: usize = 1024;

/// How many unexpected characters are reported one by one.
const MAX_BAD_CHARS: usize = 50;

fn bad_char(src: &str, t: Token) -> Diagnostic {
    let text = src.get(t.span.range()).unwrap_or("");
    let c = text.chars().next().unwrap_or('?');
    if t.tok == Tok::HashComment {
        return Diagnostic::error("`#` does not start a comment in .tdl")
            .at(Span::new(t.span.start, t.span.start + 1), "not a comment")
            .hint("comments start with `//`");
    }
    if c == '\0' {
        let (line, col) = crate::diag::line_col(src, t.span.start);
        return Diagnostic::error(format!("the file contains a NUL byte (line {line}, column {col})"))
            .at(t.span, "NUL byte here")
            .note(".tdl files are UTF-8 text");
    }
    let d = Diagnostic::error(format!("unexpected character {c:?}")).at(t.span, "not part of the language");
    if c.is_alphabetic() || c == '$' {
        d.hint("names are ASCII letters, digits and `_`")
    } else {
        d
    }
}

/// The result of parsing a file: the tree (with `Error` nodes where it
/// recovered), the diagnostics, and the comments (for `tdlc fmt`).
#[derive(Debug)]
pub struct Parsed {
    pub file: File,
    pub diagnostics: Vec<Diagnostic>,
    pub comments: Vec<Span>,
}

/// Parses a whole file.
pub fn parse(src: &str) -> Parsed {
    let all = lex(src);
    let comments = all.iter().filter(|t| t.tok == Tok::Comment).map(|t| t.span).collect();
    // Characters no token starts with are reported here, once each, and
    // dropped, so the parser sees the program as if they were not there.
    let mut diags = Vec::new();
    let mut bad = 0usize;
    let mut toks = Vec::with_capacity(all.len());
    for t in all {
        match t.tok {
            Tok::Comment => {}
            Tok::Error | Tok::HashComment => {
                bad += 1;
                if bad <= MAX_BAD_CHARS {
                    diags.push(bad_char(src, t));
                } else if bad == MAX_BAD_CHARS + 1 {
                    diags.push(Diagnostic::error(format!(
                        "more than {MAX_BAD_CHARS} unexpected characters; not reporting the rest"
                    )));
                }
            }
            _ => toks.push(t),
        }
    }
    let mut p = Parser { src, toks, pos: 0, diags, depth: 0 };
    let file = p.file();
    Parsed { file, diagnostics: p.diags, comments }
}

/// Errors are recorded in `Parser::diags` when they happen; `Err(())` only
/// unwinds to the nearest recovery point.
type PResult<T> = Result<T, ()>;

struct Parser<'s> {
    src: &'s str,
    toks: Vec<Token>,
    pos: usize,
    diags: Vec<Diagnostic>,
    depth: usize,
}

impl<'s> Parser<'s> {
    fn tok(&self) -> Tok {
        self.toks[self.pos].tok
    }

    fn peek(&self, n: usize) -> Tok {
        self.toks.get(self.pos + n).map_or(Tok::Eof, |t| t.tok)
    }

    fn span(&self) -> Span {
        self.toks[self.pos].span
    }

    fn prev_span(&self) -> Span {
        if self.pos == 0 {
            Span::new(0, 0)
        } else {
            self.toks[self.pos - 1].span
        }
    }

    fn text(&self, span: Span) -> &'s str {
        &self.src[span.range()]
    }

    fn bump(&mut self) -> Token {
        let t = self.toks[self.pos];
        if t.tok != Tok::Eof {
            self.pos += 1;
        }
        t
    }

    fn eat(&mut self, tok: Tok) -> bool {
        if self.tok() == tok {
            self.bump();
            true
        } else {
            false
        }
    }

    fn found(&self) -> String {
        let t = self.toks[self.pos];
        match t.tok {
            Tok::Ident | Tok::Int | Tok::Float => format!("`{}`", self.text(t.span)),
            Tok::Error => format!("unexpected character {:?}", self.text(t.span)),
            other => other.describe().to_string(),
        }
    }

    fn error_expected(&mut self, what: &str) {
        let found = self.found();
        let mut d =
            Diagnostic::error(format!("expected {what}, found {found}")).at(self.span(), format!("expected {what}"));
        if self.tok() == Tok::Assign && what.contains("statement") {
            d = d.hint("use `==` to compare");
        }
        self.diags.push(d);
    }

    fn expect(&mut self, tok: Tok, what: &str) -> PResult<Token> {
        if self.tok() == tok {
            Ok(self.bump())
        } else {
            self.error_expected(what);
            Err(())
        }
    }

    fn ident(&mut self, what: &str) -> PResult<Ident> {
        let t = self.expect(Tok::Ident, what)?;
        Ok(Ident { name: self.text(t.span).to_string(), span: t.span })
    }

    // ---- items ----------------------------------------------------------

    fn file(&mut self) -> File {
        let mut items = Vec::new();
        loop {
            match self.tok() {
                Tok::Eof => break,
                Tok::Const => match self.const_decl() {
                    Ok(c) => items.push(Item::Const(c)),
                    Err(()) => self.skip_to_item(),
                },
                Tok::Graph => match self.graph_decl() {
                    Ok(g) => items.push(Item::Graph(g)),
                    Err(()) => self.skip_to_item(),
                },
                _ => {
                    self.error_expected("`const` or `graph`");
                    self.bump();
                    self.skip_to_item();
                }
            }
        }
        File { items }
    }

    fn skip_to_item(&mut self) {
        while !matches!(self.tok(), Tok::Eof | Tok::Const | Tok::Graph) {
            self.bump();
        }
    }

    fn const_decl(&mut self) -> PResult<ConstDecl> {
        let start = self.bump().span;
        let name = self.ident("a constant name")?;
        self.expect(Tok::Assign, "`=`")?;
        let value = self.expr()?;
        self.eat(Tok::Semi);
        Ok(ConstDecl { name, value, span: start.to(self.prev_span()) })
    }

    fn graph_decl(&mut self) -> PResult<GraphDecl> {
        let start = self.bump().span;
        let name = self.ident("a graph name")?;
        self.expect(Tok::LParen, "`(` to start the parameter list")?;
        let mut params = Vec::new();
        while self.tok() != Tok::RParen {
            let pname = self.ident("a parameter name or `)`")?;
            self.expect(Tok::Colon, "`:` and the parameter's type")?;
            let ty = self.type_expr()?;
            params.push(Param { span: pname.span.to(ty.span), name: pname, ty });
            if !self.eat(Tok::Comma) {
                break;
            }
        }
        self.expect(Tok::RParen, "`,` or `)` in the parameter list")?;
        self.expect(Tok::Arrow, "`->` and the result type")?;
        let mut results = Vec::new();
        let results_parenthesized = self.eat(Tok::LParen);
        if results_parenthesized {
            while self.tok() != Tok::RParen {
                results.push(self.type_expr()?);
                if !self.eat(Tok::Comma) {
                    break;
                }
            }
            self.expect(Tok::RParen, "`,` or `)` in the result types")?;
        } else {
            results.push(self.type_expr()?);
        }
        self.expect(Tok::LBrace, "`{` to start the graph body")?;
        let mut body = Vec::new();
        loop {
            match self.tok() {
                Tok::RBrace => break,
                Tok::Eof | Tok::Graph | Tok::Const => {
                    // Keep the graph: its body is still checked.
                    let end = Span::new(self.prev_span().end, self.prev_span().end);
                    let mut d = Diagnostic::error(format!("expected `}}` to close graph `{}`", name.name))
                        .at(end, "expected `}` after this")
                        .with(name.span, "this graph's body is not closed");
                    if self.tok() != Tok::Eof {
                        d = d.with(self.span(), "the next item starts here");
                    }
                    self.diags.push(d);
                    return Ok(GraphDecl {
                        name,
                        params,
                        results,
                        results_parenthesized,
                        body,
                        span: start.to(end),
                        close: end,
                    });
                }
                _ => match self.stmt() {
                    Ok(s) => body.push(s),
                    Err(()) => self.skip_to_stmt(),
                },
            }
        }
        let close = self.bump().span;
        Ok(GraphDecl { name, params, results, results_parenthesized, body, span: start.to(close), close })
    }

    fn type_expr(&mut self) -> PResult<TypeExpr> {
        let dtype = self.ident("an element type (f32, f16, bf16, i32, bool)")?;
        let mut dims = Vec::new();
        let mut end = dtype.span;
        if self.eat(Tok::LBracket) {
            while self.tok() != Tok::RBracket {
                dims.push(self.expr()?);
                if !self.eat(Tok::Comma) {
                    break;
                }
            }
            end = self.expect(Tok::RBracket, "`,` or `]` in the shape")?.span;
        }
        Ok(TypeExpr { span: dtype.span.to(end), dtype, dims })
    }

    // ---- statements -----------------------------------------------------

    /// A statement. Once a `let NAME` or a `return` has been read, an error
    /// later in the statement still yields the statement (with an `Error`
    /// value), so the name stays bound and the graph keeps its `return`: the
    /// one mistake is reported once, without follow-on errors.
    fn stmt(&mut self) -> PResult<Stmt> {
        let start = self.span();
        match self.tok() {
            Tok::Let => {
                self.bump();
                let name = self.ident("a name after `let`")?;
                if self.tok() != Tok::Assign {
                    let found = self.found();
                    self.diags.push(
                        Diagnostic::error(format!("expected `=` after `let {}`, found {found}", name.name))
                            .at(self.span(), "expected `=`")
                            .hint(format!("write `let {} = ...`", name.name)),
                    );
                    self.skip_to_stmt();
                    return Ok(Stmt::Let { span: start.to(self.prev_span()), name, value: self.error_expr() });
                }
                self.bump();
                let value = self.stmt_expr();
                Ok(Stmt::Let { name, value, span: start.to(self.prev_span()) })
            }
            Tok::Return => {
                self.bump();
                let mut values = vec![self.stmt_expr()];
                while !matches!(values.last().map(|e| &e.kind), Some(ExprKind::Error)) && self.eat(Tok::Comma) {
                    values.push(self.stmt_expr());
                }
                Ok(Stmt::Return { values, span: start.to(self.prev_span()) })
            }
            _ => {
                self.error_expected("`let`, `return` or `}`");
                Err(())
            }
        }
    }

    fn error_expr(&self) -> Expr {
        Expr { kind: ExprKind::Error, span: self.prev_span() }
    }

    /// The expression of a statement, and the statement's end. On an error
    /// the rest of the statement is skipped and the value is `Error`.
    fn stmt_expr(&mut self) -> Expr {
        let Ok(e) = self.expr() else {
            self.skip_to_stmt();
            return self.error_expr();
        };
        if self.eat(Tok::Semi) || matches!(self.tok(), Tok::Let | Tok::Return | Tok::RBrace | Tok::Comma) {
            return e;
        }
        // A missing `}` is reported by the graph, where it is clearer.
        if matches!(self.tok(), Tok::Graph | Tok::Const | Tok::Eof) {
            return e;
        }
        if self.tok() == Tok::Assign {
            self.diags.push(
                Diagnostic::error("`=` is not a comparison")
                    .at(self.span(), "assignment is only `let NAME = ...`")
                    .hint("use `==` to compare"),
            );
        } else {
            self.error_expected("the end of the statement");
        }
        self.skip_to_stmt();
        self.error_expr()
    }

    /// Skips to the next `let`, `return`, closing `}` of the body, or item.
    fn skip_to_stmt(&mut self) {
        let mut depth: i64 = 0;
        loop {
            match self.tok() {
                Tok::Eof | Tok::Graph | Tok::Const | Tok::Let | Tok::Return => return,
                Tok::RBrace if depth <= 0 => return,
                Tok::LParen | Tok::LBracket | Tok::LBrace => depth += 1,
                Tok::RParen | Tok::RBracket | Tok::RBrace => depth -= 1,
                _ => {}
            }
            self.bump();
        }
    }

    // ---- expressions ----------------------------------------------------

    fn expr(&mut self) -> PResult<Expr> {
        self.expr_depth().map(|(e, _)| e)
    }

    fn enter(&mut self) -> PResult<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            self.too_deep(self.span());
            self.depth -= 1;
            return Err(());
        }
        Ok(())
    }

    fn starts_expr(&self) -> bool {
        matches!(
            self.tok(),
            Tok::Int
                | Tok::Float
                | Tok::True
                | Tok::False
                | Tok::Inf
                | Tok::Ident
                | Tok::LParen
                | Tok::LBracket
                | Tok::Minus
                | Tok::Bang
        )
    }

    fn too_deep(&mut self, span: Span) {
        self.diags.push(
            Diagnostic::error(format!("expression is nested more than {MAX_DEPTH} levels deep"))
                .at(span, "too deep here")
                .note("parentheses, calls, unary operators and each operator of a chain like `a + b + c` add a level")
                .hint("split the expression into several `let` statements"),
        );
    }

    fn check_depth(&mut self, depth: usize, span: Span) -> PResult<()> {
        if depth > MAX_DEPTH {
            self.too_deep(span);
            return Err(());
        }
        Ok(())
    }

    /// Pipes sit below every binary operator: `a + b |> f()` is `f(a + b)`.
    fn expr_depth(&mut self) -> PResult<(Expr, usize)> {
        self.enter()?;
        let r = crate::grow(|| self.pipe());
        self.depth -= 1;
        r
    }

    fn pipe(&mut self) -> PResult<(Expr, usize)> {
        let (mut lhs, mut depth) = self.binary(0)?;
        while self.eat(Tok::Pipe) {
            let func = self.ident("a function name after `|>`")?;
            let (args, has_parens, adepth) = if self.tok() == Tok::LParen {
                let (a, d) = self.args()?;
                (a, true, d)
            } else {
                (Vec::new(), false, 0)
            };
            depth = depth.max(adepth) + 1;
            let span = lhs.span.to(self.prev_span());
            self.check_depth(depth, span)?;
            lhs = Expr { kind: ExprKind::Pipe { lhs: Box::new(lhs), func, args, has_parens }, span };
            // Operators may follow a pipe: `x |> f() * 2` is `f(x) * 2`.
            (lhs, depth) = self.binary_rest(lhs, depth, 0)?;
        }
        Ok((lhs, depth))
    }

    fn binop(&mut self) -> Option<BinOp> {
        Some(match self.tok() {
            Tok::Plus => BinOp::Add,
            Tok::Minus => BinOp::Sub,
            Tok::Star => BinOp::Mul,
            Tok::Slash => BinOp::Div,
            Tok::Percent => BinOp::Mod,
            Tok::At => BinOp::MatMul,
            Tok::Lt => BinOp::Lt,
            Tok::Le => BinOp::Le,
            Tok::Gt => BinOp::Gt,
            Tok::Ge => BinOp::Ge,
            Tok::EqEq => BinOp::Eq,
            Tok::Ne => BinOp::Ne,
            Tok::Amp => BinOp::And,
            Tok::Bar => BinOp::Or,
            Tok::AmpAmp | Tok::BarBar => {
                let (sym, op) = if self.tok() == Tok::AmpAmp { ("&", BinOp::And) } else { ("|", BinOp::Or) };
                self.diags.push(
                    Diagnostic::error(format!("`{}` is not an operator of the language", self.text(self.span())))
                        .at(self.span(), format!("write `{sym}`"))
                        .hint(format!("masks and predicates combine with `{sym}`")),
                );
                op
            }
            _ => return None,
        })
    }

    /// Precedence climbing; left-associative chains are built in a loop, so
    /// only the depth of the resulting tree is bounded, not its length.
    fn binary(&mut self, min_prec: u8) -> PResult<(Expr, usize)> {
        let (lhs, depth) = self.unary()?;
        self.binary_rest(lhs, depth, min_prec)
    }

    /// The operators after a left operand, binding tighter than `min_prec`.
    fn binary_rest(&mut self, mut lhs: Expr, mut depth: usize, min_prec: u8) -> PResult<(Expr, usize)> {
        let mut last_cmp: Option<Span> = None;
        loop {
            let op_span = self.span();
            let Some(op) = self.binop() else { break };
            let prec = op.precedence();
            if prec <= min_prec {
                break;
            }
            self.bump();
            if !self.starts_expr() {
                let found = self.found();
                self.diags.push(
                    Diagnostic::error(format!("expected an expression after `{}`, found {found}", op.symbol()))
                        .at(op_span, "this operator has no right operand"),
                );
                return Err(());
            }
            if prec == 3 {
                if let Some(prev) = last_cmp {
                    self.diags.push(
                        Diagnostic::error("comparisons cannot be chained")
                            .at(op_span, "second comparison")
                            .with(prev, "first comparison")
                            .hint("combine two comparisons with `&`: `a < b & b < c`"),
                    );
                    return Err(());
                }
                last_cmp = Some(op_span);
            }
            let (rhs, rdepth) = self.binary(prec)?;
            depth = depth.max(rdepth) + 1;
            let span = lhs.span.to(rhs.span);
            self.check_depth(depth, op_span)?;
            lhs = Expr { kind: ExprKind::Binary(op, Box::new(lhs), Box::new(rhs)), span };
        }
        Ok((lhs, depth))
    }

    fn unary(&mut self) -> PResult<(Expr, usize)> {
        let op = match self.tok() {
            Tok::Minus => UnOp::Neg,
            Tok::Bang => UnOp::Not,
            _ => return self.postfix(),
        };
        let start = self.bump().span;
        self.enter()?;
        let r = self.unary();
        self.depth -= 1;
        let (e, d) = r?;
        let span = start.to(e.span);
        Ok((Expr { kind: ExprKind::Unary(op, Box::new(e)), span }, d + 1))
    }

    fn postfix(&mut self) -> PResult<(Expr, usize)> {
        let (mut e, mut depth) = self.primary()?;
        while self.tok() == Tok::LBracket {
            self.bump();
            let mut indices = Vec::new();
            while self.tok() != Tok::RBracket {
                let (i, d) = self.expr_depth()?;
                depth = depth.max(d);
                indices.push(i);
                if !self.eat(Tok::Comma) {
                    break;
                }
            }
            let end = self.expect(Tok::RBracket, "`,` or `]` after the index")?.span;
            depth += 1;
            let span = e.span.to(end);
            self.check_depth(depth, span)?;
            e = Expr { kind: ExprKind::Index { base: Box::new(e), indices }, span };
        }
        Ok((e, depth))
    }

    /// At `(`: is this `(a, b, ...) =>`?
    fn at_lambda_params(&self) -> bool {
        let mut i = 1;
        if self.peek(i) == Tok::Ident {
            i += 1;
            while self.peek(i) == Tok::Comma && self.peek(i + 1) == Tok::Ident {
                i += 2;
            }
        }
        self.peek(i) == Tok::RParen && self.peek(i + 1) == Tok::FatArrow
    }

    /// At `(`: is this `(a, b, ...)`, whether or not `=>` follows?
    fn at_lambda_params_maybe_arrowless(&self) -> bool {
        let mut i = 1;
        if self.peek(i) == Tok::Ident {
            i += 1;
            while self.peek(i) == Tok::Comma && self.peek(i + 1) == Tok::Ident {
                i += 2;
            }
        }
        self.peek(i) == Tok::RParen
    }

    fn lambda(&mut self, is_mask: bool, start: Span) -> PResult<(Expr, usize)> {
        self.expect(Tok::LParen, "`(`")?;
        let mut params = Vec::new();
        while self.tok() == Tok::Ident {
            params.push(self.ident("a parameter name")?);
            if !self.eat(Tok::Comma) {
                break;
            }
        }
        self.expect(Tok::RParen, "`)`")?;
        if !self.eat(Tok::FatArrow) {
            let found = self.found();
            let params_text: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
            self.diags.push(
                Diagnostic::error(format!("expected `=>` after the lambda's parameters, found {found}"))
                    .at(Span::new(self.prev_span().end, self.prev_span().end), "expected `=>`")
                    .hint(format!("write `mask({}) => predicate`", params_text.join(", "))),
            );
            if !self.starts_expr() {
                return Err(());
            }
        }
        let (body, d) = self.expr_depth()?;
        let span = start.to(body.span);
        Ok((Expr { kind: ExprKind::Lambda { is_mask, params, body: Box::new(body) }, span }, d + 1))
    }

    fn args(&mut self) -> PResult<(Vec<Arg>, usize)> {
        self.expect(Tok::LParen, "`(`")?;
        let mut args = Vec::new();
        let mut depth = 0;
        while self.tok() != Tok::RParen {
            let name = if self.tok() == Tok::Ident && self.peek(1) == Tok::Assign {
                let n = self.ident("an argument name")?;
                self.bump();
                Some(n)
            } else {
                None
            };
            let (value, d) = self.expr_depth()?;
            depth = depth.max(d);
            args.push(Arg { name, value });
            if !self.eat(Tok::Comma) {
                break;
            }
        }
        if self.tok() == Tok::Assign {
            self.diags.push(
                Diagnostic::error("`=` is not a comparison")
                    .at(self.span(), "`=` only names an argument (`axis = -1`) or binds `let NAME = ...`")
                    .hint("use `==` to compare"),
            );
            return Err(());
        }
        self.expect(Tok::RParen, "`,` or `)` in the argument list")?;
        Ok((args, depth + 1))
    }

    fn primary(&mut self) -> PResult<(Expr, usize)> {
        let t = self.toks[self.pos];
        let span = t.span;
        let leaf = |kind| Ok((Expr { kind, span }, 1));
        match t.tok {
            Tok::Int => {
                self.bump();
                let text = self.text(span);
                match text.parse::<i64>() {
                    Ok(v) => leaf(ExprKind::Int(v)),
                    Err(_) => {
                        self.diags.push(
                            Diagnostic::error(format!("integer literal `{text}` is out of range"))
                                .at(span, format!("the largest integer is {}", i64::MAX)),
                        );
                        leaf(ExprKind::Error)
                    }
                }
            }
            Tok::Float => {
                self.bump();
                let text = self.text(span);
                match text.parse::<f64>() {
                    Ok(v) if v.is_finite() => leaf(ExprKind::Float(v)),
                    _ => {
                        self.diags.push(
                            Diagnostic::error(format!("number `{text}` is out of range"))
                                .at(span, "too large for a 64-bit float")
                                .hint("write `inf` for infinity"),
                        );
                        leaf(ExprKind::Error)
                    }
                }
            }
            Tok::True => {
                self.bump();
                leaf(ExprKind::Bool(true))
            }
            Tok::False => {
                self.bump();
                leaf(ExprKind::Bool(false))
            }
            Tok::Inf => {
                self.bump();
                leaf(ExprKind::Inf)
            }
            Tok::Ident => {
                let name = self.text(span);
                if self.peek(1) == Tok::LParen {
                    self.bump();
                    if name == "mask" && self.at_lambda_params_maybe_arrowless() {
                        return self.lambda(true, span);
                    }
                    let func = Ident { name: name.to_string(), span };
                    self.enter()?;
                    let r = self.args();
                    self.depth -= 1;
                    let (args, d) = r?;
                    let span = span.to(self.prev_span());
                    return Ok((Expr { kind: ExprKind::Call { func, args }, span }, d));
                }
                self.bump();
                leaf(ExprKind::Ident(name.to_string()))
            }
            Tok::LParen => {
                if self.at_lambda_params() {
                    return self.lambda(false, span);
                }
                self.bump();
                let (inner, d) = self.expr_depth()?;
                let end = self.expect(Tok::RParen, "`)`")?.span;
                Ok((Expr { kind: ExprKind::Paren(Box::new(inner)), span: span.to(end) }, d + 1))
            }
            Tok::LBracket => {
                self.bump();
                let mut elems = Vec::new();
                let mut depth = 0;
                while self.tok() != Tok::RBracket {
                    let (e, d) = self.expr_depth()?;
                    depth = depth.max(d);
                    elems.push(e);
                    if !self.eat(Tok::Comma) {
                        break;
                    }
                }
                let end = self.expect(Tok::RBracket, "`,` or `]` in the array")?.span;
                Ok((Expr { kind: ExprKind::Array(elems), span: span.to(end) }, depth + 1))
            }
            _ => {
                self.error_expected("an expression");
                Err(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(src: &str) -> File {
        let p = parse(src);
        assert!(p.diagnostics.is_empty(), "{:?}", p.diagnostics);
        p.file
    }

    fn body_expr(src: &str) -> Expr {
        let f = ok(&format!("graph g(x: f32[4]) -> f32[4] {{ return {src} }}"));
        match &f.items[0] {
            Item::Graph(g) => match &g.body[0] {
                Stmt::Return { values, .. } => values[0].clone(),
                _ => unreachable!(),
            },
            _ => unreachable!(),
        }
    }

    fn show(e: &Expr) -> String {
        match &e.kind {
            ExprKind::Binary(op, a, b) => format!("({} {} {})", show(a), op.symbol(), show(b)),
            ExprKind::Unary(UnOp::Neg, a) => format!("(-{})", show(a)),
            ExprKind::Unary(UnOp::Not, a) => format!("(!{})", show(a)),
            ExprKind::Ident(n) => n.clone(),
            ExprKind::Int(i) => i.to_string(),
            ExprKind::Float(f) => format!("{f:?}"),
            ExprKind::Inf => "inf".into(),
            ExprKind::Paren(e) => show(e),
            ExprKind::Call { func, args } => {
                let a: Vec<String> = args.iter().map(|a| show(&a.value)).collect();
                format!("{}({})", func.name, a.join(", "))
            }
            ExprKind::Pipe { lhs, func, args, .. } => {
                let a: Vec<String> = args.iter().map(|a| show(&a.value)).collect();
                format!("[{} |> {}({})]", show(lhs), func.name, a.join(", "))
            }
            ExprKind::Lambda { body, .. } => format!("(=> {})", show(body)),
            ExprKind::Index { base, indices } => {
                format!("{}[{}]", show(base), indices.iter().map(show).collect::<Vec<_>>().join(", "))
            }
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn precedence() {
        assert_eq!(show(&body_expr("q @ k * 0.125 + m")), "(((q @ k) * 0.125) + m)");
        assert_eq!(show(&body_expr("a - b - c")), "((a - b) - c)");
        assert_eq!(show(&body_expr("-a * b")), "((-a) * b)");
        assert_eq!(show(&body_expr("a | b & !c")), "(a | (b & (!c)))");
        assert_eq!(show(&body_expr("a + b |> f(1)")), "[(a + b) |> f(1)]");
        assert_eq!(show(&body_expr("a |> f() * 2 |> g()")), "[([a |> f()] * 2) |> g()]");
        assert_eq!(show(&body_expr("causal & mask(q, k, h) => q - k < s[h]")), "(causal & (=> ((q - k) < s[h])))");
        assert_eq!(show(&body_expr("f(x, score = (s, q, k, h) => s * 2, y = 1)")), "f(x, (=> (s * 2)), 1)");
    }

    #[test]
    fn recovers_and_reports_several_errors() {
        let p = parse("graph g(x: f32[4]) -> f32[4] {\n let a = x +\n let b = )\n return x\n}\ngraph h(");
        assert_eq!(p.diagnostics.len(), 3, "{:?}", p.diagnostics);
        assert_eq!(p.file.items.len(), 1);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let src = format!("graph g(x: f32[4]) -> f32[4] {{ return {}x{} }}", "(".repeat(100_000), ")".repeat(100_000));
        let p = parse(&src);
        assert!(p.diagnostics.iter().any(|d| d.message.contains("nested more than")));
        let long = format!("graph g(x: f32[4]) -> f32[4] {{ return x{} }}", " + x".repeat(50_000));
        let p = parse(&long);
        assert!(p.diagnostics.iter().any(|d| d.message.contains("nested more than")));
    }

    #[test]
    fn out_of_range_literals() {
        let p = parse("const a = 99999999999999999999\nconst b = 1e999");
        assert_eq!(p.diagnostics.len(), 2);
    }
}
