"""A stage on a cluster whose head stops answering ends in one line, within the set time."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from components.cluster.connect import head_lost_s
from components.cluster.resources import ResourceError

REPO = Path(__file__).resolve().parents[2]


def test_a_silent_head_stops_the_process_in_one_line_within_the_limit(tmp_path):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from components.cluster.connect import watch_head
        watch_head("127.0.0.1:{port}", 2.0, interval_s=0.2)
        print("watching", flush=True)
        time.sleep(60)  # a driver stuck in a poll of a cluster that is gone
        print("not stopped", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "watching"
    time.sleep(1.0)
    assert proc.poll() is None  # the head answers: nothing happens
    listener.close()
    lost = time.monotonic()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and time.monotonic() - lost < 6, (proc.returncode, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: the Ray cluster's head at 127.0.0.1:{port} has not "
                                                   f"answered for 2 s") and "dvc repro` resumes" in lines[0], err
    assert "not stopped" not in out


def test_a_stopped_watch_lets_the_process_go_on_when_the_head_goes_later(tmp_path):
    """Once the Ray work is done (`stop_head_watch`, after a Train run or a sweep returns), a head
    lost while the stage publishes stops nothing."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from components.cluster.connect import stop_head_watch, watch_head
        watch_head("127.0.0.1:{port}", 1.0, interval_s=0.2)
        stop_head_watch()
        print("stopped the watch", flush=True)
        sys.stdin.readline()  # the head is gone now
        time.sleep(3)  # publishing: three times the watch's limit
        print("published", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "stopped the watch"
    listener.close()
    out, err = proc.communicate("\n", timeout=30)
    assert proc.returncode == 0 and "published" in out, (proc.returncode, out, err)


@pytest.mark.parametrize("raw", ["soon", "-1"])
def test_a_bad_head_wait_is_one_error_naming_it(monkeypatch, raw):
    monkeypatch.setenv("TRAINYARD_HEAD_LOST_S", raw)
    with pytest.raises(ResourceError, match="TRAINYARD_HEAD_LOST_S"):
        head_lost_s()
