"""Did an arm help? Paired differences over seeds and test cases, Holm's adjustment and the verdict text."""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import norm
from scipy.stats import t as student_t

from helpers.evaluation.metrics import _binary_auc, _macro_f1, _ovr_auc, predicted_class, prob_columns

GAIN_METRICS = ("accuracy", "macro_f1", "roc_auc", "agreement")
# Resamples of test cases behind the case-sampling *variance* of macro-F1 and ROC-AUC differences: a variance settles
# with far fewer resamples than a percentile interval needs (accuracy and agreement need none: per-case formula).
CASE_VARIANCE_RESAMPLES = 200


def _metric_from_probs(metric: str, probs1: np.ndarray, labels: np.ndarray, teacher_pred: np.ndarray) -> float:
    """metric of one seed's predictions: `probs1` is P(class 1) [n] (binary) or every class's probability [n, K]."""
    multi = probs1.ndim == 2
    preds = predicted_class(probs1, multiclass=multi)
    if metric == "accuracy":
        return float((preds == labels).mean())
    if metric == "macro_f1":
        return _macro_f1(preds, labels, probs1.shape[1] if multi else 2)
    if metric == "roc_auc":
        return _ovr_auc(labels, probs1) if multi else _binary_auc(labels, probs1)
    if metric == "agreement":
        return float((preds == teacher_pred).mean())
    raise ValueError(f"unknown metric {metric!r}")


def holm(p_values: list[float] | np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN and does not count as a comparison)."""
    p = np.asarray(p_values, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def _metric_rows(metric: str, probs1: np.ndarray, labels: np.ndarray, teacher_pred: np.ndarray,
                 idx: np.ndarray | None = None) -> np.ndarray:
    """metric of each row of probs1 [n_seeds, n] or [n_seeds, n, K] (on the cases `idx` when given)."""
    if idx is not None:
        probs1, labels, teacher_pred = probs1[:, idx], labels[idx], teacher_pred[idx]
    return np.array([_metric_from_probs(metric, p, labels, teacher_pred) for p in probs1])


def paired_difference(probs_a: np.ndarray, probs_b: np.ndarray, labels: np.ndarray, teacher_pred: np.ndarray,
                      metric: str, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Mean over seeds of metric(b) - metric(a) with a t-interval that counts seeds and test cases as random.

    `probs_a`, `probs_b`: arrays [n_seeds, n_cases] of P(label = 1), or [n_seeds, n_cases, K] of every class's
    probability for K > 2 classes, paired by seed (same seed, same cases).
    The standard error adds the between-seed variance of the seed-level differences (s^2 / n_seeds) and the
    test-case sampling variance of the seed-mean difference (a bootstrap over cases with the seeds held fixed);
    the interval and the two-sided p-value use a t distribution with n_seeds - 1 degrees of freedom (normal with
    one seed). With few seeds this is deliberately conservative: a percentile bootstrap over 5 seeds has only
    126 distinct seed resamples and understates the between-seed variance.
    """
    probs_a, probs_b = np.atleast_2d(probs_a), np.atleast_2d(probs_b)
    n_seeds, n = probs_a.shape[:2]
    multi = probs_a.ndim == 3
    diffs = _metric_rows(metric, probs_b, labels, teacher_pred) - _metric_rows(metric, probs_a, labels, teacher_pred)
    point = float(np.mean(diffs))
    var_seed = float(np.var(diffs, ddof=1)) / n_seeds if n_seeds > 1 else 0.0
    rng = np.random.default_rng(seed)
    if metric in ("accuracy", "agreement"):  # per-case form: the case variance needs no resampling
        ref = labels if metric == "accuracy" else teacher_pred
        pred_a, pred_b = predicted_class(probs_a, multi), predicted_class(probs_b, multi)
        per_case = ((pred_b == ref).mean(0) - (pred_a == ref).mean(0))
        var_case = float(np.var(per_case, ddof=1)) / n
    else:
        boots = [np.nanmean(_metric_rows(metric, probs_b, labels, teacher_pred, idx)
                            - _metric_rows(metric, probs_a, labels, teacher_pred, idx))
                 for idx in (rng.integers(0, n, n) for _ in range(n_boot))]
        var_case = float(np.nanvar(boots, ddof=1))
    se = float(np.sqrt(var_seed + var_case))
    df = max(n_seeds - 1, 1)
    if not np.isfinite(point) or not np.isfinite(se):
        return {"diff": point, "ci_low": np.nan, "ci_high": np.nan, "se": se, "p_value": np.nan,
                "seed_sd": float(np.std(diffs, ddof=1)) if n_seeds > 1 else 0.0, "n_seeds": n_seeds}
    crit = float(student_t.ppf(0.5 + level / 2, df)) if n_seeds > 1 else float(norm.ppf(0.5 + level / 2))
    if se == 0:
        p_value = 1.0 if point == 0 else 0.0
    else:
        stat = abs(point) / se
        p_value = float(2 * (student_t.sf(stat, df) if n_seeds > 1 else norm.sf(stat)))
    return {"diff": point, "ci_low": point - crit * se, "ci_high": point + crit * se, "se": se, "p_value": p_value,
            "seed_sd": float(np.std(diffs, ddof=1)) if n_seeds > 1 else 0.0, "n_seeds": n_seeds}


