"""The server-side rule that keeps `@champion` to the promoters (components/tracking/champion_guard.py);
tests/integration/test_cluster.py checks it inside the real server with real logins."""

from __future__ import annotations

import pytest

from components.tracking import champion_guard as guard

ALIAS = "/api/2.0/mlflow/registered-models/alias"


@pytest.fixture
def promoters(monkeypatch, tmp_path):
    ini = tmp_path / "auth.ini"
    ini.write_text("[mlflow]\nadmin_username = admin\n\n[trainyard]\npromoters = lead, admin\n")
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(ini))
    monkeypatch.delenv("TRAINYARD_PROMOTERS", raising=False)


def test_the_list_comes_from_the_auth_config_and_the_environment_replaces_it(promoters, monkeypatch):
    assert guard.promoters() == {"lead", "admin"}
    monkeypatch.setenv("TRAINYARD_PROMOTERS", "ana")
    assert guard.promoters() == {"ana"}


@pytest.mark.parametrize("method", ["POST", "DELETE"])
def test_only_a_promoter_may_set_or_delete_the_champion_alias(promoters, method):
    why = guard.refusal(ALIAS, method, {"name": "char-lm", "alias": "champion", "version": "3"}, "bo")
    assert why and why.startswith("trainyard champion guard: user 'bo' may not")
    assert "'champion' alias of char-lm" in why and "only promoters may (admin, lead;" in why
    assert guard.refusal(ALIAS, method, {"name": "char-lm", "alias": "champion"}, "lead") is None
    assert guard.refusal("/ajax-api/2.0/mlflow/registered-models/alias", method,
                         {"name": "char-lm", "alias": "champion"}, "bo")  # the UI's path too


def test_other_aliases_and_requests_pass(promoters):
    assert guard.refusal(ALIAS, "POST", {"name": "char-lm", "alias": "challenger", "version": "3"}, "bo") is None
    assert guard.refusal(ALIAS, "GET", {"name": "char-lm", "alias": "champion"}, "bo") is None
    assert guard.refusal("/api/2.0/mlflow/model-versions/create", "POST", {"name": "char-lm"}, "bo") is None


def test_an_empty_list_lets_nobody_move_the_champion(monkeypatch):
    monkeypatch.setenv("TRAINYARD_PROMOTERS", "")
    why = guard.refusal(ALIAS, "POST", {"name": "m", "alias": "champion", "version": "1"}, "admin")
    assert why and "nobody: the list is empty" in why


def test_a_backend_without_a_lock_answers_501_and_clients_fall_back_to_the_lease(tmp_path):
    """The move endpoint on a backend with no champion lock (an in-memory SQLite here; MySQL or
    SQL Server alike) answers 501 to every request, the clients' probe (a move with no version)
    included, and the client then decides under the timed lease; on a SQLite file it is there."""
    import http.server
    import threading
    from types import SimpleNamespace

    import sqlalchemy

    from components.tracking import lease

    status, answer = guard.move(SimpleNamespace(engine=sqlalchemy.create_engine("sqlite://")), {"name": "m"})
    assert status == 501 and "no champion lock for a sqlite backend store" in answer["message"], answer
    on_file = SimpleNamespace(engine=sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'mlflow.db'}"))
    assert guard.lock_kind(on_file) == "sqlite" and guard.move(on_file, {"name": "m"})[0] == 400

    class Answer(http.server.BaseHTTPRequestHandler):
        code, body = 501, b"{}"

        def do_POST(self):  # noqa: N802 - http.server's name
            self.send_response(Answer.code)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(Answer.body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        guard_403 = b'{"error_code": "PERMISSION_DENIED", "message": "' + guard.RULE.encode() + b': user bo may not"}'
        for i, (code, body, has) in enumerate(((501, b"{}", False), (400, b"{}", True), (404, b"{}", False),
                                               (403, b'{"message": "Permission denied"}', False),
                                               (403, guard_403, True))):
            Answer.code, Answer.body = code, body
            uri = f"http://127.0.0.1:{server.server_port}/{i}"  # a URI per answer: the probe is cached by URI
            assert lease._server_has_cas(SimpleNamespace(tracking_uri=uri), "m") is has, code
    finally:
        server.shutdown()
