"""Stage 02: fine-tune the teacher (and a second-seed teacher for the noise ceiling), cache its logits."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from . import data as data_mod
from .checkpoints import index_entry, record
from .data import SPLITS, load_cases
from .evaluation import is_collapsed
from .models import build_model, get_spec, save_model
from .progress import Progress, QueueFile, relay
from .run_folder import write_csv, write_index, write_json
from .teacher_logits import cache_teacher_logits
from .training import CaseDataset, TrainConfig, encode_splits, predict_logits, resolve_precision, train


def fit_teacher(job: dict[str, Any], accelerator: Any = None) -> dict[str, Any] | None:
    """Fine-tune one teacher (the teacher or the ceiling teacher), save it, and score the splits it is read on.

    Runs in this process or in a worker process (then `job["threads"]` pins its torch threads and its progress
    lines go to `job["lines"]`, a queue the notebook prints from). The teacher scores every split and the
    transfer pool (its logits are cached for the students); the ceiling teacher scores val and test.
    Under `accelerate launch` (helpers.launcher) every process calls it with its `accelerator`; only the main
    process saves, scores and returns (the others return None).
    """
    if "threads" in job:
        torch.set_num_threads(job["threads"])
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    start = time.perf_counter()
    run_dir = Path(job["run_dir"])
    cases = load_cases(run_dir)
    encoded = encode_splits(cases, job["max_len"])
    labels = {s: cases[s]["label"].to_numpy() for s in SPLITS}
    spec = get_spec(job["teacher"], job["model_overrides"])
    model = build_model(spec, seed=job["seed"])
    out_file = QueueFile(job["lines"]) if job.get("lines") is not None else None
    bar = Progress(job["max_steps"], f"{job['role']} steps", file=out_file) if job["progress"] else None
    cfg = TrainConfig(max_steps=job["max_steps"], lr=job["lr"], batch_size=job["batch_size"], seed=job["seed"],
                      eval_every=job["eval_every"], patience=0, selection_metric=job["selection_metric"],
                      class_weighted=job["class_weighted"], device=job["device"], precision=job["precision"],
                      progress=bar)
    result = train(model, CaseDataset(encoded["train"], labels["train"]),
                   CaseDataset(encoded["val"], labels["val"]), cfg, mode="independent", accelerator=accelerator)
    if accelerator is not None and not accelerator.is_main_process:
        return None
    out = save_model(result.model, run_dir / "models" / job["folder"], spec)
    history = result.history
    history.insert(0, "seed", job["seed"])
    write_csv(out / "history.csv", history)
    scored = list(encoded) if job["role"] == "teacher" else ["val", "test"]
    logits = {s: (result.val_logits if s == "val" else
                  predict_logits(result.model, encoded[s], device=job["device"], precision=job["precision"]))
              for s in scored}
    mode = "teacher" if job["role"] == "teacher" else "ceiling"
    return {"role": job["role"], "entry": index_entry(job["teacher"], "teacher", mode, job["seed"], out, run_dir,
                                                      result.model),
            "history": history, "seconds": time.perf_counter() - start, "examples": result.train_examples,
            "train_seconds": result.train_seconds, "best_step": result.best_step,
            "logits": {k: v.astype(np.float32) for k, v in logits.items()}}


def run_teacher_stage(run_dir: str | Path, *, teacher: str, teacher_epochs: int, teacher_lr: float,
                      teacher_seed: int, ceiling_seed: int, batch_size: int, max_len: int,
                      class_weighted: bool = False, selection_metric: str = "macro_f1", device: str = "cpu",
                      precision: str = "auto", model_overrides: dict[str, str] | None = None,
                      progress: bool = True, workers: int = 1, threads: int = 2, launcher: str = "inprocess",
                      processes: int = 0) -> dict[str, Any]:
    """Fine-tune the teacher and the ceiling teacher, cache the teacher logits, write metrics and the index.

    The best epoch of each teacher is chosen on validation; `precision` (auto | fp32 | bf16) is resolved once and
    recorded in teacher_metrics.json, and the students of this run train in the same precision. With `workers` > 1
    (CPU) the two teachers train side by side in separate processes, `threads // workers` threads each. With
    `launcher` accelerate each teacher trains data-parallel in `processes` processes under `accelerate launch`
    (helpers.launcher; 0: accelerate's own config), one after the other, and the same files come back.
    """
    run_dir = Path(run_dir)
    precision = resolve_precision(precision, device)
    splits = load_cases(run_dir)
    card = data_mod.load_data_card(run_dir)
    encoded = encode_splits(splits, max_len)
    labels = {s: splits[s]["label"].to_numpy() for s in SPLITS}
    get_spec(teacher, model_overrides)  # an unknown spec fails here, before any process starts
    per_epoch = int(np.ceil(len(encoded["train"]) / batch_size))
    jobs = [{"run_dir": str(run_dir), "role": role, "seed": seed, "folder": folder, "teacher": teacher,
             "model_overrides": model_overrides or {}, "max_len": max_len, "batch_size": batch_size,
             "max_steps": teacher_epochs * per_epoch, "eval_every": per_epoch, "lr": teacher_lr,
             "selection_metric": selection_metric, "class_weighted": class_weighted, "device": device,
             "precision": precision, "progress": progress}
            for role, seed, folder in (("teacher", teacher_seed, "teacher"), ("ceiling", ceiling_seed,
                                                                               "teacher_ceiling"))]
    workers = max(1, int(workers)) if torch.device(device).type == "cpu" else 1
    if launcher == "accelerate":
        from .launcher import launch_teacher

        done = [launch_teacher(j, processes=processes, threads=threads) for j in jobs]
    elif workers > 1:  # the two teachers side by side, one thread each, their progress relayed to this notebook
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        with ctx.Manager() as manager, ctx.Pool(min(workers, len(jobs))) as pool:
            lines = manager.Queue()
            with relay(lines):
                threads_each = max(1, threads // min(workers, len(jobs)))
                done = pool.map(fit_teacher, [dict(j, threads=threads_each, lines=lines) for j in jobs])
        print(f"(the two teachers trained side by side in {min(workers, len(jobs))} processes, "
              f"{max(1, threads // min(workers, len(jobs)))} thread(s) each)", flush=True)
    else:
        done = [fit_teacher(j) for j in jobs]
    results = {d["role"]: d for d in done}
    entries = {role: d["entry"] for role, d in results.items()}
    histories = {role: d["history"] for role, d in results.items()}
    timings = {role: d["seconds"] for role, d in results.items()}
    for role, d in results.items():
        print(f"{role} ({teacher}, seed {d['entry']['seed']}): trained in {d['seconds']:.0f} s ({d['examples']} "
              f"examples, {d['examples'] / d['train_seconds']:.0f}/s in training steps, {precision}), best epoch "
              f"{d['best_step'] // per_epoch} of {teacher_epochs} (chosen on validation {selection_metric})",
              flush=True)
    logits_path, t_logits = cache_teacher_logits(run_dir, splits, encoded, max_len, device, precision,
                                                 computed=results["teacher"]["logits"])
    c_logits = results["ceiling"]["logits"]
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
