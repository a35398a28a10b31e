#!/usr/bin/env bash
# The main job on the examples: compile each examples/*.tdl, run it on random
# inputs, and check the results. Run by scripts/setup.sh after the build.
#
# "Check" means: the file type-checks, the graph runs end to end on the CPU
# backend (tdlc run's default) and on the f64 reference interpreter, on the
# same random inputs, every output is finite, and the two agree to 1e-3 of
# the largest magnitude (compared by tdlc itself: `tdlc run --output`, read
# back with python3 when it is there).
set -euo pipefail
cd "$(dirname "$0")/.."
TDLC=${TDLC:-target/release/tdlc}
[ -x "$TDLC" ] || { echo "demo: $TDLC not found; build it with: cargo build --release -p tdl --bin tdlc" >&2; exit 1; }

# Symbol sizes per example: small, and not multiples of any tile size.
binds_for() {
  case "$1" in
    causal_attention) echo "--bind H=2 --bind T=37 --bind S=45" ;;
    gqa_window) echo "--bind T=50" ;;
    moa) echo "--bind T=70" ;;
    block) echo "--bind T=19" ;;
    *) echo "" ;;
  esac
}

# Largest |a - b| over the largest |b| of two f32 .npy files (python3's
# standard library only).
npy_diff() {
  python3 - "$1" "$2" <<'PY'
import ast, struct, sys
def load(p):
    b = open(p, "rb").read()
    n = struct.unpack("<H", b[8:10])[0]
    h = ast.literal_eval(b[10:10 + n].decode())
    assert h["descr"] == "<f4", h
    data = b[10 + n:]
    return struct.unpack("<%df" % (len(data) // 4), data)
a, b = load(sys.argv[1]), load(sys.argv[2])
scale = max(1.0, max(abs(x) for x in b))
print("%.2e" % (max(abs(x - y) for x, y in zip(a, b)) / scale))
PY
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail=0
for f in examples/*.tdl; do
  name=$(basename "$f" .tdl)
  echo "== $f"
  "$TDLC" check "$f" | sed 's/^/   /'
  fused=$("$TDLC" compile "$f" --emit fused | grep -c '= attention' || true)
  echo "   passes: $fused fused attention node(s) after the pipeline (tdlc explain $f says how)"
  for backend in cpu reference; do
    start=$(date +%s%N)
    # shellcheck disable=SC2046
    if out=$("$TDLC" run "$f" --backend "$backend" --random --seed 1 $(binds_for "$name") --output "$work/$name-$backend.npy" 2>&1); then
      end=$(date +%s%N)
      echo "$out" | grep -v "written to" | sed 's/^/   /'
      if echo "$out" | grep -q "NOT all finite"; then
        echo "   FAIL: non-finite output"; fail=1
      else
        echo "   ok: ran on the $backend backend in $(( (end - start) / 1000000 )) ms, outputs finite"
      fi
    else
      echo "$out" | sed 's/^/   /'; echo "   FAIL ($backend)"; fail=1
    fi
  done
  if command -v python3 >/dev/null 2>&1 && [ -f "$work/$name-cpu.npy" ] && [ -f "$work/$name-reference.npy" ]; then
    d=$(npy_diff "$work/$name-cpu.npy" "$work/$name-reference.npy")
    if python3 -c "import sys; sys.exit(0 if float('$d') <= 1e-3 else 1)"; then
      echo "   ok: cpu and reference agree (largest difference $d of the largest magnitude)"
    else
      echo "   FAIL: cpu and reference differ by $d of the largest magnitude"; fail=1
    fi
  fi
done

# Ahead of time: a shared library and its C header, called from C.
echo "== examples/c/run_attention.c (tdlc compile --emit so, then cc)"
if command -v cc >/dev/null 2>&1 && [ -f "$(dirname "$TDLC")/libtdl_runtime.a" ]; then
  build=$(mktemp -d)
  if "$TDLC" compile examples/causal_attention.tdl --emit so -o "$build/libcausal_attention.so" &&
    cc -O2 -I"$build" examples/c/run_attention.c -L"$build" -lcausal_attention -Wl,-rpath,"$build" -o "$build/run_attention"; then
    for args in "2 37" "8 1000"; do
      # shellcheck disable=SC2086
      "$build/run_attention" $args | sed 's/^/   /' || { echo "   FAIL"; fail=1; }
    done
  else
    echo "   FAIL: the shared library or the C example did not build"; fail=1
  fi
  rm -rf "$build"
else
  echo "   skipped: needs cc and $(dirname "$TDLC")/libtdl_runtime.a (cargo build --release -p tdl-rt-capi)"
fi
[ "$fail" = 0 ] && echo "demo: all examples compiled and ran" || { echo "demo: some examples failed" >&2; exit 1; }
