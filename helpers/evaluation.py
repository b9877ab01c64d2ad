"""Classification metrics, fidelity to the teacher, calibration, bootstrap intervals and the KD verdict."""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

METRICS = ("accuracy", "macro_f1", "roc_auc", "ece", "agreement", "kl_to_teacher")
GAIN_METRICS = ("accuracy", "macro_f1", "roc_auc", "agreement")


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of `logits / temperature`."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """ECE of the predicted class's confidence over equal-width bins."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.5 if probs.shape[1] == 2 else 0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = idx == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(ece)


def safe_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC-AUC, NaN when only one class is present."""
    return float(roc_auc_score(labels, scores)) if len(np.unique(labels)) == 2 else float("nan")


def classification_metrics(logits: np.ndarray, labels: np.ndarray,
                           teacher_logits: np.ndarray | None = None) -> dict[str, float]:
    """accuracy, macro-F1, ROC-AUC, ECE, and (with teacher logits) agreement and mean KL(teacher || model)."""
    probs = softmax(logits)
    preds = probs.argmax(axis=1)
    out = {
        "accuracy": float(accuracy_score(labels, preds)),
        "macro_f1": float(f1_score(labels, preds, average="macro", zero_division=0)),
        "roc_auc": safe_auc(labels, probs[:, 1]),
        "ece": expected_calibration_error(probs, labels),
        "positive_rate": float(preds.mean()),
    }
    if teacher_logits is not None:
        pt = softmax(teacher_logits)
        out["agreement"] = float((pt.argmax(axis=1) == preds).mean())
        out["kl_to_teacher"] = float(np.mean(np.sum(pt * (np.log(pt + 1e-12) - np.log(probs + 1e-12)), axis=1)))
    else:
        out["agreement"] = float("nan")
        out["kl_to_teacher"] = float("nan")
    return out


def is_collapsed(teacher_metrics: dict[str, float], majority_accuracy: float, tol: float = 0.005) -> bool:
    """A teacher that does not beat the majority class, or predicts (almost) one class only, has collapsed."""
    one_class = teacher_metrics["positive_rate"] <= 0.02 or teacher_metrics["positive_rate"] >= 0.98
    return bool(teacher_metrics["accuracy"] <= majority_accuracy + tol or one_class)


def _binary_macro_f1(preds: np.ndarray, labels: np.ndarray) -> float:
    # The same number as sklearn's f1_score(average="macro", zero_division=0) for 0/1 labels, ~50x faster:
    # the bootstrap calls it hundreds of thousands of times.
    tp = np.sum((preds == 1) & (labels == 1))
    fp = np.sum((preds == 1) & (labels == 0))
    fn = np.sum((preds == 0) & (labels == 1))
    tn = len(labels) - tp - fp - fn
    f1_pos = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    f1_neg = 2 * tn / (2 * tn + fn + fp) if tn + fn + fp else 0.0
    present = [f for f, n in ((f1_neg, tn + fp + fn), (f1_pos, tp + fp + fn)) if n]
    return float(np.mean(present)) if present else 0.0


def _binary_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    # Mann-Whitney form of ROC-AUC with average ranks for ties (equals sklearn's roc_auc_score).
    n1 = int(labels.sum())
    n0 = len(labels) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _metric_from_probs(metric: str, probs1: np.ndarray, labels: np.ndarray, teacher_pred: np.ndarray) -> float:
    preds = (probs1 >= 0.5).astype(int)
    if metric == "accuracy":
        return float((preds == labels).mean())
    if metric == "macro_f1":
        return _binary_macro_f1(preds, labels)
    if metric == "roc_auc":
        return _binary_auc(labels, probs1)
    if metric == "agreement":
        return float((preds == teacher_pred).mean())
    raise ValueError(f"unknown metric {metric!r}")


def paired_bootstrap(probs_a: np.ndarray, probs_b: np.ndarray, labels: np.ndarray, teacher_pred: np.ndarray,
                     metric: str, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Mean over seeds of metric(b) - metric(a), with a bootstrap CI resampling seeds and test examples jointly.

    `probs_a`, `probs_b`: arrays [n_seeds, n_examples] of P(label = 1), paired by seed (same seed, same order).
    """
    probs_a, probs_b = np.atleast_2d(probs_a), np.atleast_2d(probs_b)
    n_seeds, n = probs_a.shape
    rng = np.random.default_rng(seed)
    point = np.mean([_metric_from_probs(metric, probs_b[s], labels, teacher_pred)
                     - _metric_from_probs(metric, probs_a[s], labels, teacher_pred) for s in range(n_seeds)])
    stats = np.empty(n_boot)
    for i in range(n_boot):
        seeds = rng.integers(0, n_seeds, n_seeds) if n_seeds > 1 else np.zeros(1, dtype=int)
        idx = rng.integers(0, n, n)
        lab, tp = labels[idx], teacher_pred[idx]
        stats[i] = np.mean([_metric_from_probs(metric, probs_b[s, idx], lab, tp)
                            - _metric_from_probs(metric, probs_a[s, idx], lab, tp) for s in seeds])
    stats = stats[~np.isnan(stats)]
    lo, hi = np.quantile(stats, [(1 - level) / 2, 1 - (1 - level) / 2]) if len(stats) else (np.nan, np.nan)
    return {"diff": float(point), "ci_low": float(lo), "ci_high": float(hi)}


