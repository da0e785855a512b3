"""The image's entry point, run in the tree the Dockerfile builds (no Docker here): the first
run reproduces and pushes to a DVC remote; a second container, started fresh from the same
image, pulls those outputs and reruns nothing; a params change reruns only what it touches."""

from __future__ import annotations

import pytest
import yaml

from tests.docker_context import build_context
from tests.integration.conftest import project_env, run, tiny_params

pytestmark = [pytest.mark.slow, pytest.mark.container]
STAGES = ["normalize@image_classifier"]  # prepare + normalize: the data path, seconds, no Ray


def _image(tmp_path, name: str, params: dict) -> tuple:
    ctx = build_context(tmp_path / name)
    (ctx / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))  # as a job would mount it
    return ctx


def test_the_entrypoint_pulls_reproduces_and_pushes(tmp_path):
    remote, results = tmp_path / "remote", tmp_path / "results"
    env = {**project_env(), "DVC_REMOTE_URL": str(remote), "TRAINYARD_RESULTS": str(results),
           "TRAINYARD_STORE": str(tmp_path / "store")}
    params = tiny_params()
    first = run(["infra/entrypoint.sh", *STAGES], _image(tmp_path, "one", params), env=env, timeout=600)
    assert "Running stage 'normalize@image_classifier'" in first.stdout
    assert any(remote.rglob("*")) and (results / "dvc.lock").is_file()
    lock = yaml.safe_load((results / "dvc.lock").read_text())
    assert "normalize@image_classifier" in lock["stages"]

    # a fresh container: its tree has no outputs; the entry point pulls them and skips every stage
    two = _image(tmp_path, "two", params)
    again = run(["infra/entrypoint.sh", *STAGES], two, env=env, timeout=600)
    assert "restored dvc.lock" in again.stdout and "Running stage" not in again.stdout, again.stdout[-3000:]
    assert (two / "data/image_classifier/normalized/train/part-00000.parquet").is_file()

    # a normalize knob changed: prepare's output is pulled, normalize alone reruns and is pushed
    params["image_classifier"]["normalize"]["batch_mb"] = 8
    three = run(["infra/entrypoint.sh", *STAGES], _image(tmp_path, "three", params), env=env, timeout=600)
    ran = [ln for ln in three.stdout.splitlines() if ln.startswith("Running stage")]
    assert ran == ["Running stage 'normalize@image_classifier':"], three.stdout[-3000:]
