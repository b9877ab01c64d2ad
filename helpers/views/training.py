"""Figures and tables for notebooks 02 and 03: curves, confusion matrix, baselines, soft targets, the two losses,
KD gain, the runs and their intervals."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix

from helpers.core.run_folder import read_index
from helpers.core.run_folder import save_figure as _save
from helpers.data import baselines as data_baselines
from helpers.data import store as data_store
from helpers.data.store import load_cases
from helpers.evaluation.metrics import predicted_class, probabilities, softmax
from helpers.training.checkpoints import teacher_summary
from helpers.training.teacher_logits import load_teacher_logits


def _histories(run_dir: Path, entries: list[dict]) -> pd.DataFrame:
    frames = []
    for e in entries:
        h = pd.read_csv(run_dir / e["path"] / "history.csv")
        frames.append(h.assign(model=e["name"], mode=e["mode"], seed=e["seed"]))
    return pd.concat(frames, ignore_index=True)


def plot_teacher_curves(run_dir: str | Path) -> Figure:
    """Training loss and validation accuracy / macro-F1 per epoch for the teacher and the reference teachers."""
    run_dir = Path(run_dir)
    idx = read_index(run_dir)
    h = _histories(run_dir, [idx["teacher"], *idx["teacher_references"]])
    h["run"] = h["mode"] + " (seed " + h["seed"].astype(str) + ")"
    fig = Figure(figsize=(13, 3.6))
    axes = fig.subplots(1, 3)
    for ax, col, title in zip(axes, ("train_loss", "val_accuracy", "val_macro_f1"),
                              ("training loss", "validation accuracy", "validation macro-F1")):
        sns.lineplot(data=h, x="epoch", y=col, hue="run", marker="o", ax=ax)
        ax.set_title(title)
        ax.set_xticks(sorted(h["epoch"].unique()))
    card = data_store.load_data_card(run_dir)
    axes[1].axhline(card["majority_rate"], color="grey", ls=":", label="majority rate")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"Teacher fine-tuning: {idx['teacher']['name']}")
    return _save(fig, run_dir, "02_teacher_curves.png")


def plot_confusion(run_dir: str | Path) -> Figure:
    """Confusion matrix of the teacher on the test split (rows: actual class, columns: predicted class)."""
    run_dir = Path(run_dir)
    idx = read_index(run_dir)
    preds = pd.read_csv(run_dir / "models" / "predictions.csv")
    t = preds[(preds["model"] == idx["teacher"]["name"]) & (preds["mode"] == "teacher")]
    names = data_store.load_classes(run_dir)["classes"]
    cm = confusion_matrix(t["label"], predicted_class(probabilities(t)), labels=list(range(len(names))))
    size = 0.55 * len(names) + 2.5
    fig = Figure(figsize=(size + 1, size))
    ax = fig.subplots()
    sns.heatmap(cm, annot=True, fmt="d", cmap="Blues", cbar=False, ax=ax, xticklabels=names, yticklabels=names,
                annot_kws={"fontsize": 7 if len(names) > 2 else 10})
    ax.tick_params(axis="x", labelrotation=45 if len(names) > 2 else 0, labelsize=8)
    ax.tick_params(axis="y", labelsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("actual class")
    ax.set_title("Teacher on the test split")
    return _save(fig, run_dir, "02_teacher_confusion.png")


def baselines_frame(run_dir: str | Path) -> pd.DataFrame:
    """Test accuracy / macro-F1 / AUC: majority, TF-IDF, teacher, the reference teachers (and, on synthetic data, the
    rule's oracle Bayes accuracy and its accuracy on the cues within max_len)."""
    run_dir = Path(run_dir)
    card = data_store.load_data_card(run_dir)
    ts = teacher_summary(run_dir)
    b = card["baselines"]
    rows = [{"model": data_baselines.BASELINE_LABELS[key], **b[key]["test"]}
            for key in data_baselines.BASELINE_LABELS if key in b]  # (runs before tfidf_logreg_read lack it)
    rows += [{"model": f"teacher (seed {ts['teacher']['seed']})", "accuracy": ts["test"]["accuracy"],
             "macro_f1": ts["test"]["macro_f1"], "roc_auc": ts["test"]["roc_auc"]},
            *({"model": f"teacher (seed {r['seed']})", **{k: r[k] for k in ("accuracy", "macro_f1", "roc_auc")}}
              for r in ts["reference_test_per_seed"])]
    for key, name in (("bayes_accuracy", data_baselines.BAYES_ORACLE),
                      ("visible_rule_accuracy", data_baselines.VISIBLE_RULE)):
        if key in card:
            rows.append({"model": name, "accuracy": card[key]["test"], "macro_f1": np.nan, "roc_auc": np.nan})
    return pd.DataFrame(rows).round(4)


def plot_baselines(run_dir: str | Path) -> Figure:
    """The teacher between its floor (majority, TF-IDF) and, on synthetic data, its ceilings (the rule as an oracle and
    on the cues within max_len)."""
    df = baselines_frame(run_dir).melt(id_vars="model", value_vars=["accuracy", "macro_f1", "roc_auc"],
                                       var_name="metric").dropna()
    fig = Figure(figsize=(10, 3.8))
    ax = fig.subplots()
    sns.barplot(data=df, x="metric", y="value", hue="model", ax=ax)
    for c in ax.containers:
        ax.bar_label(c, fmt="%.2f", fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_title("Test split: the teacher against its floor, its ceiling and itself retrained")
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, run_dir, "02_baselines.png")


def plot_student_curves(run_dir: str | Path, metric: str = "val_accuracy") -> Figure:
    """Validation metric per evaluation step, one panel per student, one line per arm (mean and band over seeds).

    Runs stop early at different steps, so later points average fewer seeds; the markers on the x axis are the
    chosen (best) steps of every run.
    """
    run_dir = Path(run_dir)
    idx = read_index(run_dir)
    h = _histories(run_dir, idx["students"])
    names = list(dict.fromkeys(h["model"]))
    arms = list(dict.fromkeys(h["mode"]))
    fig = Figure(figsize=(max(3.6 * len(names), 7.5), 3.5))  # one student: wide enough for the title
    axes = fig.subplots(1, len(names), sharey=True, squeeze=False)
    for ax, name in zip(axes[0], names):
        sub = h[h["model"] == name]
        sns.lineplot(data=sub, x="step", y=metric, hue="mode", ax=ax, hue_order=arms, errorbar="sd")
        best = sub[sub["best"].astype(bool)]
        ax.plot(best["step"], np.full(len(best), ax.get_ylim()[0]), "|", color="black", ms=10, alpha=0.6)
        ax.set_title(name, fontsize=9)
        ax.axhline(teacher_summary(run_dir)["val"]["accuracy"] if metric == "val_accuracy" else np.nan,
                   color="black", ls="--", lw=1)
    for ax in axes[0][1:]:
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    if axes[0][0].get_legend() is not None:
        sns.move_legend(axes[0][0], "lower right", fontsize=7, title=None)
    axes[0][0].set_ylabel(f"{metric.replace('_', ' ')} (dashed: teacher)")
    fig.suptitle("Students per optimizer step, every arm (band: ± 1 sd over seeds; ticks: each run's chosen step)")
    return _save(fig, run_dir, "03_student_curves.png")


def plot_kd_gain(run_dir: str | Path, metrics: tuple[str, ...] = ("accuracy", "macro_f1", "agreement")) -> Figure:
    """Paired difference arm - independent per student and arm with its unadjusted 95% interval.

    Green / red: the interval excludes zero and, for the primary endpoint (accuracy vs independent), the
    Holm-adjusted p is below 0.05 (secondary rows: the unadjusted interval alone); hollow: the run did not learn.
    """
    run_dir = Path(run_dir)
    gain = pd.read_csv(run_dir / "models" / "kd_gain.csv", keep_default_na=False, na_values=[""])
    gain["did_not_learn"] = gain["did_not_learn"].fillna("")
    n_rows = gain[["model", "arm", "against"]].drop_duplicates().shape[0]
    fig = Figure(figsize=(4.6 * len(metrics), 0.42 * n_rows + 1.9))
    axes = fig.subplots(1, len(metrics), sharey=True, squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        g = gain[gain["metric"] == metric].reset_index(drop=True)
        y = np.arange(len(g))
        err = np.vstack([g["diff"] - g["ci_low"], g["ci_high"] - g["diff"]])
        for i, r in g.iterrows():
            sig = (r.get("endpoint", "primary") == "secondary"
                   or (np.isfinite(r["p_adjusted"]) and r["p_adjusted"] < 0.05))
            color = ("tab:green" if r["ci_low"] > 0 and sig else "tab:red" if r["ci_high"] < 0 and sig
                     else "tab:grey")
            ax.errorbar(r["diff"], y[i], xerr=err[:, i:i + 1], fmt="o", color=color, capsize=4,
                        mfc="white" if r["did_not_learn"] else color)
        ax.axvline(0, color="black", lw=1)
        ax.set_yticks(y, [f"{m} · {a}" + ("" if r == "independent" else f" vs {r}")
                          for m, a, r in zip(g["model"], g["arm"], g["against"])], fontsize=8)
        ax.set_title(metric)
        ax.set_xlabel("arm − reference (unadjusted 95% CI)")
    if not gain.empty and not bool(gain["meaningful"].iloc[0]):
        fig.suptitle("Teacher collapsed: these differences are NOT meaningful", color="red")
    else:
        fig.suptitle("Each arm minus its reference on the test split (reference: independent unless a row says "
                     "'vs'); green/red: excludes zero (accuracy vs independent: and Holm p < 0.05)", fontsize=10)
    return _save(fig, run_dir, "03_kd_gain.png")


def soft_target_cases(run_dir: str | Path, max_len: int, n: int = 4) -> pd.DataFrame:
    """A few test cases spanning the teacher's confidence, with their teacher logits.

    Two classes: ordered by P(class 1), columns logit_0, logit_1, p_teacher. K classes: ordered by the teacher's
    top-class probability (`p_teacher`), one `logit_k` column per class.
    """
    run_dir = Path(run_dir)
    splits = load_cases(run_dir)
    logits = load_teacher_logits(run_dir, splits, max_len)["test"]
    if logits.shape[1] > 2:
        test = splits["test"].assign(p_teacher=softmax(logits).max(axis=1),
                                     **{f"logit_{k}": logits[:, k] for k in range(logits.shape[1])})
        order = test.sort_values("p_teacher").reset_index(drop=True)
        picks = np.unique(np.linspace(0, len(order) - 1, n).round().astype(int))
        return order.iloc[picks][["id", "label", "p_teacher", *[f"logit_{k}" for k in range(logits.shape[1])],
                                  "text"]]
    test = splits["test"].assign(logit_0=logits[:, 0], logit_1=logits[:, 1],
                                 p_teacher=softmax(logits)[:, 1])
    order = test.sort_values("p_teacher").reset_index(drop=True)
    picks = np.unique(np.linspace(0, len(order) - 1, n).round().astype(int))
    return order.iloc[picks][["id", "label", "p_teacher", "logit_0", "logit_1", "text"]]


def plot_soft_targets(run_dir: str | Path, max_len: int, temperatures=(1, 2, 4, 8), n: int = 4) -> Figure:
    """What the student actually sees: the teacher's distribution over the classes for real cases at several T."""
    cases = soft_target_cases(run_dir, max_len, n)
    names = data_store.load_classes(run_dir)["classes"]
    fig = Figure(figsize=(max(3.4, 0.45 * len(names) + 2.2) * len(cases), 4.4))
    axes = fig.subplots(1, len(cases), sharey=True, squeeze=False)
    x = np.arange(len(names))
    for ax, (_, c) in zip(axes[0], cases.iterrows()):
        z = _logits_of(c)
        for t in temperatures:
            ax.plot(x, softmax(z, t)[0], marker="o", ms=3, lw=1.2, label=f"T={t}")
        label = int(c["label"])
        ax.scatter([label], [1.0], marker="*", s=120, color="black", zorder=5, label="hard label")
        ax.set_xticks(x, names, rotation=60 if len(names) > 2 else 0, ha="right" if len(names) > 2 else "center",
                      fontsize=7)
        ax.set_xlim(-0.5, len(names) - 0.5)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"case {c['id']}\nlabel: {names[label]}; top-class P {c['p_teacher']:.2f}", fontsize=9)
    axes[0][0].set_ylabel("teacher probability")
    axes[0][0].legend(fontsize=7, loc="upper right")
    fig.suptitle("Soft targets over the classes: higher T spreads the teacher's probability mass ('dark knowledge')")
    return _save(fig, run_dir, "03_soft_targets.png")


def _logits_of(case: pd.Series) -> np.ndarray:
    cols = sorted((c for c in case.index if c.startswith("logit_")), key=lambda c: int(c[6:]))
    return case[cols].to_numpy(float)[None, :]


def plot_losses(run_dir: str | Path, max_len: int, alpha: float, temperature: float) -> Figure:
    """The two losses side by side for one real case, as the student's probability of the labelled class varies
    (with more than two classes the rest of its probability is spread evenly over the other classes)."""
    cases = soft_target_cases(run_dir, max_len, 4)
    c = cases.iloc[len(cases) // 2]
    z_t = _logits_of(c)
    k, label = z_t.shape[1], int(c["label"])
    q = np.linspace(0.01, 0.99, 199)
    student = np.tile(((1 - q) / (k - 1))[:, None], (1, k))
    student[:, label] = q
    ce = -np.log(q)
    p_t = softmax(z_t, temperature)[0]
    q_t = softmax(np.log(student), temperature)
    kd = temperature**2 * np.sum(p_t * (np.log(p_t) - np.log(q_t)), axis=1)
    fig = Figure(figsize=(11, 3.6))
    axes = fig.subplots(1, 2, sharex=True)
    axes[0].plot(q, ce, color="tab:blue")
    axes[0].set_title(f"independent: CE with the hard label (class {label})")
    axes[1].plot(q, kd, color="tab:orange", label=f"T²·KL (T={temperature:g})")
    axes[1].plot(q, alpha * kd + (1 - alpha) * ce, color="tab:green", label=f"total, alpha={alpha:g}")
    axes[1].axvline(softmax(z_t)[0][label], color="tab:orange", ls=":", label="teacher's P(label) at T=1")
    axes[1].set_title("distilled: pulled toward the teacher's belief, not to certainty")
    axes[1].legend(fontsize=8)
    rest = "" if k == 2 else "; the rest spread evenly over the other classes"
    for ax in axes:
        ax.set_xlabel(f"student's P(labelled class){rest}")
        ax.set_ylabel("loss")
    fig.suptitle(f"Case {c['id']}: CE is smallest at certainty, the KD term where the student matches the teacher")
    return _save(fig, run_dir, "03_losses.png")


def dark_knowledge_table(run_dir: str | Path, max_len: int, temperatures=(1, 4)) -> pd.DataFrame:
    """Per split: how much of the teacher's probability lies off its top class (what a hard label cannot say).

    Columns: mean mass on the non-argmax classes at each temperature, and the mean number of classes holding at least
    5% at T = 1 (1.0 would mean one-hot targets).
    """
    cases = load_cases(run_dir)
    logits = load_teacher_logits(run_dir, cases, max_len)
    rows = []
    for split, z in logits.items():
        row = {"split": split, "cases": len(z), "classes": z.shape[1]}
        for t in temperatures:
            row[f"mass off the top class, T={t:g}"] = float(1 - softmax(z, t).max(axis=1).mean())
        row["classes with P >= 0.05 (T=1)"] = float((softmax(z) >= 0.05).sum(axis=1).mean())
        rows.append(row)
    return pd.DataFrame(rows).round(3)


def confused_classes(run_dir: str | Path, max_len: int, split: str = "val", top: int = 8) -> pd.DataFrame:
    """Which classes the teacher finds alike: for each pair (top class, runner-up class), how often its
    second-highest probability goes to the runner-up and the mean probability it gets there (validation split).
    """
    names = data_store.load_classes(run_dir)["classes"]
    cases = load_cases(run_dir)
    p = softmax(load_teacher_logits(run_dir, cases, max_len)[split])
    order = np.argsort(-p, axis=1)
    first, second = order[:, 0], order[:, 1]
    frame = pd.DataFrame({"teacher's top class": [names[i] for i in first],
                          "runner-up class": [names[i] for i in second],
                          "runner-up P": p[np.arange(len(p)), second]})
    table = frame.groupby(["teacher's top class", "runner-up class"])["runner-up P"].agg(["count", "mean"])
    table = table.rename(columns={"count": "cases", "mean": "mean runner-up P"}).reset_index()
    return table.sort_values(["cases", "mean runner-up P"], ascending=False).head(top).round(3).reset_index(drop=True)


def teacher_confidence_table(run_dir: str | Path, max_len: int, temperatures=(1, 4)) -> pd.DataFrame:
    """How soft the teacher's targets are per split: mean probability of its top class at each temperature.

    On its own training cases a fine-tuned teacher is nearly one-hot (it has fitted them); on cases it never saw
    (validation, the transfer pool) its targets carry more than the label: that is what the transfer arms use.
    """
    cases = load_cases(run_dir)
    logits = load_teacher_logits(run_dir, cases, max_len)
    rows = []
    for split, z in logits.items():
        row = {"split": split, "cases": len(z)}
        for t in temperatures:
            row[f"mean top-class prob, T={t:g}"] = float(softmax(z, t).max(axis=1).mean())
        row["share with top prob > 0.95 (T=1)"] = float((softmax(z).max(axis=1) > 0.95).mean())
        rows.append(row)
    return pd.DataFrame(rows).round(3)


def plot_transfer_curve(run_dir: str | Path) -> Figure:
    """Validation and test accuracy of one student's distilled_transfer arm against the transfer-pool size."""
    run_dir = Path(run_dir)
    curve = pd.read_csv(run_dir / "models" / "transfer_curve.csv")
    fig = Figure(figsize=(6.2, 3.8))
    ax = fig.subplots()
    sns.lineplot(data=curve, x="multiple_of_train", y="accuracy", hue="split", marker="o", errorbar="sd", ax=ax)
    ax.set_xlabel("transfer cases, as a multiple of the labelled training set (0: distilled arm)")
    ax.set_ylabel("accuracy (mean ± 1 sd over seeds)")
    ax.set_title(f"{curve['model'].iloc[0]}: more unlabelled cases labelled by the teacher", fontsize=10)
    return _save(fig, run_dir, "03_transfer_curve.png")


def runs_summary(run_dir: str | Path) -> pd.DataFrame:
    """Per student x arm: the learning rate, steps taken, the chosen (best) step, how often training stopped early,
    how often the chosen step was not the last evaluation (a run still learning at the end would pick the last),
    throughput inside training steps, and runs that did not learn."""
    runs = pd.read_csv(Path(run_dir) / "models" / "student_runs.csv", keep_default_na=False)
    runs["stopped_early"] = runs["stopped_early"].astype(str).str.lower() == "true"
    runs["chose_last"] = runs["best_step"] >= runs["steps"]
    g = runs.groupby(["model", "mode"], sort=False)
    return pd.DataFrame({
        "seeds": g["seed"].nunique(), "lr": g["lr"].first(), "steps (mean)": g["steps"].mean().round(0),
        "best step (mean)": g["best_step"].mean().round(0),
        "best step before the last eval": g["chose_last"].apply(lambda x: f"{int((~x).sum())}/{len(x)}"),
        "stopped early": g["stopped_early"].apply(lambda x: f"{int(x.sum())}/{len(x)}"),
        "train ex/s": (g["train_examples"].sum() / g["train_seconds"].sum()).round(0),
        "train s (sum)": g["train_seconds"].sum().round(0),
        "did not learn": g["did_not_learn"].apply(lambda x: f"{int((x != '').sum())}/{len(x)}"),
    }).reset_index()


def lr_grid_table(run_dir: str | Path) -> pd.DataFrame:
    """The learning-rate search (models/lr_selection.csv) as a grid: one row per student x arm, one column per rate
    tried, each cell the mean validation score over the tuning seeds ± their sd; `*` marks the chosen rate and `~` a
    rate within the arm's seed-to-seed spread of it (the tuning seeds do not tell the two apart)."""
    lr = pd.read_csv(Path(run_dir) / "models" / "lr_selection.csv")
    cells = lr.groupby(["model", "arm", "lr"], sort=False).agg(
        mean=("mean_val_metric", "first"), sd=("seed_sd", "first"), chosen=("chosen", "first"),
        near=("within_seed_spread", "first")).reset_index()
    cells["cell"] = [f"{m:.3f} ± {sd:.3f}{' *' if c else ' ~' if n else ''}"
                     for m, sd, c, n in zip(cells["mean"], cells["sd"], cells["chosen"], cells["near"])]
    grid = cells.pivot(index=["model", "arm"], columns="lr", values="cell").fillna("")
    grid.columns = [f"lr {c:g}" for c in grid.columns]
    grid = grid.reindex(pd.MultiIndex.from_frame(cells[["model", "arm"]].drop_duplicates())).reset_index()
    return grid


def lr_choice_text(run_dir: str | Path) -> str:
    """Where the learning-rate choice is fragile: arms whose chosen rate is still at an edge of the rates tried, and
    arms where another rate lies within the seed-to-seed spread of the chosen one."""
    lr = pd.read_csv(Path(run_dir) / "models" / "lr_selection.csv")
    per_arm = lr.groupby(["model", "arm"], sort=False)
    edge = [f"{m} {a}" for (m, a), g in per_arm if g["chosen_at_edge"].any()]
    near = [f"{m} {a} ({', '.join(f'{v:g}' for v in sorted(set(g.loc[g['within_seed_spread'] & ~g['chosen'], 'lr'])))})"
            for (m, a), g in per_arm if (g["within_seed_spread"] & ~g["chosen"]).any()]
    parts = [f"Still at an edge of the rates tried (the search ran out of extensions; a wider grid might do "
             f"better): {', '.join(edge)}." if edge else "Every chosen rate is interior to the rates tried."]
    if lr["seed"].nunique() < 2:  # lr_tune_seeds 1: no seed-to-seed spread to compare the rates against
        parts.append(f"The rates were tried on one seed ({int(lr['seed'].iloc[0])}), so their seed-to-seed spread is "
                     f"not measured: a small difference between two rates may be noise (lr_tune_seeds 2 or more "
                     f"measures it).")
        return " ".join(parts)
    parts.append(f"Another rate within the seed-to-seed spread of the chosen one (a near-tie the tuning seeds cannot "
                 f"split; either rate is a fair choice): {'; '.join(near)}." if near else
                 "No other rate is within the seed-to-seed spread of a chosen one.")
    return " ".join(parts)


CONVERGED_SHARE = 0.9  # every arm: at least this share of runs chose a step before their last evaluation


def convergence_text(run_dir: str | Path, target: float = CONVERGED_SHARE) -> str:
    """Did the runs converge? Per arm (over every student), the share of runs that learned (more than one class on
    validation) and chose a step before their last evaluation (a run still improving at its budget's end picks the
    last one), naming each arm below `target` and counting the runs that never learned."""
    runs = pd.read_csv(Path(run_dir) / "models" / "student_runs.csv", keep_default_na=False)
    learned = runs["did_not_learn"].astype(str) == ""
    ok = ((runs["best_step"] < runs["steps"]) & learned).groupby(runs["mode"], sort=False).agg(["sum", "count"])
    parts = [f"{arm} {int(r['sum'])}/{int(r['count'])}" for arm, r in ok.iterrows()]
    short = [arm for arm, r in ok.iterrows() if r["sum"] < target * r["count"]]
    verdict = (f"every arm reaches {target:.0%}" if not short else
               f"below {target:.0%}: {', '.join(short)} (still improving at the end of their budget, or never "
               f"learned: raise student_max_passes, or read their numbers as those of unconverged runs)")
    stuck = runs[~learned]
    note = ("" if stuck.empty else f" {len(stuck)} run(s) never learned (one class on validation): " + ", ".join(
        f"{m} {a} seed {sd}" for m, a, sd in zip(stuck["model"], stuck["mode"], stuck["seed"])) + ".")
    return (f"Runs that learned and chose a step before their last evaluation, per arm: {'; '.join(parts)}; "
            f"{verdict}.{note}")


def interval_widths(run_dir: str | Path, metric: str = "accuracy") -> pd.DataFrame:
    """The half-width of every student x arm's unadjusted 95% interval (the run's resolving power) and its p."""
    gain = pd.read_csv(Path(run_dir) / "models" / "kd_gain.csv", keep_default_na=False, na_values=[""])
    g = gain[gain["metric"] == metric]
    cols = ["model", "arm", "against", "n_seeds", "diff", "ci_low", "ci_high", "ci_half_width", "df", "p_value",
            "p_adjusted", "endpoint"]
    return g[[c for c in cols if c in g.columns]].reset_index(drop=True)


def widths_text(widths: pd.DataFrame) -> str:
    """'S5 distilled ±0.012, ...': the half-widths of interval_widths() in one line."""
    return ", ".join(f"{m} {a} vs {r} ±{w:.3f}" for m, a, r, w in zip(widths["model"], widths["arm"], widths["against"],
                                                                    widths["ci_half_width"]))


def _fmt3(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"  # None: undefined (an AUC on a one-class split)


def results_table(run_dir: str | Path, split: str = "test") -> pd.DataFrame:
    """Per model x mode: params and metrics as mean ± std over seeds (teacher rows first)."""
    m = pd.read_csv(Path(run_dir) / "models" / "metrics.csv")
    m = m[m["split"] == split]
    cols = ["accuracy", "macro_f1", "roc_auc", "ece", "agreement", "kl_to_teacher"]
    g = m.groupby(["model", "mode"], sort=False)
    mean, std = g[cols].mean(), g[cols].std(ddof=1).fillna(0.0)
    out = pd.DataFrame(index=mean.index)
    out["params_m"] = (g["params"].first() / 1e6).round(1)
    out["seeds"] = g["seed"].nunique()
    for c in cols:
        out[c] = [f"{a:.3f} ± {s:.3f}" if n > 1 else f"{a:.3f}" for a, s, n in zip(mean[c], std[c], out["seeds"])]
    out = out.reset_index()
    baselines = data_store.load_data_card(run_dir)["baselines"]
    rows = [{"model": label, "mode": "baseline", **{c: _fmt3(baselines[key][split][src]) for c, src in
                                                     (("accuracy", "accuracy"), ("macro_f1", "macro_f1"),
                                                      ("roc_auc", "roc_auc"))}}
            for key, label in data_baselines.BASELINE_LABELS.items() if key in baselines]
    table = pd.concat([pd.DataFrame(rows), out], ignore_index=True)
    table["seeds"] = table["seeds"].astype("Int64").astype(str).replace("<NA>", "")
    table["params_m"] = table["params_m"].map(lambda v: "" if pd.isna(v) else f"{v:.1f}")
    return table[["model", "mode", "params_m", "seeds", *cols]].fillna("")
