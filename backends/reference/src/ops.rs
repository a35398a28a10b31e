//! The operator kernels: plain loops over `f64` elements, written for
//! obviousness rather than speed.
//!
//! Every kernel computes its output shape from the actual operand shapes,
//! compares it with `out` (the node's declared type evaluated under the
//! bindings, already checked against [`crate::Limits`]) and only then
//! allocates, so nothing is allocated that the limit did not allow.
//!
//! Floating-point kernels compute in `f64` and accumulate in `f64`, in
//! ascending index order. `i32` kernels compute exactly in wrapping 32-bit
//! integer arithmetic (floor division, `x / 0 == 0`), as a backend would.

use tdl_ir::{BinaryOp, DType, ReduceOp, UnaryOp};

use crate::error::{fail, RunError};
use crate::mask::MaskEval;
use crate::scalar::int_div;
use crate::tensor::{next_index, shape_text, strides, Tensor};

/// Fails unless the shape a kernel computed is the declared one.
pub(crate) fn ensure_shape(computed: &[usize], out: &[usize]) -> Result<(), RunError> {
    if computed != out {
        return fail(format!(
            "the operands give shape {}, but the node's type evaluates to {} under the bound symbols",
            shape_text(computed),
            shape_text(out)
        ));
    }
    Ok(())
}

/// NumPy broadcasting of two concrete shapes.
pub(crate) fn broadcast(a: &[usize], b: &[usize]) -> Result<Vec<usize>, RunError> {
    tdl_ir::layout::broadcast(a, b)
        .ok_or_else(|| RunError::eval(format!("shapes {} and {} do not broadcast", shape_text(a), shape_text(b))))
}

/// The flat offset in a tensor of `shape` (right-aligned against the
/// output, broadcast along size-1 axes) of output multi-index `idx`.
fn bcast_offset(idx: &[usize], shape: &[usize], st: &[usize]) -> usize {
    let lead = idx.len() - shape.len();
    let mut off = 0;
    for (i, (&d, &s)) in shape.iter().zip(st).enumerate() {
        if d != 1 {
            off += idx[lead + i] * s;
        }
    }
    off
}

/// Calls `f(flat, idx)` for every element of `shape` in row-major order.
fn for_each_index(
    shape: &[usize],
    n: usize,
    mut f: impl FnMut(usize, &[usize]) -> Result<(), RunError>,
) -> Result<(), RunError> {
    let mut idx = vec![0usize; shape.len()];
    for flat in 0..n {
        f(flat, &idx)?;
        next_index(&mut idx, shape);
    }
    Ok(())
}

/// `(outer, n, inner)`: the sizes before, at and after `axis`.
fn split_at_axis(shape: &[usize], axis: usize) -> Result<(usize, usize, usize), RunError> {
    let Some(&n) = shape.get(axis) else {
        return fail(format!("axis {axis} is out of range for shape {}", shape_text(shape)));
    };
    // Sub-products of an existing tensor's shape cannot overflow.
    let outer = shape[..axis].iter().product();
    let inner = shape[axis + 1..].iter().product();
    Ok((outer, n, inner))
}

fn as_i32(v: f64) -> i32 {
    // i32 tensors hold integers in range (inputs and constants are checked,
    // every i32 kernel wraps); `as` saturates rather than panics regardless.
    v as i32
}

pub(crate) fn unary(op: UnaryOp, x: &Tensor) -> Tensor {
    let int = x.dtype == DType::I32;
    let f = |v: f64| -> f64 {
        match op {
            UnaryOp::Neg if int => f64::from(as_i32(v).wrapping_neg()),
            UnaryOp::Abs if int => f64::from(as_i32(v).wrapping_abs()),
            UnaryOp::Neg => -v,
            UnaryOp::Abs => v.abs(),
            // NaN stays NaN.
            UnaryOp::Relu => {
                if v < 0.0 {
                    0.0
                } else {
                    v
                }
            }
            UnaryOp::Exp => v.exp(),
            UnaryOp::Log => v.ln(),
            UnaryOp::Sqrt => v.sqrt(),
            UnaryOp::Rsqrt => 1.0 / v.sqrt(),
            UnaryOp::Tanh => v.tanh(),
            UnaryOp::Sigmoid => sigmoid(v),
            UnaryOp::Gelu => 0.5 * v * (1.0 + libm::erf(v / std::f64::consts::SQRT_2)),
            UnaryOp::Silu => v * sigmoid(v),
        }
    };
    Tensor { dtype: x.dtype, shape: x.shape.clone(), data: x.data.iter().map(|&v| f(v)).collect() }
}

