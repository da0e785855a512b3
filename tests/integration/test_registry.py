"""The champion / challenger rule and the review commands, on a real MLflow (SQLite) store."""

from __future__ import annotations

import mlflow
import pytest
import torch

from components.tracking import registry, runs
from components.tracking.server import tracking_uri
from components.tracking.session import connect
from components.workloads.char_lm.data import Vocab
from components.workloads.char_lm.model import CharLM, publish_model
from components.workloads.char_lm.pyfunc import log_model as log_pyfunc

pytestmark = pytest.mark.slow
NAME = "char-lm-test"


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    c = connect(tracking_uri()).client
    return c, runs.experiment_id(c, "char_lm")


def _model(tmp_path, seed: int):
    torch.manual_seed(seed)
    vocab = Vocab.build("abcdefgh \n")
    m = CharLM(len(vocab), n_fac=4, n_hidden=8)
    path = tmp_path / f"model-{seed}.pt"
    publish_model(path, {"model": m.state_dict()}, vocab,
                  {"vocab_size": len(vocab), "arch": "lstm", "n_fac": 4, "n_hidden": 8, "n_layers": 1, "dropout": 0.0})
    return path


def _register(c, exp, tmp_path, seed, value, val_md5="val-a", rescored=None, floor=None, min_delta=0.0):
    from components.data.parquet import file_sha256

    path = _model(tmp_path, seed)
    run_id = runs.start_run(c, exp, f"train/{seed}", f"train-{seed}")

    def log_model():
        with mlflow.start_run(run_id=run_id):
            return log_pyfunc(path).model_uri

    def rescore(version):
        rescored.append(str(version.version))
        return 1.0

    return registry.register(c, name=NAME, model_sha256=file_sha256(path), log_model=log_model, run_id=run_id,
                             metric="val_loss", value=value, mode="min", val_data_md5=val_md5,
                             lineage={"trainyard.arch": "lstm"}, rescore=rescore, floor=floor, min_delta=min_delta)


def test_a_model_that_does_not_beat_the_baseline_is_never_crowned(store, tmp_path):
    c, exp = store
    weak = _register(c, exp, tmp_path, 1, 4.87, floor=("bigram", 4.32))
    assert weak["aliases"] == ["challenger"] and weak["champion_version"] is None  # not even as the first
    assert "does not beat the bigram baseline (4.3200)" in weak["decision"]
    assert weak["tags"]["trainyard.beats_baseline"] == "false" and weak["tags"]["trainyard.baseline"] == "bigram=4.3200"
    good = _register(c, exp, tmp_path, 2, 4.0, floor=("bigram", 4.32))
    assert good["aliases"] == ["challenger", "champion"] and good["tags"]["trainyard.beats_baseline"] == "true"
    # a person can still crown the weak one
    assert registry.promote(c, NAME, weak["version"], "read its samples")["aliases"] == ["champion"]


def test_champion_moves_only_for_a_better_model(store, tmp_path):
    c, exp = store
    calls: list = []
    first = _register(c, exp, tmp_path, 1, 2.0, rescored=calls)
    assert first["aliases"] == ["challenger", "champion"] and first["decision"].startswith("champion")
    worse = _register(c, exp, tmp_path, 2, 2.5, rescored=calls)
    assert worse["version"] != first["version"] and worse["aliases"] == ["challenger"]
    assert worse["champion_version"] == first["version"]
    better = _register(c, exp, tmp_path, 3, 1.5, rescored=calls)
    assert better["aliases"] == ["challenger", "champion"]
    assert calls == []  # same val data: recorded metrics compared, nothing re-scored
    # Registering the same model file again creates no version and changes nothing.
    again = _register(c, exp, tmp_path, 3, 1.5, rescored=calls)
    assert again["version"] == better["version"] and again["decision"] == "already champion"
    assert len(c.search_model_versions(f"name = '{NAME}'")) == 3
    # A champion measured on other val data is re-scored on ours before comparing: re-scored
    # at 1.0 it holds against 1.2, though its recorded 1.5 (other data) would have lost.
    other = _register(c, exp, tmp_path, 4, 1.2, val_md5="val-b", rescored=calls)
    assert calls == [better["version"]]
    assert other["aliases"] == ["challenger"] and "1.0000" in other["decision"]


