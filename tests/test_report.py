"""Stage 05: summary.json and its schema, verdicts, the recommendation, the Pareto figure and report.html."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import report_params

from helpers.core.paths import REPO_ROOT
from helpers.evaluation.verdicts import verdict
from helpers.report import figures as report_figures
from helpers.report import summary as report
from helpers.report import tables as report_tables
from helpers.report.html import render_report
from helpers.report.schema import SummaryError, schema_errors, validate_summary
from helpers.run.runner import parameter_cell

NOTEBOOK = REPO_ROOT / "notebooks" / "05_report.ipynb"
EVIL = '<script>alert("case")</script>'


def _entry(name: str, role: str, mode: str, seed: int, path: str, params: int) -> dict:
    return {"name": name, "role": role, "mode": mode, "seed": seed, "path": path, "params": params,
            "non_embedding_params": params // 4, "shape": "2x64"}


def _metric_row(name: str, role: str, mode: str, seed: int, acc: float, params: int, split: str = "test") -> dict:
    return {"model": name, "role": role, "mode": mode, "seed": seed, "split": split, "accuracy": acc,
            "macro_f1": acc - 0.05, "roc_auc": acc + 0.05, "ece": 0.05, "positive_rate": 0.6,
            "agreement": float("nan") if role == "teacher" and mode == "teacher" else 0.9,
            "kl_to_teacher": float("nan") if mode == "teacher" else 0.05, "params": params,
            "non_embedding_params": params // 4}


def make_run(root: Path, students: dict[str, tuple[int, float, float]] | None = None, collapsed: bool = False,
             teacher_acc: float = 0.80, val_shift: dict[str, float] | None = None) -> Path:
    """A hand-made run folder with stages 01-03 and the benchmark done: students {name: (params, ind, dist)}.

    Validation accuracies equal the test ones, shifted by `val_shift[name]` (to tell val-based from test-based
    choices apart)."""
    val_shift = val_shift or {}
    students = students or {"S_big": (10_000_000, 0.79, 0.80), "S_small": (2_000_000, 0.70, 0.785)}
    for sub in ("data", "models", "benchmark", "figures"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    split = {"accuracy": 0.6, "macro_f1": 0.375, "roc_auc": 0.5}
    card = {"majority_rate": 0.6, "bayes_accuracy": {"train": 0.9, "val": 0.9, "test": 0.9},
            "baselines": {"majority": {"val": split, "test": split},
                          "tfidf_logreg": {s: {"accuracy": 0.7, "macro_f1": 0.68, "roc_auc": 0.75}
                                           for s in ("val", "test")}}}
    (root / "data" / "data_card.json").write_text(json.dumps(card))
    teacher = _entry("T", "teacher", "teacher", 0, "models/teacher", 20_000_000)
    reference = _entry("T", "teacher", "reference", 1, "models/teacher_reference_seed1", 20_000_000)
    test = {"accuracy": teacher_acc, "macro_f1": teacher_acc - 0.02, "roc_auc": 0.85, "ece": 0.05,
            "positive_rate": 0.6}
    (root / "models" / "teacher_metrics.json").write_text(json.dumps({
        "teacher": teacher, "references": [reference], "test": test, "val": test, "precision": "bf16",
        "majority_val_accuracy": 0.6,
        "reference_test": {"accuracy": 0.79, "macro_f1": 0.77, "roc_auc": 0.84, "agreement": 0.95,
                           "kl_to_teacher": 0.02},
        "reference_test_per_seed": [{"seed": 1, "accuracy": 0.79, "macro_f1": 0.77, "roc_auc": 0.84,
                                     "agreement": 0.95, "kl_to_teacher": 0.02}],
        "collapsed": collapsed, "majority_rate": 0.6, "majority_test_accuracy": 0.6, "tfidf_test_accuracy": 0.7,
        "margin_over_tfidf": teacher_acc - 0.7, "margin_over_majority": teacher_acc - 0.6}))
    entries, rows, gains, bench = [], [_metric_row("T", "teacher", "teacher", 0, teacher_acc, 20_000_000),
                                       _metric_row("T", "teacher", "reference", 1, 0.79, 20_000_000)], [], []
    bench.append({"model": "T", "mode": "teacher", "seed": 0, "size_mb": 80.0, "latency_ms_b1": 10.0,
                  "latency_ms_b32": 100.0, "speedup_vs_teacher_b32": 1.0})
    for i, (name, (params, ind, dist)) in enumerate(students.items()):
        for mode, acc in (("independent", ind), ("distilled", dist)):
            for seed, jitter in ((0, -0.005), (1, 0.005)):
                entries.append(_entry(name, "student", mode, seed, f"models/students/{name}/{mode}/seed{seed}", params))
                rows.append(_metric_row(name, "student", mode, seed, acc + jitter, params))
                rows.append(_metric_row(name, "student", mode, seed, acc + jitter + val_shift.get(name, 0.0), params,
                                        "val"))
            bench.append({"model": name, "mode": mode, "seed": 0, "size_mb": params * 4e-6,
                          "latency_ms_b1": 2.0 + i, "latency_ms_b32": 100.0 * params / 20_000_000,
                          "speedup_vs_teacher_b32": 20_000_000 / params})
        lo, hi, p = dist - ind - 0.03, dist - ind + 0.03, 0.001 if dist - ind > 0.03 else 0.5
        gains.append({"model": name, "arm": "distilled", "against": "independent", "metric": "accuracy",
                      "n_seeds": 2, "independent_mean": ind,
                      "independent_std": 0.007, "arm_mean": dist, "arm_std": 0.007, "diff": dist - ind,
                      "ci_low": lo, "ci_high": hi, "se": 0.01, "p_value": p, "seed_sd": 0.01,
                      "meaningful": not collapsed, "did_not_learn": "", "p_adjusted": p, "ci_half_width": 0.03,
                      "verdict": verdict(dist - ind, lo, hi, not collapsed, "accuracy", p_adjusted=p)})
    (root / "models" / "models.json").write_text(json.dumps({"teacher": teacher, "teacher_references": [reference],
                                                              "teacher_collapsed": collapsed, "students": entries}))
    pd.DataFrame(rows).to_csv(root / "models" / "metrics.csv", index=False)
    pd.DataFrame(gains).to_csv(root / "models" / "kd_gain.csv", index=False)
    pd.DataFrame(bench).to_csv(root / "benchmark" / "benchmark.csv", index=False)
    return root


@pytest.fixture()
def fake_run(tmp_path: Path) -> Path:
    return make_run(tmp_path / "run")


@pytest.fixture()
def summary(fake_run: Path) -> dict:
    return report.build_summary(report_params(fake_run, profile="test", recommend_tolerance=0.02))


# --- schema ---------------------------------------------------------------------------------------------------------

def test_summary_of_a_run_validates_and_is_written(fake_run: Path, summary: dict) -> None:
    assert schema_errors(summary) == []
    path = report.write_summary(fake_run, summary)
    written = json.loads(path.read_text())
    assert written["profile"] == "test" and written["teacher"]["name"] == "T"
    assert [(m["name"], m["mode"]) for m in written["models"]] == [
        ("T", "teacher"), ("S_big", "independent"), ("S_big", "distilled"), ("S_small", "independent"),
        ("S_small", "distilled")]
    small = next(m for m in written["models"] if m["name"] == "S_small" and m["mode"] == "distilled")
    assert small["accuracy"]["mean"] == pytest.approx(0.785) and small["accuracy"]["std"] > 0
    assert small["kd_gain"]["diff"] == pytest.approx(0.085) and small["kd_gain"]["verdict"].startswith(
        "distillation helped")
    assert small["attribution_cosine"] is None  # stage 04 did not run
    assert written["models"][0]["kd_gain"] is None and written["models"][0]["fidelity"] is None


@pytest.mark.parametrize("breakage", ["missing key", "string for number", "nan", "bad mode"])
def test_validator_rejects_a_broken_summary(summary: dict, breakage: str) -> None:
    broken = copy.deepcopy(summary)
    if breakage == "missing key":
        del broken["recommendation"]
    elif breakage == "string for number":
        broken["models"][1]["accuracy"]["mean"] = "0.79"
    elif breakage == "nan":
        broken["teacher"]["accuracy"] = float("nan")
    else:
        broken["models"][1]["mode"] = "online"
    with pytest.raises(SummaryError):
        validate_summary(broken)


def test_invalid_summary_is_not_written(fake_run: Path, summary: dict) -> None:
    del summary["models"]
    with pytest.raises(SummaryError, match="models"):
        report.write_summary(fake_run, summary)
    assert not (fake_run / "summary.json").exists()


def _add_chain(run: Path, chain_acc: float) -> None:
    """S_small learned from S_big's seed-0 distilled model: chain rows in metrics, kd_gain and models/chain.csv."""
    metrics = pd.read_csv(run / "models" / "metrics.csv")
    index = json.loads((run / "models" / "models.json").read_text())
    rows = [_metric_row("S_small", "student", "chain", seed, chain_acc + jitter, 2_000_000, split)
            for seed, jitter in ((0, -0.005), (1, 0.005)) for split in ("test", "val")]
    index["students"] += [_entry("S_small", "student", "chain", seed, f"models/students/S_small/chain/seed{seed}",
                                 2_000_000) for seed in (0, 1)]
    pd.concat([metrics, pd.DataFrame(rows)]).to_csv(run / "models" / "metrics.csv", index=False)
    (run / "models" / "models.json").write_text(json.dumps(index))
    gains = pd.read_csv(run / "models" / "kd_gain.csv")
    extra = []
    for against, ref in (("independent", 0.70), ("distilled", 0.785)):
        d = chain_acc - ref
        extra.append({**gains.iloc[0].to_dict(), "model": "S_small", "arm": "chain", "against": against,
                      "independent_mean": ref, "arm_mean": chain_acc, "diff": d, "ci_low": d - 0.01,
                      "ci_high": d + 0.01, "p_value": 0.001, "p_adjusted": 0.002,
                      "verdict": verdict(d, d - 0.01, d + 0.01, True, "accuracy", p_adjusted=0.002,
                                         arm="the chain over direct distillation")})
    pd.concat([gains, pd.DataFrame(extra)]).to_csv(run / "models" / "kd_gain.csv", index=False)
    pd.DataFrame([
        {"link": 1, "model": "S_big", "params": 10_000_000, "teacher": "T", "teacher_params": 20_000_000,
         "teacher_mode": "teacher", "teacher_seed": 0, "teacher_path": "models/teacher",
         "logits": "models/teacher_logits/"},
        {"link": 2, "model": "S_small", "params": 2_000_000, "teacher": "S_big", "teacher_params": 10_000_000,
         "teacher_mode": "distilled", "teacher_seed": 0, "teacher_path": "models/students/S_big/distilled/seed0",
         "logits": "models/chain_logits/k.safetensors"}]).to_csv(run / "models" / "chain.csv", index=False)


