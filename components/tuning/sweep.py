"""Ray Tune sweeps where every trial is a Ray Train run.

Kept apart as in Ray's examples: the worker function (a workload's loop.py), the per-trial
driver (`_trial`, which starts a TorchTrainer) and the tuner (`run_sweep`). The Tune driver
process is the only MLflow writer: one parent run, one child run per trial, keyed by the
trial id so a resumed sweep never duplicates them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from components.cluster.connect import init_ray
from components.cluster.processes import reap_leaked_placement_groups
from components.cluster.resources import TrialPlan, plan_trials, want_gpu
from components.config import FINAL_ONLY, SearchDim, TuneParams
from components.store import read_store_json, write_store_json
from components.tracking import runs
from components.tracking.session import connect
from components.workloads.base import Workload


def _done_marker(storage: str, sweep: str, trial_id: str) -> str:
    """Where the sweep records that a trial completed (and with what). Keyed by the sweep's
    name, which holds its code, data and params key: another sweep never reads it."""
    return f"{storage.rstrip('/')}/done/{sweep}/{trial_id}.json"


def search_space(space: dict[str, SearchDim]) -> dict[str, Any]:
    """params.yaml search dimensions -> Ray Tune sampling objects."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, dim in space.items():
        if dim.type == "choice":
            out[key] = tune.choice(list(dim.values))
        elif dim.type == "uniform":
            out[key] = tune.uniform(dim.low, dim.high)
        elif dim.type == "loguniform":
            out[key] = tune.loguniform(dim.low, dim.high)
        else:
            out[key] = tune.randint(int(dim.low), int(dim.high))
    return out


def trial_steps(tp: TuneParams, per_pass: int) -> int:
    """Steps in a trial epoch: `tune.steps_per_epoch`, or `pass_frac` of a pass over the
    training data (`per_pass` steps), at least `min_steps`: the budget scales with the data."""
    return tp.steps_per_epoch or max(tp.min_steps, math.ceil(tp.pass_frac * per_pass))


def trial_train_config(base: dict[str, Any], tp: TuneParams, sampled: dict[str, Any],
                       schema: type[BaseModel], steps_per_pass: Callable[[dict[str, Any]], int]) -> dict[str, Any]:
    """The train config one trial runs: the trial's train params (`trial_params`), the sweep's
    budget, the sampled values; final-run-only keys at their defaults, so they cannot
    change a trial's result (tune does not rerun when they change). `schema`: the workload's
    train section; `steps_per_pass(cfg)`: a pass's steps for that config (a sampled bptt or
    bs changes it)."""
    cfg = {k: v for k, v in base.items() if k not in FINAL_ONLY}
    cfg |= {"epochs": tp.epochs, "num_workers": tp.workers_per_trial, "seed": tp.seed, **sampled}
    cfg["steps_per_epoch"] = trial_steps(tp, steps_per_pass(cfg))
    # Sampled values obey the same schema as hand-written ones (checked at load: config.py).
    return schema.model_validate(cfg).model_dump()


def _trial(config: dict[str, Any], *, base: dict[str, Any], tp: TuneParams, data: dict[str, Any],
           storage: str, sweep: str, use_gpu: bool, loop: Callable[[dict[str, Any]], None],
           schema: type[BaseModel], select: tuple[str, str], steps_per_pass: Callable[[dict[str, Any]], int]) -> None:
    """One trial's driver: a TorchTrainer whose rank-0 reports flow to Tune."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from components.training.driver import make_trainer

    trial_id = tune.get_context().get_trial_id()
    done = read_store_json(_done_marker(storage, sweep, trial_id))
    if done is not None:
        # Completed before the sweep driver was killed, but after Tune's last snapshot of
        # the sweep: hand back the recorded result instead of training again.
        tune.report(done)
        return
    train_cfg = trial_train_config(base, tp, config, schema, steps_per_pass)
    reap_leaked_placement_groups()  # CPUs a stopped trial's Train run may have left held
    handover = _guard_report_handover()  # before the first report can exist
    trainer = make_trainer(
        loop, {"train": train_cfg, "data": data},
        name=f"{sweep}-{trial_id}", storage_path=storage,  # the sweep's key: never another's run
        num_workers=tp.workers_per_trial, cpus_per_worker=tp.cpus_per_worker,
        use_gpu=use_gpu, max_failures=1, callbacks=[TuneReportCallback()], select=select,
        placement=train_cfg["placement"])
    trainer.fit()
    _wait_for_tune_to_take_reports(handover)


class _Handover:
    """Counts the trial actor's result fetches: started and finished (one thread writes both)."""

    def __init__(self) -> None:
        self.started = 0
        self.finished = 0


