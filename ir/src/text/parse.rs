//! The parser of the text form: a hand-written lexer and recursive-descent
//! parser for the grammar in the [module docs](super).
//!
//! Robustness on any input: every failure is a [`TextError`] with a line and
//! column (the first error wins; there is no recovery); recursion is bounded
//! by [`MAX_DEPTH`] and so is the depth of every expression tree built
//! (left-associative chains are built in loops, so a long chain would
//! otherwise make a tree deep enough to overflow the stack when it is
//! printed or dropped); integers must fit in `i64`; and nothing is
//! allocated from a number read in the input, only in proportion to the
//! input itself (a constant's declared shape must match the values actually
//! written).

use std::collections::HashMap;

use super::{TextError, MAX_DEPTH};
use crate::graph::{Graph, Module, NodeId};
use crate::mask::{ArrayRef, ConstValue, LambdaVar, MaskExpr, ScalarBinary, ScalarExpr, ScalarUnary};
use crate::op::{BinaryOp, Op, ReduceOp, UnaryOp};
use crate::types::{DType, Dim, TensorType, Type};

type R<T> = Result<T, TextError>;

/// Parses a module: zero or more graphs.
pub fn parse_module(text: &str) -> Result<Module, TextError> {
    let mut p = Parser::new(text)?;
    let mut graphs = Vec::new();
    while !p.at_eof() {
        graphs.push(p.graph()?);
    }
    Ok(Module { graphs })
}

/// Parses exactly one graph.
pub fn parse_graph(text: &str) -> Result<Graph, TextError> {
    let mut p = Parser::new(text)?;
    if p.at_eof() {
        return Err(p.expected("`graph`"));
    }
    let g = p.graph()?;
    if !p.at_eof() {
        return Err(p.error_here("expected the end of the input after the graph (use parse_module for several graphs)"));
    }
    Ok(g)
}

// ---------------------------------------------------------------------------
// Lexer
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Tk {
    Ident(String),
    /// Decimal digits.
    Int(String),
    /// The hex digits after `0x`.
    Hex(String),
    /// Digits with a fraction and/or an exponent.
    Float(String),
    Str(String),
    /// `%name`.
    Value(String),
    /// `$digits`.
    Operand(String),
    Punct(&'static str),
    /// The text after `//`, to the end of the line.
    Comment(String),
    Eof,
}

#[derive(Clone, Debug)]
struct Token {
    tk: Tk,
    line: usize,
    col: usize,
    start: usize,
    end: usize,
}

const PUNCTS: [&str; 25] = [
    "=>", "->", "<=", ">=", "==", "!=", "(", ")", "[", "]", "{", "}", ",", ":", "=", "+", "-", "*", "/", "%", "<", ">",
    "&", "|", "!",
];

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

struct Lexer<'a> {
    src: &'a str,
    bytes: &'a [u8],
    pos: usize,
    line: usize,
    col: usize,
}

impl<'a> Lexer<'a> {
    fn peek(&self, off: usize) -> Option<u8> {
        self.bytes.get(self.pos + off).copied()
    }

    fn bump(&mut self) {
        if let Some(b) = self.peek(0) {
            self.pos += 1;
            if b == b'\n' {
                self.line += 1;
                self.col = 1;
            } else if b & 0xC0 != 0x80 {
                self.col += 1;
            }
        }
    }

    fn err(&self, line: usize, col: usize, msg: impl Into<String>) -> TextError {
        TextError { line, column: col, message: msg.into() }
    }

    fn tokens(mut self) -> R<Vec<Token>> {
        let mut out = Vec::new();
        loop {
            while let Some(b) = self.peek(0) {
                if b.is_ascii_whitespace() {
                    self.bump();
                } else {
                    break;
                }
            }
            let (line, col, start) = (self.line, self.col, self.pos);
            let Some(b) = self.peek(0) else {
                out.push(Token { tk: Tk::Eof, line, col, start, end: start });
                return Ok(out);
            };
            let tk = if b == b'/' && self.peek(1) == Some(b'/') {
                while self.peek(0).is_some_and(|c| c != b'\n') {
                    self.bump();
                }
                Tk::Comment(self.src[start + 2..self.pos].to_string())
            } else if b.is_ascii_alphabetic() || b == b'_' {
                while self.peek(0).is_some_and(is_word_byte) {
                    self.bump();
                }
                Tk::Ident(self.src[start..self.pos].to_string())
            } else if b.is_ascii_digit() {
                self.number(line, col)?
            } else if b == b'"' {
                self.bump();
                match unescape(&self.src[self.pos..]) {
                    Ok((s, used)) => {
                        for _ in 0..used {
                            self.bump();
                        }
                        Tk::Str(s)
                    }
                    Err((off, msg)) => {
                        for _ in 0..off {
                            self.bump();
                        }
                        return Err(self.err(self.line, self.col, msg));
                    }
                }
            } else if b == b'%' && self.peek(1).is_some_and(is_word_byte) {
                self.bump();
                while self.peek(0).is_some_and(is_word_byte) {
                    self.bump();
                }
                Tk::Value(self.src[start + 1..self.pos].to_string())
            } else if b == b'$' {
                self.bump();
                if !self.peek(0).is_some_and(|c| c.is_ascii_digit()) {
                    return Err(self.err(line, col, "`$` must be followed by an operand position, as in `$0`"));
                }
                while self.peek(0).is_some_and(|c| c.is_ascii_digit()) {
                    self.bump();
                }
                if self.peek(0).is_some_and(is_word_byte) {
                    return Err(self.err(line, col, "malformed operand reference"));
                }
                Tk::Operand(self.src[start + 1..self.pos].to_string())
            } else if let Some(p) = PUNCTS.iter().find(|p| self.bytes[self.pos..].starts_with(p.as_bytes())) {
                for _ in 0..p.len() {
                    self.bump();
                }
                Tk::Punct(p)
            } else {
                let c = self.src[self.pos..].chars().next().unwrap_or('?');
                return Err(self.err(line, col, format!("unexpected character {c:?}")));
            };
            out.push(Token { tk, line, col, start, end: self.pos });
        }
    }

    /// `123`, `0x7ff8`, `1.5`, `1e-5`, `2.5E+3`; a letter right after a
    /// number is an error.
    fn number(&mut self, line: usize, col: usize) -> R<Tk> {
        let start = self.pos;
        if self.peek(0) == Some(b'0') && matches!(self.peek(1), Some(b'x' | b'X')) {
            self.bump();
            self.bump();
            let hs = self.pos;
            while self.peek(0).is_some_and(|c| c.is_ascii_hexdigit()) {
                self.bump();
            }
            if self.pos == hs || self.peek(0).is_some_and(is_word_byte) {
                return Err(self.err(line, col, "malformed hexadecimal number"));
            }
            return Ok(Tk::Hex(self.src[hs..self.pos].to_string()));
        }
        while self.peek(0).is_some_and(|c| c.is_ascii_digit()) {
            self.bump();
        }
        let mut float = false;
        if self.peek(0) == Some(b'.') && self.peek(1).is_some_and(|c| c.is_ascii_digit()) {
            float = true;
            self.bump();
            while self.peek(0).is_some_and(|c| c.is_ascii_digit()) {
                self.bump();
            }
        }
        if matches!(self.peek(0), Some(b'e' | b'E')) {
            let digit_at = if matches!(self.peek(1), Some(b'+' | b'-')) { 2 } else { 1 };
            if self.peek(digit_at).is_some_and(|c| c.is_ascii_digit()) {
                float = true;
                for _ in 0..digit_at {
                    self.bump();
                }
                while self.peek(0).is_some_and(|c| c.is_ascii_digit()) {
                    self.bump();
                }
            }
        }
        if self.peek(0).is_some_and(is_word_byte) {
            return Err(self.err(line, col, "malformed number"));
        }
        let text = self.src[start..self.pos].to_string();
        Ok(if float { Tk::Float(text) } else { Tk::Int(text) })
    }
}

