"""Pictures of stage 04: the token-colour HTML view and the agreement and faithfulness figures."""
from __future__ import annotations

import html as html_lib
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from helpers.attribution.agreement import AGREEMENT_METRICS, FAITHFULNESS_METRICS, excluded
from helpers.core.run_folder import save_figure as _save
from helpers.data.schema import OUTCOME


def _label(model: str, mode: str, seed) -> str:
    if mode == "baseline":
        return "random ranking (reference)"
    return {"teacher": f"{model} (teacher)", "ceiling": f"{model} (ceiling, seed {seed})"}.get(
        mode, f"{model} · {mode} · s{seed}")


def token_span(text: str, score: float, scale: float) -> str:
    """One unit as an HTML span: green for positive, red for negative, opacity = |score| / scale."""
    alpha = 0.0 if scale <= 0 else min(abs(score) / scale, 1.0)
    rgb = "0,150,60" if score >= 0 else "210,40,40"
    return (f'<span title="{score:+.3f}" style="background:rgba({rgb},{alpha:.2f});padding:0 2px;'
            f'border-radius:2px">{html_lib.escape(text)}</span>')


def render_html(examples, frame: pd.DataFrame, scores: dict[str, list[np.ndarray]], entries: list[dict],
                n: int = 3, class_names: list[str] | None = None) -> str:
    """Captum-style view of the first n examples: one row of coloured units per model, teacher first."""
    parts = ["<div style='font-family:sans-serif;font-size:13px'>",
             "<p>Green: evidence for the teacher's predicted class; red: against it; intensity = |score| "
             "(scaled per row). Hover a token for its L2-normalised score.</p>"]
    names = dict(enumerate(class_names)) if class_names else OUTCOME
    for i in range(min(n, len(frame))):
        row = frame.iloc[i]
        pred = int(row["teacher_pred"])
        parts.append(f"<h4>case {html_lib.escape(str(row['id']))}: label {int(row['label'])} "
                     f"({names.get(int(row['label']), '')}), explained class {pred} "
                     f"({names.get(pred, '')})</h4>")
        parts.append(f"<details><summary>case text</summary><p>{html_lib.escape(str(row['text']))}</p></details>")
        parts.append("<table style='border-collapse:collapse'>")
        for e in entries:
            if e["tag"] not in scores:
                continue
            s = scores[e["tag"]][i]
            scale = float(np.abs(s).max()) if len(s) else 0.0
            spans = " ".join(token_span(t, float(v), scale) for t, v in zip(examples.unit_text[i], s))
            name = html_lib.escape(_label(e["name"], e["mode"], e["seed"]))
            parts.append(f"<tr><td style='vertical-align:top;padding:4px 8px;white-space:nowrap'><b>{name}</b></td>"
                         f"<td style='padding:4px;line-height:1.8'>{spans}</td></tr>")
        parts.append("</table>")
    parts.append("</div>")
    return "\n".join(parts)


def _ceiling(summary: pd.DataFrame, metric: str) -> pd.Series | None:
    row = summary[(summary["mode"] == "ceiling") & (summary["metric"] == metric)]
    return None if row.empty else row.iloc[0]