/// `1 / (1 + e^-x)`.
pub(crate) fn sigmoid(v: f64) -> f64 {
    1.0 / (1.0 + (-v).exp())
}

fn binary_scalar(op: BinaryOp, dtype: DType, a: f64, b: f64) -> f64 {
    if dtype == DType::I32 {
        let (x, y) = (as_i32(a), as_i32(b));
        let r = match op {
            BinaryOp::Add => x.wrapping_add(y),
            BinaryOp::Sub => x.wrapping_sub(y),
            BinaryOp::Mul => x.wrapping_mul(y),
            // Floor division; i32::MIN / -1 wraps to i32::MIN.
            BinaryOp::Div => int_div(i64::from(x), i64::from(y)) as i32,
        };
        return f64::from(r);
    }
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
    }
}

/// Elementwise `a op b` with NumPy broadcasting.
pub(crate) fn binary(op: BinaryOp, a: &Tensor, b: &Tensor, out: &[usize]) -> Result<Tensor, RunError> {
    if a.dtype != b.dtype {
        return fail(format!("`{}` of {} and {}: element types differ", op.name(), a.type_text(), b.type_text()));
    }
    let shape = broadcast(&a.shape, &b.shape)?;
    ensure_shape(&shape, out)?;
    let (sa, sb) = (strides(&a.shape), strides(&b.shape));
    let n = shape.iter().product();
    let mut data = Vec::with_capacity(n);
    for_each_index(&shape, n, |_, idx| {
        let x = a.data[bcast_offset(idx, &a.shape, &sa)];
        let y = b.data[bcast_offset(idx, &b.shape, &sb)];
        data.push(binary_scalar(op, a.dtype, x, y));
        Ok(())
    })?;
    Ok(Tensor { dtype: a.dtype, shape, data })
}

/// The `(q, k, h)` of a score-shaped multi-index: axes -2, -1 and -3.
fn qkh(idx: &[usize]) -> (usize, usize, usize) {
    let r = idx.len();
    (idx[r - 2], idx[r - 1], if r >= 3 { idx[r - 3] } else { 0 })
}

/// `s + mask`: `s` where the mask holds, `-inf` elsewhere.
pub(crate) fn add_mask(s: &Tensor, mask: &MaskEval, out: &[usize]) -> Result<Tensor, RunError> {
    ensure_shape(&s.shape, out)?;
    if s.rank() < 2 {
        return fail(format!("a mask is added to scores of rank at least 2, found {}", s.type_text()));
    }
    let mut data = Vec::with_capacity(s.len());
    for_each_index(&s.shape, s.len(), |flat, idx| {
        let (q, k, h) = qkh(idx);
        data.push(if mask.holds(q, k, h)? { s.data[flat] } else { f64::NEG_INFINITY });
        Ok(())
    })?;
    Ok(Tensor { dtype: s.dtype, shape: s.shape.clone(), data })
}