def _guard_report_handover() -> _Handover | None:
    """Make the trial actor's hand-over of Train reports to Tune observable; see below.

    The trial actor's main thread moves each report from the Train controller's queue into
    Tune's one-slot result queue inside one `_get_result_from_queues` call; counting those
    calls lets the training thread wait until no report is half-way across.
    """
    from ray.train._internal.session import get_session

    session = get_session()
    fetch = getattr(session, "_get_result_from_queues", None)
    if fetch is None:  # not under Tune, or Ray changed: nothing to guard
        return None
    counts = _Handover()

    def counted(block: bool):
        counts.started += 1
        try:
            return fetch(block)
        finally:
            counts.finished += 1

    session._get_result_from_queues = counted
    return counts


def _wait_for_tune_to_take_reports(handover: _Handover | None, timeout_s: float = 600.0) -> None:
    """Return only once Tune has taken the Train run's last report.

    Ray Tune's function trainable deadlocks otherwise: the Train controller's last report can
    still sit in the one-slot queue to the trial (Tune takes it when its driver asks for the
    next result, late when the driver is busy, e.g. logging to a slow tracking server), and
    the "function returned" marker Tune's wrapper puts into the trial's one-slot result queue
    as soon as we return would take the slot that report needs; both then wait forever.
    After `fit()` no new report arrives, so once the controller's queue is empty, every
    fetch that could have taken a report has started; when those have finished, the last
    report is in Tune's hands and returning is safe.
    """
    from ray.train._internal.session import get_session

    pending = getattr(get_session(), "_inter_actor_queue", None)
    if handover is None or pending is None:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not pending.empty():
        time.sleep(0.2)
    began = handover.started  # read after seeing the queue empty: later fetches find nothing
    while time.monotonic() < deadline:
        if handover.finished >= began:
            return
        time.sleep(0.05)
    print(f"[tune] warning: Tune did not take the trial's last report within {timeout_s:g} s", flush=True)


def _mlflow_callback(tracking_uri: str, experiment: str, parent_key: str, parent_tags: dict[str, str],
                     parent_params: dict[str, Any], max_t: int, storage: str, sweep: str, keys: tuple[str, ...]):
    from ray import tune

    class MlflowSweepCallback(tune.Callback):
        """Runs in the Tune driver: the sweep's single MLflow writer."""

        def setup(self, **info) -> None:
            t = connect(tracking_uri)
            self.c, self.exp = t.client, t.experiment_id(experiment)
            self.parent = runs.start_run(self.c, self.exp, parent_key, f"tune-{parent_key.rsplit('/', 1)[-1]}",
                                         parent_tags)
            runs.log_params(self.c, self.parent, parent_params)
            self.children: dict[str, str] = {}

        def _child(self, trial) -> str:
            if trial.trial_id not in self.children:
                run_id = runs.start_run(self.c, self.exp, f"{parent_key}/{trial.trial_id}",
                                        f"trial-{trial.trial_id}", {"trainyard.trial_id": trial.trial_id},
                                        parent_run_id=self.parent, reopen=False)
                runs.log_params(self.c, run_id, trial.config)
                self.children[trial.trial_id] = run_id
            return self.children[trial.trial_id]

        def on_trial_start(self, iteration, trials, trial, **info) -> None:
            self._child(trial)

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            if "history" in result:  # a resumed trial: epochs this writer may have missed
                runs.log_history(self.c, self._child(trial),
                                 [{k: r[k] for k in keys if k in r} for r in result["history"]])
            row = {k: result[k] for k in keys if k != "epoch" and k in result}
            # the trial's own epoch, not Tune's iteration count: a trial resumed after a
            # killed sweep restarts its iteration count but goes on from its checkpoint's epoch
            row["epoch"] = result.get("epoch", result["training_iteration"])
            runs.log_history(self.c, self._child(trial), [row])

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            run_id = self._child(trial)
            last = {k: v for k, v in (trial.last_result or {}).items() if k in keys}
            # recorded first: a sweep resumed after this point never trains this trial again
            write_store_json(_done_marker(storage, sweep, trial.trial_id), last)
            self.c.set_tag(run_id, "trainyard.stopped_early", str(last.get("epoch", 0) < max_t).lower())
            runs.finish_run(self.c, run_id, "FINISHED")

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            runs.finish_run(self.c, self._child(trial), "FAILED")

        def on_experiment_end(self, trials, **info) -> None:
            runs.finish_run(self.c, self.parent, "FINISHED")

    return MlflowSweepCallback()


def _reaper(every_s: float = 10.0):
    """A Tune callback that frees, every `every_s`, the CPUs a stopped trial's Train run left
    held (see `reap_leaked_placement_groups`): a trial already waiting for them gets them
    now, not when the next trial starts."""
    from ray import tune

    class ReapLeakedGroups(tune.Callback):
        def __init__(self) -> None:
            self.next = 0.0

        def on_step_begin(self, iteration, trials, **info) -> None:
            if time.monotonic() >= self.next:
                reap_leaked_placement_groups()
                self.next = time.monotonic() + every_s

    return ReapLeakedGroups()


