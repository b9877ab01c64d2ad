"""`launcher: accelerate`: stages 02 and 03 run data-parallel in two CPU processes (gloo) give the files and, within
float rounding, the results of in-process training.

Covers, on the smoke profile's data and models: the teacher and a reference teacher (stage 02, two epochs) and one
student (Smoke_Half_1x64) in the independent and distilled arms, one seed, one learning rate (stage 03): four
launches of two processes each. Dropout is switched off (the models start from dropout-free copies passed as
`model_overrides`) and precision is fp32, so the two paths differ only in the order floats are summed (each process
pads its own shard, gradients are averaged across processes): measured here, test probabilities agreed to 3e-8 and
every metric exactly. With dropout on, each process draws its own masks and the runs differ as two seeds would.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import data_params, student_params, teacher_params

from helpers.config.resolve import resolve
from helpers.models.build import build_model, save_model
from helpers.models.specs import get_spec
from helpers.models.tokenization import get_tokenizer
from helpers.parallel.launcher import launch_command
from helpers.stages import data
from helpers.stages.students import run_student_stage
from helpers.stages.teacher import run_teacher_stage

TEACHER, STUDENT = "Smoke_Teacher_2x64", "Smoke_Half_1x64"
TOL_METRIC = 1e-3  # any accuracy, macro-F1 or AUC (val, test), one vs two processes: at 150/250 cases, no flip
TOL_PROB = 1e-4  # any test probability, any training loss


def _dropout_free(name: str, folder: Path) -> str:
    """A copy of spec `name`'s random initialisation without dropout, saved as a local pretrained folder."""
    model = build_model(get_spec(name, {name: "random"}), seed=11)
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    save_model(model, folder)
    get_tokenizer().save_pretrained(folder)
    return str(folder)


def _pipeline(run_dir: Path, overrides: dict[str, str], **launch) -> None:
    p = resolve("smoke")
    run_teacher_stage(teacher_params(run_dir, teacher=TEACHER, teacher_epochs=2, teacher_lr=p["teacher_lr"],
                                     teacher_seed=0, reference_seeds=[1], batch_size=p["batch_size"],
                                     max_len=p["max_len"],
                                     precision="fp32", model_overrides=overrides, threads=1, **launch), progress=False)
    run_student_stage(student_params(run_dir, students=[STUDENT], arms=["independent", "distilled"], seeds=[0],
                                     student_max_steps=p["student_max_steps"], eval_every=p["eval_every"],
                                     patience=p["patience"], student_lr_grid=p["student_lr_grid"][:1],
                                     student_lr_grid_warm=p["student_lr_grid_warm"][:1], batch_size=p["batch_size"],
                                     alpha=p["alpha"], temperature=p["temperature"], max_len=p["max_len"],
                                     precision="fp32", model_overrides=overrides, bootstrap_n=50, workers=1, threads=2,
                                     **launch))


def _files(run_dir: Path) -> list[str]:
    """Every file of the run folder; the teacher-logits cache name (a hash of the teacher's weights) generalised."""
    return sorted("models/teacher_logits/<key>.safetensors" if f.parent.name == "teacher_logits"
                  else str(f.relative_to(run_dir)) for f in run_dir.rglob("*") if f.is_file())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Data (smoke profile), then stages 02 and 03 in this process (one thread, like each launched process)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a module fixture runs before conftest's per-test one-thread fixture
    root = tmp_path_factory.mktemp("launcher")
    overrides = {name: _dropout_free(name, root / name) for name in (TEACHER, STUDENT)}
    p = resolve("smoke")
    one, two = root / "one", root / "two"
    data.prepare(data_params(one, synthetic_n=p["synthetic_n"], synthetic_seed=p["synthetic_seed"],
                             max_len=p["max_len"], val_n=p["val_n"], test_n=p["test_n"],
                             synthetic_transfer_n=p["synthetic_transfer_n"], split_seed=p["split_seed"]))
    shutil.copytree(one, two)
    _pipeline(one, overrides)
    yield one, two, overrides
    torch.set_num_threads(before)


