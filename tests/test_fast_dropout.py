"""The cheap CPU dropout: the same Bernoulli(1 - p) masks and 1 / (1 - p) scaling, repeatable, and only in training."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers.models.build import build_model
from helpers.models.specs import REGISTRY
from helpers.training.datasets import collate, encode
from helpers.training.fast_dropout import CpuDropout, _attention, cpu_dropout, drop, effective_p, keep_mask


def test_keep_mask_keeps_each_element_with_probability_one_minus_p_independently():
    torch.manual_seed(0)
    for p in (0.1, 0.5, 0.9):
        mask = keep_mask((400, 1000), p)
        assert mask.dtype == torch.bool and mask.shape == (400, 1000)
        rate = mask.float().mean().item()
        assert abs(rate - (1 - effective_p(p))) < 4 * np.sqrt(p * (1 - p) / mask.numel())
        # no structure across neighbours (the four 16-bit lanes of a draw are independent)
        m = mask.flatten().float()
        corr = np.corrcoef(m[:-1].numpy(), m[1:].numpy())[0, 1]
        assert abs(corr) < 0.01
        lanes = m.view(-1, 4).mean(0)
        assert (lanes - (1 - p)).abs().max() < 0.01
    assert effective_p(0.1) == pytest.approx(0.1, abs=1e-5) and effective_p(0.0) == 0.0
    assert keep_mask((3, 5), 0.0).all()  # odd sizes: lanes beyond n are dropped


def test_masks_repeat_under_the_same_seed_and_differ_across_seeds():
    torch.manual_seed(7)
    a = keep_mask((64, 64), 0.1)
    torch.manual_seed(7)
    b = keep_mask((64, 64), 0.1)
    torch.manual_seed(8)
    c = keep_mask((64, 64), 0.1)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_drop_zeroes_and_rescales_like_dropout_and_is_identity_outside_training():
    torch.manual_seed(0)
    x = torch.randn(200, 500)
    y = drop(x, 0.25)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / (1 - effective_p(0.25)))
    assert abs(kept.float().mean().item() - 0.75) < 0.01
    assert torch.equal(drop(x, 0.25, training=False), x)
    assert torch.equal(drop(x, 0.0), x)
    assert torch.equal(drop(x, 1.0), torch.zeros_like(x))
    # the gradient flows through the kept elements only, scaled the same way
    x.requires_grad_(True)
    torch.manual_seed(1)
    drop(x, 0.25).sum().backward()
    torch.manual_seed(1)
    expected = keep_mask(x.shape, 0.25).float() / (1 - effective_p(0.25))
    torch.testing.assert_close(x.grad, expected)


def test_cpu_dropout_swaps_in_for_the_block_and_restores_the_model_exactly():
    model = build_model(REGISTRY["Smoke_Teacher_2x64"], seed=0)
    before = [type(m) for m in model.modules()]
    assert model.config._attn_implementation == "sdpa"
    with cpu_dropout(model):
        assert any(type(m) is CpuDropout for m in model.modules())
        assert not any(type(m) is nn.Dropout for m in model.modules())
        assert model.config._attn_implementation != "sdpa"
    assert [type(m) for m in model.modules()] == before
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(RuntimeError), cpu_dropout(model):  # restored on errors too
        raise RuntimeError("boom")
    assert [type(m) for m in model.modules()] == before and model.config._attn_implementation == "sdpa"


def _batch():
    texts = ["the court reversed the judgment", "affirmed", "the statute applies to the warrant in this appeal"]
    return collate([dict(e, labels=0) for e in encode(texts, 16)])  # padded: the attention mask matters


def test_inference_inside_the_block_is_unchanged():
    model = build_model(REGISTRY["Smoke_Teacher_2x64"], seed=0).eval()
    b = _batch()
    with torch.no_grad():
        ref = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        with cpu_dropout(model):
            got = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    assert torch.equal(ref, got)


def test_training_forward_computes_the_same_attention_as_sdpa_when_nothing_is_dropped():
    """With every dropout rate rounded to zero the block's eager attention must equal the model's sdpa attention,
    padding mask included; with real rates, the same seed gives the same step and masks change the output."""
    model = build_model(REGISTRY["Smoke_Teacher_2x64"], seed=0)
    b = _batch()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 1e-9  # > 0, so the block's own path runs; rounds to a kept-everything mask
    model.train()
    ref_model = build_model(REGISTRY["Smoke_Teacher_2x64"], seed=0).eval()
    with torch.no_grad():
        ref = ref_model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        with cpu_dropout(model):
            got = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)

    live = build_model(REGISTRY["Smoke_Teacher_2x64"], seed=0).train()
    outs = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        with torch.no_grad(), cpu_dropout(live):
            outs.append(live(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits)
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])


def test_attention_ignores_masked_keys_and_drops_probabilities():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 5, 8) for _ in range(3))
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    mask[..., 3:] = False  # the last two keys are padding
    module = nn.Module().train()
    v_changed = v.clone()
    v_changed[:, :, 3:] = 100.0
    a, _ = _attention(module, q, k, v, mask, dropout=1e-9)
    b, _ = _attention(module, q, k, v_changed, mask, dropout=1e-9)
    torch.testing.assert_close(a, b)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
    torch.testing.assert_close(a, expected, atol=1e-5, rtol=1e-5)
    torch.manual_seed(0)
    dropped, _ = _attention(module, q, k, v, mask, dropout=0.5)
    assert not torch.allclose(dropped, a)
