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
