"""Where a worker loop runs, behind the five calls it makes to its runner.

- `TrainSession` (the default): a Ray Train worker, any number of ranks (`ray.train`).
- `TuneSession`: the Ray Tune trial's own process, one rank and no worker group. A sweep's
  1-worker trials run here: a Train controller, a worker group and their placement group
  cost seconds per trial and buy nothing for one rank.
- `LocalSession`: a plain process (benches); reports are kept in memory.

The loop code is the same in all three: only where reports and checkpoints go differs.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch


class Session(Protocol):
    """What a worker loop asks of whatever runs it."""

    def rank_world(self) -> tuple[int, int]:
        """(rank, world size)."""

    def device(self) -> torch.device:
        """The device this rank trains on."""

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model wrapped for data parallel training (called only when world > 1)."""

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None, dir_name: str | None = None) -> None:
        """Hand an epoch's metrics (and rank 0's checkpoint folder) to the runner."""

    def checkpoint_dir(self) -> contextlib.AbstractContextManager[str | None]:
        """The last reported checkpoint's folder to resume from, or None on a fresh start."""


class TrainSession:
    """A Ray Train worker."""

    def rank_world(self) -> tuple[int, int]:
        import ray.train

        ctx = ray.train.get_context()
        return ctx.get_world_rank(), ctx.get_world_size()

    def device(self) -> torch.device:
        import ray.train.torch

        return ray.train.torch.get_device()

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None, dir_name: str | None = None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=dir_name)

    @contextlib.contextmanager
    def checkpoint_dir(self) -> Iterator[str | None]:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if not ckpt:
            yield None
            return
        with ckpt.as_directory() as d:
            yield d


class TuneSession:
    """A Ray Tune function trial running the loop itself: rank 0 of 1."""

    def __init__(self, use_gpu: bool = False) -> None:
        self.use_gpu = use_gpu

    def rank_world(self) -> tuple[int, int]:
        return 0, 1

    def device(self) -> torch.device:
        # Ray sets CUDA_VISIBLE_DEVICES to the trial's GPU: it is device 0 here
        return torch.device("cuda", 0) if self.use_gpu and torch.cuda.is_available() else torch.device("cpu")

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        raise RuntimeError("a Tune trial runs one rank: there is nothing to wrap in DDP")

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None, dir_name: str | None = None) -> None:
        from ray import tune

        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None)

    @contextlib.contextmanager
    def checkpoint_dir(self) -> Iterator[str | None]:
        from ray import tune

        ckpt = tune.get_checkpoint()
        if not ckpt:
            yield None
            return
        with ckpt.as_directory() as d:
            yield d


class LocalSession:
    """A plain process: rank 0 of 1 on the CPU; reports kept in `self.reports`, the last
    checkpoint copied into a folder of this session's own (removed by `close`)."""

    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []
        self._root = Path(tempfile.mkdtemp(prefix="trainyard-local-"))
        self._last: Path | None = None

    def rank_world(self) -> tuple[int, int]:
        return 0, 1

    def device(self) -> torch.device:
        return torch.device("cpu")

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        raise RuntimeError("a local session runs one rank: there is nothing to wrap in DDP")

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None, dir_name: str | None = None) -> None:
        self.reports.append(metrics)
        if checkpoint_dir:
            dest = self._root / (dir_name or f"checkpoint-{len(self.reports):04d}")
            shutil.copytree(checkpoint_dir, dest)
            if self._last is not None and self._last != dest:
                shutil.rmtree(self._last, ignore_errors=True)
            self._last = dest

    @contextlib.contextmanager
    def checkpoint_dir(self) -> Iterator[str | None]:
        yield str(self._last) if self._last else None

    def close(self) -> None:
        """Remove the kept checkpoint."""
        shutil.rmtree(self._root, ignore_errors=True)


_current: Session | None = None


def current() -> Session:
    """The session the running loop reports to (a Ray Train worker unless `running_in` says otherwise)."""
    return _current if _current is not None else TrainSession()


@contextlib.contextmanager
def running_in(session: Session) -> Iterator[Session]:
    """Run a worker loop inside `session` for the duration of the block."""
    global _current
    before, _current = _current, session
    try:
        yield session
    finally:
        _current = before
