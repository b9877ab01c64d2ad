"""Pictures of stage 04: the token-colour HTML view and the agreement and faithfulness figures."""
from __future__ import annotations

import html as html_lib
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from helpers.attribution.agreement import AGREEMENT_METRICS, FAITHFULNESS_METRICS, RANDOM_METRICS, excluded
from helpers.core.run_folder import save_figure as _save
from helpers.data.schema import OUTCOME


def _label(model: str, mode: str, seed) -> str:
    if mode == "baseline":
        return "random ranking (reference)"
    return {"teacher": f"{model} (teacher)", "reference": f"{model} (teacher retrained, seed {seed})"}.get(
        mode, f"{model} · {mode} · s{seed}")


def _arm_label(model: str, mode: str) -> str:
    return {"teacher": f"{model} (teacher)", "reference": f"★ {model} retrained (reference)"}.get(
        mode, f"{model} · {mode}")


MODE_ORDER = {"reference": 0, "teacher": 1, "independent": 2, "distilled": 3}


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


def _reference(agreement: pd.DataFrame, metric: str) -> pd.Series | None:
    row = agreement[(agreement["mode"] == "reference") & (agreement["metric"] == metric)]
    return None if row.empty else row.iloc[0]


def _arm_rows(agreement: pd.DataFrame) -> pd.DataFrame:
    """agreement.csv with a row label per model x mode, in reading order (reference, teacher, students by arm)."""
    data = agreement.copy()
    data["row"] = [_arm_label(m, mo) for m, mo in zip(data["model"], data["mode"])]
    data["_rank"] = data["mode"].map(MODE_ORDER).fillna(4)
    return data.sort_values(["_rank", "model"], kind="stable")


def agreement_heatmap(agreement: pd.DataFrame, run_dir: str | Path | None = None) -> Figure:
    """Mean of every metric per model x arm over its seeds and cases, the reference (teacher retrained) first."""
    data = _arm_rows(agreement)
    rows = list(dict.fromkeys(data["row"]))
    cols = [m for m in AGREEMENT_METRICS + FAITHFULNESS_METRICS if m in set(data["metric"])]
    table = data.pivot_table(index="row", columns="metric", values="mean").reindex(index=rows, columns=cols)
    fig = Figure(figsize=(1.3 * len(cols) + 4, 0.45 * len(rows) + 2))
    ax = fig.subplots()
    low = min(0.0, float(np.nanmin(table.to_numpy()))) if table.notna().any().any() else 0.0
    sns.heatmap(table, annot=True, fmt=".2f", cmap="viridis", vmin=low, vmax=1, ax=ax, cbar_kws={"label": "mean"})
    ax.set_xlabel("")
    ax.set_ylabel("")
    ax.set_title("Attribution agreement with the teacher, and faithfulness, per arm (mean over seeds and cases;\n"
                 "★ = the teacher retrained with other seeds: the reference)")
    return _save(fig, run_dir, "04_agreement_heatmap.png")


def similarity_distributions(per_example: pd.DataFrame, agreement: pd.DataFrame,
                             run_dir: str | Path | None = None) -> Figure:
    """Per-case cosine and Spearman similarity to the teacher per student x arm (the case's mean over seeds), the
    reference (teacher retrained) as a band."""
    fig = Figure(figsize=(14, 4.8))
    axes = fig.subplots(1, 2, sharey=False)
    shown = ~per_example["mode"].isin(["teacher", "reference"])
    arms = list(dict.fromkeys(per_example.loc[shown, "mode"]))
    for ax, metric in zip(axes, ["cosine", "spearman"]):
        out = excluded(per_example, metric) & per_example[metric].notna()
        kept = per_example[shown & ~out]  # flagged explanations are left out, as in every mean
        n_out = int((shown & out).sum())
        students = kept.groupby(["model", "mode", "id"], as_index=False, sort=False)[metric].mean()
        if not students.empty:
            sns.boxplot(data=students, x="model", y=metric, hue="mode", hue_order=arms, ax=ax, showfliers=False)
        ref = _reference(agreement, metric)
        if ref is not None:
            ax.axhspan(ref["ci_low"], ref["ci_high"], color="tab:red", alpha=0.12)
            ax.axhline(ref["mean"], color="tab:red", ls="--",
                       label=f"reference: teacher retrained ({int(ref['n_seeds'])} seeds) {ref['mean']:.2f}")
        ax.set_title(f"{metric} similarity to the teacher, per case (mean over seeds)"
                     + (f"\n({n_out} value(s) left out: |convergence delta| over the threshold)" if n_out else ""))
        ax.set_xlabel("")
        ax.tick_params(axis="x", rotation=15)
        ax.legend(fontsize=7)
    return _save(fig, run_dir, "04_similarity_distributions.png")


