"""Repository conventions: notebooks without outputs, literal parameters equal to the default profile, pins agree."""
from __future__ import annotations

import ast
import re
import tomllib

import nbformat
import pytest
import yaml

from helpers.config.profiles import defaults
from helpers.core.params import (
    AttributionParams,
    DataParams,
    ReportParams,
    StudentParams,
    TeacherParams,
    render_default_profile,
    render_parameters_cell,
    render_parameters_markdown,
)
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


STAGE_PARAMS = {"01": DataParams, "02": TeacherParams, "03": StudentParams, "04": AttributionParams,
                "05": ReportParams}


def test_stage_entry_points_take_their_stage_parameters_object():
    import inspect

    from helpers.report import summary
    from helpers.stages import attribution as attribution_stage
    from helpers.stages import benchmark, data, students, teacher

    for fn, cls in ((data.prepare, DataParams), (teacher.run_teacher_stage, TeacherParams),
                    (students.run_student_stage, StudentParams),
                    (attribution_stage.run_attribution_stage, AttributionParams),
                    (benchmark.benchmark_run, ReportParams), (summary.build_summary, ReportParams)):
        first, *rest = inspect.signature(fn).parameters.values()
        assert first.name == "p" and first.annotation in (cls, cls.__name__), fn.__name__
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in rest), fn.__name__
        assert not {p.name for p in rest} & set(cls.names()), f"{fn.__name__} takes a parameter twice"


def test_default_profile_is_the_rendering_of_the_declarations():
    assert (REPO_ROOT / "profiles" / "default.yaml").read_text() == render_default_profile(), \
        "profiles/default.yaml is out of date: python -m helpers params > profiles/default.yaml"
    assert yaml.safe_load(render_default_profile()) == defaults()
    assert render_parameters_markdown() in (REPO_ROOT / "docs" / "parameters.md").read_text(), \
        "docs/parameters.md's tables are out of date: python -m helpers params --markdown"


@pytest.mark.parametrize("stage", NOTEBOOKS, ids=lambda s: s.label)
def test_parameters_cell_is_the_rendering_of_its_stage_declarations(stage):
    nb = nbformat.read(stage.path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert cell.source + "\n" == render_parameters_cell(STAGE_PARAMS[stage.number]), \
        f"{stage.path.name}: its parameters cell differs from helpers/core/params.py"
    assert f"{STAGE_PARAMS[stage.number].__name__}.from_globals(globals())" in "".join(
        c.source for c in nb.cells if c.cell_type == "code"), f"{stage.path.name} builds its parameters object"


def test_every_parameter_belongs_to_a_stage_and_every_profile_names_known_ones():
    names = [n for cls in STAGE_PARAMS.values() for n in cls.names()]
    assert set(names) == set(defaults())
    for path in (REPO_ROOT / "profiles").glob("*.yaml"):
        assert set(yaml.safe_load(path.read_text())) <= set(defaults()), path.name


def test_a_declared_check_names_the_parameter():
    from helpers.core.errors import ConfigError

    with pytest.raises(ConfigError, match="parameter alpha: must be within"):
        StudentParams(alpha=1.5)
    with pytest.raises(ConfigError, match="parameter max_len: must be at least"):
        DataParams(max_len=4)
    with pytest.raises(ConfigError, match="unknown parameter"):
        DataParams.from_mapping({}, alhpa=0.5)


# ---------------------------------------------------------------- the package's layering
LAYERS = ["core", "evaluation", "synthetic", "models", "data", "training", "attribution", "benchmark", "parallel",
          "views", "stages", "report", "config", "run"]


def _helpers_imports() -> dict[str, list[tuple[str, int]]]:
    """module -> the helpers modules it imports (anywhere in the file, function-level imports too), with lines."""
    out: dict[str, list[tuple[str, int]]] = {}
    for path in sorted((REPO_ROOT / "helpers").rglob("*.py")):
        module = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
        found = out.setdefault(module, [])
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{module}:{node.lineno}: relative import (write helpers.<package>...)"
                names = [node.module] if node.module.startswith("helpers") else []
                if node.module == "helpers":
                    names = [f"helpers.{a.name}" for a in node.names]
                found += [(n, node.lineno) for n in names]
            elif isinstance(node, ast.Import):
                found += [(a.name, node.lineno) for a in node.names if a.name.startswith("helpers")]
    return out


def test_every_package_is_a_known_layer():
    packages = {p.name for p in (REPO_ROOT / "helpers").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == set(LAYERS)
    assert {p.stem for p in (REPO_ROOT / "helpers").glob("*.py")} == {"__init__", "__main__"}


def test_imports_only_go_down_the_layers():
    rank = {name: i for i, name in enumerate(LAYERS)}
    wrong = []
    for module, imports in _helpers_imports().items():
        parts = module.split(".")
        if len(parts) < 3:
            continue  # helpers/__init__ and __main__ sit above every layer
        for target, line in imports:
            layer = target.split(".")[1] if "." in target else ""
            if layer not in rank or rank[layer] > rank[parts[1]]:
                wrong.append(f"{module}:{line} ({parts[1]}) imports {target}")
    assert not wrong, "imports that go up the layers:\n" + "\n".join(wrong)


def test_no_import_cycle_between_modules():
    graph = {m: {t for t, _ in imps if t != m} for m, imps in _helpers_imports().items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]) if nxt in path
                                     else f"import cycle through {nxt}")
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_command_line_and_config_validation_load_no_torch():
    import subprocess
    import sys

    code = ("import sys\n"
            "from helpers.__main__ import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "from helpers.config.resolve import resolve\n"
            "resolve('default'); resolve('smoke'); resolve('justice')\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'captum') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
