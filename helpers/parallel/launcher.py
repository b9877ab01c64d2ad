"""Training runs past one process: data-parallel under `accelerate launch`, the notebook still in charge.

With `launcher: accelerate` each training run (a teacher, a student x arm x seed) is written as a job spec,
`launch/<its checkpoint folder under models/>.json` in the run folder, and run by

    accelerate launch --multi_gpu --num_processes N --mixed_precision no -m helpers.stages.worker SPEC

N processes (GPUs, or CPU processes over gloo), each taking its shard of every global batch in the same seeded
order (helpers.training.loop.train). The main process saves the checkpoint and history exactly where in-process
training does, and hands back the run's logits and records, so the stage writes the same files either way.
The launched processes' output is relayed to the notebook. (`--multi_gpu` is accelerate's name for a torchrun
multi-process launch; on a CPU run the worker asks for CPU processes, which then talk over gloo.)
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from helpers.core.paths import REPO_ROOT
from helpers.training.jobs import job_folder


def _free_port() -> int:
    with socket.socket() as s:  # two launches at once (two run folders) must not share torchrun's port
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_command(spec_path: str | Path, processes: int, device: str) -> list[str]:
    """The `accelerate launch` command line that runs the job in `spec_path` in `processes` processes.

    Args:
        processes: processes (one per GPU on CUDA); 0 leaves the count to accelerate (its `accelerate config`
            file, else one per visible GPU), which a CPU run cannot use.
        device: the run's device (cpu | cuda): CPU runs need an explicit process count.
    """
    if not isinstance(processes, int) or processes < 0:
        raise ValueError(f"parameter processes: must be an integer >= 0, got {processes!r}")
    on_cpu = str(device).startswith("cpu")
    if processes == 0 and on_cpu:
        raise ValueError("parameter processes: 0 leaves the process count to accelerate's config or the GPU "
                         "count, and this run trains on the CPU; set processes (e.g. 2)")
    # Precision is the suite's own `precision` parameter (bf16 autocast inside train), never accelerate's.
    flags = ["--mixed_precision", "no", "--dynamo_backend", "no"]
    if processes == 1:
        flags += ["--num_processes", "1", "--num_machines", "1"]
    elif processes > 1:
        flags += ["--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
                  "--main_process_port", str(_free_port())]
    return [sys.executable, "-m", "accelerate.commands.launch", *flags, "-m", "helpers.stages.worker", str(spec_path)]


# ---------------------------------------------------------------- results handed back by the main process
def dump_result(result: dict[str, Any], folder: Path) -> None:
    """result.json (records, frames) + arrays.npz (logits): JSON floats round-trip exactly."""
    arrays: dict[str, np.ndarray] = {}

    def enc(value: Any, key: str) -> Any:
        if isinstance(value, np.ndarray):
            arrays[key] = value
            return {"__array__": key}
        if isinstance(value, pd.DataFrame):
            return {"__frame__": value.to_dict(orient="split", index=False)}
        if isinstance(value, dict):
            return {k: enc(v, f"{key}/{k}") for k, v in value.items()}
        if is_dataclass(value):
            return asdict(value)
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, np.generic):
            return value.item()
        return value

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "result.json").write_text(json.dumps(enc(result, "")), encoding="utf-8")
    np.savez(folder / "arrays.npz", **arrays)


def load_result(folder: Path) -> dict[str, Any]:
    with np.load(folder / "arrays.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}

    def dec(value: Any) -> Any:
        if isinstance(value, dict):
            if "__array__" in value:
                return arrays[value["__array__"]]
            if "__frame__" in value:
                return pd.DataFrame(**value["__frame__"])
            return {k: dec(v) for k, v in value.items()}
        return value

    return dec(json.loads((folder / "result.json").read_text(encoding="utf-8")))


# ---------------------------------------------------------------- the notebook's side
def _launch(spec: dict[str, Any], spec_path: Path, processes: int, device: str, threads: int) -> dict[str, Any]:
    """Write the spec, run it under `accelerate launch` (output relayed here), read back and remove its result."""
    per_process = max(1, threads // max(processes, 1)) if threads else 0
    result_dir = spec_path.with_suffix(".result")
    spec = dict(spec, threads=per_process, result=str(result_dir.resolve()))
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
    shutil.rmtree(result_dir, ignore_errors=True)
    cmd = launch_command(spec_path.resolve(), processes, device)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH"))
                                                      if p), TOKENIZERS_PARALLELISM="false")
    if per_process:
        env["OMP_NUM_THREADS"] = str(per_process)
    tail = b""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env) as proc:
        for chunk in iter(lambda: proc.stdout.read1(65536), b""):
            sys.stdout.write(chunk.decode(errors="replace"))
            sys.stdout.flush()
            tail = (tail + chunk)[-4000:]
    if proc.returncode != 0 or not (result_dir / "result.json").is_file():
        raise RuntimeError(f"accelerate launch exited with {proc.returncode} for {spec_path}:\n  {' '.join(cmd)}\n"
                           f"last output:\n{tail.decode(errors='replace')}")
    result = load_result(result_dir)
    shutil.rmtree(result_dir)
    return result


def launch_teacher(job: dict[str, Any], *, processes: int, threads: int) -> dict[str, Any]:
    """teacher.fit_teacher(job), run data-parallel in `processes` processes; returns what fit_teacher returns."""
    run_dir = Path(job["run_dir"])
    start = time.perf_counter()
    spec = {"kind": "teacher", "job": dict(job, run_dir=str(run_dir.resolve()))}
    result = _launch(spec, run_dir / "launch" / f"{job['folder']}.json", processes, job["device"], threads)
    result["seconds"] = time.perf_counter() - start  # the launch (process start-up) counts
    return result


def launch_student(job: Any, run_dir: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """student_runs.run_job(job), run data-parallel in settings["processes"] processes; returns what run_job returns."""
    folder = job_folder(run_dir, job)
    start = time.perf_counter()
    spec = {"kind": "student", "run_dir": str(Path(run_dir).resolve()), "settings": settings, "job": asdict(job)}
    spec_path = run_dir / "launch" / f"{folder.relative_to(run_dir / 'models')}.json"
    result = _launch(spec, spec_path, settings["processes"], settings["device"], settings.get("threads", 0))
    result.update(job=job, path=folder)
    result["row"]["seconds"] = round(time.perf_counter() - start, 2)  # the launch (process start-up) counts
    return result
