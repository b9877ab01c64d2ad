"""The teacher's token attribution maps for the distilled_attribution arm: computed once per training case and cached
beside the teacher's logits, keyed by the teacher checkpoint, the data and the maps' top-k widths."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.numpy import load_file, save_file

from helpers.core.run_folder import run_path
from helpers.models.build import load_model
from helpers.training.datasets import _batches
from helpers.training.internals import attribution_maps, teacher_token_map
from helpers.training.teacher_logits import logits_key


def maps_key(teacher_dir: str | Path, train: pd.DataFrame, max_len: int, widths: list[int]) -> str:
    """Cache key: the teacher checkpoint, the training cases and max_len (as the logits'), and the top-k widths."""
    base = logits_key(teacher_dir, {"train": train}, max_len)
    return hashlib.sha256(f"{base}:{sorted(set(widths))}".encode()).hexdigest()[:16]


def cache_teacher_maps(run_dir: str | Path, train: pd.DataFrame, encoded: list[dict[str, list[int]]],
                       max_len: int, widths: list[int], device: str = "cpu") -> tuple[Path, dict[str, np.ndarray]]:
    """{f"k{width}": float32 [n_train, max_len]} for each student width: the teacher's gradient x input map of each
    training case for its gold label, top-`width` dimensions per token, L2-normalised over its real tokens (padding
    0). Computed once in fp32 (one forward and backward per case), then read from models/teacher_attributions/."""
    teacher_dir = Path(run_dir) / "models" / "teacher"
    key = maps_key(teacher_dir, train, max_len, widths)
    path = run_path(run_dir, "models", "teacher_attributions", f"{key}.safetensors")
    if path.is_file():
        return path, load_file(str(path))
    out = token_maps(load_model(teacher_dir, device), encoded, train["label"].to_numpy(), max_len, widths, device)
    save_file(out, str(path), metadata={"key": key, "teacher": str(teacher_dir), "max_len": str(max_len)})
    return path, out


def token_maps(model: torch.nn.Module, encoded: list[dict[str, list[int]]], labels: np.ndarray, max_len: int,
               widths: list[int], device: str = "cpu") -> dict[str, np.ndarray]:
    """The maps of cache_teacher_maps for `model` (eval mode, fp32), batched by length: "k<width>" -> [n, max_len]."""
    model.to(device).eval()
    out = {f"k{w}": np.zeros((len(encoded), max_len), dtype=np.float32) for w in sorted(set(widths))}
    for rows, batch in _batches(encoded, 32):
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        attr, _ = attribution_maps(model, ids, mask, torch.as_tensor(labels[rows], device=device), create_graph=False)
        for w in sorted(set(widths)):
            out[f"k{w}"][rows, :ids.shape[1]] = teacher_token_map(attr.detach(), w, mask).cpu().numpy()
    return out
