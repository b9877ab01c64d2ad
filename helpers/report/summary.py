"""Stage 05: the answer of a run (did distillation help, which model to deploy) as a validated summary.json."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from helpers.attribution.agreement import scope_of
from helpers.core.constants import ARMS
from helpers.core.params import ReportParams
from helpers.core.run_folder import read_index, read_json, write_json
from helpers.data.store import load_classes
from helpers.report.schema import SCHEMA_VERSION, validate_summary

QUESTION = ("Does true knowledge distillation (alpha*T^2*KL + (1-alpha)*CE against the teacher's softened "
            "probabilities), with or without an unlabelled transfer set, make a small student predict case outcomes "
            "better than training it on the labels alone, and which model should be deployed?")
STATISTICS = ("Paired differences arm - independent per student on the test split (same seeds, same cases; also "
              "distilled_transfer - pseudo_label_transfer and chain - distilled, where both arms ran). Seeds and "
              "test cases are two crossed random factors: the standard error counts the seed, case and seed x case "
              "variance once each ((MS_seed + MS_case - MS_res) / (S N), two-way ANOVA; macro-F1 and ROC-AUC from "
              "case resamples), the 95% t-interval uses Satterthwaite's degrees of freedom. Primary endpoint: test "
              "accuracy, each arm vs independent, Holm-adjusted over that family; every other metric and contrast "
              "is secondary (unadjusted, labelled so). The verdicts hold for new seeds and test cases, for this one "
              "labelled training set. Every choice (best step, learning rate, collapse gate, deployed model) was "
              "made on the validation split; test figures are reported only.")


@dataclass
class RunTables:
    """The run folder's files that the report reads (optional stages are None when they did not run)."""

    index: dict[str, Any]
    card: dict[str, Any]
    teacher: dict[str, Any]
    metrics: pd.DataFrame  # test split only
    val_metrics: pd.DataFrame  # validation split: what every decision reads
    kd_gain: pd.DataFrame
    runs: pd.DataFrame | None
    benchmark: pd.DataFrame | None
    paper: pd.DataFrame | None
    environment: dict[str, Any] | None
    attributions: pd.DataFrame | None  # attributions/summary.csv: per training run
    attribution_examples: pd.DataFrame | None
    attribution_agreement: pd.DataFrame | None = None  # attributions/agreement.csv: per arm, over seeds and cases
    attribution_contrasts: pd.DataFrame | None = None  # attributions/contrasts.csv: the attribution family
    chain: pd.DataFrame | None = None  # models/chain.csv: who taught whom in the chain arm
    precision_plan: pd.DataFrame | None = None  # attributions/precision_plan.csv: what the attribution target takes


def _optional_csv(path: Path, **kwargs) -> pd.DataFrame | None:
    return pd.read_csv(path, **kwargs) if path.is_file() else None


def load_tables(run_dir: str | Path) -> RunTables:
    """Read the data card, the models' metrics, the KD gains and, when present, benchmark/ and attributions/."""
    run = Path(run_dir)
    metrics = pd.read_csv(run / "models" / "metrics.csv")
    env_path = run / "benchmark" / "environment.json"
    return RunTables(index=read_index(run), card=read_json(run / "data" / "data_card.json"),
                     teacher=read_json(run / "models" / "teacher_metrics.json"),
                     metrics=metrics[metrics["split"] == "test"].reset_index(drop=True),
                     val_metrics=metrics[metrics["split"] == "val"].reset_index(drop=True),
                     kd_gain=pd.read_csv(run / "models" / "kd_gain.csv", keep_default_na=False, na_values=[""]).assign(
                         did_not_learn=lambda d: d["did_not_learn"].astype(object).fillna("").astype(str)),
                     runs=_optional_csv(run / "models" / "student_runs.csv", keep_default_na=False, na_values=[""]),
                     benchmark=_optional_csv(run / "benchmark" / "benchmark.csv"),
                     paper=_optional_csv(run / "benchmark" / "paper.csv"),
                     environment=read_json(env_path) if env_path.is_file() else None,
                     attributions=_optional_csv(run / "attributions" / "summary.csv"),
                     attribution_examples=_optional_csv(run / "attributions" / "per_example.csv", dtype={"id": str}),
                     attribution_agreement=_optional_csv(run / "attributions" / "agreement.csv"),
                     attribution_contrasts=_optional_csv(run / "attributions" / "contrasts.csv",
                                                         keep_default_na=False, na_values=[""]),
                     chain=_optional_csv(run / "models" / "chain.csv"),
                     precision_plan=_optional_csv(run / "attributions" / "precision_plan.csv"))


