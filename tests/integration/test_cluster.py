"""The pipeline against shared services started for real on this machine: a two-node Ray
cluster (`ray start`, token auth) and a PostgreSQL-backed MLflow server with basic-auth logins."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.integration.conftest import (
    RAY_SCRIPT,
    REPO,
    make_project,
    project_env,
    run,
    run_bounded,
    tiny_params,
)

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
MLFLOW_SCRIPT = REPO / "infra/mlflow/local_server.py"
MODEL = tiny_params()["char_lm"]["register"]["model_name"]


def cluster_params() -> dict:
    """The tiny params with a 2-trial sweep: one trial per one-CPU node at once is what this
    file checks (the end-to-end tests count a 6-trial sweep and ASHA's stops)."""
    params = tiny_params()
    params["char_lm"]["tune"]["num_samples"] = 2
    return params


def _gone(pids: list[int]) -> bool:
    return not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory, request):
    """A head and one more node, one CPU each, stopped by PID at the end."""
    state = tmp_path_factory.mktemp("cluster") / "cluster.json"
    subprocess.run([sys.executable, str(RAY_SCRIPT), "start", "--nodes", "2", "--cpus", "1", "--state", str(state)],
                   check=True, env=project_env(), timeout=300)
    record = json.loads(state.read_text())
    failed_before = request.session.testsfailed
    yield record
    if request.session.testsfailed > failed_before:  # the nodes' logs go with their temp dir: keep them
        kept = state.parent / "ray-logs"
        for logs in Path(record["temp_dir"]).glob("n*/session_latest/logs"):
            shutil.copytree(logs, kept / logs.parents[1].name, ignore=shutil.ignore_patterns("*.sock"))
        print(f"# the Ray nodes' logs: {kept}")
    subprocess.run([sys.executable, str(RAY_SCRIPT), "stop", "--state", str(state)], check=True, env=project_env(),
                   timeout=120)
    assert _gone(record["pids"])


@pytest.fixture(scope="module")
def mlflow_auth(tmp_path_factory):
    """PostgreSQL + `mlflow server --app-name basic-auth`, as infra/mlflow/compose.yaml runs them."""
    state = tmp_path_factory.mktemp("mlflow") / "server.json"
    subprocess.run([sys.executable, str(MLFLOW_SCRIPT), "start", "--state", str(state)], check=True,
                   env=project_env(), timeout=300, stdout=subprocess.DEVNULL)
    record = json.loads(state.read_text())
    yield record
    subprocess.run([sys.executable, str(MLFLOW_SCRIPT), "stop", "--state", str(state)], check=True,
                   env=project_env(), timeout=120)
    assert _gone([record["server_pid"], record["postgres"]["pid"]])


