"""Integrated Gradients token attributions for every model, cached in the run folder, and the attribution stage.

Each model explains the same decision, the logit of the class the teacher predicts (and, for its faithfulness on its
own decision, the class it predicts itself where that differs). Attributions are taken with
captum's LayerIntegratedGradients on the input word embeddings against a [CLS] [PAD] ... [PAD] [SEP] baseline
with the input's attention mask, so position and segment embeddings are identical in input and baseline.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from captum.attr import LayerIntegratedGradients
from safetensors.torch import load_file, save_file

from helpers.core.run_folder import file_hash, read_index
from helpers.models.tokenization import get_tokenizer, tokenize

PAD, CLS, SEP, MASK = 0, 101, 102, 103
REPLACEMENT_IDS = {"pad": PAD, "mask": MASK}
# Flag an example when |delta| exceeds ig_delta_threshold * max(|f(x) - f(baseline)|, 1): relative to the logit
# change it explains, but never divided by a change under one logit (tiny changes would make any delta huge).
DELTA_FLOOR = 1.0


@dataclass
class Examples:
    """The explained test examples, tokenised and right-padded to one common length."""

    frame: pd.DataFrame  # id, label, text
    input_ids: torch.Tensor  # [n, L]
    attention_mask: torch.Tensor  # [n, L]
    offsets: np.ndarray  # [n, L, 2] character offsets into text
    units: list[list[list[int]]]  # per example: the token positions of each compared unit (token or word)
    unit_text: list[list[str]]  # per example: each unit's text


@dataclass
class Explanation:
    """One model's attributions of the examples."""

    token_scores: np.ndarray  # [n, L] attribution summed over the hidden dimension, before normalisation
    delta: np.ndarray  # [n] captum convergence delta: sum of attributions - (f(x) - f(baseline))
    logit_change: np.ndarray  # [n] f(x) - f(baseline) for the explained class
    steps: np.ndarray  # [n] the IG steps each example's attribution took (adaptive: explain)
    seconds: float
    cached: bool


@dataclass(frozen=True)
class IGSettings:
    """How every model is explained: steps start at `steps` and double for the examples whose relative convergence
    delta exceeds `threshold`, up to `max_steps`; forward and backward passes under `precision` (the run's)."""

    steps: int
    max_steps: int
    threshold: float
    internal_batch_size: int
    precision: str = "fp32"


def relative_delta(delta: np.ndarray, change: np.ndarray) -> np.ndarray:
    """|convergence delta| relative to the logit change it explains, never divided by a change under DELTA_FLOOR."""
    return np.abs(np.asarray(delta, dtype=float)) / np.maximum(np.abs(np.asarray(change, dtype=float)), DELTA_FLOOR)


def select_examples(test: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """A seeded sample of n test cases stratified by label (largest-remainder allocation), in CSV order."""
    n = min(n, len(test))
    shares = test["label"].value_counts(normalize=True).sort_index() * n
    alloc = np.floor(shares).astype(int)
    alloc[(shares - alloc).sort_values(ascending=False).index[: n - alloc.sum()]] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.choice(test.index[test["label"] == lab], size=k, replace=False) for lab, k in alloc.items()]
    return test.loc[np.sort(np.concatenate(picked))].reset_index(drop=True)


def token_units(input_ids: list[int], tokens: list[str], aggregate_words: bool) -> list[list[int]]:
    """Positions of each compared unit: every non-special token, or whole words ('##' pieces summed in)."""
    units: list[list[int]] = []
    for pos, (tid, tok) in enumerate(zip(input_ids, tokens)):
        if tid in (PAD, CLS, SEP):
            continue
        if aggregate_words and tok.startswith("##") and units and units[-1][-1] == pos - 1:
            units[-1].append(pos)
        else:
            units.append([pos])
    return units


