"""Stage 03: train every student in every arm (independent, distilled, transfer, chain), on identical seeds and
batches, and write the KD gain table."""
from __future__ import annotations

import queue
import shutil
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from helpers.core.constants import ARMS, BEYOND_ARMS, CHAIN_ARM, SPLITS, TRANSFER, TRANSFER_ARMS
from helpers.core.device import pick_device
from helpers.core.params import StudentParams
from helpers.core.progress import quiet_worker
from helpers.core.run_folder import read_index, read_json, write_csv, write_index, write_json
from helpers.data import store as data_mod
from helpers.data.store import load_cases
from helpers.evaluation.metrics import classification_metrics
from helpers.evaluation.verdicts import kd_gain_table
from helpers.models.build import build_model, count_params, load_model, save_model
from helpers.models.specs import get_spec
from helpers.parallel.launcher import launch_student
from helpers.parallel.plan import execution, threads_each
from helpers.training.checkpoints import index_entry, record, replace_student_rows, teacher_predictions, teacher_summary
from helpers.training.datasets import CaseDataset, encode_splits
from helpers.training.internals import ARM_WEIGHT, ONLINE_ARMS, shape_of
from helpers.training.jobs import Job, job_folder
from helpers.training.loop import TrainConfig, predict_logits, train
from helpers.training.lr_search import ArmSearch
from helpers.training.lr_search import lr_table as lr_search_table
from helpers.training.precision import resolve_precision
from helpers.training.teacher_attributions import cache_teacher_maps
from helpers.training.teacher_logits import cache_teacher_logits, load_teacher_logits, read_cached_logits


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


# A training step's cost relative to a distilled step (docs/performance.md: the transfer arms' steps carry twice the
# cases, a beyond-logit step costs 2-3x). Only the order in which the searches start reads it: the costliest start
# first, so the cheap arms' runs fill the stage's last minutes instead of one long search running alone. Every run is
# seeded, so the order never changes a result.
STEP_COST = {**{a: 2.0 for a in TRANSFER_ARMS}, **{a: 2.5 for a in BEYOND_ARMS}}

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


def _init_worker(run_dir: str, settings: dict[str, Any], threads: int) -> None:
    quiet_worker(threads)
    load_shared(run_dir, settings)


def _did_not_learn(val_logits: np.ndarray) -> str:
    """'' when the model uses more than one class on validation; else the reason it counts as not learned."""
    classes = np.unique(val_logits.argmax(axis=1))
    return "" if len(classes) > 1 else f"predicts class {int(classes[0])} for every validation case"


def run_job(job: Job, accelerator: Any = None) -> dict[str, Any] | None:
    """Train one run, save its checkpoint and history; score test when the run is final.

    In this process, or with the stage's `launcher: accelerate` under `accelerate launch` (helpers.parallel.launcher),
    which
    runs this function in every launched process with their `accelerator`: there only the main process saves and
    returns the run's results (the others return None).
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
                    "did_not_learn": _did_not_learn(result.val_logits), "term": result.term}}


def _run_jobs(jobs: list[Job], pool, label: str, on_done: Callable[[dict[str, Any]], list[Job]] | None = None,
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


def step_budget(n_train: int, p: StudentParams) -> int:
    """Every student run's step cap: `student_max_passes` passes over the labelled training cases (the budget follows
    the data), at most `student_max_steps` when that is set; early stopping on validation decides within it."""
    by_passes = int(np.ceil(p.student_max_passes * np.ceil(n_train / p.batch_size)))
    return min(by_passes, p.student_max_steps) if p.student_max_steps else by_passes


def chain_order(sizes: dict[str, int]) -> list[str]:
    """The chain's links: students from the largest parameter count to the smallest (ties keep the given order)."""
    return sorted(sizes, key=lambda name: -sizes[name])


def student_sizes(students: list[str], shared: Shared, model_overrides: dict[str, str] | None = None
                  ) -> dict[str, int]:
    """Parameters of each student as it is trained (after vocabulary trimming), built once from its spec."""
    return {name: count_params(build_model(get_spec(name, model_overrides), teacher=shared.teacher,
                                           keep_ids=shared.keep_ids))[0] for name in students}


