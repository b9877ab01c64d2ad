"""Comparing attributions: agreement metrics, bootstrap intervals, faithfulness and rationale recall.

Every vector here is one example's unit scores (tokens, or words when word pieces are aggregated), with
[CLS], [SEP] and padding already removed and L2-normalised.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from helpers.evaluation.precision import variance_components
from helpers.evaluation.verdicts import decided_sign, holm, per_case_interval
from helpers.training.loop import predict_logits

AGREEMENT_METRICS = ["cosine", "spearman", "topk_jaccard", "sign_agreement"]
# Faithfulness of each model's own attributions, for two classes: the one the model itself predicts (`_own`: does
# the explanation account for the model's own decision?) and the one the teacher predicts (`_teacher`: the decision
# every model explains in the agreement metrics). Rationale recall ranks units by |score| for the teacher's class.
FAITHFULNESS_METRICS = ["comprehensiveness_own", "sufficiency_own", "comprehensiveness_teacher",
                        "sufficiency_teacher", "rationale_recall"]
# The same removal for the teacher's class with the units ranked at random (one seeded permutation per case and
# model): the floor each model's comprehensiveness and sufficiency are judged against.
RANDOM_METRICS = ["comprehensiveness_random", "sufficiency_random"]
PRIMARY_ATTRIBUTION_METRIC = "cosine"  # the attribution family: cosine agreement, every contrast, Holm-adjusted
TEACHER_MODES = ("teacher", "reference")  # the teacher and the teacher retrained with other seeds
# Which convergence-delta flags rule a per-example value out of the means (the raw value stays in per_example.csv):
# agreement compares the model's teacher-class attributions with the teacher's, so both must be sound.
EXCLUDED_BY = {**dict.fromkeys(AGREEMENT_METRICS, ("flagged", "teacher_flagged")),
               "comprehensiveness_own": ("flagged_own",), "sufficiency_own": ("flagged_own",),
               "comprehensiveness_teacher": ("flagged",), "sufficiency_teacher": ("flagged",),
               "rationale_recall": ("flagged",), "comprehensiveness_random": (), "sufficiency_random": ()}
FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5)
# Sign agreement ignores units below this share of the example's largest |score| in both vectors: near-zero
# scores flip sign on numerical noise and would otherwise dominate long, mostly irrelevant texts.
SIGN_NEGLIGIBLE = 0.05


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity (NaN when either vector is zero)."""
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else math.nan


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of the signed scores (NaN when fewer than 2 units or a constant vector)."""
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(spearmanr(a, b).statistic)


def top_units(a: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k units with the largest |score| (ties broken by position)."""
    return np.argsort(-np.abs(a), kind="stable")[: min(k, len(a))]


def topk_jaccard(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Jaccard overlap of the top-k units by |score|."""
    if len(a) == 0:
        return math.nan
    sa, sb = set(top_units(a, k).tolist()), set(top_units(b, k).tolist())
    return len(sa & sb) / len(sa | sb)


def sign_agreement(a: np.ndarray, b: np.ndarray, negligible: float = SIGN_NEGLIGIBLE) -> float:
    """Share of units with equal score signs, among units non-negligible in either vector."""
    if len(a) == 0:
        return math.nan
    keep = (np.abs(a) >= negligible * np.abs(a).max()) & (np.abs(a) > 0)
    keep |= (np.abs(b) >= negligible * np.abs(b).max()) & (np.abs(b) > 0)
    if not keep.any():
        return math.nan
    return float(np.mean(np.sign(a[keep]) == np.sign(b[keep])))


def compare(a: np.ndarray, b: np.ndarray, k: int) -> dict[str, float]:
    """All four agreement metrics between two unit-score vectors of one example."""
    if len(a) != len(b):
        raise ValueError(f"score vectors differ in length ({len(a)} vs {len(b)}): not the same example units")
    return {"cosine": cosine(a, b), "spearman": spearman(a, b), "topk_jaccard": topk_jaccard(a, b, k),
            "sign_agreement": sign_agreement(a, b)}


def bootstrap_mean(values, n_boot: int, seed: int = 0, level: float = 0.95) -> tuple[float, float, float, int]:
    """(mean, ci_low, ci_high, n) of the non-NaN values, percentile bootstrap over them."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return math.nan, math.nan, math.nan, 0
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1) if n_boot > 0 else np.array([x.mean()])
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(x.mean()), float(lo), float(hi), len(x)


