"""Size, latency and speed-up of the run's models and deployment variants, and the seed's claims re-measured."""
from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import nn

from .deployment import Deployed, deploy, variant_accuracy, variants_for
from .models import (
    PAPER_SPECS,
    REGISTRY,
    ModelSpec,
    build_model,
    checkpoint_size_mb,
    count_params,
    load_model,
    load_spec,
)
from .notebook_setup import pick_device
from .progress import progress
from .run_folder import read_index
from .run_folder import save_figure as _save
from .training import cpu_has_native_bf16

BATCHES = (1, 32)
TOKEN_RANGE = (1000, 30000)  # random ids away from the special tokens ([PAD]=0, [CLS]=101, ...)
CLAIM_TOLERANCE = 0.2  # relative gap above which the paper table explains a claim
BENCHMARK_COLUMNS = ["model", "mode", "seed", "shape", "params", "non_embedding_params", "size_mb",
                     "latency_ms_b1", "latency_ms_b1_iqr", "latency_ms_b32", "latency_ms_b32_iqr", "throughput_b32",
                     "speedup_vs_teacher_b1", "speedup_vs_teacher_b32", "threads", "device", "max_len", "repeats"]
VARIANT_COLUMNS = ["model", "mode", "seed", "variant", "latency_ms_b32", "latency_ms_b32_iqr", "speedup_vs_fp32",
                   "accuracy", "accuracy_change", "agreement_with_fp32"]
PAPER_COLUMNS = ["name", "shape", "params_m", "claimed_params_m", "non_embedding_params_m", "speedup_b32",
                 "claimed_speedup", "speedup_b1", "latency_ms_b1", "latency_ms_b1_iqr", "latency_ms_b32",
                 "latency_ms_b32_iqr", "note"]


@dataclass(frozen=True)
class Timing:
    """Wall-clock times of repeated runs of one workload, in milliseconds."""

    times_ms: tuple[float, ...]

    @property
    def median_ms(self) -> float:
        return float(np.median(self.times_ms))

    @property
    def iqr_ms(self) -> float:
        q1, q3 = np.percentile(self.times_ms, [25, 75])
        return float(q3 - q1)

    @property
    def min_ms(self) -> float:
        return float(min(self.times_ms))

    @property
    def max_ms(self) -> float:
        return float(max(self.times_ms))


@dataclass
class BenchmarkResult:
    """The tables `benchmark_run` wrote."""

    latency: pd.DataFrame
    variants: pd.DataFrame
    paper: pd.DataFrame | None
    environment: dict


def resolve_device(device: str | torch.device) -> torch.device:
    """A torch.device from `auto` | `cpu` | `cuda` (or a device)."""
    return device if isinstance(device, torch.device) else pick_device(str(device))


@contextlib.contextmanager
def pinned_threads(threads: int) -> Iterator[int]:
    """Pin torch's CPU thread count for the block (0 leaves it as is); yields the count in effect."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def environment(device: str | torch.device = "cpu") -> dict:
    """CPU model, core and thread counts, library versions, device and date of a measurement."""
    import transformers

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    dev = resolve_device(device)
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(), "device": str(dev),
            "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
            "date": datetime.now(UTC).isoformat(timespec="seconds")}


def random_inputs(batch: int, max_len: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """A fixed batch of random token ids with a full attention mask."""
    ids = torch.randint(*TOKEN_RANGE, (batch, max_len), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(runners: Mapping[Hashable, Callable[[], object]], repeats: int,
                     warmup: int | Mapping[Hashable, int], device: torch.device) -> dict[Hashable, Timing]:
    """Time every runner `repeats` times after untimed warm-ups, round-robin over runners within each repeat."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats}: need at least one timed run")
    keys = list(runners)
    for key in keys:
        for _ in range(warmup[key] if isinstance(warmup, Mapping) else warmup):
            runners[key]()
        _sync(device)
    times: dict[Hashable, list[float]] = {k: [] for k in keys}
    # Round-robin: a burst of load from other processes hits every model in the same repeat instead of
    # inflating one model's times, so ratios between models stay trustworthy on a shared, noisy machine.
    # The start rotates each repeat so no model always runs right after the same neighbour.
    for r in progress(range(repeats), desc=f"timing {len(keys)} workloads (repeats)"):
        for i in range(len(keys)):
            key = keys[(r + i) % len(keys)]
            _sync(device)
            start = time.perf_counter()
            runners[key]()
            _sync(device)
            times[key].append((time.perf_counter() - start) * 1e3)
    return {k: Timing(tuple(v)) for k, v in times.items()}


