"""Stage 05: the answer of a run (did distillation help, which model to deploy) as a validated summary.json."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from .evaluation import verdict
from .run_folder import read_index, read_json, write_json
from .summary_schema import SCHEMA_VERSION, validate_summary

QUESTION = ("Does true knowledge distillation (alpha*T^2*KL + (1-alpha)*CE against the teacher's softened "
            "probabilities) make a small student predict case outcomes better than training it on the labels alone, "
            "and which model should be deployed?")
STUDENT_MODES = ("independent", "distilled")


@dataclass
class RunTables:
    """The run folder's files that the report reads (optional stages are None when they did not run)."""

    index: dict[str, Any]
    card: dict[str, Any]
    teacher: dict[str, Any]
    metrics: pd.DataFrame  # test split only
    kd_gain: pd.DataFrame
    benchmark: pd.DataFrame | None
    paper: pd.DataFrame | None
    environment: dict[str, Any] | None
    attributions: pd.DataFrame | None
    attribution_examples: pd.DataFrame | None


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
                     kd_gain=pd.read_csv(run / "models" / "kd_gain.csv"),
                     benchmark=_optional_csv(run / "benchmark" / "benchmark.csv"),
                     paper=_optional_csv(run / "benchmark" / "paper.csv"),
                     environment=read_json(env_path) if env_path.is_file() else None,
                     attributions=_optional_csv(run / "attributions" / "summary.csv"),
                     attribution_examples=_optional_csv(run / "attributions" / "per_example.csv", dtype={"id": str}))


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
    """One verdict line per student on test accuracy ('no evidence' when the interval covers zero)."""
    rows = t.kd_gain[t.kd_gain["metric"] == "accuracy"]
    name = t.index["teacher"]["name"]
    meaningful = not teacher_collapsed(t)
    return [{"model": r.model, "text": verdict(r.diff, r.ci_low, r.ci_high, bool(r.meaningful) and meaningful,
                                               "accuracy", name)} for r in rows.itertuples()]


def _attribution(t: RunTables, name: str, mode: str, n_boot: int = 1000) -> dict[str, Any] | None:
    """Cosine similarity of the model's attributions to the teacher's: mean and 95% CI over examples."""
    if t.attributions is None:
        return None
    rows = t.attributions[(t.attributions["model"] == name) & (t.attributions["mode"] == mode)
                          & (t.attributions["metric"] == "cosine")]
    if rows.empty or rows["mean"].isna().all():
        return None
    seeds = sorted(int(s) for s in rows["seed"])
    if len(rows) == 1 or t.attribution_examples is None:
        r = rows.iloc[0] if len(rows) == 1 else rows.mean(numeric_only=True)
        return {"mean": float(rows["mean"].mean()), "ci_low": _num(r["ci_low"]), "ci_high": _num(r["ci_high"]),
                "seeds": seeds}
    from .agreement import bootstrap_mean

    # Several seeds explained: average each example over seeds, then bootstrap over examples.
    pe = t.attribution_examples
    per_id = pe[(pe["model"] == name) & (pe["mode"] == mode)].groupby("id")["cosine"].mean()
    mean, lo, hi, _ = bootstrap_mean(per_id.to_numpy(), n_boot)
    return {"mean": float(mean), "ci_low": _num(lo), "ci_high": _num(hi), "seeds": seeds}


def _bench_row(t: RunTables, name: str, mode: str) -> dict[str, Any]:
    if t.benchmark is None:
        return {}
    b = t.benchmark[t.benchmark["model"] == name]
    exact = b[b["mode"] == mode]
    return (exact if len(exact) else b).iloc[0].to_dict() if len(b) else {}


def model_entries(t: RunTables) -> list[dict[str, Any]]:
    """summary.json `models`: one entry per model x mode (teacher first), metrics over seeds on the test split."""
    m = t.metrics[t.metrics["mode"].isin(("teacher", *STUDENT_MODES))]
    shapes = {e["name"]: e.get("shape", "") for e in [t.index["teacher"], *t.index.get("students", [])]}
    gains = {r.model: r for r in t.kd_gain[t.kd_gain["metric"] == "accuracy"].itertuples()}
    lines = {v["model"]: v["text"] for v in kd_verdicts(t)}
    out = []
    for (name, mode), g in m.groupby(["model", "mode"], sort=False):
        bench = _bench_row(t, name, mode)
        student = mode != "teacher"
        gain = gains.get(name) if student else None
        out.append({
            "name": name, "mode": mode, "role": "student" if student else "teacher", "shape": shapes.get(name, ""),
            "params": int(g["params"].iloc[0]), "non_embedding_params": int(g["non_embedding_params"].iloc[0]),
            "seeds": sorted(int(s) for s in g["seed"].unique()),
            "size_mb": _num(bench.get("size_mb")), "latency_ms_b1": _num(bench.get("latency_ms_b1")),
            "latency_ms_b32": _num(bench.get("latency_ms_b32")),
            "speedup_vs_teacher": _num(bench.get("speedup_vs_teacher_b32")),
            "accuracy": _stat(g["accuracy"]), "macro_f1": _stat(g["macro_f1"]), "auc": _stat(g["roc_auc"]),
            "fidelity": {"agreement": _stat(g["agreement"]), "kl_to_teacher": _stat(g["kl_to_teacher"])}
            if student else None,
            "attribution_cosine": _attribution(t, name, mode),
            "kd_gain": None if gain is None else {
                "diff": float(gain.diff), "ci_low": _num(gain.ci_low), "ci_high": _num(gain.ci_high),
                "meaningful": bool(gain.meaningful) and not teacher_collapsed(t), "verdict": lines[name]},
        })
    return out


