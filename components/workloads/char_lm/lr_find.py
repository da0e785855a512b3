"""Learning-rate finder (the fast.ai notes' `lr_find`): raise the lr exponentially over a few
hundred steps, record the smoothed loss, stop when it blows up, and suggest a rate."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from components.data.shards import BpttSampler
from components.workloads.char_lm.loop import make_optimizer
from components.workloads.char_lm.model import CharLM, detach_hidden, model_kwargs


@dataclass(frozen=True)
class LrFindResult:
    lrs: list[float]
    losses: list[float]  # smoothed (bias-corrected exponential moving average)
    suggested_lr: float  # the notes' rule: a tenth of the lr at the loss minimum
    steepest_lr: float  # where the smoothed loss falls fastest (often the first, unigram drop)


def suggest(lrs: list[float], losses: list[float]) -> tuple[float, float]:
    """(lr at the minimum of the smoothed loss / 10, lr at its steepest fall before the minimum)."""
    if len(lrs) < 5:
        raise ValueError(f"the lr sweep stopped after {len(lrs)} steps; start from a lower start_lr")
    log_lr, loss = np.log(lrs), np.asarray(losses)
    i_min = int(np.argmin(loss))
    grad = np.gradient(loss[: i_min + 1], log_lr[: i_min + 1]) if i_min >= 2 else np.array([0.0])
    steepest = lrs[int(np.argmin(grad))] if i_min >= 2 else lrs[i_min] / 10
    return float(lrs[i_min] / 10), float(steepest)


def lr_find(streams: torch.Tensor, vocab_size: int, cfg: dict, start_lr: float = 1e-5, end_lr: float = 1.0,
            steps: int = 200, beta: float = 0.9, blowup: float = 4.0) -> LrFindResult:
    """Sweep the lr from `start_lr` to `end_lr` over `steps` bptt windows of `streams` (L, bs)."""
    torch.manual_seed(cfg["seed"])
    model = CharLM(**model_kwargs(cfg, vocab_size))
    opt = make_optimizer(model, cfg | {"lr": start_lr})
    sampler = BpttSampler(length=streams.size(0), bptt=cfg["bptt"], seed=cfg["seed"], variable=cfg["variable_bptt"])
    factor = (end_lr / start_lr) ** (1 / max(1, steps - 1))
    lrs, losses, avg, best = [], [], 0.0, math.inf
    h = None
    for i, (start, seq_len) in enumerate(sampler.windows(max_steps=steps)):
        lr = start_lr * factor**i
        for g in opt.param_groups:
            g["lr"] = lr
        # Short smoothing (beta 0.9): a long EMA lags the sweep and shifts the curve to higher lrs.
        h = None if start == 0 else detach_hidden(h)
        logits, h = model(streams[start:start + seq_len], h)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), streams[start + 1:start + 1 + seq_len].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg["clip"]:
            nn.utils.clip_grad_norm_(model.parameters(), cfg["clip"])
        opt.step()
        avg = beta * avg + (1 - beta) * loss.item()
        smooth = avg / (1 - beta ** (i + 1))
        if not math.isfinite(smooth) or smooth > blowup * best:
            break  # the loss has blown up: the rest of the sweep says nothing
        best = min(best, smooth)
        lrs.append(lr)
        losses.append(smooth)
    suggested, steepest = suggest(lrs, losses)
    return LrFindResult(lrs, losses, suggested, steepest)