def cue_units(offsets: np.ndarray, units: list[list[int]], spans) -> np.ndarray:
    """Which units overlap a rationale span: token char offsets [L, 2] against (start, end, cue) spans."""
    out = np.zeros(len(units), dtype=bool)
    for u, positions in enumerate(units):
        for p in positions:
            s, e = int(offsets[p][0]), int(offsets[p][1])
            if any(s < end and e > start for start, end, *_ in spans):
                out[u] = True
                break
    return out


def rationale_recall(scores: np.ndarray, cues: np.ndarray, k: int) -> float:
    """Share of cue units among the top-k units by |score|, over min(k, number of cue units)."""
    n_cues = int(cues.sum())
    if n_cues == 0:
        return math.nan
    return float(cues[top_units(scores, k)].sum()) / min(k, n_cues)


def random_recall(n_units: int, n_cues: int, k: int) -> float:
    """Expected rationale recall@k of a uniformly random ranking."""
    if n_cues == 0 or n_units == 0:
        return math.nan
    return min(k, n_units) * n_cues / n_units / min(k, n_cues)


@torch.no_grad()
def faithfulness(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, units: list[list[list[int]]],
                 scores: list[np.ndarray], targets: torch.Tensor, replacement_id: int,
                 fractions=FRACTIONS, batch_size: int = 64, precision: str = "fp32") -> tuple[np.ndarray, np.ndarray]:
    """Per-example (comprehensiveness, sufficiency): AOPC of the explained class's probability drop when the
    top fractions of units (ranked by signed score, i.e. evidence for that class) are replaced / kept alone.

    Replaced tokens keep their attention mask, so positions and length stay fixed and only content is removed.
    """
    model.eval()
    device = input_ids.device
    variants, owners = [], []
    for i, (ex_units, s) in enumerate(zip(units, scores)):
        order = np.argsort(-s, kind="stable")
        for frac in fractions:
            top = order[: max(1, math.ceil(frac * len(order)))] if len(order) else order
            removed = input_ids[i].clone()
            kept = input_ids[i].clone()
            top_set = set(top.tolist())
            for u, positions in enumerate(ex_units):
                target = removed if u in top_set else kept
                target[positions] = replacement_id
            variants += [removed, kept]
            owners.append(i)
    full_p = _class_prob(model, input_ids, attention_mask, targets, batch_size, precision)
    ids = torch.stack(variants)
    masks = attention_mask[torch.tensor(owners, device=device).repeat_interleave(2)]
    tgt = targets[torch.tensor(owners, device=device).repeat_interleave(2)]
    probs = _class_prob(model, ids, masks, tgt, batch_size, precision).reshape(len(units), len(fractions), 2)
    drop = full_p[:, None, None] - probs
    return drop[:, :, 0].mean(axis=1), drop[:, :, 1].mean(axis=1)


def _class_prob(model, ids: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor, batch_size: int,
                precision: str = "fp32") -> np.ndarray:
    """Probability of each example's target class."""
    logits = predict_logits(model, {"input_ids": ids, "attention_mask": mask}, batch_size, device=ids.device,
                            precision=precision)
    p = torch.softmax(torch.from_numpy(logits), dim=-1)
    return p.gather(1, targets.cpu()[:, None])[:, 0].numpy()


def excluded(per_example: pd.DataFrame, metric: str) -> pd.Series:
    """Rows whose `metric` value is left out of every mean: a delta flag it depends on is set (EXCLUDED_BY);
    rows without those columns (hand-made frames) exclude nothing."""
    out = pd.Series(False, index=per_example.index)
    for col in EXCLUDED_BY.get(metric, ()):
        if col in per_example.columns:
            out |= per_example[col].fillna(False).astype(bool)
    return out


