"""The per-worker training function for image classifiers (runs inside each Ray Train worker).

Distributed steps are numbered:
  1. read only this worker's contiguous row shard of train and val
  2. build the model and wrap it in DDP
  3. resume from the last reported checkpoint
  4. one epoch: a seeded shuffle of the shard, padded by wrapping to the same number of steps
     on every rank (as DistributedSampler pads), the padding counted
  5. validation summed across ranks
  6. rank 0 writes the checkpoint; every rank reports
"""

from __future__ import annotations

import math
import tempfile
import time
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from components.data.images import decode
from components.data.shards import read_rows, row_shard
from components.models.convnets import build
from components.training.checkpoints import (
    replaying,
    restore,
    resumes_after,
    save_state,
    seed_epoch,
)
from components.training.loop import DivergedError, _all_reduce_sum, make_optimizer, optimizer_step
from components.training.schedules import multiplier


def load_shard(uri: str, n_rows: int, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This worker's images (n, C, H, W) uint8 and labels (n,) int64."""
    start, stop = row_shard(n_rows, rank, world)
    t = read_rows(uri, start, stop)
    if t.num_rows == 0:
        raise ValueError(f"{uri}: worker {rank} of {world} has no rows ({n_rows} in all)")
    imgs = decode(t.combine_chunks().to_batches()[0])  # (n, H, W, C)
    return (torch.from_numpy(imgs.transpose(0, 3, 1, 2).copy()),  # decode gives a read-only buffer
            torch.from_numpy(t.column("label").to_numpy().astype(np.int64)))


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float, scaled to [0, 1] then standardised per channel."""
    return (x.float() / 255.0 - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


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
def evaluate_batches(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mean, std, device, bs: int = 512):
    """(summed loss, correct, count) over uint8 images x."""
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(x), bs):
        logits = model(normalize(x[i:i + bs].to(device), mean, std))
        yy = y[i:i + bs].to(device)
        loss += F.cross_entropy(logits.float(), yy, reduction="sum").item()
        correct += int((logits.argmax(1) == yy).sum())
    return loss, correct, len(x)


def image_loop_per_worker(config: dict[str, Any]) -> None:
    """Train an image classifier on this worker's shard; report per-epoch metrics and checkpoints."""
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(config.get("cpus_per_worker", 1))))
    device = ray.train.torch.get_device()
    tp, data = config["train"], config["data"]
    mean = torch.tensor(data["mean"], device=device)
    std = torch.tensor(data["std"], device=device)

    # 1. this worker's rows only
    x_train, y_train = load_shard(data["train_uri"], data["n_train"], rank, world)
    x_val, y_val = load_shard(data["val_uri"], data["n_val"], rank, world)
    bs_local = tp["bs"] // world
    max_shard = math.ceil(data["n_train"] / world)
    steps_per_epoch = tp["steps_per_epoch"] or math.ceil(max_shard / bs_local)
    planned = steps_per_epoch * tp["epochs"]
    pad = data["shape"][1] // 8 if data["crop"] else 0

    # 2. same seed everywhere, then DDP
    torch.manual_seed(tp["seed"])
    model = build(tp["arch"], tuple(data["shape"]), data["n_classes"], tp["dropout"]).to(device)
    ddp_model = ray.train.torch.prepare_model(model) if world > 1 else model
    opt = make_optimizer(model, tp)
    history: list[dict[str, float]] = []
    start_epoch, step, train_s = 0, 0, 0.0

    # 3. resume from the last reported checkpoint, if any
    state = restore(model, opt)
    if state:
        history, start_epoch = state["history"], state["epoch"]
        step, train_s = state["schedule"]["step"], state["schedule"]["train_s"]
        if rank == 0:
            print(f"[train] resumed from epoch {start_epoch} checkpoint", flush=True)
    resumes = resumes_after(state, step)
    replay = bool(state)  # the next report carries the restored history
    if state and start_epoch >= tp["epochs"]:
        # a finished run started again (a resumed sweep's trial): hand its result on, train nothing
        ray.train.report(replaying(history[-1], history))
        return

    for epoch in range(start_epoch, tp["epochs"]):
        # 4. a seeded permutation of the shard, wrapped to the same step count on every rank
        g = torch.Generator().manual_seed(tp["seed"] * 100_003 + epoch * 1009 + rank)
        seed_epoch(tp["seed"], epoch, rank)
        need = steps_per_epoch * bs_local
        order = torch.randperm(len(x_train), generator=g).repeat(math.ceil(need / len(x_train)))[:need]
        ddp_model.train()
        t0, tot, seen = time.perf_counter(), 0.0, 0
        for s in range(steps_per_epoch):
            idx = order[s * bs_local:(s + 1) * bs_local]
            xb = augment(x_train[idx], data["flip"], pad, g).to(device)
            yb = y_train[idx].to(device)
            for grp in opt.param_groups:
                grp["lr"] = tp["lr"] * multiplier(tp, step / planned)
            loss = F.cross_entropy(ddp_model(normalize(xb, mean, std)), yb)
            if not torch.isfinite(loss):
                raise DivergedError(f"loss is {loss.item()} at epoch {epoch + 1}, step {s + 1}: training diverged; "
                                    f"try a lower learning rate (lr={tp['lr']})")
            optimizer_step(model, opt, loss, tp["clip"])
            tot += loss.item()
            seen += len(idx)
            step += 1
        elapsed = time.perf_counter() - t0
        train_s += elapsed

        # 5. validation summed across ranks
        v_loss, v_correct, v_n = evaluate_batches(model, x_val, y_val, mean, std, device)
        tot, n_steps, seen, v_loss, v_correct, v_n = _all_reduce_sum(
            [tot, steps_per_epoch, seen, v_loss, v_correct, v_n], device)
        metrics = {"epoch": epoch + 1, "train_loss": tot / n_steps, "val_loss": v_loss / v_n,
                   "val_accuracy": v_correct / v_n, "lr": opt.param_groups[0]["lr"],
                   "samples_seen": int(seen), "samples_padded": int(seen) - data["n_train"],
                   "images_per_s": seen / max(elapsed, 1e-9), "epoch_s": elapsed, "train_s": train_s, "step": step}
        history.append(metrics)

        # 6. rank 0 checkpoints; all ranks report
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                save_state(tmp, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                 "schedule": {"step": step, "train_s": train_s}, "epoch": epoch + 1,
                                 "history": history, "train": tp, "resumes": resumes})
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
                print(f"[train] epoch {epoch + 1}/{tp['epochs']} train_loss {metrics['train_loss']:.4f} "
                      f"val_loss {metrics['val_loss']:.4f} val_accuracy {metrics['val_accuracy']:.4f} "
                      f"({elapsed:.1f}s)", flush=True)
            ray.train.report(replaying(metrics, history) if replay else metrics, checkpoint=checkpoint,
                             checkpoint_dir_name=f"epoch-{epoch + 1:04d}")
            replay = False
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
