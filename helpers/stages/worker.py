"""The entry point of each process `accelerate launch` starts: `python -m helpers.stages.worker SPEC`."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from helpers.parallel.launcher import dump_result
from helpers.stages.student_runs import load_shared, run_job
from helpers.stages.teacher import fit_teacher
from helpers.training.jobs import Job


# ---------------------------------------------------------------- each launched process
def main(argv: list[str] | None = None) -> None:
    """Run the job of a spec file in this launched process; the main process writes the result back."""
    import torch
    from accelerate import Accelerator
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    spec_path = Path((argv or sys.argv[1:])[0])
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    run_dir = Path(spec["job"]["run_dir"] if spec["kind"] == "teacher" else spec["run_dir"])
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    device = spec["job"]["device"] if spec["kind"] == "teacher" else spec["settings"]["device"]
    accelerator = Accelerator(cpu=str(device).startswith("cpu"))
    device = "cpu" if accelerator.device.type == "cpu" else str(accelerator.device)  # this process's GPU
    if accelerator.is_main_process:
        name = spec_path.relative_to(run_dir) if spec_path.is_relative_to(run_dir) else spec_path
        print(f"{name}: {accelerator.num_processes} process(es), "
              f"{accelerator.distributed_type.value}, backend {accelerator.state.backend or 'none'}, device {device}",
              flush=True)
    if spec["kind"] == "teacher":
        job = dict(spec["job"], device=device, progress=spec["job"]["progress"] and accelerator.is_main_process)
        result = fit_teacher(job, accelerator=accelerator)
    else:
        load_shared(spec["run_dir"], dict(spec["settings"], device=device))
        result = run_job(Job(**spec["job"]), accelerator=accelerator)
    if accelerator.is_main_process:
        dump_result(result, Path(spec["result"]))
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main()