def _time_architectures(models: Mapping[str, nn.Module], variants: Sequence[str], max_len: int, repeats: int,
                        warmup: int, warmup_b32: int, device: torch.device) -> dict[tuple[str, str, int], Timing]:
    """Timings keyed (name, variant, batch): fp32 at every batch size, the other variants at batch 32."""
    inputs = {(b, d): random_inputs(b, max_len, torch.device(d)) for b in BATCHES for d in {device.type, "cpu"}}
    jobs: dict[tuple[str, str, int], Deployed] = {}
    for name, model in models.items():
        for variant in variants:
            deployed = deploy(model, variant, device)
            for batch in BATCHES if variant == "fp32" else BATCHES[-1:]:
                jobs[(name, variant, batch)] = deployed

    def runner(key: tuple[str, str, int]) -> Callable[[], object]:
        deployed = jobs[key]
        return lambda: deployed(**inputs[(key[2], deployed.device.type)])

    warmups = {k: warmup if k[2] == 1 else warmup_b32 for k in jobs}
    return time_interleaved({k: runner(k) for k in jobs}, repeats, warmups, device)


def _latency_row(name: str, timings: Mapping[tuple[str, str, int], Timing], reference: str) -> dict:
    b1, b32 = timings[(name, "fp32", 1)], timings[(name, "fp32", 32)]
    ref1, ref32 = timings[(reference, "fp32", 1)], timings[(reference, "fp32", 32)]
    return {"latency_ms_b1": b1.median_ms, "latency_ms_b1_iqr": b1.iqr_ms, "latency_ms_b1_min": b1.min_ms,
            "latency_ms_b1_max": b1.max_ms, "latency_ms_b32": b32.median_ms, "latency_ms_b32_iqr": b32.iqr_ms,
            "latency_ms_b32_min": b32.min_ms, "latency_ms_b32_max": b32.max_ms,
            "throughput_b32": 32e3 / b32.median_ms, "speedup_vs_teacher_b1": ref1.median_ms / b1.median_ms,
            "speedup_vs_teacher_b32": ref32.median_ms / b32.median_ms}


def benchmark_models(models: Mapping[str, nn.Module], max_len: int, repeats: int = 20, warmup: int = 3,
                     threads: int = 2, device: str | torch.device = "cpu", reference: str | None = None,
                     warmup_b32: int | None = None) -> pd.DataFrame:
    """fp32 latency at batch 1 and 32 (median, IQR, min, max), throughput and speed-up vs `reference` per model."""
    dev = resolve_device(device)
    reference = reference or next(iter(models))
    if reference not in models:
        raise KeyError(f"reference model {reference!r} is not among {list(models)}")
    with pinned_threads(threads) as n_threads:
        timings = _time_architectures(models, ["fp32"], max_len, repeats, warmup,
                                      warmup if warmup_b32 is None else warmup_b32, dev)
    rows = []
    for name, model in models.items():
        params, non_embedding = count_params(model)
        rows.append({"model": name, "params": params, "non_embedding_params": non_embedding,
                     **_latency_row(name, timings, reference), "threads": n_threads, "device": str(dev),
                     "max_len": max_len, "repeats": repeats})
    return pd.DataFrame(rows)


def paper_specs() -> list[ModelSpec]:
    """The seed's six architectures with random initialisation (timing does not depend on the weights)."""
    return [replace(REGISTRY[name], init="random", source="") for name in PAPER_SPECS]


def _claim_note(params_m: float, embedding_m: float, speedup_b32: float, speedup_b1: float,
                spec: ModelSpec) -> str:
    notes = []
    claimed_p, claimed_s = spec.claimed_params_m, spec.claimed_speedup
    if claimed_p and abs(params_m - claimed_p) / claimed_p > CLAIM_TOLERANCE:
        why = (f"the embedding block alone is {embedding_m:.1f}M, so the claim cannot include the word embeddings"
               if embedding_m >= claimed_p else
               f"differs; embeddings {embedding_m:.1f}M + encoder and head {params_m - embedding_m:.1f}M")
        notes.append(f"claimed {claimed_p:g}M, {params_m:.1f}M measured: {why}")
    if claimed_s and abs(speedup_b32 - claimed_s) / claimed_s > CLAIM_TOLERANCE:
        notes.append(f"claimed ~{claimed_s:g}x, {speedup_b32:.1f}x measured at batch 32 "
                     f"({speedup_b1:.1f}x at batch 1): differs")
    return "; ".join(notes)


