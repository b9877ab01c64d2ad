"""Shared fixtures: one smoke run of the whole suite per session; `gpu` tests skip without CUDA."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from helpers.core.params import AttributionParams, DataParams, ReportParams, StudentParams, TeacherParams

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One thread for the whole session, module and session fixtures included (the per-test fixture below only covers
# tests): a process whose OpenMP pool ever ran two threads can hang in a forked child, and accelerate's
# debug_launcher (tests/test_launcher.py) forks this process.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny tensors run faster on one thread, and a shared CI core makes OpenMP's spinning threads slow.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    """A run folder produced by the runner on the smoke profile, stages 01 -> 05 (once per test session)."""
    from helpers.config.resolve import resolve
    from helpers.run.runner import run

    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    params = resolve("smoke", run_dir=str(run_dir))
    report = run(params, log_output=False)
    assert all(r["status"] == "ran" for r in report), report
    return run_dir


# ---------------------------------------------------------------- stage parameters for tests
# A test's stage parameters: the declared defaults (the default profile), with test-sized settings over them (small
# corpora split by fractions, one worker, no transfer pool or curve unless the test asks), then the test's own.
DATA_TEST = dict(synthetic_n=1600, max_len=128, val_n=0, test_n=0, synthetic_transfer_n=0)
TRAINING_TEST = dict(device="cpu", workers=1)
STUDENT_TEST = dict(TRAINING_TEST, transfer_n=0, transfer_students=[], transfer_curve=[])
REPORT_TEST = dict(bench_repeats=20, bench_warmup=3, bench_cases=0, paper_repeats=0)


def data_params(run_dir, **kw) -> DataParams:
    return DataParams(run_dir=str(run_dir), **{**DATA_TEST, **kw})


def teacher_params(run_dir, **kw) -> TeacherParams:
    return TeacherParams(run_dir=str(run_dir), **{**TRAINING_TEST, **kw})


def student_params(run_dir, **kw) -> StudentParams:
    return StudentParams(run_dir=str(run_dir), **{**STUDENT_TEST, **kw})


def attribution_params(run_dir, **kw) -> AttributionParams:
    return AttributionParams(run_dir=str(run_dir), **kw)


def report_params(run_dir, **kw) -> ReportParams:
    return ReportParams(run_dir=str(run_dir), **{**REPORT_TEST, **kw})


# ---------------------------------------------------------------- a real browser for the page and JupyterLab tests
def _chromium() -> str | None:
    for candidate in ("/usr/lib/chromium/chromium", shutil.which("chromium"), shutil.which("chromium-browser"),
                      shutil.which("google-chrome")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium at 1280 x 900 through selenium, or a skip naming what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    from selenium.webdriver.chrome.service import Service

    binary, driver = _chromium(), shutil.which("chromedriver")
    if binary is None or driver is None or not os.access(driver, os.X_OK):
        pytest.skip("chromium or chromedriver is not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    # Without the background-networking flags Chromium's own connections are refused by this closed network.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--window-size=1280,900", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.binary_location = binary
    os.environ.setdefault("SE_AVOID_STATS", "true")
    chrome = webdriver.Chrome(options=options, service=Service(driver))
    chrome.set_window_size(1280, 900)
    yield chrome
    chrome.quit()
