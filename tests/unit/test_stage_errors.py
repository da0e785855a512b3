"""Stages refuse bad input with one clear line, a non-zero exit, and no outputs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def _stage(tmp_path: Path, *args: str, params: dict | None = None, env: dict | None = None):
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(params if params is not None else {"char_lm": {}}))
    e = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", *args, "--params", str(pfile)], cwd=tmp_path,
                          capture_output=True, text=True, env=e, timeout=120)


@pytest.mark.parametrize("params, key", [
    ({"char_lm": {"train": {"lr": -1}}}, "char_lm.train.lr"),
    ({"char_lm": {"tune": {"num_samples": 0}}}, "char_lm.tune.num_samples"),
    ({"char_lm": {"train": {"arch": "transformer"}}}, "char_lm.train.arch"),
    ({"char_lm": {"prepare": {"colour": 1}}}, "char_lm.prepare.colour"),
])
def test_bad_params_stop_the_stage_before_any_work(tmp_path, params, key):
    out = tmp_path / "prepared"
    p = _stage(tmp_path, "pipelines.prepare", "--out", str(out), params=params)
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and lines[0].startswith("error: ")
    assert not out.exists()


def test_adapt_for_a_workload_without_that_stage_says_so_in_one_line(tmp_path):
    p = _stage(tmp_path, "pipelines.adapt", "--workload", "char_lm", "--data", "data", "--out", "lm.pt")
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1, p.stderr
    assert lines[0].startswith("error: --workload char_lm: this workload has no adapt stage")
    assert not (tmp_path / "lm.pt").exists()


def test_empty_corpus(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    p = _stage(tmp_path, "pipelines.prepare", "--out", "prepared",
               params={"char_lm": {"prepare": {"source": "empty.txt", "inputs": "empty.txt"}}})
    assert p.returncode == 1 and "empty.txt: the corpus is empty" in p.stderr
    assert not (tmp_path / "prepared").exists()


def test_corpus_that_is_not_utf8(tmp_path):
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00abc")
    p = _stage(tmp_path, "pipelines.prepare", "--out", "prepared",
               params={"char_lm": {"prepare": {"source": "bin.txt", "inputs": "bin.txt"}}})
    assert p.returncode == 1 and "bin.txt: not UTF-8 text" in p.stderr
    assert not (tmp_path / "prepared").exists()


def test_corpus_too_short_to_split(tmp_path):
    (tmp_path / "tiny.txt").write_text("abc\n")
    src = {"char_lm": {"prepare": {"source": "tiny.txt", "inputs": "tiny.txt"}}}
    assert _stage(tmp_path, "pipelines.prepare", "--out", "prepared", params=src).returncode == 0
    p = _stage(tmp_path, "pipelines.normalize", "--src", "prepared", "--out", "normalized", params=src)
    assert p.returncode == 1 and "split has" in p.stderr and "too short" in p.stderr
    assert not (tmp_path / "normalized").exists()


def test_mlflow_that_does_not_answer_fails_before_compute(tmp_path):
    p = _stage(tmp_path, "pipelines.tune", "--data", "normalized", "--out", "best.json",
               env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    assert p.returncode == 1
    assert "MLFLOW_TRACKING_URI=http://127.0.0.1:9: no MLflow server answers" in p.stderr
    assert not (tmp_path / "best.json").exists()


def test_a_stage_run_by_a_python_without_the_venv_says_so_in_one_line():
    # -S: no site-packages, as the system python a shell without the venv would pick
    p = subprocess.run([sys.executable, "-S", "-m", "pipelines.train", "--help"], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[2], timeout=60)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and "source .venv/bin/activate" in p.stderr


def test_a_stage_that_succeeds_exits_0_after_its_exit_handlers_and_buffered_output(tmp_path):
    """A stage skips the interpreter's module teardown (1.3-1.5 s after torch, Ray and MLflow)
    but not what a normal exit runs: atexit handlers, finalizers, output still buffered."""
    script = tmp_path / "stage.py"
    script.write_text(
        "import atexit, sys, tempfile, weakref\n"
        "from pathlib import Path\n"
        "from components.cli.entry import main\n"
        f"done = Path({str(tmp_path / 'handler-ran')!r})\n"
        "def fn(args):\n"
        "    atexit.register(done.write_text, 'yes')\n"
        "    global keep\n"
        "    keep = tempfile.TemporaryDirectory(dir=done.parent / 'tmp')  # removed by its finalizer at exit\n"
        "    sys.stdout.write('no newline yet')\n"
        "main(fn, 'a stage')\n")
    (tmp_path / "tmp").mkdir()
    p = subprocess.run([sys.executable, str(script), "--workload", "char_lm", "--params", str(tmp_path / "p.yaml")],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "no newline yet"
    assert (tmp_path / "handler-ran").read_text() == "yes"
    assert not list((tmp_path / "tmp").iterdir())
