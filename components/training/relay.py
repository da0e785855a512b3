"""Rank 0's reports from Ray Train's workers to the process that started the run, while it runs.

The one process that sees every report is Ray Train's controller, and it only appends rank
0's reports to a feed file (`feed_callback`); the stage tails the file (`ReportFeed`) and hands
each to its own hook (the MLflow run's live metrics). The controller logged them itself
before: it imported MLflow and opened the tracking store at the first report (1.8 s, during
which it polled no worker: every rank waited out its report). Ray Train places its controller
on the driver's node, so the file is one both can see.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

POLL_S = 0.5


def feed_callback(feed: str | Path, keys: tuple[str, ...]):
    """A Ray Train callback (it runs in the controller) that appends each rank-0 report's
    `keys` and history to `feed`, one JSON line each: no MLflow, no network."""
    import ray.train

    class ReportFeedCallback(ray.train.UserCallback):
        def after_report(self, run_context, metrics, checkpoint) -> None:
            report = metrics[0] if metrics else {}
            line = {k: v for k, v in report.items() if k in keys or k == "history"}
            if "epoch" in line:
                try:
                    with open(feed, "a") as f:  # one line, one write: the reader sees whole lines
                        f.write(json.dumps(line, default=float) + "\n")
                except OSError as err:  # tracking trouble never stops training (the end logs it all)
                    print(f"[train] could not feed epoch {line['epoch']} to the stage: {err}", flush=True)

    return ReportFeedCallback()


class ReportFeed:
    """Tails a feed file in a thread and hands each line to `on_report`, until closed (the
    last lines are read then). A context manager around the Train run."""

    def __init__(self, feed: str | Path, on_report: Callable[[dict[str, Any]], None]) -> None:
        self.feed, self.on_report = Path(feed), on_report
        self.feed.parent.mkdir(parents=True, exist_ok=True)
        self.feed.unlink(missing_ok=True)
        self.offset = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="report-feed", daemon=True)

    def _read(self) -> None:
        if not self.feed.exists():
            return
        with open(self.feed, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        whole = data[:data.rfind(b"\n") + 1]  # a line still being written waits for the next read
        self.offset += len(whole)
        for line in whole.decode().splitlines():
            try:
                self.on_report(json.loads(line))
            except ValueError as err:  # a damaged line loses one live value, never the run
                print(f"[train] skipped a damaged live report in {self.feed}: {err}", flush=True)

    def _run(self) -> None:
        while not self.stop.wait(POLL_S):
            self._read()

    def __enter__(self) -> ReportFeed:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self._read()
        self.feed.unlink(missing_ok=True)
