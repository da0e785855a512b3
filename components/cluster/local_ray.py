"""The project's own Ray on this machine, shared by the stages of one `dvc repro` (its nodes'
processes, ports and stopping by process id: `ray_nodes`).

A stage that needs Ray and has no `RAY_ADDRESS` used to start a Ray of its own and stop it on
exit: ~6 s a stage. Now the first such stage starts one with `ray start` (token auth, its own
temp dir, loopback only), records it in `.trainyard/ray/` of the working tree, and leaves a
watchdog process beside it; each stage holds a lease (a file named by its PID) while it runs.
Later stages of the same repro (or the next `dvc exp run`) connect to it. The watchdog stops
it, by process id, once no live stage has held a lease for `TRAINYARD_RAY_IDLE_S` seconds,
also when the stage was killed: a dead PID holds no lease. The default is 60 s; 0 keeps the
old way (each stage starts a private Ray and stops it on exit). Only a Ray recorded here, of the same Ray version, whose processes and
watchdog still run, is reused; anything else recorded is stopped first.

Only the standard library and psutil at import: the watchdog runs this module on its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from components.cluster.ray_nodes import (
    NODE_PORT_FLAGS,
    TEMP_DIR_ENV,
    cluster_pids,
    free_ports,
    is_gcs,
    node_port_args,
    ray_executable,
    stop_pids,
)
from components.store import project_root

IDLE_ENV = "TRAINYARD_RAY_IDLE_S"
DEFAULT_IDLE_S = 60.0  # longer than the non-Ray stages between two Ray stages of one repro
POLL_S = 0.5
MAX_LIFE_S = 7 * 24 * 3600.0  # a bound on the watchdog's loop, whatever holds a lease
LOCK_WAIT_S = 300.0
STOP_WAIT_S = 5.0  # SIGTERM, then SIGKILL: the idle Ray must be gone within seconds of its time
# --- the project's own Ray --------------------------------------------------------------------

def idle_s() -> float:
    """`TRAINYARD_RAY_IDLE_S`: how long the project's Ray outlives its last stage (0: not at all)."""
    raw = os.environ.get(IDLE_ENV, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_IDLE_S
    except ValueError:
        raise ValueError(f"{IDLE_ENV}={raw!r}: not a number of seconds") from None
    return max(value, 0.0)


def state_dir(root: Path | None = None) -> Path:
    """Where the project's Ray is recorded: `.trainyard/ray` of the project (`DVC_ROOT`, which
    names the project also in a queued experiment's temporary copy), so the experiments of a
    `dvc queue start -j N` share its one Ray as one repro's stages do. Each stage's job still
    runs its own working tree's code: Ray puts the driver's working directory first on its
    workers' `sys.path`, per job, and the stages hand their workers absolute paths."""
    return (root or project_root()) / ".trainyard" / "ray"


def _started(pid: int) -> float | None:
    import psutil

    try:
        p = psutil.Process(pid)
        return None if p.status() == psutil.STATUS_ZOMBIE else p.create_time()
    except psutil.Error:
        return None


def _alive(proc: dict | None) -> bool:
    return bool(proc) and proc["started"] is not None and _started(proc["pid"]) == proc["started"]


def _me() -> dict:
    return {"pid": os.getpid(), "started": _started(os.getpid())}


@contextlib.contextmanager
def _locked(folder: Path, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """The folder's lock (between stages, and between a stage and the watchdog)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "lock", "a") as fh:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{folder / 'lock'}: still held after {wait_s:.0f} s") from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def _usable(record: dict | None, version: str) -> bool:
    return (record is not None and record.get("version") == version and _alive(record.get("gcs"))
            and _alive(record.get("watchdog")))


def _stop_recorded(folder: Path) -> None:
    """Stop whatever Ray the folder records (its watchdog gone, another Ray version) and forget it."""
    record = _read(folder / "state.json")
    if record:
        if _alive(record.get("watchdog")):
            with contextlib.suppress(OSError):
                os.kill(record["watchdog"]["pid"], 15)
        stop_pids(cluster_pids(record["temp_dir"]))
        shutil.rmtree(record["temp_dir"], ignore_errors=True)
    for name in ("state.json", "token"):
        (folder / name).unlink(missing_ok=True)


def _start(folder: Path, idle: float, version: str) -> dict:
    """`ray start --head` for this project, and its watchdog; the record written."""
    port, dash, client, *node = free_ports(3 + len(NODE_PORT_FLAGS))
    temp_dir = tempfile.mkdtemp(prefix="ty-ray-")  # short: Ray's socket paths live under it
    token = folder / "token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token.resolve())}
    log = folder / "ray-start.log"
    cmd = [ray_executable(), "start", "--head", "--port", str(port), "--ray-client-server-port", str(client),
           "--node-ip-address", "127.0.0.1", "--temp-dir", temp_dir, "--include-dashboard", "true",
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--disable-usage-stats",
           *node_port_args(node)]
    # Ray's daemons keep the files they are given: a log file, never the stage's pipes (whoever
    # reads the stage's output would wait for them to close).
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: Ray turns `--node-ip-address 127.0.0.1` into this
    # host's outward address (`resolve_ip_for_localhost`) unless it believes no other node may
    # join; a one-node Ray of one project has none, so it stays on loopback.
    env = {**os.environ, **auth, TEMP_DIR_ENV: temp_dir, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    # its daemons start in the state folder, not in the stage's working tree: a queued
    # experiment's temporary copy is deleted when it ends, while the Ray serves the others
    with open(log, "w") as out:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                           env=env, timeout=180, check=False, cwd=folder)
    if p.returncode != 0:
        stop_pids(cluster_pids(temp_dir))
        shutil.rmtree(temp_dir, ignore_errors=True)
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"`ray start` exited {p.returncode} (log: {log}):\n{tail}")
    import psutil

    gcs = next((pid for pid in cluster_pids(temp_dir) if is_gcs(psutil.Process(pid))), None)
    record = {"address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dash}", "temp_dir": temp_dir,
              "version": version, "idle_s": idle, "gcs": {"pid": gcs, "started": _started(gcs) if gcs else None},
              # RAY_API_SERVER_ADDRESS: Ray's State API (Ray Train's placement-group cleaner asks it
              # whether a controller lives) finds this Ray by it; by itself it looks for every
              # Ray on the machine and fails with "Found multiple active Ray instances"
              "env": {"RAY_ADDRESS": f"127.0.0.1:{port}", "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dash}",
                      **auth}}
    with open(folder / "watchdog.log", "a") as out:
        dog = subprocess.Popen([sys.executable, "-m", "components.cluster.local_ray", "watch", str(folder),
                                "--idle", f"{idle:g}"],
                               cwd=folder, env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH"))))},
                               stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    record["watchdog"] = {"pid": dog.pid, "started": _started(dog.pid)}
    _write(folder / "state.json", record)
    return record


def _lease_path(folder: Path, pid: int) -> Path:
    return folder / "leases" / f"{pid}.json"


def acquire(version: str, root: Path | None = None) -> tuple[dict[str, str], bool] | None:
    """The project's Ray for this process: `(env, started)` (RAY_ADDRESS and its auth, and whether
    this call started it), holding a lease until this process exits; `None` when
    `TRAINYARD_RAY_IDLE_S` is 0 (the caller starts a private Ray, as before)."""
    import atexit

    idle = idle_s()
    if idle <= 0:
        return None
    folder = state_dir(root)
    with _locked(folder):
        record = _read(folder / "state.json")
        started = not _usable(record, version)
        if started:
            _stop_recorded(folder)
            record = _start(folder, idle, version)
        lease = _lease_path(folder, os.getpid())
        lease.parent.mkdir(exist_ok=True)
        _write(lease, _me())
    atexit.register(release, folder)
    return record["env"], started


def release(folder: Path) -> None:
    """Give up this process's lease (the watchdog also drops those of dead processes)."""
    _lease_path(folder, os.getpid()).unlink(missing_ok=True)


def _live_leases(folder: Path) -> int:
    live = 0
    for path in (folder / "leases").glob("*.json"):
        if _alive(_read(path)):
            live += 1
        else:
            path.unlink(missing_ok=True)
    return live


def _forget(folder: Path, record: dict) -> None:
    """Remove the record (and token) of the Ray `record` describes, if it is still the current one."""
    current = _read(folder / "state.json")
    if current is not None and current.get("temp_dir") == record["temp_dir"]:
        (folder / "state.json").unlink(missing_ok=True)
        (folder / "token").unlink(missing_ok=True)


def watch(folder: Path, idle: float) -> None:
    """The watchdog's loop: stop the recorded Ray once no live process has held a lease for
    `idle` seconds, or clean up after it when it died on its own."""
    record = _read(folder / "state.json")
    for _ in range(100):  # the starter writes the record just after starting this process
        if record is not None:
            break
        time.sleep(0.1)
        record = _read(folder / "state.json")
    if record is None:
        return
    busy = time.monotonic()
    end = busy + MAX_LIFE_S
    why = f"its lifetime bound ({MAX_LIFE_S:.0f} s)"
    while time.monotonic() < end:
        time.sleep(POLL_S)
        try:
            with _locked(folder, wait_s=60):
                if not _alive(record["gcs"]):
                    why = "its GCS is gone"
                elif _live_leases(folder):
                    busy = time.monotonic()
                    continue
                elif time.monotonic() - busy >= idle:
                    why = f"idle for {idle:g} s"
                else:
                    continue
                _forget(folder, record)  # under the lock: no stage connects to it from here on
                break
        except (OSError, TimeoutError):  # the working tree was removed (a finished experiment's copy)
            why = "its folder is gone"
            break
    stopped = stop_pids(cluster_pids(record["temp_dir"]), timeout_s=STOP_WAIT_S)
    shutil.rmtree(record["temp_dir"], ignore_errors=True)
    print(f"{time.strftime('%H:%M:%S')} stopped Ray at {record['address']} ({len(stopped)} processes): {why}",
          flush=True)


def stop(root: Path | None = None) -> bool:
    """Stop the project's own Ray now (its watchdog too), whatever its leases; whether one ran."""
    folder = state_dir(root)
    if not (folder / "state.json").exists():
        return False
    with _locked(folder, wait_s=60):
        running = (folder / "state.json").exists()
        _stop_recorded(folder)
    return running


def main(argv: list[str] | None = None) -> None:
    """`python -m components.cluster.local_ray watch FOLDER --idle S` (started by `acquire`);
    `python -m components.cluster.local_ray stop [PROJECT]` stops the project's Ray now."""
    import argparse

    ap = argparse.ArgumentParser(description="the project's own Ray: its watchdog, or stop it now")
    ap.add_argument("action", choices=["watch", "stop"])
    ap.add_argument("folder", type=Path, nargs="?", default=None,
                    help="watch: the state folder; stop: the project (default: this folder)")
    ap.add_argument("--idle", type=float, default=DEFAULT_IDLE_S)
    a = ap.parse_args(argv)
    if a.action == "stop":
        print("stopped the project's Ray" if stop(a.folder) else "no Ray of this project runs")
    elif a.folder is None:
        ap.error("watch needs the state folder")
    else:
        watch(a.folder, a.idle)


if __name__ == "__main__":
    main()
