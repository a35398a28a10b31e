#!/bin/bash
# Reproduces every result in /tmp/notes/issue6-research.md (MLIR 22.1.8, mlir-22-tools). ~15 s on 2 cores.
set -u; cd "$(dirname "$0")"; export PATH=/usr/lib/llvm-22/bin:$PATH
LIBS=/usr/lib/llvm-22/lib/libmlir_c_runner_utils.so,/usr/lib/llvm-22/lib/libmlir_runner_utils.so
RUN="mlir-runner -e main -entry-point-result=void -shared-libs=$LIBS"
HOST="-scf-forall-to-parallel -convert-scf-to-cf -convert-to-llvm -reconcile-unrealized-casts"
NVVM="-gpu-lower-to-nvvm-pipeline=cubin-format=isa cubin-chip=sm_90 cubin-features=+ptx80 opt-level=3"
XFORM="builtin.module(transform-interpreter,gpu-launch-sink-index-computations,gpu-kernel-outlining,nvvm-attach-target{chip=sm_90 features=+ptx80 O=3},gpu.module(convert-scf-to-cf,convert-gpu-to-nvvm,canonicalize,cse,reconcile-unrealized-casts),gpu-module-to-binary{format=isa})"
ptxstat() { python3 extract_ptx.py $1 $2; echo "  $(wc -c <$2) B, $(wc -l <$2) lines; entry=$(grep -c '^.visible .entry' $2) shared-decl=$(grep -c '^\s*.shared .align' $2) bar.sync=$(grep -c bar.sync $2) local=$(grep -cE 'ld.local|st.local' $2) extern=$(grep -c '^.extern' $2) $(grep -o 'shared .align [0-9]*' $2 | sort -u | tr '\n' ' ')"; }
echo "## host, vector body, all masks/shapes"
for cfg in "0 2 37 37" "1 2 37 37" "20 2 37 37" "-1000000 2 37 37" "0 3 37 50" "0 3 50 37" "0 1 1 1" "2 2 16 16" "0 2 100 100"; do
  for g in gen_fa2.py gen_fa2v.py; do
    python3 $g host $cfg | mlir-opt $HOST | $RUN > o.txt; echo "$g off/H/T/S=$cfg: $(python3 ref_fa2.py $cfg < o.txt)"; done; done
echo "## host via OpenMP (outer scf.parallel -> omp, thread phases -> scf.for)"
python3 gen_fa2v.py host-par 0 | mlir-opt -scf-forall-to-for -convert-scf-to-openmp -convert-scf-to-cf -convert-to-llvm -reconcile-unrealized-casts \
  | OMP_NUM_THREADS=2 $RUN -shared-libs=/usr/lib/llvm-22/lib/libomp.so > o.txt; echo "omp: $(python3 ref_fa2.py 0 < o.txt)"
echo "## GPU, recommended: generator-emitted gpu.func"
python3 gen_fa2v.py gpufunc 0 > fa2v_func.mlir; mlir-opt fa2v_func.mlir "$NVVM" -o fa2v_func.out.mlir && ptxstat fa2v_func.out.mlir fa2v_func.ptx
echo "## GPU, gpu.launch + scf.forall mapped by transform dialect (vector / scalar body)"
python3 gen_fa2v.py gpu 0 | mlir-opt -pass-pipeline="$XFORM" -o t.mlir && ptxstat t.mlir fa2v_xform.ptx
python3 gen_fa2.py gpu 0 | mlir-opt -pass-pipeline="$XFORM" -o t.mlir && ptxstat t.mlir fa2_xform.ptx
echo "## negative: workgroup memref.alloca / memref.alloc inside a kernel"
for A in memref.alloca memref.alloc; do sed "s/ALLOC/$A/" e8_alloc_wg.mlir | mlir-opt "$NVVM" -o t.mlir && echo "$A:" && ptxstat t.mlir t.ptx; grep -cE "cvta.shared|malloc" t.ptx; done
echo "## negative: convert-parallel-loops-to-gpu on two sibling thread loops (no gpu.launch expected)"
mlir-opt e1b.mlir -gpu-map-parallel-loops -convert-parallel-loops-to-gpu | grep -c gpu.launch
