"""Training and scoring: one loop for every arm (cross-entropy, KD, transfer), to a step budget with early
stopping on validation."""
from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, get_linear_schedule_with_warmup

from helpers.core.constants import ARMS
from helpers.evaluation.metrics import classification_metrics
from helpers.training.datasets import CaseDataset, Encodings, _batches, batch_order, collate
from helpers.training.fast_dropout import cpu_dropout
from helpers.training.internals import BEYOND_ARMS, ONLINE_ARMS, forward_with_term, plan_term
from helpers.training.losses import _arm_loss, class_weights_for
from helpers.training.precision import autocast

Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (input_ids, attention_mask) -> logits


@torch.no_grad()
def predict_logits(model: PreTrainedModel | Forward, encodings: Encodings, batch_size: int = 64,
                   device: str | torch.device = "cpu", precision: str = "fp32") -> np.ndarray:
    """Logits [n, K] (float32) in input order: the one batched-prediction loop of the suite.

    Args:
        model: a classifier (put in eval mode on `device`), or any callable (input_ids, attention_mask) -> logits
            such as a deployment.Deployed variant, which brings its own device placement and autocast.
        encodings: pre-tokenised cases (training.encode), or padded tensors {"input_ids", "attention_mask"}.
        precision: bf16 runs the forward passes under bf16 autocast (fp32: none).
    """
    if isinstance(model, torch.nn.Module):
        model.eval().to(device)
        module = model

        def forward(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return module(input_ids=ids, attention_mask=mask).logits
    else:
        forward = model
    n = len(encodings["input_ids"]) if isinstance(encodings, Mapping) else len(encodings)
    out: np.ndarray | None = None
    with autocast(precision, device):
        for rows, batch in _batches(encodings, batch_size):
            logits = forward(batch["input_ids"].to(device), batch["attention_mask"].to(device))
            if out is None:
                out = np.zeros((n, logits.shape[-1]), dtype=np.float32)
            out[rows] = logits.float().cpu().numpy()
    if out is None:  # no cases
        config = getattr(model, "config", None)
        out = np.zeros((0, config.num_labels if config is not None else 2), dtype=np.float32)
    return out


# ---------------------------------------------------------------- the loop
@dataclass
class TrainConfig:
    """What every arm of a student shares: data order, seed, step budget, learning rate, batch size, precision."""

    max_steps: int
    lr: float
    batch_size: int  # labelled cases per batch (every arm)
    seed: int
    transfer_batch: int = 0  # unlabelled transfer cases added on top of each labelled batch (the transfer arms)
    eval_every: int = 25  # optimizer steps between validation evaluations
    patience: int = 4  # evaluations without improvement before stopping (0: never); never before max_steps // 4, and
    # not counted until the run has predicted more than one class on validation (a run that has not started learning
    # yet is not stopped for failing to improve; max_steps still bounds it)
    selection_metric: str = "macro_f1"
    class_weighted: bool = False
    device: str = "cpu"
    precision: str = "fp32"  # fp32 | bf16 (resolve `auto` first with resolve_precision)
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    progress: Callable[[int, int], None] | None = field(default=None, repr=False)


@dataclass
class TrainResult:
    """A trained model restored to its best evaluation, with its history and cost."""

    model: PreTrainedModel
    history: pd.DataFrame  # one row per evaluation: step, epoch, train_loss, train_ce, train_kl, val_*, best
    best_step: int
    steps: int  # optimizer steps taken (fewer than max_steps when stopped early)
    train_examples: int  # examples processed by training steps
    train_seconds: float  # time inside training steps (forward, backward, optimizer), evaluations excluded
    eval_seconds: float
    stopped_early: bool
    val_logits: np.ndarray  # validation logits at the best step (scored once, during training)
    batch_digest: str  # sha256 of the batch order: equal for arms that saw the same batches
    term: str = ""  # a beyond-logit arm's extra term as this student x teacher pair took it (and what it left out)


def _optimizer(model: torch.nn.Module, lr: float, weight_decay: float,
               extra: list[torch.nn.Parameter] | None = None) -> torch.optim.Optimizer:
    """AdamW over the model's parameters (and `extra` ones: a beyond-logit arm's training-only projection); biases
    and LayerNorm weights without weight decay."""
    decay, no_decay = [], []
    named = [*model.named_parameters(), *((f"extra.{i}", p) for i, p in enumerate(extra or []))]
    for name, p in named:
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if decay[0].device.type in ("cpu", "cuda"):  # one fused kernel per step (CPU: 2.5x faster than foreach here)
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    return torch.optim.AdamW(groups, lr=lr, foreach=True)


def _validation_logits(model: PreTrainedModel, val_set: CaseDataset, cfg: TrainConfig, accelerator: Any) -> np.ndarray:
    """Validation logits in case order; under several processes each scores a contiguous share, then all gather."""
    if accelerator is None or accelerator.num_processes == 1:
        return predict_logits(model, val_set.encodings, device=cfg.device, precision=cfg.precision)
    from accelerate.utils import gather_object

    rows = np.array_split(np.arange(len(val_set)), accelerator.num_processes)[accelerator.process_index]
    mine = predict_logits(model, [val_set.encodings[i] for i in rows], device=cfg.device, precision=cfg.precision)
    return np.concatenate([logits for _, logits in sorted(gather_object([(int(accelerator.process_index), mine)]),
                                                          key=lambda part: part[0])])


TRANSFER_STREAM = 1_000_003  # seed offset of the transfer cases' own order (apart from every labelled order)


def transfer_batches(labels: np.ndarray, cfg: TrainConfig) -> list[np.ndarray]:
    """Each step's case indices: the labelled cases in the seeded order every arm shares, then (transfer arms)
    `cfg.transfer_batch` unlabelled cases on top, from their own seeded order.

    So every arm sees each labelled case equally often and in the same batches; a transfer arm only adds.
    """
    labelled, unlabelled = np.flatnonzero(labels >= 0), np.flatnonzero(labels < 0)
    batches = [labelled[b] for b in batch_order(len(labelled), cfg.batch_size, cfg.max_steps, cfg.seed)]
    if len(unlabelled) == 0:
        return batches
    if cfg.transfer_batch <= 0:
        raise ValueError("parameter transfer_batch: the training set holds transfer cases, so it must be > 0")
    extra = batch_order(len(unlabelled), cfg.transfer_batch, cfg.max_steps, cfg.seed + TRANSFER_STREAM)
    return [np.concatenate([b, unlabelled[e]]) for b, e in zip(batches, extra)]


def train(model: PreTrainedModel, train_set: CaseDataset, val_set: CaseDataset, cfg: TrainConfig,
          mode: str = "independent", *, alpha: float = 0.5, temperature: float = 4.0,
          teacher_model: PreTrainedModel | None = None, accelerator: Any = None,
          inner_teacher: PreTrainedModel | None = None, extra_weight: float = 1.0) -> TrainResult:
    """Train `model` in `mode` (an arm of ARMS) for at most cfg.max_steps; restore the best evaluation's weights.

    Every arm draws its labelled batches from `train_set` in the same seeded order, so all arms of a student see
    identical labelled batches; the transfer arms get a train_set that also holds unlabelled cases (label -1), and
    `cfg.transfer_batch` of them ride on top of each batch (transfer_batches).
    Distilled arms read teacher logits from the batch (cached) or from `teacher_model` (online).

    With an `accelerate.Accelerator` of N processes (data-parallel, under `accelerate launch`; see
    helpers.parallel.launcher)
    every process walks the same global batches and takes its contiguous 1/N shard of each; its loss is weighted
    by the shard's share of the batch, so the averaged gradient is that of the global batch mean (exactly so for
    unweighted losses; with class_weighted each shard normalises by its own weights). Validation is split across
    the processes and gathered, so all of them take the same decisions; the caller saves on the main process only.
    With one process (or none) nothing changes.

    The beyond-logit arms (training.internals.BEYOND_ARMS) add `extra_weight` times their term to the distilled
    loss: distilled_hidden and distilled_attention read the teacher's inside from `inner_teacher` (its forward
    runs per batch, in eval mode), distilled_attribution the teacher's cached token maps in `train_set`.
    """
    if mode not in ARMS:
        raise ValueError(f"mode {mode!r}: expected one of {', '.join(ARMS)}")
    if mode != "independent" and train_set.teacher_logits is None and teacher_model is None:
        raise ValueError(f"mode {mode!r} needs teacher logits in the dataset or an online teacher")
    if mode in ("independent", *BEYOND_ARMS) and (train_set.labels < 0).any():
        raise ValueError(f"the {mode} arm trains on labelled cases only")
    if mode in ONLINE_ARMS and inner_teacher is None:
        raise ValueError(f"mode {mode!r} needs the teacher model (inner_teacher): its inside is read per batch")
    if mode == "distilled_attribution" and train_set.teacher_maps is None:
        raise ValueError("mode 'distilled_attribution' needs the teacher's token maps in the training set "
                         "(training.teacher_attributions)")
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    model.to(device).train()
    if teacher_model is not None:
        teacher_model.to(device).eval()
    term = None
    if mode in BEYOND_ARMS:
        term = plan_term(mode, model, inner_teacher if inner_teacher is not None else model, cfg.seed)
        if term.projection is not None:
            term.projection.to(device).train()
        if inner_teacher is not None:
            inner_teacher.to(device).eval()
    num_labels = model.config.num_labels
    weights = class_weights_for(train_set.labels, num_labels).to(device) if cfg.class_weighted else None
    optimizer = _optimizer(model, cfg.lr, cfg.weight_decay, term.parameters() if term is not None else None)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * cfg.max_steps), cfg.max_steps)
    net, rank, world = model, 0, 1  # net: what the training forward runs (the model, or its data-parallel wrapper)
    if accelerator is not None:
        net, rank, world = accelerator.prepare_model(model), accelerator.process_index, accelerator.num_processes
    batches = transfer_batches(train_set.labels, cfg)
    digest = hashlib.sha256(np.concatenate(batches).astype(np.int64).tobytes()).hexdigest()[:16]
    steps_per_pass = int(np.ceil(int((train_set.labels >= 0).sum()) / cfg.batch_size))

    best = {"value": -np.inf, "state": None, "step": 0, "logits": None}
    rows, parts, waited, learned = [], [], 0, False
    train_seconds = eval_seconds = 0.0
    examples, step, stopped = 0, 0, False
    with cpu_dropout(model):  # the same dropout, masks cheap to draw on CPU (helpers.training.fast_dropout)
        for step, rows_idx in enumerate(batches, start=1):
            t0 = time.perf_counter()
            mine = np.array_split(rows_idx, world)[rank] if world > 1 else rows_idx
            share = len(mine) / len(rows_idx)  # an empty shard still runs one case (weight 0): every process syncs
            batch = collate([train_set[int(i)] for i in (mine if len(mine) else rows_idx[:1])])
            batch = {k: v.to(device) for k, v in batch.items()}
            if teacher_model is not None and mode != "independent":
                with torch.no_grad(), autocast(cfg.precision, device):
                    batch["teacher_logits"] = teacher_model(input_ids=batch["input_ids"],
                                                            attention_mask=batch["attention_mask"]).logits.float()
            if term is None:
                with autocast(cfg.precision, device):
                    logits = net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                loss, part = _arm_loss(mode, logits, batch, alpha, temperature, weights)
            else:  # the distilled loss, plus the arm's weighted term
                with autocast(cfg.precision, device):
                    logits, extra = forward_with_term(net, model, term, inner_teacher, batch)
                loss, part = _arm_loss("distilled", logits, batch, alpha, temperature, weights)
                loss = loss + extra_weight * extra
                part["extra"] = float(extra.detach())
            if world > 1:  # the processes' gradients are averaged: weight = share * world gives the global batch mean
                (loss * (share * world)).backward()
                logged = torch.tensor([part["ce"], part["kl"], float(loss.detach())], dtype=torch.float64) * share
                part["ce"], part["kl"], loss_value = accelerator.reduce(logged.to(device), "sum").tolist()
            else:
                loss.backward()
                loss_value = float(loss.detach())
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            train_seconds += time.perf_counter() - t0
            examples += len(rows_idx)
            parts.append({**part, "loss": loss_value})
            if cfg.progress is not None:
                cfg.progress(step, cfg.max_steps)
            if step % cfg.eval_every and step != cfg.max_steps:
                continue
            t1 = time.perf_counter()
            val_logits = _validation_logits(model, val_set, cfg, accelerator)
            model.train()
            m = classification_metrics(val_logits, val_set.labels)
            val_loss = float(F.cross_entropy(torch.from_numpy(val_logits),
                                             torch.tensor(val_set.labels, dtype=torch.long)))
            chunk = pd.DataFrame(parts)
            rows.append({"step": step, "epoch": round(step / steps_per_pass, 3), "train_loss": chunk["loss"].mean(),
                         "train_ce": chunk["ce"].mean(), "train_kl": chunk["kl"].mean(),
                         **({"train_extra": chunk["extra"].mean()} if term is not None else {}), "val_loss": val_loss,
                         **{f"val_{k}": m[k] for k in ("accuracy", "macro_f1", "roc_auc")}})
            parts = []
            value = m[cfg.selection_metric]
            if np.isfinite(value) and value > best["value"] + 1e-12:
                best = {"value": value, "step": step, "logits": val_logits,
                        "state": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}}
                waited = 0
            else:
                waited += 1
            learned = learned or len(np.unique(val_logits.argmax(axis=1))) > 1
            if not learned:  # one class for every case so far: patience starts once the run has begun to learn
                waited = 0
            eval_seconds += time.perf_counter() - t1
            if cfg.patience and waited >= cfg.patience and step >= cfg.max_steps // 4:
                stopped = step < cfg.max_steps
                break
    if best["state"] is None:  # every evaluation gave NaN: keep the last weights
        best = {"step": step, "logits": _validation_logits(model, val_set, cfg, accelerator), "state": None}
    else:
        model.load_state_dict(best["state"])
    model.eval()
    history = pd.DataFrame(rows)
    history["best"] = history["step"] == best["step"] if len(history) else []
    return TrainResult(model=model, history=history, best_step=int(best["step"]), steps=step,
                       train_examples=examples, train_seconds=train_seconds, eval_seconds=eval_seconds,
                       stopped_early=stopped, val_logits=best["logits"], batch_digest=digest,
                       term="" if term is None else "; ".join([term.describe(), *term.notes]))