def verdict(diff: float, ci_low: float, ci_high: float, meaningful: bool = True, metric: str = "accuracy",
            teacher_name: str = "the teacher") -> str:
    """One line: did distillation help, with the interval; 'no evidence' when it covers zero."""
    if not meaningful:
        return (f"not meaningful: {teacher_name} collapsed to the majority class, so its soft targets carry no "
                f"signal to distil")
    span = f"{diff:+.3f} (95% CI {ci_low:+.3f} to {ci_high:+.3f})"
    if np.isnan(ci_low) or np.isnan(ci_high):
        return f"no evidence either way: {metric} {span}"
    if ci_low > 0:
        return f"distillation helped: {metric} {span}"
    if ci_high < 0:
        return f"distillation hurt: {metric} {span}"
    return f"no evidence of a difference: {metric} {span}"


def kd_gain_table(predictions: pd.DataFrame, students: list[str], teacher_pred: pd.Series, meaningful: bool,
                  n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per student and metric: mean/std over seeds per mode and the paired distilled - independent difference."""
    rows = []
    for name in students:
        sub = predictions[predictions["model"] == name]
        if sub.empty:
            continue
        wide = sub.pivot_table(index="id", columns=["mode", "seed"], values="prob_1")
        ids = wide.index
        labels = sub.drop_duplicates("id").set_index("id").loc[ids, "label"].to_numpy()
        tpred = teacher_pred.loc[ids].to_numpy()
        seeds = sorted(set(wide["independent"].columns) & set(wide["distilled"].columns))
        pa = wide["independent"][seeds].to_numpy().T
        pb = wide["distilled"][seeds].to_numpy().T
        for metric in GAIN_METRICS:
            per_a = [_metric_from_probs(metric, p, labels, tpred) for p in pa]
            per_b = [_metric_from_probs(metric, p, labels, tpred) for p in pb]
            boot = paired_bootstrap(pa, pb, labels, tpred, metric, n_boot=n_boot, seed=seed)
            rows.append({"model": name, "metric": metric, "n_seeds": len(seeds),
                         "independent_mean": float(np.mean(per_a)), "independent_std": float(np.std(per_a, ddof=1)) if len(seeds) > 1 else 0.0,
                         "distilled_mean": float(np.mean(per_b)), "distilled_std": float(np.std(per_b, ddof=1)) if len(seeds) > 1 else 0.0,
                         **boot, "meaningful": meaningful,
                         "verdict": verdict(boot["diff"], boot["ci_low"], boot["ci_high"], meaningful, metric)})
    return pd.DataFrame(rows)
