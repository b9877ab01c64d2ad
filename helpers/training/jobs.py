"""A student training job (student x arm x seed x learning rate) and the checkpoint folder it writes."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Job:
    """One training run: a student in an arm with a seed and a learning rate."""

    name: str
    arm: str
    seed: int
    lr: float
    final: bool  # True: saved as the run's checkpoint and scored on test; False: a trial (learning rate, curve)
    transfer_n: int | None = None  # transfer cases for a transfer arm (None: the stage's transfer_n)
    link_logits: str | None = None  # chain arm: run-folder path of its link teacher's cached logits (chain_logits/)
    weight: float | None = None  # a beyond-logit arm's extra-term weight (None: the stage's parameter)


def job_folder(run_dir: Path, job: Job) -> Path:
    """Where a run's checkpoint goes: its final place, or a staging folder for a learning-rate trial."""
    if job.final:
        return run_dir / "models" / "students" / job.name / job.arm / f"seed{job.seed}"
    extra = ("" if job.transfer_n is None else f"-transfer{job.transfer_n}") + (
        "" if job.weight is None else f"-w{job.weight:g}")
    return (run_dir / "models" / "students" / ".trials"
            / f"{job.name}-{job.arm}-seed{job.seed}-lr{job.lr:g}{extra}")
