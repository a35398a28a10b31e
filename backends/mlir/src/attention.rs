//! The FlashAttention-2 forward as MLIR: one kernel **body** shared by the
//! GPU kernel and the host check (design and evidence:
//! `docs/design/gpu-mlir-research.md`).
//!
//! One workgroup runs one `(head, q-tile, split)` program with one thread
//! per query row (`tile_q` threads; at decode shapes several heads' rows
//! and several threads per row, see below). Phases, each ended by a
//! barrier:
//! 0. load the Q tile into workgroup memory, clear the row state;
//! 1. per visited kv-tile: load the K and V tiles cooperatively (zero past
//!    `S`);
//! 2. per visited kv-tile, per row (per thread: its share of the keys):
//!    scores `q·k·scale` (base-2 softmax), the mask formula per element in
//!    Partial tiles only (Full tiles evaluate no mask, only the score
//!    modifier), the tile max, the online-softmax rescale and `O += P·V`,
//!    all in registers;
//! 3. with key sharing only: each thread's `(m, l, O)` into the tiles'
//!    workgroup memory, free by then, then a tree of pairwise merges (one
//!    phase per power of two below `tile_q`) into the row's first slot;
//! 4. per row, its first thread: one division (a row with no visible key
//!    gives zeros), or, for a share of a KV split, the raw `(m, l, O)`
//!    stored for the merge kernel.
//!
//! **Block-sparse iteration.** The plan computes the Kernel IR's iteration
//! space (`tdl_passes::tiles::iteration_space`, the fitted tiles, the bound
//! sizes) and uploads it flattened: `Runs: memref<?x4xi32>` holds
//! `[start, end, partial, visited before]` per run of visited kv-tiles,
//! `Offs: memref<?x?x3xi32>` holds `[first run, end run, visited]` per
//! `(mask head, q-tile)` (head `h` reads mask head `h mod dim 0`; without
//! a mask one row of all-Full runs). Empty tiles are never visited.
//!
//! **GQA packing** (decode). Where the query heads of one key head would
//! each fill only a few rows of a q-tile (`pk·T ≤ tile_q` for `pk` heads
//! dividing the group), visit the same kv-tiles, and the mask and modifier
//! do not read the head, one program runs `pk` heads as its rows (thread
//! `t`: head `hy·pk + t / T`, row `t mod T`; the run-time parameter `%pk`,
//! 1 otherwise) and the grid's y axis counts packs: each K/V tile is loaded
//! once for the `pk` heads instead of once per head, and `pk·T` threads
//! work instead of `T` (at `T = 1` with 4 query heads per key head, 4 of
//! a 64-thread workgroup rather than 1).
//!
//! **Key sharing** (decode). Where a program's rows (one q-tile) leave
//! threads idle — at `T = 1` all but one — `kw` threads (a power of two,
//! `kw · rows ≤ tile_q`, run-time parameter `%kw`) share each row: thread
//! `t` takes row slot `t / kw` and every `kw`-th key of each tile from
//! `t mod kw`, with its own online-softmax state; the `kw` states of a row
//! are merged (`m = max mᵢ`, `l = Σ 2^(mᵢ−m)·lᵢ`, `O = Σ 2^(mᵢ−m)·Oᵢ`)
//! pairwise in `log2 kw` steps through the tiles' workgroup memory, free
//! by then.
//!
//! **KV splits** (flash-decoding). When the Kernel IR's `kv_split`
//! resolves (`tdl_kernel::target::resolve_kv_split`, busiest program,
//! heads × q-tiles programs) to `n > 1`, the grid's z axis is the split:
//! program `(h, qt, si)` runs its share `[si·per, (si+1)·per)` of the
//! program's visited tiles (`per = ceil(visited / n)`) and writes `m`, `l`
//! (base 2) and the unnormalised `O` to `Mp`, `Lp`: `[n, heads, T]` and
//! `Op: [n, heads, T, Dv]` (zeroed scratch); the merge kernel
//! `<kernel>_merge` (one thread per row) combines them — `m = max mᵢ`,
//! `l = Σ 2^(mᵢ−m)·lᵢ`, `out = Σ 2^(mᵢ−m)·Oᵢ / l`, zeros when `l == 0`.
//! Without a split the scratch views are empty (dim 0 is 0) and the kernel
//! writes the output itself.
//!
//! The body is identical text in both wrappers; what differs is only
//! (1) where the tiles live — workgroup attributions of a `gpu.func`
//! (`#gpu.address_space<workgroup>`, 16-byte aligned) or allocas of a
//! per-program host function, (2) the per-thread state — a stride-0 view of
//! a private alloca on the GPU (promoted to registers), a real `[tile_q,
//! ...]` buffer on the host — and (3) what a phase is — straight-line code
//! followed by `gpu.barrier` on the GPU, an `scf.forall` over the threads
//! on the host. The host wrapper lowers to the LLVM dialect and runs in
//! MLIR's ExecutionEngine; the GPU wrapper lowers to NVVM and PTX.
//!
//! Operands are `memref<?x?xDxf32>` (`[heads, T, D]`); K and V may have
//! fewer heads (grouped-query attention: query head `h` reads `h / (Hq /
//! Hk)`). Operands of rank 2 (one head) and of rank 4 and more (the
//! leading axes flattened into heads, [`flat_heads`]) are views the plan
//! builds. Every mask ([`crate::mask`]), index lambdas and the score
//! modifier ([`crate::lambda`]) are compiled into the score computation: a
//! mask that reads memory and the modifier run only at in-range `(q, k)`,
//! the modifier only where the mask holds, as the interpreter evaluates
//! them. The plan's [`LaunchPlan::stats`] are the interpreter's counts for
//! the kernel's tiles (programs, visited/Full/Partial tiles, mask
//! evaluations, splits, merged rows).

use std::borrow::Cow;
use std::fmt::Write as _;
use std::rc::Rc;

use tdl_ir::layout::AttentionLayout;
use tdl_ir::{Bindings, DType, MaskExpr, ScalarExpr};
use tdl_kernel::interp::AttentionArgs;
use tdl_kernel::ir::{AttentionKernel, KvSplit};
use tdl_kernel::target::resolve_kv_split;
use tdl_kernel::{F32Tensor, KernelStats};
use tdl_passes::tiles::{self, Ctx, IterSpace, MaskData, OperandData, Runs, TileClass};

use crate::elementwise::Emit;
use crate::lambda::{lambda, LamCtx, Ty};
use crate::launch::{text_hash, KernelCode, LaunchPlan, LaunchStep, Param, PlanBuf, Store, MAX_GRID_X, MAX_GRID_YZ};
use crate::mask::{mask, plan_extras, reads_memory, ArrayData, Extras, MaskCtx};
use crate::MlirError;

/// What one attention kernel is compiled for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GpuAttentionSpec {
    /// Head dimension of q and k.
    pub d: usize,
    /// Head dimension of v and the output.
    pub dv: usize,
    /// Query rows per workgroup (= threads per workgroup).
    pub tile_q: usize,
    /// Keys per streamed tile.
    pub tile_k: usize,
    /// `None`: `1/sqrt(d)`.
    pub scale: Option<f64>,
    pub mask: Option<MaskExpr>,
    /// The score modifier `(s, q, k, h) => …`.
    pub score: Option<ScalarExpr>,
    /// Element type and rank of the operands the mask (group 0) and the
    /// score modifier (group 1) read, by position (`None`: not a tensor).
    pub operands: Vec<Vec<Option<(DType, usize)>>>,
    /// How q, k, v and the output are stored ([`Store`]: `f16`/`bf16`
    /// storage is widened on load and rounded on store; the arithmetic and
    /// the shared tiles are `f32`).
    pub store: [Store; 4],
}

fn unsupported(what: impl std::fmt::Display) -> MlirError {
    MlirError::Unsupported(format!("{what} in the GPU attention kernel"))
}