def cache_link_logits(shared: Shared, link_teacher: str | Path) -> Path:
    """The training-split logits of a chain link's teacher (a student checkpoint), computed once and cached in
    models/chain_logits/ by the teacher-logit cache (keyed by that checkpoint and the data); returns the file."""
    st = shared.settings
    train_cases = {"train": load_cases(shared.run_dir)["train"]}
    path, _ = cache_teacher_logits(shared.run_dir, train_cases, {"train": shared.encoded["train"]}, st["max_len"],
                                   st["device"], st["precision"], teacher_dir=link_teacher, folder="chain_logits")
    return path


def run_student_stage(p: StudentParams) -> dict[str, Any]:
    """Train each student x arm x seed to a shared step budget; write checkpoints, metrics, predictions, KD gains.

    Args:
        arms: subset of training.ARMS; `independent` is always trained (every gain is measured against it).
            `chain` (needs `distilled`) distils each student from the previous, larger one: students ordered by
            parameter count, the first from the teacher, so its chain runs are its distilled runs (not retrained);
            every later student learns from the previous link's first-seed chain model, whose training-split logits
            are cached once (models/chain_logits/), with the same loss, budget, seeds and learning rate as its
            distilled arm. The links are written to models/chain.csv.
        transfer_students: students that get the transfer arms ([] or None: all students).
        transfer_n: transfer-pool cases the transfer arms use (the first n of data/transfer.csv).
        student_lr_grid, student_lr_grid_warm: learning rates tried on the first seed for random-init students and
            for students
            that start from teacher layers or pretrained weights; the one with the best mean validation
            `selection_metric` over the independent and distilled arms is used for every arm and seed of that student.
        transfer_curve, transfer_curve_seeds: extra transfer-pool sizes (multiples of the labelled training set) for
            one student's distilled_transfer curve (curve_student), trained on those seeds in the same worker pool
            as the stage's runs; writes models/transfer_curve.csv ([] or None: no curve, the file is removed).
        precision: must resolve to the teacher's precision (teacher_metrics.json): one precision per run.
        workers: training processes run side by side (CPU only), each with threads // workers torch threads; every
            run is seeded, so the results do not depend on which worker ran it.
        launcher, processes: `accelerate` runs each training run data-parallel in `processes` processes under
            `accelerate launch` (helpers.parallel.launcher; 0: accelerate's own config) and reads back the same files;
            `inprocess` trains here (or in the `workers` pool).
    Every decision (learning rate, best step, early stop, did-not-learn) reads validation data; test logits are
    computed once per final checkpoint and only reported.
    """
    run_dir = p.run_dir
    arms = p.arms
    transfer_students = p.transfer_students
    device = str(pick_device(p.device))
    precision = p.precision
    run_dir = Path(run_dir)
    precision = resolve_precision(precision, device)
    teacher_precision = teacher_summary(run_dir).get("precision", "fp32")
    if precision != teacher_precision:
        raise ValueError(f"parameter precision: the students would train in {precision} but the teacher of "
                         f"{run_dir} trained in {teacher_precision}; rerun from stage 02 so one precision holds")
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise ValueError(f"parameter arms: unknown arm(s) {unknown} (known: {', '.join(ARMS)})")
    arms = ["independent", *[a for a in ARMS[1:] if a in arms]]
    if CHAIN_ARM in arms and "distilled" not in arms:
        raise ValueError("parameter arms: chain needs distilled (the chain's first link is direct distillation, and "
                         "every chain student is compared with its distilled arm)")
    if any(a in BEYOND_ARMS for a in arms) and "distilled" not in arms:
        raise ValueError("parameter arms: the beyond-logit arms need distilled (each adds one term to its loss and is "
                         "compared with it)")
    transfer = data_mod.load_transfer(run_dir)
    pool_size = 0 if transfer is None else len(transfer)
    if any(a in TRANSFER_ARMS for a in arms) and (pool_size == 0 or p.transfer_n == 0):
        why = ("the run has no transfer pool (pass --transfer PATH for real data)" if pool_size == 0
               else "transfer_n is 0")
        print(f"transfer arms skipped: {why}", flush=True)
        arms = [a for a in arms if a not in TRANSFER_ARMS]
    n_transfer = min(p.transfer_n, pool_size) if any(a in TRANSFER_ARMS for a in arms) else 0
    settings = {"max_len": p.max_len, "device": device, "teacher_mode": p.teacher_mode, "trim_vocab": p.trim_vocab,
                "transfer_n": n_transfer, "model_overrides": p.model_overrides or {},
                "max_steps": 0, "transfer_batch": p.transfer_batch,  # max_steps: set from the cases below
                "batch_size": p.batch_size, "eval_every": p.eval_every, "patience": p.patience,
                "selection_metric": p.selection_metric, "class_weighted": p.class_weighted, "precision": precision,
                "alpha": p.alpha, "temperature": p.temperature, "launcher": p.launcher, "processes": p.processes,
                "threads": p.threads, "hidden_weight": p.hidden_weight, "attention_weight": p.attention_weight,
                "attribution_weight": p.attribution_weight, "teacher_maps": ""}
    shared = load_shared(run_dir, settings)
    if "distilled_attribution" in arms:  # the teacher's token maps, once per training case, before any worker starts
        settings["teacher_maps"] = _cache_maps(shared, p, device)
        shared.teacher_maps = read_cached_logits(run_dir / settings["teacher_maps"])
    settings["max_steps"] = step_budget(len(shared.train_set), p)  # shared holds this dict: workers start after
    write_json(run_dir / "models" / "student_settings.json", settings)
    if n_transfer:
        print(f"transfer arms on {n_transfer} unlabelled cases ({n_transfer / len(shared.train_set):.1f}x the "
              f"labelled training set)", flush=True)
    transfer_students = list(transfer_students or p.students)
    links: list[str] = []
    if CHAIN_ARM in arms:
        sizes = student_sizes(p.students, shared, p.model_overrides)
        links = chain_order(sizes)
        if len(links) < 2:
            print("chain arm skipped: it needs two students or more (with one, the chain is direct distillation)",
                  flush=True)
            arms, links = [a for a in arms if a != CHAIN_ARM], []
        else:
            print(f"chain: teacher -> {' -> '.join(f'{n} ({sizes[n] / 1e6:.2f}M)' for n in links)}; {links[0]} "
                  f"learns from the teacher (its chain runs are its distilled runs), each later student from the "
                  f"previous one's seed-{p.seeds[0]} chain model", flush=True)
    specs = {name: get_spec(name, p.model_overrides) for name in p.students}
    grids = {name: (p.student_lr_grid if specs[name].init == "random" else p.student_lr_grid_warm)
             for name in p.students}
    tune_seeds, rest_seeds = list(p.seeds[:p.lr_tune_seeds]), list(p.seeds[p.lr_tune_seeds:])
    _, workers = execution(p.launcher, device, p.workers)
    pool = None
    if workers > 1:
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker,
                                            initargs=(str(run_dir), settings, threads_each(p.threads, workers)))
        print(f"{workers} training processes, {threads_each(p.threads, workers)} thread(s) each", flush=True)
    print(f"every arm of every student chooses its own learning rate on validation {p.selection_metric}, the mean "
          f"over seeds {', '.join(map(str, tune_seeds))} (grids: {', '.join(f'{n} {grids[n]}' for n in p.students)}; "
          f"up to {p.student_lr_extend} more rate(s) past an edge where the best one sits); the trial runs at the "
          f"chosen rate are those seeds' runs", flush=True)
    staging = run_dir / "models" / "students" / ".trials"
    searches: dict[tuple[str, str], ArmSearch] = {}
    trials: list[dict[str, Any]] = []
    promoted: dict[tuple[str, str, int], dict[str, Any]] = {}  # the chosen rate's trials, now final runs
    chain_rows: list[dict[str, Any]] = []
    curve_name = curve_student(p.students, arms, transfer_students) if p.transfer_curve else None
    curve_seeds = list(p.transfer_curve_seeds or p.seeds[:1])

    def start_search(name: str, arm: str, link_logits: str | None = None) -> list[Job]:
        s = ArmSearch(name, arm, list(grids[name]), tune_seeds, p.student_lr_extend, link_logits=link_logits)
        searches[(name, arm)] = s
        return [Job(name, arm, seed, lr, final=False, link_logits=link_logits) for lr in s.grid for seed in s.seeds]

    def promote(t: dict[str, Any]) -> dict[str, Any]:
        """A trial at the chosen rate becomes that seed's final run: moved into place, scored on test once."""
        job = t["job"]
        final = Job(job.name, job.arm, job.seed, job.lr, final=True, link_logits=job.link_logits)
        target = job_folder(run_dir, final)
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        t["path"].rename(target)
        model = load_model(target, device)
        return {**t, "job": final, "path": target,
                "entry": index_entry(job.name, "student", job.arm, job.seed, target, run_dir, model),
                "test_logits": predict_logits(model, shared.encoded["test"], device=device, precision=precision)}

    def unlock_link(k: int, source: Path) -> list[Job]:
        """Link k's learning-rate search, once its teacher (the previous link's first-seed model) exists."""
        path = cache_link_logits(shared, source)
        rel = path.relative_to(run_dir).as_posix()
        chain_rows.append({"link": k + 1, "model": links[k], "teacher": links[k - 1],
                           "teacher_mode": "distilled" if k == 1 else CHAIN_ARM, "teacher_seed": p.seeds[0],
                           "teacher_path": source.relative_to(run_dir).as_posix(), "logits": rel})
        return start_search(links[k], CHAIN_ARM, link_logits=rel)

    def on_done(res: dict[str, Any]) -> list[Job]:
        job = res["job"]
        if job.final or job.transfer_n is not None:  # a final run or a curve point: nothing waits on it
            return []
        trials.append(res)
        s = searches[(job.name, job.arm)]
        s.record(job.lr, job.seed, res["val_metric"])
        if not s.complete():
            return []
        wider = s.extend()
        if wider:
            print(f"{job.name} {job.arm}: best rate at the edge of {[f'{g:g}' for g in s.grid if g not in wider]}; "
                  f"trying {wider[0]:g}", flush=True)
            return [Job(job.name, job.arm, seed, wider[0], final=False, link_logits=s.link_logits)
                    for seed in s.seeds]
        lr = s.best()
        edge = " (still at an edge of the rates tried)" if s.at_edge() else ""
        print(f"{job.name} {job.arm}: learning rate {lr:g} chosen (mean validation {p.selection_metric} "
              f"{s.means()[lr]:.3f} over seeds {', '.join(map(str, s.seeds))}; tried "
              f"{', '.join(f'{g:g}' for g in s.grid)}){edge}", flush=True)
        for t in trials:
            if (t["job"].name, t["job"].arm) == (job.name, job.arm) and t["job"].lr == lr:
                promoted[(job.name, job.arm, t["job"].seed)] = promote(t)
        out = [Job(job.name, job.arm, seed, lr, final=True, link_logits=s.link_logits) for seed in rest_seeds]
        k = links.index(job.name) + 1 if job.name in links else 0
        if 0 < k < len(links) and job.arm == ("distilled" if k == 1 else CHAIN_ARM):
            out += unlock_link(k, promoted[(job.name, job.arm, p.seeds[0])]["path"])
        if job.name == curve_name and job.arm == "distilled_transfer":
            out += _curve_jobs(curve_name, list(p.transfer_curve), curve_seeds, lr, len(shared.train_set),
                               len(shared.transfer_set), n_transfer)
        return out

    try:
        jobs = [j for n in p.students for arm in arms if arm != CHAIN_ARM
                and (arm not in TRANSFER_ARMS or n in transfer_students) for j in start_search(n, arm)]
        jobs.sort(key=lambda j: -STEP_COST.get(j.arm, 1.0))  # the costliest searches first (see STEP_COST)
        later = sum(len(p.seeds) - len(tune_seeds) for _ in searches) + (len(links) - 1) * len(p.seeds)
        done = _run_jobs(jobs, pool, "runs", on_done=on_done, later=later, slots=workers)
        finals = [r for r in done if r["job"].final] + list(promoted.values())
        curve_runs = [r for r in done if not r["job"].final and r["job"].transfer_n is not None]
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        shutil.rmtree(staging, ignore_errors=True)
    lr_table = lr_search_table(list(searches.values()), trials, p.selection_metric)

    order = {(n, a, s): i for i, (n, s, a) in enumerate((n, s, a) for n in p.students for s in p.seeds for a in arms)}
    finals.sort(key=lambda f: order.get((f["job"].name, f["job"].arm, f["job"].seed), len(order)))
    index = read_index(run_dir)
    entries, metric_frames, pred_frames, runs = [], [], [], []
    test_ids = load_cases(run_dir)["test"]["id"]
    for f in finals:
        metrics, preds = record(f["entry"], {"val": f["val_logits"], "test": f["test_logits"]},
                                shared.labels, shared.t_logits, test_ids)
        entries.append(f["entry"])
        metric_frames.append(metrics)
        pred_frames.append(preds)
        runs.append({**f["row"], "lr": f["job"].lr, "workers": workers})
    metrics, preds = pd.concat(metric_frames, ignore_index=True), pd.concat(pred_frames, ignore_index=True)
    replace_student_rows(run_dir, metrics, preds, p.students)
    index["students"] = entries
    index["precision"] = precision
    write_index(run_dir, index)
    runs = pd.DataFrame(runs)
    write_csv(run_dir / "models" / "student_runs.csv", runs)
    _write_chain(run_dir, links, chain_rows, index)
    lr_path = run_dir / "models" / "lr_selection.csv"
    if lr_table is not None:
        write_csv(lr_path, lr_table)
    else:
        lr_path.unlink(missing_ok=True)
    gain = kd_gain_table(preds.astype({"id": str}), p.students, teacher_predictions(run_dir),
                         meaningful=not index["teacher_collapsed"], n_boot=p.bootstrap_n, runs=runs)
    write_csv(run_dir / "models" / "kd_gain.csv", gain)
    curve = None
    if curve_name is not None:
        curve = _write_curve(run_dir, curve_name, curve_seeds, curve_runs, shared, n_transfer)
    else:
        (run_dir / "models" / "transfer_curve.csv").unlink(missing_ok=True)
    return {"metrics": metrics, "kd_gain": gain, "runs": runs, "lr_selection": lr_table, "transfer_curve": curve}


