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
# the compare-and-set endpoint of our server app (components/tracking/champion_guard.py)
MOVE_PATH = "/api/2.0/trainyard/champion/move"


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
_server_cas: dict[str, bool] = {}  # tracking URI -> whether its server answers the compare-and-set


def lock_file(uri: str, name: str) -> Path | None:
    """The lock file of model `name` beside a local SQLite store (`sqlite:///<path>`), or None."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri.removeprefix("sqlite:///"))
    return db.with_name(f".{db.name}.{hashlib.sha256(name.encode()).hexdigest()[:12]}.champion.lock")


@contextlib.contextmanager
def flock_file(path: Path, wait_s: float, poll_s: float = 0.05, said: str | None = None) -> Iterator[None]:
    """Hold an exclusive OS lock (`flock`) on `path`: the kernel gives it up when its holder's
    process ends, however it ends. `said` is printed once if we have to wait."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:  # closing it releases the lock
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if said:
                    print(said, flush=True)
                    said = None
                if time.monotonic() > deadline:
                    raise RegistryBusy(f"another process holds {path}; waited {wait_s:.0f} s") from None
                time.sleep(poll_s)
        yield


class ChampionMoved(RuntimeError):
    """The champion was not what we compared against any more: (version, history) it is now."""

    def __init__(self, version: str | None, history: str) -> None:
        super().__init__(f"the champion moved to v{version or '-'} meanwhile")
        self.version, self.history = version, history


class Gate:
    """How model `name`'s `champion` moves here: `state()` reads (version, history tag) and
    `move()` sets both, only if they are still what was read (else raises ChampionMoved).
    Under a lock held across read-compare-set (a file lock, the lease) the comparison cannot
    fail; against our server app the server makes it (`champion_guard.move`)."""

    def __init__(self, c, name: str, kind: str, history_tag: str) -> None:
        self.c, self.name, self.kind, self.history_tag = c, name, kind, history_tag

    def state(self) -> tuple[str | None, str]:
        """The champion's version (None when there is none) and the history tag, as stored now."""
        rm = retrying(self.c.get_registered_model, self.name)
        version = (rm.aliases or {}).get("champion")
        return (str(version) if version is not None else None), (rm.tags or {}).get(self.history_tag, "")

    def move(self, expected: tuple[str | None, str], version: str, history: str) -> None:
        """Champion `expected` -> `version`, with the history tag `history`, as one step."""
        if self.kind == "compare-and-set":
            from mlflow.utils.credentials import get_default_host_creds
            from mlflow.utils.rest_utils import http_request

            body = {"name": self.name, "version": str(version), "expected": expected[0] or "",
                    "expected_history": expected[1], "history": history}
            r = http_request(get_default_host_creds(self.c.tracking_uri), MOVE_PATH, "POST", json=body,
                             raise_on_status=False, max_retries=3)
            if r.status_code == 409:
                got = r.json()
                raise ChampionMoved(got.get("champion") or None, got.get("history", ""))
            if r.status_code != 200:  # the server's own error (a refusal, a missing version) as MLflow raises it
                from mlflow.exceptions import MlflowException

                try:
                    got = r.json()
                except ValueError:
                    got = {}
                raise MlflowException(f"model '{self.name}': the server refused to move the champion to v{version}: "
                                      f"{got.get('message') or f'HTTP {r.status_code}: {r.text[:300]}'}",
                                      error_code=got.get("error_code") or "INTERNAL_ERROR")
            return
        retrying(self.c.set_registered_model_alias, self.name, "champion", str(version))
        retrying(self.c.set_registered_model_tag, self.name, self.history_tag, history)


def _server_has_cas(c, name: str) -> bool:
    """Whether the tracking server answers our compare-and-set (the `trainyard-auth` app on a
    backend with a lock): asked once per server, by a move that cannot succeed (no version)."""
    uri = str(c.tracking_uri)
    if uri not in _server_cas:
        from mlflow.utils.credentials import get_default_host_creds
        from mlflow.utils.rest_utils import http_request

        r = http_request(get_default_host_creds(uri), MOVE_PATH, "POST", json={"name": name},
                         raise_on_status=False, max_retries=3)
        # 400: the app is there and refused the empty move; 404/405: a plain MLflow server;
        # 501: the app on a backend with no lock (MySQL); 403 from our guard (its rule named) is
        # a user who may not crown: still the app, where basic auth's own 403 on a route it does
        # not know ("Permission denied") is a plain server with logins
        guard_said = r.status_code == 403 and "trainyard champion guard" in r.text
        _server_cas[uri] = r.status_code in (400, 409) or guard_said
    return _server_cas[uri]


@contextlib.contextmanager
def champion_lock(c, name: str, wait_s: float = 600.0, history_tag: str = "trainyard.champion_history"
                  ) -> Iterator[Gate]:
    """The right to move model `name`'s `champion`: a compare-and-set that the store enforces
    (register's gate, approve, promote, rollback).

    - A local store (SQLite): an OS file lock beside the database, held across the read, the
      comparison and the write: no expiry to guess, no settle time.
    - Our MLflow server app (`trainyard-auth`): no lock held here; `Gate.move` asks the server
      to compare and set under the backend's own lock, and a conflict comes back as
      ChampionMoved (the caller compares again).
    - A plain MLflow server: the timed lease (`lease`), as said once in one line.
    """
    uri = str(getattr(c, "tracking_uri", "") or "")
    path = lock_file(uri, name)
    if path is not None:
        with flock_file(path, wait_s, said=f"[register] model '{name}': waiting for another registration to "
                                           f"finish (the store's lock {path.name})"):
            yield Gate(c, name, "file lock", history_tag)
        return
    if uri.startswith(("http://", "https://")) and _server_has_cas(c, name):
        yield Gate(c, name, "compare-and-set", history_tag)
        return
    if uri not in _said:
        _said.add(uri)
        print(f"[register] {uri}: the server enforces no compare-and-set on aliases: deciding them under a timed "
              "lease (our server app `--app-name trainyard-auth` and a local SQLite store enforce one)", flush=True)
    with lease(c, name, wait_s=wait_s):
        yield Gate(c, name, "lease", history_tag)


def crowned(history: list[str], version: str) -> list[str]:
    """The champion history once `version` holds the crown (not repeated when it already did last)."""
    return history if history and history[-1] == str(version) else [*history, str(version)]


def decide(gate: Gate, plan: Callable[[str | None, list[str]], tuple[str, list[str]] | None], who: str = "register",
           attempts: int = 20, always: bool = False) -> tuple[str | None, list[str]]:
    """Move the champion by compare-and-set: `plan(champion, history)` gives the version that
    should hold it and the history then (None: no move); a conflict re-reads and plans again.
    `always`: send the move even when nothing changes (an approval or promotion of the champion
    itself is still a promoter's act, which the server's guard checks). Returns the champion and
    history as they stand after (moved or not)."""
    for _ in range(attempts):
        champ, raw = gate.state()
        hist = [v for v in raw.split(",") if v]
        target = plan(champ, hist)
        if target is None or (not always and target[0] == champ and target[1] == hist):
            return champ, hist
        try:
            gate.move((champ, raw), str(target[0]), ",".join(target[1]))
        except ChampionMoved as moved:
            print(f"[{who}] model '{gate.name}': the champion moved to v{moved.version or '-'} meanwhile; "
                  "compared again", flush=True)
            continue
        return str(target[0]), list(target[1])
    raise RegistryBusy(f"model '{gate.name}': the champion kept moving; compared {attempts} times")
