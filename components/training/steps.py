"""What every workload's worker loop shares: the optimizer, one optimisation step, and the
collectives that keep ranks in agreement."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn


class DivergedError(FloatingPointError):
    """The loss became NaN or infinite."""


def make_optimizer(model: nn.Module, tp: dict[str, Any], groups: list[dict[str, Any]] | None = None) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay) or Adam (weight decay as an L2 term in the gradient), over
    the model's parameters or over param `groups` (each with its own rate)."""
    cls = torch.optim.AdamW if tp["optimizer"] == "adamw" else torch.optim.Adam
    return cls(groups if groups is not None else model.parameters(), lr=tp["lr"], weight_decay=tp["weight_decay"],
               betas=(0.9, tp.get("beta2", 0.999)))


def optimizer_step(model: nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor, clip: float | None) -> None:
    """Backward, optional gradient-norm clipping, step (DDP all-reduces inside backward)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip:
        nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum each value over every rank (a no-op on one worker)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def rank0_value(value: float, device: torch.device) -> float:
    """Rank 0's value on every rank."""
    # Every rank must use the same clock: the lr it sets and the step it stops on.
    t = torch.tensor([value], dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.broadcast(t, 0)
    return t.item()
