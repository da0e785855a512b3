"""The parts of a Ray Train worker loop that every workload shares: starting the worker,
resuming from the last reported checkpoint, and checkpoint-and-report at the end of an epoch.
A workload's loop reads top to bottom as its own steps between these."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from typing import Any

import ray.train
import ray.train.torch
import torch

from components.training.checkpoints import replaying, restore, resumes_after, save_state


def start_worker(config: dict[str, Any]) -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this worker, its torch threads set to its CPUs."""
    ctx = ray.train.get_context()
    torch.set_num_threads(max(1, int(config.get("cpus_per_worker", 1))))
    return ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device()


def wrap_ddp(model: torch.nn.Module, world: int) -> torch.nn.Module:
    """DDP around `model` when there is more than one worker (one worker needs none)."""
    return ray.train.torch.prepare_model(model) if world > 1 else model


class Progress:
    """Where a worker's run stands: fresh, or restored from Ray Train's last reported
    checkpoint (after a worker failure, or when the same run is started again)."""

    def __init__(self, state: dict[str, Any] | None) -> None:
        self.state = state
        self.history: list[dict[str, Any]] = state["history"] if state else []
        self.start_epoch: int = state["epoch"] if state else 0
        self.step: int = state["schedule"]["step"] if state else 0
        self.train_s: float = state["schedule"]["train_s"] if state else 0.0
        self.resumes = resumes_after(state, self.step)
        self.replay = bool(state)  # the next report carries the restored history


def resume(model: torch.nn.Module, opt: torch.optim.Optimizer, rank: int) -> Progress:
    """Model and optimizer from the last reported checkpoint, if any, and the run's progress."""
    progress = Progress(restore(model, opt))
    if progress.state and rank == 0:
        print(f"[train] resumed from epoch {progress.start_epoch} checkpoint", flush=True)
    return progress


def finished_already(progress: Progress, epochs: int) -> bool:
    """A finished run started again (a resumed sweep's trial): report its result, train nothing."""
    if progress.state and progress.start_epoch >= epochs:
        ray.train.report(replaying(progress.history[-1], progress.history))
        return True
    return False


def checkpoint_and_report(progress: Progress, rank: int, epoch: int, metrics: dict[str, Any],
                          state: Callable[[], dict[str, Any]], line: str) -> None:
    """Record the epoch; rank 0 writes the checkpoint (`state()` plus the progress) and prints
    `line`; every rank reports (report is a barrier)."""
    progress.history.append(metrics)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            save_state(tmp, {**state(), "schedule": {"step": progress.step, "train_s": progress.train_s},
                             "epoch": epoch + 1, "history": progress.history, "resumes": progress.resumes})
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
            print(line, flush=True)
        ray.train.report(replaying(metrics, progress.history) if progress.replay else metrics,
                         checkpoint=checkpoint, checkpoint_dir_name=f"epoch-{epoch + 1:04d}")
        progress.replay = False
