#!/usr/bin/env bash
# tdlc tests: the README's second command.
#
# Runs the whole test suite with `cargo test --workspace`, which includes the
# LLVM and MLIR backends (tdl-llvm, tdl-mlir) that are not default members.
# `--no-fail-fast` runs every test binary even after one fails, so one run
# shows every failure (the exit status is still non-zero).
# Extra arguments go to cargo, e.g.
#   bash scripts/test.sh -p tdl-llvm -p tdl-mlir   (only these packages)
#   bash scripts/test.sh -- --nocapture            (arguments for the test binaries)
# The script behaves the same whether or not CI is set.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || { echo "error: cargo not found; run scripts/setup.sh first" >&2; exit 1; }

# `--workspace` would override any `-p/--package` selection, so add it only
# when the caller did not choose packages themselves.
scope=(--workspace)
for arg in "$@"; do
  case "$arg" in
    --) break ;;
    -p | -p?* | --package | --package=* | --workspace | --all) scope=() ;;
  esac
done

echo "==> cargo test${scope[*]:+ ${scope[*]}} --no-fail-fast${*:+ $*}"
exec cargo test "${scope[@]}" --no-fail-fast "$@"
