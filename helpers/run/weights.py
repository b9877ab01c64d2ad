"""The beyond-logit arms' term weights, chosen on validation: each arm retrained at its chosen learning rate with
other weights on the run's tuning seeds, the best mean validation metric kept, the grid grown past an edge."""
from __future__ import annotations

import multiprocessing as mp
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from helpers.core.constants import BEYOND_ARMS
from helpers.core.run_folder import project_path, read_json, write_csv
from helpers.parallel.plan import threads_each
from helpers.stages.student_runs import init_worker, load_shared, run_jobs
from helpers.training.internals import ARM_WEIGHT
from helpers.training.jobs import Job
from helpers.training.lr_search import ArmSearch


def _searches(run_dir: Path, weights: list[float], extensions: int
              ) -> tuple[list[ArmSearch], dict[tuple[str, str], float], dict[str, Any]]:
    """One weight search per student x beyond-logit arm of the run, seeded with the run's own trials at its weight;
    each arm's chosen learning rate; the stage's settings."""
    settings = read_json(run_dir / "models" / "student_settings.json")
    lr_path = run_dir / "models" / "lr_selection.csv"
    if not lr_path.exists():
        raise ValueError(f"{lr_path}: missing; run stage 03 with a beyond-logit arm first")
    lrs = pd.read_csv(lr_path)
    chosen = lrs[lrs["chosen"] & lrs["arm"].isin(BEYOND_ARMS)]
    if chosen.empty:
        raise ValueError(f"{lr_path}: no beyond-logit arm ({', '.join(BEYOND_ARMS)}) in this run; run the beyond "
                         f"profile (python -m helpers run --profile beyond) first")
    searches, rates = [], {}
    for (name, arm), rows in chosen.groupby(["model", "arm"], sort=False):
        current = float(settings[ARM_WEIGHT[arm]])
        s = ArmSearch(name, arm, sorted({*map(float, weights), current}), sorted(int(x) for x in rows["seed"]),
                      extensions)
        rates[(name, arm)] = float(rows["lr"].iloc[0])  # the arm's chosen rate: every weight trains at it
        for seed, score in zip(rows["seed"], rows["val_metric"]):
            s.record(current, int(seed), float(score))  # the stage's own trial at the current weight
        searches.append(s)
    return searches, rates, settings


def choose_weights(run_dir: str | Path, weights: list[float], extensions: int = 1) -> pd.DataFrame:
    """Retrain every beyond-logit arm of a finished run at its chosen rate with each of `weights` on the run's tuning
    seeds (its trials at the current weight are reused), keep the weight with the best mean validation metric
    (ties: the smaller weight), and grow the grid by one weight past an edge, at most `extensions` times.

    Validation data only: no test case is scored. Writes models/weight_selection.csv (one row per arm x weight x
    seed, like lr_selection.csv) and returns it. The weight is chosen at the rate chosen for the current weight, one
    coordinate at a time.
    """
    run_dir = Path(project_path(str(run_dir)))
    searches, rates, settings = _searches(run_dir, weights, extensions)
    metric = settings["selection_metric"]
    shared = load_shared(run_dir, settings)
    workers = 2  # side by side, threads // 2 each, as stage 03 trains on CPU
    arms = ", ".join(f"{s.name} {s.arm} (lr {rates[(s.name, s.arm)]:g})" for s in searches)
    print(f"weights {weights} for {arms} on seeds {searches[0].seeds}; validation {metric}; "
          f"{len(shared.train_set)} training cases", flush=True)

    def todo(s: ArmSearch, grid: list[float]) -> list[Job]:
        lr = rates[(s.name, s.arm)]
        return [Job(s.name, s.arm, seed, lr, final=False, weight=w) for w in grid for seed in s.seeds
                if (w, seed) not in s.scores]

    by_arm = {(s.name, s.arm): s for s in searches}
    trials: list[dict[str, Any]] = []

    def on_done(res: dict[str, Any]) -> list[Job]:
        job = res["job"]
        s = by_arm[(job.name, job.arm)]
        s.record(job.weight, job.seed, res["val_metric"])
        trials.append({"model": job.name, "arm": job.arm, "lr": job.lr, "weight": job.weight, "seed": job.seed,
                       "val_metric": res["val_metric"], "best_step": res["row"]["best_step"],
                       "steps": res["row"]["steps"], "seconds": res["row"]["seconds"]})
        wider = s.extend()
        if wider:
            print(f"{job.name} {job.arm}: best weight at the edge; trying {wider[0]:g}", flush=True)
        return todo(s, wider)

    pool = mp.get_context("spawn").Pool(workers, initializer=init_worker,
                                        initargs=(str(run_dir), settings, threads_each(settings["threads"], workers)))
    try:
        run_jobs([j for s in searches for j in todo(s, s.grid)], pool, "runs", on_done=on_done, slots=workers)
    finally:
        pool.close()
        pool.join()
        shutil.rmtree(run_dir / "models" / "students" / ".trials", ignore_errors=True)
    rows = []
    for s in searches:
        means, best = s.means(), s.best()
        for (w, seed), score in sorted(s.scores.items()):
            rows.append({"model": s.name, "arm": s.arm, "parameter": ARM_WEIGHT[s.arm],
                         "lr": rates[(s.name, s.arm)], "weight": w,
                         "seed": seed, "val_metric": score, "metric": metric, "mean_val_metric": means[w],
                         "current": w == float(settings[ARM_WEIGHT[s.arm]]), "chosen": w == best,
                         "chosen_at_edge": s.at_edge()})
        edge = " (at an edge of the weights tried)" if s.at_edge() else ""
        print(f"{s.name} {s.arm}: {ARM_WEIGHT[s.arm]} {best:g} chosen (mean validation {metric} {means[best]:.4f}; "
              + ", ".join(f"{w:g}: {means[w]:.4f}" for w in s.grid) + f"){edge}", flush=True)
    table = pd.DataFrame(rows)
    extra = pd.DataFrame(trials)
    if not extra.empty:
        table = table.merge(extra[["model", "arm", "weight", "seed", "best_step", "steps", "seconds"]],
                            on=["model", "arm", "weight", "seed"], how="left")
    write_csv(run_dir / "models" / "weight_selection.csv", table)
    return table
