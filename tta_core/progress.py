"""Progress of long loops, for a person at a terminal and for a log file alike.

On a terminal (the stream is a TTY) a tqdm bar is drawn. Anywhere else (CI, ``nohup``, a
job scheduler's log) a bar would be a heap of carriage returns, so a plain line is written
instead, at the start, every ``every`` seconds, and at the end::

    prepare train: 0/1200 files (0%)
    prepare train: 480/1200 files (40%), 95.1 files/s, ETA 8 s
    prepare train: 1200/1200 files (100%), 96.0 files/s, done in 12.5 s

Use it as a context manager around the loop, or wrap an iterable::

    from tta_core.progress import Progress, progress

    with Progress(total=len(todo), desc="prepare train", unit="files") as bar:
        for out in loader:
            ...
            bar.update()                    # or bar.update(len(batch))

    for step in progress(range(steps), desc="sample", unit="steps", disable=quiet):
        ...

``Progress(total, desc, unit="items", *, every=None, disable=False, stream=None, tty=None,
clock=time.monotonic, initial=0)``:

- ``total``: the count at which the work is done (None when unknown: no percentage, no ETA).
- ``every``: seconds between plain lines (the TTY bar refreshes on its own); None takes the
  environment variable ``TTA_PROGRESS_EVERY`` (a positive number of seconds), else 10.
- ``disable``: write nothing at all (other ranks of a distributed run, ``--quiet``).
- ``stream``: where to write (default: ``sys.stderr`` as it is when the reporter is made);
  ``tty`` overrides the stream's ``isatty()``; ``clock`` is for tests.
- ``update(n=1)`` adds ``n`` done; ``set_postfix(text)`` appends text to the following lines
  (a loss, a current file); ``close()`` writes the last line (idempotent, also on an
  exception inside ``with``; then the line says "stopped" instead of "done").

The per-item cost off a terminal is an integer add and one ``time.monotonic()`` call.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator, TextIO, TypeVar

T = TypeVar("T")

#: seconds between plain progress lines when neither ``every`` nor TTA_PROGRESS_EVERY is given
DEFAULT_EVERY = 10.0


def default_every() -> float:
    """Seconds between plain lines: ``TTA_PROGRESS_EVERY`` when set, else :data:`DEFAULT_EVERY`."""
    text = os.environ.get("TTA_PROGRESS_EVERY", "").strip()
    if not text:
        return DEFAULT_EVERY
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        from .errors import UsageError

        raise UsageError(f"TTA_PROGRESS_EVERY must be a positive number of seconds, got {text!r}")
    return value


def duration(seconds: float) -> str:
    """A short human duration: ``8 s``, ``3 min 20 s``, ``2 h 05 min``."""
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class Progress:
    """A progress reporter: a tqdm bar on a TTY, periodic plain lines elsewhere (module doc)."""

    def __init__(self, total: int | None, desc: str, unit: str = "items", *, every: float | None = None,
                 disable: bool = False, stream: TextIO | None = None, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic, initial: int = 0):
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self._start_n = initial
        self.disable, self.clock = disable, clock
        self.postfix = ""
        self._closed = disable
        self._bar = None
        if disable:
            return
        self.every = default_every() if every is None else every
        self.stream = sys.stderr if stream is None else stream
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty and isatty())
        if tty:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit.rstrip("s") or unit, initial=initial,
                             file=self.stream, dynamic_ncols=True, leave=True)
            return
        self._t0 = clock()
        self._next = self._t0 + self.every
        self._write(self.line())

    # -- reporting -----------------------------------------------------------------------------
    def update(self, n: int = 1) -> None:
        """Count ``n`` more done."""
        if self._closed:
            return
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = self.clock()
        if now >= self._next:
            self._next = now + self.every
            self._write(self.line(now))

    def set_postfix(self, text: str) -> None:
        """Text shown after the counts from now on (e.g. ``loss 0.123``)."""
        self.postfix = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        """Write the final line (or close the bar). Safe to call twice."""
        self._finish(done=True)

    def _finish(self, done: bool) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
            return
        self._write(self.line(self.clock(), end="done" if done else "stopped"))

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._finish(done=exc_type is None)

    # -- the plain line ------------------------------------------------------------------------
    def line(self, now: float | None = None, end: str | None = None) -> str:
        """The plain progress line at time ``now`` (None: the first line, no rate yet)."""
        if self.total:
            head = f"{self.desc}: {self.n}/{self.total} {self.unit} ({100 * self.n // self.total}%)"
        else:
            head = f"{self.desc}: {self.n} {self.unit}"
        parts = [head]
        if now is not None:
            elapsed = now - self._t0
            done = self.n - self._start_n
            rate = done / elapsed if elapsed > 0 else 0.0
            if done:
                parts.append(f"{rate:.3g} {self.unit}/s" if rate < 100 else f"{rate:.0f} {self.unit}/s")
            if end is not None:
                parts.append(f"{end} in {duration(elapsed)}")
            elif self.total and rate > 0:
                parts.append(f"ETA {duration((self.total - self.n) / rate)}")
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(parts)

    def _write(self, text: str) -> None:
        try:
            print(text, file=self.stream, flush=True)
        except (OSError, ValueError):  # a closed or broken stream must not stop the work
            self._closed = True


def progress(iterable: Iterable[T], desc: str, unit: str = "items", *, total: int | None = None,
             **kwargs: Any) -> Iterator[T]:
    """Iterate ``iterable`` while reporting (``total`` defaults to its ``len()`` when it has one);
    keyword arguments as for :class:`Progress`."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(total, desc, unit, **kwargs) as bar:
        for x in iterable:
            yield x
            bar.update()
