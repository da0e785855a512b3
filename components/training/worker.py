"""The parts of a Ray Train worker loop that every workload shares: starting the worker,
resuming from the last reported checkpoint, checkpoint-and-report at the end of an epoch, and
a checkpoint in the middle of one when a preemption notice comes. A workload's loop reads top
to bottom as its own steps between these."""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from components.training import session
from components.training.checkpoints import (
    fallback_line,
    first_that_loads,
    replaying,
    resumes_after,
    save_state,
)

# The Ray node of each rank, in rank order (None off Ray), gathered when the worker starts:
# rank 0 keeps it in every checkpoint, so a run records where it trained.
_placed: dict[str, list[str | None]] = {"nodes": []}


def start_worker(config: dict[str, Any]) -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this worker, its torch threads set to its CPUs."""
    torch.set_num_threads(max(1, int(config.get("cpus_per_worker", 1))))
    s = session.current()
    rank, world = s.rank_world()
    nodes: list[str | None] = [session.ray_node_id()]
    if world > 1:
        import torch.distributed as dist

        gathered: list[str | None] = [None] * world
        dist.all_gather_object(gathered, nodes[0])
        nodes = gathered
    _placed["nodes"] = nodes
    return rank, world, s.device()


def wrap_ddp(model: torch.nn.Module, world: int) -> torch.nn.Module:
    """DDP around `model` when there is more than one worker (one worker needs none)."""
    return session.current().prepare_model(model) if world > 1 else model


class Progress:
    """Where a worker's run stands: fresh, or restored from Ray Train's last reported
    checkpoint (after a worker failure, or when the same run is started again)."""

    def __init__(self, state: dict[str, Any] | None, skipped: list[str] | None = None) -> None:
        self.state = state
        self.history: list[dict[str, Any]] = state["history"] if state else []
        self.start_epoch: int = state["epoch"] if state else 0
        self.step: int = state["schedule"]["step"] if state else 0
        self.train_s: float = state["schedule"]["train_s"] if state else 0.0
        self.resumes = resumes_after(state, self.step)
        self.replay = bool(state)  # the next report carries the restored history
        # Past a damaged checkpoint, epochs are written under new names: the damaged one's
        # name stays with it in Ray's checkpoint list, and one name must not mean two folders.
        # (From what was skipped: the same on every rank, and new for each such restart.)
        self.suffix = f"-r{hashlib.sha256(repr(skipped).encode()).hexdigest()[:6]}" if skipped else ""
        # A checkpoint written on a preemption notice stops in the middle of epoch `start_epoch`:
        # where its windows stood, and each rank's own part (state carried between steps, RNG,
        # the epoch's running sums). Taken once, by the epoch it belongs to.
        self.mid_epoch: dict[str, Any] | None = state.get("mid_epoch") if state else None

    def take_mid_epoch(self, epoch: int) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
        """(the mid-epoch record, this rank's own part) when epoch `epoch` goes on from a
        checkpoint written on a preemption notice, else None; called after the epoch's
        `seed_epoch`, it puts back this rank's dropout RNG as it stood at the notice. This
        rank's part is None when the run now has another number of ranks: its rank-own state
        (and RNG) then starts fresh."""
        mid, self.mid_epoch = self.mid_epoch, None
        if not mid or mid["epoch"] != epoch:
            return None
        rank, world = session.current().rank_world()
        ranks = mid["ranks"]
        own = ranks[rank] if len(ranks) == world else None
        if own is not None:
            torch.set_rng_state(own["rng"])
        return mid, own


@dataclass(frozen=True)
class StepPlan:
    """How long a run trains: `per_epoch` steps between reports, `total` in all, over `epochs`
    epochs (the last one shorter when `max_steps` cuts it)."""

    per_epoch: int
    total: int
    epochs: int

    def steps_in(self, epoch: int) -> int:
        """Steps of epoch `epoch` (0-based)."""
        return max(0, min(self.per_epoch, self.total - epoch * self.per_epoch))

    def schedule_cfg(self, tp: dict[str, Any]) -> dict[str, Any]:
        """`tp` with `epochs` as planned (sgdr counts its cycles in epochs)."""
        return {**tp, "epochs": self.total / self.per_epoch}


def row_shards(data: dict[str, Any], tp: dict[str, Any], rank: int, world: int, n_val: int | None = None
               ) -> tuple[list[Any], list[Any], int, StepPlan]:
    """This rank's contiguous shard of the train and val splits (as row groups, read as training
    reaches them; val's first `n_val` rows when given), its batch size and the run's step plan:
    (train blocks, val blocks, local batch size, plan). ValueError when a rank would get no rows."""
    from components.data.stream import rank_blocks

    n_val = data["n_val"] if n_val is None else n_val
    shard, n_shard = rank_blocks(data["train_uri"], data["n_train"], rank, world)
    val_shard, n_val_local = rank_blocks(data["val_uri"], n_val, rank, world)
    if not n_shard or not n_val_local:
        raise ValueError(f"worker {rank} of {world} has no rows ({data['n_train']} train, {n_val} val in all)")
    bs_local = tp["bs"] // world
    return shard, val_shard, bs_local, plan_steps(tp, math.ceil(math.ceil(data["n_train"] / world) / bs_local))


def step_on(model: torch.nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor, tp: dict[str, Any],
            progress: Progress, epoch: int, step: int) -> float:
    """One optimiser step on `loss` (clipped by `tp["clip"]`), counted in `progress`; its value.
    DivergedError on a loss that is not finite, naming where and the learning rate."""
    from components.training.steps import DivergedError, optimizer_step

    if not torch.isfinite(loss):
        raise DivergedError(f"loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}: training diverged; "
                            f"try a lower learning rate (lr={tp['lr']})")
    optimizer_step(model, opt, loss, tp["clip"])
    progress.step += 1
    return loss.item()


def plan_steps(tp: dict[str, Any], per_pass: int, max_steps: int | None = None) -> StepPlan:
    """The run's plan from train params: an epoch is `steps_per_epoch` steps, or one pass over the
    training data (`per_pass` steps) when that is null, so defaults scale with the data;
    `max_steps` caps the whole run (the char-LM's from `max_tokens`)."""
    per_epoch = tp["steps_per_epoch"] or max(1, per_pass)
    total = per_epoch * tp["epochs"]
    if max_steps:
        total = min(total, max(1, max_steps))
    return StepPlan(per_epoch, total, math.ceil(total / per_epoch))


def restore(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            rank: int = 0) -> tuple[dict[str, Any] | None, list[str]]:
    """Load model and optimizer from the session's last reported checkpoint (after a worker
    failure, or when the same run name + storage path is started again); return the whole
    state for the loop's own parts (None on a fresh start), and the damaged checkpoints it
    skipped: one that does not load falls back to the one before it, or to a fresh start,
    and rank 0 says so in one line (every rank reads the same files, so all choose alike)."""
    state, used, damaged = first_that_loads(session.current().checkpoints())
    if damaged and rank == 0:
        print(f"[train] {fallback_line(damaged, used)}", flush=True)
    if state is None:
        return None, damaged
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return state, damaged


def resume(model: torch.nn.Module, opt: torch.optim.Optimizer, rank: int) -> Progress:
    """Model and optimizer from the last reported checkpoint, if any, and the run's progress."""
    progress = Progress(*restore(model, opt, rank))
    if progress.state and rank == 0:
        mid = progress.mid_epoch
        print(f"[train] resumed at step {progress.step}, {mid['steps']} steps into epoch {mid['epoch'] + 1}, from the "
              "checkpoint written on a preemption notice" if mid else
              f"[train] resumed from epoch {progress.start_epoch} checkpoint", flush=True)
    return progress


def best_epoch(history: list[dict[str, Any]], select: tuple[str, str]) -> int:
    """The epoch (1-based) with the best `select` metric; the earliest on a tie."""
    metric, sign = select[0], (1 if select[1] == "min" else -1)
    return min(range(len(history)), key=lambda i: (sign * history[i][metric], i)) + 1


def stop_early(progress: Progress, config: dict[str, Any], rank: int) -> bool:
    """Whether `train.patience` epochs have passed without a better `select` metric (the same
    answer on every rank: the metrics are reduced across ranks)."""
    select, patience = config.get("select"), config["train"].get("patience")
    if not (select and patience and progress.history):
        return False
    best = best_epoch(progress.history, tuple(select))
    if len(progress.history) - best < patience:
        return False
    if rank == 0:
        print(f"[train] no better {select[0]} for {patience} epochs: stopping after epoch {len(progress.history)} "
              f"(best: epoch {best})", flush=True)
    return True


def finished_already(progress: Progress, config: dict[str, Any], rank: int = 0, plan: StepPlan | None = None) -> bool:
    """A finished run started again (a resumed sweep's trial, or a run that stopped early):
    report its result, train nothing. `plan`: the run's `StepPlan` (its epochs and step cap),
    if not train's `epochs`."""
    last = plan.epochs if plan else config["train"]["epochs"]
    capped = plan is not None and progress.step >= plan.total
    if progress.state and (progress.start_epoch >= last or capped or stop_early(progress, config, rank)):
        session.current().report(replaying(progress.history[-1], progress.history))
        return True
    return False


def progress_every_s() -> float:
    """Seconds between in-epoch progress lines: `TRAINYARD_PROGRESS_S` (default 30; 0 turns them off)."""
    return float(os.environ.get("TRAINYARD_PROGRESS_S", "30"))


class EpochMeter:
    """In-epoch progress for epochs that take minutes: rank 0 prints at most one line every
    `every_s` seconds, with the running loss, throughput and the epoch's ETA. Silent on other
    ranks and for epochs shorter than `every_s`."""

    def __init__(self, rank: int, epoch: int, epochs: int, steps: int | None, unit: str = "steps",
                 every_s: float | None = None) -> None:
        self.on = rank == 0 and (every_s if every_s is not None else progress_every_s()) > 0
        self.every_s = every_s if every_s is not None else progress_every_s()
        self.epoch, self.epochs, self.steps, self.unit = epoch, epochs, steps, unit
        self.t0 = self.last = time.monotonic()

    def update(self, step: int, mean_loss: float) -> str | None:
        """After `step` steps of this epoch (mean loss so far): print a line when one is due;
        returns it (None when not due)."""
        if not self.on:
            return None
        now = time.monotonic()
        if now - self.last < self.every_s:
            return None
        self.last = now
        rate = step / max(now - self.t0, 1e-9)
        done = f"{step}/{self.steps}" if self.steps else str(step)
        eta = f", epoch ETA {_clock((self.steps - step) / rate)}" if self.steps and rate > 0 else ""
        line = (f"[train] epoch {self.epoch + 1}/{self.epochs}: {done} {self.unit}, loss {mean_loss:.4f}, "
                f"{rate:.1f} {self.unit}/s{eta}")
        print(line, flush=True)
        return line


def _clock(seconds: float) -> str:
    s = max(0, round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _run_state(progress: Progress, epochs_done: int) -> dict[str, Any]:
    """What every checkpoint holds besides the workload's own state: the schedule's position,
    the epochs done and their history, the run's resumes and where its ranks trained."""
    return {"schedule": {"step": progress.step, "train_s": progress.train_s}, "epoch": epochs_done,
            "history": progress.history, "resumes": progress.resumes, "worker_nodes": _placed["nodes"]}


def checkpoint_and_report(progress: Progress, rank: int, epoch: int, metrics: dict[str, Any],
                          state: Callable[[], dict[str, Any]], line: str) -> None:
    """Record the epoch; rank 0 writes the checkpoint (`state()` plus the progress) and prints
    `line`; every rank reports (report is a barrier)."""
    progress.history.append(metrics)
    with tempfile.TemporaryDirectory() as tmp:
        if rank == 0:
            save_state(tmp, {**state(), **_run_state(progress, epoch + 1)})
            print(line, flush=True)
        session.current().report(replaying(metrics, progress.history) if progress.replay else metrics,
                                 checkpoint_dir=tmp if rank == 0 else None, dir_name=f"epoch-{epoch + 1:04d}{progress.suffix}")
        progress.replay = False


CALIBRATE_STEPS = 10  # steps timed before the look's cadence is set


class PreemptionWatch:
    """Looks for a preemption notice about every `every_s` seconds of training
    (`session.preemption`, a barrier on a Train worker group: every rank calls `notice` after
    every step alike, and looks at the same steps).

    A cloud gives a preemptible node a notice before it goes (Ray: the node is drained with a
    deadline); Ray Train keeps the workers running until the deadline, then restarts them on
    the nodes left from the last reported checkpoint, counted against
    `FailureConfig.max_preemption_failures`, not `max_failures`. A checkpoint reported on the
    notice is that last one: the steps lost are at most those trained since the notice.

    The look costs a few milliseconds (a round trip to Ray Train's synchronization actor), so
    it is made every `every` steps, not every step: `every` is set once from rank 0's time for
    the first steps, sent to every rank (one broadcast), so all ranks look at the same steps.
    `every` given: that cadence, no timing (tests)."""

    def __init__(self, every_s: float, device: torch.device | None = None, every: int | None = None) -> None:
        self.every_s, self.device, self.every = every_s, device or torch.device("cpu"), every
        self.steps, self.heard, self.t0 = 0, False, 0.0

    def _cadence(self) -> int | None:
        """Steps between looks, once the first steps are timed (the same on every rank)."""
        if self.every is None:
            if self.steps == 1:
                self.t0 = time.perf_counter()
            elif self.steps == 1 + CALIBRATE_STEPS:
                from components.training.steps import rank0_value

                per_step = rank0_value((time.perf_counter() - self.t0) / CALIBRATE_STEPS, self.device)
                self.every = max(1, round(self.every_s / max(per_step, 1e-6)))
        return self.every

    def notice(self, can: bool = True) -> Any | None:
        """After a step: the notice, the first time one is heard (once per worker group).
        `can`: whether a checkpoint may be written here (not at the step that ends an epoch:
        that epoch's own checkpoint comes next); the look waits for the next due step."""
        self.steps += 1
        if self.heard or self.every_s <= 0:
            return None
        every = self._cadence()
        if not every or self.steps % every or not can:
            return None
        info = session.current().preemption()
        self.heard = info is not None
        return info


def preemption_watch(tp: dict[str, Any], device: torch.device) -> PreemptionWatch:
    """The run's watch: a look every `train.preemption_check_s` seconds (0: never)."""
    return PreemptionWatch(float(tp.get("preemption_check_s") or 0), device)


def checkpoint_on_notice(progress: Progress, rank: int, epoch: int, info: Any, state: Callable[[], dict[str, Any]],
                         mid_epoch: dict[str, Any], own: dict[str, Any], select: tuple[str, str] | None) -> None:
    """On a preemption notice, in the middle of epoch `epoch` (0-based): rank 0 writes a
    checkpoint (`state()`, the progress, and `mid_epoch`: where the epoch's data stood), with
    every rank's `own` part (state carried between steps, running sums) and dropout RNG gathered
    into it;
    every rank reports it (a barrier). Its report is no epoch's: it has no `epoch` key (no log
    or feed takes it for one), and its `select` metric is NaN, which Ray's checkpoint list
    ranks below every real one, so it is kept as the latest to resume from, never the best."""
    world = session.current().rank_world()[1]
    own = {**own, "rng": torch.get_rng_state()}  # put back by `Progress.take_mid_epoch`
    owns: list[Any] = [own]
    if world > 1:
        import torch.distributed as dist

        owns = [None] * world
        dist.all_gather_object(owns, own)
    with tempfile.TemporaryDirectory() as tmp:
        if rank == 0:
            save_state(tmp, {**state(), **_run_state(progress, epoch),
                             "mid_epoch": {**mid_epoch, "epoch": epoch, "ranks": owns}})
            left = (f"{max(0.0, info.deadline_ms / 1000 - time.time()):.0f} s before the deadline"
                    if info.deadline_ms else "no deadline given")
            print(f"[train] preemption notice for node(s) {', '.join(n[:12] for n in info.preempted_node_ids)} "
                  f"(rank(s) {', '.join(map(str, info.preempted_ranks))}; {left}): checkpoint at step {progress.step}, "
                  f"{mid_epoch['steps']} steps into epoch {epoch + 1}, written; training goes on until the node goes",
                  flush=True)
        metrics = {"preempted_at_step": progress.step, **({select[0]: math.nan} if select else {})}
        session.current().report(metrics, checkpoint_dir=tmp if rank == 0 else None,
                                 dir_name=f"epoch-{epoch:04d}-step-{progress.step:08d}{progress.suffix}")
