"""The beyond-logit arms: layer maps, the three inner terms (zero for a perfect copy, positive otherwise, gradients
that reach the student), the pairs a model cannot take, and the smoke run that trains them."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from helpers.core.constants import BEYOND_ARMS
from helpers.models.build import build_model
from helpers.models.specs import REGISTRY
from helpers.training.datasets import CaseDataset, collate, encode
from helpers.training.internals import (
    forward_with_term,
    layer_map,
    plan_term,
    relation_heads,
)
from helpers.training.loop import TrainConfig, predict_logits, train
from helpers.training.teacher_attributions import token_maps


def _data(n=24, max_len=16):
    rng = np.random.default_rng(0)
    words = ["the court", "reversed", "affirmed", "warrant", "petitioner", "statute", "appeal", "state"]
    texts = [" ".join(rng.choice(words, int(rng.integers(3, 7)))) for _ in range(n)]
    return encode(texts, max_len), np.array([int("reversed" in t) for t in texts])


def _teacher():
    return build_model(REGISTRY["Smoke_Teacher_2x64"], seed=0).eval()


def _batch(enc, labels, maps=None):
    data = CaseDataset(enc[:8], labels[:8], None, None if maps is None else maps[:8])
    return collate([data[i] for i in range(8)])


def test_layer_map_and_relation_heads():
    assert layer_map(2, 6) == [0, 3, 6]  # TinyBERT's g(m) = m N / M: student 1 <- 3, 2 <- 6
    assert layer_map(1, 2) == [0, 2] and layer_map(4, 12) == [0, 3, 6, 9, 12]
    assert relation_heads(512, 768, 12) == 8 and relation_heads(192, 384, 12) == 12


@pytest.mark.parametrize("arm", BEYOND_ARMS)
def test_a_perfect_copy_costs_nothing_and_a_stranger_costs_something(arm):
    enc, labels = _data()
    teacher = _teacher()
    maps = token_maps(teacher, enc, labels, 16, [64])["k64"]
    batch = _batch(enc, labels, maps)
    copy = build_model(REGISTRY["Smoke_Teacher_2x64"], seed=0).eval()  # the teacher itself, as a student
    term = plan_term(arm, copy, teacher, seed=0)
    assert term.projection is None and not term.notes
    _, zero = forward_with_term(copy, copy, term, teacher, batch)
    assert float(zero.detach()) == pytest.approx(0.0, abs=1e-5)
    stranger = build_model(REGISTRY["Smoke_Teacher_2x64"], seed=1).eval()
    if arm == "distilled_attribution":
        # two untrained models attribute almost evenly over the tokens (their maps differ by ~1e-6): the stranger
        # here is a teacher whose map puts everything on [CLS]
        batch = {**batch, "teacher_map": torch.zeros_like(batch["teacher_map"]).index_fill_(1, torch.tensor([0]), 1)}
    _, loss = forward_with_term(stranger, stranger, plan_term(arm, stranger, teacher, 0), teacher, batch)
    assert float(loss.detach()) > 1e-4


@pytest.mark.parametrize("arm", BEYOND_ARMS)
def test_the_inner_term_alone_moves_the_student(arm):
    enc, labels = _data()
    teacher = _teacher()
    student = build_model(REGISTRY["Smoke_Tiny_1x32"], seed=0).train()  # narrower: a projection where needed
    maps = token_maps(teacher, enc, labels, 16, [32])["k32"]
    term = plan_term(arm, student, teacher, seed=0)
    assert (term.projection is not None) == (arm == "distilled_hidden")
    _, extra = forward_with_term(student, student, term, teacher, _batch(enc, labels, maps))
    extra.backward()  # distilled_attribution: through the student's own gradient (a double backward)
    moved = [p for p in student.bert.encoder.parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert moved, f"{arm}: no gradient reached the student's encoder"
    assert all(p.grad is None for p in teacher.parameters())


def test_pairs_that_cannot_take_a_term_say_so():
    teacher = _teacher()  # 4 heads of 16
    two_heads = build_model(dataclasses.replace(REGISTRY["Smoke_Tiny_1x32"], heads=2), seed=0)
    hidden = plan_term("distilled_hidden", two_heads, teacher, 0)
    assert not hidden.use_attention and "left out" in hidden.notes[0]
    attention = plan_term("distilled_attention", two_heads, teacher, 0)
    assert attention.relation_heads == 4 and "relation heads" in attention.describe()
    with pytest.raises(ValueError, match="not a beyond-logit arm"):
        plan_term("chain", two_heads, teacher, 0)


def test_train_refuses_a_beyond_arm_without_what_it_reads():
    enc, labels = _data()
    teacher = _teacher()
    data = CaseDataset(enc, labels, predict_logits(teacher, enc))
    cfg = TrainConfig(max_steps=4, lr=1e-3, batch_size=8, seed=0, eval_every=2, patience=0)
    model = build_model(REGISTRY["Smoke_Tiny_1x32"], seed=0)
    with pytest.raises(ValueError, match="inner_teacher"):
        train(model, data, CaseDataset(enc, labels), cfg, mode="distilled_hidden")
    with pytest.raises(ValueError, match="token maps"):
        train(model, data, CaseDataset(enc, labels), cfg, mode="distilled_attribution")


def test_a_beyond_arm_sees_the_distilled_batches_and_logs_its_term():
    enc, labels = _data()
    teacher = _teacher()
    data = CaseDataset(enc, labels, predict_logits(teacher, enc))
    cfg = TrainConfig(max_steps=6, lr=1e-3, batch_size=8, seed=0, eval_every=3, patience=0)
    runs = {arm: train(build_model(REGISTRY["Smoke_Tiny_1x32"], seed=0), data, CaseDataset(enc, labels), cfg,
                       mode=arm, inner_teacher=teacher) for arm in ("distilled", "distilled_attention")}
    assert runs["distilled"].batch_digest == runs["distilled_attention"].batch_digest
    assert runs["distilled_attention"].history["train_extra"].gt(0).all()
    assert "train_extra" not in runs["distilled"].history and runs["distilled"].term == ""
    assert "last-layer attention" in runs["distilled_attention"].term


def test_smoke_run_trains_every_beyond_arm_and_compares_it_with_distilled(smoke_run):
    runs = pd.read_csv(smoke_run / "models" / "student_runs.csv", keep_default_na=False)
    for arm in BEYOND_ARMS:
        mine = runs[runs["mode"] == arm]
        assert len(mine) == 2 * 2 and (mine["term"] != "").all()  # 2 students x 2 seeds, each says what it took
    gain = pd.read_csv(smoke_run / "models" / "kd_gain.csv", keep_default_na=False)
    acc = gain[gain["metric"] == "accuracy"]
    for arm in BEYOND_ARMS:
        assert set(acc[acc["arm"] == arm]["against"]) == {"independent", "distilled"}
        assert (acc[(acc["arm"] == arm) & (acc["against"] == "distilled")]["endpoint"] == "secondary").all()
    assert list((smoke_run / "models" / "teacher_attributions").glob("*.safetensors"))
    for figure in ("03_attention_maps.png", "03_hidden_match.png"):
        assert (smoke_run / "figures" / figure).is_file()
