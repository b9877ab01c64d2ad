"""Two run folders of one profile that differ in one setting (e.g. precision), compared per student x arm, paired."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from helpers.core.run_folder import read_json
from helpers.evaluation.metrics import class_probs, predicted_class, prob_columns
from helpers.evaluation.verdicts import paired_difference
from helpers.training.checkpoints import teacher_predictions


def _wide(run_dir: Path) -> pd.DataFrame:
    preds = pd.read_csv(run_dir / "models" / "predictions.csv", dtype={"id": str})
    return preds[~preds["mode"].isin(["teacher", "reference"])]


def compare_runs(run_a: str | Path, run_b: str | Path, n_boot: int = 200) -> pd.DataFrame:
    """Per student x arm: test accuracy and agreement with the run's own teacher in run B minus run A.

    Seeds pair the two runs (seed k of A with seed k of B, same cases), so the difference and its 95% t-interval
    (evaluation.paired_difference) say whether the changed setting moved a result by more than training noise.
    Rows also carry each run's verdict for the arm, to check whether the conclusion changed.
    """
    run_a, run_b = Path(run_a), Path(run_b)
    pa, pb = _wide(run_a), _wide(run_b)
    ta, tb = teacher_predictions(run_a), teacher_predictions(run_b)
    verdicts = {}
    for tag, run in (("a", run_a), ("b", run_b)):
        g = pd.read_csv(run / "models" / "kd_gain.csv", keep_default_na=False, na_values=[""])
        g = g[(g["metric"] == "accuracy") & (g["against"] == "independent")]
        verdicts[tag] = {(r.model, r.arm): r.verdict.split(":")[0] for r in g.itertuples()}
    lrs = {tag: _learning_rates(run) for tag, run in (("a", run_a), ("b", run_b))}
    rows = []
    for (model, mode), ga in pa.groupby(["model", "mode"], sort=False):
        gb = pb[(pb["model"] == model) & (pb["mode"] == mode)]
        if gb.empty:
            continue
        cols = prob_columns(ga)
        wa = ga.pivot_table(index="id", columns="seed", values=cols[0])
        wb = gb.pivot_table(index="id", columns="seed", values=cols[0]).loc[wa.index]
        seeds = sorted(set(wa.columns) & set(wb.columns))
        labels = ga.drop_duplicates("id").set_index("id").loc[wa.index, "label"].to_numpy()
        a, b = (np.stack([g.pivot_table(index="id", columns="seed", values=c).loc[wa.index, seeds].to_numpy().T
                          for c in cols], axis=-1).squeeze(-1) for g in (ga, gb))  # [seeds, n] or [seeds, n, K]
        if len(cols) == 1:  # two classes as K = 2
            a, b = class_probs(a), class_probs(b)
        acc = paired_difference(a, b, labels, labels, "accuracy", n_boot=n_boot)
        # agreement with each run's own teacher: score 1 where a model predicts its teacher's class
        agree_a = (predicted_class(a) == ta.loc[wa.index].to_numpy()).astype(float)
        agree_b = (predicted_class(b) == tb.loc[wa.index].to_numpy()).astype(float)
        ones = np.ones(len(labels), dtype=int)
        agr = paired_difference(agree_a, agree_b, ones, ones, "accuracy", n_boot=n_boot)
        rows.append({"model": model, "mode": mode, "seeds": len(seeds),
                     "accuracy_a": float(np.mean(predicted_class(a) == labels)),
                     "accuracy_b": float(np.mean(predicted_class(b) == labels)),
                     "accuracy_diff": acc["diff"], "accuracy_ci_low": acc["ci_low"], "accuracy_ci_high": acc["ci_high"],
                     "agreement_diff": agr["diff"], "agreement_ci_low": agr["ci_low"],
                     "agreement_ci_high": agr["ci_high"], "lr_a": lrs["a"].get((model, mode), np.nan),
                     "lr_b": lrs["b"].get((model, mode), np.nan), "verdict_a": verdicts["a"].get((model, mode), ""),
                     "verdict_b": verdicts["b"].get((model, mode), "")})
    return pd.DataFrame(rows)


def _learning_rates(run_dir: Path) -> dict[tuple[str, str], float]:
    """The learning rate each student x arm trained with (models/student_runs.csv; each arm chose it on validation)."""
    runs = pd.read_csv(run_dir / "models" / "student_runs.csv")
    return {(r.model, r.mode): float(r.lr) for r in runs.drop_duplicates(["model", "mode"]).itertuples()}


def confounds(table: pd.DataFrame) -> list[str]:
    """What else differs between the two runs of a `compare_runs` table, row by row: today the learning rate, which
    each arm of each run chooses for itself on its tuning seeds' validation split. Where it differs, the row measures
    that choice as well as the setting under comparison."""
    notes = []
    for r in table.itertuples():
        if not np.isclose(r.lr_a, r.lr_b, rtol=1e-9, atol=0.0):
            notes.append(f"{r.model} {r.mode}: learning rate {r.lr_a:g} in A, {r.lr_b:g} in B")
    if notes:
        notes.append("these rows compare the learning-rate choice as well as the setting; to compare the setting "
                     "alone, rerun A with B's learning rates (-p student_lr_grid [...] -p student_lr_grid_warm [...])")
    return notes


def precisions(run_a: str | Path, run_b: str | Path) -> tuple[str, str]:
    """The training precision each run recorded (teacher_metrics.json)."""
    return tuple(read_json(Path(r) / "models" / "teacher_metrics.json").get("precision", "fp32")
                 for r in (run_a, run_b))
