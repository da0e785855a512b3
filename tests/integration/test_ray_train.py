"""Ray Train for real, this process a driver of the session's shared Ray (`shared_ray`)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from components.cluster.resources import ResourceError, plan_trials
from components.training.driver import fit, make_trainer, worker_config
from components.training.relay import ReportFeed, feed_callback
from components.training.session import LocalSession, running_in
from components.workloads.char_lm.loop import train_loop_per_worker
from tests.integration.conftest import small_train_cfg, wait_for

pytestmark = pytest.mark.slow


def test_two_workers_train_checkpoint_and_resume(ray_driver, token_data, tmp_path):
    kw = dict(name="run-a", storage_path=str(tmp_path), num_workers=2, cpus_per_worker=1,
              use_gpu=False, max_failures=0)
    # each epoch's metrics reach this process while training runs, through the controller's feed
    seen: list[tuple[int, bool]] = []
    running = threading.Event()
    running.set()
    with ReportFeed(tmp_path / "feed" / "live.jsonl", lambda r: seen.append((r["epoch"], running.is_set()))):
        first = fit(make_trainer(train_loop_per_worker, {"train": small_train_cfg(), "data": token_data},
                                 callbacks=[feed_callback(tmp_path / "feed" / "live.jsonl", ("epoch", "val_loss"))],
                                 **kw), 2)
        running.clear()
    assert seen[0] == (1, True) and [e for e, _ in seen] == [1, 2], seen
    hist = first.state["history"]
    assert [h["epoch"] for h in hist] == [1, 2]
    assert hist[1]["val_loss"] < hist[0]["val_loss"] < 5.0
    # capped epochs continue through the streams: 2 x 8 windows in, sampler at epoch 2
    assert first.state["sampler"]["epoch"] == 2 and first.state["sampler"]["pos"] > 16 * 5
    # Same run name and storage, as after a crashed stage is started again: Ray Train hands
    # the last checkpoint back and nothing is retrained (the history is the stored one).
    t0 = time.perf_counter()
    again = fit(make_trainer(train_loop_per_worker, {"train": small_train_cfg(), "data": token_data}, **kw), 2)
    assert again.state["history"] == hist
    # More epochs on the same run continue from epoch 2, not from scratch.
    more = fit(make_trainer(train_loop_per_worker, {"train": small_train_cfg(epochs=3), "data": token_data}, **kw), 2)
    assert [h["epoch"] for h in more.state["history"]] == [1, 2, 3]
    assert more.state["history"][:2] == hist
    assert time.perf_counter() - t0 < 300


def _same_run(history: list[dict]) -> list[dict]:
    """A history without its clock readings (seconds, throughput)."""
    return [{k: v for k, v in h.items() if not k.endswith(("_s", "per_s"))} for h in history]


def test_one_worker_gives_the_same_run_in_ray_train_and_in_a_plain_process(ray_driver, token_data, tmp_path):
    """The code path a sweep's 1-worker trials take (the loop in the trial's own process) trains
    exactly what a 1-worker Ray Train run does: same losses every epoch, same resume point."""
    cfg = small_train_cfg(epochs=2)
    ray_run = fit(make_trainer(train_loop_per_worker, {"train": cfg, "data": token_data}, name="run-1w",
                               storage_path=str(tmp_path), num_workers=1, cpus_per_worker=1, use_gpu=False,
                               max_failures=0), 1)
    local = LocalSession()
    try:
        with running_in(local):
            train_loop_per_worker(worker_config({"train": cfg, "data": token_data}, 1, None))
    finally:
        local.close()
    assert [h["epoch"] for h in local.reports] == [1, 2]
    assert _same_run(local.reports) == _same_run(ray_run.state["history"])


def test_impossible_requests_fail_against_the_real_cluster(ray_driver):
    with pytest.raises(ResourceError, match="the cluster has 2 CPUs, 0 GPUs"):
        plan_trials(ray_driver, workers=1, cpus_per_worker=1, gpus_per_worker=1, driver_memory_mb=256, requested=None)
    assert plan_trials(ray_driver, 1, 1, 0, 256, None).concurrent == 2


def test_workers_that_cannot_be_placed_fail_with_the_numbers_instead_of_waiting_forever(
        ray_driver, token_data, tmp_path, monkeypatch):
    """Someone else holds a CPU: Ray Train would retry placing the 2 workers every minute,
    forever; the run gives up after TRAINYARD_WORKER_START_TIMEOUT_S and says why."""
    from ray.util.placement_group import placement_group, remove_placement_group

    monkeypatch.setenv("TRAINYARD_WORKER_START_TIMEOUT_S", "6")
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "2")  # Ray's attempt length (default 60 s)
    other = placement_group([{"CPU": 1}])
    assert other.wait(30)
    try:
        trainer = make_trainer(train_loop_per_worker, {"train": small_train_cfg(), "data": token_data}, name="run-blocked",
                               storage_path=str(tmp_path), num_workers=2, cpus_per_worker=1, use_gpu=False,
                               max_failures=0)
        t0 = time.monotonic()
        with pytest.raises(ResourceError, match=r"2 training workers .* could not be placed within 6 s "
                                                r"\(CPU 1/2 free"):
            fit(trainer, 2)
        assert time.monotonic() - t0 < 120
    finally:
        remove_placement_group(other)


def test_a_placement_group_whose_creator_died_is_removed_so_its_cpus_come_back(ray_driver):
    """What a Train controller killed as Tune stops its trial can leave: a group holding a CPU
    for no one, which Ray keeps while the job lives and, if the create request lost the race
    with the actor's death, after it too. The next run start (or trial) removes it."""
    import ray
    from ray.util.placement_group import placement_group, placement_group_table

    from components.cluster.processes import reap_leaked_placement_groups

    @ray.remote(num_cpus=0)
    class Controller:
        def start_workers(self) -> str:
            pg = placement_group([{"CPU": 1}])
            ray.get(pg.ready())
            return pg.id.hex()

    live, doomed = Controller.remote(), Controller.remote()
    kept, leaked = ray.get(live.start_workers.remote()), ray.get(doomed.start_workers.remote())
    ray.kill(doomed)
    wait_for(lambda: ray._private.state.state.actor_table(doomed._actor_id.hex())["State"] == "DEAD", 30, "the killed actor")
    assert placement_group_table()[leaked]["state"] == "CREATED"  # Ray keeps it: the job lives
    assert ray.available_resources().get("CPU", 0) == 0
    assert reap_leaked_placement_groups() == [leaked]  # the live controller's group stays
    wait_for(lambda: ray.available_resources().get("CPU", 0) == 1, 30, "the leaked group's CPU")
    assert placement_group_table()[kept]["state"] == "CREATED"
    ray.kill(live)
    assert reap_leaked_placement_groups() == [kept]
    wait_for(lambda: ray.available_resources().get("CPU", 0) == 2, 30, "both CPUs")


