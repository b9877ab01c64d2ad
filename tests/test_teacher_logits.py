"""The teacher-logit cache: keyed by the teacher checkpoint and the data, refused when either changed."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers.data import SPLITS
from helpers.models import REGISTRY, build_model, save_model
from helpers.teacher_logits import cache_teacher_logits, load_teacher_logits, logits_key
from helpers.training import encode_splits

TEXTS = ["the court reversed the warrant", "appeal dismissed", "the state prevailed", "petitioner lost the case"]
MAX_LEN = 16


def _save_teacher(run_dir, seed):
    spec = REGISTRY["Smoke_Teacher_2x64"]
    save_model(build_model(spec, seed=seed), run_dir / "models" / "teacher", spec)


def test_cache_key_and_loading_follow_the_teacher_checkpoint_and_the_data(tmp_path):
    splits = {s: pd.DataFrame({"id": [f"{s}{i}" for i in range(4)], "text": TEXTS, "label": [1, 0, 1, 0]})
              for s in SPLITS}
    _save_teacher(tmp_path, seed=0)
    teacher_dir = tmp_path / "models" / "teacher"
    path, logits = cache_teacher_logits(tmp_path, splits, encode_splits(splits, MAX_LEN), MAX_LEN)
    key = logits_key(teacher_dir, splits, MAX_LEN)
    assert path.stem == key and logits["test"].shape == (4, 2)
    np.testing.assert_array_equal(load_teacher_logits(tmp_path, splits, MAX_LEN)["test"], logits["test"])

    # the data: a text, a label, the transfer pool or max_len changed -> another key, and no stale logits
    edited = {**splits, "test": splits["test"].assign(text=TEXTS[::-1])}
    relabelled = {**splits, "val": splits["val"].assign(label=[0, 0, 1, 0])}
    with_pool = {**splits, "transfer": pd.DataFrame({"id": ["t0"], "text": ["an unlabelled case"]})}
    for changed, max_len in ((edited, MAX_LEN), (relabelled, MAX_LEN), (with_pool, MAX_LEN), (splits, 32)):
        assert logits_key(teacher_dir, changed, max_len) != key
        with pytest.raises(FileNotFoundError, match="rerun notebook 02"):
            load_teacher_logits(tmp_path, changed, max_len)

    # the teacher: other weights under the same folder -> another key, and the cached logits are refused
    _save_teacher(tmp_path, seed=1)
    assert logits_key(teacher_dir, splits, MAX_LEN) != key
    with pytest.raises(FileNotFoundError, match="rerun notebook 02"):
        load_teacher_logits(tmp_path, splits, MAX_LEN)
