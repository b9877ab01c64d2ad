"""Stage 03 on a tiny prepared run folder: the online teacher gives the cached teacher's results."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import data_params, student_params, teacher_params

from helpers.data import store as data_store
from helpers.stages import data as stages_data
from helpers.stages.students import run_student_stage
from helpers.stages.teacher import run_teacher_stage

MAX_LEN = 32


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """data.prepare on 300 synthetic cases and a one-epoch smoke teacher (fp32, CPU)."""
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    stages_data.prepare(data_params(run_dir, synthetic_n=300, synthetic_seed=5, max_len=MAX_LEN))
    run_teacher_stage(teacher_params(run_dir, teacher="Smoke_Teacher_2x64", teacher_epochs=1, teacher_lr=1e-3,
                                     teacher_seed=0, reference_seeds=[1], batch_size=16, max_len=MAX_LEN,
                                     precision="fp32"), progress=False)
    return run_dir


def _students(run_dir, teacher_mode):
    return run_student_stage(student_params(run_dir, students=["Smoke_Tiny_1x32"], arms=["independent", "distilled"],
                                            seeds=[0], student_max_steps=20, eval_every=10, patience=0,
                                            student_lr_grid=[2e-3], student_lr_grid_warm=[2e-3], batch_size=16,
                                            alpha=0.5, temperature=4.0, max_len=MAX_LEN, teacher_mode=teacher_mode,
                                            precision="fp32", bootstrap_n=50, workers=1, threads=1))


def test_online_teacher_matches_the_cached_logits(tiny_run, tmp_path):
    online_dir = tmp_path / "online"
    shutil.copytree(tiny_run, online_dir)
    cached = _students(tiny_run, "cached")
    online = _students(online_dir, "online")
    # Same batches, same seed; the teacher's logits differ only by batch padding (float rounding).
    assert list(cached["runs"]["batch_digest"]) == list(online["runs"]["batch_digest"])
    cols = ["model", "mode", "seed", "split", "accuracy", "macro_f1", "agreement", "kl_to_teacher"]
    pd.testing.assert_frame_equal(online["metrics"][cols], cached["metrics"][cols], atol=1e-3)
    preds = {mode: pd.read_csv(d / "models" / "predictions.csv").query("mode == 'distilled'")["prob_1"].to_numpy()
             for mode, d in (("cached", tiny_run), ("online", online_dir))}
    assert len(preds["cached"]) > 0
    np.testing.assert_allclose(preds["online"], preds["cached"], atol=1e-3)


def test_the_transfer_curve_trains_in_the_stage_and_only_reports(tmp_path):
    run_dir = tmp_path / "run"
    stages_data.prepare(data_params(run_dir, synthetic_n=300, synthetic_seed=5, max_len=MAX_LEN,
                                    synthetic_transfer_n=150))
    run_teacher_stage(teacher_params(run_dir, teacher="Smoke_Teacher_2x64", teacher_epochs=1, teacher_lr=1e-3,
                                     teacher_seed=0, reference_seeds=[1], batch_size=16, max_len=MAX_LEN,
                                     precision="fp32"), progress=False)
    common = dict(students=["Smoke_Tiny_1x32"], arms=["independent", "distilled", "distilled_transfer"], seeds=[0, 1],
                  student_max_steps=12, eval_every=6, patience=0, student_lr_grid=[2e-3], student_lr_grid_warm=[2e-3],
                  batch_size=16,
                  alpha=0.5, temperature=4.0, max_len=MAX_LEN, transfer_n=150, precision="fp32", bootstrap_n=20,
                  workers=1, threads=1)
    out = run_student_stage(student_params(run_dir, transfer_curve=[0.5], transfer_curve_seeds=[1], **common))
    curve = pd.read_csv(run_dir / "models" / "transfer_curve.csv")
    n_train = len(data_store.load_cases(run_dir)["train"])
    extra = int(round(0.5 * n_train))
    # 0 (the distilled arm) and 150 (the stage's own transfer arm) are read back; only the extra size is trained.
    assert sorted(curve["transfer_n"].unique()) == sorted({0, extra, 150})
    assert set(curve["seed"]) == {1} and set(curve["split"]) == {"val", "test"}
    pd.testing.assert_frame_equal(out["transfer_curve"], curve, check_dtype=False)
    runs = pd.read_csv(run_dir / "models" / "student_runs.csv")
    assert len(runs) == 6  # the curve's trial run is not one of the stage's runs
    assert not (run_dir / "models" / "students" / ".trials").exists()
    again = run_student_stage(student_params(run_dir, transfer_curve=[], **common))
    assert again["transfer_curve"] is None and not (run_dir / "models" / "transfer_curve.csv").exists()


def test_chain_order_follows_parameter_count():
    from helpers.stages.students import chain_order

    assert chain_order({"small": 10, "big": 30, "mid": 20, "big_too": 30}) == ["big", "big_too", "mid", "small"]


@pytest.mark.parametrize("warm_grid", [[2e-3], [1e-3, 2e-3]], ids=["first-link-trained", "first-link-from-trials"])
def test_chain_students_learn_from_the_previous_link(tiny_run, tmp_path, monkeypatch, warm_grid):
    """Listed smallest first, the students are still chained by size: Half (teacher layers, larger) learns from the
    teacher, Tiny from Half's seed-0 distilled model, whose train logits are cached once and are what Tiny sees."""
    from helpers.core.run_folder import read_index
    from helpers.models.build import load_model
    from helpers.stages import student_runs
    from helpers.training.datasets import encode_splits
    from helpers.training.loop import predict_logits
    from helpers.training.teacher_logits import load_teacher_logits

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    seen, real_train = [], student_runs.train

    def spy(model, train_set, val_set, cfg, mode="independent", **kw):
        seen.append((mode, cfg.seed, train_set.teacher_logits, kw.get("teacher_model")))
        return real_train(model, train_set, val_set, cfg, mode=mode, **kw)

    monkeypatch.setattr(student_runs, "train", spy)
    out = run_student_stage(student_params(run_dir, students=["Smoke_Tiny_1x32", "Smoke_Half_1x64"],
                                           arms=["independent", "distilled", "chain"], seeds=[0, 1],
                                           student_max_steps=20, eval_every=10, patience=0, student_lr_grid=[2e-3],
                                           student_lr_grid_warm=warm_grid, batch_size=16, alpha=0.5, temperature=4.0,
                                           max_len=MAX_LEN, precision="fp32", bootstrap_n=50, workers=1, threads=1))
    chain = pd.read_csv(run_dir / "models" / "chain.csv")
    assert chain["model"].tolist() == ["Smoke_Half_1x64", "Smoke_Tiny_1x32"]
    assert chain["params"].is_monotonic_decreasing
    assert chain["teacher"].tolist() == [read_index(run_dir)["teacher"]["name"], "Smoke_Half_1x64"]
    link = chain.iloc[1]
    assert (link["teacher_mode"], link["teacher_seed"]) == ("distilled", 0)
    assert link["teacher_path"] == "models/students/Smoke_Half_1x64/distilled/seed0"

    runs = out["runs"]
    # the first link's chain is its distilled arm: no chain runs for it; the second link trains every seed
    assert sorted(runs.loc[runs["mode"] == "chain", "model"].unique()) == ["Smoke_Tiny_1x32"]
    assert sorted(runs.loc[runs["mode"] == "chain", "seed"]) == [0, 1]
    assert runs["lr"][runs["model"] == "Smoke_Tiny_1x32"].nunique() == 1  # the student's chosen rate, every arm

    # what the chain runs trained on: the previous link's logits on the training split, not the teacher's
    cases = data_store.load_cases(run_dir)
    encoded = encode_splits({"train": cases["train"]}, MAX_LEN)["train"]
    half = load_model(run_dir / link["teacher_path"])
    expected = predict_logits(half, encoded)
    teacher = load_teacher_logits(run_dir, cases, MAX_LEN)["train"]
    chain_runs = [s for s in seen if s[0] == "chain"]
    assert len(chain_runs) == 2 and all(s[3] is None for s in chain_runs)
    for _, _, logits, _ in chain_runs:
        np.testing.assert_allclose(logits, expected, atol=1e-4)
        assert not np.allclose(logits, teacher, atol=1e-2)
    cached = list((run_dir / "models" / "chain_logits").glob("*.safetensors"))
    assert [f"models/chain_logits/{p.name}" for p in cached] == [link["logits"]]  # one pass for the link

    gain = out["kd_gain"]
    tiny = gain[(gain["model"] == "Smoke_Tiny_1x32") & (gain["metric"] == "accuracy")]
    assert {("chain", "independent"), ("chain", "distilled")} <= set(zip(tiny["arm"], tiny["against"]))
    assert not ((gain["model"] == "Smoke_Half_1x64") & (gain["arm"] == "chain")).any()
    modes = {(e["name"], e["mode"]) for e in read_index(run_dir)["students"]}
    assert ("Smoke_Tiny_1x32", "chain") in modes and ("Smoke_Half_1x64", "chain") not in modes


