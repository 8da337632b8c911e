#!/usr/bin/env bash
# Builds kernels/native/libscores.so, the exact kernel's AVX-512 score tiles (kernels/scores.py), when the
# source is newer than the library. Without a C compiler, or one without AVX-512 support, it says so and the
# exact kernel takes its scores from BLAS (slower at batch 64, same results). Run by `make install` and by
# scripts/setup.sh (so the production install packages the library).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
src="$root/kernels/native/scores.c"
lib="$root/kernels/native/libscores.so"
say() { printf '\033[1msetup:\033[0m %s\n' "$*"; }
if [ -f "$lib" ] && [ "$lib" -nt "$src" ]; then
  exit 0
fi
cc=${CC:-$(command -v cc || command -v gcc || true)}
if [ -z "$cc" ]; then
  say "no C compiler: the exact kernel will take its scores from BLAS (install gcc for the faster kernel)"
  exit 0
fi
tmp="$lib.tmp.$$"
if "$cc" -O3 -mavx512f -mfma -fPIC -shared -o "$tmp" "$src"; then
  mv -f "$tmp" "$lib"
  say "built $(basename "$lib") (the exact kernel's AVX-512 score tiles)"
else
  rm -f "$tmp"
  say "could not build $(basename "$lib") with $cc: the exact kernel will take its scores from BLAS"
fi
