"""Resource admission: what a run or a sweep asks of the cluster, checked before it starts,
and a bounded wait for workers that cannot be placed now."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass


class ResourceError(RuntimeError):
    """A request that can never fit the cluster; the message gives the numbers."""



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



def local_resources() -> dict[str, float]:
    """This machine's CPUs and GPUs, for a run that trains in the stage's own process."""
    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}



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
