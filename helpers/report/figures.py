"""The report's Pareto figure: test accuracy against latency, distillation drawn as arrows."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from helpers.core.run_folder import save_figure


def pareto_front(latency: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """Mask of the non-dominated points: no other point is at least as fast and as accurate, and better in one."""
    lat, acc = np.asarray(latency, dtype=float), np.asarray(accuracy, dtype=float)
    keep = np.ones(len(lat), dtype=bool)
    for i in range(len(lat)):
        better = (lat <= lat[i]) & (acc >= acc[i]) & ((lat < lat[i]) | (acc > acc[i]))
        keep[i] = not better.any()
    return keep


ARM_MARKERS = {"distilled": "o", "distilled_transfer": "s", "pseudo_label_transfer": "^", "chain": "D",
               "distilled_hidden": "P", "distilled_attention": "X", "distilled_attribution": "*"}


def plot_pareto(summary: dict[str, Any], run_dir: str | Path | None = None,
                name: str = "05_pareto.png") -> Figure:
    """Test accuracy (mean over seeds) vs latency at batch 32 (log x); bubble area = parameters; saved to figures/."""
    models = [e for e in summary["models"] if e["latency_ms_b32"] is not None and e["accuracy"]["mean"] is not None]
    if not models:
        raise ValueError("no model has a measured latency: run the benchmark (helpers.benchmark.benchmark_run) first")
    lat = np.array([e["latency_ms_b32"] for e in models])
    acc = np.array([e["accuracy"]["mean"] for e in models])
    params = np.array([e["params"] for e in models], dtype=float)
    area = 60 + 1400 * params / params.max()
    fig = Figure(figsize=(9, 5.5))
    ax = fig.subplots()
    students = list(dict.fromkeys(e["name"] for e in models if e["role"] == "student"))
    colours = {n: f"C{i % 10}" for i, n in enumerate(students)}
    for e, x, y, s in zip(models, lat, acc, area):
        if e["role"] == "teacher":
            ax.scatter(x, y, s=s, marker="*", color="black", alpha=0.8, zorder=3)
            ax.annotate(f"teacher {e['name']}", (x, y), xytext=(8, 8), textcoords="offset points", fontsize=8)
            continue
        filled = e["mode"] != "independent"
        ax.scatter(x, y, s=s, color=colours[e["name"]] if filled else "none", edgecolors=colours[e["name"]],
                   linewidths=1.5, alpha=0.6 if filled else 1.0, zorder=3, marker=ARM_MARKERS.get(e["mode"], "o"))
    for n in students:
        ends = {e["mode"]: (x, y) for e, x, y in zip(models, lat, acc) if e["name"] == n}
        if "independent" in ends and "distilled" in ends and ends["independent"] != ends["distilled"]:
            ax.annotate("", xy=ends["distilled"], xytext=ends["independent"],
                        arrowprops={"arrowstyle": "->", "color": colours[n], "lw": 1.5}, zorder=4)
        x, y = ends.get("distilled", next(iter(ends.values())))
        ax.annotate(n, (x, y), xytext=(8, -12), textcoords="offset points", fontsize=8, color=colours[n])
    front = pareto_front(lat, acc)
    order = np.argsort(lat[front])
    ax.plot(lat[front][order], acc[front][order], "--", color="grey", lw=1, zorder=2, label="non-dominated front")
    tol = summary["recommendation"]["tolerance"]
    ax.axhline(summary["teacher"]["accuracy"] - tol, color="tab:red", lw=0.8, ls=":",
               label=f"teacher accuracy − tolerance ({tol:g})")
    majority = summary["data"]["baselines"]["majority"]["test"]["accuracy"]
    ax.axhline(majority, color="grey", lw=0.8, ls="-.", label=f"majority class ({majority:.3f})")
    ax.scatter([], [], s=60, color="none", edgecolors="grey", label="independent (hollow)")
    for mode, marker in ARM_MARKERS.items():
        if any(e["mode"] == mode for e in models):
            ax.scatter([], [], s=60, color="grey", alpha=0.6, marker=marker,
                       label=mode + ("; arrow: independent → distilled" if mode == "distilled" else ""))
    ax.set_xscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.margins(x=0.2, y=0.1)
    ax.set_xlabel("latency at batch 32, ms (median, log scale)")
    ax.set_ylabel("test accuracy (mean over seeds)")
    ax.set_title("Accuracy vs speed (bubble area ∝ parameters)")
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, run_dir, name)
