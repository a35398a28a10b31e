#!/usr/bin/env bash
# The main job on the examples: compile each examples/*.tdl, run it on random
# inputs, and check the results. Run by scripts/setup.sh after the build.
#
# Today the only backend is the reference interpreter (the f64 oracle), so
# "check" means: the file type-checks, the graph runs end to end, and every
# output is finite. When the CPU backend lands, this script compares it
# against the reference on the same inputs.
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

fail=0
for f in examples/*.tdl; do
  name=$(basename "$f" .tdl)
  echo "== $f"
  "$TDLC" check "$f" | sed 's/^/   /'
  fused=$("$TDLC" compile "$f" --emit fused | grep -c '= attention' || true)
  echo "   passes: $fused fused attention node(s) after the pipeline (tdlc explain $f says how)"
  start=$(date +%s%N)
  # shellcheck disable=SC2046
  if out=$("$TDLC" run "$f" --random --seed 1 $(binds_for "$name") 2>&1); then
    end=$(date +%s%N)
    echo "$out" | sed 's/^/   /'
    if echo "$out" | grep -q "NOT all finite"; then
      echo "   FAIL: non-finite output"; fail=1
    else
      echo "   ok: ran on the reference backend in $(( (end - start) / 1000000 )) ms, outputs finite"
    fi
  else
    echo "$out" | sed 's/^/   /'; echo "   FAIL"; fail=1
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
