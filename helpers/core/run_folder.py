"""Paths and small plain-file helpers for the run folder every stage reads and writes."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from helpers.core.paths import REPO_ROOT


def project_path(path: str | Path) -> Path | str:
    """`path` with a relative path resolved against the project root (as the runner does); "" (unset) stays ""."""
    if str(path) == "":
        return ""
    p = Path(path).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p


def file_hash(path: str | Path) -> str:
    """SHA-256 of a file's bytes (a checkpoint's weights), read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_path(run_dir: str | Path, *parts: str) -> Path:
    """`run_dir/parts...`, parent folders created."""
    path = Path(run_dir).joinpath(*parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    """Write JSON atomically (temp file + rename) with indent 2."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_plain), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_json(path: str | Path) -> Any:
    """Read a JSON file written by an earlier stage, naming the stage to run when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the stage that writes it first (see docs/run-folder.md)")
    return json.loads(path.read_text(encoding="utf-8"))


def write_csv(path: str | Path, df: pd.DataFrame) -> Path:
    """Write a CSV atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path


def read_csv(path: str | Path, **kwargs) -> pd.DataFrame:
    """Read a CSV written by an earlier stage, naming the stage to run when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the stage that writes it first (see docs/run-folder.md)")
    return pd.read_csv(path, **kwargs)


def replace_rows(path: str | Path, new: pd.DataFrame, key: str, values: list[str]) -> pd.DataFrame:
    """Rewrite the CSV at `path` with rows whose `key` is in `values` replaced by `new`."""
    path = Path(path)
    old = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=new.columns)
    kept = old[~old[key].isin(values)] if key in old else old
    out = pd.concat([kept, new], ignore_index=True) if len(kept) else new.reset_index(drop=True)
    write_csv(path, out)
    return out


def read_index(run_dir: str | Path) -> dict[str, Any]:
    """`models/models.json`: every checkpoint of the run (teacher, reference teachers, students)."""
    return read_json(Path(run_dir) / "models" / "models.json")


def write_index(run_dir: str | Path, index: dict[str, Any]) -> Path:
    """Write `models/models.json`."""
    return write_json(Path(run_dir) / "models" / "models.json", index)


def _plain(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def save_figure(fig, run_dir: str | Path | None, name: str):
    """Tight-layout `fig` and, when `run_dir` is given, save it as `run_dir/figures/<name>`; return it."""
    fig.tight_layout()
    if run_dir is not None:
        folder = Path(run_dir) / "figures"
        folder.mkdir(parents=True, exist_ok=True)
        fig.savefig(folder / name, dpi=110, bbox_inches="tight")
    return fig