def summarise(per_example: pd.DataFrame, n_boot: int, seed: int = 0) -> pd.DataFrame:
    """Mean and bootstrap 95% CI over examples, per model x mode x seed (one training run) and metric; examples
    excluded for their convergence delta are left out and counted in `n_excluded`."""
    rows = []
    for (model, mode, s), g in per_example.groupby(["model", "mode", "seed"], sort=False):
        for metric in AGREEMENT_METRICS + FAITHFULNESS_METRICS + RANDOM_METRICS:
            if metric not in g.columns:
                continue
            has = g[metric].notna()
            out = excluded(g, metric) & has
            mean, lo, hi, n = bootstrap_mean(g.loc[has & ~out, metric], n_boot, seed)
            if n or out.any():
                rows.append({"model": model, "mode": mode, "seed": s, "metric": metric, "mean": mean,
                             "ci_low": lo, "ci_high": hi, "n": n, "n_excluded": int(out.sum())})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


SUMMARY_COLUMNS = ["model", "mode", "seed", "metric", "mean", "ci_low", "ci_high", "n", "n_excluded"]
AGREEMENT_COLUMNS = ["model", "mode", "metric", "mean", "ci_low", "ci_high", "ci_half_width", "se", "df", "seed_sd",
                     "n_cases", "n_seeds", "n_excluded"]
CONTRAST_COLUMNS = ["model", "arm", "against", "metric", "diff", "ci_low", "ci_high", "ci_half_width", "se", "df",
                    "p_value", "seed_sd", "var_seed", "var_case", "var_residual", "n_cases", "n_seeds", "n_excluded",
                    "endpoint", "p_adjusted", "verdict"]


def _case_table(g: pd.DataFrame, metric: str) -> pd.DataFrame:
    """[case id x seed] values of `metric` in one model x mode's rows, excluded values (EXCLUDED_BY) as NaN."""
    kept = g[metric].where(~excluded(g, metric))
    return kept.groupby([g["id"], g["seed"]]).mean().unstack("seed")


def _interval_row(table: pd.DataFrame) -> dict | None:
    """per_case_interval over the cases complete in every seed of `table` [case x seed] (None under 2 cases)."""
    complete = table.dropna()
    if len(complete) < 2:
        return None
    d = complete.to_numpy().T
    st, comp = per_case_interval(d), variance_components(d)
    return {"mean": st["diff"], "ci_low": st["ci_low"], "ci_high": st["ci_high"],
            "ci_half_width": (st["ci_high"] - st["ci_low"]) / 2, "se": st["se"], "df": st["df"],
            "p_value": st["p_value"], "seed_sd": st["seed_sd"], "var_seed": comp.seed, "var_case": comp.case,
            "var_residual": comp.residual, "n_cases": len(complete),
            "n_seeds": int(table.shape[1]), "n_excluded": int(len(table) - len(complete))}


def arm_agreement(per_example: pd.DataFrame) -> pd.DataFrame:
    """Per model x mode (every student arm, the reference teachers, the teacher for faithfulness) and metric: the
    mean over its explained seeds and cases with the two-way interval of the accuracy verdicts (seeds and cases
    crossed random factors; evaluation.verdicts.per_case_interval). A case excluded (|convergence delta|) or missing
    in any seed leaves the table and is counted in `n_excluded`."""
    rows = []
    for (model, mode), g in per_example.groupby(["model", "mode"], sort=False):
        for metric in AGREEMENT_METRICS + FAITHFULNESS_METRICS + RANDOM_METRICS:
            if metric not in g.columns or g[metric].isna().all():
                continue
            row = _interval_row(_case_table(g, metric))
            if row is not None:
                rows.append({"model": model, "mode": mode, "metric": metric, **row})
    return pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)


def contrast_pairs(arms: list[str]) -> list[tuple[str, str]]:
    """(against, arm) pairs of one student: every arm against independent, and every arm but independent and
    distilled against distilled (what the arm adds beyond the logits)."""
    pairs = [("independent", a) for a in arms if a != "independent" and "independent" in arms]
    return pairs + [("distilled", a) for a in arms if a not in ("independent", "distilled") and "distilled" in arms]


