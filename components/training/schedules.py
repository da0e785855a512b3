"""Learning-rate schedules as pure functions of training progress.

Progress `p` runs from 0 to 1 over the run: steps done / planned steps, or, when a run has a
wall-clock budget, training seconds / budget. Epoch-based shapes (SGDR cycles) read it as
`p * epochs` epochs. Each function returns the multiplier of the peak learning rate.
"""

from __future__ import annotations

import math


def cosine(p: float, min_frac: float = 0.1) -> float:
    """Cosine decay from 1 to `min_frac` over the run."""
    p = min(max(p, 0.0), 1.0)
    return min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * p))


def sgdr(epoch: float, cycle_len: float, cycle_mult: float, min_frac: float = 0.0) -> float:
    """Cosine annealing with warm restarts (Loshchilov & Hutter; the fast.ai `cycle_len`,
    `cycle_mult`): cycles of cycle_len, cycle_len * cycle_mult, ... epochs, each annealing
    from 1 to `min_frac` and restarting at 1."""
    start, length = 0.0, cycle_len
    while epoch >= start + length:  # bounded: lengths never shrink (cycle_mult >= 1)
        start += length
        length *= cycle_mult
    return cosine((epoch - start) / length, min_frac)


def one_cycle(p: float, pct_start: float = 0.25, div_factor: float = 25.0, final_div: float = 1e4) -> float:
    """One cycle (Smith): cosine warm-up from 1/div_factor to 1 over `pct_start` of the run,
    then cosine annealing down to 1/(div_factor * final_div)."""
    p = min(max(p, 0.0), 1.0)
    lo, end = 1.0 / div_factor, 1.0 / (div_factor * final_div)
    if p < pct_start:
        t = p / pct_start
        return lo + (1 - lo) * 0.5 * (1 - math.cos(math.pi * t))
    t = (p - pct_start) / (1 - pct_start)
    return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * t))


def multiplier(cfg: dict, p: float) -> float:
    """The multiplier of `cfg['lr']` at progress `p`, for `cfg['schedule']`."""
    kind = cfg["schedule"]
    if kind == "constant":
        return 1.0
    if kind == "cosine":
        return cosine(p, cfg.get("min_lr_frac", 0.1))
    if kind == "sgdr":
        return sgdr(p * cfg["epochs"], cfg["cycle_len"], cfg["cycle_mult"], cfg.get("min_lr_frac", 0.1))
    if kind == "onecycle":
        return one_cycle(p, cfg["pct_start"], cfg["div_factor"], cfg["final_div"])
    raise ValueError(f"unknown schedule {kind!r}")


def slanted_triangular(step: int, total: int, cut_frac: float = 0.1, ratio: float = 32.0) -> float:
    """ULMFiT's STLR multiplier at `step` of `total`: a linear rise over the first `cut_frac` of
    the steps from 1/`ratio` to 1, then a linear decay back to 1/`ratio`."""
    cut = max(1, math.floor(total * cut_frac))
    p = step / cut if step < cut else 1 - (step - cut) / max(1, cut * (1 / cut_frac - 1))
    return (1 + max(0.0, p) * (ratio - 1)) / ratio