/// Reads a string literal body (after the opening quote) with Rust's
/// escapes (`\\ \" \' \n \r \t \0 \u{...}`). Returns the string and the
/// bytes used including the closing quote, or the byte offset of the error.
fn unescape(s: &str) -> Result<(String, usize), (usize, String)> {
    let mut out = String::new();
    let mut it = s.char_indices();
    while let Some((i, c)) = it.next() {
        match c {
            '"' => return Ok((out, i + 1)),
            '\\' => {
                let Some((j, e)) = it.next() else { break };
                match e {
                    '\\' => out.push('\\'),
                    '"' => out.push('"'),
                    '\'' => out.push('\''),
                    'n' => out.push('\n'),
                    'r' => out.push('\r'),
                    't' => out.push('\t'),
                    '0' => out.push('\0'),
                    'u' => {
                        let rest = &s[j + 1..];
                        let bad = || (i, "malformed `\\u{...}` escape".to_string());
                        let body = rest.strip_prefix('{').ok_or_else(bad)?;
                        let close = body.find('}').filter(|n| (1..=6).contains(n)).ok_or_else(bad)?;
                        let v = u32::from_str_radix(&body[..close], 16).map_err(|_| bad())?;
                        out.push(char::from_u32(v).ok_or_else(bad)?);
                        // Skip `{`, the digits and `}` (all ASCII).
                        for _ in 0..close + 2 {
                            it.next();
                        }
                    }
                    _ => return Err((i, format!("unknown escape `\\{e}`"))),
                }
            }
            c => out.push(c),
        }
    }
    Err((s.len(), "unterminated string".to_string()))
}

// ---------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------

/// A literal of a constant array, before its element type is known.
#[derive(Clone, Copy, Debug)]
enum Leaf {
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// The values of a constant as written: nested lists of literals.
#[derive(Debug)]
enum ArrLit {
    Leaf(Leaf, usize),
    List(Vec<ArrLit>, usize),
}

impl ArrLit {
    /// The index of the token the literal starts at.
    fn tok(&self) -> usize {
        match self {
            ArrLit::Leaf(_, t) | ArrLit::List(_, t) => *t,
        }
    }
}

/// The contents of a node statement before its type is read.
enum Head {
    Op(Op),
    /// `constant` with bare values: the type after `:` gives dtype and shape.
    RawConstant(ArrLit),
}

struct Parser {
    toks: Vec<Token>,
    idx: usize,
    depth: usize,
    /// Line of the last token consumed (for the trailing name comment).
    last_line: usize,
}

const SCALAR_VARS: [(&str, LambdaVar); 4] =
    [("s", LambdaVar::S), ("q", LambdaVar::Q), ("k", LambdaVar::K), ("h", LambdaVar::H)];

const SCALAR_FUNCS: [(&str, ScalarUnary); 8] = [
    ("neg", ScalarUnary::Neg),
    ("not", ScalarUnary::Not),
    ("abs", ScalarUnary::Abs),
    ("exp", ScalarUnary::Exp),
    ("log", ScalarUnary::Log),
    ("sqrt", ScalarUnary::Sqrt),
    ("tanh", ScalarUnary::Tanh),
    ("sigmoid", ScalarUnary::Sigmoid),
];

/// At most 24 characters of `s`, for messages.
fn short(s: &str) -> String {
    if s.chars().nth(24).is_some() {
        format!("{}...", s.chars().take(24).collect::<String>())
    } else {
        s.to_string()
    }
}

fn describe(tk: &Tk) -> String {
    match tk {
        Tk::Ident(s) | Tk::Int(s) | Tk::Float(s) => format!("`{}`", short(s)),
        Tk::Hex(s) => format!("`0x{}`", short(s)),
        Tk::Str(_) => "a string".to_string(),
        Tk::Value(s) => format!("`%{}`", short(s)),
        Tk::Operand(s) => format!("`${}`", short(s)),
        Tk::Punct(p) => format!("`{p}`"),
        Tk::Comment(_) => "a comment".to_string(),
        Tk::Eof => "the end of the input".to_string(),
    }
}

fn scalar_binop(tk: &Tk) -> Option<ScalarBinary> {
    let Tk::Punct(p) = tk else { return None };
    Some(match *p {
        "|" => ScalarBinary::Or,
        "&" => ScalarBinary::And,
        "<" => ScalarBinary::Lt,
        "<=" => ScalarBinary::Le,
        ">" => ScalarBinary::Gt,
        ">=" => ScalarBinary::Ge,
        "==" => ScalarBinary::Eq,
        "!=" => ScalarBinary::Ne,
        "+" => ScalarBinary::Add,
        "-" => ScalarBinary::Sub,
        "*" => ScalarBinary::Mul,
        "/" => ScalarBinary::Div,
        "%" => ScalarBinary::Mod,
        _ => return None,
    })
}

impl Parser {
    fn new(text: &str) -> R<Parser> {
        let toks = Lexer { src: text, bytes: text.as_bytes(), pos: 0, line: 1, col: 1 }.tokens()?;
        Ok(Parser { toks, idx: 0, depth: 0, last_line: 1 })
    }

    // -- token access ------------------------------------------------------

    fn skip_comments(&mut self) {
        while matches!(self.toks[self.idx].tk, Tk::Comment(_)) {
            self.idx += 1;
        }
    }

    /// The index of the next token that is not a comment.
    fn peek_idx(&mut self) -> usize {
        self.skip_comments();
        self.idx
    }

    fn peek(&mut self) -> &Tk {
        let i = self.peek_idx();
        &self.toks[i].tk
    }

    /// The token after the next one (comments skipped).
    fn peek2(&mut self) -> &Tk {
        let mut i = self.peek_idx();
        if !matches!(self.toks[i].tk, Tk::Eof) {
            i += 1;
            while matches!(self.toks[i].tk, Tk::Comment(_)) {
                i += 1;
            }
        }
        &self.toks[i].tk
    }

    /// The token after [`Parser::peek2`]'s (comments skipped).
    fn peek3(&mut self) -> &Tk {
        let mut i = self.peek_idx();
        for _ in 0..2 {
            if !matches!(self.toks[i].tk, Tk::Eof) {
                i += 1;
                while matches!(self.toks[i].tk, Tk::Comment(_)) {
                    i += 1;
                }
            }
        }
        &self.toks[i].tk
    }

    /// Consumes the next token and returns its index.
    fn next(&mut self) -> usize {
        let i = self.peek_idx();
        if !matches!(self.toks[i].tk, Tk::Eof) {
            self.idx += 1;
        }
        self.last_line = self.toks[i].line;
        i
    }

    fn at_eof(&mut self) -> bool {
        matches!(self.peek(), Tk::Eof)
    }

    fn is_punct(&mut self, p: &str) -> bool {
        matches!(self.peek(), Tk::Punct(q) if *q == p)
    }

    fn is_ident(&mut self, w: &str) -> bool {
        matches!(self.peek(), Tk::Ident(s) if s == w)
    }

    fn eat_punct(&mut self, p: &str) -> bool {
        if self.is_punct(p) {
            self.next();
            true
        } else {
            false
        }
    }

    // -- errors --------------------------------------------------------------

    fn error_at(&self, tok: usize, msg: impl Into<String>) -> TextError {
        let t = &self.toks[tok];
        TextError { line: t.line, column: t.col, message: msg.into() }
    }

    fn error_here(&mut self, msg: impl Into<String>) -> TextError {
        let i = self.peek_idx();
        self.error_at(i, msg)
    }

    fn expected(&mut self, what: &str) -> TextError {
        let i = self.peek_idx();
        let found = describe(&self.toks[i].tk);
        self.error_at(i, format!("expected {what}, found {found}"))
    }

    fn expect_punct(&mut self, p: &str) -> R<usize> {
        if self.is_punct(p) {
            Ok(self.next())
        } else {
            Err(self.expected(&format!("`{p}`")))
        }
    }

    fn expect_ident(&mut self, w: &str) -> R<usize> {
        if self.is_ident(w) {
            Ok(self.next())
        } else {
            Err(self.expected(&format!("`{w}`")))
        }
    }

    /// Any identifier; returns it and its token index.
    fn ident(&mut self, what: &str) -> R<(String, usize)> {
        if let Tk::Ident(s) = self.peek() {
            let s = s.clone();
            Ok((s, self.next()))
        } else {
            Err(self.expected(what))
        }
    }

    /// One more level of recursion (parentheses, arguments, brackets). The
    /// limit leaves a little room over [`MAX_DEPTH`], the limit on trees:
    /// printed text nests at most one level more than its tree is deep, so
    /// whatever parses prints to text that parses.
    fn enter(&mut self) -> R<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH + 8 {
            return Err(self.error_here(format!("nesting deeper than {} levels", MAX_DEPTH + 8)));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    fn check_tree_depth(&self, depth: usize, tok: usize) -> R<()> {
        if depth > MAX_DEPTH {
            return Err(self.error_at(tok, format!("expression nests deeper than {MAX_DEPTH} levels")));
        }
        Ok(())
    }

    // -- numbers -------------------------------------------------------------

    /// A signed integer in `i64`.
    fn int(&mut self) -> R<i64> {
        let neg = self.is_punct("-");
        let first = self.peek_idx();
        if neg {
            self.next();
        }
        let Tk::Int(digits) = self.peek().clone() else { return Err(self.expected("an integer")) };
        self.next();
        let text = if neg { format!("-{digits}") } else { digits };
        text.parse::<i64>().map_err(|_| self.error_at(first, "integer out of the 64-bit range"))
    }

    /// A non-negative integer in `i64`, as a `usize`.
    fn uint(&mut self) -> R<usize> {
        let Tk::Int(digits) = self.peek().clone() else { return Err(self.expected("a non-negative integer")) };
        let i = self.next();
        digits
            .parse::<i64>()
            .ok()
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| self.error_at(i, "integer out of the 64-bit range"))
    }

