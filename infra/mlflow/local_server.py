r"""The services of `infra/mlflow/compose.yaml`, started natively on one machine: PostgreSQL
(Debian's `postgresql` package) as the backend and auth store, and `mlflow server` with the
basic-auth app with a protected `champion` alias (components/tracking/champion_guard.py)
and a served artifact store, all on 127.0.0.1. Stopped by process id.

    eval "$(python infra/mlflow/local_server.py start)"   # exports MLFLOW_TRACKING_URI + admin login
    python infra/mlflow/local_server.py status
    python infra/mlflow/local_server.py stop

The state (URI, ports, PIDs, generated passwords) is written to `.trainyard/mlflow-server.json`
(mode 0600; `--state` to change); the database cluster and artifacts live in a folder beside
it until `stop`. The pipeline reads its login from MLFLOW_TRACKING_USERNAME and
MLFLOW_TRACKING_PASSWORD, never from params.yaml. Users other than the admin get READ on
everything until an admin grants more (`default_permission = READ`), as in the compose file.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

DEFAULT_STATE = Path(".trainyard/mlflow-server.json")
AUTH_INI = Path(__file__).with_name("basic_auth.ini")  # the compose file mounts the same one
SERVER_FLAGS = ["--serve-artifacts", "--app-name", "trainyard-auth"]  # as compose.yaml's command
BACKEND_SCHEME = "postgresql+psycopg2"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin(name: str) -> str:
    """A PostgreSQL server program: on PATH, else in Debian's versioned folder."""
    found = shutil.which(name) or next(
        (str(p) for p in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)), None)
    if not found:
        raise SystemExit(f"error: PostgreSQL's `{name}` is not installed (Debian: apt-get install postgresql)")
    return found


def _as_db_owner(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    # PostgreSQL refuses to run as root: run its programs as the `postgres` account then.
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def start_postgres(root: Path, timeout_s: float = 60) -> dict:
    """A fresh database cluster under `root/pg`, listening on 127.0.0.1 only."""
    pg, port = root / "pg", free_port()
    pg.mkdir(parents=True)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(pg, "postgres")
    _as_db_owner([_pg_bin("initdb"), "-D", str(pg / "data"), "-U", "postgres", "--auth-local=trust",
                  "--auth-host=scram-sha-256", "--no-sync"])
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {pg}"
    _as_db_owner([_pg_bin("pg_ctl"), "-D", str(pg / "data"), "-l", str(pg / "server.log"), "-o", opts,
                  "-w", "-t", str(int(timeout_s)), "start"])
    password = secrets.token_hex(16)
    sql = (f"CREATE ROLE mlflow LOGIN PASSWORD '{password}'; "
           "CREATE DATABASE mlflow OWNER mlflow; CREATE DATABASE mlflow_auth OWNER mlflow;")
    for stmt in sql.split("; "):
        _as_db_owner(["psql", "-h", str(pg), "-p", str(port), "-U", "postgres", "-v", "ON_ERROR_STOP=1",
                      "-qc", stmt.rstrip(";")])
    pid = int((pg / "data/postmaster.pid").read_text().split()[0])
    return {"port": port, "password": password, "pid": pid, "dir": str(pg),
            "url": f"{BACKEND_SCHEME}://mlflow:{password}@127.0.0.1:{port}"}


def start(state: Path, timeout_s: float = 180, workers: int = 1) -> dict:
    """Start PostgreSQL, then `mlflow server --app-name trainyard-auth` (basic auth, a protected champion) on it; return the state."""
    if state.exists():
        raise SystemExit(f"error: {state} exists: a server is already recorded there; stop it first")
    state.parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="ty-mlflow-"))  # outside any private folder: postgres reads it
    root.chmod(0o755)
    record: dict = {"root": str(root), "pids": []}
    try:
        pg = start_postgres(root)
        record |= {"postgres": pg}
        admin_password = secrets.token_hex(12)
        auth = configparser.ConfigParser()
        auth.read(AUTH_INI)
        auth["mlflow"]["database_uri"] = f"{pg['url']}/mlflow_auth"  # the user store in PostgreSQL too
        auth_ini = root / "basic_auth.ini"
        with open(auth_ini, "w") as f:
            auth.write(f)
        auth_ini.chmod(0o600)
        port = free_port()
        env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(auth_ini), "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
               "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}
        log = open(root / "mlflow.log", "w")  # noqa: SIM115 - the server's lifetime
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
             "--backend-store-uri", f"{pg['url']}/mlflow", "--artifacts-destination", str(root / "artifacts"),
             *SERVER_FLAGS, "--workers", str(workers)],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        record |= {"uri": f"http://127.0.0.1:{port}", "server_pid": proc.pid,
                   "env": {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",
                           "MLFLOW_TRACKING_USERNAME": auth["mlflow"]["admin_username"],
                           "MLFLOW_TRACKING_PASSWORD": admin_password}}
        _write(state, record)
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"error: mlflow server exited {proc.returncode}:\n"
                                 + (root / "mlflow.log").read_text()[-3000:])
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{record['uri']}/health", timeout=2).close()
                return record
            if time.monotonic() > deadline:
                raise SystemExit(f"error: mlflow server did not answer on {record['uri']} within {timeout_s:.0f} s")
            time.sleep(0.5)
    except BaseException:
        stop(state, record)
        raise


def _write(state: Path, record: dict) -> None:
    tmp = state.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.chmod(0o600)  # it holds passwords
    tmp.replace(state)


def stop(state: Path, record: dict | None = None, timeout_s: float = 30) -> None:
    """Stop the server's process group and PostgreSQL (by PID), remove their folder and the state."""
    import signal

    import psutil

    if record is None:
        if not state.exists():
            return
        record = json.loads(state.read_text())
    if pid := record.get("server_pid"):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).wait(timeout_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    if pg := record.get("postgres"):
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pg["pid"])
            p.send_signal(signal.SIGINT)  # PostgreSQL's "fast" shutdown
            p.wait(timeout_s)
    shutil.rmtree(record["root"], ignore_errors=True)
    state.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["start", "stop", "status"])
    ap.add_argument("--state", type=Path, default=DEFAULT_STATE)
    ap.add_argument("--workers", type=int, default=1, help="server worker processes (the champion's "
                    "compare-and-set holds across them)")
    a = ap.parse_args(argv)
    if a.action == "start":
        rec = start(a.state, workers=a.workers)
        print(f"# MLflow (basic auth, PostgreSQL on port {rec['postgres']['port']}) at {rec['uri']}")
        for k, v in rec["env"].items():
            print(f"export {k}={v}")
    elif a.action == "stop":
        stop(a.state)
    else:
        rec = json.loads(a.state.read_text()) if a.state.exists() else None
        print(json.dumps({"uri": rec["uri"], "root": rec["root"], "server_pid": rec["server_pid"],
                          "postgres_port": rec["postgres"]["port"]}, indent=1)
              if rec else "no server recorded")


if __name__ == "__main__":
    main()