def _cache_maps(shared: Shared, p: StudentParams, device: str) -> str:
    """Cache the teacher's token maps for every student width of the run (from the stage's own tokens and teacher);
    the cache file's run-folder path."""
    t_width = shape_of(shared.teacher)[1]
    widths = sorted({min(get_spec(n, p.model_overrides).hidden, t_width) for n in p.students})
    start = time.perf_counter()
    path, _ = cache_teacher_maps(shared.run_dir, load_cases(shared.run_dir)["train"], shared.encoded["train"],
                                 p.max_len, widths, device)
    print(f"teacher token maps (gradient x input, top-k of {widths} dimensions) for {len(shared.encoded['train'])} "
          f"training cases: {path.relative_to(shared.run_dir)} ({time.perf_counter() - start:.0f} s, or read from "
          f"the cache)", flush=True)
    return path.relative_to(shared.run_dir).as_posix()


def curve_student(students: list[str], arms: list[str], transfer_students: list[str] | None) -> str | None:
    """The student whose transfer curve is drawn: the last transfer student (None without distilled_transfer)."""
    name = (list(transfer_students or []) or students)[-1]
    return name if name in students and "distilled_transfer" in arms else None


def _curve_jobs(student: str, multiples: list[float], seeds: list[int], lr: float, n_train: int, pool: int,
                transfer_n: int) -> list[Job]:
    """Trial runs for the curve's extra points (0 and the stage's own transfer_n are the arms already trained)."""
    sizes = sorted({min(int(round(m * n_train)), pool) for m in multiples})
    return [Job(student, "distilled_transfer", seed, lr, final=False, transfer_n=n)
            for n in sizes if n not in (0, transfer_n) for seed in seeds]