def paper_table(specs: Sequence[ModelSpec] | None = None, max_len: int = 64, repeats: int = 20, warmup: int = 3,
                threads: int = 2, device: str | torch.device = "cpu", warmup_b32: int = 2) -> pd.DataFrame:
    """Measured vs claimed parameters and speed-up of the seed's architectures, timed together with random weights."""
    specs = list(specs) if specs is not None else paper_specs()
    if not specs:
        raise ValueError("paper_table needs at least one spec")
    models = {s.name: build_model(replace(s, init="random", source="")).eval() for s in specs}
    reference = next((s.name for s in specs if s.role == "teacher"), specs[0].name)
    lat = benchmark_models(models, max_len, repeats, warmup, threads, device, reference, warmup_b32)
    del models
    rows = []
    for spec, r in zip(specs, lat.itertuples()):
        params_m, non_embedding_m = r.params / 1e6, r.non_embedding_params / 1e6
        rows.append({"name": spec.name, "shape": spec.shape, "params_m": params_m,
                     "claimed_params_m": spec.claimed_params_m, "non_embedding_params_m": non_embedding_m,
                     "speedup_b32": r.speedup_vs_teacher_b32, "claimed_speedup": spec.claimed_speedup,
                     "speedup_b1": r.speedup_vs_teacher_b1, "latency_ms_b1": r.latency_ms_b1,
                     "latency_ms_b1_iqr": r.latency_ms_b1_iqr, "latency_ms_b32": r.latency_ms_b32,
                     "latency_ms_b32_iqr": r.latency_ms_b32_iqr,
                     "note": _claim_note(params_m, params_m - non_embedding_m, r.speedup_vs_teacher_b32,
                                         r.speedup_vs_teacher_b1, spec)})
    return pd.DataFrame(rows, columns=PAPER_COLUMNS)


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


def benchmark_run(run_dir: str | Path, *, max_len: int, repeats: int = 20, warmup: int = 3, threads: int = 2,
                  device: str | torch.device = "auto", seeds: Sequence[int] = (0,), paper_benchmark: bool = True,
                  split: str = "test", batch_size: int = 32, paper: Sequence[ModelSpec] | None = None,
                  write: bool = True, max_cases: int = 0, paper_repeats: int = 0) -> BenchmarkResult:
    """Benchmark the run's teacher and students (given seeds) and their variants; write `benchmark/`.

    Args:
        repeats, warmup: timed and untimed forward passes per latency figure (batch 1 and batch 32).
        seeds: the student seeds whose checkpoints are timed and get deployment variants.
        paper_benchmark: also time the seed's six architectures (`paper`, default the registry's paper specs).
        paper_repeats: timed runs per latency figure of those architectures (0: `repeats`); the table's ratios
            are medians, and BERT-base at batch 32 costs seconds per run, so fewer repeats keep the stage short.
        max_cases: the variants' accuracy is scored on the first `max_cases` cases of `split` (0: all of them).
        write: write benchmark/*.csv and environment.json (False: return the tables only).
    """
    run_dir = Path(run_dir)
    index = read_index(run_dir)
    students = [s for s in index.get("students", []) if int(s["seed"]) in set(seeds)]
    if not students:
        raise ValueError(f"models.json lists no student with seed in {list(seeds)}")
    entries = [index["teacher"], *students]
    data = pd.read_csv(run_dir / "data" / f"{split}.csv")
    data = data.iloc[:max_cases] if max_cases else data
    dev = resolve_device(device)
    variants = variants_for(dev)
    with pinned_threads(threads) as n_threads:
        # Each architecture is timed once, from its first checkpoint, and its figures are shared by both modes
        # and every seed: the weights' values do not change the cost of a forward pass, and it halves the time.
        models: dict[str, nn.Module] = {}
        for e in entries:
            if e["name"] not in models:
                models[e["name"]] = load_model(run_dir / e["path"])
        timings = _time_architectures(models, variants, max_len, repeats, warmup, min(warmup, 2), dev)
        acc = variant_accuracy([(_entry_label(e), run_dir / e["path"]) for e in entries], data, max_len, dev,
                               batch_size)
        env = {**environment(dev), "training_precision": index.get("precision", "fp32"),
               "bf16_native_cpu": cpu_has_native_bf16(), "max_len": max_len, "repeats": repeats, "warmup": warmup,
               "timing": "interleaved round-robin over models and variants, one checkpoint per architecture"}
    teacher = index["teacher"]["name"]
    latency_rows, variant_rows = [], []
    for e in entries:
        params, non_embedding = count_params(models[e["name"]])
        key = {"model": e["name"], "mode": e["mode"], "seed": int(e["seed"])}
        latency_rows.append({**key, "shape": e.get("shape", ""), "params": params,
                             "non_embedding_params": non_embedding, "size_mb": checkpoint_size_mb(run_dir / e["path"]),
                             **_latency_row(e["name"], timings, teacher), "threads": n_threads, "device": str(dev),
                             "max_len": max_len, "repeats": repeats})
        timing = _variant_timing_rows(e["name"], timings, variants)
        for r in acc[acc["label"] == _entry_label(e)].to_dict("records"):
            variant_rows.append({**key, "variant": r["variant"], **timing[r["variant"]], **r})
    latency = pd.DataFrame(latency_rows)[BENCHMARK_COLUMNS]
    variant_table = pd.DataFrame(variant_rows)[VARIANT_COLUMNS]
    paper_df = (paper_table(paper, max_len, paper_repeats or repeats, warmup, threads, dev, warmup_b32=min(warmup, 2))
                if paper_benchmark else None)
    if write:
        out = run_dir / "benchmark"
        out.mkdir(parents=True, exist_ok=True)
        latency.to_csv(out / "benchmark.csv", index=False)
        variant_table.to_csv(out / "variants.csv", index=False)
        if paper_df is not None:
            paper_df.to_csv(out / "paper.csv", index=False)
        (out / "environment.json").write_text(json.dumps(env, indent=2))
    return BenchmarkResult(latency, variant_table, paper_df, env)


