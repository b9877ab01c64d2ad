"""The run's checkpoint records: models.json entries, metric and prediction rows, and the teacher's results."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from helpers.core.run_folder import read_index, read_json, replace_rows
from helpers.evaluation.metrics import (
    classification_metrics,
    predicted_class,
    prediction_frame,
    probabilities,
    softmax,
)
from helpers.models.build import count_params, full_vocabulary_params
from helpers.models.specs import get_spec


def index_entry(name: str, role: str, mode: str, seed: int, path: Path, run_dir: str | Path, model) -> dict[str, Any]:
    """One `models/models.json` entry (`path` relative to `run_dir`)."""
    total, non_emb = count_params(model)
    spec = get_spec(name)
    return {"name": name, "role": role, "mode": mode, "seed": seed,
            "path": str(Path(path).relative_to(run_dir)), "params": total, "non_embedding_params": non_emb,
            "params_full_vocab": full_vocabulary_params(model), "shape": spec.shape}


def record(entry: dict[str, Any], logits: dict[str, np.ndarray], labels: dict[str, np.ndarray],
           teacher_logits: dict[str, np.ndarray] | None, test_ids: pd.Series) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Metrics rows (val, test) and test-prediction rows for one checkpoint."""
    rows = []
    for split in ("val", "test"):
        reference = None if teacher_logits is None else teacher_logits[split]
        m = classification_metrics(logits[split], labels[split], reference)
        rows.append({"model": entry["name"], "role": entry["role"], "mode": entry["mode"], "seed": entry["seed"],
                     "split": split, **m, "params": entry["params"],
                     "non_embedding_params": entry["non_embedding_params"]})
    preds = pd.DataFrame({"model": entry["name"], "mode": entry["mode"], "seed": entry["seed"], "id": test_ids.values,
                          "label": labels["test"]})
    probs = prediction_frame(test_ids.values, softmax(logits["test"])).reset_index(drop=True)
    return pd.DataFrame(rows), pd.concat([preds, probs], axis=1)


def replace_student_rows(run_dir: str | Path, metrics: pd.DataFrame, preds: pd.DataFrame, names: list[str]) -> None:
    """Swap the students' rows in metrics.csv and predictions.csv, keeping the teachers' rows."""
    replace_rows(Path(run_dir) / "models" / "metrics.csv", metrics, "model", names)
    replace_rows(Path(run_dir) / "models" / "predictions.csv", preds, "model", names)


def teacher_summary(run_dir: str | Path) -> dict[str, Any]:
    """`models/teacher_metrics.json`."""
    return read_json(Path(run_dir) / "models" / "teacher_metrics.json")


def teacher_predictions(run_dir: str | Path) -> pd.Series:
    """The teacher's predicted class on the test split, indexed by case id."""
    index = read_index(run_dir)
    preds = pd.read_csv(Path(run_dir) / "models" / "predictions.csv", dtype={"id": str})
    t = preds[(preds["model"] == index["teacher"]["name"]) & (preds["mode"] == "teacher")].set_index("id")
    return pd.Series(predicted_class(probabilities(t)), index=t.index, name="prob_1")
