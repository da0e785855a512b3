"""What a stage owes MLflow while the tracking server is down, kept on disk and sent later.

A long training run must not stop because the tracking server restarts. Every write after
a run has been opened goes through `Writer`: when the server answers, straight to it (the
journal first, so order is kept); when it does not, into a bounded JSON-lines journal under
the local state folder, one file per tracking URI. The journal is replayed when the server
answers again: at the next write of the same run, at the end of the stage, or when the next
stage starts (`session.connect`). Replays skip metric steps the run already has, so a replay
cut short and run again writes nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from components.store import local_state_dir
from components.tracking import runs
from components.tracking.busy import busy_s, is_busy, wait_out_busy_stores
from components.tracking.server import TrackingError, server_answers

MAX_ENTRIES = 100_000
MAX_BYTES = 256 * 2**20


class JournalFull(TrackingError):
    """The journal reached its bound; nothing more is accepted until the server returns."""


def journal_path(uri: str) -> Path:
    """The journal file of a tracking URI, in this machine's local state folder."""
    return local_state_dir() / "mlflow-journal" / f"{hashlib.sha256(uri.encode()).hexdigest()[:16]}.jsonl"


class Journal:
    """An append-only JSON-lines file with a bound on entries and bytes (files included)."""

    def __init__(self, path: Path, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES) -> None:
        self.path, self.max_entries, self.max_bytes = Path(path), max_entries, max_bytes
        self.files = self.path.with_suffix(".files")

    def _lock(self):
        from filelock import FileLock

        self.path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.path) + ".lock", timeout=60)

    def entries(self) -> list[dict[str, Any]]:
        """Entries in write order. A torn line (a writer killed mid-append: an entry never
        acknowledged) is skipped, wherever it is: the entries appended after it are kept."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def _size(self) -> int:
        files = sum(f.stat().st_size for f in self.files.glob("*/*")) if self.files.is_dir() else 0
        return (self.path.stat().st_size if self.path.exists() else 0) + files

    def append(self, entry: dict[str, Any], file: str | Path | None = None) -> None:
        """Add one entry (with a copy of `file`, for artifacts); JournalFull past the bound."""
        with self._lock():
            extra = Path(file).stat().st_size if file else 0
            if len(self.entries()) >= self.max_entries or self._size() + extra > self.max_bytes:
                raise JournalFull(f"the MLflow journal {self.path} is full ({self.max_entries} entries / "
                                  f"{self.max_bytes // 2**20} MB); bring the tracking server back")
            if file:
                copy = self.files / uuid.uuid4().hex / Path(file).name  # the artifact keeps its name
                copy.parent.mkdir(parents=True)
                shutil.copy2(file, copy)
                entry = {**entry, "file": str(copy)}
            torn = self.path.exists() and self.path.stat().st_size and not self._ends_a_line()
            with open(self.path, "a") as f:
                # after a torn line, a newline first: the new entry must not be glued onto it
                f.write(("\n" if torn else "") + json.dumps(entry) + "\n")
                f.flush()
                os.fsync(f.fileno())

    def _ends_a_line(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def __len__(self) -> int:
        return len(self.entries())

    def drain(self, send) -> int:
        """Send every entry in order with `send(entry)`; stop at the first failure, keeping it
        and everything after it. Returns how many were sent."""
        with self._lock():
            todo = self.entries()
            sent = 0
            try:
                for entry in todo:
                    send(entry)
                    sent += 1
            finally:
                rest = todo[sent:]
                if rest:
                    tmp = self.path.with_suffix(".tmp")
                    tmp.write_text("".join(json.dumps(e) + "\n" for e in rest))
                    tmp.replace(self.path)
                else:
                    self.path.unlink(missing_ok=True)
                    shutil.rmtree(self.files, ignore_errors=True)
                for e in todo[:sent]:
                    if "file" in e:
                        shutil.rmtree(Path(e["file"]).parent, ignore_errors=True)
            return sent


def _quick_http_failures() -> None:
    # MLflow retries a refused request 7 times with exponential backoff (minutes); a writer
    # that can fall back to its journal wants to know within seconds.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


class Writer:
    """MLflow writes for runs that already exist, journaled while the server is away."""

    def __init__(self, uri: str, journal: Journal | None = None) -> None:
        from mlflow import MlflowClient

        _quick_http_failures()
        wait_out_busy_stores()
        self.uri = uri
        self.journal = journal if journal is not None else Journal(journal_path(uri))  # an empty one is falsy
        self.c = MlflowClient(tracking_uri=uri)
        self._ids: dict[tuple[str, str], str] = {}  # (experiment, run key) -> run id

    def _run_id(self, e: dict[str, Any]) -> str:
        """The run an entry writes to: its id, or the run with its key (`exp_id`, `run_key`), for
        a run that may have been created while the server was away (a sweep's trial)."""
        if "run_id" in e:
            return e["run_id"]
        key = (e["exp_id"], e["run_key"])
        if key not in self._ids:
            run = runs.find_run(self.c, *key)
            if run is None:
                raise ValueError(f"journal entry {e['op']!r} for run key {e['run_key']!r}: no such run")
            self._ids[key] = run.info.run_id
        return self._ids[key]

    def _send(self, e: dict[str, Any]) -> None:
        if e["op"] == "start":  # a run opened (or reopened) by its key: safe to send twice
            run_id = runs.start_run(self.c, e["exp_id"], e["run_key"], e["run_name"], e.get("tags"),
                                    parent_run_id=e.get("parent_run_id"), reopen=e.get("reopen", True),
                                    start_time=e.get("time"))  # when it began, not when it was sent
            self._ids[(e["exp_id"], e["run_key"])] = run_id
            runs.log_params(self.c, run_id, e.get("params") or {})
        elif e["op"] == "metrics":
            runs.log_history(self.c, self._run_id(e), e["rows"], e.get("step_key", "epoch"), timestamp=e["time"])
        elif e["op"] == "artifact":
            self.c.log_artifact(self._run_id(e), e["file"], e.get("artifact_path"))
        elif e["op"] == "terminate":  # a run already closed so keeps its end time (a trial reported twice)
            run_id = self._run_id(e)
            info = self.c.get_run(run_id).info
            if not (info.status == e["status"] and info.end_time):
                self.c.set_terminated(run_id, status=e["status"], end_time=e["time"])
        elif e["op"] == "tag":
            self.c.set_tag(self._run_id(e), e["key"], e["value"])
        elif e["op"] == "datasets":
            runs.log_dataset_entries(self.c, self._run_id(e), e["entries"])
        elif e["op"] == "sample":  # values at one step: a system-metrics sample, evaluate's numbers
            from mlflow.entities import Metric

            self.c.log_batch(self._run_id(e), metrics=[Metric(k, float(v), e["time"], e["step"])
                                                       for k, v in e["values"].items()])
        else:
            raise ValueError(f"unknown journal entry {e['op']!r}")

    def flush(self) -> int:
        """Send what the journal holds, if the server answers; returns how many entries went."""
        if not self.journal.path.exists() or not server_answers(self.uri):
            return 0
        try:
            return self.journal.drain(self._send)
        except Exception:  # the server went away again mid-replay: the rest stays queued
            return 0

    def write(self, entry: dict[str, Any], file: str | Path | None = None) -> bool:
        """Send one write now if possible (after what is queued), else queue it; True if sent."""
        entry = {"time": int(time.time() * 1000), **entry}
        if server_answers(self.uri):
            self.flush()
            if not self.journal.path.exists() and self._send_waiting_out_a_busy_store(
                    {**entry, "file": str(file)} if file else entry):
                return True
        self.journal.append(entry, file)
        return False

    def _send_waiting_out_a_busy_store(self, entry: dict[str, Any]) -> bool:
        """Send; a store busy with another writer (SQLite's lock held by `mlflow ui`, a second
        stage, a queued experiment) is waited out for `TRAINYARD_MLFLOW_BUSY_S` (default 30 s:
        the connection's own wait, `busy.py`, and retries for a lock SQLite refuses at once),
        then treated as an outage: False, and the caller journals the write."""
        deadline = time.monotonic() + busy_s()
        while True:
            try:
                self._send(entry)
                return True
            except Exception as err:  # noqa: BLE001 - any failure to send is queued, not lost
                if is_busy(err) and time.monotonic() < deadline:
                    time.sleep(0.5)
                    continue
                if is_busy(err):
                    print(f"[mlflow] the tracking store {self.uri} stayed busy (another writer holds its lock): "
                          f"writes go to {self.journal.path} until it is free", flush=True)
                    return False
                if _unreachable(err):
                    return False
                raise

    def settle(self, grace_s: float | None = None) -> bool:
        """At the end of a stage: if writes are queued, give a restarting server up to `grace_s`
        (default `TRAINYARD_MLFLOW_GRACE_S`, 30 s) to come back and take them; True when nothing
        is left queued."""
        if grace_s is None:
            grace_s = float(os.environ.get("TRAINYARD_MLFLOW_GRACE_S", "30"))
        if not self.journal.path.exists():
            return True
        print(f"[mlflow] {self.uri} is down: waiting up to {grace_s:.0f} s for it to take "
              f"{len(self.journal)} queued writes", flush=True)
        deadline = time.monotonic() + grace_s
        while True:
            self.flush()
            if not self.journal.path.exists():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))

    def settle_or_report(self) -> bool:
        """`settle`, and when writes are still queued say so in one line; True when none are."""
        if self.settle():
            return True
        print(f"[mlflow] {self.uri} is down: {len(self.journal)} writes kept in {self.journal.path}; "
              "they are sent when the next stage starts with the server back", flush=True)
        return False

    def log_history(self, run_id: str, rows: list[dict[str, Any]], step_key: str = "epoch") -> bool:
        return self.write({"op": "metrics", "run_id": run_id, "rows": rows, "step_key": step_key})

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> bool:
        return self.write({"op": "artifact", "run_id": run_id, "artifact_path": artifact_path}, file=path)

    def finish(self, run_id: str, status: str = "FINISHED") -> bool:
        return self.write({"op": "terminate", "run_id": run_id, "status": status})


def _unreachable(err: BaseException) -> bool:
    """Whether an MLflow client error means "no server there" (vs. a refused request): no
    connection, or one broken mid-answer (a server killed while it replies: `IncompleteRead`,
    a reset). MLflow wraps the transport's error in an `MlflowException` whose message and
    context carry it, so both are read."""
    import http.client

    import requests

    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:  # the chain of causes, each once
        seen.add(id(e))
        if isinstance(e, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                          http.client.HTTPException, ConnectionError, TimeoutError)):
            return True
        e = e.__cause__ or e.__context__
    text = f"{type(err).__name__} {err}"
    return any(s in text for s in ("ConnectionError", "Connection refused", "Max retries exceeded",
                                   "Connection broken", "Connection aborted", "Connection reset",
                                   "IncompleteRead", "ConnectTimeout", "ReadTimeout", "RemoteDisconnected",
                                   "503", "502"))
