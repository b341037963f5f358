"""Progress of long work (the CLI's commands), always on stderr (stdout is the result).

On a terminal, a rich progress bar (transient: it disappears when the work is done). Otherwise
(stderr piped to a log, a CI job), one plain line every :data:`INTERVAL_S` seconds while the
work runs, ``moec bench: 12/64 (19%) 35 s: qwen3-30b-a3b fsedp-2x2 1024 ep``, so a long run
is visibly alive without flooding the log. ``moec --quiet COMMAND`` turns both off.
"""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import Any, TextIO

#: Seconds between status lines when stderr is not a terminal.
INTERVAL_S = 10.0

#: Set by ``moec --quiet``: no progress at all.
QUIET = False


class Progress:
    """``with Progress("bench", total=64) as p: ... p.advance(status="...")``.

    ``total`` may be None (unknown: a spinner and a count). ``stream`` and ``interval`` exist for
    tests; commands use the defaults.
    """

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        unit: str = "",
        stream: TextIO | None = None,
        interval: float | None = None,
    ) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream if stream is not None else sys.stderr
        self.interval = INTERVAL_S if interval is None else interval
        self.done = 0
        self.status = ""
        self._start = time.monotonic()
        self._bar: Any = None
        self._task: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Progress:
        if QUIET:
            return self
        self._start = time.monotonic()
        if self.stream.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )
            from rich.progress import Progress as RichProgress

            console = Console(file=self.stream)
            self._bar = RichProgress(
                SpinnerColumn(), TextColumn(f"[bold]{self.label}"), BarColumn(),
                MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.description}"),
                console=console, transient=True,
            )  # fmt: skip
            self._bar.start()
            self._task = self._bar.add_task("", total=self.total)
        else:
            self._thread = threading.Thread(target=self._ticker, daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        err: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._bar is not None:
            self._bar.stop()

    def advance(self, n: int = 1, status: str = "") -> None:
        """``n`` more units done; ``status`` says what is being worked on (shown next to it)."""
        self.done += n
        self.status = status or self.status
        if self._bar is not None:
            self._bar.update(self._task, advance=n, description=self.status)

    def set_total(self, total: int | None) -> None:
        """The number of units, once known."""
        self.total = total
        if self._bar is not None:
            self._bar.update(self._task, total=total)

    def set_status(self, status: str) -> None:
        """What is being worked on, without counting a unit."""
        self.advance(0, status)

    def line(self) -> str:
        """The one-line status written when stderr is not a terminal."""
        elapsed = time.monotonic() - self._start
        unit = f" {self.unit}" if self.unit else ""
        if self.total:
            count = f"{self.done}/{self.total}{unit} ({100 * self.done // self.total}%)"
        else:
            count = f"{self.done}{unit}"
        status = f": {self.status}" if self.status else ""
        return f"moec {self.label}: {count} {elapsed:.0f} s{status}"

    def _ticker(self) -> None:
        while not self._stop.wait(self.interval):
            print(self.line(), file=self.stream, flush=True)