@pytest.mark.parametrize(("chain_acc", "says"), [(0.80, "bridged the gap"), (0.77, "cost accuracy")])
def test_chain_vs_direct_in_the_summary_and_the_report(fake_run: Path, chain_acc: float, says: str) -> None:
    _add_chain(fake_run, chain_acc)
    summary = report.build_summary(report_params(fake_run, profile="test", recommend_tolerance=0.02))
    assert schema_errors(summary) == []
    chain = [m for m in summary["models"] if m["mode"] == "chain"]
    assert [m["name"] for m in chain] == ["S_small"]
    assert chain[0]["kd_gain"]["against"] == "independent"
    direct = chain[0]["chain_vs_direct"]
    assert direct["teacher"] == "S_big" and direct["teacher_params"] == 10_000_000
    assert direct["diff"] == pytest.approx(chain_acc - 0.785)
    assert all(m["chain_vs_direct"] is None for m in summary["models"] if m["mode"] != "chain")
    table = report_tables.chain_table(fake_run)
    assert table["student"].tolist() == ["S_big", "S_small"]
    assert table["teacher/student params"].tolist() == [2.0, 5.0] and table["teacher gap (direct)"].tolist()[1] == 10
    assert table["teacher test accuracy"].tolist() == [0.80, pytest.approx(0.795)]  # S_big distilled seed 0
    assert table["chain − direct"].iloc[1] == f"{chain_acc - 0.785:+.3f}"
    text = report_tables.chain_text(fake_run)
    assert says in text and "S_small learned from S_big" in text
    assert "progressive chain" in " ".join(report_tables.report_tables(fake_run, summary))


