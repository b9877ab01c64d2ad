"""Where the project lives: the repository root and the profiles folder."""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # helpers/core/paths.py -> the repository
PROFILES_DIR = REPO_ROOT / "profiles"
