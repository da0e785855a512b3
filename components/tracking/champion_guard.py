"""The MLflow server app that protects `@champion`: MLflow's basic-auth app with one rule in
front of its handlers. Only the users in the promoters list may set or delete a protected
alias (`champion`), or delete the version or model that holds it; everyone else keeps what
basic auth grants them: registering versions, setting `challenger`, reading.

    mlflow server --app-name trainyard-auth ...   # pyproject.toml's `mlflow.app` entry point

The list: `promoters` in the `[trainyard]` section of the auth config (MLFLOW_AUTH_CONFIG_PATH,
infra/mlflow/basic_auth.ini), comma-separated; TRAINYARD_PROMOTERS, when set, replaces it.
Open-source MLflow has no per-alias permission, so without this rule anyone who may edit a
model may crown a version of it. The server enforces it: a client that skips our CLI is refused
the same way.

It also gives the champion the compare-and-set MLflow lacks (`set_registered_model_alias` is
an upsert: the last writer wins): `POST /api/2.0/trainyard/champion/move` moves `champion` from
U to V, and sets the champion history tag, only if the alias and the history are still what the
client read, under a lock the backend store holds for every server worker (PostgreSQL: a
transaction's advisory lock; SQLite: a file lock beside the database, the same one a local
client takes). A conflict is answered 409 with what the champion is now. The move fires
MLflow's own `model_version_alias.created` webhook, as a plain alias write does.
"""

from __future__ import annotations

import configparser
import contextlib
import hashlib
import os
from collections.abc import Iterator
from typing import Any

from components.tracking.lease import MOVE_PATH

PROTECTED_ALIASES = ("champion",)
RULE = "trainyard champion guard"
_ALIAS_PATH = "/mlflow/registered-models/alias"
_DELETE_VERSION_PATH = "/mlflow/model-versions/delete"
_DELETE_MODEL_PATH = "/mlflow/registered-models/delete"
HISTORY_TAG = "trainyard.champion_history"  # as components.tracking.registry.HISTORY
LOCK_WAIT_S = 120  # a move waits this long for another worker's move of the same model


def promoters() -> set[str]:
    """The users who may move a protected alias (read on each request: an edit to the list
    applies without a restart)."""
    raw = os.environ.get("TRAINYARD_PROMOTERS")
    if raw is None:
        cfg = configparser.ConfigParser()
        path = os.environ.get("MLFLOW_AUTH_CONFIG_PATH")
        if path:
            cfg.read(path)
        raw = cfg.get("trainyard", "promoters", fallback="")
    return {u.strip() for u in raw.split(",") if u.strip()}


def _request_fields(request: Any) -> dict[str, Any]:
    # the REST client sends a JSON body (DELETE included); the UI's ajax calls may use the query
    body = request.get_json(silent=True, force=True) if request.data else None
    return {**request.args.to_dict(), **(body if isinstance(body, dict) else {})}


def _holder(name: str) -> dict[str, str]:
    """Protected alias -> version of a registered model (absent aliases left out)."""
    from mlflow.server.handlers import _get_model_registry_store

    try:
        aliases = _get_model_registry_store().get_registered_model(name).aliases or {}
    except Exception:  # no such model: MLflow's own handler answers that
        return {}
    return {a: str(v) for a, v in aliases.items() if a in PROTECTED_ALIASES}


def refusal(path: str, method: str, fields: dict[str, Any], user: str | None) -> str | None:
    """Why this request may not go through, or None. Pure apart from reading the model's aliases."""
    allowed = promoters()
    if user in allowed:
        return None
    name = str(fields.get("name", ""))
    who = ", ".join(sorted(allowed)) or "nobody: the list is empty"
    what = None
    if path.endswith(MOVE_PATH) and method == "POST":
        what = f"set the '{PROTECTED_ALIASES[0]}' alias of {name}"
    elif path.endswith(_ALIAS_PATH) and method in ("POST", "DELETE"):
        alias = str(fields.get("alias", ""))
        if alias in PROTECTED_ALIASES:
            what = f"{'set' if method == 'POST' else 'delete'} the '{alias}' alias of {name}"
    elif path.endswith(_DELETE_VERSION_PATH) and method == "DELETE":
        held = [a for a, v in _holder(name).items() if v == str(fields.get("version", ""))]
        if held:
            what = f"delete {name} v{fields.get('version')}, which holds '{held[0]}'"
    elif path.endswith(_DELETE_MODEL_PATH) and method == "DELETE":
        held = list(_holder(name))
        if held:
            what = f"delete {name}, whose '{held[0]}' alias is protected"
    if what is None:
        return None
    return (f"{RULE}: user '{user}' may not {what}; only promoters may ({who}; "
            "[trainyard] promoters in the server's auth config). Ask one of them to run "
            "`registry approve VERSION --reason ...`")


def _guard():
    """Flask before-request hook, run after basic auth has authenticated the user."""
    from flask import jsonify, request

    user = request.authorization.username if request.authorization else None
    why = refusal(request.path, request.method, _request_fields(request), user)
    if why is None:
        return None
    response = jsonify(error_code="PERMISSION_DENIED", message=why)
    response.status_code = 403
    return response


