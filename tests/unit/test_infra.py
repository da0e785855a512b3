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
    assert "--backend-store-uri postgresql://" in cmd and "--serve-artifacts" in cmd
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
        assert spec["do"]["params"] == [f"${{key}}.{stage}"] or stage == "tune"
