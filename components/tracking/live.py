"""Each epoch's metrics in the MLflow run while training runs, not only at the end.

The stage's process logs them, whoever trains: its own loop (one worker, `LiveMetrics.log` as
the report hook) or Ray Train's workers. For those, the one process that sees every report is
Ray Train's controller, and it only appends rank 0's reports to a feed file (`feed_callback`);
the stage tails the file (`LiveFeed`) and logs them with the MLflow client it already holds.
The controller logged them itself before: it imported MLflow and opened the tracking store at
the first report (1.8 s, during which it polled no worker: every rank waited out its report).
Ray Train places its controller on the driver's node, so the file is one both can see.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from components.tracking.journal import Writer

POLL_S = 0.5


class LiveMetrics:
    """Logs each epoch's rank-0 report to the run as it comes (`log(report)`).

    A write that cannot be sent goes to the writer's journal; if even that fails (full),
    training goes on: the history is in every checkpoint and is logged again at the end."""

    def __init__(self, writer: Writer, run_id: str, keys: tuple[str, ...]) -> None:
        self.writer, self.run_id, self.keys = writer, run_id, keys
        self.warned = False

    def log(self, report: dict[str, Any]) -> None:
        """Send one report's metrics (`keys` only); after a resume the report carries the
        restored history, which fills any gap."""
        row = {k: v for k, v in report.items() if k in self.keys}
        if "epoch" not in row:
            return
        rows = [{k: v for k, v in r.items() if k in self.keys} for r in report.get("history", [])] or [row]
        try:
            if not self.writer.log_history(self.run_id, rows) and not self.warned:
                print(f"[mlflow] {self.writer.uri} does not answer: keeping metrics in {self.writer.journal.path}",
                      flush=True)
                self.warned = True
        except Exception as err:  # noqa: BLE001 - tracking trouble never stops training
            print(f"[mlflow] could not record epoch {row['epoch']}: {err}", flush=True)


def feed_callback(feed: str | Path, keys: tuple[str, ...]):
    """A Ray Train callback (it runs in the controller) that appends each rank-0 report's
    `keys` and history to `feed`, one JSON line each: no MLflow, no network."""
    import ray.train

    class LiveFeedCallback(ray.train.UserCallback):
        def after_report(self, run_context, metrics, checkpoint) -> None:
            report = metrics[0] if metrics else {}
            line = {k: v for k, v in report.items() if k in keys or k == "history"}
            if "epoch" in line:
                try:
                    with open(feed, "a") as f:  # one line, one write: the reader sees whole lines
                        f.write(json.dumps(line, default=float) + "\n")
                except OSError as err:  # tracking trouble never stops training (the end logs it all)
                    print(f"[mlflow] could not feed epoch {line['epoch']} to the stage: {err}", flush=True)

    return LiveFeedCallback()


class LiveFeed:
    """Tails a feed file in a thread and hands each line to `live.log`, until closed (the last
    lines are read then). A context manager around the Train run."""

    def __init__(self, feed: str | Path, live: LiveMetrics) -> None:
        self.feed, self.live = Path(feed), live
        self.feed.parent.mkdir(parents=True, exist_ok=True)
        self.feed.unlink(missing_ok=True)
        self.offset = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="live-metrics", daemon=True)

    def _read(self) -> None:
        if not self.feed.exists():
            return
        with open(self.feed, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        whole = data[:data.rfind(b"\n") + 1]  # a line still being written waits for the next read
        self.offset += len(whole)
        for line in whole.decode().splitlines():
            self.live.log(json.loads(line))

    def _run(self) -> None:
        while not self.stop.wait(POLL_S):
            self._read()

    def __enter__(self) -> LiveFeed:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self._read()
        self.feed.unlink(missing_ok=True)
