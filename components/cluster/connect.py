"""Connecting to Ray: `ray.init(address="local")` unless `RAY_ADDRESS` is set, so a stray
`ray start` cluster on the same machine never captures a run."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import sys
import threading
import time

from components import timings
from components.cluster import local_ray
from components.cluster.processes import (
    reap_leaked_placement_groups,
    reap_stale_ray,
    record_ray_processes,
)
from components.cluster.resources import ResourceError


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a `host:port` or `ray://host:port` address; None for `auto` and the like."""
    host, _, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    return (host, int(port)) if host and port.isdigit() else None


def probe_ray_address(address: str, timeout_s: float = 5.0) -> None:
    """Fail at once when `address` (host:port or ray://host:port) does not accept connections;
    `ray.init` would otherwise wait minutes for the GCS before giving up."""
    hp = _host_port(address)
    if hp is None:
        return  # "auto" and other forms: left to Ray
    host, port = hp
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise ResourceError(f"RAY_ADDRESS={address}: no Ray cluster answers ({err.strerror or err})") from None


HEAD_LOST_ENV = "TRAINYARD_HEAD_LOST_S"


def head_lost_s() -> float:
    """How long the cluster's head may not answer before a stage gives up (`TRAINYARD_HEAD_LOST_S`,
    default 20 s; 0: never, and Ray's own handling applies)."""
    raw = os.environ.get(HEAD_LOST_ENV, "20")
    try:
        value = float(raw)
    except ValueError:
        raise ResourceError(f"{HEAD_LOST_ENV}={raw!r}: not a number of seconds") from None
    if value < 0:
        raise ResourceError(f"{HEAD_LOST_ENV}={raw!r}: must be 0 (off) or more")
    return value


_watching: list[threading.Event] = []  # the head watches of this process, for `stop_head_watch`


def stop_head_watch() -> None:
    """End this process's head watch: its Ray work is done (a Train run or a sweep returned),
    and what is left (publishing, logging) needs no cluster; a head lost now stops nothing."""
    while _watching:
        _watching.pop().set()


def watch_head(address: str, limit_s: float, interval_s: float = 1.0) -> threading.Event | None:
    """Stop this process, in one line, once the cluster's head (its GCS at `address`) has not
    accepted a connection for `limit_s`; returns an event that ends the watch.

    Without it a driver whose head node is lost (killed, or restarted as a KubeRay head pod is)
    waits out Ray's GCS reconnect timeout, then dies in a C++ check with a stack dump, or hangs
    in a Train poll. Nothing is lost by stopping: outputs are written only at the end, and
    every reported checkpoint is in the run store, where the next `dvc repro` resumes."""
    hp = _host_port(address)
    if hp is None or limit_s <= 0:
        return None
    done = threading.Event()

    def watch() -> None:
        down_since: float | None = None
        while not done.wait(interval_s):  # ends with the process (a daemon) or when told
            try:
                socket.create_connection(hp, timeout=min(2.0, limit_s)).close()
                down_since = None
                continue
            except OSError as err:
                reason = err.strerror or str(err)
            down_since = down_since if down_since is not None else time.monotonic()
            if time.monotonic() - down_since >= limit_s:
                print(f"error: {head_lost(address, f'has not answered for {limit_s:g} s ({reason})')}",
                      file=sys.stderr, flush=True)
                os._exit(1)

    threading.Thread(target=watch, name="trainyard-head-watch", daemon=True).start()
    _watching.append(done)
    return done


def head_lost(address: str, what: str) -> str:
    """The one line for a stage whose cluster lost its head node."""
    return (f"the Ray cluster's head at {address} {what}: its head node was lost. This stage stops; every "
            f"checkpoint it reported is in the run store, and `dvc repro` resumes from the last once a cluster "
            f"answers at RAY_ADDRESS ({HEAD_LOST_ENV} sets how long a stage waits for a silent head)")


def lost_head_now() -> str | None:
    """For a stage that failed on a cluster: the head-lost line when the head does not answer
    now (a Train controller or worker on the lost node fails the run first, with an
    `ActorUnavailableError` that names neither the node nor what to do), else None."""
    address = os.environ.get("RAY_ADDRESS")
    hp = _host_port(address) if address and "ray" in sys.modules else None
    if hp is None:
        return None
    try:
        socket.create_connection(hp, timeout=2.0).close()
        return None
    except OSError as err:
        return head_lost(address, f"does not answer ({err.strerror or err})")