def recommend(models: pd.DataFrame, teacher_accuracy: float, tolerance: float, collapsed: bool = False,
              teacher_name: str = "the teacher") -> dict[str, Any]:
    """Smallest student (by params) whose best-mode mean accuracy is within `tolerance` of the teacher's.

    `models`: one row per student x mode with columns name, mode, params, accuracy (mean over seeds) and
    optionally speedup_vs_teacher. A tie in accuracy between modes goes to `independent` (no teacher needed).
    """
    base = {"meaningful": not collapsed, "model": None, "mode": None, "params": None, "accuracy": None,
            "teacher_accuracy": float(teacher_accuracy), "gap": None, "speedup_vs_teacher": None,
            "tolerance": float(tolerance)}
    if collapsed:
        return {**base, "text": f"No recommendation: {teacher_name} collapsed to the majority class, so matching "
                                f"its accuracy means nothing; fix the teacher (more epochs, another learning rate, "
                                f"a pretrained start) and rerun."}
    cand = models.assign(rank=models["mode"].map({"independent": 0}).fillna(1))
    best = cand.sort_values(["accuracy", "rank"], ascending=[False, True], kind="stable").drop_duplicates("name")
    ok = best[best["accuracy"] >= teacher_accuracy - tolerance - 1e-12]
    if ok.empty:
        top = best.iloc[0] if len(best) else None
        closest = (f" The closest is {top['name']} ({top['mode']}) at {top['accuracy']:.3f}." if top is not None
                   else "")
        return {**base, "text": f"No student comes within {tolerance:.3f} of {teacher_name}'s test accuracy "
                                f"({teacher_accuracy:.3f}): deploy the teacher, or train the students longer.{closest}"}
    pick = ok.sort_values(["params", "accuracy"], ascending=[True, False], kind="stable").iloc[0]
    speed = _num(pick.get("speedup_vs_teacher"))
    faster = f", {speed:.1f}x faster than the teacher at batch 32" if speed else ""
    gap = float(pick["accuracy"] - teacher_accuracy)
    return {**base, "model": str(pick["name"]), "mode": str(pick["mode"]), "params": int(pick["params"]),
            "accuracy": float(pick["accuracy"]), "gap": gap, "speedup_vs_teacher": speed,
            "text": f"Deploy {pick['name']} ({pick['mode']}): {pick['params'] / 1e6:.1f}M parameters, test accuracy "
                    f"{pick['accuracy']:.3f} vs {teacher_accuracy:.3f} for the teacher ({gap:+.3f}, tolerance "
                    f"{tolerance:.3f}){faster}."}


def _candidates(models: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame([{"name": e["name"], "mode": e["mode"], "params": e["params"],
                          "accuracy": e["accuracy"]["mean"], "speedup_vs_teacher": e["speedup_vs_teacher"]}
                         for e in models if e["role"] == "student"],
                        columns=["name", "mode", "params", "accuracy", "speedup_vs_teacher"])


def _headline(teacher: dict[str, Any], verdicts: list[dict[str, str]], rec: dict[str, Any]) -> str:
    if teacher["collapsed"]:
        return (f"The teacher {teacher['name']} collapsed (test accuracy {teacher['accuracy']:.3f}, no better than "
                f"the majority class): this run cannot say whether distillation helps. {rec['text']}")
    helped = [v["model"] for v in verdicts if v["text"].startswith("distillation helped")]
    hurt = [v["model"] for v in verdicts if v["text"].startswith("distillation hurt")]
    kd = (f"Distillation helped {', '.join(helped)}" if helped else "No student shows evidence that distillation "
          "helped") + (f"; it hurt {', '.join(hurt)}" if hurt else "") + f" ({len(verdicts)} students, test accuracy)."
    return f"{kd} {rec['text']}"


def build_summary(run_dir: str | Path, profile: str, tolerance: float) -> dict[str, Any]:
    """The whole answer of a run as a dict matching summary_schema.SCHEMA."""
    t = load_tables(run_dir)
    models = model_entries(t)
    ts = t.teacher
    teacher = {"name": t.index["teacher"]["name"], "shape": t.index["teacher"].get("shape", ""),
               "seed": int(t.index["teacher"]["seed"]), "params": int(t.index["teacher"]["params"]),
               "accuracy": float(ts["test"]["accuracy"]), "macro_f1": float(ts["test"]["macro_f1"]),
               "auc": _num(ts["test"]["roc_auc"]), "collapsed": teacher_collapsed(t),
               "margin_over_tfidf": float(ts["margin_over_tfidf"]),
               "margin_over_majority": float(ts["margin_over_majority"]),
               "ceiling_accuracy": _num(ts.get("ceiling_test", {}).get("accuracy")),
               "attribution_cosine_ceiling": _attribution(t, t.index["teacher"]["name"], "ceiling")}
    verdicts = kd_verdicts(t)
    rec = recommend(_candidates(models), teacher["accuracy"], tolerance, teacher["collapsed"],
                    f"the teacher ({teacher['name']})")
    paper = None if t.paper is None else json.loads(t.paper.to_json(orient="records"))  # NaN -> null
    return {"schema_version": SCHEMA_VERSION, "profile": str(profile),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "question": QUESTION,
            "headline": _headline(teacher, verdicts, rec), "verdicts": verdicts, "data": t.card, "teacher": teacher,
            "recommendation": rec, "models": models,
            "benchmark": None if t.benchmark is None else {"environment": t.environment, "paper": paper}}


def write_summary(run_dir: str | Path, summary: dict[str, Any]) -> Path:
    """Validate `summary` against the schema, then write `summary.json` (nothing is written when invalid)."""
    validate_summary(summary)
    return write_json(Path(run_dir) / "summary.json", summary)
