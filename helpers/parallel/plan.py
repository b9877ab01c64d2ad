"""How a stage spreads its training runs over processes: one decision, read by the teacher and student stages."""
from __future__ import annotations

MODES = ("accelerate", "pool", "inprocess")


def execution(launcher: str, device: str, workers: int) -> tuple[str, int]:
    """How training runs execute, and how many side by side.

    `("accelerate", 1)`: each run data-parallel under `accelerate launch` (helpers.parallel.launcher), one after
    the other; `("pool", n)`: n runs side by side in worker processes (the CPU and the in-process launcher only);
    `("inprocess", 1)`: one run at a time in this process.
    """
    if launcher == "accelerate":
        return "accelerate", 1
    n = max(1, int(workers)) if str(device).split(":")[0] == "cpu" else 1
    return ("pool", n) if n > 1 else ("inprocess", 1)


def threads_each(threads: int, processes: int) -> int:
    """torch threads per process when `processes` share `threads` (at least one)."""
    return max(1, threads // max(1, processes))