def lock_kind(store) -> str | None:
    """The lock the backend store offers for a champion move: "postgresql" (an advisory lock),
    "sqlite" (a file lock beside a database file), or None (MySQL, SQL Server, an in-memory
    SQLite: the endpoint answers 501 and clients fall back to the timed lease)."""
    from components.tracking.lease import lock_file

    engine = getattr(store, "engine", None)
    dialect = engine.dialect.name if engine is not None else ""
    if dialect == "postgresql":
        return dialect
    if dialect == "sqlite" and lock_file(engine.url.render_as_string(hide_password=False), "-") is not None:
        return dialect
    return None


@contextlib.contextmanager
def store_lock(store, name: str) -> Iterator[str]:
    """Hold the backend store's lock on model `name`'s champion: one holder across every server
    worker and process (`lock_kind` says which; call it first)."""
    from components.tracking.lease import flock_file, lock_file

    engine = store.engine
    if lock_kind(store) == "postgresql":
        from sqlalchemy import text

        key = int.from_bytes(hashlib.sha256(f"trainyard.champion:{name}".encode()).digest()[:8], "big", signed=True)
        with engine.begin() as conn:  # the lock ends with the transaction, however the request ends
            conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_WAIT_S}s'"))
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
            yield "postgresql advisory lock"
        return
    with flock_file(lock_file(engine.url.render_as_string(hide_password=False), name), LOCK_WAIT_S):
        yield "file lock"


def move(store, fields: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Compare-and-set `champion` (and the history tag) on `store`: (HTTP status, answer). A
    backend with no lock answers 501 to every request, the clients' probe included."""
    from mlflow.entities.model_registry import RegisteredModelTag

    if lock_kind(store) is None:
        backend = getattr(getattr(store, "engine", None), "dialect", None)
        return 501, {"error_code": "NOT_IMPLEMENTED", "message": "no champion lock for a "
                     f"{getattr(backend, 'name', type(store).__name__)} backend store: clients use the timed lease"}
    name, version = str(fields.get("name", "")), str(fields.get("version", ""))
    if not name or not version:
        return 400, {"error_code": "INVALID_PARAMETER_VALUE", "message": "a move needs `name` and `version`"}
    expected, expected_history = str(fields.get("expected") or ""), str(fields.get("expected_history") or "")
    with store_lock(store, name):
        rm = store.get_registered_model(name)
        current = str((rm.aliases or {}).get(PROTECTED_ALIASES[0], "") or "")
        history = (rm.tags or {}).get(HISTORY_TAG, "")
        if (current, history) != (expected, expected_history):
            return 409, {"error_code": "RESOURCE_CONFLICT", "champion": current, "history": history,
                         "message": f"the champion of {name} is v{current or '-'} now, not v{expected or '-'}"}
        store.get_model_version(name, version)  # a missing version fails before anything moves
        store.set_registered_model_alias(name, PROTECTED_ALIASES[0], version)
        if "history" in fields:
            store.set_registered_model_tag(name, RegisteredModelTag(HISTORY_TAG, str(fields["history"])))
    return 200, {"champion": version}


def _move_view():
    """The compare-and-set endpoint (`move`), with basic auth's permission rule for editing the
    model (the guard has already checked the promoters list), and MLflow's alias webhook."""
    from flask import jsonify, request
    from mlflow.exceptions import MlflowException
    from mlflow.server.handlers import _get_model_registry_store

    fields = _request_fields(request)
    with contextlib.suppress(ImportError):
        from mlflow.server.auth import sender_is_admin, validate_can_update_registered_model

        if not sender_is_admin() and not validate_can_update_registered_model():
            response = jsonify(error_code="PERMISSION_DENIED", message="Permission denied")
            response.status_code = 403
            return response
    store = _get_model_registry_store()
    try:
        status, answer = move(store, fields)
    except MlflowException as err:
        status, answer = err.get_http_status_code(), {"error_code": err.error_code, "message": err.message}
    if status == 200:
        _alias_webhook(store, answer["champion"], str(fields["name"]))
    response = jsonify(answer)
    response.status_code = status
    return response


def _alias_webhook(store, version: str, name: str) -> None:
    # what MLflow's own alias handler fires; a failure to deliver is logged there, never raised
    from mlflow.entities.webhook import WebhookAction, WebhookEntity, WebhookEvent
    from mlflow.webhooks.delivery import deliver_webhook
    from mlflow.webhooks.types import ModelVersionAliasCreatedPayload

    deliver_webhook(event=WebhookEvent(WebhookEntity.MODEL_VERSION_ALIAS, WebhookAction.CREATED),
                    payload=ModelVersionAliasCreatedPayload(name=name, alias=PROTECTED_ALIASES[0], version=version),
                    store=store)


def create_app(app=None):
    """MLflow's basic-auth app with the guard behind its authentication (Flask runs before-request
    hooks in the order they were added: an unauthenticated request is answered 401 first)."""
    from mlflow.server import app as flask_app
    from mlflow.server.auth import BEFORE_REQUEST_VALIDATORS, validate_can_update_registered_model
    from mlflow.server.auth import create_app as basic_auth_app

    app = app or flask_app
    served = basic_auth_app(app)
    app.before_request(_guard)
    for path, endpoint in ((MOVE_PATH, "trainyard_champion_move"),
                           (MOVE_PATH.replace("/api/", "/ajax-api/", 1), "trainyard_champion_move_ajax")):
        app.add_url_rule(path, endpoint, _move_view, methods=["POST"])
        # basic auth fails closed on a route it does not know: ours takes its rule for editing the
        # model, so an editor reaches the guard and hears why (only promoters move the champion)
        BEFORE_REQUEST_VALIDATORS[(path, "POST")] = validate_can_update_registered_model
    return served