/// `where(mask, a, b)`: the mask over the last two axes of the broadcast
/// shape of `a` and `b` (the head at axis -3).
pub(crate) fn where_mask(mask: &MaskEval, a: &Tensor, b: &Tensor, out: &[usize]) -> Result<Tensor, RunError> {
    let shape = broadcast(&a.shape, &b.shape)?;
    ensure_shape(&shape, out)?;
    if shape.len() < 2 {
        return fail(format!("`where` with a mask needs a result of rank at least 2, found {}", shape_text(&shape)));
    }
    let (sa, sb) = (strides(&a.shape), strides(&b.shape));
    let n = shape.iter().product();
    let mut data = Vec::with_capacity(n);
    for_each_index(&shape, n, |_, idx| {
        let (q, k, h) = qkh(idx);
        data.push(if mask.holds(q, k, h)? {
            a.data[bcast_offset(idx, &a.shape, &sa)]
        } else {
            b.data[bcast_offset(idx, &b.shape, &sb)]
        });
        Ok(())
    })?;
    Ok(Tensor { dtype: a.dtype, shape, data })
}

/// `where(c, a, b)` with a `bool` tensor condition; all three broadcast.
pub(crate) fn where_tensor(c: &Tensor, a: &Tensor, b: &Tensor, out: &[usize]) -> Result<Tensor, RunError> {
    let shape = broadcast(&c.shape, &broadcast(&a.shape, &b.shape)?)?;
    ensure_shape(&shape, out)?;
    let (sc, sa, sb) = (strides(&c.shape), strides(&a.shape), strides(&b.shape));
    let n = shape.iter().product();
    let mut data = Vec::with_capacity(n);
    for_each_index(&shape, n, |_, idx| {
        data.push(if c.data[bcast_offset(idx, &c.shape, &sc)] != 0.0 {
            a.data[bcast_offset(idx, &a.shape, &sa)]
        } else {
            b.data[bcast_offset(idx, &b.shape, &sb)]
        });
        Ok(())
    })?;
    Ok(Tensor { dtype: a.dtype, shape, data })
}

/// `a @ b` over the last two axes; leading axes broadcast.
pub(crate) fn matmul(a: &Tensor, b: &Tensor, out: &[usize]) -> Result<Tensor, RunError> {
    let (ra, rb) = (a.rank(), b.rank());
    if ra < 2 || rb < 2 {
        return fail(format!(
            "matmul needs operands of rank at least 2, found {} and {}",
            a.type_text(),
            b.type_text()
        ));
    }
    let (m, kd) = (a.shape[ra - 2], a.shape[ra - 1]);
    let (kb, nn) = (b.shape[rb - 2], b.shape[rb - 1]);
    if kd != kb {
        return fail(format!("matmul inner dimensions differ: {} @ {}", a.type_text(), b.type_text()));
    }
    let batch = broadcast(&a.shape[..ra - 2], &b.shape[..rb - 2])?;
    let mut shape = batch.clone();
    shape.extend([m, nn]);
    ensure_shape(&shape, out)?;
    let (sa, sb) = (strides(&a.shape), strides(&b.shape));
    let int = a.dtype == DType::I32;
    let nb: usize = batch.iter().product();
    let mut data = Vec::with_capacity(nb * m * nn);
    for_each_index(&batch, nb, |_, bidx| {
        let oa = bcast_offset(bidx, &a.shape[..ra - 2], &sa[..ra - 2]);
        let ob = bcast_offset(bidx, &b.shape[..rb - 2], &sb[..rb - 2]);
        for i in 0..m {
            for j in 0..nn {
                if int {
                    let mut acc: i32 = 0;
                    for p in 0..kd {
                        let x = as_i32(a.data[oa + i * kd + p]);
                        let y = as_i32(b.data[ob + p * nn + j]);
                        acc = acc.wrapping_add(x.wrapping_mul(y));
                    }
                    data.push(f64::from(acc));
                } else {
                    let mut acc = 0.0;
                    for p in 0..kd {
                        acc += a.data[oa + i * kd + p] * b.data[ob + p * nn + j];
                    }
                    data.push(acc);
                }
            }
        }
        Ok(())
    })?;
    Ok(Tensor { dtype: a.dtype, shape, data })
}

