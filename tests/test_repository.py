"""Repository conventions: notebooks without outputs, literal parameters equal to the default profile, pins agree."""
from __future__ import annotations

import ast
import re
import tomllib

import nbformat
import pytest
import yaml

from helpers.config.profiles import defaults
from helpers.core.paths import REPO_ROOT
from helpers.run.runner import discover_stages, parameter_cell

NOTEBOOKS = discover_stages()


def test_the_five_stages_exist_in_order():
    assert [s.number for s in NOTEBOOKS] == ["01", "02", "03", "04", "05"]


@pytest.mark.parametrize("stage", NOTEBOOKS, ids=lambda s: s.label)
def test_notebook_is_committed_clean_and_thin(stage):
    nb = nbformat.read(stage.path, as_version=4)
    assert nb.cells[0].cell_type == "markdown", "first cell explains the step"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{stage.path.name} has outputs"
            tree = ast.parse("\n".join(line for line in cell.source.splitlines() if not line.startswith("%")))
            assert not [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))], \
                f"{stage.path.name} defines a function: it belongs in helpers/"
            assert "sys.path" not in cell.source


@pytest.mark.parametrize("stage", NOTEBOOKS, ids=lambda s: s.label)
def test_parameters_are_literals_equal_to_the_default_profile(stage):
    _, values = parameter_cell(stage.path)
    d = defaults()
    assert values, "a parameters cell"
    for name, value in values.items():
        assert name in d, f"{stage.path.name}: {name} is not a profile parameter"
        assert value == d[name] and type(value) is type(d[name]), f"{stage.path.name}: {name}={value!r} != {d[name]!r}"
    nb = nbformat.read(stage.path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    for line in cell.source.splitlines():
        assert re.match(r"^\w+ = .+  # [^=]+$", line), f"{stage.path.name}: `name = value  # meaning` per line: {line}"


def test_environment_yml_lists_the_same_pins_as_pyproject():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    pins = set(project["dependencies"]) | set(project["optional-dependencies"]["test"])
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert set(pip) - {"-e ."} == pins
    assert all("==" in p for p in pins), "every dependency pinned exactly"
    assert "torch==2.13.0" in pins


def test_stage_functions_take_everything_after_run_dir_by_keyword():
    import inspect

    from helpers.stages import attribution as attribution_stage
    from helpers.stages import benchmark, data, students, teacher

    for fn in (data.prepare, teacher.run_teacher_stage, students.run_student_stage,
               attribution_stage.run_attribution_stage, benchmark.benchmark_run):
        first, *rest = inspect.signature(fn).parameters.values()
        assert first.name == "run_dir", fn.__name__
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in rest), fn.__name__
