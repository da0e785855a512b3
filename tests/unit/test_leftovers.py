"""A test run that leaves a service running fails, names it, and stops it."""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import psutil

pytest_plugins = ["pytester"]
REPO = Path(__file__).resolve().parents[2]


def test_a_run_that_leaves_a_service_behind_fails_naming_it(pytester, monkeypatch):
    monkeypatch.setenv("TRAINYARD_LEFTOVER_GRACE_S", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    pytester.makeconftest("from tests.conftest import pytest_sessionfinish, pytest_sessionstart  # noqa: F401\n")
    pid_file = pytester.path / "leaked.pid"
    pytester.makepyfile(test_leak=textwrap.dedent(f"""
        import subprocess

        def test_starts_a_server_and_forgets_it():
            p = subprocess.Popen([{sys.executable!r}, "-c", "import time; time.sleep(120)", "mlflow server"],
                                 start_new_session=True)
            open({str(pid_file)!r}, "w").write(str(p.pid))

        def test_a_clean_one():
            pass
    """))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=2)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*the test run left 1 service process(es) running*", "*mlflow server*"])
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, "left running"


def test_a_clean_run_passes_as_it_is(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    pytester.makeconftest("from tests.conftest import pytest_sessionfinish, pytest_sessionstart  # noqa: F401\n")
    pytester.makepyfile(test_ok="def test_ok():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    assert result.ret == 0
