"""The JUSTICE csv schema: reading, cleaning, labels, the model text template and its leakage checks."""
from __future__ import annotations

import html
import io
import math
import re
import string
from pathlib import Path

import numpy as np
import pandas as pd

from helpers.core.errors import DataError

REQUIRED_COLUMNS = ("first_party", "second_party", "facts", "first_party_winner")  # of the outcome task
TASKS = {"outcome": "first_party_winner", "issue_area": "issue_area"}  # task -> its default label column
OTHER = "Other"  # the class that rare classes merge into (rare_classes: merge)
RARE_CLASSES = ("merge", "drop")
TEMPLATE_FIELDS = ("first_party", "second_party", "facts", "term", "issue_area", "name")
LEAKING_COLUMNS = ("majority_vote", "minority_vote", "decision_type", "disposition", "first_party_winner")
LABEL_VALUES = {"TRUE": 1, "True": 1, "true": 1, "1": 1, "1.0": 1,
                "FALSE": 0, "False": 0, "false": 0, "0": 0, "0.0": 0}
SPLIT_COLUMNS = ["id", "text", "label", "first_party", "second_party", "issue_area", "term", "n_words", "n_tokens"]
OUTCOME = {0: "second party wins", 1: "first party wins"}
_BLOCK_TAG = re.compile(r"</?(p|br|div|li|ul|ol|h[1-6]|blockquote|tr|td|table)\b[^>]*>", re.IGNORECASE)
_ANY_TAG = re.compile(r"<[^>]+>")


def clean_facts(html_text: str) -> str:
    """Plain text from HTML facts: tags removed, entities unescaped, whitespace collapsed."""
    if not isinstance(html_text, str):
        return ""
    text = _ANY_TAG.sub("", _BLOCK_TAG.sub(" ", html_text))
    return re.sub(r"\s+", " ", html.unescape(text)).strip()


def _clean_field(value: object) -> str:
    return clean_facts(value) if isinstance(value, str) else ""


def label_column_for(task: str, label_column: str = "") -> str:
    """The csv column holding the task's label: `label_column` when given, else the task's default."""
    if task not in TASKS:
        raise ValueError(f"parameter task: unknown task {task!r} (known: {', '.join(TASKS)})")
    return label_column or TASKS[task]


def check_template(text_template: str, label_column: str | None = None) -> list[str]:
    """Fields named by text_template; raises ValueError for unknown, outcome-leaking or label fields.

    `label_column`: the task's label column (e.g. issue_area), which the model text must not contain.
    """
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(text_template) if f is not None]
    except ValueError as err:
        raise ValueError(f"text_template {text_template!r} is not a valid format string: {err}") from err
    if label_column and label_column in fields:
        raise ValueError(f"parameter text_template: {text_template!r} names {{{label_column}}}, the label column of "
                         f"this task (parameter task / label_column): the model would read the answer. Remove "
                         f"{{{label_column}}} from text_template, e.g. "
                         f"'{{first_party}} v. {{second_party}}. {{facts}}'")
    leaking = [f for f in fields if f in LEAKING_COLUMNS]
    if leaking:
        raise ValueError(f"text_template {text_template!r} names {leaking}, which reveal the outcome and must "
                         f"never reach the model; allowed fields: {list(TEMPLATE_FIELDS)}")
    unknown = [f for f in fields if f not in TEMPLATE_FIELDS]
    if unknown:
        raise ValueError(f"text_template {text_template!r} names unknown field(s) {unknown}; "
                         f"allowed fields: {list(TEMPLATE_FIELDS)}")
    if not fields:
        raise ValueError(f"text_template {text_template!r} names no field; use e.g. '{{facts}}'")
    return fields


