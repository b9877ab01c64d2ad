"""Run the numbered notebooks in order with papermill; skip stages whose inputs and parameters are unchanged."""
from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat

from helpers.config.profiles import write_params
from helpers.core.errors import ConfigError, DataError
from helpers.core.paths import REPO_ROOT
from helpers.core.run_folder import project_path
from helpers.data.schema import read_justice_csv
from helpers.run.estimate import estimate_text

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
HASH_EXCLUDED = {"run_dir", "profile"}  # where a run lives, and its label, don't change what a stage computes
INPUT_FILES = ("data_path", "transfer_path")  # CSV parameters checked before any stage starts
RUNNER_ENV = "DISTILLING_JUSTICE_RUNNER"  # set in a kernel the runner started (notebook_setup tells it apart)
QUIET_KERNEL = ["--IPKernelApp.log_level=ERROR"]  # drops the kernel's start-up warnings (plain TCP transport)

# Files each stage must leave behind for its manifest to count as complete (beyond the executed notebook).
STAGE_OUTPUTS: dict[str, list[str]] = {
    "01": ["data/train.csv", "data/val.csv", "data/test.csv", "data/data_card.json"],
    "02": ["models/teacher/model.safetensors", "models/teacher_metrics.json", "models/models.json",
           "models/metrics.csv", "models/predictions.csv"],
    "03": ["models/kd_gain.csv", "models/student_runs.csv"],
    "04": ["attributions/summary.csv", "attributions/per_example.csv", "attributions/agreement.csv",
           "attributions/contrasts.csv", "attributions/precision_plan.csv"],
    "05": ["summary.json", "report.html"],
}


class StageFailed(RuntimeError):
    """A notebook failed; the message names the notebook, the cell and the executed copy."""


@dataclass(frozen=True)
class Stage:
    """One numbered notebook."""

    number: str
    name: str
    path: Path
    outputs: tuple[str, ...] = ()  # files the stage must leave behind (run-folder relative)

    @property
    def label(self) -> str:
        return f"{self.number}_{self.name}"


def discover_stages(notebooks_dir: Path = NOTEBOOKS_DIR) -> list[Stage]:
    """The numbered notebooks `NN_name.ipynb`, in order."""
    stages = []
    for path in sorted(notebooks_dir.glob("[0-9][0-9]_*.ipynb")):
        number, _, name = path.stem.partition("_")
        stages.append(Stage(number, name, path, tuple(STAGE_OUTPUTS.get(number, []))))
    return stages


def find_stage(stages: list[Stage], key: str) -> int:
    """Index of the stage named by `key`: '2', '02', 'train_teacher' or '02_train_teacher'."""
    for i, s in enumerate(stages):
        if key in (s.number, s.name, s.label) or (key.isdigit() and int(key) == int(s.number)):
            return i
    raise ValueError(f"unknown stage {key!r}; stages: {', '.join(s.label for s in stages)}")