FORWARDED_ENV = ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "RAY_TRAIN_ENABLE_PRINT_PATCH", "MLFLOW_TRACKING_URI",
                 "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "TRAINYARD_STORE")



# The project's own Ray was started by an earlier stage, with that stage's environment: each
# stage hands its workers what may differ from one stage or run to the next.
LOCAL_PREFIXES = ("TRAINYARD_", "DVC_", "MLFLOW_", "RAY_TRAIN_")
LOCAL_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTHONHASHSEED", "CUBLAS_WORKSPACE_CONFIG", "RAY_API_SERVER_ADDRESS")


def forwarded_env(local: bool = False) -> dict[str, str]:
    """The environment variables a cluster's workers need from the stage's process; `local`:
    those of the project's own Ray on this machine (paths there mean the same)."""
    if local:
        return {k: v for k, v in os.environ.items() if k.startswith(LOCAL_PREFIXES) or k in LOCAL_ENV}
    return {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}



# Lines of Ray's (and MLflow's) own that say nothing a pipeline user can act on: a trial ASHA
# stopped takes its Train run down with it ("owner has died" is how that reads), absl's mutex
# contention notes, worker-start and token notices. TRAINYARD_RAY_VERBOSE=1 shows them all.
NOISE = re.compile("|".join([
    r"mutex\.cc.*RAW: ",  # absl's "Lock blocking / returning" contention notes
    r"core_worker\.cc.*has constructor arguments in the object store",
    # Ray Train logs this at INFO through a logger named after its file, past its own level setting
    r"Reporting training result \d+: TrainingReport\(",
    # Tune's function session logs each in-process trial's checkpoint at INFO
    r"Checkpoint successfully created at: Checkpoint\(",
    r"Detected that the Ray Train controller actor .* is dead\. Cleaning up placement group",
    r"PYTHON worker processes have been started on node",
    r"Token authentication is enabled for this Ray cluster",
    r"Passing a Python object as `python_model` causes it to be serialized using CloudPickle",
    r"Add type hints to the `predict` method",
    r"^\s*color_warning\(\s*$",
]))
NORMAL_END = re.compile(r"The actor is dead because its owner has died|owner has exited|owner died")


def ray_verbose() -> bool:
    """Whether Ray's own log lines are wanted: `TRAINYARD_RAY_VERBOSE=1`."""
    return os.environ.get("TRAINYARD_RAY_VERBOSE", "") not in ("", "0")


ANSI = re.compile(r"\x1b\[[0-9;]*m")
REPEATED = re.compile(r"\s*\[repeated \d+x across cluster\].*$")
EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*)$")
_causes_shown: set[str] = set()


def _plain(line: str) -> str:
    return REPEATED.sub("", ANSI.sub("", line)).strip()


def keep_lines(lines: list[str]) -> list[str]:
    """A batch of relayed worker lines without the noise; a batch telling of a trial's Train run
    torn down with its stopped trial (a traceback ending "owner has died") goes whole.

    A worker's failure ("Error in training function:" and its traceback, from each rank, again
    after each restart) becomes one line, its exception, the first time that cause is seen: the
    stage's own line (or the sweep's trial line) says it again with what to do."""
    if any(NORMAL_END.search(ln) for ln in lines):
        return []
    kept = [ln for ln in lines if not NOISE.search(ln)]
    in_loop = any("Error in training function" in ln for ln in kept)
    if not in_loop and not any("Traceback (most recent call last)" in ln for ln in kept):
        return kept
    causes = [m.group(1) for ln in kept if (m := EXCEPTION_LINE.match(_plain(ln)))]
    if not causes:
        return kept  # not a traceback we can read: shown whole
    cause = causes[-1]
    if cause in _causes_shown:
        return []
    _causes_shown.add(cause)
    where = "in the training function" if in_loop else "in a Ray worker"  # a traceback Ray relays, not the loop's
    return [f"error {where}: {cause} (TRAINYARD_RAY_VERBOSE=1 shows the traceback)"]


