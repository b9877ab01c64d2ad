"""Figures of stage 05's benchmark: latency, the seed's claims re-measured, deployment variants."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from helpers.core.run_folder import save_figure as _save


def plot_latency(table: pd.DataFrame, run_dir: str | Path | None = None, name: str = "05_latency.png") -> Figure:
    """Latency at batch 32 per model (median, IQR bars), each bar labelled with its speed-up vs the teacher."""
    t = table.rename(columns={"name": "model", "speedup_b32": "speedup_vs_teacher_b32"}).drop_duplicates("model")
    fig = Figure(figsize=(max(6.0, 1.1 * len(t)), 4))
    ax = fig.subplots()
    x = np.arange(len(t))
    ax.bar(x, t["latency_ms_b32"], yerr=t["latency_ms_b32_iqr"] / 2, capsize=4, color="C0")
    for xi, (lat, iqr, s) in enumerate(zip(t["latency_ms_b32"], t["latency_ms_b32_iqr"],
                                           t["speedup_vs_teacher_b32"])):
        ax.annotate(f"{s:.1f}x", (xi, lat + iqr / 2), ha="center", va="bottom", xytext=(0, 2),
                    textcoords="offset points")
    ax.set_xticks(x, t["model"], rotation=30, ha="right")
    ax.set_ylabel("ms per batch of 32 (median, IQR bar)")
    ax.set_title("Inference latency at batch 32; labels: speed-up vs the teacher")
    return _save(fig, run_dir, name)


def plot_paper_measured_vs_claimed(paper: pd.DataFrame, run_dir: str | Path | None = None,
                                   name: str = "05_paper_measured_vs_claimed.png") -> Figure:
    """Two panels per seed architecture: parameters and speed-up, measured here beside the seed's claims."""
    fig = Figure(figsize=(11, 4))
    ax_p, ax_s = fig.subplots(1, 2)
    x = np.arange(len(paper))
    ax_p.bar(x - 0.2, paper["params_m"], 0.4, label="measured")
    ax_p.bar(x + 0.2, paper["claimed_params_m"].astype(float), 0.4, label="claimed")
    ax_p.set_ylabel("parameters (M)")
    ax_p.set_title("Parameters")
    ax_s.bar(x - 0.27, paper["speedup_b32"], 0.27, label="measured, batch 32")
    ax_s.bar(x, paper["speedup_b1"], 0.27, label="measured, batch 1")
    ax_s.bar(x + 0.27, paper["claimed_speedup"].astype(float), 0.27, label="claimed")
    ax_s.set_ylabel("speed-up vs the teacher (x)")
    ax_s.set_title("Speed-up")
    for ax in (ax_p, ax_s):
        ax.set_xticks(x, paper["name"], rotation=30, ha="right")
        ax.legend()
    return _save(fig, run_dir, name)


def plot_variants(variants: pd.DataFrame, run_dir: str | Path | None = None,
                  name: str = "05_variants.png") -> Figure:
    """Speed-up vs fp32 against accuracy change per model and deployment variant (mean over modes and seeds)."""
    t = variants.groupby(["model", "variant"], as_index=False, sort=False)[
        ["speedup_vs_fp32", "accuracy_change"]].mean()
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    markers = dict(zip(t["variant"].unique(), "os^DvP"))
    colours = {m: f"C{i % 10}" for i, m in enumerate(t["model"].unique())}
    for r in t.itertuples():
        ax.scatter(r.speedup_vs_fp32, r.accuracy_change, marker=markers[r.variant], color=colours[r.model], s=60)
    for m, c in colours.items():
        ax.scatter([], [], color=c, label=m)
    for v, mk in markers.items():
        ax.scatter([], [], marker=mk, color="grey", label=v)
    ax.axhline(0, color="grey", lw=0.8)
    ax.axvline(1, color="grey", lw=0.8)
    ax.set_xlabel("speed-up vs fp32 at batch 32 (x)")
    ax.set_ylabel("accuracy change vs fp32")
    ax.set_title("Deployment variants: faster, and at what accuracy cost?")
    ax.legend(fontsize="small", bbox_to_anchor=(1.02, 1), loc="upper left")
    return _save(fig, run_dir, name)