def _write_curve(run_dir: Path, student: str, seeds: list[int], results: list[dict[str, Any]], shared: Shared,
                 transfer_n: int) -> pd.DataFrame:
    """models/transfer_curve.csv: the curve's trial points plus the distilled (0) and distilled_transfer arms."""
    metrics = pd.read_csv(run_dir / "models" / "metrics.csv")
    rows = []
    for arm, n in (("distilled", 0), ("distilled_transfer", transfer_n)):
        done = metrics[(metrics["model"] == student) & (metrics["mode"] == arm) & metrics["seed"].isin(seeds)]
        for r in done.itertuples():
            rows.append({"transfer_n": n, "seed": r.seed, "split": r.split, "accuracy": r.accuracy})
    for res in results:
        job = res["job"]
        rows.append({"transfer_n": job.transfer_n, "seed": job.seed, "split": "val", "accuracy": res["val_accuracy"]})
        rows.append({"transfer_n": job.transfer_n, "seed": job.seed, "split": "test",
                     "accuracy": float((res["test_logits"].argmax(1) == shared.labels["test"]).mean())})
    curve = pd.DataFrame(rows)
    curve.insert(0, "model", student)
    curve["multiple_of_train"] = (curve["transfer_n"] / len(shared.train_set)).round(2)
    curve = curve.sort_values(["transfer_n", "split", "seed"]).reset_index(drop=True)
    write_csv(run_dir / "models" / "transfer_curve.csv", curve)
    return curve


