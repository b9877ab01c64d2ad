"""Figures and tables of stage 01: label balance, lengths, issue areas, example cases, baselines."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from helpers.core.constants import SPLITS
from helpers.core.run_folder import save_figure as _save
from helpers.data.baselines import BASELINE_LABELS, BAYES_ORACLE, VISIBLE_RULE
from helpers.data.rationales import load_rationales
from helpers.data.schema import OUTCOME
from helpers.data.store import load_classes


def _class_names(run_dir: str | Path | None) -> list[str]:
    return load_classes(run_dir)["classes"] if run_dir is not None else [OUTCOME[0], OUTCOME[1]]


def plot_label_balance(splits: dict[str, pd.DataFrame], run_dir: str | Path | None = None) -> Figure:
    """Cases per outcome in each split, with the first-party win rate (K classes: each class's share per split)."""
    names = _class_names(run_dir)
    if len(names) > 2:
        return _plot_class_shares(splits, names, run_dir)
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    x = np.arange(len(SPLITS))
    for k, c in enumerate((0, 1)):
        counts = [int((splits[s]["label"] == c).sum()) for s in SPLITS]
        bars = ax.bar(x + (k - 0.5) * 0.38, counts, width=0.38, label=f"{c}: {OUTCOME[c]}")
        ax.bar_label(bars, fontsize=9)
    ax.set_xticks(x, [f"{s}\n(first party wins {splits[s]['label'].mean():.0%})" for s in SPLITS])
    ax.set_xlabel("split")
    ax.set_ylabel("cases")
    ax.set_title("Outcome balance per split (stratified)")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.2)
    ax.legend(title="label")
    return _save(fig, run_dir, "01_label_balance.png")


