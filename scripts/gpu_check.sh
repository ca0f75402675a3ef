#!/usr/bin/env bash
# Every GPU check in one command, for a machine with a CUDA device: builds the CUDA kernels, runs the whole
# test suite (the CUDA tests run instead of skipping: CPU == CUDA for the ops, the engine with and without
# CUDA graphs, the store on a CUDA model), then the benchmarks on the GPU. Prints what it ran; output under
# ${OUT:-gpu_check_out}/ (JSON of each benchmark, the pytest log).
#
#   bash scripts/gpu_check.sh            # about 10 minutes on one modern GPU
#   QUICK=1 bash scripts/gpu_check.sh    # tests and --quick benchmarks only
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_check_out}"
mkdir -p "$OUT"
PYTHON="${PYTHON:-python3}"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible to PyTorch'; print(torch.__version__, torch.version.cuda)"

# CUDA build: torch's CUDA headers (cuBLAS, cuDNN, ...) ship in the nvidia-* wheels.
SITE=$("$PYTHON" -c "import site; print(site.getsitepackages()[0])")
for inc in nvidia/cu13/include nvidia/cudnn/include nvidia/cusparselt/include nvidia/nccl/include; do
  [ -d "$SITE/$inc" ] && export CPATH="$SITE/$inc${CPATH:+:$CPATH}"
done
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
if ! "$PYTHON" -c "import crossgap_qdrant._ext as e; import sys; sys.exit(0 if e.has_cuda_kernels() else 1)" 2>/dev/null; then
  FORCE_CUDA=1 "$PYTHON" -m pip install -q --no-build-isolation -e ".[test]"
fi
"$PYTHON" -c "import crossgap_qdrant._ext as e; assert e.has_cuda_kernels(), 'the library has no CUDA kernels'; print('CUDA kernels loaded')"

export HF_HUB_OFFLINE=1
"$PYTHON" -m pytest -m "cuda" -ra -v tests/ 2>&1 | tee "$OUT/pytest_cuda.log"
"$PYTHON" -m pytest -ra -q tests/ 2>&1 | tail -n 30 | tee "$OUT/pytest_all.log"

if [ "${QUICK:-0}" = "1" ]; then
  "$PYTHON" benchmarks/bench_ops.py --device cuda --repeat 10 | tee "$OUT/bench_ops.json"
  "$PYTHON" benchmarks/bench_inversion.py --device cuda --quick | tee "$OUT/bench_inversion.json"
else
  "$PYTHON" benchmarks/bench_ops.py --device cuda | tee "$OUT/bench_ops.json"
  "$PYTHON" benchmarks/bench_inversion.py --device cuda | tee "$OUT/bench_inversion.json"
fi
echo "gpu_check: done; results in $OUT/"