    fn parse_float_text(&self, text: &str, tok: usize) -> R<f64> {
        let v: f64 = text.parse().map_err(|_| self.error_at(tok, "malformed float"))?;
        if v.is_infinite() {
            return Err(self.error_at(tok, "float literal out of range (write `inf`)"));
        }
        Ok(v)
    }

    /// After `nan`: an optional `(0x<bits>)`.
    fn nan_payload(&mut self) -> R<f64> {
        if !self.is_punct("(") {
            return Ok(f64::NAN);
        }
        self.next();
        let Tk::Hex(h) = self.peek().clone() else {
            return Err(self.expected("the bits of a NaN, as in `0x7ff8000000000001`"));
        };
        let t = self.next();
        let bits = u64::from_str_radix(&h, 16).map_err(|_| self.error_at(t, "NaN bits out of the 64-bit range"))?;
        let v = f64::from_bits(bits);
        if !v.is_nan() {
            return Err(self.error_at(t, "these bits are not a NaN"));
        }
        self.expect_punct(")")?;
        Ok(v)
    }

    /// A float (or integer) literal with an optional sign: `-1e-5`, `inf`,
    /// `nan`, `3`.
    fn float(&mut self) -> R<f64> {
        let neg = self.eat_punct("-");
        let v = match self.peek().clone() {
            Tk::Float(s) => {
                let t = self.next();
                self.parse_float_text(&s, t)?
            }
            Tk::Int(s) => {
                let t = self.next();
                let i: i64 = s.parse().map_err(|_| self.error_at(t, "integer out of the 64-bit range"))?;
                i as f64
            }
            Tk::Ident(s) if s == "inf" => {
                self.next();
                f64::INFINITY
            }
            Tk::Ident(s) if s == "nan" => {
                self.next();
                self.nan_payload()?
            }
            _ => return Err(self.expected("a number")),
        };
        Ok(if neg { -v } else { v })
    }

    fn bool(&mut self) -> R<bool> {
        if self.is_ident("true") {
            self.next();
            Ok(true)
        } else if self.is_ident("false") {
            self.next();
            Ok(false)
        } else {
            Err(self.expected("`true` or `false`"))
        }
    }

    /// `[a, b, ...]` with `item` reading each element.
    fn list<T>(&mut self, item: &mut dyn FnMut(&mut Self) -> R<T>) -> R<Vec<T>> {
        self.expect_punct("[")?;
        let mut out = Vec::new();
        if self.eat_punct("]") {
            return Ok(out);
        }
        loop {
            out.push(item(self)?);
            if self.eat_punct(",") {
                continue;
            }
            self.expect_punct("]")?;
            return Ok(out);
        }
    }

    /// `name = value, ...` up to `close`, calling `f` for each name; `f`
    /// returns false for a name it does not know.
    fn named_args(&mut self, close: &str, f: &mut dyn FnMut(&mut Self, &str) -> R<bool>) -> R<()> {
        let mut seen: Vec<String> = Vec::new();
        if self.eat_punct(close) {
            return Ok(());
        }
        loop {
            let (key, t) = self.ident("an attribute name")?;
            if seen.contains(&key) {
                return Err(self.error_at(t, format!("`{}` is given twice", short(&key))));
            }
            self.expect_punct("=")?;
            if !f(self, &key)? {
                return Err(self.error_at(t, format!("unknown attribute `{}`", short(&key))));
            }
            seen.push(key);
            if self.eat_punct(",") {
                continue;
            }
            self.expect_punct(close)?;
            return Ok(());
        }
    }

    fn required<T>(&self, v: Option<T>, what: &str, tok: usize) -> R<T> {
        v.ok_or_else(|| self.error_at(tok, format!("missing attribute `{what}`")))
    }

    // -- names, dims and types -------------------------------------------

    /// An identifier or a quoted string.
    fn name(&mut self, what: &str) -> R<String> {
        match self.peek().clone() {
            Tk::Ident(s) | Tk::Str(s) => {
                self.next();
                Ok(s)
            }
            _ => Err(self.expected(what)),
        }
    }

    /// `2*H*T + T - 1`.
    fn dim(&mut self) -> R<Dim> {
        let start = self.peek_idx();
        let overflow =
            |p: &Self| p.error_at(start, "dimension out of range (64-bit coefficients, at most 64 symbols in a term)");
        let mut total = Dim::constant(0);
        let mut neg = self.eat_punct("-");
        loop {
            // term := factor ("*" factor)*
            let mut coef: i128 = 1;
            let mut syms: Vec<String> = Vec::new();
            loop {
                match self.peek().clone() {
                    Tk::Int(s) => {
                        let t = self.next();
                        let v: i128 = s.parse::<i64>().map(i128::from).or_else(|_| {
                            // The magnitude of i64::MIN, printed after a `-`.
                            if s == "9223372036854775808" {
                                Ok(1i128 << 63)
                            } else {
                                Err(self.error_at(t, "integer out of the 64-bit range"))
                            }
                        })?;
                        coef = coef.checked_mul(v).filter(|c| *c <= 1i128 << 63).ok_or_else(|| overflow(self))?;
                    }
                    Tk::Ident(s) => {
                        self.next();
                        if syms.len() >= 64 {
                            return Err(overflow(self));
                        }
                        syms.push(s);
                    }
                    _ => return Err(self.expected("a dimension (an integer or a symbol)")),
                }
                if !self.eat_punct("*") {
                    break;
                }
            }
            let signed = if neg { -coef } else { coef };
            let c = i64::try_from(signed).map_err(|_| overflow(self))?;
            let mut term = Dim::constant(c);
            for s in &syms {
                term = term.checked_mul(&Dim::sym(s)).map_err(|_| overflow(self))?;
            }
            total = total.checked_add(&term).map_err(|_| overflow(self))?;
            if self.eat_punct("+") {
                neg = false;
            } else if self.eat_punct("-") {
                neg = true;
            } else {
                return Ok(total);
            }
        }
    }

    fn dims(&mut self) -> R<Vec<Dim>> {
        self.list(&mut |p| p.dim())
    }

    fn tensor_type(&mut self) -> R<TensorType> {
        let (name, t) = self.ident("a tensor type such as `f32[T, 64]`")?;
        let dtype = DType::from_name(&name).ok_or_else(|| {
            self.error_at(t, format!("unknown element type `{}` (f32, f16, bf16, i32, bool)", short(&name)))
        })?;
        Ok(TensorType::new(dtype, self.dims()?))
    }

    fn ty(&mut self) -> R<Type> {
        if self.is_ident("mask") {
            self.next();
            return Ok(Type::Mask);
        }
        Ok(Type::Tensor(self.tensor_type()?))
    }

    // -- constants -------------------------------------------------------

    /// A literal of a constant: `-1.5`, `3`, `true`, `inf`, `nan(0x...)`.
    fn leaf(&mut self) -> R<Leaf> {
        if self.is_ident("true") || self.is_ident("false") {
            return Ok(Leaf::Bool(self.bool()?));
        }
        let neg = self.is_punct("-");
        if neg {
            self.next();
        }
        match self.peek().clone() {
            Tk::Int(s) => {
                let t = self.next();
                let text = if neg { format!("-{s}") } else { s };
                text.parse::<i64>().map(Leaf::Int).map_err(|_| self.error_at(t, "integer out of the 64-bit range"))
            }
            Tk::Float(_) | Tk::Ident(_) => {
                let v = match self.peek().clone() {
                    Tk::Float(s) => {
                        let t = self.next();
                        self.parse_float_text(&s, t)?
                    }
                    Tk::Ident(s) if s == "inf" => {
                        self.next();
                        f64::INFINITY
                    }
                    Tk::Ident(s) if s == "nan" => {
                        self.next();
                        self.nan_payload()?
                    }
                    _ => return Err(self.expected("a literal")),
                };
                Ok(Leaf::Float(if neg { -v } else { v }))
            }
            _ => Err(self.expected("a literal")),
        }
    }