def test_divergence_stops_with_the_step_and_keeps_the_last_good_checkpoint(ray_driver, token_data, tmp_path):
    import math
    from pathlib import Path

    import ray.train
    import torch

    cfg = small_train_cfg(lr=1e4, clip=None, schedule="constant", epochs=30, steps_per_epoch=2, n_hidden=64)
    trainer = make_trainer(train_loop_per_worker, {"train": cfg, "data": token_data}, name="run-nan", storage_path=str(tmp_path),
                           num_workers=2, cpus_per_worker=1, use_gpu=False, max_failures=0)
    with pytest.raises(ray.train.TrainingFailedError) as err:
        trainer.fit()
    assert "training diverged" in str(err.value) and "step" in str(err.value) and "lower learning rate" in str(err.value)
    epoch = int(str(err.value).split("at epoch ")[1].split(",")[0])
    ckpts = sorted(Path(tmp_path, "run-nan").glob("epoch-*/state.pt"))
    # everything published before the bad step is intact and finite; the last one is the epoch before
    assert ckpts, "the run diverged before its first checkpoint; make the test diverge later"
    for c in ckpts:
        state = torch.load(c, weights_only=False)
        assert all(torch.isfinite(t).all() for t in state["model"].values())
        assert all(math.isfinite(h["train_loss"]) for h in state["history"])
    assert torch.load(ckpts[-1], weights_only=False)["epoch"] == epoch - 1


def _train_worker_pids(exclude: set[int] = frozenset()) -> list[int]:
    """PIDs of the Ray Train worker processes running now (Ray titles them `ray::RayTrainWorker`)."""
    import psutil

    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if cmd and cmd[0].startswith("ray::RayTrainWorker") and p.pid not in exclude:
            out.append(p.pid)
    return sorted(out)


