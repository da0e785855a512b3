"""Live metrics: the controller's feed file, tailed by the stage."""

from __future__ import annotations

import json
import time

from components.tracking.live import LiveMetrics
from components.training import relay as live_mod
from components.training.relay import ReportFeed, feed_callback


class _Collect:
    def __init__(self) -> None:
        self.reports: list[dict] = []

    def log(self, report: dict) -> None:
        self.reports.append(report)


def test_the_feed_hands_whole_lines_on_while_running_and_the_rest_at_the_end(tmp_path, monkeypatch):
    monkeypatch.setattr(live_mod, "POLL_S", 0.05)
    feed, got = tmp_path / "journal" / "live-run.jsonl", _Collect()
    cb = feed_callback(feed, ("epoch", "val_loss"))
    with ReportFeed(feed, got.log):
        cb.after_report(None, [{"epoch": 1, "val_loss": 2.0, "lr": 0.1, "history": [{"epoch": 1}]}, {}], None)
        cb.after_report(None, [{"lr": 0.1}], None)  # no epoch: nothing to log
        deadline = time.monotonic() + 10
        while not got.reports and time.monotonic() < deadline:
            time.sleep(0.02)
        assert got.reports == [{"epoch": 1, "val_loss": 2.0, "history": [{"epoch": 1}]}]
        with open(feed, "a") as f:  # a line being written is not read half
            f.write(json.dumps({"epoch": 2, "val_loss": 1.5}))
        time.sleep(0.2)
        assert len(got.reports) == 1
        with open(feed, "a") as f:
            f.write("\n")
        cb.after_report(None, [{"epoch": 3, "val_loss": 1.2}], None)
    assert [r["epoch"] for r in got.reports] == [1, 2, 3]
    assert not feed.exists()


def test_live_metrics_log_rows_with_the_history_that_fills_a_gap():
    class W:
        uri, sent = "sqlite:///x.db", []

        def log_history(self, run_id, rows):
            self.sent.append((run_id, rows))
            return True

    w = W()
    LiveMetrics(w, "r1", ("epoch", "val_loss")).log({"epoch": 3, "val_loss": 1.0, "lr": 2,
                                                     "history": [{"epoch": 1, "val_loss": 3.0, "x": 1}]})
    LiveMetrics(w, "r1", ("epoch", "val_loss")).log({"val_loss": 1.0})
    assert w.sent == [("r1", [{"epoch": 1, "val_loss": 3.0}])]
