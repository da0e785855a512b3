r"""Hang a deployment on the champion: a receiver for the registry's webhook (standard library only,
so it runs wherever the deployment does).

    export TRAINYARD_HOOK_SECRET=...      # the same secret `registry hook` was given
    python infra/mlflow/deploy_hook.py --port 8787 \
        --run 'mlflow models serve -m "$MODEL_URI" -p 5001 --env-manager local'
    python -m components.cli.registry hook http://127.0.0.1:8787/ --secret-env TRAINYARD_HOOK_SECRET

Each delivery's signature is checked (MLflow signs `<delivery id>.<timestamp>.<body>` with
HMAC-SHA256, the Standard Webhooks scheme) and its timestamp must be within `--max-age-s`;
anything else is answered 401 and not acted on. When `champion` is set, `--run` runs (in the
background, so the server's delivery does not wait) with MODEL_NAME, MODEL_VERSION and
MODEL_URI (models:/<name>/<version>) in its environment; other aliases are logged and ignored.
Every delivery is appended to `--log` as one JSON line. The MLflow server must be allowed to
call it: MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https and MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true
for a receiver on a private address (https and a public address need neither).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

SIGNATURE, TIMESTAMP, DELIVERY = "X-MLflow-Signature", "X-MLflow-Timestamp", "X-MLflow-Delivery-Id"


def signature(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """MLflow's webhook signature: `v1,` + base64(HMAC-SHA256(secret, id.timestamp.body))."""
    mac = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def verified(secret: str, headers, body: bytes, max_age_s: float, now: float | None = None) -> str | None:
    """Why a delivery is refused (bad or missing signature, too old), or None when it is genuine."""
    delivery, stamp, sig = headers.get(DELIVERY), headers.get(TIMESTAMP), headers.get(SIGNATURE)
    if not (delivery and stamp and sig):
        return "unsigned: no signature headers"
    try:
        age = (time.time() if now is None else now) - int(stamp)
    except ValueError:
        return f"bad timestamp {stamp!r}"
    if abs(age) > max_age_s:
        return f"stale: signed {age:.0f} s ago (max {max_age_s:g} s)"
    if not hmac.compare_digest(signature(secret, delivery, stamp, body), sig):
        return "bad signature"
    return None


def serve(port: int, secret: str, run: str | None, log: Path, max_age_s: float = 300,
          host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """A started receiver (serving on a thread); `.shutdown()` stops it."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            why = verified(secret, self.headers, body, max_age_s)
            event = {} if why else json.loads(body)
            data = event.get("data", {})
            act = not why and event.get("entity") == "model_version_alias" and event.get("action") == "created" \
                and data.get("alias") == "champion"
            record = {"at": time.time(), "delivery": self.headers.get(DELIVERY), "refused": why,
                      "event": f"{event.get('entity')}.{event.get('action')}" if event else None,
                      "data": data, "deploy": bool(act and run)}
            with open(log, "a") as f:
                f.write(json.dumps(record) + "\n")
            self.send_response(401 if why else 200)
            self.end_headers()
            self.wfile.write((why or "ok").encode())
            if act and run:
                env = {**os.environ, "MODEL_NAME": data["name"], "MODEL_VERSION": str(data["version"]),
                       "MODEL_URI": f"models:/{data['name']}/{data['version']}"}
                threading.Thread(target=subprocess.run, args=(run,), kwargs={"shell": True, "env": env},
                                 daemon=True).start()

        def log_message(self, fmt: str, *args) -> None:
            sys.stderr.write(f"[deploy-hook] {fmt % args}\n")

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    """Run the receiver until interrupted."""
    a = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--port", type=int, default=8787)
    a.add_argument("--host", default="127.0.0.1")
    a.add_argument("--secret-env", default="TRAINYARD_HOOK_SECRET", help="the variable holding the signing secret")
    a.add_argument("--run", help="shell command run when `champion` moves (MODEL_NAME, MODEL_VERSION, MODEL_URI set)")
    a.add_argument("--log", default="deploy-hook.jsonl", help="every delivery, one JSON line each")
    a.add_argument("--max-age-s", type=float, default=300, help="refuse deliveries signed longer ago than this")
    args = a.parse_args()
    secret = os.environ.get(args.secret_env)
    if not secret:
        sys.exit(f"error: {args.secret_env} is not set: the receiver checks every delivery's signature with it")
    server = serve(args.port, secret, args.run, Path(args.log), args.max_age_s, args.host)
    print(f"[deploy-hook] listening on http://{args.host}:{args.port}/", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.shutdown()


if __name__ == "__main__":
    main()
