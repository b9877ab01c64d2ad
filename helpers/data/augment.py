"""A transfer pool made from the training cases alone: what a user without unlabelled cases of the same kind has.

Two kinds of new views, both built only from the training split, which the teacher then labels:

* **windows**: the facts beyond what the models read. A model reads the first `max_len` tokens of a case; the rest
  of a long case is text the teacher never trained on. Each window is the case's parties line followed by
  consecutive sentences from past that point, about as long as what a model reads.
* **recombinations**: the opening of one training case followed by a block of sentences from another (TinyBERT's
  task distillation augmented its transfer set from the training data too, by replacing words).

A pool case that is a near-duplicate of a validation or test case (more than NEAR_DUPLICATE_SHARE of its word
8-grams found in one such case) or of any labelled case (the same normalised text) is dropped and counted.
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict

import numpy as np
import pandas as pd

from helpers.data.schema import _group_keys

NGRAM = 8
NEAR_DUPLICATE_SHARE = 0.5  # a pool case sharing more of its word 8-grams than this with one held-out case is dropped
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


def _head_and_body(text: str, first_party: str, second_party: str) -> tuple[str, str]:
    """The parties line the text template starts with (when it does) and the rest."""
    head = f"{first_party} v. {second_party}."
    if first_party and text.startswith(head + " "):
        return head, text[len(head) + 1:]
    return "", text


def _sentences(body: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(body) if s.strip()]


def _join(head: str, sentences: list[str]) -> str:
    return " ".join([head, *sentences]).strip() if head else " ".join(sentences).strip()


def windows(train: pd.DataFrame, read: list[str]) -> list[tuple[str, str]]:
    """(id, text) of every window past the part a model reads (`read`: text_read of each training text), for every
    training case long enough to have one."""
    out = []
    for cid, text, fp, sp, seen in zip(train["id"], train["text"], train["first_party"], train["second_party"], read):
        head, body = _head_and_body(text, str(fp), str(sp))
        sents = _sentences(body)
        width = max(1, len(seen) - len(head))  # characters of the body a model reads
        starts = np.cumsum([0] + [len(s) + 1 for s in sents])
        j, k = int(np.searchsorted(starts, width)), 0  # the first sentence that starts past the read part
        while j < len(sents):
            take, size = [], 0
            while j < len(sents) and (not take or size + len(sents[j]) <= width):
                take.append(sents[j])
                size += len(sents[j]) + 1
                j += 1
            out.append((f"A{cid}-w{k}", _join(head, take)))
            k += 1
    return out


def recombinations(train: pd.DataFrame, read: list[str], n: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    """(id, text) of n recombined cases: one case's parties line and opening half of what a model reads (`read`),
    then a contiguous block of sentences from another training case."""
    parts = []
    for text, fp, sp, seen in zip(train["text"], train["first_party"], train["second_party"], read):
        head, body = _head_and_body(text, str(fp), str(sp))
        parts.append((head, _sentences(body), max(1, len(seen) - len(head))))
    ids = train["id"].tolist()
    out = []
    for a, b in zip(rng.integers(0, len(parts), n), rng.integers(0, len(parts), n)):
        if a == b:
            b = (b + 1) % len(parts)
        head, sents_a, width = parts[a]
        _, sents_b, _ = parts[b]
        opening, size = [], 0
        for s in sents_a:
            if opening and size + len(s) > width // 2:
                break
            opening.append(s)
            size += len(s) + 1
        start = int(rng.integers(0, max(1, len(sents_b) - 1)))
        block, size_b = [], 0
        for s in sents_b[start:]:
            if block and size + size_b + len(s) > width:
                break
            block.append(s)
            size_b += len(s) + 1
        out.append((f"A{ids[a]}+{ids[b]}", _join(head, opening + block)))
    return out


def _grams(text: str) -> set[int]:
    words = re.sub(r"[\W_]+", " ", text.lower()).split()
    return {hash(" ".join(words[i:i + NGRAM])) for i in range(max(0, len(words) - NGRAM + 1))}


def near_duplicates(texts: list[str], held_out: list[str], share: float = NEAR_DUPLICATE_SHARE) -> np.ndarray:
    """Boolean mask: texts that share more than `share` of their word 8-grams with a single held-out text."""
    index: dict[int, list[int]] = defaultdict(list)
    for j, t in enumerate(held_out):
        for g in _grams(t):
            index[g].append(j)
    out = np.zeros(len(texts), dtype=bool)
    for i, t in enumerate(texts):
        grams = _grams(t)
        if not grams:
            continue
        hits = Counter(j for g in grams for j in index.get(g, ()))
        out[i] = bool(hits) and max(hits.values()) / len(grams) > share
    return out


def augmented_pool(splits: dict[str, pd.DataFrame], n: int, read: list[str], seed: int) -> tuple[pd.DataFrame, dict]:
    """Up to n transfer cases from the training split alone: windows past the read part (in a seeded order, at most
    half the pool), then recombinations for the rest; near-duplicates of held-out or labelled cases are dropped.
    `read` is what a model reads of each training case (models.tokenization.text_read, computed once by the caller).
    Returns the pool (id, text, issue_area blank) and its counts."""
    rng = np.random.default_rng(seed)
    train = splits["train"]
    wins = windows(train, read)
    wins = [wins[i] for i in rng.permutation(len(wins))][: n // 2]
    recs = recombinations(train, read, max(0, n - len(wins)), rng)
    pool = pd.DataFrame(wins + recs, columns=["id", "text"])
    labelled = set().union(*(set(_group_keys(splits[s]["text"])) for s in splits))
    groups = _group_keys(pool["text"])
    overlap = groups.isin(labelled)
    dup = groups.duplicated(keep="first") & ~overlap
    held_out = [t for s in ("val", "test") for t in splits[s]["text"]]
    near = near_duplicates(pool["text"].tolist(), held_out) & ~overlap & ~dup
    keep = ~overlap & ~dup & ~near
    counts = {"transfer_augment_windows": int(keep[: len(wins)].sum()),
              "transfer_augment_recombinations": int(keep[len(wins):].sum()),
              "n_transfer_dropped_overlap": int(overlap.sum()), "n_transfer_duplicates_removed": int(dup.sum()),
              "n_transfer_dropped_near_duplicate": int(near.sum())}
    pool = pool[keep].reset_index(drop=True).assign(issue_area="")
    return pool, counts
