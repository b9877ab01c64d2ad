"""Rationale spans (the cue phrases the synthetic generator planted) and which of them a model can read."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from helpers.core.errors import DataError
from helpers.models.tokenization import get_tokenizer
from helpers.synthetic.generator import rationales_path


def _load_side_rationales(csv_path: Path) -> dict[str, dict] | None:
    side = rationales_path(csv_path)
    if not side.is_file():
        return None
    records = [json.loads(line) for line in side.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {str(r["ID"]): r for r in records}


def _spans(cases: pd.DataFrame, side: dict[str, dict], side_path: Path, uses_facts: bool) -> list[dict]:
    """Rationale char spans of each case's cue phrases, located in its model text."""
    out = []
    for case_id, text in zip(cases["id"], cases["text"]):
        rec = side.get(case_id)
        if rec is None:
            raise DataError(f"{side_path}: no rationale record for case ID {case_id}")
        spans = []
        for cue in rec["cues"]:
            start = text.find(cue["phrase"])
            if start < 0:
                if uses_facts:
                    raise DataError(f"{side_path}: cue phrase {cue['phrase']!r} not found in case {case_id}")
                continue
            end = start + len(cue["phrase"])
            assert text[start:end] == cue["phrase"]
            spans.append([start, end, cue["cue"]])
        out.append({"id": case_id, "spans": sorted(spans), "rule_prob": rec["rule_prob"]})
    return out


def _spans_inside(cases: pd.DataFrame, rationales: list[dict], max_len: int) -> list[list[bool]]:
    """Per case and rationale span: does its last character fall inside the first max_len tokens ([CLS]/[SEP]
    counted), i.e. can a model reading max_len tokens see that cue?"""
    tok = get_tokenizer()
    enc = tok(list(cases["text"]), add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    out = []
    for offsets, rec in zip(enc["offset_mapping"], rationales):
        starts = np.array([s for s, _ in offsets])
        out.append([bool((starts < end).sum() <= max_len - 2) for _, end, _ in rec["spans"]])
    return out


def load_rationales(run_dir: str | Path) -> dict[str, list[tuple[int, int, str]]]:
    """Case id -> [(start, end, cue)] char spans in its text; {} when the data has no rationales."""
    path = Path(run_dir) / "data" / "rationales.jsonl"
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            out[str(rec["id"])] = [(int(a), int(b), str(c)) for a, b, c in rec["spans"]]
    return out
