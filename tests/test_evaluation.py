"""Metrics, the fast bootstrap metrics against sklearn, the paired bootstrap and the KD verdict."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import t as student_t
from sklearn.metrics import f1_score, roc_auc_score

from helpers.evaluation.metrics import (
    class_probs,
    classification_metrics,
    expected_calibration_error,
    is_collapsed,
    predicted_class,
)
from helpers.evaluation.verdicts import (
    CASE_VARIANCE_RESAMPLES,
    _metric_from_probs,
    holm,
    kd_gain_table,
    paired_difference,
    two_way_se,
    verdict,
    weighted_metric_rows,
)


def test_fast_metrics_equal_sklearn():
    rng = np.random.default_rng(0)
    for n in (5, 40, 199):
        labels = rng.integers(0, 2, n)
        probs = np.round(rng.random(n), 2)  # rounding makes ties
        preds = predicted_class(class_probs(probs))
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


def _simulated_run(rng, true_gain, n_seeds=5, n_cases=400, seed_sd=0.01):
    """Per-seed P(label=1) of two arms whose accuracies differ by `true_gain` on average over cases and seeds."""
    labels = rng.integers(0, 2, n_cases)
    base = 0.70
    a, b = [], []
    for _ in range(n_seeds):
        shift = rng.normal(0, seed_sd)
        for acc, out in ((base + shift, a), (base + shift + true_gain + rng.normal(0, seed_sd), b)):
            right = rng.random(n_cases) < acc
            out.append(np.where(right == (labels == 1), 0.8, 0.2))
    return np.array(a), np.array(b), labels


def _two_arm_experiment(rng, n_seeds=5, n_cases=2000, seed_sd=0.08, case_sd=1.3, inter_sd=0.9, rho=0.6):
    """One simulated comparison with the structure of a real run: fresh seeds and fresh test cases, a case effect
    (how clearly a case points to its label), seed effects and seed x case noise, both correlated between the two
    arms (the arms share seeds and cases). The arms are exchangeable, so every metric's true difference is 0.
    Magnitudes like the default run's: accuracy ~0.78, seed sd of the difference ~0.014, half-width ~0.018."""
    labels = (rng.random(n_cases) < 0.63).astype(int)
    evidence = 1.2 + rng.normal(0, case_sd, n_cases)
    cov = np.array([[1, rho], [rho, 1]])
    g = rng.multivariate_normal([0, 0], cov * seed_sd**2, size=n_seeds)
    e = rng.multivariate_normal([0, 0], cov * inter_sd**2, size=(n_seeds, n_cases))
    arms = []
    for arm in (0, 1):
        p_right = 1 / (1 + np.exp(-(evidence[None, :] + g[:, arm][:, None] + e[:, :, arm])))
        arms.append(np.where(labels == 1, p_right, 1 - p_right))
    teacher = np.where(rng.random(n_cases) < 0.8, labels, 1 - labels)
    return arms[0], arms[1], labels, teacher


@pytest.mark.parametrize("metric", ["accuracy", "agreement", "macro_f1", "roc_auc"])
def test_paired_difference_covers_at_its_nominal_level(metric):
    # 1,000 experiments at the default run's size (5 seeds, 2,000 test cases) and the run's resample count: the 95%
    # interval must cover the true difference 93-97% of the time. An interval that counts the seed x case term twice
    # with S - 1 degrees of freedom covers about 98% here, and one that ignores the seeds far less than 93%.
    rng = np.random.default_rng(11)
    hits, n = 0, 1000
    for _ in range(n):
        a, b, labels, teacher = _two_arm_experiment(rng)
        r = paired_difference(a, b, labels, teacher, metric, n_boot=CASE_VARIANCE_RESAMPLES)
        hits += r["ci_low"] <= 0.0 <= r["ci_high"]
    assert 0.93 <= hits / n <= 0.97, f"{metric}: coverage {hits / n:.3f}"


