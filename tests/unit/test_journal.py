"""The MLflow journal: bounded, ordered, survives a torn write, keeps what it could not send."""

from __future__ import annotations

import pytest

from components.tracking.journal import Journal, JournalFull, Writer


def test_entries_keep_order_and_a_torn_line_is_skipped_and_what_follows_it_kept(tmp_path):
    j = Journal(tmp_path / "j.jsonl")
    for i in range(3):
        j.append({"op": "tag", "i": i})
    with open(j.path, "a") as f:
        f.write('{"op": "tag", "i"')  # a writer killed mid-append
    assert [e["i"] for e in j.entries()] == [0, 1, 2]
    # the next writer appends after the torn line: nothing it writes is lost, nor glued onto it
    j.append({"op": "tag", "i": 3})
    j.append({"op": "tag", "i": 4})
    assert [e["i"] for e in j.entries()] == [0, 1, 2, 3, 4]
    sent = []
    assert j.drain(lambda e: sent.append(e["i"])) == 5 and sent == [0, 1, 2, 3, 4] and not j.path.exists()


def test_bound_on_entries_and_bytes(tmp_path):
    j = Journal(tmp_path / "j.jsonl", max_entries=2)
    j.append({"op": "tag"})
    j.append({"op": "tag"})
    with pytest.raises(JournalFull, match="is full"):
        j.append({"op": "tag"})
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 4096)
    k = Journal(tmp_path / "k.jsonl", max_bytes=1024)
    with pytest.raises(JournalFull):
        k.append({"op": "artifact"}, file=big)
    assert not k.path.exists()


def test_drain_stops_at_the_first_failure_and_keeps_the_rest(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("x")
    j = Journal(tmp_path / "j.jsonl")
    j.append({"op": "artifact", "n": 0}, file=src)
    for n in (1, 2, 3):
        j.append({"op": "tag", "n": n})
    sent = []

    def send(e):
        if e["n"] == 2:
            raise ConnectionError("server went away again")
        sent.append(e["n"])

    with pytest.raises(ConnectionError):
        j.drain(send)
    assert sent == [0, 1] and [e["n"] for e in j.entries()] == [2, 3]
    assert not list(j.files.glob("*/*"))  # the sent artifact's copy is gone
    assert j.drain(lambda e: sent.append(e["n"])) == 2
    assert sent == [0, 1, 2, 3] and not j.path.exists()


def test_writer_queues_while_no_server_answers(tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    w = Writer(f"http://127.0.0.1:{port}", Journal(tmp_path / "j.jsonl"))
    assert w.log_history("run1", [{"epoch": 1, "val_loss": 2.0}]) is False
    assert w.finish("run1") is False
    assert [e["op"] for e in w.journal.entries()] == ["metrics", "terminate"]
    assert w.flush() == 0 and len(w.journal) == 2  # still down: nothing lost


def test_settle_waits_for_a_restarting_server_then_gives_up(tmp_path, monkeypatch):
    import time

    from components.tracking import journal

    w = Writer("http://127.0.0.1:9", Journal(tmp_path / "j.jsonl"))
    w.journal.append({"op": "tag", "n": 1})
    t0 = time.monotonic()
    assert w.settle(grace_s=0.3) is False and len(w.journal) == 1  # never came back: kept
    assert time.monotonic() - t0 >= 0.3
    probes = iter([False, False, True, True, True])
    monkeypatch.setattr(journal, "server_answers", lambda uri: next(probes))
    sent = []
    monkeypatch.setattr(w, "_send", sent.append)
    assert w.settle(grace_s=30) is True  # back on the third probe
    assert [e["n"] for e in sent] == [1] and not w.journal.path.exists()


def test_a_refused_write_is_explained_naming_the_user(monkeypatch):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import PERMISSION_DENIED

    from components.tracking.server import denied

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "reviewer")
    err = MlflowException("Permission denied", error_code=PERMISSION_DENIED)
    line = denied(err, "http://127.0.0.1:5000")
    assert line.startswith("MLFLOW_TRACKING_URI=http://127.0.0.1:5000: user 'reviewer' may not do this")
    assert "PERMISSION_DENIED" in line
    assert denied(MlflowException("other"), "x") is None and denied(ValueError("x"), "x") is None


def test_system_metrics_back_off_from_a_dead_server_and_keep_every_sample(tmp_path, monkeypatch):
    """While the server is away, samples go to the journal and the server is asked with
    back-off (after 1, 2, 4, ... intervals), not on every sample; once it answers, the journal
    goes first and the sample after it straight through."""
    from components.tracking import journal
    from components.tracking.monitor import SystemMonitor

    class Probe:  # MLflow's probe interface, without reading the machine
        def collect_metrics(self):
            pass

        def aggregate_metrics(self):
            return {"cpu_utilization_percentage": 50.0}

        def clear_metrics(self):
            pass

    up = {"now": False}
    asked = []

    def answers(uri):
        asked.append(uri)
        return up["now"]

    monkeypatch.setattr(journal, "server_answers", answers)
    w = Writer("http://127.0.0.1:9", Journal(tmp_path / "j.jsonl"))
    sent = []
    monkeypatch.setattr(w, "_send", sent.append)
    clock = {"t": 0.0}
    monkeypatch.setattr("components.tracking.monitor.time.monotonic", lambda: clock["t"])
    mon = SystemMonitor("run1", w, interval_s=1.0, max_backoff_s=8.0, step=5, probes=[Probe()])
    for _ in range(30):  # 30 samples, one a second, the server down all along
        mon.tick()
        clock["t"] += 1.0
    assert mon.journaled == 30 and len(w.journal) == 30 and not sent
    assert mon.server_calls == len(asked) == 6  # at 0, 1, 3, 7, 15, 23 s: not 30 calls
    assert [e["step"] for e in w.journal.entries()] == list(range(5, 35))
    assert w.journal.entries()[0]["values"] == {"system/cpu_utilization_percentage": 50.0}
    up["now"] = True
    clock["t"] += 8.0
    mon.tick()
    assert [e["step"] for e in sent] == list(range(5, 36)) and not w.journal.path.exists()


@pytest.mark.slow
@pytest.mark.faults  # ~25 s: each of the write's queries waits out SQLite's own busy timeout first
def test_a_busy_sqlite_store_is_waited_out_then_journaled_never_a_failed_stage(tmp_path, monkeypatch):
    """Another writer holds the SQLite store's lock (as `mlflow ui`, a second stage or a queued
    experiment can): the write waits `TRAINYARD_MLFLOW_BUSY_S`, then goes to the journal; once the
    lock is free the journal is sent."""
    import sqlite3

    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = MlflowClient(tracking_uri=uri)
    run_id = c.create_run(c.create_experiment("busy")).info.run_id
    monkeypatch.setenv("TRAINYARD_MLFLOW_BUSY_S", "1")
    w = Writer(uri, Journal(tmp_path / "j.jsonl"))
    holder = sqlite3.connect(tmp_path / "mlflow.db", timeout=0)
    holder.execute("BEGIN EXCLUSIVE")  # the other writer
    try:
        assert w.log_history(run_id, [{"epoch": 1, "val_loss": 2.0}]) is False
        assert [e["op"] for e in w.journal.entries()] == ["metrics"]
    finally:
        holder.rollback()
        holder.close()
    assert w.flush() == 1 and not w.journal.path.exists()
    assert [m.value for m in c.get_metric_history(run_id, "val_loss")] == [2.0]


def test_a_writer_keeps_the_journal_it_is_given_even_an_empty_one(tmp_path):
    """An empty journal is falsy (it has a length): `journal or default` once swapped it for the
    shared journal of the URI in the local state folder, where tests left entries behind."""
    j = Journal(tmp_path / "j.jsonl")
    assert len(j) == 0 and Writer("http://127.0.0.1:9", j).journal is j


def test_runs_by_key_are_opened_on_replay_and_a_closed_run_keeps_its_end_time(tmp_path, monkeypatch):
    """A sweep's trial run opened while the server was away is created when the journal is
    sent (addressed by its key); a trial reported complete twice (a resumed sweep hands back a
    done trial's result) leaves its run's end time as it was."""
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)  # the store's artifacts (./mlruns) go there
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = MlflowClient(tracking_uri=uri)
    exp = c.create_experiment("sweep")
    w = Writer(uri, Journal(tmp_path / "j.jsonl"))
    ref = {"exp_id": exp, "run_key": "char_lm/tune/s/t1"}
    assert w.write({"op": "start", **ref, "run_name": "trial-t1", "tags": {"trainyard.trial_id": "t1"},
                    "reopen": False, "params": {"lr": 0.01}, "time": 500})  # sent late: it began at 500
    assert w.write({"op": "metrics", **ref, "rows": [{"epoch": 1, "val_loss": 2.0}]})
    assert w.write({"op": "terminate", **ref, "status": "FINISHED", "time": 1_000})
    run = c.search_runs([exp])[0]
    assert run.data.params == {"lr": "0.01"} and run.info.end_time == 1_000 and run.info.status == "FINISHED"
    assert run.info.start_time == 500
    again = Writer(uri, Journal(tmp_path / "j2.jsonl"))  # a resumed sweep: a new writer, the run found by key
    assert again.write({"op": "start", **ref, "run_name": "trial-t1", "tags": {}, "reopen": False})
    assert again.write({"op": "terminate", **ref, "status": "FINISHED", "time": 2_000})
    run = c.get_run(run.info.run_id)
    assert run.info.end_time == 1_000 and len(c.search_runs([exp])) == 1


