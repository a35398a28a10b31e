//! The text form of the Kernel IR (`tdlc compile --emit kernel`).
//!
//! [`print_program`] spells out every buffer and every kernel as the loop
//! nest it stands for. The form is for people and snapshot tests, not for
//! parsing back: it is deterministic (the same program always prints the
//! same text), shows every field of every IR structure, and never panics,
//! even on a program the verifier ([`crate::verify`]) would reject (an
//! unknown buffer's type prints as `?`, an invalid view as
//! `<invalid view: ...>`).
//!
//! ```text
//! kernel_program attn(H, T)
//! target: cpu
//! params: %0, %1, %2
//! buffers:
//!   %0 q: f32[H, T, 64] = input 0
//!   %1 k: f32[H, T, 64] = input 1
//!   %2 v: f32[H, T, 64] = input 2
//!   %3 o: f32[H, T, 64] = temp
//! kernel "o" attention -> %3
//!   q %0: f32[H, T, 64], k %1: f32[H, T, 64], v %2: f32[H, T, 64]
//!   out %3: f32[H, T, 64]
//!   scale 1/sqrt(64), tiles q=64 k=64, kv_split none
//!   mask causal
//!   for lead in [H] parallel:
//!     for qt in 0..ceil(T/64) parallel:
//!       Q = %0[lead, qt*64..+64, :]  resident
//!       m = -inf, l = 0, O = 0
//!       for (kt, class) in iteration_space(mask, h, qt):
//!         K, V = %1[lead, kt*64..+64, :], %2[lead, kt*64..+64, :]
//!         S = Q·Kᵀ·1/sqrt(64)
//!         partial: S = where(mask, S, -inf)
//!         online softmax update; O += P·V
//!       %3[lead, qt*64..+64, :] = O / l   (l = 0 → 0)
//! results: %3
//! ```
//!
//! Floats print with Rust's `{}` for `f64` (shortest round-trip digits,
//! `inf`, `-inf`, `NaN`); dimensions with `Display for Dim`; constant
//! buffers list at most [`MAX_CONST_VALUES`] values, then `...`.

use tdl_ir::text::{mask_text, scalar_text};
use tdl_ir::{ConstValue, Dim};

use crate::ir::{
    Access, AttentionKernel, BufId, BufKind, ElementwiseKernel, EwOp, Kernel, KernelBody, KernelProgram, KvSplit,
    MaskUse, MatMulKernel, MoveKernel, MoveOp, ReduceKernel, RowKernel, RowOp, ViewOp,
};

/// The most values of a constant buffer the text form lists.
pub const MAX_CONST_VALUES: usize = 8;

/// Prints a program in the text form; the text ends with a line break.
pub fn print_program(p: &KernelProgram) -> String {
    let mut o = Out::default();
    o.line(0, format!("kernel_program {}({})", name_text(&p.name), p.symbols.join(", ")));
    o.line(0, format!("target: {}", p.target));
    o.line(0, format!("params: {}", buf_list(&p.params)));
    o.line(0, "buffers:");
    for (i, b) in p.buffers.iter().enumerate() {
        let kind = match &b.kind {
            BufKind::Input(n) => format!("input {n}"),
            BufKind::Const(c) => format!("const {}", const_text(c)),
            BufKind::Temp => "temp".to_string(),
        };
        o.line(1, format!("%{i} {}: {}{} = {kind}", name_text(&b.name), b.dtype.name(), shape_text(&b.shape)));
    }
    for k in &p.kernels {
        print_kernel(&mut o, p, k);
    }
    o.line(0, format!("results: {}", buf_list(&p.results)));
    o.s
}

/// The text being built, one indented line at a time.
#[derive(Default)]
struct Out {
    s: String,
}

impl Out {
    fn line(&mut self, depth: usize, text: impl AsRef<str>) {
        for _ in 0..depth {
            self.s.push_str("  ");
        }
        self.s.push_str(text.as_ref());
        self.s.push('\n');
    }
}

/// An identifier as is, anything else quoted (with Rust's escapes).
fn name_text(s: &str) -> String {
    let mut chars = s.chars();
    let ident = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ident {
        s.to_string()
    } else {
        format!("{s:?}")
    }
}

fn buf_list(ids: &[BufId]) -> String {
    if ids.is_empty() {
        return "(none)".to_string();
    }
    ids.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(", ")
}

/// `[H, T, 64]`.
pub(crate) fn shape_text(s: &[Dim]) -> String {
    format!("[{}]", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))
}

