"""The README's commands after `make run`, run as typed in a shell where the venv is not
active (the first line activates it), on the shared end-to-end project."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, free_port, project_env, run

pytestmark = pytest.mark.slow


def readme_blocks(after: str, lang: str) -> str:
    """The first fenced `lang` block after the line starting with `after`."""
    text = (REPO / "README.md").read_text()
    start = text.index(after)
    m = re.compile(rf"^```{lang}\n(.*?)^```", re.S | re.M).search(text, start)
    assert m, f"no ```{lang} block after {after!r}"
    return m.group(1)


def bare_shell_env() -> dict[str, str]:
    """A user's shell: the venv is not on PATH, nothing of ours activated."""
    env = project_env()
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != venv_bin)
    env.pop("VIRTUAL_ENV", None)
    return env


@pytest.fixture
def with_venv(tiny_project):
    """`.venv` in the project, as `make` leaves it (a link to the venv running the tests)."""
    link = tiny_project / ".venv"
    link.symlink_to(Path(sys.prefix), target_is_directory=True)
    try:
        yield tiny_project
    finally:
        link.unlink()


def test_the_commands_after_make_run_work_as_typed(with_venv):
    project, env = with_venv, bare_shell_env()
    lines = [ln for ln in readme_blocks("After `make run`", "bash").splitlines() if ln.strip()]
    assert lines[0].startswith("source .venv/bin/activate")
    no_venv = subprocess.run(["bash", "-c", "command -v dvc"], cwd=project, env=env, capture_output=True, text=True)
    assert no_venv.returncode != 0 or ".venv" not in no_venv.stdout  # the test really starts without it
    for line in lines[1:]:
        if line.startswith("mlflow ui"):
            continue  # a server: started below
        # one line each, as typed (comments included), after the activation line
        p = run(["bash", "-c", f"set -e\n{lines[0]}\n{line}"], project, env=env, timeout=300, check=False)
        assert p.returncode == 0 and p.stdout.strip(), f"{line}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
        if line.startswith("dvc plots show"):
            assert (project / "dvc_plots/index.html").is_file(), p.stdout
        if line.startswith("cat metrics/"):
            assert '"test_' in p.stdout, p.stdout  # the file itself, not an empty shell
        if "registry trace" in line:
            assert re.search(r"^v\d+\s", p.stdout, re.M), p.stdout
    ui = next(ln for ln in lines if ln.startswith("mlflow ui"))
    port = free_port()
    cmd = ui.split("#")[0].strip() + f" --port {port}"
    server = subprocess.Popen(["bash", "-c", f"set -e\n{lines[0]}\nexec {cmd}"], cwd=project, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, "mlflow ui exited"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    assert r.status == 200
                break
            except OSError:
                assert time.monotonic() < deadline, "mlflow ui did not answer in 120 s"
                time.sleep(1)
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def test_the_python_snippet_generates(with_venv):
    code = readme_blocks("and from any Python process", "python")
    code = code.rstrip().splitlines()
    code[-1] = f"print({code[-1]})"  # the README shows the value a REPL would echo
    p = subprocess.run(["bash", "-c", "source .venv/bin/activate && python -"], cwd=with_venv, env=bare_shell_env(),
                       input="\n".join(code), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "ROMEO:" in p.stdout
