"""Settings and results of an inversion: OTI/OVI configs (a shared base), the stopping rule, precisions."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from crossgap_qdrant.errors import InvalidArgumentError, InvalidArgumentTypeError
from crossgap_qdrant.inversion.warm_start import WarmStart

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class SlowPrecisionWarning(UserWarning):
    """A reduced precision was asked for on hardware that runs it slower than float32."""


# /proc/cpuinfo flags of bf16 matrix hardware (AVX512-BF16 dot products, AMX tiles)
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The feature flags of the first CPU in ``path`` (empty where the file is absent: not Linux)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX): torch's CPU capability
    check, else the /proc/cpuinfo flags."""
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None)
    if any(fn is not None and fn() for fn in check):
        return True
    return bool(cpu_flags() & BF16_CPU_FLAGS)


def fast_precision(device: torch.device | str) -> str:
    """The precision "auto" stands for on ``device``: "bf16" on a CUDA device with bf16 and on a CPU with bf16
    hardware, else "fp32" (emulated bf16 is many times slower than float32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_bf16() else "fp32"


def check_precision(precision: str, device: torch.device) -> torch.dtype:
    """The dtype of a precision name; fp16 is refused on CPU (bf16 is the CPU's reduced precision).

    "auto" is bf16 where the hardware has it, else fp32 (:func:`fast_precision`). bf16 asked for on a CPU
    without bf16 hardware warns (SlowPrecisionWarning): PyTorch emulates it there, measured at 0.3 GFLOP/s
    against 60 GFLOP/s in float32 on an AVX2 CPU (benchmarks/bench_inversion.py).
    """
    if precision == "auto":
        precision = fast_precision(device)
    if precision not in PRECISIONS:
        raise InvalidArgumentError(f"precision must be one of {sorted(PRECISIONS) + ['auto']}, got {precision!r}")
    if precision == "fp16" and device.type == "cpu":
        raise InvalidArgumentError("fp16 is for CUDA; use precision='bf16' on CPU")
    if precision == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        warnings.warn(SlowPrecisionWarning(
            "precision='bf16' on a CPU without bf16 hardware (no AVX512-BF16, no AMX) runs many times slower than "
            "fp32; use precision='fp32' here"), stacklevel=3)
    return PRECISIONS[precision]


@dataclass(frozen=True)
class StoppingRule:
    """Per-sample early stopping; a stopped sample leaves the batch and the next one takes its slot.

    A sample stops at the first of: ``target_loss`` reached (1 - cos <= target_loss); its loss improved by
    less than ``min_delta`` over the last ``patience`` steps; the config's step budget. Never before
    ``min_steps``.
    """

    target_loss: float | None = None
    min_delta: float | None = None
    patience: int = 10
    min_steps: int = 0

    def __post_init__(self):
        for name in ("target_loss", "min_delta"):
            value = getattr(self, name)
            if value is not None and not (_is_number(value) and value >= 0):
                raise InvalidArgumentError(f"StoppingRule.{name} must be a number >= 0 or None, got {value!r}")
        if not _is_int(self.patience) or self.patience < 1:
            raise InvalidArgumentError(f"StoppingRule.patience must be an int >= 1, got {self.patience!r}")
        if not _is_int(self.min_steps) or self.min_steps < 0:
            raise InvalidArgumentError(f"StoppingRule.min_steps must be an int >= 0, got {self.min_steps!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


@dataclass(frozen=True)
class InversionConfig:
    """What OTI and OVI share: the optimiser (AdamW), the initialisation, batching and precision.

    Attributes:
        steps: optimisation steps per sample (the budget).
        lr, weight_decay, betas, eps: AdamW's settings.
        init_std: initial pseudo tokens are normal(0, init_std).
        batch_size: samples optimised together (each has its own tokens and optimiser state).
        precision: "fp32" (exact), "bf16" (CPU and CUDA), "fp16" (CUDA) or "auto" (bf16 where the hardware has
            it, else fp32); final features are always float32.
        seed: seed of the initial tokens.
        stopping: per-sample early stopping; None runs the full budget.
        warm_start: a :class:`~crossgap_qdrant.inversion.WarmStart` whose prediction replaces the published
            random initialisation (then a few ``steps`` suffice; 0 takes the prediction as it is); None: the
            published normal(0, init_std) initialisation.
        cuda_graph: on CUDA, capture a step in a CUDA graph and replay it (fixed budgets of at least 20 steps
            without ``stopping``; the same arithmetic, without per-kernel launch overhead).
    """

    steps: int = 150
    lr: float = 2e-2
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    init_std: float = 0.02
    batch_size: int = 64
    precision: str = "fp32"
    seed: int = 0
    stopping: StoppingRule | None = None
    warm_start: WarmStart | None = None
    cuda_graph: bool = True

    def __post_init__(self):
        if not _is_int(self.steps) or self.steps < 0:
            raise InvalidArgumentError(f"steps must be an int >= 0, got {self.steps!r}")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise InvalidArgumentError(f"batch_size must be an int >= 1, got {self.batch_size!r}")
        for name in ("lr", "weight_decay", "eps", "init_std"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise InvalidArgumentError(f"{name} must be a number >= 0, got {value!r}")
        betas = self.betas
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2
                and all(_is_number(b) and 0 <= b < 1 for b in betas)):
            raise InvalidArgumentError(f"betas must be two numbers in [0, 1), got {betas!r}")
        num_tokens = getattr(self, "num_tokens", 1)
        if num_tokens is not None and (not _is_int(num_tokens) or num_tokens < 1):
            raise InvalidArgumentError(f"num_tokens must be an int >= 1, got {num_tokens!r}")
        if self.stopping is not None and not isinstance(self.stopping, StoppingRule):
            raise InvalidArgumentTypeError(
                f"stopping must be a StoppingRule or None, got {type(self.stopping).__name__}")
        if self.warm_start is not None and not isinstance(self.warm_start, WarmStart):
            raise InvalidArgumentTypeError(f"warm_start must be a WarmStart (WarmStart.load(path)) or None, got "
                            f"{type(self.warm_start).__name__}")


@dataclass(frozen=True)
class OTIConfig(InversionConfig):
    """Optimisation-based textual inversion (image -> text space); defaults are the published settings.

    Attributes:
        template: the sentence the pseudo words fill ("{}" marks where).
        num_tokens: R, the number of pseudo words.
        prefix_cache: compute only the positions from the first pseudo word on (exact); False runs the full
            sequence (used by tests and benchmarks).
        step: "auto", "autograd" or "handwritten" (see :func:`crossgap_qdrant.inversion.oti_invert`).
    """

    steps: int = 150
    template: str = "a photo of {}"
    num_tokens: int = 1
    prefix_cache: bool = True
    step: str = "auto"


@dataclass(frozen=True)
class OVIConfig(InversionConfig):
    """Optimisation-based visual inversion (text -> image space); defaults are the published settings.

    ``num_tokens=None`` takes the backbone's published default (see
    :func:`crossgap_qdrant.inversion.init_tokens.ovi_num_tokens`).
    """

    steps: int = 1000
    num_tokens: int | None = None


@dataclass
class InversionResult:
    """Outcome of an inversion of N samples.

    Attributes:
        features: [N, E] float32 unit vectors in the other modality's space.
        tokens: [N, R, D] float32 optimised pseudo tokens.
        loss: [N] float32, 1 - cos(features, target).
        steps: [N] int64 optimisation steps taken per sample.
        seconds: wall time of the whole inversion.
        snapshots: step count K -> [N, E] float32 unit features of the tokens after K steps, for the counts
            asked for (``snapshots=`` of the inversion); empty otherwise.
    """

    features: torch.Tensor
    tokens: torch.Tensor
    loss: torch.Tensor
    steps: torch.Tensor
    seconds: float = 0.0
    snapshots: dict[int, torch.Tensor] = field(default_factory=dict)


__all__ = [
    "PRECISIONS",
    "InversionConfig",
    "InversionResult",
    "OTIConfig",
    "OVIConfig",
    "SlowPrecisionWarning",
    "StoppingRule",
    "check_precision",
    "cpu_flags",
    "cpu_has_bf16",
    "fast_precision",
]
