import pytest

from components.cluster.resources import ResourceError, check_train_fits, plan_trials, want_gpu

GIB = 2**30
LAPTOP = {"CPU": 2.0, "memory": 8 * GIB}


def test_two_trials_fit_on_two_cpus_counting_their_drivers():
    plan = plan_trials(LAPTOP, workers=1, cpus_per_worker=1, gpus_per_worker=0, driver_memory_mb=256, requested=None)
    assert plan.concurrent == 2


def test_concurrency_never_exceeds_what_fits():
    assert plan_trials(LAPTOP, 2, 1, 0, 256, requested=None).concurrent == 1
    assert plan_trials(LAPTOP, 1, 1, 0, 256, requested=8).concurrent == 2
    assert plan_trials({"CPU": 16.0, "GPU": 2.0, "memory": 64 * GIB}, 1, 2, 1, 256, None).concurrent == 2
    # drivers' memory counts too
    assert plan_trials({"CPU": 8.0, "memory": 600 * 2**20}, 1, 1, 0, 256, None).concurrent == 2


@pytest.mark.parametrize("workers, cpus, gpus, needle", [
    (3, 1, 0, "3 workers x 1 CPU = 3 CPUs"),
    (1, 1, 1, "1 GPUs"),
])
def test_impossible_trials_fail_at_once_with_numbers(workers, cpus, gpus, needle):
    with pytest.raises(ResourceError) as err:
        plan_trials(LAPTOP, workers, cpus, gpus, 256, None)
    assert needle in str(err.value) and "the cluster has 2 CPUs, 0 GPUs" in str(err.value)


def test_train_requests_checked_against_the_cluster():
    check_train_fits(LAPTOP, 2, 1, gpu=False)
    with pytest.raises(ResourceError, match="4 CPUs; the cluster has 2"):
        check_train_fits(LAPTOP, 4, 1, gpu=False)
    with pytest.raises(ResourceError, match="2 GPU workers; the cluster has 0 GPUs"):
        check_train_fits(LAPTOP, 2, 1, gpu=True)


def test_use_gpu_auto_and_forced():
    assert want_gpu("auto", {"GPU": 2.0}, 2) is True
    assert want_gpu("auto", LAPTOP, 2) is False
    with pytest.raises(ResourceError, match="cluster has 0 GPUs"):
        want_gpu(True, LAPTOP, 1)


def test_a_ray_address_that_does_not_answer_fails_at_once(monkeypatch):
    import socket
    import time

    from components.cluster.connect import init_ray, probe_ray_address

    with socket.socket() as s:  # a port that is certainly closed: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
        t0 = time.monotonic()
        with pytest.raises(ResourceError, match=f"RAY_ADDRESS=127.0.0.1:{port}: no Ray cluster answers"):
            init_ray()
        assert time.monotonic() - t0 < 10
        with pytest.raises(ResourceError, match="ray://127.0.0.1"):
            probe_ray_address(f"ray://127.0.0.1:{port}")
    probe_ray_address("auto")  # not host:port: left to Ray


def test_worker_start_wait_is_bounded_and_validated(monkeypatch):
    from components.cluster.resources import start_attempts, start_timed_out, start_wait_s

    monkeypatch.delenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", raising=False)
    monkeypatch.setenv("TRAINYARD_WORKER_START_TIMEOUT_S", "600")
    assert start_attempts() == 9  # 10 attempts of Ray Train's 60 s
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "2")
    monkeypatch.setenv("TRAINYARD_WORKER_START_TIMEOUT_S", "5")
    assert (start_wait_s(), start_attempts()) == (5.0, 2)
    for bad in ("soon", "0", "-3"):
        monkeypatch.setenv("TRAINYARD_WORKER_START_TIMEOUT_S", bad)
        with pytest.raises(ResourceError, match=f"TRAINYARD_WORKER_START_TIMEOUT_S='{bad}'"):
            start_wait_s()

    class WorkerGroupStartupTimeoutError(Exception):
        pass

    class ControllerError(Exception):
        def __init__(self, inner):
            self.controller_failure = inner

    assert start_timed_out(ControllerError(WorkerGroupStartupTimeoutError()))
    assert not start_timed_out(ControllerError(ValueError()))
    assert not start_timed_out(RuntimeError("x"))


