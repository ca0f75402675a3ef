"""Builds crossgap_qdrant and its compiled operators (crossgap_qdrant/_C).

A C++ extension when CUDA is not usable; a CUDA extension when it is, or when FORCE_CUDA=1 (which compiles
the .cu kernels even on a machine without a GPU). TORCH_CUDA_ARCH_LIST picks the GPU architectures.
"""

import glob
import os

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _use_cuda() -> bool:
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    return torch.cuda.is_available() and CUDA_HOME is not None


def _extension():
    csrc = os.path.join("csrc")
    sources = sorted(glob.glob(os.path.join(csrc, "**", "*.cpp"), recursive=True))
    # Exact IEEE arithmetic: the kernels reproduce PyTorch's rounding step for step, so no contraction.
    cxx = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-math-errno"]
    link = ["-fopenmp"]
    if _use_cuda():
        sources += sorted(glob.glob(os.path.join(csrc, "**", "*.cu"), recursive=True))
        return CUDAExtension(
            "crossgap_qdrant._C",
            sources,
            include_dirs=[os.path.join(ROOT, csrc)],
            define_macros=[("WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--fmad=false"]},
            extra_link_args=link,
        )
    return CppExtension(
        "crossgap_qdrant._C",
        sources,
        include_dirs=[os.path.join(ROOT, csrc)],
        extra_compile_args={"cxx": cxx},
        extra_link_args=link,
    )


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
