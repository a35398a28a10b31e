//! Matmul: `C[b] = A[b] @ B[b]`, tiled in workgroup memory.
//!
//! One workgroup of 16×16 threads computes a 16×16 tile of C, one thread
//! per element: per k-tile the threads load a 16×16 tile of A and of B
//! into workgroup memory (zero past the edges), then each adds its row ×
//! column of products, in `k` order, to its accumulator (kept in
//! workgroup memory, so the host form's phases can share it). Grid:
//! `(ceil(M/16), ceil(N/16), batch)`, the batch chunked by 65535.
//!
//! Everything is a run-time parameter: A and B are flat `memref<?xf32>`
//! over their buffers with element `(b, i, p)` of A at
//! `a_offsets[b] + i·a_i + p·a_p` (likewise B), the per-batch offsets an
//! `i64` buffer each (broadcast batches are repeated offsets); C is the
//! row-major `[batch, M, N]` output. One kernel serves every matmul.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use tdl_kernel::interp::MatMulArgs;

use crate::launch::{
    chunk_z, text_hash, KernelCode, LaunchPlan, LaunchStep, Param, PlanBuf, Store, MAX_GRID_X, MAX_GRID_YZ,
};
use crate::wrap::{gpu_module_text, Func};
use crate::MlirError;

/// The tile edge (threads per block side).
pub const TILE: usize = 16;

