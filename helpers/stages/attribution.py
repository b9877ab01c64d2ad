"""Stage 04: explain every model on one example set, compare with the teacher, and write `attributions/`."""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from helpers.attribution import agreement
from helpers.attribution.integrated_gradients import (
    REPLACEMENT_IDS,
    IGSettings,
    encode_examples,
    explain,
    model_entries,
    relative_delta,
    select_examples,
    unit_scores,
)
from helpers.core.device import pick_device
from helpers.core.params import AttributionParams
from helpers.core.progress import progress
from helpers.data.rationales import load_rationales
from helpers.data.store import load_classes
from helpers.evaluation.precision import precision_plan
from helpers.models.build import load_model
from helpers.training.checkpoints import teacher_summary
from helpers.training.loop import predict_logits
from helpers.views.attribution import render_html

PER_EXAMPLE_COLUMNS = ["model", "mode", "seed", "id", "label", "teacher_pred", "own_pred",
                       *agreement.AGREEMENT_METRICS, "delta", "rel_delta", "flagged", "ig_steps", "delta_own",
                       "rel_delta_own", "flagged_own", "teacher_flagged", *agreement.FAITHFULNESS_METRICS,
                       *agreement.RANDOM_METRICS]
TIMING_COLUMNS = ["model", "mode", "seed", "n_examples", "seconds", "seconds_per_example", "mean_ig_steps",
                  "cached", "faithfulness_seconds", "precision"]
OUTPUTS = ("per_example", "summary", "agreement", "contrasts", "precision_plan", "timing", "examples")


