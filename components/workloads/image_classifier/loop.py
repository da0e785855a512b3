"""The per-worker training function for image classifiers (runs inside each Ray Train worker).

Read top to bottom, `train_loop_per_worker` is:
  1. this worker's contiguous row shard of train and val, as row groups (`row_shards`)
  2. build the model, same seed on every rank, and wrap it in DDP
  3. resume from the last reported checkpoint                        (`resume`)
  4. one epoch: the shard in a seeded block-shuffled order, read and augmented on a background
     thread a few batches ahead (`batches`), padded by wrapping to the same number of steps
     on every rank (as DistributedSampler pads), the padding counted (`train_epoch`)
  5. validation streamed, summed across ranks                        (`validate`)
  6. rank 0 writes the checkpoint; every rank reports                (`checkpoint_and_report`)
On a preemption notice (looked for every `preemption_check_s` seconds) step 4 writes a
checkpoint mid-epoch (the step: the order and the augmentation follow from it; each rank's RNG
and running sums), and goes on (`checkpoint_on_notice`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from components.data.stream import BatchStream, Block, EpochOrder
from components.training.checkpoints import (
    seed_epoch,
)
from components.training.schedules import multiplier
from components.training.steps import all_reduce_sum, make_optimizer
from components.training.worker import (
    EpochMeter,
    PreemptionWatch,
    Progress,
    StepPlan,
    checkpoint_and_report,
    checkpoint_on_notice,
    finished_already,
    preemption_watch,
    resume,
    row_shards,
    start_worker,
    step_on,
    stop_early,
    wrap_ddp,
)
from components.workloads.image_classifier.data import decode, normalize
from components.workloads.image_classifier.model import build, class_probs, tta_shift


def batches(data: dict[str, Any], split: str, order: EpochOrder, bs: int, steps: int | None, first: int = 0,
            augment_with: tuple[bool, int, int] | None = None, prefetch: int = 2) -> BatchStream:
    """This rank's batches of `split` in `order`, decoded (and augmented, when `augment_with` is
    (flip, pad, seed)) on a background thread: (uint8 images (n, C, H, W), int64 labels (n,)).
    A batch's augmentation draws come from (seed, epoch, rank, step) alone: a run resumed at a
    step draws what the first run drew there."""

    def make(table: pa.Table, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(decode(table).transpose(0, 3, 1, 2).copy())  # decode gives a read-only buffer
        y = torch.from_numpy(table.column("label").to_numpy().astype(np.int64))
        if augment_with is not None:
            flip, pad, seed = augment_with
            g = torch.Generator().manual_seed(step_seed(seed, order.epoch, order.rank, step))
            x = augment(x, flip, pad, g)
        return x, y

    return BatchStream(data[f"{split}_uri"], order, bs, steps, make, first=first, prefetch=prefetch,
                       pad=augment_with is not None)


def step_seed(seed: int, epoch: int, rank: int, step: int) -> int:
    """A batch's own seed (its augmentation draws): from where it is in the run, not from what came before."""
    return int(np.random.SeedSequence([seed, epoch, rank, step]).generate_state(1)[0])


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
def evaluate_batches(model: nn.Module, stream: Iterable[tuple[torch.Tensor, torch.Tensor]], mean, std, device,
                     shift: int = 0) -> tuple[float, int, int]:
    """(summed loss, correct, count) over batches of uint8 images, scored as the published model
    predicts (averaged over the test-time shifts), so the epoch picked by val loss is the one served."""
    model.eval()
    loss, correct, n = 0.0, 0, 0
    for x, y in stream:
        probs = class_probs(model, x.to(device), mean, std, shift)
        yy = y.to(device)
        loss += F.nll_loss(torch.log(probs.clamp_min(1e-12)), yy, reduction="sum").item()
        correct += int((probs.argmax(1) == yy).sum())
        n += len(y)
    return loss, correct, n


@dataclass
class EpochStats:
    """What one epoch of training on this worker summed up."""

    loss_sum: float = 0.0
    steps: int = 0
    seen: int = 0
    elapsed: float = 0.0


