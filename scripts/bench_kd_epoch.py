"""Wall time of one training epoch for one student: distilled with cached teacher logits, distilled with the teacher
online (a teacher forward per batch), and independent; measured interleaved in one process and printed as ratios.

    python scripts/bench_kd_epoch.py [--student S1_Half_3x384] [--teacher MiniLM_L6_Teacher] [--n 600]
                                     [--max-len 64] [--batch-size 16] [--rounds 2] [--threads 2] [--run-dir DIR]

With --run-dir the run's fine-tuned teacher is used; otherwise the teacher spec is built as it would be before
fine-tuning (its speed is the same). The data is the synthetic corpus (n cases, all used for training).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--student", default="S1_Half_3x384")
    p.add_argument("--teacher", default="MiniLM_L6_Teacher")
    p.add_argument("--n", type=int, default=600, help="training cases per epoch")
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2, help="interleaved repetitions of the three epochs")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--run-dir", help="use this run folder's fine-tuned teacher")
    args = p.parse_args(argv)
    from helpers.models import REGISTRY, build_model, get_spec, load_model
    from helpers.synthetic import generate_cases
    from helpers.training import CaseDataset, TrainConfig, encode, predict_logits, train

    for name in (args.student, args.teacher):
        if name not in REGISTRY:
            p.error(f"unknown model spec {name!r} (known: {', '.join(REGISTRY)})")
    if not 8 <= args.max_len <= 512 or args.n < args.batch_size or args.rounds < 1 or args.threads < 1:
        p.error("need 8 <= --max-len <= 512, --n >= --batch-size, --rounds >= 1, --threads >= 1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    frame, _ = generate_cases(args.n, seed=7)
    frame = frame[frame["first_party_winner"].notna()]
    texts = (frame["first_party"] + " v. " + frame["second_party"] + ". " + frame["facts"]).tolist()
    labels = frame["first_party_winner"].astype(str).str.lower().isin(["true", "1"]).astype(int).to_numpy()
    enc = encode(texts, args.max_len)
    teacher = (load_model(Path(args.run_dir) / "models" / "teacher") if args.run_dir
               else build_model(get_spec(args.teacher), seed=0).eval())
    start = time.perf_counter()
    cached = predict_logits(teacher, enc)
    cache_seconds = time.perf_counter() - start
    val = CaseDataset(enc[:16], labels[:16], cached[:16])
    variants = {
        "distilled, cached logits": dict(mode="distilled", data=CaseDataset(enc, labels, cached), teacher=None),
        "distilled, online teacher": dict(mode="distilled", data=CaseDataset(enc, labels), teacher=teacher),
        "independent": dict(mode="independent", data=CaseDataset(enc, labels, cached), teacher=None),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.rounds):
        for name, v in (variants.items() if r % 2 == 0 else reversed(variants.items())):
            model = build_model(get_spec(args.student), teacher=teacher, seed=0)
            cfg = TrainConfig(epochs=1, lr=5e-4, batch_size=args.batch_size, seed=0, progress=False)
            with tempfile.TemporaryDirectory():
                t0 = time.perf_counter()
                train(model, v["data"], val, cfg, mode=v["mode"], teacher_model=v["teacher"])
                times[name].append(time.perf_counter() - t0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, student {args.student}, teacher "
          f"{args.teacher}, {len(enc)} cases, max_len {args.max_len}, batch {args.batch_size}, rounds {args.rounds}")
    print(f"teacher logits cached once for all {len(enc)} cases: {cache_seconds:.1f} s")
    ref = statistics.median(times["independent"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<28} epoch {med:7.1f} s  (min {min(ts):.1f}, max {max(ts):.1f})  x{med / ref:.2f} of independent")
    online, cached_t = statistics.median(times["distilled, online teacher"]), statistics.median(times["distilled, cached logits"])
    print(f"online / cached: x{online / cached_t:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
