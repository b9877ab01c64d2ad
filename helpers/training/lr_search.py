"""Each arm's learning rate, chosen on validation over several seeds, with the grid extended past an edge."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass
class ArmSearch:
    """The learning-rate search of one student x arm.

    Every rate is tried on each of `seeds` (the first seeds of the stage); a rate's score is its mean validation
    metric over those seeds, and the best mean wins (ties: the smaller rate). When the winner sits at an edge of the
    rates tried, the grid grows by one rate past that edge (the grid's own ratio between neighbours), at most
    `extensions` times, so that a chosen rate is an interior optimum or the search says it ran out.
    """

    name: str
    arm: str
    grid: list[float]
    seeds: list[int]
    extensions: int
    link_logits: str | None = None  # chain arm: its link teacher's cached logits
    scores: dict[tuple[float, int], float] = field(default_factory=dict)
    added: list[float] = field(default_factory=list)  # rates added past an edge, in the order tried

    def __post_init__(self) -> None:
        self.grid = sorted(float(lr) for lr in self.grid)

    def record(self, lr: float, seed: int, score: float) -> None:
        self.scores[(float(lr), int(seed))] = float(score)

    def complete(self) -> bool:
        """Every rate tried on every tuning seed."""
        return all((lr, s) in self.scores for lr in self.grid for s in self.seeds)

    def means(self) -> dict[float, float]:
        return {lr: float(np.mean([self.scores[(lr, s)] for s in self.seeds])) for lr in self.grid}

    def best(self) -> float:
        """The rate with the best mean validation score over the tuning seeds (ties: the smaller rate)."""
        means = self.means()
        return min(self.grid, key=lambda lr: (-means[lr], lr))

    def at_edge(self) -> bool:
        """The best rate is the smallest or largest tried (a grid of one rate has no edge to move past)."""
        return len(self.grid) > 1 and self.best() in (self.grid[0], self.grid[-1])

    def extend(self) -> list[float]:
        """The rate to try next, past the edge where the best one sits ([] when it is interior or none are left)."""
        if not self.complete() or not self.at_edge() or len(self.added) >= self.extensions:
            return []
        lo, hi = self.grid[0], self.grid[-1]
        new = lo * lo / self.grid[1] if self.best() == lo else hi * hi / self.grid[-2]
        new = float(f"{new:.6g}")
        self.grid = sorted([*self.grid, new])
        self.added.append(new)
        return [new]


def lr_table(searches: list[ArmSearch], trials: list[dict], metric: str) -> pd.DataFrame:
    """models/lr_selection.csv: one row per student x arm x rate x tuning seed.

    Columns: model, arm, lr, seed, val_metric, best_step, steps, metric, mean_val_metric (over the tuning seeds),
    seed_sd (sd of val_metric over those seeds), added (a rate added past the grid's edge), chosen, chosen_at_edge
    (the chosen rate is still the smallest or largest tried), within_seed_spread (the rate's mean is within the
    arm's seed-to-seed sd of the chosen rate's mean: the two are not told apart by the tuning seeds).
    """
    rows = [{"model": t["job"].name, "arm": t["job"].arm, "lr": float(t["job"].lr), "seed": t["job"].seed,
             "val_metric": t["val_metric"], "best_step": t["row"]["best_step"], "steps": t["row"]["steps"]}
            for t in trials]
    table = pd.DataFrame(rows, columns=["model", "arm", "lr", "seed", "val_metric", "best_step", "steps"])
    table["metric"] = metric
    # trials arrive in the order they finish: sorted, every sum below runs in seed order (same digits every run)
    table = table.sort_values(["model", "arm", "lr", "seed"], kind="stable", ignore_index=True)
    out = []
    for s in searches:
        sub = table[(table["model"] == s.name) & (table["arm"] == s.arm)].copy()
        if sub.empty:
            continue
        means, best = s.means(), s.best()
        sd = sub.groupby("lr")["val_metric"].std(ddof=1).fillna(0.0)
        spread = float(np.sqrt(np.mean(np.square(sd)))) if len(s.seeds) > 1 else 0.0  # pooled over the arm's rates
        sub["mean_val_metric"] = sub["lr"].map(means)
        sub["seed_sd"] = sub["lr"].map(sd)
        sub["added"] = sub["lr"].isin(s.added)
        sub["chosen"] = sub["lr"] == best
        sub["chosen_at_edge"] = s.at_edge()
        sub["within_seed_spread"] = (means[best] - sub["mean_val_metric"]) <= spread
        out.append(sub.sort_values(["lr", "seed"]))
    return pd.concat(out, ignore_index=True) if out else table
