"""Training throughput: the suite's training path against a bare PyTorch fp32 loop, per default model, in one run.

For each model (the default profile's teacher and students) both loops train the same architecture from the same
seed on the same batches (synthetic cases, batch 16, max_len 64) and the script prints training examples per
second inside training steps and the ratio suite / bare. The suite path is `helpers.training.loop.train` with the
run's precision (`auto`: bf16 autocast on CPUs with native bf16) and the trimmed vocabulary (teacher and students, as
in the stages); the
bare loop is fp32, full vocabulary, AdamW, no autocast. Nothing else may run on the machine while it measures.

    python scripts/bench_train.py [--steps 40] [--rounds 3] [--threads 2] [--precision auto] [--models ...]
    python scripts/bench_train.py --device cuda     # the GPU path: the same comparison on a CUDA GPU
    python scripts/bench_train.py --options         # embedding options and torch.compile vs the suite's step
    python scripts/bench_train.py --arms            # each beyond-logit arm's step vs the distilled step
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helpers.config.profiles import defaults  # noqa: E402
from helpers.core.constants import BEYOND_ARMS  # noqa: E402
from helpers.models.build import build_model  # noqa: E402
from helpers.models.specs import get_spec, vocabulary_ids  # noqa: E402
from helpers.synthetic.generator import generate_cases  # noqa: E402
from helpers.training.datasets import CaseDataset, batch_order, collate, encode
from helpers.training.fast_dropout import cpu_dropout  # noqa: E402
from helpers.training.internals import ONLINE_ARMS, plan_term, shape_of, teacher_internals  # noqa: E402
from helpers.training.loop import TrainConfig, _optimizer, train
from helpers.training.precision import autocast, resolve_precision
from helpers.training.teacher_attributions import token_maps  # noqa: E402


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _timed_steps(forward: Callable[..., Any], data: CaseDataset, batches: list[np.ndarray],
                 opts: list[torch.optim.Optimizer], precision: str, device: str) -> float:
    """Examples per second over `batches` of forward, cross-entropy, backward and `opts` steps (the first 3 steps
    are warm-up, and so is any compilation they trigger)."""
    seconds, examples = 0.0, 0
    for i, rows in enumerate(batches):
        _sync(device)
        t0 = time.perf_counter()
        batch = {k: v.to(device) for k, v in collate([data[int(j)] for j in rows]).items()}
        with autocast(precision, device):
            logits = forward(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = F.cross_entropy(logits.float(), batch["labels"])
        loss.backward()
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
        _sync(device)
        if i >= 3:
            seconds += time.perf_counter() - t0
            examples += len(rows)
    return examples / seconds


def bare_loop(model: torch.nn.Module, data: CaseDataset, batches: list[np.ndarray], lr: float,
              device: str = "cpu") -> float:
    """Examples per second of a plain fp32 AdamW loop over `batches` (first 3 steps are warm-up)."""
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    return _timed_steps(model, data, batches, [opt], "fp32", device)


def option_loop(model: torch.nn.Module, data: CaseDataset, batches: list[np.ndarray], lr: float, precision: str,
                *, sparse: bool = False, compiled: bool = False, native_dropout: bool = False,
                device: str = "cpu") -> float:
    """Examples per second of the suite's step (fused AdamW with its parameter groups, the cheap CPU dropout) with
    one option changed: `sparse` = sparse word-embedding gradients updated by SparseAdam (the rest by AdamW),
    `compiled` = the model under torch.compile, `native_dropout` = PyTorch's own dropout masks."""
    model.to(device).train()
    emb = model.get_input_embeddings()
    if sparse:
        emb.sparse = True
        rest = [p for p in model.parameters() if p is not emb.weight]
        opts = [torch.optim.SparseAdam([emb.weight], lr=lr), torch.optim.AdamW(rest, lr=lr, weight_decay=0.01)]
    else:
        opts = [_optimizer(model, lr, 0.01)]
    with contextlib.nullcontext() if native_dropout else cpu_dropout(model):
        return _timed_steps(torch.compile(model) if compiled else model, data, batches, opts, precision, device)