def plot_latency(table: pd.DataFrame, run_dir: str | Path | None = None, name: str = "05_latency.png") -> Figure:
    """Latency at batch 32 per model (median, IQR bars), each bar labelled with its speed-up vs the teacher."""
    t = table.rename(columns={"name": "model", "speedup_b32": "speedup_vs_teacher_b32"}).drop_duplicates("model")
    fig = Figure(figsize=(max(6.0, 1.1 * len(t)), 4))
    ax = fig.subplots()
    x = np.arange(len(t))
    ax.bar(x, t["latency_ms_b32"], yerr=t["latency_ms_b32_iqr"] / 2, capsize=4, color="C0")
    for xi, (lat, iqr, s) in enumerate(zip(t["latency_ms_b32"], t["latency_ms_b32_iqr"],
                                           t["speedup_vs_teacher_b32"])):
        ax.annotate(f"{s:.1f}x", (xi, lat + iqr / 2), ha="center", va="bottom", xytext=(0, 2),
                    textcoords="offset points")
    ax.set_xticks(x, t["model"], rotation=30, ha="right")
    ax.set_ylabel("ms per batch of 32 (median, IQR bar)")
    ax.set_title("Inference latency at batch 32; labels: speed-up vs the teacher")
    return _save(fig, run_dir, name)


def plot_paper_measured_vs_claimed(paper: pd.DataFrame, run_dir: str | Path | None = None,
                                   name: str = "05_paper_measured_vs_claimed.png") -> Figure:
    """Two panels per seed architecture: parameters and speed-up, measured here beside the seed's claims."""
    fig = Figure(figsize=(11, 4))
    ax_p, ax_s = fig.subplots(1, 2)
    x = np.arange(len(paper))
    ax_p.bar(x - 0.2, paper["params_m"], 0.4, label="measured")
    ax_p.bar(x + 0.2, paper["claimed_params_m"].astype(float), 0.4, label="claimed")
    ax_p.set_ylabel("parameters (M)")
    ax_p.set_title("Parameters")
    ax_s.bar(x - 0.27, paper["speedup_b32"], 0.27, label="measured, batch 32")
    ax_s.bar(x, paper["speedup_b1"], 0.27, label="measured, batch 1")
    ax_s.bar(x + 0.27, paper["claimed_speedup"].astype(float), 0.27, label="claimed")
    ax_s.set_ylabel("speed-up vs the teacher (x)")
    ax_s.set_title("Speed-up")
    for ax in (ax_p, ax_s):
        ax.set_xticks(x, paper["name"], rotation=30, ha="right")
        ax.legend()
    return _save(fig, run_dir, name)


def plot_variants(variants: pd.DataFrame, run_dir: str | Path | None = None,
                  name: str = "05_variants.png") -> Figure:
    """Speed-up vs fp32 against accuracy change per model and deployment variant (mean over modes and seeds)."""
    t = variants.groupby(["model", "variant"], as_index=False, sort=False)[
        ["speedup_vs_fp32", "accuracy_change"]].mean()
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    markers = dict(zip(t["variant"].unique(), "os^DvP"))
    colours = {m: f"C{i % 10}" for i, m in enumerate(t["model"].unique())}
    for r in t.itertuples():
        ax.scatter(r.speedup_vs_fp32, r.accuracy_change, marker=markers[r.variant], color=colours[r.model], s=60)
    for m, c in colours.items():
        ax.scatter([], [], color=c, label=m)
    for v, mk in markers.items():
        ax.scatter([], [], marker=mk, color="grey", label=v)
    ax.axhline(0, color="grey", lw=0.8)
    ax.axvline(1, color="grey", lw=0.8)
    ax.set_xlabel("speed-up vs fp32 at batch 32 (x)")
    ax.set_ylabel("accuracy change vs fp32")
    ax.set_title("Deployment variants: faster, and at what accuracy cost?")
    ax.legend(fontsize="small", bbox_to_anchor=(1.02, 1), loc="upper left")
    return _save(fig, run_dir, name)