def test_two_cpu_processes_give_the_files_and_results_of_one(runs, capsys):
    one, two, overrides = runs
    _pipeline(two, overrides, launcher="accelerate", processes=2)
    out = capsys.readouterr().out
    assert out.count("2 process(es), MULTI_CPU, backend gloo") == 4, out[-3000:]  # 2 teachers, 2 student runs

    # The same files, plus the job specs the launches read (and nothing left of their hand-back folders).
    # (a student's tuning seeds train as learning-rate trials, moved into place once their arm's rate is chosen)
    specs = ["launch/students/.trials/Smoke_Half_1x64-distilled-seed0-lr0.002.json",
             "launch/students/.trials/Smoke_Half_1x64-independent-seed0-lr0.002.json", "launch/teacher.json",
             "launch/teacher_reference_seed1.json"]
    assert _files(two) == sorted(_files(one) + specs)
    spec = json.loads((two / specs[0]).read_text())
    assert spec["kind"] == "student" and spec["settings"]["processes"] == 2 and spec["job"]["arm"] == "distilled"

    # Same index, same batches, same budget and the same decisions.
    assert json.loads((two / "models/models.json").read_text()) == json.loads((one / "models/models.json").read_text())
    runs_1, runs_2 = (pd.read_csv(d / "models/student_runs.csv") for d in (one, two))
    for col in ("model", "mode", "seed", "lr", "precision", "steps", "best_step", "train_examples", "batch_digest"):
        assert list(runs_2[col]) == list(runs_1[col]), col
    for d in ("teacher", "teacher_reference_seed1", "students/Smoke_Half_1x64/distilled/seed0"):
        h1, h2 = (pd.read_csv(r / "models" / d / "history.csv") for r in (one, two))
        assert list(h2.columns) == list(h1.columns) and list(h2["step"]) == list(h1["step"])
        assert list(h2["best"]) == list(h1["best"]), d
        np.testing.assert_allclose(h2["train_loss"], h1["train_loss"], atol=TOL_PROB, err_msg=d)

    # Every metric of every checkpoint within TOL; test probabilities close.
    m1, m2 = (pd.read_csv(d / "models/metrics.csv") for d in (one, two))
    keys = ["model", "mode", "seed", "split"]
    assert m2[keys].equals(m1[keys])
    diff = (m2[["accuracy", "macro_f1", "roc_auc"]] - m1[["accuracy", "macro_f1", "roc_auc"]]).abs().to_numpy()
    assert diff.max() <= TOL_METRIC, pd.concat([m1[keys], m1[["accuracy", "macro_f1", "roc_auc"]] - m2[
        ["accuracy", "macro_f1", "roc_auc"]]], axis=1)
    p1, p2 = (pd.read_csv(d / "models/predictions.csv") for d in (one, two))
    assert p2[["model", "mode", "seed", "id"]].equals(p1[["model", "mode", "seed", "id"]])
    assert np.abs(p2["prob_1"] - p1["prob_1"]).max() <= TOL_PROB
    k1, k2 = (pd.read_csv(d / "models/kd_gain.csv") for d in (one, two))
    assert list(k2.columns) == list(k1.columns)
    assert k2[["model", "arm", "metric"]].equals(k1[["model", "arm", "metric"]])


def _tiny_training(out: str | None) -> dict[str, np.ndarray]:
    """train() on 97 cases in batches of 3, distilled, dropout off. Under a 2-process debug launch the shards of a
    batch are 2 and 1 cases, and the batch of 1 that ends a pass leaves one process an empty shard. With `out`,
    the main process saves its result."""
    from accelerate import Accelerator
    from transformers import BertForSequenceClassification

    from helpers.models.build import config_for
    from helpers.training.datasets import CaseDataset
    from helpers.training.loop import TrainConfig, train

    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True) if out else None
    rng = np.random.default_rng(0)
    enc = [{"input_ids": [101, *rng.integers(1000, 2000, size=rng.integers(3, 20)).tolist(), 102]} for _ in range(127)]
    for e in enc:
        e["attention_mask"] = [1] * len(e["input_ids"])
    labels, t_logits = rng.integers(0, 2, 127), rng.normal(size=(127, 2)).astype(np.float32)
    config = config_for(get_spec("Smoke_Tiny_1x32"))
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    cfg = TrainConfig(max_steps=40, lr=2e-3, batch_size=3, seed=3, eval_every=20, patience=0)
    r = train(model, CaseDataset(enc[:97], labels[:97], t_logits[:97]), CaseDataset(enc[97:], labels[97:]), cfg,
              mode="distilled", accelerator=accelerator)
    result = {"val_logits": r.val_logits, "train_loss": r.history["train_loss"].to_numpy(),
              "weights": torch.cat([p.detach().flatten() for p in r.model.parameters()]).numpy(),
              "examples": np.array(r.train_examples), "digest": np.array(r.batch_digest)}
    if out and accelerator.is_main_process:
        assert accelerator.num_processes == 2
        np.savez(out, **result)
    return result


def test_train_on_two_processes_follows_the_global_batch(tmp_path):
    from accelerate import debug_launcher

    debug_launcher(_tiny_training, args=(str(tmp_path / "two.npz"),), num_processes=2)
    one = _tiny_training(None)
    with np.load(tmp_path / "two.npz") as two:
        assert str(two["digest"]) == str(one["digest"]) and int(two["examples"]) == int(one["examples"]) == 97 + 7 * 3
        for key in ("weights", "val_logits", "train_loss"):
            np.testing.assert_allclose(two[key], one[key], atol=1e-5, err_msg=key)


def test_launch_command_flags():
    cmd = launch_command("spec.json", 2, "cpu")
    assert cmd[1:4] == ["-m", "accelerate.commands.launch", "--mixed_precision"]
    assert "--multi_gpu" in cmd and cmd[cmd.index("--num_processes") + 1] == "2" and "--main_process_port" in cmd
    assert cmd[-3:] == ["-m", "helpers.stages.worker", "spec.json"]
    assert "--multi_gpu" not in launch_command("spec.json", 1, "cpu")
    assert "--num_processes" not in launch_command("spec.json", 0, "cuda")  # accelerate's config decides
    with pytest.raises(ValueError, match="processes"):
        launch_command("spec.json", 0, "cpu")


def test_launcher_parameters_are_checked_before_any_work():
    from helpers.core.errors import ConfigError

    with pytest.raises(ConfigError, match="launcher"):
        resolve("smoke", overrides={"launcher": "torchrun"})
    with pytest.raises(ConfigError, match="processes"):
        resolve("smoke", overrides={"launcher": "accelerate", "processes": 0, "device": "cpu"})
    assert resolve("smoke", overrides={"launcher": "accelerate", "processes": 2})["processes"] == 2