def test_two_way_interval_equals_a_hand_computation():
    # d[s, i]: per-case accuracy differences of 3 seeds on 6 cases, with clear seed and case effects.
    d = np.array([[1, 0, 1, 1, 1, 0], [-1, -1, 1, 1, 0, 0], [1, 0, 1, 0, 0, 1]], float)
    s, n = d.shape
    grand, seed_mean, case_mean = d.mean(), d.mean(1), d.mean(0)
    ms_seed = n * np.sum((seed_mean - grand) ** 2) / (s - 1)
    ms_case = s * np.sum((case_mean - grand) ** 2) / (n - 1)
    ms_res = np.sum((d - seed_mean[:, None] - case_mean[None, :] + grand) ** 2) / ((s - 1) * (n - 1))
    assert ms_seed > ms_res and ms_case > ms_res  # every component positive: the full formula applies
    var = (ms_seed + ms_case - ms_res) / (s * n)
    df = (ms_seed + ms_case - ms_res) ** 2 / (ms_seed**2 / (s - 1) + ms_case**2 / (n - 1)
                                              + ms_res**2 / ((s - 1) * (n - 1)))
    # the same differences as two arms' predictions: arm a right nowhere (label 1, P = 0.2) ...
    labels = np.ones(n, dtype=int)
    a = np.where(d < 0, 0.8, 0.2)  # ... except where d = -1 (a right, b wrong)
    b = np.where(d > 0, 0.8, 0.2)
    r = paired_difference(a, b, labels, labels, "accuracy")
    assert r["diff"] == pytest.approx(grand)
    assert r["se"] == pytest.approx(np.sqrt(var))
    assert r["df"] == pytest.approx(df)
    assert r["ci_high"] - r["diff"] == pytest.approx(student_t.ppf(0.975, df) * np.sqrt(var))
    se, dof = two_way_se(0.0, 1e-4, 0.5e-4, 5, 100)  # no seed variance: the case term alone, N - 1 df
    assert se == pytest.approx(1e-2) and dof == 99


@pytest.mark.parametrize("k", [2, 3])
def test_resampled_metrics_equal_the_metric_on_the_resampled_cases(k):
    rng = np.random.default_rng(4)
    n = 300
    labels, teacher = rng.integers(0, k, n), rng.integers(0, k, n)
    z = rng.normal(size=(3, n, k))
    probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    probs = probs.round(2) if k == 3 else probs[..., 1].round(2)  # rounding makes ties, as stored predictions have
    draws = [rng.integers(0, n, n) for _ in range(6)]
    weights = np.stack([np.bincount(i, minlength=n) for i in draws]).astype(float)
    for metric in ("accuracy", "agreement", "macro_f1", "roc_auc"):
        got = weighted_metric_rows(metric, probs, labels, teacher, weights)
        want = [[_metric_from_probs(metric, p[i], labels[i], teacher[i]) for p in probs] for i in draws]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12, err_msg=metric)


def test_paired_difference_detects_a_real_gain_and_not_a_null_one():
    rng = np.random.default_rng(1)
    a, b, labels = _simulated_run(rng, 0.08, n_cases=1000)
    gain = paired_difference(a, b, labels, labels, "accuracy")
    assert gain["ci_low"] > 0 and gain["p_value"] < 0.01
    assert gain["ci_low"] < gain["diff"] < gain["ci_high"]
    same = paired_difference(a, a, labels, labels, "accuracy")
    assert same["diff"] == 0 and same["ci_low"] == 0 and same["ci_high"] == 0 and same["p_value"] == 1.0
    auc = paired_difference(a, b, labels, labels, "roc_auc", n_boot=50)
    assert np.isfinite(auc["ci_low"]) and auc["ci_low"] < auc["ci_high"]


def test_holm_matches_a_hand_computation():
    p = [0.01, 0.04, 0.03, 0.005, float("nan")]
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> running max 0.06
    np.testing.assert_allclose(holm(p)[:4], [0.03, 0.06, 0.06, 0.02])
    assert np.isnan(holm(p)[4])
    assert holm([0.5, 0.9]).tolist() == [1.0, 1.0]