/// A float, deterministically (`1`, `0.125`, `-inf`, `NaN`).
fn float_text(v: f64) -> String {
    format!("{v}")
}

/// `f32[2, 2] [1, 2, 3, 4]`, at most [`MAX_CONST_VALUES`] values.
fn const_text(c: &ConstValue) -> String {
    let shape: Vec<String> = c.shape.iter().map(|d| d.to_string()).collect();
    let mut vals: Vec<String> = c.data.iter().take(MAX_CONST_VALUES).map(|v| float_text(*v)).collect();
    if c.data.len() > MAX_CONST_VALUES {
        vals.push(format!("... ({} values)", c.data.len()));
    }
    format!("{}[{}] [{}]", c.dtype.name(), shape.join(", "), vals.join(", "))
}

/// The buffer's element type and shape, `f32[H, T, 64]`, or `?`.
fn buf_type(p: &KernelProgram, id: BufId) -> String {
    match p.buffer(id) {
        Some(b) => format!("{}{}", b.dtype.name(), shape_text(&b.shape)),
        None => "?".to_string(),
    }
}

fn buf_shape(p: &KernelProgram, id: BufId) -> Option<&[Dim]> {
    p.buffer(id).map(|b| b.shape.as_slice())
}

/// The view's shape, when the buffer exists and the view is valid.
fn access_shape(p: &KernelProgram, a: &Access) -> Option<Vec<Dim>> {
    a.shape(buf_shape(p, a.buf)?).ok()
}

/// `%3`, `transpose(%3)`, `slice(permute(%3, [0, 2, 1]), axis=1, 0..4)`.
pub(crate) fn access_text(a: &Access) -> String {
    let mut s = a.buf.to_string();
    for op in &a.view {
        s = match op {
            ViewOp::Transpose => format!("transpose({s})"),
            ViewOp::Permute(perm) => {
                let perm: Vec<String> = perm.iter().map(|x| x.to_string()).collect();
                format!("permute({s}, [{}])", perm.join(", "))
            }
            ViewOp::Slice { axis, start, end } => format!("slice({s}, axis={axis}, {start}..{end})"),
            ViewOp::Reshape(shape) => format!("reshape({s}, {})", shape_text(shape)),
        };
    }
    s
}

/// `transpose(%3): f32[H, 64, T]`, with the view's type.
fn access_decl(p: &KernelProgram, a: &Access) -> String {
    let ty = match p.buffer(a.buf) {
        None => "?".to_string(),
        Some(b) => match a.shape(&b.shape) {
            Ok(s) => format!("{}{}", b.dtype.name(), shape_text(&s)),
            Err(e) => format!("<invalid view: {e}>"),
        },
    };
    format!("{}: {ty}", access_text(a))
}

/// `$0 = %3, $1 = %4` (the mask's operands), or nothing.
fn mask_use_text(m: &MaskUse) -> String {
    let mut s = mask_text(&m.expr);
    if !m.operands.is_empty() {
        let ops: Vec<String> = m.operands.iter().enumerate().map(|(i, b)| format!("${i} = {b}")).collect();
        s.push_str(" with ");
        s.push_str(&ops.join(", "));
    }
    s
}

/// The `k`-th dimension from the end (`k = 1`: the last).
fn from_end(s: &[Dim], k: usize) -> Option<&Dim> {
    s.len().checked_sub(k).and_then(|i| s.get(i))
}

/// All but the last `k` dimensions.
fn leading(s: &[Dim], k: usize) -> &[Dim] {
    s.get(..s.len().saturating_sub(k)).unwrap_or(&[])
}

/// `ceil(T/64)`, or the number when the dimension is constant.
fn tiles_text(d: Option<&Dim>, tile: usize) -> String {
    let Some(d) = d else {
        return format!("ceil(?/{tile})");
    };
    if let (Some(c), Ok(t)) = (d.as_const(), i64::try_from(tile)) {
        if t > 0 {
            return (c.max(0) / t + i64::from(c.max(0) % t != 0)).to_string();
        }
    }
    if d.as_sym().is_some() {
        format!("ceil({d}/{tile})")
    } else {
        format!("ceil(({d})/{tile})")
    }
}

