"""Is the run folder stale for this notebook? Compare its parameters with those the upstream stages ran with.

The runner records in `manifests/<stage>.json` the parameters each stage ran with. A notebook run by hand
(JupyterLab, or papermill directly) calls `check_run_folder` from its setup cell: a parameter that differs from
the value an earlier stage used is reported with the stage to rerun from. A hand run also records its own
parameters in its stage's manifest, without a hash: later notebooks compare against what this run used, and the
runner redoes this stage and every later one on its next run, since their files no longer match its hashes.
"""
from __future__ import annotations

import json
import os
import shlex
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from helpers.core.run_folder import project_path, write_json
from helpers.run.runner import (
    HASH_EXCLUDED,
    RUNNER_ENV,
    Stage,
    discover_stages,
    find_stage,
    manifest_path,
    parameter_cell,
)


def infer_stage(stages: list[Stage], names: set[str]) -> int | None:
    """Index of the stage whose declared parameters are all in `names` (the one declaring most, if several)."""
    fits = [(len(declared), i) for i, s in enumerate(stages)
            if (declared := set(parameter_cell(s.path)[1])) and declared <= names]
    return max(fits)[1] if fits else None


def _recorded(run_dir: Path, stage: Stage) -> dict[str, Any] | None:
    """The parameters a stage's manifest says it ran with; params.yaml for manifests from before they were recorded."""
    path = manifest_path(run_dir, stage)
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if "params" in manifest:
        return manifest["params"]
    import yaml

    params_file = run_dir / "params.yaml"
    if not params_file.is_file():
        return None
    everything = yaml.safe_load(params_file.read_text(encoding="utf-8")) or {}
    return {k: everything[k] for k in parameter_cell(stage.path)[1] if k in everything and k not in HASH_EXCLUDED}


def _cli_value(value: Any) -> str:
    if isinstance(value, list):
        return shlex.quote(",".join(str(v) for v in value))
    if isinstance(value, dict):
        return shlex.quote(json.dumps(value))
    return shlex.quote(str(value).lower() if isinstance(value, bool) else str(value))


def check_run_folder(run_dir: str | Path, params: Mapping[str, Any], stage: str | None = None, *,
                     record: bool | None = None) -> list[str]:
    """Print (and return) one warning per parameter this notebook sets differently from an upstream stage.

    Args:
        run_dir: the run folder (relative paths start at the project root).
        params: the notebook's variables, e.g. `globals()`; only its declared parameters are read.
        stage: the notebook's stage ("02"); by default, the stage whose declared parameters are all in `params`.
        record: write this run's parameters into its stage's manifest (hash removed); default: unless the runner
            started this kernel (it writes the manifest itself when the stage ends).
    """
    stages = discover_stages()
    current = find_stage(stages, stage) if stage else infer_stage(stages, set(params))
    if current is None:
        print("note: cannot tell which stage this notebook is (pass stage='NN' to setup); run folder not checked")
        return []
    run = Path(project_path(run_dir))
    me = stages[current]
    mine = {k: params[k] for k in parameter_cell(me.path)[1] if k in params and k not in HASH_EXCLUDED}
    stale: dict[str, tuple[Stage, Any]] = {}
    for upstream in stages[:current]:
        for name, used in (_recorded(run, upstream) or {}).items():
            if name in mine and name not in stale and mine[name] != used:
                stale[name] = (upstream, used)
    warnings = [f"WARNING: run folder {run_dir} is stale for parameter {name}: stage {up.label} used {used!r}, this "
                f"notebook has {mine[name]!r}; rerun from stage {up.number}, or set {name} = {used!r} here"
                for name, (up, used) in stale.items()]
    if warnings:
        first = min(up.number for up, _ in stale.values())
        command = ["python -m helpers run"]
        if (run / "params.yaml").is_file():
            command.append(f"-f {shlex.quote(str(run / 'params.yaml'))}")
        command += [f"--run-dir {shlex.quote(str(run_dir))} --from {first}",
                    *(f"-p {n} {_cli_value(mine[n])}" for n in stale)]
        warnings.append(f"         to rebuild it with this notebook's values: {' '.join(command)}")
    for line in warnings:
        print(line, flush=True)
    if record is None:
        record = not os.environ.get(RUNNER_ENV)
    if record and (run.is_dir() or current == 0):  # a mistyped run_dir gets no folder
        _record(run, me, mine)
    return warnings


def _record(run: Path, stage: Stage, used: dict[str, Any]) -> None:
    """Record a hand run with other values than the stage's files were made with: no hash, so the runner redoes it."""
    before = _recorded(run, stage)
    if before == used:
        return  # the stage's files were made with these values (by the runner or an earlier hand run)
    changed = {k: (before.get(k), v) for k, v in used.items() if before is not None and before.get(k) != v}
    write_json(manifest_path(run, stage), {"stage": stage.label, "hash": None, "run_by_hand": True, "params": used,
                      "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
    if changed:
        what = ", ".join(f"{k}={new!r} (was {old!r})" for k, (old, new) in changed.items())
        print(f"note: stage {stage.label} runs by hand with {what}; later notebooks compare with these values, and "
              f"the runner will redo stage {stage.number} onwards", flush=True)
