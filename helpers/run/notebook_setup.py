"""One-call notebook setup: threads, seeds, device, plot style, and the versions that matter."""
from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from helpers.core.device import pick_device, seed_everything
from helpers.core.paths import REPO_ROOT
from helpers.run.staleness import check_run_folder

LIBRARIES = ["torch", "transformers", "captum", "numpy", "pandas", "sklearn", "papermill"]


def versions() -> dict[str, str]:
    """Versions of python and the libraries the results depend on."""
    import importlib

    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = importlib.import_module(name).__version__
        except Exception:  # a missing optional library is reported, not fatal
            out[name] = "not installed"
    return out


def _inline_figures() -> None:
    """Show figures inline when running inside IPython/papermill (a bare Figure repr is text otherwise)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None:
        shell.run_line_magic("matplotlib", "inline")


def work_from_project_root() -> None:
    """In a notebook kernel, make the project root the working directory, as it is under the runner.

    JupyterLab starts a kernel in the notebook's folder (notebooks/), where `run_dir = "runs/default"` would mean
    notebooks/runs/default; from the project root every relative path means what it means to the runner.
    Plain Python (scripts, tests) keeps its working directory.
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None or getattr(shell, "kernel", None) is None:
        return
    before = Path.cwd()
    if before.resolve() != REPO_ROOT:
        os.chdir(REPO_ROOT)
        print(f"working directory {before} -> {REPO_ROOT}: relative paths (run_dir, data_path, ...) start at the "
              "project root, as under the runner")


def setup(threads: int = 2, device: str = "auto", seed: int = 0, quiet: bool = False, *,
          run_dir: str | Path | None = None, params: Mapping[str, Any] | None = None,
          stage: str | None = None) -> torch.device:
    """Work from the project root, pin CPU threads, seed everything, set the plot style, print versions; return the
    torch device. With `run_dir` and `params` (the notebook's variables, e.g. `globals()`), also warn about each
    parameter an upstream stage of the run folder used with another value (see helpers.run.staleness)."""
    work_from_project_root()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if threads:
        torch.set_num_threads(int(threads))
    seed_everything(seed)
    dev = pick_device(device)
    import matplotlib.pyplot as plt
    import seaborn as sns
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    _inline_figures()
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 110, "figure.autolayout": True})
    if not quiet:
        v = versions()
        print(f"device={dev}  torch threads={torch.get_num_threads()}  seed={seed}")
        print("  ".join(f"{k} {val}" for k, val in v.items()))
    if run_dir is not None and params is not None:
        check_run_folder(run_dir, params, stage)
    return dev
