"""Two registrations of one model at once: MLflow writes retried through the errors
concurrent writers cause, and one writer at a time deciding the aliases: a lock the store
enforces (`champion_lock`: an OS file lock beside a local SQLite store), or, on a server
without one, a timed lease on the registered model."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

LEASE = "trainyard.lease"  # registered-model tag: who decides aliases now, and until when


class RegistryBusy(RuntimeError):
    """Another registration held the model's lease for longer than we waited."""


def retrying(fn: Callable[..., Any], *args: Any, attempts: int = 8, **kwargs: Any) -> Any:
    """Call an MLflow write, retrying the errors concurrent writers cause: SQLite's
    "database is locked" and a version-number collision (a unique-constraint error)."""
    from mlflow.exceptions import MlflowException

    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except (MlflowException, OSError) as err:
            text = str(err).lower()
            transient = any(s in text for s in ("database is locked", "unique constraint", "integrityerror",
                                                "deadlock", "could not serialize"))
            if not transient or i == attempts - 1:
                raise
            time.sleep(0.1 * 2**i * (0.5 + random.random()))  # noqa: S311 - jitter, not crypto
    raise AssertionError("unreachable")


MAX_SETTLE_S = 2.0


@contextlib.contextmanager
def lease(c, name: str, ttl_s: float = 300.0, wait_s: float = 600.0, settle_s: float = 0.5,
          settle_rtts: float = 5.0) -> Iterator[None]:
    """Hold the model's lease while deciding aliases, so two pipelines registering at once
    cannot each crown their own version on a stale view of the champion.

    MLflow has no compare-and-set, so: wait until no live lease is there, write ours (a token
    with an expiry), wait, read it back. A writer that read "free" just before we wrote writes
    its own token within about two calls of its own, so after waiting several of ours
    (`settle_rtts` times our write, at least `settle_s` and at most `MAX_SETTLE_S`) exactly one
    token remains and only its owner goes on. The floor is 0.5 s: with 0.1 s (a sixth less per
    register on a local store) a rival's write delayed by SQLite's lock retries on a busy
    machine landed after our read-back, and both went on (seen once in CI:
    `test_two_registrations_deciding_at_once_crown_the_better`). A lease whose holder died
    expires after `ttl_s`.
    """
    token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline, waited = time.monotonic() + wait_s, False
    settle = settle_s
    while True:
        held = retrying(c.get_registered_model, name).tags.get(LEASE, "")
        owner, _, until = held.rpartition("@")
        if not held or float(until or 0) < time.time():
            t0 = time.monotonic()  # one write, timed after a read has warmed the client
            retrying(c.set_registered_model_tag, name, LEASE, f"{token}@{time.time() + ttl_s:.0f}")
            settle = min(MAX_SETTLE_S, max(settle_s, settle_rtts * (time.monotonic() - t0)))
            time.sleep(settle)
            if retrying(c.get_registered_model, name).tags.get(LEASE, "").startswith(token + "@"):
                break
        if not waited:
            print(f"[register] model '{name}': waiting for another registration to finish ({owner})", flush=True)
            waited = True
        if time.monotonic() > deadline:
            raise RegistryBusy(f"model '{name}': another registration holds the lease ({owner}); waited {wait_s:.0f} s")
        time.sleep(settle * (1 + random.random()))  # noqa: S311
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            if retrying(c.get_registered_model, name).tags.get(LEASE, "").startswith(token + "@"):
                retrying(c.delete_registered_model_tag, name, LEASE)


_said: set[str] = set()


def lock_file(uri: str, name: str) -> Path | None:
    """The lock file of model `name` beside a local SQLite store (`sqlite:///<path>`), or None."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri.removeprefix("sqlite:///"))
    return db.with_name(f".{db.name}.{hashlib.sha256(name.encode()).hexdigest()[:12]}.champion.lock")


@contextlib.contextmanager
def champion_lock(c, name: str, wait_s: float = 600.0, poll_s: float = 0.05) -> Iterator[str]:
    """Hold the right to move model `name`'s aliases across a read, a comparison and a write
    (register's gate, approve, promote, rollback): a compare-and-set, as one atomic step.

    On a local store (SQLite) it is an OS file lock beside the database (`flock`), which the
    kernel gives up when its holder's process ends, however it ends: no expiry to guess, no
    settle time. On a server the lock would have to live in the server; this one has none, so
    the timed lease (`lease`) decides, as said once in one line. Yields which it was."""
    import fcntl

    uri = str(getattr(c, "tracking_uri", "") or "")
    path = lock_file(uri, name)
    if path is None:
        if uri not in _said:
            _said.add(uri)
            print(f"[register] {uri}: the server enforces no compare-and-set on aliases: deciding them under a timed "
                  "lease (a local SQLite store uses a file lock)", flush=True)
        with lease(c, name):
            yield "lease"
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:  # closing it releases the lock
        deadline, said = time.monotonic() + wait_s, False
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not said:
                    print(f"[register] model '{name}': waiting for another registration to finish "
                          f"(the store's lock {path.name})", flush=True)
                    said = True
                if time.monotonic() > deadline:
                    raise RegistryBusy(f"model '{name}': another process holds {path}; waited {wait_s:.0f} s") from None
                time.sleep(poll_s)
        yield "file lock"