def root_cause(err: BaseException) -> BaseException:
    """The innermost error under Ray's wrappers (TrainingFailedError -> WorkerGroupError -> the
    loop's own error; a task error's cause): the one a user acts on."""
    seen = set()
    while id(err) not in seen:
        seen.add(id(err))
        inner = getattr(err, "worker_failures", None)
        if isinstance(inner, dict) and inner:
            err = next(iter(inner.values()))
            continue
        cause = getattr(err, "cause", None) or err.__cause__
        if isinstance(cause, BaseException):
            err = cause
            continue
        break
    return err


def cause_line(root: BaseException) -> str:
    """One line for an error: Ray's wrappers end with the useful line (after a traceback); other
    errors start with it."""
    lines = [ln for ln in str(root).strip().splitlines() if ln.strip()] or [type(root).__name__]
    # Tune's errors carry the whole traceback as their message: its last line is the cause
    last_first = type(root).__name__.startswith("Ray") or lines[0].startswith("Traceback")
    return _plain(lines[-1] if last_first else lines[0])


class _TrialFailureLine(logging.Filter):
    """Tune logs a failed trial as the whole trial actor's traceback ("Trial task failed for
    trial X", the workers' traceback inside it): one line with the cause instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.getMessage().startswith("Trial task failed"):
            cause = error_line(record.exc_info[1])
            if cause in _causes_shown:  # its worker said it already; Tune's own line names the trial
                return False
            _causes_shown.add(cause)
            record.msg, record.args = f"{record.getMessage()}: {cause}", ()
            record.exc_info, record.exc_text = None, None
        return True


def error_line(err: BaseException) -> str:
    """`Type: message` of an error's root cause, in one line."""
    root = root_cause(err)
    return f"{type(root).__name__}: {cause_line(root)}"


class _NoiseFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not NOISE.search(record.getMessage())


def quiet_loggers() -> None:
    """Ray's and MLflow's own loggers without the noise (before `ray.init`, which logs some):
    those already imported; called again once a stage imports one (`tracking.session.connect`),
    so that a stage that needs neither never pays for importing them (MLflow: ~1.4 s)."""
    if ray_verbose():
        return
    import warnings

    warnings.filterwarnings("ignore", message=r".*Add type hints to the `predict` method.*")
    for name in ("ray", "mlflow"):
        if name not in sys.modules:  # Ray sets its handler up on import; stages without Ray skip it
            continue
        logger = logging.getLogger(name)
        for target in (logger, *logger.handlers):
            if not any(isinstance(f, _NoiseFilter) for f in target.filters):
                target.addFilter(_NoiseFilter())
    tune = logging.getLogger("ray.tune.execution.tune_controller")  # a logger's filters see its own records
    if "ray" in sys.modules and not any(isinstance(f, _TrialFailureLine) for f in tune.filters):
        tune.addFilter(_TrialFailureLine())


def quiet_ray_logs() -> None:
    """Drop Ray's internal noise from the worker output Ray relays to this driver, unless
    `TRAINYARD_RAY_VERBOSE=1`. Best effort: the relay is a private hook of Ray's; if it moves,
    everything is printed as before."""
    if ray_verbose():
        return
    try:
        import functools

        from ray._private import worker as ray_worker

        original = getattr(ray_worker.print_to_stdstream, "__wrapped__", ray_worker.print_to_stdstream)

        def filtered(data: dict, ignore_prefix: bool) -> None:
            lines = keep_lines(list(data.get("lines", [])))
            if lines:
                original({**data, "lines": lines}, ignore_prefix=ignore_prefix)

        filtered.__wrapped__ = original  # type: ignore[attr-defined]
        # raylet notices (worker-start warnings) go through the module's function ...
        ray_worker.print_to_stdstream = filtered
        # ... and worker output through the relay's handler, which holds the original
        dispatcher = ray_worker.global_worker_stdstream_dispatcher
        if any(name == "ray_print_logs" for name, _ in dispatcher.handlers):  # log_to_driver is on
            ignore = ray_worker._should_ignore_worker_log_prefix(ray_worker.global_worker)
            dispatcher.remove_handler("ray_print_logs")
            dispatcher.add_handler("ray_print_logs", functools.partial(filtered, ignore_prefix=ignore))
    except (ImportError, AttributeError):
        pass


