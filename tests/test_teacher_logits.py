"""The teacher-logit cache: keyed by the teacher checkpoint and the data, refused when either changed."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import data_params, teacher_params

from helpers.core.constants import SPLITS
from helpers.models.build import build_model, save_model
from helpers.models.specs import REGISTRY
from helpers.training.datasets import encode_splits
from helpers.training.teacher_logits import cache_teacher_logits, load_teacher_logits, logits_key

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


def test_a_second_teacher_stage_in_one_process_scores_its_own_checkpoint(tmp_path):
    """Stage 02 rerun in the same kernel (workers 1) after retraining: the cached logits come from the new teacher,
    not from a checkpoint or cases an earlier call loaded."""
    from helpers.core.run_folder import read_json
    from helpers.data.store import load_cases
    from helpers.models.build import load_model
    from helpers.stages import data
    from helpers.stages.teacher import run_teacher_stage
    from helpers.training.datasets import encode
    from helpers.training.loop import predict_logits
    from helpers.training.teacher_logits import load_teacher_logits

    run_dir = tmp_path / "run"
    data.prepare(data_params(run_dir, synthetic_n=300, synthetic_seed=5, max_len=32))
    seen = []
    for seed in (0, 3):
        run_teacher_stage(teacher_params(run_dir, teacher="Smoke_Teacher_2x64", teacher_epochs=1, teacher_lr=1e-3,
                                         teacher_seed=seed, reference_seeds=[1] if seed == 0 else [],
                                         batch_size=16, max_len=32,
                                         precision="fp32",
                                         workers=1), progress=False)
        cases = load_cases(run_dir)
        cached = load_teacher_logits(run_dir, cases, 32)["test"]
        direct = predict_logits(load_model(run_dir / "models" / "teacher"), encode(cases["test"]["text"].tolist(), 32))
        np.testing.assert_allclose(cached, direct, atol=1e-5)
        seen.append(cached)
        references = read_json(run_dir / "models" / "teacher_metrics.json")["reference_test_per_seed"]
        assert [r["seed"] for r in references] == ([1] if seed == 0 else [])  # reference_seeds []: none trained
    assert not np.allclose(seen[0], seen[1])  # two different teachers, so the check above can fail
