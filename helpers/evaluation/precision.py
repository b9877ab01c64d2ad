"""How precise a paired contrast would be with other numbers of seeds and cases, and what a target half-width takes.

A contrast's per-case, per-seed differences d_si = mu + a_s + b_i + e_si (seed, case and seed x case effects) have
three variance components. `variance_components` estimates them from a complete [seeds x cases] table, from the mean
squares the run's own interval uses (verdicts.case_mean_squares) and with its rule for a component below zero;
`projected_interval` puts the expected mean squares of another design (S seeds, N cases) through the same
two_way_se, so at the run's own design it gives back the run's interval, and elsewhere the interval a run of that
size would expect to get. `seeds_needed` is the fewest seeds whose projected half-width is at most a target.

The projection inherits the uncertainty of the components: with 5 seeds the seed variance rests on 4 degrees of
freedom, so a plan from a small run is a first estimate, and the run it asks for measures its own interval.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import t as student_t

from helpers.evaluation.verdicts import case_mean_squares, combine_mean_squares, two_way_se

MAX_SEEDS = 1000  # seeds_needed looks no further


@dataclass(frozen=True)
class Components:
    """Variance of the seed, case and seed x case effects (each at least 0)."""

    seed: float
    case: float
    residual: float


def variance_components(d: np.ndarray) -> Components:
    """The three components of a complete [n_seeds, n_cases] table (ANOVA estimates, negative ones set to 0).

    With one seed the seed and interaction terms cannot be told apart: the case term then holds all the variance
    and the seed term is 0 (the interval covers that one training run only)."""
    d = np.atleast_2d(np.asarray(d, dtype=float))
    n_seeds, n_cases = d.shape
    if n_cases < 2 or np.isnan(d).any():
        raise ValueError(f"variance_components needs a complete table of at least 2 cases, got shape {d.shape}")
    if n_seeds < 2:
        return Components(seed=0.0, case=float(np.var(d[0], ddof=1)), residual=0.0)
    ms_seed, ms_case, ms_within = case_mean_squares(d)  # each divided by S N, as two_way_se reads them
    ms_res = max(ms_within - ms_case, 0.0) / (n_seeds - 1)
    return Components(seed=n_seeds * max(ms_seed - ms_res, 0.0), case=n_cases * max(ms_case - ms_res, 0.0),
                      residual=n_seeds * n_cases * ms_res)


def projected_interval(c: Components, n_seeds: int, n_cases: int, level: float = 0.95) -> tuple[float, float, float]:
    """(half-width, standard error, degrees of freedom) expected of the contrast over `n_seeds` x `n_cases`: the
    expected mean squares of that design through the run's own interval formula (two_way_se)."""
    if n_seeds < 1 or n_cases < 2:
        raise ValueError(f"a design needs at least 1 seed and 2 cases, got {n_seeds} x {n_cases}")
    cell = c.residual / (n_seeds * n_cases)  # E[MS_res] / (SN); E[MS_seed] / (SN) adds the seed term, and so on
    ms_seed, ms_case = c.seed / n_seeds + cell, c.case / n_cases + cell
    if n_seeds < 2:
        se, df = two_way_se(ms_seed, ms_case, ms_case, n_seeds, n_cases)
    else:
        se, df = combine_mean_squares(ms_seed, ms_case, cell, c.seed > 0, c.case > 0, n_seeds, n_cases)
    return float(student_t.ppf(0.5 + level / 2, df)) * se, se, df


def seeds_needed(c: Components, target: float, n_cases: int, level: float = 0.95,
                 max_seeds: int = MAX_SEEDS) -> int | None:
    """The fewest seeds (at least 2) whose projected half-width over `n_cases` is at most `target`; None when even
    `max_seeds` seeds do not reach it (the case term alone is too wide at this many cases)."""
    if target <= 0:
        raise ValueError(f"target half-width must be positive, got {target}")
    if projected_interval(c, max_seeds, n_cases, level)[0] > target:
        return None
    lo, hi = 1, max_seeds  # half-width(lo) > target >= half-width(hi); it falls as seeds grow
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if projected_interval(c, mid, n_cases, level)[0] <= target else (mid, hi)
    return max(hi, 2)


PLAN_COLUMNS = ["model", "arm", "against", "metric", "n_seeds", "n_cases", "ci_half_width", "seed_sd_term",
                "case_sd_term", "target", "met", "seeds_needed", "test_cases", "seeds_needed_all_cases"]


def precision_plan(contrasts: pd.DataFrame, target: float, test_cases: int, metric: str = "cosine") -> pd.DataFrame:
    """Per contrast of `metric` (rows of a contrasts table with var_seed, var_case and var_residual): its
    half-width, the seed and case terms of its standard error, whether it meets `target`, and the seeds a run would
    need for the target with the same cases and with every one of the `test_cases` (none where the run explained
    one seed: it measured no seed variance; none where no number of seeds reaches the target at those cases)."""
    rows = []
    for r in contrasts[contrasts["metric"] == metric].itertuples():
        c = Components(seed=r.var_seed, case=r.var_case, residual=r.var_residual)
        known = r.n_seeds >= 2  # one seed measures no seed variance: no plan for seeds
        rows.append({"model": r.model, "arm": r.arm, "against": r.against, "metric": metric,
                     "n_seeds": int(r.n_seeds), "n_cases": int(r.n_cases), "ci_half_width": r.ci_half_width,
                     "seed_sd_term": float(np.sqrt(c.seed / r.n_seeds)),
                     "case_sd_term": float(np.sqrt(c.case / r.n_cases + c.residual / (r.n_seeds * r.n_cases))),
                     "target": target, "met": bool(r.ci_half_width <= target),
                     "seeds_needed": seeds_needed(c, target, int(r.n_cases)) if known else None,
                     "test_cases": int(test_cases),
                     "seeds_needed_all_cases": seeds_needed(c, target, int(test_cases)) if known else None})
    plan = pd.DataFrame(rows, columns=PLAN_COLUMNS)
    for col in ("seeds_needed", "seeds_needed_all_cases"):
        plan[col] = plan[col].astype("Int64")
    return plan
