"""Progress lines for long data work: how far, how fast, and when it will be done."""

from __future__ import annotations

import os
import time


def every_s() -> float:
    """Seconds between progress lines: `TRAINYARD_PROGRESS_S` (default 30; 0 turns them off)."""
    return float(os.environ.get("TRAINYARD_PROGRESS_S", "30"))


def clock(seconds: float) -> str:
    """`1:02:03` or `2:03`."""
    s = max(0, round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Rate:
    """Counts work done and prints at most one line every `every` seconds, e.g.
    `[prepare] 3,000 / 9,000 images (33%), 412 images/s, ETA 0:14`; silent for work shorter than that."""

    def __init__(self, prefix: str, unit: str, total: int | None = None, every: float | None = None) -> None:
        self.prefix, self.unit, self.total = prefix, unit, total
        self.every = every_s() if every is None else every
        self.done = 0
        self.t0 = self.last = time.monotonic()

    def add(self, n: int) -> str | None:
        """`n` more units done; the line printed, if one was due."""
        self.done += n
        now = time.monotonic()
        if self.every <= 0 or now - self.last < self.every:
            return None
        self.last = now
        rate = self.done / max(now - self.t0, 1e-9)
        if self.total:
            eta = f", ETA {clock((self.total - self.done) / rate)}" if rate > 0 else ""
            line = (f"{self.prefix} {self.done:,} / {self.total:,} {self.unit} ({self.done / self.total:.0%}), "
                    f"{rate:,.0f} {self.unit}/s{eta}")
        else:
            line = f"{self.prefix} {self.done:,} {self.unit}, {rate:,.0f} {self.unit}/s"
        print(line, flush=True)
        return line

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.t0