def test_kd_gain_table_on_hand_made_predictions():
    ids = [f"c{i}" for i in range(8)]
    labels = [1, 1, 1, 1, 0, 0, 0, 0]
    rows = []
    for seed in (0, 1):
        indep = [0.9, 0.9, 0.1, 0.1, 0.1, 0.1, 0.9, 0.9]  # 4/8 right
        dist = [0.9, 0.9, 0.9, 0.1, 0.1, 0.1, 0.1, 0.9]  # 6/8 right
        flat = [0.9] * 8  # one class only
        for mode, probs in (("independent", indep), ("distilled", dist), ("distilled_transfer", flat)):
            rows += [{"model": "S", "mode": mode, "seed": seed, "id": i, "label": y, "prob_1": p}
                     for i, y, p in zip(ids, labels, probs)]
    preds = pd.DataFrame(rows)
    teacher = pd.Series(labels, index=ids)
    runs = pd.DataFrame([{"model": "S", "mode": m, "seed": s,
                          "did_not_learn": "predicts class 1 for every validation case" if m == "distilled_transfer"
                          else ""} for m in ("independent", "distilled", "distilled_transfer") for s in (0, 1)])
    table = kd_gain_table(preds, ["S"], teacher, meaningful=True, n_boot=20, runs=runs)
    acc = table[table["metric"] == "accuracy"].set_index("arm")
    assert set(table["against"]) == {"independent"}
    assert acc.loc["distilled", "diff"] == pytest.approx(0.25)
    assert acc.loc["distilled", "independent_mean"] == pytest.approx(0.5)
    assert acc.loc["distilled", "arm_mean"] == pytest.approx(0.75)
    assert acc.loc["distilled", "n_seeds"] == 2
    assert acc.loc["distilled_transfer", "verdict"].startswith("not comparable")
    assert np.isnan(acc.loc["distilled_transfer", "p_adjusted"])
    assert acc.loc["distilled", "p_adjusted"] == pytest.approx(acc.loc["distilled", "p_value"])  # one comparison


def test_verdict_lines():
    assert verdict(0.01, -0.02, 0.04).startswith("no evidence")
    assert verdict(0.05, 0.01, 0.09).startswith("distillation helped")
    assert verdict(-0.05, -0.09, -0.01).startswith("distillation hurt")
    assert verdict(0.05, 0.01, 0.09, p_adjusted=0.2).startswith("no evidence after adjusting")
    assert "Holm-adjusted p = 0.01" in verdict(0.05, 0.01, 0.09, p_adjusted=0.01)
    assert verdict(0.0, 0.0, 0.0, did_not_learn="S did not learn").startswith("not comparable")
    assert verdict(0.05, 0.01, 0.09, meaningful=False, teacher_name="T").startswith("not meaningful")


def test_a_tie_goes_to_class_0_from_logits_and_from_probabilities(tmp_path):
    from helpers.training.checkpoints import teacher_predictions

    tied = np.zeros((3, 2))  # equal logits: P(label = 1) = 0.5 exactly
    labels = np.array([0, 0, 1])
    m = classification_metrics(tied, labels)
    assert m["positive_rate"] == 0.0 and m["accuracy"] == pytest.approx(2 / 3)
    assert predicted_class(class_probs(np.array([0.5, 0.5000001, 0.4999999]))).tolist() == [0, 1, 0]
    # two classes as K = 2 decide exactly like p > 0.5, also within rounding distance of 0.5
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.random(100_000), 0.5 + rng.integers(-2000, 2000, 4000) * np.finfo(float).eps,
                        [0.0, 1.0, 0.5, np.nextafter(0.5, 0), np.nextafter(0.5, 1)]])
    assert (predicted_class(class_probs(p)) == (p > 0.5)).all()
    probs = np.full(3, 0.5)
    assert _metric_from_probs("accuracy", probs, labels, labels) == pytest.approx(m["accuracy"])
    assert _metric_from_probs("agreement", probs, labels, np.zeros(3, dtype=int)) == 1.0
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "models.json").write_text('{"teacher": {"name": "T"}}')
    pd.DataFrame({"model": "T", "mode": "teacher", "seed": 0, "id": ["a", "b"], "label": [0, 1],
                  "prob_1": [0.5, 0.75]}).to_csv(tmp_path / "models" / "predictions.csv", index=False)
    assert teacher_predictions(tmp_path).to_dict() == {"a": 0, "b": 1}


