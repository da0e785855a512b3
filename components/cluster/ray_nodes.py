"""Ray nodes on this machine, by process: free ports for a second node's agents, the `ray`
command, a Ray's processes found by its temp dir, and stopping them by process id (never
`ray stop`, which stops every Ray on the machine). Shared by the project's own Ray
(`local_ray`) and the multi-node clusters of `infra/ray/local_cluster.py`.

Only the standard library and psutil: the project Ray's watchdog imports it on its own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
from pathlib import Path

NODE_PORT_FLAGS = ["--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
                   "--metrics-export-port"]


def free_ports(n: int) -> list[int]:
    """`n` distinct TCP ports on 127.0.0.1 that nothing listens on now.

    All are bound at once: a port closed and asked for again may come back (the kernel
    offered the same one for the dashboard and the agent's gRPC port once, and `ray start`
    failed), so asking one at a time does not make them distinct."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def node_port_args(ports: list[int]) -> list[str]:
    """`ray start` flags giving a node its own agent, metrics and runtime-env ports (two nodes
    on one host must not share one)."""
    return [arg for flag, port in zip(NODE_PORT_FLAGS, ports, strict=True) for arg in (flag, str(port))]


def ray_executable() -> str:
    """The `ray` command of this environment."""
    exe = shutil.which("ray", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if not exe:
        raise RuntimeError("the `ray` command is not installed in this environment")
    return exe


# Set in the environment of `ray start`, so every process of that Ray inherits it: Ray's client
# server names neither the temp dir nor a parent that is still there (it outlived `stop` once).
TEMP_DIR_ENV = "TRAINYARD_RAY_TEMP_DIR"


def cluster_pids(temp_dir: str) -> list[int]:
    """The processes of a Ray started with `temp_dir`: those naming it on their command line or
    carrying it in `TRAINYARD_RAY_TEMP_DIR`, and all their descendants."""
    import psutil

    roots = []
    for p in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error, TypeError):
            if p.pid != os.getpid() and (any(temp_dir in a for a in (p.info["cmdline"] or []))
                                         or p.environ().get(TEMP_DIR_ENV) == temp_dir):
                roots.append(p)
    pids = set()
    for p in roots:
        pids.add(p.pid)
        with contextlib.suppress(psutil.Error):
            pids.update(c.pid for c in p.children(recursive=True))
    return sorted(pids)


def is_gcs(p) -> bool:
    """Whether psutil process `p` is a Ray GCS server."""
    import psutil

    with contextlib.suppress(psutil.Error):
        return Path(p.exe()).name == "gcs_server"
    return False


def stop_pids(pids: list[int], timeout_s: float = 20.0) -> list[int]:
    """Terminate (then kill) the Ray processes `pids`, the GCS last: a raylet told to stop while
    the GCS went too waited ~10 s for it; in this order each takes about 2 s."""
    import psutil

    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pid)
            procs.append((p, is_gcs(p)))
    for last in (False, True):
        stage = [p for p, gcs in procs if gcs == last]
        for p in stage:
            with contextlib.suppress(psutil.Error):
                p.terminate()
        _, alive = psutil.wait_procs(stage, timeout=timeout_s)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=timeout_s)
    return [p.pid for p, _ in procs]
