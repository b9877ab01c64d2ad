"""Progress lines for long loops: a line every few seconds with elapsed time and an estimate of the time left."""
from __future__ import annotations

import io

from helpers.core.progress import Progress, QueueFile, clock_text, progress, relay


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_line_every_interval_with_elapsed_and_time_left():
    clock, out = FakeClock(), io.StringIO()
    with Progress(8, "teacher epochs", every=10, file=out, clock=clock) as p:
        for _ in range(8):
            clock.now += 6
            p.update()
    assert out.getvalue().splitlines() == [
        "teacher epochs  2/8 [00:12 elapsed, ~00:36 left]",
        "teacher epochs  4/8 [00:24 elapsed, ~00:24 left]",
        "teacher epochs  6/8 [00:36 elapsed, ~00:12 left]",
        "teacher epochs  8/8 [done in 00:48]",
    ]


def test_a_short_loop_prints_nothing():
    out = io.StringIO()
    assert list(progress(range(5), desc="quick", every=60, file=out)) == [0, 1, 2, 3, 4]
    assert out.getvalue() == ""


def test_progress_wraps_an_iterable_and_takes_its_length():
    out = io.StringIO()
    items = list(progress(["a", "b", "c"], desc="models", every=0, file=out))
    assert items == ["a", "b", "c"]
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("models  1/3 [") and lines[-1].startswith("models  3/3 [done in")
    assert len(lines) == 3  # 1/3, 2/3, then the last line once


def test_unknown_total_and_the_callback_form():
    clock, out = FakeClock(), io.StringIO()
    p = Progress(desc="cases", every=5, file=out, clock=clock)
    clock.now = 5
    p.update(7)
    assert out.getvalue() == "cases  7 [00:05 elapsed]\n"
    q = Progress(desc="steps", every=5, file=out, clock=clock)
    clock.now = 65
    q(30, 120)  # training loops report (step, max_steps)
    assert out.getvalue().splitlines()[-1] == "steps   30/120 [01:00 elapsed, ~03:00 left]"
    assert clock_text(3725) == "1:02:05"


def test_worker_lines_are_relayed_through_a_queue(capsys):
    import queue

    q = queue.Queue()
    out = QueueFile(q)
    with relay(q):
        bar = Progress(4, "teacher steps", every=0, file=out)
        for step in range(1, 5):
            bar(step, 4)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("teacher steps  1/4 [") and "left]" in lines[0]
    assert lines[-1].startswith("teacher steps  4/4 [done in") and len(lines) == 4
