"""The many-class (issue-area) task: classes, splits, metrics, KD loss, logits shapes and one pipeline run."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import data_params
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from helpers.config.resolve import resolve
from helpers.core import constants as core_constants
from helpers.core.errors import ConfigError
from helpers.data import schema as data_schema
from helpers.data import store as data_store
from helpers.evaluation import metrics as evaluation_metrics
from helpers.evaluation import verdicts as evaluation_verdicts
from helpers.evaluation.metrics import classification_metrics, is_collapsed, softmax
from helpers.evaluation.verdicts import kd_gain_table, paired_difference
from helpers.stages import data as stages_data
from helpers.synthetic.generator import generate_cases
from helpers.training.losses import distillation_loss


def write_areas(path, counts: dict[str, int], blank: int = 0):
    """A JUSTICE-style csv whose issue_area column has `counts` cases per area (distinct facts) plus blank ones."""
    rows, i = [], 0
    for area, n in [*counts.items(), ("", blank)]:
        for _ in range(n):
            rows.append({"ID": 1000 + i, "first_party": f"Alpha{i}", "second_party": f"Beta{i}",
                         "facts": f"<p>Case {i} is about {area or 'nothing'} number {i * 13}.</p>",
                         "first_party_winner": "TRUE" if i % 3 else "FALSE", "issue_area": area, "term": "2001"})
            i += 1
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


# ---------------------------------------------------------------- data: classes, rare classes, splits, template
def test_rare_classes_merge_into_other_and_are_counted(tmp_path):
    path = write_areas(tmp_path / "areas.csv", {"Civil Rights": 60, "Criminal Procedure": 90, "Unions": 40,
                                                "Privacy": 12, "Attorneys": 9}, blank=5)
    card = stages_data.prepare(data_params(tmp_path / "run", data_path=str(path), task="issue_area", min_class_count=20,
                                           max_len=32))
    assert card["n_dropped_blank_label"] == 5
    assert card["classes"] == ["Criminal Procedure", "Civil Rights", "Unions", "Other"]  # by frequency, Other last
    assert card["merged_into_other"] == {"Attorneys": 9, "Privacy": 12} and card["n_dropped_rare_class"] == 0
    assert sum(card["class_counts"][s]["Other"] for s in core_constants.SPLITS) == 21
    classes = data_store.load_classes(tmp_path / "run")
    assert classes == {"task": "issue_area", "label_column": "issue_area", "classes": card["classes"]}
    splits = data_store.load_splits(tmp_path / "run")
    test = splits["test"]
    # the label is the class id; the issue_area column keeps the original (unmerged) area
    assert set(test.loc[test["issue_area"].isin(["Privacy", "Attorneys"]), "label"]) <= {3}
    assert card["baselines"]["majority"]["test"]["accuracy"] == pytest.approx(
        (test["label"] == 0).mean(), abs=1e-4)

    card = stages_data.prepare(data_params(tmp_path / "run2", data_path=str(path), task="issue_area",
                                           min_class_count=20, max_len=32, rare_classes="drop"))
    assert card["classes"] == ["Criminal Procedure", "Civil Rights", "Unions"]
    assert card["n_dropped_rare_class"] == 21 and card["dropped_classes"] == {"Attorneys": 9, "Privacy": 12}
    assert card["n_train"] + card["n_val"] + card["n_test"] == 190


def test_k_class_split_is_stratified_with_every_class_in_every_split(tmp_path):
    card = stages_data.prepare(data_params(tmp_path / "run", synthetic_n=700, synthetic_seed=3, max_len=32,
                                           task="issue_area", val_n=120, test_n=200))
    splits = data_store.load_splits(tmp_path / "run")
    k = len(card["classes"])
    assert k >= 5 and card["task"] == "issue_area"
    shares = {s: np.bincount(splits[s]["label"], minlength=k) / len(splits[s]) for s in core_constants.SPLITS}
    for s in core_constants.SPLITS:
        assert (np.bincount(splits[s]["label"], minlength=k) > 0).all(), s
        assert np.abs(shares[s] - shares["train"]).max() < 0.03, s  # stratified: the same class mix everywhere
    assert "bayes_accuracy" not in card and not (tmp_path / "run" / "data" / "rationales.jsonl").exists()
    assert card["baselines"]["tfidf_logreg"]["test"]["accuracy"] > card["majority_rate"] + 0.1  # text carries it


def test_a_template_naming_the_label_column_is_refused():
    with pytest.raises(ValueError, match="text_template.*issue_area"):
        data_schema.check_template("{facts} ({issue_area})", "issue_area")
    assert data_schema.check_template("{facts} ({issue_area})") == ["facts", "issue_area"]  # fine for the outcome task
    with pytest.raises(ConfigError, match="parameter text_template"):
        resolve("smoke", overrides={"task": "issue_area", "text_template": "Area {issue_area}. {facts}"})
    with pytest.raises(ConfigError, match="parameter task"):
        resolve("smoke", overrides={"task": "winner"})
    assert resolve("smoke", overrides={"task": "issue_area"})["task"] == "issue_area"


def test_the_outcome_generator_is_unchanged_and_the_area_signal_overlaps():
    df, _ = generate_cases(200, 7)
    digest = hashlib.sha256("\n".join(df["facts"] + df["first_party_winner"] + df["issue_area"]).encode()).hexdigest()
    # the default profile's verdicts were measured on this output: the issue-area task must not change it
    assert digest[:16] == "095efd00d02e64ba"
    area, _ = generate_cases(200, 7, task="issue_area")
    assert (area["issue_area"] == "").sum() <= 5 and (area["facts"] != df["facts"]).any()
    # area vocabulary appears in cases of other (related) areas too: no single giveaway phrase
    from helpers.synthetic.generator import AREA_TERMS

    term = AREA_TERMS["Due Process"][1]
    big, _ = generate_cases(1500, 7, task="issue_area")
    holders = set(big.loc[big["facts"].str.contains(term, regex=False), "issue_area"]) - {""}
    assert "Due Process" in holders and len(holders) >= 2


# ---------------------------------------------------------------- metrics, bootstrap helpers, KD loss, shapes
def test_k_class_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3)) + 1.5 * np.eye(3)[labels]
    teacher = logits + rng.normal(scale=0.8, size=(300, 3))
    m = classification_metrics(logits, labels, teacher)
    probs, preds = softmax(logits), logits.argmax(1)
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, preds))
    assert m["macro_f1"] == pytest.approx(f1_score(labels, preds, average="macro"))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    assert m["top_class_share"] == pytest.approx(np.bincount(preds).max() / 300) and "positive_rate" not in m
    assert m["agreement"] == pytest.approx((teacher.argmax(1) == preds).mean())
    pt = softmax(teacher)
    assert m["kl_to_teacher"] == pytest.approx(np.mean(np.sum(pt * np.log(pt / probs), axis=1)), rel=1e-6)
    conf, correct = probs.max(1), preds == labels  # ECE of the top class, 10 equal bins over [0, 1]
    bins = np.clip(np.ceil(conf * 10).astype(int) - 1, 0, 9)
    ece = sum((bins == b).mean() * abs(correct[bins == b].mean() - conf[bins == b].mean())
              for b in range(10) if (bins == b).any())
    assert m["ece"] == pytest.approx(ece)
    # the bootstrap's fast per-seed metrics agree with scikit-learn, also when a class is never predicted
    skewed = probs.copy()
    skewed[:, 2] = 0.0
    for p in (probs, skewed):
        pred = p.argmax(1)
        assert evaluation_verdicts._metric_from_probs("macro_f1", p, labels, pred) == pytest.approx(
            f1_score(labels, pred, average="macro", zero_division=0))
        expected = pytest.approx(accuracy_score(labels, pred))
        assert evaluation_verdicts._metric_from_probs("accuracy", p, labels, pred) == expected
    assert evaluation_verdicts._metric_from_probs("roc_auc", probs, labels, preds) == pytest.approx(m["roc_auc"])


def test_collapse_gate_and_gains_work_for_k_classes():
    assert is_collapsed({"accuracy": 0.6, "top_class_share": 0.99}, majority_accuracy=0.3)
    assert not is_collapsed({"accuracy": 0.6, "top_class_share": 0.5}, majority_accuracy=0.3)
    assert is_collapsed({"accuracy": 0.3, "top_class_share": 0.5}, majority_accuracy=0.3)
    assert is_collapsed({"accuracy": 0.7, "positive_rate": 0.01}, majority_accuracy=0.6)  # binary unchanged
    rng = np.random.default_rng(1)
    n, k = 120, 3
    labels = rng.integers(0, k, n)
    rows = []
    for mode, boost in (("independent", 0.5), ("distilled", 2.0)):
        for seed in (0, 1, 2):
            p = softmax(rng.normal(size=(n, k)) + boost * np.eye(k)[labels])
            rows += [{"model": "S", "mode": mode, "seed": seed, "id": str(i), "label": int(labels[i]),
                      **{f"prob_{c}": p[i, c] for c in range(k)}} for i in range(n)]
    preds = pd.DataFrame(rows)
    assert evaluation_metrics.prob_columns(preds) == ["prob_0", "prob_1", "prob_2"]
    gain = kd_gain_table(preds, ["S"], pd.Series(labels, index=[str(i) for i in range(n)]), meaningful=True,
                         n_boot=50)
    acc = gain[gain["metric"] == "accuracy"].iloc[0]
    assert acc["diff"] > 0.1 and acc["verdict"].startswith("distillation helped")
    assert set(gain["metric"]) == set(evaluation_verdicts.GAIN_METRICS) and gain["diff"].notna().all()
    pa = np.stack([preds.query("mode == 'independent' and seed == @s")[["prob_0", "prob_1", "prob_2"]].to_numpy()
                   for s in (0, 1, 2)])
    same = paired_difference(pa, pa, labels, labels, "macro_f1", n_boot=20)
    assert same["diff"] == 0.0


def test_kd_loss_matches_a_hand_computation_for_three_classes():
    s = torch.tensor([[1.0, 0.0, -1.0], [0.2, 0.5, 0.1]])
    t = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    y = torch.tensor([0, 2])
    alpha, temp = 0.3, 2.0
    loss, _ = distillation_loss(s, t, y, alpha, temp)
    kl = 0.0
    for i in range(2):
        p = np.exp(t[i].numpy() / temp) / np.exp(t[i].numpy() / temp).sum()
        q = np.exp(s[i].numpy() / temp) / np.exp(s[i].numpy() / temp).sum()
        kl += np.sum(p * np.log(p / q)) / 2
    ce = np.mean([-np.log(np.exp(s[i, y[i]].item()) / np.exp(s[i].numpy()).sum()) for i in range(2)])
    assert loss.item() == pytest.approx(alpha * temp**2 * kl + (1 - alpha) * ce, rel=1e-5)


def test_k_class_models_give_logits_of_k_columns():
    from helpers.models.build import build_model
    from helpers.models.specs import get_spec
    from helpers.training.datasets import encode
    from helpers.training.loop import predict_logits

    teacher = build_model(get_spec("Smoke_Teacher_2x64"), num_labels=5, seed=0)
    student = build_model(get_spec("Smoke_Half_1x64"), teacher=teacher, num_labels=teacher.config.num_labels)
    enc = encode(["The case turned on the right to counsel.", "A tax deficiency.", "A union strike."], 16)
    assert predict_logits(teacher, enc).shape == (3, 5) and predict_logits(student, enc).shape == (3, 5)


# ---------------------------------------------------------------- one pipeline run of the issue-area task
def test_issue_area_pipeline_writes_k_class_artefacts(tmp_path):
    from helpers.run.runner import run
    from helpers.training.teacher_logits import load_teacher_logits

    run_dir = tmp_path / "issue_area"
    params = resolve("smoke", run_dir=str(run_dir), overrides={
        "task": "issue_area", "students": ["Smoke_Half_1x64"], "transfer_students": ["Smoke_Half_1x64"],
        "arms": ["independent", "distilled", "distilled_transfer"], "transfer_curve": [], "student_lr_grid_warm":
        [2.0e-3], "ig_examples": 4, "bench_cases": 100, "teacher_epochs": 6})
    report = run(params, log_output=False)
    assert all(r["status"] == "ran" for r in report), report
    summary = json.loads((run_dir / "summary.json").read_text())
    classes = json.loads((run_dir / "data" / "classes.json").read_text())["classes"]
    assert summary["task"] == "issue_area" and summary["classes"] == classes and len(classes) > 2
    assert "Other" in classes and summary["data"]["merged_into_other"]  # the smoke corpus has rare areas
    cases = data_store.load_cases(run_dir)
    logits = load_teacher_logits(run_dir, cases, params["max_len"])
    for split, z in logits.items():
        assert z.shape == (len(cases[split]), len(classes)), split
    preds = pd.read_csv(run_dir / "models" / "predictions.csv")
    assert evaluation_metrics.prob_columns(preds) == [f"prob_{k}" for k in range(len(classes))]
    assert np.allclose(preds[evaluation_metrics.prob_columns(preds)].sum(axis=1), 1.0, atol=1e-4)
    metrics = pd.read_csv(run_dir / "models" / "metrics.csv")
    assert "top_class_share" in metrics and metrics["roc_auc"].notna().all()
    gain = pd.read_csv(run_dir / "models" / "kd_gain.csv", keep_default_na=False, na_values=[""])
    assert {"distilled", "distilled_transfer"} == set(gain["arm"]) and set(gain["metric"]) == set(
        evaluation_verdicts.GAIN_METRICS)
    for fig in ("02_teacher_confusion", "03_soft_targets", "03_losses"):
        assert (run_dir / "figures" / f"{fig}.png").is_file(), fig