/// The matmul kernel named `name`. Parameters, in order: `a`, `b`
/// (`memref<?xf32>`), `c` (`memref<?x?x?xf32>`, `[batch, M, N]`),
/// `a_offsets`, `b_offsets` (`memref<?xi64>`), then `i64`s `M, N, K, a_i,
/// a_p, b_p, b_j, z0` (`z0`: the batch index of block z 0). `store`: how
/// A, B and C are stored (`f32` above; 16-bit floats are widened on load
/// and C rounded on store, the products and sums are `f32`).
pub(crate) fn func(name: &str, store: [Store; 3]) -> Func {
    let p = |n: &str, t: &str| (format!("%{n}"), t.to_string());
    let [ea, eb, ec] = store.map(Store::mlir);
    let mut params = vec![
        p("a", &format!("memref<?x{ea}>")),
        p("b", &format!("memref<?x{eb}>")),
        p("c", &format!("memref<?x?x?x{ec}>")),
        p("aoff", "memref<?xi64>"),
        p("boff", "memref<?xi64>"),
    ];
    for s in ["m_", "n_", "k_", "ai_", "ap_", "bp_", "bj_", "z0_"] {
        params.push(p(s, "i64"));
    }
    let body = format!(
        "    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %ct = arith.constant {TILE} : index
    %zero = arith.constant 0.0 : f32
    %M = arith.index_cast %m_ : i64 to index
    %N = arith.index_cast %n_ : i64 to index
    %K = arith.index_cast %k_ : i64 to index
    %ai = arith.index_cast %ai_ : i64 to index
    %ap = arith.index_cast %ap_ : i64 to index
    %bp = arith.index_cast %bp_ : i64 to index
    %bj = arith.index_cast %bj_ : i64 to index
    %z0 = arith.index_cast %z0_ : i64 to index
    %bat = arith.addi %bz, %z0 : index
    %ao64 = memref.load %aoff[%bat] : memref<?xi64>
    %bo64 = memref.load %boff[%bat] : memref<?xi64>
    %ao = arith.index_cast %ao64 : i64 to index
    %bo = arith.index_cast %bo64 : i64 to index
    %i0 = arith.muli %bx, %ct : index
    %j0 = arith.muli %by, %ct : index
    %nkt = arith.ceildivui %K, %ct : index
    PHASE{{
      memref.store %zero, %Cs[%ty, %tx] : memref<{TILE}x{TILE}xf32SMEM>
    }}PHASE
    scf.for %kt = %c0 to %nkt step %c1 {{
      %p0 = arith.muli %kt, %ct : index
      PHASE{{
        %i = arith.addi %i0, %ty : index
        %pa = arith.addi %p0, %tx : index
        %iin = arith.cmpi ult, %i, %M : index
        %pain = arith.cmpi ult, %pa, %K : index
        %aok = arith.andi %iin, %pain : i1
        %av = scf.if %aok -> f32 {{
          %x1 = arith.muli %i, %ai : index
          %x2 = arith.muli %pa, %ap : index
          %x3 = arith.addi %ao, %x1 : index
          %x4 = arith.addi %x3, %x2 : index
{load_a}          scf.yield %v : f32
        }} else {{ scf.yield %zero : f32 }}
        memref.store %av, %As[%ty, %tx] : memref<{TILE}x{TILE}xf32SMEM>
        %j = arith.addi %j0, %tx : index
        %pb = arith.addi %p0, %ty : index
        %jin = arith.cmpi ult, %j, %N : index
        %pbin = arith.cmpi ult, %pb, %K : index
        %bok = arith.andi %jin, %pbin : i1
        %bv = scf.if %bok -> f32 {{
          %y1 = arith.muli %pb, %bp : index
          %y2 = arith.muli %j, %bj : index
          %y3 = arith.addi %bo, %y1 : index
          %y4 = arith.addi %y3, %y2 : index
{load_b}          scf.yield %v : f32
        }} else {{ scf.yield %zero : f32 }}
        memref.store %bv, %Bs[%ty, %tx] : memref<{TILE}x{TILE}xf32SMEM>
      }}PHASE
      PHASE{{
        %s0 = memref.load %Cs[%ty, %tx] : memref<{TILE}x{TILE}xf32SMEM>
        %s = scf.for %q = %c0 to %ct step %c1 iter_args(%acc = %s0) -> (f32) {{
          %x = memref.load %As[%ty, %q] : memref<{TILE}x{TILE}xf32SMEM>
          %y = memref.load %Bs[%q, %tx] : memref<{TILE}x{TILE}xf32SMEM>
          %xy = arith.mulf %x, %y : f32
          %acc1 = arith.addf %acc, %xy : f32
          scf.yield %acc1 : f32
        }}
        memref.store %s, %Cs[%ty, %tx] : memref<{TILE}x{TILE}xf32SMEM>
      }}PHASE
    }}
    PHASE{{
      %i = arith.addi %i0, %ty : index
      %j = arith.addi %j0, %tx : index
      %iin = arith.cmpi ult, %i, %M : index
      %jin = arith.cmpi ult, %j, %N : index
      %ok = arith.andi %iin, %jin : i1
      scf.if %ok {{
        %v = memref.load %Cs[%ty, %tx] : memref<{TILE}x{TILE}xf32SMEM>
{store_c}      }}
    }}PHASE
",
        load_a = store[0].load("%v", "%a[%x4]", &format!("memref<?x{ea}>"), "          "),
        load_b = store[1].load("%v", "%b[%y4]", &format!("memref<?x{eb}>"), "          "),
        store_c =
            store[2].store("memref.store", "%v", "", "%c[%bat, %i, %j]", &format!("memref<?x?x?x{ec}>"), "        "),
    );
    let tile = format!("{TILE}x{TILE}xf32");
    Func {
        name: name.to_string(),
        params,
        block: [TILE as u32, TILE as u32],
        shared: vec![("%As".into(), tile.clone()), ("%Bs".into(), tile.clone()), ("%Cs".into(), tile)],
        body,
    }
}

/// The code of [`func`] as a [`KernelCode`] (function `name`).
pub(crate) fn code_of(kind: &str, f: &Func) -> KernelCode {
    let host_module = format!("module {{\n{}}}\n", f.host());
    let mlir_module = gpu_module_text("", &format!("tdl_{kind}"), &f.gpu());
    KernelCode { key: format!("{kind}:{}", text_hash(&host_module)), mlir_module, host_module }
}

thread_local! {
    static CODES: RefCell<HashMap<[Store; 3], Rc<KernelCode>>> = RefCell::default();
}

/// The matmul kernel's code for `store`, made once per thread.
fn code(store: [Store; 3]) -> Rc<KernelCode> {
    CODES.with(|c| {
        Rc::clone(c.borrow_mut().entry(store).or_insert_with(|| Rc::new(code_of("matmul", &func("tdl_matmul", store)))))
    })
}

