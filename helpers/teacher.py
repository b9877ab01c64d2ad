"""Stage 02: fine-tune the teacher (and a second-seed teacher for the noise ceiling), cache its logits."""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from safetensors.numpy import load_file, save_file

from . import data as data_mod
from .evaluation import classification_metrics, is_collapsed, softmax
from .models import build_model, count_params, full_vocabulary_params, get_spec, load_model, save_model
from .progress import Progress
from .run_folder import read_index, read_json, replace_rows, run_path, write_csv, write_index, write_json
from .training import CaseDataset, TrainConfig, encode, predict_logits, resolve_precision, train

SPLITS = ("train", "val", "test")
TRANSFER = "transfer"


def encode_splits(splits: dict[str, pd.DataFrame], max_len: int) -> dict[str, list[dict[str, list[int]]]]:
    """Tokenise every split once."""
    return {name: encode(df["text"].tolist(), max_len) for name, df in splits.items()}


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


def load_cases(run_dir: str | Path) -> dict[str, pd.DataFrame]:
    """The labelled splits plus, when the run has one, the unlabelled transfer pool under "transfer"."""
    cases = data_mod.load_splits(run_dir)
    transfer = data_mod.load_transfer(run_dir)
    if transfer is not None:
        cases[TRANSFER] = transfer
    return cases


def file_hash(path: str | Path) -> str:
    """sha256 of a file (a checkpoint's weights)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def logits_key(teacher_dir: str | Path, splits: dict[str, pd.DataFrame], max_len: int) -> str:
    """Cache key of the teacher logits: the teacher checkpoint and the data."""
    return hashlib.sha256((file_hash(Path(teacher_dir) / "model.safetensors")
                           + data_fingerprint(splits, max_len)).encode()).hexdigest()[:16]


def cache_teacher_logits(run_dir: str | Path, splits: dict[str, pd.DataFrame],
                         encoded: dict[str, list[dict[str, list[int]]]], max_len: int,
                         device: str = "cpu", precision: str = "fp32") -> tuple[Path, dict[str, np.ndarray]]:
    """Compute the fine-tuned teacher's logits for every split (and the transfer pool) once, or reuse the cache."""
    teacher_dir = Path(run_dir) / "models" / "teacher"
    key = logits_key(teacher_dir, splits, max_len)
    path = run_path(run_dir, "models", "teacher_logits", f"{key}.safetensors")
    if path.is_file():
        return path, load_file(str(path))
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


def record(run_dir: str | Path, entry: dict[str, Any], logits: dict[str, np.ndarray], labels: dict[str, np.ndarray],
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
                          "label": labels["test"], "prob_1": softmax(logits["test"])[:, 1]})
    return pd.DataFrame(rows), preds


def index_entry(name: str, role: str, mode: str, seed: int, path: Path, run_dir: str | Path, model) -> dict[str, Any]:
    """One `models/models.json` entry."""
    total, non_emb = count_params(model)
    spec = get_spec(name)
    return {"name": name, "role": role, "mode": mode, "seed": seed,
            "path": str(Path(path).relative_to(run_dir)), "params": total, "non_embedding_params": non_emb,
            "params_full_vocab": full_vocabulary_params(model), "shape": spec.shape}


