"""infra/ files parse, and agree with each other and with the code they launch."""

import re
from pathlib import Path

import pytest
import yaml

from components.params import STAGES
from components.workloads import names

WORKLOADS = names()

INFRA = Path(__file__).resolve().parents[2] / "infra"
MANIFESTS = ["ray/cluster.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml", "mlflow/compose.yaml"]


def _load(rel):
    return yaml.safe_load((INFRA / rel).read_text())


def _images(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "image" and isinstance(v, str):
                yield v
            else:
                yield from _images(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _images(v)


def _dockerfile_tag():
    m = re.search(r"-t (\S+) \.", (INFRA / "Dockerfile").read_text())
    assert m, "Dockerfile must document its build tag"
    return m.group(1)


def test_ray_cluster_config_passes_rays_own_schema():
    """The launcher config validates against the JSON schema `ray up` itself checks with."""
    import json

    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(_load("ray/cluster.yaml"), schema)


def _check_pod_template(where: str, template: dict) -> None:
    containers = template["spec"]["containers"]
    assert containers and all(c.get("name") and c.get("image") for c in containers), where
    for c in containers:
        for e in c.get("env", []):
            assert set(e) in ({"name", "value"}, {"name", "valueFrom"}), f"{where}: env {e}"
            assert "value" not in e or isinstance(e["value"], str), f"{where}: env values are strings: {e}"


@pytest.mark.parametrize("rel,kind", [("kuberay/raycluster.yaml", "RayCluster"), ("kuberay/rayjob.yaml", "RayJob")])
def test_kuberay_manifests_have_the_fields_kuberay_requires(rel, kind):
    """KubeRay's v1 CRDs: apiVersion/kind/name, a head group and worker groups whose pod
    templates name an image, rayStartParams as strings (the CRD types them so), integer replicas."""
    doc = _load(rel)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == kind and doc["metadata"]["name"]
    spec = doc["spec"]
    if kind == "RayJob":
        assert isinstance(spec["entrypoint"], str) and spec["entrypoint"].strip()
        spec = spec["rayClusterSpec"]
    head = spec["headGroupSpec"]
    _check_pod_template(f"{rel} head", head["template"])
    groups = spec["workerGroupSpecs"]
    assert groups and len({g["groupName"] for g in groups}) == len(groups)
    for g in [head, *groups]:
        assert all(isinstance(v, str) for v in g.get("rayStartParams", {}).values()), f"{rel}: {g.get('rayStartParams')}"
    for g in groups:
        _check_pod_template(f"{rel} {g['groupName']}", g["template"])
        for k in ("replicas", "minReplicas", "maxReplicas"):
            assert k not in g or (isinstance(g[k], int) and g[k] >= 0), f"{rel}: {g['groupName']}.{k}"


def test_compose_services_are_well_formed():
    """Every service has an image or a build, depends only on services that exist, and maps
    ports as strings (YAML would read 5000:5000 as a number in base 60)."""
    services = _load("mlflow/compose.yaml")["services"]
    assert {"postgres", "mlflow"} <= set(services)
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
        deps = svc.get("depends_on", {})
        assert set(deps) <= set(services), f"{name} depends on {set(deps) - set(services)}"
        assert all(isinstance(p, str) for p in svc.get("ports", [])), f"{name}: ports must be quoted strings"


def test_every_pipeline_image_is_the_dockerfile_tag():
    tag = _dockerfile_tag()
    for rel in MANIFESTS:
        ours = [i for i in _images(_load(rel)) if "trainyard" in i]
        assert ours and set(ours) == {tag}, f"{rel}: {ours} != {tag}"


def test_the_image_holds_what_dvc_repro_reads(tmp_path):
    """The Dockerfile's COPY and `RUN dvc ...` lines, replayed into a folder with no .git, give a
    tree where DVC opens the project and finds every stage's source dependencies:
    what the image's entry point (`dvc repro` between a pull and a push) needs."""
    import subprocess
    import sys

    from tests.docker_context import DOCKERFILE, build_context

    text = DOCKERFILE.read_text()
    assert 'ENTRYPOINT ["/app/infra/entrypoint.sh"]' in text
    build_context(tmp_path)
    assert (tmp_path / "infra/entrypoint.sh").stat().st_mode & 0o111  # executable in the image too
    # no .git: DVC must open the tree as the image's `dvc repro` will, and see every stage
    p = subprocess.run([str(Path(sys.executable).parent / "dvc"), "status"], cwd=tmp_path, capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(tmp_path)) as dvc:
        stages = list(dvc.index.stages)
        produced = {o.def_path for s in stages for o in s.outs}
        missing = sorted({f"{s.addressing}: {d.def_path}" for s in stages for d in s.deps
                          if not isinstance(d, ParamsDependency) and not any(
                              d.def_path == o or d.def_path.startswith(o + "/") for o in produced)
                          and not (tmp_path / d.def_path).exists()})
    from components.workloads import get

    assert len(stages) == len(STAGES) * len(WORKLOADS) + sum(len(get(w).extra_stages) for w in WORKLOADS)
    assert not missing, f"the image lacks what these stages read: {missing}"


def test_kuberay_manifests_are_ray_crds_with_our_env():
    rc, job = _load("kuberay/raycluster.yaml"), _load("kuberay/rayjob.yaml")
    assert (rc["apiVersion"], rc["kind"]) == ("ray.io/v1", "RayCluster")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    # the RayJob runs the image's entry point (pull, dvc repro, push) with a remote and a results volume
    assert job["spec"]["entrypoint"].split()[0] == "/app/infra/entrypoint.sh"
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in head["containers"][0]["env"]}
    mounts = {m["mountPath"] for m in head["containers"][0]["volumeMounts"]}
    assert env["DVC_REMOTE_URL"] and env["TRAINYARD_RESULTS"] in mounts
    import ray
    for spec in (rc["spec"], job["spec"]["rayClusterSpec"]):
        assert spec["rayVersion"] == ray.__version__
        env = {e["name"] for e in spec["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
        assert {"TRAINYARD_STORE", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= env


def test_ray_cluster_config_starts_head_and_workers():
    cfg = _load("ray/cluster.yaml")
    assert cfg["provider"]["type"] == "local"
    assert any("ray start --head" in c for c in cfg["head_start_ray_commands"])
    assert any("ray start --address" in c for c in cfg["worker_start_ray_commands"])
    assert any("TRAINYARD_STORE" in o for o in cfg["docker"]["run_options"])


def test_mlflow_compose_has_postgres_object_store_and_auth():
    svc = _load("mlflow/compose.yaml")["services"]
    assert {"postgres", "minio", "mlflow"} <= set(svc)
    cmd = svc["mlflow"]["command"]
    assert "--backend-store-uri postgresql+psycopg2://" in cmd and "--serve-artifacts" in cmd
    assert "--app-name trainyard-auth" in cmd  # basic auth with the protected champion
    assert all(p.startswith("127.0.0.1:") for s in svc.values() for p in s.get("ports", []))


def test_the_server_app_is_an_installed_mlflow_app_with_promoters_configured(repo):
    """`--app-name trainyard-auth` resolves through pyproject's entry point, to a factory, and
    the shared auth config names who may move `@champion`."""
    import configparser
    import tomllib
    from importlib.metadata import entry_points

    declared = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["entry-points"]["mlflow.app"]
    installed = {e.name: e.value for e in entry_points(group="mlflow.app")}
    assert installed["trainyard-auth"] == declared["trainyard-auth"] == "components.tracking.champion_guard:create_app"
    cfg = configparser.ConfigParser()
    cfg.read(repo / "infra/mlflow/basic_auth.ini")
    assert cfg.get("trainyard", "promoters").strip()


def test_dvc_stages_match_pipeline_entry_points(repo):
    from components.params import EXTRA_STAGES

    dvc = yaml.safe_load((repo / "dvc.yaml").read_text())
    assert set(dvc["stages"]) == set(STAGES) | set(EXTRA_STAGES)
    assert tuple(s for s in dvc["stages"] if s in STAGES) == STAGES
    for stage, spec in dvc["stages"].items():
        assert (repo / "pipelines" / f"{stage}.py").is_file()
        assert set(spec["foreach"]) <= set(WORKLOADS)
        assert f"python -m pipelines.{stage} --workload ${{key}}" in spec["do"]["cmd"]
        assert f"pipelines/{stage}.py" in spec["do"]["deps"]
        # each stage reads its own section; trial_params reads train's, tune and train prepare.source
        own = "train" if stage == "trial_params" else stage
        assert spec["do"]["params"][0] == f"${{key}}.{own}"


def _script(rel: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(rel.replace("/", "_").removesuffix(".py"), INFRA / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_local_mlflow_server_runs_what_compose_runs():
    """The server the tests start natively is the compose file's: same flags, auth config,
    backend driver, and the credential variables the pipeline and the cluster manifests use."""
    import configparser

    local = _script("mlflow/local_server.py")
    svc = _load("mlflow/compose.yaml")["services"]["mlflow"]
    cmd = svc["command"].split()
    for i, flag in enumerate(local.SERVER_FLAGS):
        if flag.startswith("--"):
            nxt = local.SERVER_FLAGS[i + 1] if i + 1 < len(local.SERVER_FLAGS) else None
            assert flag in cmd, f"compose lacks {flag}"
            if nxt and not nxt.startswith("--"):
                assert cmd[cmd.index(flag) + 1] == nxt
    backend = cmd[cmd.index("--backend-store-uri") + 1]
    assert backend.startswith(f"{local.BACKEND_SCHEME}://")
    mounted = {v.split(":")[0]: v.split(":")[1] for v in svc["volumes"] if v.startswith("./")}
    assert (INFRA / "mlflow" / "basic_auth.ini").resolve() == local.AUTH_INI.resolve()
    assert mounted["./basic_auth.ini"] == svc["environment"]["MLFLOW_AUTH_CONFIG_PATH"]
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" in svc["environment"]
    ini = configparser.ConfigParser()
    ini.read(local.AUTH_INI)
    assert ini["mlflow"]["default_permission"] == "READ"  # readers can review, not register
    auth_store = ini["mlflow"]["database_uri"].removeprefix("sqlite:///")
    assert any(auth_store.startswith(v.split(":")[1]) for v in svc["volumes"] if not v.startswith("./"))


def test_cluster_manifests_pass_the_variables_the_pipeline_forwards_to_workers():
    from components.cluster.connect import FORWARDED_ENV

    job = _load("kuberay/rayjob.yaml")["spec"]["rayClusterSpec"]
    pod_env = {e["name"] for e in job["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
    launcher = {o.split()[1].split("=")[0] for o in _load("ray/cluster.yaml")["docker"]["run_options"]
                if o.startswith("-e ")}
    needed = {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "TRAINYARD_STORE"}
    assert needed <= set(FORWARDED_ENV) and needed <= pod_env and needed <= launcher


def test_cluster_ports_agree():
    """GCS 6379 and dashboard 8265 (where `ray job submit` goes) in the launcher config, the
    KubeRay pods and the job example in docs/operations.md."""
    head = " ".join(_load("ray/cluster.yaml")["head_start_ray_commands"])
    assert "--port=6379" in head and "--dashboard-port=8265" in head
    for rel in ("kuberay/raycluster.yaml", "kuberay/rayjob.yaml"):
        spec = _load(rel)["spec"]
        spec = spec.get("rayClusterSpec", spec)
        ports = {p["name"]: p["containerPort"]
                 for p in spec["headGroupSpec"]["template"]["spec"]["containers"][0].get("ports", [])}
        assert ports.get("gcs", 6379) == 6379 and ports.get("dashboard", 8265) == 8265, rel
    readme = (INFRA.parent / "docs/operations.md").read_text()
    assert "ray job submit" in readme and ":8265" in readme


class _LowestFreePortSocket:
    """A socket whose bind(0) gets the lowest port not bound now: a kernel that offers a
    just-closed port again, as Linux sometimes does."""

    bound: set[int] = set()

    def __init__(self, *a):
        self.port = None

    def bind(self, addr):
        self.port = min(set(range(40000, 40100)) - self.bound)
        self.bound.add(self.port)

    def getsockname(self):
        return ("127.0.0.1", self.port)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bound.discard(self.port)


def test_local_cluster_gives_every_ray_port_of_every_node_its_own_number(monkeypatch, tmp_path):
    """`ray start` fails when two of its ports are equal (CI once got the dashboard port as the
    agent's gRPC port): each port of the head and of every node must be distinct."""
    from components.cluster import ray_nodes

    cluster = _script("ray/local_cluster.py")
    monkeypatch.setattr(ray_nodes.socket, "socket", _LowestFreePortSocket)
    monkeypatch.setattr(_LowestFreePortSocket, "bound", set())
    calls = []
    monkeypatch.setattr(cluster.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    monkeypatch.setattr(cluster, "_wait_nodes", lambda *a: None)
    monkeypatch.setattr(cluster, "cluster_pids", lambda d: [])
    cluster.start(3, 1, tmp_path / "cluster.json")
    ports = [int(cmd[i + 1]) for cmd in calls for i, a in enumerate(cmd) if a.endswith("-port")]
    assert len(calls) == 3 and len(ports) == 3 + 4 * 3
    assert len(set(ports)) == len(ports), f"a port is used twice: {sorted(ports)}"


def test_the_project_ray_idle_knob_reads_seconds_and_zero_keeps_a_private_ray(monkeypatch, tmp_path):
    """`TRAINYARD_RAY_IDLE_S`: a number of seconds (60 by default), a bad value named in one line,
    and 0 asks for no shared Ray at all (nothing started, nothing recorded)."""
    from components.cluster import local_ray

    monkeypatch.delenv(local_ray.IDLE_ENV, raising=False)
    assert local_ray.idle_s() == 60.0
    monkeypatch.setenv(local_ray.IDLE_ENV, "2.5")
    assert local_ray.idle_s() == 2.5
    monkeypatch.setenv(local_ray.IDLE_ENV, "soon")
    with pytest.raises(ValueError, match="TRAINYARD_RAY_IDLE_S='soon'"):
        local_ray.idle_s()
    monkeypatch.setenv(local_ray.IDLE_ENV, "0")
    assert local_ray.acquire("2.60.0", root=tmp_path) is None
    assert not (tmp_path / ".trainyard").exists()


def test_stopping_the_project_ray_stops_its_recorded_processes_and_forgets_it(tmp_path):
    """`local_ray stop`: the recorded Ray's processes (found by its temp dir) and its watchdog are
    stopped by PID, the record and token removed; with no record it says so and does nothing."""
    import json
    import subprocess
    import sys

    from components.cluster import local_ray, ray_nodes

    assert local_ray.stop(tmp_path) is False
    temp_dir = tmp_path / "ray-tmp"
    temp_dir.mkdir()
    # a stand-in for a Ray process: it carries the temp dir marker every process of our Ray inherits
    env = {"TRAINYARD_RAY_TEMP_DIR": str(temp_dir), "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    try:
        folder = local_ray.state_dir(tmp_path)
        folder.mkdir(parents=True)
        (folder / "state.json").write_text(json.dumps({"temp_dir": str(temp_dir), "address": "127.0.0.1:1"}))
        (folder / "token").write_text("x")
        assert proc.pid in ray_nodes.cluster_pids(str(temp_dir))
        assert local_ray.stop(tmp_path) is True
        assert proc.wait(30) is not None
        assert not (folder / "state.json").exists() and not (folder / "token").exists() and not temp_dir.exists()
    finally:
        proc.kill()
