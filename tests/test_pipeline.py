"""The whole suite through the runner on the smoke profile (01 -> 05), asserting on the run folder's files."""
from __future__ import annotations

import json

import pandas as pd
import yaml

from helpers.config.resolve import resolve
from helpers.run.runner import run


def test_smoke_pipeline_writes_the_run_folder_contract(smoke_run):
    r = smoke_run
    params = yaml.safe_load((r / "params.yaml").read_text())
    assert params["profile"] == "smoke" and params["run_dir"] == str(r)
    for nb in ("01_prepare_data", "02_train_teacher", "03_train_students", "04_compare_attributions", "05_report"):
        assert (r / "notebooks" / f"{nb}.ipynb").is_file()
        assert json.loads((r / "manifests" / f"{nb}.json").read_text())["hash"]
    card = json.loads((r / "data" / "data_card.json").read_text())
    assert card["n_train"] + card["n_val"] + card["n_test"] == len(pd.concat(
        [pd.read_csv(r / "data" / f"{s}.csv") for s in ("train", "val", "test")]))
    index = json.loads((r / "models" / "models.json").read_text())
    students = index["students"]
    # both smoke students in 7 arms (4 logit arms, 3 beyond-logit arms), 2 seeds; the chain: Half (the larger) is
    # its first link (its distilled runs), so only Tiny gets chain runs
    assert len(students) == (7 + 7) * 2 + 2
    assert [e["seed"] for e in index["teacher_references"]] == [1]
    for e in [index["teacher"], *index["teacher_references"], *students]:
        assert (r / e["path"] / "model.safetensors").is_file()
        assert not list((r / e["path"]).glob("*.bin")) and not list((r / e["path"]).glob("*.pt"))
    assert len(list((r / "models" / "teacher_logits").glob("*.safetensors"))) == 1
    metrics = pd.read_csv(r / "models" / "metrics.csv")
    assert set(metrics["mode"]) == {"teacher", "reference", "independent", "distilled", "distilled_transfer",
                                    "pseudo_label_transfer", "chain", "distilled_hidden", "distilled_attention",
                                    "distilled_attribution"}
    gain = pd.read_csv(r / "models" / "kd_gain.csv", keep_default_na=False, na_values=[""])
    assert set(gain["model"]) == {"Smoke_Half_1x64", "Smoke_Tiny_1x32"}
    assert set(gain.loc[gain["model"] == "Smoke_Tiny_1x32", "arm"]) == {
        "distilled", "distilled_transfer", "pseudo_label_transfer", "chain", "distilled_hidden", "distilled_attention",
        "distilled_attribution"}
    # the transfer arms are also compared with each other: same extra cases, soft vs hard targets
    contrast = gain[gain["against"] == "pseudo_label_transfer"]
    assert set(contrast["arm"]) == {"distilled_transfer"} and set(contrast["model"]) == set(gain["model"])
    assert {"p_value", "p_adjusted", "ci_half_width", "did_not_learn"} <= set(gain.columns)
    # the chain: Tiny learned from Half's seed-0 distilled model (one cached logits pass), compared with both arms
    chain = pd.read_csv(r / "models" / "chain.csv")
    assert chain["model"].tolist() == ["Smoke_Half_1x64", "Smoke_Tiny_1x32"]
    assert chain["teacher"].tolist()[1:] == ["Smoke_Half_1x64"]
    assert len(list((r / "models" / "chain_logits").glob("*.safetensors"))) == 1
    chained = gain[(gain["arm"] == "chain")]
    assert set(zip(chained["model"], chained["against"])) == {("Smoke_Tiny_1x32", "independent"),
                                                              ("Smoke_Tiny_1x32", "distilled")}
    runs = pd.read_csv(r / "models" / "student_runs.csv", keep_default_na=False)
    assert {"steps", "train_examples", "train_seconds", "best_step", "lr", "precision"} <= set(runs.columns)
    assert (runs["train_examples"] > 0).all() and (runs["train_seconds"] > 0).all()
    # independent and distilled runs of a student and seed saw the same batches
    pair = runs[runs["mode"].isin(["independent", "distilled"])].groupby(["model", "seed"])["batch_digest"].nunique()
    assert (pair == 1).all()
    lr = pd.read_csv(r / "models" / "lr_selection.csv")
    # every arm of every student chose its own rate, on both tuning seeds: two chosen trial rows per student x arm
    arms_run = set(zip(runs["model"], runs["mode"])) - {("Smoke_Half_1x64", "chain")}
    assert set(zip(lr["model"], lr["arm"])) == arms_run
    assert lr.groupby(["model", "arm"])["chosen"].sum().eq(2).all()
    chosen = lr[lr["chosen"]].drop_duplicates(["model", "arm"]).set_index(["model", "arm"])["lr"]
    for (model, mode), g in runs.groupby(["model", "mode"]):
        assert set(g["lr"]) == {chosen[(model, mode)]}, (model, mode)  # every seed trains at its arm's rate
    assert (r / "data" / "transfer.csv").is_file() and (r / "data" / "vocab.json").is_file()
    summary = pd.read_csv(r / "attributions" / "summary.csv")
    assert "reference" in set(summary["mode"])
    contrasts = pd.read_csv(r / "attributions" / "contrasts.csv")
    # every arm against independent, and every arm but distilled against distilled, for both students
    tiny = contrasts[(contrasts["model"] == "Smoke_Tiny_1x32") & (contrasts["metric"] == "cosine")]
    assert len(tiny) == 7 + 6 and set(tiny["endpoint"]) == {"primary"}
    plan = pd.read_csv(r / "attributions" / "precision_plan.csv")
    assert len(plan) == (contrasts["metric"] == "cosine").sum()  # one plan row per contrast of the family
    assert plan["seeds_needed"].isna().all()  # the smoke run explains one seed: no seed variance to plan from
    assert (r / "summary.json").is_file() and (r / "report.html").is_file()
    entries = json.loads((r / "summary.json").read_text())["models"]
    chain_entries = [e for e in entries if e["mode"] == "chain"]
    assert [e["name"] for e in chain_entries] == ["Smoke_Tiny_1x32"]
    assert chain_entries[0]["kd_gain"]["against"] == "independent"
    vs_direct = chain_entries[0]["chain_vs_direct"]
    assert vs_direct["against"] == "distilled" and vs_direct["teacher"] == "Smoke_Half_1x64"
    assert all(e["chain_vs_direct"] is None for e in entries if e["mode"] != "chain")
    assert "progressive chain" in (r / "report.html").read_text(encoding="utf-8")
    for fig in ("01_lengths", "02_baselines", "03_kd_gain", "04_agreement_heatmap", "05_pareto"):
        assert (r / "figures" / f"{fig}.png").is_file(), fig


