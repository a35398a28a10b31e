//! The Kernel IR verifier.
//!
//! [`verify`] checks the invariants the interpreter and the code generators
//! rely on, and reports the first problem it finds, naming the kernel by its
//! name and kind (``kernel `o` (attention): reads %4 before any kernel
//! writes it``) or the buffer, parameter or result at fault:
//!
//! * **Buffers**: symbols sorted and distinct, every shape's symbols among
//!   them, no negative constant dimension; constants consistent (element
//!   type, shape, value count); `params[i]` is the buffer `input i`, and
//!   every input buffer is a parameter.
//! * **Data flow**: every buffer id in range; every temp buffer written by
//!   exactly one kernel and read only by later ones; inputs and constants
//!   never written; results in range.
//! * **Views**: every [`Access`] resolves on its buffer's shape; a reshape
//!   only follows reshapes and keeps the element count; attention, rows and
//!   reductions read contiguous operands (attention's are whole buffers by
//!   construction).
//! * **Shapes**, symbolically, by [`Dim`] equality (the graph's type rules
//!   use the same, so a lowered program meets them exactly): each kernel's
//!   output buffer has the shape its kernel computes; broadcast operands
//!   broadcast (NumPy, right-aligned; only `1` stretches).
//! * **Element types**: operands and outputs agree; the elementwise SSA body
//!   is well typed (`Load` matches its input, `Select`'s condition and
//!   `Mask` are `bool`, the last instruction has the output's type) and
//!   every operand names an earlier instruction, an existing input or mask.
//! * **Parameters**: tile sizes, split counts and repeat counts positive;
//!   axes in range; masks and score lambdas within the expression limits and
//!   reading only operands they have.

use tdl_ir::mask::check_expr_limits;
use tdl_ir::{DType, Dim};

use crate::ir::{
    Access, AttentionKernel, BufId, BufKind, Buffer, ElementwiseKernel, EwOp, Kernel, KernelBody, KernelProgram,
    KvSplit, MaskUse, MatMulKernel, MoveKernel, MoveOp, ReduceKernel, RowKernel, RowOp, ViewOp,
};
use crate::text::{access_text, shape_text};

/// Checks a program; the error describes the first problem found.
pub fn verify(p: &KernelProgram) -> Result<(), String> {
    check_symbols(p)?;
    for (i, b) in p.buffers.iter().enumerate() {
        check_buffer(p, b).map_err(|e| format!("buffer %{i} `{}`: {e}", b.name))?;
    }
    check_params(p)?;
    // The kernel writing each buffer, by position.
    let mut writer: Vec<Option<usize>> = vec![None; p.buffers.len()];
    for (ki, k) in p.kernels.iter().enumerate() {
        check_kernel(p, k, &writer).map_err(|e| format!("kernel `{}` ({}): {e}", k.name, k.body.kind()))?;
        if let Some(w) = writer.get_mut(k.body.out().index()) {
            *w = Some(ki);
        }
    }
    for (i, (b, w)) in p.buffers.iter().zip(&writer).enumerate() {
        if b.kind == BufKind::Temp && w.is_none() {
            return Err(format!("buffer %{i} `{}` is a temp that no kernel writes", b.name));
        }
    }
    for (i, r) in p.results.iter().enumerate() {
        if p.buffer(*r).is_none() {
            return Err(format!("result {i} is {r}, {}", not_a_buffer(p)));
        }
    }
    Ok(())
}

fn not_a_buffer(p: &KernelProgram) -> String {
    format!("which is not a buffer (the program has {})", p.buffers.len())
}

fn kind_text(k: &BufKind) -> String {
    match k {
        BufKind::Input(n) => format!("input {n}"),
        BufKind::Const(_) => "a constant".to_string(),
        BufKind::Temp => "a temp".to_string(),
    }
}

fn check_symbols(p: &KernelProgram) -> Result<(), String> {
    for (a, b) in p.symbols.iter().zip(p.symbols.iter().skip(1)) {
        if a >= b {
            return Err(format!(
                "symbols ({}) are not sorted and distinct: `{a}` comes before `{b}`",
                p.symbols.join(", ")
            ));
        }
    }
    Ok(())
}

/// Every symbol of `d` is one of the program's; no negative constant.
fn check_dims(p: &KernelProgram, shape: &[Dim]) -> Result<(), String> {
    for d in shape {
        if let Some(s) = d.symbols().into_iter().find(|s| p.symbols.binary_search(s).is_err()) {
            return Err(format!(
                "shape {} mentions `{s}`, which is not a symbol of the program ({})",
                shape_text(shape),
                p.symbols.join(", ")
            ));
        }
        if d.as_const().is_some_and(|c| c < 0) {
            return Err(format!("shape {} has a negative dimension", shape_text(shape)));
        }
    }
    Ok(())
}

