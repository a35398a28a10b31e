#!/usr/bin/env bash
# The GPU check (issue 6), for a machine with an NVIDIA GPU and its driver
# that may have neither LLVM 22 nor a network. FOLDER holds the release
# tdlc and the shared libraries it needs (scripts/gpu-bundle.sh makes it);
# this script sets the library path itself, then
#   0. runs tdl-cuda's driver test (hand-written PTX kernels through the
#      driver API, the plumbing under every tdlc kernel) when bundled,
#   1. prints the device (`tdlc selftest` names it),
#   2. runs `tdlc selftest --backend gpu`: the conformance corpus embedded in
#      the binary on the GPU against the reference interpreter,
#   3. benchmarks dense causal attention (H=16, D=64, T=4096; f32 and f16
#      graphs) and a sliding window (256) with `tdlc bench --backend gpu`
#      and, when PyTorch with CUDA is installed, torch's
#      scaled_dot_product_attention on the same shapes, and prints a table.
# Every step has a time limit (20 [+ 20] + 30 + 170 + 3·50 + 60 s): the whole script
# stays under 8 minutes. The bundled libraries are on the library path of
# tdlc only (not of python3/torch, which have their own).
#
# Usage: bash gpu-check.sh FOLDER [--quick]   (--quick: smaller sizes, fewer reps)
set -uo pipefail
dir=$(cd "${1:?usage: gpu-check.sh FOLDER [--quick]}" && pwd)
quick=${2:-}
libpath="$dir/lib:$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
work=$(mktemp -d)
unpacked=
trap 'rm -rf "$work"; if [ -n "$unpacked" ]; then rm -f "$unpacked"; fi' EXIT
tdlc="$dir/tdlc"
if [ ! -x "$tdlc" ] && [ -f "$dir/tdlc.gz" ]; then
  # Unpacked next to the bundle where it is writable (/tmp may be noexec),
  # and removed at the end.
  bin="$work"
  if [ -w "$dir" ]; then bin="$dir"; fi
  unpacked="$bin/tdlc.unpacked"
  gzip -dc "$dir/tdlc.gz" > "$unpacked" && chmod +x "$unpacked" && tdlc="$unpacked"
fi
[ -x "$tdlc" ] || { echo "error: no tdlc (or tdlc.gz) in $dir" >&2; exit 1; }
# How tdlc runs: with the machine's C library, or, where that is older than
# the one tdlc was built against, with the bundle's (glibc/, its loader).
launch=(env LD_LIBRARY_PATH="$libpath")
if ! timeout 20 "${launch[@]}" "$tdlc" --version > /dev/null 2> "$work/start.err"; then
  loader="$dir/glibc/ld-linux-x86-64.so.2"
  launch=("$loader" --library-path "$dir/glibc:$libpath")
  if [ -x "$loader" ] && timeout 20 "${launch[@]}" "$tdlc" --version > /dev/null 2>> "$work/start.err"; then
    echo "note: tdlc runs with the bundle's C library (this machine's: $(ldd --version 2>&1 | head -n 1))"
  else
    echo "error: tdlc does not start here: $(head -n 3 "$work/start.err" | tr '\n' ' ')" >&2
    echo "(it was built against glibc 2.36; here: $(ldd --version 2>&1 | head -n 1))" >&2
    exit 1
  fi
fi
run=("${launch[@]}" "$tdlc")
status=0

if [ -x "$dir/tdl-cuda-driver-test" ]; then
  echo "== tdl-cuda driver test"
  timeout 30 "${launch[@]}" "$dir/tdl-cuda-driver-test" --nocapture || status=1
  echo
fi

echo "== tdlc selftest --backend gpu"
size=33
[ "$quick" = "--quick" ] && size=17
timeout 170 "${run[@]}" selftest --backend gpu --size "$size" || status=1

