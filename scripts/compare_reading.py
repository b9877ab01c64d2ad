"""How much of a long case should the teacher read? Readings compared per second of training, in one run.

Long cases do not fit a short `max_len`: the real JUSTICE facts run to 159 / 213 / 275 WordPiece tokens (quartiles),
so 128 tokens read 16% of cases whole. This script fine-tunes the run's teacher (its spec, seed, learning rate,
batch size, precision, epoch budget with early stopping on validation) once per reading, on the run's own splits
(data/ from stage 01), one after the other with every thread, and prints per reading: the share of training cases
read whole, epochs run and chosen, training seconds, and validation and test accuracy and macro-F1 beside TF-IDF
on the full text. Readings:

    head:N        the first N tokens (the suite's reading, `max_len: N`)
    head_tail:N   a long case's first quarter and last three quarters of N tokens (Sun et al. 2019)

The choice is made on validation (macro-F1, then seconds); test is shown, never used. Writes
<run>/reading_comparison.csv. Nothing else may run on the machine while it measures. `--processes 2` trains two
readings side by side, one thread each (as stage 02 trains its two teachers): their times compare with each other.

    python scripts/compare_reading.py runs/justice --readings head:128 head_tail:128 head:256
    python scripts/compare_reading.py runs/justice --readings head:128 head_tail:128 --processes 2
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helpers.data import store  # noqa: E402
from helpers.evaluation.metrics import classification_metrics  # noqa: E402
from helpers.models.build import build_model  # noqa: E402
from helpers.models.specs import get_spec, vocabulary_ids  # noqa: E402
from helpers.models.tokenization import READINGS  # noqa: E402
from helpers.training.datasets import CaseDataset, encode  # noqa: E402
from helpers.training.loop import TrainConfig, predict_logits, train  # noqa: E402
from helpers.training.precision import resolve_precision  # noqa: E402


def parse_reading(text: str) -> tuple[str, int]:
    kind, _, n = text.partition(":")
    if kind not in READINGS or not n.isdigit() or int(n) < 8:
        raise SystemExit(f"--readings {text!r}: expected KIND:N with KIND one of {', '.join(READINGS)} and N >= 8")
    return kind, int(n)


def fit_reading(run_dir: str, kind: str, n: int, threads: int) -> dict:
    """Fine-tune the run's teacher on one reading (its own process when run side by side); one result row."""
    torch.set_num_threads(threads)
    run_dir = Path(run_dir)
    p = yaml.safe_load((run_dir / "params.yaml").read_text())
    device = "cpu"
    precision = resolve_precision(p["precision"], device)
    cases = store.load_cases(run_dir)
    labels = {s: cases[s]["label"].to_numpy() for s in ("train", "val", "test")}
    n_classes = len(store.load_classes(run_dir)["classes"])
    spec = get_spec(p["teacher"], p.get("model_overrides") or {})
    per_epoch = int(np.ceil(len(cases["train"]) / p["batch_size"]))
    encoded = {s: encode(cases[s]["text"].tolist(), n, kind) for s in ("train", "val", "test")}
    whole = float(np.mean([len(e["input_ids"]) < n for e in encoded["train"]]))
    keep = vocabulary_ids([e for s in encoded.values() for e in s]) if p.get("trim_vocab", True) else None
    model = build_model(spec, seed=p["teacher_seed"], num_labels=n_classes, keep_ids=keep)
    cfg = TrainConfig(max_steps=p["teacher_epochs"] * per_epoch, lr=p["teacher_lr"], batch_size=p["batch_size"],
                      seed=p["teacher_seed"], eval_every=per_epoch, patience=p["teacher_patience"],
                      selection_metric=p["selection_metric"], class_weighted=p["class_weighted"],
                      device=device, precision=precision)
    start = time.perf_counter()
    result = train(model, CaseDataset(encoded["train"], labels["train"]),
                   CaseDataset(encoded["val"], labels["val"]), cfg)
    seconds = time.perf_counter() - start
    val = classification_metrics(result.val_logits, labels["val"])
    test = classification_metrics(predict_logits(result.model, encoded["test"], precision=precision), labels["test"])
    row = {"reading": f"{kind}:{n}", "threads": threads, "read_whole_train": round(whole, 3),
           "epochs": -(-result.steps // per_epoch), "best_epoch": result.best_step // per_epoch,
           "train_seconds": round(result.train_seconds, 1), "seconds": round(seconds, 1),
           "val_accuracy": val["accuracy"], "val_macro_f1": val["macro_f1"],
           "test_accuracy": test["accuracy"], "test_macro_f1": test["macro_f1"]}
    print(pd.DataFrame([row]).round(3).to_string(index=False), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run folder with stage 01 done (data/)")
    parser.add_argument("--readings", nargs="+", default=["head:128", "head_tail:128", "head:256"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--processes", type=int, default=1,
                        help="readings trained side by side, threads / processes threads each (times compare only "
                             "between readings trained under the same conditions)")
    args = parser.parse_args()
    run_dir = Path(args.run_dir)
    params_file = run_dir / "params.yaml"
    if not (run_dir / "data" / "train.csv").is_file() or not params_file.is_file():
        raise SystemExit(f"{run_dir}: no data/train.csv or params.yaml; run stage 01 first "
                         f"(python -m helpers run --profile ... --until 01)")
    readings = [parse_reading(r) for r in args.readings]
    p = yaml.safe_load(params_file.read_text())
    cases = store.load_cases(run_dir)
    tfidf = store.load_data_card(run_dir)["baselines"]["tfidf_logreg"]
    processes = max(1, min(args.processes, len(readings)))
    threads = max(1, args.threads // processes)
    print(f"{run_dir}: {len(cases['train'])} / {len(cases['val'])} / {len(cases['test'])} cases; teacher "
          f"{p['teacher']} seed {p['teacher_seed']}, lr {p['teacher_lr']:g}, at most {p['teacher_epochs']} epochs "
          f"(patience {p['teacher_patience']}); {processes} reading(s) at a time, {threads} thread(s) each",
          flush=True)
    jobs = [(str(run_dir), kind, n, threads) for kind, n in readings]
    if processes == 1:
        rows = [fit_reading(*j) for j in jobs]
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(processes) as pool:
            rows = pool.starmap(fit_reading, jobs)
    table = pd.DataFrame(rows)
    table["time_vs_first"] = (table["seconds"] / table["seconds"].iloc[0]).round(2)
    table.to_csv(run_dir / "reading_comparison.csv", index=False)
    pd.set_option("display.width", 200)
    print(f"\nTF-IDF + logistic regression on the full text: val {tfidf['val']['accuracy']:.3f} / "
          f"{tfidf['val']['macro_f1']:.3f}, test {tfidf['test']['accuracy']:.3f} / {tfidf['test']['macro_f1']:.3f} "
          f"(accuracy / macro-F1)")
    print(table.round(3).to_string(index=False))
    best = table.sort_values(["val_macro_f1", "seconds"], ascending=[False, True]).iloc[0]
    print(f"\nbest on validation macro-F1: {best['reading']} ({best['val_macro_f1']:.3f}, {best['seconds']:.0f} s, "
          f"{best['time_vs_first']:.2f}x the first reading's time); written to {run_dir / 'reading_comparison.csv'}")


if __name__ == "__main__":
    main()
