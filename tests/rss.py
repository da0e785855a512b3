"""Peak memory of a command: resident set size summed over its process tree, sampled while it
runs (what `/usr/bin/time -f %M` misses: children's memory adds up, and it shows only the
largest single process)."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import time
from pathlib import Path


def tree_rss(pid: int) -> int:
    """Bytes resident in process `pid` and every process under it, now (0 once it is gone)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += p.memory_info().rss
    return total


def run_sampled(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 600.0,
                every_s: float = 0.05) -> tuple[subprocess.CompletedProcess, int]:
    """Run `cmd`; (its completed process with stdout and stderr, the peak of `tree_rss` seen).
    Killed with its children past `timeout`, as a failed run."""
    import psutil

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err, text=True)
        peak, t0 = 0, time.monotonic()
        while p.poll() is None:
            peak = max(peak, tree_rss(p.pid))
            if time.monotonic() - t0 > timeout:
                for c in psutil.Process(p.pid).children(recursive=True):
                    c.kill()
                p.kill()
                break
            time.sleep(every_s)
        p.wait()
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(cmd, p.returncode, out.read(), err.read()), peak
