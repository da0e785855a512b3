"""infra/ files parse, and agree with each other and with the code they launch."""

import re
from pathlib import Path

import pytest
import yaml

from components.config import STAGES, WORKLOADS

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


@pytest.mark.parametrize("rel", MANIFESTS)
def test_manifests_parse(rel):
    assert isinstance(_load(rel), dict)


def test_every_pipeline_image_is_the_dockerfile_tag():
    tag = _dockerfile_tag()
    for rel in MANIFESTS:
        ours = [i for i in _images(_load(rel)) if "trainyard" in i]
        assert ours and set(ours) == {tag}, f"{rel}: {ours} != {tag}"


def test_dockerfile_copies_what_exists_and_runs_the_pipeline(repo):
    text = (INFRA / "Dockerfile").read_text()
    for line in text.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (repo / src.rstrip("/")).exists(), f"Dockerfile copies missing {src}"
    assert 'CMD ["dvc", "repro"]' in text


def test_kuberay_manifests_are_ray_crds_with_our_env():
    rc, job = _load("kuberay/raycluster.yaml"), _load("kuberay/rayjob.yaml")
    assert (rc["apiVersion"], rc["kind"]) == ("ray.io/v1", "RayCluster")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["entrypoint"].split()[:2] == ["dvc", "repro"]
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
    assert "--app-name basic-auth" in cmd
    assert all(p.startswith("127.0.0.1:") for s in svc.values() for p in s.get("ports", []))


def test_dvc_stages_match_pipeline_entry_points(repo):
    dvc = yaml.safe_load((repo / "dvc.yaml").read_text())
    assert tuple(dvc["stages"]) == STAGES
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
    from components.runtime import FORWARDED_ENV

    job = _load("kuberay/rayjob.yaml")["spec"]["rayClusterSpec"]
    pod_env = {e["name"] for e in job["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
    launcher = {o.split()[1].split("=")[0] for o in _load("ray/cluster.yaml")["docker"]["run_options"]
                if o.startswith("-e ")}
    needed = {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "TRAINYARD_STORE"}
    assert needed <= set(FORWARDED_ENV) and needed <= pod_env and needed <= launcher


def test_cluster_ports_agree():
    """GCS 6379 and dashboard 8265 (where `ray job submit` goes) in the launcher config, the
    KubeRay pods and the README's job example."""
    head = " ".join(_load("ray/cluster.yaml")["head_start_ray_commands"])
    assert "--port=6379" in head and "--dashboard-port=8265" in head
    for rel in ("kuberay/raycluster.yaml", "kuberay/rayjob.yaml"):
        spec = _load(rel)["spec"]
        spec = spec.get("rayClusterSpec", spec)
        ports = {p["name"]: p["containerPort"]
                 for p in spec["headGroupSpec"]["template"]["spec"]["containers"][0].get("ports", [])}
        assert ports.get("gcs", 6379) == 6379 and ports.get("dashboard", 8265) == 8265, rel
    readme = (INFRA.parent / "README.md").read_text()
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
    cluster = _script("ray/local_cluster.py")
    monkeypatch.setattr(cluster.socket, "socket", _LowestFreePortSocket)
    monkeypatch.setattr(_LowestFreePortSocket, "bound", set())
    calls = []
    monkeypatch.setattr(cluster.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    monkeypatch.setattr(cluster, "_wait_nodes", lambda *a: None)
    monkeypatch.setattr(cluster, "cluster_pids", lambda d: [])
    cluster.start(3, 1, tmp_path / "cluster.json")
    ports = [int(cmd[i + 1]) for cmd in calls for i, a in enumerate(cmd) if a.endswith("-port")]
    assert len(calls) == 3 and len(ports) == 3 + 4 * 3
    assert len(set(ports)) == len(ports), f"a port is used twice: {sorted(ports)}"