echo
echo "== benchmarks"
cat > "$work/attn.tdl" <<'TDL'
graph causal32(q: f32[16, T, 64], k: f32[16, T, 64], v: f32[16, T, 64]) -> f32[16, T, 64] {
    return attention(q, k, v, mask = causal)
}
graph causal16(q: f16[16, T, 64], k: f16[16, T, 64], v: f16[16, T, 64]) -> f16[16, T, 64] {
    return attention(q, k, v, mask = causal)
}
graph window32(q: f32[16, T, 64], k: f32[16, T, 64], v: f32[16, T, 64]) -> f32[16, T, 64] {
    return attention(q, k, v, mask = window(256))
}
TDL
reps=10
[ "$quick" = "--quick" ] && reps=3
: > "$work/tdlc.tsv"
for g in causal32 causal16 window32; do
  if timeout 50 "${run[@]}" bench "$work/attn.tdl" --graph "$g" --backend gpu --bind T=4096 \
      --warmup 2 --reps "$reps" --json > "$work/$g.json" 2> "$work/$g.err"; then
    printf '%s\t%s\n' "$g" "$(tr -d '\n' < "$work/$g.json")" >> "$work/tdlc.tsv"
  else
    printf '%s\tFAILED: %s\n' "$g" "$(tail -n 3 "$work/$g.err" | tr '\n' ' ')" >> "$work/tdlc.tsv"
    status=1
  fi
done

# torch's SDPA on the same shapes (skipped without torch or without CUDA).
cat > "$work/sdpa.py" <<'PY'
import sys
try:
    import torch
    import torch.nn.functional as F
except Exception as e:  # no torch: the table says so
    print("torch\tunavailable: %s" % e); sys.exit(0)
if not torch.cuda.is_available():
    print("torch\tunavailable: no CUDA device"); sys.exit(0)
reps = int(sys.argv[1])
H, T, D = 16, 4096, 64
def bench(dtype, mask):
    q, k, v = (torch.randn(1, H, T, D, device="cuda", dtype=dtype) for _ in range(3))
    kw = {"is_causal": True} if mask is None else {"attn_mask": mask}
    for _ in range(2):
        F.scaled_dot_product_attention(q, k, v, **kw)
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); F.scaled_dot_product_attention(q, k, v, **kw); b.record()
        torch.cuda.synchronize(); times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]
i = torch.arange(T, device="cuda")
window = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < 256)
print("causal32\t%.4f" % bench(torch.float32, None))
print("causal16\t%.4f" % bench(torch.float16, None))
print("window32\t%.4f" % bench(torch.float32, window))
PY
if command -v python3 >/dev/null 2>&1; then
  timeout 60 python3 "$work/sdpa.py" "$reps" > "$work/sdpa.tsv" 2> "$work/sdpa.err" \
    || printf 'torch\tfailed: %s\n' "$(tail -n 2 "$work/sdpa.err" | tr '\n' ' ')" > "$work/sdpa.tsv"
else
  echo "torch	unavailable: no python3" > "$work/sdpa.tsv"
fi

# The table (python3 reads the JSON; without it the raw lines are printed).
if command -v python3 >/dev/null 2>&1; then
  python3 - "$work/tdlc.tsv" "$work/sdpa.tsv" <<'PY'
import json, sys
what = {"causal32": "dense causal H=16 D=64 T=4096, f32",
        "causal16": "dense causal H=16 D=64 T=4096, f16 graph",
        "window32": "window 256 H=16 D=64 T=4096, f32"}
torch = {}
for line in open(sys.argv[2]):
    k, _, v = line.rstrip("\n").partition("\t")
    torch[k] = v
print("| configuration | tdlc median ms | tdlc useful TFLOP/s | torch SDPA median ms | tdlc / SDPA time |")
print("|---|---|---|---|---|")
for line in open(sys.argv[1]):
    g, _, rest = line.rstrip("\n").partition("\t")
    t = torch.get(g, torch.get("torch", "n/a"))
    try:
        j = json.loads(rest)
        ms, tf = j["median_ms"], (j.get("gflops") or 0) / 1000
        ratio = "%.2f" % (ms / float(t)) if t.replace(".", "", 1).isdigit() else "n/a"
        print("| %s | %.3f | %.2f | %s | %s |" % (what[g], ms, tf, t, ratio))
    except (ValueError, KeyError):
        print("| %s | %s | | %s | |" % (what[g], rest, t))
PY
else
  cat "$work/tdlc.tsv" "$work/sdpa.tsv"
fi
exit $status
