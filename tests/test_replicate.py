"""Replication: what each run decided, how two runs' verdicts relate, and the command on a finished smoke run."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from helpers.core.errors import ConfigError
from helpers.run.replicate import compare_verdicts, decided, disjoint_seeds, outcome, replicate


def _gain_row(diff, lo, hi, endpoint="primary", p_adj=0.01, arm="distilled", against="independent", dnl=""):
    return {"model": "S", "arm": arm, "against": against, "metric": "accuracy", "diff": diff, "ci_low": lo,
            "ci_high": hi, "ci_half_width": (hi - lo) / 2, "endpoint": endpoint,
            "p_adjusted": p_adj if endpoint == "primary" else np.nan, "meaningful": True, "did_not_learn": dnl}


def test_a_primary_row_is_decided_only_after_holm_a_secondary_row_on_its_interval():
    rows = pd.DataFrame([_gain_row(0.03, 0.01, 0.05), _gain_row(0.03, 0.01, 0.05, p_adj=0.07),
                         _gain_row(-0.03, -0.05, -0.01), _gain_row(0.01, -0.01, 0.03),
                         _gain_row(0.02, 0.01, 0.03, endpoint="secondary"),
                         _gain_row(0.03, 0.01, 0.05, dnl="S distilled did not learn")])
    assert [decided(r) for r in rows.itertuples()] == [1, 0, -1, 0, 1, 0]


def test_outcomes():
    assert outcome(1, 1) == "agree: both helped" and outcome(0, 0) == "agree: both undecided"
    assert outcome(1, -1) == "contradict" and outcome(1, 0) == outcome(0, -1) == "one undecided"
    assert disjoint_seeds([0, 1, 2, 3, 4]) == [5, 6, 7, 8, 9] and disjoint_seeds([3, 1]) == [4, 5]


def test_compare_verdicts_pairs_rows_by_student_arm_and_reference(tmp_path):
    a = [_gain_row(0.03, 0.01, 0.05), _gain_row(0.02, 0.0, 0.04, arm="chain"),
         _gain_row(0.01, -0.01, 0.03, arm="distilled_transfer", against="pseudo_label_transfer",
                   endpoint="secondary")]
    b = [_gain_row(-0.02, -0.03, -0.01), _gain_row(0.02, 0.01, 0.03, arm="chain", p_adj=0.2),
         _gain_row(0.012, -0.01, 0.034, arm="distilled_transfer", against="pseudo_label_transfer",
                   endpoint="secondary")]
    for name, rows in (("a", a), ("b", b)):
        (tmp_path / name / "models").mkdir(parents=True)
        pd.DataFrame(rows).to_csv(tmp_path / name / "models" / "kd_gain.csv", index=False)
    t = compare_verdicts(tmp_path / "a", tmp_path / "b").set_index(["arm", "against"])
    assert t.loc[("distilled", "independent"), "outcome"] == "contradict"
    assert t.loc[("chain", "independent"), "outcome"] == "agree: both undecided"  # b's interval clears 0, Holm does not
    assert t.loc[("distilled_transfer", "pseudo_label_transfer"), "outcome"] == "agree: both undecided"
    assert t.loc[("distilled", "independent"), "shift"] == pytest.approx(-0.05)


def test_replicate_reruns_only_the_student_stage_with_disjoint_seeds(smoke_run, tmp_path):
    out = tmp_path / "replicate"
    table = replicate(smoke_run, out_dir=out)
    runs = pd.read_csv(out / "models" / "student_runs.csv")
    assert set(runs["seed"]) == {2, 3}  # the smoke run's seeds were 0 and 1
    # data and teacher were reused: their manifests are the run's, byte for byte
    for stage in ("01_prepare_data", "02_train_teacher"):
        assert (out / "manifests" / f"{stage}.json").read_text() == \
            (smoke_run / "manifests" / f"{stage}.json").read_text()
    assert json.loads((out / "manifests" / "03_train_students.json").read_text())["hash"]
    saved = pd.read_csv(out / "replication.csv")
    assert len(saved) == len(table) > 0
    gain = pd.read_csv(smoke_run / "models" / "kd_gain.csv")
    assert len(table) == int((gain["metric"] == "accuracy").sum())
    assert set(table["outcome"]) <= {"agree: both helped", "agree: both hurt", "agree: both undecided",
                                     "contradict", "one undecided"}


def test_replicate_refuses_the_same_corpus_and_an_unfinished_run(smoke_run, tmp_path):
    with pytest.raises(ConfigError, match="already used that corpus"):
        replicate(smoke_run, synthetic_seed=7, out_dir=tmp_path / "x")  # the smoke profile's own generator seed
    with pytest.raises(ConfigError, match="not a finished run folder"):
        replicate(tmp_path / "nothing", out_dir=tmp_path / "y")