/// `x` as an MLIR `f32` literal (exact, hexadecimal bits).
fn f32_lit(x: f32) -> String {
    format!("0x{:08X}", x.to_bits())
}

/// The body: phases over `%t` (a thread), `%qt`, `%hy` (the head, or with
/// GQA packing the pack, [`ROW`]), `%si` (the KV
/// split) bound by the wrapper; `PHASE{` / `}PHASE` mark where a phase
/// starts and ends. Returns the body and the extra parameters.
fn body(spec: &GpuAttentionSpec) -> Result<(String, Extras), MlirError> {
    let (tq, tk, d, dv) = (spec.tile_q, spec.tile_k, spec.d, spec.dv);
    let scale_n = spec.scale.unwrap_or(1.0 / (d as f64).sqrt()) as f32;
    let scale = scale_n * std::f32::consts::LOG2_E;
    let mut x = Extras::new(spec.operands.clone());
    // Full tiles evaluate no mask (only the modifier, where in range);
    // Partial tiles evaluate it per element.
    let full = compute(d, dv, &score_code(spec, scale_n, &mut x, false)?);
    let compute_phase = if spec.mask.is_some() {
        let masked = compute(d, dv, &score_code(spec, scale_n, &mut x, true)?);
        format!("      scf.if %part {{\n{masked}      }} else {{\n{full}      }}\n")
    } else {
        full
    };
    let mut b = String::new();
    let _ = write!(
        b,
        "    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c2 = arith.constant 2 : index
    %c3 = arith.constant 3 : index
    %ctq = arith.constant {tq} : index
    %ctk = arith.constant {tk} : index
    %cd = arith.constant {d} : index
    %cdv = arith.constant {dv} : index
    %zero = arith.constant 0.0 : f32
    %one = arith.constant 1.0 : f32
    %false = arith.constant false
    %i0 = arith.constant 0 : i32
    %ninf = arith.constant 0xFF800000 : f32
    %scale = arith.constant {scale} : f32
    %Hq = memref.dim %Q, %c0 : !qt
    %T = memref.dim %Q, %c1 : !qt
    %Hk = memref.dim %K, %c0 : !kt
    %S = memref.dim %K, %c1 : !kt
    %grp0 = arith.divui %Hq, %Hk : index
    %grp = arith.maxui %grp0, %c1 : index
    // Threads per row (`%kw` > 1: each its share of every tile's keys).
    %kw0 = arith.index_cast %kw_ : i64 to index
    %kw = arith.maxui %kw0, %c1 : index
    %multi = arith.cmpi ugt, %kw, %c1 : index
    // The program's first query head and its rows: `%pk` heads of one key
    // head (GQA packing, `%pk` > 1: all `T` rows of each, one q-tile), or
    // one head's q-tile (`%pk` = 1).
    %pk0 = arith.index_cast %pk_ : i64 to index
    %pk = arith.maxui %pk0, %c1 : index
    %hf = arith.muli %hy, %pk : index
    %packed = arith.cmpi ugt, %pk, %c1 : index
    %R0 = arith.select %packed, %T, %ctq : index
    %R = arith.maxui %R0, %c1 : index
    %hk = arith.divui %hf, %grp : index
    %q0 = arith.muli %qt, %ctq : index
    // The program's runs of visited kv-tiles (the iteration space of its
    // mask head) and its share of them (split %si of max(1, dim 0 of %Mp)).
    %mh = memref.dim %Offs, %c0 : !ft
    %hr = arith.remui %hf, %mh : index
    %rb32 = memref.load %Offs[%hr, %qt, %c0] : !ft
    %re32 = memref.load %Offs[%hr, %qt, %c1] : !ft
    %nv32 = memref.load %Offs[%hr, %qt, %c2] : !ft
    %rb = arith.index_cast %rb32 : i32 to index
    %re = arith.index_cast %re32 : i32 to index
    %nv = arith.index_cast %nv32 : i32 to index
    %ns0 = memref.dim %Mp, %c0 : !mt
    %split = arith.cmpi ne, %ns0, %c0 : index
    %ns = arith.maxui %ns0, %c1 : index
    %per0 = arith.ceildivui %nv, %ns : index
    %per = arith.maxui %per0, %c1 : index
    %v0 = arith.muli %si, %per : index
    %v1 = arith.addi %v0, %per : index
PRE    PHASE{{
{row}      scf.for %dd = %c0 to %cd step %c1 {{
        %x = scf.if %rv -> f32 {{
{load_q}          scf.yield %v : f32
        }} else {{ scf.yield %zero : f32 }}
        memref.store %x, %Qs[%t, %dd] : !sq
      }}
      %zv = vector.broadcast %zero : f32 to vector<{dv}xf32>
      vector.store %zv, %acc[%t, %c0] : !pv2, vector<{dv}xf32>
      memref.store %ninf, %m[%t] : !pv1
      memref.store %zero, %l[%t] : !pv1
    }}PHASE
    scf.for %ri = %rb to %re step %c1 {{
      %ks32 = memref.load %Runs[%ri, %c0] : !rt
      %ke32 = memref.load %Runs[%ri, %c1] : !rt
      %kp32 = memref.load %Runs[%ri, %c2] : !rt
      %kc32 = memref.load %Runs[%ri, %c3] : !rt
      %ks = arith.index_cast %ks32 : i32 to index
      %ke = arith.index_cast %ke32 : i32 to index
      %kc = arith.index_cast %kc32 : i32 to index
      %part = arith.cmpi ne, %kp32, %i0 : i32
      // Tile kt is the program's visited tile kc + (kt - ks): keep those
      // in [v0, v1).
      %lo0 = arith.maxui %v0, %kc : index
      %lo1 = arith.subi %lo0, %kc : index
      %lo = arith.addi %ks, %lo1 : index
      %hi0 = arith.maxui %v1, %kc : index
      %hi1 = arith.subi %hi0, %kc : index
      %hi2 = arith.addi %ks, %hi1 : index
      %hi = arith.minui %hi2, %ke : index
      scf.for %kt = %lo to %hi step %c1 {{
      %k0 = arith.muli %kt, %ctk : index
      // K and V tiles, loaded by the threads in turn (zero past S).
      PHASE{{
        scf.for %j0 = %c0 to %ctk step %ctq {{
          %j = arith.addi %j0, %t : index
          %jin = arith.cmpi ult, %j, %ctk : index
          scf.if %jin {{
            %k = arith.addi %k0, %j : index
            %kin = arith.cmpi ult, %k, %S : index
            scf.for %dd = %c0 to %cd step %c1 {{
              %kx = scf.if %kin -> f32 {{
{load_k}                scf.yield %a : f32
              }} else {{ scf.yield %zero : f32 }}
              memref.store %kx, %Ks[%j, %dd] : !sk
            }}
            scf.for %dd = %c0 to %cdv step %c1 {{
              %vx = scf.if %kin -> f32 {{
{load_v}                scf.yield %a : f32
              }} else {{ scf.yield %zero : f32 }}
              memref.store %vx, %Vs[%j, %dd] : !sv
            }}
          }}
        }}
      }}PHASE
      PHASE{{
COMPUTE      }}PHASE
      }}
    }}
    // With %kw > 1 threads per row, each its share of the keys: their
    // states, through the (now free) tiles, merged pairwise into the row's
    // first thread's slot (a tree: step i merges slot t + 2^i into t).
    PHASE{{
      scf.if %multi {{
        %ms = memref.load %m[%t] : !pv1
        %ls = memref.load %l[%t] : !pv1
        %as = vector.load %acc[%t, %c0] : !pv2, vector<{dv}xf32>
        memref.store %ms, %Qs[%t, %c0] : !sq
        memref.store %ls, %Ks[%t, %c0] : !sk
        vector.store %as, %Vs[%t, %c0] : !sv, vector<{dv}xf32>
      }}
    }}PHASE
TREE    PHASE{{
{row}      %lead = arith.cmpi eq, %jo, %c0 : index
      %go = arith.andi %rv, %lead : i1
      scf.if %go {{
        %mf, %lf, %a = scf.if %multi -> (f32, f32, vector<{dv}xf32>) {{
          %mm = memref.load %Qs[%t, %c0] : !sq
          %lm = memref.load %Ks[%t, %c0] : !sk
          %am = vector.load %Vs[%t, %c0] : !sv, vector<{dv}xf32>
          scf.yield %mm, %lm, %am : f32, f32, vector<{dv}xf32>
        }} else {{
          %m1 = memref.load %m[%t] : !pv1
          %l1 = memref.load %l[%t] : !pv1
          %a1 = vector.load %acc[%t, %c0] : !pv2, vector<{dv}xf32>
          scf.yield %m1, %l1, %a1 : f32, f32, vector<{dv}xf32>
        }}
        scf.if %split {{
          // A share of a split program: the raw state, for the merge.
          memref.store %mf, %Mp[%si, %h, %r] : !mt
          memref.store %lf, %Lp[%si, %h, %r] : !mt
          vector.store %a, %Op[%si, %h, %r, %c0] : !opt, vector<{dv}xf32>
        }} else {{
          %pos = arith.cmpf ogt, %lf, %zero : f32
          %rcp = arith.divf %one, %lf : f32
          %inv = arith.select %pos, %rcp, %zero : f32
          %iv = vector.broadcast %inv : f32 to vector<{dv}xf32>
          %o = arith.mulf %a, %iv : vector<{dv}xf32>
{store_o}        }}
      }}
    }}PHASE
",
        scale = f32_lit(scale),
        row = ROW,
        load_q = spec.store[0].load("%v", "%Q[%h, %r, %dd]", "!qt", "          "),
        load_k = spec.store[1].load("%a", "%K[%hk, %k, %dd]", "!kt", "                "),
        load_v = spec.store[2].load("%a", "%V[%hk, %k, %dd]", "!vt", "                "),
        store_o = spec.store[3].store("vector.store", "%o", &format!("{dv}x"), "%O[%h, %r, %c0]", "!ot", "          "),
    );
    let mut pre = String::new();
    if spec.mask.is_some() || spec.score.is_some() {
        pre.push_str("    %T64 = arith.index_cast %T : index to i64\n    %S64 = arith.index_cast %S : index to i64\n");
    }
    if x.heads {
        // Programs read by lambdas are never packed: `%hf` is the head.
        pre.push_str("    %h64 = arith.index_cast %hf : index to i64\n    %hm = arith.remui %h64, %hn : i64\n");
    }
    Ok((b.replace("PRE", &pre).replace("COMPUTE", &compute_phase).replace("TREE", &merge_tree(tq, dv)), x))
}

