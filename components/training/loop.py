"""The per-worker training function for the char-LM (runs inside each Ray Train worker).

Distributed steps are numbered:
  1. read only this worker's share of the token streams
  2. build the model and wrap it in DDP (`prepare_model`)
  3. resume model / optimizer / schedule position / sampler from the last reported checkpoint
  4. train one epoch of truncated-bptt windows, hidden state carried and detached
  5. all-reduce the validation loss so every rank reports the same number
  6. rank 0 writes the checkpoint; every rank calls `report` (it is a barrier)
"""

from __future__ import annotations

import math
import tempfile
import time
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn

from components.data.shards import BpttSampler, worker_streams
from components.models.char_lm import CharLM, detach_hidden, model_kwargs, stream_loss
from components.training.checkpoints import (
    replaying,
    restore,
    resumes_after,
    save_state,
    seed_epoch,
)
from components.training.schedules import multiplier


class DivergedError(FloatingPointError):
    """The loss became NaN or infinite."""


def make_optimizer(model: nn.Module, tp: dict[str, Any]) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay) or Adam (weight decay as an L2 term in the gradient)."""
    cls = torch.optim.AdamW if tp["optimizer"] == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=tp["lr"], weight_decay=tp["weight_decay"])


def optimizer_step(model: nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor, clip: float | None) -> None:
    """Backward, optional gradient-norm clipping, step (DDP all-reduces inside backward)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip:
        nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def _rank0_value(value: float, device: torch.device) -> float:
    # Every rank must use the same clock: the lr it sets and the step it stops on.
    t = torch.tensor([value], dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.broadcast(t, 0)
    return t.item()


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train a CharLM on this worker's streams; report per-epoch metrics and checkpoints."""
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(config.get("cpus_per_worker", 1))))
    device = ray.train.torch.get_device()
    use_amp = device.type == "cuda"
    tp = config["train"]
    data = config["data"]
    budget = tp.get("time_budget_s")

    # 1. this worker's streams only: (L, bs / world)
    train_streams = worker_streams(data["train_uri"], data["n_train"], tp["bs"], rank, world).to(device)
    val_streams = worker_streams(data["val_uri"], data["n_val"], tp["bs"], rank, world)

    # 2. same seed on every rank, so the initial weights agree before DDP broadcasts them
    torch.manual_seed(tp["seed"])
    model = CharLM(**model_kwargs(tp, data["vocab_size"])).to(device)
    ddp_model = ray.train.torch.prepare_model(model) if world > 1 else model
    opt = make_optimizer(model, tp)
    length = train_streams.size(0)
    steps_per_epoch = tp["steps_per_epoch"] or math.ceil((length - 1) / tp["bptt"])
    planned_steps = steps_per_epoch * tp["epochs"]
    sampler = BpttSampler(length=length, bptt=tp["bptt"], seed=tp["seed"], variable=tp["variable_bptt"])
    history: list[dict[str, float]] = []
    start_epoch, step, train_s = 0, 0, 0.0

    # 3. resume: Ray Train hands back the last reported checkpoint after a worker failure
    # or when the same run (name + storage path) is started again
    state = restore(model, opt)
    if state:
        sampler.load_state_dict(state["sampler"])
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

    loss_fn = nn.CrossEntropyLoss()
    out_of_time = False
    for epoch in range(start_epoch, tp["epochs"]):
        if out_of_time:
            break
        # 4. one epoch of windows; every rank draws the same lengths from (seed, epoch)
        seed_epoch(tp["seed"], epoch, rank)
        ddp_model.train()
        h = model.init_hidden(train_streams.size(1), device)
        t_epoch, tot, n_steps, n_tokens = time.perf_counter(), 0.0, 0, 0
        for start, seq_len in sampler.windows(tp["steps_per_epoch"]):
            t_step = time.perf_counter()
            if start == 0:
                h = model.init_hidden(train_streams.size(1), device)  # a new pass: fresh state
            progress = train_s / budget if budget else step / planned_steps
            for g in opt.param_groups:
                g["lr"] = tp["lr"] * multiplier(tp, progress)
            h = detach_hidden(h)  # truncated bptt: gradients stop at the window boundary
            x = train_streams[start:start + seq_len]  # (seq_len, bs_local)
            y = train_streams[start + 1:start + 1 + seq_len]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits, h = ddp_model(x, h)
                loss = loss_fn(logits.float().flatten(0, 1), y.flatten())
            if not torch.isfinite(loss):
                raise DivergedError(
                    f"loss is {loss.item()} at epoch {epoch + 1}, step {n_steps + 1}: "
                    f"training diverged; try a lower learning rate (lr={tp['lr']}) or a shorter bptt "
                    f"(bptt={tp['bptt']}). The last good checkpoint (epoch {epoch}) is kept.")
            optimizer_step(model, opt, loss, tp["clip"])
            tot += loss.item()
            n_steps += 1
            step += 1
            n_tokens += y.numel()
            train_s += time.perf_counter() - t_step
            if budget:
                train_s = _rank0_value(train_s, device)
                if train_s >= budget:
                    out_of_time = True
                    break
        elapsed = time.perf_counter() - t_epoch

        # 5. validation over this worker's val streams, summed across ranks
        val_sum, val_n = stream_loss(model, val_streams, tp["val_bptt"], device)
        train_sum, steps_all, val_sum, val_n, tokens_all = _all_reduce_sum(
            [tot, n_steps, val_sum, val_n, n_tokens], device)
        metrics = {
            "epoch": epoch + 1,
            "train_loss": train_sum / max(1, steps_all),
            "val_loss": val_sum / max(1, val_n),
            "lr": opt.param_groups[0]["lr"],
            "tokens_per_s": tokens_all / max(elapsed, 1e-9) / world,
            "epoch_s": elapsed,
            "train_s": train_s,
            "step": step,
        }
        history.append(metrics)

        # 6. rank 0 writes the checkpoint; all ranks report (report is a barrier)
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                save_state(tmp, {
                    "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "schedule": {"step": step, "train_s": train_s}, "sampler": sampler.state_dict(),
                    "epoch": epoch + 1, "history": history, "train": tp, "resumes": resumes,
                    "vocab_size": data["vocab_size"],
                })
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
                print(f"[train] epoch {epoch + 1}/{tp['epochs']} train_loss {metrics['train_loss']:.4f} "
                      f"val_loss {metrics['val_loss']:.4f} ({elapsed:.1f}s, {train_s:.0f}s training in all)",
                      flush=True)
            ray.train.report(replaying(metrics, history) if replay else metrics, checkpoint=checkpoint,
                             checkpoint_dir_name=f"epoch-{epoch + 1:04d}")
            replay = False
