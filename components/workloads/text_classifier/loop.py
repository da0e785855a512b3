"""The per-worker training function for the text classifier (a Ray Train worker, a Tune trial
or the stage's own process).

Read top to bottom, `train_loop_per_worker` is:
  1. this worker's row shard of train and val passages, as row groups read as training reaches
     them, encoded as the char-LM's ids on a background thread (`batches`)
  2. build the classifier, same seed on every rank; its encoder from the char-LM's weights
     (`encoder: char_lm`) or random (`encoder: scratch`, the comparison); DDP
  3. one optimizer param group per layer group at discriminative rates
  4. resume from the last reported checkpoint
  5. one epoch: STLR over the whole run, the groups below the unfrozen ones at rate 0
  6. validation summed across ranks; rank 0 checkpoints, every rank reports
On a preemption notice (looked for every `preemption_check_s` seconds) step 5 writes a
checkpoint mid-epoch (the step: the order follows from it; each rank's RNG and running sums),
and goes on (`checkpoint_on_notice`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist
from torch.nn import functional as F

from components.data.stream import BatchStream, EpochOrder
from components.training.checkpoints import seed_epoch
from components.training.steps import all_reduce_sum, make_optimizer
from components.training.worker import (
    EpochMeter,
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
from components.workloads.text_classifier.data import encode_passages
from components.workloads.text_classifier.model import (
    PoolingClassifier,
    apply_schedule,
    discriminative_groups,
    load_encoder,
)


def batches(data: dict[str, Any], split: str, order: EpochOrder, bs: int, steps: int | None, itos: list[str],
            first: int = 0, prefetch: int = 2, pad: bool = True) -> BatchStream:
    """This rank's passages of `split` in `order`, `bs` at a time, encoded as the char-LM's ids on a
    background thread: ((chars, n) int64, (n,) int64)."""

    def make(table: pa.Table, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (encode_passages(table.column("text").to_pylist(), itos),
                torch.from_numpy(table.column("label").to_numpy().astype(np.int64)))

    return BatchStream(data[f"{split}_uri"], order, bs, steps, make, first=first, columns=["text", "label"],
                       prefetch=prefetch, pad=pad)


def build(data: dict[str, Any], tp: dict[str, Any]) -> PoolingClassifier:
    """The classifier on the char-LM's encoder shape; its weights from the char-LM unless
    `encoder: scratch`."""
    enc = data["encoder"]
    model = PoolingClassifier(enc["vocab_size"], data["n_classes"], arch=enc["arch"], n_fac=enc["n_fac"],
                              n_hidden=enc["n_hidden"], n_layers=enc["n_layers"],
                              nonlinearity=enc.get("nonlinearity", "tanh"), dropout=tp["dropout"],
                              head_hidden=tp["head_hidden"], head=tp["head"])
    if tp["encoder"] != "scratch":  # the encoder knob: char_lm (a model file) or scratch
        blob = torch.load(data["encoder_uri"], map_location="cpu", weights_only=False)
        load_encoder(model, blob["model"])
    return model


@torch.no_grad()
def evaluate_batches(model: PoolingClassifier, stream: Iterable[tuple[torch.Tensor, torch.Tensor]],
                     device: torch.device) -> tuple[float, int, int]:
    """(summed loss, correct, count) over batches of passages (chars, n)."""
    model.eval()
    loss, correct, n = 0.0, 0, 0
    for x, y in stream:
        logits = model(x.to(device))
        yy = y.to(device)
        loss += F.cross_entropy(logits, yy, reduction="sum").item()
        correct += int((logits.argmax(1) == yy).sum())
        n += len(y)
    return loss, correct, n


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Fine-tune (or train from scratch) the classifier on this worker's shard; report per
    epoch metrics and checkpoints."""
    rank, world, device = start_worker(config)
    tp, data = config["train"], config["data"]

    # 1. this worker's rows only: its shard's row groups, read as training reaches them
    itos = data["encoder"]["vocab"]
    # val's rows are shuffled at prepare: its first rows are a random sample
    n_val = min(data["n_val"], tp.get("val_passages") or data["n_val"])
    shard, val_shard, bs_local, plan = row_shards(data, tp, rank, world, n_val)

    # 2-3. same seed everywhere, encoder weights, DDP; a param group per layer group
    torch.manual_seed(tp["seed"])
    model = build(data, tp).to(device)
    ddp_model = wrap_ddp(model, world)
    opt = make_optimizer(model, tp, discriminative_groups(model, tp["lr"], tp["lr_factor"]))

    # 4. resume
    progress = resume(model, opt, rank)
    if finished_already(progress, config, rank, plan):
        return

    def state() -> dict[str, Any]:
        return {"model": model.state_dict(), "optimizer": opt.state_dict(), "train": tp}

    watch = preemption_watch(tp, device)
    for epoch in range(progress.start_epoch, plan.epochs):
        # 5. one epoch: a seeded shuffle of the shard, wrapped to the same steps on every rank
        # (a checkpoint in the middle on a preemption notice; a resumed run goes on from there)
        seed_epoch(tp["seed"], epoch, rank)
        steps = plan.steps_in(epoch)
        ddp_model.train()
        loss_sum, t0, first = 0.0, time.perf_counter(), 0
        if taken := progress.take_mid_epoch(epoch):  # the dropout RNG put back too
            first, own = taken[0]["steps"], taken[1]
            if own is not None:  # the same ranks
                loss_sum, t0 = own["loss_sum"], t0 - own["elapsed"]
        meter = EpochMeter(rank, epoch, plan.epochs, steps, "steps")
        order = EpochOrder(shard, tp["seed"], epoch, rank, tp["shuffle_groups"])
        for s, (xb, yb) in enumerate(batches(data, "train", order, bs_local, steps, itos, first, tp["prefetch"]),
                                     start=first):
            apply_schedule(opt, progress.step, plan.total, epoch, tp["unfreeze_every"], tp["cut_frac"],
                           tp["stlr_ratio"])
            loss_sum += step_on(model, opt, F.cross_entropy(ddp_model(xb.to(device)), yb.to(device)), tp, progress,
                                epoch, s)
            meter.update(s + 1, loss_sum / (s + 1))
            if info := watch.notice(s + 1 < steps):
                checkpoint_on_notice(progress, rank, epoch, info, state, {"steps": s + 1},
                                     {"loss_sum": loss_sum,
                                      "elapsed": time.perf_counter() - t0}, config.get("select"))
        elapsed = time.perf_counter() - t0
        progress.train_s += elapsed

        # 6. validation summed across ranks; checkpoint and report
        val = batches(data, "val", EpochOrder(val_shard, 0, 0, rank, shuffle=False), tp["eval_bs"], None, itos,
                      prefetch=tp["prefetch"], pad=False)
        v_loss, v_correct, v_n = evaluate_batches(model, val, device)
        tot, n_steps, v_loss, v_correct, v_n = all_reduce_sum([loss_sum, steps, v_loss, v_correct, v_n], device)
        trained = sum(1 for grp in opt.param_groups if grp["lr"] > 0)
        metrics = {"epoch": epoch + 1, "train_loss": tot / max(n_steps, 1), "val_loss": v_loss / v_n,
                   "val_accuracy": v_correct / v_n, "lr": opt.param_groups[-1]["lr"],
                   "groups_trained": trained, "epoch_s": elapsed, "train_s": progress.train_s, "step": progress.step}
        checkpoint_and_report(
            progress, rank, epoch, metrics, state,
            f"[train] epoch {epoch + 1}/{plan.epochs} train_loss {metrics['train_loss']:.4f} "
            f"val_loss {metrics['val_loss']:.4f} val_accuracy {metrics['val_accuracy']:.4f} "
            f"({trained} of {len(opt.param_groups)} layer groups training, {elapsed:.1f}s)")
        if stop_early(progress, config, rank):
            break
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