    /// `values := literal | "[" [values ("," values)*] "]"`. On the
    /// recursion path: kept small (see [`Parser::scalar_expr`]).
    fn arr_lit(&mut self) -> R<ArrLit> {
        let t = self.peek_idx();
        if !self.is_punct("[") {
            let leaf = self.leaf()?;
            return Ok(ArrLit::Leaf(leaf, t));
        }
        self.enter()?;
        self.next();
        let mut items = Vec::new();
        if !self.eat_punct("]") {
            loop {
                items.push(self.arr_lit()?);
                if self.eat_punct(",") {
                    continue;
                }
                self.expect_punct("]")?;
                break;
            }
        }
        self.leave();
        Ok(ArrLit::List(items, t))
    }

    /// Converts a literal to an element of type `dtype`.
    fn leaf_value(&self, leaf: Leaf, dtype: DType, tok: usize) -> R<f64> {
        match leaf {
            Leaf::Int(i) => Ok(i as f64),
            Leaf::Float(f) => Ok(f),
            Leaf::Bool(b) if dtype == DType::Bool => Ok(if b { 1.0 } else { 0.0 }),
            Leaf::Bool(_) => Err(self.error_at(tok, format!("a boolean is not a {dtype} value"))),
        }
    }

    /// Flattens `lit` row-major into `out`, checking it has `shape`.
    fn flatten(&self, lit: &ArrLit, shape: &[usize], dtype: DType, out: &mut Vec<f64>) -> R<()> {
        match (lit, shape.split_first()) {
            (ArrLit::Leaf(l, t), None) => {
                out.push(self.leaf_value(*l, dtype, *t)?);
                Ok(())
            }
            (ArrLit::List(items, t), Some((n, rest))) => {
                if items.len() != *n {
                    return Err(
                        self.error_at(*t, format!("expected {n} element(s) along this axis, found {}", items.len()))
                    );
                }
                for it in items {
                    self.flatten(it, rest, dtype, out)?;
                }
                Ok(())
            }
            (ArrLit::Leaf(_, t), Some(_)) => Err(self.error_at(*t, "expected a list (`[...]`), found a literal")),
            (ArrLit::List(_, t), None) => Err(self.error_at(*t, "expected a literal, found a list")),
        }
    }

    /// A constant with values `lit` and type `dtype[shape]`; `[]` stands
    /// for any empty tensor.
    fn make_const(&self, lit: &ArrLit, dtype: DType, shape: Vec<usize>) -> R<ConstValue> {
        let mut data = Vec::new();
        let empty = !shape.is_empty() && shape.contains(&0);
        if !(empty && matches!(lit, ArrLit::List(items, _) if items.is_empty())) {
            self.flatten(lit, &shape, dtype, &mut data)?;
        }
        Ok(ConstValue { dtype, shape, data })
    }

    /// The shape of a tensor type whose dimensions are all constants.
    fn const_shape(&self, t: &TensorType, tok: usize) -> R<Vec<usize>> {
        let mut shape = Vec::with_capacity(t.shape.len());
        for d in &t.shape {
            let c = d.as_const().and_then(|c| usize::try_from(c).ok()).ok_or_else(|| {
                self.error_at(tok, format!("a constant needs non-negative constant dimensions, found {t}"))
            })?;
            shape.push(c);
        }
        Ok(shape)
    }

    /// `f16[2] [1.0, 2.0]`.
    fn typed_array(&mut self) -> R<ConstValue> {
        let t = self.peek_idx();
        let ty = self.tensor_type()?;
        let shape = self.const_shape(&ty, t)?;
        let lit = self.arr_lit()?;
        self.make_const(&lit, ty.dtype, shape)
    }

    /// A constant array in a lambda or a `blocks` mask: typed, or bare
    /// values whose literals give the element type.
    fn inline_array(&mut self) -> R<ConstValue> {
        if matches!(self.peek(), Tk::Ident(_)) {
            return self.typed_array();
        }
        let t = self.peek_idx();
        let lit = self.arr_lit()?;
        // The shape: the lengths down the first elements.
        let mut shape = Vec::new();
        let mut cur = &lit;
        while let ArrLit::List(items, _) = cur {
            shape.push(items.len());
            match items.first() {
                Some(first) => cur = first,
                None => break,
            }
        }
        // The element type: from the literals.
        let (mut ints, mut floats, mut bools) = (false, false, false);
        let mut stack = vec![&lit];
        while let Some(l) = stack.pop() {
            match l {
                ArrLit::Leaf(Leaf::Int(_), _) => ints = true,
                ArrLit::Leaf(Leaf::Float(_), _) => floats = true,
                ArrLit::Leaf(Leaf::Bool(_), _) => bools = true,
                ArrLit::List(items, _) => stack.extend(items.iter()),
            }
        }
        let dtype = match (ints, floats, bools) {
            (_, _, true) if ints || floats => {
                return Err(self.error_at(t, "an array mixes booleans and numbers"));
            }
            (_, _, true) => DType::Bool,
            (_, true, _) => DType::F32,
            (true, _, _) => DType::I32,
            _ => {
                return Err(self.error_at(
                    t,
                    "cannot infer the element type of an empty array: write its type, as in `i32[0] []`",
                ));
            }
        };
        if shape.is_empty() {
            return Err(self.error_at(lit.tok(), "an array literal needs brackets (or a type, as in `i32[] 5`)"));
        }
        self.make_const(&lit, dtype, shape)
    }

    // -- graphs ----------------------------------------------------------

    fn graph(&mut self) -> R<Graph> {
        self.expect_ident("graph")?;
        let name = self.name("a graph name")?;
        self.expect_punct("(")?;
        let mut params: Vec<(String, TensorType)> = Vec::new();
        if !self.eat_punct(")") {
            loop {
                let pname = self.name("a parameter name")?;
                self.expect_punct(":")?;
                params.push((pname, self.tensor_type()?));
                if self.eat_punct(",") {
                    continue;
                }
                self.expect_punct(")")?;
                break;
            }
        }
        self.expect_punct("->")?;
        let mut result_types = Vec::new();
        if self.eat_punct("(") {
            if !self.eat_punct(")") {
                loop {
                    result_types.push(self.tensor_type()?);
                    if self.eat_punct(",") {
                        continue;
                    }
                    self.expect_punct(")")?;
                    break;
                }
            }
        } else {
            result_types.push(self.tensor_type()?);
        }
        self.expect_punct("{")?;
        let mut g = Graph::new(name);
        let mut values: HashMap<String, NodeId> = HashMap::new();
        let mut n_inputs = 0usize;
        loop {
            match self.peek() {
                Tk::Value(_) => self.node(&mut g, &mut values, &params, &mut n_inputs)?,
                Tk::Ident(s) if s == "return" => break,
                _ => return Err(self.expected("a node (`%0 = ...`) or `return`")),
            }
        }
        let ret = self.next();
        let mut results = Vec::new();
        if matches!(self.peek(), Tk::Value(_)) {
            loop {
                results.push(self.value_ref(&values)?);
                if !self.eat_punct(",") {
                    break;
                }
            }
        }
        self.expect_punct("}")?;
        if n_inputs < params.len() {
            return Err(self.error_at(
                ret,
                format!("parameter {n_inputs} (`{}`) has no `input {n_inputs}` node", short(&params[n_inputs].0)),
            ));
        }
        g.set_results(results, result_types);
        Ok(g)
    }

    /// `%name`, defined earlier.
    fn value_ref(&mut self, values: &HashMap<String, NodeId>) -> R<NodeId> {
        let Tk::Value(name) = self.peek().clone() else { return Err(self.expected("a value such as `%3`")) };
        let t = self.next();
        values
            .get(&name)
            .copied()
            .ok_or_else(|| self.error_at(t, format!("`%{}` is not defined before this use", short(&name))))
    }