def contrast_plot(contrasts: pd.DataFrame, metric: str = "cosine", run_dir: str | Path | None = None) -> Figure:
    """Each arm's paired difference in `metric` against independent and against distilled, per student, with the
    two-way 95% interval; filled markers where the attribution family's Holm-adjusted p is below 0.05."""
    data = contrasts[contrasts["metric"] == metric]
    students = list(dict.fromkeys(data["model"]))
    fig = Figure(figsize=(12, 1.1 + 0.42 * max(len(data), 1) + 0.5 * len(students)))
    axes = np.atleast_1d(fig.subplots(1, 2, sharey=True))
    labels = [f"{r.model} · {r.arm}" for r in data.drop_duplicates(["model", "arm"]).itertuples()]
    for ax, against in zip(axes, ["independent", "distilled"]):
        d = data[data["against"] == against]
        for r in d.itertuples():
            y = labels.index(f"{r.model} · {r.arm}")
            sig = np.isfinite(r.p_adjusted) and r.p_adjusted < 0.05 and (r.ci_low > 0 or r.ci_high < 0)
            ax.errorbar(r.diff, y, xerr=[[r.diff - r.ci_low], [r.ci_high - r.diff]], fmt="o", capsize=3,
                        color="tab:green" if sig and r.diff > 0 else "tab:red" if sig else "tab:gray",
                        mfc=None if sig else "white")
        ax.axvline(0, color="black", lw=1)
        ax.set_title(f"arm − {against}", fontsize=10)
        ax.set_xlabel(f"difference in attribution {metric} to the teacher")
    axes[0].set_yticks(range(len(labels)), labels)
    axes[0].invert_yaxis()
    fig.suptitle("Does an arm make a student explain more like the teacher? Paired by case and seed, 95% two-way "
                 "intervals\n(filled: Holm-adjusted p < 0.05 in the attribution family; > 0: closer to the teacher)",
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, run_dir, "04_attribution_contrasts.png")


def contrast_table(contrasts: pd.DataFrame, metric: str = "cosine") -> pd.DataFrame:
    """The attribution family (or another metric's contrasts) as a reading table."""
    d = contrasts[contrasts["metric"] == metric]
    return pd.DataFrame({
        "student": d["model"], "arm": d["arm"], "against": d["against"],
        "difference [95% CI]": [f"{r.diff:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]" for r in d.itertuples()],
        "± half-width": d["ci_half_width"].round(3), "Holm p": d["p_adjusted"].round(3), "cases": d["n_cases"],
        "seeds": d["n_seeds"], "excluded": d["n_excluded"], "verdict": d["verdict"]}).reset_index(drop=True)


def precision_table(plan: pd.DataFrame) -> pd.DataFrame:
    """Each attribution-family contrast's half-width against the target, and the seeds that would reach it."""
    def seeds(column: str) -> list[str]:
        return ["one seed: unknown" if r.n_seeds < 2 else "not reachable" if pd.isna(v) else str(int(v))
                for v, r in zip(plan[column], plan.itertuples())]

    target = plan["target"].iloc[0] if len(plan) else float("nan")
    all_cases = plan["test_cases"].iloc[0] if len(plan) else 0
    return pd.DataFrame({
        "student": plan["model"], "arm": plan["arm"], "against": plan["against"],
        "seeds x cases": [f"{r.n_seeds} x {r.n_cases}" for r in plan.itertuples()],
        "± half-width": plan["ci_half_width"].round(3),
        "seed term (se)": plan["seed_sd_term"].round(4), "case term (se)": plan["case_sd_term"].round(4),
        f"within ±{target:g}": plan["met"].map({True: "yes", False: "no"}),
        "seeds needed, these cases": seeds("seeds_needed"),
        f"seeds needed, all {all_cases} test cases": seeds("seeds_needed_all_cases"),
    }).reset_index(drop=True)


