"""Validation of a resolved parameter set before any work starts: each error names the parameter."""
from __future__ import annotations

from typing import Any

from helpers.config.profiles import defaults
from helpers.core.constants import MIN_MAX_LEN
from helpers.core.errors import ConfigError


def _check(cond: bool, name: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"parameter {name}: {message}")


def validate(params: dict[str, Any]) -> None:
    """Reject impossible values before any work starts, naming the parameter."""
    from helpers.models.specs import REGISTRY

    unknown = sorted(set(params) - set(defaults()))
    _check(not unknown, ", ".join(unknown), "unknown parameter name")
    num = (int, float)
    _check(isinstance(params["temperature"], num) and not isinstance(params["temperature"], bool)
           and params["temperature"] > 0, "temperature", f"must be > 0, got {params['temperature']!r}")
    _check(isinstance(params["alpha"], num) and 0 <= params["alpha"] <= 1, "alpha",
           f"must be within [0, 1], got {params['alpha']!r}")
    for frac in ("val_frac", "test_frac"):
        _check(isinstance(params[frac], num) and 0 < params[frac] < 1, frac, f"must be in (0, 1), got {params[frac]!r}")
    _check(params["val_frac"] + params["test_frac"] < 1, "val_frac", "val_frac + test_frac must be < 1")
    for name in ("synthetic_n", "max_len", "batch_size", "teacher_epochs", "student_max_steps", "eval_every", "workers",
                 "ig_examples", "ig_steps", "ig_internal_batch_size", "topk", "bench_repeats", "bootstrap_n"):
        _check(isinstance(params[name], int) and not isinstance(params[name], bool) and params[name] > 0, name,
               f"must be a positive integer, got {params[name]!r}")
    _check(isinstance(params["bench_seeds"], list) and params["bench_seeds"]
           and set(params["bench_seeds"]) <= set(params["seeds"]), "bench_seeds",
           f"must be a non-empty subset of seeds {params['seeds']}")
    for name in ("val_n", "test_n", "synthetic_transfer_n", "transfer_n", "patience", "bench_cases", "processes"):
        _check(isinstance(params[name], int) and not isinstance(params[name], bool) and params[name] >= 0, name,
               f"must be an integer >= 0, got {params[name]!r}")
    _check(params["precision"] in ("auto", "fp32", "bf16"), "precision", "must be auto, fp32 or bf16")
    _check(params["task"] in ("outcome", "issue_area"), "task",
           f"must be outcome or issue_area, got {params['task']!r}")
    _check(isinstance(params["label_column"], str), "label_column", "must be a column name ('' = the task's own)")
    _check(params["rare_classes"] in ("merge", "drop"), "rare_classes", "must be merge or drop")
    _check(isinstance(params["min_class_count"], int) and not isinstance(params["min_class_count"], bool)
           and params["min_class_count"] >= 3, "min_class_count", "must be an integer >= 3 (one case per split)")
    if params["task"] != "outcome":
        from helpers.data.schema import check_template, label_column_for

        try:
            check_template(params["text_template"], label_column_for(params["task"], params["label_column"]))
        except ValueError as err:
            raise ConfigError(str(err) if str(err).startswith("parameter") else f"parameter text_template: {err}") \
                from err
    _check(params["launcher"] in ("inprocess", "accelerate"), "launcher", "must be inprocess or accelerate")
    if params["launcher"] == "accelerate" and params["processes"] == 0:
        import torch

        _check(params["device"] == "cuda" or (params["device"] == "auto" and torch.cuda.is_available()), "processes",
               "0 leaves the count to accelerate's config or the GPU count, and this run trains on the CPU: set "
               "processes (e.g. 2)")
    _check(isinstance(params["trim_vocab"], bool), "trim_vocab", "must be true or false")
    from helpers.core.constants import ARMS

    _check(isinstance(params["arms"], list) and "independent" in params["arms"]
           and set(params["arms"]) <= set(ARMS), "arms",
           f"must be a list of {', '.join(ARMS)} that includes independent, got {params['arms']!r}")
    _check("chain" not in params["arms"] or "distilled" in params["arms"], "arms",
           "chain needs distilled (its first link is direct distillation, and it is compared with it)")
    _check(isinstance(params["transfer_students"], list) and set(params["transfer_students"]) <= set(
        params["students"]), "transfer_students", "must be a subset of students ([] = all)")
    _check(isinstance(params["transfer_path"], str), "transfer_path", "must be a path string ('' = none)")
    _check(isinstance(params["transfer_curve"], list) and all(
        isinstance(v, num) and not isinstance(v, bool) and v > 0 for v in params["transfer_curve"]),
        "transfer_curve", "must be a list of positive multiples of the labelled training set ([] skips the curve)")
    _check(isinstance(params["transfer_curve_seeds"], list) and params["transfer_curve_seeds"]
           and set(params["transfer_curve_seeds"]) <= set(params["seeds"]), "transfer_curve_seeds",
           f"must be a non-empty subset of seeds {params['seeds']}")
    _check(isinstance(params["bench_warmup"], int) and params["bench_warmup"] >= 0, "bench_warmup", "must be >= 0")
    _check(isinstance(params["paper_repeats"], int) and not isinstance(params["paper_repeats"], bool)
           and params["paper_repeats"] >= 0, "paper_repeats", "must be an integer >= 0 (0: bench_repeats)")
    _check(isinstance(params["threads"], int) and params["threads"] >= 0, "threads", "must be an integer >= 0")
    _check(isinstance(params["teacher_lr"], num) and params["teacher_lr"] > 0, "teacher_lr",
           f"must be > 0, got {params['teacher_lr']!r}")
    for grid in ("student_lr_grid", "student_lr_grid_warm"):
        _check(isinstance(params[grid], list) and params[grid] and all(
            isinstance(v, num) and not isinstance(v, bool) and v > 0 for v in params[grid]), grid,
            f"must be a non-empty list of learning rates > 0, got {params[grid]!r}")
    for name in ("seeds", "attribution_seeds"):
        _check(isinstance(params[name], list) and params[name] and all(isinstance(s, int) for s in params[name]),
               name, f"must be a non-empty list of integers, got {params[name]!r}")
        _check(len(set(params[name])) == len(params[name]), name, "seeds must be distinct")
    _check(set(params["attribution_seeds"]) <= set(params["seeds"]), "attribution_seeds",
           f"must be a subset of seeds {params['seeds']}")
    _check(params["teacher_seed"] != params["ceiling_seed"], "ceiling_seed", "must differ from teacher_seed")
    _check(params["teacher_mode"] in ("cached", "online"), "teacher_mode", "must be 'cached' or 'online'")
    _check(params["device"] in ("auto", "cpu", "cuda"), "device", "must be auto, cpu or cuda")
    _check(params["selection_metric"] in ("accuracy", "macro_f1", "roc_auc"), "selection_metric",
           "must be accuracy, macro_f1 or roc_auc")
    _check(params["faithfulness_replacement"] in ("pad", "mask"), "faithfulness_replacement", "must be pad or mask")
    _check(isinstance(params["model_overrides"], dict), "model_overrides",
           "must be a mapping {spec name: folder|random}")
    _check(isinstance(params["recommend_tolerance"], num) and 0 <= params["recommend_tolerance"] < 1,
           "recommend_tolerance", "must be within [0, 1)")
    _check(isinstance(params["students"], list) and params["students"], "students", "must be a non-empty list")
    names = [params["teacher"], *params["students"]]
    for name in names:
        _check(name in REGISTRY, "teacher" if name == params["teacher"] else "students",
               f"unknown model spec {name!r} (known: {', '.join(REGISTRY)})")
    for name in params["model_overrides"]:
        _check(name in REGISTRY, "model_overrides", f"unknown model spec {name!r}")
    for name in names:
        limit = REGISTRY[name].max_positions
        _check(params["max_len"] <= limit, "max_len", f"{params['max_len']} exceeds {name}'s position limit {limit}")
    _check(params["max_len"] >= MIN_MAX_LEN, "max_len", f"must be at least {MIN_MAX_LEN} tokens")
