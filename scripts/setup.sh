#!/usr/bin/env bash
# tdlc setup: the README's first command.
#
# On a fresh Debian 12 (bookworm) machine, as root or as a user with sudo:
#   1. installs the apt packages LLVM/MLIR 22 development needs (only the
#      missing ones; `apt-get update` only if something is missing),
#   2. checks for Rust (cargo/rustc >= 1.85), installing it with rustup if
#      it is absent and curl is available,
#   3. builds the release `tdlc` binary,
#   4. runs scripts/demo.sh if it exists.
# Safe to run again: a second run installs nothing and says so.
# The -sys crates find LLVM/MLIR through .cargo/config.toml (/usr/lib/llvm-22).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

MIN_RUST="1.85"
LLVM_PREFIX="/usr/lib/llvm-22"
# Each of these was shown to be needed (see the toolchain notes): e.g. without
# libpolly-22-dev the link fails, without libclang-common-22-dev bindgen fails.
APT_PACKAGES=(
  build-essential
  llvm-22-dev libmlir-22-dev libpolly-22-dev
  libclang1-22 libclang-common-22-dev
  libzstd-dev zlib1g-dev libxml2-dev libz3-dev
)

step() { printf '\n==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() { printf '\nerror: %s\n' "$*" >&2; exit 1; }

# Run a command as root (directly, or through sudo).
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root to run: $* (run this script as root, or install sudo)"
  fi
}

# Make a rustup-installed toolchain visible even if the shell profile was not
# re-read since installation.
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi

# Is "$1" (x.y[.z]) >= "$2" (x.y)?
version_ge() {
  local a_major a_minor b_major b_minor
  IFS=. read -r a_major a_minor _ <<<"$1"
  IFS=. read -r b_major b_minor _ <<<"$2"
  [ "$a_major" -gt "$b_major" ] || { [ "$a_major" -eq "$b_major" ] && [ "$a_minor" -ge "$b_minor" ]; }
}

rust_ok() {
  command -v cargo >/dev/null 2>&1 && command -v rustc >/dev/null 2>&1 || return 1
  local v
  v="$(rustc --version | awk '{print $2}')"
  version_ge "${v%%-*}" "$MIN_RUST"
}

# ---------------------------------------------------------------------------
step "1/4 System packages (LLVM/MLIR 22 and build tools)"
need_rustup=0
if ! command -v cargo >/dev/null 2>&1; then
  need_rustup=1
fi

if command -v dpkg-query >/dev/null 2>&1; then
  wanted=("${APT_PACKAGES[@]}")
  if [ "$need_rustup" -eq 1 ]; then
    # rustup is fetched with curl over HTTPS.
    wanted+=(curl ca-certificates)
  fi
  missing=()
  for pkg in "${wanted[@]}"; do
    status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
    if [ "$status" != "installed" ]; then
      missing+=("$pkg")
    fi
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    info "all ${#wanted[@]} packages already installed; nothing to install"
  else
    info "missing: ${missing[*]}"
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install these packages by hand: ${missing[*]}"
    info "running apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update
    info "installing ${#missing[@]} package(s)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
  fi
else
  info "dpkg-query not found (not Debian?): skipping the package check;"
  info "needed: the equivalents of ${APT_PACKAGES[*]}"
fi

if [ -x "$LLVM_PREFIX/bin/llvm-config" ]; then
  info "LLVM $("$LLVM_PREFIX/bin/llvm-config" --version) at $LLVM_PREFIX"
else
  die "$LLVM_PREFIX/bin/llvm-config not found. LLVM/MLIR 22 must be installed there (Debian 12: llvm-22-dev libmlir-22-dev from bookworm-security); .cargo/config.toml points the -sys crates at $LLVM_PREFIX"
fi
if [ ! -f "$LLVM_PREFIX/lib/libMLIRCAPIIR.a" ]; then
  die "MLIR C API libraries not found under $LLVM_PREFIX/lib (install libmlir-22-dev)"
fi

# ---------------------------------------------------------------------------
step "2/4 Rust toolchain (cargo/rustc >= $MIN_RUST)"
if ! rust_ok; then
  if command -v rustup >/dev/null 2>&1; then
    info "Rust is missing or older than $MIN_RUST; updating the stable toolchain with rustup"
    rustup toolchain install stable --profile minimal
    rustup default stable
  elif command -v curl >/dev/null 2>&1; then
    info "Rust not found; installing it with rustup (https://rustup.rs) into $HOME/.cargo"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    die "Rust (cargo, rustc >= $MIN_RUST) not found, and curl is not available to install it.
Install Rust with rustup:
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y
    . \"\$HOME/.cargo/env\"
then run this script again."
  fi
  rust_ok || die "Rust is still missing or older than $MIN_RUST after installation (rustc: $(command -v rustc || echo none))"
fi
info "$(rustc --version)"
info "$(cargo --version)"

# ---------------------------------------------------------------------------
step "3/4 Building the release tdlc binary and its runtime (cargo build --release -p tdl --bin tdlc; -p tdl-rt-capi)"
cargo build --release -p tdl --bin tdlc
cargo build --release -p tdl-rt-capi
info "built target/release/tdlc and target/release/libtdl_runtime.a (what --emit so links)"

# ---------------------------------------------------------------------------
if [ -f scripts/demo.sh ]; then
  step "4/4 Running the demo (bash scripts/demo.sh)"
  bash scripts/demo.sh
else
  step "4/4 Demo: scripts/demo.sh not present; skipped"
fi

step "Setup complete"
