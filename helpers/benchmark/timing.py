"""Timing models: interleaved repeats, pinned threads, the seed's six architectures re-measured."""
from __future__ import annotations

import contextlib
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
from torch import nn

from helpers.benchmark.deployment import Deployed, deploy
from helpers.core.device import pick_device
from helpers.core.progress import progress
from helpers.models.build import build_model, count_params
from helpers.models.specs import PAPER_SPECS, REGISTRY, ModelSpec

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
