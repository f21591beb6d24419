"""The one progress line of every long stage.

    <head> | <rate> <unit>/sec[ | <percent>% | ETA h:mm:ss][<tail>]

head says what was done ("step  1200 | loss 8.1", "predicted 6400 videos",
"averaged 25/37 tensors"); the rate is measured since the previous line; the
percentage and ETA appear when the total is known.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

# Where a stage's log lines go (print, or a test's list.append); Optional[Log]
# where None means "say nothing".
Log = Callable[[str], None]


def format_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Counts work (steps, videos, tensors) towards an optional total.

    units_per_count converts the count into the unit of the rate (a training
    step is batch_size examples). Call line() to format a line, or tick() to
    log one at most every `every_seconds`.
    """

    def __init__(self, unit: str, total: Optional[int] = None, start: int = 0,
                 units_per_count: float = 1.0, every_seconds: float = 10.0,
                 log: Optional[Log] = None):
        self.unit, self.total, self.start = unit, total, start
        self.units_per_count = units_per_count
        self.every_seconds, self.log = every_seconds, log
        self.start_time = self.last_time = self.last_logged = time.time()
        self.last_count = start

    def rate(self, count: int) -> float:
        """Units per second since the previous call."""
        now = time.time()
        rate = ((count - self.last_count) * self.units_per_count
                / max(now - self.last_time, 1e-9))
        self.last_time, self.last_count = now, count
        return rate

    def line(self, count: int, head: str, rate: Optional[float] = None, tail: str = "") -> str:
        rate = self.rate(count) if rate is None else rate
        text = f"{head} | {rate:8.1f} {self.unit}/sec"
        if self.total:
            done = count - self.start
            remaining = (self.total - count) * (time.time() - self.start_time) / max(done, 1)
            text += (f" | {100.0 * count / self.total:5.1f}% | "
                     f"ETA {format_seconds(remaining)}")
        return text + tail

    def tick(self, count: int, head: str, final: bool = False) -> None:
        """Logs line(count, head) when every_seconds have passed (or final)."""
        now = time.time()
        if self.log and (final or now - self.last_logged >= self.every_seconds):
            self.last_logged = now
            self.log(self.line(count, head))
