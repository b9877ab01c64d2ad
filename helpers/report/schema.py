"""The JSON Schema of `summary.json` (documented in docs/summary_schema.md) and its validator."""
from __future__ import annotations

import math
from typing import Any

from helpers.core.constants import ARMS

SCHEMA_VERSION = "5"
MODES = ["teacher", *ARMS]

_NUM = {"type": "number"}
_NUM_OR_NULL = {"type": ["number", "null"]}
_INT = {"type": "integer", "minimum": 0}
_STR = {"type": "string"}


def _object(properties: dict[str, Any], nullable: bool = False, extra: bool = False) -> dict[str, Any]:
    """An object schema whose every listed property is required."""
    return {"type": ["object", "null"] if nullable else "object", "required": list(properties),
            "properties": properties, "additionalProperties": extra}


_STAT = _object({"mean": _NUM, "std": _NUM_OR_NULL})  # std is null with a single seed
_STAT_OR_NAN = _object({"mean": _NUM_OR_NULL, "std": _NUM_OR_NULL})  # AUC is undefined with one class only
_INTERVAL = _object({"mean": _NUM, "ci_low": _NUM_OR_NULL, "ci_high": _NUM_OR_NULL, "ci_half_width": _NUM_OR_NULL,
                     "seeds": {"type": "array", "items": {"type": "integer"}}, "n_cases": _INT, "n_excluded": _INT},
                    nullable=True)

MODEL_ENTRY = _object({
    "name": _STR,
    "mode": {"enum": MODES},
    "role": {"enum": ["teacher", "student"]},
    "shape": _STR,
    "params": _INT,
    "non_embedding_params": _INT,
    "params_full_vocab": _INT,  # the same model with the whole 30,522-row vocabulary (equal when untrimmed)
    "val_accuracy": _NUM_OR_NULL,  # mean over seeds on validation: what the recommendation reads
    "training": _object({"lr": _NUM, "steps_mean": _NUM, "best_step_mean": _NUM, "stopped_early": _INT,
                         "train_seconds": _NUM, "examples_per_second": _NUM_OR_NULL, "did_not_learn": _INT},
                        nullable=True),
    "seeds": {"type": "array", "items": {"type": "integer"}, "minItems": 1},
    "size_mb": _NUM_OR_NULL,
    "latency_ms_b1": _NUM_OR_NULL,
    "latency_ms_b32": _NUM_OR_NULL,
    "speedup_vs_teacher": _NUM_OR_NULL,
    "accuracy": _STAT,
    "macro_f1": _STAT,
    "auc": _STAT_OR_NAN,
    "fidelity": _object({"agreement": _STAT, "kl_to_teacher": _STAT}, nullable=True),
    "attribution_cosine": _INTERVAL,
    "kd_gain": _object({"against": {"const": "independent"}, "diff": _NUM, "ci_low": _NUM_OR_NULL,
                        "ci_high": _NUM_OR_NULL, "p_value": _NUM_OR_NULL, "p_adjusted": _NUM_OR_NULL,
                        "n_seeds": _INT, "meaningful": {"type": "boolean"}, "did_not_learn": _STR, "verdict": _STR},
                       nullable=True),
    # chain students only: chain - distilled (the previous student as teacher vs the teacher itself)
    "chain_vs_direct": _object({"against": {"const": "distilled"}, "teacher": _STR, "teacher_params": _INT,
                                "diff": _NUM, "ci_low": _NUM_OR_NULL, "ci_high": _NUM_OR_NULL,
                                "p_value": _NUM_OR_NULL, "p_adjusted": _NUM_OR_NULL, "n_seeds": _INT,
                                "meaningful": {"type": "boolean"}, "did_not_learn": _STR, "verdict": _STR},
                               nullable=True),
})

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Distilling Justice run summary (summary.json)",
    **_object({
        "schema_version": {"const": SCHEMA_VERSION},
        "profile": _STR,
        "created": _STR,
        "question": _STR,
        "headline": _STR,
        "statistics": _STR,
        "precision": {"enum": ["fp32", "bf16"]},
        "task": _STR,  # outcome | issue_area (data/classes.json)
        "classes": {"type": "array", "items": _STR, "minItems": 2},  # class names in id order
        "verdicts": {"type": "array", "items": _object({"model": _STR, "arm": _STR, "against": _STR, "text": _STR})},
        "attribution_scope": {"type": ["string", "null"]},  # what the attribution intervals cover; null without 04
        # the attribution family: cosine agreement, every arm against independent and against distilled
        "attribution_verdicts": {"type": "array", "items": _object({"model": _STR, "arm": _STR, "against": _STR,
                                                                     "text": _STR})},
        "data": {"type": "object", "required": ["majority_rate", "baselines"], "properties": {
            "majority_rate": _NUM,
            "baselines": {"type": "object", "required": ["majority", "tfidf_logreg"]},
            "bayes_accuracy": {"type": "object"}}},
        "teacher": _object({
            "name": _STR, "shape": _STR, "seed": {"type": "integer"}, "params": _INT,
            "val_accuracy": _NUM, "accuracy": _NUM, "macro_f1": _NUM, "auc": _NUM_OR_NULL,
            "collapsed": {"type": "boolean"},
            "margin_over_tfidf": _NUM, "margin_over_majority": _NUM, "reference_accuracy": _NUM_OR_NULL,
            "reference_seeds": {"type": "array", "items": {"type": "integer"}},
            "attribution_cosine_reference": _INTERVAL}),
        "recommendation": _object({
            "meaningful": {"type": "boolean"}, "selected_on": {"const": "val"}, "model": {"type": ["string", "null"]},
            "mode": {"enum": [*MODES, None]}, "params": {"type": ["integer", "null"]},
            "val_accuracy": _NUM_OR_NULL, "accuracy": _NUM_OR_NULL, "teacher_val_accuracy": _NUM,
            "teacher_accuracy": _NUM_OR_NULL, "gap": _NUM_OR_NULL,
            "speedup_vs_teacher": _NUM_OR_NULL, "tolerance": {"type": "number", "minimum": 0}, "text": _STR}),
        "models": {"type": "array", "items": MODEL_ENTRY, "minItems": 1},
        "benchmark": _object({"environment": {"type": ["object", "null"]},
                              "paper": {"type": ["array", "null"], "items": {"type": "object"}}}, nullable=True),
    }),
}


class SummaryError(ValueError):
    """summary.json does not match its schema; the message lists every problem."""


def _non_finite(obj: Any, path: str = "$") -> list[str]:
    """Paths of NaN/inf values (not valid JSON; the builder writes null instead)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return [f"{path}: {obj} is not valid JSON (use null)"]
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _non_finite(v, f"{path}.{k}")]
    if isinstance(obj, (list, tuple)):
        return [p for i, v in enumerate(obj) for p in _non_finite(v, f"{path}[{i}]")]
    return []


def schema_errors(summary: Any) -> list[str]:
    """Every way `summary` breaks the schema, as 'path: message' lines (empty when valid)."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(SCHEMA)
    errors = sorted(validator.iter_errors(summary), key=lambda e: list(map(str, e.absolute_path)))
    lines = [f"{e.json_path}: {e.message}" for e in errors]
    return lines + _non_finite(summary)


def validate_summary(summary: Any) -> None:
    """Raise SummaryError listing every schema violation of `summary`."""
    errors = schema_errors(summary)
    if errors:
        raise SummaryError("summary.json does not match its schema:\n  " + "\n  ".join(errors[:20]))
