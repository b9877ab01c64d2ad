"""How much of a long case should the teacher read? Readings compared per second of training, in one run.

Long cases do not fit a short `max_len`: the real JUSTICE facts run to 159 / 213 / 275 WordPiece tokens (quartiles),
so 128 tokens read 16% of cases whole. This script fine-tunes the run's teacher (its spec, seed, learning rate,
batch size, precision, epoch budget with early stopping on validation) once per reading, on the run's own splits
(data/ from stage 01), one after the other with every thread, and prints per reading: the share of training cases
read whole, epochs run and chosen, training seconds, and validation and test accuracy and macro-F1 beside TF-IDF
on the full text. Readings:

    head:N        the first N tokens (the suite's reading, `max_len: N`)
    head_tail:N   a long case's first quarter and last three quarters of N tokens (Sun et al. 2019)
    windows:N     the whole case in consecutive windows of N tokens (at most --max-windows per case), each window
                  a training example with its case's label; a case is scored by the mean of its windows' logits.
                  The best epoch is chosen on the validation windows (validation still; the pooled validation
                  score is reported beside it)

A reading may end in `:weighted` or `:plain` to train with or without the class-weighted loss (default: the run's
`class_weighted`), so the two ways of handling imbalance, a weighted loss or selection on macro-F1 alone, are
compared on validation like the readings.

The choice is made on validation (the mean macro-F1 over `--seeds`, then seconds); test is shown, never used. Writes
<run>/reading_comparison.csv. Nothing else may run on the machine while it measures. `--processes 2` trains two
readings side by side, one thread each (as stage 02 trains its two teachers): their times compare with each other.

    python scripts/compare_reading.py runs/justice --readings head:128 head_tail:128 head:256
    python scripts/compare_reading.py runs/justice --readings head:128 head:128:weighted windows:128 head:256
    python scripts/compare_reading.py runs/justice --readings head:128 head:128:weighted --seeds 1 --append
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
from helpers.models.tokenization import READINGS, get_tokenizer, window_ids  # noqa: E402
from helpers.training.datasets import CaseDataset, encode  # noqa: E402
from helpers.training.loop import TrainConfig, predict_logits, train  # noqa: E402
from helpers.training.precision import resolve_precision  # noqa: E402

KINDS = (*READINGS, "windows")
LOSSES = ("plain", "weighted")


def parse_reading(text: str) -> tuple[str, int, str | None]:
    kind, _, rest = text.partition(":")
    n, _, loss = rest.partition(":")
    if kind not in KINDS or not n.isdigit() or int(n) < 8 or loss not in ("", *LOSSES):
        raise SystemExit(f"--readings {text!r}: expected KIND:N or KIND:N:LOSS with KIND one of {', '.join(KINDS)}, "
                         f"N >= 8 and LOSS one of {', '.join(LOSSES)}")
    return kind, int(n), loss or None


def _windows(texts: list[str], n: int, max_windows: int) -> tuple[list[dict], np.ndarray, float]:
    """Every window of every text as one encoding, the case each belongs to, and the share of texts read whole."""
    per_case = window_ids(texts, n, max_windows)
    full = get_tokenizer()(texts, truncation=False, verbose=False)["input_ids"]
    whole = float(np.mean([len(ids) - 2 <= max_windows * (n - 2) for ids in full]))
    flat = [{"input_ids": w, "attention_mask": [1] * len(w)} for ws in per_case for w in ws]
    return flat, np.repeat(np.arange(len(per_case)), [len(ws) for ws in per_case]), whole


def _pool(window_logits: np.ndarray, case: np.ndarray, n_cases: int) -> np.ndarray:
    """A case's logits: the mean of its windows' logits."""
    sums = np.zeros((n_cases, window_logits.shape[1]))
    np.add.at(sums, case, window_logits)
    return sums / np.bincount(case, minlength=n_cases)[:, None]


def fit_reading(run_dir: str, kind: str, n: int, loss: str | None, threads: int, max_windows: int,
                seed: int | None = None) -> dict:
    """Fine-tune the run's teacher on one reading (its own process when run side by side); one result row."""
    torch.set_num_threads(threads)
    run_dir = Path(run_dir)
    p = yaml.safe_load((run_dir / "params.yaml").read_text())
    device = "cpu"
    precision = resolve_precision(p["precision"], device)
    weighted = p["class_weighted"] if loss is None else loss == "weighted"
    seed = p["teacher_seed"] if seed is None else seed
    cases = store.load_cases(run_dir)
    labels = {s: cases[s]["label"].to_numpy() for s in ("train", "val", "test")}
    n_classes = len(store.load_classes(run_dir)["classes"])
    spec = get_spec(p["teacher"], p.get("model_overrides") or {})
    texts = {s: cases[s]["text"].tolist() for s in ("train", "val", "test")}
    if kind == "windows":
        windows = {s: _windows(texts[s], n, max_windows) for s in texts}
        encoded = {s: w[0] for s, w in windows.items()}
        case_of = {s: w[1] for s, w in windows.items()}
        whole = windows["train"][2]
    else:
        encoded = {s: encode(texts[s], n, kind) for s in texts}
        case_of = {s: np.arange(len(texts[s])) for s in texts}
        whole = float(np.mean([len(e["input_ids"]) < n for e in encoded["train"]]))
    per_epoch = int(np.ceil(len(encoded["train"]) / p["batch_size"]))
    keep = vocabulary_ids([e for s in encoded.values() for e in s]) if p.get("trim_vocab", True) else None
    model = build_model(spec, seed=seed, num_labels=n_classes, keep_ids=keep)
    cfg = TrainConfig(max_steps=p["teacher_epochs"] * per_epoch, lr=p["teacher_lr"], batch_size=p["batch_size"],
                      seed=seed, eval_every=per_epoch, patience=p["teacher_patience"],
                      selection_metric=p["selection_metric"], class_weighted=weighted,
                      device=device, precision=precision)
    start = time.perf_counter()
    result = train(model, CaseDataset(encoded["train"], labels["train"][case_of["train"]]),
                   CaseDataset(encoded["val"], labels["val"][case_of["val"]]), cfg)
    seconds = time.perf_counter() - start
    val_logits = _pool(result.val_logits, case_of["val"], len(texts["val"]))
    test_logits = _pool(predict_logits(result.model, encoded["test"], precision=precision), case_of["test"],
                        len(texts["test"]))
    val = classification_metrics(val_logits, labels["val"])
    test = classification_metrics(test_logits, labels["test"])
    row = {"reading": f"{kind}:{n}", "loss": "weighted" if weighted else "plain", "seed": seed, "threads": threads,
           "read_whole_train": round(whole, 3),
           "inputs_per_case": round(len(encoded["train"]) / len(texts["train"]), 2),
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
    parser.add_argument("--max-windows", type=int, default=4,
                        help="windows:N reads at most this many windows per case (4 x 126 tokens: 504, the real "
                             "file's 99th percentile is 503)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="teacher seeds: every reading is trained once per seed and judged on its mean "
                             "validation score (default: the run's teacher_seed)")
    parser.add_argument("--append", action="store_true",
                        help="add to the run's reading_comparison.csv (rows of the same reading, loss and seed are "
                             "replaced) instead of writing it anew")
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
    seeds = args.seeds or [p["teacher_seed"]]
    print(f"{run_dir}: {len(cases['train'])} / {len(cases['val'])} / {len(cases['test'])} cases; teacher "
          f"{p['teacher']} seed(s) {', '.join(map(str, seeds))}, lr {p['teacher_lr']:g}, at most "
          f"{p['teacher_epochs']} epochs (patience {p['teacher_patience']}); {processes} reading(s) at a time, "
          f"{threads} thread(s) each",
          flush=True)
    jobs = [(str(run_dir), kind, n, loss, threads, args.max_windows, seed) for kind, n, loss in readings
            for seed in seeds]
    if processes == 1:
        rows = [fit_reading(*j) for j in jobs]
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(processes) as pool:
            rows = pool.starmap(fit_reading, jobs)
    table = pd.DataFrame(rows)
    table["time_vs_first"] = (table["seconds"] / table["seconds"].iloc[0]).round(2)  # within this invocation
    out = run_dir / "reading_comparison.csv"
    if args.append and out.is_file():  # earlier rows stay, unless this invocation reran the same reading and seed
        old = pd.read_csv(out)
        key = ["reading", "loss", "seed"]
        rerun = old[key].apply(tuple, axis=1).isin(table[key].apply(tuple, axis=1))
        table = pd.concat([old[~rerun], table], ignore_index=True)
    table.to_csv(out, index=False)
    pd.set_option("display.width", 200)
    print(f"\nTF-IDF + logistic regression on the full text: val {tfidf['val']['accuracy']:.3f} / "
          f"{tfidf['val']['macro_f1']:.3f}, test {tfidf['test']['accuracy']:.3f} / {tfidf['test']['macro_f1']:.3f} "
          f"(accuracy / macro-F1)")
    print(table.round(3).to_string(index=False))
    means = (table.groupby(["reading", "loss"], sort=False)
             .agg(seeds=("seed", "nunique"), val_macro_f1=("val_macro_f1", "mean"),
                  val_accuracy=("val_accuracy", "mean"), seconds=("seconds", "mean")).reset_index())
    print("\nmean over seeds (the choice reads validation only):")
    print(means.round(3).to_string(index=False))
    best = means.sort_values(["val_macro_f1", "seconds"], ascending=[False, True]).iloc[0]
    print(f"\nbest on mean validation macro-F1: {best['reading']}, {best['loss']} loss ({best['val_macro_f1']:.3f} "
          f"over {best['seeds']} seed(s), {best['seconds']:.0f} s per run); written to {out}")

if __name__ == "__main__":
    main()
