"""The JupyterLab path in a real browser: `jupyter lab` serves the project, headless Chromium opens a tiny copy of
notebook 01 kept in a folder of its own (so the kernel starts outside the project root), runs every cell through the
menu Run > Run All Cells, and the run folder lands under the project root with no error in any output."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import nbformat
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO_ROOT / "notebooks" / "01_prepare_data.ipynb"
# Tiny values for the `parameters` cell: 240 synthetic cases; val_n = test_n = 0 splits by val_frac/test_frac.
TINY = {"synthetic_n": 240, "synthetic_transfer_n": 60, "val_n": 0, "test_n": 0, "max_len": 48, "threads": 1}
SPLIT_FILES = ("train.csv", "val.csv", "test.csv", "data_card.json")
SERVER_DEADLINE_S = 60
KERNEL_DEADLINE_S = 90
RUN_DEADLINE_S = 240

# The state of the open notebook, read from the page: kernel status (the toolbar's execution indicator), every code
# cell's prompt ("[3]:", "[*]:", "[ ]:"), open dialogs, and the text of every stderr output that holds a traceback.
# JupyterLab 4.6 renders an error output like a stderr stream (data-mime-type application/vnd.jupyter.stderr, no class
# of its own), so a traceback is told from a warning by its text: IPython's "Traceback (most recent call last)" or a
# line that starts with an exception name ("SyntaxError: ..." has no traceback header).
ERROR_JS = r"""
const error = /Traceback \(most recent call last\)|^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b/m;
"""
STATE_JS = ERROR_JS + r"""
const panel = document.querySelector('.jp-NotebookPanel');
if (!panel) return null;
const indicator = panel.querySelector('.jp-Notebook-ExecutionIndicator');
return {
  status: indicator ? indicator.dataset.status : null,
  prompts: Array.from(panel.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')).map(p => p.textContent.trim()),
  dialogs: Array.from(document.querySelectorAll('.jp-Dialog')).map(d => d.textContent.trim()),
  errors: Array.from(panel.querySelectorAll(
      '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'))
    .map(o => o.textContent).filter(t => error.test(t)),
};
"""
# Before a screenshot of a failure: scroll the first traceback, else the first cell that did not run, into view.
FOCUS_JS = ERROR_JS + r"""
const outputs = Array.from(document.querySelectorAll(
    '.jp-NotebookPanel .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'));
const prompts = Array.from(document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell .jp-InputArea-prompt'));
const target = outputs.find(o => error.test(o.textContent))
    || prompts.find(p => !/^\[\d+\]:$/.test(p.textContent.trim()));
if (target) target.scrollIntoView({block: 'center'});
"""
DIRTY_JS = "return !!document.querySelector('.lm-TabBar-tab.jp-mod-current.jp-mod-dirty')"  # unsaved changes
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


# --- a JupyterLab server on the project root -------------------------------------------------------------------------

@dataclass
class Lab:
    url: str  # http://127.0.0.1:PORT
    notebook: Path  # the tiny copy of notebook 01, in a folder of its own under runs/
    run_dir: str  # its run_dir parameter, relative to the project root
    log: Path  # the server's stdout and stderr

    def log_tail(self, lines: int = 15) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.is_file() else ""
        return "\n".join(text.splitlines()[-lines:])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, timeout: float = 5) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 never goes through a proxy
    with opener.open(url, timeout=timeout) as response:
        return response.read()


def _tiny_copy(target: Path, run_dir: str) -> nbformat.NotebookNode:
    """Notebook 01 with only its `parameters` cell edited (literal `name = value  # comment` lines), outputs cleared."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{NOTEBOOK.name}: expected one cell tagged parameters, found {len(cells)}"
    lines = cells[0].source.splitlines()
    for name, value in {"run_dir": run_dir, **TINY}.items():
        pattern = re.compile(rf"^{name}\s*=\s*(.*?)(\s+#.*)?$")
        hits = [i for i, line in enumerate(lines) if pattern.match(line)]
        assert len(hits) == 1, f"{NOTEBOOK.name}: parameter {name} is not one literal line of the parameters cell"
        comment = pattern.match(lines[hits[0]]).group(2) or ""
        lines[hits[0]] = f"{name} = {json.dumps(value)}{comment}"
    cells[0].source = "\n".join(lines)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, target)
    return nb


def _server_environment(tmp: Path) -> dict[str, str]:
    """As helpers.runner._kernel_environment: the `python3` kernel registered in this environment comes first; this
    checkout's helpers is importable from any folder; user-level Jupyter config, settings and workspaces stay out."""
    env = dict(os.environ)
    share = str(Path(sys.prefix) / "share" / "jupyter")
    env["JUPYTER_PATH"] = os.pathsep.join(p for p in (share, env.get("JUPYTER_PATH", "")) if p)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYDEVD_DISABLE_FILE_VALIDATION="1")
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTERLAB_WORKSPACES_DIR"):
        env[name] = str(tmp / name.lower())
    settings = tmp / "jupyterlab_settings_dir"
    notification = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True)
    notification.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}), encoding="utf-8")
    env["JUPYTERLAB_SETTINGS_DIR"] = str(settings)
    return env


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM: the server shuts its kernels down; SIGKILL if it has not exited within 20 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def lab(tmp_path):
    """`jupyter lab` on a free port of 127.0.0.1 (no token, no password, no browser) serving the project root, and
    a tiny copy of notebook 01 under runs/; both folders it makes under runs/ are removed afterwards."""
    kernel = Path(sys.prefix) / "share" / "jupyter" / "kernels" / "python3" / "kernel.json"
    assert kernel.is_file(), (f"no python3 kernel registered in {sys.prefix} (make setup, or python -m ipykernel "
                              "install --sys-prefix --name python3)")
    tag = f"_jupyterlab_test_{uuid.uuid4().hex[:8]}"
    runs = REPO_ROOT / "runs"
    runs_existed = runs.exists()
    notebook = runs / f"{tag}_nb" / NOTEBOOK.name
    made = [runs / tag, notebook.parent]
    proc = None
    try:
        _tiny_copy(notebook, f"runs/{tag}")
        port = _free_port()
        log = tmp_path / "jupyterlab.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
                 "--ServerApp.port_retries=0", "--IdentityProvider.token=",
                 "--PasswordIdentityProvider.hashed_password=", f"--ServerApp.root_dir={REPO_ROOT}", "--allow-root"],
                cwd=tmp_path, env=_server_environment(tmp_path), stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)
        server = Lab(f"http://127.0.0.1:{port}", notebook, f"runs/{tag}", log)
        deadline = time.monotonic() + SERVER_DEADLINE_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"jupyter lab exited with code {proc.returncode}:\n{server.log_tail()}", pytrace=False)
            try:
                json.loads(_get(f"{server.url}/api/status"))
                break
            except (OSError, ValueError):
                if time.monotonic() > deadline:
                    pytest.fail(f"jupyter lab did not answer within {SERVER_DEADLINE_S} s:\n{server.log_tail()}",
                                pytrace=False)
                time.sleep(0.25)
        yield server
    finally:
        if proc is not None:
            _stop(proc)
        for folder in made:
            shutil.rmtree(folder, ignore_errors=True)
        if not runs_existed and runs.is_dir() and not any(runs.iterdir()):
            runs.rmdir()


