"""The trial driver waits until Tune holds the Train run's last report before returning."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from components.training import launch


class FakeSession:
    """The two queues and the fetch of Ray's trial session, with a slow hand-over."""

    def __init__(self, handover_s: float) -> None:
        self._inter_actor_queue = queue.Queue(1)
        self.result_queue = queue.Queue(1)
        self.handover_s = handover_s
        self.taken: list[str] = []

    def _get_result_from_queues(self, block: bool):
        try:
            item = self._inter_actor_queue.get(timeout=0.05)
        except queue.Empty:
            return None
        time.sleep(self.handover_s)  # out of the controller's queue, not yet in Tune's
        self.result_queue.put(item)
        self.taken.append(self.result_queue.get())
        return item


@pytest.mark.parametrize("handover_s", [0.0, 1.5])
def test_returns_only_after_the_last_report_is_handed_over(monkeypatch, handover_s):
    import ray.train._internal.session as ray_session

    session = FakeSession(handover_s)
    monkeypatch.setattr(ray_session, "get_session", lambda: session)
    counts = launch.guard_report_handover()
    stop = threading.Event()

    def tune_main_thread() -> None:  # Tune's trial actor asking for results, as step() does
        while not stop.is_set():
            session._get_result_from_queues(True)

    main = threading.Thread(target=tune_main_thread, daemon=True)
    main.start()
    try:
        session._inter_actor_queue.put("last report")  # what fit() left behind
        launch.wait_for_tune_to_take_reports(counts, timeout_s=30)
        assert session.taken == ["last report"]
    finally:
        stop.set()
        main.join(5)


def test_outside_tune_there_is_nothing_to_wait_for(monkeypatch):
    import ray.train._internal.session as ray_session

    monkeypatch.setattr(ray_session, "get_session", lambda: None)
    assert launch.guard_report_handover() is None
    launch.wait_for_tune_to_take_reports(None, timeout_s=1)
