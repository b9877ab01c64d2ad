"""Stage 05's reading material: the answer, floor and ceiling, per-model tables and report.html, from the run folder."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from helpers.core.constants import ARMS
from helpers.report.html import write_report
from helpers.report.summary import QUESTION, kd_verdicts, load_tables, teacher_collapsed
from helpers.views.attribution import agreement_table, contrast_table, precision_table
from helpers.views.training import baselines_frame

ATTRIBUTION_TITLE = ("Attribution agreement with the teacher per arm (★ reference = the teacher retrained with other "
                     "seeds), faithfulness for the model's own and the teacher's class and for a random ranking, "
                     "rationale recall: mean over seeds and cases [two-way 95% CI]; cases whose |convergence delta| "
                     "exceeds ig_delta_threshold are left out and counted.")
CONTRAST_TITLE = ("Did an arm change how a student explains? Attribution cosine to the teacher, each arm against "
                  "independent and against distilled (paired by case and seed, two-way 95% CI, Holm-adjusted over "
                  "this family)")


def _mean_std(mean: float, std: float, n: int) -> str:
    return f"{mean:.3f} ± {std:.3f}" if n > 1 and not math.isnan(std) else f"{mean:.3f}"


def kd_table(run_dir: str | Path) -> pd.DataFrame:
    """Per student x arm: test accuracy of independent vs the arm (mean ± std over seeds), the paired difference
    with its unadjusted 95% interval and half-width, its p (Holm-adjusted for the primary endpoint, arm vs
    independent; unadjusted for the secondary contrasts), and the verdict."""
    t = load_tables(run_dir)
    acc = t.kd_gain[t.kd_gain["metric"] == "accuracy"].reset_index(drop=True)
    params = t.metrics.groupby("model")["params"].first()
    return pd.DataFrame({
        "student": acc["model"], "arm": acc["arm"], "against": acc["against"],
        "params_m": [round(params.get(m, np.nan) / 1e6, 2) for m in acc["model"]],
        "seeds": acc["n_seeds"],
        "reference accuracy": [_mean_std(a, s, n) for a, s, n in zip(acc["independent_mean"],
                                                                      acc["independent_std"], acc["n_seeds"])],
        "arm accuracy": [_mean_std(a, s, n) for a, s, n in zip(acc["arm_mean"], acc["arm_std"], acc["n_seeds"])],
        "arm − reference": acc["diff"].map("{:+.3f}".format),
        "95% CI (unadjusted)": [f"[{lo:+.3f}, {hi:+.3f}]" for lo, hi in zip(acc["ci_low"], acc["ci_high"])],
        "± half-width": acc["ci_half_width"].map("{:.3f}".format),
        "p": [_fmt_p(r) for r in acc.itertuples()],
        "verdict": [_decision(v) for v in acc["verdict"]],  # the numbers are in the columns before
    })


def _fmt_p(r) -> str:
    """Holm-adjusted p of a primary row; the unadjusted p of a secondary one, labelled."""
    if getattr(r, "endpoint", "primary") == "secondary":
        return "–" if pd.isna(r.p_value) else f"{r.p_value:.3g} (unadjusted)"
    return "–" if pd.isna(r.p_adjusted) else f"{r.p_adjusted:.3g} (Holm)"


def _decision(text: str) -> str:
    """A verdict line without its numbers: 'distillation helped', 'secondary, unadjusted: no evidence ...'."""
    return str(text).rsplit(": ", 1)[0] if " (95% CI " in str(text) else str(text).split(":")[0]


def chain_table(run_dir: str | Path) -> pd.DataFrame | None:
    """Per chain link (largest student first): who taught it, the size gap to that teacher, the teacher's own test
    accuracy, and the student's test accuracy distilled directly from the run's teacher vs along the chain, with the
    paired chain - direct difference, its unadjusted 95% interval, p and verdict (a secondary contrast: unadjusted;
    None: no chain arm ran)."""
    t = load_tables(run_dir)
    if t.chain is None or t.chain.empty:
        return None
    acc = t.kd_gain[t.kd_gain["metric"] == "accuracy"]
    test = t.metrics.set_index(["model", "mode", "seed"])["accuracy"]
    teacher_name = t.index["teacher"]["name"]
    rows = []
    for link in t.chain.itertuples():
        if link.teacher == teacher_name:
            taught_acc = float(t.teacher["test"]["accuracy"])
        else:
            taught_acc = float(test.get((link.teacher, link.teacher_mode, int(link.teacher_seed)), np.nan))
        direct = acc[(acc["model"] == link.model) & (acc["arm"] == "distilled") & (acc["against"] == "independent")]
        row = {"link": int(link.link), "student": link.model, "params_m": round(link.params / 1e6, 2),
               "learns from": (f"{link.teacher} ({link.teacher_mode}, seed {int(link.teacher_seed)})"
                               if link.teacher != teacher_name else f"{link.teacher} (the teacher)"),
               "teacher/student params": round(link.teacher_params / link.params, 1),
               "teacher gap (direct)": round(t.index["teacher"]["params"] / link.params, 1),
               "teacher test accuracy": round(taught_acc, 3),
               "direct (distilled) accuracy": "–" if direct.empty else _mean_std(
                   direct["arm_mean"].iloc[0], direct["arm_std"].iloc[0], int(direct["n_seeds"].iloc[0]))}
        pair = acc[(acc["model"] == link.model) & (acc["arm"] == "chain") & (acc["against"] == "distilled")]
        if link.teacher == teacher_name or pair.empty:
            row.update({"chain accuracy": row["direct (distilled) accuracy"], "chain − direct": "–",
                        "95% CI (unadjusted)": "–", "p": "–",
                        "verdict": "first link: the chain is direct distillation (the same runs)"})
        else:
            r = pair.iloc[0]
            row.update({"chain accuracy": _mean_std(r["arm_mean"], r["arm_std"], int(r["n_seeds"])),
                        "chain − direct": f"{r['diff']:+.3f}",
                        "95% CI (unadjusted)": f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]",
                        "p": _fmt_p(pair.itertuples().__next__()),
                        "verdict": _decision(r["verdict"])})
        rows.append(row)
    return pd.DataFrame(rows)


def chain_text(run_dir: str | Path) -> str:
    """What the run says about the chain, in sentences built from chain_table (no chain arm: says so)."""
    table = chain_table(run_dir)
    if table is None:
        return "The chain arm did not run (it needs `chain` in `arms` and two students or more)."
    rows = table.to_dict("records")
    first = rows[0]
    parts = [f"{first['student']} is the first link: it learns from the teacher (a {first['teacher/student params']}x "
             f"size gap), so its chain runs are its distilled runs."]
    for r in rows[1:]:
        parts.append(f"{r['student']} learned from {r['learns from'].split(' (')[0]} ({r['teacher/student params']}x "
                     f"its size instead of the teacher's {r['teacher gap (direct)']}x; that model tests at "
                     f"{r['teacher test accuracy']:.3f}, the teacher at {first['teacher test accuracy']:.3f}): chain "
                     f"{r['chain accuracy']} vs direct {r['direct (distilled) accuracy']}, chain − direct "
                     f"{r['chain − direct']} {r['95% CI (unadjusted)']}, p {r['p']}: {r['verdict']}.")
    verdicts = [r["verdict"] for r in rows[1:]]
    helped = sum(v.endswith("helped") for v in verdicts)
    hurt = sum(v.endswith("hurt") for v in verdicts)
    lost = sum(v.startswith("not comparable") for v in verdicts)
    if helped and not hurt:
        parts.append("Here the intermediate teacher bridged the gap: the teacher-assistant effect shows.")
    elif hurt and not helped:
        parts.append("Here the intermediate teacher cost accuracy: a smaller, weaker teacher passed on less than "
                     "the gap to the large one took away.")
    elif helped or hurt:
        parts.append("The chain helped some students and hurt others.")
    elif lost == len(verdicts):
        parts.append("No chain student is comparable (one of its arms predicts one class on validation in every "
                     "seed): this run says nothing about teacher assistants.")
    else:
        parts.append("At this run's resolution the chain and direct distillation cannot be told apart: no evidence "
                     "that a teacher assistant helps at these size gaps (which is not evidence that it does not).")
    return " ".join(parts)


def floor_ceiling(run_dir: str | Path) -> pd.DataFrame:
    """Test accuracy of the references (majority, TF-IDF, teachers, the rule as oracle and within max_len) beside the
    best student per arm.

    "Best" is chosen on validation accuracy (mean over seeds); the row shows that student's test figures.
    """
    t = load_tables(run_dir)
    refs = baselines_frame(run_dir)
    students = t.metrics[t.metrics["mode"].isin(ARMS)]
    means = students.groupby(["model", "mode"], sort=False)[["accuracy", "macro_f1", "roc_auc"]].mean()
    val = t.val_metrics.groupby(["model", "mode"])["accuracy"].mean()
    rows = []
    for mode in ARMS:
        if mode not in means.index.get_level_values("mode"):
            continue
        names = means.xs(mode, level="mode").index
        pick = max(names, key=lambda m: val.get((m, mode), -1.0))
        rows.append({"model": f"best student on validation, {mode} ({pick})", **means.loc[(pick, mode)].to_dict()})
    out = pd.concat([refs, pd.DataFrame(rows)], ignore_index=True)
    out.loc[out["model"] == "majority class", "model"] = f"majority class (rate {t.card['majority_rate']:.3f})"
    return out.round(4)


def _fmt_stat(s: dict[str, Any] | None) -> str:
    if not s or s.get("mean") is None:
        return "–"
    return f"{s['mean']:.3f}" + (f" ± {s['std']:.3f}" if s.get("std") is not None else "")


def _fmt_interval(s: dict[str, Any] | None) -> str:
    if not s:
        return "–"
    ci = (f" [{s['ci_low']:.3f}, {s['ci_high']:.3f}]" if s.get("ci_low") is not None and s.get("ci_high") is not None
          else "")
    return f"{s['mean']:.3f}{ci}" + (f" ({s['n_excluded']} excl.)" if s.get("n_excluded") else "")


def models_table(summary: dict[str, Any]) -> pd.DataFrame:
    """Size, speed, accuracy, fidelity and attribution agreement per model x mode, formatted for reading."""
    rows = []
    for e in summary["models"]:
        fid = e["fidelity"] or {}
        rows.append({"model": e["name"], "mode": e["mode"], "shape": e["shape"], "params_m": e["params"] / 1e6,
                     "params_m_full_vocab": e["params_full_vocab"] / 1e6,
                     "size_mb_full_vocab": None if e["size_mb"] is None else
                     e["size_mb"] + (e["params_full_vocab"] - e["params"]) * 4 / 1e6,
                     "size_mb": e["size_mb"], "latency_ms_b1": e["latency_ms_b1"],
                     "latency_ms_b32": e["latency_ms_b32"], "speedup_vs_teacher": e["speedup_vs_teacher"],
                     "accuracy": _fmt_stat(e["accuracy"]), "macro_f1": _fmt_stat(e["macro_f1"]),
                     "auc": _fmt_stat(e["auc"]), "agreement": _fmt_stat(fid.get("agreement")),
                     "kl_to_teacher": _fmt_stat(fid.get("kl_to_teacher")),
                     "attribution_cosine": _fmt_interval(e["attribution_cosine"])})
    return pd.DataFrame(rows).round({"params_m": 2, "params_m_full_vocab": 2, "size_mb": 2, "size_mb_full_vocab": 2,
                                     "latency_ms_b1": 2, "latency_ms_b32": 2, "speedup_vs_teacher": 2})


def recommendation_text(summary: dict[str, Any]) -> str:
    """The recommendation as one Markdown line."""
    rec = summary["recommendation"]
    return (f"**Recommendation** (chosen on validation accuracy, tolerance {rec['tolerance']:.3f}; test figures are "
            f"reported only): {rec['text']}")


def headline_markdown(summary: dict[str, Any]) -> str:
    """Question, answer and one verdict line per student, as Markdown."""
    lines = [f"**Question.** {summary['question']}", "", f"**Answer.** {summary['headline']}", ""]
    lines += [f"- `{v['model']}` · {v['arm']} vs {v['against']}: {v['text']}" for v in summary["verdicts"]]
    if summary.get("attribution_verdicts"):
        lines += ["", "**Do they explain like the teacher?** Attribution cosine to the teacher (its own family, "
                      "Holm-adjusted):", ""]
        lines += [f"- `{v['model']}` · {v['text']}" for v in summary["attribution_verdicts"]]
    lines += ["", f"*How the intervals were computed.* {summary['statistics']}"]
    return "\n".join(lines)


def answer_markdown(run_dir: str | Path) -> str:
    """The question and one verdict line per student (available before the benchmark runs), as Markdown."""
    t = load_tables(run_dir)
    lines = [f"**Question.** {QUESTION}", ""]
    if teacher_collapsed(t):
        lines += [f"**Warning: the teacher {t.index['teacher']['name']} collapsed** (validation accuracy "
                  f"{t.teacher['val']['accuracy']:.3f}, majority class {t.teacher['majority_val_accuracy']:.3f}): "
                  f"no distillation comparison in this run is meaningful.", ""]
    lines += [f"- `{v['model']}` · {v['arm']} vs {v['against']}: {v['text']}" for v in kd_verdicts(t)]
    return "\n".join(lines)


def report_tables(run_dir: str | Path, summary: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """Every table of the report, titled, in reading order (stage 04 and paper tables only when present)."""
    run = Path(run_dir)
    t = load_tables(run)
    out = {"Did distillation help? Test accuracy per student and arm (mean ± std over seeds; intervals unadjusted, "
           "p Holm-adjusted for the primary endpoint)": kd_table(run)}
    chain = chain_table(run)
    if chain is not None:
        out["The progressive chain: each student distilled from the previous, larger one vs directly from the "
            "teacher (test accuracy; a secondary contrast: interval and p unadjusted)"] = chain
    out["Floor and ceiling: test split"] = floor_ceiling(run)
    out["Size, speed, accuracy and fidelity to the teacher, per model x mode (test split)"] = models_table(summary)
    if t.paper is not None:
        out["The seed's six architectures (random weights): measured vs claimed"] = t.paper.round(3)
    variants = run / "benchmark" / "variants.csv"
    if variants.is_file():
        v = pd.read_csv(variants)
        out["Deployment variants at batch 32 (mean over modes and seeds)"] = v.groupby(
            ["model", "variant"], sort=False, as_index=False)[
            ["latency_ms_b32", "speedup_vs_fp32", "accuracy", "accuracy_change", "agreement_with_fp32"]].mean().round(3)
    if t.attribution_contrasts is not None:
        out[CONTRAST_TITLE] = attribution_contrast_table(run)
    if t.precision_plan is not None and len(t.precision_plan):
        target = t.precision_plan["target"].iloc[0]
        out[f"Attribution precision: each contrast's half-width against ±{target:g}, and the seeds that would reach "
            f"it (projected from this run's seed and case variance; notebook 04)"] = precision_table(t.precision_plan)
    if t.attribution_agreement is not None:
        out[f"{ATTRIBUTION_TITLE} {summary.get('attribution_scope') or ''}".strip()] = attribution_table(run)
    return out


def attribution_contrast_table(run_dir: str | Path) -> pd.DataFrame | str:
    """The attribution family: cosine to the teacher, each arm against independent and against distilled."""
    t = load_tables(run_dir)
    if t.attribution_contrasts is None:
        return "stage 04 did not run: no attribution contrasts"
    return contrast_table(t.attribution_contrasts)


def attribution_table(run_dir: str | Path) -> pd.DataFrame | str:
    """Stage 04's agreement, faithfulness and rationale recall per model x arm: 'mean [95% CI]' over seeds and cases
    (a note if it did not run)."""
    t = load_tables(run_dir)
    if t.attribution_agreement is None:
        return "stage 04 did not run: no attribution tables"
    return agreement_table(t.attribution_agreement).reset_index().rename(columns={"row": "model"})


def export_html(run_dir: str | Path, summary: dict[str, Any]) -> Path:
    """Write `report.html` (self-contained: tables, verdicts, every figure inlined, no code)."""
    return write_report(run_dir, summary, report_tables(run_dir, summary))
