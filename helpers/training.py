"""Fine-tuning with the transformers Trainer: cross-entropy, and a DistillationTrainer for the KD loss."""
from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from transformers import PreTrainedModel, PrinterCallback, Trainer, TrainerCallback, TrainingArguments, set_seed

from .evaluation import classification_metrics
from .tokenization import get_tokenizer


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      alpha: float, temperature: float,
                      class_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) (batch mean) + (1 - alpha) * CE(student, labels).

    The T^2 factor keeps the soft-target gradients on the same scale as the hard-label ones when T changes
    (the gradient of the KL term shrinks as 1/T^2), so alpha means the same thing at every temperature.
    """
    ce = F.cross_entropy(student_logits, labels, weight=class_weights)
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    loss = alpha * temperature**2 * kl + (1 - alpha) * ce
    return loss, {"ce": float(ce.detach()), "kl": float(kl.detach())}


def encode(texts: list[str], max_len: int) -> list[dict[str, list[int]]]:
    """Tokenise once (truncation at max_len, no padding); batches are padded by `collate`."""
    enc = get_tokenizer()(list(texts), truncation=True, max_length=max_len, padding=False)
    return [{"input_ids": ids, "attention_mask": m} for ids, m in zip(enc["input_ids"], enc["attention_mask"])]


class CaseDataset(Dataset):
    """Pre-tokenised cases with labels and, optionally, cached teacher logits."""

    def __init__(self, encodings: list[dict[str, list[int]]], labels: np.ndarray,
                 teacher_logits: np.ndarray | None = None):
        if teacher_logits is not None and len(teacher_logits) != len(encodings):
            raise ValueError(f"{len(teacher_logits)} teacher logits for {len(encodings)} cases: stale logits cache?")
        self.encodings, self.labels, self.teacher_logits = encodings, np.asarray(labels), teacher_logits

    def __len__(self) -> int:
        return len(self.encodings)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = dict(self.encodings[i], labels=int(self.labels[i]))
        if self.teacher_logits is not None:
            item["teacher_logits"] = self.teacher_logits[i]
        return item


def collate(batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
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


class CrossEntropyTrainer(Trainer):
    """Trainer with (optionally class-weighted) cross-entropy on the labels: the independent mode."""

    def __init__(self, *args, class_weights: torch.Tensor | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.class_weights = class_weights
        self.loss_parts: list[dict[str, float]] = []

    def _weights(self, logits: torch.Tensor) -> torch.Tensor | None:
        return None if self.class_weights is None else self.class_weights.to(logits.device)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        inputs.pop("teacher_logits", None)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = F.cross_entropy(outputs.logits, labels, weight=self._weights(outputs.logits))
        if model.training:
            self.loss_parts.append({"ce": float(loss.detach()), "kl": float("nan")})
        return (loss, outputs) if return_outputs else loss


class DistillationTrainer(CrossEntropyTrainer):
    """Trainer with the KD loss; teacher logits come from the batch (cached) or a teacher forward (online)."""

    def __init__(self, *args, alpha: float, temperature: float, teacher_model: PreTrainedModel | None = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.alpha, self.temperature, self.teacher_model = alpha, temperature, teacher_model
        if teacher_model is not None:
            self.teacher_model.to(self.args.device).eval()

    def teacher_logits_for(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Cached logits from the batch, or the teacher's forward pass when running online."""
        if self.teacher_model is not None:
            with torch.no_grad():
                return self.teacher_model(input_ids=inputs["input_ids"],
                                          attention_mask=inputs["attention_mask"]).logits
        if "teacher_logits" not in inputs:
            raise ValueError("distilled mode without teacher logits in the batch and without an online teacher")
        return inputs["teacher_logits"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        teacher_logits = self.teacher_logits_for(inputs)
        inputs.pop("teacher_logits", None)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss, parts = distillation_loss(outputs.logits, teacher_logits.to(outputs.logits.device), labels,
                                        self.alpha, self.temperature, self._weights(outputs.logits))
        if model.training:
            self.loss_parts.append(parts)
        return (loss, outputs) if return_outputs else loss


class KeepBestCallback(TrainerCallback):
    """Keep the weights of the epoch with the best validation metric in memory; restore them at the end."""

    def __init__(self, metric: str):
        self.metric, self.best, self.best_state, self.best_epoch = f"eval_{metric}", -np.inf, None, None

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        value = (metrics or {}).get(self.metric, np.nan)
        if np.isfinite(value) and value > self.best:
            self.best, self.best_epoch = value, state.epoch
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.best_state is not None:
            model.load_state_dict(self.best_state)


@dataclass
class TrainConfig:
    """Everything the two modes share: identical data, seed, epochs, learning rate, batch size and order."""

    epochs: int
    lr: float
    batch_size: int
    seed: int
    selection_metric: str = "macro_f1"
    class_weighted: bool = False
    device: str = "cpu"
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    progress: bool = True


def class_weights_for(labels: np.ndarray) -> torch.Tensor:
    """Inverse-frequency class weights n / (2 * n_c)."""
    counts = np.bincount(np.asarray(labels), minlength=2).astype(float)
    return torch.tensor(len(labels) / (2 * np.maximum(counts, 1)), dtype=torch.float32)


def _compute_metrics(eval_pred) -> dict[str, float]:
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    logits = logits[0] if isinstance(logits, tuple) else logits
    m = classification_metrics(np.asarray(logits), np.asarray(labels))
    return {k: m[k] for k in ("accuracy", "macro_f1", "roc_auc")}


def train(model: PreTrainedModel, train_set: CaseDataset, val_set: CaseDataset, cfg: TrainConfig,
          mode: str = "independent", alpha: float = 0.5, temperature: float = 4.0,
          teacher_model: PreTrainedModel | None = None) -> tuple[PreTrainedModel, pd.DataFrame]:
    """Train `model` in `mode` (independent | distilled); return it at its best epoch and the per-epoch history."""
    if mode not in ("independent", "distilled"):
        raise ValueError(f"mode {mode!r}: expected independent or distilled")
    set_seed(cfg.seed)
    steps_per_epoch = int(np.ceil(len(train_set) / cfg.batch_size))
    with tempfile.TemporaryDirectory(prefix="dj-trainer-") as tmp:
        args = TrainingArguments(
            output_dir=tmp, num_train_epochs=cfg.epochs, learning_rate=cfg.lr,
            per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=64,
            weight_decay=cfg.weight_decay, warmup_steps=int(cfg.warmup_ratio * steps_per_epoch * cfg.epochs),
            lr_scheduler_type="linear", eval_strategy="epoch", save_strategy="no", logging_strategy="epoch",
            report_to="none", seed=cfg.seed, data_seed=cfg.seed, use_cpu=cfg.device == "cpu",
            dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=not cfg.progress,
            label_names=["labels"],
        )
        keep = KeepBestCallback(cfg.selection_metric)
        common = dict(model=model, args=args, train_dataset=train_set, eval_dataset=val_set, data_collator=collate,
                      compute_metrics=_compute_metrics, callbacks=[keep],
                      class_weights=class_weights_for(train_set.labels) if cfg.class_weighted else None)
        if mode == "distilled":
            trainer = DistillationTrainer(alpha=alpha, temperature=temperature, teacher_model=teacher_model, **common)
        else:
            trainer = CrossEntropyTrainer(**common)
        if not cfg.progress:  # the caller prints one line per run instead of the Trainer's log dicts
            trainer.remove_callback(PrinterCallback)
        trainer.train()
        history = _history(trainer, steps_per_epoch, keep.best_epoch)
    model.eval()
    return model, history


def _history(trainer: CrossEntropyTrainer, steps_per_epoch: int, best_epoch: float | None) -> pd.DataFrame:
    rows: dict[int, dict[str, float]] = {}
    for rec in trainer.state.log_history:
        if "epoch" not in rec:
            continue
        row = rows.setdefault(int(round(rec["epoch"])), {"epoch": int(round(rec["epoch"]))})
        if "loss" in rec:
            row["train_loss"] = rec["loss"]
        for k in ("eval_loss", "eval_accuracy", "eval_macro_f1", "eval_roc_auc"):
            if k in rec:
                row[k.replace("eval_", "val_")] = rec[k]
    parts = pd.DataFrame(trainer.loss_parts)
    for epoch, row in rows.items():
        chunk = parts.iloc[(epoch - 1) * steps_per_epoch: epoch * steps_per_epoch]
        row["train_ce"] = float(chunk["ce"].mean()) if len(chunk) else np.nan
        row["train_kl"] = float(chunk["kl"].mean()) if len(chunk) else np.nan
    hist = pd.DataFrame([rows[k] for k in sorted(rows)])
    hist["best"] = hist["epoch"] == (int(round(best_epoch)) if best_epoch is not None else -1)
    return hist


@torch.no_grad()
def predict_logits(model: PreTrainedModel, encodings: list[dict[str, list[int]]], batch_size: int = 64,
                   device: str | torch.device = "cpu") -> np.ndarray:
    """Logits [n, 2] for pre-tokenised cases, in order, in eval mode."""
    model.eval().to(device)
    out = []
    for start in range(0, len(encodings), batch_size):
        batch = collate(encodings[start:start + batch_size])
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
        out.append(logits.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 2), dtype=np.float32)


def clone_model(model: PreTrainedModel) -> PreTrainedModel:
    """A deep copy (used to keep a teacher for online distillation independent of later changes)."""
    return copy.deepcopy(model)