def _write_chain(run_dir: Path, links: list[str], rows: list[dict[str, Any]], index: dict[str, Any]) -> None:
    """models/chain.csv: one row per link (who taught whom, from which cached logits); drop stale link logits."""
    path, cache = run_dir / "models" / "chain.csv", run_dir / "models" / "chain_logits"
    if not links:
        path.unlink(missing_ok=True)
        shutil.rmtree(cache, ignore_errors=True)
        return
    params = {e["name"]: e["params"] for e in index["students"]}
    first = {"link": 1, "model": links[0], "teacher": index["teacher"]["name"], "teacher_mode": "teacher",
             "teacher_seed": int(index["teacher"]["seed"]), "teacher_path": index["teacher"]["path"],
             "logits": "models/teacher_logits/"}
    table = pd.DataFrame([first, *sorted(rows, key=lambda r: r["link"])])
    sizes = {**params, index["teacher"]["name"]: index["teacher"]["params"]}
    table.insert(2, "params", [sizes[m] for m in table["model"]])
    table.insert(4, "teacher_params", [sizes[t] for t in table["teacher"]])
    write_csv(path, table)
    used = {Path(p).name for p in table["logits"]}
    for f in cache.glob("*.safetensors"):  # logits of checkpoints an earlier run of the stage trained
        if f.name not in used:
            f.unlink()


