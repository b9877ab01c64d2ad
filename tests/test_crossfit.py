"""Cross-fitting (every case a test case once), the time estimate printed before a run, and the head + tail reading."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from helpers.config.resolve import resolve
from helpers.core.errors import ConfigError
from helpers.data.splits import crossfit_split
from helpers.models.tokenization import get_tokenizer, head_tail_ids, tokenize, window_ids
from helpers.run.crossfit import crossfit, fold_dir, pool_folds
from helpers.run.estimate import MEASURED, estimate_text
from helpers.training.datasets import encode


def _labels_and_groups(seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.choice(4, size=600, p=[0.5, 0.3, 0.15, 0.05])
    groups = [f"g{i}" for i in range(600)]
    for i in range(0, 60, 3):  # near-duplicate triples of one class
        groups[i + 1] = groups[i + 2] = groups[i]
        labels[i + 1] = labels[i + 2] = labels[i]
    return pd.Series(labels), pd.Series(groups)


def test_every_case_is_a_test_case_exactly_once_and_folds_are_stratified():
    labels, groups = _labels_and_groups()
    folds = 5
    splits = [crossfit_split(labels, groups, folds, k, val_frac=0.15, seed=42) for k in range(folds)]
    tested = np.stack([(s == "test").to_numpy() for s in splits])
    assert (tested.sum(axis=0) == 1).all()
    for s in splits:
        assert set(s) == {"train", "val", "test"}
        assert (s.groupby(groups).nunique() == 1).all()  # near-duplicates never straddle splits
        for c in range(4):  # each class spread evenly: a fold holds its 1/5 share, within one triple
            n_c = int((labels == c).sum())
            assert abs(int(((s == "test") & (labels == c)).sum()) - n_c / folds) <= 3
        assert abs((s == "val").mean() - 0.15) < 0.02 and not ((s == "val") & (s == "test")).any()
    again = crossfit_split(labels, groups, folds, 2, val_frac=0.15, seed=42)
    assert again.equals(splits[2])
    assert not crossfit_split(labels, groups, folds, 2, val_frac=0.15, seed=43).equals(splits[2])


@pytest.mark.parametrize("change, name", [({"cv_folds": 3, "cv_fold": 3, "test_n": 0}, "cv_fold"),
                                          ({"cv_folds": 3, "cv_fold": 0}, "test_n"),
                                          ({"cv_folds": 1}, "cv_folds")])
def test_crossfit_parameters_are_checked(change, name):
    with pytest.raises(ConfigError, match=name):
        resolve("default", overrides=change)


def test_smoke_crossfit_pools_every_case_once(tmp_path):
    # The smoke profile cut to what pooling needs (a teacher and one student's independent and distilled arms per
    # fold): the other arms pool the same way, and the smoke run (tests/conftest.py) trains them all.
    params = resolve("smoke", run_dir=str(tmp_path / "cf"), overrides={
        "students": ["Smoke_Half_1x64"], "arms": ["independent", "distilled"], "transfer_students": [],
        "reference_seeds": [], "transfer_curve": [], "synthetic_transfer_n": 0, "transfer_n": 0})
    pooled = crossfit(params, 2)
    cards = [json.loads((fold_dir(tmp_path / "cf", k) / "data" / "data_card.json").read_text()) for k in range(2)]
    usable = cards[0]["n_train"] + cards[0]["n_val"] + cards[0]["n_test"]
    assert pooled["summary"]["n_test_cases"] == cards[0]["n_test"] + cards[1]["n_test"] == usable
    assert all(c["cv_folds"] == 2 for c in cards) and [c["cv_fold"] for c in cards] == [0, 1]
    gain = pd.read_csv(tmp_path / "cf-crossfit" / "kd_gain.csv")
    assert {"distilled"} <= set(gain["arm"]) and gain["ci_low"].le(gain["ci_high"]).all()
    assert 0 < pooled["summary"]["teacher_test_accuracy"] <= 1
    with pytest.raises(ConfigError, match="share test cases"):  # the same fold twice is not a cross-fitting plan
        pool_folds([fold_dir(tmp_path / "cf", 0)] * 2, tmp_path / "bad")


def test_time_estimate_follows_the_profile_and_the_data_shape():
    default = resolve("default")
    seconds = MEASURED["default"]["seconds"]
    line = estimate_text(default, ["01", "02", "03", "04", "05"])
    assert f"about {sum(seconds.values()) / 60:.0f} min" in line and "measured data shape" in line
    longer = estimate_text({**default, "max_len": 128}, ["03"])  # twice the tokens: stage 03 twice as long
    assert "x2.00" in longer and f"about {2 * seconds['03'] / 60:.0f} min" in longer
    assert "none measured" in estimate_text({**default, "profile": "mine"}, ["01"])
    assert estimate_text(default, []) == ""


def test_head_tail_keeps_the_first_quarter_and_the_last_three_quarters():
    tok = get_tokenizer()
    long = " ".join(f"w{i}" for i in range(300))
    short = "the court affirmed"
    ids = head_tail_ids([long, short], 34)
    full = tok(long)["input_ids"]
    assert len(ids[0]) == 34 and ids[0][0] == tok.cls_token_id and ids[0][-1] == tok.sep_token_id
    assert ids[0][1:9] == full[1:9] and ids[0][9:-1] == full[-25:-1]  # 8 head + 24 tail of 32
    assert ids[1] == tokenize([short], 34)["input_ids"][0]
    assert [e["input_ids"] for e in encode([long], 34, "head_tail")] == ids[:1]
    with pytest.raises(ValueError, match="reading"):
        encode([long], 34, "middle")


def test_windows_cover_a_long_text_in_order_up_to_the_cap():
    tok = get_tokenizer()
    long = " ".join(f"w{i}" for i in range(300))
    short = "the court affirmed"
    full = tok(long)["input_ids"]
    body = full[1:-1]
    wins = window_ids([long, short], 34, max_windows=100)
    assert all(w[0] == tok.cls_token_id and w[-1] == tok.sep_token_id and len(w) <= 34 for w in wins[0])
    assert [t for w in wins[0] for t in w[1:-1]] == body  # every token once, in order, nothing overlapping
    assert len(wins[0]) == -(-len(body) // 32) and wins[1] == [tokenize([short], 34)["input_ids"][0]]
    assert window_ids([long], 34, max_windows=2)[0] == wins[0][:2]
    with pytest.raises(ValueError, match="max_windows"):
        window_ids([long], 34, max_windows=0)


def test_compare_reading_pools_a_case_by_the_mean_of_its_windows_and_checks_its_readings():
    import importlib.util

    from helpers.core.paths import REPO_ROOT

    spec = importlib.util.spec_from_file_location("compare_reading", REPO_ROOT / "scripts" / "compare_reading.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    logits = np.array([[1.0, 0.0], [3.0, 2.0], [0.0, 5.0]])
    np.testing.assert_allclose(script._pool(logits, np.array([0, 0, 1]), 2), [[2.0, 1.0], [0.0, 5.0]])
    assert script.parse_reading("windows:128") == ("windows", 128, None)
    assert script.parse_reading("head:256:weighted") == ("head", 256, "weighted")
    for bad in ("middle:128", "head:4", "head:128:balanced", "head"):
        with pytest.raises(SystemExit, match="--readings"):
            script.parse_reading(bad)
