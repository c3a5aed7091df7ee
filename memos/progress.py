"""Live status lines for long work in the terminal (distillation, migrations, benches, index rebuilds).

On a terminal, :class:`Progress` redraws one line in place (``\\r``) with a bar, the count, the rate and an
estimate of the time left; elsewhere (a log file, CI, a pipe) it prints a plain line at most every
``every_s`` seconds and at the end, so logs stay readable. It writes to stderr by default, so a command's JSON
result on stdout stays machine-readable. No dependency: the CLI and the benches share it.

    with Progress("distill", total=120) as bar:
        for step in ...:
            bar.update(step, note=f"loss {loss:.3f}")
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

BAR_WIDTH = 24


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """One line of progress for ``label``. ``total`` may be unknown (None) or change (``update(total=...)``)."""

    def __init__(self, label: str, total: int | None = None, *, stream: TextIO | None = None, every_s: float = 10.0,
                 clock: Any = time.monotonic) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.note = ""
        self.stream = stream if stream is not None else sys.stderr
        self.every_s = every_s
        self._clock = clock
        self._started = clock()
        self._last_print = float("-inf")
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._closed = False
        self._drawn = ""  # the last line written

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, done: int, total: int | None = None, *, note: str | None = None, label: str | None = None) -> None:
        """Record that ``done`` units of ``total`` are finished and redraw (rate-limited off a terminal)."""
        if total is not None:
            self.total = total
        if label is not None and label != self.label:
            self.label = label
            self._last_print = float("-inf")  # a new phase is worth a line
        self.done = done
        if note is not None:
            self.note = note
        now = self._clock()
        if self._tty or now - self._last_print >= self.every_s:
            self._draw(end="\r" if self._tty else "\n")
            self._last_print = now

    def line(self) -> str:
        """The current status as text (what is drawn)."""
        elapsed = self._clock() - self._started
        parts = [self.label]
        if self.total:
            fraction = min(1.0, max(0.0, self.done / self.total))
            filled = int(fraction * BAR_WIDTH)
            parts.append(f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {self.done}/{self.total} ({fraction:.0%})")
        else:
            parts.append(f"{self.done}")
        parts.append(format_duration(elapsed))
        if self.total and 0 < self.done < self.total and elapsed > 0:
            parts.append(f"~{format_duration(elapsed / self.done * (self.total - self.done))} left")
        if self.note:
            parts.append(self.note)
        return "  ".join(parts)

    def close(self, note: str | None = None) -> None:
        """Draw the final line (once; off a terminal, not again if the last line printed says the same) and end it."""
        if self._closed:
            return
        self._closed = True
        if note is not None:
            self.note = note
        if self._tty or self.line() != self._drawn:
            self._draw(end="\n")

    def _draw(self, end: str) -> None:
        text = self._drawn = self.line()
        if self._tty:
            text = "\x1b[2K" + text  # clear the rest of a longer previous line
        try:
            self.stream.write(text + end)
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stream must not fail the work it reports on
            pass
