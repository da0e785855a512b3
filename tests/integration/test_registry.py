"""The champion / challenger rule and the review commands, on a real MLflow (SQLite) store."""

from __future__ import annotations

import json
import threading

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
_LOGGING = threading.Lock()


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


def _register(c, exp, tmp_path, seed, value, val_md5="val-a", rescored=None, floor=None, min_delta=0.0,
              require_approval=False, lineage=None, name=NAME):
    from components.data.parquet import file_sha256

    path = _model(tmp_path, seed)
    run_id = runs.start_run(c, exp, f"train/{seed}", f"train-{seed}")

    def log_model():
        # one at a time in this process: CPython 3.11's parser is not thread-safe (mlflow parses
        # code while logging: "AST constructor recursion depth mismatch"); the decisions still race
        with _LOGGING, mlflow.start_run(run_id=run_id):
            return log_pyfunc(path).model_uri

    def rescore(version):
        rescored.append(str(version.version))
        return 1.0

    return registry.register(c, name=name, model_sha256=file_sha256(path), log_model=log_model, run_id=run_id,
                             metric="val_loss", value=value, mode="min", val_data_md5=val_md5,
                             lineage=lineage or {"trainyard.arch": "lstm"}, rescore=rescore, floor=floor,
                             min_delta=min_delta, require_approval=require_approval)


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
    """Both read "no champion yet" before either writes one: without the store's lock, the one
    that writes last wins, whatever its score. Here the worse one writes last. A barrier holds
    each registration after its champion read until the other has read too (or 2 s, which is
    what happens under the lock: the other waits for the lock, not for the barrier; without it
    both read within milliseconds)."""
    import contextlib
    import threading
    import time

    from components.tracking import lease

    c, exp = store
    real = lease.Gate.state
    both_read = threading.Barrier(2)
    waited: set[str] = set()

    def champion_read_then_pause(self):
        got = real(self)
        me = threading.current_thread().name
        if me not in waited:  # the decision's first read
            waited.add(me)
            with contextlib.suppress(threading.BrokenBarrierError):
                both_read.wait(timeout=2)
            if me == "worse":
                time.sleep(1.0)  # a slow writer: its alias write lands after the better one's
        return got

    monkeypatch.setattr(lease.Gate, "state", champion_read_then_pause)
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


def _evaluated(c, exp, tmp_path, seed, value, **kw):
    """A version registered as the pipeline does it, with what evaluate logs on its run: the eval_
    numbers, eval.json and samples.txt (what `review` reads)."""
    lineage = {"trainyard.arch": "lstm", "trainyard.git_commit": f"{seed:040d}",
               "trainyard.params": json.dumps({"lr": 0.01 * seed, "bptt": 64}),
               "trainyard.data.data/x/val.parquet": f"md5-{seed}",
               registry.ROWS: json.dumps({"data/x/val.parquet": 100 * seed})}
    out = _register(c, exp, tmp_path, seed, value, lineage=lineage, **kw)
    run_id = c.get_model_version(NAME, out["version"]).run_id
    c.set_model_version_tag(NAME, out["version"], "trainyard.train_run_id", run_id)
    for k, v in {"val_loss": value, "test_loss": value + 0.01, "baseline_bigram_val_loss": 2.4}.items():
        c.log_metric(run_id, f"eval_{k}", v)
    c.log_metric(run_id, "train_s", 12.5 * seed)
    c.log_dict(run_id, {"val_loss": value}, "evaluation/eval.json")
    c.log_text(run_id, f"ROMEO: sample of model {seed}\n", "evaluation/samples.txt")
    return out


