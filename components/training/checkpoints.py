"""Checkpoint files: one `state.pt` holding model, optimizer, scheduler, sampler and history,
and `state.sha256` beside it, so that a damaged copy is found on read, not trained on."""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from components.data.parquet import atomic_path
from components.store import DamagedState

# A checkpoint to try: its name (for messages) and how to get it as a local folder.
Candidate = tuple[str, Callable[[], contextlib.AbstractContextManager[str]]]

STATE_FILE = "state.pt"
DIGEST_FILE = "state.sha256"


def save_state(folder: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` into `folder/state.pt` atomically, and its sha256 into `state.sha256`."""
    path = Path(folder) / STATE_FILE
    buf = io.BytesIO()  # serialized once: the same bytes are hashed and written, not read back
    torch.save(state, buf)
    data = buf.getbuffer()
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    with atomic_path(path.with_name(DIGEST_FILE)) as tmp:
        tmp.write_text(hashlib.sha256(data).hexdigest() + "\n")
    return path


def load_state(folder: str | Path, label: str | None = None) -> dict[str, Any]:
    """Read `folder/state.pt` onto the CPU. `DamagedState` (naming `label`, else the folder)
    when it is missing, does not match its recorded sha256 (a bad block: torch would load
    flipped weights without a word), or does not unpickle (cut short)."""
    path = Path(folder) / STATE_FILE
    name = label or str(folder)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DamagedState(f"checkpoint {name} has no readable {STATE_FILE} ({err.strerror or err})") from err
    digest = path.with_name(DIGEST_FILE)
    if digest.exists():  # checkpoints written before the digest have none: loading them still checks the zip
        want = digest.read_text().strip()
        if hashlib.sha256(data).hexdigest() != want:
            raise DamagedState(f"checkpoint {name}: {STATE_FILE} ({len(data)} bytes) does not match its "
                               f"recorded sha256")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except (ImportError, AttributeError, MemoryError):
        raise  # whole bytes naming code that is gone, or no memory: not damage, and not to fall back from
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError... for a cut file
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise DamagedState(f"checkpoint {name}: {STATE_FILE} ({len(data)} bytes) does not load "
                           f"({type(err).__name__}: {first})") from err
    if not isinstance(state, dict) or "model" not in state:
        raise DamagedState(f"checkpoint {name}: {STATE_FILE} holds no model state")
    return state


def first_that_loads(candidates: Sequence[Candidate]) -> tuple[dict[str, Any] | None, str | None, list[str]]:
    """Load the first of `candidates` (best first) that loads: (state, its name, what was
    damaged before it); (None, None, damaged) when none does."""
    damaged: list[str] = []
    for label, opened in candidates:
        with opened() as folder:
            try:
                return load_state(folder, label), label, damaged
            except DamagedState as err:
                damaged.append(str(err))
    return None, None, damaged


def fallback_line(damaged: list[str], used: str | None, instead: str = "starting the run over") -> str:
    """One line for what `first_that_loads` skipped: the damage, and what the run does instead."""
    more = f" (and {len(damaged) - 1} older)" if len(damaged) > 1 else ""
    return f"{damaged[0]}{more}; {f'going on from checkpoint {used} instead' if used else instead}"


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Reseed torch's global RNG (dropout) from (seed, epoch, rank): an epoch replayed after a
    restore draws the same masks as the lost run, so a resumed run matches an unbroken one."""
    torch.manual_seed(seed * 100_003 + epoch * 1009 + rank + 1)


def resumes_after(state: dict[str, Any] | None, step: int) -> list[dict[str, int]]:
    """The run's resume record with this restart appended: (epoch, step) it went on from."""
    if not state:
        return []
    return [*state.get("resumes", []), {"epoch": int(state["epoch"]), "step": int(step)}]


def replaying(metrics: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    """The first report after a resume carries the restored history: whoever logs reports (a
    sweep driver killed with its Ray, say) may have missed epochs that the checkpoint kept,
    and fills the gap from it (MLflow logging skips the epochs it already has)."""
    return {**metrics, "history": history}
