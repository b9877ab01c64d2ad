"""Shared fixtures: one smoke run of the whole suite per session; `gpu` tests skip without CUDA."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