def parameter_cell(nb_path: Path) -> tuple[int, dict[str, Any]]:
    """Index and literal values of the one cell tagged `parameters` (a clear error otherwise)."""
    nb = nbformat.read(nb_path, as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        raise ValueError(f"{nb_path}: {len(tagged)} cells tagged 'parameters'; papermill needs exactly one")
    values: dict[str, Any] = {}
    for node in ast.parse(nb.cells[tagged[0]].source).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise ValueError(f"{nb_path}: the parameters cell may only hold `name = literal` lines")
        try:
            values[node.targets[0].id] = ast.literal_eval(node.value)
        except ValueError as err:
            raise ValueError(f"{nb_path}: parameter {node.targets[0].id} is not a literal") from err
    return tagged[0], values


def notebook_digest(nb_path: Path) -> str:
    """Hash of a notebook's cell sources (outputs and metadata don't matter)."""
    nb = nbformat.read(nb_path, as_version=4)
    return hashlib.sha256("\n\0".join(c.source for c in nb.cells).encode()).hexdigest()


def stage_params(stage: Stage, params: dict[str, Any]) -> dict[str, Any]:
    """The parameters a stage declares that change what it computes (run_dir and profile left out)."""
    _, declared = parameter_cell(stage.path)
    return {k: params[k] for k in sorted(declared) if k in params and k not in HASH_EXCLUDED}


def stage_hash(stage: Stage, params: dict[str, Any], upstream: str) -> str:
    """Hash of the stage's notebook, the parameters it declares, and the hash of the stage before it."""
    blob = json.dumps({"notebook": notebook_digest(stage.path), "params": stage_params(stage, params),
                       "upstream": upstream},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def manifest_path(run_dir: Path, stage: Stage) -> Path:
    return run_dir / "manifests" / f"{stage.label}.json"


def is_complete(run_dir: Path, stage: Stage, digest: str) -> bool:
    """The stage ran to the end with this hash and its outputs are all still there."""
    path = manifest_path(run_dir, stage)
    if not path.is_file():
        return False
    manifest = json.loads(path.read_text())
    outputs = manifest.get("outputs", [])
    return manifest.get("hash") == digest and all((run_dir / o).exists() for o in outputs)


def check_input_files(params: dict[str, Any], stages: list[Stage]) -> None:
    """ConfigError naming the parameter and file when a CSV a stage about to run reads is missing or unreadable."""
    declared = set().union(*(parameter_cell(s.path)[1] for s in stages)) if stages else set()
    for name in INPUT_FILES:
        value = params.get(name) or ""
        if not value or name not in declared:
            continue
        path = project_path(value)
        shown = f"{value} (= {path}, relative paths start at the project root)" if path != Path(value) else value
        try:
            read_justice_csv(Path(path))
        except DataError as err:
            raise ConfigError(f"parameter {name}: {str(err).replace(str(path), shown, 1)}") from None
        except OSError as err:
            raise ConfigError(f"parameter {name}: {shown}: cannot be read ({err.strerror})") from None


class _StdoutHandler(logging.StreamHandler):
    """Writes to sys.stdout as it is when a record comes (it may have been replaced since the handler was made)."""

    @property
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _configure_logging(verbose: bool) -> None:
    logger = logging.getLogger("papermill")
    if not logger.handlers:
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    # INFO is papermill's chatter (paths, `Executing Cell N`, every cell's text output); WARNING keeps its warnings.
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    logger.propagate = False


def _kernel_environment() -> None:
    # Find the `python3` kernel registered inside this environment before any user-level kernelspec.
    share = str(Path(sys.prefix) / "share" / "jupyter")
    paths = os.environ.get("JUPYTER_PATH", "")
    if share not in paths.split(os.pathsep):
        os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (share, paths) if p)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")


def execute_stage(stage: Stage, params: dict[str, Any], run_dir: Path, log_output: bool = True,
                  verbose: bool = False) -> Path:
    """Execute one notebook with papermill into `run_dir/notebooks/`; raise StageFailed with the failing cell.

    Args:
        log_output: stream the notebook's output to this process's stdout/stderr as it runs.
        verbose: stream papermill's log instead (`Executing Cell N`, every cell's text output, the kernel's own
            warnings); otherwise only what the notebook prints (and its warnings) is streamed.
    """
    import papermill as pm

    _, declared = parameter_cell(stage.path)
    out = run_dir / "notebooks" / stage.path.name
    out.parent.mkdir(parents=True, exist_ok=True)
    streams = ({"log_output": True} if verbose else
               {"log_output": False, "extra_arguments": QUIET_KERNEL,
                **({"stdout_file": sys.stdout, "stderr_file": sys.stderr} if log_output else {})})
    os.environ[RUNNER_ENV] = "1"  # inherited by the kernel papermill starts
    try:
        pm.execute_notebook(str(stage.path), str(out), parameters={k: params[k] for k in declared if k in params},
                            kernel_name="python3", progress_bar=False, cwd=str(REPO_ROOT),
                            request_save_on_cell_execute=True, **streams)
    except pm.PapermillExecutionError as err:
        cell = _failing_cell(stage.path, out, err.exec_count)
        shown = stage.path.relative_to(REPO_ROOT) if stage.path.is_relative_to(REPO_ROOT) else stage.path
        source = "\n".join(f"    {line}" for line in err.source.splitlines())
        raise StageFailed(f"notebook {shown} failed in cell {cell}: {err.ename}: {err.evalue}\n"
                          f"--- cell source ---\n{source}\n--- traceback ---\n{_plain_traceback(err.traceback)}\n"
                          f"executed copy: {out}") from None
    finally:
        os.environ.pop(RUNNER_ENV, None)
    return out


def _plain_traceback(lines: list[str]) -> str:
    """The kernel's traceback without its terminal colour codes."""
    return re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(lines)).rstrip()


