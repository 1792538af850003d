"""A dependency-free progress bar for long jobs (training, generation): done/total, rate, ETA."""

from __future__ import annotations

import sys
import time
from typing import IO, Any

__all__ = ["Progress"]


def _clock(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """``[#####-----]  40% 400/1000 img | 812 img/s | ETA 00:01 | loss 0.21`` on one line.

    Redrawn in place (carriage return) on a terminal, at most every ``interval`` seconds;
    elsewhere (a log file, CI) a plain line every 10% of the way. The rate counts only the
    work done in this run (``start`` is where a resumed job picked up).
    """

    def __init__(self, total: int, *, unit: str = "it", start: int = 0, stream: IO[str] | None = None,
                 interval: float = 0.25, width: int = 24, label: str = "") -> None:
        self.total, self.unit, self.start, self.done = max(int(total), 1), unit, int(start), int(start)
        self.stream = sys.stderr if stream is None else stream
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval, self.width, self.label = interval, width, label
        self.began = time.perf_counter()
        self._drawn = -1.0
        self._decile = 10 * self.done // self.total
        self.fields: dict[str, Any] = {}

    def line(self) -> str:
        """The current status line."""
        frac = min(self.done / self.total, 1.0)
        filled = int(frac * self.width)
        elapsed = time.perf_counter() - self.began
        rate = (self.done - self.start) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        parts = [f"{self.label}[{'#' * filled}{'-' * (self.width - filled)}] {100 * frac:3.0f}% "
                 f"{self.done}/{self.total} {self.unit}", f"{rate:,.0f} {self.unit}/s",
                 f"ETA {_clock(eta) if eta == eta else '--:--'}"]
        parts += [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.fields.items()]
        return " | ".join(parts)

    def update(self, done: int, **fields: Any) -> None:
        """Sets the amount done (absolute, not an increment) and any fields to show."""
        self.done = int(done)
        self.fields.update(fields)
        now = time.perf_counter()
        if self.tty:
            if now - self._drawn >= self.interval or self.done >= self.total:
                self.stream.write("\r" + self.line() + "\033[K")
                self.stream.flush()
                self._drawn = now
        elif 10 * self.done // self.total > self._decile:
            self._decile = 10 * self.done // self.total
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def close(self) -> None:
        """Draws the final state and ends the line."""
        if self.tty:
            self.stream.write("\r" + self.line() + "\033[K\n")
            self.stream.flush()