def read_justice_csv(path: Path, label_column: str = "first_party_winner") -> pd.DataFrame:
    """The csv at path as strings (blanks kept as ''), or DataError saying why it cannot be read."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a CSV file")
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"{path}: file is empty")
    if b"\x00" in raw:
        raise DataError(f"{path}: not a CSV text file (binary content with NUL bytes: a spreadsheet, an image, "
                        "or UTF-16 text?)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); "
                        "re-save the file as UTF-8") from err
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as err:
        raise DataError(f"{path}: could not be parsed as CSV: {err}") from err
    df.columns = [str(c).strip() for c in df.columns]
    required = [*REQUIRED_COLUMNS[:3], label_column]
    missing = [c for c in required if c not in df.columns]
    if missing:
        hint = " (is it a comma-separated CSV?)" if len(df.columns) <= 1 else ""
        raise DataError(f"{path}: required column(s) missing: {missing}; found {list(df.columns)[:20]}{hint}")
    return df.drop(columns=[c for c in df.columns if c == "" or c.startswith("Unnamed: ")])


def parse_labels(series: pd.Series, path: str | Path) -> pd.Series:
    """first_party_winner as nullable 0/1 (NA where blank); DataError listing values outside the accepted set."""
    def norm(v: object) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, (bool, np.bool_)):
            return "True" if v else "False"
        return str(v).strip()

    values = [norm(v) for v in series]
    bad = [(i + 1, v) for i, v in enumerate(values) if v and v not in LABEL_VALUES]
    if bad:
        shown = ", ".join(f"row {r}: {v!r}" for r, v in bad[:5])
        raise DataError(f"{path}: {len(bad)} label(s) in first_party_winner outside the accepted set "
                        f"{sorted(set(LABEL_VALUES))} (rows counted from 1 after the header): {shown}")
    return pd.Series([LABEL_VALUES[v] if v else pd.NA for v in values], index=series.index, dtype="Int64")


def _group_keys(texts: pd.Series) -> pd.Series:
    """Near-duplicate key: lower case, punctuation and whitespace runs collapsed."""
    return texts.str.lower().str.replace(r"[\W_]+", " ", regex=True).str.strip()


def _model_texts(df: pd.DataFrame, path: Path, text_template: str, id_prefix: str = "",
                 label_column: str | None = None) -> pd.DataFrame:
    """id, model text and the cleaned party/area/term columns of every row with non-empty facts."""
    fields = check_template(text_template, label_column)
    absent = [f for f in fields if f not in df.columns]
    if absent:
        raise DataError(f"{path}: text_template {text_template!r} names column(s) {absent} the file lacks")
    cols = {f: df[f].map(_clean_field) if f in df.columns else pd.Series("", index=df.index)
            for f in TEMPLATE_FIELDS if f != "facts"}
    cols["facts"] = df["facts"]
    text = pd.Series([re.sub(r"\s+", " ", text_template.format(**{f: cols[f][i] for f in fields})).strip()
                      for i in df.index], index=df.index, dtype=object)
    ids = df["ID"].map(str).str.strip() if "ID" in df.columns else pd.Series("", index=df.index)
    ids = pd.Series([id_prefix + (v or f"row{i + 1}") for i, v in zip(range(len(df)), ids)], index=df.index)
    out = pd.DataFrame({"id": ids, "text": text, "first_party": cols["first_party"],
                        "second_party": cols["second_party"], "issue_area": cols["issue_area"], "term": cols["term"]})
    return out[out["text"] != ""]


def parse_class_labels(series: pd.Series) -> pd.Series:
    """A many-class label column as cleaned class names (NA where blank)."""
    names = series.map(_clean_field)
    return names.where(names != "", pd.NA)


def _build_cases(df: pd.DataFrame, path: Path, text_template: str, task: str = "outcome",
                 label_column: str = "first_party_winner") -> tuple[pd.DataFrame, dict]:
    """Cleaned, labelled, deduplicated cases with their model text, and the drop counts.

    The outcome task's label is 0/1; a many-class task's label is the class name (mapped to ids by _assign_classes).
    """
    check_template(text_template, None if task == "outcome" else label_column)
    labels = (parse_labels(df[label_column], path) if task == "outcome" else parse_class_labels(df[label_column]))
    counts = {"n_raw": len(df), "n_dropped_blank_label": int(labels.isna().sum())}
    df = df.assign(label=labels)[labels.notna()]
    facts = df["facts"].map(clean_facts)
    counts["n_dropped_empty_text"] = int((facts == "").sum())
    df = df.assign(facts=facts)[facts != ""]
    cases = _model_texts(df, path, text_template, label_column=None if task == "outcome" else label_column)
    label = df.loc[cases.index, "label"]
    cases.insert(2, "label", label.astype(int) if task == "outcome" else label.astype(str))
    dup = cases["text"].duplicated(keep="first")
    counts["n_duplicates_removed"] = int(dup.sum())
    cases = cases[~dup].reset_index(drop=True)
    if cases.empty:
        raise DataError(f"{path}: no usable rows left after cleaning ({counts['n_raw']} raw rows, "
                        f"{counts['n_dropped_blank_label']} with a blank label, "
                        f"{counts['n_dropped_empty_text']} with empty facts)")
    seen: dict[str, int] = {}
    unique_ids = []
    for v in cases["id"]:  # a repeated ID gets a stable suffix so every case stays addressable
        seen[v] = seen.get(v, 0) + 1
        unique_ids.append(v if seen[v] == 1 else f"{v}-{seen[v]}")
    cases["id"] = unique_ids
    return cases, counts


def _build_transfer(df: pd.DataFrame, path: Path, text_template: str, labelled_groups: set[str],
                    label_column: str | None = None) -> tuple[pd.DataFrame, dict]:
    """Unlabelled transfer cases (any label column is ignored): cleaned, deduplicated, disjoint from the labelled
    cases' near-duplicate groups (a transfer case must never be a copy of a validation or test case)."""
    facts = df["facts"].map(clean_facts)
    df = df.assign(facts=facts)[facts != ""]
    cases = _model_texts(df, path, text_template, id_prefix="T", label_column=label_column)
    if label_column == "issue_area":  # the unlabelled pool carries no label, not even as a descriptive column
        cases["issue_area"] = ""
    groups = _group_keys(cases["text"])
    overlap = groups.isin(labelled_groups)
    dup = groups.duplicated(keep="first") & ~overlap
    counts = {"n_transfer_raw": len(facts), "n_transfer_dropped_empty_text": int((facts == "").sum()),
              "n_transfer_dropped_overlap": int(overlap.sum()), "n_transfer_duplicates_removed": int(dup.sum())}
    cases = cases[~overlap & ~dup].reset_index(drop=True)
    return cases, counts
