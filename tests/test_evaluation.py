"""Metrics, the fast bootstrap metrics against sklearn, the paired bootstrap and the KD verdict."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from helpers.evaluation import (_metric_from_probs, classification_metrics, expected_calibration_error, is_collapsed,
                                paired_bootstrap, verdict)


def test_fast_metrics_equal_sklearn():
    rng = np.random.default_rng(0)
    for n in (5, 40, 199):
        labels = rng.integers(0, 2, n)
        probs = np.round(rng.random(n), 2)  # rounding makes ties
        preds = (probs >= 0.5).astype(int)
        assert _metric_from_probs("macro_f1", probs, labels, preds) == pytest.approx(
            f1_score(labels, preds, average="macro", zero_division=0))
        assert _metric_from_probs("roc_auc", probs, labels, preds) == pytest.approx(roc_auc_score(labels, probs))
    ones = np.ones(10, dtype=int)
    assert _metric_from_probs("macro_f1", np.ones(10), ones, ones) == pytest.approx(
        f1_score(ones, ones, average="macro", zero_division=0))
    assert np.isnan(_metric_from_probs("roc_auc", np.ones(10), ones, ones))


def test_classification_metrics_and_collapse():
    labels = np.array([1, 1, 1, 0])
    constant = np.tile([[0.0, 2.0]], (4, 1))  # always "first party wins"
    m = classification_metrics(constant, labels, teacher_logits=constant)
    assert m["accuracy"] == 0.75 and m["positive_rate"] == 1.0 and m["agreement"] == 1.0
    assert m["kl_to_teacher"] == pytest.approx(0.0, abs=1e-9)
    assert is_collapsed(m, majority_accuracy=0.75)
    good = classification_metrics(np.array([[0, 3], [0, 3], [0, 3], [3, 0]]), labels)
    assert good["accuracy"] == 1.0 and not is_collapsed(good, majority_accuracy=0.75)


def test_ece_is_zero_when_confidence_matches_accuracy():
    probs = np.array([[0.2, 0.8]] * 10)
    labels = np.array([1] * 8 + [0] * 2)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-9)
    assert expected_calibration_error(probs, np.zeros(10, dtype=int)) == pytest.approx(0.8)


def test_paired_bootstrap_covers_the_truth_and_detects_a_real_gain():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    tpred = labels.copy()
    good = np.where(labels == 1, 0.8, 0.2)[None, :].repeat(3, 0)
    noisy = np.where(rng.random((3, 300)) < 0.3, 1 - good, good)
    gain = paired_bootstrap(noisy, good, labels, tpred, "accuracy", n_boot=300)
    assert gain["ci_low"] > 0 and gain["ci_low"] <= gain["diff"] <= gain["ci_high"]
    same = paired_bootstrap(noisy, noisy, labels, tpred, "accuracy", n_boot=100)
    assert same["diff"] == 0 and same["ci_low"] == 0 and same["ci_high"] == 0


def test_verdict_lines():
    assert verdict(0.01, -0.02, 0.04).startswith("no evidence")
    assert verdict(0.05, 0.01, 0.09).startswith("distillation helped")
    assert verdict(-0.05, -0.09, -0.01).startswith("distillation hurt")
    assert verdict(0.05, 0.01, 0.09, meaningful=False, teacher_name="T").startswith("not meaningful")
