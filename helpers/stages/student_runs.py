"""One student run and the pool that runs many: what every run of the student stage reads (loaded once per
process), training one job (`run_job`), and running a list of jobs in this process or a worker pool (`run_jobs`).

The student stage (helpers.stages.students), the weight selection (helpers.run.weights) and a launched process
(helpers.stages.worker) all train their runs through here.
"""
from __future__ import annotations

import queue
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from helpers.core.constants import BEYOND_ARMS, CHAIN_ARM, SPLITS, TRANSFER, TRANSFER_ARMS
from helpers.core.progress import quiet_worker
from helpers.core.run_folder import read_index, write_csv
from helpers.data import store as data_mod
from helpers.data.store import load_cases
from helpers.evaluation.metrics import classification_metrics
from helpers.models.build import build_model, load_model, save_model
from helpers.models.specs import get_spec
from helpers.parallel.launcher import launch_student
from helpers.training.checkpoints import index_entry
from helpers.training.datasets import CaseDataset, encode_splits
from helpers.training.internals import ARM_WEIGHT, ONLINE_ARMS, shape_of
from helpers.training.jobs import Job, job_folder
from helpers.training.loop import TrainConfig, predict_logits, train
from helpers.training.teacher_logits import load_teacher_logits, read_cached_logits


@dataclass
class Shared:
    """What every run of the stage reads: encoded cases, labels, teacher logits, datasets, vocabulary, teacher."""

    run_dir: Path
    settings: dict[str, Any]
    encoded: dict[str, list]
    labels: dict[str, np.ndarray]
    t_logits: dict[str, np.ndarray]
    keep_ids: list[int] | None
    teacher: Any
    online_teacher: Any
    train_set: CaseDataset
    val_set: CaseDataset
    transfer_set: CaseDataset | None  # the whole unlabelled pool (label -1) with its teacher logits
    teacher_maps: dict[str, np.ndarray] | None = None  # distilled_attribution: "k<width>" -> [n_train, max_len]

    def with_transfer(self, n: int | None = None) -> CaseDataset:
        """The labelled training cases followed by the first n transfer cases (n: the stage's transfer_n)."""
        n = self.settings["transfer_n"] if n is None else n
        labelled = CaseDataset(self.encoded["train"], self.labels["train"], self.t_logits["train"])
        if not n:
            return labelled
        pool = self.transfer_set
        return labelled.concat(CaseDataset(pool.encodings[:n], pool.labels[:n], pool.teacher_logits[:n]))


_SHARED: dict[str, Shared] = {}  # per process: loaded once by load_shared (the parent, or a worker's initializer)


def load_shared(run_dir: str | Path, settings: dict[str, Any]) -> Shared:
    """Load the stage's inputs once per process (tokenised cases, cached teacher logits, the teacher)."""
    run_dir = Path(run_dir)
    cases = load_cases(run_dir)
    encoded = encode_splits(cases, settings["max_len"])
    labels = {s: cases[s]["label"].to_numpy() for s in SPLITS}
    t_logits = load_teacher_logits(run_dir, cases, settings["max_len"])
    index = read_index(run_dir)
    teacher_dir = run_dir / index["teacher"]["path"]
    online = load_model(teacher_dir, settings["device"]) if settings["teacher_mode"] == "online" else None
    # The teacher's logits ride in every batch for the distilled arms; the independent arm ignores them, so both
    # see the very same batches in the very same order.
    train_set = CaseDataset(encoded["train"], labels["train"], None if online else t_logits["train"])
    pool = None
    if TRANSFER in encoded:
        n = len(encoded[TRANSFER])
        pool = CaseDataset(encoded[TRANSFER], np.full(n, -1), t_logits[TRANSFER])
    maps = read_cached_logits(run_dir / settings["teacher_maps"]) if settings.get("teacher_maps") else None
    shared = Shared(run_dir=run_dir, settings=settings, encoded=encoded, labels=labels, t_logits=t_logits,
                    keep_ids=data_mod.load_vocabulary(run_dir) if settings["trim_vocab"] else None,
                    teacher=load_model(teacher_dir, "cpu"), online_teacher=online, train_set=train_set,
                    val_set=CaseDataset(encoded["val"], labels["val"]), transfer_set=pool, teacher_maps=maps)
    _SHARED["stage"] = shared
    return shared


def init_worker(run_dir: str, settings: dict[str, Any], threads: int) -> None:
    quiet_worker(threads)
    load_shared(run_dir, settings)


def did_not_learn(val_logits: np.ndarray) -> str:
    """'' when the model uses more than one class on validation; else the reason it counts as not learned."""
    classes = np.unique(val_logits.argmax(axis=1))
    return "" if len(classes) > 1 else f"predicts class {int(classes[0])} for every validation case"