def options(args: argparse.Namespace, data: CaseDataset, keep: list[int], teacher: torch.nn.Module,
            precision: str) -> None:
    """--options: the embedding and compilation options against the suite's own step, interleaved in one run."""
    print(f"{'model':<22} {'suite (trimmed)':>15} {'full vocab':>11} {'full+sparse':>12} {'trim+compile':>13} "
          f"{'native dropout':>15}   (ratios to the suite)")
    for name in args.models:
        spec = get_spec(name)
        lr = 1e-4 if spec.role == "teacher" else 1e-3
        batches = batch_order(len(data), 16, args.steps + 3, seed=0)
        got: dict[str, list[float]] = {k: [] for k in ("suite", "full", "sparse", "compile", "native")}
        def fresh(trim: bool, spec=spec) -> torch.nn.Module:
            return build_model(spec, teacher=teacher, seed=0, keep_ids=keep if trim else None)

        for _ in range(args.rounds):
            got["suite"].append(option_loop(fresh(True), data, batches, lr, precision, device=args.device))
            got["full"].append(option_loop(fresh(False), data, batches, lr, precision, device=args.device))
            got["sparse"].append(option_loop(fresh(False), data, batches, lr, precision, sparse=True,
                                             device=args.device))
            got["compile"].append(option_loop(fresh(True), data, batches, lr, precision, compiled=True,
                                              device=args.device))
            got["native"].append(option_loop(fresh(True), data, batches, lr, precision, native_dropout=True,
                                             device=args.device))
        med = {k: statistics.median(v) for k, v in got.items()}
        print(f"{name:<22} {med['suite']:>11.1f} ex/s {med['full'] / med['suite']:>10.2f}x "
              f"{med['sparse'] / med['suite']:>11.2f}x {med['compile'] / med['suite']:>12.2f}x "
              f"{med['native'] / med['suite']:>14.2f}x", flush=True)


def suite_loop(model: torch.nn.Module, data: CaseDataset, steps: int, lr: float, precision: str,
               mode: str = "independent", device: str = "cpu", **train_kw: Any) -> float:
    """Examples per second inside the suite's training steps (its own timer excludes evaluations)."""
    val = CaseDataset(data.encodings[:16], data.labels[:16])
    cfg = TrainConfig(max_steps=steps + 3, lr=lr, batch_size=16, seed=0, eval_every=10**9, patience=0,
                      precision=precision, device=device)
    warm = TrainConfig(max_steps=3, lr=lr, batch_size=16, seed=0, eval_every=10**9, patience=0, precision=precision,
                       device=device)
    train(model, data, val, warm, mode=mode, **train_kw)  # warm-up (allocator, oneDNN kernels)
    result = train(model, data, val, cfg, mode=mode, **train_kw)
    return result.train_examples / result.train_seconds


def arm_costs(args: argparse.Namespace, data: CaseDataset, keep: list[int] | None, teacher: torch.nn.Module,
              precision: str) -> None:
    """--arms: each beyond-logit arm's training step against the distilled step (interleaved rounds), the teacher's
    per-batch forward those arms run (what caching its inside would save), and that cache's size."""
    students = [m for m in args.models if get_spec(m).role != "teacher"]
    t_layers, t_width, _ = shape_of(teacher)
    per_case = 4 * args.max_len * t_width  # fp32 bytes of one [max_len, width] tensor
    print(f"what the teacher's inside would take cached for {len(data)} cases x {args.max_len} tokens (fp32): every "
          f"layer's hidden states {(t_layers + 1) * per_case * len(data) / 1e9:.2f} GB, every layer's Q, K, V "
          f"{3 * t_layers * per_case * len(data) / 1e9:.2f} GB, the last layer's Q, K, V "
          f"{3 * per_case * len(data) / 1e9:.2f} GB; the token maps {4 * args.max_len * len(data) / 1e6:.1f} MB")
    batches = batch_order(len(data), 16, args.steps + 3, seed=0)
    for name in students:
        spec = get_spec(name)
        student = build_model(spec, teacher=teacher, seed=0, keep_ids=keep)
        width = min(shape_of(student)[1], t_width)
        maps = token_maps(teacher, data.encodings, data.labels, args.max_len, [width])[f"k{width}"]
        with_maps = CaseDataset(data.encodings, data.labels, data.teacher_logits, maps)
        got: dict[str, list[float]] = {m: [] for m in ("distilled", *BEYOND_ARMS)}
        forward: list[float] = []
        for _ in range(args.rounds):
            for mode in got:
                kw = {"inner_teacher": teacher} if mode in ONLINE_ARMS else {}
                got[mode].append(suite_loop(build_model(spec, teacher=teacher, seed=0, keep_ids=keep),
                                            with_maps if mode == "distilled_attribution" else data, args.steps,
                                            1e-3, precision, mode=mode, device=args.device, **kw))
            term = plan_term("distilled_hidden", student, teacher, 0)
            seconds = 0.0
            for rows in batches[3:]:
                batch = collate([data[int(j)] for j in rows])
                t0 = time.perf_counter()
                with autocast(precision, args.device):
                    teacher_internals(teacher, term, batch["input_ids"], batch["attention_mask"])
                seconds += time.perf_counter() - t0
            forward.append(16 * (len(batches) - 3) / seconds)
        med = {m: statistics.median(v) for m, v in got.items()}
        line = "  ".join(f"{m} {med[m]:.0f} ex/s ({med['distilled'] / med[m]:.2f}x the step)" for m in BEYOND_ARMS)
        print(f"{name:<20} distilled {med['distilled']:.0f} ex/s;  {line};  the teacher's forward alone "
              f"{statistics.median(forward):.0f} ex/s", flush=True)


