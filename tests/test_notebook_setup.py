"""A notebook run by hand: relative paths start at the project root wherever the kernel starts, and a run folder
made with other parameter values is reported stale."""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import nbformat
import pytest

from helpers.config.profiles import defaults, profile_path, read_yaml
from helpers.core.paths import REPO_ROOT
from helpers.run.notebook_setup import work_from_project_root
from helpers.run.runner import (
    HASH_EXCLUDED,
    QUIET_KERNEL,
    _kernel_environment,
    discover_stages,
    is_complete,
    manifest_path,
    parameter_cell,
)
from helpers.run.staleness import check_run_folder, infer_stage

STAGES = discover_stages()


def _declared(index: int) -> dict:
    return parameter_cell(STAGES[index].path)[1]


@pytest.mark.parametrize("where", ["notebooks", "elsewhere"])
def test_relative_run_dir_lands_under_the_project_root(tmp_path, where):
    """JupyterLab starts the kernel in notebooks/; papermill --cwd anywhere: runs/x still means <root>/runs/x."""
    import papermill as pm

    _kernel_environment()
    stage = STAGES[0]
    smoke = {**defaults(), **read_yaml(profile_path("smoke"))}
    name = f"runs/.test-cwd-{uuid.uuid4().hex[:8]}"
    params = {k: smoke[k] for k in parameter_cell(stage.path)[1] if k in smoke} | {"run_dir": name}
    cwd = REPO_ROOT / "notebooks" if where == "notebooks" else tmp_path
    out = tmp_path / "out.ipynb"
    try:
        pm.execute_notebook(str(stage.path), str(out), parameters=params, kernel_name="python3", cwd=str(cwd),
                            progress_bar=False, extra_arguments=QUIET_KERNEL)
        assert (REPO_ROOT / name / "data" / "train.csv").is_file()
        assert not (cwd / name).exists()
        printed = "".join(o.get("text", "") for c in nbformat.read(out, as_version=4).cells if c.cell_type == "code"
                          for o in c.outputs)
        assert f"working directory {cwd} -> {REPO_ROOT}" in printed
    finally:
        shutil.rmtree(REPO_ROOT / name, ignore_errors=True)
        stray = REPO_ROOT / "notebooks" / "runs"
        shutil.rmtree(stray / Path(name).name, ignore_errors=True)
        if stray.is_dir() and not any(stray.iterdir()):
            stray.rmdir()


def test_plain_python_keeps_its_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    work_from_project_root()
    assert Path.cwd() == tmp_path


def test_the_stage_is_inferred_from_the_notebooks_variables():
    for i in range(len(STAGES)):
        assert infer_stage(STAGES, set(_declared(i)) | {"pd", "display", "helpers"}) == i
    assert infer_stage(STAGES, {"pd"}) is None


def test_a_hand_run_upstream_makes_later_notebooks_warn(tmp_path, capsys):
    run = tmp_path / "run"
    default, other = _declared(1)["max_len"], _declared(1)["max_len"] // 2
    # notebook 01 run by hand with another max_len: recorded, and the runner will redo it
    check_run_folder(run, dict(_declared(0), max_len=other), stage="01")
    first = json.loads(manifest_path(run, STAGES[0]).read_text())
    assert first["hash"] is None and first["run_by_hand"] and first["params"]["max_len"] == other
    capsys.readouterr()
    # notebook 02 still has the default max_len: told which stage used what, and what to rerun
    warnings = check_run_folder(run, {**_declared(1), "pd": object()}, record=False)
    assert warnings[0] == (f"WARNING: run folder {run} is stale for parameter max_len: stage {STAGES[0].label} "
                           f"used {other}, this notebook has {default}; rerun from stage 01, or set "
                           f"max_len = {other} here")
    assert "python -m helpers run" in warnings[-1] and f"--from 01 -p max_len {default}" in warnings[-1]
    assert warnings[0] in capsys.readouterr().out
    # with the value upstream used, nothing to say
    assert check_run_folder(run, dict(_declared(1), max_len=other), record=False) == []


def test_a_hand_run_with_new_values_makes_the_runner_redo_the_stage(tmp_path, capsys):
    run = tmp_path / "run"
    teacher = STAGES[1]
    params = _declared(1)
    used = {k: v for k, v in params.items() if k not in HASH_EXCLUDED}
    manifest_path(run, teacher).parent.mkdir(parents=True)
    manifest_path(run, teacher).write_text(json.dumps({"stage": teacher.label, "hash": "h", "outputs": [],
                                                       "params": used}))
    check_run_folder(run, params, stage="02")  # same values: the runner's record stands
    assert is_complete(run, teacher, "h")
    name = next(k for k, v in used.items() if isinstance(v, int) and not isinstance(v, bool) and k not in _declared(0))
    check_run_folder(run, dict(params, **{name: used[name] + 1}), stage="02")
    assert not is_complete(run, teacher, "h")
    assert json.loads(manifest_path(run, teacher).read_text())["params"][name] == used[name] + 1
    assert f"{name}={used[name] + 1} (was {used[name]})" in capsys.readouterr().out


def test_a_kernel_started_by_the_runner_records_nothing(tmp_path, monkeypatch):
    from helpers.run.runner import RUNNER_ENV

    monkeypatch.setenv(RUNNER_ENV, "1")
    check_run_folder(tmp_path / "run", _declared(0), stage="01")
    assert not manifest_path(tmp_path / "run", STAGES[0]).exists()
    assert os.environ[RUNNER_ENV] == "1"


def test_setup_checks_the_run_folder_when_given_one(tmp_path, capsys):
    from helpers import setup

    run = tmp_path / "run"
    setup(threads=1, device="cpu", quiet=True, run_dir=str(run), params=dict(_declared(0), max_len=16))
    assert json.loads(manifest_path(run, STAGES[0]).read_text())["params"]["max_len"] == 16
    setup(threads=1, device="cpu", quiet=True, run_dir=str(run), params=_declared(1))
    assert "is stale for parameter max_len" in capsys.readouterr().out
