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
"""

from __future__ import annotations

import configparser
import os
from typing import Any

PROTECTED_ALIASES = ("champion",)
RULE = "trainyard champion guard"
_ALIAS_PATH = "/mlflow/registered-models/alias"
_DELETE_VERSION_PATH = "/mlflow/model-versions/delete"
_DELETE_MODEL_PATH = "/mlflow/registered-models/delete"


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
    if path.endswith(_ALIAS_PATH) and method in ("POST", "DELETE"):
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


def create_app(app=None):
    """MLflow's basic-auth app with the guard behind its authentication (Flask runs before-request
    hooks in the order they were added: an unauthenticated request is answered 401 first)."""
    from mlflow.server import app as flask_app
    from mlflow.server.auth import create_app as basic_auth_app

    app = app or flask_app
    served = basic_auth_app(app)
    app.before_request(_guard)
    return served
