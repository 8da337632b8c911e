#!/usr/bin/env bash
# Regenerates the Python messages, gRPC stubs and their .pyi types (mypy-protobuf) from protos/.
# The generators are pinned in requirements/dev.txt so that every machine writes the same bytes.
# `scripts/gen_protos.sh --check` regenerates into a temporary folder and fails if the committed code differs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${VISIONSEARCH_VENV:-$root/.venv}
export PATH="$venv/bin:$PATH"   # protoc-gen-mypy and protoc-gen-mypy_grpc live there
out=$root/clients/python/src

target=$out
if [ "${1:-}" = "--check" ]; then
  target=$(mktemp -d)
  trap 'rm -rf "$target"' EXIT
fi

cd "$root/protos"
mapfile -t protos < <(find . -name '*.proto' | sed 's|^\./||' | sort)
python -m grpc_tools.protoc -I. \
  --python_out="$target" --grpc_python_out="$target" \
  --mypy_out="$target" --mypy_grpc_out="$target" "${protos[@]}"

if [ "$target" != "$out" ]; then
  if ! diff -r -x '__pycache__' -x '__init__.py' -x 'py.typed' "$target/visionsearch" "$out/visionsearch"; then
    echo "generated code in clients/python/src is stale: run scripts/gen_protos.sh and commit the result" >&2
    exit 1
  fi
  echo "generated code is fresh"
fi