/// The tree that merges the key-sharing threads' states of a row (slots
/// `t .. t + kw` of the scratch in `Qs[·, 0]`, `Ks[·, 0]`, `Vs[·, :]`):
/// phase `i` (one per power of two below `tile_q`; `%kw` is one of them)
/// merges slot `t + 2^i` into slot `t` for `t mod 2^(i+1) = 0` within the
/// row — no slot is read and written in one phase — with `m = max`, the
/// other state scaled by `2^(mᵢ − m)` (0 for a state that saw no key).
/// `%w{tag}`, the weight `2^(mi − m)` of a saved online-softmax state with
/// running max `mi` in a merge whose max is `m` — 0 for a state that saw
/// no key (`mi = -inf`, where the power would be NaN when `m` is -inf
/// too) — as the merge kernel and the key-sharing tree compute it.
fn state_weight(tag: &str, mi: &str, m: &str, ind: &str) -> String {
    format!(
        "{ind}%d{tag} = arith.subf {mi}, {m} : f32
{ind}%e{tag} = llvm.call_intrinsic \"llvm.exp2.f32\"(%d{tag}) : (f32) -> f32
{ind}%live{tag} = arith.cmpf one, {mi}, %ninf : f32
{ind}%w{tag} = arith.select %live{tag}, %e{tag}, %zero : f32
"
    )
}

fn merge_tree(tq: usize, dv: usize) -> String {
    let mut out = String::new();
    let mut sz = 1;
    while sz < tq {
        let _ = write!(
            out,
            "    PHASE{{
      %sz = arith.constant {sz} : index
      %sz2 = arith.constant {two} : index
      %jo = arith.remui %t, %kw : index
      %pos = arith.remui %jo, %sz2 : index
      %even = arith.cmpi eq, %pos, %c0 : index
      %jp = arith.addi %jo, %sz : index
      %pin = arith.cmpi ult, %jp, %kw : index
      %act = arith.andi %even, %pin : i1
      %step = arith.andi %act, %multi : i1
      scf.if %step {{
        %tp = arith.addi %t, %sz : index
        %m1 = memref.load %Qs[%t, %c0] : !sq
        %l1 = memref.load %Ks[%t, %c0] : !sk
        %a1 = vector.load %Vs[%t, %c0] : !sv, vector<{dv}xf32>
        %m2 = memref.load %Qs[%tp, %c0] : !sq
        %l2 = memref.load %Ks[%tp, %c0] : !sk
        %a2 = vector.load %Vs[%tp, %c0] : !sv, vector<{dv}xf32>
        %mx = arith.maximumf %m1, %m2 : f32
{w1}{w2}        %lw = arith.mulf %w1, %l1 : f32
        %l3 = llvm.intr.fma(%w2, %l2, %lw) : (f32, f32, f32) -> f32
        %wb1 = vector.broadcast %w1 : f32 to vector<{dv}xf32>
        %wb2 = vector.broadcast %w2 : f32 to vector<{dv}xf32>
        %aw = arith.mulf %wb1, %a1 : vector<{dv}xf32>
        %a3 = vector.fma %wb2, %a2, %aw : vector<{dv}xf32>
        memref.store %mx, %Qs[%t, %c0] : !sq
        memref.store %l3, %Ks[%t, %c0] : !sk
        vector.store %a3, %Vs[%t, %c0] : !sv, vector<{dv}xf32>
      }}
    }}PHASE
",
            two = 2 * sz,
            w1 = state_weight("1", "%m1", "%mx", "        "),
            w2 = state_weight("2", "%m2", "%mx", "        "),
        );
        sz *= 2;
    }
    out
}

/// The thread's row, inside a phase: its row slot `%ti = %t / %kw` and
/// key share `%jo = %t mod %kw`, head `%h` (the program's `%hf` plus
/// `%ti / %R`), query row `%r` (`%q0 + %ti mod %R`), `%rv` whether it is
/// a row of the output.
const ROW: &str = "      %ti = arith.divui %t, %kw : index
      %jo = arith.remui %t, %kw : index
      %g = arith.divui %ti, %R : index
      %rr = arith.remui %ti, %R : index
      %h = arith.addi %hf, %g : index
      %r = arith.addi %q0, %rr : index
      %gin = arith.cmpi ult, %g, %pk : index
      %rin = arith.cmpi ult, %r, %T : index
      %rv = arith.andi %gin, %rin : i1
";