def test_rays_internal_noise_is_dropped_and_comes_back_with_one_variable(monkeypatch):
    from components.cluster import connect

    stopped = ["Training failed due to worker errors:", "Traceback (most recent call last):",
               "ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task.",
               "\tThe actor is dead because its owner has died. Owner Id: 01000000 Owner Ip address: 127.0.0.1"]
    assert connect.keep_lines(stopped) == []  # a trial ASHA stopped: its Train run went down with it
    mixed = ["[2026-11-24 10:00:00,000 I 123 456] mutex.cc:1234: RAW: Lock blocking 0x7f00 @",
             "[mutex.cc : 452] RAW: Lock returning 0x5616cd8ff6e0   @ 0x7faa6f82b1a2 0x7faa6e8fb23c",
             "[train] epoch 1/3 train_loss 3.8461 val_loss 3.3481",
             "WARNING: 8 PYTHON worker processes have been started on node: abc with address: 127.0.0.1",
             "[2026-11-24 18:50:34,191 E 31036 31103] core_worker.cc:2465: Actor with class name: 'PreemptionWatcher' "
             "and ID: 'cc9a' has constructor arguments in the object store and max_restarts > 0.",
             "Detected that the Ray Train controller actor (fed2) is dead. Cleaning up placement group = [x]",
             "Reporting training result 1: TrainingReport(checkpoint=Checkpoint(filesystem=local, path=/x))",
             "Checkpoint successfully created at: Checkpoint(filesystem=local, path=/runs/sweep/_trial_1/checkpoint_000000)"]
    assert connect.keep_lines(mixed) == ["[train] epoch 1/3 train_loss 3.8461 val_loss 3.3481"]
    real = ["Training failed due to worker errors:", "ValueError: bs must divide by num_workers"]
    assert connect.keep_lines(real) == real  # a real failure is never hidden
    monkeypatch.setenv("TRAINYARD_RAY_VERBOSE", "1")
    assert connect.ray_verbose()
    monkeypatch.setenv("TRAINYARD_RAY_VERBOSE", "0")
    assert not connect.ray_verbose()


def test_a_worker_failure_is_one_line_once_and_tunes_trial_traceback_one_line_with_the_cause(monkeypatch):
    import logging
    import sys

    from components.cluster import connect

    monkeypatch.setattr(connect, "_causes_shown", set())
    failed = ["Error in training function:", "Traceback (most recent call last):",
              '  File "/app/components/data/shards.py", line 22, in open_parquet',
              "    return pq.ParquetFile(fs.open_input_file(path))",
              "\x1b[32mFileNotFoundError: [Errno 2] Failed to open local file '/d/train.parquet'\x1b[0m"
              " [repeated 2x across cluster] (Ray deduplicates logs by default.)", ""]
    line = "error in the training function: FileNotFoundError: [Errno 2] Failed to open local file '/d/train.parquet'"
    assert connect.keep_lines(failed) == [f"{line} (TRAINYARD_RAY_VERBOSE=1 shows the traceback)"]
    assert connect.keep_lines(failed) == []  # the same cause after the worker group's restart: said already
    other = [*failed[:4], "ValueError: bs must divide by num_workers"]
    assert "ValueError: bs must divide by num_workers" in connect.keep_lines(other)[0]

    class WorkerGroupError(RuntimeError):
        def __init__(self, failures):
            super().__init__("Training failed due to worker errors: ... (3 screens of traceback)")
            self.worker_failures = failures

    try:
        try:
            raise WorkerGroupError({0: FileNotFoundError("Failed to open local file '/d/train.parquet'")})
        except WorkerGroupError as inner:
            raise RuntimeError("ray::ImplicitFunc.train() failed") from inner
    except RuntimeError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("ray.tune.execution.tune_controller", logging.ERROR, __file__, 1,
                               "Trial task failed for trial %s", ("_trial_0",), exc_info)
    assert connect._TrialFailureLine().filter(record)
    assert record.getMessage() == ("Trial task failed for trial _trial_0: FileNotFoundError: "
                                   "Failed to open local file '/d/train.parquet'")
    assert record.exc_info is None


def test_an_error_whose_message_is_a_traceback_is_told_by_its_last_line():
    from components.cluster.connect import cause_line

    class TuneError(Exception):
        pass

    err = TuneError("Traceback (most recent call last):\n  File \"x.py\", line 1\n\nValueError: the real cause\n")
    assert cause_line(err) == "ValueError: the real cause"
