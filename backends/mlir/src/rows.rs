//! Row kernels: reductions (`sum`, `mean`, `max` over one axis), softmax
//! over an axis, layernorm and rmsnorm over the last axis — one workgroup
//! of 128 threads per row, each thread folding a strided share of the row,
//! then a tree reduction in workgroup memory (the interpreter's formulas,
//! in a different summation order) — and rope, one thread per rotated
//! pair with the cos/sin table computed by the plan on the host (in
//! `f64`, rounded to `f32`, as the interpreter does).
//!
//! Rows are addressed at run time: row `r` of an input viewed as `[outer,
//! n, inner]` (the reduced axis in the middle) starts at `(r / inner)·n·inner
//! \+ r % inner` and steps by `inner`; `n` and `inner` are parameters, so
//! one kernel serves every rank and size.

use std::borrow::Cow;
use std::fmt::Write as _;

use tdl_ir::ReduceOp;
use tdl_kernel::interp::RowArgs;
use tdl_kernel::ir::{KernelProgram, ReduceKernel, RowKernel, RowOp};

use crate::elementwise::{cached_code, grid_1d, unsupported, Emit, BLOCK};
use crate::launch::{stores, LaunchPlan, LaunchStep, Param, PlanBuf, Store, MAX_GRID_X};
use crate::wrap::{f32_lit, Func};
use crate::MlirError;

/// Threads per row.
pub const ROW_THREADS: usize = 128;

/// What a row kernel computes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Reduce(ReduceOp),
    Softmax,
    LayerNorm(f32),
    RmsNorm(f32),
}

const MEM: &str = "memref<?xf32>";

/// A pass over the row: each thread folds `elem(v)` over its share with
/// `comb` into `arr[%tx]`, then the tree; `pre` runs first in the phase.
fn pass(
    out: &mut String,
    (arr, xs): (&str, Store),
    init: f32,
    comb: &str,
    pre: &str,
    elem: impl FnOnce(&mut Emit, &str) -> String,
) {
    let mut e = Emit::new("        ");
    let w = elem(&mut e, "%v");
    let _ = write!(
        out,
        "    PHASE{{
{pre}      %init = arith.constant {init} : f32
      %acc = scf.for %i = %tx to %N step %crt iter_args(%a = %init) -> (f32) {{
        %ix0 = arith.muli %i, %inner : index
        %ix = arith.addi %base, %ix0 : index
{load}{code}        %a1 = arith.{comb} %a, {w} : f32
        scf.yield %a1 : f32
      }}
      memref.store %acc, {arr}[%tx] : memref<{ROW_THREADS}xf32SMEM>
    }}PHASE
",
        init = f32_lit(init),
        load = xs.load("%v", "%x[%ix]", &mem(xs), "        "),
        code = e.s
    );
    let mut s = ROW_THREADS / 2;
    while s >= 1 {
        let _ = write!(
            out,
            "    PHASE{{
      %cs = arith.constant {s} : index
      %lo = arith.cmpi ult, %tx, %cs : index
      scf.if %lo {{
        %j = arith.addi %tx, %cs : index
        %p = memref.load {arr}[%tx] : memref<{ROW_THREADS}xf32SMEM>
        %q = memref.load {arr}[%j] : memref<{ROW_THREADS}xf32SMEM>
        %r = arith.{comb} %p, %q : f32
        memref.store %r, {arr}[%tx] : memref<{ROW_THREADS}xf32SMEM>
      }}
    }}PHASE
"
        );
        s /= 2;
    }
}

/// Loads `arr[0]` as `%name` (inside a phase).
fn total(arr: &str, name: &str) -> String {
    format!("      {name} = memref.load {arr}[%c0] : memref<{ROW_THREADS}xf32SMEM>\n")
}

/// A loop over the thread's share of the row writing `out[ix] = f(v)`.
fn write_row(out: &mut String, [xs, os]: [Store; 2], pre: &str, f: impl FnOnce(&mut Emit, &str) -> String) {
    let mut e = Emit::new("        ");
    let w = f(&mut e, "%v");
    let _ = write!(
        out,
        "    PHASE{{
{pre}      scf.for %i = %tx to %N step %crt {{
        %ix0 = arith.muli %i, %inner : index
        %ix = arith.addi %base, %ix0 : index
{load}{code}{store}      }}
    }}PHASE
",
        load = xs.load("%v", "%x[%ix]", &mem(xs), "        "),
        code = e.s,
        store = os.store("memref.store", &w, "", "%out[%ix]", &mem(os), "        "),
    );
}