/// `sum`, `max` or `mean` over `axis`.
pub(crate) fn reduce(op: ReduceOp, axis: usize, keepdims: bool, x: &Tensor, out: &[usize]) -> Result<Tensor, RunError> {
    let (outer, n, inner) = split_at_axis(&x.shape, axis)?;
    let mut shape = x.shape.clone();
    if keepdims {
        shape[axis] = 1;
    } else {
        shape.remove(axis);
    }
    ensure_shape(&shape, out)?;
    if op == ReduceOp::Max && n == 0 {
        return fail(format!("`max` over axis {axis} of {}: the axis is empty, so there is no maximum", x.type_text()));
    }
    let int = x.dtype == DType::I32;
    let mut data = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for j in 0..inner {
            let at = |i: usize| x.data[(o * n + i) * inner + j];
            let v = match op {
                ReduceOp::Sum if int => f64::from((0..n).fold(0i32, |acc, i| acc.wrapping_add(as_i32(at(i))))),
                ReduceOp::Sum => (0..n).fold(0.0, |acc, i| acc + at(i)),
                ReduceOp::Mean => (0..n).fold(0.0, |acc, i| acc + at(i)) / n as f64,
                ReduceOp::Max => (1..n).fold(at(0), |acc, i| max_nan(acc, at(i))),
            };
            data.push(v);
        }
    }
    Ok(Tensor { dtype: x.dtype, shape, data })
}

/// The larger of two values; NaN wins (NumPy's `max`).
pub(crate) fn max_nan(acc: f64, v: f64) -> f64 {
    if acc.is_nan() || v.is_nan() {
        f64::NAN
    } else if v > acc {
        v
    } else {
        acc
    }
}

/// Softmax of one slice, in place: `exp(x - max) / sum`; a slice that is
/// entirely `-inf` becomes all zeros.
pub(crate) fn softmax_slice(row: &mut [f64]) {
    let Some(&first) = row.first() else { return };
    let m = row.iter().skip(1).fold(first, |acc, &v| max_nan(acc, v));
    if m == f64::NEG_INFINITY {
        row.iter_mut().for_each(|v| *v = 0.0);
        return;
    }
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = (*v - m).exp();
        sum += *v;
    }
    for v in row.iter_mut() {
        *v /= sum;
    }
}

/// Numerically stable softmax over `axis`.
pub(crate) fn softmax(axis: usize, x: &Tensor, out: &[usize]) -> Result<Tensor, RunError> {
    ensure_shape(&x.shape, out)?;
    let (outer, n, inner) = split_at_axis(&x.shape, axis)?;
    let mut data = vec![0.0; x.len()];
    let mut row = vec![0.0; n];
    for o in 0..outer {
        for j in 0..inner {
            for (i, r) in row.iter_mut().enumerate() {
                *r = x.data[(o * n + i) * inner + j];
            }
            softmax_slice(&mut row);
            for (i, r) in row.iter().enumerate() {
                data[(o * n + i) * inner + j] = *r;
            }
        }
    }
    Ok(Tensor { dtype: x.dtype, shape: x.shape.clone(), data })
}

/// Output axis `i` is input axis `perm[i]`.
pub(crate) fn permute(perm: &[usize], x: &Tensor, out: &[usize]) -> Result<Tensor, RunError> {
    let r = x.rank();
    let mut seen = vec![false; r];
    if perm.len() != r || perm.iter().any(|&p| p >= r || std::mem::replace(&mut seen[p], true)) {
        return fail(format!("{perm:?} is not a permutation of the axes of {}", x.type_text()));
    }
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    ensure_shape(&shape, out)?;
    let sx = strides(&x.shape);
    let mut data = Vec::with_capacity(x.len());
    for_each_index(&shape, x.len(), |_, idx| {
        let off: usize = idx.iter().zip(perm).map(|(&i, &p)| i * sx[p]).sum();
        data.push(x.data[off]);
        Ok(())
    })?;
    Ok(Tensor { dtype: x.dtype, shape, data })
}

