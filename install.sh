#!/usr/bin/env bash
# Installs crossgap-qdrant on a fresh machine: PyTorch, the package with its compiled operators, the test
# dependencies, and (where apt-get runs as root) the public-domain clip art that the demo uses.
#   FORCE_CUDA=1 bash install.sh    also builds the CUDA kernels (needs nvcc; the default builds them only
#                                   when a GPU is visible)
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1 && [ ! -d /usr/share/openclipart/png ]; then
  echo "== installing openclipart-png and openclipart-svg (demo data)"
  apt-get update -qq || echo "apt-get update failed; continuing"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openclipart-png openclipart-svg >/dev/null \
    || echo "could not install openclipart (the demo will be skipped); continuing"
fi

echo "== installing PyTorch"
"$PYTHON" -m pip install -q "torch==2.14.1" "torchvision==0.29.1" ninja "setuptools>=64" wheel

echo "== building and installing crossgap-qdrant"
"$PYTHON" -m pip install -q --no-build-isolation -e ".[test]"
"$PYTHON" -c "import crossgap_qdrant.ops, crossgap_qdrant._ext as e; print('operators loaded from', e.library_path())"