def verdict(diff: float, ci_low: float, ci_high: float, meaningful: bool = True, metric: str = "accuracy",
            teacher_name: str = "the teacher", p_adjusted: float | None = None, arm: str = "distillation",
            did_not_learn: str = "") -> str:
    """One line: did the arm help, with the interval and the Holm-adjusted p; 'no evidence' when it covers zero."""
    if not meaningful:
        return (f"not meaningful: {teacher_name} collapsed to the majority class, so its soft targets carry no "
                f"signal to distil")
    if did_not_learn:
        return f"not comparable: {did_not_learn}"
    span = f"{diff:+.3f} (95% CI {ci_low:+.3f} to {ci_high:+.3f}"
    span += f", Holm-adjusted p = {p_adjusted:.3g})" if p_adjusted is not None and np.isfinite(p_adjusted) else ")"
    if np.isnan(ci_low) or np.isnan(ci_high):
        return f"no evidence either way: {metric} {span}"
    significant = p_adjusted is None or not np.isfinite(p_adjusted) or p_adjusted < 0.05
    if ci_low > 0 and significant:
        return f"{arm} helped: {metric} {span}"
    if ci_high < 0 and significant:
        return f"{arm} hurt: {metric} {span}"
    if ci_low > 0 or ci_high < 0:
        return f"no evidence after adjusting for multiple comparisons: {metric} {span}"
    return f"no evidence of a difference: {metric} {span}"


ARM_WORDS = {"distilled": "distillation", "distilled_transfer": "distillation with the transfer set",
             "pseudo_label_transfer": "pseudo-labels on the transfer set", "chain": "chain distillation"}


def _contrast_words(arm: str, against: str) -> str:
    """The subject of a verdict line: what the arm changes over its reference."""
    if against == "independent":
        return ARM_WORDS.get(arm, arm)
    if (arm, against) == ("chain", "distilled"):
        return "the chain over direct distillation"
    return f"soft targets ({arm} over {against})"


def _not_learned(runs: pd.DataFrame | None, name: str, arm: str) -> str:
    if runs is None or "did_not_learn" not in runs:
        return ""
    r = runs[(runs["model"] == name) & (runs["mode"] == arm)]
    bad = r[r["did_not_learn"].fillna("").astype(str) != ""]
    if len(r) and len(bad) == len(r):
        return f"{name} {arm} did not learn: it {bad['did_not_learn'].iloc[0]} in {len(bad)}/{len(r)} seeds"
    return ""


