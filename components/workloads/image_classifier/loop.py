"""The per-worker training function for image classifiers (runs inside each Ray Train worker).

Read top to bottom, `train_loop_per_worker` is:
  1. read only this worker's contiguous row shard of train and val  (`load_shard`)
  2. build the model, same seed on every rank, and wrap it in DDP
  3. resume from the last reported checkpoint                        (`resume`)
  4. one epoch: a seeded shuffle of the shard, padded by wrapping to the same number of steps
     on every rank (as DistributedSampler pads), the padding counted (`train_epoch`)
  5. validation summed across ranks                                  (`validate`)
  6. rank 0 writes the checkpoint; every rank reports                (`checkpoint_and_report`)
On a preemption notice (looked for every `preemption_check_s` seconds) step 4 writes a
checkpoint mid-epoch, each rank's shuffle and RNG state in it, and goes on (`checkpoint_on_notice`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from components.data.shards import read_rows, row_shard
from components.training.checkpoints import (
    seed_epoch,
)
from components.training.schedules import multiplier
from components.training.steps import DivergedError, all_reduce_sum, make_optimizer, optimizer_step
from components.training.worker import (
    EpochMeter,
    PreemptionWatch,
    Progress,
    StepPlan,
    checkpoint_and_report,
    checkpoint_on_notice,
    finished_already,
    plan_steps,
    preemption_watch,
    resume,
    start_worker,
    stop_early,
    wrap_ddp,
)
from components.workloads.image_classifier.data import decode, normalize
from components.workloads.image_classifier.model import build, class_probs, tta_shift


def load_shard(uri: str, n_rows: int, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This worker's images (n, C, H, W) uint8 and labels (n,) int64."""
    start, stop = row_shard(n_rows, rank, world)
    t = read_rows(uri, start, stop)
    if t.num_rows == 0:
        raise ValueError(f"{uri}: worker {rank} of {world} has no rows ({n_rows} in all)")
    imgs = decode(t.combine_chunks().to_batches()[0])  # (n, H, W, C)
    return (torch.from_numpy(imgs.transpose(0, 3, 1, 2).copy()),  # decode gives a read-only buffer
            torch.from_numpy(t.column("label").to_numpy().astype(np.int64)))