def encode_examples(frame: pd.DataFrame, max_len: int, aggregate_words: bool) -> Examples:
    """Tokenise the examples (truncated at max_len) with character offsets and their compared units."""
    tok = get_tokenizer()
    enc = tokenize(frame["text"], max_len, padding="longest", return_offsets_mapping=True, return_tensors="np")
    units, unit_text = [], []
    for ids in enc["input_ids"]:
        tokens = tok.convert_ids_to_tokens(ids.tolist())
        ex_units = token_units(ids.tolist(), tokens, aggregate_words)
        units.append(ex_units)
        unit_text.append(["".join(tokens[p].removeprefix("##") if i else tokens[p] for i, p in enumerate(u))
                          for u in ex_units])
    return Examples(frame=frame.reset_index(drop=True), input_ids=torch.as_tensor(enc["input_ids"]),
                    attention_mask=torch.as_tensor(enc["attention_mask"]), offsets=enc["offset_mapping"],
                    units=units, unit_text=unit_text)


def baseline_ids(input_ids: torch.Tensor) -> torch.Tensor:
    """The IG baseline: [CLS] and [SEP] kept where they are, every other position [PAD]."""
    keep = (input_ids == CLS) | (input_ids == SEP)
    return torch.where(keep, input_ids, torch.full_like(input_ids, PAD))


def integrated_gradients(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, targets: torch.Tensor,
                         n_steps: int, internal_batch_size: int, batch_examples: int = 8,
                         max_batch_tokens: int = 16384,
                         precision: str = "fp32") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(token attributions [n, L] summed over hidden, convergence delta [n], f(x) - f(baseline) [n]).

    Examples are sorted by length and explained up to `batch_examples` at a time (fewer when a forward pass
    would exceed `max_batch_tokens`), each batch cut to its longest example; `internal_batch_size` is the
    number of IG steps per forward pass per example. `precision` bf16 runs the passes under bf16 autocast (the
    results come back in float32; the convergence delta says what the lower precision costs).
    """
    model.eval()

    def forward(ids, mask):
        return model(input_ids=ids, attention_mask=mask).logits

    lig = LayerIntegratedGradients(forward, model.get_input_embeddings())
    n, length = input_ids.shape
    attr = np.zeros((n, length), dtype=np.float32)
    delta, change = np.zeros(n), np.zeros(n)
    lengths = attention_mask.sum(dim=1)
    tokens_per_example_step = max_batch_tokens // max(1, min(internal_batch_size, n_steps))
    for idx in _length_batches(lengths, batch_examples, tokens_per_example_step):
        cut = int(lengths[idx].max())
        ids, mask, tgt = input_ids[idx, :cut], attention_mask[idx, :cut], targets[idx]
        base = baseline_ids(ids)
        with torch.enable_grad(), torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            a, d = lig.attribute(ids, baselines=base, additional_forward_args=(mask,), target=tgt, n_steps=n_steps,
                                 internal_batch_size=internal_batch_size * len(idx), return_convergence_delta=True)
        with torch.no_grad(), torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            fx = forward(ids, mask).gather(1, tgt[:, None])[:, 0]
            fb = forward(base, mask).gather(1, tgt[:, None])[:, 0]
        attr[idx.numpy(), :cut] = a.sum(dim=-1).detach().float().cpu().numpy()
        delta[idx.numpy()] = d.detach().float().cpu().numpy()
        change[idx.numpy()] = (fx - fb).float().cpu().numpy()
    return attr, delta, change


def _length_batches(lengths: torch.Tensor, max_examples: int, max_tokens: int) -> list[torch.Tensor]:
    """Example indices sorted by length, grouped so a group holds <= max_examples and <= max_tokens padded."""
    batches, current = [], []
    for i in torch.argsort(lengths, stable=True).tolist():
        if current and (len(current) >= max_examples or (len(current) + 1) * int(lengths[i]) > max_tokens):
            batches.append(torch.tensor(current))
            current = []
        current.append(i)
    return batches + ([torch.tensor(current)] if current else [])


def unit_scores(token_scores: np.ndarray, units: list[list[int]]) -> np.ndarray:
    """One example's scores per unit (token scores summed within a unit), L2-normalised."""
    s = np.array([token_scores[u].sum() for u in units], dtype=np.float64)
    norm = np.linalg.norm(s)
    return s / norm if norm > 0 else s


