"""What a reviewer sees in the MLflow UI: a real server, a version reviewed and approved through
our code, the version's page rendered by headless Chromium (Debian's `chromium`). The
screenshot is kept in test-artifacts/ for a person to look at."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from components.tracking import registry, review, runs
from components.tracking.server import tracking_uri
from components.tracking.session import connect
from tests.integration.conftest import REPO, MlflowServer
from tests.integration.test_registry import NAME, _evaluated

pytestmark = [pytest.mark.slow, pytest.mark.ui]
ARTIFACTS = REPO / "test-artifacts"
# as a probe of this kind of machine found it must run: no sandbox as root, no calls home
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,1600", "--virtual-time-budget=20000"]


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)"
    return found


def _render(url: str, profile: Path, *what: str) -> subprocess.CompletedProcess:
    return subprocess.run([_chromium(), *FLAGS, f"--user-data-dir={profile}", *what, url],
                          capture_output=True, text=True, timeout=120)


def test_the_ui_shows_the_champion_its_approval_and_the_review(tmp_path, monkeypatch):
    server = MlflowServer(tmp_path / "server")
    server.start()
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
        c = connect(tracking_uri()).client
        exp = runs.experiment_id(c, "char_lm")
        v1 = _evaluated(c, exp, tmp_path, 1, 1.60)["version"]
        v2 = _evaluated(c, exp, tmp_path, 2, 1.50, require_approval=True)["version"]
        new, champ = review.gather(c, NAME, v2)
        text = review.render(NAME, new, champ, metric="val_loss", mode="min", min_delta=0.0)
        review.publish(c, NAME, new, text, tmp_path / "review.md")
        reason = "samples read better than v1; the gain clears min_delta"
        registry.approve(c, NAME, v2, reason, who="ana")

        url = f"{server.uri}/#/models/{NAME}/versions/{v2}"
        dom = _render(url, tmp_path / "profile-dom", "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        page = dom.stdout
        assert f"Review: {NAME} v{v2} (challenger) against v{v1} (champion)" in page  # the description
        assert "champion" in page and reason in page  # the alias, the approval's reason (a tag)
        assert "verdict: approved by ana at " in page  # approve updated the review's verdict line
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "mlflow-ui-approved-champion.png"
        p = _render(url, tmp_path / "profile-shot", f"--screenshot={shot}")
        assert p.returncode == 0 and shot.stat().st_size > 20_000, p.stderr[-2000:]
        print(f"# the MLflow UI's version page: {shot}")
    finally:
        server.kill()
