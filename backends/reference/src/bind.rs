//! Binding a graph's dimension symbols from the shapes of its inputs.
//!
//! Every input is checked against its parameter's type: element type, rank
//! and every dimension. A dimension that is exactly one symbol (`T`) binds
//! it; the same symbol must get the same value everywhere. A composite
//! dimension (`2*T + 1`) is solved for its one unbound symbol when that
//! symbol appears linearly; every dimension is finally evaluated and
//! compared with the actual size.

use std::collections::BTreeMap;

use tdl_ir::{Bindings, Dim, Graph};

use crate::error::RunError;
use crate::tensor::Tensor;

/// Where a symbol got its value: parameter name and axis.
struct Origin {
    value: i64,
    param: String,
    axis: usize,
}

/// Checks `inputs` against the signature of `g` and binds every dimension
/// symbol the parameters mention.
///
/// Errors name the input, its expected type (`f32[H, T, 64]`) and its actual
/// shape; a symbol bound to two values names both inputs and both values.
pub fn bind_symbols(g: &Graph, inputs: &[Tensor]) -> Result<Bindings, RunError> {
    let params = g.params();
    if params.len() != inputs.len() {
        return Err(RunError::InputCount {
            graph: g.name.clone(),
            signature: g.signature(),
            expected: params.len(),
            found: inputs.len(),
        });
    }
    let type_error = |i: usize, detail: String| RunError::InputType {
        name: params[i].name.clone(),
        index: i,
        expected: params[i].ty.to_string(),
        found: inputs[i].type_text(),
        detail,
    };
    for (i, (p, t)) in params.iter().zip(inputs).enumerate() {
        if p.ty.dtype != t.dtype {
            return Err(type_error(i, format!("the element type is {}, expected {}", t.dtype, p.ty.dtype)));
        }
        if p.ty.rank() != t.rank() {
            return Err(type_error(i, format!("the rank is {}, expected {}", t.rank(), p.ty.rank())));
        }
    }

    // Pass 1: constants and plain symbols.
    let mut origins: BTreeMap<String, Origin> = BTreeMap::new();
    for (i, (p, t)) in params.iter().zip(inputs).enumerate() {
        for (axis, (dim, &actual)) in p.ty.shape.iter().zip(&t.shape).enumerate() {
            let Ok(actual) = i64::try_from(actual) else {
                return Err(type_error(
                    i,
                    format!("axis {axis} has size {actual}, which does not fit in 64-bit dimension arithmetic"),
                ));
            };
            if let Some(c) = dim.as_const() {
                if c != actual {
                    return Err(type_error(i, format!("axis {axis} is {actual}, expected {c}")));
                }
            } else if let Some(sym) = dim.as_sym() {
                match origins.get(sym) {
                    Some(o) if o.value != actual => {
                        return Err(RunError::SymbolConflict {
                            symbol: sym.to_string(),
                            first: o.param.clone(),
                            first_axis: o.axis,
                            first_value: o.value,
                            second: p.name.clone(),
                            second_axis: axis,
                            second_value: actual,
                        })
                    }
                    Some(_) => {}
                    None => {
                        origins.insert(sym.to_string(), Origin { value: actual, param: p.name.clone(), axis });
                    }
                }
            }
        }
    }
    let mut bindings: Bindings = origins.iter().map(|(s, o)| (s.clone(), o.value)).collect();

    // Pass 2: solve composite dimensions `A*X + B = actual` for their one
    // unbound symbol X, until nothing changes.
    loop {
        let mut progress = false;
        for (i, (p, t)) in params.iter().zip(inputs).enumerate() {
            for (axis, (dim, &actual)) in p.ty.shape.iter().zip(&t.shape).enumerate() {
                let unbound: Vec<String> = dim.symbols().into_iter().filter(|s| !bindings.contains_key(s)).collect();
                if unbound.len() != 1 {
                    continue;
                }
                let x = &unbound[0];
                let Some((a, b)) = linear_in(dim, x, &bindings) else { continue };
                let actual = actual as i64; // fits: checked in pass 1
                let rest = actual.checked_sub(b);
                let solution = match rest {
                    Some(r) if a != 0 && r % a == 0 && r / a >= 0 => r / a,
                    _ => {
                        return Err(RunError::Unbindable {
                            name: p.name.clone(),
                            index: i,
                            axis,
                            detail: format!(
                                "size {actual} is not {dim} for any {x} >= 0 (with the symbols bound so far: {})",
                                bindings_text(&bindings)
                            ),
                        })
                    }
                };
                bindings.insert(x.clone(), solution);
                origins.insert(x.clone(), Origin { value: solution, param: p.name.clone(), axis });
                progress = true;
            }
        }
        if !progress {
            break;
        }
    }

    // Pass 3: every dimension must now evaluate to the actual size.
    for (i, (p, t)) in params.iter().zip(inputs).enumerate() {
        for (axis, (dim, &actual)) in p.ty.shape.iter().zip(&t.shape).enumerate() {
            match dim.eval(&bindings) {
                Ok(v) if v == actual as i64 => {}
                Ok(v) => {
                    return Err(type_error(
                        i,
                        format!("axis {axis} is {actual}, but {dim} = {v} with {}", bindings_text(&bindings)),
                    ))
                }
                Err(e) => {
                    return Err(RunError::Unbindable {
                        name: p.name.clone(),
                        index: i,
                        axis,
                        detail: format!("cannot evaluate {dim}: {e} (a symbol must appear alone as some input dimension, or linearly in one)"),
                    })
                }
            }
        }
    }
    Ok(bindings)
}

/// `dim` as `A*x + B` with `A`, `B` evaluated under `bindings`, when every
/// monomial holds `x` at most once and everything else is bound.
fn linear_in(dim: &Dim, x: &str, bindings: &Bindings) -> Option<(i64, i64)> {
    let (mut a, mut b) = (0i64, 0i64);
    for (mono, c) in dim.terms() {
        let count = mono.iter().filter(|s| s.as_str() == x).count();
        let mut v = c;
        for s in mono.iter().filter(|s| s.as_str() != x) {
            v = v.checked_mul(*bindings.get(s)?)?;
        }
        match count {
            0 => b = b.checked_add(v)?,
            1 => a = a.checked_add(v)?,
            _ => return None,
        }
    }
    Some((a, b))
}

fn bindings_text(b: &Bindings) -> String {
    if b.is_empty() {
        return "no symbols bound".to_string();
    }
    let parts: Vec<String> = b.iter().map(|(s, v)| format!("{s} = {v}")).collect();
    parts.join(", ")
}