# --- the test --------------------------------------------------------------------------------------------------------

def _menu(browser, menu: str, command: str) -> None:
    """Click a menu of the menu bar, then its item for `command` (a JupyterLab command id)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    item = WebDriverWait(browser, 10).until(ec.element_to_be_clickable(
        (By.XPATH, f"//li[contains(@class, 'lm-MenuBar-item')][normalize-space(.)='{menu}']")))
    item.click()
    WebDriverWait(browser, 10).until(ec.element_to_be_clickable(
        (By.CSS_SELECTOR, f'.lm-Menu-item[data-command="{command}"]'))).click()


def _wait(browser, seconds: float, done, what: str) -> dict:
    """Poll the notebook's state until done(state) holds (twice in a row, half a second apart)."""
    deadline, state, hits = time.monotonic() + seconds, None, 0
    while time.monotonic() < deadline:
        state = browser.execute_script(STATE_JS)
        hits = hits + 1 if state is not None and done(state) else 0
        if hits == 2 or (state or {}).get("status") == "dead":
            return state
        time.sleep(0.5)
    raise TimeoutError(f"{what} within {seconds} s; last state of the page: {state}")


def _saved_errors(path: Path) -> tuple[list[str], list[int]]:
    """Error outputs (ename: evalue and traceback) and the indices of code cells without an execution count."""
    nb = nbformat.read(path, as_version=4)
    errors, unrun = [], []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.execution_count is None:
            unrun.append(i)
        for out in cell.outputs:
            if out.output_type == "error":
                errors.append(f"cell {i}: {out.ename}: {out.evalue}\n" + ANSI.sub("", "\n".join(out.traceback)))
    return errors, unrun


