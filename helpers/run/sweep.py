"""Parameter sweeps over the student stage: reuse the data and teacher, rerun 03 per combination."""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from helpers.config.profiles import defaults, parse_value
from helpers.config.resolve import resolve
from helpers.core.errors import ConfigError
from helpers.core.run_folder import project_path
from helpers.run.runner import discover_stages, find_stage, run, seed_run_folder


def combinations(grid: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Every combination of `-p name v1,v2` values, typed like the parameter's default."""
    known = defaults()
    axes: dict[str, list[Any]] = {}
    for name, text in grid:
        if name not in known:
            raise ConfigError(f"-p {name}: unknown parameter (known: {', '.join(sorted(known))})")
        if isinstance(known[name], list):
            values = [parse_value(name, part, known[name]) for part in text.split(";")]
        else:
            values = [parse_value(name, part, known[name]) for part in text.split(",")]
        axes[name] = values
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def slug(combo: dict[str, Any]) -> str:
    """Folder name of a combination, e.g. `alpha=0.3,temperature=4.0`."""
    return ",".join(f"{k}={v}" for k, v in combo.items()).replace(" ", "").replace("/", "_")


def sweep(grid: list[tuple[str, str]], profile: str = "default", param_file: str | None = None,
          fixed: list[tuple[str, str]] | None = None, data: str | None = None, run_dir: str | None = None,
          force: bool = False, verbose: bool = False) -> pd.DataFrame:
    """Run the student stage for each combination; write `sweep.csv` and `sweep.png` beside the runs.

    sweep.csv has one row per combination x student x arm x metric against `independent`, plus the chain's
    chain - distilled rows (`against` = distilled) when the chain arm ran. The chain arm is swept like any other:
    each combination retrains its links (their logits are cached per checkpoint, so nothing stale is reused), and a
    combination that changes `students` changes the chain itself. Parameters the chain ignores (transfer_n, ...)
    still retrain it, with identical results.
    """
    combos = combinations(grid)
    base = resolve(profile, param_file, fixed, data, run_dir)
    # Validate every combination before any work starts.
    resolved = [resolve(profile, param_file, [*(fixed or []), *((k, v) for k, v in c.items())], data, run_dir)
                for c in ({k: str(v) if not isinstance(v, list) else ",".join(map(str, v)) for k, v in c.items()}
                          for c in combos)]
    stages = discover_stages()
    student = find_stage(stages, "03")
    base_dir = Path(project_path(base["run_dir"]))
    print(f"sweep: {len(combos)} combinations; data and teacher from {base_dir}", flush=True)
    run(base, until=stages[student - 1].number, force=force, verbose=verbose)
    sweep_dir = base_dir.parent / f"{base_dir.name}-sweep"
    rows = []
    for combo, params in zip(combos, resolved):
        target = sweep_dir / slug(combo)
        params = dict(params, run_dir=str(target))
        seed_run_folder(base_dir, target, stages, student - 1)
        print(f"sweep: {slug(combo)} -> {target}", flush=True)
        run(params, until=stages[student].number, force=False, verbose=verbose)
        gain = pd.read_csv(target / "models" / "kd_gain.csv", keep_default_na=False, na_values=[""])
        metrics = pd.read_csv(target / "models" / "metrics.csv")
        val = metrics[metrics["split"] == "val"].groupby(["model", "mode"])["accuracy"].mean()
        chain_vs_direct = (gain["arm"] == "chain") & (gain["against"] == "distilled")
        for _, g in gain[(gain["against"] == "independent") | chain_vs_direct].iterrows():
            rows.append({**combo, "model": g["model"], "arm": g["arm"], "against": g["against"],
                         "metric": g["metric"],
                         "val_accuracy": val.get((g["model"], g["arm"])),
                         "independent": g["independent_mean"], "arm_value": g["arm_mean"],
                         "gain": g["diff"], "ci_low": g["ci_low"], "ci_high": g["ci_high"],
                         "p_adjusted": g["p_adjusted"]})
    table = pd.DataFrame(rows)
    if not table.empty:  # the best combination per student and arm is chosen on validation accuracy only
        best = table[(table["metric"] == "accuracy") & (table["against"] == "independent")] \
            .sort_values("val_accuracy", ascending=False, kind="stable").drop_duplicates(["model", "arm"])
        keys = ["model", "arm", "against", *combos[0]]
        chosen = {tuple(map(str, row)) for row in best[keys].to_numpy()}
        table["best_on_val"] = [tuple(map(str, row)) in chosen for row in table[keys].to_numpy()]
        for r in best.itertuples():
            print(f"sweep: best on validation for {r.model} {r.arm}: "
                  f"{', '.join(f'{k}={getattr(r, k)}' for k in combos[0])} (val accuracy {r.val_accuracy:.3f}; "
                  f"test gain {r.gain:+.3f}, reported only)", flush=True)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(sweep_dir / "sweep.csv", index=False)
    plot_sweep(table, list(combos[0]) if combos else []).savefig(sweep_dir / "sweep.png", bbox_inches="tight")
    print(f"sweep: table {sweep_dir / 'sweep.csv'}, plot {sweep_dir / 'sweep.png'}", flush=True)
    return table


def plot_sweep(table: pd.DataFrame, axes_names: list[str]) -> Figure:
    """Test accuracy and fidelity (agreement with the teacher) of every student arm per combination."""
    fig = Figure(figsize=(12, 4.5))
    axes = fig.subplots(1, 2)
    table = table[table["against"] == "independent"] if "against" in table else table
    table = table.assign(combination=table[axes_names].astype(str).agg(", ".join, axis=1) if axes_names else "",
                         line=table["model"] + " · " + table["arm"])
    for ax, metric, title in ((axes[0], "accuracy", "test accuracy per arm (reported only)"),
                              (axes[1], "agreement", "fidelity: agreement with the teacher")):
        sub = table[table["metric"] == metric].pivot_table(index="combination", columns="line", values="arm_value")
        sub.plot(ax=ax, marker="o")
        ax.set_title(title)
        ax.set_xlabel(" , ".join(axes_names))
        ax.set_ylabel(metric)
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig
