"""Number formats: the autocast dtype for training, the weights' dtype for inference.

Training keeps fp32 weights and runs matmuls under autocast (mixed precision). Inference casts
the backbone's weights to bf16 (fp16 where a GPU lacks bf16) instead: half the weight bytes to
read, and no per-op casts.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@functools.cache
def cpu_has_bf16() -> bool:
    """Native bf16 matmuls on this CPU (AVX512-BF16 or AMX); elsewhere bf16 is emulated, slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """Training's mixed precision. `auto`: bf16 on CUDA (fp16 where bf16 is missing) and on
    bf16-capable CPUs, else none."""
    if setting == "off":
        return None
    if setting in _DTYPES:
        return _DTYPES[setting]
    if setting != "auto":
        raise ValueError(f"unknown precision {setting!r}: auto, bf16, fp16 or off")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return None


def inference_dtype(setting: str, device: torch.device) -> torch.dtype:
    """The backbone weights' dtype for inference: `auto` is what `autocast_dtype` picks (bf16 on
    GPUs, fp16 on GPUs without bf16, bf16 on CPUs with native bf16), else fp32. `fp32` (or its
    older name `off`) keeps full precision."""
    if setting in ("fp32", "off"):
        return torch.float32
    if setting not in ("auto", *_DTYPES):
        raise ValueError(f"unknown precision {setting!r}: auto, bf16, fp16 or fp32")
    return autocast_dtype(setting, device) or torch.float32


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