@pytest.fixture(scope="module")
def reviewer(mlflow_auth) -> tuple[str, str]:
    """A user the admin creates: READ on everything (the server's default permission)."""
    from mlflow.server.auth.client import AuthServiceClient

    env = mlflow_auth["env"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_USERNAME", env["MLFLOW_TRACKING_USERNAME"])
        mp.setenv("MLFLOW_TRACKING_PASSWORD", env["MLFLOW_TRACKING_PASSWORD"])
        AuthServiceClient(mlflow_auth["uri"]).create_user("reviewer", "reviewer-pass-1")
    return "reviewer", "reviewer-pass-1"


@pytest.fixture(scope="module")
def cluster_project(two_nodes, mlflow_auth, tmp_path_factory):
    """One `dvc repro` to the registry against both services; (project, env, output)."""
    params = cluster_params()
    # 2 Ray Train workers, one per node (the tiny params train the char-LM on 1)
    params["char_lm"]["train"].update(num_workers=2, placement="spread")
    project = make_project(tmp_path_factory.mktemp("cluster-project"), params)
    env = {**project_env(), **two_nodes["env"], **mlflow_auth["env"]}
    # ~2 min here; the bound only keeps a hang from holding the cluster for the tests after it
    p = run_bounded(["dvc", "repro", "register@char_lm"], project, env, timeout=900,
                    report=lambda: _cluster_report(two_nodes["address"], env))
    out = p.stdout + p.stderr
    (project.parent / "repro.log").write_text(out)  # kept with the test's temp dir
    assert p.returncode == 0, p.stdout[-5000:] + p.stderr[-5000:]
    return project, env, out


def _cluster_report(address: str, env: dict[str, str]) -> str:
    """What holds the cluster now (nodes, free resources, placement groups, live actors): for
    the failure message of a command that waited too long."""
    code = textwrap.dedent("""
        import json, sys, ray
        from ray.util.state import list_actors
        ray.init(address=sys.argv[1], log_to_driver=False)
        print("nodes:", [(n["NodeID"][:8], n["Alive"], n["Resources"].get("CPU")) for n in ray.nodes()])
        print("total:", ray.cluster_resources(), "free:", ray.available_resources())
        for pg in ray.util.placement_group_table().values():
            print("pg:", pg["placement_group_id"][:8], pg["state"], pg["strategy"], pg["bundles"])
        for a in list_actors(filters=[("state", "!=", "DEAD")], detail=True, limit=1000,
                             raise_on_missing_output=False):
            print("actor:", a.class_name, a.state, (a.node_id or "")[:8], a.job_id, a.required_resources)
    """)
    try:
        p = subprocess.run([sys.executable, "-c", code, address], capture_output=True, text=True, env=env,
                           timeout=120)
        return "--- the cluster\n" + p.stdout + p.stderr[-2000:]
    except subprocess.TimeoutExpired:
        return "--- the cluster did not answer within 120 s"


def _alive_nodes(address: str, env: dict[str, str]) -> list[str]:
    """The cluster's live node IDs, asked from a fresh process."""
    code = ("import json, sys, ray; ray.init(address=sys.argv[1], log_to_driver=False); "
            "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))")
    p = subprocess.run([sys.executable, "-c", code, address], capture_output=True, text=True, env=env,
                       timeout=120, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def _rest(uri: str, path: str, user: str | None, password: str | None, **query) -> tuple[int, dict]:
    """GET one MLflow REST endpoint; (HTTP status, JSON body)."""
    req = urllib.request.Request(f"{uri}/api/2.0/mlflow/{path}?{urllib.parse.urlencode(query)}")
    if user:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 - loopback test server
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, {}


def test_repro_spreads_over_both_nodes_and_registers_on_the_postgres_server(cluster_project, two_nodes,
                                                                             mlflow_auth, reviewer):
    project, env, out = cluster_project
    assert "Started a local Ray instance" not in out  # it used the cluster

    # what the run records of itself: the sweep's trials (1-worker trials, in Tune's trial
    # processes, one CPU each: one per node at a time) and the train stage's 2 Ray Train
    # workers (placement "spread") each trained on both nodes
    nodes = set(_alive_nodes(two_nodes["address"], env))
    assert len(nodes) == 2
    trials = json.loads((project / "tune/char_lm/best_params.json").read_text())["trials"]
    assert {t["node_id"] for t in trials} == nodes, trials
    train = json.loads((project / "models/char_lm/train_run.json").read_text())
    assert len(train["worker_nodes"]) == 2 and set(train["worker_nodes"]) == nodes, train
    reg = json.loads((project / "registry/char_lm/registered.json").read_text())
    assert "champion" in reg["aliases"]

    # the registry, the runs and their metrics, through the REST API, as a reader
    uri, (user, password) = mlflow_auth["uri"], reviewer
    assert _rest(uri, "registered-models/alias", None, None, name=MODEL, alias="champion")[0] == 401
    status, body = _rest(uri, "registered-models/alias", user, password, name=MODEL, alias="champion")
    assert status == 200 and body["model_version"]["version"] == str(reg["version"])
    run_id = body["model_version"]["run_id"]
    status, body = _rest(uri, "runs/get", user, password, run_id=run_id)
    assert status == 200 and body["run"]["info"]["status"] == "FINISHED"
    status, body = _rest(uri, "metrics/get-history", user, password, run_id=run_id, metric_key="val_loss")
    steps = sorted(m["step"] for m in body["metrics"])
    assert status == 200 and steps == list(range(1, tiny_params()["char_lm"]["train"]["epochs"] + 1))
    # the backend store is the Postgres database, not a file
    assert mlflow_auth["postgres"]["port"] and not list(project.glob("mlflow.db"))



def test_two_clones_against_one_server_and_one_cluster_both_register_and_the_better_is_champion(
        two_nodes, mlflow_auth, tmp_path):
    """Two clones of the project, two people's `dvc repro` started together against one MLflow
    server (PostgreSQL, auth, the champion's compare-and-set) and one Ray cluster: both finish,
    both register, and the champion is the better of the two."""
    env = {**project_env(), **two_nodes["env"], **mlflow_auth["env"]}
    name = "char-lm-two-clones"
    clones = []
    for seed in (1, 2):
        params = cluster_params()
        params["char_lm"]["register"]["model_name"] = name
        params["char_lm"]["train"]["seed"] = seed
        clone = tmp_path / f"clone-{seed}"
        clone.mkdir()
        clones.append(make_project(clone, params))
    procs = [subprocess.Popen(["dvc", "repro", "register@char_lm"], cwd=c, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True) for c in clones]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=1500)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 9)
                p.wait()
    for c, p, out in zip(clones, procs, outs, strict=True):
        (c.parent / f"{c.name}.log").write_text(out)
        assert p.returncode == 0, f"{c.name}\n{out[-6000:]}\n{_cluster_report(two_nodes['address'], env)}"
        assert "Started a local Ray instance" not in out and "this project's Ray" not in out  # the cluster

    regs = [json.loads((c / "registry/char_lm/registered.json").read_text()) for c in clones]
    losses = [json.loads((c / "metrics/char_lm/eval.json").read_text())["val_loss"] for c in clones]
    assert losses[0] != losses[1] and {r["version"] for r in regs} == {"1", "2"}, (regs, losses)
    uri, admin = mlflow_auth["uri"], (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"])
    status, body = _rest(uri, "registered-models/alias", *admin, name=name, alias="champion")
    assert status == 200 and body["model_version"]["version"] == regs[losses.index(min(losses))]["version"], body


def test_a_wrong_password_fails_before_any_compute(cluster_project, mlflow_auth, tmp_path):
    project, env, _ = cluster_project
    p = run_bounded([sys.executable, "-m", "pipelines.train", "--workload", "char_lm",
                     "--data", "data/char_lm/normalized", "--model", str(tmp_path / "model.pt"),
                     "--metrics", str(tmp_path / "train.json"), "--plot", str(tmp_path / "curve.csv")],
                    project, {**env, "MLFLOW_TRACKING_PASSWORD": "not-the-password"}, timeout=300)
    assert p.returncode == 1
    assert "the server refused the login of user 'admin'" in p.stderr and mlflow_auth["uri"] in p.stderr
    assert "[train]" not in p.stdout and not list(tmp_path.iterdir())


def test_a_reader_cannot_register_a_model(cluster_project, mlflow_auth, reviewer, tmp_path):
    project, env, _ = cluster_project
    user, password = reviewer
    before = _rest(mlflow_auth["uri"], "registered-models/get", user, password, name=MODEL)[1]
    p = run_bounded([sys.executable, "-m", "pipelines.register", "--workload", "char_lm",
                     "--model", "models/char_lm/model.pt", "--eval", "metrics/char_lm/eval.json",
                     "--data", "data/char_lm/normalized",
                     "--out", str(tmp_path / "registered.json")],
                    project, {**env, "MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password},
                    timeout=300)
    assert p.returncode == 1, p.stdout[-3000:] + p.stderr[-3000:]
    assert "user 'reviewer' may not do this (PERMISSION_DENIED" in p.stderr
    assert not (tmp_path / "registered.json").exists()
    after = _rest(mlflow_auth["uri"], "registered-models/get", user, password, name=MODEL)[1]
    assert after == before  # nothing changed: no version, no alias, no lease left behind


def _send(uri: str, method: str, path: str, user: str, password: str, body: dict) -> tuple[int, dict]:
    """One MLflow REST call with a JSON body; (HTTP status, JSON answer)."""
    req = urllib.request.Request(f"{uri}/api/2.0/mlflow/{path}", data=json.dumps(body).encode(), method=method,
                                 headers={"Content-Type": "application/json", "Authorization": "Basic " +
                                          base64.b64encode(f"{user}:{password}".encode()).decode()})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 - loopback test server
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def test_only_a_promoter_moves_the_champion_on_the_server(cluster_project, mlflow_auth, reviewer):
    """The server's rule (components/tracking/champion_guard.py, `promoters = admin` in
    basic_auth.ini): a user who may manage the model may set `challenger` but not touch
    `champion` (set, delete, delete its version), by REST or by our CLI;
    the admin (a promoter) approves; a reader still lists."""
    from mlflow.server.auth.client import AuthServiceClient

    project, env, _ = cluster_project
    uri, admin = mlflow_auth["uri"], (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_USERNAME", admin[0])
        mp.setenv("MLFLOW_TRACKING_PASSWORD", admin[1])
        auth = AuthServiceClient(uri)
        auth.create_user("editor", "editor-pass-1")
        # MANAGE: basic auth alone would let this user move or delete any alias, version or model
        auth.grant_user_permission("editor", "registered_model", MODEL, "MANAGE")
    editor = ("editor", "editor-pass-1")
    champion = _rest(uri, "registered-models/alias", *admin, name=MODEL, alias="champion")[1]["model_version"]["version"]

    assert _send(uri, "POST", "registered-models/alias", *editor,
                 {"name": MODEL, "alias": "challenger", "version": champion})[0] == 200
    for method in ("POST", "DELETE"):
        status, answer = _send(uri, method, "registered-models/alias", *editor,
                               {"name": MODEL, "alias": "champion", "version": champion})
        assert status == 403 and answer["error_code"] == "PERMISSION_DENIED", (status, answer)
        assert "trainyard champion guard: user 'editor' may not" in answer["message"]
        assert "only promoters may (admin;" in answer["message"]
    status, answer = _send(uri, "DELETE", "model-versions/delete", *editor, {"name": MODEL, "version": champion})
    assert status == 403 and "which holds 'champion'" in answer["message"]

    cli = [sys.executable, "-m", "components.cli.registry"]
    as_editor = {**env, "MLFLOW_TRACKING_USERNAME": editor[0], "MLFLOW_TRACKING_PASSWORD": editor[1]}
    p = run_bounded([*cli, "approve", champion, "--reason", "looks fine to me"], project, as_editor, timeout=120)
    assert p.returncode == 1 and "trainyard champion guard: user 'editor'" in p.stderr, p.stderr[-3000:]
    tags = _rest(uri, "model-versions/get", *admin, name=MODEL, version=champion)[1]["model_version"].get("tags", [])
    assert "trainyard.verdict" not in {t["key"] for t in tags}  # refused: nothing recorded

    p = run_bounded([*cli, "approve", champion, "--reason", "read the samples; gain clears min_delta"], project, env,
                    timeout=120)
    assert p.returncode == 0 and f"v{champion}: approved by admin" in p.stdout, p.stderr[-3000:]
    p = run_bounded([*cli, "list"], project, {**env, "MLFLOW_TRACKING_USERNAME": reviewer[0],
                                              "MLFLOW_TRACKING_PASSWORD": reviewer[1]}, timeout=120)
    assert p.returncode == 0 and f"champion v{champion}" in p.stdout, p.stderr[-3000:]


def test_train_runs_as_a_ray_job_with_the_working_dir_shipped(two_nodes, tmp_path):
    """What a KubeRay RayJob does: the entry point runs on the cluster, the code travels as
    the job's working dir, paths and settings as arguments and runtime-env variables. (A sweep
    on this cluster: `cluster_project`; as a job it is the same shipping, minutes more here.)"""
    project = make_project(tmp_path, cluster_params())
    run(["dvc", "repro", "normalize@char_lm"], project)
    out, data = tmp_path / "job-out", project / "data/char_lm/normalized"
    env = {**project_env(), **two_nodes["env"], "RAY_ADDRESS": two_nodes["dashboard"]}
    runtime_env = {"env_vars": {"MLFLOW_TRACKING_URI": f"sqlite:///{project}/mlflow.db",
                                "TRAINYARD_STORE": str(project / ".trainyard")}}
    entries = {
        "train": f"python -m pipelines.train --workload char_lm --data {data} --model {out}/model.pt "
                 f"--metrics {out}/train.json --plot {out}/curve.csv",
    }
    for name, entry in entries.items():
        job = f"trainyard-{name}-{tmp_path.name}"

        def report(job: str = job) -> str:  # stop the job too: it outlives its `ray job submit`
            stop = subprocess.run(["ray", "job", "stop", job], env=env, capture_output=True, text=True, timeout=120)
            return _cluster_report(two_nodes["address"], {**env, **two_nodes["env"]}) + stop.stdout[-1000:]

        p = run_bounded(["ray", "job", "submit", "--submission-id", job, "--working-dir", ".", "--runtime-env-json",
                         json.dumps(runtime_env), "--", *entry.split()], project, env, timeout=600, report=report)
        assert p.returncode == 0, name + "\n" + p.stdout[-4000:] + p.stderr[-4000:]
        assert "succeeded" in (p.stdout + p.stderr).lower(), name
    metrics = json.loads((out / "train.json").read_text())
    assert metrics["epochs"] == tiny_params()["char_lm"]["train"]["epochs"] and (out / "model.pt").exists()


def _start_cluster(state: Path, nodes: int = 2) -> dict:
    subprocess.run([sys.executable, str(RAY_SCRIPT), "start", "--nodes", str(nodes), "--cpus", "1", "--state", str(state)],
                   check=True, env=project_env(), timeout=300, stdout=subprocess.DEVNULL)
    return json.loads(state.read_text())


def _stop_cluster(state: Path) -> None:
    subprocess.run([sys.executable, str(RAY_SCRIPT), "stop", "--state", str(state)], check=True, env=project_env(),
                   timeout=120, stdout=subprocess.DEVNULL)


def _head_pids(record: dict, node: str = "n0") -> list[int]:
    """The head node's processes (its GCS, raylet, dashboard, workers): all that name its temp
    dir (`node`: another node's, by its temp dir's name)."""
    head = str(Path(record["temp_dir"]) / node)
    pids = set()
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(head in a for a in (p.info["cmdline"] or [])):
                pids.add(p.pid)
                pids.update(c.pid for c in p.children(recursive=True))
        except psutil.Error:
            continue
    return sorted(pids)


@pytest.mark.faults
def test_a_lost_head_node_stops_train_in_one_line_and_the_next_repro_resumes_from_its_checkpoint(tmp_path):
    import os
    import signal
    import time

    from tests.integration.conftest import wait_for

    params = cluster_params()
    # 2 workers, one a node, long enough to lose the head after the first checkpoint
    params["char_lm"]["train"].update(num_workers=2, placement="spread", epochs=4, steps_per_epoch=400)
    project = make_project(tmp_path / "project", params)
    first = _start_cluster(tmp_path / "first.json")
    try:
        env = {**project_env(), **first["env"], "TRAINYARD_HEAD_LOST_S": "10"}
        dvc, store = _train_after_tune(project, env, tmp_path)
        try:
            # Ray Train's checkpoint list names it: the run resumes from it
            wait_for(lambda: _ray_list(store), 600, "the first checkpoint in Ray Train's list")
            assert not list(store.glob("run-*/epoch-0004")), "the run ended before the head was lost"
            lost_at = time.monotonic()
            for pid in _head_pids(first):  # the head node goes, as a lost machine or a restarted head pod
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            rc = dvc.wait(timeout=180)
            took = time.monotonic() - lost_at
        finally:
            if dvc.poll() is None:
                os.killpg(dvc.pid, signal.SIGKILL)
                dvc.wait(30)
    finally:
        _stop_cluster(tmp_path / "first.json")
    err = (tmp_path / "train.err").read_text()
    said = [line for line in err.splitlines() if "error:" in line]
    assert rc != 0 and took < 60, (rc, took, err[-3000:])
    assert len(said) == 1 and "head at" in said[0] and "dvc repro` resumes" in said[0], err[-3000:]
    assert not (project / "models/char_lm/model.pt").exists()

    # the cluster started again (a new head, a new address): the same repro goes on from the checkpoint
    second = _start_cluster(tmp_path / "second.json")
    try:
        run(["dvc", "repro", "train@char_lm"], project, env={**project_env(), **second["env"]})
    finally:
        _stop_cluster(tmp_path / "second.json")
    from components.training.checkpoints import load_state

    assert json.loads((project / "metrics/char_lm/train.json").read_text())["epochs"] == 4
    last = load_state(next(store.glob("run-*/epoch-0004")))
    assert [r["epoch"] for r in last["resumes"]] in ([1], [2], [3]), last["resumes"]  # not from scratch


def _node_dirs(record: dict) -> dict[str, str]:
    """Each live node's id -> the name of its temp dir (n0 is the head)."""
    code = ("import json, ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); "
            "print(json.dumps({n['NodeID']: n['ObjectStoreSocketName'] for n in ray.nodes() if n['Alive']}))")
    p = subprocess.run([sys.executable, "-c", code, record["address"]], capture_output=True, text=True, timeout=120,
                       env={**project_env(), **record["env"]}, check=True)
    root = Path(record["temp_dir"])
    return {nid: Path(sock).relative_to(root).parts[0] for nid, sock in json.loads(p.stdout.splitlines()[-1]).items()}


def _train_after_tune(project: Path, env: dict[str, str], tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """`dvc repro tune@char_lm`, then `dvc repro train@char_lm` started (its output in
    tmp_path/train.out and train.err); returns it and its Train runs' store folder."""
    run(["dvc", "repro", "tune@char_lm"], project, env=env)
    log_out, log_err = (tmp_path / "train.out").open("w"), (tmp_path / "train.err").open("w")
    dvc = subprocess.Popen(["dvc", "repro", "train@char_lm"], cwd=project, env=env, stdout=log_out,
                           stderr=log_err, start_new_session=True)
    return dvc, project / ".trainyard/char_lm/train"


def _ray_list(store: Path) -> list[str]:
    """The checkpoint names Ray Train's list holds for the run in `store` (latest last)."""
    for snap in store.glob("run-*/checkpoint_manager_snapshot.json"):
        with contextlib.suppress(ValueError, KeyError, TypeError):
            d = json.loads(snap.read_text())
            return [r["checkpoint_dir_name"] for r in d["checkpoint_results"]] + [
                d["latest_checkpoint_result"]["checkpoint_dir_name"]]
    return []


@pytest.mark.faults
def test_a_preemption_notice_checkpoints_mid_epoch_and_the_run_goes_on_on_the_nodes_left(tmp_path):
    """A node of a training run is drained as a cloud's preemption notice arrives (`ray drain-node
    --reason DRAIN_NODE_REASON_PREEMPTION` with a deadline), then goes: the loop writes a
    checkpoint within the grace period, Ray Train restarts the workers on the nodes left from
    it (not counted against `max_failures`, 0 here), and the run ends as an undisturbed one."""
    import os
    import signal
    import time

    from components.training.checkpoints import load_state
    from tests.integration.conftest import wait_for

    params = cluster_params()
    # 2 workers, one per node, on 3 nodes: the drained one's worker has somewhere to go; two
    # epochs after the notice: the run still trains at the deadline, however fast this machine
    params["char_lm"]["train"].update(num_workers=2, placement="spread", epochs=3, steps_per_epoch=1500,
                                      max_failures=0)
    project = make_project(tmp_path / "project", params)
    rec = _start_cluster(tmp_path / "cluster.json", nodes=3)
    try:
        env = {**project_env(), **rec["env"]}
        dvc, store = _train_after_tune(project, env, tmp_path)
        try:
            wait_for(lambda: "epoch-0001" in _ray_list(store), 600, "epoch 1's checkpoint in Ray Train's list")
            assert not list(store.glob("run-*/epoch-0002")), "the run ended before the notice"
            nodes = load_state(next(store.glob("run-*/epoch-0001")))["worker_nodes"]
            dirs = _node_dirs(rec)
            victim = next(n for n in nodes if dirs[n] != "n0")  # a worker's node, not the head
            deadline_s = 12
            subprocess.run(["ray", "drain-node", "--address", rec["address"], "--node-id", victim, "--reason",
                            "DRAIN_NODE_REASON_PREEMPTION", "--reason-message", "spot instance reclaimed",
                            "--deadline-remaining-seconds", str(deadline_s)],
                           check=True, env=env, capture_output=True, timeout=60)
            noticed = time.monotonic()
            wait_for(lambda: any("-step-" in n for n in _ray_list(store)), deadline_s,
                     "a checkpoint written on the notice, within the grace period")
            time.sleep(max(0.0, noticed + deadline_s - time.monotonic()))
            for pid in _head_pids(rec, dirs[victim]):  # the deadline passed: the node goes
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            rc = dvc.wait(timeout=600)
        finally:
            if dvc.poll() is None:
                os.killpg(dvc.pid, signal.SIGKILL)
                dvc.wait(30)
        out = (tmp_path / "train.out").read_text() + (tmp_path / "train.err").read_text()
        assert rc == 0, out[-4000:]
        said = [line for line in out.splitlines() if "[train] preemption notice" in line]
        assert len(said) == 1 and "written; training goes on" in said[0], out[-4000:]
        step = int(said[0].split("checkpoint at step ")[1].split(",")[0])
        assert step > 1500, said  # in epoch 2, past epoch 1's checkpoint
        # the restart at the deadline went on from the last checkpoint: the notice's (or epoch 2's, had
        # epoch 2 ended first), so the steps lost are at most those since the notice
        last = load_state(next(store.glob("run-*/epoch-0003")))
        assert len(last["resumes"]) == 1 and last["resumes"][0]["step"] >= step, (step, last["resumes"])
        assert last["resumes"][0]["step"] > step or f"resumed at step {step}, " in out, out[-4000:]
        assert victim not in last["worker_nodes"], (victim, last["worker_nodes"])

        # the same run undisturbed (a store of its own, the nodes left): the same metrics
        free = tmp_path / "undisturbed"
        free.mkdir()
        run([sys.executable, "-m", "pipelines.train", "--workload", "char_lm", "--data", "data/char_lm/normalized",
             "--tuned", "tune/char_lm/best_params.json", "--model", str(free / "model.pt"), "--metrics", str(free / "train.json"), "--plot", str(free / "curve.csv")],
            project, env={**env, "TRAINYARD_STORE": str(free / "store")})
    finally:
        _stop_cluster(tmp_path / "cluster.json")
    got = json.loads((project / "metrics/char_lm/train.json").read_text())
    want = json.loads((free / "train.json").read_text())
    assert got["epochs"] == want["epochs"] == 3
    assert abs(got["val_loss"] - want["val_loss"]) <= 1e-4, (got, want)