def _failing_cell(source: Path, executed: Path, exec_count: int) -> str:
    """`#i (In [n])` of the failing cell, i counted in the committed notebook (0-based)."""
    try:
        nb = nbformat.read(executed, as_version=4)
        original = nbformat.read(source, as_version=4)
    except Exception:  # the executed copy may be unreadable after a kernel crash
        return f"[{exec_count}]"
    for c in nb.cells:
        if c.cell_type == "code" and c.get("execution_count") == exec_count:
            index = next((i for i, o in enumerate(original.cells) if o.source == c.source), "?")
            return f"#{index} (In [{exec_count}])"
    return f"[{exec_count}]"


def run(params: dict[str, Any], only: str | None = None, start: str | None = None, until: str | None = None,
        force: bool = False, log_output: bool = True, stages: list[Stage] | None = None,
        verbose: bool = False) -> list[dict[str, Any]]:
    """Run the stages in order (or `only` one, or `start` onwards); returns what happened to each.

    Input files (data_path, transfer_path) are checked before any stage starts. `log_output` streams each
    notebook's printed output; `verbose` streams papermill's full log instead (see execute_stage).
    """
    _configure_logging(verbose)
    _kernel_environment()
    stages = stages if stages is not None else discover_stages()
    if not stages:
        raise ValueError(f"no numbered notebooks in {NOTEBOOKS_DIR}")
    run_dir = Path(project_path(params["run_dir"]))
    first = find_stage(stages, only or start) if (only or start) else 0
    last = find_stage(stages, only or until) if (only or until) else len(stages) - 1
    plan, upstream, redo = [], "", False  # (index, stage, hash, runs?) of the stages in range
    for i, stage in enumerate(stages):
        digest = stage_hash(stage, params, upstream)
        upstream = digest
        if first <= i <= last:
            runs = force or redo or not is_complete(run_dir, stage, digest)
            redo = redo or runs  # once a stage reruns, every later stage reruns too
            plan.append((i, stage, digest, runs))
    check_input_files(params, [stage for _, stage, _, runs in plan if runs])
    expected = estimate_text(params, [stage.label[:2] for _, stage, _, runs in plan if runs])
    if expected:
        print(expected, flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_params(params, run_dir / "params.yaml")
    report = []
    total_start = time.perf_counter()
    for i, stage, digest, runs in plan:
        tag = f"[{i + 1}/{len(stages)}] {stage.label}"
        if not runs:
            print(f"{tag}: up to date, skipped", flush=True)
            report.append({"stage": stage.label, "status": "skipped"})
            continue
        manifest_path(run_dir, stage).unlink(missing_ok=True)
        print(f"{tag}: running ...", flush=True)
        t0 = time.perf_counter()
        executed = execute_stage(stage, params, run_dir, log_output=log_output, verbose=verbose)
        seconds = time.perf_counter() - t0
        outputs = [o for o in stage.outputs if (run_dir / o).exists()]
        missing = sorted(set(stage.outputs) - set(outputs))
        if missing:
            raise StageFailed(f"notebook {stage.path.name} finished but did not write {', '.join(missing)}\n"
                              f"executed copy: {executed}")
        manifest = {"stage": stage.label, "hash": digest, "seconds": round(seconds, 1),
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "outputs": [str(executed.relative_to(run_dir)), *outputs],
                    "params": stage_params(stage, params)}
        manifest_path(run_dir, stage).parent.mkdir(parents=True, exist_ok=True)
        manifest_path(run_dir, stage).write_text(json.dumps(manifest, indent=2))
        print(f"{tag}: done in {seconds:.0f} s", flush=True)
        report.append({"stage": stage.label, "status": "ran", "seconds": seconds})
    print(f"run folder {run_dir}: {time.perf_counter() - total_start:.0f} s in all", flush=True)
    return report


def seed_run_folder(base: Path, target: Path, stages: list[Stage], upto: int) -> None:
    """Copy the finished stages `0..upto` of `base` into a new run folder so they are reused, not recomputed."""
    target.mkdir(parents=True, exist_ok=True)
    for stage in stages[: upto + 1]:
        src = manifest_path(base, stage)
        if not src.is_file():
            return
        manifest = json.loads(src.read_text())
        for rel in manifest["outputs"]:
            _copy(base / rel, target / rel)
        dst = manifest_path(target, stage)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    for rel in ("data", "models/teacher", "models/teacher_logits",
                *(p.relative_to(base).as_posix() for p in sorted((base / "models").glob("teacher_reference_seed*")))):
        if (base / rel).exists():
            _copy(base / rel, target / rel)


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst, dirs_exist_ok=True)
    elif src.exists():
        shutil.copy2(src, dst)