/// A flat memref of `s`'s element type.
fn mem(s: Store) -> String {
    format!("memref<?x{}>", s.mlir())
}

/// The row kernel of `kind`; `store`: how `x` and the output are stored
/// (the norms' parameters are `f32`).
fn row_func(kind: Kind, name: &str, store: [Store; 2]) -> Func {
    let mut params = vec![("%x".to_string(), mem(store[0])), ("%out".to_string(), mem(store[1]))];
    let norm = matches!(kind, Kind::LayerNorm(_) | Kind::RmsNorm(_));
    if norm {
        params.push(("%g".into(), MEM.into()));
    }
    if matches!(kind, Kind::LayerNorm(_)) {
        params.push(("%b".into(), MEM.into()));
    }
    params.push(("%n_".into(), "i64".into()));
    params.push(("%inner_".into(), "i64".into()));
    let mut b = format!(
        "    %c0 = arith.constant 0 : index
    %crt = arith.constant {ROW_THREADS} : index
    %N = arith.index_cast %n_ : i64 to index
    %inner = arith.index_cast %inner_ : i64 to index
    %nf = arith.uitofp %n_ : i64 to f32
    %one = arith.constant 1.0 : f32
    %o = arith.divui %bx, %inner : index
    %jj = arith.remui %bx, %inner : index
    %on = arith.muli %o, %N : index
    %oni = arith.muli %on, %inner : index
    %base = arith.addi %oni, %jj : index
"
    );
    let ninf = f32::NEG_INFINITY;
    let mut shared = vec![("%r1".to_string(), format!("{ROW_THREADS}xf32"))];
    match kind {
        Kind::Reduce(op) => {
            let (init, comb) = if op == ReduceOp::Max { (ninf, "maximumf") } else { (0.0, "addf") };
            pass(&mut b, ("%r1", store[0]), init, comb, "", |_, v| v.to_string());
            let fin = if op == ReduceOp::Mean { "arith.divf %t, %nf : f32" } else { "arith.addf %t, %zero : f32" };
            let _ = write!(
                b,
                "    PHASE{{
      %first = arith.cmpi eq, %tx, %c0 : index
      scf.if %first {{
{t}        %zero = arith.constant -0.0 : f32
        %res = {fin}
{st}      }}
    }}PHASE
",
                t = total("%r1", "%t"),
                st = store[1].store("memref.store", "%res", "", "%out[%bx]", &mem(store[1]), "        "),
            );
        }
        Kind::Softmax => {
            shared.push(("%r2".into(), format!("{ROW_THREADS}xf32")));
            pass(&mut b, ("%r1", store[0]), ninf, "maximumf", "", |_, v| v.to_string());
            pass(&mut b, ("%r2", store[0]), 0.0, "addf", &total("%r1", "%m"), |e, v| {
                let d = e.v(format!("arith.subf {v}, %m : f32"));
                e.exp(&d)
            });
            let pre = format!(
                "{}{}      %inv = arith.divf %one, %s : f32\n      %ninf = arith.constant {} : f32\n      %dead = arith.cmpf oeq, %m, %ninf : f32\n      %zero = arith.constant 0.0 : f32\n",
                total("%r1", "%m"),
                total("%r2", "%s"),
                f32_lit(ninf)
            );
            write_row(&mut b, store, &pre, |e, v| {
                let d = e.v(format!("arith.subf {v}, %m : f32"));
                let x = e.exp(&d);
                let y = e.v(format!("arith.mulf {x}, %inv : f32"));
                e.v(format!("arith.select %dead, %zero, {y} : f32"))
            });
        }
        Kind::LayerNorm(eps) => {
            shared.push(("%r2".into(), format!("{ROW_THREADS}xf32")));
            pass(&mut b, ("%r1", store[0]), 0.0, "addf", "", |_, v| v.to_string());
            let mean = format!("{}      %mean = arith.divf %t1, %nf : f32\n", total("%r1", "%t1"));
            pass(&mut b, ("%r2", store[0]), 0.0, "addf", &mean, |e, v| {
                let d = e.v(format!("arith.subf {v}, %mean : f32"));
                e.v(format!("arith.mulf {d}, {d} : f32"))
            });
            let pre = format!(
                "{mean}{}      %var = arith.divf %t2, %nf : f32\n      %eps = arith.constant {} : f32\n      %ve = arith.addf %var, %eps : f32\n      %sq = llvm.call_intrinsic \"llvm.sqrt.f32\"(%ve) : (f32) -> f32\n      %inv = arith.divf %one, %sq : f32\n",
                total("%r2", "%t2"),
                f32_lit(eps)
            );
            write_row(&mut b, store, &pre, |e, v| {
                let d = e.v(format!("arith.subf {v}, %mean : f32"));
                let y = e.v(format!("arith.mulf {d}, %inv : f32"));
                let g = e.v(format!("memref.load %g[%i] : {MEM}"));
                let bb = e.v(format!("memref.load %b[%i] : {MEM}"));
                let yg = e.v(format!("arith.mulf {y}, {g} : f32"));
                e.v(format!("arith.addf {yg}, {bb} : f32"))
            });
        }
        Kind::RmsNorm(eps) => {
            pass(&mut b, ("%r1", store[0]), 0.0, "addf", "", |e, v| e.v(format!("arith.mulf {v}, {v} : f32")));
            let pre = format!(
                "{}      %ms = arith.divf %t1, %nf : f32\n      %eps = arith.constant {} : f32\n      %ve = arith.addf %ms, %eps : f32\n      %sq = llvm.call_intrinsic \"llvm.sqrt.f32\"(%ve) : (f32) -> f32\n      %inv = arith.divf %one, %sq : f32\n",
                total("%r1", "%t1"),
                f32_lit(eps)
            );
            write_row(&mut b, store, &pre, |e, v| {
                let y = e.v(format!("arith.mulf {v}, %inv : f32"));
                let g = e.v(format!("memref.load %g[%i] : {MEM}"));
                e.v(format!("arith.mulf {y}, {g} : f32"))
            });
        }
    }
    Func { name: name.to_string(), params, block: [ROW_THREADS as u32, 1], shared, body: b }
}

