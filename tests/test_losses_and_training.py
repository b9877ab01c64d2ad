"""The distillation loss, the training loop's guarantees (same batches, same start, best step kept), precision."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers.core.constants import ARMS
from helpers.evaluation.metrics import softmax
from helpers.models.build import build_model
from helpers.models.specs import REGISTRY
from helpers.training.datasets import CaseDataset, batch_order, collate, encode
from helpers.training.loop import TrainConfig, predict_logits, train
from helpers.training.losses import _arm_loss, distillation_loss
from helpers.training.precision import autocast, resolve_precision


def _hand_kd(s, t, y, alpha, T, labelled=None):
    """The loss written out with plain Python floats, row by row (unlabelled rows: KL only)."""
    total_kl, total_ce = 0.0, 0.0
    labelled = labelled or [True] * len(y)
    for srow, trow, label, has in zip(s.tolist(), t.tolist(), y.tolist(), labelled):
        ps = [math.exp(v / T) for v in srow]
        pt = [math.exp(v / T) for v in trow]
        ps = [v / sum(ps) for v in ps]
        pt = [v / sum(pt) for v in pt]
        total_kl += sum(a * math.log(a / b) for a, b in zip(pt, ps))
        if has:
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


def test_loss_with_unlabelled_transfer_cases_uses_the_kl_term_alone_for_them():
    torch.manual_seed(2)
    s, t = torch.randn(6, 3), torch.randn(6, 3) * 2
    y = torch.tensor([0, 2, -1, 1, -1, -1])
    labelled = [bool(v >= 0) for v in y.tolist()]
    loss, parts = distillation_loss(s, t, y, 0.4, 3.0, labelled=y >= 0)
    assert float(loss) == pytest.approx(_hand_kd(s, t, y.clamp(min=0), 0.4, 3.0, labelled), rel=1e-5)
    only_kl, _ = distillation_loss(s, t, torch.full((6,), -1), 0.4, 3.0, labelled=torch.zeros(6, dtype=torch.bool))
    assert float(only_kl) == pytest.approx(0.4 * 9 * parts["kl"], rel=1e-5)


def test_loss_limits_and_temperature_scaling():
    torch.manual_seed(1)
    s, t, y = torch.randn(8, 2), torch.randn(8, 2), torch.randint(0, 2, (8,))
    ce = F.cross_entropy(s, y)
    assert float(distillation_loss(s, t, y, 0.0, 4.0)[0]) == pytest.approx(float(ce))
    kl = lambda T: F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True,  # noqa: E731
                            reduction="batchmean")
    for T in (1.0, 3.0):
        assert float(distillation_loss(s, t, y, 1.0, T)[0]) == pytest.approx(T * T * float(kl(T)), rel=1e-6)
    # a student that equals the teacher pays nothing for the KD term
    assert float(distillation_loss(t, t, y, 1.0, 2.0)[0]) == pytest.approx(0.0, abs=1e-6)


def test_pseudo_label_arm_is_the_matched_control_of_distilled_transfer():
    # Labelled cases: exactly the distilled loss. Transfer cases (label -1): alpha * CE(the teacher's argmax) in place
    # of alpha * T^2 * KL(teacher || student). Every term averaged over the whole batch, by hand:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 3.0]])
    teacher = torch.tensor([[0.0, 5.0], [5.0, 0.0], [4.0, 0.0]])
    batch = {"labels": torch.tensor([0, -1, -1]), "teacher_logits": teacher}
    alpha, t = 0.5, 4.0
    log_q = F.log_softmax(logits / t, -1)
    log_p = F.log_softmax(teacher / t, -1)
    kl0 = float((log_p[0].exp() * (log_p[0] - log_q[0])).sum())
    ce0 = float(F.cross_entropy(logits[:1], torch.tensor([0])))
    hard = [float(F.cross_entropy(logits[i:i + 1], torch.tensor([0]))) for i in (1, 2)]  # the teacher says 0 twice
    expected = (alpha * t * t * kl0 + (1 - alpha) * ce0 + alpha * sum(hard)) / 3
    loss, _ = _arm_loss("pseudo_label_transfer", logits, batch, alpha, t, None)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    # the two transfer arms differ on the transfer rows only: on a batch of labelled cases they are one loss
    labelled = {"labels": torch.tensor([0, 1, 1]), "teacher_logits": teacher}
    soft, _ = _arm_loss("distilled_transfer", logits, labelled, alpha, t, None)
    assert float(_arm_loss("pseudo_label_transfer", logits, labelled, alpha, t, None)[0]) == float(soft)
    # and on a transfer row the soft term alone differs: alpha * T^2 * KL there
    kl = [float((log_p[i].exp() * (log_p[i] - log_q[i])).sum()) for i in (1, 2)]
    soft_all, _ = _arm_loss("distilled_transfer", logits, batch, alpha, t, None)
    assert float(soft_all) == pytest.approx(expected + alpha * (t * t * sum(kl) - sum(hard)) / 3, rel=1e-6)


def _tiny_data(n=32, max_len=16):
    rng = np.random.default_rng(0)
    words = ["the court", "reversed", "affirmed", "warrant", "petitioner", "statute", "appeal", "state"]
    texts = [" ".join(rng.choice(words, 6)) for _ in range(n)]
    labels = np.array([int("reversed" in t) for t in texts])
    return encode(texts, max_len), labels


def _teacher_logits(enc):
    teacher = build_model(REGISTRY["Smoke_Teacher_2x64"], seed=0).eval()
    return teacher, predict_logits(teacher, enc)


def _fit(mode, seed, steps=12, **kw):
    enc, labels = _tiny_data()
    _, tl = _teacher_logits(enc)
    model = build_model(REGISTRY["Smoke_Tiny_1x32"], seed=seed)
    cfg = TrainConfig(max_steps=steps, lr=1e-3, batch_size=8, seed=seed, eval_every=4, patience=0, **kw)
    return train(model, CaseDataset(enc, labels, tl), CaseDataset(enc, labels), cfg, mode=mode)


def test_same_seed_gives_identical_results():
    a, b = _fit("distilled", 3), _fit("distilled", 3)
    np.testing.assert_array_equal(a.val_logits, b.val_logits)
    assert a.history.equals(b.history)
    assert a.history["train_kl"].notna().all()


def test_arms_start_from_identical_weights_and_see_identical_batches(monkeypatch):
    from helpers.training import datasets as training_datasets
    from helpers.training import loop as training_loop

    seen: dict[str, list] = {"independent": [], "distilled": []}
    starts: dict[str, dict] = {}
    real_collate = training_datasets.collate

    def spy(batch):
        out = real_collate(batch)
        seen[current].append(out["input_ids"].clone())
        return out

    monkeypatch.setattr(training_loop, "collate", spy)
    real_train = training_loop.train
    for current in ("independent", "distilled"):
        model = build_model(REGISTRY["Smoke_Tiny_1x32"], seed=5)
        starts[current] = {k: v.clone() for k, v in model.state_dict().items()}
        enc, labels = _tiny_data()
        _, tl = _teacher_logits(enc)
        cfg = TrainConfig(max_steps=6, lr=1e-3, batch_size=8, seed=5, eval_every=100, patience=0)
        result = real_train(model, CaseDataset(enc, labels, tl), CaseDataset(enc[:8], labels[:8]), cfg, mode=current)
        starts[current + "_digest"] = result.batch_digest
    for k in starts["independent"]:
        assert torch.equal(starts["independent"][k], starts["distilled"][k]), k
    assert starts["independent_digest"] == starts["distilled_digest"]
    train_batches = [x for x in seen["independent"] if x.shape[0] == 8][:6]
    assert all(torch.equal(a, b) for a, b in zip(train_batches, [x for x in seen["distilled"] if x.shape[0] == 8][:6]))


def test_the_best_evaluation_is_restored_not_the_last():
    enc, labels = _tiny_data()
    model = build_model(REGISTRY["Smoke_Tiny_1x32"], seed=1)
    # a huge learning rate makes later evaluations worse than an early one, so best != last is likely
    cfg = TrainConfig(max_steps=24, lr=5e-2, batch_size=8, seed=1, eval_every=4, patience=0,
                      selection_metric="accuracy")
    r = train(model, CaseDataset(enc, labels), CaseDataset(enc, labels), cfg)
    best = r.history.loc[r.history["best"]]
    assert len(best) == 1 and int(best["step"].iloc[0]) == r.best_step
    assert best["val_accuracy"].iloc[0] == r.history["val_accuracy"].max()
    # the restored weights reproduce the best step's validation logits
    np.testing.assert_allclose(predict_logits(r.model, enc), r.val_logits, atol=1e-5)


def learned_a_little(model, enc, labels):
    """The model after 40 quick steps on the cases: it predicts both classes, so patience counts from the start."""
    cfg = TrainConfig(max_steps=40, lr=5e-3, batch_size=8, seed=0, eval_every=40, patience=0)
    return train(model, CaseDataset(enc, labels), CaseDataset(enc, labels), cfg).model.train()


def test_early_stopping_stops_and_records_the_cost():
    enc, labels = _tiny_data()
    model = learned_a_little(build_model(REGISTRY["Smoke_Tiny_1x32"], seed=0), enc, labels)
    cfg = TrainConfig(max_steps=200, lr=0.0, batch_size=8, seed=0, eval_every=5, patience=2)
    r = train(model, CaseDataset(enc, labels), CaseDataset(enc, labels), cfg)
    assert len(np.unique(r.val_logits.argmax(1))) == 2
    assert r.stopped_early and 50 <= r.steps < 200  # never before max_steps // 4
    assert r.train_examples == sum(len(b) for b in batch_order(len(enc), 8, r.steps, 0))
    assert r.train_seconds > 0 and len(r.batch_digest) == 16


def test_patience_waits_until_a_run_predicts_more_than_one_class():
    # constant logits (zeroed classifier, learning rate 0): the run predicts class 0 for every case at every
    # evaluation; the old rule stopped it at step 10 (patience 2, max_steps // 4), the rule now runs it to its cap
    enc, labels = _tiny_data()
    model = build_model(REGISTRY["Smoke_Tiny_1x32"], seed=0)
    with torch.no_grad():
        for p in model.classifier.parameters():
            p.zero_()
    cfg = TrainConfig(max_steps=40, lr=0.0, batch_size=8, seed=0, eval_every=5, patience=2)
    r = train(model, CaseDataset(enc, labels), CaseDataset(enc, labels), cfg)
    assert (r.val_logits.argmax(1) == 0).all()
    assert not r.stopped_early and r.steps == 40 and len(r.history) == 8


def test_cached_and_online_teacher_train_identically():
    enc, labels = _tiny_data()
    teacher, tl = _teacher_logits(enc)
    cfg = TrainConfig(max_steps=6, lr=1e-3, batch_size=8, seed=0, eval_every=3, patience=0)
    cached = train(build_model(REGISTRY["Smoke_Tiny_1x32"], seed=0), CaseDataset(enc, labels, tl),
                   CaseDataset(enc, labels), cfg, mode="distilled")
    online = train(build_model(REGISTRY["Smoke_Tiny_1x32"], seed=0), CaseDataset(enc, labels),
                   CaseDataset(enc, labels), cfg, mode="distilled", teacher_model=teacher)
    np.testing.assert_allclose(cached.val_logits, online.val_logits, atol=1e-4)


def test_unknown_mode_and_misuse_are_rejected():
    enc, labels = _tiny_data()
    cfg = TrainConfig(max_steps=2, lr=1e-3, batch_size=8, seed=0)
    with pytest.raises(ValueError, match="mode"):
        train(build_model(REGISTRY["Smoke_Tiny_1x32"]), CaseDataset(enc, labels), CaseDataset(enc, labels), cfg,
              mode="kd")
    with pytest.raises(ValueError, match="teacher logits"):
        train(build_model(REGISTRY["Smoke_Tiny_1x32"]), CaseDataset(enc, labels), CaseDataset(enc, labels), cfg,
              mode="distilled")
    assert set(ARMS) == {"independent", "distilled", "distilled_transfer", "pseudo_label_transfer", "chain",
                         "distilled_hidden", "distilled_attention", "distilled_attribution"}


def test_predict_logits_batches_by_length_but_returns_input_order():
    enc, _ = _tiny_data(n=20)
    enc = [dict(e, input_ids=e["input_ids"][: 4 + i % 9], attention_mask=e["attention_mask"][: 4 + i % 9])
           for i, e in enumerate(enc)]
    model = build_model(REGISTRY["Smoke_Tiny_1x32"], seed=0).eval()
    one_by_one = np.concatenate([predict_logits(model, [e], batch_size=1) for e in enc])
    np.testing.assert_allclose(predict_logits(model, enc, batch_size=7), one_by_one, atol=1e-5)


def test_predict_logits_takes_padded_tensors_and_a_deployed_variant():
    from helpers.benchmark.deployment import deploy, predict_proba
    from helpers.training.datasets import collate

    enc, _ = _tiny_data(n=9)
    model = build_model(REGISTRY["Smoke_Tiny_1x32"], seed=0).eval()
    ragged = predict_logits(model, enc, batch_size=4)
    padded = collate(enc)
    np.testing.assert_allclose(predict_logits(model, padded, batch_size=4), ragged, atol=1e-5)
    fp32 = deploy(model, "fp32", torch.device("cpu"))
    np.testing.assert_allclose(predict_logits(fp32, padded, batch_size=4), ragged, atol=1e-5)
    np.testing.assert_allclose(predict_proba(fp32, padded, batch_size=4), softmax(ragged), atol=1e-5)
    assert predict_logits(model, []).shape == (0, 2)


def test_precision_resolution_and_bf16_training():
    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"
    assert resolve_precision("auto", "cpu") in ("fp32", "bf16")
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16")
    with autocast("bf16"):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    r = _fit("independent", 0, steps=4, precision="bf16")
    assert np.isfinite(r.val_logits).all()


def test_collate_pads_and_stacks():
    batch = collate([{"input_ids": [101, 5, 102], "attention_mask": [1, 1, 1], "labels": 1,
                      "teacher_logits": np.array([0.1, 0.2], dtype=np.float32)},
                     {"input_ids": [101, 102], "attention_mask": [1, 1], "labels": -1,
                      "teacher_logits": np.array([0.3, 0.4], dtype=np.float32)}])
    assert batch["input_ids"].tolist() == [[101, 5, 102], [101, 102, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [1, -1] and batch["teacher_logits"].shape == (2, 2)


def test_transfer_arms_get_the_independent_batches_with_transfer_cases_on_top():
    from helpers.training.datasets import batch_order
    from helpers.training.loop import transfer_batches

    labels = np.array([0, 1] * 20 + [-1] * 50)  # 40 labelled cases, then 50 transfer cases
    cfg = TrainConfig(max_steps=12, lr=1e-3, batch_size=8, seed=3, transfer_batch=5)
    mixed = transfer_batches(labels, cfg)
    alone = batch_order(40, 8, 12, 3)  # what the independent arm sees
    assert len(mixed) == 12
    for b, ref in zip(mixed, alone):
        assert b[:8].tolist() == ref.tolist()  # the same labelled cases, in the same order
        assert len(b) == 13 and (labels[b[8:]] == -1).all()  # five transfer cases on top
    drawn = np.concatenate([b[8:] for b in mixed])
    assert len(set(drawn.tolist())) == 50  # one pass over the pool before any repeats (60 draws)
    assert transfer_batches(labels[:40], cfg)[0].tolist() == alone[0].tolist()
    with pytest.raises(ValueError, match="transfer_batch"):
        transfer_batches(labels, TrainConfig(max_steps=2, lr=1e-3, batch_size=8, seed=3))