/// One kv-tile's work for row `%r` (inside the compute phase): the scores
/// (`score`, defining `%s`), the tile max, the online-softmax rescale and
/// `O += P·V`.
fn compute(d: usize, dv: usize, score: &str) -> String {
    format!(
        "{row}        %q = vector.load %Qs[%t, %c0] : !sq, vector<{d}xf32>
        %mx = scf.for %j = %jo to %ctk step %kw iter_args(%mx0 = %ninf) -> (f32) {{
{score}
          %mx1 = arith.maximumf %mx0, %s : f32
          scf.yield %mx1 : f32
        }}
        %mold = memref.load %m[%t] : !pv1
        %mnew = arith.maximumf %mold, %mx : f32
        %dead = arith.cmpf oeq, %mnew, %ninf : f32
        %dm = arith.subf %mold, %mnew : f32
        %ea = llvm.call_intrinsic \"llvm.exp2.f32\"(%dm) : (f32) -> f32
        %alpha = arith.select %dead, %one, %ea : f32
        %a0 = vector.load %acc[%t, %c0] : !pv2, vector<{dv}xf32>
        %alv = vector.broadcast %alpha : f32 to vector<{dv}xf32>
        %a1 = arith.mulf %a0, %alv : vector<{dv}xf32>
        %psum, %a2 = scf.for %j = %jo to %ctk step %kw iter_args(%ps0 = %zero, %ax = %a1) -> (f32, vector<{dv}xf32>) {{
{score}
          %live = arith.cmpi eq, %dead, %false : i1
          %vis = arith.cmpf one, %s, %ninf : f32
          %ok = arith.andi %vis, %live : i1
          %ds = arith.subf %s, %mnew : f32
          %e = llvm.call_intrinsic \"llvm.exp2.f32\"(%ds) : (f32) -> f32
          %pj = arith.select %ok, %e, %zero : f32
          %ps1 = arith.addf %ps0, %pj : f32
          %vv = vector.load %Vs[%j, %c0] : !sv, vector<{dv}xf32>
          %pb = vector.broadcast %pj : f32 to vector<{dv}xf32>
          %ay = vector.fma %pb, %vv, %ax : vector<{dv}xf32>
          scf.yield %ps1, %ay : f32, vector<{dv}xf32>
        }}
        vector.store %a2, %acc[%t, %c0] : !pv2, vector<{dv}xf32>
        %lold = memref.load %l[%t] : !pv1
        %lnew = llvm.intr.fma(%lold, %alpha, %psum) : (f32, f32, f32) -> f32
        memref.store %lnew, %l[%t] : !pv1
        memref.store %mnew, %m[%t] : !pv1
",
        row = ROW
    )
}

/// The merge of the KV splits, one thread per output row (`%g = %b ·
/// MERGE_THREADS + %t` over the flattened `[heads, T]` rows): `m = max mᵢ`,
/// `l = Σ 2^(mᵢ−m)·lᵢ`, `out = Σ 2^(mᵢ−m)·Oᵢ / l` (base 2, as the
/// kernel's scores), zeros when `l == 0`.
fn merge_body(dv: usize, out: Store) -> String {
    let nt = MERGE_THREADS;
    let store_o = out.store("vector.store", "%o2", &format!("{dv}x"), "%O[%h, %r, %c0]", "!ot", "      ");
    format!(
        "    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c2 = arith.constant 2 : index
    %cnt = arith.constant {nt} : index
    %zero = arith.constant 0.0 : f32
    %one = arith.constant 1.0 : f32
    %ninf = arith.constant 0xFF800000 : f32
    %ns = memref.dim %Mp, %c0 : !mt
    %H = memref.dim %Mp, %c1 : !mt
    %T = memref.dim %Mp, %c2 : !mt
    %n = arith.muli %H, %T : index
    %g0 = arith.muli %b, %cnt : index
    %g = arith.addi %g0, %t : index
    %in = arith.cmpi ult, %g, %n : index
    scf.if %in {{
      %h = arith.divui %g, %T : index
      %r = arith.remui %g, %T : index
      %m = scf.for %i = %c0 to %ns step %c1 iter_args(%a = %ninf) -> (f32) {{
        %mi = memref.load %Mp[%i, %h, %r] : !mt
        %a1 = arith.maximumf %a, %mi : f32
        scf.yield %a1 : f32
      }}
      %zv = vector.broadcast %zero : f32 to vector<{dv}xf32>
      %l, %o = scf.for %i = %c0 to %ns step %c1 iter_args(%la = %zero, %oa = %zv) -> (f32, vector<{dv}xf32>) {{
        %mi = memref.load %Mp[%i, %h, %r] : !mt
        %li = memref.load %Lp[%i, %h, %r] : !mt
{w}        %l1 = llvm.intr.fma(%w, %li, %la) : (f32, f32, f32) -> f32
        %oi = vector.load %Op[%i, %h, %r, %c0] : !opt, vector<{dv}xf32>
        %wb = vector.broadcast %w : f32 to vector<{dv}xf32>
        %o1 = vector.fma %wb, %oi, %oa : vector<{dv}xf32>
        scf.yield %l1, %o1 : f32, vector<{dv}xf32>
      }}
      %pos = arith.cmpf ogt, %l, %zero : f32
      %rcp = arith.divf %one, %l : f32
      %inv = arith.select %pos, %rcp, %zero : f32
      %iv = vector.broadcast %inv : f32 to vector<{dv}xf32>
      %o2 = arith.mulf %o, %iv : vector<{dv}xf32>
{store_o}    }}
",
        w = state_weight("", "%mi", "%m", "        "),
    )
}

/// Threads per workgroup of the merge kernel.
pub const MERGE_THREADS: usize = 64;

/// The score of key `%j` of the tile for row `%r` (`%s`, base 2): `q·k·scale`
/// then the score modifier, `-inf` where the key is past `S` or the mask
/// does not hold. A mask that reads memory and the score modifier run
/// only at in-range `(q, k)` and the modifier only where the mask holds
/// (`scf.if`), as the interpreter evaluates them; other masks are a
/// branch-free select.
fn score_code(spec: &GpuAttentionSpec, scale_n: f32, x: &mut Extras, masked: bool) -> Result<String, MlirError> {
    let d = spec.d;
    let ctx = "GPU attention kernel";
    let mask_expr = if masked { spec.mask.as_ref() } else { None };
    let mut score = String::new();
    let _ = write!(
        score,
        "          %kv = vector.load %Ks[%j, %c0] : !sk, vector<{d}xf32>
          %qk = arith.mulf %q, %kv : vector<{d}xf32>
          %dot = vector.reduction <add>, %qk : vector<{d}xf32> into f32
          %k = arith.addi %k0, %j : index
          %inS = arith.cmpi ult, %k, %S : index
"
    );
    let guarded = spec.score.is_some() || mask_expr.is_some_and(reads_memory);
    let mcx = MaskCtx { q: "%r64", k: "%k64", h: "%hm", t: "%T64", s: "%S64", group: 0 };
    let idx64 = "%r64 = arith.index_cast %r : index to i64\n%k64 = arith.index_cast %k : index to i64";
    if !guarded {
        let _ = writeln!(score, "          %sc = arith.mulf %dot, %scale : f32");
        let ok = match mask_expr {
            Some(m) => {
                let mut em = Emit::new("          ");
                for l in idx64.lines() {
                    em.line(l);
                }
                let h = mask(&mut em, m, &mcx, x, ctx)?;
                score.push_str(&em.s);
                let _ = writeln!(score, "          %okm = arith.andi %inS, {h} : i1");
                "%okm"
            }
            None => "%inS",
        };
        let _ = write!(score, "          %s = arith.select {ok}, %sc, %ninf : f32");
        return Ok(score);
    }
    let mut em = Emit::new("            ");
    for l in idx64.lines() {
        em.line(l);
    }
    let holds = match mask_expr {
        Some(m) => mask(&mut em, m, &mcx, x, ctx)?,
        None => em.v("arith.constant true"),
    };
    let mut es = em.fork();
    let s2 = match &spec.score {
        Some(e) => {
            let scn = es.f(scale_n);
            let s0 = es.v(format!("arith.mulf %dot, {scn} : f32"));
            let lc = LamCtx { q: "%r64", k: "%k64", h: "%hm", s: Some(&s0), group: 1 };
            let (v, t) = lambda(&mut es, e, &lc, x).map_err(|err| match err {
                MlirError::Unsupported(why) => {
                    MlirError::Unsupported(format!("the score modifier ({why}) in the GPU attention kernel"))
                }
                other => other,
            })?;
            let v = match t {
                Ty::Float => v,
                Ty::Int => es.v(format!("arith.sitofp {v} : i64 to f32")),
                Ty::Bool => return Err(unsupported("a score modifier that gives a boolean")),
            };
            let l2 = es.f(std::f32::consts::LOG2_E);
            es.v(format!("arith.mulf {v}, {l2} : f32"))
        }
        None => es.v("arith.mulf %dot, %scale : f32"),
    };
    em.resume(&es);
    let r = em.v(format!("scf.if {holds} -> (f32) {{"));
    em.s.push_str(&es.s);
    em.line(format!("scf.yield {s2} : f32"));
    em.line("} else {");
    em.line("scf.yield %ninf : f32");
    em.line("}");
    let _ = write!(
        score,
        "          %inT = arith.cmpi ult, %r, %T : index
          %inb = arith.andi %inS, %inT : i1
          %s = scf.if %inb -> (f32) {{
{}            scf.yield {r} : f32
          }} else {{
            scf.yield %ninf : f32
          }}",
        em.s
    );
    Ok(score)
}

