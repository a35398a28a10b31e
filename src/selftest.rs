//! `tdlc selftest`: the conformance corpus, embedded in the binary, run on
//! a backend against the reference interpreter, so anyone can check that
//! tdlc computes the right numbers on their machine.
//!
//! Every graph of `testsuite/corpus/*.tdl` and `examples/*.tdl` (embedded
//! at build time) is checked, sized ([`bindings_for`]: sequence symbols at
//! the chosen size, the others at 3), given deterministic random inputs,
//! run on the reference (the oracle) and on the backend, and compared with
//! [`compare`]'s tolerances. The test suite uses the same [`compare`] and
//! [`bindings_for`].

use tdl_ir::{Bindings, DType, Graph, VerifiedGraph};
use tdl_kernel::interp::Hooks;
use tdl_kernel::ir::KernelProgram;
use tdl_reference::{Limits, Tensor};

include!(concat!(env!("OUT_DIR"), "/corpus.rs"));

/// The largest error relative to `max(1, |reference|)` (norm-wise: a
/// tensor's largest finite magnitude, so cancellation is not blamed on one
/// small element), or why the two differ. Tolerances: 1e-4 for `f32`,
/// 4e-3 for `f16`, 3e-2 for `bf16`, exact for `i32` and `bool`. A NaN
/// must be a NaN (or a zero where the reference has NaN: a fully masked
/// row), an infinity the same infinity.
pub fn compare(reference: &Tensor, got: &Tensor) -> Result<f64, String> {
    if reference.dtype != got.dtype || reference.shape != got.shape {
        return Err(format!(
            "reference {:?}{:?}, backend {:?}{:?}",
            reference.dtype, reference.shape, got.dtype, got.shape
        ));
    }
    let tol = match reference.dtype {
        DType::F32 => 1e-4,
        DType::F16 => 4e-3,
        DType::BF16 => 3e-2,
        DType::I32 | DType::Bool => 0.0,
    };
    let r = reference.round_to_dtype();
    let scale = r.data.iter().filter(|v| v.is_finite()).fold(1f64, |m, v| m.max(v.abs()));
    let mut worst = 0f64;
    for (i, (&a, &b)) in r.data.iter().zip(&got.data).enumerate() {
        let ok = if a.is_nan() || b.is_nan() {
            (a.is_nan() && b.is_nan()) || (a.is_nan() && b == 0.0)
        } else if a.is_infinite() || b.is_infinite() {
            a == b
        } else {
            let e = (a - b).abs() / scale;
            worst = worst.max(e);
            e <= tol
        };
        if !ok {
            return Err(format!("element {i} of {:?}: reference {a}, backend {b} (tolerance {tol})", r.shape));
        }
    }
    Ok(worst)
}

/// The sizes to try for `g`: the sequence symbols (`T`, `S`, `N`) at
/// `value` and the others (heads, batch, head dims) at 3; failing that (a
/// graph may tie a symbol to another), every symbol at `value`.
pub fn bindings_for(g: &VerifiedGraph, value: i64) -> Vec<Bindings> {
    let syms = g.graph().symbols();
    let seq: Bindings =
        syms.iter().map(|s| (s.clone(), if ["T", "S", "N"].contains(&s.as_str()) { value } else { 3 })).collect();
    let all: Bindings = syms.iter().map(|s| (s.clone(), value)).collect();
    if seq == all {
        vec![seq]
    } else {
        vec![seq, all]
    }
}

/// Random inputs (seeded per parameter) for `g` at `b`, within `limits`.
pub fn inputs_for(g: &Graph, b: &Bindings, limits: &Limits) -> Option<Vec<Tensor>> {
    let mut out = Vec::new();
    for (i, p) in g.params().iter().enumerate() {
        let shape = p.ty.concrete_shape(b).ok()?;
        let shape: Vec<usize> = shape.into_iter().map(usize::try_from).collect::<Result<_, _>>().ok()?;
        out.push(tdl_reference::try_random_tensor(p.ty.dtype, &shape, 0x5eed + i as u64, limits).ok()?);
    }
    Some(out)
}

/// What one graph did.
#[derive(Debug)]
pub enum Outcome {
    /// Every result within tolerance: the worst error and how many kernels
    /// ran compiled (on `executor`) out of how many.
    Pass { worst: f64, compiled: usize, kernels: usize },
    /// A result out of tolerance or a backend error.
    Fail(String),
    /// Nothing to compare: the reference cannot run the graph at these
    /// sizes, or the Kernel IR cannot express it yet.
    Skip(String),
}

/// Runs `g` at size `value` on `run` (the backend: a lowered program and
/// inputs in, results and the executor of each kernel out) and compares
/// with the reference.
pub fn check_graph(
    g: &VerifiedGraph,
    value: i64,
    limits: &Limits,
    lower: &dyn Fn(&VerifiedGraph) -> Result<KernelProgram, String>,
    hooks: &dyn Hooks,
    executor: &str,
) -> Outcome {
    let Some((inputs, reference)) = bindings_for(g, value).into_iter().find_map(|b| {
        let inputs = inputs_for(g.graph(), &b, limits)?;
        let reference = tdl_reference::run_with_limits(g, &inputs, limits).ok()?;
        Some((inputs, reference))
    }) else {
        return Outcome::Skip(format!("the reference does not run it at size {value}"));
    };
    let p = match lower(g) {
        Ok(p) => p,
        Err(e) if e.contains("not supported yet") => return Outcome::Skip(e),
        Err(e) => return Outcome::Fail(e),
    };
    let out = match tdl_kernel::interp::run_with_hooks(&p, &inputs, limits, hooks) {
        Ok(o) => o,
        Err(e) => return Outcome::Fail(e.to_string()),
    };
    let mut worst = 0f64;
    for (i, (r, k)) in reference.iter().zip(&out.results).enumerate() {
        match compare(r, k) {
            Ok(w) => worst = worst.max(w),
            Err(e) => return Outcome::Fail(format!("result {i}: {e}")),
        }
    }
    let compiled = out.kernels.iter().filter(|k| k.executor == executor).count();
    Outcome::Pass { worst, compiled, kernels: out.kernels.len() }
}
