"""Two runs compared row by row (helpers.report.comparison): paired differences, and what else differs."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd

from helpers.report.comparison import compare_runs, confounds


def test_a_run_compared_with_itself_differs_by_nothing_and_has_no_confounds(smoke_run):
    table = compare_runs(smoke_run, smoke_run, n_boot=20)
    assert len(table) and (table["seeds"] >= 1).all()
    np.testing.assert_allclose(table["accuracy_diff"], 0.0, atol=1e-12)
    np.testing.assert_allclose(table["agreement_diff"], 0.0, atol=1e-12)
    assert (table["lr_a"] == table["lr_b"]).all() and table["lr_a"].notna().all()
    assert (table["verdict_a"] == table["verdict_b"]).all()
    assert confounds(table) == []


def test_a_different_learning_rate_is_named_as_a_confound(smoke_run, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(smoke_run, other)
    runs_csv = other / "models" / "student_runs.csv"
    runs = pd.read_csv(runs_csv)
    model = runs["model"].iloc[0]
    runs.loc[runs["model"] == model, "lr"] = runs.loc[runs["model"] == model, "lr"] * 2
    runs.to_csv(runs_csv, index=False)
    table = compare_runs(smoke_run, other, n_boot=20)
    notes = confounds(table)
    changed = table[table["model"] == model]
    assert len(notes) == len(changed) + 1  # one line per affected row, then what to do about it
    assert all(model in n and "learning rate" in n for n in notes[:-1])
    assert "student_lr_grid" in notes[-1]
    assert not any(m in " ".join(notes[:-1]) for m in set(table["model"]) - {model})