def test_rerun_with_same_parameters_skips_everything(smoke_run):
    report = run(resolve("smoke", run_dir=str(smoke_run)), log_output=False)
    assert [x["status"] for x in report] == ["skipped"] * 5


def test_sweep_reruns_only_the_student_stage(smoke_run, tmp_path):
    import shutil

    from helpers.run.sweep import sweep

    # A copy of the smoke run (the sweep rewrites its base's params.yaml), swept over the arms the sweep treats
    # differently: the logit arms and the chain, whose links each combination retrains.
    base = tmp_path / "run"
    shutil.copytree(smoke_run, base)
    table = sweep([("alpha", "0.2,0.8")], profile="smoke", fixed=[("arms", "independent,distilled,chain")],
                  run_dir=str(base))
    sweep_dir = base.parent / f"{base.name}-sweep"
    assert (sweep_dir / "sweep.csv").is_file() and (sweep_dir / "sweep.png").is_file()
    acc = table[table["metric"] == "accuracy"]
    # one best combination per student x arm, and it is the one with the best validation accuracy
    assert (acc.groupby(["model", "arm"])["best_on_val"].sum() == 1).all()
    for _, g in acc.groupby(["model", "arm"]):
        assert g.loc[g["best_on_val"], "val_accuracy"].iloc[0] == g["val_accuracy"].max()
    assert sorted(set(table["alpha"])) == [0.2, 0.8]
    # the chain arm is swept too: against independent, and chain_vs_direct (against distilled)
    assert {("chain", "independent"), ("chain", "distilled")} <= set(zip(table["arm"], table["against"]))
    base_manifest = (smoke_run / "manifests" / "02_train_teacher.json").read_text()
    assert set(table["arm"]) == {"distilled", "chain"}
    for combo in ("alpha=0.2", "alpha=0.8"):
        folder = sweep_dir / combo
        # the teacher stage was reused (its manifest is the base run's, byte for byte), the student stage ran
        assert (folder / "manifests" / "02_train_teacher.json").read_text() == base_manifest
        assert json.loads((folder / "manifests" / "03_train_students.json").read_text())["hash"]
        assert yaml.safe_load((folder / "params.yaml").read_text())["alpha"] == float(combo.split("=")[1])
        assert not (folder / "manifests" / "04_compare_attributions.json").exists()


def test_no_decision_reads_the_test_labels(smoke_run, tmp_path):
    """Scramble the test labels of a finished smoke run, rerun every stage that decides anything (02, 03, 05):
    the collapse gate, the teacher's best epoch, the learning rates, every run's best step and early stop, and
    the recommendation must all come out the same; only the reported test figures may move."""
    import shutil

    import numpy as np

    scrambled = tmp_path / "scrambled"
    shutil.copytree(smoke_run, scrambled)
    test_csv = scrambled / "data" / "test.csv"
    test = pd.read_csv(test_csv, dtype=str, keep_default_na=False)
    test["label"] = np.random.default_rng(0).permutation(test["label"].to_numpy())
    test.to_csv(test_csv, index=False, lineterminator="\n")
    params = resolve("smoke", run_dir=str(scrambled))
    for stage in ("02", "03", "05"):
        run(params, only=stage, force=True, log_output=False)

    def decisions(r):
        s = json.loads((r / "summary.json").read_text())
        t = json.loads((r / "models" / "teacher_metrics.json").read_text())
        runs = pd.read_csv(r / "models" / "student_runs.csv", keep_default_na=False)
        lr = pd.read_csv(r / "models" / "lr_selection.csv")
        hist = pd.read_csv(r / "models" / "teacher" / "history.csv")
        rec = s["recommendation"]
        return {"collapsed": t["collapsed"], "teacher_best": hist.loc[hist["best"], "step"].tolist(),
                "lrs": lr[lr["chosen"]][["model", "arm", "lr"]].drop_duplicates().values.tolist(),
                "runs": runs[["model", "mode", "seed", "lr", "steps", "best_step", "stopped_early",
                              "did_not_learn"]].values.tolist(),
                "recommendation": (rec["model"], rec["mode"], rec["selected_on"], rec["val_accuracy"])}

    before, after = decisions(smoke_run), decisions(scrambled)
    assert before["recommendation"][0] is not None, "the smoke run must make a recommendation"
    assert after == before
    t_before = json.loads((smoke_run / "models" / "teacher_metrics.json").read_text())["test"]["accuracy"]
    t_after = json.loads((scrambled / "models" / "teacher_metrics.json").read_text())["test"]["accuracy"]
    assert t_after != t_before  # the test labels really changed what is reported