def attribution_contrasts(per_example: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Per student, contrast (contrast_pairs) and metric: the paired difference arm - against, one value per case and
    seed (same case, same seed), with the two-way interval of the accuracy verdicts. The attribution family is
    cosine agreement over every contrast: Holm adjusts those rows (`endpoint` primary); every other metric is
    secondary, read from its unadjusted interval. Cases excluded in either arm or any seed are counted in
    `n_excluded`."""
    rows = []
    students = per_example[~per_example["mode"].isin(TEACHER_MODES)]
    for model, g in students.groupby("model", sort=False):
        arms = list(dict.fromkeys(g["mode"]))
        for against, arm in contrast_pairs(arms):
            for metric in AGREEMENT_METRICS + FAITHFULNESS_METRICS:
                if metric not in g.columns or g[metric].isna().all():
                    continue
                ta, tb = _case_table(g[g["mode"] == against], metric), _case_table(g[g["mode"] == arm], metric)
                seeds = sorted(set(ta.columns) & set(tb.columns))
                ids = ta.index.intersection(tb.index)
                row = _interval_row(tb.loc[ids, seeds] - ta.loc[ids, seeds]) if seeds else None
                if row is not None:
                    row["diff"] = row.pop("mean")
                    rows.append({"model": model, "arm": arm, "against": against, "metric": metric, **row})
    table = pd.DataFrame(rows, columns=CONTRAST_COLUMNS[:-3])
    primary = table["metric"] == PRIMARY_ATTRIBUTION_METRIC
    table["endpoint"] = np.where(primary, "primary", "secondary")
    table["p_adjusted"] = np.nan
    usable = table[primary & table["p_value"].notna()]
    table.loc[usable.index, "p_adjusted"] = holm(usable["p_value"].to_numpy())
    table["verdict"] = [attribution_verdict(r.metric, r.arm, r.against, r.diff, r.ci_low, r.ci_high,
                                            None if np.isnan(r.p_adjusted) else r.p_adjusted)
                        for r in table.itertuples()]
    return table[CONTRAST_COLUMNS]


def attribution_verdict(metric: str, arm: str, against: str, diff: float, ci_low: float, ci_high: float,
                        p_adjusted: float | None) -> str:
    """One line: did the arm change `metric` against `against`, with the interval (and Holm p for the family)."""
    span = f"{diff:+.3f} (95% CI {ci_low:+.3f} to {ci_high:+.3f}"
    span += f", Holm-adjusted p = {p_adjusted:.3g})" if p_adjusted is not None else ")"
    sign = decided_sign(ci_low, ci_high, p_adjusted)
    what = "agreement with the teacher" if metric in AGREEMENT_METRICS else metric.replace("_", " ")
    head = f"{arm} vs {against}"
    if p_adjusted is None:
        head = f"secondary, unadjusted: {head}"
    if sign:
        return f"{head}: {'raised' if sign > 0 else 'lowered'} {what}: {metric} {span}"
    if ci_low > 0 or ci_high < 0:
        return f"{head}: no evidence after adjusting for multiple comparisons: {metric} {span}"
    return f"{head}: no evidence of a difference in {what}: {metric} {span}"


def scope_of(per_example: pd.DataFrame) -> str:
    """interval_scope from a per_example table: its cases, student seeds and reference teachers."""
    seeds = per_example.loc[~per_example["mode"].isin(TEACHER_MODES), "seed"].nunique()
    n_ref = per_example.loc[per_example["mode"] == "reference", "seed"].nunique()
    return interval_scope(int(per_example["id"].nunique()), max(int(seeds), 1), int(n_ref))


def interval_scope(n_cases: int, n_seeds: int, n_references: int) -> str:
    """What the attribution intervals cover, from the numbers of cases, student seeds and reference teachers."""
    ref = (f"The reference is the teacher retrained with {n_references} other seed{'s' if n_references != 1 else ''}"
           f" and explained on the same cases." if n_references else
           "No reference teacher was trained (reference_seeds []): the agreements have no teacher-vs-teacher scale.")
    if n_seeds <= 1:
        return (f"Attribution intervals cover the {n_cases} explained test cases of one training run per student and "
                f"arm (one seed explained): they say how precisely that run was measured, not how much a retrained "
                f"student would differ (pass more attribution_seeds for that). {ref}")
    return (f"Attribution intervals treat the {n_cases} explained test cases and the {n_seeds} student seeds as "
            f"crossed random factors, the same two-way interval as the accuracy verdicts (each seed a separate "
            f"training run); the attribution family (cosine, every contrast) is Holm-adjusted. {ref}")
