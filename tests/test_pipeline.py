"""The whole suite through the runner on the smoke profile (01 -> 05), asserting on the run folder's files."""
from __future__ import annotations

import json

import pandas as pd
import yaml

from helpers.config import resolve
from helpers.runner import run


def test_smoke_pipeline_writes_the_run_folder_contract(smoke_run):
    r = smoke_run
    params = yaml.safe_load((r / "params.yaml").read_text())
    assert params["profile"] == "smoke" and params["run_dir"] == str(r)
    for nb in ("01_prepare_data", "02_train_teacher", "03_train_students", "04_compare_attributions", "05_report"):
        assert (r / "notebooks" / f"{nb}.ipynb").is_file()
        assert json.loads((r / "manifests" / f"{nb}.json").read_text())["hash"]
    card = json.loads((r / "data" / "data_card.json").read_text())
    assert card["n_train"] + card["n_val"] + card["n_test"] == len(pd.concat(
        [pd.read_csv(r / "data" / f"{s}.csv") for s in ("train", "val", "test")]))
    index = json.loads((r / "models" / "models.json").read_text())
    students = index["students"]
    assert len(students) == 2 * 2 * 2  # 2 students x 2 modes x 2 seeds
    for e in [index["teacher"], index["teacher_ceiling"], *students]:
        assert (r / e["path"] / "model.safetensors").is_file()
        assert not list((r / e["path"]).glob("*.bin")) and not list((r / e["path"]).glob("*.pt"))
    assert len(list((r / "models" / "teacher_logits").glob("*.safetensors"))) == 1
    metrics = pd.read_csv(r / "models" / "metrics.csv")
    assert set(metrics["mode"]) == {"teacher", "ceiling", "independent", "distilled"}
    gain = pd.read_csv(r / "models" / "kd_gain.csv")
    assert set(gain["model"]) == {"Smoke_Half_1x64", "Smoke_Tiny_1x32"}
    assert (gain["ci_low"] <= gain["diff"] + 1e-9).all() and (gain["diff"] <= gain["ci_high"] + 1e-9).all()
    summary = pd.read_csv(r / "attributions" / "summary.csv")
    assert "ceiling" in set(summary["mode"])
    assert (r / "summary.json").is_file() and (r / "report.html").is_file()
    for fig in ("01_lengths", "02_baselines", "03_kd_gain", "04_agreement_heatmap", "05_pareto"):
        assert (r / "figures" / f"{fig}.png").is_file(), fig


def test_rerun_with_same_parameters_skips_everything(smoke_run):
    report = run(resolve("smoke", run_dir=str(smoke_run)), log_output=False)
    assert [x["status"] for x in report] == ["skipped"] * 5


def test_sweep_reruns_only_the_student_stage(smoke_run):
    from helpers.sweep import sweep

    table = sweep([("alpha", "0.2,0.8")], profile="smoke", run_dir=str(smoke_run))
    sweep_dir = smoke_run.parent / f"{smoke_run.name}-sweep"
    assert (sweep_dir / "sweep.csv").is_file() and (sweep_dir / "sweep.png").is_file()
    assert sorted(set(table["alpha"])) == [0.2, 0.8]
    base_manifest = (smoke_run / "manifests" / "02_train_teacher.json").read_text()
    for combo in ("alpha=0.2", "alpha=0.8"):
        folder = sweep_dir / combo
        # the teacher stage was reused (its manifest is the base run's, byte for byte), the student stage ran
        assert (folder / "manifests" / "02_train_teacher.json").read_text() == base_manifest
        assert json.loads((folder / "manifests" / "03_train_students.json").read_text())["hash"]
        assert yaml.safe_load((folder / "params.yaml").read_text())["alpha"] == float(combo.split("=")[1])
        assert not (folder / "manifests" / "04_compare_attributions.json").exists()
