#!/usr/bin/env bash
# What only the test suite needs from Debian, idempotently: FUSE (fusermount and libfuse2), with which
# tests/faultfs.py mounts a filesystem that fails on command (a failing disk, for real system calls).
set -euo pipefail
missing=()
for pkg in fuse libfuse2; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup-test: installing Debian packages: ${missing[*]}"
  if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else
    echo "setup-test: need root (or sudo) to run: apt-get install ${missing[*]}" >&2; exit 1
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
