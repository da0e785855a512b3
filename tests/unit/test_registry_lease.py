"""The registry lease: one holder at a time, however the writers race."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from components.tracking.lease import LEASE, lease


class SlowRegistry:
    """A registered model's tags behind a server that takes `delay` seconds per call."""

    def __init__(self, delay: float) -> None:
        self.delay, self.tags, self.lock = delay, {}, threading.Lock()

    def get_registered_model(self, name: str):
        time.sleep(self.delay)
        with self.lock:
            return SimpleNamespace(tags=dict(self.tags))

    def set_registered_model_tag(self, name: str, key: str, value: str) -> None:
        time.sleep(self.delay)
        with self.lock:
            self.tags[key] = value

    def delete_registered_model_tag(self, name: str, key: str) -> None:
        time.sleep(self.delay)
        with self.lock:
            self.tags.pop(key, None)


def test_racing_writers_hold_the_lease_one_at_a_time():
    reg, inside, spans = SlowRegistry(delay=0.02), [], []
    start = threading.Barrier(4)

    def register() -> None:
        start.wait()
        with lease(reg, "m", settle_s=0.01, wait_s=60):
            inside.append(1)
            t0 = time.monotonic()
            assert len(inside) == 1, "two writers hold the lease"
            time.sleep(0.05)
            inside.pop()
            spans.append((t0, time.monotonic()))

    threads = [threading.Thread(target=register) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(spans) == 4
    spans.sort()
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert LEASE not in reg.tags  # the last holder gave it back


def test_the_wait_scales_with_the_servers_round_trip():
    fast, slow = SlowRegistry(0.0), SlowRegistry(0.1)
    walls = []
    for reg in (fast, slow):
        t0 = time.monotonic()
        with lease(reg, "m"):
            walls.append(time.monotonic() - t0)
    assert walls[0] < 0.8  # a local store: the 0.5 s floor
    assert walls[1] >= 0.1 * 5  # a write of 0.1 s, waited five times
