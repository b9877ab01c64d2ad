"""Deployment variants of a trained classifier (fp32, bf16/fp16 autocast, dynamic int8) and their accuracy."""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from helpers.evaluation.metrics import predicted_class
from helpers.models.build import load_model
from helpers.training.datasets import collate, encode
from helpers.training.loop import predict_logits

CPU_VARIANTS = ("fp32", "bf16", "int8")
CUDA_VARIANTS = ("fp32", "bf16", "fp16")  # dynamic int8 quantization runs on CPU only
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def variants_for(device: torch.device) -> tuple[str, ...]:
    """The variants that make sense on `device`."""
    return CUDA_VARIANTS if device.type == "cuda" else CPU_VARIANTS


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of `model` with every nn.Linear dynamically quantized to int8 (CPU); `model` is left untouched."""
    # torch 2.13 still ships torch.ao.quantization.quantize_dynamic and it works, but warns that it moves to
    # torchao (not installed here); the warnings say nothing about this model, so they are silenced.
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=False).eval()


@dataclass
class Deployed:
    """A model as deployed: its weights plus the autocast dtype its forward pass runs under."""

    model: nn.Module
    variant: str
    device: torch.device
    autocast_dtype: torch.dtype | None = None

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits (float32) of one batch, in inference mode."""
        autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits.float()


def deploy(model: nn.Module, variant: str, device: torch.device) -> Deployed:
    """`model` (fp32, eval) prepared as `variant` on `device`."""
    if variant not in variants_for(device):
        raise ValueError(f"variant {variant!r} is not available on {device.type}: {', '.join(variants_for(device))}")
    model = model.eval()
    if variant == "int8":
        return Deployed(quantize_int8(model), variant, torch.device("cpu"))
    return Deployed(model.to(device), variant, device, AUTOCAST_DTYPES.get(variant))


def predict_proba(deployed: Deployed, encodings: dict[str, torch.Tensor], batch_size: int = 32) -> np.ndarray:
    """Every class's probability [n, K] for every example of the padded `encodings` (training.collate), in order."""
    logits = predict_logits(deployed, encodings, batch_size, device=deployed.device)
    return torch.softmax(torch.from_numpy(logits), dim=-1).numpy()


def variant_accuracy(checkpoints: Sequence[tuple[str, str | Path]], data: pd.DataFrame, max_len: int,
                     device: torch.device, batch_size: int = 32) -> pd.DataFrame:
    """Per checkpoint and variant: accuracy on `data` (text, label), its change vs fp32, agreement with fp32."""
    encodings = collate(encode(data["text"].astype(str).tolist(), max_len))  # padded to the longest, in order
    labels = data["label"].to_numpy().astype(int)
    rows = []
    for label, folder in checkpoints:
        model = load_model(folder)
        # fp32 first: deploy() may move the model, never change it
        probs = {v: predict_proba(deploy(model, v, device), encodings, batch_size) for v in variants_for(device)}
        preds = {v: predicted_class(p) for v, p in probs.items()}
        base_acc = float((preds["fp32"] == labels).mean())
        for variant, pred in preds.items():
            acc = float((pred == labels).mean())
            rows.append({"label": label, "variant": variant, "accuracy": acc, "accuracy_change": acc - base_acc,
                         "agreement_with_fp32": float((pred == preds["fp32"]).mean())})
    return pd.DataFrame(rows)
