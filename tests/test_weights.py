"""The beyond-logit arms' term weights chosen on validation (python -m helpers weights)."""
import shutil

import pandas as pd
import pytest

from helpers.core.constants import BEYOND_ARMS
from helpers.core.run_folder import read_json


@pytest.fixture(scope="module")
def chosen(smoke_run, tmp_path_factory):
    from helpers.run.weights import choose_weights

    run_dir = tmp_path_factory.mktemp("weights") / "run"
    shutil.copytree(smoke_run, run_dir)
    # One student's searches only (the other's would run the same way): half the retraining
    selection = run_dir / "models" / "lr_selection.csv"
    lrs = pd.read_csv(selection)
    lrs[lrs["model"] == lrs["model"].iloc[0]].to_csv(selection, index=False)
    before = {p: (run_dir / "models" / p).read_bytes() for p in ("student_runs.csv", "metrics.csv",
                                                                  "predictions.csv", "lr_selection.csv")}
    table = choose_weights(run_dir, [2.0], extensions=0)
    return run_dir, table, before


def test_every_beyond_arm_gets_the_weight_with_the_best_mean_validation_score(chosen):
    run_dir, table, _ = chosen
    assert (run_dir / "models" / "weight_selection.csv").is_file()
    settings = read_json(run_dir / "models" / "student_settings.json")
    assert set(table["arm"]) == set(BEYOND_ARMS)
    for _, g in table.groupby(["model", "arm"]):
        assert sorted(set(g["weight"])) == sorted({2.0, float(settings[g["parameter"].iloc[0]])})
        assert len(set(g["seed"])) == len(g) // len(set(g["weight"]))  # every weight on every tuning seed
        means = g.groupby("weight")["val_metric"].mean()
        best = min(means.index, key=lambda w: (-means[w], w))
        assert g.loc[g["chosen"], "weight"].unique().tolist() == [best]
        assert g["mean_val_metric"].round(12).tolist() == g["weight"].map(means).round(12).tolist()


def test_the_runs_own_trials_stand_for_the_current_weight_and_nothing_is_scored_on_test(chosen):
    """The current weight's scores are the stage's own trials at the chosen rate (reused, not retrained), the other
    weights are new runs, and no file of the run's results changes (no test case is scored)."""
    run_dir, table, before = chosen
    lrs = pd.read_csv(run_dir / "models" / "lr_selection.csv")
    current = table[table["current"]].merge(lrs[lrs["chosen"]], on=["model", "arm", "lr", "seed"],
                                            suffixes=("", "_stage"))
    assert len(current) == len(table[table["current"]]) > 0
    assert (current["val_metric"] == current["val_metric_stage"]).all()
    assert table.loc[~table["current"], "steps"].notna().all()  # trained here
    for name, data in before.items():
        assert (run_dir / "models" / name).read_bytes() == data
    assert not (run_dir / "models" / "students" / ".trials").exists()


def test_a_retrained_trial_at_the_current_weight_reproduces_the_stage_score(chosen):
    """Reusing the stage's trial is only sound if the run is deterministic: retrain one and compare."""
    from helpers.stages.student_runs import load_shared, run_job
    from helpers.training.internals import ARM_WEIGHT
    from helpers.training.jobs import Job

    run_dir, table, _ = chosen
    settings = read_json(run_dir / "models" / "student_settings.json")
    row = table[table["current"] & (table["arm"] == "distilled_hidden")].iloc[0]
    load_shared(run_dir, settings)
    res = run_job(Job(row["model"], row["arm"], int(row["seed"]), float(row["lr"]), final=False,
                      weight=float(settings[ARM_WEIGHT["distilled_hidden"]])))
    assert res["val_metric"] == row["val_metric"]
    shutil.rmtree(run_dir / "models" / "students" / ".trials", ignore_errors=True)


def test_a_run_without_beyond_arms_is_refused_with_the_file_named(tmp_path):
    from helpers.run.weights import choose_weights

    models = tmp_path / "run" / "models"
    models.mkdir(parents=True)
    (models / "student_settings.json").write_text("{}")
    pd.DataFrame({"model": ["S"], "arm": ["distilled"], "lr": [1e-3], "seed": [0], "val_metric": [0.5],
                  "chosen": [True]}).to_csv(models / "lr_selection.csv", index=False)
    with pytest.raises(ValueError, match="lr_selection.csv: no beyond-logit arm"):
        choose_weights(tmp_path / "run", [0.5])