/// Rope: one thread per rotated pair. Parameters `%x`, `%out`, `%tab`
/// (`[positions, d/2, 2]` cos, sin), `i64`s `d`, positions, pairs.
fn rope_func(name: &str, store: [Store; 2]) -> Func {
    let params = [("%x", mem(store[0])), ("%out", mem(store[1])), ("%tab", MEM.to_string())]
        .into_iter()
        .map(|(n, t)| (n.to_string(), t))
        .chain(["%d_", "%p_", "%cnt_"].iter().map(|n| (n.to_string(), "i64".to_string())))
        .collect();
    let body = format!(
        "    %c1 = arith.constant 1 : index
    %c2 = arith.constant 2 : index
    %cblock = arith.constant {BLOCK} : index
    %D = arith.index_cast %d_ : i64 to index
    %P = arith.index_cast %p_ : i64 to index
    %cnt = arith.index_cast %cnt_ : i64 to index
    %half = arith.divui %D, %c2 : index
    PHASE{{
      %lin0 = arith.muli %bx, %cblock : index
      %lin = arith.addi %lin0, %tx : index
      %inb = arith.cmpi ult, %lin, %cnt : index
      scf.if %inb {{
        %row = arith.divui %lin, %half : index
        %i = arith.remui %lin, %half : index
        %pos = arith.remui %row, %P : index
        %t0 = arith.muli %pos, %half : index
        %t1 = arith.addi %t0, %i : index
        %t = arith.muli %t1, %c2 : index
        %tn = arith.addi %t, %c1 : index
        %cs = memref.load %tab[%t] : {MEM}
        %sn = memref.load %tab[%tn] : {MEM}
        %rb = arith.muli %row, %D : index
        %i1 = arith.addi %rb, %i : index
        %i2 = arith.addi %i1, %half : index
{load1}{load2}        %a = arith.mulf %x1, %cs : f32
        %b = arith.mulf %x2, %sn : f32
        %o1 = arith.subf %a, %b : f32
        %c = arith.mulf %x2, %cs : f32
        %d = arith.mulf %x1, %sn : f32
        %o2 = arith.addf %c, %d : f32
{store1}{store2}      }}
    }}PHASE
",
        load1 = store[0].load("%x1", "%x[%i1]", &mem(store[0]), "        "),
        load2 = store[0].load("%x2", "%x[%i2]", &mem(store[0]), "        "),
        store1 = store[1].store("memref.store", "%o1", "", "%out[%i1]", &mem(store[1]), "        "),
        store2 = store[1].store("memref.store", "%o2", "", "%out[%i2]", &mem(store[1]), "        "),
    );
    Func { name: name.to_string(), params, block: [BLOCK as u32, 1], shared: Vec::new(), body }
}

