"""Where things run and where state lives: Ray, the run store, the data every node reads.

- Ray: `ray.init(address="local")` unless `RAY_ADDRESS` is set, so a stray `ray start`
  cluster on the same machine never captures a run.
- Run store (`TRAINYARD_STORE`, default `./.trainyard`): checkpoints and Tune state, outside
  DVC's outputs (DVC deletes a stage's outputs before running it), keyed by stage and params
  so a re-run after a crash resumes. A URI (`s3://...`) works too: it goes through pyarrow.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs


class ResourceError(RuntimeError):
    """A request that can never fit the cluster; the message gives the numbers."""


def store_root() -> str:
    """The run store: `TRAINYARD_STORE`, or `.trainyard` in the working directory (absolute)."""
    root = os.environ.get("TRAINYARD_STORE", ".trainyard")
    return root if "://" in root else str(Path(root).resolve())


def params_key(*parts: Any) -> str:
    """A short stable hash of JSON-able parts: the key of a stage's state in the run store."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def stage_storage(workload: str, stage: str) -> str:
    """The run-store folder of a stage (a Ray `storage_path`)."""
    root = store_root()
    return f"{root.rstrip('/')}/{workload}/{stage}" if "://" in root else str(Path(root) / workload / stage)


def local_state_dir() -> Path:
    """A local folder for this machine's own state (downloads, Ray process records, the
    MLflow journal): the run store when it is local, else `./.trainyard`."""
    root = store_root()
    return Path(root) if "://" not in root else Path(".trainyard").resolve()


def write_store_json(uri: str, obj: Any) -> None:
    """Write a small JSON file in the run store (a local path or a URI), atomically where the
    filesystem allows (a local rename; object stores publish whole objects anyway)."""
    fs, path = pafs.FileSystem.from_uri(uri) if "://" in uri else (pafs.LocalFileSystem(), str(Path(uri).resolve()))
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with fs.open_output_stream(tmp) as f:
        f.write(json.dumps(obj, sort_keys=True).encode())
    fs.move(tmp, path)


def read_store_json(uri: str) -> Any | None:
    """A JSON file from the run store, or None when there is none."""
    fs, path = pafs.FileSystem.from_uri(uri) if "://" in uri else (pafs.LocalFileSystem(), str(Path(uri).resolve()))
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as f:
        return json.loads(f.read().decode())


def download_cache(workload: str) -> Path:
    """A local folder for downloads, outside DVC's outputs (kept across re-runs)."""
    return local_state_dir() / workload / "downloads"


def _ray_records() -> Path:
    return local_state_dir() / "ray-processes"