def kd_gain_table(predictions: pd.DataFrame, students: list[str], teacher_pred: pd.Series, meaningful: bool,
                  n_boot: int = 1000, seed: int = 0, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per student, arm (every mode but independent) and metric: the paired arm - independent test difference.

    Columns: model, arm, against (the reference arm), metric, n_seeds, independent_mean/std (the reference arm's),
    arm_mean/std, diff, ci_low, ci_high (unadjusted 95%), se, p_value, p_adjusted (Holm over every row of the same
    metric), meaningful, did_not_learn, verdict. Every arm is compared with `independent`; a student with both
    transfer arms also gets distilled_transfer against pseudo_label_transfer (same extra cases, soft vs hard
    targets), and a student with the chain arm also gets chain against distilled (chain_vs_direct: the same loss
    from the previous, larger student instead of the teacher). A student whose runs predict one class on validation
    in every seed is reported as not comparable rather than as a zero difference.
    """
    rows = []
    for name in students:
        sub = predictions[predictions["model"] == name]
        if sub.empty or "independent" not in set(sub["mode"]):
            continue
        cols = prob_columns(sub)
        wide = sub.pivot_table(index="id", columns=["mode", "seed"], values=cols[0])
        ids = wide.index
        by_class = [sub.pivot_table(index="id", columns=["mode", "seed"], values=c).loc[ids] for c in cols]
        labels = sub.drop_duplicates("id").set_index("id").loc[ids, "label"].to_numpy()
        tpred = teacher_pred.loc[ids].to_numpy()
        arms = [m for m in dict.fromkeys(sub["mode"]) if m != "independent"]
        pairs = [("independent", arm) for arm in arms]
        if {"distilled_transfer", "pseudo_label_transfer"} <= set(arms):  # soft targets vs hard labels, same data
            pairs.append(("pseudo_label_transfer", "distilled_transfer"))
        if {"distilled", "chain"} <= set(arms):  # chain_vs_direct: a teacher assistant vs the teacher itself
            pairs.append(("distilled", "chain"))
        for against, arm in pairs:
            seeds = sorted(set(wide[against].columns) & set(wide[arm].columns))
            if len(cols) == 1:
                pa = wide[against][seeds].to_numpy().T
                pb = wide[arm][seeds].to_numpy().T
            else:  # [n_seeds, n_cases, K]
                pa = np.stack([w[against][seeds].to_numpy().T for w in by_class], axis=-1)
                pb = np.stack([w[arm][seeds].to_numpy().T for w in by_class], axis=-1)
            dnl = _not_learned(runs, name, against) or _not_learned(runs, name, arm)
            for metric in GAIN_METRICS:
                per_a = _metric_rows(metric, pa, labels, tpred)
                per_b = _metric_rows(metric, pb, labels, tpred)
                stat = paired_difference(pa, pb, labels, tpred, metric, n_boot=min(n_boot, CASE_VARIANCE_RESAMPLES),
                                         seed=seed)
                rows.append({"model": name, "arm": arm, "against": against, "metric": metric, "n_seeds": len(seeds),
                             "independent_mean": float(np.mean(per_a)),
                             "independent_std": float(np.std(per_a, ddof=1)) if len(seeds) > 1 else 0.0,
                             "arm_mean": float(np.mean(per_b)),
                             "arm_std": float(np.std(per_b, ddof=1)) if len(seeds) > 1 else 0.0,
                             **{k: stat[k] for k in ("diff", "ci_low", "ci_high", "se", "p_value", "seed_sd")},
                             "meaningful": meaningful, "did_not_learn": dnl})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["p_adjusted"] = np.nan
    for _, g in table.groupby("metric"):
        usable = g[(g["did_not_learn"] == "") & g["meaningful"]]
        table.loc[usable.index, "p_adjusted"] = holm(usable["p_value"].to_numpy())
    table["ci_half_width"] = (table["ci_high"] - table["ci_low"]) / 2
    table["verdict"] = [verdict(r.diff, r.ci_low, r.ci_high, bool(r.meaningful), r.metric,
                                p_adjusted=None if np.isnan(r.p_adjusted) else r.p_adjusted,
                                arm=_contrast_words(r.arm, r.against), did_not_learn=r.did_not_learn)
                        for r in table.itertuples()]
    return table