def test_with_require_approval_only_an_approval_crowns_and_review_shows_both_sides(store, tmp_path):
    from components.tracking import review

    c, exp = store
    v1 = _evaluated(c, exp, tmp_path, 1, 1.60)["version"]
    held = _evaluated(c, exp, tmp_path, 2, 1.50, require_approval=True)
    assert held["aliases"] == ["challenger"] and held["champion_version"] == v1  # the gate would crown; it waits
    assert "awaiting approval" in held["decision"] and json.loads(held["tags"][registry.GATE])["crown"] is True
    new, champ = review.gather(c, NAME, None)  # the newest version without a verdict
    assert (new.version, champ.version) == (held["version"], v1)
    text = review.render(NAME, new, champ, metric="val_loss", mode="min", min_delta=0.05)
    assert "1.5000 against 1.6000: gain +0.1000; register.min_delta 0.05: **clears**" in text
    assert "automatic gate at register: would crown" in text and "verdict: none yet" in text
    assert "| val_loss | 1.5000 | 1.6000 | -0.1000 |" in text and "| training seconds | 25.0000 | 12.5000 |" in text
    assert "md5 md5-2, 200 rows | md5 md5-1, 100 rows" in text and "`lr`: 0.01 -> 0.02" in text
    assert "ROMEO: sample of model 2" in text and "ROMEO: sample of model 1" in text
    out = review.publish(c, NAME, new, text, tmp_path / "reviews" / "v2.md")
    assert out.read_text() == text == c.get_model_version(NAME, new.version).description
    assert "review/v2.md" in [a.path for a in c.list_artifacts(c.get_model_version(NAME, "2").run_id, "review")]

    with pytest.raises(ValueError, match="needs a reason"):
        registry.approve(c, NAME, held["version"], "  ")
    approved = registry.approve(c, NAME, held["version"], "samples read better; gain clears min_delta", who="ana")
    assert approved["aliases"] == ["challenger", "champion"]
    assert registry.verdict(approved["tags"]) | {"at": "-"} == {
        "verdict": "approved", "who": "ana", "why": "samples read better; gain clears min_delta", "at": "-"}
    assert approved["tags"]["trainyard.promoted_by"] == "ana"
    new, champ = review.gather(c, NAME, held["version"])  # a champion under review: beside the one it replaced
    assert champ.version == v1 and "the champion (crowned by ana), against v1, the champion it replaced" in review.render(
        NAME, new, champ, metric="val_loss", mode="min", min_delta=0.0)

    worse = _evaluated(c, exp, tmp_path, 3, 1.70, require_approval=True)
    assert "champion v2 holds" in worse["decision"] and worse["champion_version"] == held["version"]
    with pytest.raises(ValueError, match="is the champion"):
        registry.reject(c, NAME, held["version"], "no")
    registry.reject(c, NAME, worse["version"], "worse on val", who="bo")
    assert registry.awaiting(c, NAME) == v1  # the gate crowned it once; nobody has said yes or no to it
    registry.reject(c, NAME, v1, "superseded by v2", who="bo")
    assert registry.awaiting(c, NAME) is None
    with pytest.raises(ValueError, match="no version awaits a verdict"):
        review.gather(c, NAME, None)


