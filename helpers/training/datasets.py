"""Tokenised cases as datasets, padded batches, and the seeded batch order every arm shares."""
from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from helpers.models.tokenization import READINGS, head_tail_ids, tokenize


# ---------------------------------------------------------------- data
def encode(texts: list[str], max_len: int, reading: str = "head") -> list[dict[str, list[int]]]:
    """Tokenise once (no padding; batches are padded by `collate`): `head` truncates at max_len, `head_tail` keeps
    a long text's first and last tokens (models.tokenization.head_tail_ids)."""
    if reading == "head_tail":
        return [{"input_ids": ids, "attention_mask": [1] * len(ids)} for ids in head_tail_ids(texts, max_len)]
    if reading != "head":
        raise ValueError(f"reading {reading!r}: expected one of {', '.join(READINGS)}")
    enc = tokenize(texts, max_len, padding=False)
    return [{"input_ids": ids, "attention_mask": m} for ids, m in zip(enc["input_ids"], enc["attention_mask"])]


def encode_splits(splits: dict[str, pd.DataFrame], max_len: int) -> dict[str, list[dict[str, list[int]]]]:
    """Tokenise every split (a frame with a `text` column) once."""
    return {name: encode(df["text"].tolist(), max_len) for name, df in splits.items()}


class CaseDataset(Dataset):
    """Pre-tokenised cases with labels (-1 = unlabelled) and, optionally, cached teacher logits and the teacher's
    token attribution maps ([n, max_len], the distilled_attribution arm's targets)."""

    def __init__(self, encodings: list[dict[str, list[int]]], labels: np.ndarray,
                 teacher_logits: np.ndarray | None = None, teacher_maps: np.ndarray | None = None):
        if teacher_logits is not None and len(teacher_logits) != len(encodings):
            raise ValueError(f"{len(teacher_logits)} teacher logits for {len(encodings)} cases: stale logits cache?")
        if teacher_maps is not None and len(teacher_maps) != len(encodings):
            raise ValueError(f"{len(teacher_maps)} teacher maps for {len(encodings)} cases: stale attribution cache?")
        if len(labels) != len(encodings):
            raise ValueError(f"{len(labels)} labels for {len(encodings)} cases")
        self.encodings, self.labels, self.teacher_logits = encodings, np.asarray(labels), teacher_logits
        self.teacher_maps = teacher_maps

    def __len__(self) -> int:
        return len(self.encodings)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.encodings[i], labels=int(self.labels[i]))
        if self.teacher_logits is not None:
            item["teacher_logits"] = self.teacher_logits[i]
        if self.teacher_maps is not None:
            item["teacher_map"] = self.teacher_maps[i]
        return item

    def concat(self, other: CaseDataset) -> CaseDataset:
        """This dataset followed by `other` (both with or both without teacher logits; maps are not joined)."""
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
    if "teacher_map" in batch[0]:
        out["teacher_map"] = torch.tensor(np.stack([b["teacher_map"][:width] for b in batch]), dtype=torch.float32)
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