fn types(spec: &GpuAttentionSpec, smem: &str) -> String {
    let (tq, tk, d, dv) = (spec.tile_q, spec.tile_k, spec.d, spec.dv);
    let [eq, ek, ev, eo] = spec.store.map(Store::mlir);
    format!(
        "!qt = memref<?x?x{d}x{eq}>\n!kt = memref<?x?x{d}x{ek}>\n!vt = memref<?x?x{dv}x{ev}>\n!ot = memref<?x?x{dv}x{eo}>\n\
         !sq = memref<{tq}x{d}xf32{smem}>\n!sk = memref<{tk}x{d}xf32{smem}>\n!sv = memref<{tk}x{dv}xf32{smem}>\n\
         !pv1 = memref<{tq}xf32, strided<[?], offset: ?>>\n!pv2 = memref<{tq}x{dv}xf32, strided<[?, 1], offset: ?>>\n\
         !rt = memref<?x4xi32>\n!ft = memref<?x?x3xi32>\n!mt = memref<?x?x?xf32>\n!opt = memref<?x?x?x{dv}xf32>\n"
    )
}

/// The static workgroup memory a kernel may declare (more needs dynamic
/// shared memory, not used yet).
pub const MAX_SHARED: usize = 48 << 10;

const SIG: &str =
    "%Q: !qt, %K: !kt, %V: !vt, %O: !ot, %Runs: !rt, %Offs: !ft, %Mp: !mt, %Lp: !mt, %Op: !opt, %pk_: i64, %kw_: i64";

/// The merge kernel's parameters.
const MERGE_SIG: &str = "%Mp: !mt, %Lp: !mt, %Op: !opt, %O: !ot";

fn check(spec: &GpuAttentionSpec) -> Result<(), MlirError> {
    let (tq, tk, d, dv) = (spec.tile_q, spec.tile_k, spec.d, spec.dv);
    if !(1..=1024).contains(&tq) || !(1..=1024).contains(&tk) || !(1..=512).contains(&d) || !(1..=512).contains(&dv) {
        return Err(unsupported(format!("head dimensions {d}/{dv} with tiles {tq}×{tk}")));
    }
    let shared = shared_bytes(spec);
    if shared > MAX_SHARED {
        return Err(unsupported(format!("{shared} bytes of workgroup memory (tiles {tq}×{tk}, head dims {d}/{dv})")));
    }
    Ok(())
}

/// The tiles the kernel gets: the Kernel IR's, halved (kv-tile first) until
/// the tiles fit in static workgroup memory and a workgroup has at most
/// 1024 threads.
pub fn fit(mut spec: GpuAttentionSpec) -> GpuAttentionSpec {
    spec.tile_q = spec.tile_q.clamp(1, 1024);
    spec.tile_k = spec.tile_k.max(1);
    while shared_bytes(&spec) > MAX_SHARED && (spec.tile_k > 8 || spec.tile_q > 8) {
        if spec.tile_k >= spec.tile_q && spec.tile_k > 8 {
            spec.tile_k /= 2;
        } else {
            spec.tile_q /= 2;
        }
    }
    spec
}

/// The shared memory a kernel of `spec` declares, in bytes.
pub fn shared_bytes(spec: &GpuAttentionSpec) -> usize {
    4 * (spec.tile_q * spec.d + spec.tile_k * spec.d + spec.tile_k * spec.dv)
}

/// The type aliases and the `gpu.func`s named `kernel` and
/// `{kernel}_merge` (aliases prefixed `prefix`, so several kernels share a
/// module): `kernel` is launched with grid `(ceil(T / tile_q), heads,
/// splits)` and `tile_q` threads, the merge (only when splits > 1) with
/// grid `(ceil(heads·T / MERGE_THREADS), 1, 1)` and [`MERGE_THREADS`].
pub fn gpu_func(spec: &GpuAttentionSpec, kernel: &str, prefix: &str) -> Result<(String, String), MlirError> {
    check(spec)?;
    let tq = spec.tile_q;
    let dv = spec.dv;
    let (body, x) = body(spec)?;
    let body = body.replace("PHASE{", "scf.execute_region {").replace("}PHASE", "  scf.yield\n    }\n    gpu.barrier");
    let align = "{llvm.align = 16 : i64}";
    let sig = format!("{SIG}{}", extra_sig(&x));
    let merge = merge_body(dv, spec.store[3]);
    let func = format!(
        "  gpu.func @{kernel}({sig}) workgroup(%Qs : !sq {align}, %Ks : !sk {align}, %Vs : !sv {align})
      kernel attributes {{known_block_size = array<i32: {tq}, 1, 1>}} {{
    %qt = gpu.block_id x
    %hy = gpu.block_id y
    %si = gpu.block_id z
    %t = gpu.thread_id x
    %m0 = memref.alloca() : memref<1xf32>
    %l0 = memref.alloca() : memref<1xf32>
    %acc0 = memref.alloca() : memref<{dv}xf32>
    %m = memref.reinterpret_cast %m0 to offset: [0], sizes: [{tq}], strides: [0] : memref<1xf32> to !pv1
    %l = memref.reinterpret_cast %l0 to offset: [0], sizes: [{tq}], strides: [0] : memref<1xf32> to !pv1
    %acc = memref.reinterpret_cast %acc0 to offset: [0], sizes: [{tq}, {dv}], strides: [0, 1] : memref<{dv}xf32> to !pv2
{body}    gpu.return
  }}
  gpu.func @{kernel}_merge({MERGE_SIG}) kernel attributes {{known_block_size = array<i32: {MERGE_THREADS}, 1, 1>}} {{
    %b = gpu.block_id x
    %t = gpu.thread_id x
{merge}    gpu.return
  }}
"
    );
    let prefixed = |t: String| {
        let mut t = t;
        for a in ["qt", "kt", "vt", "ot", "sq", "sk", "sv", "pv1", "pv2", "rt", "ft", "mt", "opt"] {
            t = t.replace(&format!("!{a}"), &format!("!{prefix}{a}"));
        }
        t
    };
    Ok((prefixed(types(spec, ", #gpu.address_space<workgroup>")), prefixed(func)))
}

/// The kernel as a `gpu.module` named `module` with one `gpu.func`
/// `kernel` ([`gpu_func`]).
pub fn gpu_module(spec: &GpuAttentionSpec, module: &str, kernel: &str) -> Result<String, MlirError> {
    let (aliases, func) = gpu_func(spec, kernel, "")?;
    Ok(format!("{aliases}module attributes {{gpu.container_module}} {{\ngpu.module @{module} {{\n{func}}}\n}}\n"))
}

