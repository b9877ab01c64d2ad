"""Did an arm help? Paired differences over seeds and test cases, Holm's adjustment and the verdict text."""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import t as student_t

from helpers.evaluation.metrics import _macro_f1, _ovr_auc, class_probs, predicted_class, prob_columns

GAIN_METRICS = ("accuracy", "macro_f1", "roc_auc", "agreement")
PRIMARY_METRIC = "accuracy"  # the primary endpoint: test accuracy, arm vs independent (Holm over that family)
# Resamples of test cases behind the case-sampling *variance* of macro-F1 and ROC-AUC differences: a variance settles
# with far fewer resamples than a percentile interval needs (accuracy and agreement need none: per-case formula).
CASE_VARIANCE_RESAMPLES = 200


def _metric_from_probs(metric: str, probs1: np.ndarray, labels: np.ndarray, teacher_pred: np.ndarray) -> float:
    """metric of one seed's predictions: `probs1` is P(class 1) [n] (two classes) or every class's probability
    [n, K]; two classes are taken as K = 2 (class_probs)."""
    probs = class_probs(probs1) if probs1.ndim == 1 else probs1
    preds = predicted_class(probs)
    if metric == "accuracy":
        return float((preds == labels).mean())
    if metric == "macro_f1":
        return _macro_f1(preds, labels, probs.shape[1])
    if metric == "roc_auc":
        return _ovr_auc(labels, probs)
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


def resample_weights(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot, n]: how often each of n cases is drawn in each bootstrap resample (n draws with replacement)."""
    return np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(n_boot)]).astype(float)


def _weighted_auc(score: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC-AUC of `score` for the cases `positive` under each row of case weights [n_boot, n] (ties count half).

    A positive case beats the negatives scored below it and half of those tied with it: with the negatives sorted,
    their weights' running sums at each positive's two search positions give both counts for every resample at once.
    """
    neg_order = np.argsort(score[~positive], kind="stable")
    neg_score = score[~positive][neg_order]
    w_neg = weights[:, ~positive][:, neg_order]
    cum = np.concatenate([np.zeros((weights.shape[0], 1)), np.cumsum(w_neg, axis=1)], axis=1)
    pos_score, w_pos = score[positive], weights[:, positive]
    below = cum[:, np.searchsorted(neg_score, pos_score, side="left")]
    tied_or_below = cum[:, np.searchsorted(neg_score, pos_score, side="right")]
    wins = (w_pos * (below + tied_or_below)).sum(1) / 2
    n_pos, n_neg = w_pos.sum(1), cum[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), wins / (n_pos * n_neg), np.nan)


def weighted_metric_rows(metric: str, probs1: np.ndarray, labels: np.ndarray, teacher_pred: np.ndarray,
                         weights: np.ndarray) -> np.ndarray:
    """metric of each seed's predictions under each bootstrap resample of the cases: [n_boot, n_seeds].

    `weights` [n_boot, n] (resample_weights) counts how often each case is drawn, so one pass per seed serves every
    resample; each value equals `_metric_from_probs` on the resampled cases (tests/test_evaluation.py checks it).
    """
    probs = class_probs(probs1) if probs1.ndim == 2 else probs1  # two classes as K = 2
    k = probs.shape[2]
    out = np.empty((weights.shape[0], probs.shape[0]))
    for s, p in enumerate(probs):
        preds = predicted_class(p)
        if metric in ("accuracy", "agreement"):
            ref = labels if metric == "accuracy" else teacher_pred
            out[:, s] = weights @ (preds == ref).astype(float) / weights.sum(1)
        elif metric == "macro_f1":  # _macro_f1's confusion count, weighted
            cell = labels * k + preds
            cm = np.zeros((weights.shape[0], k * k))
            for c in np.unique(cell):
                cm[:, c] = weights[:, cell == c].sum(1)
            cm = cm.reshape(-1, k, k)
            tp = np.diagonal(cm, axis1=1, axis2=2)
            denom = cm.sum(2) + cm.sum(1)
            present = denom > 0
            f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=present)
            n_present = present.sum(1)
            out[:, s] = np.where(n_present > 0, f1.sum(1) / np.maximum(n_present, 1), 0.0)
        elif metric == "roc_auc":
            if k == 2:  # the two one-vs-rest AUCs are one number (metrics._ovr_auc)
                out[:, s] = _weighted_auc(p[:, 1], labels == 1, weights)
                continue
            aucs = np.stack([_weighted_auc(p[:, c], labels == c, weights) for c in range(k)], axis=1)
            ok = np.isfinite(aucs)
            with np.errstate(invalid="ignore"):
                out[:, s] = np.where(ok.sum(1) >= 2, np.nansum(aucs, 1) / ok.sum(1), np.nan)
        else:
            raise ValueError(f"unknown metric {metric!r}")
    return out


