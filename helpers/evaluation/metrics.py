"""Classification metrics, fidelity to the teacher, calibration and collapse."""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score


def predicted_class(probs: np.ndarray) -> np.ndarray:
    """The most probable class: argmax over the last (class) axis; a tie goes to the lowest class id, as argmax over
    the logits sends it. The one decision rule of the suite: metrics from logits and from stored probabilities agree.
    """
    return np.asarray(probs).argmax(axis=-1)


def class_probs(prob_1: np.ndarray) -> np.ndarray:
    """Two classes as K = 2: P(class 1) [...] (how two-class predictions are stored, `prob_1`) -> [..., 2] = [1 - p, p].

    argmax([1 - p, p]) is class 1 exactly where p > 0.5 (1 - p is exact for p >= 0.5 and rounds to >= 0.5 below it).
    """
    p = np.asarray(prob_1, dtype=float)
    return np.stack([1 - p, p], axis=-1)


def probabilities(predictions: pd.DataFrame) -> np.ndarray:
    """[n, K] class probabilities of a predictions.csv frame (two classes: its `prob_1` as K = 2)."""
    cols = prob_columns(predictions)
    values = predictions[cols].to_numpy(dtype=float)
    return class_probs(values[:, 0]) if cols == ["prob_1"] else values


def prob_columns(predictions: pd.DataFrame) -> list[str]:
    """The probability columns of a predictions.csv frame: `prob_1` (binary) or `prob_0` ... `prob_{K-1}` (K > 2)."""
    if "prob_0" not in predictions.columns:
        return ["prob_1"]
    cols = [c for c in predictions.columns if c.startswith("prob_") and c[5:].isdigit()]
    return sorted(cols, key=lambda c: int(c[5:]))


def prediction_frame(ids: pd.Series | np.ndarray, probs: np.ndarray) -> pd.DataFrame:
    """Probability columns for predictions.csv from probabilities [n, K]: `prob_1` when K = 2, else one per class."""
    if probs.shape[1] == 2:
        return pd.DataFrame({"prob_1": probs[:, 1]}, index=ids)
    return pd.DataFrame({f"prob_{k}": probs[:, k] for k in range(probs.shape[1])}, index=ids)


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
    """ROC-AUC, NaN when only one class is present (undefined; written as null in JSON files).

    `scores`: P(label = 1) [n] for two classes, or every class's score [n, K] for K > 2: then the one-vs-rest
    macro average over the classes present in `labels` (sklearn's `multi_class="ovr"` when all are present).
    A constant score (the majority-class baseline) is defined and scores 0.5: every pair is a tie.
    """
    scores = np.asarray(scores)
    if scores.ndim == 2:
        return _ovr_auc(np.asarray(labels), scores)
    return float(roc_auc_score(labels, scores)) if len(np.unique(labels)) == 2 else float("nan")


def _ovr_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """One-vs-rest macro ROC-AUC over the classes that occur (with cases outside them); NaN with fewer than two.

    For two classes the two one-vs-rest AUCs are one number: class 1's score against the rest.
    """
    if scores.shape[1] == 2:
        return _binary_auc((labels == 1).astype(int), scores[:, 1])
    aucs = [_binary_auc((labels == k).astype(int), scores[:, k]) for k in range(scores.shape[1])
            if 0 < (labels == k).sum() < len(labels)]
    return float(np.mean(aucs)) if len(aucs) >= 2 else float("nan")


def top_class_share(preds: np.ndarray) -> float:
    """Share of cases given the most often predicted class (1.0: one class for every case)."""
    preds = np.asarray(preds)
    return float(np.bincount(preds).max() / len(preds)) if len(preds) else float("nan")


def classification_metrics(logits: np.ndarray, labels: np.ndarray,
                           teacher_logits: np.ndarray | None = None) -> dict[str, float]:
    """accuracy, macro-F1, ROC-AUC, ECE, and (with teacher logits) agreement and mean KL(teacher || model).

    Two classes: ROC-AUC of P(class 1) and `positive_rate` (share predicted 1). K > 2 classes: one-vs-rest macro
    ROC-AUC and `top_class_share` (share of the most often predicted class) in place of the positive rate; ECE is
    always that of the predicted (top) class.
    """
    probs = softmax(logits)
    preds = probs.argmax(axis=1)
    binary = probs.shape[1] == 2
    out = {
        "accuracy": float(accuracy_score(labels, preds)),
        "macro_f1": float(f1_score(labels, preds, average="macro", zero_division=0)),
        "roc_auc": safe_auc(labels, probs[:, 1] if binary else probs),
        "ece": expected_calibration_error(probs, labels),
    }
    if binary:
        out["positive_rate"] = float(preds.mean())
    else:
        out["top_class_share"] = top_class_share(preds)
    if teacher_logits is not None:
        pt = softmax(teacher_logits)
        out["agreement"] = float((pt.argmax(axis=1) == preds).mean())
        out["kl_to_teacher"] = float(np.mean(np.sum(pt * (np.log(pt + 1e-12) - np.log(probs + 1e-12)), axis=1)))
    else:
        out["agreement"] = float("nan")
        out["kl_to_teacher"] = float("nan")
    return out


def class_share(metrics: dict[str, float]) -> float:
    """Share of the most often predicted class, from a classification_metrics dict of any number of classes."""
    if "top_class_share" in metrics and metrics["top_class_share"] == metrics["top_class_share"]:
        return float(metrics["top_class_share"])
    return float(max(metrics["positive_rate"], 1 - metrics["positive_rate"]))


def is_collapsed(teacher_metrics: dict[str, float], majority_accuracy: float, tol: float = 0.005) -> bool:
    """A teacher that does not beat the majority class, or predicts (almost) one class only, has collapsed."""
    one_class = class_share(teacher_metrics) >= 0.98
    return bool(teacher_metrics["accuracy"] <= majority_accuracy + tol or one_class)


def _binary_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    # Mann-Whitney form of ROC-AUC with average ranks for ties (equals sklearn's roc_auc_score).
    n1 = int(labels.sum())
    n0 = len(labels) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _macro_f1(preds: np.ndarray, labels: np.ndarray, n_classes: int) -> float:
    # sklearn's f1_score(average="macro", zero_division=0) for K classes (two classes are K = 2): F1 averaged
    # over the classes that occur in the labels or the predictions, from one confusion count, ~50x faster than
    # sklearn (the bootstrap calls it hundreds of thousands of times).
    cm = np.bincount(labels * n_classes + preds, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    tp = np.diag(cm).astype(float)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    present = (support + predicted) > 0
    f1 = np.divide(2 * tp, support + predicted, out=np.zeros(n_classes), where=present)
    return float(f1[present].mean()) if present.any() else 0.0
