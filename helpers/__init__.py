"""Distilling Justice: independent training vs true knowledge distillation, as a papermill notebook suite.

The modules follow the pipeline: config -> data (synthetic) -> models -> training -> evaluation ->
attribution -> benchmark -> report, with `runner` executing the notebooks.
"""
from .notebook_setup import setup

__all__ = ["setup"]
__version__ = "0.1.0"
