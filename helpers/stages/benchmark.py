"""Stage 05's benchmark: size, latency and deployment variants of every checkpoint in the run folder."""
from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
from torch import nn

from helpers.benchmark.deployment import variant_accuracy, variants_for
from helpers.benchmark.timing import (
    BENCHMARK_COLUMNS,
    VARIANT_COLUMNS,
    BenchmarkResult,
    Timing,
    _latency_row,
    _time_architectures,
    environment,
    paper_table,
    pinned_threads,
    resolve_device,
)
from helpers.core.params import ReportParams
from helpers.core.run_folder import read_index
from helpers.models.build import checkpoint_size_mb, count_params, load_model, load_spec
from helpers.models.specs import ModelSpec
from helpers.training.precision import cpu_has_native_bf16


def _architecture(folder: Path) -> str:
    """A key shared by checkpoints with the same architecture (their forward passes cost the same)."""
    with contextlib.suppress(FileNotFoundError):
        return load_spec(folder).name
    cfg = json.loads((folder / "config.json").read_text())
    keys = ("model_type", "num_hidden_layers", "n_layers", "hidden_size", "dim", "intermediate_size", "hidden_dim")
    return "/".join(str(cfg.get(k)) for k in keys)


def _variant_timing_rows(arch: str, timings: Mapping[tuple[str, str, int], Timing],
                         variants: Sequence[str]) -> dict[str, dict]:
    fp32 = timings[(arch, "fp32", 32)]
    return {v: {"latency_ms_b32": timings[(arch, v, 32)].median_ms, "latency_ms_b32_iqr": timings[(arch, v, 32)].iqr_ms,
                "speedup_vs_fp32": fp32.median_ms / timings[(arch, v, 32)].median_ms} for v in variants}


def _entry_label(entry: Mapping) -> str:
    return f"{entry['name']}/{entry['mode']}/seed{entry['seed']}"


def benchmark_run(p: ReportParams, *, split: str = "test", batch_size: int = 32,
                  paper: Sequence[ModelSpec] | None = None, write: bool = True) -> BenchmarkResult:
    """Benchmark the run's teacher and students (given seeds) and their variants; write `benchmark/`.

    Args:
        bench_repeats, bench_warmup: timed and untimed forward passes per latency figure (batch 1 and batch 32).
        bench_seeds: the student seeds whose checkpoints are timed and get deployment variants.
        paper_benchmark: also time the seed's six architectures (`paper`, default the registry's paper specs).
        paper_repeats: timed runs per latency figure of those architectures (0: `bench_repeats`); the table's ratios
            are medians, and BERT-base at batch 32 costs seconds per run, so fewer repeats keep the stage short.
        bench_cases: the variants' accuracy is scored on the first `bench_cases` cases of `split` (0: all of them).
        write: write benchmark/*.csv and environment.json (False: return the tables only).
    """
    run_dir = p.run_dir
    run_dir = Path(run_dir)
    index = read_index(run_dir)
    students = [s for s in index.get("students", []) if int(s["seed"]) in set(p.bench_seeds)]
    if not students:
        raise ValueError(f"models.json lists no student with seed in {list(p.bench_seeds)}")
    entries = [index["teacher"], *students]
    data = pd.read_csv(run_dir / "data" / f"{split}.csv")
    data = data.iloc[:p.bench_cases] if p.bench_cases else data
    dev = resolve_device(p.device)
    variants = variants_for(dev)
    with pinned_threads(p.threads) as n_threads:
        # Each architecture is timed once, from its first checkpoint, and its figures are shared by both modes
        # and every seed: the weights' values do not change the cost of a forward pass, and it halves the time.
        models: dict[str, nn.Module] = {}
        for e in entries:
            if e["name"] not in models:
                models[e["name"]] = load_model(run_dir / e["path"])
        timings = _time_architectures(models, variants, p.max_len, p.bench_repeats, p.bench_warmup,
                                      min(p.bench_warmup, 2), dev)
        acc = variant_accuracy([(_entry_label(e), run_dir / e["path"]) for e in entries], data, p.max_len, dev,
                               batch_size)
        env = {**environment(dev), "training_precision": index.get("precision", "fp32"),
               "bf16_native_cpu": cpu_has_native_bf16(), "max_len": p.max_len, "repeats": p.bench_repeats,
               "warmup": p.bench_warmup,
               "timing": "interleaved round-robin over models and variants, one checkpoint per architecture"}
    teacher = index["teacher"]["name"]
    latency_rows, variant_rows = [], []
    for e in entries:
        params, non_embedding = count_params(models[e["name"]])
        key = {"model": e["name"], "mode": e["mode"], "seed": int(e["seed"])}
        latency_rows.append({**key, "shape": e.get("shape", ""), "params": params,
                             "non_embedding_params": non_embedding, "size_mb": checkpoint_size_mb(run_dir / e["path"]),
                             **_latency_row(e["name"], timings, teacher), "threads": n_threads, "device": str(dev),
                             "max_len": p.max_len, "repeats": p.bench_repeats})
        timing = _variant_timing_rows(e["name"], timings, variants)
        for r in acc[acc["label"] == _entry_label(e)].to_dict("records"):
            variant_rows.append({**key, "variant": r["variant"], **timing[r["variant"]], **r})
    latency = pd.DataFrame(latency_rows)[BENCHMARK_COLUMNS]
    variant_table = pd.DataFrame(variant_rows)[VARIANT_COLUMNS]
    paper_df = (paper_table(paper, p.max_len, p.paper_repeats or p.bench_repeats, p.bench_warmup, p.threads, dev,
                             warmup_b32=min(p.bench_warmup, 2))
                if p.paper_benchmark else None)
    if write:
        out = run_dir / "benchmark"
        out.mkdir(parents=True, exist_ok=True)
        latency.to_csv(out / "benchmark.csv", index=False)
        variant_table.to_csv(out / "variants.csv", index=False)
        if paper_df is not None:
            paper_df.to_csv(out / "paper.csv", index=False)
        (out / "environment.json").write_text(json.dumps(env, indent=2))
    return BenchmarkResult(latency, variant_table, paper_df, env)