def test_link_logits_are_computed_once(tiny_run, monkeypatch):
    """A second request for the same link (same checkpoint, same data) reads the cache: no model is loaded."""
    from helpers.stages import students as stage
    from helpers.training import teacher_logits

    settings = {"max_len": MAX_LEN, "device": "cpu", "teacher_mode": "cached", "trim_vocab": False,
                "transfer_n": 0, "precision": "fp32"}
    shared = stage.load_shared(tiny_run, settings)
    link = tiny_run / "models" / "teacher_reference_seed1"  # any checkpoint can be a link's teacher
    first = stage.cache_link_logits(shared, link)

    def no_model(*args, **kwargs):
        raise AssertionError("the link's logits were computed a second time")

    monkeypatch.setattr(teacher_logits, "load_model", no_model)
    assert stage.cache_link_logits(shared, link) == first
    assert first.parent == tiny_run / "models" / "chain_logits"
    logits = teacher_logits.read_cached_logits(first)
    assert set(logits) == {"train"} and logits["train"].shape == (len(shared.labels["train"]), 2)


def test_the_teacher_stops_after_teacher_patience_epochs_without_improvement(tmp_path, monkeypatch):
    """A teacher that cannot improve (learning rate ~0) stops after `teacher_patience` flat epochs, never running its
    whole `teacher_epochs` budget; with patience 0 it runs them all. (It first learns for 150 steps at a real rate so
    that it predicts both classes: patience counts only once a run predicts more than one class.)"""
    import json

    from helpers.stages import teacher as teacher_stage
    from helpers.training.loop import TrainConfig

    real_train = teacher_stage.train

    def after_a_little(model, train_set, val_set, cfg, **kwargs):  # first 150 steps at a real rate: both classes
        warm = TrainConfig(max_steps=150, lr=3e-3, batch_size=cfg.batch_size, seed=cfg.seed, eval_every=150,
                           patience=0)
        real_train(model, train_set, val_set, warm)
        return real_train(model.train(), train_set, val_set, cfg, **kwargs)

    monkeypatch.setattr(teacher_stage, "train", after_a_little)
    run_dir = tmp_path / "run"
    stages_data.prepare(data_params(run_dir, synthetic_n=200, synthetic_seed=5, max_len=MAX_LEN))
    common = dict(teacher="Smoke_Teacher_2x64", teacher_epochs=8, teacher_lr=1e-12, teacher_seed=0, reference_seeds=[1],
                  batch_size=16, max_len=MAX_LEN, precision="fp32")
    run_teacher_stage(teacher_params(run_dir, teacher_patience=1, **common), progress=False)
    history = pd.read_csv(run_dir / "models" / "teacher" / "history.csv")
    assert 1 < len(history) < 8  # stopped early: one epoch without improvement after the first
    run_teacher_stage(teacher_params(run_dir, teacher_patience=0, **common), progress=False)
    assert len(pd.read_csv(run_dir / "models" / "teacher" / "history.csv")) == 8
    assert json.loads((run_dir / "models" / "teacher_metrics.json").read_text())["test"]["accuracy"] >= 0
