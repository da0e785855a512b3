"""The regression workload's Ray Train worker loop, built from the shared worker steps."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from components.data.dataset import read_range
from components.data.stream import row_shard
from components.training.schedules import multiplier
from components.training.steps import all_reduce_sum, make_optimizer, optimizer_step
from components.training.worker import (
    checkpoint_and_report,
    finished_already,
    plan_steps,
    resume,
    start_worker,
    stop_early,
    wrap_ddp,
)


def _shard(split: dict, n: int, d: int, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    t = read_range(split, *row_shard(n, rank, world))
    x = np.stack([t.column(f"x{i}").to_numpy() for i in range(d)], 1).astype(np.float32)
    return torch.from_numpy(x), torch.from_numpy(t.column("y").to_numpy().astype(np.float32))


def regression_loop(config: dict[str, Any]) -> None:
    rank, world, device = start_worker(config)
    tp, data = config["train"], config["data"]
    x, y = _shard(data["train_uri"], data["n_train"], data["n_features"], rank, world)
    xv, yv = _shard(data["val_uri"], data["n_val"], data["n_features"], rank, world)
    torch.manual_seed(tp["seed"])
    model = torch.nn.Linear(data["n_features"], 1)
    ddp_model = wrap_ddp(model, world)
    opt = make_optimizer(model, tp)
    progress = resume(model, opt, rank)
    bs = tp["bs"] // world
    plan = plan_steps(tp, len(y) // bs)
    if finished_already(progress, config, rank, plan):
        return
    g = torch.Generator().manual_seed(tp["seed"] + rank)
    for epoch in range(progress.start_epoch, plan.epochs):
        total, steps = 0.0, plan.steps_in(epoch)
        for _ in range(steps):
            idx = torch.randint(0, len(y), (bs,), generator=g)
            for grp in opt.param_groups:
                grp["lr"] = tp["lr"] * multiplier(tp, progress.step / plan.total)
            loss = torch.nn.functional.mse_loss(ddp_model(x[idx]).squeeze(1), y[idx])
            optimizer_step(model, opt, loss, tp["clip"])
            total += loss.item()
            progress.step += 1
        with torch.no_grad():
            val_sum = float(torch.nn.functional.mse_loss(model(xv).squeeze(1), yv, reduction="sum"))
        total, n_steps, val_sum, n_val = all_reduce_sum([total, steps, val_sum, len(yv)], device)
        metrics = {"epoch": epoch + 1, "train_loss": total / n_steps, "val_loss": val_sum / n_val,
                   "lr": opt.param_groups[0]["lr"], "train_s": progress.train_s}
        checkpoint_and_report(progress, rank, epoch, metrics,
                              lambda: {"model": model.state_dict(), "optimizer": opt.state_dict(), "train": tp},
                              f"[train] epoch {epoch + 1} val mse {metrics['val_loss']:.4f}")
        if stop_early(progress, config, rank):
            break