def agreement_heatmap(summary: pd.DataFrame, run_dir: str | Path | None = None) -> Figure:
    """Mean of every metric per model x mode (rows), the teacher's noise-ceiling row first and marked."""
    data = summary[summary["mode"] != "baseline"].copy()
    data["row"] = [_label(m, mo, s) for m, mo, s in zip(data["model"], data["mode"], data["seed"])]
    data["row"] = np.where(data["mode"] == "ceiling", "★ " + data["row"], data["row"])
    rank = data["mode"].map({"ceiling": 0, "teacher": 1, "independent": 2, "distilled": 3}).fillna(4)
    rows = list(dict.fromkeys(data.assign(r=rank.clip(upper=2)).sort_values(["r", "model", "mode", "seed"],
                                                                            kind="stable")["row"]))
    cols = [m for m in AGREEMENT_METRICS + FAITHFULNESS_METRICS if m in set(data["metric"])]
    table = data.pivot_table(index="row", columns="metric", values="mean").reindex(index=rows, columns=cols)
    fig = Figure(figsize=(1.3 * len(cols) + 4, 0.45 * len(rows) + 2))
    ax = fig.subplots()
    low = min(0.0, float(np.nanmin(table.to_numpy()))) if table.notna().any().any() else 0.0
    sns.heatmap(table, annot=True, fmt=".2f", cmap="viridis", vmin=low, vmax=1, ax=ax, cbar_kws={"label": "mean"})
    ax.set_xlabel("")
    ax.set_ylabel("")
    ax.set_title("Attribution agreement with the teacher, and faithfulness (★ = noise ceiling)")
    return _save(fig, run_dir, "04_agreement_heatmap.png")


def similarity_distributions(per_example: pd.DataFrame, summary: pd.DataFrame,
                             run_dir: str | Path | None = None) -> Figure:
    """Per-example cosine and Spearman similarity to the teacher per student x mode, the ceiling as a band."""
    fig = Figure(figsize=(12, 4.5))
    axes = fig.subplots(1, 2, sharey=False)
    for ax, metric in zip(axes, ["cosine", "spearman"]):
        out = excluded(per_example, metric) & per_example[metric].notna()
        shown = per_example["mode"].isin(["independent", "distilled"])
        students = per_example[shown & ~out]  # flagged explanations are left out, as in every mean
        n_out = int((shown & out).sum())
        if not students.empty:
            sns.boxplot(data=students, x="model", y=metric, hue="mode", hue_order=["independent", "distilled"],
                        ax=ax, showfliers=False)
            sns.stripplot(data=students, x="model", y=metric, hue="mode", hue_order=["independent", "distilled"],
                          dodge=True, ax=ax, size=3, palette="dark:black", alpha=0.4, legend=False)
        ceil = _ceiling(summary, metric)
        if ceil is not None:
            ax.axhspan(ceil["ci_low"], ceil["ci_high"], color="tab:red", alpha=0.12)
            ax.axhline(ceil["mean"], color="tab:red", ls="--", label=f"ceiling (teacher vs teacher) {ceil['mean']:.2f}")
        ax.set_title(f"{metric} similarity to the teacher, per example"
                     + (f"\n({n_out} example(s) left out: |convergence delta| over the threshold)" if n_out else ""))
        ax.set_xlabel("")
        ax.tick_params(axis="x", rotation=25)
        ax.legend(fontsize=8)
    return _save(fig, run_dir, "04_similarity_distributions.png")


def kd_diff_plot(kd_diff: pd.DataFrame, summary: pd.DataFrame | None = None,
                 run_dir: str | Path | None = None) -> Figure:
    """Distilled - independent difference per student and agreement metric, with bootstrap 95% CIs."""
    data = kd_diff[kd_diff["metric"].isin(AGREEMENT_METRICS)]
    students = list(dict.fromkeys(data["model"]))
    fig = Figure(figsize=(max(7, 1.6 * len(students) + 3), 4.5))
    ax = fig.subplots()
    width = 0.8 / len(AGREEMENT_METRICS)
    for j, metric in enumerate(AGREEMENT_METRICS):
        d = data[data["metric"] == metric].set_index("model").reindex(students)
        x = np.arange(len(students)) + (j - (len(AGREEMENT_METRICS) - 1) / 2) * width
        ax.errorbar(x, d["diff"], yerr=[d["diff"] - d["ci_low"], d["ci_high"] - d["diff"]], fmt="o", capsize=3,
                    label=metric)
    ax.axhline(0, color="black", lw=1)
    ax.set_xticks(np.arange(len(students)), students, rotation=20)
    ax.set_ylabel("distilled − independent")
    ax.set_title("Does true distillation make students explain like the teacher?\n"
                 "paired difference over examples, 95% bootstrap CI (> 0: distilled is closer to the teacher)")
    ax.legend(fontsize=8)
    return _save(fig, run_dir, "04_kd_attribution_diff.png")


