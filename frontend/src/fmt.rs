//! Canonical formatting (`tdlc fmt`).
//!
//! Prints the syntax tree back with one statement per line, four-space
//! indentation, single spaces around binary operators and `=` of named
//! arguments, and at most one blank line where the source had blank lines.
//! Parentheses, pipes and number spellings are kept as written. Comments are
//! kept: one at the end of a line stays there; any other is placed on its own
//! line before the item, statement or parameter it sits in. Formatting is
//! idempotent: formatting formatted text changes nothing.

use crate::ast::*;
use crate::diag::Diagnostic;
use crate::parser::parse;
use tdl_ir::Span;

/// Longest graph header kept on one line.
const MAX_WIDTH: usize = 100;

/// Formats a file; fails (changing nothing) if it does not parse.
pub fn format_source(src: &str) -> Result<String, Vec<Diagnostic>> {
    let parsed = parse(src);
    if parsed.diagnostics.iter().any(|d| d.is_error()) {
        return Err(parsed.diagnostics);
    }
    let mut f = Formatter { src, comments: parsed.comments, next_comment: 0, lines: Vec::new(), last_end: 0 };
    f.file(&parsed.file);
    if f.lines.is_empty() {
        return Ok(String::new());
    }
    let mut out = f.lines.join("\n");
    out.push('\n');
    Ok(out)
}

struct Formatter<'s> {
    src: &'s str,
    comments: Vec<Span>,
    next_comment: usize,
    lines: Vec<String>,
    /// End of the last source construct or comment emitted.
    last_end: usize,
}

