"""Stage 03: train every student in every arm (independent, distilled, transfer, chain), on identical seeds and
batches, and write the KD gain table."""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from helpers.core.constants import ARMS, BEYOND_ARMS, CHAIN_ARM, TRANSFER_ARMS
from helpers.core.device import pick_device
from helpers.core.params import StudentParams
from helpers.core.run_folder import read_index, read_json, write_csv, write_index, write_json
from helpers.data import store as data_mod
from helpers.data.store import load_cases
from helpers.evaluation.verdicts import kd_gain_table
from helpers.models.build import build_model, count_params, load_model
from helpers.models.specs import get_spec
from helpers.parallel.plan import execution, threads_each
from helpers.stages.student_runs import Shared, init_worker, load_shared, run_jobs
from helpers.training.checkpoints import index_entry, record, replace_student_rows, teacher_predictions, teacher_summary
from helpers.training.internals import shape_of
from helpers.training.jobs import Job, job_folder
from helpers.training.loop import predict_logits
from helpers.training.lr_search import ArmSearch
from helpers.training.lr_search import lr_table as lr_search_table
from helpers.training.precision import resolve_precision
from helpers.training.teacher_attributions import cache_teacher_maps
from helpers.training.teacher_logits import cache_teacher_logits, read_cached_logits

# A training step's cost relative to a distilled step (docs/performance.md: the transfer arms' steps carry twice the
# cases, a beyond-logit step costs 2-3x). Only the order in which the searches start reads it: the costliest start
# first, so the cheap arms' runs fill the stage's last minutes instead of one long search running alone. Every run is
# seeded, so the order never changes a result.
STEP_COST = {**{a: 2.0 for a in TRANSFER_ARMS}, **{a: 2.5 for a in BEYOND_ARMS}}


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

        pool = mp.get_context("spawn").Pool(workers, initializer=init_worker,
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
        done = run_jobs(jobs, pool, "runs", on_done=on_done, later=later, slots=workers)
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

        pool_ = mp.get_context("spawn").Pool(workers, initializer=init_worker,
                                             initargs=(str(run_dir), settings, threads_each(threads, workers)))
    try:
        results = run_jobs(jobs, pool_, "transfer curve", slots=workers)
    finally:
        if pool_ is not None:
            pool_.close()
            pool_.join()
        shutil.rmtree(run_dir / "models" / "students" / ".trials", ignore_errors=True)
    return _write_curve(run_dir, student, seeds, results, shared, settings["transfer_n"])