@pytest.mark.faults
def test_worker_sigkill_mid_epoch_resumes_from_the_last_checkpoint(ray_driver, token_data, tmp_path):
    # dropout on, so the resumed epochs must also replay the same random masks
    cfg = small_train_cfg(epochs=4, steps_per_epoch=300, n_hidden=64, dropout=0.2)
    kw = dict(storage_path=str(tmp_path), num_workers=2, cpus_per_worker=1, use_gpu=False)
    ref = fit(make_trainer(train_loop_per_worker, {"train": cfg, "data": token_data}, name="unbroken", max_failures=0, **kw), 2).state
    epoch_s = max(h["epoch_s"] for h in ref["history"])

    before = set(_train_worker_pids())
    box: dict = {}

    def run() -> None:
        try:
            box["state"] = fit(make_trainer(train_loop_per_worker, {"train": cfg, "data": token_data}, name="killed",
                                            max_failures=1, **kw), 2).state
        except BaseException as err:  # handed to the test thread
            box["error"] = err

    t = threading.Thread(target=run, daemon=True)
    t.start()
    run_dir = tmp_path / "killed"
    wait_for(lambda: (run_dir / "epoch-0002" / "state.pt").exists(), 300, "the epoch-2 checkpoint")
    time.sleep(epoch_s * 0.4)  # into epoch 3
    assert not (run_dir / "epoch-0003").exists(), "epoch 3 ended before the kill; make epochs longer"
    pids = wait_for(lambda: len(p := _train_worker_pids(before)) == 2 and p, 30, "the run's two Train workers")
    os.kill(pids[-1], signal.SIGKILL)
    t.join(600)
    assert not t.is_alive(), "training did not finish after the worker was killed"
    if "error" in box:
        raise box["error"]
    state = box["state"]
    # resumed once, from the epoch-2 checkpoint: only the killed epoch (one checkpoint interval) is redone
    assert [r["epoch"] for r in state["resumes"]] == [2]
    assert state["resumes"][0]["step"] == ref["history"][1]["step"]
    assert [h["epoch"] for h in state["history"]] == [1, 2, 3, 4]
    assert state["sampler"] == ref["sampler"] and state["schedule"]["step"] == ref["schedule"]["step"]
    # the same run as the unbroken one, to the last bit: the restored epochs replay the same
    # windows, dropout masks and schedule, and 2-rank gloo sums are deterministic
    assert [(h["train_loss"], h["val_loss"]) for h in state["history"]] == \
        [(h["train_loss"], h["val_loss"]) for h in ref["history"]]
    assert len(_train_worker_pids(before)) == 0  # the worker group is gone with the run


@pytest.mark.faults
def test_a_train_run_goes_on_past_a_damaged_or_missing_last_checkpoint_and_trains_what_an_undisturbed_run_does(
        ray_driver, token_data, tmp_path):
    import shutil

    from components.training.checkpoints import STATE_FILE

    def train(name: str):
        # no metric selects: Ray keeps the last two checkpoints, the one before the last to fall back to
        return fit(make_trainer(train_loop_per_worker, {"train": small_train_cfg(epochs=3), "data": token_data},
                                name=name, storage_path=str(tmp_path), num_workers=2, cpus_per_worker=1,
                                use_gpu=False, max_failures=0), 2).state

    def same(state: dict) -> bool:
        return [(h["train_loss"], h["val_loss"]) for h in state["history"]] == \
            [(h["train_loss"], h["val_loss"]) for h in ref["history"]]

    ref = train("undisturbed")
    train("damaged")
    run = tmp_path / "damaged"
    last = run / "epoch-0003" / STATE_FILE
    last.write_bytes(last.read_bytes()[:1000])  # cut short, as by a full disk
    state = train("damaged")
    # every rank skipped the damaged epoch-3 checkpoint, went on from epoch 2, and trained epoch 3 again
    assert [r["epoch"] for r in state["resumes"]] == [2] and same(state)
    # under a new name: one name never means two folders in Ray's list
    redone = [p.name for p in run.glob("epoch-0003-r*")]
    assert len(redone) == 1, sorted(p.name for p in run.iterdir())

    # that checkpoint's folder gone (an interrupted copy of the run store): Ray Train would refuse
    # the run folder on every try; its list is mended. What is left is the damaged epoch 3 (Ray
    # dropped epoch 2 for the redone one), so the run starts over, and again trains the same run.
    shutil.rmtree(run / redone[0])
    again = train("damaged")
    assert again["resumes"] == [] and same(again)