def run_job(job: Job, accelerator: Any = None) -> dict[str, Any] | None:
    """Train one run, save its checkpoint and history; score test when the run is final.

    In this process, or with the stage's `launcher: accelerate` under `accelerate launch` (helpers.parallel.launcher),
    which runs this function in every launched process with their `accelerator`: there only the main process saves
    and returns the run's results (the others return None).
    """
    sh = _SHARED["stage"]
    st = sh.settings
    if accelerator is None and st.get("launcher", "inprocess") == "accelerate":
        return launch_student(job, sh.run_dir, st)
    start = time.perf_counter()
    spec = get_spec(job.name, st["model_overrides"])
    model = build_model(spec, teacher=sh.teacher, seed=job.seed, keep_ids=sh.keep_ids,
                        num_labels=sh.teacher.config.num_labels)
    cfg = TrainConfig(max_steps=st["max_steps"], lr=job.lr, batch_size=st["batch_size"], seed=job.seed,
                      transfer_batch=st.get("transfer_batch", 0),
                      eval_every=st["eval_every"], patience=st["patience"], selection_metric=st["selection_metric"],
                      class_weighted=st["class_weighted"], device=st["device"], precision=st["precision"])
    if job.arm == CHAIN_ARM:  # the previous link's logits stand in for the teacher's (always from the cache)
        data = CaseDataset(sh.encoded["train"], sh.labels["train"],
                           read_cached_logits(sh.run_dir / job.link_logits)["train"])
    elif job.arm == "distilled_attribution":  # the teacher's token maps at this student's top-k width
        data = CaseDataset(sh.encoded["train"], sh.labels["train"], sh.train_set.teacher_logits,
                           sh.teacher_maps[f"k{map_width(model, sh.teacher)}"])
    else:
        data = sh.with_transfer(job.transfer_n) if job.arm in TRANSFER_ARMS else sh.train_set
    result = train(model, data, sh.val_set, cfg, mode=job.arm, alpha=st["alpha"], temperature=st["temperature"],
                   teacher_model=None if job.arm == CHAIN_ARM else sh.online_teacher, accelerator=accelerator,
                   inner_teacher=sh.teacher if job.arm in ONLINE_ARMS else None,
                   extra_weight=(st[ARM_WEIGHT[job.arm]] if job.weight is None else job.weight)
                   if job.arm in BEYOND_ARMS else 1.0)
    if accelerator is not None and not accelerator.is_main_process:
        return None
    out = save_model(result.model, job_folder(sh.run_dir, job), spec)
    history = result.history
    history.insert(0, "seed", job.seed)
    history.insert(0, "mode", job.arm)
    history.insert(0, "model", job.name)
    write_csv(out / "history.csv", history)
    scored = job.final or job.transfer_n is not None  # final runs and transfer-curve points (reported only)
    test = (predict_logits(result.model, sh.encoded["test"], device=st["device"], precision=st["precision"])
            if scored else None)
    return {"job": job, "path": out, "val_logits": result.val_logits, "test_logits": test,
            "entry": index_entry(job.name, "student", job.arm, job.seed, out, sh.run_dir, result.model),
            "val_metric": classification_metrics(result.val_logits, sh.labels["val"])[st["selection_metric"]],
            "val_accuracy": classification_metrics(result.val_logits, sh.labels["val"])["accuracy"],
            "row": {"model": job.name, "mode": job.arm, "seed": job.seed, "lr": job.lr,
                    "precision": st["precision"], "steps": result.steps, "best_step": result.best_step,
                    "stopped_early": result.stopped_early, "train_examples": result.train_examples,
                    "train_seconds": round(result.train_seconds, 3), "eval_seconds": round(result.eval_seconds, 3),
                    "seconds": round(time.perf_counter() - start, 2), "batch_digest": result.batch_digest,
                    "did_not_learn": did_not_learn(result.val_logits), "term": result.term}}


def run_jobs(jobs: list[Job], pool, label: str, on_done: Callable[[dict[str, Any]], list[Job]] | None = None,
              later: int = 0, slots: int = 1) -> list[dict[str, Any]]:
    """Run `jobs` (in the pool when given, at most `slots` at a time), printing one line per finished run with
    progress and time left.

    `on_done`, called in this process with each run's result as it finishes, returns the jobs that result unlocks
    (the next learning rate past a grid's edge, an arm's remaining seeds once its rate is chosen, a chain link once
    the previous link's model exists). Unlocked jobs go to the front of the queue: they lie on the path to the
    stage's end (a chain link waits for them), while the first trials keep the workers busy meanwhile. Every run is
    seeded, so the order changes when a result arrives, never what it is. `later` is the number of jobs expected to
    be unlocked, for the progress line.
    """
    out, start, expected = [], time.perf_counter(), len(jobs) + later
    done: queue.Queue = queue.Queue()
    backlog: deque[Job] = deque(jobs)
    running = 0

    def dispatch() -> None:
        nonlocal running
        while pool is not None and backlog and running < max(slots, 1):
            pool.apply_async(run_job, (backlog.popleft(),), callback=done.put, error_callback=done.put)
            running += 1

    dispatch()
    while backlog or running:
        if pool is None:
            res = run_job(backlog.popleft())
        else:
            res = done.get()
            running -= 1
        if isinstance(res, BaseException):
            raise res
        out.append(res)
        k, total = len(out), max(expected, len(out) + len(backlog) + running)
        r, elapsed = res["row"], time.perf_counter() - start
        left = elapsed / k * (total - k)
        job = res["job"]
        kind = "" if job.final else " (trial)" if job.transfer_n is None else f" (curve point, {job.transfer_n} cases)"
        lr = f"  lr {r['lr']:g}{'' if job.weight is None else f'  weight {job.weight:g}'}{kind}"
        print(f"[{label} {k}/{total}, {elapsed:.0f} s, ~{left:.0f} s left] {r['model']:<20} {r['mode']:<21} "
              f"seed {r['seed']}{lr}: val {res['val_metric']:.3f}  best step {r['best_step']}/{r['steps']}"
              f"{' (early stop)' if r['stopped_early'] else ''}  "
              f"{r['train_examples'] / max(r['train_seconds'], 1e-9):.0f} ex/s  ({r['seconds']:.0f} s)"
              f"{'  DID NOT LEARN: ' + r['did_not_learn'] if r['did_not_learn'] else ''}", flush=True)
        unlocked = on_done(res) if on_done is not None else []
        backlog.extendleft(reversed(unlocked))
        dispatch()
    return out


def map_width(student: Any, teacher: Any) -> int:
    """The top-k width of the teacher's token maps a student learns from: its own width, at most the teacher's."""
    return min(shape_of(student)[1], shape_of(teacher)[1])