def main() -> None:
    p = defaults()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per loop and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median reported)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-len", type=int, default=p["max_len"])
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--no-trim", action="store_true", help="teacher and students keep the full vocabulary")
    parser.add_argument("--models", nargs="+", default=[p["teacher"], *p["students"]])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the GPU path)")
    parser.add_argument("--arms", action="store_true",
                        help="instead: each beyond-logit arm's step against the distilled step, and the teacher's "
                             "forward they run per batch")
    parser.add_argument("--options", action="store_true",
                        help="instead: time the embedding options (full vocabulary, sparse gradients) and "
                             "torch.compile against the suite's step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is available here; nothing was run")
    precision = resolve_precision(args.precision, args.device)
    cases, _ = generate_cases(1200, seed=7)
    enc = encode(cases["facts"].str.replace(r"<[^>]+>", " ", regex=True).tolist(), args.max_len)
    labels = (cases["first_party_winner"] == "TRUE").astype(int).to_numpy()
    logits = np.random.default_rng(0).normal(size=(len(enc), 2)).astype(np.float32)
    data = CaseDataset(enc, labels, logits)
    keep = None if args.no_trim else vocabulary_ids(enc)
    teacher = build_model(get_spec(p["teacher"]), seed=0)
    if args.arms:
        print(f"torch {torch.__version__}, device {args.device}, {args.threads} threads, batch 16, max_len "
              f"{args.max_len}, {precision}; {args.rounds} interleaved rounds of {args.steps} steps, median examples/s "
              f"inside training steps; teacher {p['teacher']} (pretrained weights, its inside read per batch)")
        arm_costs(args, data, keep, teacher, precision)
        return
    if args.options:
        print(f"torch {torch.__version__}, device {args.device}, {args.threads} threads, batch 16, max_len "
              f"{args.max_len}, {precision}, vocabulary trimmed to {len(keep)} rows; {args.rounds} interleaved rounds "
              f"of {args.steps} steps, median examples/s inside training steps")
        options(args, data, vocabulary_ids(enc), teacher, precision)
        return
    print(f"torch {torch.__version__}, device {args.device}, {args.threads} threads, batch 16, max_len {args.max_len}, "
          f"suite precision "
          f"{precision}, vocabulary {'full' if keep is None else f'trimmed to {len(keep)} rows'}; "
          f"{args.rounds} interleaved rounds of {args.steps} steps, median examples/s inside training steps")
    print(f"{'model':<22} {'bare fp32':>10} {'suite':>10} {'ratio':>7} {'suite KD':>10} {'KD/indep':>9}")
    for name in args.models:
        spec = get_spec(name)
        lr = 1e-4 if spec.role == "teacher" else 1e-3
        bare, suite, kd = [], [], []
        batches = batch_order(len(data), 16, args.steps + 3, seed=0)
        for _ in range(args.rounds):
            bare.append(bare_loop(build_model(spec, teacher=teacher, seed=0), data, batches, lr, args.device))
            suite.append(suite_loop(build_model(spec, teacher=teacher, seed=0, keep_ids=keep), data,
                                    args.steps, lr, precision, device=args.device))
            kd.append(suite_loop(build_model(spec, teacher=teacher, seed=0, keep_ids=keep), data,
                                 args.steps, lr, precision, mode="distilled", device=args.device))
        b, s, k = statistics.median(bare), statistics.median(suite), statistics.median(kd)
        print(f"{name:<22} {b:>10.1f} {s:>10.1f} {s / b:>6.2f}x {k:>10.1f} {s / k:>8.3f}x", flush=True)


if __name__ == "__main__":
    main()
