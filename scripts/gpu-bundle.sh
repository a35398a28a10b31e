#!/usr/bin/env bash
# Packs what scripts/gpu-check.sh needs into one folder, on the machine that
# builds tdlc (with LLVM/MLIR 22): the release binary, the shared libraries
# `ldd` says it needs in lib/ (less the C library's own) and, in glibc/, the
# C library and its loader, for machines whose C library is older than the
# one tdlc was built against (gpu-check.sh uses them only where tdlc does
# not start with the machine's own), and the check script itself. Copy the folder to a machine with an NVIDIA GPU
# (it needs neither LLVM nor a network there) and run
#   bash FOLDER/gpu-check.sh FOLDER
#
# The binary is stripped (about 190 MB: LLVM and MLIR are linked in);
# with --gzip it is stored as tdlc.gz (about 55 MB), which gpu-check.sh
# unpacks into a temporary folder.
#
# Usage: scripts/gpu-bundle.sh OUT_DIR [--gzip]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${1:?usage: scripts/gpu-bundle.sh OUT_DIR [--gzip]}
cargo build --release --quiet --bin tdlc
mkdir -p "$out/lib"
rm -f "$out/tdlc" "$out/tdlc.gz"
rm -rf "$out/glibc"
mkdir -p "$out/glibc"
if [ "${2:-}" = "--gzip" ]; then
  strip -o "$out/tdlc.tmp" target/release/tdlc
  gzip -c "$out/tdlc.tmp" > "$out/tdlc.gz"
  rm "$out/tdlc.tmp"
else
  strip -o "$out/tdlc" target/release/tdlc
fi
cp scripts/gpu-check.sh "$out/"
# tdl-cuda's driver test (hand-written PTX kernels through the driver API:
# the plumbing under every tdlc kernel), which gpu-check.sh runs first.
driver_test=$(cargo test -p tdl-cuda --release --no-run --message-format=json 2>/dev/null \
  | grep '"name":"driver"' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
if [ -n "$driver_test" ] && [ -x "$driver_test" ]; then
  strip -o "$out/tdl-cuda-driver-test" "$driver_test"
else
  echo "warning: tdl-cuda's driver test was not built; gpu-check.sh will skip it" >&2
fi
# Every library ldd resolves in lib/, but the C library's (libc, libm,
# libdl, libpthread, librt, the loader), which go to glibc/ with the
# loader and the compatibility stubs the CUDA driver may link against.
ldd target/release/tdlc | awk '/=> \// {print $3} /^\t\/.*ld-linux/ {print $1}' | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|ld-linux*) cp -L "$lib" "$out/glibc/" ;;
    *) cp -L "$lib" "$out/lib/" ;;
  esac
done
libc_dir=$(dirname "$(ldd target/release/tdlc | awk '/libc.so.6 =>/ {print $3}')")
for stub in libdl.so.2 libpthread.so.0 librt.so.1 libm.so.6; do
  [ -e "$libc_dir/$stub" ] && cp -L "$libc_dir/$stub" "$out/glibc/"
done
[ -e "$out/glibc/ld-linux-x86-64.so.2" ] || echo "warning: no loader bundled (ldd named none)" >&2
echo "bundle in $out: $(ls "$out/lib" | wc -l) libraries beside tdlc; run: bash $out/gpu-check.sh $out"
