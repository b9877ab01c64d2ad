"""Precision: bf16 autocast where the hardware runs it natively, fp32 elsewhere."""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from helpers.core.constants import PRECISIONS


# ---------------------------------------------------------------- precision
def cpu_has_native_bf16() -> bool:
    """True when this CPU executes bf16 matrix work natively (AVX-512 BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        flags = []
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        return True
    try:  # other platforms: ask oneDNN
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and not flags
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """`auto` -> `bf16` where the hardware runs bf16 natively (CUDA with bf16, AVX-512 BF16/AMX CPUs), else `fp32`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if torch.device(device).type == "cuda":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def autocast(precision: str, device: str | torch.device = "cpu"):
    """bf16 autocast for `precision == 'bf16'` (weights stay fp32: mixed precision), else a no-op context."""
    if precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
