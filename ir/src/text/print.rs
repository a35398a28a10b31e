//! The printer of the text form. See the [module docs](super) for the
//! grammar; this file is its inverse of `parse.rs`.
//!
//! Printing never fails and never panics, even on a graph the verifier would
//! reject: a cyclic graph lists its nodes in insertion order, a missing
//! result prints as `%missing_n12`, and an inconsistent constant prints in a
//! form the parser rejects with a message saying why.

use std::collections::HashMap;
use std::fmt::Write;

use super::{is_ident, RESERVED};
use crate::graph::{Graph, Module, NodeId};
use crate::mask::{ArrayRef, ConstValue, MaskExpr, ScalarBinary, ScalarExpr, ScalarUnary};
use crate::op::Op;
use crate::types::{DType, Dim, TensorType, Type};

/// Prints a graph in the text form; the text ends with a line break.
pub fn print_graph(g: &Graph) -> String {
    let order = g.topo_order().unwrap_or_else(|| g.node_ids());
    let num: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let value = |id: NodeId| match num.get(&id) {
        Some(i) => format!("%{i}"),
        None => format!("%missing_{id}"),
    };
    let mut out = String::new();
    out.push_str("graph ");
    out.push_str(&name_text(&g.name));
    out.push('(');
    for (i, p) in g.params().iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{}: {}", name_text(&p.name), p.ty);
    }
    out.push_str(") -> ");
    let rt = g.result_types();
    if rt.len() == 1 {
        let _ = write!(out, "{}", rt[0]);
    } else {
        let parts: Vec<String> = rt.iter().map(|t| t.to_string()).collect();
        let _ = write!(out, "({})", parts.join(", "));
    }
    out.push_str(" {\n");
    for (i, id) in order.iter().enumerate() {
        let node = g.node(*id);
        let inputs: Vec<String> = g.inputs(*id).into_iter().map(value).collect();
        let _ = write!(out, "  %{i} = ");
        write_op(&mut out, &node.op, &node.ty, &inputs);
        let _ = write!(out, " : {}", node.ty);
        if let Some(name) = &node.name {
            out.push_str("  // ");
            out.push_str(&comment_name(name));
        }
        out.push('\n');
    }
    out.push_str("  return");
    for (i, r) in g.results().iter().enumerate() {
        out.push_str(if i == 0 { " " } else { ", " });
        out.push_str(&value(*r));
    }
    out.push_str("\n}\n");
    out
}

/// Prints every graph of a module, separated by a blank line.
pub fn print_module(m: &Module) -> String {
    m.graphs.iter().map(print_graph).collect::<Vec<_>>().join("\n")
}

/// An identifier as is, anything else as a quoted string.
pub(crate) fn name_text(s: &str) -> String {
    if is_ident(s) {
        s.to_string()
    } else {
        format!("{s:?}")
    }
}

/// A `let` name after `//`: as is unless the parser would read it back
/// differently (empty, surrounding spaces, a leading quote, control
/// characters), then quoted.
fn comment_name(s: &str) -> String {
    if s.is_empty() || s.trim() != s || s.starts_with('"') || s.chars().any(char::is_control) {
        format!("{s:?}")
    } else {
        s.to_string()
    }
}

/// `{:?}`, with `inf`, `-inf`, `nan` and `nan(0x...)` for other NaNs.
pub(crate) fn float_text(v: f64) -> String {
    if v.is_nan() {
        if v.to_bits() == f64::NAN.to_bits() {
            "nan".to_string()
        } else {
            format!("nan(0x{:016x})", v.to_bits())
        }
    } else if v == f64::INFINITY {
        "inf".to_string()
    } else if v == f64::NEG_INFINITY {
        "-inf".to_string()
    } else {
        format!("{v:?}")
    }
}

/// Whether `v` prints as an integer and parses back to the same bits.
fn canonical_int(v: f64) -> bool {
    v.is_finite() && v.fract() == 0.0 && v.abs() <= 9_007_199_254_740_992.0 && !(v == 0.0 && v.is_sign_negative())
}

