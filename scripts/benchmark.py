"""Time the seed's architectures (random weights) on this machine, and optionally a run folder's trained models.

Prints the environment first, then latency at batch 1 and 32 (median, IQR), speed-ups vs the teacher measured in
the same interleaved run, and the seed's claimed figures beside them, so machines can be compared by their ratios.

    python scripts/benchmark.py [--max-len 128] [--repeats 20] [--threads 2] [--specs ...] [--run-dir runs/default]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

MAX_POSITIONS = 512


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parsed and checked arguments; exits with status 2 and a message naming the argument when one is bad."""
    from helpers.models.specs import PAPER_SPECS, REGISTRY

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-len", type=int, default=128, help="tokens per input (1..512)")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per latency figure (>= 1; 20+ advised)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed warm-up runs at batch 1 (>= 0)")
    parser.add_argument("--warmup-b32", type=int, default=2, help="untimed warm-up runs at batch 32 (>= 0)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (>= 1)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run")
    parser.add_argument("--specs", nargs="+", default=list(PAPER_SPECS), metavar="NAME",
                        help="model specs to time; the first teacher-role spec (else the first) is the reference")
    parser.add_argument("--run-dir", type=Path, default=None, help="also benchmark this run folder's models")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="student seeds for --run-dir")
    parser.add_argument("--write", action="store_true", help="with --run-dir: write <run-dir>/benchmark/")
    args = parser.parse_args(argv)
    if not 1 <= args.max_len <= MAX_POSITIONS:
        parser.error(f"--max-len must be between 1 and {MAX_POSITIONS} (position embeddings), got {args.max_len}")
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.warmup < 0 or args.warmup_b32 < 0:
        parser.error(f"--warmup and --warmup-b32 must be >= 0, got {args.warmup} and {args.warmup_b32}")
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    unknown = [s for s in args.specs if s not in REGISTRY]
    if unknown:
        parser.error(f"--specs: unknown model spec(s) {', '.join(unknown)}; known: {', '.join(REGISTRY)}")
    if args.run_dir is not None and not (args.run_dir / "models" / "models.json").is_file():
        parser.error(f"--run-dir: {args.run_dir / 'models' / 'models.json'} not found (run notebooks 02-03 first)")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no CUDA GPU")
    return args


def _ms(median: float, iqr: float) -> str:
    return f"{median:9.1f} ±{iqr:6.1f}"


def _claim(value: float | None, unit: str) -> str:
    return f"{value:g}{unit}" if value is not None and value == value else "-"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print it; returns the exit status."""
    args = parse_args(argv)
    import torch

    from helpers.benchmark import timing as benchmark_timing
    from helpers.core.params import ReportParams
    from helpers.models.specs import get_spec
    from helpers.run.notebook_setup import setup
    from helpers.stages import benchmark as stages_benchmark

    started = time.perf_counter()
    device = setup(threads=args.threads, device=args.device, quiet=True)
    env = benchmark_timing.environment(device)
    print(f"CPU: {env['cpu']} ({env['cores']} logical cores)   threads: {env['threads']}   device: {env['device']}"
          + (f" ({env['gpu']})" if env["gpu"] else ""))
    print(f"torch {env['torch']}   transformers {env['transformers']}   python {env['python']}   {env['date']}")
    print(f"fp32, random weights, max_len={args.max_len}, repeats={args.repeats}, warm-up b1={args.warmup} "
          f"b32={args.warmup_b32}; models timed round-robin within each repeat\n")

    specs = [get_spec(name) for name in args.specs]
    paper = benchmark_timing.paper_table(specs, args.max_len, args.repeats, args.warmup, args.threads, device,
                                  warmup_b32=args.warmup_b32)
    print(f"{'model':<20} {'shape':>6} {'params':>8} {'claimed':>8} {'b1 ms (median ±IQR)':>20} "
          f"{'b32 ms (median ±IQR)':>21} {'x b1':>6} {'x b32':>6} {'claimed':>8}")
    for r in paper.itertuples():
        print(f"{r.name:<20} {r.shape:>6} {r.params_m:7.1f}M {_claim(r.claimed_params_m, 'M'):>8} "
              f"{_ms(r.latency_ms_b1, r.latency_ms_b1_iqr):>20} {_ms(r.latency_ms_b32, r.latency_ms_b32_iqr):>21} "
              f"{r.speedup_b1:5.1f}x {r.speedup_b32:5.1f}x {_claim(r.claimed_speedup, 'x'):>8}")
    notes = [(r.name, r.note) for r in paper.itertuples() if r.note]
    if notes:
        print("\nwhere measured and claimed differ by more than 20%:")
        for name, note in notes:
            print(f"  {name}: {note}")

    if args.run_dir is not None:
        params = ReportParams(run_dir=str(args.run_dir), max_len=args.max_len, bench_repeats=args.repeats,
                              bench_warmup=args.warmup, threads=args.threads, device=str(device),
                              bench_seeds=list(args.seeds), paper_benchmark=False)
        res = stages_benchmark.benchmark_run(params, write=args.write)
        cols = ["model", "mode", "seed", "size_mb", "latency_ms_b1", "latency_ms_b32", "latency_ms_b32_iqr",
                "speedup_vs_teacher_b1", "speedup_vs_teacher_b32"]
        print(f"\nTrained models in {args.run_dir} (one timing per architecture, shared by modes and seeds):")
        print(res.latency[cols].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
        print("\nDeployment variants (latency at batch 32; accuracy on the test split):")
        print(res.variants.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        if args.write:
            print(f"\nwrote {args.run_dir / 'benchmark'}")
    print(f"\nwall time: {time.perf_counter() - started:.1f} s (torch threads {torch.get_num_threads()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
