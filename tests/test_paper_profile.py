"""The seed's six architectures (paper profile) through the whole suite, 01 -> 05, every model from random weights.

No hub is reachable here, so every spec is overridden to `random`; the corpus, sequences and budgets are tiny so
the run takes a few minutes on a shared CI core. What it guarantees: all six build, train in every arm, save,
load, get attributions and are benchmarked, and appear in summary.json.
"""
from __future__ import annotations

import json

import pandas as pd
import pytest

from helpers.config.resolve import resolve
from helpers.core.constants import LOGIT_ARMS
from helpers.models.specs import PAPER_SPECS
from helpers.run.runner import run

TINY = {
    "model_overrides": dict.fromkeys(PAPER_SPECS, "random"),
    "threads": 1, "workers": 1, "synthetic_n": 140, "synthetic_transfer_n": 30, "transfer_n": 30, "max_len": 24,
    "seeds": [0], "attribution_seeds": [0], "bench_seeds": [0], "transfer_curve": [], "transfer_curve_seeds": [0],
    "teacher_epochs": 1, "student_max_steps": 2, "eval_every": 2, "patience": 0,
    "student_lr_grid": [1.0e-3], "student_lr_grid_warm": [1.0e-4], "bootstrap_n": 20,
    "ig_examples": 3, "ig_steps": 2, "ig_internal_batch_size": 2, "bench_cases": 10, "bench_repeats": 1,
    "bench_warmup": 0, "paper_benchmark": False,
}
ARMS = set(LOGIT_ARMS)  # the paper profile trains the five logit arms, chain included


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("paper") / "run"
    params = resolve("paper", overrides=TINY, run_dir=str(run_dir))
    assert params["transfer_students"] == []  # the paper profile gives every student the transfer arms
    report = run(params, log_output=False)
    assert [r["status"] for r in report] == ["ran"] * 5, report
    return run_dir


def test_paper_profile_six_models_every_arm_end_to_end(paper_run):
    r = paper_run
    teacher, students = PAPER_SPECS[0], PAPER_SPECS[1:]
    index = json.loads((r / "models" / "models.json").read_text())
    assert index["teacher"]["name"] == teacher
    trained = {(e["name"], e["mode"]) for e in index["students"]}
    # The chain's first link (the largest student) learns from the teacher: its chain runs are its distilled runs,
    # so it has no chain arm of its own; every other student has all five arms.
    chain = pd.read_csv(r / "models" / "chain.csv")
    assert sorted(chain["model"]) == sorted(students) and chain["link"].tolist() == list(range(1, len(students) + 1))
    first_link = chain.loc[chain["link"] == 1, "model"].item()
    assert trained == {(s, arm) for s in students for arm in ARMS} - {(first_link, "chain")}
    for e in [index["teacher"], *index["students"]]:  # saved as safetensors, with the spec beside it
        spec = json.loads((r / e["path"] / "spec.json").read_text())
        assert spec["name"] == e["name"] and spec["init"] == "random"
        assert (r / e["path"] / "model.safetensors").is_file()
    metrics = pd.read_csv(r / "models" / "metrics.csv")
    test = metrics[metrics["split"] == "test"]
    assert {(m, a) for m, a in zip(test["model"], test["mode"]) if a in ARMS} == trained
    assert test["accuracy"].between(0, 1).all()
    # loaded again for attributions: every model, teacher first, with finite scores
    per_example = pd.read_csv(r / "attributions" / "per_example.csv")
    explained = set(zip(per_example["model"], per_example["mode"]))
    assert {(teacher, "teacher")} | trained <= explained
    assert per_example.loc[per_example["mode"] != "teacher", "cosine"].notna().any()
    # loaded again for the benchmark
    bench = pd.read_csv(r / "benchmark" / "benchmark.csv")
    assert set(PAPER_SPECS) <= set(bench["model"])
    summary = json.loads((r / "summary.json").read_text())
    assert summary["profile"] == "paper" and summary["teacher"]["name"] == teacher
    assert {(m["name"], m["mode"]) for m in summary["models"] if m["role"] == "student"} == trained
    gains = {(v["model"], v["arm"], v["against"]) for v in summary["verdicts"]}
    expected = {(s, arm, "independent") for s, arm in trained if arm != "independent"}
    expected |= {(s, "distilled_transfer", "pseudo_label_transfer") for s in students}  # soft targets vs more data
    expected |= {(s, "chain", "distilled") for s in students if s != first_link}  # chain vs direct
    assert gains == expected
