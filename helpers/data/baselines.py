"""The baselines every model must beat: majority class, TF-IDF + logistic regression, the generator's rules."""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score

from helpers.core.constants import SPLITS
from helpers.evaluation.metrics import safe_auc
from helpers.synthetic.generator import rule_prob

TFIDF_C_GRID = (0.1, 1.0, 10.0, 100.0)
# The synthetic data's two ceilings, as every table names them: the generator's rule on its own inputs (an oracle that
# knows every cue and the issue area), and the same rule on the cues inside the first max_len tokens (what the text a
# model reads can support; cues truncated away cannot count).
BAYES_ORACLE = "Bayes (oracle on generator inputs)"
# The data card's baselines (`baselines` keys) as every table names them.
BASELINE_LABELS = {"majority": "majority class", "tfidf_logreg": "TF-IDF + logistic regression",
                   "tfidf_logreg_read": "TF-IDF + logistic regression, first max_len tokens"}
VISIBLE_RULE = "rule on the cues within max_len"


def _metrics(y: np.ndarray, pred: np.ndarray, score: np.ndarray | None, n_classes: int = 2) -> dict:
    """accuracy, macro-F1 and ROC-AUC (of `score`, else of the hard predictions: 0.5 for a constant predictor;
    NaN, written as null, when the split holds one class), computed as for the models (evaluation.safe_auc;
    one-vs-rest macro for K > 2 classes, where `score` is [n, K])."""
    if score is None and n_classes > 2:
        score = np.eye(n_classes)[pred]
    return {"accuracy": float(accuracy_score(y, pred)),
            "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
            "roc_auc": safe_auc(y, pred if score is None else score)}


def _n_classes(splits: dict[str, pd.DataFrame]) -> int:
    return max(2, int(max(splits[s]["label"].max() for s in SPLITS)) + 1)


def _tfidf_logreg(splits: dict[str, pd.DataFrame], column: str = "text") -> tuple[dict, float]:
    """TF-IDF word 1-2 grams + logistic regression on `column` (the full text, or `text_read`: what the models read):
    C picked on val accuracy; metrics on val and test."""
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    x_train = vec.fit_transform(splits["train"][column])
    xs = {s: vec.transform(splits[s][column]) for s in ("val", "test")}
    ys = {s: splits[s]["label"].to_numpy(int) for s in SPLITS}
    best = None
    for c in TFIDF_C_GRID:
        model = LogisticRegression(C=c, max_iter=2000).fit(x_train, ys["train"])
        acc = accuracy_score(ys["val"], model.predict(xs["val"]))
        if best is None or acc > best[0]:
            best = (acc, c, model)
    _, c, model = best
    k = _n_classes(splits)

    def scores(x):
        proba = model.predict_proba(x)
        if k == 2:
            return proba[:, 1]
        full = np.zeros((x.shape[0], k))
        full[:, model.classes_] = proba
        return full

    out = {s: _metrics(ys[s], model.predict(xs[s]), scores(xs[s]), k) for s in ("val", "test")}
    return out, c


def _majority_label(train: pd.DataFrame) -> int:
    # the most frequent class id (a tie goes to the lower id: for 0/1 labels, 1 only when its rate exceeds 0.5)
    return int(np.bincount(train["label"].to_numpy(int)).argmax())


def _majority(splits: dict[str, pd.DataFrame]) -> dict:
    """Majority-class baseline (the train majority label) scored on val and test."""
    major = _majority_label(splits["train"])
    k = _n_classes(splits)
    return {s: _metrics(splits[s]["label"].to_numpy(int), np.full(len(splits[s]), major), None, k)
            for s in ("val", "test")}


def baselines(splits: dict[str, pd.DataFrame]) -> dict:
    """Majority-class and TF-IDF + logistic-regression baselines scored on val and test."""
    return {"majority": _majority(splits), "tfidf_logreg": _tfidf_logreg(splits)[0]}


def _cue_within_share(inside: list[list[bool]]) -> float:
    """Share of rationale spans a model reading max_len tokens sees."""
    flat = [x for case in inside for x in case]
    return sum(flat) / len(flat) if flat else float("nan")


def _visible_rule_prob(cases: pd.DataFrame, rationales: list[dict], inside: list[list[bool]]) -> list[float]:
    """The generator's rule on what survives truncation: p(label 1) from the issue area and the deciding cues whose
    span lies inside the first max_len tokens (cues cut away count as absent)."""
    return [rule_prob(area, {cue for (_, _, cue), seen in zip(rec["spans"], ins) if seen})
            for area, rec, ins in zip(cases["issue_area"], rationales, inside)]