def train_epoch(model: nn.Module, ddp_model: nn.Module, opt: torch.optim.Optimizer, shard: list[Block],
                tp: dict[str, Any], data: dict[str, Any], progress: Progress, epoch: int,
                rank: int, device: torch.device, plan: StepPlan, bs_local: int,
                watch: PreemptionWatch | None = None,
                on_notice: Callable[[Any, dict[str, Any], dict[str, Any]], None] | None = None) -> EpochStats:
    """This rank's shard in the epoch's seeded order (`EpochOrder`), wrapped to the same step
    count on every rank, streamed a window of row groups at a time. Goes on from the middle when
    the run resumed from a checkpoint written on a preemption notice; on a notice (`watch`),
    hands where the epoch stands to `on_notice`."""
    mean, std = torch.tensor(data["mean"], device=device), torch.tensor(data["std"], device=device)
    pad = data["shape"][1] // 8 if data["crop"] else 0
    seed_epoch(tp["seed"], epoch, rank)
    steps = plan.steps_in(epoch)
    schedule = plan.schedule_cfg(tp)
    ddp_model.train()
    stats, t0 = EpochStats(steps=steps), time.perf_counter()
    first = 0
    if taken := progress.take_mid_epoch(epoch):
        first, own = taken[0]["steps"], taken[1]
        if own is not None:  # the same ranks: each goes on with its own sums
            stats.loss_sum, stats.seen, t0 = own["loss_sum"], own["seen"], t0 - own["elapsed"]
    order = EpochOrder(shard, tp["seed"], epoch, rank, tp["shuffle_groups"])
    meter = EpochMeter(rank, epoch, plan.epochs, steps, "steps")
    stream = batches(data, "train", order, bs_local, steps, first, (data["flip"], pad, tp["seed"]), tp["prefetch"])
    for s, (xb, yb) in enumerate(stream, start=first):
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        for grp in opt.param_groups:
            grp["lr"] = tp["lr"] * multiplier(schedule, progress.step / plan.total)
        stats.loss_sum += step_on(model, opt, F.cross_entropy(ddp_model(normalize(xb, mean, std)), yb), tp,
                                  progress, epoch, s)
        stats.seen += len(yb)
        meter.update(s + 1, stats.loss_sum / (s + 1))
        if watch is not None and on_notice is not None and (info := watch.notice(s + 1 < steps)):
            on_notice(info, {"steps": s + 1}, {"loss_sum": stats.loss_sum, "seen": stats.seen,
                                               "elapsed": time.perf_counter() - t0})
    stats.elapsed = time.perf_counter() - t0
    progress.train_s += stats.elapsed
    return stats


def validate(model: nn.Module, val_shard: list[Block], stats: EpochStats, tp: dict[str, Any], data: dict[str, Any],
             progress: Progress, opt: torch.optim.Optimizer, epoch: int, rank: int,
             device: torch.device) -> dict[str, Any]:
    """This worker's val shard scored, streamed in file order; every sum taken across ranks: the epoch's metrics."""
    mean, std = torch.tensor(data["mean"], device=device), torch.tensor(data["std"], device=device)
    stream = batches(data, "val", EpochOrder(val_shard, 0, 0, rank, shuffle=False), tp["eval_bs"], None,
                     prefetch=tp["prefetch"])
    v_loss, v_correct, v_n = evaluate_batches(model, stream, mean, std, device,
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

    # 1. this worker's rows only: its shard's row groups, read as training reaches them
    shard, val_shard, bs_local, plan = row_shards(data, tp, rank, world)

    # 2. same seed everywhere, then DDP
    torch.manual_seed(tp["seed"])
    model = build(tp["arch"], tuple(data["shape"]), data["n_classes"], tp["dropout"])
    if data.get("weights_uri"):  # the user's starting weights, the same on every rank (a checkpoint overrides)
        from components.workloads.modules import load_weights

        load_weights(model, data["weights_uri"], "image_classifier.train.weights")
    model = model.to(device)
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
        stats = train_epoch(model, ddp_model, opt, shard, tp, data, progress, epoch, rank, device,
                            plan, bs_local, watch, lambda info, mid, own, epoch=epoch: checkpoint_on_notice(
                                progress, rank, epoch, info, state, mid, own, config.get("select")))
        # 5. validation summed across ranks
        metrics = validate(model, val_shard, stats, tp, data, progress, opt, epoch, rank, device)
        # 6. rank 0 checkpoints; all ranks report
        checkpoint_and_report(
            progress, rank, epoch, metrics, state,
            f"[train] epoch {epoch + 1}/{plan.epochs} train_loss {metrics['train_loss']:.4f} "
            f"val_loss {metrics['val_loss']:.4f} val_accuracy {metrics['val_accuracy']:.4f} ({stats.elapsed:.1f}s)")
        if stop_early(progress, config, rank):  # 7. `patience` epochs without a better val accuracy
            break
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