/// The same body for the host: `@{name}(params…, %gx, %gy, %gz)` runs
/// every `(q-tile, head, split)` program of the grid (`%gx` q-tiles, `%gy`
/// heads, `%gz` splits), each a call of a per-program function whose
/// phases are `scf.forall` loops over the threads; `@{name}_merge(Mp, Lp,
/// Op, O, %gx, %gy, %gz)` runs the merge's workgroups. Both take their
/// `gpu.func`'s parameters plus the grid (the [`crate::launch`] ABI).
pub fn host_module(spec: &GpuAttentionSpec, name: &str) -> Result<String, MlirError> {
    check(spec)?;
    let (tq, dv) = (spec.tile_q, spec.dv);
    let (body, x) = body(spec)?;
    let body = body.replace("PHASE{", &format!("scf.forall (%t) in ({tq}) {{")).replace("}PHASE", "}");
    let sig = format!("{SIG}{}", extra_sig(&x));
    let ex = x.params();
    let (xn, xt): (String, String) = ex
        .iter()
        .map(|(n, t)| (format!(", {n}"), format!(", {t}")))
        .fold((String::new(), String::new()), |a, b| (a.0 + &b.0, a.1 + &b.1));
    let merge = merge_body(dv, spec.store[3]);
    let mut out = types(spec, "");
    let _ = write!(
        out,
        "func.func private @{name}_program({sig}, %hy: index, %qt: index, %si: index) {{
    %Qs = memref.alloca() : !sq
    %Ks = memref.alloca() : !sk
    %Vs = memref.alloca() : !sv
    %m0 = memref.alloca() : memref<{tq}xf32>
    %l0 = memref.alloca() : memref<{tq}xf32>
    %acc0 = memref.alloca() : memref<{tq}x{dv}xf32>
    %m = memref.cast %m0 : memref<{tq}xf32> to !pv1
    %l = memref.cast %l0 : memref<{tq}xf32> to !pv1
    %acc = memref.cast %acc0 : memref<{tq}x{dv}xf32> to !pv2
{body}  return
}}
func.func @{name}({sig}, %gx: index, %gy: index, %gz: index) {{
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  scf.for %hy = %c0 to %gy step %c1 {{
    scf.for %qt = %c0 to %gx step %c1 {{
      scf.for %si = %c0 to %gz step %c1 {{
        func.call @{name}_program(%Q, %K, %V, %O, %Runs, %Offs, %Mp, %Lp, %Op, %pk_, %kw_{xn}, %hy, %qt, %si) : (!qt, !kt, !vt, !ot, !rt, !ft, !mt, !mt, !opt, i64, i64{xt}, index, index, index) -> ()
      }}
    }}
  }}
  return
}}
func.func private @{name}_merge_block({MERGE_SIG}, %b: index) {{
  scf.forall (%t) in ({MERGE_THREADS}) {{
{merge}  }}
  return
}}
func.func @{name}_merge({MERGE_SIG}, %gx: index, %gy: index, %gz: index) {{
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  scf.for %b = %c0 to %gx step %c1 {{
    func.call @{name}_merge_block(%Mp, %Lp, %Op, %O, %b) : (!mt, !mt, !opt, !ot, index) -> ()
  }}
  return
}}
"
    );
    Ok(out)
}

/// `, %name: type…` of the extra parameters.
fn extra_sig(x: &Extras) -> String {
    x.params().iter().map(|(n, t)| format!(", {n}: {t}")).collect()
}

/// The extra parameters the kernel of `spec` takes after Q, K, V, O
/// ([`crate::mask::Extras`]).
pub fn extras(spec: &GpuAttentionSpec) -> Result<Extras, MlirError> {
    Ok(body(spec)?.1)
}

/// The code of the kernel of `spec`: the `gpu.func` and host wrapper
/// `tdl_attn`.
pub fn code(spec: &GpuAttentionSpec) -> Result<KernelCode, MlirError> {
    let host = host_module(spec, "tdl_attn")?;
    Ok(KernelCode {
        key: format!("attention:{}", text_hash(&host)),
        mlir_module: gpu_module(spec, "tdl_attn", "tdl_attn")?,
        host_module: host,
    })
}

/// How operands `q`, `k`, `v` of these shapes map onto the kernel's
/// `[heads, T, D]` views: `(query heads, key heads, mask heads)` with the
/// leading axes flattened into heads — rank 2 is one head; at rank ≥ 3
/// the batch axes (all but the head axis) must be equal and the query
/// heads a multiple of the key heads (GQA: flattened query head `b·Hq + i`
/// reads key head `(b·Hq + i) / (Hq/Hk) = b·Hk + i/(Hq/Hk)`, as
/// `AttentionLayout` maps it). The mask's `h` is the flattened head modulo
/// the mask heads (the index along the output's axis -3). `Err`: why not.
pub fn flat_heads(q: &[usize], k: &[usize], v: &[usize]) -> Result<(usize, usize, usize), String> {
    let r = q.len();
    if r < 2 || k.len() != r || v.len() != r {
        return Err(format!("operands of rank {}/{}/{}", q.len(), k.len(), v.len()));
    }
    if v[..r - 1] != k[..r - 1] {
        return Err("k and v of different leading shapes".into());
    }
    if r == 2 {
        return Ok((1, 1, 1));
    }
    if q[..r - 3] != k[..r - 3] {
        return Err("broadcast batch axes".into());
    }
    let (hq, hk) = (q[r - 3], k[r - 3]);
    if hk == 0 || hq % hk != 0 {
        return Err(format!("{hq} query heads over {hk} key heads"));
    }
    let batch: usize = q[..r - 3].iter().product();
    Ok((batch * hq, batch * hk, hq))
}

/// The operands of a mask or score modifier as [`ArrayData`].
fn arrays<'a>(ops: impl Iterator<Item = Option<(DType, &'a [usize], &'a [f64])>>) -> Vec<Option<ArrayData<'a>>> {
    ops.map(|o| o.map(|(dtype, shape, data)| ArrayData { dtype, shape, data })).collect()
}

/// The launch plan of an attention hook call: `Ok(None)` where the GPU
/// kernel does not support it (operands [`flat_heads`] refuses, masks or
/// modifiers it cannot express, masks the reference refuses at these
/// sizes, an iteration space the tile classifier cannot compute, unbound
/// symbols, too many heads). Step 1 `tdl_attn`: grid `(ceil(T/tile_q),
/// heads / pk, splits)`, `tile_q` threads; parameters Q, K, V, O (rank-3
/// memrefs over the flattened heads), `Runs`, `Offs`, `Mp`, `Lp`, `Op`
/// (see the module docs), `pk` (`i64`, the heads per program: GQA packing,
/// see the module docs), `kw` (`i64`, threads per row: key sharing), then the mask's and modifier's extras
/// ([`crate::mask::Extras`]; the error flag is [`LaunchPlan::error_flag`]).
/// Step 2, only with splits > 1: `tdl_attn_merge`, grid `(ceil(heads·T /
/// MERGE_THREADS), 1, 1)`, parameters `Mp`, `Lp`, `Op`, O. Sets
/// [`LaunchPlan::stats`].
pub fn plan_attention<'a>(k: &AttentionKernel, args: &AttentionArgs<'a>) -> Result<Option<LaunchPlan<'a>>, MlirError> {
    let mask_ops: Vec<ArrayData<'_>> = match args.mask {
        Some((_, data)) => {
            data.operands.iter().map(|o| ArrayData { dtype: o.dtype, shape: &o.shape, data: o.data }).collect()
        }
        None => Vec::new(),
    };
    let score_ops: Vec<Option<ArrayData<'_>>> = match args.score {
        Some(sm) => arrays(sm.operands.iter().map(|o| o.as_ref().map(|o| (o.dtype, o.shape.as_slice(), o.data)))),
        None => Vec::new(),
    };
    plan_attention_stored(
        k,
        (args.q, args.k, args.v),
        args.dtypes.map(Store::of),
        args.mask.map(|(m, _)| (m, mask_ops.as_slice())),
        args.score.map(|sm| (sm.expr, score_ops.as_slice())),
        args.bindings,
    )
}

