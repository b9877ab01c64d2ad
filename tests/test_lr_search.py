"""The per-arm learning-rate search: the choice over tuning seeds, the grid's extension past an edge, the table."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from helpers.training.lr_search import ArmSearch, lr_table


def _fill(search: ArmSearch, score) -> None:
    for lr in search.grid:
        for seed in search.seeds:
            if (lr, seed) not in search.scores:
                search.record(lr, seed, score(lr, seed))


def test_the_best_mean_over_the_tuning_seeds_wins_not_one_seed():
    s = ArmSearch("m", "distilled", [1e-3, 2e-3, 4e-3], seeds=[0, 1], extensions=0)
    # seed 0 alone prefers 4e-3; the mean over both seeds prefers 2e-3
    table = {(1e-3, 0): 0.70, (1e-3, 1): 0.70, (2e-3, 0): 0.74, (2e-3, 1): 0.76, (4e-3, 0): 0.78, (4e-3, 1): 0.60}
    assert not s.complete()
    _fill(s, lambda lr, seed: table[(lr, seed)])
    assert s.complete() and s.best() == 2e-3 and not s.at_edge() and s.extend() == []


def test_ties_go_to_the_smaller_rate():
    s = ArmSearch("m", "independent", [2e-3, 1e-3], seeds=[0], extensions=0)
    _fill(s, lambda lr, seed: 0.5)
    assert s.grid == [1e-3, 2e-3] and s.best() == 1e-3


@pytest.mark.parametrize(("peak", "added", "best", "at_edge"), [
    (6e-3, [8e-3, 1.6e-2], 8e-3, False),    # top edge, better there, then worse: an interior optimum
    (3.5e-3, [8e-3], 4e-3, False),          # top edge, the new rate is worse: 4e-3 is interior now
    (3e-4, [5e-4, 2.5e-4], 2.5e-4, True),   # bottom edge twice, no extension left: still at the edge, and it says so
])
def test_an_edge_extends_the_grid_by_its_own_ratio(peak, added, best, at_edge):
    s = ArmSearch("m", "chain", [1e-3, 2e-3, 4e-3], seeds=[0, 1], extensions=2)

    def score(lr, seed):  # one peak in log(lr), the same on both seeds
        return 0.8 - abs(math.log(lr / peak)) * 0.05

    _fill(s, score)
    while s.extend():  # one rate at a time: each must run on every tuning seed before the next decision
        assert not s.complete()
        _fill(s, score)
    assert s.added == pytest.approx(added)
    assert s.best() == pytest.approx(best) and s.at_edge() == at_edge


def test_a_single_rate_never_extends():
    s = ArmSearch("m", "independent", [1e-3], seeds=[0, 1], extensions=3)
    _fill(s, lambda lr, seed: 0.9)
    assert s.extend() == [] and not s.at_edge() and s.best() == 1e-3


def test_no_extension_before_every_seed_has_run():
    s = ArmSearch("m", "independent", [1e-3, 2e-3], seeds=[0, 1], extensions=2)
    s.record(1e-3, 0, 0.9)
    s.record(2e-3, 0, 0.1)
    assert s.extend() == []  # seed 1 has not run: no decision yet


def test_the_table_has_a_row_per_rate_and_seed_with_the_chosen_flag_and_the_seed_spread():
    s = ArmSearch("m", "distilled", [1e-3, 2e-3], seeds=[0, 1], extensions=0)
    vals = {(1e-3, 0): 0.70, (1e-3, 1): 0.74, (2e-3, 0): 0.73, (2e-3, 1): 0.72}
    _fill(s, lambda lr, seed: vals[(lr, seed)])

    def trial(lr, seed):
        return {"job": SimpleNamespace(name="m", arm="distilled", lr=lr, seed=seed), "val_metric": vals[(lr, seed)],
                "row": {"best_step": 10, "steps": 20}}

    t = lr_table([s], [trial(lr, seed) for lr, seed in vals], "macro_f1")
    assert len(t) == 4 and set(t["seed"]) == {0, 1}
    assert t.loc[t["chosen"], "lr"].tolist() == [2e-3, 2e-3]  # mean 0.725 against 0.720
    assert t.loc[t["lr"] == 1e-3, "mean_val_metric"].tolist() == pytest.approx([0.72, 0.72])
    # the two means differ by 0.005, inside the pooled seed-to-seed sd (about 0.02): the seeds do not tell them apart
    assert t["within_seed_spread"].all() and t["chosen_at_edge"].all()
    vals[(1e-3, 0)], vals[(1e-3, 1)] = 0.60, 0.61  # now far below: outside the spread
    s2 = ArmSearch("m", "distilled", [1e-3, 2e-3], seeds=[0, 1], extensions=0)
    _fill(s2, lambda lr, seed: vals[(lr, seed)])
    t2 = lr_table([s2], [trial(lr, seed) for lr, seed in vals], "macro_f1")
    assert t2.loc[t2["lr"] == 1e-3, "within_seed_spread"].tolist() == [False, False]


def test_the_notebook_names_a_near_tie_and_says_when_one_seed_cannot_measure_it(tmp_path):
    from helpers.views.training import lr_choice_text

    def write(seeds, vals):
        s = ArmSearch("m", "distilled", [5e-4, 1e-3, 2e-3], seeds=seeds, extensions=0)
        _fill(s, lambda lr, seed: vals[lr] + 0.01 * seed)
        trials = [{"job": SimpleNamespace(name="m", arm="distilled", lr=lr, seed=seed), "val_metric": score,
                   "row": {"best_step": 10, "steps": 20}} for (lr, seed), score in s.scores.items()]
        (tmp_path / "models").mkdir(exist_ok=True)
        lr_table([s], trials, "macro_f1").to_csv(tmp_path / "models" / "lr_selection.csv", index=False)
        return lr_choice_text(tmp_path)

    vals = {5e-4: 0.70, 1e-3: 0.75, 2e-3: 0.749}
    one = write([0], vals)
    assert "interior" in one and "one seed (0)" in one and "not measured" in one
    two = write([0, 3], vals)  # seed sd about 0.02: 2e-3 sits within it of the chosen 1e-3, 5e-4 does not
    assert "m distilled (0.002)" in two and "one seed" not in two


def test_the_table_is_the_same_whatever_order_the_trials_finish_in():
    """Trials arrive in the order they finish; the table (rows and every digit of seed_sd) does not depend on it."""
    vals = {(1e-3, 0): 0.5, (1e-3, 1): 0.511, (2e-3, 0): 0.61, (2e-3, 1): 0.60}  # pandas: sd of 0.5, 0.511 by order

    def table(order):
        s = ArmSearch("m", "distilled", [1e-3, 2e-3], seeds=[0, 1], extensions=0)
        _fill(s, lambda lr, seed: vals[(lr, seed)])
        trials = [{"job": SimpleNamespace(name="m", arm="distilled", lr=lr, seed=seed), "val_metric": vals[(lr, seed)],
                   "row": {"best_step": 10, "steps": 20}} for lr, seed in order]
        return lr_table([s], trials, "macro_f1").to_csv(index=False)

    keys = list(vals)
    assert table(keys) == table(keys[::-1]) == table([keys[1], keys[3], keys[0], keys[2]])