fn row_kind(op: &RowOp) -> Option<Kind> {
    match op {
        RowOp::Softmax { .. } => Some(Kind::Softmax),
        RowOp::LayerNorm { eps } => Some(Kind::LayerNorm(*eps as f32)),
        RowOp::RmsNorm { eps } => Some(Kind::RmsNorm(*eps as f32)),
        RowOp::Rope { .. } => None,
    }
}

/// A plan for a row-per-workgroup kernel over `x` viewed as `[outer, n, inner]`.
fn row_plan<'a>(
    kind: Kind,
    (x, store): (&'a [f32], [Store; 2]),
    params: &[&'a [f32]],
    (outer, n, inner): (usize, usize, usize),
    out_len: usize,
    out_shape: Vec<usize>,
) -> Result<Option<LaunchPlan<'a>>, MlirError> {
    let f = row_func(kind, "tdl_row", store);
    let rows = outer * inner;
    let mut buffers = vec![store[0].input(x), store[1].zeroed(out_len)];
    let mut ps = vec![Param::flat(0, x.len()), Param::flat(1, out_len)];
    for p in params {
        ps.push(Param::flat(buffers.len(), p.len()));
        buffers.push(PlanBuf::F32(Cow::Borrowed(p)));
    }
    ps.push(Param::I64(n as i64));
    ps.push(Param::I64(inner as i64));
    if rows as u64 > MAX_GRID_X {
        return Ok(None);
    }
    let steps = if rows == 0 || out_len == 0 {
        Vec::new()
    } else {
        vec![LaunchStep {
            func: "tdl_row".into(),
            grid: [rows as u32, 1, 1],
            block: [ROW_THREADS as u32, 1, 1],
            shared_bytes: 0,
            params: ps,
        }]
    };
    Ok(Some(LaunchPlan {
        code: cached_code("row", &f),
        buffers,
        steps,
        output: 1,
        output_shape: out_shape,
        error_flag: None,
        stats: None,
    }))
}

/// The launch plan of a reduce hook call (`Ok(None)`: not supported).
/// One workgroup per output element.
pub fn plan_reduce<'a>(k: &ReduceKernel, args: &RowArgs<'a>) -> Result<Option<LaunchPlan<'a>>, MlirError> {
    let Some(&n) = args.shape.get(k.axis) else { return Ok(None) };
    let outer: usize = args.shape[..k.axis].iter().product();
    let inner: usize = args.shape[k.axis + 1..].iter().product();
    if args.x.len() != outer * n * inner || (k.op == ReduceOp::Max && n == 0) {
        return Ok(None);
    }
    let mut out_shape: Vec<usize> = args.shape.to_vec();
    if k.keepdims {
        out_shape[k.axis] = 1;
    } else {
        out_shape.remove(k.axis);
    }
    let store = args.dtypes.map(Store::of);
    row_plan(Kind::Reduce(k.op), (args.x, store), &[], (outer, n, inner), outer * inner, out_shape)
}