def faithfulness_plot(agreement: pd.DataFrame, summary: pd.DataFrame | None = None,
                      run_dir: str | Path | None = None) -> Figure:
    """Comprehensiveness, sufficiency and rationale recall per model x arm (two-way 95% CIs over seeds and cases),
    each model's random ranking as a red tick, the random ranking's rationale recall as a dashed line."""
    metrics = [m for m in FAITHFULNESS_METRICS if m in set(agreement["metric"])]
    data = _arm_rows(agreement[agreement["metric"].isin(metrics + RANDOM_METRICS)])
    rows = list(dict.fromkeys(data.loc[data["metric"].isin(metrics), "row"]))
    fig = Figure(figsize=(4.2 * len(metrics), 0.4 * len(rows) + 2.5))
    axes = np.atleast_1d(fig.subplots(1, len(metrics), sharey=True))
    hints = {"comprehensiveness_own": "own predicted class, higher = more faithful",
             "sufficiency_own": "own predicted class, lower = more faithful",
             "comprehensiveness_teacher": "teacher's class, higher = more faithful",
             "sufficiency_teacher": "teacher's class, lower = more faithful",
             "rationale_recall": "share of planted cues in the top-k"}
    random_of = {"comprehensiveness_teacher": "comprehensiveness_random", "sufficiency_teacher": "sufficiency_random",
                 "comprehensiveness_own": "comprehensiveness_random", "sufficiency_own": "sufficiency_random"}
    for ax, metric in zip(axes, metrics):
        d = data[data["metric"] == metric].set_index("row").reindex(rows)
        colors = ["tab:gray" if "teacher" in r or "reference" in r else
                  "tab:blue" if r.endswith("independent") else "tab:orange" for r in rows]
        ax.barh(rows, d["mean"], xerr=[d["mean"] - d["ci_low"], d["ci_high"] - d["mean"]], color=colors, capsize=2)
        if metric in random_of:
            r = data[data["metric"] == random_of[metric]].set_index("row").reindex(rows)
            ax.scatter(r["mean"], rows, marker="|", s=200, color="tab:red", zorder=3, label="random ranking")
            ax.legend(fontsize=7)
        base = None if summary is None else summary[(summary["mode"] == "baseline") & (summary["metric"] == metric)]
        if base is not None and not base.empty:
            ax.axvline(base["mean"].iloc[0], color="tab:red", ls="--", label="random ranking")
            ax.legend(fontsize=7)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_title(f"{metric}\n({hints[metric]})", fontsize=9)
    axes[0].invert_yaxis()
    return _save(fig, run_dir, "04_faithfulness.png")


def agreement_table(agreement: pd.DataFrame) -> pd.DataFrame:
    """agreement.csv as one row per model x arm: 'mean [ci_low, ci_high]' per metric over its seeds and cases (the
    two-way interval), the cosine's half-width, cases, seeds and the cases left out (|convergence delta|)."""
    data = _arm_rows(agreement)
    data["cell"] = [("–" if pd.isna(m) else f"{m:.3f} [{lo:.3f}, {hi:.3f}]")
                    for m, lo, hi in zip(data["mean"], data["ci_low"], data["ci_high"])]
    rows = list(dict.fromkeys(data["row"]))
    cols = [m for m in AGREEMENT_METRICS + FAITHFULNESS_METRICS + RANDOM_METRICS if m in set(data["metric"])]
    table = data.pivot(index="row", columns="metric", values="cell").reindex(index=rows, columns=cols).fillna("")
    cos = data[data["metric"] == "cosine"].set_index("row").reindex(rows)
    first = data.drop_duplicates("row").set_index("row").reindex(rows)
    return table.assign(**{"cosine ± half-width": cos["ci_half_width"].round(3).to_numpy(),
                           "cases": first["n_cases"].to_numpy(), "seeds": first["n_seeds"].to_numpy(),
                           "excluded (|delta|)": data.groupby("row")["n_excluded"].max().reindex(rows).to_numpy()})
