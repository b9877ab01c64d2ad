"""Profiles, parameter validation, the runner's skip/resume logic and its failure report."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from helpers.__main__ import main
from helpers.config.profiles import defaults
from helpers.config.resolve import resolve
from helpers.core.errors import ConfigError
from helpers.run.runner import Stage, StageFailed, parameter_cell, run
from helpers.run.sweep import combinations


def test_profiles_resolve_and_layer_over_default():
    d = resolve("default")
    assert d["run_dir"] == "runs/default" and d["profile"] == "default"
    s = resolve("smoke")
    assert s["run_dir"] == "runs/smoke" and s["teacher"] == "Smoke_Teacher_2x64"
    assert s["alpha"] == d["alpha"]  # not in smoke.yaml: inherited
    p = resolve("paper")
    assert p["teacher"] == "Teacher_BERT" and len(p["students"]) == 5
    assert len(resolve("full")["students"]) == 5


def test_overrides_are_typed():
    p = resolve("smoke", overrides=[("alpha", "0.3"), ("seeds", "0,1,2"), ("temperature", "2"),
                                    ("class_weighted", "true"), ("data_path", "x.csv")])
    assert p["alpha"] == 0.3 and p["seeds"] == [0, 1, 2] and p["temperature"] == 2.0
    assert p["class_weighted"] is True and p["data_path"] == "x.csv"
    assert resolve("smoke", data="/tmp/j.csv", run_dir="/tmp/r")["data_path"] == "/tmp/j.csv"


@pytest.mark.parametrize("name,value,needle", [
    ("temperature", "0", "temperature"), ("temperature", "-1", "temperature"), ("alpha", "1.5", "alpha"),
    ("alpha", "-0.1", "alpha"), ("max_len", "600", "max_len"), ("nonsense", "1", "nonsense"),
    ("teacher_mode", "sometimes", "teacher_mode"), ("students", "NoSuchModel", "students"),
    ("seeds", "[]", "seeds"), ("val_frac", "0.85", "val_frac"), ("precision", "fp16", "precision"),
    ("arms", "distilled", "arms"), ("arms", "independent,chainsaw", "arms"), ("bench_seeds", "9", "bench_seeds"),
    ("student_lr_grid", "[]", "student_lr_grid"), ("transfer_students", "NoSuchModel", "transfer_students"),
    ("workers", "0", "workers"), ("test_n", "-5", "test_n"), ("max_len", "7", "max_len"),
])
def test_invalid_values_are_rejected_naming_the_parameter(name, value, needle):
    with pytest.raises(ConfigError, match=needle):
        resolve("smoke", overrides=[(name, value)])


def test_cli_rejects_before_any_work(tmp_path, capsys):
    assert main(["run", "--profile", "smoke", "--run-dir", str(tmp_path / "r"), "-p", "temperature", "0"]) == 2
    assert "temperature" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert main(["sweep", "--profile", "smoke", "-p", "alpha", "0.3,1.7"]) == 2
    assert main(["run", "--profile", "nosuchprofile"]) == 2


def test_sweep_combinations_are_typed_products():
    combos = combinations([("alpha", "0.3,0.7"), ("temperature", "1,4")])
    assert combos == [{"alpha": 0.3, "temperature": 1.0}, {"alpha": 0.3, "temperature": 4.0},
                      {"alpha": 0.7, "temperature": 1.0}, {"alpha": 0.7, "temperature": 4.0}]
    with pytest.raises(ConfigError, match="bogus"):
        combinations([("bogus", "1,2")])


# --- the runner, on throw-away notebooks -------------------------------------------------------------------

def _notebook(path: Path, params: dict, body: str) -> Path:
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in params.items()))
    p.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# test"), p, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.fixture()
def fake_stages(tmp_path):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    body = ("from pathlib import Path\n"
            "log = Path(run_dir) / 'log.txt'\n"
            "log.open('a').write('{name} alpha=' + str(alpha) + '\\n')\n"
            "(Path(run_dir) / '{name}.out').write_text('ok')\n")
    stages = []
    for number, name, params in (("01", "first", {"run_dir": "x", "alpha": 0.5}),
                                 ("02", "second", {"run_dir": "x", "temperature": 4.0, "alpha": 0.5})):
        path = _notebook(nbs / f"{number}_{name}.ipynb", params, body.replace("{name}", name))
        stages.append(Stage(number, name, path))
    return stages


def _log(run_dir: Path) -> list[str]:
    return (run_dir / "log.txt").read_text().splitlines()


def test_runner_skips_finished_stages_and_redoes_changed_ones(tmp_path, fake_stages):
    run_dir = tmp_path / "run"
    params = dict(defaults(), run_dir=str(run_dir))
    first = run(params, stages=fake_stages, log_output=False)
    assert [r["status"] for r in first] == ["ran", "ran"]
    assert (run_dir / "notebooks" / "01_first.ipynb").is_file() and (run_dir / "params.yaml").is_file()
    assert [r["status"] for r in run(params, stages=fake_stages, log_output=False)] == ["skipped", "skipped"]
    # a parameter only stage 02 declares: 01 is kept, 02 is redone
    assert [r["status"] for r in run(dict(params, temperature=2.0), stages=fake_stages, log_output=False)] == \
        ["skipped", "ran"]
    # a parameter stage 01 declares: both are redone
    assert [r["status"] for r in run(dict(params, temperature=2.0, alpha=0.9), stages=fake_stages,
                                     log_output=False)] == ["ran", "ran"]
    assert _log(run_dir)[-2:] == ["first alpha=0.9", "second alpha=0.9"]
    assert [r["status"] for r in run(dict(params, temperature=2.0, alpha=0.9), stages=fake_stages, force=True,
                                     log_output=False, only="02")] == ["ran"]
    # an interrupted run (manifest of 02 missing) resumes at 02
    (run_dir / "manifests" / "02_second.json").unlink()
    assert [r["status"] for r in run(dict(params, temperature=2.0, alpha=0.9), stages=fake_stages,
                                     log_output=False)] == ["skipped", "ran"]
    manifest = json.loads((run_dir / "manifests" / "01_first.json").read_text())
    assert manifest["hash"] and manifest["outputs"] == ["notebooks/01_first.ipynb"]


def test_runner_reports_the_failing_notebook_and_cell(tmp_path, fake_stages):
    bad = _notebook(tmp_path / "nbs" / "02_second.ipynb", {"run_dir": "x"},
                    "x = 1\nraise RuntimeError('boom in stage two')")
    stages = [fake_stages[0], Stage("02", "second", bad)]
    run_dir = tmp_path / "run"
    with pytest.raises(StageFailed) as err:
        run(dict(defaults(), run_dir=str(run_dir)), stages=stages, log_output=False)
    msg = str(err.value)
    assert "02_second.ipynb" in msg and "boom in stage two" in msg and "cell #2" in msg
    assert str(run_dir / "notebooks" / "02_second.ipynb") in msg
    assert not (run_dir / "manifests" / "02_second.json").exists()
    assert (run_dir / "manifests" / "01_first.json").exists()


def test_parameter_cell_must_be_literal(tmp_path):
    path = _notebook(tmp_path / "01_x.ipynb", {"a": 1}, "pass")
    nb = nbformat.read(path, as_version=4)
    nb.cells[1].source = "a = 1\nb = len('x')"
    nbformat.write(nb, path)
    with pytest.raises(ValueError, match="not a literal"):
        parameter_cell(path)
