"""System metrics that survive an MLflow outage: MLflow's own probes (CPU, memory, disk, network;
GPU utilisation and memory where one is present) sampled on a thread and written through the
stage's journaled writer.

MLflow's `SystemMetricsMonitor` asks the server for the run on every sample and, once a call
fails (after the HTTP client's retries and timeout), stops for the rest of the run. Here a
sample the server cannot take goes to the journal with the stage's other writes, and while the
server is away it is probed with back-off (the interval, doubling up to `max_backoff_s`), not
on every sample; when it answers again the journal is sent first, in order.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from components.tracking.journal import Writer

PREFIX = "system/"


def _probes() -> list[Any]:
    """MLflow's metric probes for this machine; a GPU's only where its library finds one."""
    from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
    from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
    from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor

    out = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
    try:
        from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

        out.append(GPUMonitor())
    except Exception:  # noqa: BLE001 - no NVIDIA library or no GPU: nothing to sample
        pass
    return out


def next_step(c, run_id: str) -> int:
    """The step after the run's last system metric (a reopened run goes on where it stopped)."""
    try:
        # every sample logs all system metrics at one step: one metric's history says where they are
        key = next((k for k in c.get_run(run_id).data.metrics if k.startswith(PREFIX)), None)
        steps = [m.step for m in c.get_metric_history(run_id, key)] if key else []
    except Exception:  # noqa: BLE001 - unreadable now: start at 0 rather than fail the stage
        return 0
    return max(steps) + 1 if steps else 0


class SystemMonitor:
    """Samples every `interval_s` into `writer` for `run_id` until `finish()`."""

    def __init__(self, run_id: str, writer: Writer, interval_s: float = 2.0, max_backoff_s: float = 60.0,
                 step: int | None = None, probes: list[Any] | None = None) -> None:
        self.run_id, self.writer, self.interval_s, self.max_backoff_s = run_id, writer, interval_s, max_backoff_s
        self.step = next_step(writer.c, run_id) if step is None else step
        self.probes = _probes() if probes is None else probes
        self.server_calls = 0  # samples offered to the server (each a probe of it while it is away)
        self.journaled = 0
        self._backoff, self._next_try = interval_s, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="trainyard-system-metrics")

    def start(self) -> SystemMonitor:
        """Start sampling on a daemon thread."""
        self._thread.start()
        return self

    def sample(self) -> dict[str, float]:
        """One sample of every probe, prefixed `system/`."""
        out: dict[str, float] = {}
        for p in self.probes:
            p.collect_metrics()
            out.update({PREFIX + k: float(v) for k, v in p.aggregate_metrics().items()})
            p.clear_metrics()
        return out

    def tick(self) -> None:
        """Take one sample and send it, or journal it while the server is in back-off."""
        entry = {"op": "sample", "run_id": self.run_id, "step": self.step, "values": self.sample()}
        self.step += 1
        now = time.monotonic()
        if now >= self._next_try:
            self.server_calls += 1
            if self.writer.write(entry):
                self._backoff, self._next_try = self.interval_s, 0.0
                return
            self._next_try = now + self._backoff
            self._backoff = min(self._backoff * 2, self.max_backoff_s)
        else:
            self.writer.journal.append({"time": int(time.time() * 1000), **entry})
        self.journaled += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.tick()
            except Exception as err:  # noqa: BLE001 - a view, never a reason to fail a run
                print(f"[mlflow] system metrics off: {err}", flush=True)
                return

    def finish(self) -> None:
        """Stop sampling (what is journaled goes with the stage's other writes)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=max(10.0, 2 * self.interval_s))


def system_metrics(run_id: str, writer: Writer, interval_s: float = 2.0) -> SystemMonitor | None:
    """A started monitor on this run, or None when it cannot start (system metrics are a view,
    never a reason to fail a run)."""
    try:
        return SystemMonitor(run_id, writer, interval_s).start()
    except Exception as err:  # noqa: BLE001
        print(f"[mlflow] system metrics off: {err}", flush=True)
        return None