def run_attribution_stage(p: AttributionParams, *, seed: int = 0) -> dict:
    """Attribute, compare and measure faithfulness for every model; write attributions/ and return its tables.

    Args:
        ig_examples: stratified test cases explained (the same cases for every model, chosen with `seed`).
        ig_steps, ig_max_steps: IG steps every case starts with, and the cap of the doubling for the cases whose
            relative convergence delta exceeds ig_delta_threshold (integrated_gradients.explain).
        ig_internal_batch_size: IG steps per forward pass, per example.
        ig_delta_threshold: a case still over it at ig_max_steps is flagged: it stays in per_example.csv but is
            left out of every mean and counted (`n_excluded`).
        topk: k of the top-k overlap and of rationale recall.
        attribution_seeds: the student seeds explained (the teacher and its reference teachers always are).
        faithfulness_replacement: pad | mask, the token that removes tokens in comprehensiveness/sufficiency.
    IG and the faithfulness passes run in the run's precision (stage 02's, in teacher_metrics.json).
    """
    device = pick_device(p.device)
    if p.faithfulness_replacement not in REPLACEMENT_IDS:
        raise ValueError(f"faithfulness_replacement={p.faithfulness_replacement!r}: expected 'pad' or 'mask'")
    run, device = Path(p.run_dir), torch.device(device)
    precision = str(teacher_summary(run).get("precision", "fp32"))
    ig = IGSettings(steps=p.ig_steps, max_steps=p.ig_max_steps, threshold=p.ig_delta_threshold,
                    internal_batch_size=p.ig_internal_batch_size, precision=precision)
    out = run / "attributions"
    out.mkdir(parents=True, exist_ok=True)
    test = pd.read_csv(run / "data" / "test.csv", dtype={"id": str, "text": str}, keep_default_na=False)
    examples = encode_examples(select_examples(test, p.ig_examples, seed), p.max_len, p.aggregate_words)
    ids, mask = examples.input_ids.to(device), examples.attention_mask.to(device)
    entries = model_entries(run, list(p.attribution_seeds))
    teacher = load_model(run / entries[0]["path"], device)
    targets = torch.from_numpy(predict_logits(teacher, {"input_ids": ids, "attention_mask": mask},
                                              device=device, precision=precision).argmax(axis=1))
    frame = examples.frame.assign(teacher_pred=targets.numpy(), n_tokens=examples.attention_mask.sum(1).numpy())
    frame[["id", "label", "teacher_pred", "n_tokens"]].to_csv(out / "examples.csv", index=False)

    rationales = load_rationales(run)  # {} when the data has no ground-truth rationales (real data)
    cues = None
    if rationales:
        cues = [agreement.cue_units(examples.offsets[i], examples.units[i], rationales.get(str(cid), []))
                for i, cid in enumerate(frame["id"])]

    rows, timing, scores, teacher_flags = [], [], {}, None
    repl = REPLACEMENT_IDS[p.faithfulness_replacement]
    faith = dict(replacement_id=repl, precision=precision)

    for e in progress(entries, desc="attributions (models)"):
        model = teacher if e["tag"] == "teacher" else load_model(run / e["path"], device)
        expl = explain(model, run / e["path"], examples.input_ids, examples.attention_mask, targets,
                       out / "cache" / f"{e['tag']}.safetensors", ig=ig, device=device)
        own = torch.from_numpy(predict_logits(model, {"input_ids": ids, "attention_mask": mask},
                                              device=device, precision=precision).argmax(axis=1))
        # The model's own decision: where it differs from the teacher's, explain that class as well.
        own_tokens, own_delta, own_change = expl.token_scores.copy(), expl.delta.copy(), expl.logit_change.copy()
        differ = torch.nonzero(own != targets)[:, 0]
        seconds, cached = expl.seconds, expl.cached
        if len(differ):
            sub = explain(model, run / e["path"], examples.input_ids[differ], examples.attention_mask[differ],
                          own[differ], out / "cache" / f"{e['tag']}__own.safetensors", ig=ig, device=device)
            own_tokens[differ.numpy()] = sub.token_scores
            own_delta[differ.numpy()], own_change[differ.numpy()] = sub.delta, sub.logit_change
            seconds, cached = seconds + sub.seconds, cached and sub.cached
        s = [unit_scores(expl.token_scores[i], u) for i, u in enumerate(examples.units)]
        scores[e["tag"]] = s
        t0 = time.perf_counter()
        comp_t, suff_t = agreement.faithfulness(model, ids, mask, examples.units, s, targets.to(device), **faith)
        # own class: the same numbers where it is the teacher's class; removed again only where it differs
        comp_o, suff_o = comp_t.copy(), suff_t.copy()
        if len(differ):
            d = differ.numpy()
            s_own = [unit_scores(own_tokens[i], examples.units[i]) for i in d]
            comp_o[d], suff_o[d] = agreement.faithfulness(model, ids[differ.to(device)], mask[differ.to(device)],
                                                          [examples.units[i] for i in d], s_own,
                                                          own[differ].to(device), **faith)
        rng = np.random.default_rng([seed, int(e["seed"]), len(rows)])
        random_scores = [rng.permutation(len(u)).astype(float) for u in examples.units]
        comp_r, suff_r = agreement.faithfulness(model, ids, mask, examples.units, random_scores, targets.to(device),
                                                **faith)
        faith_s = time.perf_counter() - t0
        rel = relative_delta(expl.delta, expl.logit_change)
        rel_own = relative_delta(own_delta, own_change)
        flags = rel > p.ig_delta_threshold
        if e["tag"] == "teacher":
            teacher_flags = flags
        for i, cid in enumerate(frame["id"]):
            sim = (agreement.compare(scores["teacher"][i], s[i], p.topk) if e["tag"] != "teacher"
                   else dict.fromkeys(agreement.AGREEMENT_METRICS, math.nan))
            recall = agreement.rationale_recall(s[i], cues[i], p.topk) if cues is not None else math.nan
            rows.append({"model": e["name"], "mode": e["mode"], "seed": int(e["seed"]), "id": cid,
                         "label": int(frame["label"][i]), "teacher_pred": int(targets[i]), "own_pred": int(own[i]),
                         **sim, "delta": float(expl.delta[i]), "rel_delta": float(rel[i]), "flagged": bool(flags[i]),
                         "ig_steps": int(expl.steps[i]), "delta_own": float(own_delta[i]),
                         "rel_delta_own": float(rel_own[i]), "flagged_own": bool(rel_own[i] > p.ig_delta_threshold),
                         "teacher_flagged": bool(teacher_flags[i]),
                         "comprehensiveness_own": float(comp_o[i]), "sufficiency_own": float(suff_o[i]),
                         "comprehensiveness_teacher": float(comp_t[i]), "sufficiency_teacher": float(suff_t[i]),
                         "rationale_recall": recall, "comprehensiveness_random": float(comp_r[i]),
                         "sufficiency_random": float(suff_r[i])})
        n = len(frame)
        timing.append({"model": e["name"], "mode": e["mode"], "seed": int(e["seed"]), "n_examples": n,
                       "seconds": seconds, "seconds_per_example": seconds / max(n, 1),
                       "mean_ig_steps": float(np.mean(expl.steps)), "cached": cached,
                       "faithfulness_seconds": faith_s, "precision": precision})
        print(f"{e['tag']:<44} IG {'cached' if cached else f'{seconds:6.1f} s'} (mean {np.mean(expl.steps):4.1f} "
              f"steps)  faithfulness {faith_s:5.1f} s  flagged {int(flags.sum())}/{n}  own class differs "
              f"{len(differ)}/{n}", flush=True)
        if model is not teacher:
            del model

    per_example = pd.DataFrame(rows, columns=PER_EXAMPLE_COLUMNS)
    summary = agreement.summarise(per_example, p.bootstrap_n, seed)
    if cues is not None:
        base = [agreement.random_recall(len(u), int(c.sum()), p.topk) for u, c in zip(examples.units, cues)]
        mean, lo, hi, n_ok = agreement.bootstrap_mean(base, p.bootstrap_n, seed)
        if n_ok:
            summary.loc[len(summary)] = ["random", "baseline", -1, "rationale_recall", mean, lo, hi, n_ok, 0]
    arms = agreement.arm_agreement(per_example)
    contrasts = agreement.attribution_contrasts(per_example)
    plan = precision_plan(contrasts, p.attribution_target, len(test))
    timing_df = pd.DataFrame(timing, columns=TIMING_COLUMNS)
    scope = agreement.scope_of(per_example)
    html = render_html(examples, frame, scores, entries, n=3, class_names=load_classes(run)["classes"])
    paths = {name: out / f"{name}.csv" for name in OUTPUTS}
    paths.update(examples_html=out / "examples.html", cache=out / "cache")
    per_example.to_csv(paths["per_example"], index=False)
    summary.to_csv(paths["summary"], index=False)
    arms.to_csv(paths["agreement"], index=False)
    contrasts.to_csv(paths["contrasts"], index=False)
    plan.to_csv(paths["precision_plan"], index=False)
    timing_df.to_csv(paths["timing"], index=False)
    paths["examples_html"].write_text(html, encoding="utf-8")
    return {"paths": paths, "per_example": per_example, "summary": summary, "agreement": arms,
            "contrasts": contrasts, "precision_plan": plan, "timing": timing_df, "examples": frame, "scope": scope,
            "html": _displayable(html), "has_rationales": cues is not None}


def _displayable(html: str):
    try:
        from IPython.display import HTML
    except ImportError:  # pragma: no cover - IPython ships with the notebook stack
        return html
    return HTML(html)