fn print_kernel(o: &mut Out, p: &KernelProgram, k: &Kernel) {
    let span = match k.span {
        Some(s) => format!("  @{}..{}", s.start, s.end),
        None => String::new(),
    };
    o.line(0, format!("kernel {:?} {} -> {}{span}", k.name, k.body.kind(), k.body.out()));
    match &k.body {
        KernelBody::Attention(a) => print_attention(o, p, a),
        KernelBody::MatMul(m) => print_matmul(o, p, m),
        KernelBody::Elementwise(e) => print_elementwise(o, p, e),
        KernelBody::Reduce(r) => print_reduce(o, p, r),
        KernelBody::Row(r) => print_row(o, p, r),
        KernelBody::Move(m) => print_move(o, p, m),
    }
}

/// Opens `for <var> in <shape> parallel:` unless the shape is empty (one
/// iteration); returns the depth of the body and the index prefix
/// (`"lead, "` or `""`).
fn lead_loop(o: &mut Out, depth: usize, var: &str, lead: &[Dim]) -> (usize, String) {
    if lead.is_empty() {
        (depth, String::new())
    } else {
        o.line(depth, format!("for {var} in {} parallel:", shape_text(lead)));
        (depth + 1, format!("{var}, "))
    }
}

fn print_attention(o: &mut Out, p: &KernelProgram, a: &AttentionKernel) {
    o.line(
        1,
        format!("q {}: {}, k {}: {}, v {}: {}", a.q, buf_type(p, a.q), a.k, buf_type(p, a.k), a.v, buf_type(p, a.v)),
    );
    o.line(1, format!("out {}: {}", a.out, buf_type(p, a.out)));
    let q_shape = buf_shape(p, a.q).unwrap_or(&[]);
    let k_shape = buf_shape(p, a.k).unwrap_or(&[]);
    let out_shape = buf_shape(p, a.out).unwrap_or(&[]);
    let scale = match a.scale {
        Some(s) => float_text(s),
        None => match from_end(q_shape, 1) {
            Some(d) => format!("1/sqrt({d})"),
            None => "1/sqrt(D)".to_string(),
        },
    };
    let split = match a.kv_split {
        KvSplit::None => "none".to_string(),
        KvSplit::Auto { workers, max_splits, min_tiles } => {
            format!("auto(workers={workers}, max_splits={max_splits}, min_tiles={min_tiles})")
        }
        KvSplit::Fixed(n) => format!("fixed({n})"),
    };
    o.line(1, format!("scale {scale}, tiles q={} k={}, kv_split {split}", a.tile_q, a.tile_k));
    if let Some(m) = &a.mask {
        o.line(1, format!("mask {}", mask_use_text(m)));
    }
    if let Some(s) = &a.score {
        o.line(1, format!("score {}", scalar_text(s)));
    }
    if a.score.is_some() || !a.score_operands.is_empty() {
        let ops: Vec<String> =
            a.score_operands.iter().map(|b| b.map_or_else(|| "_".to_string(), |b| b.to_string())).collect();
        o.line(1, format!("score operands [{}]", ops.join(", ")));
    }

    let (d, lead) = lead_loop(o, 1, "lead", leading(out_shape, 2));
    let kv_lead = if leading(k_shape, 2) == leading(q_shape, 2) { lead.clone() } else { lead.replace(',', "/g,") };
    let (tq, tk) = (a.tile_q, a.tile_k);
    o.line(d, format!("for qt in 0..{} parallel:", tiles_text(from_end(q_shape, 2), tq)));
    let mut d = d + 1;
    let split_var = match a.kv_split {
        KvSplit::None => "",
        KvSplit::Auto { .. } => {
            o.line(d, "for split in 0..splits(auto) parallel:");
            d += 1;
            "[split]"
        }
        KvSplit::Fixed(n) => {
            o.line(d, format!("for split in 0..{n} parallel:"));
            d += 1;
            "[split]"
        }
    };
    o.line(d, format!("Q = {}[{lead}qt*{tq}..+{tq}, :]  resident", a.q));
    o.line(d, "m = -inf, l = 0, O = 0");
    match &a.mask {
        Some(_) => o.line(d, format!("for (kt, class) in iteration_space(mask, h, qt){split_var}:")),
        None => {
            let n = tiles_text(from_end(k_shape, 2), tk);
            if split_var.is_empty() {
                o.line(d, format!("for kt in 0..{n}:  # no mask: every tile full"));
            } else {
                o.line(d, format!("for kt in chunk(0..{n}, split):  # no mask: every tile full"));
            }
        }
    }
    o.line(d + 1, format!("K, V = {}[{kv_lead}kt*{tk}..+{tk}, :], {}[{kv_lead}kt*{tk}..+{tk}, :]", a.k, a.v));
    o.line(d + 1, format!("S = Q·Kᵀ·{scale}"));
    if a.mask.is_some() {
        o.line(d + 1, "partial: S = where(mask, S, -inf)");
    }
    if let Some(s) = &a.score {
        o.line(d + 1, format!("S = score({})", scalar_text(s)));
    }
    o.line(d + 1, "online softmax update; O += P·V");
    if !split_var.is_empty() {
        d -= 1;
        o.line(d, "merge splits: m = max mᵢ, l = Σ e^(mᵢ-m)·lᵢ, O = Σ e^(mᵢ-m)·Oᵢ");
    }
    o.line(d, format!("{}[{lead}qt*{tq}..+{tq}, :] = O / l   (l = 0 → 0)", a.out));
}

