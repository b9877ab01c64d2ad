"""Stratified group splits (near-duplicates stay together), split sizes and rare-class handling."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from helpers.core.errors import DataError
from helpers.data.schema import OTHER, OUTCOME, RARE_CLASSES


def _check_class_sizes(labels: pd.Series, groups: pd.Series, path: str | Path,
                       names: list[str] | None = None) -> None:
    names = names or [OUTCOME[0], OUTCOME[1]]
    classes = range(len(names))
    counts = {c: int((labels == c).sum()) for c in classes}
    n_groups = {c: int(groups[labels == c].nunique()) for c in classes}
    if min(n_groups.values()) < 3:
        detail = "; ".join(f"label {c} ({names[c]}): {counts[c]} case(s) in {n_groups[c]} distinct text(s)"
                           for c in classes)
        raise DataError(f"{path}: too few cases of a class to split: {detail}; a stratified train/val/test "
                        "split needs at least 3 distinct cases of each class (one per split)")


def stratified_group_split(labels: pd.Series, groups: pd.Series, val_frac: float, test_frac: float,
                           seed: int) -> pd.Series:
    """Split name per row: stratified by label, near-duplicate groups never straddling splits."""
    first = pd.DataFrame({"label": labels.to_numpy(), "group": groups.to_numpy()}).drop_duplicates("group")
    rng = np.random.Generator(np.random.PCG64(seed))
    sizes = groups.value_counts()
    assign: dict[str, str] = {}
    for c in sorted(first["label"].unique()):  # (0, 1) for the outcome task, every class id for K classes
        keys = first.loc[first["label"] == c, "group"].to_numpy()
        keys = keys[rng.permutation(len(keys))]
        n_c = int(sizes[keys].sum())
        targets = {"val": max(1, round(n_c * val_frac)), "test": max(1, round(n_c * test_frac))}
        filled = {"val": 0, "test": 0}
        for i, key in enumerate(keys):
            left = len(keys) - i - 1
            if filled["val"] < targets["val"] and left >= 2 - (filled["test"] > 0):
                name = "val"
            elif filled["test"] < targets["test"] and left >= 1:
                name = "test"
            else:
                name = "train"
            assign[key] = name
            if name != "train":
                filled[name] += int(sizes[key])
    return groups.map(assign)


def crossfit_split(labels: pd.Series, groups: pd.Series, folds: int, fold: int, val_frac: float,
                   seed: int) -> pd.Series:
    """Split name per row for cross-fitting: `folds` stratified folds (near-duplicate groups never straddle two),
    fold `fold` the test split, validation a stratified `val_frac` share of all cases drawn from the other folds, the
    rest training. With the same seed every fold number gives a different test split and, over all of them, every
    case is a test case exactly once."""
    first = pd.DataFrame({"label": labels.to_numpy(), "group": groups.to_numpy()}).drop_duplicates("group")
    rng = np.random.Generator(np.random.PCG64(seed))
    sizes = groups.value_counts()
    assign: dict[str, str] = {}
    for c in sorted(first["label"].unique()):
        keys = first.loc[first["label"] == c, "group"].to_numpy()
        keys = keys[rng.permutation(len(keys))]
        filled = np.zeros(folds, dtype=int)
        fold_of = {}
        for key in keys:  # each group to the fold holding the fewest cases of this class so far (first on ties)
            k = int(np.argmin(filled))
            fold_of[key] = k
            filled[k] += int(sizes[key])
        target = max(1, round(int(sizes[keys].sum()) * val_frac))
        taken = 0
        for key in keys:  # the same seeded order: validation from the other folds until its share is reached
            if fold_of[key] == fold:
                assign[key] = "test"
            elif taken < target:
                assign[key] = "val"
                taken += int(sizes[key])
            else:
                assign[key] = "train"
    return groups.map(assign)


def _assign_classes(cases: pd.DataFrame, groups: pd.Series, rare_classes: str, min_class_count: int,
                    path: str | Path) -> tuple[pd.DataFrame, pd.Series, list[str], dict]:
    """Class names -> integer ids for a many-class task, rare classes merged into OTHER or dropped.

    A class is rare when it has fewer than `min_class_count` usable cases or fewer than 3 distinct texts (it could
    not appear in every split). `merge` puts the rare classes into one class named OTHER (itself dropped when still
    too small); `drop` removes their cases. Classes are ordered by frequency (ties by name), OTHER last.
    Returns the kept cases (label = id), their groups, the class names and the counts for the data card.
    """
    if rare_classes not in RARE_CLASSES:
        raise ValueError(f"parameter rare_classes: must be one of {', '.join(RARE_CLASSES)}, got {rare_classes!r}")
    names = cases["label"]
    sizes = names.value_counts()
    n_groups = groups.groupby(names.to_numpy()).nunique()

    def rare(name: str, n: int) -> bool:
        return n < min_class_count or int(n_groups.get(name, 0)) < 3

    rare_names = sorted(n for n, c in sizes.items() if rare(n, int(c)))
    mapped = names.copy()
    merged = {n: int(sizes[n]) for n in rare_names}
    info: dict = {"rare_classes": rare_classes, "min_class_count": int(min_class_count)}
    dropped_names = list(rare_names)
    if rare_names and rare_classes == "merge":
        mapped = names.where(~names.isin(rare_names), OTHER)
        other_n = int((mapped == OTHER).sum())
        other_groups = int(groups[(mapped == OTHER).to_numpy()].nunique())
        dropped_names = [OTHER] if other_n < min_class_count or other_groups < 3 else []
        info["merged_into_other"] = merged
    keep = ~mapped.isin(dropped_names)
    info["n_dropped_rare_class"] = int((~keep).sum())
    if rare_classes == "drop" or dropped_names:
        info["dropped_classes"] = merged if rare_classes == "drop" else {OTHER: int((~keep).sum())}
    counts = mapped[keep].value_counts()
    order = sorted((n for n in counts.index if n != OTHER), key=lambda n: (-int(counts[n]), n))
    classes = order + ([OTHER] if OTHER in counts.index else [])
    if len(classes) < 2:
        raise DataError(f"{path}: fewer than two classes left after handling rare classes "
                        f"(rare_classes={rare_classes}, min_class_count={min_class_count}): {dict(sizes)}")
    ids = {n: i for i, n in enumerate(classes)}
    kept = cases[keep.to_numpy()].assign(label=mapped[keep].map(ids).astype(int).to_numpy())
    return kept.reset_index(drop=True), groups[keep.to_numpy()].reset_index(drop=True), classes, info


def _sizes_as_fractions(n: int, val_n: int, test_n: int, val_frac: float, test_frac: float,
                        path: str | Path) -> tuple[float, float]:
    """val/test fractions from absolute sizes (0 keeps the fraction)."""
    if val_n or test_n:
        need = (val_n or round(n * val_frac)) + (test_n or round(n * test_frac))
        if need >= n - 10:
            raise DataError(f"{path}: {n} usable cases cannot hold val_n={val_n} and test_n={test_n} and leave "
                            f"training cases; lower val_n/test_n or add cases")
    return (val_n / n if val_n else val_frac), (test_n / n if test_n else test_frac)