@dataclass(frozen=True)
class SweepOutcome:
    best_params: dict[str, Any]
    best_metric: float
    best_trial: str
    trials: list[dict[str, Any]]
    plan: TrialPlan
    parent_run_id: str


def run_sweep(tp: TuneParams, base_train: dict[str, Any], data: dict[str, Any], *, workload: Workload,
              tracking_uri: str, storage: str, name: str, use_gpu_setting: str | bool = "auto",
              code: str = "") -> SweepOutcome:
    """Run (or resume) the sweep stored at `storage/name`; return the best trial's params.
    MLflow: experiment `workload.name`, a parent run and a child run per trial, at `tracking_uri`."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    resources = init_ray()
    use_gpu = want_gpu(use_gpu_setting, resources, tp.workers_per_trial) and tp.gpus_per_worker > 0
    plan = plan_trials(resources, tp.workers_per_trial, tp.cpus_per_worker,
                       tp.gpus_per_worker if use_gpu else 0.0, tp.driver_memory_mb, tp.max_concurrent)
    per_pass = workload.steps_per_pass(data, base_train)
    budget = (f"{tp.steps_per_epoch} steps (tune.steps_per_epoch)" if tp.steps_per_epoch else
              f"{trial_steps(tp, per_pass)} steps ({tp.pass_frac:g} of a {per_pass}-step pass, at least {tp.min_steps})")
    print(f"[tune] {tp.num_samples} trials, {plan.concurrent} at a time "
          f"({tp.workers_per_trial} worker(s) x {tp.cpus_per_worker:g} CPU each, cluster {resources.get('CPU', 0):g} CPUs); "
          f"each trial up to {tp.epochs} epochs of {budget}", flush=True)

    trainable = tune.with_resources(
        tune.with_parameters(_trial, base=base_train, tp=tp, data=data, storage=storage, sweep=name,
                             use_gpu=use_gpu, loop=workload.worker_loop(), schema=workload.train_schema,
                             select=workload.select,
                             steps_per_pass=lambda cfg: workload.steps_per_pass(data, cfg)),
        # The driver only waits on its TorchTrainer: it holds memory, not a CPU; the CPUs
        # go to the Train workers, which Ray Train places in their own placement group.
        {"CPU": 0, "memory": tp.driver_memory_mb * 2**20})
    experiment = workload.name
    parent_key = f"{experiment}/tune/{name}"
    callback = _mlflow_callback(tracking_uri, experiment, parent_key, {"trainyard.stage": "tune", "trainyard.code": code},
                                {f"space.{k}": v.model_dump_json(exclude_none=True) for k, v in tp.space.items()}
                                | {"num_samples": tp.num_samples, "concurrent": plan.concurrent}, tp.epochs,
                                storage, name, workload.live_metrics)
    path = f"{storage.rstrip('/')}/{name}"
    if tune.Tuner.can_restore(path):
        print(f"[tune] resuming the sweep at {path}", flush=True)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
        # The restored run config comes from the pickled sweep state; attach this
        # process's MLflow writer (the old one died with the killed driver).
        tuner._local_tuner.get_run_config().callbacks = [callback, _reaper()]
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=search_space(tp.space),
            tune_config=tune.TuneConfig(
                metric=tp.metric, mode=tp.mode, num_samples=tp.num_samples,
                scheduler=ASHAScheduler(time_attr="epoch", max_t=tp.epochs,
                                        grace_period=tp.grace_period, reduction_factor=tp.reduction_factor),
                # The concurrency limit must live in the generator: Tune ignores
                # max_concurrent_trials when a BasicVariantGenerator is passed.
                search_alg=BasicVariantGenerator(random_state=tp.seed, max_concurrent=plan.concurrent)),
            run_config=tune.RunConfig(name=name, storage_path=storage, callbacks=[callback, _reaper()], verbose=1),
        )
    grid = tuner.fit()
    trials = []
    for r in grid:
        m = r.metrics or {}
        trials.append({"trial_id": m.get("trial_id"), "config": r.config, "epochs": m.get("epoch"),
                       tp.metric: m.get(tp.metric), "error": str(r.error) if r.error else None})
    ok = [t for t in trials if t[tp.metric] is not None]
    if not ok:
        raise RuntimeError(f"every trial failed; first error: {trials[0]['error'] if trials else 'no trials'}")
    best = (min if tp.mode == "min" else max)(ok, key=lambda t: t[tp.metric])
    return SweepOutcome({k: best["config"][k] for k in tp.space}, best[tp.metric], best["trial_id"],
                        trials, plan, callback.parent)