fn print_matmul(o: &mut Out, p: &KernelProgram, m: &MatMulKernel) {
    o.line(1, format!("a = {}", access_decl(p, &m.a)));
    o.line(1, format!("b = {}", access_decl(p, &m.b)));
    o.line(1, format!("out {}: {}", m.out, buf_type(p, m.out)));
    o.line(1, format!("tiles m={} n={} k={}", m.tile_m, m.tile_n, m.tile_k));
    let a_shape = access_shape(p, &m.a).unwrap_or_default();
    let b_shape = access_shape(p, &m.b).unwrap_or_default();
    let out_shape = buf_shape(p, m.out).unwrap_or(&[]);
    let (tm, tn, tk) = (m.tile_m, m.tile_n, m.tile_k);
    let (d, batch) = lead_loop(o, 1, "batch", leading(out_shape, 2));
    o.line(d, format!("for mt in 0..{} parallel:", tiles_text(from_end(&a_shape, 2), tm)));
    o.line(d + 1, format!("for nt in 0..{} parallel:", tiles_text(from_end(&b_shape, 1), tn)));
    o.line(d + 2, "acc = 0");
    o.line(d + 2, format!("for kt in 0..{}:", tiles_text(from_end(&a_shape, 1), tk)));
    o.line(
        d + 3,
        format!("acc += a[{batch}mt*{tm}..+{tm}, kt*{tk}..+{tk}] · b[{batch}kt*{tk}..+{tk}, nt*{tn}..+{tn}]"),
    );
    o.line(d + 2, format!("{}[{batch}mt*{tm}..+{tm}, nt*{tn}..+{tn}] = acc", m.out));
}

fn print_elementwise(o: &mut Out, p: &KernelProgram, e: &ElementwiseKernel) {
    for (i, a) in e.inputs.iter().enumerate() {
        o.line(1, format!("in{i} = {}", access_decl(p, a)));
    }
    for (i, m) in e.masks.iter().enumerate() {
        o.line(1, format!("m{i} = {}", mask_use_text(m)));
    }
    o.line(1, format!("out {}: {}", e.out, buf_type(p, e.out)));
    let out_shape = buf_shape(p, e.out).unwrap_or(&[]);
    o.line(1, format!("for i in {} parallel:", shape_text(out_shape)));
    for (n, inst) in e.body.iter().enumerate() {
        let rhs = match &inst.op {
            EwOp::Load(i) => format!("load in{i}"),
            EwOp::Const(c) => format!("const {}", float_text(*c)),
            EwOp::Unary(u, a) => format!("{} v{a}", u.name()),
            EwOp::Binary(b, x, y) => format!("{} v{x}, v{y}", b.name()),
            EwOp::Select(c, x, y) => format!("select v{c}, v{x}, v{y}"),
            EwOp::Mask(m) => format!("mask m{m}"),
        };
        o.line(2, format!("v{n}: {} = {rhs}", inst.dtype.name()));
    }
    match e.body.len().checked_sub(1) {
        Some(last) => o.line(2, format!("{}[i] = v{last}", e.out)),
        None => o.line(2, format!("{}[i] = <empty body>", e.out)),
    }
}