def test_auc_is_nan_only_when_a_split_holds_one_class():
    from helpers.data import baselines as data_baselines
    from helpers.evaluation.metrics import safe_auc
    from helpers.stages import data as stages_data

    both, one = np.array([0, 1, 1, 0]), np.ones(4, dtype=int)
    constant = np.zeros(4, dtype=int)  # the majority-class baseline: a constant score, every pair a tie
    assert data_baselines._metrics(both, constant, None)["roc_auc"] == 0.5 == safe_auc(both, constant)
    assert np.isnan(data_baselines._metrics(one, constant, None)["roc_auc"]) and np.isnan(safe_auc(one, np.arange(4)))
    assert stages_data._round({"roc_auc": float("nan"), "accuracy": 0.123456}) == {"roc_auc": None, "accuracy": 0.1235}


def test_kd_gain_table_compares_the_chain_with_independent_and_with_direct_distillation():
    ids = [f"c{i}" for i in range(400)]  # 50 copies of 8 cases: enough to resolve the differences
    labels = [1, 1, 1, 1, 0, 0, 0, 0] * 50
    probs = {"independent": [0.9, 0.9, 0.1, 0.1, 0.1, 0.1, 0.9, 0.9] * 50,  # 4/8 right
             "distilled": [0.9, 0.9, 0.9, 0.1, 0.1, 0.1, 0.1, 0.9] * 50,  # 6/8 right
             "chain": [0.9, 0.9, 0.9, 0.9, 0.1, 0.1, 0.1, 0.9] * 50}  # 7/8 right
    preds = pd.DataFrame([{"model": "S", "mode": mode, "seed": seed, "id": i, "label": y, "prob_1": p}
                          for seed in (0, 1, 2) for mode, ps in probs.items() for i, y, p in zip(ids, labels, ps)])
    table = kd_gain_table(preds, ["S"], pd.Series(labels, index=ids), meaningful=True, n_boot=20)
    acc = table[table["metric"] == "accuracy"].set_index(["arm", "against"])
    assert set(acc.index) == {("distilled", "independent"), ("chain", "independent"), ("chain", "distilled")}
    assert acc.loc[("chain", "independent"), "diff"] == pytest.approx(0.375)
    direct = acc.loc[("chain", "distilled")]  # chain_vs_direct: chain - distilled, paired by seed
    assert direct["diff"] == pytest.approx(0.125)
    assert (direct["independent_mean"], direct["arm_mean"]) == (pytest.approx(0.75), pytest.approx(0.875))
    # chain vs direct is a secondary contrast: unadjusted, labelled so; the primary family is arm vs independent
    assert direct["endpoint"] == "secondary" and np.isfinite(direct["ci_low"]) and np.isnan(direct["p_adjusted"])
    assert direct["verdict"].startswith("secondary, unadjusted: the chain over direct distillation helped")
    assert acc.loc[("chain", "independent"), "verdict"].startswith("chain distillation helped")
    primary = acc[acc["endpoint"] == "primary"]
    assert set(primary.index) == {("distilled", "independent"), ("chain", "independent")}
    assert primary["p_adjusted"].max() <= 1 and (primary["p_adjusted"] >= primary["p_value"] - 1e-12).all()
    others = table[table["metric"] != "accuracy"]
    assert (others["endpoint"] == "secondary").all() and others["p_adjusted"].isna().all()