/// Swaps the last two axes.
pub(crate) fn transpose(x: &Tensor, out: &[usize]) -> Result<Tensor, RunError> {
    let r = x.rank();
    if r < 2 {
        return fail(format!("transpose needs rank at least 2, found {}", x.type_text()));
    }
    let mut perm: Vec<usize> = (0..r).collect();
    perm.swap(r - 1, r - 2);
    permute(&perm, x, out)
}

/// The same elements in row-major order under the declared shape.
pub(crate) fn reshape(x: &Tensor, out: &[usize]) -> Result<Tensor, RunError> {
    let n: usize = out.iter().product(); // `out` passed the limit check
    if n != x.len() {
        return fail(format!(
            "reshape of {} ({} elements) into {} ({n} elements)",
            x.type_text(),
            x.len(),
            shape_text(out)
        ));
    }
    Ok(Tensor { dtype: x.dtype, shape: out.to_vec(), data: x.data.clone() })
}

/// Concatenation along `axis`.
pub(crate) fn concat(axis: usize, xs: &[&Tensor], out: &[usize]) -> Result<Tensor, RunError> {
    let Some(first) = xs.first() else {
        return fail("concat needs at least one operand");
    };
    let mut total = 0usize;
    for x in xs {
        let same = x.rank() == first.rank()
            && x.dtype == first.dtype
            && x.shape.iter().zip(&first.shape).enumerate().all(|(ax, (a, b))| ax == axis || a == b);
        if !same || axis >= x.rank() {
            return fail(format!("concat along axis {axis}: {} does not match {}", x.type_text(), first.type_text()));
        }
        total = match total.checked_add(x.shape[axis]) {
            Some(t) => t,
            None => return fail("concat result is too large"),
        };
    }
    let mut shape = first.shape.clone();
    shape[axis] = total;
    ensure_shape(&shape, out)?;
    let (outer, _, inner) = split_at_axis(&shape, axis)?;
    let mut data = Vec::with_capacity(out.iter().product());
    for o in 0..outer {
        for x in xs {
            let block = x.shape[axis] * inner;
            data.extend_from_slice(&x.data[o * block..(o + 1) * block]);
        }
    }
    Ok(Tensor { dtype: first.dtype, shape, data })
}

/// Elements `start..end` along `axis`.
pub(crate) fn slice(axis: usize, start: i64, end: i64, x: &Tensor, out: &[usize]) -> Result<Tensor, RunError> {
    let (outer, n, inner) = split_at_axis(&x.shape, axis)?;
    let (Ok(s), Ok(e)) = (usize::try_from(start), usize::try_from(end)) else {
        return fail(format!("slice {start}..{end} has a negative bound"));
    };
    if s > e || e > n {
        return fail(format!(
            "slice {start}..{end} along axis {axis} is out of range for {} (axis size {n})",
            x.type_text()
        ));
    }
    let mut shape = x.shape.clone();
    shape[axis] = e - s;
    ensure_shape(&shape, out)?;
    let mut data = Vec::with_capacity(outer * (e - s) * inner);
    for o in 0..outer {
        data.extend_from_slice(&x.data[(o * n + s) * inner..(o * n + e) * inner]);
    }
    Ok(Tensor { dtype: x.dtype, shape, data })
}

/// Each slice along `axis` repeated `times` times consecutively.
pub(crate) fn repeat(times: i64, axis: usize, x: &Tensor, out: &[usize]) -> Result<Tensor, RunError> {
    let (outer, n, inner) = split_at_axis(&x.shape, axis)?;
    let Some(t) = usize::try_from(times).ok().filter(|&t| t >= 1) else {
        return fail(format!("repeat count {times} must be at least 1"));
    };
    let mut shape = x.shape.clone();
    shape[axis] = match n.checked_mul(t) {
        Some(v) => v,
        None => return fail("repeat result is too large"),
    };
    ensure_shape(&shape, out)?;
    let mut data = Vec::with_capacity(out.iter().product());
    for o in 0..outer {
        for i in 0..n {
            let row = &x.data[(o * n + i) * inner..(o * n + i + 1) * inner];
            for _ in 0..t {
                data.extend_from_slice(row);
            }
        }
    }
    Ok(Tensor { dtype: x.dtype, shape, data })
}

