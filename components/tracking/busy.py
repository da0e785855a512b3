"""A SQLite tracking store that another process holds locked is waited out, in one place.

Several writers share one local store: `mlflow ui`, a second stage, queued experiments, a
registration deciding the champion. SQLite answers a locked database with "database is
locked" once its busy timeout runs out; MLflow sets 20 s inside its own sessions, but the
store's opening (schema checks, the engine's first `inspect`) runs on the driver's 5 s default,
and a stage that met a lock there failed before the journal's wait applied. So every SQLite
connection any SQLAlchemy engine of the process opens waits `TRAINYARD_MLFLOW_BUSY_S`: set at
connect, and MLflow's per-session value replaced. What still fails past that wait is said in
one line (`busy_line`); writes to runs that exist are journaled instead (`journal.Writer`).
"""

from __future__ import annotations

import os
import re
import sqlite3

BUSY_ENV = "TRAINYARD_MLFLOW_BUSY_S"
_installed = False


def busy_s() -> float:
    """How long any MLflow access waits for a store another process holds locked (default 30 s)."""
    return float(os.environ.get(BUSY_ENV, "30"))


def wait_out_busy_stores() -> None:
    """Have every SQLite connection of this process's SQLAlchemy engines wait `busy_s()` for a
    lock another process holds, before "database is locked" (idempotent; call before MLflow
    opens a store)."""
    global _installed
    if _installed:
        return
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def on_connect(dbapi_conn, _record) -> None:  # noqa: ANN001 - SQLAlchemy's event signature
        if isinstance(dbapi_conn, sqlite3.Connection):
            dbapi_conn.execute(f"PRAGMA busy_timeout = {int(busy_s() * 1000)}")

    def on_execute(_conn, _cursor, statement: str, parameters, _context, _many):  # noqa: ANN001, ANN202
        # MLflow's sessions start with their own `PRAGMA busy_timeout = 20000`: ours instead
        if statement.lstrip()[:19].upper() == "PRAGMA BUSY_TIMEOUT":
            statement = f"PRAGMA busy_timeout = {int(busy_s() * 1000)};"
        return statement, parameters

    event.listen(Engine, "connect", on_connect)
    event.listen(Engine, "before_cursor_execute", on_execute, retval=True)
    _installed = True


def is_busy(err: BaseException) -> bool:
    """Whether an error (or one it wraps) is SQLite's "database is locked"."""
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if "database is locked" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _what(err: BaseException) -> str:
    """What the locked statement was doing: "write its runs table", "open the store", ..."""
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        sql = getattr(e, "statement", None) or (m.group(1) if (m := re.search(r"\[SQL: (.*?)\]", str(e), re.S)) else "")
        if sql:
            verb = sql.split(None, 1)[0].upper()
            table = m.group(1) if (m := re.search(r"(?:INTO|UPDATE|FROM)\s+\"?(\w+)", sql, re.I)) else ""
            if verb == "PRAGMA" or not table or table.startswith(("sqlite_", "alembic_")):
                return "open the store (its schema check)"
            return f"{'read' if verb == 'SELECT' else 'write'} its {table} table"
        e = e.__cause__ or e.__context__
    return "use the store"


def busy_line(err: BaseException, uri: str) -> str | None:
    """One line for a store that stayed locked past the wait, naming the store and what could
    not be done; None when `err` is something else."""
    if not is_busy(err):
        return None
    where = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:") else uri
    return (f"the tracking store {where} stayed locked by another process for {busy_s():g} s ({BUSY_ENV}): "
            f"could not {_what(err)}; run again once the other writer is done, or raise {BUSY_ENV}")
