"""Replicate a finished run's verdicts: rerun the student stage with other seeds (or on another synthetic corpus) and
say, row by row, whether the two runs' verdicts agree."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from helpers.config.resolve import resolve
from helpers.core.errors import ConfigError
from helpers.core.run_folder import project_path, write_csv
from helpers.evaluation.verdicts import decided_sign
from helpers.run.runner import discover_stages, find_stage, run, seed_run_folder

VERDICT_FILE = "replication.csv"


def disjoint_seeds(seeds: list[int]) -> list[int]:
    """As many new seeds as the run used, all above its largest (seeds 0-4 -> 5-9)."""
    top = max(seeds)
    return list(range(top + 1, top + 1 + len(seeds)))


def decided(row: Any) -> int:
    """+1 or -1 when a kd_gain row's verdict decided a sign (the primary rows at Holm, the secondary ones unadjusted),
    0 when it did not (or the row is not comparable)."""
    if not bool(row.meaningful) or str(row.did_not_learn or ""):
        return 0
    if row.endpoint == "primary" and not np.isfinite(row.p_adjusted):
        return 0
    return decided_sign(row.ci_low, row.ci_high, row.p_adjusted if row.endpoint == "primary" else None)


def outcome(a: int, b: int) -> str:
    """How two decisions relate: both decided the same way, both undecided, opposite signs decided, or one of each."""
    word = {1: "helped", -1: "hurt", 0: "undecided"}
    if a == b:
        return f"agree: both {word[a]}"
    if a and b:
        return "contradict"
    return "one undecided"


def _gain(run_dir: Path) -> pd.DataFrame:
    path = run_dir / "models" / "kd_gain.csv"
    if not path.is_file():
        raise ConfigError(f"{path} not found: finish the run's student stage first (python -m helpers run "
                          f"--run-dir {run_dir} --until 03)")
    gain = pd.read_csv(path, keep_default_na=False, na_values=[""])
    gain["did_not_learn"] = gain["did_not_learn"].astype(object).fillna("")
    return gain


def compare_verdicts(run_a: str | Path, run_b: str | Path, metric: str = "accuracy") -> pd.DataFrame:
    """Per student x arm x reference: both runs' estimate, 95% interval and half-width, what each decided, and
    whether they agree, contradict (opposite signs decided) or one is undecided; `shift` is B - A."""
    keys = ["model", "arm", "against"]
    cols = ["diff", "ci_low", "ci_high", "ci_half_width", "decided"]
    tables = []
    for folder in (run_a, run_b):
        g = _gain(Path(folder))
        g = g[g["metric"] == metric].copy()
        g["decided"] = [decided(r) for r in g.itertuples()]
        tables.append(g[[*keys, "endpoint", *cols]])
    both = tables[0].merge(tables[1].drop(columns="endpoint"), on=keys, suffixes=("_a", "_b"))
    both["shift"] = both["diff_b"] - both["diff_a"]
    both["outcome"] = [outcome(a, b) for a, b in zip(both["decided_a"], both["decided_b"])]
    return both.rename(columns={"ci_half_width_a": "half_width_a", "ci_half_width_b": "half_width_b"})


def markdown(table: pd.DataFrame, label_a: str, label_b: str) -> str:
    """The agreement table as Markdown, one row per comparison."""
    lines = [f"| student | arm | vs | {label_a} [95% CI] | {label_b} [95% CI] | outcome |", "|---|---|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(f"| {r.model} | {r.arm} | {r.against} | {r.diff_a:+.3f} [{r.ci_low_a:+.3f}, {r.ci_high_a:+.3f}] | "
                     f"{r.diff_b:+.3f} [{r.ci_low_b:+.3f}, {r.ci_high_b:+.3f}] | {r.outcome} |")
    return "\n".join(lines)


def replicate(run_dir: str | Path, *, seeds: list[int] | None = None, synthetic_seed: int | None = None,
              out_dir: str | Path | None = None, overrides: list[tuple[str, str]] | None = None,
              force: bool = False, verbose: bool = False) -> pd.DataFrame:
    """Rerun a finished run's student stage with a disjoint seed set and compare the verdicts.

    Args:
        run_dir: a finished run folder (its params.yaml and models/kd_gain.csv are read).
        seeds: the replicate's student seeds (default: as many, above the run's largest: 0-4 -> 5-9).
        synthetic_seed: also draw a new synthetic corpus with this generator seed: data and teacher are then made
            anew (stages 01-03 run), so the comparison spans a new labelled training set, teacher and test set.
            Without it the run's data and teacher are reused (stage 03 only) and the comparison spans seeds.
        out_dir: the replicate's run folder (default: beside the run, named after what changed).
        overrides: more `-p NAME VALUE` changes (e.g. precision fp32).
    Writes replication.csv into the replicate's folder and returns it.
    """
    base_dir = Path(project_path(run_dir))
    param_file = base_dir / "params.yaml"
    if not param_file.is_file():
        raise ConfigError(f"{param_file} not found: {base_dir} is not a finished run folder")
    _gain(base_dir)
    base = resolve(None, param_file, None, None, str(base_dir))
    seeds = list(seeds) if seeds else disjoint_seeds(base["seeds"])
    if synthetic_seed is not None and base["data_path"]:
        raise ConfigError(f"--synthetic-seed: {base_dir} reads a real csv (data_path {base['data_path']}); a new "
                          f"corpus can only be drawn for the synthetic data")
    if synthetic_seed is not None and int(synthetic_seed) == int(base["synthetic_seed"]):
        raise ConfigError(f"--synthetic-seed {synthetic_seed}: the run already used that corpus; pick another seed")
    tag = f"corpus{synthetic_seed}" if synthetic_seed is not None else f"seeds{seeds[0]}-{seeds[-1]}"
    target = Path(project_path(out_dir)) if out_dir else base_dir.parent / f"{base_dir.name}-replicate-{tag}"
    changes: list[tuple[str, Any]] = [("seeds", seeds), ("transfer_curve", []), ("transfer_curve_seeds", seeds[:1]),
                                      ("attribution_seeds", seeds[:1]), ("bench_seeds", seeds[:1])]
    if synthetic_seed is not None:
        changes.append(("synthetic_seed", int(synthetic_seed)))
    params = resolve(None, param_file, [*changes, *(overrides or [])], None, str(target))
    stages = discover_stages()
    student = find_stage(stages, "03")
    # the run's finished stages are copied in; the runner reruns any whose parameters changed (a new corpus: all)
    seed_run_folder(base_dir, target, stages, student - 1)
    print(f"replicate of {base_dir}: seeds {seeds}" + (f", synthetic corpus seed {synthetic_seed} (data and teacher "
                                                       f"made anew)" if synthetic_seed is not None else
                                                       ", the run's data and teacher")
          + f", into {target}", flush=True)
    run(params, until=stages[student].number, force=force, verbose=verbose)
    table = compare_verdicts(base_dir, target)
    write_csv(target / VERDICT_FILE, table)
    print(markdown(table, f"{base_dir.name} (seeds {base['seeds'][0]}-{base['seeds'][-1]})",
                   f"replicate ({tag})"), flush=True)
    counts = table["outcome"].value_counts()
    print("; ".join(f"{k}: {v}" for k, v in counts.items()), flush=True)
    return table
