"""Progress of long loops as a plain line every few seconds: `teacher steps  30/80 [00:42 elapsed, ~01:10 left]`.

Plain lines, not a redrawn bar: the runner streams a kernel's output through papermill, and a carriage-return bar
turns into garbage there and in CI logs; a line every `every` seconds reads the same in a terminal, a log file,
a JupyterLab cell and the executed notebook. A loop shorter than `every` seconds prints nothing.
"""
from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from queue import Empty
from typing import TextIO, TypeVar

T = TypeVar("T")
EVERY_S = 10.0  # seconds between progress lines


def clock_text(seconds: float) -> str:
    """`mm:ss`, or `h:mm:ss` from an hour on."""
    s = max(0, int(round(seconds)))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """Counts work done and prints `desc  done/total [elapsed, ~left]` at most once every `every` seconds.

    Use `update(n)` after each unit of work, or call the object with the absolute count, `p(done, total)`, which
    is the shape of a training loop's progress callback. Reaching the total, `close()` or leaving a `with` block
    prints a last line (`done in mm:ss`), but only when the loop ran long enough to print a line before.
    """

    def __init__(self, total: int | None = None, desc: str = "", *, every: float = EVERY_S,
                 file: TextIO | None = None, clock: Callable[[], float] = time.monotonic):
        self.total, self.desc, self.every = total, desc, every
        self.file, self.clock = file, clock
        self.done = 0
        self.start = self._last = clock()
        self.printed = False
        self.closed = False

    def line(self, final: bool = False) -> str:
        """The progress line as it would be printed now."""
        elapsed = self.clock() - self.start
        width = len(str(self.total)) if self.total else 0
        count = f"{self.done:>{width}}/{self.total}" if self.total else str(self.done)
        if final:
            timing = f"done in {clock_text(elapsed)}"
        elif self.total and self.done:
            left = elapsed / self.done * (self.total - self.done)
            timing = f"{clock_text(elapsed)} elapsed, ~{clock_text(left)} left"
        else:
            timing = f"{clock_text(elapsed)} elapsed"
        return f"{self.desc}  {count} [{timing}]".strip()

    def _emit(self, final: bool = False) -> None:
        print(self.line(final), file=self.file or sys.stdout, flush=True)
        self.printed = True
        self._last = self.clock()

    def update(self, n: int = 1) -> None:
        """Record `n` more units done; print a line if `every` seconds passed since the last one."""
        self.done += n
        if self.total and self.done >= self.total:
            self.close()  # the last unit: a callback user may never call close()
        elif self.clock() - self._last >= self.every:
            self._emit()

    def __call__(self, done: int, total: int | None = None) -> None:
        """Set the absolute count (and total): the `progress(step, max_steps)` callback of a training loop."""
        if total is not None:
            self.total = total
        self.update(done - self.done)

    def close(self) -> None:
        """Print the last line (`done in mm:ss`) when the loop printed any line before."""
        if not self.closed and self.printed:
            self._emit(final=True)
        self.closed = True

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "", *, every: float = EVERY_S,
             file: TextIO | None = None) -> Iterator[T]:
    """Yield from `iterable`, printing a progress line every `every` seconds (total from len() when it has one)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(total, desc, every=every, file=file) as p:
        for item in iterable:
            yield item
            p.update()


class QueueFile:
    """A write-only text file whose lines go onto a multiprocessing queue: progress lines of a worker process."""

    def __init__(self, queue):
        self.queue = queue

    def write(self, text: str) -> int:
        if text.strip():
            self.queue.put(text.rstrip("\n"))
        return len(text)

    def flush(self) -> None:
        pass


@contextmanager
def relay(queue) -> Iterator[None]:
    """Print, in this process, every line worker processes put on `queue` until the block ends.

    A worker's own stdout is not the notebook's (papermill and JupyterLab only see the kernel's), so workers write
    their progress lines to a queue (QueueFile) and the kernel prints them.
    """
    stop = threading.Event()

    def pump() -> None:
        while not stop.is_set():
            try:
                print(queue.get(timeout=0.2), flush=True)
            except Empty:
                continue
            except (EOFError, OSError):  # the manager went away
                return
        while True:
            try:
                print(queue.get_nowait(), flush=True)
            except (Empty, EOFError, OSError):
                return

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def quiet_worker(threads: int) -> None:
    """Set up a training worker process: pinned torch threads, no transformers progress bars or load reports (its
    output is relayed to the notebook as plain lines)."""
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(threads)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
