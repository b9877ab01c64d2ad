"""What the runner shows: the notebooks' own output (papermill's chatter only with --verbose), the failing cell with
its traceback, and bad input files rejected before any stage starts."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from helpers.__main__ import main
from helpers.config.profiles import defaults
from helpers.core.errors import ConfigError
from helpers.run.runner import Stage, StageFailed, run


def _stage(folder: Path, number: str, name: str, params: dict, body: str) -> Stage:
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in params.items()))
    p.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# test"), p, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{number}_{name}.ipynb"
    nbformat.write(nb, path)
    return Stage(number, name, path)


TALKATIVE = ("import sys\n"
             "print('result line from the notebook')\n"
             "print('a warning from the notebook', file=sys.stderr)\n"
             "{'a displayed value': 1}\n")


def test_quiet_run_streams_what_notebooks_print_and_nothing_else(tmp_path, capfd):
    stage = _stage(tmp_path / "nbs", "01", "talk", {"run_dir": "x"}, TALKATIVE)
    run(dict(defaults(), run_dir=str(tmp_path / "run")), stages=[stage])
    out, err = capfd.readouterr()
    assert "result line from the notebook" in out and "a warning from the notebook" in err
    assert "[1/1] 01_talk: running ..." in out and "[1/1] 01_talk: done in" in out
    for chatter in ("Executing Cell", "Ending Cell", "Executing notebook with kernel", "Input Notebook",
                    "a displayed value", "Kernel is running over TCP"):
        assert chatter not in out + err, chatter


def test_verbose_run_streams_papermills_log(tmp_path, capfd):
    stage = _stage(tmp_path / "nbs", "01", "talk", {"run_dir": "x"}, TALKATIVE)
    run(dict(defaults(), run_dir=str(tmp_path / "run")), stages=[stage], verbose=True)
    out, _ = capfd.readouterr()
    assert "Executing Cell" in out and "result line from the notebook" in out and "a displayed value" in out


def test_failure_shows_the_cell_source_the_traceback_and_the_executed_copy(tmp_path):
    body = "def helper():\n    raise RuntimeError('boom in stage two')\n\nx = 1\nhelper()"
    stage = _stage(tmp_path / "nbs", "02", "second", {"run_dir": "x"}, body)
    run_dir = tmp_path / "run"
    with pytest.raises(StageFailed) as err:
        run(dict(defaults(), run_dir=str(run_dir)), stages=[stage], log_output=False)
    msg = str(err.value)
    assert "02_second.ipynb failed in cell #2" in msg and "RuntimeError: boom in stage two" in msg
    assert "--- cell source ---" in msg and "    x = 1\n    helper()" in msg
    tb = msg.split("--- traceback ---")[1]
    assert "helper()" in tb and "raise RuntimeError('boom in stage two')" in tb  # the frames, not only the error
    assert "\x1b[" not in msg  # colour codes stripped
    assert msg.rstrip().endswith(f"executed copy: {run_dir / 'notebooks' / '02_second.ipynb'}")


@pytest.mark.parametrize("name,content,needle", [
    ("data_path", None, "file not found"),
    ("data_path", b"\x00\x01binary", "not a CSV text file"),
    ("transfer_path", b"a;b\n1;2\n", "required column(s) missing"),
])
def test_input_files_are_checked_before_any_stage_runs(tmp_path, name, content, needle):
    stage = _stage(tmp_path / "nbs", "01", "data", {"run_dir": "x", "data_path": "", "transfer_path": ""},
                   "raise RuntimeError('the stage must not start')")
    bad = tmp_path / "input.csv"
    if content is not None:
        bad.write_bytes(content)
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match=name) as err:
        run(dict(defaults(), run_dir=str(run_dir), **{name: str(bad)}), stages=[stage], log_output=False)
    assert needle in str(err.value) and str(bad) in str(err.value)
    assert not run_dir.exists()


def test_input_file_of_a_stage_that_will_not_run_is_not_needed(tmp_path):
    stage_1 = _stage(tmp_path / "nbs", "01", "data", {"run_dir": "x", "data_path": ""}, "pass")
    stage_2 = _stage(tmp_path / "nbs", "02", "next", {"run_dir": "x"}, "pass")
    params = dict(defaults(), run_dir=str(tmp_path / "run"))
    good = tmp_path / "cases.csv"
    good.write_text("first_party,second_party,facts,first_party_winner\nA,B,some facts,True\n")
    run(dict(params, data_path=str(good)), stages=[stage_1, stage_2], log_output=False)
    good.unlink()  # stage 01 is up to date: rerunning 02 alone does not read the csv again
    report = run(dict(params, data_path=str(good)), stages=[stage_1, stage_2], only="02", force=True,
                 log_output=False)
    assert [r["status"] for r in report] == ["ran"]


def test_cli_data_and_transfer_flags_name_the_bad_file(tmp_path, capsys):
    missing = tmp_path / "nope.csv"
    assert main(["run", "--run-dir", str(tmp_path / "r"), "--data", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "data_path" in err and str(missing) in err and "file not found" in err
    assert main(["run", "--run-dir", str(tmp_path / "r"), "--transfer", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "transfer_path" in err and str(missing) in err
    assert not (tmp_path / "r").exists()