/// The launch plan of a row hook call (softmax, layernorm, rmsnorm, rope;
/// `Ok(None)`: not supported, e.g. rope over an odd last axis, which the
/// interpreter reports).
pub fn plan_row<'a>(k: &RowKernel, args: &RowArgs<'a>) -> Result<Option<LaunchPlan<'a>>, MlirError> {
    let shape = args.shape;
    let numel: usize = shape.iter().product();
    if args.x.len() != numel {
        return Ok(None);
    }
    let d = shape.last().copied().unwrap_or(1);
    let store = args.dtypes.map(Store::of);
    match &k.op {
        RowOp::Softmax { axis } => {
            let Some(&n) = shape.get(*axis) else { return Ok(None) };
            let outer: usize = shape[..*axis].iter().product();
            let inner: usize = shape[*axis + 1..].iter().product();
            row_plan(Kind::Softmax, (args.x, store), &[], (outer, n, inner), numel, shape.to_vec())
        }
        RowOp::LayerNorm { .. } | RowOp::RmsNorm { .. } => {
            let want = if matches!(k.op, RowOp::LayerNorm { .. }) { 2 } else { 1 };
            if args.params.len() != want || args.params.iter().any(|p| p.len() != d) || d == 0 {
                return Ok(None);
            }
            let kind = row_kind(&k.op).ok_or_else(|| MlirError::BadPlan("row kind".into()))?;
            row_plan(kind, (args.x, store), &args.params, (numel / d, d, 1), numel, shape.to_vec())
        }
        RowOp::Rope { base } => {
            let r = shape.len();
            if r < 2 || d % 2 != 0 || d == 0 {
                return Ok(None);
            }
            let (p, half) = (shape[r - 2].max(1), d / 2);
            let mut table = Vec::with_capacity(p * half * 2);
            for pos in 0..p {
                for i in 0..half {
                    let theta = pos as f64 * base.powf(-((2 * i) as f64) / d as f64);
                    let (sn, cs) = theta.sin_cos();
                    table.push(cs as f32);
                    table.push(sn as f32);
                }
            }
            let pairs = numel / 2;
            let Some(grid) = grid_1d(pairs) else { return Ok(None) };
            let params = vec![
                Param::flat(0, numel),
                Param::flat(1, numel),
                Param::flat(2, table.len()),
                Param::I64(d as i64),
                Param::I64(p as i64),
                Param::I64(pairs as i64),
            ];
            let steps = if pairs == 0 {
                Vec::new()
            } else {
                vec![LaunchStep { func: "tdl_rope".into(), grid, block: [BLOCK as u32, 1, 1], shared_bytes: 0, params }]
            };
            Ok(Some(LaunchPlan {
                code: cached_code("rope", &rope_func("tdl_rope", store)),
                buffers: vec![store[0].input(args.x), store[1].zeroed(numel), PlanBuf::F32(Cow::Owned(table))],
                steps,
                output: 1,
                output_shape: shape.to_vec(),
                error_flag: None,
                stats: None,
            }))
        }
    }
}

fn float_in(p: &KernelProgram, bufs: &[tdl_kernel::ir::BufId]) -> Result<(), MlirError> {
    if bufs.iter().all(|&b| p.buffer(b).is_some_and(|x| x.dtype.is_float())) {
        Ok(())
    } else {
        Err(unsupported("integer reductions and row kernels"))
    }
}

/// An `i32` reduction (the interpreter's: `sum` wraps, `max`, `mean` as
/// the `f64` quotient of the `i64` sum truncated, 0 over an empty axis):
/// one thread per output element folding its row in order. Parameters
/// `%x`, `%out` (`memref<?xi32>`), `i64`s `n` (the axis), `inner`, the
/// output count.
fn reduce_i32_func(op: ReduceOp, name: &str) -> Func {
    let mi = "memref<?xi32>";
    let params = vec![
        ("%x".to_string(), mi.to_string()),
        ("%out".to_string(), mi.to_string()),
        ("%n_".to_string(), "i64".to_string()),
        ("%inner_".to_string(), "i64".to_string()),
        ("%cnt_".to_string(), "i64".to_string()),
    ];
    let sum_fin = "%res = arith.addi %acc, %c0i : i32";
    let (acc_ty, init, fold, fin) = match op {
        ReduceOp::Sum => ("i32", "%c0i", "%a1 = arith.addi %a, %v : i32", sum_fin),
        ReduceOp::Max => ("i32", "%first", "%a1 = arith.maxsi %a, %v : i32", sum_fin),
        ReduceOp::Mean => (
            "i64",
            "%c0l",
            "%vl = arith.extsi %v : i32 to i64\n          %a1 = arith.addi %a, %vl : i64",
            "%sf = arith.sitofp %acc : i64 to f64\n        %nf = arith.sitofp %n_ : i64 to f64\n        %qf = arith.divf %sf, %nf : f64\n        %qi = arith.fptosi %qf : f64 to i32\n        %nz = arith.cmpi ne, %n_, %c0l : i64\n        %res = arith.select %nz, %qi, %c0i : i32",
        ),
    };
    let body = format!(
        "    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c0i = arith.constant 0 : i32
    %c0l = arith.constant 0 : i64
    %cblock = arith.constant {BLOCK} : index
    %N = arith.index_cast %n_ : i64 to index
    %inner = arith.index_cast %inner_ : i64 to index
    %cnt = arith.index_cast %cnt_ : i64 to index
    PHASE{{
      %lin0 = arith.muli %bx, %cblock : index
      %lin = arith.addi %lin0, %tx : index
      %inb = arith.cmpi ult, %lin, %cnt : index
      scf.if %inb {{
        %o = arith.divui %lin, %inner : index
        %jj = arith.remui %lin, %inner : index
        %on = arith.muli %o, %N : index
        %oni = arith.muli %on, %inner : index
        %base = arith.addi %oni, %jj : index
        %first = memref.load %x[%base] : {mi}
        %acc = scf.for %i = %c0 to %N step %c1 iter_args(%a = {init}) -> ({acc_ty}) {{
          %ix0 = arith.muli %i, %inner : index
          %ix = arith.addi %base, %ix0 : index
          %v = memref.load %x[%ix] : {mi}
          {fold}
          scf.yield %a1 : {acc_ty}
        }}
        {fin}
        memref.store %res, %out[%lin] : {mi}
      }}
    }}PHASE
"
    );
    Func { name: name.to_string(), params, block: [BLOCK as u32, 1], shared: Vec::new(), body }
}

