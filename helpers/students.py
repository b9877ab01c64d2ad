"""Stage 03: train every student independently and distilled, on identical data, seeds and budgets."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

from . import data as data_mod
from .config import MODES
from .evaluation import kd_gain_table
from .models import build_model, get_spec, load_model, save_model
from .run_folder import read_index, write_csv, write_index
from .teacher import SPLITS, encode_splits, index_entry, load_teacher_logits, record, replace_student_rows, \
    teacher_predictions
from .training import CaseDataset, TrainConfig, predict_logits, train


def run_student_stage(run_dir: str | Path, students: list[str], student_epochs: int, student_lr: float,
                      student_lr_warm: float, seeds: list[int], batch_size: int, alpha: float, temperature: float,
                      max_len: int,
                      teacher_mode: str = "cached", class_weighted: bool = False, selection_metric: str = "macro_f1",
                      device: str = "cpu", model_overrides: dict[str, str] | None = None, bootstrap_n: int = 1000,
                      progress: bool = False) -> dict[str, Any]:
    """Train each student x mode x seed; write checkpoints, metrics, test predictions and the KD gain table.

    Students starting from random weights train at `student_lr`; those starting from teacher layers or pretrained
    weights at `student_lr_warm` (a rate that suits one would wreck or starve the other in a short budget).
    """
    run_dir = Path(run_dir)
    splits = data_mod.load_splits(run_dir)
    encoded = encode_splits(splits, max_len)
    labels = {s: splits[s]["label"].to_numpy() for s in SPLITS}
    t_logits = load_teacher_logits(run_dir, splits, max_len)
    index = read_index(run_dir)
    teacher_dir = run_dir / index["teacher"]["path"]
    teacher = load_model(teacher_dir, "cpu")
    online_teacher = load_model(teacher_dir, device) if teacher_mode == "online" else None
    # The teacher's logits ride in every batch for the distilled mode; the independent mode ignores them, so
    # both modes see the very same batches in the very same order.
    train_set = CaseDataset(encoded["train"], labels["train"], None if online_teacher else t_logits["train"])
    val_set = CaseDataset(encoded["val"], labels["val"], t_logits["val"])
    entries, metric_frames, pred_frames, runs = [], [], [], []
    for name in students:
        spec = get_spec(name, model_overrides)
        for seed in seeds:
            for mode in MODES:
                start = time.perf_counter()
                model = build_model(spec, teacher=teacher, seed=seed)
                lr = student_lr if spec.init == "random" else student_lr_warm
                cfg = TrainConfig(epochs=student_epochs, lr=lr, batch_size=batch_size, seed=seed,
                                  selection_metric=selection_metric, class_weighted=class_weighted, device=device,
                                  progress=progress)
                model, history = train(model, train_set, val_set, cfg, mode=mode, alpha=alpha,
                                       temperature=temperature, teacher_model=online_teacher)
                out = save_model(model, run_dir / "models" / "students" / name / mode / f"seed{seed}", spec)
                history.insert(0, "seed", seed)
                history.insert(0, "mode", mode)
                history.insert(0, "model", name)
                write_csv(out / "history.csv", history)
                logits = {s: predict_logits(model, encoded[s], device=device) for s in ("val", "test")}
                entry = index_entry(name, "student", mode, seed, out, run_dir, model)
                metrics, preds = record(run_dir, entry, logits, labels, t_logits, splits["test"]["id"])
                seconds = time.perf_counter() - start
                val = metrics[metrics["split"] == "val"].iloc[0]
                best = history.loc[history["best"], "epoch"]
                print(f"{name:<22} {mode:<11} seed {seed}: val acc {val['accuracy']:.3f}  macro-F1 "
                      f"{val['macro_f1']:.3f}  agreement {val['agreement']:.3f}  best epoch "
                      f"{int(best.iloc[0]) if len(best) else '-'}  ({seconds:.0f} s)", flush=True)
                entries.append(entry)
                metric_frames.append(metrics)
                pred_frames.append(preds)
                runs.append({"model": name, "mode": mode, "seed": seed, "seconds": round(seconds, 2),
                             "best_epoch": int(best.iloc[0]) if len(best) else None})
    metrics, preds = pd.concat(metric_frames, ignore_index=True), pd.concat(pred_frames, ignore_index=True)
    replace_student_rows(run_dir, metrics, preds, students)
    index["students"] = entries
    write_index(run_dir, index)
    write_csv(run_dir / "models" / "student_runs.csv", pd.DataFrame(runs))
    gain = kd_gain_table(preds.astype({"id": str}), students, teacher_predictions(run_dir),
                         meaningful=not index["teacher_collapsed"], n_boot=bootstrap_n)
    write_csv(run_dir / "models" / "kd_gain.csv", gain)
    return {"metrics": metrics, "kd_gain": gain, "runs": pd.DataFrame(runs)}


def results_table(run_dir: str | Path, split: str = "test") -> pd.DataFrame:
    """Per model x mode: params and metrics as mean ± std over seeds (teacher rows first)."""
    m = pd.read_csv(Path(run_dir) / "models" / "metrics.csv")
    m = m[m["split"] == split]
    cols = ["accuracy", "macro_f1", "roc_auc", "ece", "agreement", "kl_to_teacher"]
    g = m.groupby(["model", "mode"], sort=False)
    mean, std = g[cols].mean(), g[cols].std(ddof=1).fillna(0.0)
    out = pd.DataFrame(index=mean.index)
    out["params_m"] = (g["params"].first() / 1e6).round(1)
    out["seeds"] = g["seed"].nunique()
    for c in cols:
        out[c] = [f"{a:.3f} ± {s:.3f}" if n > 1 else f"{a:.3f}" for a, s, n in zip(mean[c], std[c], out["seeds"])]
    out = out.reset_index()
    baselines = data_mod.load_data_card(run_dir)["baselines"]
    rows = [{"model": label, "mode": "baseline", **{c: f"{baselines[key][split][src]:.3f}" for c, src in
                                                     (("accuracy", "accuracy"), ("macro_f1", "macro_f1"),
                                                      ("roc_auc", "roc_auc"))}}
            for key, label in (("majority", "majority class"), ("tfidf_logreg", "TF-IDF + logistic regression"))]
    table = pd.concat([pd.DataFrame(rows), out], ignore_index=True)
    table["seeds"] = table["seeds"].astype("Int64").astype(str).replace("<NA>", "")
    table["params_m"] = table["params_m"].map(lambda v: "" if pd.isna(v) else f"{v:.1f}")
    return table[["model", "mode", "params_m", "seeds", *cols]].fillna("")
