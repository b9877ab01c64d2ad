"""What a run will take, said before it starts: each stage's time as measured for the profile on this project's
reference machine (2 CPU cores, bf16 autocast, nothing else running), scaled to the run's data."""
from __future__ import annotations

from pathlib import Path
from typing import Any

# Stage seconds of a whole `python -m helpers run --profile NAME` from a clean clone, with the data shape they were
# measured on (labelled cases, max_len). Remeasure after a change that moves them (docs/performance.md).
MEASURED: dict[str, dict[str, Any]] = {
    "default": {"seconds": {"01": 13, "02": 129, "03": 1000, "04": 310, "05": 54}, "cases": 3150, "max_len": 64,
                "source": "make run at 7e5c34f"},
    "beyond": {"seconds": {"01": 13, "02": 129, "03": 1268, "04": 270, "05": 52}, "cases": 3150, "max_len": 64,
               "source": "03-05 at 7e5c34f; 01-02 and the teachers' 110 s of stage 04 from the default run"},
    "attribution": {"seconds": {"01": 13, "02": 155, "03": 3052, "04": 3427, "05": 28}, "cases": 3150, "max_len": 64,
                    "source": "a run at 85fa19f, 01 reused from the beyond run"},
    "justice": {"seconds": {"01": 30, "02": 328, "03": 2138, "04": 32, "05": 33}, "cases": 2999, "max_len": 128,
                "source": "the synthetic stand-in: 01, 02 and 04 from a whole run, 03 and 05 rerun with the "
                          "profile's final rate grid, same results"},
    "smoke": {"seconds": {"01": 9, "02": 15, "03": 25, "04": 8, "05": 8}, "cases": 900, "max_len": 48,
              "source": "smoke run at 4998f0c"},
}


def _cases(params: dict[str, Any]) -> tuple[int, str]:
    """Labelled cases the run will hold (before cleaning), and where that number comes from."""
    path = params.get("data_path") or ""
    if not path:
        return int(params["synthetic_n"]), "synthetic_n"
    try:
        import pandas as pd

        return len(pd.read_csv(path, usecols=[0])), f"rows of {Path(path).name}"
    except Exception:  # an unreadable file is reported by stage 01 with its own message
        return 0, path


def estimate_text(params: dict[str, Any], stages: list[str]) -> str:
    """One line: the expected time of `stages` (their two-digit numbers) for this run, or why there is none."""
    measured = MEASURED.get(str(params.get("profile", "")))
    if measured is None or not stages:
        return "" if not stages else (f"time estimate: none measured for profile {params.get('profile')!r} "
                                      f"(measured: {', '.join(MEASURED)})")
    cases, source = _cases(params)
    if not cases:
        return ""
    scale = cases / measured["cases"] * int(params["max_len"]) / measured["max_len"]
    seconds = sum(measured["seconds"][s] * (1 if s == "01" else scale) for s in stages if s in measured["seconds"])
    shape = ("the measured data shape" if abs(scale - 1) < 0.05 else
             f"scaled x{scale:.2f} from {measured['cases']} cases x {measured['max_len']} tokens to {cases} "
             f"({source}) x {params['max_len']}")
    amount = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
    return (f"time estimate: about {amount} for stage(s) {', '.join(stages)} on 2 CPU cores "
            f"(profile {params['profile']} as measured, {measured['source']}; {shape}; other parameters, seeds or "
            f"hardware change it)")
