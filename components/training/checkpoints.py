"""Checkpoint files: one `state.pt` holding model, optimizer, scheduler, sampler and history."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from components.data.parquet import atomic_path

STATE_FILE = "state.pt"


def save_state(folder: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` into `folder/state.pt` atomically."""
    path = Path(folder) / STATE_FILE
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)  # a file object keeps the bytes independent of the temp name
    return path


def load_state(folder: str | Path) -> dict[str, Any]:
    """Read `folder/state.pt` onto the CPU."""
    return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=False)


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Reseed torch's global RNG (dropout) from (seed, epoch, rank): an epoch replayed after a
    restore draws the same masks as the lost run, so a resumed run matches an unbroken one."""
    torch.manual_seed(seed * 100_003 + epoch * 1009 + rank + 1)


def resumes_after(state: dict[str, Any] | None, step: int) -> list[dict[str, int]]:
    """The run's resume record with this restart appended: (epoch, step) it went on from."""
    if not state:
        return []
    return [*state.get("resumes", []), {"epoch": int(state["epoch"]), "step": int(step)}]


def restore(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
    """Load model and optimizer from the session's last reported checkpoint (after a worker
    failure, or when the same run name + storage path is started again); return the whole
    state for the loop's own parts, or None on a fresh start."""
    from components.training import session

    with session.current().checkpoint_dir() as d:
        if d is None:
            return None
        state = load_state(d)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return state


def replaying(metrics: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    """The first report after a resume carries the restored history: whoever logs reports (a
    sweep driver killed with its Ray, say) may have missed epochs that the checkpoint kept,
    and fills the gap from it (MLflow logging skips the epochs it already has)."""
    return {**metrics, "history": history}
