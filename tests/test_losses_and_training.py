"""The distillation loss, cached vs online teacher, best-epoch selection and seed reproducibility."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers.models import REGISTRY, build_model
from helpers.training import (CaseDataset, DistillationTrainer, TrainConfig, collate, distillation_loss, encode,
                              predict_logits, train)


def _hand_kd(s, t, y, alpha, T):
    """The loss written out with plain Python floats, row by row."""
    total_kl, total_ce = 0.0, 0.0
    for srow, trow, label in zip(s.tolist(), t.tolist(), y.tolist()):
        ps = [math.exp(v / T) for v in srow]
        pt = [math.exp(v / T) for v in trow]
        ps = [v / sum(ps) for v in ps]
        pt = [v / sum(pt) for v in pt]
        total_kl += sum(a * math.log(a / b) for a, b in zip(pt, ps))
        p1 = [math.exp(v) for v in srow]
        total_ce += -math.log(p1[label] / sum(p1))
    n = len(y)
    return alpha * T * T * total_kl / n + (1 - alpha) * total_ce / n


def test_loss_matches_hand_computation():
    torch.manual_seed(0)
    s, t = torch.randn(5, 2) * 2, torch.randn(5, 2) * 3
    y = torch.tensor([0, 1, 1, 0, 1])
    for alpha in (0.0, 0.3, 1.0):
        for T in (1.0, 2.0, 4.0):
            loss, _ = distillation_loss(s, t, y, alpha, T)
            assert float(loss) == pytest.approx(_hand_kd(s, t, y, alpha, T), rel=1e-5)


def test_loss_limits_and_temperature_scaling():
    torch.manual_seed(1)
    s, t, y = torch.randn(8, 2), torch.randn(8, 2), torch.randint(0, 2, (8,))
    ce = F.cross_entropy(s, y)
    assert float(distillation_loss(s, t, y, 0.0, 4.0)[0]) == pytest.approx(float(ce))
    kl = lambda T: F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True,
                            reduction="batchmean")
    for T in (1.0, 3.0):
        assert float(distillation_loss(s, t, y, 1.0, T)[0]) == pytest.approx(T * T * float(kl(T)), rel=1e-6)
    # a student that equals the teacher pays nothing for the KD term
    assert float(distillation_loss(t, t, y, 1.0, 2.0)[0]) == pytest.approx(0.0, abs=1e-6)


def _tiny_data(n=24, max_len=16):
    rng = np.random.default_rng(0)
    words = ["the court", "reversed", "affirmed", "warrant", "petitioner", "statute", "appeal", "state"]
    texts = [" ".join(rng.choice(words, 6)) for _ in range(n)]
    labels = np.array([int("reversed" in t) for t in texts])
    return encode(texts, max_len), labels


def test_cached_and_online_teacher_give_the_same_loss():
    enc, labels = _tiny_data()
    teacher = build_model(REGISTRY["Smoke_Teacher_2x64"], seed=0).eval()
    cached = predict_logits(teacher, enc)
    student = build_model(REGISTRY["Smoke_Tiny_1x32"], seed=0).eval()
    batch = collate([CaseDataset(enc, labels, cached)[i] for i in range(8)])
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir="/tmp/dj-test", use_cpu=True, report_to="none")
    kw = dict(model=student, args=args, alpha=0.7, temperature=3.0)
    loss_cached = DistillationTrainer(**kw).compute_loss(student, batch)
    loss_online = DistillationTrainer(teacher_model=teacher, **kw).compute_loss(student, batch)
    assert float(loss_cached.detach()) == pytest.approx(float(loss_online.detach()), abs=1e-5)


def _fit(mode, seed):
    enc, labels = _tiny_data()
    teacher = build_model(REGISTRY["Smoke_Teacher_2x64"], seed=0).eval()
    tl = predict_logits(teacher, enc)
    model = build_model(REGISTRY["Smoke_Tiny_1x32"], seed=seed)
    cfg = TrainConfig(epochs=2, lr=1e-3, batch_size=8, seed=seed, progress=False)
    model, hist = train(model, CaseDataset(enc, labels, tl), CaseDataset(enc, labels, tl), cfg, mode=mode)
    return predict_logits(model, enc), hist


def test_same_seed_same_metrics_and_modes_differ_only_in_loss():
    a, hist_a = _fit("distilled", 3)
    b, hist_b = _fit("distilled", 3)
    np.testing.assert_array_equal(a, b)
    assert hist_a.drop(columns=[]).equals(hist_b)
    assert hist_a["best"].sum() == 1 and len(hist_a) == 2
    assert hist_a["train_kl"].notna().all()
    c, hist_c = _fit("independent", 3)
    assert hist_c["train_kl"].isna().all()
    assert not np.array_equal(a, c)


def test_unknown_mode_is_rejected():
    enc, labels = _tiny_data()
    with pytest.raises(ValueError, match="mode"):
        train(build_model(REGISTRY["Smoke_Tiny_1x32"]), CaseDataset(enc, labels), CaseDataset(enc, labels),
              TrainConfig(epochs=1, lr=1e-3, batch_size=8, seed=0), mode="kd")