def _plot_class_shares(splits: dict[str, pd.DataFrame], names: list[str], run_dir: str | Path | None) -> Figure:
    """Share of each class in each split: stratification keeps the bars of a class level."""
    fig = Figure(figsize=(max(7.0, 0.75 * len(names) + 2), 4.2))
    ax = fig.subplots()
    x = np.arange(len(names))
    width = 0.8 / len(SPLITS)
    for k, s in enumerate(SPLITS):
        shares = np.bincount(splits[s]["label"].to_numpy(int), minlength=len(names)) / len(splits[s])
        ax.bar(x + (k - 1) * width, shares, width=width, label=f"{s} ({len(splits[s])} cases)")
    ax.set_xticks(x, names, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("share of the split's cases")
    ax.set_title(f"{len(names)} classes per split (stratified)")
    ax.legend()
    return _save(fig, run_dir, "01_label_balance.png")


def plot_lengths(splits: dict[str, pd.DataFrame], max_len: int, run_dir: str | Path | None = None) -> Figure:
    """Case length in words and in WordPiece tokens, with the truncation point."""
    cases = pd.concat(list(splits.values()), ignore_index=True)
    truncated = float((cases["n_tokens"] > max_len).mean())
    fig = Figure(figsize=(11, 4))
    ax_w, ax_t = fig.subplots(1, 2)
    ax_w.hist(cases["n_words"], bins=40, color="tab:gray")
    ax_w.axvline(cases["n_words"].median(), color="black", ls=":", label=f"median {cases['n_words'].median():.0f}")
    ax_w.set_xlabel("words per case (model text)")
    ax_w.set_ylabel("cases")
    ax_w.set_title("Length in words")
    ax_w.legend()
    ax_t.hist(cases["n_tokens"], bins=40, color="tab:blue")
    ax_t.axvline(max_len, color="tab:red", lw=2, label=f"max_len = {max_len}")
    ax_t.set_xlabel("WordPiece tokens per case (incl. [CLS], [SEP])")
    ax_t.set_ylabel("cases")
    ax_t.set_title(f"Length in tokens: {truncated:.1%} of cases truncated at {max_len}")
    ax_t.legend()
    return _save(fig, run_dir, "01_lengths.png")


def plot_issue_areas(splits: dict[str, pd.DataFrame], run_dir: str | Path | None = None) -> Figure:
    """Cases per issue area, split by outcome (a many-class task: cases per class, split by train/val/test)."""
    cases = pd.concat(list(splits.values()), keys=list(splits), names=["split", None]).reset_index(0) \
        .reset_index(drop=True)
    names = _class_names(run_dir)
    if len(names) > 2:
        table = pd.crosstab(cases["label"].map(dict(enumerate(names))), cases["split"]).reindex(
            columns=list(SPLITS), fill_value=0)
        table = table.loc[table.sum(axis=1).sort_values().index]
        fig = Figure(figsize=(8, 0.35 * len(table) + 1.5))
        ax = fig.subplots()
        table.plot.barh(stacked=True, ax=ax)
        ax.set_xlabel("cases")
        ax.set_ylabel("class (the label)")
        ax.set_title(f"The {len(names)} classes of the task, per split")
        return _save(fig, run_dir, "01_issue_areas.png")
    area = cases["issue_area"].replace("", "(none)")
    table = pd.crosstab(area, cases["label"]).reindex(columns=[0, 1], fill_value=0)
    table = table.loc[table.sum(axis=1).sort_values().index]
    fig = Figure(figsize=(8, 0.35 * len(table) + 1.5))
    ax = fig.subplots()
    left = np.zeros(len(table))
    for c in (0, 1):
        ax.barh(table.index, table[c], left=left, label=f"{c}: {OUTCOME[c]}")
        left += table[c].to_numpy()
    for y, (total, wins) in enumerate(zip(left, table[1])):
        ax.text(total, y, f"  {wins / total:.0%} first-party wins", va="center", fontsize=8)
    ax.set_xlim(0, left.max() * 1.35)
    ax.set_xlabel("cases (all splits)")
    ax.set_ylabel("issue area")
    ax.set_title("Issue areas and outcomes")
    ax.legend(title="label", loc="lower right")
    return _save(fig, run_dir, "01_issue_areas.png")


def example_cases(splits: dict[str, pd.DataFrame], n: int = 3, run_dir: str | Path | None = None) -> pd.DataFrame:
    """A few training cases of both outcomes (K classes: of the n most frequent classes), with their deciding cue
    phrases when rationales exist."""
    names = _class_names(run_dir)
    train = splits["train"].sample(frac=1.0, random_state=0)
    order = (1, 0) if len(names) == 2 else tuple(range(len(names)))
    picks = [train[train["label"] == c] for c in order]
    k = len(picks)
    rows = pd.concat([picks[i % k].iloc[[i // k]] for i in range(n) if i // k < len(picks[i % k])])
    out = rows[["id", "label", "issue_area", "n_tokens", "text"]].assign(
        outcome=rows["label"].map(dict(enumerate(names))))
    if run_dir is not None:
        spans = load_rationales(run_dir)
        if spans:
            out["cues"] = [", ".join(f"{cue}: '{t[a:b]}'" for a, b, cue in spans.get(i, []))
                           for i, t in zip(out["id"], out["text"])]
    return out.reset_index(drop=True)


def baselines_table(card: dict) -> pd.DataFrame:
    """The card's baselines (and, when known, the rule's oracle Bayes accuracy and its accuracy on the cues inside
    max_len) as one row per model and split."""
    rows = [{"model": BASELINE_LABELS.get(m, m), "split": s, **card["baselines"][m][s]} for m in card["baselines"]
            for s in ("val", "test")]
    for key, name in (("bayes_accuracy", BAYES_ORACLE), ("visible_rule_accuracy", VISIBLE_RULE)):
        if key in card:
            rows += [{"model": name, "split": s, "accuracy": card[key][s]} for s in ("val", "test")]
    return pd.DataFrame(rows, columns=["model", "split", "accuracy", "macro_f1", "roc_auc"])
