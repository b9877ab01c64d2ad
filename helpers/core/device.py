"""Devices and seeds: pick the torch device, seed python, numpy and torch."""
from __future__ import annotations

import random

import numpy as np
import torch


def pick_device(device: str = "auto") -> torch.device:
    """`auto` picks CUDA when present, else CPU; `cuda` without a GPU is a clear error."""
    if device not in {"auto", "cpu", "cuda"}:
        raise ValueError(f"parameter device={device!r}: expected auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("parameter device='cuda' but torch sees no CUDA GPU; use device='auto' or 'cpu'")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
