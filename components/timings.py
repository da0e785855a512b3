"""A stage's own account of where its time went, for `bench/stage_overhead.py`.

With `TRAINYARD_TIMINGS=<file>` set, each stage appends one JSON line to that file when it
ends: its DVC name, when its process started and ended (wall clock), the seconds it spent on
its work (training, scoring, reading and writing data: what `work` blocks measured), whether it
started a local Ray, which of the heavy libraries (torch, ray, mlflow) it imported, and any
figures it noted. Unset, nothing is measured or written.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

ENV = "TRAINYARD_TIMINGS"
HEAVY = ("torch", "ray", "mlflow")  # each costs a second or more to import
_state: dict[str, Any] = {"work_s": 0.0, "ray_started": False, "notes": {}}


def enabled() -> bool:
    """Whether the bench asked for timings."""
    return bool(os.environ.get(ENV))


@contextlib.contextmanager
def work() -> Iterator[None]:
    """Count the block's wall time as the stage's work."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        _state["work_s"] += time.perf_counter() - t0


def add_work(seconds: float) -> None:
    """Count `seconds` measured elsewhere (a training loop's own clock) as work."""
    _state["work_s"] += float(seconds)


@contextlib.contextmanager
def clock(key: str) -> Iterator[None]:
    """Note the block's wall seconds as figure `key` (not as work: the block may hold start-up)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        note(key, time.perf_counter() - t0)


def note(key: str, value: Any) -> None:
    """Record a figure (`fit_s`, ...) for the bench; `ray_started` when a stage starts a local Ray."""
    if key == "ray_started":
        _state["ray_started"] = bool(value)
    else:
        _state["notes"][key] = value


def mark(key: str) -> None:
    """Note `<key>_s`: the seconds from this process's start to now (what start-up cost)."""
    if enabled():
        note(f"{key}_s", round(time.time() - _process_start(), 3))


def _process_start() -> float:
    """When this process started (wall clock). Not psutil's `create_time`: it adds the boot
    time, which Linux gives in whole seconds (`btime` in /proc/stat), so every stage's wall
    came out up to a second long (0.78 s on one boot: a 0.37 s stage read 1.1 s). The
    process's age from its start tick and the uptime, both counted from boot, is exact to a
    tick."""
    try:
        with open("/proc/self/stat") as f:
            after_name = f.read().rsplit(")", 1)[1].split()  # the name in (...) may hold spaces
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - (uptime - int(after_name[19]) / os.sysconf("SC_CLK_TCK"))  # field 22: starttime
    except (OSError, ValueError, IndexError):  # not Linux
        import psutil

        return psutil.Process().create_time()


def flush(stage: str, ok: bool) -> None:
    """Append this stage's line to `TRAINYARD_TIMINGS` (if set)."""
    path = os.environ.get(ENV)
    if not path:
        return
    line = {"stage": os.environ.get("DVC_STAGE") or stage, "start": _process_start(), "end": time.time(),
            "ok": ok, "argv": sys.argv[1:3], "imported": [m for m in HEAVY if m in sys.modules], **_state}
    with open(path, "a") as f:  # one short line per stage: appends do not interleave
        f.write(json.dumps(line) + "\n")
