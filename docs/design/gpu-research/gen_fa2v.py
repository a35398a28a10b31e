#!/usr/bin/env python3
"""Emit an FA2-forward kernel (tile_q = threads = 16, tile_k = 16, D = 16) as MLIR; vector form.

One BODY text is shared by all targets.  It runs per workgroup (%qt, %h bound by the
wrapper); per-thread phases are `scf.forall (%t) in (16) {...} {mapping=[#gpu.thread<x>]}`
and the end of each phase is a barrier.  Thread-private state (%m %l %acc) is a view with
a thread dimension, bound by the wrapper (host: real [16,...] alloca; GPU: stride-0 view).
modes:
  gpufunc  : gpu.module/gpu.func kernel; phase -> scf.execute_region + gpu.barrier (recommended)
  gpu      : func + gpu.launch(workgroup attributions) + transform map_nested_forall_to_threads
  host     : scf.forall over (h, qt) calling a per-block func with plain allocas, + @main driver
  host-par : same, outer loop as scf.parallel (for -scf-forall-to-for -convert-scf-to-openmp)
usage: gen_fa2v.py MODE OFF [H T S]   (key k visible to row r iff k + OFF <= r;
                                        OFF=-1000000: no causal mask)
"""
import sys

mode, off = sys.argv[1], int(sys.argv[2])
HH, TT, SS = (int(x) for x in sys.argv[3:6]) if len(sys.argv) > 5 else (2, 37, 37)
TQ, TK, D = 16, 16, 16
SMEM = "memref<16x16xf32, #gpu.address_space<workgroup>>" if mode in ("gpu", "gpufunc") else "memref<16x16xf32>"