def two_way_se(ms_seed: float, ms_case: float, ms_within: float, n_seeds: int, n_cases: int) -> tuple[float, float]:
    """Standard error and Satterthwaite degrees of freedom of a mean over crossed seeds and cases.

    With d_si = mu + a_s + b_i + e_si (seed, case and seed x case effects), the mean over S seeds and N cases has
    variance sigma_a^2/S + sigma_b^2/N + sigma_e^2/(SN) = (E MS_seed + E MS_case - E MS_res) / (SN). The inputs are
    the mean squares already divided by SN: `ms_seed` = var_s(seed means) / S, `ms_case` = var_i(case means) / N,
    and `ms_within` = the mean over seeds of var_i(d_si) / N, from which MS_res / (SN) = (ms_within - ms_case) /
    (S - 1). A variance component estimated below zero is set to zero (its term leaves the sum), and the degrees of
    freedom follow the terms that remain: S - 1 for seeds, N - 1 for cases, (S - 1)(N - 1) for the interaction.
    """
    if n_seeds < 2:
        return float(np.sqrt(max(ms_case, 0.0))), float(max(n_cases - 1, 1))
    ms_res = max(ms_within - ms_case, 0.0) / (n_seeds - 1)
    return combine_mean_squares(ms_seed, ms_case, ms_res, ms_seed > ms_res, ms_case > ms_res, n_seeds, n_cases)


def combine_mean_squares(ms_seed: float, ms_case: float, ms_res: float, seed_term: bool, case_term: bool,
                         n_seeds: int, n_cases: int) -> tuple[float, float]:
    """two_way_se's standard error and Satterthwaite degrees of freedom from the three mean squares (divided by SN)
    and which of the seed and case components are present (estimated above zero). Shared with the precision plan
    (helpers.evaluation.precision), which knows from its components which terms are present."""
    df_seed, df_case, df_res = n_seeds - 1, n_cases - 1, (n_seeds - 1) * (n_cases - 1)
    if seed_term and case_term:
        terms = [(ms_seed, df_seed), (ms_case, df_case), (ms_res, df_res)]
        var = ms_seed + ms_case - ms_res
    elif seed_term:
        terms, var = [(ms_seed, df_seed)], ms_seed
    elif case_term:
        terms, var = [(ms_case, df_case)], ms_case
    else:
        terms, var = [(ms_res, df_res)], ms_res
    denom = sum(m * m / d for m, d in terms)
    df = var * var / denom if denom > 0 else float(df_seed)
    return float(np.sqrt(var)), float(df)