    fn value_list(&mut self, values: &HashMap<String, NodeId>) -> R<Vec<NodeId>> {
        let mut out = Vec::new();
        if matches!(self.peek(), Tk::Value(_)) {
            loop {
                out.push(self.value_ref(values)?);
                if !self.eat_punct(",") {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// `(%a, %b)` after the head of `input`, `constant` and `mask`.
    fn extra_operands(&mut self, values: &HashMap<String, NodeId>) -> R<Vec<NodeId>> {
        if !self.eat_punct("(") {
            return Ok(Vec::new());
        }
        let out = self.value_list(values)?;
        self.expect_punct(")")?;
        Ok(out)
    }

    fn node(
        &mut self,
        g: &mut Graph,
        values: &mut HashMap<String, NodeId>,
        params: &[(String, TensorType)],
        n_inputs: &mut usize,
    ) -> R<()> {
        let def = self.next();
        let Tk::Value(vname) = self.toks[def].tk.clone() else { return Err(self.error_at(def, "expected a value")) };
        if values.contains_key(&vname) {
            return Err(self.error_at(def, format!("`%{}` is defined twice", short(&vname))));
        }
        self.expect_punct("=")?;
        let (opname, op_tok) = self.ident("an operator name")?;
        let (head, inputs) = match opname.as_str() {
            "input" => {
                let index = self.uint()?;
                (Head::Op(Op::Input { index }), self.extra_operands(values)?)
            }
            "constant" => {
                let head = if matches!(self.peek(), Tk::Ident(s) if DType::from_name(s).is_some()) {
                    Head::Op(Op::Constant(self.typed_array()?))
                } else {
                    Head::RawConstant(self.arr_lit()?)
                };
                (head, self.extra_operands(values)?)
            }
            "mask" => {
                let (m, _) = self.mask_expr()?;
                (Head::Op(Op::Mask(*m)), self.extra_operands(values)?)
            }
            _ => {
                let inputs = self.value_list(values)?;
                (Head::Op(self.op_attrs(&opname, op_tok)?), inputs)
            }
        };
        self.expect_punct(":")?;
        let ty_tok = self.peek_idx();
        let ty = self.ty()?;
        let op = match head {
            Head::Op(op) => op,
            Head::RawConstant(lit) => {
                let Type::Tensor(t) = &ty else {
                    return Err(self.error_at(ty_tok, "a constant needs a tensor type"));
                };
                let shape = self.const_shape(t, ty_tok)?;
                Op::Constant(self.make_const(&lit, t.dtype, shape)?)
            }
        };
        let name = self.trailing_name()?;
        let id = if let Op::Input { .. } = op {
            let Some((pname, pty)) = params.get(*n_inputs) else {
                return Err(self.error_at(
                    op_tok,
                    format!("more `input` nodes than the {} parameter(s) of the signature", params.len()),
                ));
            };
            *n_inputs += 1;
            if !inputs.is_empty() {
                // The printer shows them, but a parameter node cannot have any.
                return Err(self.error_at(op_tok, "an `input` node takes no operands"));
            }
            let id = g.add_param(pname.clone(), pty.clone(), None);
            let n = g.node_mut(id);
            n.op = op;
            n.ty = ty;
            n.name = name;
            id
        } else {
            let id = g.add_node(op, ty, &inputs, None);
            g.node_mut(id).name = name;
            id
        };
        values.insert(vname, id);
        Ok(())
    }

    /// The `// name` comment ending a node statement's line, if any.
    fn trailing_name(&mut self) -> R<Option<String>> {
        let i = self.idx;
        let Tk::Comment(text) = &self.toks[i].tk else { return Ok(None) };
        if self.toks[i].line != self.last_line {
            return Ok(None);
        }
        let text = text.clone();
        self.idx += 1;
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Ok(None);
        }
        let Some(body) = trimmed.strip_prefix('"') else { return Ok(Some(trimmed.to_string())) };
        let t = &self.toks[i];
        match unescape(body) {
            Ok((s, used)) if used == body.len() => Ok(Some(s)),
            Ok(_) => Err(TextError { line: t.line, column: t.col, message: "text after a quoted node name".into() }),
            Err((_, msg)) => Err(TextError { line: t.line, column: t.col, message: format!("node name: {msg}") }),
        }
    }

    /// The operator `name` and its `{...}` attributes.
    fn op_attrs(&mut self, name: &str, tok: usize) -> R<Op> {
        if let Some(u) = UnaryOp::from_name(name) {
            self.no_attrs()?;
            return Ok(Op::Unary(u));
        }
        if let Some(b) = BinaryOp::from_name(name) {
            self.no_attrs()?;
            return Ok(Op::Binary(b));
        }
        let mut axis: Option<usize> = None;
        if let Some(op) = ReduceOp::from_name(name) {
            let mut keepdims = false;
            self.attrs(&mut |p, k| {
                match k {
                    "axis" => axis = Some(p.uint()?),
                    "keepdims" => keepdims = p.bool()?,
                    _ => return Ok(false),
                }
                Ok(true)
            })?;
            return Ok(Op::Reduce { op, axis: self.required(axis, "axis", tok)?, keepdims });
        }
        Ok(match name {
            "matmul" => {
                self.no_attrs()?;
                Op::MatMul
            }
            "transpose" => {
                self.no_attrs()?;
                Op::Transpose
            }
            "where" => {
                self.no_attrs()?;
                Op::Where
            }
            "softmax" | "concat" => {
                self.attrs(&mut |p, k| {
                    if k != "axis" {
                        return Ok(false);
                    }
                    axis = Some(p.uint()?);
                    Ok(true)
                })?;
                let axis = self.required(axis, "axis", tok)?;
                if name == "softmax" {
                    Op::Softmax { axis }
                } else {
                    Op::Concat { axis }
                }
            }
            "permute" => {
                let mut perm = None;
                self.attrs(&mut |p, k| {
                    if k != "perm" {
                        return Ok(false);
                    }
                    perm = Some(p.list(&mut |p| p.uint())?);
                    Ok(true)
                })?;
                Op::Permute { perm: self.required(perm, "perm", tok)? }
            }
            "reshape" => {
                let mut shape = None;
                self.attrs(&mut |p, k| {
                    if k != "shape" {
                        return Ok(false);
                    }
                    shape = Some(p.dims()?);
                    Ok(true)
                })?;
                Op::Reshape { shape: self.required(shape, "shape", tok)? }
            }
            "slice" => {
                let (mut start, mut end) = (None, None);
                self.attrs(&mut |p, k| {
                    match k {
                        "axis" => axis = Some(p.uint()?),
                        "start" => start = Some(p.int()?),
                        "end" => end = Some(p.int()?),
                        _ => return Ok(false),
                    }
                    Ok(true)
                })?;
                Op::Slice {
                    axis: self.required(axis, "axis", tok)?,
                    start: self.required(start, "start", tok)?,
                    end: self.required(end, "end", tok)?,
                }
            }
            "repeat" => {
                let mut times = None;
                self.attrs(&mut |p, k| {
                    match k {
                        "axis" => axis = Some(p.uint()?),
                        "times" => times = Some(p.int()?),
                        _ => return Ok(false),
                    }
                    Ok(true)
                })?;
                Op::Repeat { times: self.required(times, "times", tok)?, axis: self.required(axis, "axis", tok)? }
            }
            "layernorm" | "rmsnorm" | "rope" => {
                let key = if name == "rope" { "base" } else { "eps" };
                let mut v = None;
                self.attrs(&mut |p, k| {
                    if k != key {
                        return Ok(false);
                    }
                    v = Some(p.float()?);
                    Ok(true)
                })?;
                let v = self.required(v, key, tok)?;
                match name {
                    "layernorm" => Op::LayerNorm { eps: v },
                    "rmsnorm" => Op::RmsNorm { eps: v },
                    _ => Op::Rope { base: v },
                }
            }
            "attention" => {
                let (mut scale, mut masked, mut score) = (None, false, None);
                self.attrs(&mut |p, k| {
                    match k {
                        "scale" => scale = Some(p.float()?),
                        "masked" => masked = p.bool()?,
                        "score" => {
                            p.expect_punct("(")?;
                            for (i, v) in ["s", "q", "k", "h"].into_iter().enumerate() {
                                if i > 0 {
                                    p.expect_punct(",")?;
                                }
                                p.expect_ident(v)?;
                            }
                            p.expect_punct(")")?;
                            p.expect_punct("=>")?;
                            score = Some(*p.scalar_expr()?.0);
                        }
                        _ => return Ok(false),
                    }
                    Ok(true)
                })?;
                Op::Attention { scale, masked, score }
            }
            _ => return Err(self.error_at(tok, format!("unknown operator `{}`", short(name)))),
        })
    }

    fn attrs(&mut self, f: &mut dyn FnMut(&mut Self, &str) -> R<bool>) -> R<()> {
        if !self.eat_punct("{") {
            return Ok(());
        }
        self.named_args("}", f)
    }

    fn no_attrs(&mut self) -> R<()> {
        self.attrs(&mut |_, _| Ok(false))
    }

    // -- masks -----------------------------------------------------------

    /// The `p` at the cursor, consumed, with its token index.
    fn eat_punct_tok(&mut self, p: &str) -> Option<usize> {
        if self.is_punct(p) {
            Some(self.next())
        } else {
            None
        }
    }

    /// A mask expression and the depth of its tree. `mask_expr`,
    /// `mask_and`, `mask_not` and `mask_atom` are the recursion path: kept
    /// small (see [`Parser::scalar_expr`]).
    fn mask_expr(&mut self) -> R<Mx> {
        self.enter()?;
        let mut lhs = self.mask_and()?;
        while let Some(t) = self.eat_punct_tok("|") {
            let rhs = self.mask_and()?;
            lhs = self.make_mask(true, lhs, rhs, t)?;
        }
        self.leave();
        Ok(lhs)
    }

    fn mask_and(&mut self) -> R<Mx> {
        let mut lhs = self.mask_not()?;
        while let Some(t) = self.eat_punct_tok("&") {
            let rhs = self.mask_not()?;
            lhs = self.make_mask(false, lhs, rhs, t)?;
        }
        Ok(lhs)
    }

    /// `!` in a loop (a run of 100 000 must not recurse), then the operand.
    fn mask_not(&mut self) -> R<Mx> {
        let nots = self.prefix_nots()?;
        let m = self.mask_atom()?;
        self.apply_nots(nots, m)
    }

    fn mask_atom(&mut self) -> R<Mx> {
        if !self.is_punct("(") {
            return self.mask_leaf();
        }
        self.next();
        let r = self.mask_expr()?;
        self.expect_punct(")")?;
        Ok(r)
    }

    /// `a | b` (`or`) or `a & b`.
    fn make_mask(&self, or: bool, (a, da): Mx, (b, db): Mx, tok: usize) -> R<Mx> {
        let d = da.max(db) + 1;
        self.check_tree_depth(d, tok)?;
        Ok((Box::new(if or { MaskExpr::Or(a, b) } else { MaskExpr::And(a, b) }), d))
    }

    fn prefix_nots(&mut self) -> R<Vec<usize>> {
        let mut nots = Vec::new();
        while let Some(t) = self.eat_punct_tok("!") {
            nots.push(t);
            self.check_tree_depth(nots.len(), t)?;
        }
        Ok(nots)
    }

    fn apply_nots(&self, mut nots: Vec<usize>, (mut m, mut depth): Mx) -> R<Mx> {
        while let Some(t) = nots.pop() {
            depth += 1;
            self.check_tree_depth(depth, t)?;
            m = Box::new(MaskExpr::Not(m));
        }
        Ok((m, depth))
    }

    fn operand_index(&mut self) -> R<usize> {
        let Tk::Operand(digits) = self.peek().clone() else { return Err(self.expected("an operand such as `$0`")) };
        let t = self.next();
        digits
            .parse::<i64>()
            .ok()
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| self.error_at(t, "operand position out of the 64-bit range"))
    }

    fn ints(&mut self) -> R<Vec<i64>> {
        self.list(&mut |p| p.int())
    }

    /// A built-in mask or a lambda.
    fn mask_leaf(&mut self) -> R<Mx> {
        let (word, t) = self.ident("a mask")?;
        let m = match word.as_str() {
            "causal" => MaskExpr::Causal,
            "local" => {
                self.expect_punct("(")?;
                let (mut left, mut right) = (None, None);
                self.named_args(")", &mut |p, k| {
                    match k {
                        "left" => left = Some(p.int()?),
                        "right" => right = Some(p.int()?),
                        _ => return Ok(false),
                    }
                    Ok(true)
                })?;
                MaskExpr::Local { left: self.required(left, "left", t)?, right: self.required(right, "right", t)? }
            }
            "window" | "sink" => {
                self.expect_punct("(")?;
                let v = self.int()?;
                self.expect_punct(")")?;
                if word == "window" {
                    MaskExpr::Window { w: v }
                } else {
                    MaskExpr::Sink { n: v }
                }
            }
            "dilated" => {
                self.expect_punct("(")?;
                let w = self.int()?;
                self.expect_punct(",")?;
                let d = self.int()?;
                self.expect_punct(")")?;
                MaskExpr::Dilated { w, d }
            }
            "strided" => {
                self.expect_punct("(")?;
                let stride = self.int()?;
                let mut offset = 0;
                if self.eat_punct(",") {
                    self.named_args(")", &mut |p, k| {
                        if k != "offset" {
                            return Ok(false);
                        }
                        offset = p.int()?;
                        Ok(true)
                    })?;
                } else {
                    self.expect_punct(")")?;
                }
                MaskExpr::Strided { stride, offset }
            }
            "neighborhood" => {
                self.expect_punct("(")?;
                let (mut kernel, mut grid, mut dilation, mut causal) = (None, None, None, None);
                self.named_args(")", &mut |p, k| {
                    match k {
                        "kernel" => kernel = Some(p.ints()?),
                        "grid" => grid = Some(p.ints()?),
                        "dilation" => dilation = Some(p.ints()?),
                        "causal" => causal = Some(p.list(&mut |p| p.bool())?),
                        _ => return Ok(false),
                    }
                    Ok(true)
                })?;
                let kernel = self.required(kernel, "kernel", t)?;
                let grid = self.required(grid, "grid", t)?;
                let dilation = dilation.unwrap_or_else(|| vec![1; kernel.len()]);
                let causal = causal.unwrap_or_else(|| vec![false; kernel.len()]);
                MaskExpr::Neighborhood { kernel, grid, dilation, causal }
            }
            "blocks" => {
                self.expect_punct("(")?;
                let layout = if matches!(self.peek(), Tk::Operand(_)) {
                    ArrayRef::Operand(self.operand_index()?)
                } else {
                    ArrayRef::Const(self.inline_array()?)
                };
                self.expect_punct(",")?;
                self.expect_ident("block")?;
                self.expect_punct("=")?;
                let bt = self.peek_idx();
                let block = self.ints()?;
                let block: [i64; 2] =
                    block.try_into().map_err(|_| self.error_at(bt, "`block` takes two sizes, as in `[64, 64]`"))?;
                self.expect_punct(")")?;
                MaskExpr::Blocks { layout, block }
            }
            "document" => {
                self.expect_punct("(")?;
                let ids = self.operand_index()?;
                self.expect_punct(")")?;
                MaskExpr::Document { ids }
            }
            "mask" => {
                self.expect_punct("(")?;
                for (i, v) in ["q", "k", "h"].into_iter().enumerate() {
                    if i > 0 {
                        self.expect_punct(",")?;
                    }
                    self.expect_ident(v)?;
                }
                self.expect_punct(")")?;
                self.expect_punct("=>")?;
                // The lambda's depth adds to the mask's.
                let (e, d) = self.scalar_expr()?;
                self.check_tree_depth(d + 1, t)?;
                return Ok((Box::new(MaskExpr::Lambda(*e)), d + 1));
            }
            _ => return Err(self.error_at(t, format!("unknown mask `{}`", short(&word)))),
        };
        Ok((Box::new(m), 1))
    }

    // -- the lambda language ---------------------------------------------

    /// A scalar expression and the depth of its tree.
    ///
    /// `scalar_expr`, `scalar_binary`, `scalar_unary`, `scalar_atom`,
    /// `scalar_paren`, `index`, `scalar_call` and `call_args` are the
    /// recursion path, as are the mask and array functions that say so. An
    /// unoptimised build gives every local of a function its own stack slot,
    /// so these keep few locals and leave error messages, literals and the
    /// like to helpers that return before the recursion goes deeper: the
    /// nesting limit must fit in a test thread's 2 MiB stack.
    fn scalar_expr(&mut self) -> R<Sx> {
        self.enter()?;
        let r = self.scalar_binary(0)?;
        self.leave();
        Ok(r)
    }

    /// Precedence climbing over operators binding tighter than `min`.
    fn scalar_binary(&mut self, min: u8) -> R<Sx> {
        let mut lhs = self.scalar_unary()?;
        let mut last_cmp = false;
        while let Some((op, tok)) = self.binary_operator(min, &mut last_cmp)? {
            let rhs = self.scalar_binary(super::print::binary_prec(op))?;
            lhs = self.make_binary(op, lhs, rhs, tok)?;
        }
        Ok(lhs)
    }

    /// The binary operator at the cursor, consumed, if it binds tighter
    /// than `min`.
    fn binary_operator(&mut self, min: u8, last_cmp: &mut bool) -> R<Option<(ScalarBinary, usize)>> {
        let i = self.peek_idx();
        if let Tk::Value(v) = &self.toks[i].tk {
            return Err(self.error_at(i, format!("write `% {0}` with a space (`%{0}` is a value name)", short(v))));
        }
        let Some(op) = scalar_binop(&self.toks[i].tk) else { return Ok(None) };
        if super::print::binary_prec(op) <= min {
            return Ok(None);
        }
        if op.is_comparison() {
            if *last_cmp {
                return Err(self.error_at(i, "comparisons do not chain: add parentheses"));
            }
            *last_cmp = true;
        }
        self.next();
        Ok(Some((op, i)))
    }

    fn make_binary(&self, op: ScalarBinary, (a, da): Sx, (b, db): Sx, tok: usize) -> R<Sx> {
        let d = da.max(db) + 1;
        self.check_tree_depth(d, tok)?;
        Ok((Box::new(ScalarExpr::Binary(op, a, b)), d))
    }

    /// Whether the cursor is at a negative literal: `-3`, `-0.5`, `-inf`,
    /// the number right after the minus.
    fn at_negative_literal(&mut self) -> bool {
        let i = self.peek_idx();
        if !matches!(self.toks[i].tk, Tk::Punct("-")) {
            return false;
        }
        let Some(n) = self.toks.get(i + 1) else { return false };
        n.start == self.toks[i].end
            && match &n.tk {
                Tk::Int(_) | Tk::Float(_) => true,
                Tk::Ident(s) => s == "inf" || s == "nan",
                _ => false,
            }
    }

    /// Prefix operators (read in a loop: a run of 100 000 `!` must not
    /// recurse), then the operand.
    fn scalar_unary(&mut self) -> R<Sx> {
        let ops = self.prefix_operators()?;
        let operand = if self.at_negative_literal() { self.negative_literal()? } else { self.scalar_atom()? };
        self.apply_prefix(ops, operand)
    }

    fn prefix_operators(&mut self) -> R<Vec<(ScalarUnary, usize)>> {
        let mut ops = Vec::new();
        loop {
            if self.at_negative_literal() {
                return Ok(ops);
            }
            let i = self.peek_idx();
            let op = match &self.toks[i].tk {
                Tk::Punct("-") => ScalarUnary::Neg,
                Tk::Punct("!") => ScalarUnary::Not,
                _ => return Ok(ops),
            };
            ops.push((op, i));
            self.check_tree_depth(ops.len(), i)?;
            self.next();
        }
    }

    fn apply_prefix(&self, mut ops: Vec<(ScalarUnary, usize)>, (mut e, mut depth): Sx) -> R<Sx> {
        while let Some((op, t)) = ops.pop() {
            depth += 1;
            self.check_tree_depth(depth, t)?;
            e = Box::new(ScalarExpr::Unary(op, e));
        }
        Ok((e, depth))
    }

    /// `leaf` reads the sign with the digits, so `i64::MIN` parses.
    fn negative_literal(&mut self) -> R<Sx> {
        let i = self.peek_idx();
        match self.leaf()? {
            Leaf::Int(v) => Ok((Box::new(ScalarExpr::Int(v)), 1)),
            Leaf::Float(f) => Ok((Box::new(ScalarExpr::Float(f)), 1)),
            Leaf::Bool(_) => Err(self.error_at(i, "expected a number after `-`")),
        }
    }

    fn scalar_atom(&mut self) -> R<Sx> {
        match self.atom_kind() {
            Atom::Paren => self.scalar_paren(),
            Atom::Array => {
                let a = self.array_ref()?;
                self.index(a)
            }
            Atom::Call => self.scalar_call(),
            Atom::Leaf => self.scalar_leaf(),
        }
    }

    fn atom_kind(&mut self) -> Atom {
        let is_call = |name: &str| {
            SCALAR_FUNCS.iter().any(|(n, _)| *n == name) || matches!(name, "min" | "max" | "where" | "sym" | "nan")
        };
        match self.peek().clone() {
            Tk::Punct("(") => Atom::Paren,
            Tk::Punct("[") | Tk::Operand(_) => Atom::Array,
            // A function name followed by `(` is a call; another name is a
            // call (to report) only when no value follows the `(`: a symbol
            // may end a lambda before a mask's operands, `... => q < T (%2)`.
            Tk::Ident(name)
                if self.is_punct_at_next("(") && (is_call(&name) || !matches!(self.peek3(), Tk::Value(_))) =>
            {
                Atom::Call
            }
            Tk::Ident(name) if DType::from_name(&name).is_some() && self.is_punct_at_next("[") => Atom::Array,
            _ => Atom::Leaf,
        }
    }

    fn scalar_paren(&mut self) -> R<Sx> {
        self.next();
        let r = self.scalar_expr()?;
        self.expect_punct(")")?;
        Ok(r)
    }

    /// `$0`, `[1, 2]` or `f16[2] [1.0, 2.0]`.
    fn array_ref(&mut self) -> R<ArrayRef> {
        if matches!(self.peek(), Tk::Operand(_)) {
            Ok(ArrayRef::Operand(self.operand_index()?))
        } else {
            Ok(ArrayRef::Const(self.inline_array()?))
        }
    }

    /// Literals, lambda variables and symbols.
    fn scalar_leaf(&mut self) -> R<Sx> {
        let t = self.peek_idx();
        let e = match self.toks[t].tk.clone() {
            Tk::Int(s) => {
                self.next();
                ScalarExpr::Int(s.parse::<i64>().map_err(|_| self.error_at(t, "integer out of the 64-bit range"))?)
            }
            Tk::Float(s) => {
                self.next();
                ScalarExpr::Float(self.parse_float_text(&s, t)?)
            }
            Tk::Ident(name) => {
                self.next();
                if let Some((_, v)) = SCALAR_VARS.iter().find(|(n, _)| *n == name) {
                    ScalarExpr::Var(*v)
                } else {
                    match name.as_str() {
                        "true" | "false" => ScalarExpr::Bool(name == "true"),
                        "inf" => ScalarExpr::Float(f64::INFINITY),
                        "nan" => ScalarExpr::Float(f64::NAN),
                        _ => ScalarExpr::Sym(name),
                    }
                }
            }
            _ => return Err(self.expected("an expression")),
        };
        Ok((Box::new(e), 1))
    }

    /// `[i, j, ...]` after an array.
    fn index(&mut self, array: ArrayRef) -> R<Sx> {
        let t = self.expect_punct("[")?;
        let mut indices = Vec::new();
        // A constant array's nesting counts, so that whatever parses prints
        // to text that parses.
        let mut depth = array_rank(&array);
        if !self.eat_punct("]") {
            loop {
                let (e, d) = self.scalar_expr()?;
                depth = depth.max(d);
                indices.push(*e);
                if self.eat_punct(",") {
                    continue;
                }
                self.expect_punct("]")?;
                break;
            }
        }
        self.check_tree_depth(depth + 1, t)?;
        Ok((Box::new(ScalarExpr::Index { array, indices }), depth + 1))
    }

    fn is_punct_at_next(&mut self, p: &str) -> bool {
        matches!(self.peek2(), Tk::Punct(q) if *q == p)
    }

    /// `name(...)`: a function, `min`/`max`/`where`, `sym(...)` or
    /// `nan(0x...)`.
    fn scalar_call(&mut self) -> R<Sx> {
        let (name, t) = self.ident("a function")?;
        if name == "nan" || name == "sym" {
            return self.scalar_special_call(&name);
        }
        let args = self.call_args(t)?;
        self.build_call(&name, args, t)
    }

    /// `(a, b, ...)`.
    fn call_args(&mut self, tok: usize) -> R<(Vec<ScalarExpr>, usize)> {
        self.expect_punct("(")?;
        let mut args = Vec::new();
        let mut depth = 0;
        if !self.eat_punct(")") {
            loop {
                let (e, d) = self.scalar_expr()?;
                depth = depth.max(d);
                args.push(*e);
                if self.eat_punct(",") {
                    continue;
                }
                self.expect_punct(")")?;
                break;
            }
        }
        self.check_tree_depth(depth + 1, tok)?;
        Ok((args, depth + 1))
    }

    /// `nan(0x...)` and `sym(name)`, after the name.
    fn scalar_special_call(&mut self, name: &str) -> R<Sx> {
        if name == "nan" {
            return Ok((Box::new(ScalarExpr::Float(self.nan_payload()?)), 1));
        }
        self.expect_punct("(")?;
        let s = self.name("a symbol name")?;
        self.expect_punct(")")?;
        Ok((Box::new(ScalarExpr::Sym(s)), 1))
    }

    fn build_call(&self, name: &str, (args, depth): (Vec<ScalarExpr>, usize), t: usize) -> R<Sx> {
        let unary = SCALAR_FUNCS.iter().find(|(n, _)| *n == name).map(|(_, u)| *u);
        let n = match name {
            "min" | "max" => 2,
            "where" => 3,
            _ if unary.is_some() => 1,
            _ => return Err(self.error_at(t, format!("unknown function `{}`", short(name)))),
        };
        if args.len() != n {
            return Err(self.error_at(t, format!("`{name}` takes {n} argument(s), found {}", args.len())));
        }
        let mut it = args.into_iter().map(Box::new);
        let mut arg = || it.next().ok_or_else(|| self.error_at(t, "missing argument"));
        let e = match (name, unary) {
            (_, Some(u)) => ScalarExpr::Unary(u, arg()?),
            ("min", _) => ScalarExpr::Binary(ScalarBinary::Min, arg()?, arg()?),
            ("max", _) => ScalarExpr::Binary(ScalarBinary::Max, arg()?, arg()?),
            _ => ScalarExpr::Select(arg()?, arg()?, arg()?),
        };
        Ok((Box::new(e), depth))
    }
}

/// A scalar expression and the depth of its tree; boxed, so that the
/// results passed up the recursion path are small.
type Sx = (Box<ScalarExpr>, usize);
/// A mask expression and the depth of its tree, boxed.
type Mx = (Box<MaskExpr>, usize);

/// What an atom of the lambda language starts with.
enum Atom {
    Paren,
    Array,
    Call,
    Leaf,
}

fn array_rank(a: &ArrayRef) -> usize {
    match a {
        ArrayRef::Const(c) => c.shape.len(),
        ArrayRef::Operand(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<Tk> {
        let toks = Lexer { src: text, bytes: text.as_bytes(), pos: 0, line: 1, col: 1 }.tokens().unwrap();
        toks.into_iter().map(|t| t.tk).collect()
    }

    #[test]
    fn lexer_tokens() {
        use Tk::*;
        assert_eq!(
            kinds("x1 12 1.5 1e-5 2.5E+3 0x1F %a %0 $3 => -> <= != % \"s\\n\\u{41}\" // c"),
            vec![
                Ident("x1".into()),
                Int("12".into()),
                Float("1.5".into()),
                Float("1e-5".into()),
                Float("2.5E+3".into()),
                Hex("1F".into()),
                Value("a".into()),
                Value("0".into()),
                Operand("3".into()),
                Punct("=>"),
                Punct("->"),
                Punct("<="),
                Punct("!="),
                Punct("%"),
                Str("s\nA".into()),
                Comment(" c".into()),
                Eof,
            ]
        );
        // `1.` is an integer then a stray dot; `1e` is malformed.
        assert!(Lexer { src: "1.x", bytes: b"1.x", pos: 0, line: 1, col: 1 }.tokens().is_err());
        assert!(Lexer { src: "1e", bytes: b"1e", pos: 0, line: 1, col: 1 }.tokens().is_err());
        assert!(Lexer { src: "$", bytes: b"$", pos: 0, line: 1, col: 1 }.tokens().is_err());
    }

    #[test]
    fn lexer_positions_count_characters() {
        let text = "ü \"é\"\n  %x";
        let toks = Lexer { src: text, bytes: text.as_bytes(), pos: 0, line: 1, col: 1 }.tokens();
        // `ü` is not an identifier character.
        let e = toks.unwrap_err();
        assert_eq!((e.line, e.column), (1, 1));
        let text = "\"é\" x\n  %x";
        let toks = Lexer { src: text, bytes: text.as_bytes(), pos: 0, line: 1, col: 1 }.tokens().unwrap();
        assert_eq!((toks[1].line, toks[1].col), (1, 5));
        assert_eq!((toks[2].line, toks[2].col), (2, 3));
    }

    #[test]
    fn string_escapes() {
        assert_eq!(unescape(r#"a\"b\\c\n\t\r\0\'\u{1F600}" tail"#), Ok(("a\"b\\c\n\t\r\0'\u{1F600}".to_string(), 27)));
        assert!(unescape(r#"\q""#).is_err());
        assert!(unescape(r#"\u{110000}""#).is_err());
        assert!(unescape(r#"\u{}""#).is_err());
        assert!(unescape(r#"\u{1234567}""#).is_err());
        assert!(unescape("open").is_err());
        assert!(unescape("\\").is_err());
    }

    fn dim_of(text: &str) -> R<Dim> {
        let mut p = Parser::new(text)?;
        let d = p.dim()?;
        if !p.at_eof() {
            return Err(p.error_here("trailing"));
        }
        Ok(d)
    }

    #[test]
    fn dims_parse_their_display() {
        let t = Dim::sym("T");
        let h = Dim::sym("H");
        let ht = h.checked_mul(&t).unwrap();
        let cases = [
            Dim::constant(0),
            Dim::constant(64),
            Dim::constant(-3),
            Dim::constant(i64::MAX),
            Dim::constant(i64::MIN),
            t.clone(),
            t.checked_neg().unwrap(),
            Dim::constant(2).checked_mul(&ht).unwrap().checked_add(&t).unwrap().checked_sub(&Dim::constant(1)).unwrap(),
            ht.checked_mul(&t).unwrap().checked_sub(&h).unwrap(),
            Dim::constant(i64::MIN).checked_mul(&t).unwrap().checked_add(&Dim::constant(i64::MIN)).unwrap(),
        ];
        for d in cases {
            assert_eq!(dim_of(&d.to_string()), Ok(d.clone()), "{d}");
        }
        // Non-canonical spellings mean the same polynomial.
        assert_eq!(dim_of("T*2 + 3*4 - T").unwrap().to_string(), "T + 12");
        assert_eq!(dim_of("T - T").unwrap(), Dim::constant(0));
        assert!(dim_of("9223372036854775808").is_err());
        assert!(dim_of("-9223372036854775808 - 1").is_err());
        assert!(dim_of("4611686018427387904 * 2").is_err());
        assert!(dim_of("T +").is_err());
        assert!(dim_of("2 T").is_err());
    }

    fn lambda(body: &str) -> R<ScalarExpr> {
        let mut p = Parser::new(body)?;
        let e = p.scalar_expr()?.0;
        if !p.at_eof() {
            return Err(p.error_here("trailing"));
        }
        Ok(*e)
    }

    #[test]
    fn negative_literals_need_the_number_right_after_the_minus() {
        assert_eq!(lambda("-3"), Ok(ScalarExpr::Int(-3)));
        assert_eq!(lambda("- 3"), Ok(ScalarExpr::Unary(ScalarUnary::Neg, Box::new(ScalarExpr::Int(3)))));
        assert_eq!(lambda("-(3)"), Ok(ScalarExpr::Unary(ScalarUnary::Neg, Box::new(ScalarExpr::Int(3)))));
        assert_eq!(lambda("-9223372036854775808"), Ok(ScalarExpr::Int(i64::MIN)));
        assert!(lambda("9223372036854775808").is_err());
        assert_eq!(lambda("-inf"), Ok(ScalarExpr::Float(f64::NEG_INFINITY)));
        assert_eq!(
            lambda("q - -3"),
            Ok(ScalarExpr::binary(ScalarBinary::Sub, ScalarExpr::Var(LambdaVar::Q), ScalarExpr::Int(-3)))
        );
        assert_eq!(
            lambda("q -3"),
            Ok(ScalarExpr::binary(ScalarBinary::Sub, ScalarExpr::Var(LambdaVar::Q), ScalarExpr::Int(3)))
        );
        assert_eq!(
            lambda("--q"),
            Ok(ScalarExpr::Unary(
                ScalarUnary::Neg,
                Box::new(ScalarExpr::Unary(ScalarUnary::Neg, Box::new(ScalarExpr::Var(LambdaVar::Q))))
            ))
        );
        match lambda("-0.0") {
            Ok(ScalarExpr::Float(f)) => assert_eq!(f.to_bits(), (-0.0f64).to_bits()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn calls_and_symbols() {
        assert_eq!(lambda("sym(q)"), Ok(ScalarExpr::Sym("q".into())));
        assert_eq!(lambda("sym(\"a b\")"), Ok(ScalarExpr::Sym("a b".into())));
        assert_eq!(lambda("abs"), Ok(ScalarExpr::Sym("abs".into())));
        assert_eq!(lambda("not(true)"), Ok(ScalarExpr::Unary(ScalarUnary::Not, Box::new(ScalarExpr::Bool(true)))));
        assert_eq!(lambda("neg(1)"), Ok(ScalarExpr::Unary(ScalarUnary::Neg, Box::new(ScalarExpr::Int(1)))));
        match lambda("nan(0x7ff8000000000001)") {
            Ok(ScalarExpr::Float(f)) => assert_eq!(f.to_bits(), 0x7ff8_0000_0000_0001),
            other => panic!("{other:?}"),
        }
        assert!(lambda("where(q, k)").unwrap_err().message.contains("takes 3"));
        assert!(lambda("$0").is_err(), "an operand must be indexed");
        assert!(lambda("[1, 2]").is_err(), "an array must be indexed");
        assert!(lambda("[[1], [2, 3]][q, k]").is_err(), "ragged");
        assert_eq!(lambda("(q)"), Ok(ScalarExpr::Var(LambdaVar::Q)));
    }
}