fn canonical_bool(v: f64) -> bool {
    v.to_bits() == 0f64.to_bits() || v.to_bits() == 1f64.to_bits()
}

/// One element of a constant of type `dtype`: `true`/`false` for bool,
/// an integer for i32, a float otherwise (and for any value the element
/// type cannot hold exactly, so it still round-trips).
fn elem_text(dtype: DType, v: f64) -> String {
    match dtype {
        DType::Bool if canonical_bool(v) => (if v == 1.0 { "true" } else { "false" }).to_string(),
        DType::I32 if canonical_int(v) => format!("{}", v as i64),
        _ => float_text(v),
    }
}

/// The element count the shape calls for, if it does not overflow.
fn shape_product(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, d| acc.checked_mul(*d))
}

/// Whether the constant's data agrees with its shape.
fn consistent(c: &ConstValue) -> bool {
    shape_product(&c.shape) == Some(c.data.len())
}

/// The values of a constant, nested by rank (`[[1, 2], [3, 4]]`), a bare
/// literal for rank 0, `[]` for any empty tensor. An inconsistent constant
/// prints its data as one flat list, which the parser rejects.
fn write_values(out: &mut String, c: &ConstValue) {
    if !consistent(c) {
        write_flat(out, c.dtype, &c.data);
        return;
    }
    if c.shape.is_empty() {
        out.push_str(&elem_text(c.dtype, c.data[0]));
    } else if c.data.is_empty() {
        out.push_str("[]");
    } else {
        write_nested(out, c.dtype, &c.shape, &c.data);
    }
}

fn write_flat(out: &mut String, dtype: DType, data: &[f64]) {
    out.push('[');
    for (i, v) in data.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&elem_text(dtype, *v));
    }
    out.push(']');
}

/// `data` is non-empty and its length is the product of `shape` (rank >= 1),
/// so every dimension is at least 1 and the output is proportional to it.
fn write_nested(out: &mut String, dtype: DType, shape: &[usize], data: &[f64]) {
    if shape.len() == 1 {
        write_flat(out, dtype, data);
        return;
    }
    let chunk = data.len() / shape[0];
    out.push('[');
    for (i, part) in data.chunks(chunk).enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_nested(out, dtype, &shape[1..], part);
    }
    out.push(']');
}

/// The tensor type a constant describes, if its dimensions fit in `i64`.
fn const_type(c: &ConstValue) -> Option<TensorType> {
    let shape = c.shape.iter().map(|&d| i64::try_from(d).ok().map(Dim::constant)).collect::<Option<Vec<Dim>>>()?;
    Some(TensorType::new(c.dtype, shape))
}

/// `f16[2] [1.0, 2.0]`: a constant with its own type.
fn write_typed_array(out: &mut String, c: &ConstValue) {
    out.push_str(c.dtype.name());
    out.push('[');
    for (i, d) in c.shape.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{d}");
    }
    out.push_str("] ");
    write_values(out, c);
}

/// A constant array inside a lambda or a `blocks` mask: bare values when the
/// parser can infer the type back from them, the typed form otherwise.
fn write_inline_array(out: &mut String, c: &ConstValue) {
    let inferable = !c.shape.is_empty()
        && !c.data.is_empty()
        && consistent(c)
        && match c.dtype {
            DType::F32 => true,
            DType::I32 => c.data.iter().all(|v| canonical_int(*v)),
            DType::Bool => c.data.iter().all(|v| canonical_bool(*v)),
            DType::F16 | DType::BF16 => false,
        };
    if inferable {
        write_values(out, c);
    } else {
        write_typed_array(out, c);
    }
}

fn write_array(out: &mut String, a: &ArrayRef) {
    match a {
        ArrayRef::Operand(i) => {
            let _ = write!(out, "${i}");
        }
        ArrayRef::Const(c) => write_inline_array(out, c),
    }
}

fn write_extra(out: &mut String, inputs: &[String]) {
    if !inputs.is_empty() {
        let _ = write!(out, " ({})", inputs.join(", "));
    }
}