BODY = r"""
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c15 = arith.constant 15 : index
    %c16 = arith.constant 16 : index
    %coff = arith.constant OFF : index
    %zero = arith.constant 0.0 : f32
    %false = arith.constant false
    %one = arith.constant 1.0 : f32
    %ninf = arith.constant 0xFF800000 : f32
    %scale = arith.constant 0.360673755 : f32  // 0.25 * log2(e): softmax in base 2
    %T = memref.dim %Q, %c1 : memref<?x?x16xf32>
    %S = memref.dim %K, %c1 : memref<?x?x16xf32>
    %q0 = arith.muli %qt, %c16 : index
    // number of key tiles this q-tile needs (uniform per block => barriers uniform)
    %qe = arith.addi %q0, %c15 : index
    %Tm1 = arith.subi %T, %c1 : index
    %rmax = arith.minsi %qe, %Tm1 : index
    %lim0 = arith.subi %rmax, %coff : index
    %lim1 = arith.addi %lim0, %c1 : index
    %lim = arith.maxsi %lim1, %c0 : index
    %ntc = arith.ceildivsi %lim, %c16 : index
    %nts = arith.ceildivui %S, %c16 : index
    %nkt = arith.minsi %ntc, %nts : index
    // thread-private state %m %l %acc: !pv1/!pv2 views indexed [%t, ...], bound by the wrapper
    // phase 0: load the Q tile, init state
    scf.forall (%t) in (16) {
      %r = arith.addi %q0, %t : index
      %rv = arith.cmpi ult, %r, %T : index
      scf.for %d = %c0 to %c16 step %c1 {
        %x = scf.if %rv -> f32 {
          %v = memref.load %Q[%h, %r, %d] : memref<?x?x16xf32>
          scf.yield %v : f32
        } else { scf.yield %zero : f32 }
        memref.store %x, %Qs[%t, %d] : !smem
        memref.store %zero, %acc[%t, %d] : !pv2
      }
      memref.store %ninf, %m[%t] : !pv1
      memref.store %zero, %l[%t] : !pv1
    } {mapping = [#gpu.thread<x>]}
    scf.for %kt = %c0 to %nkt step %c1 {
      %k0 = arith.muli %kt, %c16 : index
      // phase 1: cooperative K/V tile load (row t), zero-fill past S
      scf.forall (%t) in (16) {
        %k = arith.addi %k0, %t : index
        %kv = arith.cmpi ult, %k, %S : index
        scf.for %d = %c0 to %c16 step %c1 {
          %kx, %vx = scf.if %kv -> (f32, f32) {
            %a = memref.load %K[%h, %k, %d] : memref<?x?x16xf32>
            %b = memref.load %V[%h, %k, %d] : memref<?x?x16xf32>
            scf.yield %a, %b : f32, f32
          } else { scf.yield %zero, %zero : f32, f32 }
          memref.store %kx, %Ks[%t, %d] : !smem
          memref.store %vx, %Vs[%t, %d] : !smem
        }
      } {mapping = [#gpu.thread<x>]}
      // phase 2 (vector form): pass 1 = tile max, pass 2 = p, l, acc; no score buffer
      scf.forall (%t) in (16) {
        %r = arith.addi %q0, %t : index
        %q = vector.load %Qs[%t, %c0] : !smem, vector<16xf32>
        %mx = scf.for %j = %c0 to %c16 step %c1 iter_args(%mx0 = %ninf) -> (f32) {
          %kv = vector.load %Ks[%j, %c0] : !smem, vector<16xf32>
          %qk = arith.mulf %q, %kv : vector<16xf32>
          %dot = vector.reduction <add>, %qk : vector<16xf32> into f32
          %sc = arith.mulf %dot, %scale : f32
          %k = arith.addi %k0, %j : index
          %inS = arith.cmpi ult, %k, %S : index
          %ko = arith.addi %k, %coff : index
          %cz = arith.cmpi sle, %ko, %r : index
          %ok = arith.andi %inS, %cz : i1
          %s = arith.select %ok, %sc, %ninf : f32
          %mx1 = arith.maximumf %mx0, %s : f32
          scf.yield %mx1 : f32
        }
        %mold = memref.load %m[%t] : !pv1
        %mnew = arith.maximumf %mold, %mx : f32
        %dead = arith.cmpf oeq, %mnew, %ninf : f32
        %dm = arith.subf %mold, %mnew : f32
        %ea = llvm.call_intrinsic "llvm.exp2.f32"(%dm) : (f32) -> f32
        %alpha = arith.select %dead, %one, %ea : f32
        %a0 = vector.load %acc[%t, %c0] : !pv2, vector<16xf32>
        %alv = vector.broadcast %alpha : f32 to vector<16xf32>
        %a1 = arith.mulf %a0, %alv : vector<16xf32>
        %psum, %a2 = scf.for %j = %c0 to %c16 step %c1 iter_args(%ps0 = %zero, %ax = %a1) -> (f32, vector<16xf32>) {
          %kv = vector.load %Ks[%j, %c0] : !smem, vector<16xf32>
          %qk = arith.mulf %q, %kv : vector<16xf32>
          %dot = vector.reduction <add>, %qk : vector<16xf32> into f32
          %sc = arith.mulf %dot, %scale : f32
          %k = arith.addi %k0, %j : index
          %inS = arith.cmpi ult, %k, %S : index
          %ko = arith.addi %k, %coff : index
          %cz = arith.cmpi sle, %ko, %r : index
          %ok0 = arith.andi %inS, %cz : i1
          %live = arith.cmpi eq, %dead, %false : i1
          %ok = arith.andi %ok0, %live : i1
          %ds = arith.subf %sc, %mnew : f32
          %e = llvm.call_intrinsic "llvm.exp2.f32"(%ds) : (f32) -> f32
          %pj = arith.select %ok, %e, %zero : f32
          %ps1 = arith.addf %ps0, %pj : f32
          %vv = vector.load %Vs[%j, %c0] : !smem, vector<16xf32>
          %pb = vector.broadcast %pj : f32 to vector<16xf32>
          %ay = vector.fma %pb, %vv, %ax : vector<16xf32>
          scf.yield %ps1, %ay : f32, vector<16xf32>
        }
        vector.store %a2, %acc[%t, %c0] : !pv2, vector<16xf32>
        %lold = memref.load %l[%t] : !pv1
        %lnew = llvm.intr.fma(%lold, %alpha, %psum) : (f32, f32, f32) -> f32
        memref.store %lnew, %l[%t] : !pv1
        memref.store %mnew, %m[%t] : !pv1
      } {mapping = [#gpu.thread<x>]}
    }
    // phase 3: one division per row, fully masked row (l == 0) -> zeros
    scf.forall (%t) in (16) {
      %r = arith.addi %q0, %t : index
      %rv = arith.cmpi ult, %r, %T : index
      scf.if %rv {
        %lf = memref.load %l[%t] : !pv1
        %pos = arith.cmpf ogt, %lf, %zero : f32
        %rcp = arith.divf %one, %lf : f32
        %inv = arith.select %pos, %rcp, %zero : f32
        scf.for %d = %c0 to %c16 step %c1 {
          %a = memref.load %acc[%t, %d] : !pv2
          %o = arith.mulf %a, %inv : f32
          memref.store %o, %O[%h, %r, %d] : memref<?x?x16xf32>
        }
      }
    } {mapping = [#gpu.thread<x>]}
""".replace("OFF", str(off))