def paired_difference(probs_a: np.ndarray, probs_b: np.ndarray, labels: np.ndarray, teacher_pred: np.ndarray,
                      metric: str, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Mean over seeds of metric(b) - metric(a), with an interval that treats seeds and test cases as random.

    `probs_a`, `probs_b`: arrays [n_seeds, n_cases] of P(label = 1), or [n_seeds, n_cases, K] of every class's
    probability for K > 2 classes, paired by seed (same seed, same cases).
    Seeds and test cases are two crossed random factors (two_way_se): the standard error counts the seed, case and
    seed x case variance once each, and the interval and two-sided p-value use a t distribution with Satterthwaite's
    degrees of freedom. For accuracy and agreement the per-case differences give the mean squares exactly; macro-F1
    and ROC-AUC have no per-case form, so their case and within-seed terms come from `n_boot` resamples of the
    cases, the same resamples for every seed and both arms. The verdict holds for new seeds and new cases from the
    same population; the labelled training set is held fixed (a new training draw is not part of the interval).
    """
    probs_a, probs_b = np.atleast_2d(probs_a), np.atleast_2d(probs_b)
    if probs_a.ndim == 2:  # two classes as K = 2
        probs_a, probs_b = class_probs(probs_a), class_probs(probs_b)
    n_seeds, n = probs_a.shape[:2]
    diffs = _metric_rows(metric, probs_b, labels, teacher_pred) - _metric_rows(metric, probs_a, labels, teacher_pred)
    point = float(np.mean(diffs))
    ms_seed = float(np.var(diffs, ddof=1)) / n_seeds if n_seeds > 1 else 0.0
    if metric in ("accuracy", "agreement"):  # per-case form: the mean squares need no resampling
        ref = labels if metric == "accuracy" else teacher_pred
        d = ((predicted_class(probs_b) == ref).astype(float)
             - (predicted_class(probs_a) == ref).astype(float))  # [n_seeds, n]
        return per_case_interval(d, level)
    weights = resample_weights(n, n_boot, np.random.default_rng(seed))
    boot = (weighted_metric_rows(metric, probs_b, labels, teacher_pred, weights)
            - weighted_metric_rows(metric, probs_a, labels, teacher_pred, weights))  # [n_boot, n_seeds]
    ms_case = float(np.nanvar(np.nanmean(boot, axis=1), ddof=1))
    ms_within = float(np.nanmean(np.nanvar(boot, axis=0, ddof=1)))
    return _t_interval(point, diffs, *two_way_se(ms_seed, ms_case, ms_within, n_seeds, n), level)


def per_case_interval(d: np.ndarray, level: float = 0.95) -> dict[str, float]:
    """Mean of a complete [n_seeds, n_cases] table of per-case values (a paired difference, or a score), with the
    interval of paired_difference: seeds and cases crossed random factors (two_way_se), t with Satterthwaite's
    degrees of freedom. Accuracy differences and attribution scores both come in this form."""
    d = np.atleast_2d(np.asarray(d, dtype=float))
    n_seeds, n = d.shape
    if n < 2 or np.isnan(d).any():
        raise ValueError(f"per_case_interval needs a complete table of at least 2 cases, got shape {d.shape} with "
                         f"{int(np.isnan(d).sum())} missing")
    return _t_interval(float(d.mean()), d.mean(axis=1), *two_way_se(*case_mean_squares(d), n_seeds, n), level)


def case_mean_squares(d: np.ndarray) -> tuple[float, float, float]:
    """two_way_se's inputs from a complete [n_seeds, n_cases] table: var(seed means) / S (0 for one seed),
    var(case means) / N and the mean over seeds of var_i(d_si) / N."""
    n_seeds, n = d.shape
    ms_seed = float(np.var(d.mean(axis=1), ddof=1)) / n_seeds if n_seeds > 1 else 0.0
    ms_case = float(np.var(d.mean(0), ddof=1)) / n
    ms_within = float(np.mean(np.var(d, axis=1, ddof=1))) / n
    return ms_seed, ms_case, ms_within


def _t_interval(point: float, diffs: np.ndarray, se: float, df: float, level: float) -> dict[str, float]:
    """The interval, two-sided p-value and seed spread of a mean with standard error `se` and `df` degrees of
    freedom; `diffs` are the per-seed means."""
    n_seeds = len(diffs)
    seed_sd = float(np.std(diffs, ddof=1)) if n_seeds > 1 else 0.0
    if not np.isfinite(point) or not np.isfinite(se):
        return {"diff": point, "ci_low": np.nan, "ci_high": np.nan, "se": se, "df": df, "p_value": np.nan,
                "seed_sd": seed_sd, "n_seeds": n_seeds}
    crit = float(student_t.ppf(0.5 + level / 2, df))
    if se == 0:
        p_value = 1.0 if point == 0 else 0.0
    else:
        p_value = float(2 * student_t.sf(abs(point) / se, df))
    return {"diff": point, "ci_low": point - crit * se, "ci_high": point + crit * se, "se": se, "df": df,
            "p_value": p_value, "seed_sd": seed_sd, "n_seeds": n_seeds}


def decided_sign(ci_low: float, ci_high: float, p_adjusted: float | None = None) -> int:
    """+1 (helped) or -1 (hurt) when the comparison decides a sign, else 0: the unadjusted interval excludes zero
    and, for a primary comparison (`p_adjusted` given and finite), the Holm-adjusted p is below 0.05."""
    if not (np.isfinite(ci_low) and np.isfinite(ci_high)):
        return 0
    if p_adjusted is not None and np.isfinite(p_adjusted) and p_adjusted >= 0.05:
        return 0
    return 1 if ci_low > 0 else -1 if ci_high < 0 else 0


def verdict(diff: float, ci_low: float, ci_high: float, meaningful: bool = True, metric: str = "accuracy",
            teacher_name: str = "the teacher", p_adjusted: float | None = None, arm: str = "distillation",
            did_not_learn: str = "", secondary: bool = False) -> str:
    """One line: did the arm help, with the interval and the Holm-adjusted p; 'no evidence' when it covers zero.

    `secondary`: a contrast outside the primary family (another metric, or another reference than independent):
    read from its unadjusted interval, and labelled so.
    """
    if not meaningful:
        return (f"not meaningful: {teacher_name} collapsed to the majority class, so its soft targets carry no "
                f"signal to distil")
    if did_not_learn:
        return f"not comparable: {did_not_learn}"
    span = f"{diff:+.3f} (95% CI {ci_low:+.3f} to {ci_high:+.3f}"
    span += f", Holm-adjusted p = {p_adjusted:.3g})" if p_adjusted is not None and np.isfinite(p_adjusted) else ")"
    if np.isnan(ci_low) or np.isnan(ci_high):
        return f"no evidence either way: {metric} {span}"
    if secondary:
        sign = decided_sign(ci_low, ci_high)
        words = f"{arm} helped" if sign > 0 else f"{arm} hurt" if sign < 0 else "no evidence of a difference"
        return f"secondary, unadjusted: {words}: {metric} {span}"
    sign = decided_sign(ci_low, ci_high, p_adjusted)
    if sign:
        return f"{arm} {'helped' if sign > 0 else 'hurt'}: {metric} {span}"
    if ci_low > 0 or ci_high < 0:
        return f"no evidence after adjusting for multiple comparisons: {metric} {span}"
    return f"no evidence of a difference: {metric} {span}"


ARM_WORDS = {"distilled": "distillation", "distilled_transfer": "distillation with the transfer set",
             "pseudo_label_transfer": "pseudo-labels on the transfer set", "chain": "chain distillation",
             "distilled_hidden": "distillation with hidden states (TinyBERT)",
             "distilled_attention": "distillation with attention relations (MiniLM)",
             "distilled_attribution": "distillation with attribution maps (AD-KD)"}
BEYOND_WORDS = {"distilled_hidden": "the hidden-state term", "distilled_attention": "the attention-relation term",
                "distilled_attribution": "the attribution term"}


def _contrast_words(arm: str, against: str) -> str:
    """The subject of a verdict line: what the arm changes over its reference."""
    if against == "independent":
        return ARM_WORDS.get(arm, arm)
    if (arm, against) == ("chain", "distilled"):
        return "the chain over direct distillation"
    if against == "distilled" and arm in BEYOND_WORDS:
        return f"{BEYOND_WORDS[arm]} beyond the logits"
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
    arm_mean/std, diff, ci_low, ci_high (unadjusted 95%), se, df (Satterthwaite), p_value, endpoint (primary: test
    accuracy against independent; secondary: every other row), p_adjusted (Holm over the primary rows; empty for
    secondary rows), meaningful, did_not_learn, verdict. Every arm is compared with `independent`; a student with both
    transfer arms also gets distilled_transfer against pseudo_label_transfer (same extra cases, soft vs hard
    targets), a student with the chain arm also gets chain against distilled (chain_vs_direct: the same loss
    from the previous, larger student instead of the teacher), and each beyond-logit arm also gets itself against
    distilled (the same logit loss plus one inner term: what that term adds). A student whose runs predict one
    class on validation in every seed is reported as not comparable rather than as a zero difference.
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
        # the beyond-logit arms against distilled: what the extra signal adds beyond the logits
        pairs += [("distilled", arm) for arm in arms if arm in BEYOND_WORDS and "distilled" in arms]
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
                             **{k: stat[k] for k in ("diff", "ci_low", "ci_high", "se", "df", "p_value", "seed_sd")},
                             "meaningful": meaningful, "did_not_learn": dnl})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    # The primary endpoint: test accuracy, each arm against independent; Holm adjusts that family alone. Every other
    # metric and contrast is secondary: reported with its unadjusted interval and p, and labelled so.
    primary = (table["metric"] == PRIMARY_METRIC) & (table["against"] == "independent")
    table["endpoint"] = np.where(primary, "primary", "secondary")
    table["p_adjusted"] = np.nan
    usable = table[primary & (table["did_not_learn"] == "") & table["meaningful"]]
    table.loc[usable.index, "p_adjusted"] = holm(usable["p_value"].to_numpy())
    table["ci_half_width"] = (table["ci_high"] - table["ci_low"]) / 2
    table["verdict"] = [verdict(r.diff, r.ci_low, r.ci_high, bool(r.meaningful), r.metric,
                                p_adjusted=None if np.isnan(r.p_adjusted) else r.p_adjusted,
                                arm=_contrast_words(r.arm, r.against), did_not_learn=r.did_not_learn,
                                secondary=r.endpoint == "secondary")
                        for r in table.itertuples()]
    return table