def transfer_curve(run_dir: str | Path, *, student: str, multiples: list[float], seeds: list[int],
                   workers: int = 1, threads: int = 2) -> pd.DataFrame:
    """Accuracy of one student's distilled_transfer arm against the transfer-pool size, in multiples of the labelled
    training set (0: the distilled arm itself; the stage's own transfer_n is reused, not retrained).

    Stage 03 draws this curve itself (`transfer_curve` parameter, in its own worker pool); this function redraws it
    for other sizes or seeds from a finished stage. Runs with the stage's saved settings (learning rate from
    lr_selection, budget, precision); each extra point is a trial run whose checkpoint is discarded. Writes
    models/transfer_curve.csv. The test column is reported only; nothing is chosen from this curve.
    """
    run_dir = Path(run_dir)
    settings = read_json(run_dir / "models" / "student_settings.json")
    runs = pd.read_csv(run_dir / "models" / "student_runs.csv", keep_default_na=False)
    mine = runs[runs["model"] == student]
    if mine.empty or "distilled_transfer" not in set(mine["mode"]):
        raise ValueError(f"student {student!r} has no distilled_transfer runs in {run_dir}: add it to "
                         f"transfer_students and rerun stage 03")
    shared = load_shared(run_dir, settings)
    pool_size = 0 if shared.transfer_set is None else len(shared.transfer_set)
    jobs = _curve_jobs(student, multiples, seeds, float(mine["lr"].iloc[0]), len(shared.train_set), pool_size,
                       settings["transfer_n"])
    pool_ = None
    _, workers = execution(settings.get("launcher", "inprocess"), settings["device"], workers)
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        pool_ = mp.get_context("spawn").Pool(workers, initializer=_init_worker,
                                             initargs=(str(run_dir), settings, threads_each(threads, workers)))
    try:
        results = _run_jobs(jobs, pool_, "transfer curve", slots=workers)
    finally:
        if pool_ is not None:
            pool_.close()
            pool_.join()
        shutil.rmtree(run_dir / "models" / "students" / ".trials", ignore_errors=True)
    return _write_curve(run_dir, student, seeds, results, shared, settings["transfer_n"])