PRIV_HOST = """
    %m0 = memref.alloca() : memref<16xf32>
    %l0 = memref.alloca() : memref<16xf32>
    %acc0 = memref.alloca() : memref<16x16xf32>
    %m = memref.cast %m0 : memref<16xf32> to !pv1
    %l = memref.cast %l0 : memref<16xf32> to !pv1
    %acc = memref.cast %acc0 : memref<16x16xf32> to !pv2
"""
# GPU: each thread owns a private row; a stride-0 thread dimension makes [%t, d]
# address the same registers for every %t, so LLVM can promote them (SROA).
PRIV_GPU = """
    %m0 = memref.alloca() : memref<1xf32>
    %l0 = memref.alloca() : memref<1xf32>
    %acc0 = memref.alloca() : memref<16xf32>
    %m = memref.reinterpret_cast %m0 to offset: [0], sizes: [16], strides: [0] : memref<1xf32> to !pv1
    %l = memref.reinterpret_cast %l0 to offset: [0], sizes: [16], strides: [0] : memref<1xf32> to !pv1
    %acc = memref.reinterpret_cast %acc0 to offset: [0], sizes: [16, 16], strides: [0, 1] : memref<16xf32> to !pv2
"""
SIG = "%Q: memref<?x?x16xf32>, %K: memref<?x?x16xf32>, %V: memref<?x?x16xf32>, %O: memref<?x?x16xf32>"
PRE = """  %pc0 = arith.constant 0 : index
  %pc1 = arith.constant 1 : index
  %pc16 = arith.constant 16 : index
  %H = memref.dim %Q, %pc0 : memref<?x?x16xf32>
  %TT = memref.dim %Q, %pc1 : memref<?x?x16xf32>
  %nqt = arith.ceildivui %TT, %pc16 : index
"""
out = [f"!smem = {SMEM}", "!pv1 = memref<16xf32, strided<[?], offset: ?>>", "!pv2 = memref<16x16xf32, strided<[?, 1], offset: ?>>"]
if mode == "gpu":
    out.append(f"""func.func @fa2({SIG}) {{
{PRE}  gpu.launch blocks(%qt, %h, %bz) in (%gx = %nqt, %gy = %H, %gz = %pc1)
             threads(%tx, %ty, %tz) in (%sx = %pc16, %sy = %pc1, %sz = %pc1)
             workgroup(%Qs : !smem, %Ks : !smem, %Vs : !smem) {{
{PRIV_GPU}{BODY}
    gpu.terminator
  }}
  return
}}
module attributes {{transform.with_named_sequence}} {{
  transform.named_sequence @__transform_main(%root: !transform.any_op {{transform.readonly}}) {{
    %l = transform.structured.match ops{{["gpu.launch"]}} in %root : (!transform.any_op) -> !transform.any_op
    transform.gpu.map_nested_forall_to_threads %l block_dims = [16, 1, 1] : (!transform.any_op) -> !transform.any_op
    transform.yield
  }}
}}""")
elif mode == "gpufunc":
    # What a generator would emit directly: a gpu.func kernel; each thread-phase
    # forall becomes an scf.execute_region on %t = gpu.thread_id x, then gpu.barrier.
    import re
    body = re.sub(r"scf\.forall \(%t\) in \(16\) \{", "scf.execute_region {", BODY)
    body = re.sub(r"\n( *)\} \{mapping = \[#gpu\.thread<x>\]\}", r"\n\1  scf.yield\n\1}\n\1gpu.barrier", body)
    A = "{llvm.align = 16 : i64}"
    out.append(f"""module attributes {{gpu.container_module}} {{
gpu.module @tdl_fa2 {{
  gpu.func @fa2({SIG}) workgroup(%Qs : !smem {A}, %Ks : !smem {A}, %Vs : !smem {A})
      kernel attributes {{known_block_size = array<i32: 16, 1, 1>}} {{
    %qt = gpu.block_id x
    %h = gpu.block_id y
    %t = gpu.thread_id x
{PRIV_GPU}{body}
    gpu.return
  }}
}}
}}""")
else:
    # host: block loop as scf.forall (default) or scf.parallel (mode host-par, for scf->openmp)
    BLOCKLOOP = ("scf.parallel (%h, %qt) = (%pc0, %pc0) to (%H, %nqt) step (%pc1, %pc1) {" if mode == "host-par"
                 else "scf.forall (%h, %qt) in (%H, %nqt) {")
    BLOCKEND = "  scf.reduce\n  }" if mode == "host-par" else "}"
    # per-block function: its allocas live in its own frame (freed on return);
    # memref.alloca_scope cannot be used: scf-to-cf makes its region multi-block.
    out.append(f"""func.func private @fa2_block({SIG}, %h: index, %qt: index) {{
    %Qs = memref.alloca() : !smem
    %Ks = memref.alloca() : !smem
    %Vs = memref.alloca() : !smem
{PRIV_HOST}{BODY}
  return
}}
func.func @fa2({SIG}) attributes {{llvm.emit_c_interface}} {{
{PRE}  {BLOCKLOOP}
    func.call @fa2_block(%Q, %K, %V, %O, %h, %qt) : (memref<?x?x16xf32>, memref<?x?x16xf32>, memref<?x?x16xf32>, memref<?x?x16xf32>, index, index) -> ()
  {BLOCKEND}
  return
}}""")
    # driver: deterministic exactly-representable inputs, H=2, T=S=37
    out.append(r"""func.func private @printMemrefF32(memref<*xf32>)
func.func @fill(%A: memref<?x?x16xf32>, %a: index, %b: index, %c: index) {
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %c2 = arith.constant 2 : index
  %c16 = arith.constant 16 : index
  %c23 = arith.constant 23 : index
  %c11 = arith.constant 11 : i64
  %eighth = arith.constant 0.125 : f32
  %H = memref.dim %A, %c0 : memref<?x?x16xf32>
  %N = memref.dim %A, %c1 : memref<?x?x16xf32>
  scf.for %h = %c0 to %H step %c1 {
   scf.for %i = %c0 to %N step %c1 {
    scf.for %d = %c0 to %c16 step %c1 {
      // ((h*a + i*b + d*c + 5) mod 23 - 11) / 8
      %x0 = arith.muli %h, %a : index
      %x1 = arith.muli %i, %b : index
      %x2 = arith.muli %d, %c : index
      %x3 = arith.addi %x0, %x1 : index
      %x4 = arith.addi %x3, %x2 : index
      %x5 = arith.remui %x4, %c23 : index
      %x6 = arith.index_cast %x5 : index to i64
      %x7 = arith.subi %x6, %c11 : i64
      %x8 = arith.sitofp %x7 : i64 to f32
      %x9 = arith.mulf %x8, %eighth : f32
      memref.store %x9, %A[%h, %i, %d] : memref<?x?x16xf32>
    }
   }
  }
  return
}
func.func @main() {
  %c2 = arith.constant HH : index
  %c37 = arith.constant TT : index
  %cS = arith.constant SS : index
  %ca1 = arith.constant 131 : index
  %cb1 = arith.constant 17 : index
  %cc1 = arith.constant 7 : index
  %ca2 = arith.constant 71 : index
  %cb2 = arith.constant 5 : index
  %cc2 = arith.constant 3 : index
  %ca3 = arith.constant 43 : index
  %cb3 = arith.constant 13 : index
  %cc3 = arith.constant 19 : index
  %Q = memref.alloc(%c2, %c37) : memref<?x?x16xf32>
  %K = memref.alloc(%c2, %cS) : memref<?x?x16xf32>
  %V = memref.alloc(%c2, %cS) : memref<?x?x16xf32>
  %O = memref.alloc(%c2, %c37) : memref<?x?x16xf32>
  func.call @fill(%Q, %ca1, %cb1, %cc1) : (memref<?x?x16xf32>, index, index, index) -> ()
  func.call @fill(%K, %ca2, %cb2, %cc2) : (memref<?x?x16xf32>, index, index, index) -> ()
  func.call @fill(%V, %ca3, %cb3, %cc3) : (memref<?x?x16xf32>, index, index, index) -> ()
  func.call @fa2(%Q, %K, %V, %O) : (memref<?x?x16xf32>, memref<?x?x16xf32>, memref<?x?x16xf32>, memref<?x?x16xf32>) -> ()
  %u = memref.cast %O : memref<?x?x16xf32> to memref<*xf32>
  func.call @printMemrefF32(%u) : (memref<*xf32>) -> ()
  memref.dealloc %Q : memref<?x?x16xf32>
  memref.dealloc %K : memref<?x?x16xf32>
  memref.dealloc %V : memref<?x?x16xf32>
  memref.dealloc %O : memref<?x?x16xf32>
  return
}""".replace("HH", str(HH)).replace("TT", str(TT)).replace("SS", str(SS)))
print("\n".join(out))