def run_teacher_stage(run_dir: str | Path, *, teacher: str, teacher_epochs: int, teacher_lr: float,
                      teacher_seed: int, ceiling_seed: int, batch_size: int, max_len: int,
                      class_weighted: bool = False, selection_metric: str = "macro_f1", device: str = "cpu",
                      precision: str = "auto", model_overrides: dict[str, str] | None = None,
                      progress: bool = True) -> dict[str, Any]:
    """Fine-tune the teacher and the ceiling teacher, cache the teacher logits, write metrics and the index.

    The best epoch of each teacher is chosen on validation; `precision` (auto | fp32 | bf16) is resolved once and
    recorded in teacher_metrics.json, and the students of this run train in the same precision.
    """
    run_dir = Path(run_dir)
    precision = resolve_precision(precision, device)
    splits = load_cases(run_dir)
    card = data_mod.load_data_card(run_dir)
    encoded = encode_splits(splits, max_len)
    labels = {s: splits[s]["label"].to_numpy() for s in SPLITS}
    spec = get_spec(teacher, model_overrides)
    train_set = CaseDataset(encoded["train"], labels["train"])
    val_set = CaseDataset(encoded["val"], labels["val"])
    entries, histories, timings = {}, {}, {}
    for role, seed, folder in (("teacher", teacher_seed, "teacher"), ("ceiling", ceiling_seed, "teacher_ceiling")):
        start = time.perf_counter()
        model = build_model(spec, seed=seed)
        per_epoch = int(np.ceil(len(train_set) / batch_size))
        cfg = TrainConfig(max_steps=teacher_epochs * per_epoch, lr=teacher_lr, batch_size=batch_size, seed=seed,
                          eval_every=per_epoch, patience=0, selection_metric=selection_metric,
                          class_weighted=class_weighted, device=device, precision=precision,
                          progress=Progress(teacher_epochs * per_epoch, f"{role} steps") if progress else None)
        result = train(model, train_set, val_set, cfg, mode="independent")
        model, history = result.model, result.history
        out = save_model(model, run_dir / "models" / folder, spec)
        history.insert(0, "seed", seed)
        write_csv(out / "history.csv", history)
        timings[role] = time.perf_counter() - start
        histories[role] = history
        entries[role] = index_entry(teacher, "teacher", "teacher" if role == "teacher" else "ceiling", seed, out,
                                    run_dir, model)
        print(f"{role} ({teacher}, seed {seed}): trained in {timings[role]:.0f} s ({result.train_examples} examples, "
              f"{result.train_examples / result.train_seconds:.0f}/s in training steps, {precision}), best epoch "
              f"{result.best_step // per_epoch} of {teacher_epochs} (chosen on validation {selection_metric})",
              flush=True)
    logits_path, t_logits = cache_teacher_logits(run_dir, splits, encoded, max_len, device, precision)
    ceiling_model = load_model(run_dir / "models" / "teacher_ceiling", device)
    c_logits = {s: predict_logits(ceiling_model, encoded[s], device=device, precision=precision)
                for s in ("val", "test")}
    metrics, preds = record(run_dir, entries["teacher"], t_logits, labels, None, splits["test"]["id"])
    c_metrics, c_preds = record(run_dir, entries["ceiling"], c_logits, labels, t_logits, splits["test"]["id"])
    t_test = metrics[metrics["split"] == "test"].iloc[0].to_dict()
    t_val = metrics[metrics["split"] == "val"].iloc[0].to_dict()
    base = card["baselines"]
    # The collapse gate reads validation: a teacher no better than the majority class there is not distilled from.
    collapsed = is_collapsed(t_val, base["majority"]["val"]["accuracy"])
    summary = {
        "teacher": entries["teacher"], "ceiling": entries["ceiling"],
        "val": {k: t_val[k] for k in ("accuracy", "macro_f1", "roc_auc", "ece", "positive_rate")},
        "test": {k: t_test[k] for k in ("accuracy", "macro_f1", "roc_auc", "ece", "positive_rate")},
        "ceiling_test": c_metrics[c_metrics["split"] == "test"].iloc[0][
            ["accuracy", "macro_f1", "roc_auc", "agreement", "kl_to_teacher"]].to_dict(),
        "collapsed": collapsed, "collapse_gate_split": "val",
        "precision": precision,
        "majority_rate": card["majority_rate"],
        "majority_val_accuracy": base["majority"]["val"]["accuracy"],
        "majority_test_accuracy": base["majority"]["test"]["accuracy"],
        "tfidf_test_accuracy": base["tfidf_logreg"]["test"]["accuracy"],
        "margin_over_tfidf": t_test["accuracy"] - base["tfidf_logreg"]["test"]["accuracy"],
        "margin_over_majority": t_test["accuracy"] - base["majority"]["test"]["accuracy"],
        "logits_cache": str(logits_path.relative_to(run_dir)),
        "train_seconds": timings,
    }
    write_json(run_dir / "models" / "teacher_metrics.json", summary)
    all_metrics = pd.concat([metrics, c_metrics], ignore_index=True)
    write_csv(run_dir / "models" / "metrics.csv", all_metrics)
    write_csv(run_dir / "models" / "predictions.csv", pd.concat([preds, c_preds], ignore_index=True))
    write_index(run_dir, {"teacher": entries["teacher"], "teacher_ceiling": entries["ceiling"],
                          "teacher_collapsed": collapsed, "students": []})
    if collapsed:
        print(f"WARNING: the teacher collapsed: validation accuracy {t_val['accuracy']:.3f} does not beat the "
              f"majority class ({base['majority']['val']['accuracy']:.3f}) or it predicts one class only "
              f"(positive rate {t_val['positive_rate']:.2f}). Distillation comparisons will be marked not meaningful.")
    return {"summary": summary, "metrics": all_metrics, "history": pd.concat(histories.values(), keys=histories.keys(),
                                                                             names=["role", None]).reset_index(0)}


def teacher_summary(run_dir: str | Path) -> dict[str, Any]:
    """`models/teacher_metrics.json`."""
    return read_json(Path(run_dir) / "models" / "teacher_metrics.json")


def teacher_predictions(run_dir: str | Path) -> pd.Series:
    """The teacher's predicted class on the test split, indexed by case id."""
    index = read_index(run_dir)
    preds = pd.read_csv(Path(run_dir) / "models" / "predictions.csv", dtype={"id": str})
    t = preds[(preds["model"] == index["teacher"]["name"]) & (preds["mode"] == "teacher")]
    return (t.set_index("id")["prob_1"] >= 0.5).astype(int)


def replace_student_rows(run_dir: str | Path, metrics: pd.DataFrame, preds: pd.DataFrame, names: list[str]) -> None:
    """Swap the students' rows in metrics.csv and predictions.csv, keeping the teachers' rows."""
    replace_rows(Path(run_dir) / "models" / "metrics.csv", metrics, "model", names)
    replace_rows(Path(run_dir) / "models" / "predictions.csv", preds, "model", names)
