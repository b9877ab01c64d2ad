"""Benchmark and deployment helpers, and scripts/benchmark.py, on tiny models with a handful of repeats."""
from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import report_params
from matplotlib.figure import Figure
from torch import nn

from helpers.benchmark import timing as benchmark_timing
from helpers.benchmark.deployment import deploy
from helpers.models.build import build_model, count_params, save_model
from helpers.models.specs import PAPER_SPECS, REGISTRY
from helpers.stages import benchmark as stages_benchmark
from helpers.training.datasets import collate, encode
from helpers.training.loop import predict_logits
from helpers.views import benchmark as views_benchmark

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "benchmark.py"
CPU = torch.device("cpu")


def _script_module():
    spec = importlib.util.spec_from_file_location("benchmark_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke_models() -> dict[str, nn.Module]:
    bigger = replace(REGISTRY["Smoke_Teacher_2x64"], name="Bigger_4x256", layers=4, hidden=256, heads=4,
                     intermediate=1024)
    return {"Smoke_Teacher_2x64": build_model(REGISTRY["Smoke_Teacher_2x64"]).eval(),
            "Smoke_Tiny_1x32": build_model(REGISTRY["Smoke_Tiny_1x32"]).eval(),
            "Bigger_4x256": build_model(bigger).eval()}


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    teacher_spec, student_spec = REGISTRY["Smoke_Teacher_2x64"], REGISTRY["Smoke_Tiny_1x32"]
    teacher = build_model(teacher_spec)
    path = save_model(teacher, run / "models" / "teacher", teacher_spec)
    total, non_emb = count_params(teacher)
    entry = {"name": teacher_spec.name, "role": "teacher", "mode": "teacher", "seed": 0, "path": "models/teacher",
             "params": total, "non_embedding_params": non_emb, "shape": teacher_spec.shape}
    students = []
    for mode in ("independent", "distilled"):
        for seed in (0, 1):
            rel = f"models/students/{student_spec.name}/{mode}/seed{seed}"
            model = build_model(student_spec, seed=seed)
            save_model(model, run / rel, student_spec)
            total, non_emb = count_params(model)
            students.append({"name": student_spec.name, "role": "student", "mode": mode, "seed": seed, "path": rel,
                             "params": total, "non_embedding_params": non_emb, "shape": student_spec.shape})
    (run / "models" / "models.json").write_text(json.dumps(
        {"teacher": entry, "teacher_references": [{**entry, "mode": "reference", "seed": 1}],
         "teacher_collapsed": False,
         "students": students}))
    assert path.is_dir()
    data = run / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    words = ["petitioner", "respondent", "court", "appeal", "contract", "damages", "statute", "held"]
    pd.DataFrame({"id": [f"c{i}" for i in range(12)],
                  "text": [" ".join(rng.choice(words, size=20)) for _ in range(12)],
                  "label": [0, 1] * 6}).to_csv(data / "test.csv", index=False)
    return run


def test_time_interleaved_runs_round_robin_after_warmups():
    log: list[str] = []
    runners = {k: (lambda k=k: log.append(k)) for k in "abc"}
    timings = benchmark_timing.time_interleaved(runners, repeats=4, warmup={"a": 2, "b": 0, "c": 1}, device=CPU)
    assert log[:3] == ["a", "a", "c"]
    timed = log[3:]
    assert len(timed) == 12
    for r in range(4):  # every repeat times every runner once, starting from a rotating position
        assert sorted(timed[3 * r:3 * r + 3]) == ["a", "b", "c"]
    assert {timed[3 * r] for r in range(3)} == {"a", "b", "c"}
    assert all(len(t.times_ms) == 4 for t in timings.values())


def test_timing_statistics():
    t = benchmark_timing.Timing((4.0, 1.0, 3.0, 2.0, 100.0))
    assert t.median_ms == 3.0 and t.min_ms == 1.0 and t.max_ms == 100.0
    assert t.iqr_ms == pytest.approx(2.0)
    with pytest.raises(ValueError, match="repeats"):
        benchmark_timing.time_interleaved({"a": lambda: None}, repeats=0, warmup=0, device=CPU)


def test_benchmark_models_gives_sane_figures(smoke_models):
    before = torch.get_num_threads()
    table = benchmark_timing.benchmark_models(smoke_models, max_len=32, repeats=5, warmup=1, threads=1, device="cpu",
                                       reference="Bigger_4x256").set_index("model")
    assert torch.get_num_threads() == before  # pinning is undone afterwards
    assert list(table.index) == list(smoke_models)
    for b in ("b1", "b32"):
        lat = table[f"latency_ms_{b}"]
        assert (lat > 0).all() and (table[f"latency_ms_{b}_iqr"] >= 0).all()
        assert (table[f"latency_ms_{b}_min"] <= lat).all() and (lat <= table[f"latency_ms_{b}_max"]).all()
        assert table.loc["Bigger_4x256", f"speedup_vs_teacher_{b}"] == 1.0
    assert np.allclose(table["throughput_b32"], 32e3 / table["latency_ms_b32"])
    assert (table["threads"] == 1).all() and (table["repeats"] == 5).all() and (table["max_len"] == 32).all()
    for name, model in smoke_models.items():
        assert (table.loc[name, "params"], table.loc[name, "non_embedding_params"]) == count_params(model)
    # A ~100x smaller model must not be much slower (loose bound: timing on a shared machine is noisy).
    assert table.loc["Smoke_Tiny_1x32", "latency_ms_b32"] < 3 * table.loc["Bigger_4x256", "latency_ms_b32"]


def test_paper_specs_are_the_seeds_six_with_claims():
    specs = benchmark_timing.paper_specs()
    assert [s.name for s in specs] == PAPER_SPECS
    assert all(s.init == "random" and s.claimed_params_m and s.claimed_speedup for s in specs)
    assert [s.claimed_params_m for s in specs] == [110, 66, 29, 14, 33, 11]


def test_paper_table_measured_vs_claimed(smoke_models):
    teacher = REGISTRY["Smoke_Teacher_2x64"]
    measured_m = count_params(smoke_models["Smoke_Teacher_2x64"])[0] / 1e6
    specs = [replace(teacher, claimed_params_m=measured_m, claimed_speedup=1.0),
             replace(REGISTRY["Smoke_Tiny_1x32"], claimed_params_m=500.0, claimed_speedup=2.0)]
    paper = benchmark_timing.paper_table(specs, max_len=16, repeats=3, warmup=1, threads=1, device="cpu")
    assert list(paper.columns) == benchmark_timing.PAPER_COLUMNS
    assert list(paper["name"]) == [s.name for s in specs]
    assert list(paper["claimed_params_m"]) == [measured_m, 500.0] and list(paper["claimed_speedup"]) == [1.0, 2.0]
    for spec, row in zip(specs, paper.itertuples()):
        total, non_emb = count_params(build_model(spec))
        assert row.params_m == total / 1e6 and row.non_embedding_params_m == non_emb / 1e6
    assert paper.loc[0, "speedup_b32"] == 1.0 and paper.loc[0, "note"] == ""
    assert "claimed 500M" in paper.loc[1, "note"]


@pytest.mark.gpu
def test_cuda_variants_agree_with_fp32(smoke_models):
    cuda = torch.device("cuda")
    model = copy.deepcopy(smoke_models["Smoke_Teacher_2x64"])  # deploy() moves the model: keep the fixture's
    enc = collate(encode(["the court held for the petitioner", "appeal dismissed"], max_len=16))
    fp32 = deploy(model, "fp32", cuda)(**{k: v.to(cuda) for k, v in enc.items()})
    assert fp32.device.type == "cuda"
    for variant in ("bf16", "fp16"):
        out = predict_logits(deploy(model, variant, cuda), enc, device=cuda)
        np.testing.assert_allclose(out, fp32.cpu().numpy(), atol=0.05)
    with pytest.raises(ValueError, match="int8"):
        deploy(model, "int8", cuda)


def test_deploy_variants_leave_the_model_alone(smoke_models):
    model = smoke_models["Smoke_Teacher_2x64"]
    enc = collate(encode(["the court held for the petitioner", "appeal dismissed"], max_len=16))
    fp32 = deploy(model, "fp32", CPU)(**enc)
    int8 = deploy(model, "int8", CPU)
    assert not any(type(m) is nn.Linear for m in int8.model.modules())
    assert any(type(m) is nn.Linear for m in model.modules())  # the original keeps its fp32 weights
    assert torch.allclose(deploy(model, "fp32", CPU)(**enc), fp32)
    assert int8(**enc).dtype == torch.float32 and int8(**enc).shape == fp32.shape
    assert torch.allclose(deploy(model, "bf16", CPU)(**enc), fp32, atol=0.05)
    with pytest.raises(ValueError, match="fp16"):
        deploy(model, "fp16", CPU)


def test_benchmark_run_writes_the_documented_files(fake_run):
    paper = [REGISTRY["Smoke_Teacher_2x64"], REGISTRY["Smoke_Tiny_1x32"]]
    res = stages_benchmark.benchmark_run(report_params(fake_run, max_len=16, bench_repeats=3, bench_warmup=1, threads=1,
                                                       device="cpu", bench_seeds=[0]), paper=paper)
    out = fake_run / "benchmark"
    latency = pd.read_csv(out / "benchmark.csv")
    assert list(latency.columns) == benchmark_timing.BENCHMARK_COLUMNS
    assert list(zip(latency["model"], latency["mode"], latency["seed"])) == [
        ("Smoke_Teacher_2x64", "teacher", 0), ("Smoke_Tiny_1x32", "independent", 0),
        ("Smoke_Tiny_1x32", "distilled", 0)]
    assert latency.loc[0, "speedup_vs_teacher_b32"] == 1.0
    assert (latency["size_mb"] > 0).all() and (latency["threads"] == 1).all()
    # one timing per architecture: both modes share it
    assert latency.loc[1, "latency_ms_b32"] == latency.loc[2, "latency_ms_b32"]
    variants = pd.read_csv(out / "variants.csv")
    assert list(variants.columns) == benchmark_timing.VARIANT_COLUMNS and len(variants) == 3 * 3
    fp32 = variants[variants["variant"] == "fp32"]
    assert (fp32["accuracy_change"] == 0).all() and (fp32["agreement_with_fp32"] == 1).all()
    assert (fp32["speedup_vs_fp32"] == 1).all()
    assert variants["accuracy"].between(0, 1).all() and variants["agreement_with_fp32"].between(0, 1).all()
    assert (variants["latency_ms_b32"] > 0).all() and (variants["speedup_vs_fp32"] > 0).all()
    paper_csv = pd.read_csv(out / "paper.csv")
    assert list(paper_csv["name"]) == [s.name for s in paper]
    env = json.loads((out / "environment.json").read_text())
    assert {"cpu", "threads", "torch", "device", "date"} <= set(env) and env["threads"] == 1
    for fig, name in [(views_benchmark.plot_latency(res.latency, fake_run), "05_latency.png"),
                      (views_benchmark.plot_paper_measured_vs_claimed(res.paper, fake_run),
                       "05_paper_measured_vs_claimed.png"),
                      (views_benchmark.plot_variants(res.variants, fake_run), "05_variants.png")]:
        assert isinstance(fig, Figure) and (fake_run / "figures" / name).stat().st_size > 0


def test_benchmark_run_needs_models_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="models.json"):
        stages_benchmark.benchmark_run(report_params(tmp_path, max_len=16))


@pytest.mark.parametrize("argv, named", [
    (["--max-len", "600"], "--max-len"), (["--max-len", "0"], "--max-len"), (["--threads", "0"], "--threads"),
    (["--repeats", "0"], "--repeats"), (["--specs", "Teacher_BERT", "NoSuchModel"], "NoSuchModel"),
    (["--run-dir", "/nonexistent/run"], "--run-dir")])
def test_script_rejects_bad_arguments(argv, named, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _script_module().parse_args(argv)
    assert exit_info.value.code != 0
    assert named in capsys.readouterr().err


def test_script_prints_environment_then_table():
    ok = subprocess.run([sys.executable, str(SCRIPT), "--specs", "Smoke_Teacher_2x64", "Smoke_Tiny_1x32",
                         "--max-len", "16", "--repeats", "3", "--threads", "1"],
                        capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.splitlines()
    assert lines[0].startswith("CPU:") and "torch" in lines[1]
    assert any(line.startswith("Smoke_Tiny_1x32") for line in lines) and "wall time" in lines[-1]
