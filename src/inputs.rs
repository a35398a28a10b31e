//! Assembling a graph's inputs from files, weights, random data and symbol
//! bindings — what `tdlc run` does before it evaluates anything.

use std::collections::BTreeMap;
use std::path::PathBuf;

use tdl_ir::{Bindings, Dim, Graph};
use tdl_reference::{npy, weights, Limits, Tensor};

/// Where one input comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum InputSource {
    /// A `.npy` file.
    File(PathBuf),
    /// Random data; `None` derives the seed from `InputPlan::seed` and the
    /// parameter's position.
    Random(Option<u64>),
}

impl InputSource {
    /// Parses the right side of `--input NAME=...`: `random`, `random:SEED`
    /// or a path.
    pub fn parse(s: &str) -> Result<InputSource, String> {
        if s == "random" {
            return Ok(InputSource::Random(None));
        }
        if let Some(seed) = s.strip_prefix("random:") {
            return seed
                .parse::<u64>()
                .map(|v| InputSource::Random(Some(v)))
                .map_err(|_| format!("`{seed}` is not a seed (a non-negative integer)"));
        }
        if s.is_empty() {
            return Err("empty path".into());
        }
        Ok(InputSource::File(PathBuf::from(s)))
    }
}

/// Everything the user said about inputs.
#[derive(Clone, Debug, Default)]
pub struct InputPlan {
    pub sources: BTreeMap<String, InputSource>,
    pub weights: Option<PathBuf>,
    pub binds: Bindings,
    /// Inputs given no other way get random data.
    pub random_rest: bool,
    pub seed: u64,
}

/// Builds the input tensors of `g`, in parameter order. Every problem is an
/// error message that names the input and says what to pass instead.
pub fn assemble_inputs(g: &Graph, plan: &InputPlan, limits: &Limits) -> Result<Vec<Tensor>, String> {
    let names: Vec<&str> = g.params().iter().map(|p| p.name.as_str()).collect();
    for name in plan.sources.keys() {
        if !names.contains(&name.as_str()) {
            return Err(format!("graph `{}` has no input `{name}` (its inputs: {})", g.name, names.join(", ")));
        }
    }
    let weights = match &plan.weights {
        Some(p) => weights::load_safetensors_where(p, |n| names.contains(&n)).map_err(|e| e.to_string())?,
        None => BTreeMap::new(),
    };
    let mut given: Vec<Option<Tensor>> = Vec::new();
    for p in g.params() {
        let t = match plan.sources.get(&p.name) {
            Some(InputSource::File(path)) => {
                Some(npy::read_npy_as(path, p.ty.dtype).map_err(|e| format!("input `{}`: {e}", p.name))?)
            }
            Some(InputSource::Random(_)) => None,
            None => weights.get(&p.name).cloned(),
        };
        given.push(t);
    }

    // Bind symbols from the tensors we have, then from --bind.
    let mut bindings = Bindings::new();
    let mut bound_by: BTreeMap<String, String> = BTreeMap::new();
    for (p, t) in g.params().iter().zip(&given) {
        let Some(t) = t else { continue };
        if t.dtype != p.ty.dtype || t.shape.len() != p.ty.rank() {
            return Err(format!("input `{}`: expected {}, found {}", p.name, p.ty, t.type_text()));
        }
        for (axis, (d, &n)) in p.ty.shape.iter().zip(&t.shape).enumerate() {
            let n = n as i64;
            if n < 1 {
                return Err(format!("input `{}`: axis {axis} has size {n}; tdlc dimensions are at least 1", p.name));
            }
            if let Some(c) = d.as_const() {
                if c != n {
                    return Err(format!(
                        "input `{}`: expected {}, found {}: axis {axis} is {n}, expected {c}",
                        p.name,
                        p.ty,
                        t.type_text()
                    ));
                }
            } else if let Some(sym) = d.as_sym() {
                match bindings.get(sym) {
                    Some(&v) if v != n => {
                        return Err(format!(
                            "symbol `{sym}` is bound inconsistently: {} gives {sym} = {v}, but input `{}` (axis {axis}) gives {sym} = {n}",
                            bound_by[sym], p.name
                        ))
                    }
                    Some(_) => {}
                    None => {
                        bindings.insert(sym.to_string(), n);
                        bound_by.insert(sym.to_string(), format!("input `{}` (axis {axis})", p.name));
                    }
                }
            }
        }
    }
    for (sym, &v) in &plan.binds {
        if v < 1 {
            return Err(format!("--bind {sym}={v}: a dimension must be at least 1"));
        }
        match bindings.get(sym) {
            Some(&have) if have != v => {
                return Err(format!("--bind {sym}={v} contradicts {}, which gives {sym} = {have}", bound_by[sym]));
            }
            _ => {
                bindings.insert(sym.clone(), v);
            }
        }
    }
    let symbols = g.symbols();
    for sym in plan.binds.keys() {
        if !symbols.contains(sym) {
            return Err(format!(
                "--bind {sym}: graph `{}` has no symbol `{sym}` (its symbols: {})",
                g.name,
                if symbols.is_empty() { "none".to_string() } else { symbols.join(", ") }
            ));
        }
    }

    let mut out = Vec::new();
    for (i, (p, t)) in g.params().iter().zip(given).enumerate() {
        if let Some(t) = t {
            out.push(t);
            continue;
        }
        let seed = match plan.sources.get(&p.name) {
            Some(InputSource::Random(Some(s))) => *s,
            Some(InputSource::Random(None)) => plan.seed.wrapping_add(i as u64),
            _ if plan.random_rest => plan.seed.wrapping_add(i as u64),
            _ => {
                return Err(format!(
                    "no value for input `{}` ({}): pass --input {}=FILE.npy, --input {}=random, --weights FILE, or --random",
                    p.name, p.ty, p.name, p.name
                ))
            }
        };
        let mut shape = Vec::new();
        for d in &p.ty.shape {
            shape.push(concrete(d, &bindings, &p.name)?);
        }
        let t = tdl_reference::try_random_tensor(p.ty.dtype, &shape, seed, limits)
            .map_err(|e| format!("input `{}`: {e}", p.name))?;
        out.push(t);
    }
    Ok(out)
}

fn concrete(d: &Dim, b: &Bindings, input: &str) -> Result<usize, String> {
    match d.eval(b) {
        Ok(v) if v >= 1 => usize::try_from(v).map_err(|_| format!("input `{input}`: dimension {d} = {v} is too large")),
        Ok(v) => Err(format!("input `{input}`: dimension {d} = {v} is not positive")),
        Err(tdl_ir::DimError::Unbound(s)) => Err(format!(
            "input `{input}` needs the size of symbol `{s}`: pass --bind {s}=N, or give an input file that fixes it"
        )),
        Err(e) => Err(format!("input `{input}`: {e}")),
    }
}