fn check_buffer(p: &KernelProgram, b: &Buffer) -> Result<(), String> {
    check_dims(p, &b.shape)?;
    if let BufKind::Const(c) = &b.kind {
        if c.dtype != b.dtype {
            return Err(format!("a {} buffer holds a {} constant", b.dtype, c.dtype));
        }
        let const_shape: Vec<Dim> = c.shape.iter().map(|&n| Dim::constant(i64::try_from(n).unwrap_or(-1))).collect();
        if const_shape != b.shape {
            return Err(format!(
                "a buffer of shape {} holds a constant of shape {}",
                shape_text(&b.shape),
                shape_text(&const_shape)
            ));
        }
        let count = c.shape.iter().try_fold(1usize, |a, &n| a.checked_mul(n));
        if count != Some(c.data.len()) {
            return Err(format!("its constant has shape {:?} but {} values", c.shape, c.data.len()));
        }
    }
    Ok(())
}

fn check_params(p: &KernelProgram) -> Result<(), String> {
    for (i, id) in p.params.iter().enumerate() {
        let b = p.buffer(*id).ok_or_else(|| format!("parameter {i} is {id}, {}", not_a_buffer(p)))?;
        if b.kind != BufKind::Input(i) {
            return Err(format!("parameter {i} is {id} `{}`, which is {}, not input {i}", b.name, kind_text(&b.kind)));
        }
    }
    for (i, b) in p.buffers.iter().enumerate() {
        if let BufKind::Input(n) = b.kind {
            if p.params.get(n).map(|b| b.index()) != Some(i) {
                return Err(format!(
                    "buffer %{i} `{}` is input {n}, but the program's parameters are [{}]",
                    b.name,
                    p.params.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    Ok(())
}

fn check_kernel(p: &KernelProgram, k: &Kernel, writer: &[Option<usize>]) -> Result<(), String> {
    let out = k.body.out();
    let ob = p.buffer(out).ok_or_else(|| format!("writes {out}, {}", not_a_buffer(p)))?;
    if ob.kind != BufKind::Temp {
        return Err(format!("writes {out} `{}`, which is {}", ob.name, kind_text(&ob.kind)));
    }
    if let Some(w) = writer.get(out.index()).copied().flatten() {
        let by = p.kernels.get(w).map_or_else(String::new, |o| format!(" by kernel `{}` ({})", o.name, o.body.kind()));
        return Err(format!("writes {out} `{}`, which is already written{by}", ob.name));
    }
    for r in k.body.reads() {
        let b = p.buffer(r).ok_or_else(|| format!("reads {r}, {}", not_a_buffer(p)))?;
        if b.kind == BufKind::Temp && writer.get(r.index()).copied().flatten().is_none() {
            return Err(format!("reads {r} before any kernel writes it"));
        }
    }
    match &k.body {
        KernelBody::Attention(a) => check_attention(p, a, ob),
        KernelBody::MatMul(m) => check_matmul(p, m, ob),
        KernelBody::Elementwise(e) => check_elementwise(p, e, ob),
        KernelBody::Reduce(r) => check_reduce(p, r, ob),
        KernelBody::Row(r) => check_row(p, r, ob),
        KernelBody::Move(m) => check_move(p, m, ob),
    }
}

// ---------------------------------------------------------------------------
// Helpers

fn buffer(p: &KernelProgram, id: BufId) -> Result<&Buffer, String> {
    p.buffer(id).ok_or_else(|| format!("reads {id}, {}", not_a_buffer(p)))
}

/// The shape of a view, checked: valid on its buffer, reshapes only of
/// contiguous views (or splitting axes) and keeping the element count.
fn view_shape(p: &KernelProgram, a: &Access, what: &str) -> Result<Vec<Dim>, String> {
    let b = buffer(p, a.buf)?;
    let bad = |e: String| format!("{what} {}: {e}", access_text(a));
    for (j, op) in a.view.iter().enumerate() {
        let ViewOp::Reshape(to) = op else { continue };
        let before = a.view.get(..j).unwrap_or(&[]);
        check_dims(p, to).map_err(bad)?;
        if before.iter().any(|v| !matches!(v, ViewOp::Reshape(_))) {
            let from = Access { buf: a.buf, view: before.to_vec() }.shape(&b.shape).map_err(bad)?;
            if !crate::ir::reshape_only_splits(&from, to) {
                return Err(bad("reshape of a non-contiguous view that does not only split axes".to_string()));
            }
        }
        if to.iter().any(|d| d.as_const().is_some_and(|c| c <= 0)) {
            return Err(bad(format!("reshape to {}, which has a non-positive dimension", shape_text(to))));
        }
        let from = Access { buf: a.buf, view: before.to_vec() }.shape(&b.shape).map_err(bad)?;
        if let (Ok(n_from), Ok(n_to)) = (Dim::product(&from), Dim::product(to)) {
            if n_from != n_to {
                return Err(bad(format!(
                    "reshape of {} ({n_from} elements) to {} ({n_to} elements)",
                    shape_text(&from),
                    shape_text(to)
                )));
            }
        }
    }
    a.shape(&b.shape).map_err(bad)
}

/// The dtype of the buffer a view reads.
fn view_dtype(p: &KernelProgram, a: &Access) -> Result<DType, String> {
    Ok(buffer(p, a.buf)?.dtype)
}

/// A contiguous view's shape (rows, reductions).
fn contiguous_shape(p: &KernelProgram, a: &Access, what: &str) -> Result<Vec<Dim>, String> {
    let s = view_shape(p, a, what)?;
    if !a.is_contiguous() {
        return Err(format!("{what} {} is not contiguous (this kernel needs a contiguous operand)", access_text(a)));
    }
    Ok(s)
}

fn same_dtype(what: &str, found: DType, expected: DType, of: &str) -> Result<(), String> {
    if found != expected {
        return Err(format!("{what} is {found}, but {of} is {expected}"));
    }
    Ok(())
}

fn same_shape(out: &Buffer, expected: &[Dim], because: &str) -> Result<(), String> {
    if out.shape != expected {
        return Err(format!(
            "the output `{}` has shape {}, but {because} gives {}",
            out.name,
            shape_text(&out.shape),
            shape_text(expected)
        ));
    }
    Ok(())
}

/// NumPy broadcasting of `src` to exactly `dst`: right-aligned, each
/// dimension `1` or equal.
fn broadcasts_to(src: &[Dim], dst: &[Dim]) -> bool {
    let one = Dim::constant(1);
    src.len() <= dst.len() && src.iter().rev().zip(dst.iter().rev()).all(|(s, d)| *s == one || s == d)
}

fn min_rank(what: &str, shape: &[Dim], min: usize) -> Result<(), String> {
    if shape.len() < min {
        return Err(format!("{what} has shape {}; rank {min} or more is needed", shape_text(shape)));
    }
    Ok(())
}

fn check_axis(what: &str, axis: usize, rank: usize) -> Result<(), String> {
    if axis >= rank {
        return Err(format!("{what} axis {axis} is out of range for rank {rank}"));
    }
    Ok(())
}

fn positive(what: &str, n: usize) -> Result<(), String> {
    if n == 0 {
        return Err(format!("{what} is 0; it must be at least 1"));
    }
    Ok(())
}

/// The `k`-th dimension from the end (`k = 1`: the last).
fn from_end(s: &[Dim], k: usize) -> Option<&Dim> {
    s.len().checked_sub(k).and_then(|i| s.get(i))
}

/// All but the last `k` dimensions.
fn leading(s: &[Dim], k: usize) -> &[Dim] {
    s.get(..s.len().saturating_sub(k)).unwrap_or(&[])
}

fn check_mask(m: &MaskUse, what: &str) -> Result<(), String> {
    check_expr_limits(m.expr.measure()).map_err(|e| format!("{what}: {e}"))?;
    if let Some(i) = m.expr.operands().into_iter().find(|&i| i >= m.operands.len()) {
        return Err(format!("{what} reads operand ${i}, but it has {} operand(s)", m.operands.len()));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Kernels

fn check_attention(p: &KernelProgram, a: &AttentionKernel, out: &Buffer) -> Result<(), String> {
    let (q, k, v) = (buffer(p, a.q)?, buffer(p, a.k)?, buffer(p, a.v)?);
    if !q.dtype.is_float() {
        return Err(format!("q {} is {}; attention needs a floating-point type", a.q, q.dtype));
    }
    let of_q = format!("q {}", a.q);
    same_dtype(&format!("k {}", a.k), k.dtype, q.dtype, &of_q)?;
    same_dtype(&format!("v {}", a.v), v.dtype, q.dtype, &of_q)?;
    same_dtype(&format!("the output {}", a.out), out.dtype, q.dtype, &of_q)?;
    min_rank(&format!("q {}", a.q), &q.shape, 2)?;
    min_rank(&format!("k {}", a.k), &k.shape, 2)?;
    min_rank(&format!("v {}", a.v), &v.shape, 2)?;
    min_rank(&format!("the output {}", a.out), &out.shape, 2)?;
    let (dq, dk) = (from_end(&q.shape, 1), from_end(&k.shape, 1));
    if dq != dk {
        return Err(format!(
            "q {} {} and k {} {} differ in the head dimension",
            a.q,
            shape_text(&q.shape),
            a.k,
            shape_text(&k.shape)
        ));
    }
    if from_end(&k.shape, 2) != from_end(&v.shape, 2) || leading(&k.shape, 2) != leading(&v.shape, 2) {
        return Err(format!(
            "k {} {} and v {} {} differ in their leading dimensions or length",
            a.k,
            shape_text(&k.shape),
            a.v,
            shape_text(&v.shape)
        ));
    }
    let lead = leading(&out.shape, 2);
    let mut expected = lead.to_vec();
    expected.extend(from_end(&q.shape, 2).cloned());
    expected.extend(from_end(&v.shape, 1).cloned());
    same_shape(out, &expected, "attention over its q and v")?;
    if !broadcasts_to(leading(&q.shape, 2), lead) {
        return Err(format!(
            "q {} {} does not broadcast to the output's leading {}",
            a.q,
            shape_text(&q.shape),
            shape_text(lead)
        ));
    }
    // k and v: broadcast, except that the head axis (-3) may be grouped.
    let lk = leading(&k.shape, 2);
    let one = Dim::constant(1);
    let grouped_ok = lk.len() <= lead.len()
        && lk.iter().rev().zip(lead.iter().rev()).enumerate().all(|(i, (s, d))| {
            *s == one
                || s == d
                || (i == 0 && matches!((s.as_const(), d.as_const()), (Some(s), Some(d)) if s > 0 && d % s == 0))
        });
    if !grouped_ok {
        return Err(format!(
            "k {} {} does not broadcast (or group its heads) to the output's leading {}",
            a.k,
            shape_text(&k.shape),
            shape_text(lead)
        ));
    }
    if let Some(m) = &a.mask {
        check_mask(m, "the mask")?;
    }
    match &a.score {
        Some(s) => {
            check_expr_limits(s.measure()).map_err(|e| format!("the score lambda: {e}"))?;
            for i in s.operands() {
                if !matches!(a.score_operands.get(i), Some(Some(_))) {
                    return Err(format!("the score lambda reads operand ${i}, which has no buffer"));
                }
            }
        }
        None => {
            if let Some(b) = a.score_operands.iter().flatten().next() {
                return Err(format!("score operand {b} without a score lambda"));
            }
        }
    }
    positive("tile_q", a.tile_q)?;
    positive("tile_k", a.tile_k)?;
    match a.kv_split {
        KvSplit::None => {}
        KvSplit::Fixed(n) => positive("the kv split count", n)?,
        KvSplit::Auto { workers, max_splits, min_tiles } => {
            positive("kv_split workers", workers)?;
            positive("kv_split max_splits", max_splits)?;
            positive("kv_split min_tiles", min_tiles)?;
        }
    }
    Ok(())
}

fn check_matmul(p: &KernelProgram, m: &MatMulKernel, out: &Buffer) -> Result<(), String> {
    let a = view_shape(p, &m.a, "a")?;
    let b = view_shape(p, &m.b, "b")?;
    let (ta, tb) = (view_dtype(p, &m.a)?, view_dtype(p, &m.b)?);
    same_dtype(&format!("b {}", access_text(&m.b)), tb, ta, &format!("a {}", access_text(&m.a)))?;
    same_dtype("the output", out.dtype, ta, &format!("a {}", access_text(&m.a)))?;
    min_rank(&format!("a {}", access_text(&m.a)), &a, 2)?;
    min_rank(&format!("b {}", access_text(&m.b)), &b, 2)?;
    min_rank("the output", &out.shape, 2)?;
    if from_end(&a, 1) != from_end(&b, 2) {
        return Err(format!(
            "the inner dimensions differ: a {} is {}, b {} is {}",
            access_text(&m.a),
            shape_text(&a),
            access_text(&m.b),
            shape_text(&b)
        ));
    }
    let lead = leading(&out.shape, 2);
    let mut expected = lead.to_vec();
    expected.extend(from_end(&a, 2).cloned());
    expected.extend(from_end(&b, 1).cloned());
    same_shape(out, &expected, "a @ b")?;
    for (name, access, s) in [("a", &m.a, &a), ("b", &m.b, &b)] {
        if !broadcasts_to(leading(s, 2), lead) {
            return Err(format!(
                "{name} {} {} does not broadcast to the output's leading {}",
                access_text(access),
                shape_text(s),
                shape_text(lead)
            ));
        }
    }
    positive("tile_m", m.tile_m)?;
    positive("tile_n", m.tile_n)?;
    positive("tile_k", m.tile_k)
}

fn check_elementwise(p: &KernelProgram, e: &ElementwiseKernel, out: &Buffer) -> Result<(), String> {
    let mut in_types = Vec::with_capacity(e.inputs.len());
    for (i, a) in e.inputs.iter().enumerate() {
        let what = format!("in{i}");
        let s = view_shape(p, a, &what)?;
        if !broadcasts_to(&s, &out.shape) {
            return Err(format!(
                "in{i} {} {} does not broadcast to the output's {}",
                access_text(a),
                shape_text(&s),
                shape_text(&out.shape)
            ));
        }
        in_types.push(view_dtype(p, a)?);
    }
    for (i, m) in e.masks.iter().enumerate() {
        check_mask(m, &format!("mask m{i}"))?;
    }
    if !e.masks.is_empty() {
        min_rank("the output of a masked kernel", &out.shape, 2)?;
    }
    let last = e.body.last().ok_or_else(|| "the body is empty".to_string())?;
    for (n, inst) in e.body.iter().enumerate() {
        let earlier = |j: usize| -> Result<DType, String> {
            match e.body.get(..n).and_then(|b| b.get(j)) {
                Some(x) => Ok(x.dtype),
                None => Err(format!("v{n} reads v{j}, which is not an earlier instruction")),
            }
        };
        let operand = |j: usize, role: &str| -> Result<(), String> {
            let t = earlier(j)?;
            if t != inst.dtype {
                return Err(format!("v{n} is {} but its {role} v{j} is {t}", inst.dtype));
            }
            Ok(())
        };
        match &inst.op {
            EwOp::Load(i) => {
                let t = in_types
                    .get(*i)
                    .ok_or_else(|| format!("v{n} loads in{i}, but the kernel has {} input(s)", e.inputs.len()))?;
                if *t != inst.dtype {
                    return Err(format!("v{n} is {} but loads in{i}, a {t} buffer", inst.dtype));
                }
            }
            EwOp::Const(_) => {}
            EwOp::Unary(_, a) => operand(*a, "operand")?,
            EwOp::Binary(_, a, b) => {
                operand(*a, "operand")?;
                operand(*b, "operand")?;
            }
            EwOp::Select(c, a, b) => {
                let tc = earlier(*c)?;
                if tc != DType::Bool {
                    return Err(format!("v{n} selects on v{c}, which is {tc}, not bool"));
                }
                operand(*a, "operand")?;
                operand(*b, "operand")?;
            }
            EwOp::Mask(m) => {
                if *m >= e.masks.len() {
                    return Err(format!("v{n} evaluates mask m{m}, but the kernel has {} mask(s)", e.masks.len()));
                }
                if inst.dtype != DType::Bool {
                    return Err(format!("v{n} evaluates mask m{m} but is {}, not bool", inst.dtype));
                }
            }
        }
    }
    if last.dtype != out.dtype {
        return Err(format!(
            "the last instruction v{} is {}, but the output `{}` is {}",
            e.body.len().saturating_sub(1),
            last.dtype,
            out.name,
            out.dtype
        ));
    }
    Ok(())
}

fn check_reduce(p: &KernelProgram, r: &ReduceKernel, out: &Buffer) -> Result<(), String> {
    let x = contiguous_shape(p, &r.x, "x")?;
    same_dtype("the output", out.dtype, view_dtype(p, &r.x)?, &format!("x {}", access_text(&r.x)))?;
    check_axis("the reduction", r.axis, x.len())?;
    let mut expected = x.clone();
    if r.keepdims {
        if let Some(d) = expected.get_mut(r.axis) {
            *d = Dim::constant(1);
        }
    } else if r.axis < expected.len() {
        expected.remove(r.axis);
    }
    same_shape(out, &expected, &format!("reducing axis {} of {}", r.axis, shape_text(&x)))
}

fn check_row(p: &KernelProgram, r: &RowKernel, out: &Buffer) -> Result<(), String> {
    let x = contiguous_shape(p, &r.x, "x")?;
    let tx = view_dtype(p, &r.x)?;
    let of_x = format!("x {}", access_text(&r.x));
    if !tx.is_float() {
        return Err(format!("{of_x} is {tx}; a floating-point type is needed"));
    }
    same_dtype("the output", out.dtype, tx, &of_x)?;
    same_shape(out, &x, &of_x)?;
    let (params, min) = match r.op {
        RowOp::Softmax { axis } => {
            check_axis("the softmax", axis, x.len())?;
            (0, 1)
        }
        RowOp::LayerNorm { .. } => (2, 1),
        RowOp::RmsNorm { .. } => (1, 1),
        RowOp::Rope { .. } => (0, 2),
    };
    min_rank(&of_x, &x, min)?;
    if r.params.len() != params {
        return Err(format!("has {} parameter operand(s); {params} expected", r.params.len()));
    }
    for (i, a) in r.params.iter().enumerate() {
        let what = format!("parameter {i}");
        let s = view_shape(p, a, &what)?;
        same_dtype(&format!("{what} {}", access_text(a)), view_dtype(p, a)?, tx, &of_x)?;
        if !broadcasts_to(&s, &x) {
            return Err(format!(
                "{what} {} {} does not broadcast to x's {}",
                access_text(a),
                shape_text(&s),
                shape_text(&x)
            ));
        }
    }
    Ok(())
}

fn check_move(p: &KernelProgram, m: &MoveKernel, out: &Buffer) -> Result<(), String> {
    let mut shapes = Vec::with_capacity(m.srcs.len());
    for (i, a) in m.srcs.iter().enumerate() {
        let what = format!("src{i}");
        shapes.push(view_shape(p, a, &what)?);
        same_dtype(&format!("{what} {}", access_text(a)), view_dtype(p, a)?, out.dtype, "the output")?;
    }
    let single = || -> Result<&Vec<Dim>, String> {
        match shapes.as_slice() {
            [s] => Ok(s),
            _ => Err(format!("has {} sources; 1 expected", shapes.len())),
        }
    };
    match m.op {
        MoveOp::Copy => {
            let s = single()?;
            same_shape(out, s, "the copied view")
        }
        MoveOp::Concat { axis } => {
            let first = shapes.first().ok_or_else(|| "has no sources".to_string())?;
            check_axis("the concatenation", axis, first.len())?;
            let mut total = Some(Dim::constant(0));
            for (i, s) in shapes.iter().enumerate() {
                let same_rest =
                    s.len() == first.len() && s.iter().zip(first).enumerate().all(|(ax, (a, b))| ax == axis || a == b);
                if !same_rest {
                    return Err(format!(
                        "src{i} {} and src0 {} differ beyond axis {axis}",
                        shape_text(s),
                        shape_text(first)
                    ));
                }
                total = match (total, s.get(axis)) {
                    (Some(t), Some(d)) => t.checked_add(d).ok(),
                    _ => None,
                };
            }
            let mut expected = first.clone();
            match (total, expected.get_mut(axis)) {
                (Some(t), Some(d)) => *d = t,
                // Too complex to add up: only the other axes are checked.
                _ => {
                    if let (Some(d), Some(o)) = (expected.get_mut(axis), out.shape.get(axis)) {
                        *d = o.clone();
                    }
                }
            }
            same_shape(out, &expected, &format!("concatenating along axis {axis}"))
        }
        MoveOp::Repeat { times, axis } => {
            let s = single()?;
            if times < 1 {
                return Err(format!("repeats {times} times; at least 1 is needed"));
            }
            check_axis("the repeat", axis, s.len())?;
            let mut expected = s.clone();
            if let Some(d) = expected.get_mut(axis) {
                match d.checked_mul(&Dim::constant(times)) {
                    Ok(n) => *d = n,
                    Err(e) => return Err(format!("repeating {} {times} times: {e}", shape_text(s))),
                }
            }
            same_shape(out, &expected, &format!("repeating axis {axis} {times} times"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::EwInst;
    use tdl_ir::{BinaryOp, ConstValue, MaskExpr, ReduceOp, UnaryOp};

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

    fn ew(op: EwOp, dtype: DType) -> EwInst {
        EwInst { op, dtype }
    }

    /// `o = attention(q, k, v, causal)`, `s = q @ kᵀ` (k read transposed),
    /// `e = exp(s * 2) where causal else 0`, `m = max(e, axis 2)`,
    /// `sm = softmax(s)`, `kt = copy(transpose(k))`, `n = rmsnorm(o, g)`,
    /// `cat = concat(o, o)`, `r = repeat(o, 2, axis 0)`.
    fn valid() -> KernelProgram {
        let f = DType::F32;
        let htd = vec![sym("H"), sym("T"), c(64)];
        let hts = vec![sym("H"), sym("T"), sym("T")];
        let gain = ConstValue { dtype: f, shape: vec![64], data: vec![1.0; 64] };
        let buffers = vec![
            buf("q", f, htd.clone(), BufKind::Input(0)),
            buf("k", f, htd.clone(), BufKind::Input(1)),
            buf("v", f, htd.clone(), BufKind::Input(2)),
            buf("g", f, vec![c(64)], BufKind::Const(gain)),
            buf("o", f, htd.clone(), BufKind::Temp),
            buf("s", f, hts.clone(), BufKind::Temp),
            buf("e", f, hts.clone(), BufKind::Temp),
            buf("m", f, vec![sym("H"), sym("T")], BufKind::Temp),
            buf("sm", f, hts.clone(), BufKind::Temp),
            buf("kt", f, vec![sym("H"), c(64), sym("T")], BufKind::Temp),
            buf("n", f, htd.clone(), BufKind::Temp),
            buf("cat", f, vec![sym("H"), sym("T"), c(128)], BufKind::Temp),
            buf("r", f, vec![sym("H").checked_mul(&c(2)).unwrap_or_default(), sym("T"), c(64)], BufKind::Temp),
        ];
        let kernels = vec![
            kernel(
                "o",
                KernelBody::Attention(Box::new(AttentionKernel {
                    q: BufId(0),
                    k: BufId(1),
                    v: BufId(2),
                    mask: Some(MaskUse { expr: MaskExpr::Causal, operands: vec![] }),
                    scale: None,
                    score: None,
                    score_operands: vec![],
                    tile_q: 64,
                    tile_k: 64,
                    kv_split: KvSplit::Auto { workers: 8, max_splits: 16, min_tiles: 4 },
                    out: BufId(4),
                })),
            ),
            kernel(
                "s",
                KernelBody::MatMul(MatMulKernel {
                    a: Access::whole(BufId(0)),
                    b: Access { buf: BufId(1), view: vec![ViewOp::Transpose] },
                    tile_m: 64,
                    tile_n: 64,
                    tile_k: 32,
                    out: BufId(5),
                }),
            ),
            kernel(
                "e",
                KernelBody::Elementwise(ElementwiseKernel {
                    inputs: vec![Access::whole(BufId(5))],
                    masks: vec![MaskUse { expr: MaskExpr::Causal, operands: vec![] }],
                    body: vec![
                        ew(EwOp::Load(0), f),
                        ew(EwOp::Const(2.0), f),
                        ew(EwOp::Binary(BinaryOp::Mul, 0, 1), f),
                        ew(EwOp::Unary(UnaryOp::Exp, 2), f),
                        ew(EwOp::Mask(0), DType::Bool),
                        ew(EwOp::Const(0.0), f),
                        ew(EwOp::Select(4, 3, 5), f),
                    ],
                    out: BufId(6),
                }),
            ),
            kernel(
                "m",
                KernelBody::Reduce(ReduceKernel {
                    op: ReduceOp::Max,
                    axis: 2,
                    keepdims: false,
                    x: Access::whole(BufId(6)),
                    out: BufId(7),
                }),
            ),
            kernel(
                "sm",
                KernelBody::Row(RowKernel {
                    op: RowOp::Softmax { axis: 2 },
                    x: Access::whole(BufId(5)),
                    params: vec![],
                    out: BufId(8),
                }),
            ),
            kernel(
                "kt",
                KernelBody::Move(MoveKernel {
                    op: MoveOp::Copy,
                    srcs: vec![Access { buf: BufId(1), view: vec![ViewOp::Transpose] }],
                    out: BufId(9),
                }),
            ),
            kernel(
                "n",
                KernelBody::Row(RowKernel {
                    op: RowOp::RmsNorm { eps: 1e-6 },
                    x: Access::whole(BufId(4)),
                    params: vec![Access::whole(BufId(3))],
                    out: BufId(10),
                }),
            ),
            kernel(
                "cat",
                KernelBody::Move(MoveKernel {
                    op: MoveOp::Concat { axis: 2 },
                    srcs: vec![Access::whole(BufId(4)), Access::whole(BufId(10))],
                    out: BufId(11),
                }),
            ),
            kernel(
                "r",
                KernelBody::Move(MoveKernel {
                    op: MoveOp::Repeat { times: 2, axis: 0 },
                    srcs: vec![Access::whole(BufId(4))],
                    out: BufId(12),
                }),
            ),
        ];
        KernelProgram {
            name: "t".into(),
            symbols: vec!["H".into(), "T".into()],
            buffers,
            params: vec![BufId(0), BufId(1), BufId(2)],
            kernels,
            results: vec![BufId(7), BufId(8), BufId(9), BufId(11), BufId(12)],
            target: "test".into(),
        }
    }

    fn body_mut(p: &mut KernelProgram, i: usize) -> &mut KernelBody {
        &mut p.kernels.get_mut(i).expect("kernel").body
    }

    fn rejects(p: &KernelProgram, fragment: &str) {
        match verify(p) {
            Ok(()) => panic!("accepted, expected an error containing {fragment:?}"),
            Err(e) => assert!(e.contains(fragment), "error {e:?} does not contain {fragment:?}"),
        }
    }

    #[test]
    fn accepts_a_valid_program() {
        assert_eq!(verify(&valid()), Ok(()));
    }

    #[test]
    fn rejects_read_before_write() {
        let mut p = valid();
        // `s` (matmul) reads %6, which the next kernel writes.
        if let KernelBody::MatMul(m) = body_mut(&mut p, 1) {
            m.a = Access::whole(BufId(6));
            m.b = Access::whole(BufId(6));
        }
        rejects(&p, "kernel `s` (matmul): reads %6 before any kernel writes it");
        // Swapping two kernels breaks the order too.
        let mut p = valid();
        p.kernels.swap(1, 2);
        rejects(&p, "kernel `e` (elementwise): reads %5 before any kernel writes it");
    }

    #[test]
    fn rejects_wrong_dtypes() {
        let mut p = valid();
        if let Some(b) = p.buffers.get_mut(2) {
            b.dtype = DType::F16;
        }
        rejects(&p, "kernel `o` (attention): v %2 is f16, but q %0 is f32");
        let mut p = valid();
        if let KernelBody::Elementwise(e) = body_mut(&mut p, 2) {
            if let Some(i) = e.body.get_mut(2) {
                i.dtype = DType::F16;
            }
        }
        rejects(&p, "kernel `e` (elementwise): v2 is f16 but its operand v0 is f32");
        let mut p = valid();
        if let KernelBody::Elementwise(e) = body_mut(&mut p, 2) {
            if let Some(i) = e.body.get_mut(4) {
                i.dtype = DType::F32;
            }
        }
        rejects(&p, "v4 evaluates mask m0 but is f32, not bool");
        let mut p = valid();
        if let KernelBody::Elementwise(e) = body_mut(&mut p, 2) {
            if let Some(i) = e.body.get_mut(6) {
                i.op = EwOp::Select(5, 3, 4);
            }
        }
        rejects(&p, "v6 selects on v5, which is f32, not bool");
        let mut p = valid();
        if let KernelBody::Elementwise(e) = body_mut(&mut p, 2) {
            e.body.truncate(5);
        }
        rejects(&p, "the last instruction v4 is bool, but the output `e` is f32");
    }

    #[test]
    fn rejects_out_of_range_buffers() {
        let mut p = valid();
        if let KernelBody::Reduce(r) = body_mut(&mut p, 3) {
            r.x = Access::whole(BufId(40));
        }
        rejects(&p, "kernel `m` (reduce): reads %40, which is not a buffer (the program has 13)");
        let mut p = valid();
        if let KernelBody::Move(m) = body_mut(&mut p, 5) {
            m.out = BufId(13);
        }
        rejects(&p, "kernel `kt` (copy): writes %13, which is not a buffer");
        let mut p = valid();
        p.results.push(BufId(99));
        rejects(&p, "result 5 is %99, which is not a buffer");
        let mut p = valid();
        p.params.push(BufId(99));
        rejects(&p, "parameter 3 is %99, which is not a buffer");
    }

    #[test]
    fn rejects_non_contiguous_operands() {
        let mut p = valid();
        if let KernelBody::Row(r) = body_mut(&mut p, 4) {
            r.x = Access { buf: BufId(5), view: vec![ViewOp::Transpose] };
        }
        rejects(&p, "kernel `sm` (softmax): x transpose(%5) is not contiguous");
        let mut p = valid();
        if let KernelBody::Reduce(r) = body_mut(&mut p, 3) {
            r.x = Access { buf: BufId(6), view: vec![ViewOp::Permute(vec![0, 2, 1])] };
        }
        rejects(&p, "kernel `m` (reduce): x permute(%6, [0, 2, 1]) is not contiguous");
        // A reshape of a transposed view is not a valid view at all.
        let mut p = valid();
        if let KernelBody::Move(m) = body_mut(&mut p, 5) {
            if let Some(a) = m.srcs.get_mut(0) {
                a.view.push(ViewOp::Reshape(vec![sym("H"), sym("T"), c(64)]));
            }
        }
        rejects(&p, "kernel `kt` (copy): src0 reshape(transpose(%1), [H, T, 64]): reshape of a non-contiguous view that does not only split axes");
    }

    #[test]
    fn rejects_ssa_forward_references() {
        let mut p = valid();
        if let KernelBody::Elementwise(e) = body_mut(&mut p, 2) {
            if let Some(i) = e.body.get_mut(2) {
                i.op = EwOp::Binary(BinaryOp::Mul, 0, 3);
            }
        }
        rejects(&p, "kernel `e` (elementwise): v2 reads v3, which is not an earlier instruction");
        let mut p = valid();
        if let KernelBody::Elementwise(e) = body_mut(&mut p, 2) {
            if let Some(i) = e.body.get_mut(3) {
                i.op = EwOp::Unary(UnaryOp::Exp, 3);
            }
        }
        rejects(&p, "v3 reads v3, which is not an earlier instruction");
        let mut p = valid();
        if let KernelBody::Elementwise(e) = body_mut(&mut p, 2) {
            if let Some(i) = e.body.get_mut(0) {
                i.op = EwOp::Load(1);
            }
        }
        rejects(&p, "v0 loads in1, but the kernel has 1 input(s)");
        let mut p = valid();
        if let KernelBody::Elementwise(e) = body_mut(&mut p, 2) {
            e.body.clear();
        }
        rejects(&p, "kernel `e` (elementwise): the body is empty");
    }

    #[test]
    fn rejects_bad_writes_and_unwritten_temps() {
        let mut p = valid();
        if let KernelBody::Move(m) = body_mut(&mut p, 5) {
            m.out = BufId(1);
        }
        rejects(&p, "kernel `kt` (copy): writes %1 `k`, which is input 1");
        let mut p = valid();
        if let KernelBody::Move(m) = body_mut(&mut p, 5) {
            m.out = BufId(5);
        }
        rejects(&p, "kernel `kt` (copy): writes %5 `s`, which is already written by kernel `s` (matmul)");
        let mut p = valid();
        p.kernels.pop();
        rejects(&p, "buffer %12 `r` is a temp that no kernel writes");
    }

    #[test]
    fn rejects_bad_shapes_and_parameters() {
        let mut p = valid();
        if let Some(b) = p.buffers.get_mut(5) {
            b.shape = vec![sym("H"), sym("T"), c(64)];
        }
        rejects(&p, "kernel `s` (matmul): the output `s` has shape [H, T, 64], but a @ b gives [H, T, T]");
        let mut p = valid();
        if let KernelBody::MatMul(m) = body_mut(&mut p, 1) {
            m.b = Access::whole(BufId(1));
        }
        rejects(&p, "kernel `s` (matmul): the inner dimensions differ");
        let mut p = valid();
        if let KernelBody::Attention(a) = body_mut(&mut p, 0) {
            a.tile_q = 0;
        }
        rejects(&p, "kernel `o` (attention): tile_q is 0");
        let mut p = valid();
        if let KernelBody::Attention(a) = body_mut(&mut p, 0) {
            a.kv_split = KvSplit::Fixed(0);
        }
        rejects(&p, "the kv split count is 0");
        let mut p = valid();
        if let KernelBody::Attention(a) = body_mut(&mut p, 0) {
            a.mask = Some(MaskUse { expr: MaskExpr::Document { ids: 0 }, operands: vec![] });
        }
        rejects(&p, "kernel `o` (attention): the mask reads operand $0, but it has 0 operand(s)");
        let mut p = valid();
        if let KernelBody::Row(r) = body_mut(&mut p, 4) {
            r.op = RowOp::Softmax { axis: 3 };
        }
        rejects(&p, "kernel `sm` (softmax): the softmax axis 3 is out of range for rank 3");
        let mut p = valid();
        if let KernelBody::Reduce(r) = body_mut(&mut p, 3) {
            r.keepdims = true;
        }
        rejects(
            &p,
            "kernel `m` (reduce): the output `m` has shape [H, T], but reducing axis 2 of [H, T, T] gives [H, T, 1]",
        );
        let mut p = valid();
        if let KernelBody::Move(m) = body_mut(&mut p, 8) {
            m.op = MoveOp::Repeat { times: 3, axis: 0 };
        }
        rejects(&p, "gives [3*H, T, 64]");
        let mut p = valid();
        if let KernelBody::Move(m) = body_mut(&mut p, 7) {
            m.op = MoveOp::Concat { axis: 1 };
        }
        rejects(&p, "kernel `cat` (concat): the output `cat` has shape [H, T, 128], but concatenating along axis 1 gives [H, 2*T, 64]");
        let mut p = valid();
        p.symbols.reverse();
        rejects(&p, "symbols (T, H) are not sorted and distinct");
        let mut p = valid();
        p.params.swap(0, 1);
        rejects(&p, "parameter 0 is %1 `k`, which is input 1, not input 0");
    }
}