fn check_vector(what: &str, v: &Tensor, d: usize) -> Result<(), RunError> {
    if v.shape != [d] {
        return fail(format!("the {what} must have shape [{d}] (the last axis of the input), found {}", v.type_text()));
    }
    Ok(())
}

/// `(x - mean) / sqrt(var + eps) * gain + bias` over the last axis, with the
/// biased (population) variance.
pub(crate) fn layernorm(eps: f64, x: &Tensor, g: &Tensor, b: &Tensor, out: &[usize]) -> Result<Tensor, RunError> {
    ensure_shape(&x.shape, out)?;
    let Some(&d) = x.shape.last() else {
        return fail("layernorm needs rank at least 1");
    };
    check_vector("layernorm gain", g, d)?;
    check_vector("layernorm bias", b, d)?;
    let mut data = Vec::with_capacity(x.len());
    if d > 0 {
        for row in x.data.chunks_exact(d) {
            let mean = row.iter().fold(0.0, |a, &v| a + v) / d as f64;
            let var = row.iter().fold(0.0, |a, &v| a + (v - mean) * (v - mean)) / d as f64;
            let denom = (var + eps).sqrt();
            for (i, &v) in row.iter().enumerate() {
                data.push((v - mean) / denom * g.data[i] + b.data[i]);
            }
        }
    }
    Ok(Tensor { dtype: x.dtype, shape: x.shape.clone(), data })
}

/// `x / sqrt(mean(x²) + eps) * gain` over the last axis.
pub(crate) fn rmsnorm(eps: f64, x: &Tensor, g: &Tensor, out: &[usize]) -> Result<Tensor, RunError> {
    ensure_shape(&x.shape, out)?;
    let Some(&d) = x.shape.last() else {
        return fail("rmsnorm needs rank at least 1");
    };
    check_vector("rmsnorm gain", g, d)?;
    let mut data = Vec::with_capacity(x.len());
    if d > 0 {
        for row in x.data.chunks_exact(d) {
            let ms = row.iter().fold(0.0, |a, &v| a + v * v) / d as f64;
            let denom = (ms + eps).sqrt();
            for (i, &v) in row.iter().enumerate() {
                data.push(v / denom * g.data[i]);
            }
        }
    }
    Ok(Tensor { dtype: x.dtype, shape: x.shape.clone(), data })
}

/// Rotary embedding, rotate-half: for `i < D/2`, `θ = pos · base^(-2i/D)`
/// with `pos` the index along axis -2; `out[i] = x[i]·cos θ − x[i+D/2]·sin θ`,
/// `out[i+D/2] = x[i+D/2]·cos θ + x[i]·sin θ`.
pub(crate) fn rope(base: f64, x: &Tensor, out: &[usize]) -> Result<Tensor, RunError> {
    ensure_shape(&x.shape, out)?;
    let r = x.rank();
    if r < 2 {
        return fail(format!("rope needs rank at least 2, found {}", x.type_text()));
    }
    let (p, d) = (x.shape[r - 2], x.shape[r - 1]);
    if d % 2 != 0 {
        return fail(format!("rope needs an even last dimension, found {} ({})", d, x.type_text()));
    }
    let half = d / 2;
    let mut data = vec![0.0; x.len()];
    if d > 0 {
        for (row_index, (row, o)) in x.data.chunks_exact(d).zip(data.chunks_exact_mut(d)).enumerate() {
            let pos = (row_index % p.max(1)) as f64;
            for i in 0..half {
                let theta = pos * base.powf(-((2 * i) as f64) / d as f64);
                let (sin, cos) = theta.sin_cos();
                let (x1, x2) = (row[i], row[i + half]);
                o[i] = x1 * cos - x2 * sin;
                o[i + half] = x2 * cos + x1 * sin;
            }
        }
    }
    Ok(Tensor { dtype: x.dtype, shape: x.shape.clone(), data })
}