def test_the_champion_moves_only_for_an_improvement_of_at_least_min_delta(store, tmp_path):
    c, exp = store
    first = _register(c, exp, tmp_path, 1, 2.0)
    slight = _register(c, exp, tmp_path, 2, 1.995, min_delta=0.01)  # better, but by 0.005: noise
    assert slight["aliases"] == ["challenger"] and slight["champion_version"] == first["version"]
    assert "better by 0.0050, under register.min_delta 0.01" in slight["decision"]
    clear = _register(c, exp, tmp_path, 3, 1.98, min_delta=0.01)
    assert clear["aliases"] == ["challenger", "champion"]
    assert registry.better(1.0, 1.01, "min", 0.01) and not registry.better(0.995, 0.99, "max", 0.01)


def test_an_archived_version_loses_its_aliases_and_is_skipped_by_rollback(store, tmp_path):
    c, exp = store
    v1, v2, v3 = (_register(c, exp, tmp_path, s, 3.0 - s)["version"] for s in (1, 2, 3))
    assert registry.alias_version(c, NAME, "champion") == v3
    with pytest.raises(ValueError, match="is the champion"):
        registry.archive(c, NAME, v3, "bad data")
    registry.promote(c, NAME, v2, "check")
    registry.promote(c, NAME, v3, "check")
    out = registry.archive(c, NAME, v2, "trained on the corpus with the bad encoding", who="ana")
    assert out["aliases"] == [] and '"who": "ana"' in out["tags"]["trainyard.archived"]
    assert registry.rollback(c, NAME, "v3 regressed")["version"] == v1  # v2 is skipped
    with pytest.raises(ValueError, match="archived"):
        registry.promote(c, NAME, v2, "again")


def test_promote_and_rollback_record_who_and_why(store, tmp_path):
    c, exp = store
    v1 = _register(c, exp, tmp_path, 1, 2.0)["version"]
    v2 = _register(c, exp, tmp_path, 2, 1.0)["version"]
    assert registry.alias_version(c, NAME, "champion") == v2
    back = registry.rollback(c, NAME, "v2 samples regressed", who="ana")
    assert back["version"] == v1 and "champion" in back["aliases"]
    assert back["tags"]["trainyard.rolled_back_by"] == "ana"
    assert back["tags"]["trainyard.rolled_back_reason"] == "v2 samples regressed"
    with pytest.raises(ValueError, match="no earlier champion"):
        registry.rollback(c, NAME, "again")
    up = registry.promote(c, NAME, v2, "fixed by hand", who="bo")
    assert "champion" in up["aliases"] and up["tags"]["trainyard.promoted_by"] == "bo"
    listed = registry.list_versions(c, NAME)
    assert [v["version"] for v in listed] == [v2, v1]


def test_registered_pyfunc_generates_from_prompts(store, tmp_path):
    c, exp = store
    _register(c, exp, tmp_path, 1, 2.0)
    import pandas as pd

    m = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    out = m.predict(pd.DataFrame({"prompt": ["abc", "h"], "n_chars": [5, 3], "seed": [1, 1]}))
    assert [len(t) for t in out] == [8, 4] and out[0].startswith("abc")
    assert m.predict(pd.DataFrame({"prompt": ["abc"], "n_chars": [5], "seed": [1]}))[0] == out[0]


def test_two_registrations_deciding_at_once_crown_the_better(store, tmp_path, monkeypatch):
    """Both read "no champion yet" before either writes one: without the lease, the one that
    writes last wins, whatever its score. Here the worse one writes last. A barrier holds each
    registration after its champion read until the other has read too (or 5 s, which is what
    happens under the lease: the other waits for the lease, not for the barrier)."""
    import contextlib
    import threading
    import time

    c, exp = store
    real = registry.alias_version
    both_read = threading.Barrier(2)
    waited: set[str] = set()

    def champion_read_then_pause(client, name, alias):
        got = real(client, name, alias)
        me = threading.current_thread().name
        if alias == registry.CHAMPION and me not in waited:  # the decision's read, not describe()'s
            waited.add(me)
            with contextlib.suppress(threading.BrokenBarrierError):
                both_read.wait(timeout=5)
            if me == "worse":
                time.sleep(1.0)  # a slow writer: its alias write lands after the better one's
        return got

    monkeypatch.setattr(registry, "alias_version", champion_read_then_pause)
    out, errors = {}, []

    def go(seed: int, value: float) -> None:
        try:
            out[seed] = _register(connect(tracking_uri()).client, exp, tmp_path, seed, value)
        except Exception as err:  # handed to the test thread
            errors.append(err)

    threads = [threading.Thread(target=go, args=(1, 1.5), name="better"),
               threading.Thread(target=go, args=(2, 2.5), name="worse")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert {out[1]["version"], out[2]["version"]} == {"1", "2"}
    assert registry.alias_version(c, NAME, registry.CHAMPION) == out[1]["version"]  # the lower val_loss
    assert "trainyard.lease" not in c.get_registered_model(NAME).tags