def test_notebook_01_runs_end_to_end_in_jupyterlab(lab, browser, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    started = time.monotonic()
    shot = tmp_path / "jupyterlab.png"
    code_cells = sum(c.cell_type == "code" for c in nbformat.read(lab.notebook, as_version=4).cells)
    relative = lab.notebook.relative_to(REPO_ROOT).as_posix()

    def fail(message: str) -> None:
        try:
            browser.execute_script(FOCUS_JS)
            time.sleep(0.5)  # let the scrolled cells render
            picture = str(shot) if browser.save_screenshot(str(shot)) else "(none: the browser did not take one)"
        except Exception as err:  # a crashed browser: the message still says what went wrong
            picture = f"(none: {type(err).__name__}: {err})"
        pytest.fail(f"{message}\nscreenshot: {picture}\nlast lines of the jupyter lab log ({lab.log}):\n"
                    f"{lab.log_tail()}", pytrace=False)

    try:
        browser.get(f"{lab.url}/lab/tree/{quote(relative)}")
        state = _wait(browser, KERNEL_DEADLINE_S, lambda s: s["status"] == "idle" and len(s["prompts"]) == code_cells,
                      f"the notebook did not open with {code_cells} code cells and an idle kernel")
        if state["status"] != "idle":
            fail(f"the kernel is {state['status']} before anything ran: {state}")
        _menu(browser, "Run", "runmenu:run-all")  # Run > Run All Cells
        # Done: the kernel is idle and nothing is queued ([*]), after at least one cell ran; after an error the cells
        # below it stay unrun ([ ]), which the checks below report.
        state = _wait(browser, RUN_DEADLINE_S, lambda s: s["status"] == "idle" and "[*]:" not in s["prompts"]
                      and any(re.fullmatch(r"\[\d+\]:", p) for p in s["prompts"]), "Run All Cells did not finish")
        _menu(browser, "File", "docmanager:save")  # Save Notebook: the outputs as the kernel sent them, on disk
        WebDriverWait(browser, 30).until_not(lambda b: b.execute_script(DIRTY_JS), "the notebook was not saved")
    except Exception as err:  # selenium's own errors, a timeout: the screenshot shows where the page stood
        fail(f"{type(err).__name__}: {err}")

    unfinished = [p for p in state["prompts"] if not re.fullmatch(r"\[\d+\]:", p)]
    saved_errors, unrun = _saved_errors(lab.notebook)
    if state["errors"] or saved_errors or state["status"] != "idle" or state["dialogs"]:
        page = "\n---\n".join(t[-3000:] for t in state["errors"]) or "(none)"
        in_file = "\n---\n".join(e if not state["errors"] else e.splitlines()[0] for e in saved_errors) or "(none)"
        fail(f"notebook 01 failed in JupyterLab (kernel {state['status']}, dialogs {state['dialogs']})\n"
             f"error outputs on the page:\n{page}\nerror outputs in the saved notebook:\n{in_file}")
    if unfinished or unrun:
        fail(f"code cells without an execution count: prompts {state['prompts']}, unrun cells in the file {unrun}")

    misplaced = lab.notebook.parent / lab.run_dir
    if misplaced.exists() or (lab.notebook.parent / "runs").exists():
        fail(f"the run folder went under the notebook's folder ({misplaced}): the kernel kept its working directory")
    data = REPO_ROOT / lab.run_dir / "data"
    missing = [name for name in SPLIT_FILES if not (data / name).is_file()]
    if missing:
        fail(f"{data} lacks {missing} after the notebook ran")
    card = json.loads((data / "data_card.json").read_text(encoding="utf-8"))
    assert card["max_len"] == TINY["max_len"], "the run used other parameters than the edited parameters cell"
    assert 0 < card["n_train"] + card["n_val"] + card["n_test"] <= TINY["synthetic_n"], card
    browser.save_screenshot(str(shot))  # the notebook as it ran, for a look by hand
    print(f"notebook 01 ran in JupyterLab in {time.monotonic() - started:.0f} s; screenshot {shot}")