/// The launch plan of an `i32` reduction of `x` (of `shape`, contiguous)
/// as the interpreter computes it (the interpreter has no hook for
/// integer reductions; a GPU runner or test calls this directly).
/// `Ok(None)`: not supported (`max` over an empty axis, an error).
/// The output is an [`PlanBuf::I32`] of zeros written as `i32`.
pub fn plan_reduce_i32<'a>(
    k: &ReduceKernel,
    x: &'a [i32],
    shape: &[usize],
) -> Result<Option<LaunchPlan<'a>>, MlirError> {
    let Some(&n) = shape.get(k.axis) else { return Ok(None) };
    let outer: usize = shape[..k.axis].iter().product();
    let inner: usize = shape[k.axis + 1..].iter().product();
    if x.len() != outer * n * inner || (k.op == ReduceOp::Max && n == 0) {
        return Ok(None);
    }
    let mut out_shape: Vec<usize> = shape.to_vec();
    if k.keepdims {
        out_shape[k.axis] = 1;
    } else {
        out_shape.remove(k.axis);
    }
    let cnt = outer * inner;
    let Some(grid) = grid_1d(cnt) else { return Ok(None) };
    let params = vec![
        Param::flat(0, x.len()),
        Param::flat(1, cnt),
        Param::I64(n as i64),
        Param::I64(inner.max(1) as i64),
        Param::I64(cnt as i64),
    ];
    let steps = if cnt == 0 || x.is_empty() {
        Vec::new()
    } else {
        vec![LaunchStep { func: "tdl_ireduce".into(), grid, block: [BLOCK as u32, 1, 1], shared_bytes: 0, params }]
    };
    Ok(Some(LaunchPlan {
        code: cached_code("ireduce", &reduce_i32_func(k.op, "tdl_ireduce")),
        buffers: vec![PlanBuf::I32(Cow::Borrowed(x)), PlanBuf::I32(Cow::Owned(vec![0; cnt]))],
        steps,
        output: 1,
        output_shape: out_shape,
        error_flag: None,
        stats: None,
    }))
}

/// The `gpu.func` of reduce kernel `k` of `p` (for [`crate::program`]).
pub(crate) fn ir_reduce_func(p: &KernelProgram, k: &ReduceKernel, fname: &str) -> Result<(String, String), MlirError> {
    let dt = |b| p.buffer(b).map(|x| x.dtype);
    if dt(k.x.buf) == Some(tdl_ir::DType::I32) && dt(k.out) == Some(tdl_ir::DType::I32) {
        return Ok((
            reduce_i32_func(k.op, fname).gpu(),
            format!("i32 reduce ({:?}), one thread per output element", k.op),
        ));
    }
    float_in(p, &[k.x.buf, k.out])?;
    Ok((
        row_func(Kind::Reduce(k.op), fname, stores(p, [k.x.buf, k.out])).gpu(),
        format!("reduce ({:?}), one workgroup of {ROW_THREADS} threads per output element", k.op),
    ))
}

/// The `gpu.func` of row kernel `k` of `p` (for [`crate::program`]).
pub(crate) fn ir_row_func(p: &KernelProgram, k: &RowKernel, fname: &str) -> Result<(String, String), MlirError> {
    let mut bufs = vec![k.x.buf, k.out];
    bufs.extend(k.params.iter().map(|a| a.buf));
    float_in(p, &bufs)?;
    let store = stores(p, [k.x.buf, k.out]);
    Ok(match row_kind(&k.op) {
        Some(kind) => {
            (row_func(kind, fname, store).gpu(), format!("{kind:?}, one workgroup of {ROW_THREADS} threads per row"))
        }
        None => (rope_func(fname, store).gpu(), "rope, one thread per rotated pair".to_string()),
    })
}