/// [`plan_attention`] with the mask's operands and the score modifier's
/// (by position, `None`: not a tensor) as [`ArrayData`], every tensor
/// stored as `f32`.
pub fn plan_attention_arrays<'a>(
    k: &AttentionKernel,
    qkv: (&'a F32Tensor, &'a F32Tensor, &'a F32Tensor),
    mask: Option<(&MaskExpr, &[ArrayData<'_>])>,
    score: Option<(&ScalarExpr, &[Option<ArrayData<'_>>])>,
    bindings: &Bindings,
) -> Result<Option<LaunchPlan<'a>>, MlirError> {
    plan_attention_stored(k, qkv, [Store::F32; 4], mask, score, bindings)
}

/// [`plan_attention_arrays`] with q, k, v and the output stored as
/// `store` says (their values must be of those types already).
pub fn plan_attention_stored<'a>(
    k: &AttentionKernel,
    (q, kk, v): (&'a F32Tensor, &'a F32Tensor, &'a F32Tensor),
    store: [Store; 4],
    mask: Option<(&MaskExpr, &[ArrayData<'_>])>,
    score: Option<(&ScalarExpr, &[Option<ArrayData<'_>>])>,
    bindings: &Bindings,
) -> Result<Option<LaunchPlan<'a>>, MlirError> {
    let Ok((hq, hk, mheads)) = flat_heads(&q.shape, &kk.shape, &v.shape) else {
        return Ok(None);
    };
    let Ok(layout) = AttentionLayout::new(DType::F32, &q.shape, &kk.shape, &v.shape) else {
        return Ok(None);
    };
    let (t, s) = (layout.t, layout.s);
    let mask_ops: Vec<Option<ArrayData<'_>>> =
        mask.map(|(_, o)| o.iter().copied().map(Some).collect()).unwrap_or_default();
    let score_ops: Vec<Option<ArrayData<'_>>> = score.map(|(_, o)| o.to_vec()).unwrap_or_default();
    if let Some((m, ops)) = mask {
        if !crate::mask::check(m, ops, t, s) {
            return Ok(None);
        }
    }
    let types = |g: &[Option<ArrayData<'_>>]| g.iter().map(|o| o.map(|o| (o.dtype, o.shape.len()))).collect();
    let spec = fit(GpuAttentionSpec {
        d: layout.d,
        dv: layout.dv,
        tile_q: k.tile_q,
        tile_k: k.tile_k,
        scale: k.scale,
        mask: mask.map(|(m, _)| m.clone()),
        score: score.map(|(e, _)| e.clone()),
        operands: vec![types(&mask_ops), types(&score_ops)],
        store,
    });
    let Some((code, x)) = MlirError::declined(code(&spec).and_then(|c| Ok((c, extras(&spec)?))))? else {
        return Ok(None);
    };
    // The Kernel IR's block-sparse iteration space for these sizes, with
    // the kernel's (fitted) tiles; where it cannot be computed, the
    // interpreter runs the call (and reports why).
    let space = match mask {
        Some((m, ops)) => {
            let data = MaskData {
                operands: ops
                    .iter()
                    .map(|o| OperandData { dtype: o.dtype, shape: o.shape.to_vec(), data: o.data })
                    .collect(),
            };
            let (Ok(ti), Ok(si)) = (i64::try_from(t), i64::try_from(s)) else {
                return Ok(None);
            };
            let ctx = Ctx { t: ti, s: si, heads: mheads, bindings, data: &data };
            match tiles::iteration_space(m, &ctx, spec.tile_q, spec.tile_k) {
                Ok(sp) => Some(sp),
                Err(_) => return Ok(None),
            }
        }
        None => None,
    };
    if q.data.len() != hq * t * layout.d || kk.data.len() != hk * s * layout.d || v.data.len() != hk * s * layout.dv {
        return Err(MlirError::BadPlan("attention operands do not match their shapes".into()));
    }
    let mut out_shape = layout.lead.clone();
    out_shape.extend([t, layout.dv]);
    let mut buffers = vec![
        store[0].input(&q.data),
        store[1].input(&kk.data),
        store[2].input(&v.data),
        store[3].zeroed(hq * t * layout.dv),
    ];
    let Some((extra, error_flag)) = plan_extras(&x, &[mask_ops, score_ops], bindings, mheads, &mut buffers) else {
        return Ok(None);
    };
    let gx = t.div_ceil(spec.tile_q) as u64;
    let mut plan = LaunchPlan {
        code: Rc::new(code),
        buffers,
        steps: Vec::new(),
        output: 3,
        output_shape: out_shape,
        error_flag,
        stats: None,
    };
    if gx == 0 || hq == 0 {
        plan.stats =
            Some(KernelStats { space_counts: space.as_ref().map(IterSpace::counts), ..KernelStats::default() });
        return Ok(Some(plan));
    }
    // GQA packing: the query heads of one key head in one program, as its
    // rows, when all their rows fit one q-tile and they visit the same
    // kv-tiles (the mask and modifier do not read the head).
    let pk = pack_heads((hq, hk), t, spec.tile_q, if x.heads { None } else { Some(space.as_ref()) }, mheads);
    if gx > MAX_GRID_X || (hq / pk) as u64 > MAX_GRID_YZ {
        return Ok(None);
    }
    let Some(sched) =
        Schedule::new(space.as_ref(), (t, s, spec.tile_q, spec.tile_k), (hq, mheads, pk), k.kv_split, layout.dv)
    else {
        return Ok(None);
    };
    let dv = layout.dv;
    let bufs = &mut plan.buffers;
    let (runs_buf, offs_buf) = (bufs.len(), bufs.len() + 1);
    let n_runs = sched.runs.len() / 4;
    let slot_heads = sched.offs.len() / (3 * gx as usize);
    bufs.push(PlanBuf::I32(Cow::Owned(sched.runs)));
    bufs.push(PlanBuf::I32(Cow::Owned(sched.offs)));
    let splits = sched.stats.kv_splits;
    // The splits' raw states: m, l and O (the kernel's memref types have
    // offset 0, so each is a buffer of its own); without splits, empty
    // views (dim 0 of %Mp is 0) over one element.
    let (m_buf, l_buf, o_buf) = (bufs.len(), bufs.len() + 1, bufs.len() + 2);
    let n_split = if splits > 1 { splits } else { 0 };
    bufs.push(PlanBuf::Zeroed((n_split * hq * t).max(1)));
    bufs.push(PlanBuf::Zeroed((n_split * hq * t).max(1)));
    bufs.push(PlanBuf::Zeroed((n_split * hq * t * dv).max(1)));
    let (mp, lp) = (Param::contiguous(m_buf, &[n_split, hq, t]), Param::contiguous(l_buf, &[n_split, hq, t]));
    let op = Param::contiguous(o_buf, &[n_split, hq, t, dv]);
    // The kernel relies on this: a row's threads in the workgroup, their
    // states within the tiles.
    let kw = key_share(gx as usize, if pk > 1 { pk * t } else { t }, (spec.tile_q, spec.tile_k));
    debug_assert!(kw.is_power_of_two() && spec.tile_q.is_multiple_of(kw) && (kw == 1 || spec.tile_q <= spec.tile_k));
    let mut params = vec![
        Param::contiguous(0, &[hq, t, layout.d]),
        Param::contiguous(1, &[hk, s, layout.d]),
        Param::contiguous(2, &[hk, s, dv]),
        Param::contiguous(3, &[hq, t, dv]),
        Param::contiguous(runs_buf, &[n_runs, 4]),
        Param::contiguous(offs_buf, &[slot_heads, gx as usize, 3]),
        mp.clone(),
        lp.clone(),
        op.clone(),
        Param::I64(pk as i64),
        Param::I64(kw as i64),
    ];
    params.extend(extra);
    plan.steps.push(LaunchStep {
        func: "tdl_attn".into(),
        grid: [gx as u32, (hq / pk) as u32, splits as u32],
        block: [spec.tile_q as u32, 1, 1],
        shared_bytes: 0,
        params,
    });
    if splits > 1 {
        let rows = (hq * t).div_ceil(MERGE_THREADS) as u64;
        if rows > MAX_GRID_X {
            return Ok(None);
        }
        plan.steps.push(LaunchStep {
            func: "tdl_attn_merge".into(),
            grid: [rows as u32, 1, 1],
            block: [MERGE_THREADS as u32, 1, 1],
            shared_bytes: 0,
            params: vec![mp, lp, op, Param::contiguous(3, &[hq, t, dv])],
        });
    }
    plan.stats = Some(sched.stats);
    Ok(Some(plan))
}

/// How many query heads one program runs ([`GpuAttentionSpec`]'s GQA
/// packing; 1: none): the most heads `pk` dividing the group `hq / hk`
/// with `pk·t ≤ tile_q`, where the heads of each pack visit the same
/// kv-tiles of q-tile 0 (`space`: the iteration space, `None` inside
/// when unmasked; `None`: the kernel reads the head, never pack).
fn pack_heads(
    (hq, hk): (usize, usize),
    t: usize,
    tile_q: usize,
    space: Option<Option<&IterSpace>>,
    mheads: usize,
) -> usize {
    let Some(space) = space else { return 1 };
    if hk == 0 || t == 0 || hq % hk != 0 {
        return 1;
    }
    let grp = hq / hk;
    let same = |pk: usize| match space {
        None => true,
        Some(sp) => (0..hq).all(|h| {
            let first = h - h % pk;
            let (a, b) = (&sp.per_head[h % mheads.max(1)], &sp.per_head[first % mheads.max(1)]);
            a.first() == b.first()
        }),
    };
    (2..=grp).rev().find(|&pk| grp % pk == 0 && pk * t <= tile_q && same(pk)).unwrap_or(1)
}

/// Threads per row: where a program's rows (`rows`, in its only q-tile)
/// leave threads idle, the largest power of two `kw ≤ tile_q / rows`
/// dividing `tile_q` (at most `tile_k`) threads share each row, each
/// taking every `kw`-th key of every tile with its own online-softmax
/// state, merged at the end through the tiles' workgroup memory (which
/// needs `tile_q ≤ tile_k`); 1 otherwise.
fn key_share(q_tiles: usize, rows: usize, (tile_q, tile_k): (usize, usize)) -> usize {
    if q_tiles != 1 || rows == 0 || tile_q > tile_k {
        return 1;
    }
    let most = (tile_q / rows).min(tile_k).max(1);
    // A divisor of tile_q, so a row's threads are all in the workgroup.
    let mut kw = 1 << most.ilog2();
    while tile_q % kw != 0 {
        kw /= 2;
    }
    kw
}

/// The most `f32`s of split state (`m`, `l` and `O` per split and row) a
/// plan allocates; larger splits are reduced to fit (as the CPU runtime).
pub const MAX_SPLIT_STATE: usize = 64 << 20;

/// The flattened iteration space of one call, as the kernel reads it, and
/// what the launch will do.
struct Schedule {
    /// `[start, end, partial, visited before]` per run of visited
    /// kv-tiles (`i32`; one dummy run when there is none).
    runs: Vec<i32>,
    /// `[first run, end run, visited tiles]` per `(mask head, q-tile)`
    /// (`[1, q-tiles, 3]` without a mask: every head shares the runs).
    offs: Vec<i32>,
    stats: KernelStats,
}

impl Schedule {
    /// `None` when the space does not fit `i32` indices.
    /// `pk`: heads per program (GQA packing): the KV split is chosen for,
    /// and `programs` counts, the `hq / pk · q-tiles` programs launched.
    fn new(
        space: Option<&IterSpace>,
        (t, s, tq, tk): (usize, usize, usize, usize),
        (hq, mheads, pk): (usize, usize, usize),
        kv_split: KvSplit,
        dv: usize,
    ) -> Option<Schedule> {
        let (nq, nk) = (t.div_ceil(tq), s.div_ceil(tk));
        let all_full: Runs = if nk > 0 { vec![(0..nk, TileClass::Full)] } else { Vec::new() };
        let slot_heads = if space.is_some() { mheads.max(1) } else { 1 };
        let runs_of = |h: usize, qt: usize| -> &Runs {
            match space {
                Some(sp) => &sp.per_head[h][qt],
                None => &all_full,
            }
        };
        let (mut runs, mut offs) = (Vec::new(), Vec::new());
        // Per slot: (visited, full, partial, mask evaluations).
        let mut counts = Vec::with_capacity(slot_heads * nq);
        for h in 0..slot_heads {
            for qt in 0..nq {
                let first = i32::try_from(runs.len() / 4).ok()?;
                let bq = tq.min(t - qt * tq) as u64;
                let (mut cum, mut full, mut partial, mut evals) = (0usize, 0u64, 0u64, 0u64);
                for (r, class) in runs_of(h, qt) {
                    let is_partial = *class == TileClass::Partial;
                    runs.extend([
                        i32::try_from(r.start).ok()?,
                        i32::try_from(r.end).ok()?,
                        i32::from(is_partial),
                        i32::try_from(cum).ok()?,
                    ]);
                    cum += r.len();
                    if is_partial {
                        partial += r.len() as u64;
                        // Elements of the (cut) tiles: the interpreter's mask evaluations.
                        let keys = (r.end * tk).min(s) - r.start * tk;
                        evals += bq * keys as u64;
                    } else {
                        full += r.len() as u64;
                    }
                }
                offs.extend([first, i32::try_from(runs.len() / 4).ok()?, i32::try_from(cum).ok()?]);
                counts.push((cum as u64, full, partial, evals));
            }
        }
        if runs.is_empty() {
            runs.extend([0; 4]);
        }
        let busiest = counts.iter().map(|c| c.0).max().unwrap_or(0) as usize;
        let programs = hq / pk.max(1) * nq;
        let mut splits = resolve_kv_split(kv_split, programs, busiest).clamp(1, MAX_GRID_YZ as usize);
        while splits > 1 && splits.saturating_mul(hq * t).saturating_mul(dv + 2) > MAX_SPLIT_STATE {
            splits -= 1;
        }
        let mut stats = KernelStats {
            programs: programs as u64,
            space_counts: space.map(IterSpace::counts),
            kv_splits: splits,
            merged_rows: if splits > 1 { (hq * t) as u64 } else { 0 },
            ..KernelStats::default()
        };
        // Flattened head h reads the runs of mask head h mod the mask heads.
        for h in 0..hq {
            let slot = if space.is_some() { h % mheads.max(1) } else { 0 };
            for c in &counts[slot * nq..(slot + 1) * nq] {
                stats.tiles_visited += c.0;
                stats.full_tiles += c.1;
                stats.partial_tiles += c.2;
                stats.mask_evals += c.3;
            }
        }
        Some(Schedule { runs, offs, stats })
    }
}

pub use crate::launch::HOST_PIPELINE;

#[cfg(test)]
mod tests {
    use super::key_share;

    #[test]
    fn key_sharing_divides_the_workgroup() {
        assert_eq!(key_share(1, 1, (64, 64)), 64);
        assert_eq!(key_share(1, 4, (64, 64)), 16);
        assert_eq!(key_share(1, 5, (64, 64)), 8);
        assert_eq!(key_share(1, 1, (64, 16)), 1, "the merge needs tile_q ≤ tile_k");
        assert_eq!(key_share(1, 1, (48, 64)), 16, "32 does not divide 48");
        assert_eq!(key_share(1, 3, (48, 64)), 16);
        assert_eq!(key_share(1, 64, (64, 64)), 1);
        assert_eq!(key_share(2, 1, (64, 64)), 1, "several q-tiles: rows fill them");
        assert_eq!(key_share(1, 0, (64, 64)), 1);
    }
}
