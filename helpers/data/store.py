"""The run folder's data/ files: splits, cases, classes, vocabulary, transfer pool and data card."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from helpers.core.constants import SPLITS, TRANSFER
from helpers.data.schema import OUTCOME, TASKS
from helpers.models.specs import vocabulary_ids
from helpers.models.tokenization import tokenize

CLASSES_FILE = "classes.json"


def write_classes(folder: Path, task: str, label_column: str, classes: list[str]) -> None:
    """folder/classes.json: the task, its label column and the class names in id order."""
    (folder / CLASSES_FILE).write_text(json.dumps({"task": task, "label_column": label_column, "classes": classes},
                                                  indent=2) + "\n", encoding="utf-8")


def load_classes(run_dir: str | Path) -> dict:
    """`data/classes.json`: {"task", "label_column", "classes"} (class names in id order); a run folder written
    before the file existed is the outcome task."""
    path = Path(run_dir) / "data" / CLASSES_FILE
    if not path.is_file():
        return {"task": "outcome", "label_column": TASKS["outcome"], "classes": [OUTCOME[0], OUTCOME[1]]}
    return json.loads(path.read_text(encoding="utf-8"))


def write_vocabulary(folder: Path, texts: list[str], max_len: int) -> list[int]:
    """Wordpiece ids the run's texts use within max_len (+ specials) -> folder/vocab.json."""
    ids = vocabulary_ids(tokenize(texts, max_len, verbose=False)["input_ids"])
    (folder / "vocab.json").write_text(json.dumps({"max_len": int(max_len), "n": len(ids), "ids": ids}) + "\n",
                                       encoding="utf-8")
    return ids


def load_vocabulary(run_dir: str | Path) -> list[int]:
    """The wordpiece ids written by prepare() (data/vocab.json)."""
    return json.loads((Path(run_dir) / "data" / "vocab.json").read_text(encoding="utf-8"))["ids"]


def load_transfer(run_dir: str | Path) -> pd.DataFrame | None:
    """The unlabelled transfer cases (data/transfer.csv: id, text, n_tokens), or None when the run has none."""
    path = Path(run_dir) / "data" / "transfer.csv"
    if not path.is_file():
        return None
    return pd.read_csv(path, dtype={"id": str, "text": str, "n_tokens": int}, keep_default_na=False)


def _swap_into_place(staging: Path, target: Path) -> None:
    """Replace target with staging in two renames, so a reader sees the old or the new folder, never a mix."""
    target.parent.mkdir(parents=True, exist_ok=True)
    backup = None
    if target.exists():
        backup = target.with_name(f".{target.name}-old-{staging.name}")
        target.rename(backup)
    staging.rename(target)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def load_splits(run_dir: str | Path) -> dict[str, pd.DataFrame]:
    """The train/val/test cases written by prepare()."""
    dtypes = {"id": str, "text": str, "label": int, "first_party": str, "second_party": str,
              "issue_area": str, "term": str, "n_words": int, "n_tokens": int}
    return {s: pd.read_csv(Path(run_dir) / "data" / f"{s}.csv", dtype=dtypes, keep_default_na=False)
            for s in SPLITS}


def load_cases(run_dir: str | Path) -> dict[str, pd.DataFrame]:
    """The labelled splits plus, when the run has one, the unlabelled transfer pool under TRANSFER."""
    cases = load_splits(run_dir)
    transfer = load_transfer(run_dir)
    if transfer is not None:
        cases[TRANSFER] = transfer
    return cases


def load_data_card(run_dir: str | Path) -> dict:
    """The data card written by prepare()."""
    return json.loads((Path(run_dir) / "data" / "data_card.json").read_text(encoding="utf-8"))