def cache_key(checkpoint: Path, input_ids: torch.Tensor, attention_mask: torch.Tensor, targets: torch.Tensor,
              ig: IGSettings) -> str:
    """What a model's cached attributions depend on: the checkpoint's weights (a hash of model.safetensors), the
    token ids explained (with their attention mask: max_len and the tokenizer are in them), the explained classes
    and the IG settings (steps, their cap and threshold, precision). Case ids play no part: new text under an old id
    is a new key."""
    h = hashlib.sha256()
    h.update(file_hash(checkpoint / "model.safetensors").encode())
    for t in (input_ids, attention_mask, targets):
        a = t.detach().cpu().to(torch.int64).contiguous()
        h.update(json.dumps(list(a.shape)).encode())
        h.update(a.numpy().tobytes())
    h.update(json.dumps({"steps": ig.steps, "max_steps": ig.max_steps, "threshold": ig.threshold,
                         "precision": ig.precision}).encode())
    return h.hexdigest()[:16]


def explain(model, checkpoint: Path, input_ids: torch.Tensor, attention_mask: torch.Tensor, targets: torch.Tensor,
            cache_file: Path, *, ig: IGSettings, device: torch.device) -> Explanation:
    """A model's attributions of the given token ids for `targets`, from `cache_file` when its key matches, else
    computed and cached.

    Steps adapt per example: every example is explained with `ig.steps`; those whose relative convergence delta
    exceeds `ig.threshold` are explained again with twice the steps, and so on up to `ig.max_steps`, so each example
    gets the fewest steps (of that ladder) whose delta is within tolerance. Examples still over it at the cap keep
    their last attribution and are flagged by the stage.
    """
    key = cache_key(checkpoint, input_ids, attention_mask, targets, ig)
    if cache_file.is_file():
        from safetensors import safe_open

        with safe_open(str(cache_file), framework="pt") as fh:
            stored = (fh.metadata() or {}).get("key")
        if stored == key:
            t0 = time.perf_counter()
            t = load_file(str(cache_file))
            return Explanation(t["token_scores"].numpy(), t["delta"].numpy(), t["logit_change"].numpy(),
                               t["steps"].numpy(), time.perf_counter() - t0, cached=True)
    t0 = time.perf_counter()
    ids, mask, tgt = input_ids.to(device), attention_mask.to(device), targets.to(device)
    run = dict(internal_batch_size=ig.internal_batch_size, precision=ig.precision)
    attr, delta, change = integrated_gradients(model, ids, mask, tgt, ig.steps, **run)
    steps, n_steps = np.full(len(ids), ig.steps, dtype=np.int64), ig.steps
    while n_steps * 2 <= ig.max_steps:
        redo = np.flatnonzero(relative_delta(delta, change) > ig.threshold)
        if not len(redo):
            break
        n_steps *= 2
        pick = torch.as_tensor(redo, device=ids.device)
        attr[redo], delta[redo], change[redo] = integrated_gradients(model, ids[pick], mask[pick], tgt[pick],
                                                                     n_steps, **run)
        steps[redo] = n_steps
    seconds = time.perf_counter() - t0
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    save_file({"token_scores": torch.from_numpy(attr), "delta": torch.from_numpy(delta),
               "logit_change": torch.from_numpy(change), "steps": torch.from_numpy(steps)}, str(cache_file),
              metadata={"key": key})
    return Explanation(attr, delta, change, steps, seconds, cached=False)


def model_entries(run_dir: Path, attribution_seeds: list[int]) -> list[dict]:
    """Teacher, reference teachers (the teacher retrained with other seeds) and students (seeds in
    attribution_seeds) from models.json, with a cache tag; entries whose checkpoint is missing are skipped with a
    printed note."""
    index = read_index(run_dir)
    entries = [dict(index["teacher"], tag="teacher", mode="teacher")]
    for r in index.get("teacher_references", []):
        entries.append(dict(r, tag=f"teacher_reference__seed{r['seed']}", mode="reference"))
    for s in index.get("students", []):
        if int(s["seed"]) in set(attribution_seeds):
            entries.append(dict(s, tag=f"{s['name']}__{s['mode']}__seed{s['seed']}"))
    found = []
    for e in entries:
        if (run_dir / e["path"] / "model.safetensors").is_file():
            found.append(e)
        elif e["tag"] == "teacher":
            raise FileNotFoundError(f"teacher checkpoint {run_dir / e['path']} missing: run notebook 02 first")
        else:
            print(f"note: skipping {e['tag']}: no checkpoint at {run_dir / e['path']}")
    return found