def augment(x: torch.Tensor, flip: bool, pad: int, g: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and pad-by-`pad` random crops (the CIFAR-10 recipe), per image."""
    if flip:
        mask = torch.rand(x.size(0), generator=g) < 0.5
        x = torch.where(mask.view(-1, 1, 1, 1), x.flip(3), x)
    if pad:
        h, w = x.shape[2:]
        padded = F.pad(x, (pad, pad, pad, pad))
        ij = torch.randint(0, 2 * pad + 1, (x.size(0), 2), generator=g)
        x = torch.stack([padded[k, :, i:i + h, j:j + w] for k, (i, j) in enumerate(ij.tolist())])
    return x


@torch.no_grad()
def evaluate_batches(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mean, std, device, shift: int = 0,
                     bs: int = 512):
    """(summed loss, correct, count) over uint8 images x, scored as the published model predicts
    (averaged over the test-time shifts), so the epoch picked by val loss is the one served."""
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(x), bs):
        probs = class_probs(model, x[i:i + bs].to(device), mean, std, shift)
        yy = y[i:i + bs].to(device)
        loss += F.nll_loss(torch.log(probs.clamp_min(1e-12)), yy, reduction="sum").item()
        correct += int((probs.argmax(1) == yy).sum())
    return loss, correct, len(x)


@dataclass
class EpochStats:
    """What one epoch of training on this worker summed up."""

    loss_sum: float = 0.0
    steps: int = 0
    seen: int = 0
    elapsed: float = 0.0


def train_epoch(model: nn.Module, ddp_model: nn.Module, opt: torch.optim.Optimizer, x_train: torch.Tensor,
                y_train: torch.Tensor, tp: dict[str, Any], data: dict[str, Any], progress: Progress, epoch: int,
                rank: int, device: torch.device, plan: StepPlan, bs_local: int,
                watch: PreemptionWatch | None = None,
                on_notice: Callable[[Any, dict[str, Any], dict[str, Any]], None] | None = None) -> EpochStats:
    """A seeded permutation of the shard, wrapped to the same step count on every rank. Goes on
    from the middle when the run resumed from a checkpoint written on a preemption notice; on a
    notice (`watch`), hands where the epoch stands to `on_notice`."""
    mean, std = torch.tensor(data["mean"], device=device), torch.tensor(data["std"], device=device)
    pad = data["shape"][1] // 8 if data["crop"] else 0
    g = torch.Generator().manual_seed(tp["seed"] * 100_003 + epoch * 1009 + rank)
    seed_epoch(tp["seed"], epoch, rank)
    steps = plan.steps_in(epoch)
    schedule = plan.schedule_cfg(tp)
    need = steps * bs_local
    order = torch.randperm(len(x_train), generator=g).repeat(math.ceil(need / len(x_train)))[:need]
    ddp_model.train()
    stats, t0 = EpochStats(steps=steps), time.perf_counter()
    first = 0
    if taken := progress.take_mid_epoch(epoch):
        first, own = taken[0]["steps"], taken[1]
        if own is not None:  # the same ranks: each goes on with its own augmentation draws
            g.set_state(own["gen"])
            stats.loss_sum, stats.seen, t0 = own["loss_sum"], own["seen"], t0 - own["elapsed"]
    meter = EpochMeter(rank, epoch, plan.epochs, steps, "steps")
    for s in range(first, steps):
        idx = order[s * bs_local:(s + 1) * bs_local]
        xb = augment(x_train[idx], data["flip"], pad, g).to(device)
        yb = y_train[idx].to(device)
        for grp in opt.param_groups:
            grp["lr"] = tp["lr"] * multiplier(schedule, progress.step / plan.total)
        loss = F.cross_entropy(ddp_model(normalize(xb, mean, std)), yb)
        if not torch.isfinite(loss):
            raise DivergedError(f"loss is {loss.item()} at epoch {epoch + 1}, step {s + 1}: training diverged; "
                                f"try a lower learning rate (lr={tp['lr']})")
        optimizer_step(model, opt, loss, tp["clip"])
        stats.loss_sum += loss.item()
        stats.seen += len(idx)
        progress.step += 1
        meter.update(s + 1, stats.loss_sum / (s + 1))
        if watch is not None and on_notice is not None and (info := watch.notice(s + 1 < steps)):
            on_notice(info, {"steps": s + 1}, {"gen": g.get_state(), "loss_sum": stats.loss_sum, "seen": stats.seen,
                                               "elapsed": time.perf_counter() - t0})
    stats.elapsed = time.perf_counter() - t0
    progress.train_s += stats.elapsed
    return stats


def validate(model: nn.Module, x_val: torch.Tensor, y_val: torch.Tensor, stats: EpochStats, data: dict[str, Any],
             progress: Progress, opt: torch.optim.Optimizer, epoch: int, device: torch.device) -> dict[str, Any]:
    """This worker's val shard scored, every sum taken across ranks: the epoch's metrics."""
    mean, std = torch.tensor(data["mean"], device=device), torch.tensor(data["std"], device=device)
    v_loss, v_correct, v_n = evaluate_batches(model, x_val, y_val, mean, std, device,
                                              tta_shift(data["shape"], data["tta"]))
    tot, n_steps, seen, v_loss, v_correct, v_n = all_reduce_sum(
        [stats.loss_sum, stats.steps, stats.seen, v_loss, v_correct, v_n], device)
    return {"epoch": epoch + 1, "train_loss": tot / n_steps, "val_loss": v_loss / v_n,
            "val_accuracy": v_correct / v_n, "lr": opt.param_groups[0]["lr"],
            "samples_seen": int(seen), "samples_padded": int(seen) - data["n_train"],
            "images_per_s": seen / max(stats.elapsed, 1e-9), "epoch_s": stats.elapsed,
            "train_s": progress.train_s, "step": progress.step}


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train an image classifier on this worker's shard; report per-epoch metrics and checkpoints."""
    rank, world, device = start_worker(config)
    tp, data = config["train"], config["data"]

    # 1. this worker's rows only
    x_train, y_train = load_shard(data["train_uri"], data["n_train"], rank, world)
    x_val, y_val = load_shard(data["val_uri"], data["n_val"], rank, world)
    bs_local = tp["bs"] // world
    plan = plan_steps(tp, math.ceil(math.ceil(data["n_train"] / world) / bs_local))

    # 2. same seed everywhere, then DDP
    torch.manual_seed(tp["seed"])
    model = build(tp["arch"], tuple(data["shape"]), data["n_classes"], tp["dropout"]).to(device)
    ddp_model = wrap_ddp(model, world)
    opt = make_optimizer(model, tp)

    # 3. resume from the last reported checkpoint, if any
    progress = resume(model, opt, rank)
    if finished_already(progress, config, rank, plan):
        return

    def state() -> dict[str, Any]:
        return {"model": model.state_dict(), "optimizer": opt.state_dict(), "train": tp}

    watch = preemption_watch(tp, device)
    for epoch in range(progress.start_epoch, plan.epochs):
        # 4. one epoch over this worker's shard (a checkpoint in the middle on a preemption notice)
        stats = train_epoch(model, ddp_model, opt, x_train, y_train, tp, data, progress, epoch, rank, device,
                            plan, bs_local, watch, lambda info, mid, own, epoch=epoch: checkpoint_on_notice(
                                progress, rank, epoch, info, state, mid, own, config.get("select")))
        # 5. validation summed across ranks
        metrics = validate(model, x_val, y_val, stats, data, progress, opt, epoch, device)
        # 6. rank 0 checkpoints; all ranks report
        checkpoint_and_report(
            progress, rank, epoch, metrics, state,
            f"[train] epoch {epoch + 1}/{plan.epochs} train_loss {metrics['train_loss']:.4f} "
            f"val_loss {metrics['val_loss']:.4f} val_accuracy {metrics['val_accuracy']:.4f} ({stats.elapsed:.1f}s)")
        if stop_early(progress, config, rank):  # 7. `patience` epochs without a better val accuracy
            break
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
