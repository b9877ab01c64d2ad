"""Stage 02: fine-tune the teacher (and a second-seed teacher for the noise ceiling), cache its logits."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import data as data_mod
from .checkpoints import index_entry, record
from .data import SPLITS
from .evaluation import is_collapsed
from .models import build_model, get_spec, load_model, save_model
from .progress import Progress
from .run_folder import write_csv, write_index, write_json
from .teacher_logits import cache_teacher_logits
from .training import CaseDataset, TrainConfig, encode_splits, predict_logits, resolve_precision, train


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
    splits = data_mod.load_cases(run_dir)
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
    metrics, preds = record(entries["teacher"], t_logits, labels, None, splits["test"]["id"])
    c_metrics, c_preds = record(entries["ceiling"], c_logits, labels, t_logits, splits["test"]["id"])
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
