"""Connecting to Ray: `ray.init(address="local")` unless `RAY_ADDRESS` is set, so a stray
`ray start` cluster on the same machine never captures a run."""

from __future__ import annotations

import os
import socket

from components.cluster.processes import (
    reap_leaked_placement_groups,
    reap_stale_ray,
    record_ray_processes,
)
from components.cluster.resources import ResourceError


def probe_ray_address(address: str, timeout_s: float = 5.0) -> None:
    """Fail at once when `address` (host:port or ray://host:port) does not accept connections;
    `ray.init` would otherwise wait minutes for the GCS before giving up."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and other forms: left to Ray
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise ResourceError(f"RAY_ADDRESS={address}: no Ray cluster answers ({err.strerror or err})") from None


FORWARDED_ENV = ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "RAY_TRAIN_ENABLE_PRINT_PATCH", "MLFLOW_TRACKING_URI",
                 "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "TRAINYARD_STORE")



def forwarded_env() -> dict[str, str]:
    """The environment variables a cluster's workers need from the stage's process."""
    return {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}



def init_ray() -> dict[str, float]:
    """Connect to `RAY_ADDRESS` if set, else start a local Ray; return the cluster's resources."""
    import ray

    # Ray Train's controller collects workers' reports when it polls them (every 2 s by
    # default), so each report() of a short epoch waited up to 2 s: 15 digits epochs took
    # 61 s instead of 28. Set before Ray starts so Tune's trial processes inherit it too.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    # Ray Train turns a worker's print() into a log record and, because Ray wraps the
    # worker's stdout, also prints it: every progress line reached the console twice.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        # The dashboard serves Ray's State API, which Ray Train's placement-group cleaner
        # needs to free a dead run's resources; TRAINYARD_RAY_DASHBOARD=0 turns it off.
        dashboard = os.environ.get("TRAINYARD_RAY_DASHBOARD", "1") == "1"
        try:
            if address:
                probe_ray_address(address)
                # A running cluster's processes do not see this shell's environment: hand
                # them what the Train controller needs (poll interval, MLflow credentials).
                # (A `ray job submit` driver already runs in the job's own runtime env.)
                in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
                ray.init(address=address, log_to_driver=True,
                         runtime_env=None if in_job else {"env_vars": forwarded_env()})
            else:
                # A killed stage leaves its Ray behind (holding CPUs and memory): stop it first.
                reap_stale_ray()
                # A one-machine Ray listens on loopback only.
                ray.init(address="local", include_dashboard=dashboard, log_to_driver=True,
                         _node_ip_address="127.0.0.1", dashboard_host="127.0.0.1")
                record_ray_processes()
        except ConnectionError as err:
            raise ResourceError(f"RAY_ADDRESS={address}: no Ray cluster answers there ({err})") from None
        reap_leaked_placement_groups()
    return {k: float(v) for k, v in ray.cluster_resources().items()}
