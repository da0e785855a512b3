"""The stage timings the overhead bench reads (`components/timings.py`)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from tests.integration.conftest import REPO


def test_a_stage_line_starts_when_its_process_started(tmp_path):
    """A process that flushes at once: its line's wall is its start-up, a fraction of a second,
    and its start is not before it was launched (psutil's `create_time` put it up to a second
    early: Linux gives the boot time in whole seconds)."""
    out = tmp_path / "t.jsonl"
    launched = time.time()
    subprocess.run([sys.executable, "-c", "from components import timings; timings.flush('probe@x', ok=True)"],
                   cwd=REPO, env={"TRAINYARD_TIMINGS": str(out), "PATH": ""}, check=True, timeout=60)
    ended = time.time()
    line = json.loads(out.read_text())
    assert launched - 0.05 <= line["start"] <= line["end"] <= ended, (launched, line["start"], line["end"], ended)