def faithfulness_plot(summary: pd.DataFrame, run_dir: str | Path | None = None) -> Figure:
    """Comprehensiveness, sufficiency and rationale recall per model x mode, with 95% CIs and references."""
    metrics = [m for m in FAITHFULNESS_METRICS if m in set(summary["metric"])]
    data = summary[(summary["metric"].isin(metrics)) & (summary["mode"] != "baseline")].copy()
    data["row"] = [_label(m, mo, s) for m, mo, s in zip(data["model"], data["mode"], data["seed"])]
    rows = list(dict.fromkeys(data.sort_values("mode", key=lambda m: m.map(
        {"teacher": 0, "ceiling": 1, "independent": 2, "distilled": 3}), kind="stable")["row"]))
    fig = Figure(figsize=(4.2 * len(metrics), 0.4 * len(rows) + 2.5))
    axes = np.atleast_1d(fig.subplots(1, len(metrics), sharey=True))
    hints = {"comprehensiveness_own": "own predicted class, higher = more faithful",
             "sufficiency_own": "own predicted class, lower = more faithful",
             "comprehensiveness_teacher": "teacher's class, higher = more faithful",
             "sufficiency_teacher": "teacher's class, lower = more faithful",
             "rationale_recall": "share of planted cues in the top-k"}
    for ax, metric in zip(axes, metrics):
        d = data[data["metric"] == metric].set_index("row").reindex(rows)
        colors = ["tab:gray" if "teacher" in r or "ceiling" in r else
                  "tab:orange" if "distilled" in r else "tab:blue" for r in rows]
        ax.barh(rows, d["mean"], xerr=[d["mean"] - d["ci_low"], d["ci_high"] - d["mean"]], color=colors, capsize=2)
        base = summary[(summary["mode"] == "baseline") & (summary["metric"] == metric)]
        if not base.empty:
            ax.axvline(base["mean"].iloc[0], color="tab:red", ls="--", label="random ranking")
            ax.legend(fontsize=8)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_title(f"{metric}\n({hints[metric]})", fontsize=9)
    axes[0].invert_yaxis()
    return _save(fig, run_dir, "04_faithfulness.png")


def summary_table(summary: pd.DataFrame) -> pd.DataFrame:
    """summary.csv as one row per model x mode x seed and one 'mean [ci_low, ci_high]' column per metric; a cell
    whose mean left out examples for their convergence delta says how many, and `excluded` sums them per row."""
    labels = [_label(m, mo, s) for m, mo, s in zip(summary["model"], summary["mode"], summary["seed"])]
    n_excl = summary["n_excluded"].fillna(0).astype(int) if "n_excluded" in summary else pd.Series(0, summary.index)
    cells = [("–" if pd.isna(m) else f"{m:.3f} [{lo:.3f}, {hi:.3f}]") + (f" ({k} excl.)" if k else "")
             for m, lo, hi, k in zip(summary["mean"], summary["ci_low"], summary["ci_high"], n_excl)]
    data = summary.assign(row=labels, cell=cells, n_excl=n_excl)
    cols = [m for m in AGREEMENT_METRICS + FAITHFULNESS_METRICS if m in set(data["metric"])]
    rows = list(dict.fromkeys(data["row"]))
    table = data.pivot(index="row", columns="metric", values="cell").reindex(index=rows, columns=cols).fillna("")
    excl = data[data["mode"] != "baseline"].groupby("row")["n_excl"].max().reindex(rows).fillna(0).astype(int)
    return table.assign(**{"excluded (|delta|)": excl.to_numpy()})