fn print_reduce(o: &mut Out, p: &KernelProgram, r: &ReduceKernel) {
    o.line(1, format!("x = {}", access_decl(p, &r.x)));
    o.line(1, format!("out {}: {}", r.out, buf_type(p, r.out)));
    o.line(1, format!("{} over axis {}, keepdims {}", r.op.name(), r.axis, r.keepdims));
    let x_shape = access_shape(p, &r.x).unwrap_or_default();
    let rows: Vec<Dim> = x_shape.iter().enumerate().filter(|(i, _)| *i != r.axis).map(|(_, d)| d.clone()).collect();
    let n = x_shape.get(r.axis).map_or_else(|| "?".to_string(), |d| d.to_string());
    let (d, row) = lead_loop(o, 1, "row", &rows);
    let row = row.trim_end_matches(", ");
    o.line(d, format!("{}[{row}] = {}(x[{row}; axis {} = j] for j in 0..{n})", r.out, r.op.name(), r.axis));
}

fn print_row(o: &mut Out, p: &KernelProgram, r: &RowKernel) {
    o.line(1, format!("x = {}", access_decl(p, &r.x)));
    let names: &[&str] = match r.op {
        RowOp::LayerNorm { .. } => &["gain", "bias"],
        RowOp::RmsNorm { .. } => &["gain"],
        RowOp::Softmax { .. } | RowOp::Rope { .. } => &[],
    };
    for (i, a) in r.params.iter().enumerate() {
        let name = names.get(i).map_or_else(|| format!("p{i}"), |n| n.to_string());
        o.line(1, format!("{name} = {}", access_decl(p, a)));
    }
    o.line(1, format!("out {}: {}", r.out, buf_type(p, r.out)));
    let x_shape = access_shape(p, &r.x).unwrap_or_default();
    let (axis_text, axis) = match r.op {
        RowOp::Softmax { axis } => (format!("axis {axis}"), Some(axis)),
        _ => ("the last axis".to_string(), x_shape.len().checked_sub(1)),
    };
    let detail = match r.op {
        RowOp::Softmax { .. } => String::new(),
        RowOp::LayerNorm { eps } | RowOp::RmsNorm { eps } => format!(", eps {}", float_text(eps)),
        RowOp::Rope { base } => format!(", base {}, position = index along axis -2", float_text(base)),
    };
    let kind = match r.op {
        RowOp::Softmax { .. } => "softmax",
        RowOp::LayerNorm { .. } => "layernorm",
        RowOp::RmsNorm { .. } => "rmsnorm",
        RowOp::Rope { .. } => "rope",
    };
    o.line(1, format!("{kind} over {axis_text}{detail}"));
    let rows: Vec<Dim> = x_shape.iter().enumerate().filter(|(i, _)| Some(*i) != axis).map(|(_, d)| d.clone()).collect();
    let (d, row) = lead_loop(o, 1, "row", &rows);
    let row = row.trim_end_matches(", ");
    let sel = match axis {
        Some(a) => format!("[{row}; axis {a} = :]"),
        None => format!("[{row}]"),
    };
    let rhs = match r.op {
        RowOp::Softmax { .. } => format!("softmax(x{sel})"),
        RowOp::LayerNorm { eps } => format!("(x{sel} - mean) / sqrt(var + {}) · gain + bias", float_text(eps)),
        RowOp::RmsNorm { eps } => format!("x{sel} / sqrt(mean(x²) + {}) · gain", float_text(eps)),
        RowOp::Rope { base } => format!("rotate_half(x{sel}, position, base={})", float_text(base)),
    };
    o.line(d, format!("{}{sel} = {rhs}", r.out));
}

