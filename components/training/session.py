"""Where a worker loop runs, behind the six calls it makes to its runner.

- `TrainSession` (the default): a Ray Train worker, any number of ranks (`ray.train`).
- `TuneSession`: the Ray Tune trial's own process, one rank and no worker group. A sweep's
  1-worker trials run here: a Train controller, a worker group and their placement group
  cost seconds per trial and buy nothing for one rank.
- `StageSession`: the train stage's own process, for a 1-worker run off a cluster: one rank,
  no Ray at all; checkpoints go to the run store, so a re-run resumes as a Train run does.
- `LocalSession`: a plain process (benches); reports are kept in memory.

The loop code is the same in all four: only where reports and checkpoints go differs.
"""

from __future__ import annotations

import contextlib
import copy
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import torch

from components.training.checkpoints import Candidate


def ray_node_id() -> str | None:
    """The Ray node this process runs on; None in a process without Ray (the stage's own)."""
    import sys

    ray = sys.modules.get("ray")  # never imported here: not a Ray process
    return ray.get_runtime_context().get_node_id() if ray is not None and ray.is_initialized() else None


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

    def checkpoints(self) -> list[Candidate]:
        """The checkpoints to resume from, the last reported first, then older ones still
        kept (a fallback when the last does not load); empty on a fresh start."""

    def preemption(self) -> Any | None:
        """A notice that a node of this run is about to be preempted (Ray's `PreemptionInfo`:
        the nodes, ranks and deadline), or None. On a Train worker a barrier: every rank calls
        it alike. Only a Ray Train worker group hears of one; elsewhere always None."""


def ray_checkpoints(latest: Any) -> list[Candidate]:
    """Ray's last reported checkpoint (a `ray.train.Checkpoint`, or None), then the older
    checkpoints of the same run still in its folder, newest first: Ray hands back only the
    last, and a run whose last checkpoint is damaged should go on from the one before it.
    Names sort in report order (`epoch-0003`, `epoch-0003-r1a2b3c`, `checkpoint_000004`)."""
    if not latest:
        return []
    import re

    import pyarrow.fs as pafs

    parent, name = latest.path.rstrip("/").rsplit("/", 1)
    kind = re.match(r"[A-Za-z]+[-_]", name)
    try:
        listed = latest.filesystem.get_file_info(pafs.FileSelector(parent))
    except OSError:
        listed = []
    older = sorted((i.base_name for i in listed if i.type == pafs.FileType.Directory and i.base_name < name
                    and kind and i.base_name.startswith(kind.group())), reverse=True)
    return [(name, latest.as_directory)] + [
        (n, type(latest)(path=f"{parent}/{n}", filesystem=latest.filesystem).as_directory) for n in older]


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
        # rank 0's metrics are a Train-based trial's result: where the trial ran, for its record
        ray.train.report({**metrics, "node_id": ray_node_id()}, checkpoint=checkpoint, checkpoint_dir_name=dir_name)

    def checkpoints(self) -> list[Candidate]:
        import ray.train

        return ray_checkpoints(ray.train.get_checkpoint())

    def preemption(self) -> Any | None:
        import ray.train

        return ray.train.get_preemption_info()


class NoPreemption:
    """A runner that hears of no preemption: one process, no Ray Train worker group."""

    def preemption(self) -> None:
        return None


class TuneSession(NoPreemption):
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

        tune.report({**metrics, "node_id": ray_node_id()},  # where the trial ran, for its record
                    checkpoint=tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None)

    def checkpoints(self) -> list[Candidate]:
        from ray import tune

        return ray_checkpoints(tune.get_checkpoint())


class LocalSession(NoPreemption):
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
        """The last reported checkpoint's folder, or None before the first."""
        yield str(self._last) if self._last else None

    def checkpoints(self) -> list[Candidate]:
        last = self._last
        return [(last.name, lambda: contextlib.nullcontext(str(last)))] if last else []

    def close(self) -> None:
        """Remove the kept checkpoint."""
        shutil.rmtree(self._root, ignore_errors=True)


INDEX_FILE = "checkpoints.json"


