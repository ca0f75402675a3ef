"""The CUDA kernels compile (nvcc, compile and link only: no GPU needed), so a broken .cu fails the tests."""

import glob
import os
import shutil
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_HOME = os.environ.get("CUDA_HOME", "/usr/local/cuda")


def _cuda_include_dirs() -> list[str]:
    """Headers of the CUDA libraries that came with torch (cuBLAS, cuDNN, ...) for nvcc."""
    site = os.path.dirname(os.path.dirname(torch.__file__))
    dirs = []
    for pattern in ("nvidia/cu*/include", "nvidia/*/include"):
        dirs += sorted(glob.glob(os.path.join(site, pattern)))
    return dirs


@pytest.mark.skipif(torch.version.cuda is None, reason="this PyTorch build has no CUDA")
def test_cuda_extension_compiles(tmp_path):
    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc")
    if not os.path.exists(nvcc):
        if os.environ.get("CI"):
            pytest.fail(f"nvcc not found at {nvcc}: CI must compile the CUDA kernels")
        pytest.skip(f"nvcc not found at {nvcc}")
    env = dict(os.environ)
    env.update(
        FORCE_CUDA="1",
        CUDA_HOME=CUDA_HOME,
        TORCH_CUDA_ARCH_LIST=os.environ.get("CROSSGAP_TEST_ARCH_LIST", "9.0"),
        MAX_JOBS="2",
        CPATH=os.pathsep.join(_cuda_include_dirs() + [env.get("CPATH", "")]),
    )
    env["PATH"] = os.path.join(CUDA_HOME, "bin") + os.pathsep + env.get("PATH", "")
    # Build from a copy so the compile leaves nothing in the checkout.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "build", "*.so", "__pycache__", "*.egg-info",
                                                             "demo_data", "runs", "qdrant_data"))
    proc = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--build-temp", str(tmp_path / "temp"),
         "--build-lib", str(tmp_path / "lib")],
        cwd=src, env=env, capture_output=True, text=True, timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    built = glob.glob(str(tmp_path / "lib" / "crossgap_qdrant" / "_C*.so"))
    assert built, "no library was produced"
    objects = glob.glob(str(tmp_path / "temp" / "**" / "*cuda.o"), recursive=True)
    assert len(objects) == len(glob.glob(os.path.join(ROOT, "csrc", "**", "*.cu"), recursive=True))
