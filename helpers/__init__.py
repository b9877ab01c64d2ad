"""Distilling Justice: independent training vs true knowledge distillation, as a papermill notebook suite.

The subpackages follow the pipeline, each importing only the ones before it: core -> evaluation -> synthetic ->
models -> data -> training -> attribution -> benchmark -> parallel -> views -> stages -> report -> config -> run
(tests/test_repository.py checks the order). Notebooks call `helpers.setup(...)`, then stage entry points
(`helpers.stages`) and views (`helpers.views`).
"""
from __future__ import annotations

from typing import Any

__all__ = ["setup"]
__version__ = "0.1.0"


def setup(*args: Any, **kwargs: Any) -> Any:
    """helpers.run.notebook_setup.setup, imported on first use (so `python -m helpers --help` needs no torch)."""
    from helpers.run.notebook_setup import setup as _setup

    return _setup(*args, **kwargs)
