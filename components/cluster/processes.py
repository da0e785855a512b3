"""Ray processes this machine started: recorded, and reaped when their owner was killed;
placement groups that hold CPUs for nobody, removed."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from components.store import local_state_dir


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

    Ray Train's own `PlacementGroupCleaner` (Ray 2.60) does not cover this case: its controller
    registers a group with the cleaner only after the worker group has started
    (`PlacementGroupCleanerCallback.after_worker_group_start`), so a controller killed between
    creating the group and starting its workers, which is when Tune stops such a trial, leaves
    a group nobody watches. `test_a_placement_group_whose_creator_died_is_removed_so_its_cpus_come_back`
    shows Ray keeping such a group; any group the cleaner does know is gone before this runs.
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
