"""Figures and tables for notebook 03's beyond-logit arms: one case's attention map (teacher, a student before and
after training in each arm) and how closely each student layer's hidden states match its teacher layer (linear
CKA, which needs no projection)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from helpers.core.constants import BEYOND_ARMS
from helpers.core.run_folder import read_index
from helpers.core.run_folder import save_figure as _save
from helpers.data import store as data_store
from helpers.data.store import load_cases
from helpers.models.build import build_model, load_model
from helpers.models.specs import get_spec
from helpers.training.datasets import _batches, encode
from helpers.training.internals import (
    capture_projections,
    layer_map,
    relation_scores,
    shape_of,
)

SHOWN_ARMS = ("independent", "distilled", *BEYOND_ARMS)


def beyond_arms_run(run_dir: str | Path) -> list[str]:
    """The beyond-logit arms this run trained (empty when none)."""
    modes = {e["mode"] for e in read_index(run_dir)["students"]}
    return [a for a in BEYOND_ARMS if a in modes]


def _student_models(run_dir: Path, name: str) -> dict[str, torch.nn.Module]:
    """{"before": the student as it starts (seed of its first final run), arm: that seed's trained checkpoint}."""
    entries = [e for e in read_index(run_dir)["students"] if e["name"] == name and e["mode"] in SHOWN_ARMS]
    seed = min(int(e["seed"]) for e in entries)
    teacher = load_model(run_dir / read_index(run_dir)["teacher"]["path"])
    keep = data_store.load_vocabulary(run_dir) if (run_dir / "data" / "vocab.json").is_file() else None
    spec = get_spec(name)
    try:
        before = build_model(spec, teacher=teacher, seed=seed, keep_ids=keep, num_labels=teacher.config.num_labels)
    except Exception:  # a pretrained student whose source is not on this machine: no "before" panel
        before = None
    out = {"before": before.eval()} if before is not None else {}
    for arm in SHOWN_ARMS:
        hit = [e for e in entries if e["mode"] == arm and int(e["seed"]) == seed]
        if hit:
            out[arm] = load_model(run_dir / hit[0]["path"])
    return out


@torch.no_grad()
def _last_attention(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """The last layer's attention distribution, averaged over heads: [T, T] for one case."""
    layers, _, heads = shape_of(model)
    with capture_projections(model, [layers]) as qkv:
        model(input_ids=ids, attention_mask=mask)
    scores = relation_scores(qkv[("q", layers)], qkv[("k", layers)], heads)
    scores = scores.masked_fill(~mask[:, None, None, :].bool(), -1e9)
    return torch.softmax(scores, dim=-1).mean(dim=1)[0].numpy()


def _kl_rows(p: np.ndarray, q: np.ndarray) -> float:
    """Mean over query rows of KL(p || q) between two attention maps."""
    p, q = np.clip(p, 1e-12, 1), np.clip(q, 1e-12, 1)
    return float((p * (np.log(p) - np.log(q))).sum(axis=1).mean())


def plot_attention_maps(run_dir: str | Path, max_len: int, student: str | None = None, tokens: int = 24) -> Figure:
    """One validation case's last-layer attention (mean over heads): the teacher's, then one student's before
    training and after it in each arm it ran (independent, distilled, the beyond-logit arms), first seed; each panel
    names its KL to the teacher's map (mean over query tokens). The case: the first validation case of at least
    `tokens` tokens, cut to its first `tokens`."""
    run_dir = Path(run_dir)
    names = [e["name"] for e in read_index(run_dir)["students"] if e["mode"] == "distilled_attention"]
    name = student or (names[-1] if names else read_index(run_dir)["students"][-1]["name"])
    val = load_cases(run_dir)["val"]
    enc = encode(val["text"].tolist(), max_len)
    pick = next((i for i, e in enumerate(enc) if len(e["input_ids"]) >= tokens), 0)
    ids = torch.tensor([enc[pick]["input_ids"][:tokens]])
    mask = torch.ones_like(ids)
    from helpers.models.tokenization import get_tokenizer

    words = get_tokenizer().convert_ids_to_tokens(ids[0].tolist())
    teacher = load_model(run_dir / read_index(run_dir)["teacher"]["path"])
    maps = {"teacher": _last_attention(teacher, ids, mask)}
    maps.update({k: _last_attention(m, ids, mask) for k, m in _student_models(run_dir, name).items()})
    cols = min(4, len(maps))
    rows = -(-len(maps) // cols)
    fig = Figure(figsize=(3.6 * cols, 3.9 * rows + 0.4))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(maps):]:
        ax.set_visible(False)
    for ax, (label, a) in zip(axes, maps.items()):
        ax.imshow(a, cmap="viridis", vmin=0, vmax=max(0.3, float(np.quantile(maps["teacher"], 0.99))))
        kl = "" if label == "teacher" else f"\nKL to teacher {_kl_rows(maps['teacher'], a):.2f}"
        ax.set_title(f"{label}{kl}", fontsize=9)
        ax.set_xticks(range(len(words)), words, rotation=90, fontsize=5)
        ax.set_yticks(range(len(words)), words, fontsize=5)
    fig.suptitle(f"Last-layer attention on validation case {val['id'].iloc[pick]} (first {tokens} tokens, mean over "
                 f"heads): the teacher, and {name} before training and after it in each arm", fontsize=10)
    return _save(fig, run_dir, "03_attention_maps.png")


def _cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA between two sets of token representations [n, d1], [n, d2] (1: the same up to rotation/scale)."""
    x, y = x - x.mean(0), y - y.mean(0)
    cross = np.linalg.norm(y.T @ x) ** 2
    return float(cross / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


@torch.no_grad()
def _hidden(model: torch.nn.Module, enc: list, keep: int) -> list[np.ndarray]:
    """Each layer's hidden states (0: embeddings) of the real tokens of the first `keep` cases: [tokens, width]."""
    out: list[list[np.ndarray]] = []
    for _rows, batch in _batches(enc[:keep], 32):
        hs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   output_hidden_states=True).hidden_states
        real = batch["attention_mask"].bool()
        for i, h in enumerate(hs):
            if len(out) <= i:
                out.append([])
            out[i].append(h[real].float().numpy())
    return [np.concatenate(parts) for parts in out]


def hidden_match_table(run_dir: str | Path, max_len: int, cases: int = 200) -> pd.DataFrame:
    """Per student and arm (first seed; `before`: the untrained student), per student layer m and its mapped teacher
    layer g(m) = m N / M: linear CKA of their hidden states over the real tokens of the first `cases` validation
    cases. The hidden-state arm is trained to raise exactly this match (through its projection)."""
    run_dir = Path(run_dir)
    enc = encode(load_cases(run_dir)["val"]["text"].tolist(), max_len)
    teacher = load_model(run_dir / read_index(run_dir)["teacher"]["path"])
    t_hidden = _hidden(teacher, enc, cases)
    rows = []
    for name in dict.fromkeys(e["name"] for e in read_index(run_dir)["students"]):
        for label, model in _student_models(run_dir, name).items():
            s_hidden = _hidden(model, enc, cases)
            for m, g in enumerate(layer_map(len(s_hidden) - 1, len(t_hidden) - 1)):
                rows.append({"model": name, "arm": label, "student_layer": m, "teacher_layer": g,
                             "cka": _cka(s_hidden[m], t_hidden[g])})
    return pd.DataFrame(rows)


def plot_hidden_match(run_dir: str | Path, table: pd.DataFrame) -> Figure:
    """The hidden-state match per mapped layer (linear CKA), one panel per student, one bar per arm."""
    students = list(dict.fromkeys(table["model"]))
    fig = Figure(figsize=(5.2 * len(students), 3.6))
    axes = fig.subplots(1, len(students), squeeze=False)[0]
    for ax, name in zip(axes, students):
        sub = table[table["model"] == name]
        arms = list(dict.fromkeys(sub["arm"]))
        layers = sorted(set(sub["student_layer"]))
        width = 0.8 / len(arms)
        for k, arm in enumerate(arms):
            values = [float(sub[(sub["arm"] == arm) & (sub["student_layer"] == m)]["cka"].iloc[0]) for m in layers]
            ax.bar(np.arange(len(layers)) + k * width, values, width, label=arm)
        pairs = sub.drop_duplicates("student_layer").sort_values("student_layer")
        ax.set_xticks(np.arange(len(layers)) + 0.4 - width / 2,
                      [f"{m} <- {g}" for m, g in zip(pairs["student_layer"], pairs["teacher_layer"])])
        ax.set_xlabel("student layer <- teacher layer (0: embeddings)")
        ax.set_ylim(0, 1)
        ax.set_title(name, fontsize=10)
    axes[0].set_ylabel("linear CKA with the teacher layer")
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.suptitle("How closely each student layer's hidden states match the teacher layer it is mapped to")
    return _save(fig, run_dir, "03_hidden_match.png")
