"""A tabular workload's worker loop (a Ray Train worker, a Tune trial, or the stage's own
process): this rank's row shard streamed a window of row groups at a time, reshuffled every
epoch, the workload's model and loss, DDP across workers, val summed across ranks, a checkpoint
and a report per epoch, resumed from the last one."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import torch

from components.data.stream import BatchStream, EpochOrder
from components.training.checkpoints import seed_epoch
from components.training.schedules import multiplier
from components.training.steps import all_reduce_sum, make_optimizer
from components.training.worker import (
    EpochMeter,
    checkpoint_and_report,
    finished_already,
    resume,
    row_shards,
    start_worker,
    step_on,
    stop_early,
    wrap_ddp,
)

if TYPE_CHECKING:
    from components.workloads.tabular import TabularWorkload


def batch_maker(data: dict[str, Any]):
    """A Parquet batch -> (float32 features (n, F), target: float32 (n,) or int64 class ids (n,))."""
    features, target = data["features"], data["target"]
    y_type = np.int64 if data["task"] == "classification" else np.float32

    def make(table: pa.Table, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = np.stack([table.column(f).to_numpy() for f in features], 1).astype(np.float32, copy=False)
        return torch.from_numpy(x), torch.from_numpy(table.column(target).to_numpy().astype(y_type))

    return make


@torch.no_grad()
def score(workload: TabularWorkload, model: torch.nn.Module, batches, device: torch.device,
          seen: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> tuple[float, int, int]:
    """(summed loss, correct, rows) over `batches`; `correct` counts for classification only.
    `seen(outputs, targets)`, on the CPU, for each batch: what evaluate adds in the same pass."""
    model.eval()
    loss, correct, n = 0.0, 0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        out = model(x)
        loss += float(workload.loss(out, y)) * len(y)
        if y.dtype == torch.int64:
            correct += int((out.argmax(1) == y).sum())
        n += len(y)
        if seen is not None:
            seen(out.cpu(), y.cpu())
    return loss, correct, n


def tabular_loop(workload: TabularWorkload, config: dict[str, Any]) -> None:
    """Train `workload`'s model on this worker's shard; report per-epoch metrics and checkpoints."""
    rank, world, device = start_worker(config)
    tp, data = config["train"], config["data"]
    shard, val_shard, bs_local, plan = row_shards(data, tp, rank, world)
    torch.manual_seed(tp["seed"])  # the same weights on every rank
    model = workload.model(data["n_features"], data["n_outputs"], tp).to(device)
    ddp_model = wrap_ddp(model, world)
    opt = make_optimizer(model, tp)
    progress = resume(model, opt, rank)
    if finished_already(progress, config, rank, plan):
        return
    make, schedule = batch_maker(data), plan.schedule_cfg(tp)
    for epoch in range(progress.start_epoch, plan.epochs):
        seed_epoch(tp["seed"], epoch, rank)
        steps, loss_sum, t0 = plan.steps_in(epoch), 0.0, time.perf_counter()
        meter = EpochMeter(rank, epoch, plan.epochs, steps, "steps")
        order = EpochOrder(shard, tp["seed"], epoch, rank, tp["shuffle_groups"])
        ddp_model.train()
        for s, (x, y) in enumerate(BatchStream(data["train_uri"], order, bs_local, steps, make, prefetch=tp["prefetch"])):
            for grp in opt.param_groups:
                grp["lr"] = tp["lr"] * multiplier(schedule, progress.step / plan.total)
            loss_sum += step_on(model, opt, workload.loss(ddp_model(x.to(device)), y.to(device)), tp, progress, epoch, s)
            meter.update(s + 1, loss_sum / (s + 1))
        elapsed = time.perf_counter() - t0
        progress.train_s += elapsed
        val = BatchStream(data["val_uri"], EpochOrder(val_shard, 0, 0, rank, shuffle=False), tp["eval_bs"], None,
                          make, prefetch=tp["prefetch"], pad=False)
        v_loss, v_correct, v_n = score(workload, model, val, device)
        loss_sum, n_steps, v_loss, v_correct, v_n = all_reduce_sum([loss_sum, steps, v_loss, v_correct, v_n], device)
        metrics = {"epoch": epoch + 1, "train_loss": loss_sum / n_steps, "val_loss": v_loss / v_n,
                   "lr": opt.param_groups[0]["lr"], "epoch_s": elapsed, "train_s": progress.train_s,
                   "step": progress.step}
        if data["task"] == "classification":
            metrics["val_accuracy"] = v_correct / v_n
        shown = f"val accuracy {metrics['val_accuracy']:.4f}" if "val_accuracy" in metrics else \
            f"val loss {metrics['val_loss']:.4f}"
        checkpoint_and_report(progress, rank, epoch, metrics,
                              lambda: {"model": model.state_dict(), "optimizer": opt.state_dict(), "train": tp},
                              f"[train] epoch {epoch + 1}/{plan.epochs} {shown}")
        if stop_early(progress, config, rank):
            break