impl Formatter<'_> {
    fn text(&self, s: Span) -> &str {
        self.src.get(s.range()).unwrap_or("")
    }

    /// Emits a blank line if the source had one between the last emitted
    /// thing and `pos`, unless a block just opened.
    fn blank_before(&mut self, pos: usize) {
        let gap = self.src.get(self.last_end..pos).unwrap_or("");
        let opened = self.lines.last().is_none_or(|l| l.ends_with('{') || l.ends_with('('));
        if gap.matches('\n').count() >= 2 && !opened {
            self.lines.push(String::new());
        }
    }

    /// Emits every comment that starts before `pos` on its own line.
    fn comments_before(&mut self, pos: usize, indent: &str) {
        while let Some(c) = self.comments.get(self.next_comment).copied() {
            if c.start >= pos {
                break;
            }
            self.blank_before(c.start);
            let line = format!("{indent}{}", self.text(c).trim_end());
            self.lines.push(line);
            self.last_end = c.end;
            self.next_comment += 1;
        }
    }

    /// Appends a comment that follows `end` on the same source line.
    fn trailing(&mut self, end: usize) {
        if let Some(c) = self.comments.get(self.next_comment).copied() {
            let between = self.src.get(end..c.start).unwrap_or("\n");
            if !between.contains('\n') {
                let text = self.text(c).trim_end().to_string();
                if let Some(last) = self.lines.last_mut() {
                    last.push_str("  ");
                    last.push_str(&text);
                }
                self.next_comment += 1;
                self.last_end = c.end;
                return;
            }
        }
        self.last_end = self.last_end.max(end);
    }

    fn file(&mut self, f: &File) {
        for item in &f.items {
            let start = item.span().start;
            self.comments_before(start, "");
            self.blank_before(start);
            match item {
                Item::Const(c) => {
                    self.comments_before(c.span.end, "");
                    let line = format!("const {} = {}", c.name.name, self.expr(&c.value));
                    self.lines.push(line);
                    self.trailing(c.span.end);
                }
                Item::Graph(g) => self.graph(g),
            }
        }
        self.comments_before(usize::MAX, "");
    }

    fn graph(&mut self, g: &GraphDecl) {
        let params: Vec<String> = g.params.iter().map(|p| format!("{}: {}", p.name.name, self.ty(&p.ty))).collect();
        let results: Vec<String> = g.results.iter().map(|t| self.ty(t)).collect();
        let ret = if g.results_parenthesized || results.len() != 1 {
            format!("({})", results.join(", "))
        } else {
            results[0].clone()
        };
        let body_start = g.body.first().map_or(g.close.start, |s| s.span().start);
        let header_end = g.results.last().map_or(g.name.span.end, |r| r.span.end);
        let one_line = format!("graph {}({}) -> {} {{", g.name.name, params.join(", "), ret);
        let header_has_comments = self.comments.get(self.next_comment).is_some_and(|c| c.start < header_end);
        if one_line.len() <= MAX_WIDTH && !header_has_comments {
            self.lines.push(one_line);
        } else {
            self.lines.push(format!("graph {}(", g.name.name));
            for (p, text) in g.params.iter().zip(&params) {
                self.comments_before(p.span.start, "    ");
                self.lines.push(format!("    {text},"));
                self.trailing(p.span.end + usize::from(self.src.as_bytes().get(p.span.end) == Some(&b',')));
            }
            self.comments_before(header_end, "    ");
            self.lines.push(format!(") -> {ret} {{"));
        }
        self.trailing(header_end.max(self.brace_after(header_end)));
        self.comments_before(body_start, "    ");
        for s in &g.body {
            let sp = s.span();
            self.comments_before(sp.start, "    ");
            self.blank_before(sp.start);
            self.comments_before(sp.end, "    ");
            let line = match s {
                Stmt::Let { name, value, .. } => {
                    format!("    let {} = {}", name.name, self.expr(value))
                }
                Stmt::Return { values, .. } => {
                    let vs: Vec<String> = values.iter().map(|v| self.expr(v)).collect();
                    format!("    return {}", vs.join(", "))
                }
            };
            self.lines.push(line);
            let end = sp.end + usize::from(self.src.as_bytes().get(sp.end) == Some(&b';'));
            self.trailing(end);
        }
        self.comments_before(g.close.start, "    ");
        self.lines.push("}".to_string());
        self.trailing(g.close.end);
    }

    /// The end of the `{` that follows `pos`, if only whitespace is between.
    fn brace_after(&self, pos: usize) -> usize {
        let rest = self.src.get(pos..).unwrap_or("");
        let trimmed = rest.trim_start();
        if trimmed.starts_with('{') {
            pos + (rest.len() - trimmed.len()) + 1
        } else {
            pos
        }
    }

    fn ty(&self, t: &TypeExpr) -> String {
        let dims: Vec<String> = t.dims.iter().map(|d| self.expr(d)).collect();
        format!("{}[{}]", t.dtype.name, dims.join(", "))
    }

    fn args(&self, args: &[Arg]) -> String {
        let parts: Vec<String> = args
            .iter()
            .map(|a| match &a.name {
                Some(n) => format!("{} = {}", n.name, self.expr(&a.value)),
                None => self.expr(&a.value),
            })
            .collect();
        parts.join(", ")
    }

    fn expr(&self, e: &Expr) -> String {
        crate::grow(|| self.expr_inner(e))
    }

    fn expr_inner(&self, e: &Expr) -> String {
        match &e.kind {
            ExprKind::Int(_) | ExprKind::Float(_) => self.text(e.span).to_string(),
            ExprKind::Bool(b) => b.to_string(),
            ExprKind::Inf => "inf".into(),
            ExprKind::Ident(n) => n.clone(),
            ExprKind::Error => self.text(e.span).to_string(),
            ExprKind::Array(xs) => {
                let parts: Vec<String> = xs.iter().map(|x| self.expr(x)).collect();
                format!("[{}]", parts.join(", "))
            }
            ExprKind::Paren(x) => format!("({})", self.expr(x)),
            ExprKind::Unary(UnOp::Neg, x) => format!("-{}", self.expr(x)),
            ExprKind::Unary(UnOp::Not, x) => format!("!{}", self.expr(x)),
            ExprKind::Binary(op, a, b) => {
                format!("{} {} {}", self.expr(a), op.symbol(), self.expr(b))
            }
            ExprKind::Call { func, args } => format!("{}({})", func.name, self.args(args)),
            ExprKind::Index { base, indices } => {
                let parts: Vec<String> = indices.iter().map(|x| self.expr(x)).collect();
                format!("{}[{}]", self.expr(base), parts.join(", "))
            }
            ExprKind::Lambda { is_mask, params, body } => {
                let ps: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
                let head = if *is_mask { "mask" } else { "" };
                format!("{head}({}) => {}", ps.join(", "), self.expr(body))
            }
            ExprKind::Pipe { lhs, func, args, has_parens } => {
                if *has_parens {
                    format!("{} |> {}({})", self.expr(lhs), func.name, self.args(args))
                } else {
                    format!("{} |> {}", self.expr(lhs), func.name)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_is_idempotent() {
        let src = "// header\nconst D=64 // dim\n\n\n\ngraph g(x:f32[T,D],y :f32[T,D])->f32[T,D]{\n  // leading\n  let a=x+y*2.50 // trailing\n\n  let b = (a-x)|>exp\n  return -b\n  // end\n}\n";
        let out = format_source(src).unwrap();
        assert_eq!(
            out,
            "// header\nconst D = 64  // dim\n\ngraph g(x: f32[T, D], y: f32[T, D]) -> f32[T, D] {\n    // leading\n    let a = x + y * 2.50  // trailing\n\n    let b = (a - x) |> exp\n    return -b\n    // end\n}\n"
        );
        assert_eq!(format_source(&out).unwrap(), out);
    }

    #[test]
    fn long_headers_break_per_parameter() {
        let src = "graph block(x: f32[T, 512], g1: f32[512], wqkv: f32[512, 1536], wo: f32[512, 512],\n  g2: f32[512], w1: f32[512, 2048], w2: f32[2048, 512]) -> f32[T, 512] {\n return x\n}\n";
        let out = format_source(src).unwrap();
        assert!(out.starts_with("graph block(\n    x: f32[T, 512],\n"), "{out}");
        assert_eq!(format_source(&out).unwrap(), out);
    }

    #[test]
    fn refuses_broken_input() {
        assert!(format_source("graph g(").is_err());
    }
}
