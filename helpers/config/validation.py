"""Validation of a resolved parameter set before any work starts: each error names the parameter.

Each value is checked by its own declaration (helpers.core.params: every stage's parameters object is built from
the resolved set); this module adds the checks across parameters and against the model registry.
"""
from __future__ import annotations

from typing import Any

from helpers.core.errors import ConfigError
from helpers.core.params import STAGES, defaults
from helpers.data.schema import check_template, label_column_for
from helpers.models.specs import REGISTRY


def _check(cond: bool, name: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"parameter {name}: {message}")


def validate(params: dict[str, Any]) -> None:
    """Reject impossible values before any work starts, naming the parameter."""
    unknown = sorted(set(params) - set(defaults()))
    _check(not unknown, ", ".join(unknown), "unknown parameter name")
    for stage in STAGES:
        stage.from_mapping(params)  # each value against its own declaration
    for name in ("bench_seeds", "attribution_seeds"):  # subsets of another stage's seeds
        _check(set(params[name]) <= set(params["seeds"]), name,
               f"must be a non-empty subset of seeds {params['seeds']}")
    if params["task"] != "outcome":
        try:
            check_template(params["text_template"], label_column_for(params["task"], params["label_column"]))
        except ValueError as err:
            raise ConfigError(str(err) if str(err).startswith("parameter") else f"parameter text_template: {err}") \
                from err
    if params["launcher"] == "accelerate" and params["processes"] == 0:
        import torch  # only for this one question: is there a GPU to count?

        _check(params["device"] == "cuda" or (params["device"] == "auto" and torch.cuda.is_available()), "processes",
               "0 leaves the count to accelerate's config or the GPU count, and this run trains on the CPU: set "
               "processes (e.g. 2)")
    names = [params["teacher"], *params["students"]]
    for name in names:
        _check(name in REGISTRY, "teacher" if name == params["teacher"] else "students",
               f"unknown model spec {name!r} (known: {', '.join(REGISTRY)})")
    for name in params["model_overrides"]:
        _check(name in REGISTRY, "model_overrides", f"unknown model spec {name!r}")
    for name in names:
        limit = REGISTRY[name].max_positions
        _check(params["max_len"] <= limit, "max_len", f"{params['max_len']} exceeds {name}'s position limit {limit}")
