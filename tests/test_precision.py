"""The precision plan: variance components of a seeds x cases table, the interval they project to another design,
and the seeds a target half-width takes. The projections are checked against simulated runs of that design."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers.attribution.agreement import attribution_contrasts
from helpers.evaluation.precision import (
    Components,
    precision_plan,
    projected_interval,
    seeds_needed,
    variance_components,
)
from helpers.evaluation.verdicts import per_case_interval
from helpers.views.attribution import precision_table

# Components shaped like the beyond-logit arms' attribution cosine contrasts (runs/beyond: seed sd ~0.07, a wide case
# term, a seed x case interaction).
TRUE = Components(seed=0.07 ** 2, case=0.25 ** 2, residual=0.2 ** 2)


def simulate(c: Components, n_seeds: int, n_cases: int, rng: np.random.Generator, mu: float = 0.0) -> np.ndarray:
    return (mu + rng.normal(0, np.sqrt(c.seed), (n_seeds, 1)) + rng.normal(0, np.sqrt(c.case), (1, n_cases))
            + rng.normal(0, np.sqrt(c.residual), (n_seeds, n_cases)))


def half_width(d: np.ndarray) -> float:
    st = per_case_interval(d)
    return (st["ci_high"] - st["ci_low"]) / 2


def test_the_projection_at_the_runs_own_design_is_the_runs_interval():
    rng = np.random.default_rng(0)
    for n_seeds, n_cases in [(5, 80), (3, 40), (12, 200)]:
        d = simulate(TRUE, n_seeds, n_cases, rng)
        half, se, df = projected_interval(variance_components(d), n_seeds, n_cases)
        st = per_case_interval(d)
        assert se == pytest.approx(st["se"], rel=1e-9)
        assert df == pytest.approx(st["df"], rel=1e-9)
        assert half == pytest.approx(half_width(d), rel=1e-9)


def test_the_components_are_recovered_from_a_large_table():
    d = simulate(TRUE, 200, 600, np.random.default_rng(1))
    c = variance_components(d)
    assert c.seed == pytest.approx(TRUE.seed, rel=0.25)
    assert c.case == pytest.approx(TRUE.case, rel=0.15)
    assert c.residual == pytest.approx(TRUE.residual, rel=0.02)


def test_a_component_estimated_below_zero_is_zero():
    """Pure noise has no seed or case effect: their estimates fall below zero about half the time and are set to 0."""
    rng = np.random.default_rng(2)
    comps = [variance_components(rng.normal(0, 0.2, (3, 50))) for _ in range(40)]
    assert all(c.seed >= 0 and c.case >= 0 for c in comps)
    assert any(c.seed == 0 for c in comps) and any(c.case == 0 for c in comps)


def test_the_projected_half_width_is_what_runs_of_that_design_get():
    """From the true components, the projection to 20 seeds x 400 cases matches the mean half-width of simulated
    runs of that size (the interval's width varies from run to run around it)."""
    rng = np.random.default_rng(3)
    expected = projected_interval(TRUE, 20, 400)[0]
    observed = np.mean([half_width(simulate(TRUE, 20, 400, rng)) for _ in range(300)])
    assert observed == pytest.approx(expected, rel=0.05)
    # and it is not the small run's width: the seed term shrank with the seeds
    assert expected < 0.6 * projected_interval(TRUE, 5, 400)[0]


def test_seeds_needed_is_the_fewest_seeds_that_reach_the_target():
    target = 0.05
    s = seeds_needed(TRUE, target, 400)
    assert projected_interval(TRUE, s, 400)[0] <= target < projected_interval(TRUE, s - 1, 400)[0]
    rng = np.random.default_rng(4)
    realised = np.mean([half_width(simulate(TRUE, s, 400, rng)) for _ in range(300)])
    assert realised == pytest.approx(target, abs=0.1 * target)
    # more cases never ask for more seeds
    assert seeds_needed(TRUE, target, 2000) <= s


def test_a_target_the_case_term_alone_exceeds_is_not_reachable():
    wide_cases = Components(seed=0.0001, case=0.5 ** 2, residual=0.01)
    # at 80 cases the case term's half-width is about 2 * 0.5 / sqrt(80) = 0.11 whatever the seeds
    assert seeds_needed(wide_cases, 0.03, 80) is None
    assert seeds_needed(wide_cases, 0.03, 2000) is not None
    with pytest.raises(ValueError, match="target"):
        seeds_needed(wide_cases, 0.0, 80)


def _per_example(n_seeds: int, n_cases: int, effect: Components, rng: np.random.Generator) -> pd.DataFrame:
    """A per_example table of one student's independent and distilled arms whose cosine differs by `effect`."""
    base = rng.uniform(0.2, 0.8, (n_seeds, n_cases))
    rows = []
    for mode, values in [("independent", base), ("distilled", base + simulate(effect, n_seeds, n_cases, rng))]:
        for s in range(n_seeds):
            for i in range(n_cases):
                rows.append({"model": "S", "mode": mode, "seed": s, "id": f"c{i}", "cosine": values[s, i],
                             "flagged": False, "teacher_flagged": False})
    return pd.DataFrame(rows)


def test_the_plan_reads_the_contrasts_table_and_says_what_the_target_takes():
    rng = np.random.default_rng(5)
    contrasts = attribution_contrasts(_per_example(5, 80, TRUE, rng))
    plan = precision_plan(contrasts, 0.03, test_cases=2000)
    row = plan.iloc[0]
    assert (row.model, row.arm, row.against, row.n_seeds, row.n_cases) == ("S", "distilled", "independent", 5, 80)
    assert row.ci_half_width == pytest.approx(contrasts.loc[contrasts["metric"] == "cosine", "ci_half_width"].iloc[0])
    assert not row.met  # 5 seeds x 80 cases of these components are far wider than 0.03
    assert row.seeds_needed_all_cases >= 20  # the seed term alone needs about (2 * 0.07 / 0.03)^2 = 22 seeds
    table = precision_table(plan)
    assert table.loc[0, "within ±0.03"] == "no"
    assert table.loc[0, "seeds needed, all 2000 test cases"] == str(int(row.seeds_needed_all_cases))


def test_one_explained_seed_gives_no_plan_for_seeds():
    contrasts = attribution_contrasts(_per_example(1, 60, TRUE, np.random.default_rng(6)))
    plan = precision_plan(contrasts, 0.03, test_cases=2000)
    assert plan["seeds_needed"].isna().all() and plan["seeds_needed_all_cases"].isna().all()
    assert precision_table(plan).loc[0, "seeds needed, these cases"] == "one seed: unknown"