fn print_move(o: &mut Out, p: &KernelProgram, m: &MoveKernel) {
    for (i, a) in m.srcs.iter().enumerate() {
        o.line(1, format!("src{i} = {}", access_decl(p, a)));
    }
    o.line(1, format!("out {}: {}", m.out, buf_type(p, m.out)));
    let out_shape = buf_shape(p, m.out).unwrap_or(&[]);
    match m.op {
        MoveOp::Copy => {
            o.line(1, format!("for i in {} parallel:", shape_text(out_shape)));
            o.line(2, format!("{}[i] = src0[i]", m.out));
        }
        MoveOp::Concat { axis } => {
            o.line(1, format!("concat along axis {axis}"));
            o.line(1, format!("for i in {} parallel:", shape_text(out_shape)));
            o.line(2, format!("{}[i] = src_j[i; axis {axis} -= offset_j]  (j: the source holding i)", m.out));
        }
        MoveOp::Repeat { times, axis } => {
            o.line(1, format!("repeat {times} times along axis {axis}"));
            o.line(1, format!("for i in {} parallel:", shape_text(out_shape)));
            o.line(2, format!("{}[i] = src0[i; axis {axis} /= {times}]", m.out));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Buffer, EwInst, RowKernel};
    use tdl_ir::{BinaryOp, DType, MaskExpr, ReduceOp, ScalarBinary, ScalarExpr, Span, UnaryOp};

    fn sym(s: &str) -> Dim {
        Dim::sym(s)
    }

    fn c(n: i64) -> Dim {
        Dim::constant(n)
    }

    fn buf(name: &str, dtype: DType, shape: Vec<Dim>, kind: BufKind) -> Buffer {
        Buffer { name: name.to_string(), dtype, shape, kind }
    }

    fn kernel(name: &str, body: KernelBody) -> Kernel {
        Kernel { name: name.to_string(), span: None, body }
    }

    /// A program with every kernel kind (not meant to verify).
    fn every_kind() -> KernelProgram {
        let f = DType::F32;
        let htd = vec![sym("H"), sym("T"), c(64)];
        let hts = vec![sym("H"), sym("T"), sym("T")];
        let cv = ConstValue { dtype: f, shape: vec![10], data: (0..10).map(f64::from).collect() };
        let buffers = vec![
            buf("q", f, htd.clone(), BufKind::Input(0)),
            buf("k", f, htd.clone(), BufKind::Input(1)),
            buf("v", f, htd.clone(), BufKind::Input(2)),
            buf("ids", DType::I32, vec![sym("T")], BufKind::Input(3)),
            buf("bias", f, vec![c(10)], BufKind::Const(cv)),
            buf("o", f, htd.clone(), BufKind::Temp),
            buf("s", f, hts.clone(), BufKind::Temp),
            buf("p", f, hts.clone(), BufKind::Temp),
            buf("mx", f, vec![sym("H"), sym("T")], BufKind::Temp),
            buf("sm", f, hts.clone(), BufKind::Temp),
            buf("ln", f, htd.clone(), BufKind::Temp),
            buf("kt", f, vec![sym("H"), c(64), sym("T")], BufKind::Temp),
            buf("cat", f, vec![sym("H"), sym("T"), c(128)], BufKind::Temp),
            buf("rep", f, vec![sym("H"), sym("T"), c(128)], BufKind::Temp),
            buf("rms", f, htd.clone(), BufKind::Temp),
            buf("rope", f, htd.clone(), BufKind::Temp),
        ];
        let mask = MaskUse {
            expr: MaskExpr::And(Box::new(MaskExpr::Causal), Box::new(MaskExpr::Document { ids: 0 })),
            operands: vec![BufId(3)],
        };
        let score =
            ScalarExpr::binary(ScalarBinary::Mul, ScalarExpr::Var(tdl_ir::LambdaVar::S), ScalarExpr::Float(0.5));
        let kernels = vec![
            Kernel {
                name: "o".into(),
                span: Some(Span::new(10, 42)),
                body: KernelBody::Attention(Box::new(AttentionKernel {
                    q: BufId(0),
                    k: BufId(1),
                    v: BufId(2),
                    mask: Some(mask.clone()),
                    scale: None,
                    score: Some(score),
                    score_operands: vec![None, None, None, None],
                    tile_q: 64,
                    tile_k: 32,
                    kv_split: KvSplit::Auto { workers: 2, max_splits: 16, min_tiles: 4 },
                    out: BufId(5),
                })),
            },
            kernel(
                "s",
                KernelBody::MatMul(MatMulKernel {
                    a: Access::whole(BufId(0)),
                    b: Access { buf: BufId(1), view: vec![ViewOp::Transpose] },
                    tile_m: 64,
                    tile_n: 64,
                    tile_k: 32,
                    out: BufId(6),
                }),
            ),
            kernel(
                "p",
                KernelBody::Elementwise(ElementwiseKernel {
                    inputs: vec![
                        Access::whole(BufId(6)),
                        Access { buf: BufId(4), view: vec![ViewOp::Slice { axis: 0, start: 0, end: 1 }] },
                    ],
                    masks: vec![mask],
                    body: vec![
                        EwInst { op: EwOp::Load(0), dtype: f },
                        EwInst { op: EwOp::Load(1), dtype: f },
                        EwInst { op: EwOp::Binary(BinaryOp::Add, 0, 1), dtype: f },
                        EwInst { op: EwOp::Unary(UnaryOp::Exp, 2), dtype: f },
                        EwInst { op: EwOp::Mask(0), dtype: DType::Bool },
                        EwInst { op: EwOp::Const(f64::NEG_INFINITY), dtype: f },
                        EwInst { op: EwOp::Select(4, 3, 5), dtype: f },
                    ],
                    out: BufId(7),
                }),
            ),
            kernel(
                "mx",
                KernelBody::Reduce(ReduceKernel {
                    op: ReduceOp::Max,
                    axis: 2,
                    keepdims: false,
                    x: Access::whole(BufId(7)),
                    out: BufId(8),
                }),
            ),
            kernel(
                "sm",
                KernelBody::Row(RowKernel {
                    op: RowOp::Softmax { axis: 2 },
                    x: Access::whole(BufId(7)),
                    params: vec![],
                    out: BufId(9),
                }),
            ),
            kernel(
                "ln",
                KernelBody::Row(RowKernel {
                    op: RowOp::LayerNorm { eps: 1e-5 },
                    x: Access::whole(BufId(5)),
                    params: vec![Access::whole(BufId(4)), Access::whole(BufId(4))],
                    out: BufId(10),
                }),
            ),
            kernel(
                "kt",
                KernelBody::Move(MoveKernel {
                    op: MoveOp::Copy,
                    srcs: vec![Access { buf: BufId(1), view: vec![ViewOp::Permute(vec![0, 2, 1])] }],
                    out: BufId(11),
                }),
            ),
            kernel(
                "cat",
                KernelBody::Move(MoveKernel {
                    op: MoveOp::Concat { axis: 2 },
                    srcs: vec![Access::whole(BufId(0)), Access::whole(BufId(1))],
                    out: BufId(12),
                }),
            ),
            kernel(
                "rep",
                KernelBody::Move(MoveKernel {
                    op: MoveOp::Repeat { times: 2, axis: 2 },
                    srcs: vec![Access { buf: BufId(2), view: vec![ViewOp::Reshape(htd.clone())] }],
                    out: BufId(13),
                }),
            ),
            kernel(
                "rms",
                KernelBody::Row(RowKernel {
                    op: RowOp::RmsNorm { eps: 1e-6 },
                    x: Access::whole(BufId(10)),
                    params: vec![Access::whole(BufId(4))],
                    out: BufId(14),
                }),
            ),
            kernel(
                "rope",
                KernelBody::Row(RowKernel {
                    op: RowOp::Rope { base: 10000.0 },
                    x: Access::whole(BufId(14)),
                    params: vec![],
                    out: BufId(15),
                }),
            ),
        ];
        KernelProgram {
            name: "every".into(),
            symbols: vec!["H".into(), "T".into()],
            buffers,
            params: vec![BufId(0), BufId(1), BufId(2), BufId(3)],
            kernels,
            results: vec![BufId(9), BufId(15)],
            target: "cpu test (4 cores)".into(),
        }
    }

    #[test]
    fn prints_every_kernel_kind() {
        let text = print_program(&every_kind());
        let expected = [
            "kernel_program every(H, T)",
            "target: cpu test (4 cores)",
            "params: %0, %1, %2, %3",
            "buffers:",
            "  %0 q: f32[H, T, 64] = input 0",
            "  %3 ids: i32[T] = input 3",
            "  %4 bias: f32[10] = const f32[10] [0, 1, 2, 3, 4, 5, 6, 7, ... (10 values)]",
            "  %5 o: f32[H, T, 64] = temp",
            // attention
            "kernel \"o\" attention -> %5  @10..42",
            "  q %0: f32[H, T, 64], k %1: f32[H, T, 64], v %2: f32[H, T, 64]",
            "  scale 1/sqrt(64), tiles q=64 k=32, kv_split auto(workers=2, max_splits=16, min_tiles=4)",
            "  mask causal & document($0) with $0 = %3",
            "  score s * 0.5",
            "  score operands [_, _, _, _]",
            "  for lead in [H] parallel:",
            "    for qt in 0..ceil(T/64) parallel:",
            "      for split in 0..splits(auto) parallel:",
            "        Q = %0[lead, qt*64..+64, :]  resident",
            "        for (kt, class) in iteration_space(mask, h, qt)[split]:",
            "          K, V = %1[lead, kt*32..+32, :], %2[lead, kt*32..+32, :]",
            "          S = Q·Kᵀ·1/sqrt(64)",
            "          partial: S = where(mask, S, -inf)",
            "          S = score(s * 0.5)",
            "      merge splits: m = max mᵢ, l = Σ e^(mᵢ-m)·lᵢ, O = Σ e^(mᵢ-m)·Oᵢ",
            "      %5[lead, qt*64..+64, :] = O / l   (l = 0 → 0)",
            // matmul
            "kernel \"s\" matmul -> %6",
            "  a = %0: f32[H, T, 64]",
            "  b = transpose(%1): f32[H, 64, T]",
            "  tiles m=64 n=64 k=32",
            "  for batch in [H] parallel:",
            "    for mt in 0..ceil(T/64) parallel:",
            "        for kt in 0..2:",
            "          acc += a[batch, mt*64..+64, kt*32..+32] · b[batch, kt*32..+32, nt*64..+64]",
            // elementwise
            "kernel \"p\" elementwise -> %7",
            "  in1 = slice(%4, axis=0, 0..1): f32[1]",
            "  m0 = causal & document($0) with $0 = %3",
            "  for i in [H, T, T] parallel:",
            "    v0: f32 = load in0",
            "    v2: f32 = add v0, v1",
            "    v3: f32 = exp v2",
            "    v4: bool = mask m0",
            "    v5: f32 = const -inf",
            "    v6: f32 = select v4, v3, v5",
            "    %7[i] = v6",
            // reduce
            "kernel \"mx\" reduce -> %8",
            "  max over axis 2, keepdims false",
            "  for row in [H, T] parallel:",
            // rows
            "kernel \"sm\" softmax -> %9",
            "  softmax over axis 2",
            "kernel \"ln\" layernorm -> %10",
            "  gain = %4: f32[10]",
            "  bias = %4: f32[10]",
            "  layernorm over the last axis, eps 0.00001",
            "kernel \"rms\" rmsnorm -> %14",
            "  rmsnorm over the last axis, eps 0.000001",
            "kernel \"rope\" rope -> %15",
            "  rope over the last axis, base 10000, position = index along axis -2",
            // moves
            "kernel \"kt\" copy -> %11",
            "  src0 = permute(%1, [0, 2, 1]): f32[H, 64, T]",
            "kernel \"cat\" concat -> %12",
            "  concat along axis 2",
            "kernel \"rep\" repeat -> %13",
            "  src0 = reshape(%2, [H, T, 64]): f32[H, T, 64]",
            "  repeat 2 times along axis 2",
            "results: %9, %15",
        ];
        let lines: Vec<&str> = text.lines().collect();
        for e in expected {
            assert!(lines.contains(&e), "missing line {e:?} in:\n{text}");
        }
        assert_eq!(text, print_program(&every_kind()), "printing is deterministic");
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn never_panics_on_broken_programs() {
        let mut p = every_kind();
        p.buffers.truncate(3);
        p.kernels.push(kernel(
            "bad",
            KernelBody::MatMul(MatMulKernel {
                a: Access { buf: BufId(0), view: vec![ViewOp::Permute(vec![7])] },
                b: Access::whole(BufId(99)),
                tile_m: 0,
                tile_n: 0,
                tile_k: 0,
                out: BufId(77),
            }),
        ));
        p.kernels.push(kernel(
            "empty",
            KernelBody::Elementwise(ElementwiseKernel { inputs: vec![], masks: vec![], body: vec![], out: BufId(1) }),
        ));
        let text = print_program(&p);
        assert!(text.contains("  a = permute(%0, [7]): <invalid view: permute [7] of a rank-3 view>"), "{text}");
        assert!(text.contains("  b = %99: ?"), "{text}");
        assert!(text.contains("    %1[i] = <empty body>"), "{text}");
        assert!(text.contains("kernel \"o\" attention -> %5"), "{text}");
    }

    #[test]
    fn names_and_tile_counts() {
        assert_eq!(name_text("attn_1"), "attn_1");
        assert_eq!(name_text("a b"), "\"a b\"");
        assert_eq!(name_text(""), "\"\"");
        assert_eq!(tiles_text(Some(&c(130)), 64), "3");
        assert_eq!(tiles_text(Some(&c(0)), 64), "0");
        assert_eq!(tiles_text(Some(&sym("T")), 0), "ceil(T/0)");
        let two_t_plus_one = sym("T").checked_mul(&c(2)).and_then(|d| d.checked_add(&c(1)));
        assert_eq!(tiles_text(two_t_plus_one.as_ref().ok(), 16), "ceil((2*T + 1)/16)");
        assert_eq!(float_text(f64::NEG_INFINITY), "-inf");
    }
}
