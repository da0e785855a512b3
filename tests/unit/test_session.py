"""The worker loop's runner: a plain process (LocalSession) and the train stage's own process
(StageSession, `fit_in_process`) run, checkpoint and resume it."""

from __future__ import annotations

import pytest

from components.store import read_store_json
from components.training.driver import fit_in_process, worker_config
from components.training.launch import Launch, runs_here
from components.training.session import (
    INDEX_FILE,
    LocalSession,
    StageSession,
    TrainSession,
    TuneSession,
    current,
    running_in,
)
from components.workloads.char_lm.loop import train_loop_per_worker
from components.workloads.char_lm.params import TrainParams


def _cfg(epochs: int) -> dict:
    return TrainParams(epochs=epochs, steps_per_epoch=4, bs=4, n_hidden=16, val_bptt=32).model_dump()


def test_a_plain_process_trains_checkpoints_and_resumes_the_loop(tiny_tokens):
    local = LocalSession()
    try:
        with running_in(local):
            train_loop_per_worker(worker_config({"train": _cfg(1), "data": tiny_tokens}, 1, None))
            assert [r["epoch"] for r in local.reports] == [1]
            # started again with one more epoch: it goes on from the kept checkpoint
            train_loop_per_worker(worker_config({"train": _cfg(2), "data": tiny_tokens}, 1, None))
        assert [r["epoch"] for r in local.reports] == [1, 2]
        assert local.reports[1]["history"][0] == local.reports[0]  # the first report after a resume replays
    finally:
        local.close()
    assert isinstance(current(), TrainSession)  # the block's session is gone after it


def test_one_rank_runners_refuse_to_wrap_ddp(tmp_path):
    import torch

    for s in (LocalSession(), TuneSession(), StageSession(str(tmp_path), torch.device("cpu"))):
        with pytest.raises(RuntimeError, match="one rank|1-worker"):
            s.prepare_model(None)


class Crash(RuntimeError):
    pass


def _crash_after(epoch: int, seen: list):
    def on_report(metrics: dict) -> None:
        seen.append(metrics)
        if metrics["epoch"] == epoch:
            raise Crash(f"killed after epoch {epoch}")
    return on_report


@pytest.mark.parametrize("as_uri", [False, True], ids=["path", "file-uri"])
def test_a_run_in_the_stage_process_keeps_latest_and_best_and_resumes_after_a_crash(tiny_tokens, tmp_path, as_uri):
    run = tmp_path / "store" / "run-k-in-process"
    uri = f"file://{run}" if as_uri else str(run)
    config, select = {"train": _cfg(4), "data": tiny_tokens}, ("val_loss", "min")
    seen: list = []
    with pytest.raises(Crash):
        fit_in_process(train_loop_per_worker, config, run_uri=uri, cpus_per_worker=1, use_gpu=False, select=select,
                       on_report=_crash_after(2, seen))
    # the crash came after epoch 2's checkpoint was listed: started again, the run goes on from it
    assert [e["dir"] for e in read_store_json(f"{uri}/{INDEX_FILE}")][-1] == "epoch-0002"
    out = fit_in_process(train_loop_per_worker, config, run_uri=uri, cpus_per_worker=1, use_gpu=False, select=select,
                         on_report=seen.append)
    assert [m["epoch"] for m in seen] == [1, 2, 3, 4]
    assert [h["epoch"] for h in seen[2]["history"]] == [1, 2, 3]  # the first report after the resume replays
    assert out.state["epoch"] == 4 and out.state["resumes"] == [{"epoch": 2, "step": 8}]
    history = out.state["history"]
    best = min(range(4), key=lambda i: (history[i]["val_loss"], i)) + 1
    assert out.best["epoch"] == best and out.run_path == uri
    # on disk: the latest and the best, nothing else
    kept = sorted(p.name for p in run.iterdir() if p.is_dir())
    assert kept == sorted({"epoch-0004", f"epoch-{best:04d}"}), kept


def test_a_loop_runs_in_the_calling_process_only_with_one_worker_and_no_cluster_unless_a_trial(monkeypatch):
    def spec(workers: int, in_process: bool = True) -> Launch:
        return Launch(num_workers=workers, cpus_per_worker=1, use_gpu=False, in_process=in_process)

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert runs_here(spec(1))
    assert not runs_here(spec(2))
    assert not runs_here(spec(1, in_process=False))
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # a cluster: even one worker runs there
    assert not runs_here(spec(1))
    # a Tune trial is on the cluster already: its one worker is its own process
    assert runs_here(spec(1), in_trial=True)
    assert not runs_here(spec(2), in_trial=True) and not runs_here(spec(1, False), in_trial=True)
    # the train stage's params say the same through `Launch.of`
    cfg = {"num_workers": 1, "cpus_per_worker": 2, "in_process": True, "placement": "pack", "max_failures": 2}
    assert Launch.of(cfg, False, None) == Launch(1, 2, False, True, None, "pack", 2)