class StageSession(NoPreemption):
    """The train stage's own process running a 1-worker loop: rank 0 of 1 on `device`.

    Each reported checkpoint is copied to `<run_uri>/<dir_name>` in the run store (a local
    path or a URI) and listed, with its metrics, in `<run_uri>/checkpoints.json`, written
    after the copy: a checkpoint is either listed and whole, or not there. Kept: the latest
    (to resume from) and the best by `select` (to publish), as the Train run keeps them. The
    same run started again resumes from the latest. `on_report` gets every report (live metrics).
    """

    def __init__(self, run_uri: str, device: torch.device, select: tuple[str, str] | None = None,
                 on_report: Callable[[dict[str, Any]], None] | None = None) -> None:
        from components.store import DamagedState, read_store_json

        self.run_uri, self._device, self.select, self.on_report = run_uri.rstrip("/"), device, select, on_report
        try:
            self.entries: list[dict[str, Any]] = read_store_json(self._at(INDEX_FILE)) or []
        except DamagedState as err:
            self.entries = self._relisted()
            print(f"[train] {err}; listed again from the {len(self.entries)} checkpoint(s) in its folder that load",
                  flush=True)

    def _at(self, name: str) -> str:
        return f"{self.run_uri}/{name}"

    def rank_world(self) -> tuple[int, int]:
        return 0, 1

    def device(self) -> torch.device:
        return self._device

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        raise RuntimeError("a 1-worker run in the stage's process has nothing to wrap in DDP")

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None, dir_name: str | None = None) -> None:
        import pyarrow.fs as pafs

        from components.store import store_fs, write_store_json

        if checkpoint_dir:
            name = dir_name or f"checkpoint-{len(self.entries) + 1:04d}"
            fs, dest = store_fs(self._at(name))
            if fs.get_file_info(dest).type != pafs.FileType.NotFound:
                fs.delete_dir(dest)  # a copy the last attempt left unlisted
            fs.create_dir(dest, recursive=True)
            pafs.copy_files(checkpoint_dir, dest, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
            row = {k: v for k, v in metrics.items() if isinstance(v, int | float | str)}
            self.entries = [e for e in self.entries if e["dir"] != name] + [{"dir": name, "metrics": row}]
            latest, best = self.latest(), self.best()
            keep = [e for e in self.entries if e is latest or e is best]
            write_store_json(self._at(INDEX_FILE), keep)
            for gone in (e for e in self.entries if e not in keep):
                fs.delete_dir(store_fs(self._at(gone["dir"]))[1])
            self.entries = keep
        if self.on_report is not None:
            self.on_report(copy.deepcopy(metrics))  # a snapshot, as a Train report is: the loop's history grows

    def _relisted(self) -> list[dict[str, Any]]:
        """The index rebuilt from the checkpoint folders that load (each state's last history
        row is the metrics its report carried), in report order."""
        import pyarrow.fs as pafs

        from components.store import DamagedState, store_fs
        from components.training.checkpoints import load_state

        fs, base = store_fs(self.run_uri)
        names = sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
                       if i.type == pafs.FileType.Directory)
        entries = []
        for name in names:
            entry = {"dir": name, "metrics": {}}
            with self.opened(entry) as d:
                try:
                    state = load_state(d, name)
                except DamagedState:
                    continue
            last = (state.get("history") or [{}])[-1]
            entry["metrics"] = {k: v for k, v in last.items() if isinstance(v, int | float | str)}
            entries.append(entry)
        return entries

    def latest(self) -> dict[str, Any] | None:
        """The index entry of the last reported checkpoint, or None before the first."""
        return self.entries[-1] if self.entries else None

    def best(self) -> dict[str, Any] | None:
        """The index entry of the best checkpoint by `select` (the earliest on a tie); the
        latest when nothing selects."""
        if not self.select:
            return self.latest()
        metric, sign = self.select[0], (1 if self.select[1] == "min" else -1)
        scored = [(i, e) for i, e in enumerate(self.entries) if metric in e["metrics"]]
        if not scored:
            return self.latest()
        return min(scored, key=lambda ie: (sign * ie[1]["metrics"][metric], ie[0]))[1]

    @contextlib.contextmanager
    def opened(self, entry: dict[str, Any]) -> Iterator[str]:
        """A local folder holding `entry`'s checkpoint (the run store's own folder when local)."""
        import pyarrow.fs as pafs

        from components.store import store_fs

        if "://" not in self.run_uri:
            yield self._at(entry["dir"])
            return
        fs, src = store_fs(self._at(entry["dir"]))
        with tempfile.TemporaryDirectory(prefix="trainyard-ckpt-") as tmp:
            pafs.copy_files(src, tmp, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
            yield tmp

    def checkpoints(self) -> list[Candidate]:
        """The kept checkpoints, the last reported first."""
        return [(e["dir"], lambda e=e: self.opened(e)) for e in reversed(self.entries)]


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
