"""Stage 02: fine-tune the teacher (and teachers retrained with other seeds: the reference), cache its logits."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from helpers.core.constants import SPLITS
from helpers.core.device import pick_device
from helpers.core.params import TeacherParams
from helpers.core.progress import Progress, QueueFile, quiet_worker, relay
from helpers.core.run_folder import write_csv, write_index, write_json
from helpers.data import store as data_mod
from helpers.data.store import load_cases
from helpers.evaluation.metrics import is_collapsed
from helpers.models.build import build_model, load_model, save_model
from helpers.models.specs import get_spec
from helpers.parallel.launcher import launch_teacher
from helpers.parallel.plan import execution, threads_each
from helpers.training.checkpoints import index_entry, record
from helpers.training.datasets import CaseDataset, encode, encode_splits
from helpers.training.loop import TrainConfig, predict_logits, train
from helpers.training.precision import resolve_precision
from helpers.training.teacher_logits import cache_teacher_logits


def fit_teacher(job: dict[str, Any], accelerator: Any = None) -> dict[str, Any] | None:
    """Fine-tune one teacher (the teacher or a reference teacher) and save it; its validation logits come back.

    Runs in this process or in a worker process (then `job["threads"]` pins its torch threads and its progress
    lines go to `job["lines"]`, a queue the notebook prints from). The other splits are scored afterwards, in
    chunks shared out over the workers (score_chunk). Under `accelerate launch` (helpers.parallel.launcher)
    every process
    calls it with its `accelerator`; only the main process saves and returns (the others return None).
    """
    if "threads" in job:
        quiet_worker(job["threads"])
    start = time.perf_counter()
    run_dir = Path(job["run_dir"])
    cases = load_cases(run_dir)
    encoded = encode_splits({s: cases[s] for s in ("train", "val")}, job["max_len"])
    labels = {s: cases[s]["label"].to_numpy() for s in ("train", "val")}
    spec = get_spec(job["teacher"], job["model_overrides"])
    model = build_model(spec, seed=job["seed"], num_labels=len(data_mod.load_classes(run_dir)["classes"]),
                        keep_ids=job["keep_ids"])
    out_file = QueueFile(job["lines"]) if job.get("lines") is not None else None
    label = f"{job['role']} (seed {job['seed']}) steps"
    bar = Progress(job["max_steps"], label, file=out_file) if job["progress"] else None
    cfg = TrainConfig(max_steps=job["max_steps"], lr=job["lr"], batch_size=job["batch_size"], seed=job["seed"],
                      eval_every=job["eval_every"], patience=job["patience"], selection_metric=job["selection_metric"],
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
    mode = "teacher" if job["role"] == "teacher" else "reference"
    return {"role": job["role"], "folder": job["folder"],
            "entry": index_entry(job["teacher"], "teacher", mode, job["seed"], out, run_dir, result.model),
            "history": history, "seconds": time.perf_counter() - start, "examples": result.train_examples,
            "train_seconds": result.train_seconds, "best_step": result.best_step, "steps": result.steps,
            "val_logits": result.val_logits.astype(np.float32)}


_LOADED: dict[str, Any] = {}  # per process: the checkpoint score_chunk last loaded, and the run's cases


def score_chunk(chunk: dict[str, Any]) -> np.ndarray:
    """Logits of rows [start, stop) of one split for one saved teacher (checkpoint and cases read once per process)."""
    if "threads" in chunk:
        quiet_worker(chunk["threads"])
    folder = chunk["folder"]
    if _LOADED.get("folder") != folder:
        _LOADED.update(folder=folder, model=load_model(folder, chunk["device"]))
    if _LOADED.get("run_dir") != chunk["run_dir"]:
        _LOADED.update(run_dir=chunk["run_dir"], cases=load_cases(chunk["run_dir"]))
    texts = _LOADED["cases"][chunk["split"]]["text"].iloc[chunk["start"]:chunk["stop"]]
    return predict_logits(_LOADED["model"], encode(texts.tolist(), chunk["max_len"]), device=chunk["device"],
                          precision=chunk["precision"]).astype(np.float32)


def score_chunks(run_dir: Path, wanted: dict[str, list[str]], sizes: dict[str, int], *, max_len: int,
                 device: str, precision: str, pool: Any = None, threads: int = 0,
                 chunk: int = 500) -> dict[str, dict[str, np.ndarray]]:
    """{folder: {split: logits}} for each saved teacher folder and its splits, scored in chunks of `chunk` rows
    spread over `pool` (None: in this process); every split is scored once per checkpoint. Pass a pool started for
    this call: its processes keep the checkpoint and cases they loaded."""
    jobs = [{"run_dir": str(run_dir), "folder": str(run_dir / "models" / folder), "split": split, "start": a,
             "stop": min(a + chunk, sizes[split]), "max_len": max_len, "device": device, "precision": precision,
             **({"threads": threads} if pool is not None else {})}
            for folder, splits in wanted.items() for split in splits for a in range(0, sizes[split], chunk)]
    _LOADED.clear()  # in this process: never a checkpoint or cases from an earlier call (a rerun in the same kernel)
    parts = pool.map(score_chunk, jobs, chunksize=1) if pool is not None else [score_chunk(j) for j in jobs]
    _LOADED.clear()
    out: dict[str, dict[str, list[np.ndarray]]] = {}
    for j, logits in zip(jobs, parts):
        out.setdefault(Path(j["folder"]).name, {}).setdefault(j["split"], []).append(logits)
    return {f: {s: np.concatenate(v) for s, v in d.items()} for f, d in out.items()}


def run_teacher_stage(p: TeacherParams, *, progress: bool = True) -> dict[str, Any]:
    """Fine-tune the teacher and the reference teachers, cache the teacher logits, write metrics and the index.

    The best epoch of each teacher is chosen on validation; `precision` (auto | fp32 | bf16) is resolved once and
    recorded in teacher_metrics.json, and the students of this run train in the same precision. With `workers` > 1
    (CPU) the teachers train side by side in separate processes, `threads // workers` threads each. With
    `launcher` accelerate each teacher trains data-parallel in `processes` processes under `accelerate launch`
    (helpers.parallel.launcher; 0: accelerate's own config), one after the other, and the same files come back.
    With `trim_vocab` each teacher keeps only the word-embedding rows of the wordpieces the run's texts use
    (data/vocab.json; token ids unchanged, other wordpieces map to [UNK]): on every text of the run it computes
    what the full model would, while AdamW stops updating ~30k rows no case looks up.
    """
    run_dir = Path(p.run_dir)
    device = str(pick_device(p.device))
    precision = resolve_precision(p.precision, device)
    splits = load_cases(run_dir)
    card = data_mod.load_data_card(run_dir)
    encoded = encode_splits(splits, p.max_len)
    labels = {s: splits[s]["label"].to_numpy() for s in SPLITS}
    get_spec(p.teacher, p.model_overrides)  # an unknown spec fails here, before any process starts
    per_epoch = int(np.ceil(len(encoded["train"]) / p.batch_size))
    jobs = [{"run_dir": str(run_dir), "role": role, "seed": seed, "folder": folder, "teacher": p.teacher,
             "model_overrides": p.model_overrides or {}, "max_len": p.max_len, "batch_size": p.batch_size,
             "max_steps": p.teacher_epochs * per_epoch, "eval_every": per_epoch, "lr": p.teacher_lr,
             "patience": p.teacher_patience,
             "selection_metric": p.selection_metric, "class_weighted": p.class_weighted, "device": device,
             "precision": precision, "progress": progress,
             "keep_ids": data_mod.load_vocabulary(run_dir) if p.trim_vocab else None}
            for role, seed, folder in [("teacher", p.teacher_seed, "teacher"),
                                       *(("reference", s, reference_folder(s)) for s in p.reference_seeds)]]
    mode, workers = execution(p.launcher, device, p.workers)
    # The teacher's logits are needed on every split and the transfer pool (the students read them); the reference
    # teachers' on val and test. Validation logits come from training (its best step); the rest is scored once.
    wanted = {"teacher": [s for s in encoded if s != "val"],
              **{reference_folder(s): ["test"] for s in p.reference_seeds}}
    sizes = {s: len(e) for s, e in encoded.items()}
    score_args = {"max_len": p.max_len, "device": device, "precision": precision}
    if mode == "accelerate":
        done = [launch_teacher(j, processes=p.processes, threads=p.threads) for j in jobs]
        scored = score_chunks(run_dir, wanted, sizes, **score_args)
    elif mode == "pool":  # the teachers side by side, one thread each, their progress relayed to this notebook
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        n_proc = min(workers, len(jobs))
        per_process = threads_each(p.threads, n_proc)
        with ctx.Manager() as manager, ctx.Pool(n_proc) as pool:
            lines = manager.Queue()
            with relay(lines):
                done = pool.map(fit_teacher, [dict(j, threads=per_process, lines=lines) for j in jobs])
            scored = score_chunks(run_dir, wanted, sizes, pool=pool, threads=per_process, **score_args)
        print(f"(the {len(jobs)} teachers trained side by side in {n_proc} processes, {per_process} thread(s) each; "
              f"their splits scored in chunks over the same processes)" if len(jobs) > 1 else
              f"(the teacher trained in a worker process with {per_process} thread(s); its splits scored in chunks)",
              flush=True)
    else:
        done = [fit_teacher(j) for j in jobs]
        scored = score_chunks(run_dir, wanted, sizes, **score_args)
    results = {d["folder"]: d for d in done}
    for folder, d in results.items():
        d["logits"] = {"val": d["val_logits"], **scored[folder]}
    entries = {folder: d["entry"] for folder, d in results.items()}
    histories = {folder: d["history"] for folder, d in results.items()}
    timings = {folder: d["seconds"] for folder, d in results.items()}
    for d in results.values():
        print(f"{d['role']} ({p.teacher}, seed {d['entry']['seed']}): trained in {d['seconds']:.0f} s ({d['examples']} "
              f"examples, {d['examples'] / d['train_seconds']:.0f}/s in training steps, {precision}), best epoch "
              f"{d['best_step'] // per_epoch} of {-(-d['steps'] // per_epoch)}"
              f"{f' (stopped early; at most {p.teacher_epochs})' if d['steps'] < p.teacher_epochs * per_epoch else ''}"
              f" (chosen on validation {p.selection_metric})",
              flush=True)
    logits_path, t_logits = cache_teacher_logits(run_dir, splits, encoded, p.max_len, device, precision,
                                                 computed=results["teacher"]["logits"])
    metrics, preds = record(entries["teacher"], t_logits, labels, None, splits["test"]["id"])
    references = [reference_folder(s) for s in p.reference_seeds]
    recorded = [record(entries[f], results[f]["logits"], labels, t_logits, splits["test"]["id"]) for f in references]
    r_cols = ["accuracy", "macro_f1", "roc_auc", "agreement", "kl_to_teacher"]
    r_test = (pd.concat([m[m["split"] == "test"] for m, _ in recorded], ignore_index=True) if recorded
              else pd.DataFrame(columns=["seed", *r_cols]))  # reference_seeds []: no reference teacher
    t_test = metrics[metrics["split"] == "test"].iloc[0].to_dict()
    t_val = metrics[metrics["split"] == "val"].iloc[0].to_dict()
    base = card["baselines"]
    # The collapse gate reads validation: a teacher no better than the majority class there is not distilled from.
    collapsed = is_collapsed(t_val, base["majority"]["val"]["accuracy"])
    share = "positive_rate" if "positive_rate" in t_val else "top_class_share"  # two classes | K classes
    summary = {
        "teacher": entries["teacher"], "references": [entries[f] for f in references],
        "val": {k: t_val[k] for k in ("accuracy", "macro_f1", "roc_auc", "ece", share)},
        "test": {k: t_test[k] for k in ("accuracy", "macro_f1", "roc_auc", "ece", share)},
        # the teacher retrained with other seeds, on test: the mean over the reference seeds, and each seed
        "reference_test": r_test[r_cols].mean().to_dict() if recorded else {},
        "reference_test_per_seed": [{"seed": int(r["seed"]), **{k: r[k] for k in r_cols}}
                                    for r in r_test.to_dict("records")],
        "collapsed": collapsed, "collapse_gate_split": "val",
        "precision": precision, "trim_vocab": bool(p.trim_vocab),
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
    all_metrics = pd.concat([metrics, *(m for m, _ in recorded)], ignore_index=True)
    write_csv(run_dir / "models" / "metrics.csv", all_metrics)
    write_csv(run_dir / "models" / "predictions.csv", pd.concat([preds, *(pr for _, pr in recorded)],
                                                               ignore_index=True))
    write_index(run_dir, {"teacher": entries["teacher"], "teacher_references": [entries[f] for f in references],
                          "teacher_collapsed": collapsed, "students": []})
    if collapsed:
        print(f"WARNING: the teacher collapsed: validation accuracy {t_val['accuracy']:.3f} does not beat the "
              f"majority class ({base['majority']['val']['accuracy']:.3f}) or it predicts one class only "
              f"({share.replace('_', ' ')} {t_val[share]:.2f}). Distillation comparisons will be marked not "
              f"meaningful.")
    return {"summary": summary, "metrics": all_metrics,
            "history": pd.concat(histories.values(), keys=histories.keys(), names=["folder", None]).reset_index(0)}


def reference_folder(seed: int) -> str:
    """The folder under models/ of the teacher retrained with `seed` (a reference teacher)."""
    return f"teacher_reference_seed{int(seed)}"
