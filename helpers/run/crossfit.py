"""Cross-fitting: every labelled case is a test case once, scored by a teacher and students that never trained on it,
so all the cases count in one verdict table instead of a test split's share of them."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from helpers.core.errors import ConfigError
from helpers.core.run_folder import project_path, read_index, write_csv, write_json
from helpers.data.store import load_data_card
from helpers.evaluation.metrics import predicted_class, probabilities
from helpers.evaluation.verdicts import kd_gain_table
from helpers.run.runner import run
from helpers.training.checkpoints import teacher_predictions

POOLED = "crossfit"  # the pooled folder's suffix: <run_dir>-crossfit/kd_gain.csv


def fold_dir(run_dir: str | Path, fold: int) -> Path:
    """The run folder of one fold: <run_dir>-fold<k>."""
    run_dir = Path(run_dir)
    return run_dir.parent / f"{run_dir.name}-fold{fold}"


def pool_folds(fold_dirs: list[Path], out_dir: Path, n_boot: int = 1000) -> dict[str, Any]:
    """One verdict table over every fold's test cases: each fold's student and teacher predictions joined (their
    case ids must be disjoint), then the same paired two-way interval and Holm family as a single run
    (evaluation.verdicts.kd_gain_table). A student seed pools that seed's fold models, so the seed-to-seed term
    spans training draws across folds. Writes out_dir/kd_gain.csv and out_dir/crossfit.json; returns both."""
    preds, teacher, runs, cards, students, collapsed = [], [], [], [], None, False
    for d in fold_dirs:
        if not (d / "models" / "kd_gain.csv").is_file():
            raise ConfigError(f"{d / 'models' / 'kd_gain.csv'} not found: fold {d.name} has not finished stage 03")
        index = read_index(d)
        names = [e["name"] for e in index["students"]]
        students = list(dict.fromkeys(names)) if students is None else students
        collapsed = collapsed or bool(index["teacher_collapsed"])
        p = pd.read_csv(d / "models" / "predictions.csv", dtype={"id": str})
        preds.append(p[p["model"].isin(students)])
        teacher.append(teacher_predictions(d))
        r = pd.read_csv(d / "models" / "student_runs.csv", keep_default_na=False)
        runs.append(r.assign(fold=d.name))
        t = p[(p["model"] == index["teacher"]["name"]) & (p["mode"] == "teacher")]
        cards.append({"fold": d.name, "card": load_data_card(d), "teacher_correct": int(
            (predicted_class(probabilities(t)) == t["label"].to_numpy()).sum()), "n_test": len(t)})
    ids = pd.concat([t.index.to_series() for t in teacher])
    if ids.duplicated().any():
        raise ConfigError(f"folds {', '.join(d.name for d in fold_dirs)} share test cases "
                          f"({int(ids.duplicated().sum())} ids): they were not split by one cross-fitting plan "
                          f"(same data, split_seed and cv_folds)")
    all_preds, all_runs = pd.concat(preds, ignore_index=True), pd.concat(runs, ignore_index=True)
    gain = kd_gain_table(all_preds, students, pd.concat(teacher), meaningful=not collapsed, n_boot=n_boot,
                         runs=all_runs)
    n = sum(c["n_test"] for c in cards)
    tfidf = sum(c["card"]["baselines"]["tfidf_logreg"]["test"]["accuracy"] * c["n_test"] for c in cards) / n
    summary = {"folds": [d.name for d in fold_dirs], "n_test_cases": n,
               "teacher_test_accuracy": sum(c["teacher_correct"] for c in cards) / n,
               "tfidf_test_accuracy": tfidf, "teacher_collapsed_in_a_fold": collapsed}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "kd_gain.csv", gain)
    write_json(out_dir / "crossfit.json", summary)
    return {"kd_gain": gain, "summary": summary}


def crossfit(params: dict[str, Any], folds: int, *, force: bool = False, verbose: bool = False) -> dict[str, Any]:
    """Run stages 01-03 once per fold (`cv_folds` = folds, `cv_fold` = k, each fold in <run_dir>-fold<k>, teachers
    and students trained per fold), then pool the folds' test predictions (pool_folds) into <run_dir>-crossfit/.

    Costs `folds` times the profile's stages 01-03; a finished fold is skipped like any finished stage.
    """
    if folds < 2:
        raise ConfigError(f"--folds {folds}: cross-fitting needs at least 2 folds")
    if params.get("test_n"):
        params = {**params, "test_n": 0}  # the test split is one fold
    run_dir = Path(project_path(params["run_dir"]))
    dirs = [fold_dir(run_dir, k) for k in range(folds)]
    for k, d in enumerate(dirs):
        print(f"=== cross-fitting fold {k + 1} of {folds}: test = fold {k}, run folder {d}", flush=True)
        run({**params, "cv_folds": folds, "cv_fold": k, "run_dir": str(d)}, until="03", force=force,
            verbose=verbose)
    out = run_dir.parent / f"{run_dir.name}-{POOLED}"
    pooled = pool_folds(dirs, out, n_boot=int(params["bootstrap_n"]))
    gain, s = pooled["kd_gain"], pooled["summary"]
    print(f"\ncross-fitted over {folds} folds: {s['n_test_cases']} test cases, each scored by models that never "
          f"trained on it; teacher test accuracy {s['teacher_test_accuracy']:.3f}, TF-IDF "
          f"{s['tfidf_test_accuracy']:.3f}", flush=True)
    acc = gain[gain["metric"] == "accuracy"]
    for r in acc.itertuples():
        p = f"Holm p {r.p_adjusted:.2g}" if np.isfinite(r.p_adjusted) else f"p {r.p_value:.2g} unadjusted"
        print(f"  {r.model} {r.arm} vs {r.against}: {r.diff:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}] "
              f"(+/-{(r.ci_high - r.ci_low) / 2:.3f}; {p}): {r.verdict}", flush=True)
    print(f"written: {out / 'kd_gain.csv'}, {out / 'crossfit.json'}", flush=True)
    return pooled