fn dims_text(dims: &[Dim]) -> String {
    let parts: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

fn list_text<T: std::fmt::Display>(xs: &[T]) -> String {
    let parts: Vec<String> = xs.iter().map(|x| x.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

fn write_op(out: &mut String, op: &Op, ty: &Type, inputs: &[String]) {
    match op {
        Op::Input { index } => {
            let _ = write!(out, "input {index}");
            write_extra(out, inputs);
            return;
        }
        Op::Constant(c) => {
            out.push_str("constant ");
            if consistent(c) && const_type(c).is_some_and(|t| Type::Tensor(t) == *ty) {
                write_values(out, c);
            } else {
                write_typed_array(out, c);
            }
            write_extra(out, inputs);
            return;
        }
        Op::Mask(m) => {
            out.push_str("mask ");
            write_mask(out, m, 0);
            write_extra(out, inputs);
            return;
        }
        _ => {}
    }
    out.push_str(op.name());
    if !inputs.is_empty() {
        out.push(' ');
        out.push_str(&inputs.join(", "));
    }
    let attrs: Vec<String> = match op {
        Op::Reduce { axis, keepdims, .. } => vec![format!("axis = {axis}"), format!("keepdims = {keepdims}")],
        Op::Softmax { axis } | Op::Concat { axis } => vec![format!("axis = {axis}")],
        Op::Permute { perm } => vec![format!("perm = {}", list_text(perm))],
        Op::Reshape { shape } => vec![format!("shape = {}", dims_text(shape))],
        Op::Slice { axis, start, end } => {
            vec![format!("axis = {axis}"), format!("start = {start}"), format!("end = {end}")]
        }
        Op::Repeat { times, axis } => vec![format!("times = {times}"), format!("axis = {axis}")],
        Op::LayerNorm { eps } | Op::RmsNorm { eps } => vec![format!("eps = {}", float_text(*eps))],
        Op::Rope { base } => vec![format!("base = {}", float_text(*base))],
        Op::Attention { scale, masked, score } => {
            let mut v = Vec::new();
            if *masked {
                v.push("masked = true".to_string());
            }
            if let Some(s) = scale {
                v.push(format!("scale = {}", float_text(*s)));
            }
            if let Some(e) = score {
                let mut t = String::from("score = (s, q, k, h) => ");
                write_scalar(&mut t, e, 0);
                v.push(t);
            }
            v
        }
        _ => Vec::new(),
    };
    if !attrs.is_empty() {
        let _ = write!(out, " {{{}}}", attrs.join(", "));
    }
}

/// Binding power of a mask expression: `|` 1, `&` 2, `!` 3, atoms 4; a
/// lambda 0, since its body extends as far as it can.
fn mask_prec(m: &MaskExpr) -> u8 {
    match m {
        MaskExpr::Or(..) => 1,
        MaskExpr::And(..) => 2,
        MaskExpr::Not(_) => 3,
        MaskExpr::Lambda(_) => 0,
        _ => 4,
    }
}

fn write_mask(out: &mut String, m: &MaskExpr, min: u8) {
    let paren = mask_prec(m) < min;
    if paren {
        out.push('(');
    }
    match m {
        MaskExpr::Causal => out.push_str("causal"),
        MaskExpr::Local { left, right } => {
            let _ = write!(out, "local(left = {left}, right = {right})");
        }
        MaskExpr::Window { w } => {
            let _ = write!(out, "window({w})");
        }
        MaskExpr::Dilated { w, d } => {
            let _ = write!(out, "dilated({w}, {d})");
        }
        MaskExpr::Sink { n } => {
            let _ = write!(out, "sink({n})");
        }
        MaskExpr::Strided { stride, offset } => {
            let _ = write!(out, "strided({stride}, offset = {offset})");
        }
        MaskExpr::Neighborhood { kernel, grid, dilation, causal } => {
            let _ = write!(
                out,
                "neighborhood(kernel = {}, grid = {}, dilation = {}, causal = {})",
                list_text(kernel),
                list_text(grid),
                list_text(dilation),
                list_text(causal)
            );
        }
        MaskExpr::Blocks { layout, block } => {
            out.push_str("blocks(");
            write_array(out, layout);
            let _ = write!(out, ", block = [{}, {}])", block[0], block[1]);
        }
        MaskExpr::Document { ids } => {
            let _ = write!(out, "document(${ids})");
        }
        MaskExpr::Lambda(e) => {
            out.push_str("mask(q, k, h) => ");
            write_scalar(out, e, 0);
        }
        MaskExpr::Or(a, b) => {
            write_mask(out, a, 1);
            out.push_str(" | ");
            write_mask(out, b, 2);
        }
        MaskExpr::And(a, b) => {
            write_mask(out, a, 2);
            out.push_str(" & ");
            write_mask(out, b, 3);
        }
        MaskExpr::Not(a) => {
            out.push('!');
            write_mask(out, a, 3);
        }
    }
    if paren {
        out.push(')');
    }
}

/// Binding power of a binary operator of the lambda language (the
/// frontend's): `|` 1, `&` 2, comparisons 3, `+ -` 4, `* / %` 5.
pub(crate) fn binary_prec(op: ScalarBinary) -> u8 {
    match op {
        ScalarBinary::Or => 1,
        ScalarBinary::And => 2,
        ScalarBinary::Lt
        | ScalarBinary::Le
        | ScalarBinary::Gt
        | ScalarBinary::Ge
        | ScalarBinary::Eq
        | ScalarBinary::Ne => 3,
        ScalarBinary::Add | ScalarBinary::Sub => 4,
        ScalarBinary::Mul | ScalarBinary::Div | ScalarBinary::Mod => 5,
        // Calls.
        ScalarBinary::Min | ScalarBinary::Max => 7,
    }
}

fn sym_text(name: &str) -> String {
    if is_ident(name) && !RESERVED.contains(&name) {
        name.to_string()
    } else {
        format!("sym({})", name_text(name))
    }
}

/// Prints `e`, in parentheses when it binds looser than `min`.
fn write_scalar(out: &mut String, e: &ScalarExpr, min: u8) {
    match e {
        ScalarExpr::Var(v) => out.push_str(v.name()),
        ScalarExpr::Int(i) => {
            let _ = write!(out, "{i}");
        }
        ScalarExpr::Float(f) => out.push_str(&float_text(*f)),
        ScalarExpr::Bool(b) => {
            let _ = write!(out, "{b}");
        }
        ScalarExpr::Sym(s) => out.push_str(&sym_text(s)),
        ScalarExpr::Index { array, indices } => {
            write_array(out, array);
            out.push('[');
            for (i, x) in indices.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_scalar(out, x, 0);
            }
            out.push(']');
        }
        ScalarExpr::Unary(u, a) => {
            match u {
                ScalarUnary::Neg => out.push_str("-("),
                ScalarUnary::Not => out.push_str("!("),
                _ => {
                    out.push_str(u.name());
                    out.push('(');
                }
            }
            write_scalar(out, a, 0);
            out.push(')');
        }
        ScalarExpr::Binary(op, a, b) => match op.symbol() {
            None => {
                out.push_str(if *op == ScalarBinary::Min { "min(" } else { "max(" });
                write_scalar(out, a, 0);
                out.push_str(", ");
                write_scalar(out, b, 0);
                out.push(')');
            }
            Some(sym) => {
                let p = binary_prec(*op);
                let paren = p < min;
                if paren {
                    out.push('(');
                }
                // Left-associative; comparisons do not chain, so a
                // comparison operand of a comparison gets parentheses.
                let left = if op.is_comparison() { p + 1 } else { p };
                write_scalar(out, a, left);
                let _ = write!(out, " {sym} ");
                write_scalar(out, b, p + 1);
                if paren {
                    out.push(')');
                }
            }
        },
        ScalarExpr::Select(c, a, b) => {
            out.push_str("where(");
            write_scalar(out, c, 0);
            out.push_str(", ");
            write_scalar(out, a, 0);
            out.push_str(", ");
            write_scalar(out, b, 0);
            out.push(')');
        }
    }
}

/// A mask expression in the text form's syntax (`causal & window(64)`);
/// operands print as `$0`, `$1`, … This is the "canonical mask text" that
/// `tdlc explain` reports.
pub fn mask_text(m: &MaskExpr) -> String {
    let mut out = String::new();
    write_mask(&mut out, m, 0);
    out
}

/// A lambda expression in the text form's syntax (`s - $4[h] * abs(q - k)`).
pub fn scalar_text(e: &ScalarExpr) -> String {
    let mut out = String::new();
    write_scalar(&mut out, e, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_so_they_read_back_exactly() {
        assert_eq!(float_text(1.0), "1.0");
        assert_eq!(float_text(30.0), "30.0");
        assert_eq!(float_text(0.1), "0.1");
        assert_eq!(float_text(1e-5), "1e-5");
        assert_eq!(float_text(1e300), "1e300");
        assert_eq!(float_text(-0.0), "-0.0");
        assert_eq!(float_text(f64::INFINITY), "inf");
        assert_eq!(float_text(f64::NEG_INFINITY), "-inf");
        assert_eq!(float_text(f64::NAN), "nan");
        assert_eq!(float_text(-f64::NAN), "nan(0xfff8000000000000)");
        for v in [0.1, 1e-5, 1e300, 5e-324, f64::MAX, f64::MIN_POSITIVE, 123456789.125, -2.5e-7, 1e16, 1e15] {
            let t = float_text(v);
            assert!(t.contains('.') || t.contains('e'), "{t}");
            assert_eq!(t.parse::<f64>().map(f64::to_bits), Ok(v.to_bits()), "{t}");
        }
    }

    #[test]
    fn elements_print_by_element_type() {
        assert_eq!(elem_text(DType::I32, 64.0), "64");
        assert_eq!(elem_text(DType::I32, -0.0), "-0.0");
        assert_eq!(elem_text(DType::I32, 0.5), "0.5");
        assert_eq!(elem_text(DType::I32, 1e20), "1e20");
        assert_eq!(elem_text(DType::Bool, 1.0), "true");
        assert_eq!(elem_text(DType::Bool, 0.0), "false");
        assert_eq!(elem_text(DType::Bool, -0.0), "-0.0");
        assert_eq!(elem_text(DType::F16, 2.0), "2.0");
    }

    #[test]
    fn names_quote_only_when_needed() {
        assert_eq!(name_text("q_1"), "q_1");
        assert_eq!(name_text("1q"), "\"1q\"");
        assert_eq!(name_text("a b"), "\"a b\"");
        assert_eq!(name_text(""), "\"\"");
        assert_eq!(comment_name("a b"), "a b");
        assert_eq!(comment_name(" a"), "\" a\"");
        assert_eq!(comment_name("\"a"), "\"\\\"a\"");
        assert_eq!(comment_name("a\nb"), "\"a\\nb\"");
        assert_eq!(sym_text("T"), "T");
        assert_eq!(sym_text("q"), "sym(q)");
        assert_eq!(sym_text("a-b"), "sym(\"a-b\")");
    }

    #[test]
    fn inline_arrays_infer_or_state_their_type() {
        let text = |c: ConstValue| {
            let mut s = String::new();
            write_inline_array(&mut s, &c);
            s
        };
        let c = |dtype, shape: &[usize], data: &[f64]| ConstValue { dtype, shape: shape.to_vec(), data: data.to_vec() };
        assert_eq!(text(c(DType::I32, &[2], &[64.0, 128.0])), "[64, 128]");
        assert_eq!(text(c(DType::F32, &[1, 2], &[1.0, -0.0])), "[[1.0, -0.0]]");
        assert_eq!(text(c(DType::Bool, &[2], &[1.0, 0.0])), "[true, false]");
        assert_eq!(text(c(DType::F16, &[1], &[1.0])), "f16[1] [1.0]");
        assert_eq!(text(c(DType::I32, &[], &[5.0])), "i32[] 5");
        assert_eq!(text(c(DType::I32, &[2, 0], &[])), "i32[2, 0] []");
        assert_eq!(text(c(DType::I32, &[3], &[1.0])), "i32[3] [1]");
    }
}