def test_a_server_that_dies_mid_answer_is_an_outage_the_write_is_journaled(tmp_path):
    """A server killed while it replies leaves a short body (`IncompleteRead`, wrapped by MLflow
    in an `MlflowException`): that is an outage like a refused connection, so the write is
    journaled; a sweep's callback that raised here ended the whole sweep."""
    import http.server
    import threading

    class CutShort(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            if self.path.startswith("/health"):
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")
                return
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "1557")  # promised, never sent: the process died
            self.end_headers()
            self.wfile.write(b'{"run": ')
            self.close_connection = True

        do_GET = do_POST = _answer

        def log_message(self, *args) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CutShort)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        w = Writer(f"http://127.0.0.1:{srv.server_address[1]}", Journal(tmp_path / "j.jsonl"))
        assert w.finish("run1") is False
        assert w.log_history("run1", [{"epoch": 1, "val_loss": 2.0}]) is False
        assert [e["op"] for e in w.journal.entries()] == ["terminate", "metrics"]
    finally:
        srv.shutdown()
        srv.server_close()


def test_system_metrics_of_a_reopened_run_go_on_after_its_last_step(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)  # the store's artifacts (./mlruns) go there
    from mlflow.entities import Metric

    from components.tracking.monitor import PREFIX, next_step

    c = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = c.create_run(c.create_experiment("x")).info.run_id
    assert next_step(c, run) == 0
    c.log_batch(run, metrics=[Metric("val_loss", 1.0, 0, 9)] + [
        Metric(f"{PREFIX}{k}", 1.0, 0, step) for step in range(4) for k in ("cpu_utilization_percentage", "memory")])
    assert next_step(c, run) == 4  # not the training metric's step 9
