"""Training and scoring: one loop for every arm (cross-entropy, KD, transfer), to a step budget with early stopping.

The loop is plain PyTorch rather than the transformers Trainer: for the small students the Trainer's per-step
bookkeeping cost more than a step of the 2x192 model, and the experiment needs things it does not give directly
(a step budget shared by every arm, evaluation every N steps with patience, the validation logits of the best step,
time spent inside training steps only, and a digest of the batch order to prove two arms saw the same batches).
On CPU its steps draw dropout masks cheaply (helpers.fast_dropout: the same rates; a bf16 teacher step 19% shorter)
and, on CPU and CUDA, step a fused AdamW (one kernel for every parameter).
"""
from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from transformers import PreTrainedModel, get_linear_schedule_with_warmup

from .evaluation import classification_metrics
from .fast_dropout import cpu_dropout
from .tokenization import tokenize

ARMS = ("independent", "distilled", "distilled_transfer", "pseudo_label_transfer", "chain")
TRANSFER_ARMS = ("distilled_transfer", "pseudo_label_transfer")
CHAIN_ARM = "chain"  # the distilled loss, with the previous (larger) student's logits in place of the teacher's
PRECISIONS = ("auto", "fp32", "bf16")


# ---------------------------------------------------------------- precision
def cpu_has_native_bf16() -> bool:
    """True when this CPU executes bf16 matrix work natively (AVX-512 BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        flags = []
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        return True
    try:  # other platforms: ask oneDNN
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and not flags
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """`auto` -> `bf16` where the hardware runs bf16 natively (CUDA with bf16, AVX-512 BF16/AMX CPUs), else `fp32`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if torch.device(device).type == "cuda":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def autocast(precision: str, device: str | torch.device = "cpu"):
    """bf16 autocast for `precision == 'bf16'` (weights stay fp32: mixed precision), else a no-op context."""
    if precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---------------------------------------------------------------- loss
def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      alpha: float, temperature: float, class_weights: torch.Tensor | None = None,
                      labelled: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) (batch mean) + (1 - alpha) * CE(student, labels).

    The T^2 factor keeps the soft-target gradients on the same scale as the hard-label ones when T changes
    (the gradient of the KL term shrinks as 1/T^2), so alpha means the same thing at every temperature.
    `labelled` (bool [n]) marks cases with a label: unlabelled transfer cases contribute the KL term alone
    (their CE term is zero), and both terms are still averaged over the whole batch.
    """
    student_logits, teacher_logits = student_logits.float(), teacher_logits.detach().float()
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    kl_rows = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)
    kl = kl_rows.mean()
    if labelled is None or bool(labelled.all()):
        ce = F.cross_entropy(student_logits, labels, weight=class_weights)
    elif not bool(labelled.any()):
        ce = student_logits.new_zeros(())
    else:
        ce_rows = F.cross_entropy(student_logits, labels.clamp(min=0), weight=class_weights, reduction="none")
        ce = (ce_rows * labelled.float()).sum() / len(labels)
    loss = alpha * temperature**2 * kl + (1 - alpha) * ce
    return loss, {"ce": float(ce.detach()), "kl": float(kl.detach())}


def class_weights_for(labels: np.ndarray, num_labels: int) -> torch.Tensor:
    """Inverse-frequency class weights n / (K * n_c)."""
    labels = np.asarray(labels)
    counts = np.bincount(labels[labels >= 0], minlength=num_labels).astype(float)
    return torch.tensor(counts.sum() / (num_labels * np.maximum(counts, 1)), dtype=torch.float32)


# ---------------------------------------------------------------- data
def encode(texts: list[str], max_len: int) -> list[dict[str, list[int]]]:
    """Tokenise once (truncation at max_len, no padding); batches are padded by `collate`."""
    enc = tokenize(texts, max_len, padding=False)
    return [{"input_ids": ids, "attention_mask": m} for ids, m in zip(enc["input_ids"], enc["attention_mask"])]


def encode_splits(splits: dict[str, pd.DataFrame], max_len: int) -> dict[str, list[dict[str, list[int]]]]:
    """Tokenise every split (a frame with a `text` column) once."""
    return {name: encode(df["text"].tolist(), max_len) for name, df in splits.items()}


class CaseDataset(Dataset):
    """Pre-tokenised cases with labels (-1 = unlabelled) and, optionally, cached teacher logits."""

    def __init__(self, encodings: list[dict[str, list[int]]], labels: np.ndarray,
                 teacher_logits: np.ndarray | None = None):
        if teacher_logits is not None and len(teacher_logits) != len(encodings):
            raise ValueError(f"{len(teacher_logits)} teacher logits for {len(encodings)} cases: stale logits cache?")
        if len(labels) != len(encodings):
            raise ValueError(f"{len(labels)} labels for {len(encodings)} cases")
        self.encodings, self.labels, self.teacher_logits = encodings, np.asarray(labels), teacher_logits

    def __len__(self) -> int:
        return len(self.encodings)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.encodings[i], labels=int(self.labels[i]))
        if self.teacher_logits is not None:
            item["teacher_logits"] = self.teacher_logits[i]
        return item

    def concat(self, other: CaseDataset) -> CaseDataset:
        """This dataset followed by `other` (both with or both without teacher logits)."""
        if (self.teacher_logits is None) != (other.teacher_logits is None):
            raise ValueError("cannot join a dataset with teacher logits to one without")
        logits = None if self.teacher_logits is None else np.concatenate([self.teacher_logits, other.teacher_logits])
        return CaseDataset(self.encodings + other.encodings, np.concatenate([self.labels, other.labels]), logits)


def collate(batch: list[dict]) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest case ([PAD] = 0) and stack labels and teacher logits."""
    width = max(len(b["input_ids"]) for b in batch)
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    for i, b in enumerate(batch):
        n = len(b["input_ids"])
        ids[i, :n] = torch.tensor(b["input_ids"])
        mask[i, :n] = torch.tensor(b["attention_mask"])
    out = {"input_ids": ids, "attention_mask": mask}
    if "labels" in batch[0]:
        out["labels"] = torch.tensor([b["labels"] for b in batch])
    if "teacher_logits" in batch[0]:
        out["teacher_logits"] = torch.tensor(np.stack([b["teacher_logits"] for b in batch]), dtype=torch.float32)
    return out