def test_no_chain_table_without_the_chain_arm(fake_run: Path) -> None:
    assert report_tables.chain_table(fake_run) is None
    assert "did not run" in report_tables.chain_text(fake_run)


# --- verdicts and recommendation -----------------------------------------------------------------------------------

def test_verdict_says_no_evidence_when_the_interval_covers_zero() -> None:
    assert verdict(0.01, -0.02, 0.04).startswith("no evidence")
    assert verdict(0.05, 0.01, 0.09).startswith("distillation helped")
    assert "collapsed" in verdict(0.0, 0.0, 0.0, meaningful=False, teacher_name="T")


def test_kd_table_and_verdicts_name_no_evidence(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", {"S": (1_000_000, 0.78, 0.79)})
    table = report_tables.kd_table(run)
    assert list(table["student"]) == ["S"]
    assert table["verdict"][0].startswith("no evidence of a difference")
    assert "no evidence" in report_tables.answer_markdown(run)


def test_recommend_picks_the_smallest_model_within_tolerance_on_validation() -> None:
    table = pd.DataFrame([
        {"name": "big", "mode": "independent", "params": 30, "val_accuracy": 0.80, "speedup_vs_teacher": 2.0},
        {"name": "big", "mode": "distilled", "params": 30, "val_accuracy": 0.81, "speedup_vs_teacher": 2.0},
        {"name": "mid", "mode": "independent", "params": 10, "val_accuracy": 0.75, "speedup_vs_teacher": 5.0},
        {"name": "mid", "mode": "distilled", "params": 10, "val_accuracy": 0.79, "speedup_vs_teacher": 5.0},
        {"name": "tiny", "mode": "independent", "params": 2, "val_accuracy": 0.70, "speedup_vs_teacher": 20.0},
        {"name": "tiny", "mode": "distilled", "params": 2, "val_accuracy": 0.72, "speedup_vs_teacher": 20.0}])
    table["accuracy"] = 1.0 - table["val_accuracy"]  # test accuracies ranked the other way: must not matter
    rec = report.recommend(table, teacher_val_accuracy=0.80, tolerance=0.02, teacher_test_accuracy=0.8)
    assert (rec["model"], rec["mode"], rec["speedup_vs_teacher"]) == ("mid", "distilled", 5.0)
    assert rec["selected_on"] == "val" and rec["val_accuracy"] == pytest.approx(0.79)
    assert rec["accuracy"] == pytest.approx(0.21) and rec["gap"] == pytest.approx(0.21 - 0.8)
    assert "mid" in rec["text"] and rec["meaningful"]
    none = report.recommend(table, teacher_val_accuracy=0.90, tolerance=0.02)
    assert none["model"] is None and "No student" in none["text"]
    collapsed = report.recommend(table, teacher_val_accuracy=0.80, tolerance=0.02, collapsed=True)
    assert collapsed["model"] is None and not collapsed["meaningful"] and "collapsed" in collapsed["text"]


def test_summary_choices_read_validation_not_test(tmp_path: Path) -> None:
    # S_small is best on test but 0.1 worse on validation: it must not be recommended
    run = make_run(tmp_path / "run", val_shift={"S_small": -0.10})
    s = report.build_summary(report_params(run, profile="test", recommend_tolerance=0.02))
    assert s["recommendation"]["model"] == "S_big" and s["recommendation"]["selected_on"] == "val"
    table = report_tables.floor_ceiling(run)
    assert any("S_big" in m for m in table["model"]) and not any("(S_small)" in m for m in table["model"])


def test_summary_recommends_and_says_so(summary: dict) -> None:
    rec = summary["recommendation"]
    assert (rec["model"], rec["mode"], rec["params"]) == ("S_small", "distilled", 2_000_000)
    assert rec["speedup_vs_teacher"] == pytest.approx(10.0)
    assert "S_small" in summary["headline"]


def test_collapsed_teacher_makes_everything_not_meaningful(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", collapsed=True, teacher_acc=0.6)
    s = report.build_summary(report_params(run, profile="test", recommend_tolerance=0.02))
    validate_summary(s)
    assert s["teacher"]["collapsed"] and not s["recommendation"]["meaningful"]
    assert all(v["text"].startswith("not meaningful") for v in s["verdicts"])
    assert "collapsed" in s["headline"]


# --- figure and HTML ------------------------------------------------------------------------------------------------

def test_pareto_front_keeps_only_non_dominated_points() -> None:
    mask = report_figures.pareto_front([1.0, 2.0, 3.0, 2.5], [0.6, 0.8, 0.85, 0.7])
    assert mask.tolist() == [True, True, True, False]


def test_pareto_plot_is_saved(fake_run: Path, summary: dict) -> None:
    report_figures.plot_pareto(summary, fake_run)
    assert (fake_run / "figures" / "05_pareto.png").stat().st_size > 1000


def test_report_html_escapes_data_text(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", {EVIL: (1_000_000, 0.7, 0.72)})
    (run / "attributions").mkdir()
    (run / "attributions" / "examples.html").write_text(f"<p>{EVIL}</p>")
    s = report.build_summary(report_params(run, profile="test", recommend_tolerance=0.02))
    page = report_tables.export_html(run, s).read_text()
    assert "<script" not in page.lower()
    assert "&lt;script&gt;" in page
    assert "<iframe sandbox=" in page and "05_pareto" not in page  # no figure was made in this run


def test_report_html_inlines_every_figure(fake_run: Path, summary: dict) -> None:
    report_figures.plot_pareto(summary, fake_run)
    html = render_report(fake_run, summary, report_tables.report_tables(fake_run, summary))
    assert "data:image/png;base64," in html and "figures/05_pareto.png" in html
    assert "<code>" in html and "Recommendation" in html


# --- the notebook ---------------------------------------------------------------------------------------------------

def test_parameters_match_the_default_profile() -> None:
    _, values = parameter_cell(NOTEBOOK)
    defaults = yaml.safe_load((REPO_ROOT / "profiles" / "default.yaml").read_text())
    assert {k: defaults[k] for k in values} == values
    assert {"run_dir", "profile", "recommend_tolerance", "paper_benchmark"} <= set(values)


def test_report_notebook_renders_summary_and_report(smoke_run: Path) -> None:
    from helpers.config.resolve import resolve
    from helpers.run.runner import run

    # `smoke_run` (tests/conftest.py) ran 01 -> 05 through the runner; asking for 05 again finds it up to date
    assert run(resolve("smoke", run_dir=str(smoke_run)), only="05", log_output=False)[0]["status"] == "skipped"
    summary = json.loads((smoke_run / "summary.json").read_text())
    validate_summary(summary)
    assert summary["profile"] == "smoke"
    arms = {(s["name"], s["mode"]) for s in json.loads((smoke_run / "models" / "models.json").read_text())["students"]}
    assert len(summary["models"]) == 1 + len(arms)
    assert all(m["latency_ms_b32"] > 0 for m in summary["models"])
    assert not summary["teacher"]["collapsed"], "the smoke teacher must learn, or no decision is exercised"
    assert summary["recommendation"]["selected_on"] == "val"
    assert (smoke_run / "figures" / "05_pareto.png").is_file()
    assert (smoke_run / "benchmark" / "benchmark.csv").is_file()
    page = (smoke_run / "report.html").read_text()
    assert "<script" not in page.lower() and "data:image/png;base64," in page