def _connect_project_ray(ray, env: dict[str, str]) -> None:
    """`ray.init` to the project's own Ray (token auth, as a `ray start` cluster)."""
    os.environ.update({k: v for k, v in env.items() if k != "RAY_ADDRESS"})  # not RAY_ADDRESS: no cluster
    # The project's Ray is one node on loopback (`local_ray._start`): without this Ray turns the
    # address 127.0.0.1 into this host's outward one, where that GCS does not listen.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
    with contextlib.suppress(ImportError):  # Ray read the auth mode at import: have it read it again
        from ray._private.authentication_test_utils import reset_auth_token_state

        reset_auth_token_state()
    # on loopback, as the Ray was started: else the driver names this host's outward address
    ray.init(address=env["RAY_ADDRESS"], log_to_driver=True, _node_ip_address="127.0.0.1",
             runtime_env={"env_vars": forwarded_env(local=True)})


def init_ray(dashboard: bool = True, shared: bool = False) -> dict[str, float]:
    """Connect to `RAY_ADDRESS` if set, else start a local Ray; return the cluster's resources.
    `dashboard`: whether a local Ray starts its dashboard (see below); the train stage and
    sweeps of in-process trials start none (2 s of each Ray start here). `shared` (the stages):
    use the project's own Ray, started by the first stage that needs it and kept for
    `TRAINYARD_RAY_IDLE_S` after the last (`components/cluster/local_ray.py`)."""
    import ray

    # Ray Train's controller collects workers' reports when it polls them (every 2 s by
    # default), so each report() of a short epoch waited up to 2 s: 15 digits epochs took
    # 61 s instead of 28. Set before Ray starts so Tune's trial processes inherit it too.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    # Ray Train turns a worker's print() into a log record and, because Ray wraps the
    # worker's stdout, also prints it: every progress line reached the console twice.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    if not ray.is_initialized():
        quiet_loggers()
        address = os.environ.get("RAY_ADDRESS")
        # The dashboard serves Ray's State API, which Ray Train's placement-group cleaner
        # needs to free the resources of a Train run whose controller died: a Tune trial that
        # ASHA stops mid-run. A train stage's controller dies only with the stage (and its Ray),
        # so there it costs 2 s for nothing. TRAINYARD_RAY_DASHBOARD=0 / 1 overrides.
        dashboard = os.environ.get("TRAINYARD_RAY_DASHBOARD", "1" if dashboard else "0") == "1"
        try:
            if address:
                probe_ray_address(address)
                # A running cluster's processes do not see this shell's environment: hand
                # them what the Train controller needs (poll interval, MLflow credentials).
                # (A `ray job submit` driver already runs in the job's own runtime env.)
                in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
                limit = head_lost_s()  # a bad value fails here, before connecting
                ray.init(address=address, log_to_driver=True,
                         runtime_env=None if in_job else {"env_vars": forwarded_env()})
                watch_head(address, limit)
            else:
                # A killed stage leaves its private Ray behind (holding CPUs and memory): stop it first.
                reap_stale_ray()
                project = local_ray.acquire(ray.__version__) if shared else None
                if project is not None:
                    env, started = project
                    _connect_project_ray(ray, env)
                    timings.note("ray_started", started)
                    print(f"[ray] {'started' if started else 'using'} this project's Ray at {env['RAY_ADDRESS']} "
                          f"(it stops {local_ray.idle_s():g} s after its last stage: {local_ray.IDLE_ENV})",
                          flush=True)
                else:
                    # A one-machine Ray listens on loopback only.
                    ray.init(address="local", include_dashboard=dashboard, log_to_driver=True,
                             _node_ip_address="127.0.0.1", dashboard_host="127.0.0.1")
                    record_ray_processes()
                    timings.note("ray_started", True)
        except ConnectionError as err:
            raise ResourceError(f"RAY_ADDRESS={address}: no Ray cluster answers there ({err})") from None
        reap_leaked_placement_groups()
        quiet_ray_logs()
    return {k: float(v) for k, v in ray.cluster_resources().items()}
