//! Data movement (copy, concat, repeat): one thread per output element,
//! each source a strided view (run-time offset, sizes and strides) of the
//! output's rank; the code depends on the rank, the operator and the
//! number of sources only.

use tdl_ir::DType;
use tdl_kernel::interp::{Elems, MoveArgs};
use tdl_kernel::ir::{KernelProgram, MoveKernel, MoveOp};

use crate::elementwise::{cached_code, dense, grid_1d, per_element, strided, unsupported, BLOCK};
use crate::launch::{LaunchPlan, LaunchStep, Param, Store};
use crate::wrap::Func;
use crate::MlirError;

/// The kernel of `op` at `rank` over sources stored as `srcs` (one per
/// source), writing an output stored as `out`; values move as `f32`.
fn func(op: &MoveOp, rank: usize, (srcs, out): (&[Store], Store), name: &str) -> Result<Func, MlirError> {
    let nsrc = srcs.len();
    let mut params = vec![("%out".to_string(), dense(rank, out.mlir()))];
    for (i, s) in srcs.iter().enumerate() {
        params.push((format!("%s{i}"), strided(rank, s.mlir())));
    }
    let ax = |axis: usize| if axis < rank { Ok(axis) } else { Err(MlirError::BadPlan("axis out of range".into())) };
    let op = op.clone();
    let srcs = srcs.to_vec();
    per_element(name, params, &dense(rank, out.mlir()), rank, move |e, idx| {
        let st2 = &srcs;
        let v = match op {
            MoveOp::Copy => load(e, 0, st2, idx, rank),
            MoveOp::Repeat { times, axis } => {
                let axis = ax(axis)?;
                if times < 1 {
                    return Err(unsupported("repeat counts below 1"));
                }
                let t = e.v(format!("arith.constant {times} : index"));
                let mut i2 = idx.to_vec();
                i2[axis] = e.v(format!("arith.divui {}, {t} : index", idx[axis]));
                load(e, 0, st2, &i2, rank)
            }
            MoveOp::Concat { axis } => {
                let axis = ax(axis)?;
                let c = e.v(format!("arith.constant {axis} : index"));
                concat_val(e, 0, idx[axis].clone(), nsrc, idx, axis, &c, st2)
            }
        };
        let _ = writeln_store(e, &v, idx, (rank, out));
        Ok(())
    })
}

/// Element `idx` of source `s` (stored as `srcs[s]`) as `f32`.
fn load(e: &mut crate::elementwise::Emit, s: usize, srcs: &[Store], idx: &[String], rank: usize) -> String {
    let v = e.v(format!("memref.load %s{s}[{}] : {}", idx.join(", "), strided(rank, srcs[s].mlir())));
    srcs[s].widen(e, &v)
}

/// The value from source `s` on when the index along `axis` is `at`
/// (counted from source `s`'s start): nested `scf.if`s over the sources'
/// run-time lengths.
#[allow(clippy::too_many_arguments)]
fn concat_val(
    e: &mut crate::elementwise::Emit,
    s: usize,
    at: String,
    nsrc: usize,
    idx: &[String],
    axis: usize,
    c: &str,
    srcs: &[Store],
) -> String {
    let mut i2 = idx.to_vec();
    i2[axis] = at.clone();
    let rank = idx.len();
    if s + 1 == nsrc {
        return load(e, s, srcs, &i2, rank);
    }
    let len = e.v(format!("memref.dim %s{s}, {c} : {}", strided(rank, srcs[s].mlir())));
    let inside = e.v(format!("arith.cmpi ult, {at}, {len} : index"));
    let r = e.v(format!("scf.if {inside} -> f32 {{"));
    let v = load(e, s, srcs, &i2, rank);
    e.s.push_str(&format!("{}scf.yield {v} : f32\n{}}} else {{\n", e.indent, e.indent));
    let at2 = e.v(format!("arith.subi {at}, {len} : index"));
    let w = concat_val(e, s + 1, at2, nsrc, idx, axis, c, srcs);
    e.s.push_str(&format!("{}scf.yield {w} : f32\n{}}}\n", e.indent, e.indent));
    r
}

fn writeln_store(
    e: &mut crate::elementwise::Emit,
    v: &str,
    idx: &[String],
    (rank, out): (usize, Store),
) -> std::fmt::Result {
    use std::fmt::Write as _;
    let v = out.narrow(e, v);
    writeln!(e.s, "{}memref.store {v}, %out[{}] : {}", e.indent, idx.join(", "), dense(rank, out.mlir()))
}

/// The `gpu.func` of data-movement kernel `k` of `p` (for [`crate::program`]).
pub(crate) fn ir_func(p: &KernelProgram, k: &MoveKernel, fname: &str) -> Result<(String, String), MlirError> {
    let out = p.buffer(k.out).ok_or_else(|| MlirError::BadPlan("no output buffer".into()))?;
    let rank = out.shape.len();
    let mut srcs = Vec::with_capacity(k.srcs.len());
    for a in &k.srcs {
        let b = p.buffer(a.buf).ok_or_else(|| MlirError::BadPlan("no source buffer".into()))?;
        srcs.push(Store::of(b.dtype));
        if !b.dtype.is_float() || !out.dtype.is_float() {
            return Err(unsupported("integer data movement"));
        }
        if a.shape(&b.shape).map_err(MlirError::BadPlan)?.len() != rank {
            return Err(unsupported("data movement between ranks"));
        }
    }
    let f = func(&k.op, rank, (&srcs, Store::of(out.dtype)), fname)?;
    Ok((f.gpu(), format!("{:?}, rank {rank}, one thread per element", k.op)))
}

/// The launch plan of a data-movement hook call (`Ok(None)`: not supported).
pub fn plan_move<'a>(k: &MoveKernel, args: &MoveArgs<'a>) -> Result<Option<LaunchPlan<'a>>, MlirError> {
    let rank = args.shape.len();
    if args.srcs.is_empty() || args.srcs.iter().any(|s| s.shape.len() != rank || s.strides.len() != rank) {
        return Ok(None);
    }
    let store = |d: Option<&DType>| Store::of(d.copied().unwrap_or(DType::F32));
    let srcs: Vec<Store> = (0..args.srcs.len()).map(|i| store(args.dtypes.get(i))).collect();
    let out = store(Some(&args.out_dtype));
    let Some(f) = MlirError::declined(func(&k.op, rank, (&srcs, out), "tdl_move"))? else { return Ok(None) };
    let n: usize = args.shape.iter().product();
    let mut buffers = vec![out.zeroed(n)];
    let mut params = vec![Param::contiguous(0, args.shape)];
    for (v, st) in args.srcs.iter().zip(&srcs) {
        let Elems::F32(d) = v.data else { return Ok(None) };
        params.push(Param::MemRef {
            buf: buffers.len(),
            offset: v.offset as i64,
            sizes: v.shape.iter().map(|&s| s as i64).collect(),
            strides: v.strides.iter().map(|&s| s as i64).collect(),
        });
        buffers.push(st.input(d));
    }
    let Some(grid) = grid_1d(n) else { return Ok(None) };
    let steps = if n == 0 {
        Vec::new()
    } else {
        vec![LaunchStep { func: "tdl_move".into(), grid, block: [BLOCK as u32, 1, 1], shared_bytes: 0, params }]
    };
    Ok(Some(LaunchPlan {
        code: cached_code("move", &f),
        buffers,
        steps,
        output: 0,
        output_shape: args.shape.to_vec(),
        error_flag: None,
        stats: None,
    }))
}
