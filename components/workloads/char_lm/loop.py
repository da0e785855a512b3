"""The per-worker training function for the char-LM (runs inside each Ray Train worker).

Read top to bottom, `train_loop_per_worker` is:
  1. read only this worker's share of the token streams            (`worker_streams`)
  2. build the model, same seed on every rank, and wrap it in DDP
  3. resume model / optimizer / schedule position / sampler         (`resume`)
  4. train one epoch of truncated-bptt windows, state carried       (`train_epoch`)
  5. validation loss summed across ranks, so all report the same    (`validate`)
  6. rank 0 writes the checkpoint; every rank reports (a barrier)   (`checkpoint_and_report`)
  7. stop after `patience` epochs without a better val loss           (`stop_early`)
On a preemption notice (looked for every `preemption_check_s` seconds) step 4 writes a
checkpoint mid-epoch, each rank's hidden state in it, and goes on (`checkpoint_on_notice`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from components.data.shards import BpttSampler, worker_streams
from components.training.checkpoints import seed_epoch
from components.training.schedules import multiplier
from components.training.steps import (
    DivergedError,
    all_reduce_sum,
    make_optimizer,
    optimizer_step,
    rank0_value,
)
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
from components.workloads.char_lm.data import max_windows, steps_per_pass
from components.workloads.char_lm.model import CharLM, detach_hidden, model_kwargs, stream_loss


@dataclass
class EpochStats:
    """What one epoch of training on this worker summed up."""

    loss_sum: float = 0.0
    steps: int = 0
    tokens: int = 0
    elapsed: float = 0.0
    out_of_time: bool = False


def train_epoch(model: CharLM, ddp_model: nn.Module, opt: torch.optim.Optimizer, sampler: BpttSampler,
                streams: torch.Tensor, tp: dict[str, Any], progress: Progress, epoch: int, rank: int,
                device: torch.device, plan: StepPlan, watch: PreemptionWatch | None = None,
                on_notice: Callable[[Any, dict[str, Any], dict[str, Any]], None] | None = None) -> EpochStats:
    """One epoch of windows; every rank draws the same window lengths from (seed, epoch).
    Goes on from the middle when the run resumed from a checkpoint written on a preemption
    notice; on a notice (`watch`), hands where the epoch stands to `on_notice`."""
    seed_epoch(tp["seed"], epoch, rank)
    budget, use_amp = tp.get("time_budget_s"), device.type == "cuda"
    loss_fn = nn.CrossEntropyLoss()
    ddp_model.train()
    h = model.init_hidden(streams.size(1), device)
    stats, t_epoch = EpochStats(), time.perf_counter()
    taken = progress.take_mid_epoch(epoch)
    done = 0  # windows of this epoch already trained before a preemption
    if taken:
        mid, own = taken
        done = mid["steps"]
        sampler.load_state_dict(mid["sampler"])  # where the epoch's windows began
        if own is not None:  # the same ranks: each goes on with its own state
            h = _to(own["hidden"], device)
            stats = EpochStats(own["loss_sum"], own["steps"], own["tokens"])
            t_epoch -= own["elapsed"]
    epoch_start = {"sampler": sampler.state_dict(), "step": progress.step - done}
    # a full pass unless the epoch has a set length or the run's max_tokens cuts it short
    # (varied windows make a pass a few windows longer or shorter than planned: the cap is
    # held window by window)
    remaining = plan.total - epoch_start["step"]
    full_pass = not tp["steps_per_epoch"] and remaining >= plan.per_epoch
    schedule = plan.schedule_cfg(tp)
    meter = EpochMeter(rank, epoch, plan.epochs, min(remaining, plan.per_epoch), "windows")
    for i, (start, seq_len) in enumerate(sampler.windows(None if full_pass else min(remaining, plan.per_epoch))):
        if i < done:  # trained before the preemption: the draws replayed, no compute
            continue
        if progress.step >= plan.total:
            break
        t_step = time.perf_counter()
        if start == 0:
            h = model.init_hidden(streams.size(1), device)  # a new pass: fresh state
        p = progress.train_s / budget if budget else progress.step / plan.total
        for g in opt.param_groups:
            g["lr"] = tp["lr"] * multiplier(schedule, p)
        h = detach_hidden(h)  # truncated bptt: gradients stop at the window boundary
        x = streams[start:start + seq_len]  # (seq_len, bs_local)
        y = streams[start + 1:start + 1 + seq_len]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits, h = ddp_model(x, h)
            loss = loss_fn(logits.float().flatten(0, 1), y.flatten())
        if not torch.isfinite(loss):
            raise DivergedError(
                f"loss is {loss.item()} at epoch {epoch + 1}, step {stats.steps + 1}: "
                f"training diverged; try a lower learning rate (lr={tp['lr']}) or a shorter bptt "
                f"(bptt={tp['bptt']}). The last good checkpoint (epoch {epoch}) is kept.")
        optimizer_step(model, opt, loss, tp["clip"])
        stats.loss_sum += loss.item()
        stats.steps += 1
        stats.tokens += y.numel()
        progress.step += 1
        meter.update(stats.steps, stats.loss_sum / stats.steps)
        progress.train_s += time.perf_counter() - t_step
        if budget:
            progress.train_s = rank0_value(progress.train_s, device)  # one clock for every rank
            if progress.train_s >= budget:
                stats.out_of_time = True
                break
        if watch is not None and on_notice is not None and (info := watch.notice(progress.step < plan.total)):
            on_notice(info, {"steps": i + 1, "sampler": epoch_start["sampler"]},
                      {"hidden": _to(detach_hidden(h), torch.device("cpu")),
                       "loss_sum": stats.loss_sum, "steps": stats.steps, "tokens": stats.tokens,
                       "elapsed": time.perf_counter() - t_epoch})
    stats.elapsed = time.perf_counter() - t_epoch
    return stats


def _to(h: Any, device: torch.device) -> Any:
    """A hidden state (a tensor, or an LSTM's pair) on `device`."""
    return tuple(t.to(device) for t in h) if isinstance(h, tuple) else h.to(device)


def validate(model: CharLM, val_streams: torch.Tensor, stats: EpochStats, tp: dict[str, Any], progress: Progress,
             opt: torch.optim.Optimizer, epoch: int, world: int, device: torch.device) -> dict[str, float]:
    """This worker's val streams scored, every sum taken across ranks: the epoch's metrics."""
    val_sum, val_n = stream_loss(model, val_streams, tp["val_bptt"], device)
    train_sum, steps_all, val_sum, val_n, tokens_all = all_reduce_sum(
        [stats.loss_sum, stats.steps, val_sum, val_n, stats.tokens], device)
    return {"epoch": epoch + 1, "train_loss": train_sum / max(1, steps_all), "val_loss": val_sum / max(1, val_n),
            "lr": opt.param_groups[0]["lr"], "tokens_per_s": tokens_all / max(stats.elapsed, 1e-9) / world,
            "epoch_s": stats.elapsed, "train_s": progress.train_s, "step": progress.step}


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train a CharLM on this worker's streams; report per-epoch metrics and checkpoints."""
    rank, world, device = start_worker(config)
    tp, data = config["train"], config["data"]

    # 1. this worker's streams only: (L, bs / world)
    train_streams = worker_streams(data["train_uri"], data["n_train"], tp["bs"], rank, world).to(device)
    val_streams = worker_streams(data["val_uri"], data["n_val"], tp["bs"], rank, world)

    # 2. same seed on every rank, so the initial weights agree before DDP broadcasts them
    torch.manual_seed(tp["seed"])
    model = CharLM(**model_kwargs(tp, data["vocab_size"])).to(device)
    ddp_model = wrap_ddp(model, world)
    opt = make_optimizer(model, tp)
    length = train_streams.size(0)
    plan = plan_steps(tp, steps_per_pass(length, tp["bptt"]), max_windows(tp))
    sampler = BpttSampler(length=length, bptt=tp["bptt"], seed=tp["seed"], variable=tp["variable_bptt"])

    # 3. resume: model, optimizer, schedule position and the sampler's place
    progress = resume(model, opt, rank)
    if progress.state:
        sampler.load_state_dict(progress.state["sampler"])
    if finished_already(progress, config, rank, plan):
        return

    def state() -> dict[str, Any]:
        return {"model": model.state_dict(), "optimizer": opt.state_dict(), "sampler": sampler.state_dict(),
                "train": tp, "vocab_size": data["vocab_size"]}

    watch = preemption_watch(tp, device)
    for epoch in range(progress.start_epoch, plan.epochs):
        # 4. one epoch of windows (a checkpoint in the middle on a preemption notice)
        stats = train_epoch(model, ddp_model, opt, sampler, train_streams, tp, progress, epoch, rank, device, plan,
                            watch, lambda info, mid, own, epoch=epoch: checkpoint_on_notice(
                                progress, rank, epoch, info, state, mid, own, config.get("select")))
        # 5. validation summed across ranks
        metrics = validate(model, val_streams, stats, tp, progress, opt, epoch, world, device)
        # 6. rank 0 checkpoints; all ranks report
        checkpoint_and_report(
            progress, rank, epoch, metrics, state,
            f"[train] epoch {epoch + 1}/{plan.epochs} train_loss {metrics['train_loss']:.4f} "
            f"val_loss {metrics['val_loss']:.4f} ({stats.elapsed:.1f}s, {progress.train_s:.0f}s training in all)")
        if stats.out_of_time or progress.step >= plan.total or stop_early(progress, config, rank):
            break
