#!/usr/bin/env bash
# Installs crossgap-qdrant on a fresh machine: PyTorch, the package with its compiled operators, the test
# dependencies (the web service's too), and where apt-get runs as root the public-domain clip art that the demo
# uses and Debian's chromium with its driver (the web page's browser test).
#   FORCE_CUDA=1 bash install.sh    also builds the CUDA kernels (needs nvcc; the default builds them only
#                                   when a GPU is visible)
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  APT_PACKAGES=""
  [ -d /usr/share/openclipart/png ] || APT_PACKAGES="$APT_PACKAGES openclipart-png openclipart-svg"
  [ -x /usr/bin/chromium ] || APT_PACKAGES="$APT_PACKAGES chromium"
  [ -x /usr/bin/chromedriver ] || APT_PACKAGES="$APT_PACKAGES chromium-driver"
  if [ -n "$APT_PACKAGES" ]; then
    echo "== installing$APT_PACKAGES (demo data; the web page's browser test)"
    apt-get update -qq || echo "apt-get update failed; continuing"
    # shellcheck disable=SC2086  # one word per package
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $APT_PACKAGES >/dev/null \
      || echo "could not install$APT_PACKAGES (the demo or the browser test will be skipped); continuing"
  fi
fi

echo "== installing PyTorch"
"$PYTHON" -m pip install -q "torch==2.14.1" "torchvision==0.29.1" ninja "setuptools>=64" wheel

echo "== building and installing crossgap-qdrant"
"$PYTHON" -m pip install -q --no-build-isolation -e ".[test]"
"$PYTHON" -c "import crossgap_qdrant.ops, crossgap_qdrant._ext as e; print('operators loaded from', e.library_path())"
