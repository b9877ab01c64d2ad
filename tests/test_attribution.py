"""Stage 04: Integrated Gradients, agreement metrics, faithfulness, caching, the HTML view and the stage's files."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import attribution_params

from helpers.attribution import agreement
from helpers.attribution import integrated_gradients as attribution
from helpers.models.build import build_model, save_model
from helpers.models.specs import REGISTRY
from helpers.stages import attribution as attribution_stage
from helpers.views import attribution as attribution_view

TEXTS = [
    "The petitioner argued the statute was unconstitutional and the court agreed with the petitioner.",
    "Respondent filed a motion to dismiss; the lower court granted summary judgment for respondent.",
    "A unanimous decision held that the warrantless search violated the fourth amendment.",
    "The agency's interpretation was unreasonable under the governing regulations, the appellant said.",
    "Plaintiffs sought damages for breach of contract after the shipment arrived late and damaged.",
    "The defendant was convicted of fraud; on appeal he challenged the jury instructions <script>alert(1)</script>.",
    "Congress exceeded its commerce clause power, the state contended, in regulating local activity.",
    "The employer fired the worker after she complained about discrimination at the warehouse.",
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny models gain nothing from a second thread, and on a shared 2-core machine spinning OpenMP threads
    # make them up to 40x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(name: str = "Smoke_Teacher_2x64", seed: int = 0):
    return build_model(REGISTRY[name], seed=seed).eval()


@pytest.fixture(scope="module")
def examples():
    frame = pd.DataFrame({"id": [f"c{i}" for i in range(4)], "label": [0, 1, 0, 1], "text": TEXTS[:4]})
    return attribution.encode_examples(frame, max_len=24, aggregate_words=False)


def test_completeness_within_reported_delta(examples):
    torch.manual_seed(0)
    model = tiny()
    targets = torch.tensor([0, 1, 1, 0])
    attr, delta, change = attribution.integrated_gradients(model, examples.input_ids, examples.attention_mask,
                                                           targets, n_steps=20, internal_batch_size=20,
                                                           batch_examples=3)
    with torch.no_grad():
        fx = model(input_ids=examples.input_ids, attention_mask=examples.attention_mask).logits
        base = attribution.baseline_ids(examples.input_ids)
        fb = model(input_ids=base, attention_mask=examples.attention_mask).logits
    expected = (fx - fb).gather(1, targets[:, None])[:, 0].numpy()
    np.testing.assert_allclose(change, expected, atol=1e-5)
    assert np.all(np.abs(attr.sum(axis=1) - expected) <= np.abs(delta) + 1e-4)
    assert np.all(np.abs(delta) < 0.05 * np.maximum(np.abs(expected), 1))
    # [CLS], [SEP] and padding equal the baseline, so they get exactly zero attribution
    special = ~np.isin(examples.input_ids.numpy(), [101, 102, 0])
    assert np.all(attr[~special] == 0) and np.abs(attr[special]).sum() > 0


def test_baseline_keeps_cls_sep_and_pads_the_rest(examples):
    base = attribution.baseline_ids(examples.input_ids)
    ids = examples.input_ids
    assert base.shape == ids.shape
    assert torch.equal(base == 101, ids == 101) and torch.equal(base == 102, ids == 102)
    assert set(base.unique().tolist()) <= {0, 101, 102}


def test_batches_group_similar_lengths_within_the_token_budget():
    lengths = torch.tensor([10, 50, 12, 48, 11, 200])
    batches = [b.tolist() for b in attribution._length_batches(lengths, max_examples=3, max_tokens=120)]
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert batches == [[0, 4, 2], [3, 1], [5]]  # a lone over-budget example still gets its own batch


def test_identical_models_agree_perfectly(examples):
    model = tiny()
    targets = torch.zeros(4, dtype=torch.long)
    a, _, _ = attribution.integrated_gradients(model, examples.input_ids, examples.attention_mask, targets, 10, 10)
    b, _, _ = attribution.integrated_gradients(tiny(), examples.input_ids, examples.attention_mask, targets, 10, 10,
                                               batch_examples=1)
    for i, units in enumerate(examples.units):
        m = agreement.compare(attribution.unit_scores(a[i], units), attribution.unit_scores(b[i], units), k=5)
        assert m == pytest.approx({"cosine": 1.0, "spearman": 1.0, "topk_jaccard": 1.0, "sign_agreement": 1.0},
                                  abs=1e-4)


def test_metrics_on_hand_made_vectors():
    a = np.array([0.9, -0.5, 0.3, 0.1, -0.05])
    assert agreement.cosine(a, -a) == pytest.approx(-1)
    ranks = np.arange(6.0)
    assert agreement.spearman(ranks, ranks[::-1].copy()) == pytest.approx(-1)
    assert agreement.topk_jaccard(np.array([5, 4, 0, 0.0]), np.array([0, 0, 4, 5.0]), k=2) == 0
    assert agreement.topk_jaccard(np.array([5, 4, 1, 0.0]), np.array([5, 0, 4, 1.0]), k=2) == pytest.approx(1 / 3)
    assert agreement.sign_agreement(a, -a) == 0
    # a unit negligible in both vectors does not count
    assert agreement.sign_agreement(np.array([1.0, 0.001]), np.array([1.0, -0.001])) == 1


def test_special_tokens_excluded_and_word_pieces_aggregated():
    ids = [101, 7, 8, 9, 10, 102, 0, 0]
    tokens = ["[CLS]", "un", "##believ", "##able", "case", "[SEP]", "[PAD]", "[PAD]"]
    assert attribution.token_units(ids, tokens, aggregate_words=False) == [[1], [2], [3], [4]]
    assert attribution.token_units(ids, tokens, aggregate_words=True) == [[1, 2, 3], [4]]
    raw = np.array([100.0, 1.0, 1.0, 2.0, 3.0, -50.0, 0, 0])
    s = attribution.unit_scores(raw, [[1, 2, 3], [4]])
    np.testing.assert_allclose(s, np.array([4.0, 3.0]) / 5.0)


def test_encoded_units_follow_the_aggregate_flag():
    frame = pd.DataFrame({"id": ["a"], "label": [1], "text": ["unbelievably antidisestablishmentarianism"]})
    pieces = attribution.encode_examples(frame, 32, aggregate_words=False)
    words = attribution.encode_examples(frame, 32, aggregate_words=True)
    assert len(words.units[0]) == 2 < len(pieces.units[0])
    assert words.unit_text[0] == ["unbelievably", "antidisestablishmentarianism"]


def test_rationale_recall_on_hand_made_case():
    offsets = np.array([[0, 0], [0, 3], [4, 9], [10, 15], [16, 20], [0, 0]])  # [CLS] the court ruled today [SEP]
    units = [[1], [2], [3], [4]]
    cues = agreement.cue_units(offsets, units, [[4, 15, "ruling"]])
    assert cues.tolist() == [False, True, True, False]
    assert agreement.rationale_recall(np.array([0.1, 0.9, 0.5, 0.2]), cues, k=2) == 1.0
    assert agreement.rationale_recall(np.array([0.9, 0.1, 0.0, 0.5]), cues, k=2) == 0.0
    assert agreement.rationale_recall(np.array([0.9, 0.1, 0.0, 0.5]), cues, k=3) == 0.5
    assert agreement.random_recall(n_units=4, n_cues=2, k=2) == pytest.approx(0.5)
    assert np.isnan(agreement.rationale_recall(np.ones(4), np.zeros(4, bool), k=2))


def test_bootstrap_interval_brackets_the_mean():
    mean, lo, hi, n = agreement.bootstrap_mean([0.1, 0.5, np.nan, 0.9, 0.3], n_boot=500)
    assert n == 4 and mean == pytest.approx(0.45) and lo < mean < hi


def test_bootstrap_interval_has_the_normal_width_and_its_coverage():
    rng = np.random.default_rng(3)
    x = rng.normal(0.4, 1.0, 400)
    mean, lo, hi, n = agreement.bootstrap_mean(x, n_boot=2000)
    assert n == 400 and mean == pytest.approx(x.mean())
    assert (hi - lo) / 2 == pytest.approx(1.96 * x.std(ddof=1) / np.sqrt(len(x)), rel=0.1)
    # fresh samples each time: the 95% interval covers the true mean about 95% of the time
    hits = 0
    for k in range(200):
        _, lo, hi, _ = agreement.bootstrap_mean(rng.normal(0.4, 1.0, 60), n_boot=400, seed=k)
        hits += lo <= 0.4 <= hi
    assert 0.88 <= hits / 200 <= 0.99


def _attribution_frame(effect: float, n_cases: int, seeds, rng, seed_sd: float = 0.02, case_sd: float = 0.1,
                       noise_sd: float = 0.05) -> pd.DataFrame:
    """per_example rows of one student in independent and distilled: cosine = case effect + seed effect + noise, the
    distilled arm `effect` higher; the seed effects are the same for both arms only in part (as retrained runs)."""
    case = rng.normal(0.5, case_sd, n_cases)
    rows = []
    for s in seeds:
        shared = rng.normal(0, seed_sd)
        for mode, shift in (("independent", 0.0), ("distilled", effect)):
            own = rng.normal(0, seed_sd)
            values = case + shared + own + shift + rng.normal(0, noise_sd, n_cases)
            rows += [{"model": "S", "mode": mode, "seed": s, "id": f"c{i}", "cosine": v} for i, v in enumerate(values)]
    return pd.DataFrame(rows)


def test_attribution_contrasts_pair_each_case_and_seed_with_the_two_way_interval():
    rows = []
    for seed in (0, 1, 2):
        for i in range(30):
            base = 0.5 + 0.01 * i + 0.05 * seed
            for mode, value in (("independent", base), ("distilled", base + 0.1 + 0.02 * seed)):
                rows.append({"model": "S", "mode": mode, "seed": seed, "id": f"c{i}", "cosine": value})
    per_example = pd.DataFrame(rows).reindex(columns=["model", "mode", "seed", "id", *agreement.AGREEMENT_METRICS,
                                                       *agreement.FAITHFULNESS_METRICS])
    con = agreement.attribution_contrasts(per_example)
    assert con["metric"].tolist() == ["cosine"]  # metrics without values give no row
    row = con.iloc[0]
    # the difference is 0.10, 0.12, 0.14 in seeds 0-2 for every case: mean 0.12, and the interval is the seeds' t
    # interval (2 df), since the case terms are zero
    assert (row["n_cases"], row["n_seeds"], row["n_excluded"]) == (30, 3, 0) and row["diff"] == pytest.approx(0.12)
    from scipy.stats import t as student_t
    half = student_t.ppf(0.975, 2) * 0.02 / np.sqrt(3)
    assert row["ci_half_width"] == pytest.approx(half) and row["df"] == pytest.approx(2)
    assert row["endpoint"] == "primary" and row["p_adjusted"] == pytest.approx(row["p_value"])
    assert "raised agreement" in row["verdict"]
    # one seed explained: the interval covers cases only (a constant difference gives zero width)
    one = agreement.attribution_contrasts(per_example[per_example["seed"] == 0]).iloc[0]
    assert one["n_seeds"] == 1 and one["ci_low"] == pytest.approx(0.10) == one["ci_high"]
    assert "one training run" in agreement.interval_scope(30, 1, 3) and "3 student seeds" in agreement.interval_scope(
        30, 3, 3) and "3 other seeds" in agreement.interval_scope(30, 3, 3)
    assert "No reference teacher" in agreement.interval_scope(30, 3, 0)


def test_attribution_contrasts_cover_every_arm_against_independent_and_distilled_with_holm():
    rng = np.random.default_rng(0)
    frames = []
    for arm, effect in (("independent", 0.0), ("distilled", 0.0), ("distilled_attribution", 0.2),
                        ("distilled_hidden", 0.0)):
        f = _attribution_frame(effect, 100, (0, 1, 2), rng)
        frames.append(f[f["mode"] == "distilled"].assign(mode=arm))
    con = agreement.attribution_contrasts(pd.concat(frames, ignore_index=True))
    pairs = list(zip(con["arm"], con["against"]))
    assert pairs == [("distilled", "independent"), ("distilled_attribution", "independent"),
                     ("distilled_hidden", "independent"), ("distilled_attribution", "distilled"),
                     ("distilled_hidden", "distilled")]
    from helpers.evaluation.verdicts import holm
    np.testing.assert_allclose(con["p_adjusted"], holm(con["p_value"].to_numpy()))
    big = con[con["arm"] == "distilled_attribution"]
    assert (big["ci_low"] > 0).all() and (big["p_adjusted"] < 0.05).all()


def test_attribution_interval_covers_a_null_and_detects_a_planted_effect():
    """The two-way interval on simulated attribution data with seed, case and noise variance (the shape of a real
    stage-04 table): about 95% coverage of a zero effect, and a 0.1 effect found at 300 cases and 3 seeds."""
    rng = np.random.default_rng(11)
    cover, found = 0, 0
    for _ in range(200):
        con = agreement.attribution_contrasts(_attribution_frame(0.0, 300, (0, 1, 2), rng))
        cover += con["ci_low"].iloc[0] <= 0 <= con["ci_high"].iloc[0]
    for _ in range(40):
        con = agreement.attribution_contrasts(_attribution_frame(0.1, 300, (0, 1, 2), rng))
        found += con["ci_low"].iloc[0] > 0
    assert 0.9 <= cover / 200 <= 0.99
    assert found / 40 >= 0.8
    # a single-seed interval ignores the seed variance: it covers the null far less often
    narrow = 0
    for _ in range(200):
        con = agreement.attribution_contrasts(_attribution_frame(0.0, 300, (0,), rng, seed_sd=0.05))
        narrow += con["ci_low"].iloc[0] <= 0 <= con["ci_high"].iloc[0]
    assert narrow / 200 < 0.8


def test_arm_agreement_gives_each_arm_and_the_reference_one_row_over_seeds_and_cases():
    rng = np.random.default_rng(1)
    f = _attribution_frame(0.1, 50, (0, 1, 2), rng)
    ref = f[f["mode"] == "independent"].assign(mode="reference", model="T", seed=lambda d: d["seed"] + 1)
    a = agreement.arm_agreement(pd.concat([f, ref], ignore_index=True)).set_index("mode")
    assert list(a.index) == ["independent", "distilled", "reference"]
    assert a.loc["distilled", "mean"] == pytest.approx(f.loc[f["mode"] == "distilled", "cosine"].mean())
    assert (a["n_cases"] == 50).all() and (a["n_seeds"] == 3).all()
    assert (a["ci_low"] < a["mean"]).all() and (a["mean"] < a["ci_high"]).all()
    table = attribution_view.agreement_table(a.reset_index())
    assert list(table.index)[0].startswith("★ T retrained (reference)")


def test_examples_over_the_delta_threshold_are_left_out_of_every_mean_and_counted():
    rows = []
    for i in range(10):
        for mode, value in (("teacher", np.nan), ("independent", 0.5), ("distilled", 0.7)):
            bad = i < 2 and mode == "distilled"  # an absurd value that a flagged explanation produced
            rows.append({"model": "T" if mode == "teacher" else "S", "mode": mode, "seed": 0, "id": f"c{i}",
                         "cosine": 99.0 if bad else value, "spearman": value,
                         "comprehensiveness_teacher": 5.0 if bad else 0.2,
                         "comprehensiveness_own": 0.3, "flagged": bad, "flagged_own": False,
                         "teacher_flagged": i == 9})
    pe = pd.DataFrame(rows)
    summary = agreement.summarise(pe, n_boot=100).set_index(["mode", "metric"])
    # agreement: the two flagged students' examples and the teacher's flagged one are out
    assert summary.loc[("distilled", "cosine"), ["mean", "n", "n_excluded"]].tolist() == [pytest.approx(0.7), 7, 3]
    assert summary.loc[("independent", "cosine"), ["n", "n_excluded"]].tolist() == [9, 1]
    # faithfulness for the teacher's class uses the model's own teacher-class explanation only
    assert summary.loc[("distilled", "comprehensiveness_teacher"), ["mean", "n", "n_excluded"]].tolist() == [
        pytest.approx(0.2), 8, 2]
    assert summary.loc[("distilled", "comprehensiveness_own"), "n_excluded"] == 0
    con = agreement.attribution_contrasts(pe).set_index("metric")
    assert con.loc["cosine", ["diff", "n_cases", "n_excluded"]].tolist() == [pytest.approx(0.2), 7, 3]
    arms = agreement.arm_agreement(pe)
    row = arms[(arms["mode"] == "distilled") & (arms["metric"] == "cosine")].iloc[0]
    assert (row["mean"], row["n_cases"], row["n_excluded"]) == (pytest.approx(0.7), 7, 3)
    table = attribution_view.agreement_table(arms)
    assert table.loc["S · distilled", "excluded (|delta|)"] == 3
    assert table.loc["S · independent", "excluded (|delta|)"] == 1
    fig = attribution_view.similarity_distributions(pe, arms)
    assert "(4 value(s) left out" in fig.axes[0].get_title()  # 3 distilled + 1 independent


def test_cache_key_follows_the_checkpoint_and_the_token_ids_not_the_case_ids(tmp_path, examples):
    spec = REGISTRY["Smoke_Tiny_1x32"]
    a = save_model(build_model(spec, seed=0), tmp_path / "a", spec)
    b = save_model(build_model(spec, seed=1), tmp_path / "b", spec)
    ids, mask = examples.input_ids, examples.attention_mask
    targets = torch.tensor([0, 1, 0, 1])
    ig = attribution.IGSettings(steps=8, max_steps=8, threshold=0.05, internal_batch_size=8)
    key = attribution.cache_key(a, ids, mask, targets, ig)
    assert key == attribution.cache_key(a, ids.clone(), mask.clone(), targets, ig)
    assert key != attribution.cache_key(b, ids, mask, targets, ig)  # other weights
    other = ids.clone()
    other[0, 1] = 2000
    assert key != attribution.cache_key(a, other, mask, targets, ig)  # other text, whatever its case id
    assert key != attribution.cache_key(a, ids, mask, 1 - targets, ig)
    for changed in (dict(steps=4), dict(max_steps=16), dict(threshold=0.1), dict(precision="bf16")):
        assert key != attribution.cache_key(a, ids, mask, targets, dataclasses.replace(ig, **changed)), changed
    # explain() reuses the cache for the same checkpoint and ids, recomputes after the checkpoint changes
    model = build_model(spec, seed=0).eval()
    kw = dict(ig=attribution.IGSettings(steps=4, max_steps=4, threshold=0.05, internal_batch_size=4),
              device=torch.device("cpu"))
    first = attribution.explain(model, a, ids, mask, targets, tmp_path / "c.safetensors", **kw)
    again = attribution.explain(model, a, ids, mask, targets, tmp_path / "c.safetensors", **kw)
    assert not first.cached and again.cached
    np.testing.assert_array_equal(first.token_scores, again.token_scores)
    save_model(build_model(spec, seed=2), a, spec)  # same folder, new weights
    assert not attribution.explain(model, a, ids, mask, targets, tmp_path / "c.safetensors", **kw).cached


def test_steps_double_only_for_cases_over_the_threshold_up_to_the_cap(examples, tmp_path):
    spec = REGISTRY["Smoke_Teacher_2x64"]
    ckpt = save_model(build_model(spec, seed=0), tmp_path / "t", spec)
    model = tiny()
    targets = torch.tensor([0, 1, 0, 1])
    cpu = torch.device("cpu")
    coarse = attribution.explain(model, ckpt, examples.input_ids, examples.attention_mask, targets,
                                 tmp_path / "a.safetensors", ig=attribution.IGSettings(2, 2, 0.05, 2), device=cpu)
    rel2 = attribution.relative_delta(coarse.delta, coarse.logit_change)
    tol = float(np.median(rel2))  # half the cases over it at two steps
    over = rel2 > tol
    assert over.any() and not over.all()
    ada = attribution.explain(model, ckpt, examples.input_ids, examples.attention_mask, targets,
                              tmp_path / "b.safetensors", ig=attribution.IGSettings(2, 64, tol, 2), device=cpu)
    assert (ada.steps[~over] == 2).all() and (ada.steps[over] > 2).all() and ada.steps.max() <= 64
    rel = attribution.relative_delta(ada.delta, ada.logit_change)
    assert ((rel <= tol) | (ada.steps == 64)).all()  # within tolerance, or stopped at the cap
    # an example's attribution equals what a fixed-step run with its final number of steps gives
    i = int(np.argmax(ada.steps))
    fixed, _, _ = attribution.integrated_gradients(model, examples.input_ids[i:i + 1], examples.attention_mask[i:i + 1],
                                                   targets[i:i + 1], int(ada.steps[i]), 2)
    np.testing.assert_allclose(ada.token_scores[i], fixed[0], rtol=1e-4, atol=1e-6)


def test_faithfulness_removing_the_evidence_moves_probability(examples):
    model = tiny()
    targets = torch.tensor([0, 1, 0, 1])
    attr, _, _ = attribution.integrated_gradients(model, examples.input_ids, examples.attention_mask, targets, 20, 20)
    s = [attribution.unit_scores(attr[i], u) for i, u in enumerate(examples.units)]
    comp, suff = agreement.faithfulness(model, examples.input_ids, examples.attention_mask, examples.units, s,
                                        targets, replacement_id=0)
    assert comp.shape == suff.shape == (4,)
    # removing the strongest evidence for the class hurts it more than removing the strongest evidence against it
    anti, _ = agreement.faithfulness(model, examples.input_ids, examples.attention_mask, examples.units,
                                     [-x for x in s], targets, replacement_id=0)
    assert comp.mean() > anti.mean()


def test_html_view_escapes_markup():
    frame = pd.DataFrame({"id": ["x<b>"], "label": [1], "text": ["evil <script>alert(1)</script> facts"],
                          "teacher_pred": [1]})
    ex = attribution.encode_examples(frame[["id", "label", "text"]], 32, aggregate_words=False)
    scores = {"teacher": [np.linspace(-1, 1, len(ex.units[0]))]}
    html = attribution_view.render_html(ex, frame, scores, [{"tag": "teacher", "name": "T<i>", "mode": "teacher",
                                                             "seed": 0}])
    assert "<script>" not in html and "&lt;script&gt;" in html and "T&lt;i&gt;" in html
    assert "rgba(0,150,60" in html and "rgba(210,40,40" in html


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    (run / "data").mkdir()
    ids = [f"case{i}" for i in range(len(TEXTS))]
    pd.DataFrame({"id": ids, "text": TEXTS, "label": [i % 2 for i in range(len(TEXTS))]}).to_csv(
        run / "data" / "test.csv", index=False)
    with open(run / "data" / "rationales.jsonl", "w") as fh:
        for cid, text in zip(ids, TEXTS):
            word = "court" if "court" in text else text.split()[1]
            start = text.index(word)
            fh.write(json.dumps({"id": cid, "spans": [[start, start + len(word), "cue"]], "rule_prob": 0.7}) + "\n")
    teacher_spec, student_spec = REGISTRY["Smoke_Teacher_2x64"], REGISTRY["Smoke_Tiny_1x32"]

    def entry(name, mode, seed, path, shape):
        return {"name": name, "role": "student" if mode in ("independent", "distilled") else "teacher",
                "mode": mode, "seed": seed, "path": path, "params": 0, "non_embedding_params": 0, "shape": shape}

    save_model(build_model(teacher_spec, seed=0), run / "models/teacher", teacher_spec)
    (run / "models" / "teacher_metrics.json").write_text(json.dumps({"precision": "fp32"}))
    for seed in (1, 2):
        save_model(build_model(teacher_spec, seed=seed), run / f"models/teacher_reference_seed{seed}", teacher_spec)
    students = []
    for k, mode in enumerate(["independent", "distilled"]):
        path = f"models/students/{student_spec.name}/{mode}/seed0"
        save_model(build_model(student_spec, seed=10 + k), run / path, student_spec)
        students.append(entry(student_spec.name, mode, 0, path, "1x32"))
    students.append(entry(student_spec.name, "distilled", 1, "models/students/missing/seed1", "1x32"))
    index = {"teacher": entry(teacher_spec.name, "teacher", 0, "models/teacher", "2x64"),
             "teacher_references": [entry(teacher_spec.name, "reference", seed, f"models/teacher_reference_seed{seed}",
                                          "2x64") for seed in (1, 2)],
             "teacher_collapsed": False, "students": students}
    (run / "models" / "models.json").write_text(json.dumps(index))
    return run


STAGE_ARGS = dict(device="cpu", max_len=32, ig_examples=6, ig_steps=8, ig_max_steps=16, ig_internal_batch_size=8,
                  ig_delta_threshold=0.05, topk=5, attribution_seeds=[0, 1], aggregate_words=False,
                  faithfulness_replacement="pad", bootstrap_n=200)


def test_stage_writes_every_documented_file(run_folder, capsys):
    res = attribution_stage.run_attribution_stage(attribution_params(run_folder, **STAGE_ARGS))
    out = run_folder / "attributions"
    for name in ["per_example.csv", "summary.csv", "agreement.csv", "contrasts.csv", "precision_plan.csv",
                 "timing.csv", "examples.csv",
                 "examples.html", "cache/teacher.safetensors", "cache/teacher_reference__seed1.safetensors",
                 "cache/teacher_reference__seed2.safetensors"]:
        assert (out / name).is_file(), name
    assert "skipping" in capsys.readouterr().out  # the seed-1 student without a checkpoint
    examples = pd.read_csv(out / "examples.csv")
    assert list(examples.columns) == ["id", "label", "teacher_pred", "n_tokens"]
    assert len(examples) == 6 and sorted(examples["label"]) == [0, 0, 0, 1, 1, 1]
    per = pd.read_csv(out / "per_example.csv")
    assert set(attribution_stage.PER_EXAMPLE_COLUMNS) == set(per.columns)
    assert {"teacher_pred", "own_pred", "flagged", "flagged_own", "teacher_flagged", "comprehensiveness_own",
            "sufficiency_own", "comprehensiveness_teacher", "sufficiency_teacher"} <= set(per.columns)
    # both faithfulness targets: equal where a model predicts the teacher's class, computed apart where it does not
    same = per["own_pred"] == per["teacher_pred"]
    assert (per.loc[per["mode"] == "teacher", "own_pred"] == per.loc[per["mode"] == "teacher", "teacher_pred"]).all()
    np.testing.assert_allclose(per.loc[same, "comprehensiveness_own"], per.loc[same, "comprehensiveness_teacher"])
    assert (~same).any(), "the random tiny students should disagree with the teacher somewhere"
    assert (per.loc[~same, "comprehensiveness_own"] != per.loc[~same, "comprehensiveness_teacher"]).all()
    assert sorted(per["mode"].unique()) == ["distilled", "independent", "reference", "teacher"]
    assert len(per) == 5 * 6 and per.loc[per["mode"] != "teacher", "cosine"].notna().all()
    assert per["ig_steps"].between(8, 16).all()
    assert per[agreement.RANDOM_METRICS].notna().all().all()
    assert per["rationale_recall"].notna().any()
    summary = pd.read_csv(out / "summary.csv")
    assert set(agreement.SUMMARY_COLUMNS) == set(summary.columns)
    reference = summary[(summary["mode"] == "reference") & (summary["metric"] == "cosine")]
    assert reference["model"].tolist() == ["Smoke_Teacher_2x64"] * 2 and reference["seed"].tolist() == [1, 2]
    arms = pd.read_csv(out / "agreement.csv")
    ref = arms[(arms["mode"] == "reference") & (arms["metric"] == "cosine")].iloc[0]
    assert ref["n_seeds"] == 2 and ref["n_cases"] + ref["n_excluded"] == 6
    assert {"comprehensiveness_random", "sufficiency_random"} <= set(arms["metric"])
    assert {"comprehensiveness_own", "sufficiency_own", "comprehensiveness_teacher", "sufficiency_teacher"} <= set(
        summary.loc[summary["mode"] == "teacher", "metric"])
    assert "one training run" in res["scope"]  # attribution_seeds [0, 1] but only seed 0 has checkpoints
    assert (summary["ci_low"] <= summary["mean"] + 1e-12).all()
    assert (summary["mean"] <= summary["ci_high"] + 1e-12).all()
    assert ((summary["mode"] == "baseline") & (summary["metric"] == "rationale_recall")).any()
    con = pd.read_csv(out / "contrasts.csv")
    assert set(con["metric"]) >= {"cosine", "spearman", "topk_jaccard", "sign_agreement"}
    assert con[["arm", "against"]].drop_duplicates().values.tolist() == [["distilled", "independent"]]
    timing = pd.read_csv(out / "timing.csv")
    assert {"model", "mode", "seed", "n_examples", "seconds", "seconds_per_example", "mean_ig_steps",
            "precision"} <= set(timing.columns)
    assert len(timing) == 5 and not timing["cached"].any() and (timing["precision"] == "fp32").all()
    assert "<script>" not in (out / "examples.html").read_text()
    pd.testing.assert_frame_equal(res["summary"], summary, check_dtype=False)  # what the stage returns is on disk
    figs = [attribution_view.agreement_heatmap(res["agreement"], run_folder),
            attribution_view.similarity_distributions(res["per_example"], res["agreement"], run_folder),
            attribution_view.contrast_plot(res["contrasts"], run_dir=run_folder),
            attribution_view.faithfulness_plot(res["agreement"], res["summary"], run_folder)]
    assert all(f.axes for f in figs)
    assert len(attribution_view.contrast_table(res["contrasts"])) == 1
    for name in ["04_agreement_heatmap", "04_similarity_distributions", "04_attribution_contrasts",
                 "04_faithfulness"]:
        assert (run_folder / "figures" / f"{name}.png").is_file()


def test_rerun_reuses_every_cached_attribution(run_folder, monkeypatch):
    attribution_stage.run_attribution_stage(attribution_params(run_folder,
                                                               **STAGE_ARGS))  # fills the cache if run alone
    calls = []
    real = attribution.integrated_gradients
    monkeypatch.setattr(attribution, "integrated_gradients", lambda *a, **k: calls.append(1) or real(*a, **k))
    res = attribution_stage.run_attribution_stage(attribution_params(run_folder,
                                                                     **dict(STAGE_ARGS, aggregate_words=True)))
    assert calls == [] and res["timing"]["cached"].all()
    # a different number of IG steps changes the key: everything is recomputed (a second call for the models
    # whose own predicted class differs from the teacher's somewhere)
    res = attribution_stage.run_attribution_stage(attribution_params(run_folder, **dict(STAGE_ARGS, ig_steps=4)))
    per = res["per_example"]
    differ = per[per["own_pred"] != per["teacher_pred"]].groupby(["model", "mode", "seed"]).ngroups
    assert len(calls) >= 5 + differ and not res["timing"]["cached"].any()


def test_stage_without_rationales_or_distilled_students(run_folder, tmp_path):
    import shutil

    run = tmp_path / "real"
    shutil.copytree(run_folder, run, ignore=shutil.ignore_patterns("attributions", "figures"))
    (run / "data" / "rationales.jsonl").unlink()
    shutil.rmtree(run / "models" / "students" / "Smoke_Tiny_1x32" / "distilled")
    params = attribution_params(run, **dict(STAGE_ARGS, faithfulness_replacement="mask"))
    res = attribution_stage.run_attribution_stage(params)
    assert res["per_example"]["rationale_recall"].isna().all()
    assert "rationale_recall" not in set(res["summary"]["metric"])
    assert set(res["summary"]["mode"]) == {"teacher", "reference", "independent"} and res["contrasts"].empty
    attribution_view.agreement_heatmap(res["agreement"])
    attribution_view.similarity_distributions(res["per_example"], res["agreement"])
    attribution_view.contrast_plot(res["contrasts"])
    assert attribution_view.contrast_table(res["contrasts"]).empty
    attribution_view.faithfulness_plot(res["agreement"], res["summary"])