def _started(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def record_ray_processes() -> Path | None:
    """Write down the PIDs of the local Ray this process started (GCS, raylet, dashboard,
    agents), so that if this process is killed the next stage can stop them; the record is
    removed at a normal exit."""
    import atexit

    import ray

    node = getattr(ray._private.worker, "_global_node", None)  # noqa: SLF001 - no public API for this
    if node is None:
        return None
    import psutil

    procs = []
    for kind, infos in node.all_processes.items():
        for info in infos:
            if info.process is None:
                continue
            procs.append({"pid": info.process.pid, "started": _started(info.process.pid), "kind": kind})
            # the raylet's agents outlive it when it is killed (they are re-parented): list them now
            with contextlib.suppress(psutil.Error):
                procs += [{"pid": c.pid, "started": _started(c.pid), "kind": f"{kind} child"}
                          for c in psutil.Process(info.process.pid).children(recursive=True)]
    record = {"owner": os.getpid(), "owner_started": _started(os.getpid()),
              "session_dir": node.get_session_dir_path(), "processes": procs}
    path = _ray_records() / f"{os.getpid()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)
    atexit.register(lambda: path.unlink(missing_ok=True))
    return path


def reap_stale_ray(timeout_s: float = 10.0) -> list[int]:
    """Stop the Ray processes (and their workers) of a local Ray whose starting process is
    gone (SIGKILLed, OOM-killed); match by PID *and* start time, so a reused PID is never
    touched. Returns the PIDs stopped."""
    import psutil

    folder = _ray_records()
    if not folder.is_dir():
        return []
    stopped: list[int] = []
    for path in sorted(folder.glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            continue
        if _started(record["owner"]) == record["owner_started"]:
            continue  # its owner still runs: not ours to stop
        victims: dict[int, psutil.Process] = {}
        for p in record["processes"]:
            if p["started"] is None or _started(p["pid"]) != p["started"]:
                continue  # exited already, or the PID now belongs to someone else
            try:
                proc = psutil.Process(p["pid"])
                for child in [proc, *proc.children(recursive=True)]:
                    if child.status() != psutil.STATUS_ZOMBIE:
                        victims[child.pid] = child
            except psutil.Error:
                continue
        for proc in victims.values():
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(list(victims.values()), timeout=timeout_s)
        stopped += sorted(victims)
        path.unlink(missing_ok=True)
        if victims:
            print(f"[ray] stopped {len(victims)} Ray processes left by killed process {record['owner']}", flush=True)
    return stopped


def reap_leaked_placement_groups() -> list[str]:
    """Remove placement groups that hold resources for nobody; returns their ids.

    Ray removes a placement group once both its job and the actor that created it are gone,
    but misses the actor's death when the group's create request reaches the GCS after the
    actor died: it happens when Tune stops a trial while the trial's Train controller starts
    its workers. Such a group holds its CPUs until the cluster stops and every later run
    waits for them. Removed here: groups created by an actor that is dead, when the job that
    created them has ended too or is this one (whose groups only Ray Train creates).
    """
    import ray

    try:
        from ray._raylet import ActorID, JobID, PlacementGroupID
        from ray.core.generated import gcs_pb2
        from ray.util.placement_group import PlacementGroup, remove_placement_group

        state = ray._private.state.state  # noqa: SLF001 - the GCS tables; the State API needs a dashboard
        table = state._connect_and_get_accessor().get_placement_group_table()  # noqa: SLF001
        this_job = ray.get_runtime_context().get_job_id()
    except Exception:  # noqa: BLE001 - Ray moved its internals: leave cleaning to Ray
        return []
    removed = []
    for raw in table:
        pg = gcs_pb2.PlacementGroupTableData.FromString(raw)
        if pg.state == gcs_pb2.PlacementGroupTableData.REMOVED or pg.is_detached or not pg.creator_actor_id:
            continue
        if ActorID(pg.creator_actor_id).is_nil():
            continue  # created by a driver: lives and dies with its job, as it should
        job = JobID(pg.creator_job_id).hex()
        if not (pg.creator_job_dead or job == this_job):
            continue  # someone else's running job: not ours to judge
        actor = state.actor_table(ActorID(pg.creator_actor_id).hex())
        if not actor or actor.get("State") != "DEAD":
            continue
        pg_id = PlacementGroupID(pg.placement_group_id)
        with contextlib.suppress(Exception):  # removed meanwhile by Ray itself
            remove_placement_group(PlacementGroup(pg_id))
            cpus = sum(b.unit_resources.get("CPU", 0.0) for b in pg.bundles)
            print(f"[ray] removed placement group {pg_id.hex()[:8]} ({cpus:g} CPU) left by a dead "
                  f"{actor.get('ActorClassName', 'actor')} of job {job}", flush=True)
            removed.append(pg_id.hex())
    return removed


def stage_data(files: dict[str, str | Path]) -> dict[str, str]:
    """Make data files readable from every Ray node; return name -> path or URI.

    With a local store, nodes share this filesystem: absolute paths. With a URI store the
    files are copied once into `<store>/data/<content hash>/` and workers read them there.
    """
    root = store_root()
    if "://" not in root:
        return {k: str(Path(v).resolve()) for k, v in files.items()}
    from components.data.parquet import file_sha256

    fs, base = pafs.FileSystem.from_uri(root)
    out = {}
    for name, path in files.items():
        digest = file_sha256(path)[:16]
        dest = f"{base.rstrip('/')}/data/{digest}/{Path(path).name}"
        if fs.get_file_info(dest).type == pafs.FileType.NotFound:
            fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
            pafs.copy_files(str(Path(path).resolve()), dest, destination_filesystem=fs)
        out[name] = f"{root.split('://', 1)[0]}://{dest}"
    return out


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


def want_gpu(use_gpu: str | bool, resources: dict[str, float], workers: int) -> bool:
    """Resolve `use_gpu: auto|true|false` against the cluster; `true` without GPUs is an error."""
    gpus = resources.get("GPU", 0.0)
    if use_gpu == "auto":
        return gpus >= workers
    if use_gpu and gpus < workers:
        raise ResourceError(f"use_gpu is true for {workers} workers but the cluster has {gpus:g} GPUs")
    return bool(use_gpu)


@dataclass(frozen=True)
class TrialPlan:
    """How many trials run at once, and what each one holds."""

    concurrent: int
    cpus_per_trial: float
    gpus_per_trial: float
    driver_memory_mb: int


def plan_trials(resources: dict[str, float], workers: int, cpus_per_worker: float,
                gpus_per_worker: float, driver_memory_mb: int, requested: int | None) -> TrialPlan:
    """Trial concurrency from the cluster's resources, counting each trial's own driver.

    A trial is a driver (the Tune function that starts a TorchTrainer; it holds memory, no
    CPU, because it only waits) plus `workers` Train workers. Default Tune resources give the
    driver a whole CPU, which on a 2-CPU machine leaves no CPU for the workers of two
    concurrent trials: they wait forever. Here concurrency is what fits, never more.
    """
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    mem_mb = resources.get("memory", 0.0) / 2**20
    need_cpu, need_gpu = workers * cpus_per_worker, workers * gpus_per_worker
    if need_cpu > cpus or need_gpu > gpus or driver_memory_mb > mem_mb:
        raise ResourceError(
            f"one trial needs {workers} workers x {cpus_per_worker:g} CPU = {need_cpu:g} CPUs, "
            f"{need_gpu:g} GPUs and {driver_memory_mb} MB for its driver; the cluster has "
            f"{cpus:g} CPUs, {gpus:g} GPUs, {mem_mb:.0f} MB: it could never start")
    fit = math.floor(cpus / need_cpu + 1e-9)
    if need_gpu:
        fit = min(fit, math.floor(gpus / need_gpu + 1e-9))
    fit = min(fit, math.floor(mem_mb / driver_memory_mb))
    concurrent = max(1, min(fit, requested or fit))
    return TrialPlan(concurrent, need_cpu, need_gpu, driver_memory_mb)


# Ray Train retries a worker group it cannot place every 60 s, by default forever: a run
# whose CPUs are held by someone else would wait without a word. Bounded here.
START_WAIT_ENV = "TRAINYARD_WORKER_START_TIMEOUT_S"
_RAY_START_ATTEMPT_S = 60.0  # Ray Train's RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S default


def start_wait_s() -> float:
    """How long a training run may wait for its workers' resources (`TRAINYARD_WORKER_START_TIMEOUT_S`)."""
    raw = os.environ.get(START_WAIT_ENV, "600")
    try:
        value = float(raw)
    except ValueError:
        raise ResourceError(f"{START_WAIT_ENV}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise ResourceError(f"{START_WAIT_ENV}={raw!r} must be positive")
    return value


def start_attempts() -> int:
    """Ray Train's `controller_failure_limit` that makes the wait last about `start_wait_s()`."""
    attempt = float(os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", _RAY_START_ATTEMPT_S))
    return max(0, math.ceil(start_wait_s() / attempt) - 1)


def start_timed_out(err: BaseException) -> bool:
    """Whether `err` (from `TorchTrainer.fit`) is Ray Train giving up on placing the workers."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if type(err).__name__ == "WorkerGroupStartupTimeoutError":
            return True
        err = getattr(err, "controller_failure", None) or err.__cause__
    return False


def free_resources_line() -> str:
    """`CPU 0/2 free, GPU 0/0 free` from Ray's view of the cluster now, for error messages."""
    import ray

    if not ray.is_initialized():
        return "cluster state unknown"
    total, free = ray.cluster_resources(), ray.available_resources()
    return ", ".join(f"{k} {free.get(k, 0):g}/{total.get(k, 0):g} free" for k in ("CPU", "GPU"))


def check_train_fits(resources: dict[str, float], workers: int, cpus_per_worker: float, gpu: bool) -> None:
    """Fail at once, with the numbers, when a training run can never be placed."""
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    if workers * cpus_per_worker > cpus + 1e-9:
        raise ResourceError(f"train asks for {workers} workers x {cpus_per_worker:g} CPU = "
                            f"{workers * cpus_per_worker:g} CPUs; the cluster has {cpus:g}")
    if gpu and workers > gpus:
        raise ResourceError(f"train asks for {workers} GPU workers; the cluster has {gpus:g} GPUs")
    free = free_cpus()
    if free is not None and workers * cpus_per_worker > free + 1e-9:
        # Placeable, but not now: say so, or the stage looks hung while it waits.
        print(f"[train] waiting for {workers * cpus_per_worker:g} CPUs ({free_resources_line()}; other jobs hold "
              f"the rest), at most {start_wait_s():g} s", flush=True)


def free_cpus() -> float | None:
    """CPUs free on the connected cluster now, or None when Ray is not connected."""
    import ray

    return float(ray.available_resources().get("CPU", 0.0)) if ray.is_initialized() else None