def _num(x: Any) -> float | None:
    """A finite float, or None (JSON has no NaN)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _stat(values: pd.Series) -> dict[str, float | None]:
    v = values.dropna().astype(float)
    return {"mean": _num(v.mean()) if len(v) else None, "std": _num(v.std(ddof=1)) if len(v) > 1 else None}


def teacher_collapsed(t: RunTables) -> bool:
    """Whether stage 02 marked the teacher collapsed (no better than the majority class)."""
    return bool(t.index.get("teacher_collapsed", t.teacher.get("collapsed", False)))


def kd_verdicts(t: RunTables) -> list[dict[str, str]]:
    """One verdict line per student x arm on test accuracy (kd_gain.csv's verdict: Holm-adjusted, 'no evidence'
    when the interval covers zero, 'not comparable' when a run did not learn, 'not meaningful' after a collapse)."""
    rows = t.kd_gain[t.kd_gain["metric"] == "accuracy"]
    return [{"model": r.model, "arm": r.arm, "against": r.against, "text": r.verdict} for r in rows.itertuples()]


def _attribution(t: RunTables, name: str, mode: str) -> dict[str, Any] | None:
    """Cosine similarity of the model's attributions to the teacher's (attributions/agreement.csv): the mean over
    the explained seeds and cases with its two-way 95% interval and half-width, the cases used and those left out
    for their convergence delta."""
    if t.attribution_agreement is None:
        return None
    a = t.attribution_agreement
    rows = a[(a["model"] == name) & (a["mode"] == mode) & (a["metric"] == "cosine")]
    if rows.empty or rows["mean"].isna().all():
        return None
    r = rows.iloc[0]
    pe = t.attribution_examples
    seeds = [] if pe is None else sorted(int(s) for s in pe.loc[(pe["model"] == name) & (pe["mode"] == mode),
                                                                 "seed"].unique())
    return {"mean": float(r["mean"]), "ci_low": _num(r["ci_low"]), "ci_high": _num(r["ci_high"]),
            "ci_half_width": _num(r["ci_half_width"]), "seeds": seeds, "n_cases": int(r["n_cases"]),
            "n_excluded": int(r["n_excluded"])}


def attribution_verdicts(t: RunTables) -> list[dict[str, str]]:
    """The attribution family (contrasts.csv, cosine): one line per student x arm x reference arm."""
    if t.attribution_contrasts is None:
        return []
    rows = t.attribution_contrasts[t.attribution_contrasts["endpoint"] == "primary"]
    return [{"model": r.model, "arm": r.arm, "against": r.against, "text": r.verdict} for r in rows.itertuples()]


def attribution_scope(t: RunTables) -> str | None:
    """What the attribution intervals cover, from the numbers of cases, student seeds and reference teachers."""
    if t.attribution_examples is None:
        return None
    return scope_of(t.attribution_examples)


def _bench_row(t: RunTables, name: str, mode: str) -> dict[str, Any]:
    if t.benchmark is None:
        return {}
    b = t.benchmark[t.benchmark["model"] == name]
    exact = b[b["mode"] == mode]
    return (exact if len(exact) else b).iloc[0].to_dict() if len(b) else {}


def _gain(r, teacher_collapsed_: bool) -> dict[str, Any]:
    """A kd_gain.csv row as summary.json writes it."""
    return {"against": str(r.against), "diff": float(r.diff), "ci_low": _num(r.ci_low), "ci_high": _num(r.ci_high),
            "p_value": _num(r.p_value), "p_adjusted": _num(r.p_adjusted), "n_seeds": int(r.n_seeds),
            "meaningful": bool(r.meaningful) and not teacher_collapsed_, "did_not_learn": str(r.did_not_learn),
            "verdict": str(r.verdict)}


def _chain_vs_direct(t: RunTables, name: str) -> dict[str, Any] | None:
    """A chain student's chain - distilled row of kd_gain.csv, with the link's teacher (models/chain.csv)."""
    rows = t.kd_gain[(t.kd_gain["metric"] == "accuracy") & (t.kd_gain["model"] == name)
                     & (t.kd_gain["arm"] == "chain") & (t.kd_gain["against"] == "distilled")]
    link = None if t.chain is None else t.chain[t.chain["model"] == name]
    if rows.empty or link is None or link.empty:
        return None
    return {"against": "distilled", "teacher": str(link["teacher"].iloc[0]),
            "teacher_params": int(link["teacher_params"].iloc[0]),
            **{k: v for k, v in _gain(next(rows.itertuples()), teacher_collapsed(t)).items() if k != "against"}}


def model_entries(t: RunTables) -> list[dict[str, Any]]:
    """summary.json `models`: one entry per model x mode (teacher first), metrics over seeds on the test split."""
    m = t.metrics[t.metrics["mode"].isin(("teacher", *ARMS))]
    entries = [t.index["teacher"], *t.index.get("students", [])]
    shapes = {e["name"]: e.get("shape", "") for e in entries}
    full_vocab = {e["name"]: e.get("params_full_vocab") for e in entries}
    gains = {(r.model, r.arm): r for r in t.kd_gain[t.kd_gain["metric"] == "accuracy"].itertuples()
             if r.against == "independent"}
    val = t.val_metrics.groupby(["model", "mode"])["accuracy"].mean()
    out = []
    for (name, mode), g in m.groupby(["model", "mode"], sort=False):
        bench = _bench_row(t, name, mode)
        student = mode != "teacher"
        gain = gains.get((name, mode)) if student else None
        out.append({
            "name": name, "mode": mode, "role": "student" if student else "teacher", "shape": shapes.get(name, ""),
            "params": int(g["params"].iloc[0]), "non_embedding_params": int(g["non_embedding_params"].iloc[0]),
            "params_full_vocab": int(full_vocab.get(name) or g["params"].iloc[0]),
            "seeds": sorted(int(s) for s in g["seed"].unique()),
            "val_accuracy": _num(val.get((name, mode))),
            "training": _training(t, name, mode) if student else None,
            "size_mb": _num(bench.get("size_mb")), "latency_ms_b1": _num(bench.get("latency_ms_b1")),
            "latency_ms_b32": _num(bench.get("latency_ms_b32")),
            "speedup_vs_teacher": _num(bench.get("speedup_vs_teacher_b32")),
            "accuracy": _stat(g["accuracy"]), "macro_f1": _stat(g["macro_f1"]), "auc": _stat(g["roc_auc"]),
            "fidelity": {"agreement": _stat(g["agreement"]), "kl_to_teacher": _stat(g["kl_to_teacher"])}
            if student else None,
            "attribution_cosine": _attribution(t, name, mode),
            "kd_gain": None if gain is None else _gain(gain, teacher_collapsed(t)),
            "chain_vs_direct": _chain_vs_direct(t, name) if mode == "chain" else None,
        })
    return out


def _training(t: RunTables, name: str, mode: str) -> dict[str, Any] | None:
    """Budget actually used by a student x arm over its seeds (student_runs.csv)."""
    if t.runs is None:
        return None
    r = t.runs[(t.runs["model"] == name) & (t.runs["mode"] == mode)]
    if r.empty:
        return None
    return {"lr": float(r["lr"].iloc[0]), "steps_mean": float(r["steps"].mean()),
            "best_step_mean": float(r["best_step"].mean()),
            "stopped_early": int(r["stopped_early"].astype(str).str.lower().eq("true").sum()),
            "train_seconds": float(r["train_seconds"].sum()),
            "examples_per_second": _num(r["train_examples"].sum() / max(r["train_seconds"].sum(), 1e-9)),
            "did_not_learn": int((r["did_not_learn"].fillna("").astype(str) != "").sum())}


def recommend(models: pd.DataFrame, teacher_val_accuracy: float, tolerance: float, collapsed: bool = False,
              teacher_name: str = "the teacher", teacher_test_accuracy: float | None = None) -> dict[str, Any]:
    """Smallest student (by params) whose best arm's mean VALIDATION accuracy is within `tolerance` of the teacher's.

    `models`: one row per student x arm with columns name, mode, params, val_accuracy, accuracy (test, reported
    only) and optionally speedup_vs_teacher. Test accuracy never takes part in the choice, so the test figure
    quoted for the pick is an unbiased estimate. A tie goes to `independent` (no teacher needed).
    """
    base = {"meaningful": not collapsed, "selected_on": "val", "model": None, "mode": None, "params": None,
            "val_accuracy": None, "accuracy": None, "teacher_val_accuracy": float(teacher_val_accuracy),
            "teacher_accuracy": None if teacher_test_accuracy is None else float(teacher_test_accuracy),
            "gap": None, "speedup_vs_teacher": None, "tolerance": float(tolerance)}
    if collapsed:
        return {**base, "text": f"No recommendation: {teacher_name} collapsed to the majority class on validation, so "
                                f"matching its accuracy means nothing; fix the teacher (more epochs, another learning "
                                f"rate, a pretrained start) and rerun."}
    cand = models.assign(rank=models["mode"].map({"independent": 0}).fillna(1))
    best = cand.sort_values(["val_accuracy", "rank"], ascending=[False, True], kind="stable").drop_duplicates("name")
    ok = best[best["val_accuracy"] >= teacher_val_accuracy - tolerance - 1e-12]
    if ok.empty:
        top = best.iloc[0] if len(best) else None
        closest = (f" The closest is {top['name']} ({top['mode']}) at {top['val_accuracy']:.3f}." if top is not None
                   else "")
        return {**base, "text": f"No student comes within {tolerance:.3f} of {teacher_name}'s validation accuracy "
                                f"({teacher_val_accuracy:.3f}): deploy the teacher, or train the students longer."
                                f"{closest}"}
    pick = ok.sort_values(["params", "val_accuracy"], ascending=[True, False], kind="stable").iloc[0]
    speed = _num(pick.get("speedup_vs_teacher"))
    faster = f", {speed:.1f}x faster than the teacher at batch 32" if speed else ""
    test = _num(pick.get("accuracy"))
    gap = None if test is None or teacher_test_accuracy is None else float(test - teacher_test_accuracy)
    reported = (f"; on the test split (reported, not used to choose) {test:.3f} vs {teacher_test_accuracy:.3f} "
                f"({gap:+.3f})" if gap is not None else "")
    return {**base, "model": str(pick["name"]), "mode": str(pick["mode"]), "params": int(pick["params"]),
            "val_accuracy": float(pick["val_accuracy"]), "accuracy": test, "gap": gap, "speedup_vs_teacher": speed,
            "text": f"Deploy {pick['name']} ({pick['mode']}): {pick['params'] / 1e6:.1f}M parameters, chosen on "
                    f"validation accuracy {pick['val_accuracy']:.3f} vs {teacher_val_accuracy:.3f} for the teacher "
                    f"(tolerance {tolerance:.3f}){reported}{faster}."}


def _candidates(models: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame([{"name": e["name"], "mode": e["mode"], "params": e["params"],
                          "val_accuracy": e["val_accuracy"], "accuracy": e["accuracy"]["mean"],
                          "speedup_vs_teacher": e["speedup_vs_teacher"]}
                         for e in models if e["role"] == "student" and e["val_accuracy"] is not None
                         and not (e.get("training") or {}).get("did_not_learn")],
                        columns=["name", "mode", "params", "val_accuracy", "accuracy", "speedup_vs_teacher"])


def _headline(teacher: dict[str, Any], verdicts: list[dict[str, str]], rec: dict[str, Any]) -> str:
    if teacher["collapsed"]:
        return (f"The teacher {teacher['name']} collapsed (validation accuracy {teacher['val_accuracy']:.3f}, no "
                f"better than the majority class): this run cannot say whether distillation helps. {rec['text']}")
    parts, secondary = [], []
    for arm, against in dict.fromkeys((v["arm"], v["against"]) for v in verdicts):
        if against != "independent":
            rows = [v for v in verdicts if (v["arm"], v["against"]) == (arm, against)]
            words = [f"{v['model']} " + ("helped" if " helped: " in v["text"] else "hurt" if " hurt: " in v["text"]
                                        else "no evidence of a difference")
                     for v in rows if v["text"].startswith("secondary")]
            secondary.append(f"{arm} vs {against}: " + ("; ".join(words) or "not comparable"))
            continue
        rows = [v for v in verdicts if (v["arm"], v["against"]) == (arm, against)]
        helped = [v["model"] for v in rows if " helped: " in v["text"]]
        hurt = [v["model"] for v in rows if " hurt: " in v["text"]]
        dnl = [v["model"] for v in rows if v["text"].startswith("not comparable")]
        text = (f"{arm} vs {against}: helped {', '.join(helped)}" if helped else
                f"{arm} vs {against}: no student shows evidence that it helped")
        text += f"; hurt {', '.join(hurt)}" if hurt else ""
        text += f"; not comparable (did not learn) {', '.join(dnl)}" if dnl else ""
        parts.append(f"{text} ({len(rows)} student{'s' if len(rows) != 1 else ''})")
    kd = ("; ".join(parts) + " (the primary endpoint: test accuracy vs independent, Holm-adjusted p < 0.05)."
          if parts else "No student was trained.")
    if secondary:
        kd += " Secondary contrasts (unadjusted 95% intervals): " + "; ".join(secondary) + "."
    return f"{kd} {rec['text']}"


def build_summary(p: ReportParams) -> dict[str, Any]:
    """The whole answer of a run as a dict matching summary_schema.SCHEMA."""
    t = load_tables(p.run_dir)
    task = load_classes(p.run_dir)
    models = model_entries(t)
    ts = t.teacher
    teacher = {"name": t.index["teacher"]["name"], "shape": t.index["teacher"].get("shape", ""),
               "seed": int(t.index["teacher"]["seed"]), "params": int(t.index["teacher"]["params"]),
               "val_accuracy": float(ts["val"]["accuracy"]), "accuracy": float(ts["test"]["accuracy"]),
               "macro_f1": float(ts["test"]["macro_f1"]),
               "auc": _num(ts["test"]["roc_auc"]), "collapsed": teacher_collapsed(t),
               "margin_over_tfidf": float(ts["margin_over_tfidf"]),
               "margin_over_majority": float(ts["margin_over_majority"]),
               "reference_accuracy": _num(ts.get("reference_test", {}).get("accuracy")),
               "reference_seeds": [int(r["seed"]) for r in ts.get("reference_test_per_seed", [])],
               "attribution_cosine_reference": _attribution(t, t.index["teacher"]["name"], "reference")}
    verdicts = kd_verdicts(t)
    rec = recommend(_candidates(models), teacher["val_accuracy"], p.recommend_tolerance, teacher["collapsed"],
                    f"the teacher ({teacher['name']})", teacher_test_accuracy=teacher["accuracy"])
    paper = None if t.paper is None else json.loads(t.paper.to_json(orient="records"))  # NaN -> null
    return {"schema_version": SCHEMA_VERSION, "profile": str(p.profile),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "question": QUESTION if task["task"] == "outcome" else QUESTION.replace(
                "case outcomes", f"a case's {task['label_column'].replace('_', ' ')} ({len(task['classes'])} classes)"),
            "headline": _headline(teacher, verdicts, rec), "statistics": STATISTICS,
            "precision": str(t.teacher.get("precision", "fp32")), "task": task["task"], "classes": task["classes"],
            "verdicts": verdicts, "data": t.card, "attribution_scope": attribution_scope(t),
            "attribution_verdicts": attribution_verdicts(t),
            "teacher": teacher,
            "recommendation": rec, "models": models,
            "benchmark": None if t.benchmark is None else {"environment": t.environment, "paper": paper}}


def write_summary(run_dir: str | Path, summary: dict[str, Any]) -> Path:
    """Validate `summary` against the schema, then write `summary.json` (nothing is written when invalid)."""
    validate_summary(summary)
    return write_json(Path(run_dir) / "summary.json", summary)
