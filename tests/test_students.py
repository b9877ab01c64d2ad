"""Stage 03 on a tiny prepared run folder: the online teacher gives the cached teacher's results."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from helpers import data
from helpers.students import run_student_stage
from helpers.teacher import run_teacher_stage

MAX_LEN = 32


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """data.prepare on 300 synthetic cases and a one-epoch smoke teacher (fp32, CPU)."""
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    data.prepare(run_dir, synthetic_n=300, synthetic_seed=5, max_len=MAX_LEN)
    run_teacher_stage(run_dir, teacher="Smoke_Teacher_2x64", teacher_epochs=1, teacher_lr=1e-3, teacher_seed=0,
                      ceiling_seed=1, batch_size=16, max_len=MAX_LEN, precision="fp32", progress=False)
    return run_dir


def _students(run_dir, teacher_mode):
    return run_student_stage(run_dir, students=["Smoke_Tiny_1x32"], arms=["independent", "distilled"], seeds=[0],
                             max_steps=20, eval_every=10, patience=0, lr_grid=[2e-3], lr_grid_warm=[2e-3],
                             batch_size=16, alpha=0.5, temperature=4.0, max_len=MAX_LEN, teacher_mode=teacher_mode,
                             precision="fp32", bootstrap_n=50, workers=1, threads=1)


def test_online_teacher_matches_the_cached_logits(tiny_run, tmp_path):
    online_dir = tmp_path / "online"
    shutil.copytree(tiny_run, online_dir)
    cached = _students(tiny_run, "cached")
    online = _students(online_dir, "online")
    # Same batches, same seed; the teacher's logits differ only by batch padding (float rounding).
    assert list(cached["runs"]["batch_digest"]) == list(online["runs"]["batch_digest"])
    cols = ["model", "mode", "seed", "split", "accuracy", "macro_f1", "agreement", "kl_to_teacher"]
    pd.testing.assert_frame_equal(online["metrics"][cols], cached["metrics"][cols], atol=1e-3)
    preds = {mode: pd.read_csv(d / "models" / "predictions.csv").query("mode == 'distilled'")["prob_1"].to_numpy()
             for mode, d in (("cached", tiny_run), ("online", online_dir))}
    assert len(preds["cached"]) > 0
    np.testing.assert_allclose(preds["online"], preds["cached"], atol=1e-3)


def test_the_transfer_curve_trains_in_the_stage_and_only_reports(tmp_path):
    run_dir = tmp_path / "run"
    data.prepare(run_dir, synthetic_n=300, synthetic_seed=5, max_len=MAX_LEN, synthetic_transfer_n=150)
    run_teacher_stage(run_dir, teacher="Smoke_Teacher_2x64", teacher_epochs=1, teacher_lr=1e-3, teacher_seed=0,
                      ceiling_seed=1, batch_size=16, max_len=MAX_LEN, precision="fp32", progress=False)
    common = dict(students=["Smoke_Tiny_1x32"], arms=["independent", "distilled", "distilled_transfer"], seeds=[0, 1],
                  max_steps=12, eval_every=6, patience=0, lr_grid=[2e-3], lr_grid_warm=[2e-3], batch_size=16,
                  alpha=0.5, temperature=4.0, max_len=MAX_LEN, transfer_n=150, precision="fp32", bootstrap_n=20,
                  workers=1, threads=1)
    out = run_student_stage(run_dir, transfer_curve=[0.5], transfer_curve_seeds=[1], **common)
    curve = pd.read_csv(run_dir / "models" / "transfer_curve.csv")
    n_train = len(data.load_cases(run_dir)["train"])
    extra = int(round(0.5 * n_train))
    # 0 (the distilled arm) and 150 (the stage's own transfer arm) are read back; only the extra size is trained.
    assert sorted(curve["transfer_n"].unique()) == sorted({0, extra, 150})
    assert set(curve["seed"]) == {1} and set(curve["split"]) == {"val", "test"}
    pd.testing.assert_frame_equal(out["transfer_curve"], curve, check_dtype=False)
    runs = pd.read_csv(run_dir / "models" / "student_runs.csv")
    assert len(runs) == 6  # the curve's trial run is not one of the stage's runs
    assert not (run_dir / "models" / "students" / ".trials").exists()
    again = run_student_stage(run_dir, transfer_curve=[], **common)
    assert again["transfer_curve"] is None and not (run_dir / "models" / "transfer_curve.csv").exists()