def _deploy_hook():
    import importlib.util

    from tests.integration.conftest import REPO

    spec = importlib.util.spec_from_file_location("deploy_hook", REPO / "infra/mlflow/deploy_hook.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.cluster  # a real server and a receiver, services of their own
def test_a_champion_change_reaches_a_signed_webhook_that_deploys_it(tmp_path, monkeypatch):
    """README's commands: the receiver of infra/mlflow/deploy_hook.py, `registry hook` on a real
    server; the server signs each alias event, the receiver checks it, deploys on `champion`
    only, and refuses a forgery."""
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    from tests.integration.conftest import (
        REPO,
        MlflowServer,
        free_port,
        project_env,
        run_bounded,
        wait_for,
    )

    hook, secret = _deploy_hook(), "a-secret-only-the-test-knows"
    log, deployed, port = tmp_path / "deliveries.jsonl", tmp_path / "deployed.txt", free_port()
    env = project_env() | {"HOOK_SECRET": secret}
    receiver = subprocess.Popen(
        [sys.executable, str(REPO / "infra/mlflow/deploy_hook.py"), "--port", str(port), "--secret-env", "HOOK_SECRET",
         "--log", str(log), "--run", f'echo "$MODEL_NAME $MODEL_VERSION $MODEL_URI" >> {deployed}'],
        env=env, stdout=subprocess.PIPE, text=True, start_new_session=True)
    # loopback is a private address: the server must be told it may call it (and over http)
    server = MlflowServer(tmp_path / "server", env={"MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
                                                    "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true"})
    try:
        assert "listening on" in receiver.stdout.readline()
        server.start()
        env["MLFLOW_TRACKING_URI"] = server.uri
        p = run_bounded([sys.executable, "-m", "components.cli.registry", "--name", NAME, "hook",
                         f"http://127.0.0.1:{port}/", "--secret-env", "HOOK_SECRET"], REPO, env, timeout=120)
        assert p.returncode == 0 and "hears alias changes of" in p.stdout, p.stderr[-3000:]
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
        c = connect(tracking_uri()).client
        v1 = _register(c, runs.experiment_id(c, "char_lm"), tmp_path, 1, 2.0)  # challenger, then champion
        assert v1["aliases"] == ["challenger", "champion"]
        want = [NAME, v1["version"], f"models:/{NAME}/{v1['version']}"]
        wait_for(lambda: deployed.exists() and deployed.read_text().strip(), 60, "the deployment the webhook runs")
        assert deployed.read_text().split() == want
        records = wait_for(lambda: len(log.read_text().splitlines()) >= 2 and log.read_text().splitlines(), 30,
                           "both alias deliveries")
        seen = sorted((r["data"]["alias"], r["refused"], r["deploy"]) for r in map(json.loads, records))
        assert seen == [("challenger", None, False), ("champion", None, True)]

        body = json.dumps({"entity": "model_version_alias", "action": "created",
                           "data": {"name": NAME, "alias": "champion", "version": "9"}}).encode()
        stamp = str(int(time.time()))
        forged = urllib.request.Request(f"http://127.0.0.1:{port}/", data=body, method="POST", headers={
            "X-MLflow-Delivery-Id": "x", "X-MLflow-Timestamp": stamp,
            "X-MLflow-Signature": hook.signature("not-the-secret", "x", stamp, body)})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(forged, timeout=10)  # noqa: S310 - loopback
        assert err.value.code == 401 and err.value.read() == b"bad signature"
        assert deployed.read_text().split() == want  # nothing deployed for it
    finally:
        server.kill()
        receiver.kill()
        receiver.wait(10)


@pytest.fixture(scope="module")
def cas_server(tmp_path_factory):
    """infra/'s server: PostgreSQL + `mlflow server --app-name trainyard-auth` with 2 workers (the
    compare-and-set must hold across them); its environment (URI, admin login, a promoter)."""
    import subprocess
    import sys

    from tests.integration.conftest import REPO, project_env

    state = tmp_path_factory.mktemp("cas-server") / "server.json"
    script = REPO / "infra/mlflow/local_server.py"
    subprocess.run([sys.executable, str(script), "start", "--state", str(state), "--workers", "2"], check=True,
                   env=project_env(), timeout=300, stdout=subprocess.DEVNULL)
    try:
        yield json.loads(state.read_text())["env"]
    finally:
        subprocess.run([sys.executable, str(script), "stop", "--state", str(state)], check=True, env=project_env(),
                       timeout=120)


def _pause_after_champion_reads(monkeypatch, pause_s: float = 0.05) -> None:
    """Every read of the champion (the compare of a compare-and-set) pauses: the window a rival writes in."""
    import time

    from components.tracking import lease

    real = lease.Gate.state

    def read_then_pause(self):
        got = real(self)
        time.sleep(pause_s)
        return got

    monkeypatch.setattr(lease.Gate, "state", read_then_pause)


@pytest.mark.faults
@pytest.mark.parametrize("where", ["sqlite", pytest.param("server", marks=pytest.mark.cluster)])
def test_eight_registrations_and_approvals_at_once_end_with_one_champion_the_best(where, tmp_path, monkeypatch,
                                                                                   request):
    """5 rounds of 8 registrations of one model at once, scores shuffled, each one pausing after
    it read the champion (the window a rival writes in); then 8 approvals at once. Every round
    ends with every version there once, exactly one champion, the best; and every approval in
    the champion's history (a read-modify-write of a tag: lost without the compare-and-set).
    Against a local SQLite store (the file lock) and against infra/'s server (its compare-and-set
    endpoint, PostgreSQL's advisory lock, 2 server workers)."""
    import contextlib
    import random
    import threading

    from components.tracking import lease

    monkeypatch.chdir(tmp_path)
    if where == "server":
        for k, v in request.getfixturevalue("cas_server").items():
            monkeypatch.setenv(k, v)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    c = connect(tracking_uri()).client
    exp = runs.experiment_id(c, "char_lm")
    kinds = set()
    real_lock = lease.champion_lock

    @contextlib.contextmanager
    def lock_seen(*a, **kw):
        with real_lock(*a, **kw) as gate:
            kinds.add(gate.kind)
            yield gate

    monkeypatch.setattr(registry, "champion_lock", lock_seen)
    _pause_after_champion_reads(monkeypatch)
    rng = random.Random(0)
    for r in range(5):
        name = f"{NAME}-load-{where}-{r}"
        values = [1.0 + 0.1 * k for k in range(8)]
        rng.shuffle(values)
        start, errors, out = threading.Barrier(8), [], {}

        def go(k: int, value: float, r=r, name=name, start=start, errors=errors, out=out) -> None:
            try:
                start.wait(timeout=60)
                out[k] = _register(connect(tracking_uri()).client, exp, tmp_path, 100 * r + k, value, name=name)
            except Exception as err:  # handed to the test thread
                errors.append(err)

        threads = [threading.Thread(target=go, args=(k, v)) for k, v in enumerate(values)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        assert not errors, errors
        versions = c.search_model_versions(f"name = '{name}'")
        assert len(versions) == 8 and len({v.tags[registry.MODEL_SHA] for v in versions}) == 8
        best = min(range(8), key=lambda k: values[k])  # an alias names one version: one champion, is it the best?
        assert registry.alias_version(c, name, registry.CHAMPION) == out[best]["version"], (r, values, out)
        # 8 approvals at once, each of another version: every one lands in the history
        start2, errors2 = threading.Barrier(8), []

        def approve(v: str, name=name, start2=start2, errors2=errors2) -> None:
            try:
                start2.wait(timeout=60)
                registry.approve(connect(tracking_uri()).client, name, v, "load", who="t")
            except Exception as err:
                errors2.append(err)

        ts = [threading.Thread(target=approve, args=(str(v.version),)) for v in versions]
        for t in ts:
            t.start()
        for t in ts:
            t.join(600)
        assert not errors2, errors2
        hist = registry._history(c, name)  # noqa: SLF001 - the tag every approval appends to
        assert hist[-1] == registry.alias_version(c, name, registry.CHAMPION)
        assert set(hist) >= {str(v.version) for v in versions}, (r, hist)
    assert kinds == {"file lock" if where == "sqlite" else "compare-and-set"}
