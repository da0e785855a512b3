"""The tracking server: which one (resolved once per stage), whether it answers, whether it
takes our login. Credentials come from MLflow's own variables, never from params.yaml."""

from __future__ import annotations

import base64
import os
import urllib.error
import urllib.request

from components.store import in_project

DEFAULT_URI = "sqlite:///mlflow.db"


class TrackingError(RuntimeError):
    """The tracking server cannot be reached or refuses a write."""


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI`, else the embedded SQLite store in the project's root (a relative
    SQLite path resolves there too: see `store.project_root`)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(in_project(uri.removeprefix("sqlite:///")))
    return uri


def artifact_root(uri: str) -> str | None:
    """Where a new experiment's artifacts go: `TRAINYARD_ARTIFACTS` (an object store, say
    `s3://bucket/mlartifacts`, beside the data and the DVC remote), else `mlartifacts` in the
    project for the embedded store; a server decides its own (`--default-artifact-root`)."""
    if where := os.environ.get("TRAINYARD_ARTIFACTS"):
        return where
    return in_project("mlartifacts").as_uri() if uri.startswith("sqlite:") else None


def check_tracking(uri: str, timeout_s: float = 5.0) -> None:
    """Fail before any compute when an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):  # noqa: S310
            pass
    except urllib.error.HTTPError as err:
        if err.code >= 500:
            raise TrackingError(f"MLFLOW_TRACKING_URI={uri}: server error {err.code} on /health") from None
    except (urllib.error.URLError, OSError) as err:
        raise TrackingError(f"MLFLOW_TRACKING_URI={uri}: no MLflow server answers "
                            f"({getattr(err, 'reason', err)})") from None


def _login_header() -> tuple[str | None, dict[str, str]]:
    """(user, headers) from MLflow's own credential variables: basic auth, else a bearer token."""
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password is not None:
        return user, {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    return user, {"Authorization": f"Bearer {token}"} if token else {}


def check_login(uri: str, timeout_s: float = 10.0) -> None:
    """Fail before any compute when a server with logins refuses ours. Credentials come from the
    environment only (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, or
    MLFLOW_TRACKING_TOKEN), never from params.yaml or the repository."""
    if not uri.startswith(("http://", "https://")):
        return
    user, headers = _login_header()
    req = urllib.request.Request(uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1",
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout_s):  # noqa: S310 - the configured server
            pass
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            who = f"the login of user {user!r}" if user else "requests without a login"
            raise TrackingError(f"MLFLOW_TRACKING_URI={uri}: the server refused {who} (HTTP {err.code}); "
                                "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD") from None
    except (urllib.error.URLError, OSError):
        pass  # reachability is check_tracking's to report


def denied(err: BaseException, uri: str) -> str | None:
    """One line for an MLflow write the server at `uri` refused for lack of permission, else None."""
    code = getattr(err, "error_code", None)
    if code not in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
        return None
    user = os.environ.get("MLFLOW_TRACKING_USERNAME") or "(no login)"
    first = str(getattr(err, "message", err)).strip().splitlines()[0]
    return (f"MLFLOW_TRACKING_URI={uri}: user {user!r} may not do this ({code}: {first}); "
            "an admin can grant EDIT or MANAGE on the experiment or registered model")


def server_answers(uri: str, timeout_s: float = 2.0) -> bool:
    """Whether the tracking server answers now (always true for a local store)."""
    try:
        check_tracking(uri, timeout_s)
        return True
    except TrackingError:
        return False