fn i64_of(x: usize) -> Result<i64, MlirError> {
    i64::try_from(x).map_err(|_| MlirError::TooLong(x))
}

/// The launch plan of a matmul hook call ([`MatMulArgs`]); `Ok(None)` when
/// the GPU kernel does not support it (then the caller runs it some other
/// way). Checks that every element read lies inside A and B.
pub fn plan_matmul<'a>(args: &MatMulArgs<'a>) -> Result<Option<LaunchPlan<'a>>, MlirError> {
    let (m, n, k) = (args.m, args.n, args.k);
    let batch = args.a_offsets.len();
    if args.b_offsets.len() != batch {
        return Err(MlirError::BadPlan("matmul: a_offsets and b_offsets differ in length".into()));
    }
    let out_shape = vec![batch, m, n];
    let numel = batch * m * n;
    let store = args.dtypes.map(Store::of);
    let code = code(store);
    let mut plan = LaunchPlan {
        code,
        buffers: vec![
            store[0].input(args.a),
            store[1].input(args.b),
            store[2].zeroed(numel),
            PlanBuf::I64(Cow::Owned(args.a_offsets.iter().map(|&o| o as i64).collect())),
            PlanBuf::I64(Cow::Owned(args.b_offsets.iter().map(|&o| o as i64).collect())),
        ],
        steps: Vec::new(),
        output: 2,
        output_shape: out_shape,
        error_flag: None,
        stats: None,
    };
    if numel == 0 {
        return Ok(Some(plan));
    }
    // Every element read must lie inside its operand.
    let reach = |offs: &[usize], s1: usize, n1: usize, s2: usize, n2: usize, len: usize| {
        n1 == 0
            || n2 == 0
            || offs.iter().all(|&o| {
                o.checked_add((n1 - 1).saturating_mul(s1))
                    .and_then(|x| x.checked_add((n2 - 1).saturating_mul(s2)))
                    .is_some_and(|x| x < len)
            })
    };
    if !reach(&args.a_offsets, args.a_i, m, args.a_p, k, args.a.len())
        || !reach(&args.b_offsets, args.b_p, k, args.b_j, n, args.b.len())
    {
        return Err(MlirError::BadPlan("matmul operands read outside their buffers".into()));
    }
    let (gx, gy) = (m.div_ceil(TILE) as u64, n.div_ceil(TILE) as u64);
    if gx > MAX_GRID_X || gy > MAX_GRID_YZ {
        return Ok(None);
    }
    let fixed = [m, n, k, args.a_i, args.a_p, args.b_p, args.b_j].map(i64_of);
    let mut scalars = Vec::with_capacity(7);
    for f in fixed {
        scalars.push(Param::I64(f?));
    }
    let (na, nb) = (args.a.len(), args.b.len());
    plan.steps = chunk_z(batch as u64, |z0, nz| {
        let mut params = vec![
            Param::flat(0, na),
            Param::flat(1, nb),
            Param::contiguous(2, &[batch, m, n]),
            Param::flat(3, batch),
            Param::flat(4, batch),
        ];
        params.extend(scalars.iter().cloned());
        params.push(Param::I64(z0 as i64));
        LaunchStep {
            func: "tdl_matmul".into(),
            grid: [gx as u32, gy as u32, nz],
            block: [TILE as u32, TILE as u32, 1],
            shared_bytes: 0,
            params,
        }
    });
    Ok(Some(plan))
}

/// The `gpu.func` named `fname` of matmul kernel `m` of `p` and what it is
/// (for [`crate::program`]); integer operands are not supported yet.
pub(crate) fn ir_func(
    p: &tdl_kernel::ir::KernelProgram,
    m: &tdl_kernel::ir::MatMulKernel,
    fname: &str,
) -> Result<(String, String), MlirError> {
    for b in [m.a.buf, m.b.buf, m.out] {
        if !p.buffer(b).is_some_and(|x| x.dtype.is_float()) {
            return Err(MlirError::Unsupported("integer matmuls in the GPU code generator".into()));
        }
    }
    let store = crate::launch::stores(p, [m.a.buf, m.b.buf, m.out]);
    Ok((func(fname, store).gpu(), format!("matmul, {TILE}×{TILE} tiles in workgroup memory")))
}