def batch_order(n: int, batch_size: int, max_steps: int, seed: int) -> list[np.ndarray]:
    """Indices of each training batch: a fresh seeded permutation per pass, until `max_steps` batches."""
    gen = np.random.Generator(np.random.PCG64(seed))
    batches: list[np.ndarray] = []
    while len(batches) < max_steps:
        perm = gen.permutation(n)
        batches.extend(perm[i:i + batch_size] for i in range(0, n, batch_size))
    return batches[:max_steps]


# ---------------------------------------------------------------- scoring
Encodings = list[dict[str, list[int]]] | Mapping[str, torch.Tensor]
Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (input_ids, attention_mask) -> logits


def _batches(encodings: Encodings, batch_size: int) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """(rows, batch) pairs: ragged encodings grouped by length and padded per batch (less padding); padded
    tensors ({"input_ids", "attention_mask"}) sliced in order, as given."""
    if isinstance(encodings, Mapping):
        n = len(encodings["input_ids"])
        for start in range(0, n, batch_size):
            yield (np.arange(start, min(start + batch_size, n)),
                   {k: encodings[k][start:start + batch_size] for k in ("input_ids", "attention_mask")})
        return
    order = np.argsort([len(e["input_ids"]) for e in encodings], kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        yield rows, collate([encodings[i] for i in rows])


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
    batch_size: int
    seed: int
    eval_every: int = 25  # optimizer steps between validation evaluations
    patience: int = 4  # evaluations without improvement before stopping (0: never); never before max_steps // 4
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


def _optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if decay[0].device.type in ("cpu", "cuda"):  # one fused kernel per step (CPU: 2.5x faster than foreach here)
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    return torch.optim.AdamW(groups, lr=lr, foreach=True)


def _arm_loss(mode: str, logits: torch.Tensor, batch: dict[str, torch.Tensor], alpha: float, temperature: float,
              weights: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
    labels = batch["labels"]
    if mode == "independent":
        loss = F.cross_entropy(logits.float(), labels, weight=weights)
        return loss, {"ce": float(loss.detach()), "kl": float("nan")}
    if mode == "pseudo_label_transfer":  # unlabelled cases take the teacher's hard label
        labelled = labels >= 0
        targets = torch.where(labelled, labels, batch["teacher_logits"].argmax(-1))
        loss = F.cross_entropy(logits.float(), targets, weight=weights)
        return loss, {"ce": float(loss.detach()), "kl": float("nan")}
    return distillation_loss(logits, batch["teacher_logits"], labels, alpha, temperature, weights,
                             labelled=labels >= 0)


def _validation_logits(model: PreTrainedModel, val_set: CaseDataset, cfg: TrainConfig, accelerator: Any) -> np.ndarray:
    """Validation logits in case order; under several processes each scores a contiguous share, then all gather."""
    if accelerator is None or accelerator.num_processes == 1:
        return predict_logits(model, val_set.encodings, device=cfg.device, precision=cfg.precision)
    from accelerate.utils import gather_object

    rows = np.array_split(np.arange(len(val_set)), accelerator.num_processes)[accelerator.process_index]
    mine = predict_logits(model, [val_set.encodings[i] for i in rows], device=cfg.device, precision=cfg.precision)
    return np.concatenate([logits for _, logits in sorted(gather_object([(int(accelerator.process_index), mine)]),
                                                          key=lambda part: part[0])])


def train(model: PreTrainedModel, train_set: CaseDataset, val_set: CaseDataset, cfg: TrainConfig,
          mode: str = "independent", *, alpha: float = 0.5, temperature: float = 4.0,
          teacher_model: PreTrainedModel | None = None, accelerator: Any = None) -> TrainResult:
    """Train `model` in `mode` (an arm of ARMS) for at most cfg.max_steps; restore the best evaluation's weights.

    Every arm draws its batches from `train_set` in the same seeded order, so independent and distilled runs of a
    student see identical batches; the transfer arms get a train_set that also holds unlabelled cases (label -1).
    Distilled arms read teacher logits from the batch (cached) or from `teacher_model` (online).

    With an `accelerate.Accelerator` of N processes (data-parallel, under `accelerate launch`; see helpers.launcher)
    every process walks the same global batches and takes its contiguous 1/N shard of each; its loss is weighted
    by the shard's share of the batch, so the averaged gradient is that of the global batch mean (exactly so for
    unweighted losses; with class_weighted each shard normalises by its own weights). Validation is split across
    the processes and gathered, so all of them take the same decisions; the caller saves on the main process only.
    With one process (or none) nothing changes.
    """
    if mode not in ARMS:
        raise ValueError(f"mode {mode!r}: expected one of {', '.join(ARMS)}")
    if mode != "independent" and train_set.teacher_logits is None and teacher_model is None:
        raise ValueError(f"mode {mode!r} needs teacher logits in the dataset or an online teacher")
    if mode == "independent" and (train_set.labels < 0).any():
        raise ValueError("the independent arm trains on labelled cases only")
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    model.to(device).train()
    if teacher_model is not None:
        teacher_model.to(device).eval()
    num_labels = model.config.num_labels
    weights = class_weights_for(train_set.labels, num_labels).to(device) if cfg.class_weighted else None
    optimizer = _optimizer(model, cfg.lr, cfg.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * cfg.max_steps), cfg.max_steps)
    net, rank, world = model, 0, 1  # net: what the training forward runs (the model, or its data-parallel wrapper)
    if accelerator is not None:
        net, rank, world = accelerator.prepare_model(model), accelerator.process_index, accelerator.num_processes
    batches = batch_order(len(train_set), cfg.batch_size, cfg.max_steps, cfg.seed)
    digest = hashlib.sha256(np.concatenate(batches).astype(np.int64).tobytes()).hexdigest()[:16]
    steps_per_pass = int(np.ceil(len(train_set) / cfg.batch_size))

    best = {"value": -np.inf, "state": None, "step": 0, "logits": None}
    rows, parts, waited = [], [], 0
    train_seconds = eval_seconds = 0.0
    examples, step, stopped = 0, 0, False
    with cpu_dropout(model):  # the same dropout, with masks that are cheap to draw on CPU (helpers.fast_dropout)
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
            with autocast(cfg.precision, device):
                logits = net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss, part = _arm_loss(mode, logits, batch, alpha, temperature, weights)
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
                         "train_ce": chunk["ce"].mean(), "train_kl": chunk["kl"].mean(), "val_loss": val_loss,
                         **{f"val_{k}": m[k] for k in ("accuracy", "macro_f1", "roc_auc")}})
            parts = []
            value = m[cfg.selection_metric]
            if np.isfinite(value) and value > best["value"] + 1e-12:
                best = {"value": value, "step": step, "logits": val_logits,
                        "state": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}}
                waited = 0
            else:
                waited += 1
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
                       stopped_early=stopped, val_logits=best["logits"], batch_digest=digest)
