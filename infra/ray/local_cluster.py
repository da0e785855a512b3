r"""A multi-node Ray cluster on one machine: a head and more nodes, each its own `ray start`
process tree with its own resources, all on 127.0.0.1. Stopped by process id, never with
`ray stop` (which stops every Ray on the machine, other people's included).

    eval "$(python infra/ray/local_cluster.py start --nodes 2 --cpus 1)"   # exports RAY_ADDRESS, auth
    python infra/ray/local_cluster.py status
    python infra/ray/local_cluster.py stop

The cluster's state (address, temp dir, PIDs) is written to `.trainyard/ray-cluster.json`
(`--state` to change). Every node has its own temp dir under one private folder, so the
cluster's processes are told apart from any other Ray on the machine by their command lines. Ray's token
authentication is on: the token is a file beside the state file (mode 0600), and clients
find it through RAY_AUTH_MODE / RAY_AUTH_TOKEN_PATH, which `start` prints as exports.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

from components.cluster.ray_nodes import (  # noqa: E402
    NODE_PORT_FLAGS,
    TEMP_DIR_ENV,
    cluster_pids,
    free_ports,
    node_port_args,
    ray_executable,
    stop_pids,
)

DEFAULT_STATE = Path(".trainyard/ray-cluster.json")


def _ray() -> str:
    try:
        return ray_executable()
    except RuntimeError as err:
        raise SystemExit(f"error: {err}") from None


def start(nodes: int, cpus: float, state: Path, timeout_s: float = 120) -> dict:
    """Start a head and `nodes - 1` more nodes; return the state written to `state`."""
    if state.exists():
        raise SystemExit(f"error: {state} exists: a cluster is already recorded there; stop it first")
    # Every port of every node drawn in one go, so no two can be the same.
    ports = free_ports(3 + len(NODE_PORT_FLAGS) * nodes)
    port, dash, client = ports[:3]
    per_node = [ports[3 + len(NODE_PORT_FLAGS) * i:3 + len(NODE_PORT_FLAGS) * (i + 1)] for i in range(nodes)]
    temp_dir = tempfile.mkdtemp(prefix="ty-ray-")  # short: Ray's socket paths live under it
    state.parent.mkdir(parents=True, exist_ok=True)
    token = state.with_suffix(".token")
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token.resolve())}
    ray_env = {**os.environ, **env, TEMP_DIR_ENV: temp_dir}  # its processes found by it at stop
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", f"{cpus:g}", "--disable-usage-stats"]

    def node_dir(i: int) -> list[str]:
        # One temp dir per node, as on separate machines: nodes sharing one would share a
        # session dir, and one node's runtime-env agent would delete the working dir (of a
        # `ray job submit`) that the other node's processes are running in.
        return ["--temp-dir", str(Path(temp_dir) / f"n{i}")]

    address = f"127.0.0.1:{port}"
    subprocess.run([_ray(), "start", "--head", "--port", str(port), "--ray-client-server-port", str(client),
                    "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
                    *common, *node_dir(0), *node_port_args(per_node[0])], check=True, stdout=subprocess.DEVNULL,
                   env=ray_env)
    for i in range(1, nodes):
        subprocess.run([_ray(), "start", "--address", address, *common, *node_dir(i), *node_port_args(per_node[i])],
                       check=True, stdout=subprocess.DEVNULL, env=ray_env)
    record = {"address": address, "dashboard": f"http://127.0.0.1:{dash}", "temp_dir": temp_dir,
              "nodes": nodes, "cpus_per_node": cpus, "pids": cluster_pids(temp_dir),
              "env": {"RAY_ADDRESS": address, **env}}
    state.write_text(json.dumps(record, indent=1))
    _wait_nodes(address, nodes, timeout_s, ray_env)
    return record


def _wait_nodes(address: str, nodes: int, timeout_s: float, env: dict[str, str]) -> None:
    code = ("import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); "
            "print(sum(1 for n in ray.nodes() if n['Alive']))")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        p = subprocess.run([sys.executable, "-c", code, address], capture_output=True, text=True, timeout=60, env=env)
        if p.returncode == 0 and p.stdout.strip().splitlines()[-1] == str(nodes):
            return
        time.sleep(1)
    raise SystemExit(f"error: {nodes} Ray nodes did not come up at {address} within {timeout_s:.0f} s")


def stop(state: Path, timeout_s: float = 20) -> list[int]:
    """Stop every process of the recorded cluster (by PID: recorded ones and any it started
    since), then remove its temp dir and the state file. Returns the PIDs stopped."""
    if not state.exists():
        return []
    record = json.loads(state.read_text())
    stopped = stop_pids(sorted(set(record["pids"]) | set(cluster_pids(record["temp_dir"]))), timeout_s)
    shutil.rmtree(record["temp_dir"], ignore_errors=True)
    state.with_suffix(".token").unlink(missing_ok=True)
    state.unlink()
    return stopped


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["start", "stop", "status"])
    ap.add_argument("--nodes", type=int, default=2, help="head included (default 2)")
    ap.add_argument("--cpus", type=float, default=1, help="CPUs each node offers (default 1)")
    ap.add_argument("--state", type=Path, default=DEFAULT_STATE)
    a = ap.parse_args(argv)
    if a.action == "start":
        rec = start(a.nodes, a.cpus, a.state)
        print(f"# {a.nodes} Ray nodes x {a.cpus:g} CPU on 127.0.0.1, dashboard {rec['dashboard']}")
        for k, v in rec["env"].items():
            print(f"export {k}={v}")
    elif a.action == "stop":
        print(f"stopped {len(stop(a.state))} processes")
    else:
        print(a.state.read_text() if a.state.exists() else "no cluster recorded")


if __name__ == "__main__":
    main()
