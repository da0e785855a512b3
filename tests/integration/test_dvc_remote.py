"""`dvc push` / `dvc pull` through a real DVC remote: a second clone gets every output and
`dvc repro` there has nothing to do."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.integration.conftest import run

pytestmark = pytest.mark.slow


def test_push_then_pull_in_a_clone_skips_every_stage(tiny_project, tmp_path):
    # a copy of the shared project after its `dvc repro` (committing there would change the
    # commit its registered model records)
    origin, remote = tmp_path / "origin", tmp_path / "remote"
    shutil.copytree(tiny_project, origin, symlinks=True, ignore=shutil.ignore_patterns(".trainyard", "mlartifacts"))
    # the committed default remote is a folder beside the repository; point both copies here
    run(["dvc", "remote", "modify", "--local", "local", "url", str(remote)], origin)
    run(["git", "add", "-A"], origin)  # dvc.lock, metrics (git-tracked, not cached), .gitignores
    run(["git", "-c", "user.email=ci@example.invalid", "-c", "user.name=ci", "commit", "-q", "-m", "results"],
        origin)
    pushed = run(["dvc", "push"], origin)
    assert remote.is_dir() and any(remote.rglob("*")), pushed.stdout

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(origin), str(clone)], check=True)
    assert not (clone / "models").exists()
    run(["dvc", "remote", "modify", "--local", "local", "url", str(remote)], clone)
    run(["dvc", "pull"], clone)
    assert (clone / "models/char_lm/model.pt").is_file() and (clone / "data/char_lm/normalized/train/part-00000.parquet").is_file()
    again = run(["dvc", "repro"], clone)
    assert "Running stage" not in again.stdout, again.stdout
    assert run(["dvc", "status"], clone).stdout.strip().endswith("up to date.")
