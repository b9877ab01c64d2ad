"""The teacher-logit cache: computed once by stage 02, read by stage 03, keyed by the teacher checkpoint and data.

The same cache holds the logits of each link of the progressive chain (stage 03's `chain` arm): there the
"teacher" is the previous, larger student, and the cache lives in `models/chain_logits/`.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors.numpy import load_file, save_file

from helpers.core.constants import SPLITS, TRANSFER
from helpers.core.run_folder import file_hash, run_path
from helpers.models.build import load_model
from helpers.training.loop import predict_logits


def data_fingerprint(splits: dict[str, pd.DataFrame], max_len: int) -> str:
    """Hash of the split ids, texts and labels (and the transfer pool's ids and texts) plus max_len."""
    h = hashlib.sha256(str(max_len).encode())
    for name in (*SPLITS, TRANSFER):
        if name not in splits:
            continue
        df = splits[name]
        h.update(name.encode())
        cols = [c for c in ("id", "text", "label") if c in df.columns]
        h.update(pd.util.hash_pandas_object(df[cols].astype(str), index=False).values.tobytes())
    return h.hexdigest()[:16]


def logits_key(teacher_dir: str | Path, splits: dict[str, pd.DataFrame], max_len: int) -> str:
    """Cache key of the teacher logits: the teacher checkpoint and the data."""
    return hashlib.sha256((file_hash(Path(teacher_dir) / "model.safetensors")
                           + data_fingerprint(splits, max_len)).encode()).hexdigest()[:16]


def cache_teacher_logits(run_dir: str | Path, splits: dict[str, pd.DataFrame],
                         encoded: dict[str, list[dict[str, list[int]]]], max_len: int,
                         device: str = "cpu", precision: str = "fp32",
                         computed: dict[str, np.ndarray] | None = None, *, teacher_dir: str | Path | None = None,
                         folder: str = "teacher_logits") -> tuple[Path, dict[str, np.ndarray]]:
    """Compute the fine-tuned teacher's logits for every split (and the transfer pool) once, or reuse the cache.

    Args:
        computed: logits already computed for exactly these splits (by the process that trained the teacher).
        teacher_dir: the checkpoint whose logits are cached (default: the run's teacher, models/teacher; a chain
            link passes the previous student's checkpoint).
        folder: the cache folder under models/ (teacher_logits; chain_logits for the chain's links).
    """
    teacher_dir = Path(run_dir) / "models" / "teacher" if teacher_dir is None else Path(teacher_dir)
    key = logits_key(teacher_dir, splits, max_len)
    path = run_path(run_dir, "models", folder, f"{key}.safetensors")
    if path.is_file():
        return path, load_file(str(path))
    if computed is not None and set(computed) == set(splits):
        logits = {name: np.asarray(v, dtype=np.float32) for name, v in computed.items()}
    else:
        model = load_model(teacher_dir, device)
        logits = {name: predict_logits(model, encoded[name], device=device, precision=precision).astype(np.float32)
                  for name in splits}
    save_file(logits, str(path), metadata={"key": key, "teacher": str(teacher_dir), "max_len": str(max_len),
                                           "precision": precision})
    return path, logits


def load_teacher_logits(run_dir: str | Path, splits: dict[str, pd.DataFrame], max_len: int) -> dict[str, np.ndarray]:
    """The cached teacher logits matching the current teacher checkpoint and data (else a clear error)."""
    key = logits_key(Path(run_dir) / "models" / "teacher", splits, max_len)
    path = Path(run_dir) / "models" / "teacher_logits" / f"{key}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the teacher logits for this teacher and data are not cached; "
                                f"rerun notebook 02 (python -m helpers run --only 02)")
    return load_file(str(path))


def read_cached_logits(path: str | Path) -> dict[str, np.ndarray]:
    """The logits of one cache file written by cache_teacher_logits (split name -> float32 [n, K])."""
    return load_file(str(path))
